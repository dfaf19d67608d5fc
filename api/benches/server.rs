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
//! `cargo bench -p ebb-api --bench server [-- --quick] [core|placement|latency|memory]`
//! (quick: 10x smaller; names pick sections).
//! The server runs in this process on loopback with a temporary data
//! directory; load executors speak the real protocol but run nothing.

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

async fn placement(scale: usize) {
    let (n_hosts, n_tasks) = (10_000 / scale, 100_000 / scale as u32);
    let dir = tempfile::tempdir().unwrap();
    let server = ebb_api::server::start(config(dir.path(), n_hosts as u32))
        .await
        .unwrap();
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
            placement(scale).await;
        }
        if run("latency") {
            create_latency(scale).await;
        }
        if run("memory") {
            memory(scale).await;
        }
    });
}
