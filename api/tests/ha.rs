//! High availability on etcd: `ebb server` replicas as separate processes
//! sharing one etcd key prefix, a fleet of protocol executors that follow
//! the leader (they speak the real executor protocol and run nothing), and
//! the `ebb` CLI pointed at every replica.
//!
//! - `kill -9` of the leader mid-run: the standby takes over within 15 s,
//!   every task completes exactly once (from the executors' own books and
//!   from the store), and the CLI keeps working through the switch.
//! - SIGSTOP of the leader past its lease: the standby takes over; on
//!   SIGCONT the old leader writes nothing (its fenced writes are refused)
//!   and steps down.
//! - An etcd restart mid-run: nothing acknowledged is lost and scheduling
//!   resumes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ebb_proto::v1 as pb;
use ebb_proto::v1::executor_service_client::ExecutorServiceClient;
use ebb_proto::v1::job_service_client::JobServiceClient;
use pb::executor_message::Message as In;
use pb::scheduler_message::Message as Out;
use tokio::sync::{Mutex, mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// One `ebb server` process.
struct Replica {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    grpc: String,
    http: u16,
}

impl Replica {
    /// Writes its config and starts it; returns once it answers /healthz.
    async fn start(dir: &Path, name: &str, endpoint: &str, prefix: &str) -> Replica {
        let (grpc, http) = (free_port(), free_port());
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"
listen = "127.0.0.1:{grpc}"
http_listen = "127.0.0.1:{http}"
data_dir = "{data}"

[executors]
heartbeat_interval = "500ms"
# 10 s: hosts outlive a takeover.
missed_heartbeats = 20

[rounds]
interval = "5ms"

[store]
backend = "etcd"
etcd_endpoints = ["{endpoint}"]
etcd_prefix = "{prefix}"
# Small, so a takeover reads a snapshot and a log after it.
snapshot_every_records = 50

[ha]
lease_ttl = "3s"
reconcile_window = "5s"
"#,
                data = dir.join(name).display(),
            ),
        )
        .unwrap();
        let log = dir.join(format!("{name}.log"));
        let mut r = Replica {
            child: None,
            config,
            log,
            grpc: format!("http://127.0.0.1:{grpc}"),
            http,
        };
        r.spawn().await;
        r
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_ebb"))
                .args(["server", "--config"])
                .arg(&self.config)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let http = self.http;
        eventually("the replica to answer /healthz", || async move {
            healthz(http).await
        })
        .await;
    }

    fn pid(&self) -> String {
        self.child.as_ref().unwrap().id().to_string()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {}", self.pid());
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    async fn health(&self) -> String {
        healthz(self.http).await.unwrap_or_default()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `GET /healthz`: "ok: leader", "ok: follower; leader …".
async fn healthz(port: u16) -> Option<String> {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(2)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut r = agent
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .call()
            .ok()?;
        r.body_mut().read_to_string().ok()
    })
    .await
    .ok()
    .flatten()
}

