//! Control-plane benchmarks (a plain main that prints figures; see
//! docs/BENCHMARKS.md, "Control plane"):
//!
//! 1. placement throughput: 10,000 load executors register over real gRPC
//!    streams, one job of 100,000 tasks is created over gRPC, and the clock
//!    stops when every launch has reached its executor (so every placement
//!    is durable and its launch sent);
//! 2. create latency (p50/p99) under 100 concurrent clients;
//! 3. memory: the server's RSS with 1,000,000 tasks known, and the restart
//!    (snapshot + log replay) time at that size.
//!
//! 4. on etcd (`EBB_ETCD_ENDPOINT`, e.g. from `eval "$(scripts/etcd.sh start)"`):
//!    `placement-etcd`, the placement benchmark with the server's state in
//!    etcd; `takeover`, two `ebb server` processes on one etcd, 10,000
//!    executors and 100,000 running tasks: the leader is killed (SIGKILL) and
//!    the clock runs until the standby has planned its first round.
//!
//! `cargo bench -p ebb-api --bench server [-- --quick] [core|placement|latency|memory|placement-etcd|takeover]`
//! (quick: 10x smaller; names pick sections; the etcd ones run only when named).
//! The server runs in this process on loopback with a temporary data
//! directory (except `takeover`'s replicas); load executors speak the real
//! protocol but run nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ebb_api::config::{Config, PoolSetup};
use ebb_proto::v1 as pb;
use ebb_proto::v1::executor_service_client::ExecutorServiceClient;
use ebb_proto::v1::job_service_client::JobServiceClient;
use ebb_scheduler as core;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Executor streams per HTTP/2 connection: 10,000 executors over 50
/// connections, as a fleet behind a handful of proxies would arrive.
const STREAMS_PER_CONNECTION: usize = 200;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn config(dir: &std::path::Path, n_reserved: u32) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.join("data"),
        ..Config::default()
    };
    c.executors.heartbeat_interval = Duration::from_secs(10);
    c.executors.missed_heartbeats = 6;
    c.market.pools = vec![PoolSetup {
        id: core::PoolId::from("bench"),
        region: "local".into(),
        headroom: core::HeadroomPolicy::default(),
        reservations: vec![core::Reservation::new("m5.16xlarge", n_reserved)],
    }];
    c
}

