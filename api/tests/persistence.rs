//! Persistence: the real `ebb` binary as a separate process, killed with
//! SIGKILL while jobs arrive and rounds run, then restarted on the same data
//! directory (or etcd key prefix). Every acknowledged job must be there, the runs the fake
//! executors hold must be adopted, and — from the executors' own books —
//! nothing may be launched twice.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ebb_proto::v1 as pb;
use tokio::sync::Mutex;

struct Server {
    child: Child,
    addr: String,
}

impl Server {
    async fn spawn(config: &std::path::Path, log: &std::path::Path, grpc: u16) -> Server {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ebb"))
            .args(["server", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let addr = format!("http://127.0.0.1:{grpc}");
        let s = Server { child, addr };
        eventually("the server to accept connections", || {
            let addr = s.addr.clone();
            async move {
                let ch = tonic::transport::Channel::from_shared(addr)
                    .ok()?
                    .connect()
                    .await
                    .ok()?;
                let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
                h.check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .ok()
            }
        })
        .await;
        s
    }

    fn kill9(&mut self) {
        // Child::kill sends SIGKILL on Unix: no flush, no snapshot.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reports `started` for every launch it has not reported yet, and
/// `exited 0` right after for those `finish` picks.
fn respond(
    e: Arc<FakeExecutor>,
    from: usize,
    finish: fn(&pb::RunId) -> bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut done = from;
        loop {
            let launches = e.launched().await;
            for r in &launches[done..] {
                e.started(r).await;
                if finish(r) {
                    e.exited(r, 0).await;
                }
            }
            done = launches.len();
            if e.closed.lock().await.is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_round_loses_nothing_acknowledged_and_launches_nothing_twice() {
    sigkill_mid_round(TestStore::Embedded).await;
}

/// The same on etcd: the restarted server reads back, from etcd, every
/// batch the killed one had acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_round_on_etcd_loses_nothing_acknowledged_and_launches_nothing_twice() {
    sigkill_mid_round(TestStore::Etcd).await;
}

async fn sigkill_mid_round(store: TestStore) {
    // Both runs of the server use the same store: the data directory, or
    // one etcd key prefix.
    let store_keys = match store {
        TestStore::Embedded => String::new(),
        TestStore::Etcd => format!(
            "backend = \"etcd\"\netcd_endpoints = [\"{}\"]\netcd_prefix = \"{}\"\n",
            etcd_endpoint(),
            unique_etcd_prefix("sigkill")
        ),
    };
    let dir = tempfile::tempdir().unwrap();
    let (grpc, http) = (free_port(), free_port());
    let config = dir.path().join("ebb.toml");
    std::fs::write(
        &config,
        format!(
            r#"
listen = "127.0.0.1:{grpc}"
http_listen = "127.0.0.1:{http}"
data_dir = "{}"

[executors]
# Long enough that the hosts outlive the restart.
heartbeat_interval = "1s"
missed_heartbeats = 60

[rounds]
interval = "5ms"

[store]
# Small, so the restart replays a snapshot and a log after it.
snapshot_every_records = 40
{store_keys}"#,
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    // EBB_TEST_SERVER_LOG=path keeps the server's log for debugging.
    let log = match std::env::var("EBB_TEST_SERVER_LOG") {
        Ok(path) => std::path::PathBuf::from(path),
        Err(_) => dir.path().join("server.log"),
    };
    let mut server = Server::spawn(&config, &log, grpc).await;

    // Five hosts with 4 one-CPU slots each: 20 slots, fewer than the tasks,
    // so placements keep happening while jobs arrive. (m5.4xlarge: a quarter
    // IE each, well within the demo pool's supply of 4 IE.)
    let mut execs = Vec::new();
    for i in 0..5 {
        let mut h = host(&format!("h{i}"), 4000, 65536);
        h.instance_type = "m5.4xlarge".into();
        let e = FakeExecutor::attach(&server.addr, None, h, vec![])
            .await
            .unwrap();
        execs.push(Arc::new(e));
    }
    // The first five jobs keep running (they are what restart must adopt);
    // every later task finishes at once, so slots keep freeing and rounds
    // keep placing while the server is killed.
    let responders: Vec<_> = execs
        .iter()
        .map(|e| respond(e.clone(), 0, |r| r.job_id > 5))
        .collect();

    // Four clients create 3-task jobs as fast as they are acknowledged.
    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let mut creators = Vec::new();
    for c in 0..4 {
        let (addr, acked) = (server.addr.clone(), acked.clone());
        creators.push(tokio::spawn(async move {
            let Ok(ch) = tonic::transport::Channel::from_shared(addr)
                .unwrap()
                .connect()
                .await
            else {
                return;
            };
            let mut jobs = ebb_proto::v1::job_service_client::JobServiceClient::new(ch);
            for i in 0.. {
                let mut req = job("enc", 3);
                req.request_id = format!("client-{c}-job-{i}");
                match jobs.create_job(req).await {
                    Ok(j) => acked.lock().await.push(j.into_inner().job_id),
                    Err(_) => return,
                }
            }
        }));
    }
    eventually("60 acknowledged jobs and 60 launches", || {
        let (acked, execs) = (acked.clone(), execs.clone());
        async move {
            let n_launched: usize = {
                let mut n = 0;
                for e in &execs {
                    n += e.book.lock().await.launches.len();
                }
                n
            };
            let n_acked = acked.lock().await.len();
            (n_acked >= 60 && n_launched >= 60).then_some(())
        }
    })
    .await;
    server.kill9();
    for c in creators {
        let _ = c.await;
    }
    for r in responders {
        let _ = r.await;
    }
    let acked: Vec<u64> = acked.lock().await.clone();

    // What each executor holds: its own book, not the server's word.
    let mut held: BTreeMap<String, Vec<pb::RunId>> = BTreeMap::new();
    for e in &execs {
        let b = e.book.lock().await;
        assert!(
            b.double_launch.is_empty(),
            "before the crash: {:?}",
            b.double_launch
        );
        let runs = b
            .live
            .iter()
            .map(|((job_id, task_index), attempt)| pb::RunId {
                job_id: *job_id,
                task_index: *task_index,
                attempt: *attempt,
            })
            .collect();
        held.insert(e.host.host_id.clone(), runs);
    }

    // Restart on the same data directory; the executors re-register with what they hold.
    let server = Server::spawn(&config, &log, grpc).await;
    let mut jobs = ebb_proto::v1::job_service_client::JobServiceClient::new(
        tonic::transport::Channel::from_shared(server.addr.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    for id in &acked {
        let j = jobs
            .get_job(pb::GetJobRequest { job_id: *id })
            .await
            .unwrap_or_else(|e| panic!("acknowledged job {id} lost: {e}"))
            .into_inner();
        assert_eq!(j.spec.unwrap().n_tasks, 3);
    }
    let mut again = Vec::new();
    let mut before = Vec::new();
    for e in &execs {
        before.push(e.book.lock().await.launches.len());
        let runs = held[&e.host.host_id].clone();
        let ended = e.book.lock().await.ended.clone();
        let e2 = FakeExecutor::reattach(
            &server.addr,
            None,
            e.host.clone(),
            runs.clone(),
            ended,
            e.book.clone(),
        )
        .await
        .unwrap();
        let reg = e2.book.lock().await.registered.last().unwrap().clone();
        let adopted: BTreeSet<_> = reg.adopted.iter().map(run_key).collect();
        let want: BTreeSet<_> = runs.iter().map(run_key).collect();
        assert_eq!(
            adopted, want,
            "{}: every held run is adopted",
            e.host.host_id
        );
        again.push(Arc::new(e2));
    }
    // Adopted runs are running, with the same attempt, on the same host.
    for (host_id, runs) in &held {
        for r in runs {
            let page = jobs
                .list_tasks(pb::ListTasksRequest {
                    job_id: r.job_id,
                    page_size: 1000,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let t = page
                .tasks
                .iter()
                .find(|t| t.task_index == r.task_index)
                .unwrap();
            assert_eq!(
                (t.state, t.host_id.as_str(), t.run.unwrap().attempt),
                (pb::TaskState::Running as i32, host_id.as_str(), r.attempt),
                "task {}/{}",
                r.job_id,
                r.task_index
            );
        }
    }
    // Finish everything: every acknowledged job succeeds, and no executor
    // was ever told to launch a task it was already running.
    for e in &again {
        let held_now: Vec<pb::RunId> = held[&e.host.host_id].clone();
        for r in &held_now {
            e.exited(r, 0).await;
        }
    }
    let finishers: Vec<_> = again
        .iter()
        .zip(&before)
        .map(|(e, n)| respond(e.clone(), *n, |_| true))
        .collect();
    for id in &acked {
        eventually("every acknowledged job to succeed", || {
            let mut jobs = jobs.clone();
            let id = *id;
            async move {
                let j = jobs
                    .get_job(pb::GetJobRequest { job_id: id })
                    .await
                    .ok()?
                    .into_inner();
                (j.phase == pb::JobPhase::Succeeded as i32).then_some(())
            }
        })
        .await;
    }
    let mut launched_per_task: BTreeMap<(u64, u32), Vec<u32>> = BTreeMap::new();
    for e in &again {
        let b = e.book.lock().await;
        assert!(
            b.double_launch.is_empty(),
            "{}: launched twice: {:?}",
            e.host.host_id,
            b.double_launch
        );
        for l in &b.launches {
            let r = l.run.unwrap();
            launched_per_task
                .entry((r.job_id, r.task_index))
                .or_default()
                .push(r.attempt);
        }
    }
    let mut finished_at: BTreeMap<(u64, u32), u32> = BTreeMap::new();
    for e in &again {
        for (r, code) in &e.book.lock().await.ended {
            if *code == 0 {
                assert!(
                    finished_at
                        .insert((r.job_id, r.task_index), r.attempt)
                        .is_none(),
                    "task {}/{} completed twice",
                    r.job_id,
                    r.task_index
                );
            }
        }
    }
    for (task, attempts) in &launched_per_task {
        let done = finished_at[task];
        assert_eq!(
            attempts.iter().max(),
            Some(&done),
            "task {task:?}: launched again after it completed: {attempts:?}"
        );
        let unique: BTreeSet<_> = attempts.iter().collect();
        assert_eq!(
            unique.len(),
            attempts.len(),
            "task {task:?}: a run was launched twice: {attempts:?}"
        );
    }
    for f in finishers {
        f.abort();
    }
    drop(server);
}