/// Waits until `r` reports `want` (a /healthz prefix), up to `within`;
/// returns how long it took.
async fn wait_health(r: &Replica, want: &str, within: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let h = r.health().await;
        if h.starts_with(want) {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < within,
            "{} did not report {want:?} within {within:?} (last: {h:?}); its log:\n{}",
            r.grpc,
            tail(&r.log_text())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The tests here run one at a time: each starts several server processes
/// (and some an etcd) on a small machine, where overlapping them would only
/// stretch their lease timings.
static SERIAL: Mutex<()> = Mutex::const_new(());

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A protocol executor's own book.
#[derive(Default, Debug)]
struct Book {
    /// Runs it holds: (job, task) -> attempt.
    live: BTreeMap<(u64, u32), u32>,
    /// Runs that ended here, with their exit code (reported at every
    /// registration until the end of the test, as a real executor keeps
    /// terminal events until the server has them).
    ended: Vec<(pb::RunId, i32)>,
    /// Every launch received.
    launches: Vec<pb::RunId>,
    /// Launches of a task this executor was already running.
    double_launch: Vec<(u64, u32)>,
    /// Server addresses it registered with, in order.
    registered_at: Vec<String>,
}

/// Runs each launched task for `run_ms`, then reports it exited 0. Follows
/// the leader: a follower's refusal names it; a dead replica sends it to
/// the next address.
fn spawn_executor(
    addrs: Vec<String>,
    host: pb::HostSpec,
    run_ms: u64,
    book: Arc<Mutex<Book>>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (fin_tx, mut fin_rx) = mpsc::unbounded_channel::<pb::RunId>();
        let mut next = 0;
        let mut addr = addrs[0].clone();
        loop {
            if *stop.borrow() {
                return;
            }
            let attempt = async {
                // HTTP/2 pings, as the real executor sends: a paused server
                // (whose kernel still keeps the TCP connection) is noticed.
                let ch = Channel::from_shared(addr.clone())
                    .unwrap()
                    .connect_timeout(Duration::from_secs(1))
                    .http2_keep_alive_interval(Duration::from_millis(500))
                    .keep_alive_timeout(Duration::from_secs(1))
                    .keep_alive_while_idle(true)
                    .connect()
                    .await
                    .map_err(|e| (None, e.to_string()))?;
                let (tx, rx) = mpsc::channel(4096);
                let register = {
                    let b = book.lock().await;
                    let started = b.live.iter().map(|((job_id, task_index), attempt)| {
                        event(
                            pb::RunId {
                                job_id: *job_id,
                                task_index: *task_index,
                                attempt: *attempt,
                            },
                            pb::run_event::Kind::Started(pb::RunStarted {}),
                        )
                    });
                    let ended = b.ended.iter().map(|(r, code)| {
                        event(
                            *r,
                            pb::run_event::Kind::Exited(pb::RunExited {
                                exit_code: *code,
                                message: String::new(),
                            }),
                        )
                    });
                    pb::Register {
                        host: Some(host.clone()),
                        runs: started.chain(ended).collect(),
                        executor_version: "ha-test".into(),
                    }
                };
                tx.send(pb::ExecutorMessage {
                    message: Some(In::Register(register)),
                })
                .await
                .unwrap();
                let inbound = ExecutorServiceClient::new(ch)
                    .attach(ReceiverStream::new(rx))
                    .await
                    .map_err(|s| (ebb_proto::leader_hint(&s), s.to_string()))?
                    .into_inner();
                Ok((tx, inbound))
            };
            let (tx, mut inbound) = match attempt.await {
                Ok(x) => x,
                Err((Some(leader), _)) => {
                    addr = leader;
                    continue;
                }
                Err((None, _)) => {
                    next = (next + 1) % addrs.len();
                    addr = addrs[next].clone();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            book.lock().await.registered_at.push(addr.clone());
            let mut heartbeat = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    m = inbound.next() => match m {
                        Some(Ok(m)) => match m.message {
                            Some(Out::Launch(l)) => {
                                let r = l.run.unwrap();
                                {
                                    let mut b = book.lock().await;
                                    let key = (r.job_id, r.task_index);
                                    if b.live.contains_key(&key) {
                                        b.double_launch.push(key);
                                    }
                                    b.live.insert(key, r.attempt);
                                    b.launches.push(r);
                                }
                                let _ = tx
                                    .send(msg(event(r, pb::run_event::Kind::Started(pb::RunStarted {}))))
                                    .await;
                                let fin = fin_tx.clone();
                                tokio::spawn(async move {
                                    tokio::time::sleep(Duration::from_millis(run_ms)).await;
                                    let _ = fin.send(r);
                                });
                            }
                            Some(Out::Stop(s)) => {
                                let r = s.run.unwrap();
                                let mut b = book.lock().await;
                                if b.live.get(&(r.job_id, r.task_index)) == Some(&r.attempt) {
                                    b.live.remove(&(r.job_id, r.task_index));
                                }
                                drop(b);
                                let _ = tx
                                    .send(msg(event(
                                        r,
                                        pb::run_event::Kind::Stopped(pb::RunStopped {
                                            reason: s.reason,
                                            killed_after_grace: false,
                                        }),
                                    )))
                                    .await;
                            }
                            _ => {}
                        },
                        // The stream ended: reconnect (to the leader).
                        _ => break,
                    },
                    Some(r) = fin_rx.recv() => {
                        let mut b = book.lock().await;
                        if b.live.get(&(r.job_id, r.task_index)) != Some(&r.attempt) {
                            continue;
                        }
                        b.live.remove(&(r.job_id, r.task_index));
                        b.ended.push((r, 0));
                        drop(b);
                        let exited = pb::run_event::Kind::Exited(pb::RunExited {
                            exit_code: 0,
                            message: String::new(),
                        });
                        // If the stream is gone, the next registration reports it.
                        let _ = tx.send(msg(event(r, exited))).await;
                    }
                    _ = heartbeat.tick() => {
                        let hb = pb::ExecutorMessage {
                            message: Some(In::Heartbeat(pb::Heartbeat { sent_time: None })),
                        };
                        if tx.send(hb).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
    })
}

fn event(run: pb::RunId, kind: pb::run_event::Kind) -> pb::RunEvent {
    pb::RunEvent {
        run: Some(run),
        time: None,
        kind: Some(kind),
    }
}

fn msg(e: pb::RunEvent) -> pb::ExecutorMessage {
    pb::ExecutorMessage {
        message: Some(In::RunEvent(e)),
    }
}

/// The `ebb` CLI against every replica.
fn cli(addrs: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ebb"))
        .args(args)
        .args(["--addr", addrs])
        .env_remove("EBB_ADDR")
        .output()
        .unwrap()
}

async fn jobs_at(addr: &str) -> JobServiceClient<Channel> {
    JobServiceClient::new(
        Channel::from_shared(addr.to_owned())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
}

/// The fleet's books, its stop switch, and its tasks.
type Fleet = (
    Vec<Arc<Mutex<Book>>>,
    watch::Sender<bool>,
    Vec<tokio::task::JoinHandle<()>>,
);

/// Eight hosts of four one-CPU slots each.
fn fleet(addrs: &[String], run_ms: u64) -> Fleet {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut books = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut h = host(&format!("h{i}"), 4000, 65536);
        h.instance_type = "m5.4xlarge".into();
        let book = Arc::new(Mutex::new(Book::default()));
        tasks.push(spawn_executor(
            addrs.to_vec(),
            h,
            run_ms,
            book.clone(),
            stop_rx.clone(),
        ));
        books.push(book);
    }
    (books, stop_tx, tasks)
}

async fn n_ended(books: &[Arc<Mutex<Book>>]) -> usize {
    let mut n = 0;
    for b in books {
        n += b.lock().await.ended.len();
    }
    n
}

/// Every task of `jobs` completed exactly once: from the executors' books
/// (one exit 0 per task, no launch of a task already running) and from the
/// store (each task succeeded, with the attempt an executor finished).
async fn assert_exactly_once(books: &[Arc<Mutex<Book>>], leader: &str, jobs: &[(u64, u32)]) {
    let mut finished: BTreeMap<(u64, u32), u32> = BTreeMap::new();
    for b in books {
        let b = b.lock().await;
        assert!(
            b.double_launch.is_empty(),
            "launched while running: {:?}",
            b.double_launch
        );
        for (r, code) in &b.ended {
            assert_eq!(*code, 0);
            let prev = finished.insert((r.job_id, r.task_index), r.attempt);
            assert!(
                prev.is_none(),
                "task {}/{} completed twice (attempts {prev:?} and {})",
                r.job_id,
                r.task_index,
                r.attempt
            );
        }
    }
    let mut client = jobs_at(leader).await;
    for (job_id, n_tasks) in jobs {
        let tasks = client
            .list_tasks(pb::ListTasksRequest {
                job_id: *job_id,
                page_size: 10_000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .tasks;
        assert_eq!(tasks.len(), *n_tasks as usize);
        for t in tasks {
            assert_eq!(
                t.state,
                pb::TaskState::Completed as i32,
                "task {job_id}/{}",
                t.task_index
            );
            assert_eq!(
                finished.get(&(*job_id, t.task_index)).copied(),
                Some(t.run.unwrap().attempt),
                "task {job_id}/{}: the store's completed attempt is the one an executor ran to the end",
                t.task_index
            );
        }
    }
    let ours: BTreeSet<u64> = jobs.iter().map(|(j, _)| *j).collect();
    let extra: Vec<_> = finished.keys().filter(|(j, _)| !ours.contains(j)).collect();
    assert!(extra.is_empty(), "tasks of unknown jobs ran: {extra:?}");
}

async fn wait_succeeded(addr: &str, job_id: u64, within: Duration) {
    let t = Instant::now();
    loop {
        if let Ok(j) = jobs_at(addr)
            .await
            .get_job(pb::GetJobRequest { job_id })
            .await
            && j.into_inner().phase == pb::JobPhase::Succeeded as i32
        {
            return;
        }
        assert!(
            t.elapsed() < within,
            "job {job_id} did not succeed within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_standby_takes_over_from_a_killed_leader_and_every_task_completes_exactly_once() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (endpoint, prefix) = (etcd_endpoint(), unique_etcd_prefix("ha-kill"));
    let mut a = Replica::start(dir.path(), "a", &endpoint, &prefix).await;
    wait_health(&a, "ok: leader", Duration::from_secs(15)).await;
    let b = Replica::start(dir.path(), "b", &endpoint, &prefix).await;
    wait_health(
        &b,
        &format!("ok: follower; leader {}", a.grpc),
        Duration::from_secs(15),
    )
    .await;

    // A follower refuses with the leader's address...
    let refused = jobs_at(&b.grpc)
        .await
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused}");
    assert_eq!(
        ebb_proto::leader_hint(&refused).as_deref(),
        Some(a.grpc.as_str())
    );
    // ...which the CLI follows.
    let out = cli(&b.grpc, &["job", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is a follower"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Executors are pointed at the follower first: they follow to the leader.
    let addrs = vec![b.grpc.clone(), a.grpc.clone()];
    let both = addrs.join(",");
    let (books, stop, tasks) = fleet(&addrs, 300);
    let n_tasks = 160;
    let job_id = jobs_at(&a.grpc)
        .await
        .create_job(job("enc", n_tasks))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    // Mid-run: some tasks done, rounds still placing.
    eventually("40 tasks done", || {
        let books = books.clone();
        async move { (n_ended(&books).await >= 40).then_some(()) }
    })
    .await;
    for bk in &books {
        assert_eq!(
            bk.lock().await.registered_at.first(),
            Some(&a.grpc),
            "executors attach to the leader"
        );
    }

    // The CLI keeps working through the switch.
    let cli_ok = {
        let both = both.clone();
        tokio::spawn(async move {
            let mut n = 0;
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(12) {
                let both = both.clone();
                let out = tokio::task::spawn_blocking(move || {
                    cli(&both, &["job", "get", &job_id.to_string()])
                })
                .await
                .unwrap();
                assert!(
                    out.status.success(),
                    "`ebb job get` failed during the switch: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                n += 1;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = Instant::now();
    a.kill9();
    // A submission during the takeover waits for the new leader and is
    // created once.
    let submitted = {
        let both = both.clone();
        let file = dir.path().join("small.yaml");
        std::fs::write(
            &file,
            "name: small\nteam: enc\ntier: flex\npriority: 10\ntasks: 2\nrequest:\n  cpu_millis: 1000\n  memory_mib: 1024\ncontainer:\n  image: busybox:1.36\n  command: [\"true\"]\n",
        )
        .unwrap();
        tokio::task::spawn_blocking(move || {
            cli(&both, &["job", "submit", "-f", file.to_str().unwrap()])
        })
    };
    let takeover = wait_health(&b, "ok: leader", Duration::from_secs(15)).await;
    let out = submitted.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let small: u64 = stdout
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("job id in {stdout:?}"));
    wait_succeeded(&b.grpc, job_id, Duration::from_secs(60)).await;
    wait_succeeded(&b.grpc, small, Duration::from_secs(30)).await;
    let n_cli = cli_ok.await.unwrap();
    eprintln!(
        "takeover: standby leading {:.2} s after the kill; job done {:.2} s after; {n_cli} CLI calls through the switch",
        takeover.as_secs_f64(),
        killed.elapsed().as_secs_f64()
    );
    let listed = jobs_at(&b.grpc)
        .await
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(
        listed.len(),
        2,
        "the submission during the switch created one job"
    );
    assert_exactly_once(&books, &b.grpc, &[(job_id, n_tasks), (small, 2)]).await;
    for bk in &books {
        assert_eq!(bk.lock().await.registered_at.last(), Some(&b.grpc));
    }
    let _ = stop.send(true);
    for t in tasks {
        let _ = t.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_leader_that_wakes_after_losing_its_lease_writes_nothing_and_steps_down() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (endpoint, prefix) = (etcd_endpoint(), unique_etcd_prefix("ha-pause"));
    let a = Replica::start(dir.path(), "a", &endpoint, &prefix).await;
    wait_health(&a, "ok: leader", Duration::from_secs(15)).await;
    let b = Replica::start(dir.path(), "b", &endpoint, &prefix).await;
    wait_health(&b, "ok: follower; leader", Duration::from_secs(15)).await;
    let addrs = vec![a.grpc.clone(), b.grpc.clone()];
    // Long tasks: they are running across the whole pause.
    let (books, stop, tasks) = fleet(&addrs, 600_000);
    let job_id = jobs_at(&a.grpc)
        .await
        .create_job(job("enc", 16))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    eventually("16 launches", || {
        let books = books.clone();
        async move {
            let mut n = 0;
            for b in &books {
                n += b.lock().await.launches.len();
            }
            (n == 16).then_some(())
        }
    })
    .await;

    let paused = Instant::now();
    a.signal("-STOP");
    wait_health(&b, "ok: leader", Duration::from_secs(15)).await;
    // Every executor is with the new leader before the old one wakes: it
    // had missed their heartbeats for the whole pause, so if it could still
    // write it would declare them all lost.
    eventually("every executor attached to the new leader", || {
        let (books, leader) = (books.clone(), b.grpc.clone());
        async move {
            for bk in &books {
                if bk.lock().await.registered_at.last() != Some(&leader) {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    // Stay paused past the old leader's heartbeat timeout (10 s), so that
    // on waking it has something to write: every host it knew went silent.
    tokio::time::sleep(Duration::from_secs(12).saturating_sub(paused.elapsed())).await;
    let before = jobs_at(&b.grpc)
        .await
        .get_job(pb::GetJobRequest { job_id })
        .await
        .unwrap()
        .into_inner();
    let stored = store_revisions(&endpoint, &prefix).await;
    a.signal("-CONT");
    wait_health(
        &a,
        &format!("ok: follower; leader {}", b.grpc),
        Duration::from_secs(15),
    )
    .await;
    let log = a.log_text();
    assert!(
        log.contains("no longer the leader"),
        "the old leader says it stepped down:\n{}",
        tail(&log)
    );
    // Nothing it tried after waking reached the store: no key under the
    // prefix changed (only election keys: it campaigns again), read from
    // etcd itself...
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        store_revisions(&endpoint, &prefix).await,
        stored,
        "the store changed after the old leader woke:\n{}",
        tail(&log)
    );
    // ...and, as the new leader sees it, the tasks still run where they ran
    // (no host was declared lost, nothing was requeued or relaunched).
    let after = jobs_at(&b.grpc)
        .await
        .get_job(pb::GetJobRequest { job_id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counts_map(&after).get("running"), Some(&16), "{after:?}");
    assert_eq!(before.counts, after.counts);
    let mut launches = 0;
    for bk in &books {
        let bk = bk.lock().await;
        assert!(bk.double_launch.is_empty());
        launches += bk.launches.len();
    }
    assert_eq!(launches, 16, "no task was launched again");
    let _ = stop.send(true);
    for t in tasks {
        let _ = t.await;
    }
}

/// Every key under `prefix` but the election's, with its mod revision.
async fn store_revisions(endpoint: &str, prefix: &str) -> BTreeMap<String, i64> {
    let mut c = etcd_client::Client::connect([endpoint], None)
        .await
        .unwrap();
    let r = c
        .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    r.kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.mod_revision(),
            )
        })
        .filter(|(k, _)| !k.starts_with(&format!("{prefix}leader/")))
        .collect()
}

/// A private etcd (this test restarts it), on fresh loopback ports.
struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    client: u16,
    peer: u16,
    /// Server certificate and key (PEM files): clients must use TLS.
    tls: Option<(PathBuf, PathBuf)>,
}

impl Etcd {
    fn start(dir: &Path) -> Etcd {
        Etcd::start_with(dir, None)
    }

    fn start_with(dir: &Path, tls: Option<(PathBuf, PathBuf)>) -> Etcd {
        let mut e = Etcd {
            child: None,
            dir: dir.join("etcd"),
            client: free_port(),
            peer: free_port(),
            tls,
        };
        e.spawn();
        e
    }

    fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client)
    }

    fn spawn(&mut self) {
        let (client, peer) = (self.client, self.peer);
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut tls_args: Vec<String> = Vec::new();
        if let Some((cert, key)) = &self.tls {
            tls_args = vec![
                "--cert-file".into(),
                cert.display().to_string(),
                "--key-file".into(),
                key.display().to_string(),
            ];
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.with_extension("log"))
            .unwrap();
        self.child = Some(
            Command::new("etcd")
                .args(["--name", "ebb-ha-test", "--data-dir"])
                .arg(&self.dir)
                .args(&tls_args)
                .args([
                    "--listen-client-urls",
                    &format!("{scheme}://127.0.0.1:{client}"),
                    "--advertise-client-urls",
                    &format!("{scheme}://127.0.0.1:{client}"),
                    "--listen-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-cluster",
                    &format!("ebb-ha-test=http://127.0.0.1:{peer}"),
                ])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("etcd (Debian's etcd-server; scripts/test.sh installs it)"),
        );
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(30), "etcd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_etcd_restart_mid_run_loses_nothing_acknowledged_and_scheduling_resumes() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = Etcd::start(dir.path());
    let a = Replica::start(dir.path(), "a", &etcd.endpoint(), "/ebb-ha/").await;
    wait_health(&a, "ok: leader", Duration::from_secs(15)).await;
    let addrs = vec![a.grpc.clone()];
    let (books, stop, tasks) = fleet(&addrs, 300);
    let first = jobs_at(&a.grpc)
        .await
        .create_job(job("enc", 120))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    eventually("30 tasks done", || {
        let books = books.clone();
        async move { (n_ended(&books).await >= 30).then_some(()) }
    })
    .await;

    // Clients keep creating jobs while etcd goes away and comes back.
    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let creator = {
        let (addr, acked, done) = (a.grpc.clone(), acked.clone(), done.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let mut req = job("enc", 1);
                req.request_id = format!("during-restart-{i}");
                if let Ok(mut c) =
                    tokio::time::timeout(Duration::from_secs(2), jobs_at(&addr)).await
                    && let Ok(Ok(j)) =
                        tokio::time::timeout(Duration::from_secs(20), c.create_job(req)).await
                {
                    acked.lock().await.push(j.into_inner().job_id);
                    i += 1;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    etcd.kill9();
    // While a batch waits for etcd, reads are answered from memory, marked
    // stale (until the lease lapses and the replica stops leading).
    let down = Instant::now();
    let mut stale_reads = 0;
    let mut client = jobs_at(&a.grpc).await;
    while down.elapsed() < Duration::from_secs(3) {
        let read = tokio::time::timeout(
            Duration::from_millis(500),
            client.get_job(pb::GetJobRequest { job_id: first }),
        )
        .await;
        if let Ok(Ok(r)) = read
            && r.metadata().contains_key(ebb_api::server::STALE_HEADER)
        {
            stale_reads += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stale_reads > 0, "no read was answered while etcd was down");
    etcd.spawn();
    // It leads again (the same term, or a new one after its lease lapsed).
    wait_health(&a, "ok: leader", Duration::from_secs(30)).await;
    eventually("fresh (not stale) answers", || {
        let addr = a.grpc.clone();
        async move {
            let r = jobs_at(&addr)
                .await
                .get_job(pb::GetJobRequest { job_id: first })
                .await
                .ok()?;
            (!r.metadata().contains_key(ebb_api::server::STALE_HEADER)).then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    creator.await.unwrap();
    let acked = acked.lock().await.clone();
    assert!(!acked.is_empty());
    // Every acknowledged job is there, and every job there (a creation
    // whose answer was lost may be too) runs to the end, exactly once.
    let listed: BTreeMap<u64, u32> = jobs_at(&a.grpc)
        .await
        .list_jobs(pb::ListJobsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs
        .into_iter()
        .map(|j| (j.job_id, j.spec.unwrap().n_tasks))
        .collect();
    for id in &acked {
        assert!(listed.contains_key(id), "acknowledged job {id} lost");
    }
    for id in listed.keys() {
        wait_succeeded(&a.grpc, *id, Duration::from_secs(60)).await;
    }
    let all: Vec<(u64, u32)> = listed.into_iter().collect();
    assert!(all.contains(&(first, 120)));
    assert_exactly_once(&books, &a.grpc, &all).await;
    let _ = stop.send(true);
    for t in tasks {
        let _ = t.await;
    }
}

/// TLS and user/password authentication to etcd: a private etcd serving
/// TLS only, with `auth enable`. The server connects with the CA and the
/// password file and leads; without the CA, or with a wrong password, it
/// refuses to start and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_reaches_etcd_over_tls_with_a_user_and_password() {
    let _serial = SERIAL.lock().await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("etcd.pem"), dir.path().join("etcd-key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let etcd = Etcd::start_with(dir.path(), Some((cert_path.clone(), key_path)));
    // Enable auth: a root user (etcd requires it) with the root role.
    let tls = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(cert.cert.pem()));
    let mut c = etcd_client::Client::connect(
        [etcd.endpoint()],
        Some(etcd_client::ConnectOptions::new().with_tls(tls)),
    )
    .await
    .unwrap();
    c.user_add("root", "s3cret", None).await.unwrap();
    c.user_grant_role("root", "root").await.unwrap();
    c.auth_enable().await.unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "s3cret\n").unwrap();
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "guess\n").unwrap();

    let config = |name: &str, extra: &str| {
        let (grpc, http) = (free_port(), free_port());
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                r#"listen = "127.0.0.1:{grpc}"
http_listen = "127.0.0.1:{http}"
data_dir = "{data}"
[store]
backend = "etcd"
etcd_endpoints = ["{endpoint}"]
etcd_prefix = "/ebb-tls/"
{extra}
"#,
                data = dir.path().join(name).display(),
                endpoint = etcd.endpoint(),
            ),
        )
        .unwrap();
        (path, http)
    };
    let run_fails = |path: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_ebb"))
            .args(["server", "--config"])
            .arg(path)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let ca = format!("etcd_ca_cert = \"{}\"", cert_path.display());
    let user = |file: &Path| {
        format!(
            "etcd_user = \"root\"\netcd_password_file = \"{}\"",
            file.display()
        )
    };
    // No CA: the TLS handshake cannot verify etcd.
    let (path, _) = config("no-ca", &user(&password));
    let err = run_fails(&path);
    assert!(err.contains("etcd"), "{err}");
    // A wrong password.
    let (path, _) = config("wrong", &format!("{ca}\n{}", user(&wrong)));
    let err = run_fails(&path);
    assert!(
        err.to_lowercase().contains("authentication failed"),
        "{err}"
    );
    // Both right: it leads, and its state is in etcd under its prefix.
    let (path, http) = config("ok", &format!("{ca}\n{}", user(&password)));
    let log = std::fs::File::create(dir.path().join("ok.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ebb"))
        .args(["server", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !healthz(http)
        .await
        .unwrap_or_default()
        .starts_with("ok: leader")
    {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no leader over TLS with auth:\n{}",
            std::fs::read_to_string(dir.path().join("ok.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = etcd_client::Client::connect(
        [etcd.endpoint()],
        Some(
            etcd_client::ConnectOptions::new()
                .with_user("root", "s3cret")
                .with_tls(
                    etcd_client::TlsOptions::new()
                        .ca_certificate(etcd_client::Certificate::from_pem(cert.cert.pem())),
                ),
        ),
    )
    .await
    .unwrap();
    let v = c.get("/ebb-tls/format_version", None).await.unwrap();
    assert_eq!(v.kvs().len(), 1);
    let _ = child.kill();
    let _ = child.wait();
}