fn host(i: usize) -> pb::HostSpec {
    pb::HostSpec {
        host_id: format!("load-{i:05}"),
        pool: "bench".into(),
        instance_type: "m5.16xlarge".into(),
        zone: format!("local-{}", (b'a' + (i % 3) as u8) as char),
        region: "local".into(),
        capacity: Some(pb::Resources {
            cpu_millis: 64_000,
            memory_mib: 256 * 1024,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn job(team: &str, n_tasks: u32, cpu_millis: u64, memory_mib: u64) -> pb::CreateJobRequest {
    pb::CreateJobRequest {
        spec: Some(pb::JobSpec {
            name: "bench".into(),
            team: team.into(),
            tier: if std::env::var("EBB_BENCH_CRITICAL").is_ok() {
                pb::Tier::Critical
            } else {
                pb::Tier::Flex
            } as i32,
            request: Some(pb::Resources {
                cpu_millis,
                memory_mib,
                ..Default::default()
            }),
            n_tasks,
            container: Some(pb::ContainerSpec {
                image: "registry.local:5000/encoding/x264-chunker:2.3".into(),
                command: vec!["/encode".into(), "--chunk-from-env".into()],
                env: [("SEASON".to_owned(), "42".to_owned())]
                    .into_iter()
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        request_id: String::new(),
    }
}

async fn connect(addr: &str) -> Channel {
    Channel::from_shared(addr.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Registers `n` load executors; each counts the launches it receives into `launched`.
async fn load_executors(
    addr: &str,
    n: usize,
    launched: Arc<AtomicU64>,
) -> Vec<mpsc::Sender<pb::ExecutorMessage>> {
    let mut senders = Vec::with_capacity(n);
    let mut registered = Vec::with_capacity(n);
    let mut channel = connect(addr).await;
    for i in 0..n {
        if i > 0 && i % STREAMS_PER_CONNECTION == 0 {
            channel = connect(addr).await;
        }
        let (tx, rx) = mpsc::channel(16);
        tx.send(pb::ExecutorMessage {
            message: Some(pb::executor_message::Message::Register(pb::Register {
                host: Some(host(i)),
                runs: vec![],
                executor_version: "bench".into(),
            })),
        })
        .await
        .unwrap();
        let mut client =
            ExecutorServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20);
        let launched = launched.clone();
        registered.push(tokio::spawn(async move {
            let mut inbound = client
                .attach(ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            tokio::spawn(async move {
                while let Some(Ok(m)) = inbound.next().await {
                    if let Some(pb::scheduler_message::Message::Launch(_)) = m.message {
                        launched.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }));
        senders.push(tx);
    }
    for r in registered {
        r.await.unwrap();
    }
    // Heartbeats keep them inside the liveness contract.
    let hb = senders.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            for tx in &hb {
                let _ = tx
                    .send(pb::ExecutorMessage {
                        message: Some(pb::executor_message::Message::Heartbeat(pb::Heartbeat {
                            sent_time: None,
                        })),
                    })
                    .await;
            }
        }
    });
    senders
}

/// The etcd the etcd sections use.
fn etcd_endpoint() -> String {
    std::env::var("EBB_ETCD_ENDPOINT").expect(
        "EBB_ETCD_ENDPOINT: the etcd sections need an etcd (eval \"$(scripts/etcd.sh start)\")",
    )
}

/// A key prefix of this run's own.
fn etcd_prefix(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("/ebb-bench/{what}-{}-{nanos}/", std::process::id())
}

async fn placement(scale: usize, etcd: bool) {
    let (n_hosts, n_tasks) = (10_000 / scale, 100_000 / scale as u32);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), n_hosts as u32);
    if etcd {
        cfg.store.backend = ebb_api::config::StoreBackend::Etcd;
        cfg.store.etcd_endpoints = vec![etcd_endpoint()];
        cfg.store.etcd_prefix = etcd_prefix("placement");
        println!("store: etcd at {}", cfg.store.etcd_endpoints[0]);
    }
    let server = ebb_api::server::start(cfg).await.unwrap();
    let addr = format!("http://{}", server.grpc_addr);
    let launched = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let _execs = load_executors(&addr, n_hosts, launched.clone()).await;
    let reg = t.elapsed();
    println!(
        "registration: {n_hosts} executors over {} connections in {:.2} s ({:.0} registrations/s)",
        n_hosts.div_ceil(STREAMS_PER_CONNECTION),
        reg.as_secs_f64(),
        n_hosts as f64 / reg.as_secs_f64()
    );
    let mut jobs = JobServiceClient::new(connect(&addr).await);
    // 6 vCPU / 24 GiB: ten per m5.16xlarge, so the job fills the fleet.
    let t = Instant::now();
    let created = jobs
        .create_job(job("encoding", n_tasks, 6_000, 24 * 1024))
        .await
        .unwrap();
    let create = t.elapsed();
    while launched.load(Ordering::Relaxed) < u64::from(n_tasks) {
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "placement stalled at {}",
            launched.load(Ordering::Relaxed)
        );
    }
    let all = t.elapsed();
    let j = jobs
        .get_job(pb::GetJobRequest {
            job_id: created.into_inner().job_id,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(j.counts.unwrap().running, n_tasks, "every task placed");
    println!(
        "placement: {n_tasks} tasks on {n_hosts} hosts: create {:.0} ms, all launches received after {:.2} s: {:.0} tasks/s end to end",
        create.as_secs_f64() * 1e3,
        all.as_secs_f64(),
        f64::from(n_tasks) / all.as_secs_f64()
    );
    println!("server RSS after placement: {:.0} MiB", rss_mib());
    server.shutdown().await.unwrap();
}

/// Connections shared by load executors, by (replica, group).
type Channels = Arc<tokio::sync::Mutex<std::collections::HashMap<(usize, usize), Channel>>>;

/// A load executor that follows the leader: it registers with the first
/// replica that accepts it (a follower's refusal names the leader), counts
/// launches, and on a broken stream registers again elsewhere, reporting
/// every run it holds.
struct Follower {
    runs: Vec<pb::RunId>,
    /// Registrations answered, in order, by replica index.
    registered: Vec<usize>,
}

fn spawn_follower(
    i: usize,
    replicas: Arc<Vec<String>>,
    channels: Channels,
    state: Arc<std::sync::Mutex<Follower>>,
    launched: Arc<AtomicU64>,
) {
    tokio::spawn(async move {
        let mut r = 0;
        let group = i / STREAMS_PER_CONNECTION;
        loop {
            // Executors share connections per replica, STREAMS_PER_CONNECTION
            // streams each (as in `load_executors`).
            let ch = {
                let mut chans = channels.lock().await;
                if !chans.contains_key(&(r, group))
                    && let Ok(c) = Channel::from_shared(replicas[r].clone())
                        .unwrap()
                        .connect()
                        .await
                {
                    chans.insert((r, group), c);
                }
                chans.get(&(r, group)).cloned()
            };
            let Some(ch) = ch else {
                r = (r + 1) % replicas.len();
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let runs = state.lock().unwrap().runs.clone();
            let (tx, rx) = mpsc::channel(16);
            let _ = tx
                .send(pb::ExecutorMessage {
                    message: Some(pb::executor_message::Message::Register(pb::Register {
                        host: Some(host(i)),
                        runs: runs
                            .into_iter()
                            .map(|run| pb::RunEvent {
                                run: Some(run),
                                time: None,
                                kind: Some(pb::run_event::Kind::Started(pb::RunStarted {})),
                            })
                            .collect(),
                        executor_version: "bench".into(),
                    })),
                })
                .await;
            let mut client = ExecutorServiceClient::new(ch).max_decoding_message_size(64 << 20);
            let mut inbound = match client.attach(ReceiverStream::new(rx)).await {
                Ok(s) => s.into_inner(),
                Err(status) => {
                    if let Some(leader) = ebb_proto::leader_hint(&status)
                        && let Some(k) = replicas.iter().position(|a| *a == leader)
                    {
                        r = k;
                    } else {
                        // A dead replica: drop its connection, try the next.
                        channels.lock().await.remove(&(r, group));
                        r = (r + 1) % replicas.len();
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    continue;
                }
            };
            state.lock().unwrap().registered.push(r);
            let hb = tx.clone();
            let beat = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    let m = pb::ExecutorMessage {
                        message: Some(pb::executor_message::Message::Heartbeat(pb::Heartbeat {
                            sent_time: None,
                        })),
                    };
                    if hb.send(m).await.is_err() {
                        return;
                    }
                }
            });
            while let Some(Ok(m)) = inbound.next().await {
                if let Some(pb::scheduler_message::Message::Launch(l)) = m.message {
                    let run = l.run.unwrap();
                    state.lock().unwrap().runs.push(run);
                    launched.fetch_add(1, Ordering::Relaxed);
                    let _ = tx
                        .send(pb::ExecutorMessage {
                            message: Some(pb::executor_message::Message::RunEvent(pb::RunEvent {
                                run: Some(run),
                                time: None,
                                kind: Some(pb::run_event::Kind::Started(pb::RunStarted {})),
                            })),
                        })
                        .await;
                }
            }
            beat.abort();
            channels.lock().await.remove(&(r, group));
        }
    });
}

/// `GET` a replica's HTTP path, if it answers.
async fn http_get(port: u16, path: &'static str) -> Option<String> {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(2)))
            .http_status_as_error(false)
            .build()
            .into();
        agent
            .get(format!("http://127.0.0.1:{port}{path}"))
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()
    })
    .await
    .ok()
    .flatten()
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Two `ebb server` processes on one etcd prefix; the leader is killed with
/// 100,000 tasks running on 10,000 executors.
async fn takeover(scale: usize) {
    let (n_hosts, n_tasks) = (10_000 / scale, 100_000 / scale as u32);
    let dir = tempfile::tempdir().unwrap();
    let (endpoint, prefix) = (etcd_endpoint(), etcd_prefix("takeover"));
    let mut replicas = Vec::new();
    let mut children = Vec::new();
    for name in ["a", "b"] {
        let (grpc, http) = (free_port(), free_port());
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                r#"listen = "127.0.0.1:{grpc}"
http_listen = "127.0.0.1:{http}"
data_dir = "{data}"
[executors]
heartbeat_interval = "10s"
missed_heartbeats = 6
[store]
backend = "etcd"
etcd_endpoints = ["{endpoint}"]
etcd_prefix = "{prefix}"
[ha]
lease_ttl = "5s"
reconcile_window = "30s"
[[market.pools]]
id = "bench"
region = "local"
reservations = [{{ instance_type = "m5.16xlarge", count = {n_hosts} }}]
"#,
                data = dir.path().join(name).display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap();
        children.push(
            std::process::Command::new(env!("CARGO_BIN_EXE_ebb"))
                .args(["server", "--config"])
                .arg(&path)
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        replicas.push((format!("http://127.0.0.1:{grpc}"), http));
        // The first one leads before the second starts.
        loop {
            let h = http_get(http, "/healthz").await.unwrap_or_default();
            if h.starts_with("ok: leader") || h.starts_with("ok: follower; leader http") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let addrs = Arc::new(replicas.iter().map(|(a, _)| a.clone()).collect::<Vec<_>>());
    let channels: Channels = Arc::default();
    let launched = Arc::new(AtomicU64::new(0));
    let states: Vec<_> = (0..n_hosts)
        .map(|_| {
            Arc::new(std::sync::Mutex::new(Follower {
                runs: Vec::new(),
                registered: Vec::new(),
            }))
        })
        .collect();
    for (i, st) in states.iter().enumerate() {
        spawn_follower(
            i,
            addrs.clone(),
            channels.clone(),
            st.clone(),
            launched.clone(),
        );
    }
    let t = Instant::now();
    while states
        .iter()
        .any(|s| s.lock().unwrap().registered.is_empty())
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "registration stalled"
        );
    }
    let mut jobs = JobServiceClient::new(connect(&addrs[0]).await);
    jobs.create_job(job("encoding", n_tasks, 6_000, 24 * 1024))
        .await
        .unwrap();
    while launched.load(Ordering::Relaxed) < u64::from(n_tasks) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(t.elapsed() < Duration::from_secs(600), "placement stalled");
    }
    // Let the leader write its snapshot and settle, as a live one would be.
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("takeover: {n_hosts} executors and {n_tasks} running tasks on the leader; killing it");
    let killed = Instant::now();
    children[0].kill().unwrap();
    children[0].wait().unwrap();
    let http_b = replicas[1].1;
    let mut elected = None;
    let mut reattached = None;
    loop {
        let h = http_get(http_b, "/healthz").await.unwrap_or_default();
        if elected.is_none() && h.starts_with("ok: leader") {
            elected = Some(killed.elapsed());
        }
        if reattached.is_none()
            && states
                .iter()
                .all(|s| s.lock().unwrap().registered.last() == Some(&1))
        {
            reattached = Some(killed.elapsed());
        }
        let m = http_get(http_b, "/metrics").await.unwrap_or_default();
        if metric(&m, "ebb_rounds_total").unwrap_or(0.0) >= 1.0 {
            let first_round = killed.elapsed();
            // The last executors may see their registration answered just
            // after the standby counted them (the first round waits for all
            // of them, or the window): wait for their side too.
            while reattached.is_none() {
                if states
                    .iter()
                    .all(|s| s.lock().unwrap().registered.last() == Some(&1))
                {
                    reattached = Some(killed.elapsed());
                }
                assert!(
                    killed.elapsed() < Duration::from_secs(120),
                    "executors did not re-attach"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let rebuild = metric(&m, "ebb_takeover_seconds").unwrap_or(f64::NAN);
            println!(
                "takeover: leader killed → standby elected and rebuilt {:.2} s (rebuild {rebuild:.2} s) → first round planned {:.2} s (all {n_hosts} executors saw their re-registration answered by {:.2} s)",
                elected.unwrap_or_default().as_secs_f64(),
                first_round.as_secs_f64(),
                reattached.map_or(f64::NAN, |d| d.as_secs_f64())
            );
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(120),
            "no takeover within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut jobs = JobServiceClient::new(connect(&addrs[1]).await);
    let listed = jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let running = listed.jobs[0].counts.unwrap().running;
    assert_eq!(
        running, n_tasks,
        "every task still running after the takeover"
    );
    assert_eq!(
        launched.load(Ordering::Relaxed),
        u64::from(n_tasks),
        "nothing launched twice"
    );
    let _ = children[1].kill();
    let _ = children[1].wait();
}

async fn create_latency(scale: usize) {
    let (n_clients, per_client) = (100, 50 / scale.min(10));
    let dir = tempfile::tempdir().unwrap();
    let server = ebb_api::server::start(config(dir.path(), 100))
        .await
        .unwrap();
    let addr = format!("http://{}", server.grpc_addr);
    let _execs = load_executors(&addr, 100, Arc::new(AtomicU64::new(0))).await;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..n_clients {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut jobs = JobServiceClient::new(connect(&addr).await);
            let mut lat = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let mut req = job(&format!("team-{}", c % 10), 1, 500, 512);
                req.request_id = format!("c{c}-{i}");
                let t = Instant::now();
                jobs.create_job(req).await.unwrap();
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let wall = t.elapsed();
    all.sort();
    let p = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)].as_secs_f64() * 1e3;
    println!(
        "create latency: {} creates from {n_clients} concurrent clients in {:.2} s ({:.0} creates/s): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        all.len(),
        wall.as_secs_f64(),
        all.len() as f64 / wall.as_secs_f64(),
        p(0.50),
        p(0.99),
        p(1.0)
    );
    server.shutdown().await.unwrap();
}

async fn memory(scale: usize) {
    let n_jobs = 10 / scale.min(10);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 100);
    let server = ebb_api::server::start(cfg.clone()).await.unwrap();
    let addr = format!("http://{}", server.grpc_addr);
    let before = rss_mib();
    let mut jobs = JobServiceClient::new(connect(&addr).await);
    for _ in 0..n_jobs {
        jobs.create_job(job("encoding", 100_000, 4_000, 8_192))
            .await
            .unwrap();
    }
    // Let a round (no hosts: every task gets its reason) settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_mib();
    let n = n_jobs * 100_000;
    println!(
        "memory: {n} tasks known (pending, no hosts): RSS {after:.0} MiB, {:.0} MiB above the empty server ({before:.0} MiB), {:.0} bytes per task",
        after - before,
        (after - before) * 1024.0 * 1024.0 / n as f64
    );
    let t = Instant::now();
    server.shutdown().await.unwrap();
    let stop = t.elapsed();
    let size = std::fs::metadata(cfg.data_dir.join("ebb.redb")).map_or(0, |m| m.len());
    let t = Instant::now();
    let server = ebb_api::server::start(cfg).await.unwrap();
    let restart = t.elapsed();
    let mut jobs = JobServiceClient::new(connect(&format!("http://{}", server.grpc_addr)).await);
    let listed = jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.jobs.len(), n_jobs);
    println!(
        "restart: shutdown with snapshot {:.2} s, store {:.0} MiB, restart (restore) {:.2} s",
        stop.as_secs_f64(),
        size as f64 / (1024.0 * 1024.0),
        restart.as_secs_f64()
    );
    server.shutdown().await.unwrap();
}

/// The same shape through the core alone (no server): one round placing ten
/// 6-vCPU tasks per host, to separate the core's cost from the server's.
fn core_round(n_hosts: usize) {
    let mut s = core::Scheduler::new(core::SchedulerConfig::default());
    let now = core::Timestamp::from_millis(1);
    for i in 0..n_hosts {
        let h = host(i);
        let spec = core::HostSpec {
            id: core::HostId::from(h.host_id.as_str()),
            pool: core::PoolId::from("bench"),
            instance_type: h.instance_type.clone(),
            zone: h.zone.clone(),
            region: h.region.clone(),
            attributes: Default::default(),
            capacity: core::Resources::cpu_mem(64_000, 256 * 1024),
            gpu_model: None,
        };
        s.handle_host_added(now, spec).unwrap();
    }
    let n_tasks = (n_hosts * 10) as u32;
    s.handle_job_submitted(
        now,
        core::JobSpec {
            id: core::JobId(1),
            request_key: None,
            name: "bench".into(),
            team: core::TeamId::from("encoding"),
            tier: core::Tier::Flex,
            priority: 0,
            bid: None,
            request: core::Resources::cpu_mem(6_000, 24 * 1024),
            n_tasks,
            hard_constraints: vec![],
            soft_constraints: vec![],
            gang: false,
            retry: core::RetryPolicy::default(),
            disruption_budget: None,
            checkpoint_interval: None,
            expected_runtime: None,
        },
    )
    .unwrap();
    let t = Instant::now();
    let plan = s.plan_round(now).unwrap();
    let plan_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let report = s.commit(now, plan.clone()).unwrap();
    let commit_s = t.elapsed().as_secs_f64();
    println!(
        "core alone: {n_hosts} hosts, {} placements: plan_round {:.0} ms ({:.1} µs/task, {} hosts examined), commit {:.0} ms",
        report.n_applied,
        plan_s * 1e3,
        plan_s * 1e6 / f64::from(plan.stats.n_placed.max(1)),
        plan.stats.n_hosts_examined,
        commit_s * 1e3
    );
}

fn main() {
    // EBB_BENCH_LOG=ebb_api=debug shows per-round timings.
    if let Ok(filter) = std::env::var("EBB_BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let run = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 10 } else { 1 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if run("core") {
        for n in [1_000 / scale, 10_000 / scale] {
            core_round(n);
        }
    }
    rt.block_on(async {
        if run("placement") {
            placement(scale, false).await;
        }
        if only.iter().any(|o| o == "placement-etcd") {
            placement(scale, true).await;
        }
        if only.iter().any(|o| o == "takeover") {
            takeover(scale).await;
        }
        if run("latency") {
            create_latency(scale).await;
        }
        if run("memory") {
            memory(scale).await;
        }
    });
}
