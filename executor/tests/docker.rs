//! Integration tests of the run manager against the real Docker engine.
//!
//! They need a running engine and the `ebb-workload:dev` image, which
//! `scripts/build-workload-image.sh` builds (the test command,
//! `scripts/test.sh`, runs it before `cargo test`). Without either, every test
//! fails with a message saying what is missing; none passes or skips.
//!
//! Each test uses its own executor id, so it sees only its own containers,
//! and a `Cleanup` guard removes every container carrying that id when the
//! test ends, passed or failed. Facts are checked against `docker inspect`
//! and `docker ps` (the CLI), not against what the executor itself reports.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command as Cli;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ebb_executor::model::{
    Command, Inventory, KillReason, LogsReply, ObservedState, Report, RunEvent, RunEventKind,
    RunSpec, StartFailure, StopCause,
};
use ebb_executor::runtime::{LABEL_EXECUTOR, RunId};
use ebb_executor::{DockerRuntime, ExecutorConfig, ManagerError, RunManager};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The image `scripts/build-workload-image.sh` builds.
const IMAGE: &str = "ebb-workload:dev";
/// How long a test waits for any one report before it fails: a guard
/// against hangs, far above what any step takes, not a speed assertion.
const REPORT_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes per MiB.
const MIB: i64 = 1024 * 1024;

/// Removes every container of one executor id when dropped (also on panic).
struct Cleanup {
    executor_id: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Never panic here: a panic while a failed test unwinds aborts the
        // whole test binary and hides the real failure.
        let Ok(ids) = try_containers_of(&self.executor_id) else {
            return;
        };
        for id in ids {
            let _ = Cli::new("docker")
                .args(["rm", "--force", "--volumes", &id])
                .output();
        }
    }
}

/// Ids of all containers labelled with this executor id, from the CLI.
fn try_containers_of(executor_id: &str) -> Result<Vec<String>, String> {
    let out = Cli::new("docker")
        .args([
            "ps",
            "--all",
            "--quiet",
            "--no-trunc",
            "--filter",
            &format!("label={LABEL_EXECUTOR}={executor_id}"),
        ])
        .output()
        .map_err(|err| format!("running `docker ps`: {err}"))?;
    if !out.status.success() {
        return Err(format!(
            "docker ps failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

fn containers_of(executor_id: &str) -> Vec<String> {
    try_containers_of(executor_id).unwrap()
}

/// `docker inspect` of one container, as JSON.
fn inspect(container: &str) -> serde_json::Value {
    let out = Cli::new("docker")
        .args(["inspect", container])
        .output()
        .expect("running `docker inspect`");
    assert!(
        out.status.success(),
        "docker inspect {container} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    all.remove(0)
}

/// Connects to the engine and checks the workload image, failing the test
/// with a clear message when either is missing.
async fn docker() -> DockerRuntime {
    let runtime = match DockerRuntime::connect(Duration::from_secs(10)).await {
        Ok(runtime) => runtime,
        Err(err) => panic!(
            "no Docker engine is reachable, and these integration tests need one: {err}. \
             Start dockerd (CI machines have it running) and rerun."
        ),
    };
    let out = Cli::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
        .expect("running `docker image inspect`");
    assert!(
        out.status.success(),
        "the image {IMAGE} is missing: build it with `bash scripts/build-workload-image.sh` (scripts/test.sh does this before the tests)"
    );
    runtime
}

/// A unique executor id per test and process, so parallel tests and reruns
/// never see each other's containers.
fn executor_id(test: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "it-{test}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn config(executor_id: &str, data_dir: &Path) -> ExecutorConfig {
    ExecutorConfig {
        data_dir: data_dir.to_owned(),
        image_pull_timeout_ms: 10_000,
        ..ExecutorConfig::new(executor_id)
    }
}

/// A running run manager and its channels.
struct Executor {
    commands: mpsc::Sender<Command>,
    reports: mpsc::Receiver<Report>,
    task: JoinHandle<Result<(), ManagerError>>,
    inventory: Inventory,
}

impl Executor {
    async fn start(config: ExecutorConfig) -> Self {
        let runtime = docker().await;
        let manager = RunManager::new(runtime, config).unwrap();
        let (commands, commands_rx) = mpsc::channel(64);
        let (reports_tx, mut reports) = mpsc::channel(64);
        let task = tokio::spawn(manager.run(commands_rx, reports_tx));
        let inventory = match tokio::time::timeout(REPORT_TIMEOUT, reports.recv()).await {
            Ok(Some(Report::Inventory(inventory))) => inventory,
            other => panic!("expected the inventory first, got {other:?}"),
        };
        Self {
            commands,
            reports,
            task,
            inventory,
        }
    }

    /// Ends the run manager as a crash would end the process: its runs'
    /// containers stay as they are.
    async fn shut_down(self) {
        drop(self.commands);
        self.task.await.unwrap().unwrap();
    }

    async fn send(&self, command: Command) {
        self.commands.send(command).await.unwrap();
    }

    async fn next(&mut self) -> Report {
        match tokio::time::timeout(REPORT_TIMEOUT, self.reports.recv()).await {
            Ok(Some(report)) => report,
            Ok(None) => panic!("the run manager stopped: {:?}", self.task.is_finished()),
            Err(_) => panic!("no report within {REPORT_TIMEOUT:?}"),
        }
    }

    async fn next_event(&mut self) -> RunEvent {
        match self.next().await {
            Report::Run(event) => event,
            other => panic!("expected a run event, got {other:?}"),
        }
    }

    /// Launches and waits for `running`; returns the container id.
    async fn launch_running(&mut self, run: RunId, spec: RunSpec) -> String {
        self.send(Command::Launch { run, spec }).await;
        let starting = self.next_event().await;
        assert_eq!((starting.run, starting.kind), (run, RunEventKind::Starting));
        let running = self.next_event().await;
        match running.kind {
            RunEventKind::Running { container_id } => container_id,
            other => panic!("expected running, got {other:?}: {}", running.message),
        }
    }

    /// Waits until the run's output contains `needle`. A stop sent before
    /// the workload installed its SIGTERM handler would be lost (PID 1
    /// ignores signals it has no handler for), so stop tests wait for the
    /// workload's `started` line, which it prints after installing it.
    async fn wait_for_output(&mut self, run: RunId, needle: &str) {
        let deadline = Instant::now() + REPORT_TIMEOUT;
        loop {
            let reply = self.logs(run).await;
            if reply
                .result
                .as_ref()
                .is_ok_and(|tail| tail.text.contains(needle))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} never appeared: {reply:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn logs(&mut self, run: RunId) -> LogsReply {
        self.send(Command::FetchLogs { request_id: 7, run }).await;
        match self.next().await {
            Report::Logs(reply) => reply,
            other => panic!("expected logs, got {other:?}"),
        }
    }
}

fn workload(args: &[&str]) -> RunSpec {
    let mut command = vec!["/workload".to_owned()];
    command.extend(args.iter().map(|arg| (*arg).to_owned()));
    RunSpec {
        image: IMAGE.into(),
        command,
        cpu_millis: 500,
        memory_mib: 64,
        ..RunSpec::default()
    }
}

fn run(task: u32) -> RunId {
    RunId::new(3, task, 1).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_runs_and_succeeds_with_labels_and_logs() {
    let id = executor_id("success");
    let _cleanup = Cleanup {
        executor_id: id.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut ex = Executor::start(config(&id, dir.path())).await;
    let run = RunId::new(3, 17, 2).unwrap();
    let container = ex
        .launch_running(
            run,
            workload(&[
                "--work-ms",
                "300",
                "--mode",
                "sleep",
                "--progress-ms",
                "100",
            ]),
        )
        .await;

    let found = inspect(&container);
    let labels = &found["Config"]["Labels"];
    assert_eq!(labels["ebb.job"], "job-3");
    assert_eq!(labels["ebb.task"], "job-3/17");
    assert_eq!(labels["ebb.run"], "job-3/17#2");
    assert_eq!(labels["ebb.executor"], id.as_str());
    assert_eq!(found["Name"], format!("/ebb-{id}-j3-t17-a2"));

    let done = ex.next_event().await;
    assert_eq!(done.kind, RunEventKind::Succeeded, "{}", done.message);
    assert_eq!(inspect(&container)["State"]["ExitCode"], 0);
    let reply = ex.logs(run).await;
    let tail = reply.result.unwrap();
    assert!(tail.text.contains("workload: progress"), "{tail:?}");
    assert!(tail.text.contains("done after"), "{tail:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_exit_code_is_reported() {
    let id = executor_id("fail");
    let _cleanup = Cleanup {
        executor_id: id.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut ex = Executor::start(config(&id, dir.path())).await;
    let container = ex
        .launch_running(run(1), workload(&["--work-ms", "100", "--exit-code", "3"]))
        .await;
    let done = ex.next_event().await;
    assert_eq!(
        done.kind,
        RunEventKind::Failed { exit_code: 3 },
        "{}",
        done.message
    );
    assert_eq!(inspect(&container)["State"]["ExitCode"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_hog_is_reported_as_oom() {
    let id = executor_id("oom");
    let _cleanup = Cleanup {
        executor_id: id.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut ex = Executor::start(config(&id, dir.path())).await;
    let spec = RunSpec {
        memory_mib: 32,
        ..workload(&["--memory-mib", "256", "--work-ms", "100"])
    };
    let container = ex.launch_running(run(1), spec).await;
    let done = ex.next_event().await;
    if done.kind != (RunEventKind::Oom { exit_code: 137 }) {
        // Say whether the engine marked the OOM kill later than the
        // executor waited for it, or never.
        std::thread::sleep(Duration::from_secs(5));
        panic!(
            "expected an OOM report, got {:?} ({}); the engine's state 5 s later: {}",
            done.kind,
            done.message,
            inspect(&container)["State"]
        );
    }
    assert!(
        done.message.contains("OOM") && done.message.contains("32 MiB"),
        "{}",
        done.message
    );
    assert_eq!(inspect(&container)["State"]["OOMKilled"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_limit_kills_the_run() {
    let id = executor_id("limit");
    let _cleanup = Cleanup {
        executor_id: id.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut ex = Executor::start(ExecutorConfig {
        runtime_limit_grace_ms: 5_000,
        ..config(&id, dir.path())
    })
    .await;
    let spec = RunSpec {
        runtime_limit_ms: Some(1_000),
        ..workload(&["--work-ms", "60000", "--mode", "sleep"])
    };
    let started = Instant::now();
    let container = ex.launch_running(run(1), spec).await;
    let done = ex.next_event().await;
    assert_eq!(
        done.kind,
        RunEventKind::Killed {
            reason: KillReason::RuntimeLimit,
            sigkilled: false,
            exit_code: 0
        },
        "{}",
        done.message
    );
    assert!(done.message.contains("runtime limit"), "{}", done.message);
    // It ran at least its limit (a lower bound, not a speed claim).
    assert!(started.elapsed() >= Duration::from_secs(1));
    let state = &inspect(&container)["State"];
    assert_eq!(state["Running"], false);
    let tail = ex.logs(run(1)).await.result.unwrap();
    assert!(tail.text.contains("SIGTERM received"), "{tail:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_lets_the_workload_checkpoint_within_the_grace() {
    let id = executor_id("graceful");
    let _cleanup = Cleanup {
        executor_id: id.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut ex = Executor::start(config(&id, dir.path())).await;
    let spec = workload(&[
        "--work-ms",
        "60000",
        "--mode",
        "sleep",
        "--checkpoint-ms",
        "300",
    ]);
    let container = ex.launch_running(run(1), spec).await;
    ex.wait_for_output(run(1), "workload: started").await;
    ex.send(Command::Stop {
        run: run(1),
        grace_ms: 20_000,
        cause: StopCause::Preempt,
    })
    .await;
    let done = ex.next_event().await;
    assert_eq!(
        done.kind,
        RunEventKind::Stopped {
            cause: StopCause::Preempt,
            sigkilled: false,
            exit_code: Some(0)
        },
        "{}",
        done.message
    );
    // Exit code 0, not 137: the workload's own clean exit, not SIGKILL.
    assert_eq!(inspect(&container)["State"]["ExitCode"], 0);
    let tail = ex.logs(run(1)).await.result.unwrap();
    assert!(
        tail.text.contains("SIGTERM received, checkpoint at"),
        "{tail:?}"
    );
    assert!(tail.text.contains("exiting after SIGTERM"), "{tail:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_ignoring_sigterm_is_killed_after_the_grace() {
    let id = executor_id("ignore");
    let _cleanup = Cleanup {
        executor_id: id.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut ex = Executor::start(config(&id, dir.path())).await;
    let spec = workload(&[
        "--work-ms",
        "60000",
        "--mode",
        "sleep",
        "--on-sigterm",
        "ignore",
    ]);
    let container = ex.launch_running(run(1), spec).await;
    ex.wait_for_output(run(1), "workload: started").await;
    let asked = Instant::now();
    ex.send(Command::Stop {
        run: run(1),
        grace_ms: 1_500,
        cause: StopCause::Cancel,
    })
    .await;
    let done = ex.next_event().await;
    assert_eq!(
        done.kind,
        RunEventKind::Stopped {
            cause: StopCause::Cancel,
            sigkilled: true,
            exit_code: Some(137)
        },
        "{}",
        done.message
    );
    // SIGKILL came no earlier than the grace allowed.
    assert!(
        asked.elapsed() >= Duration::from_millis(1_500),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(inspect(&container)["State"]["ExitCode"], 137);
    let tail = ex.logs(run(1)).await.result.unwrap();
    assert!(tail.text.contains("ignoring SIGTERM"), "{tail:?}");
    assert!(!tail.text.contains("exiting after SIGTERM"), "{tail:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_match_the_placement() {
    let id = executor_id("limits");
    let _cleanup = Cleanup {
        executor_id: id.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut ex = Executor::start(config(&id, dir.path())).await;
    let spec = RunSpec {
        cpu_millis: 250,
        memory_mib: 48,
        pids_limit: Some(64),
        capabilities: vec!["net_bind_service".into()],
        read_only_rootfs: true,
        env: BTreeMap::from([("EBB_CHUNK".into(), "17".into())]),
        ..workload(&["--work-ms", "30000", "--mode", "sleep"])
    };
    let container = ex.launch_running(run(1), spec).await;
    let found = inspect(&container);
    let host = &found["HostConfig"];
    assert_eq!(host["NanoCpus"], 250_000_000i64);
    assert_eq!(host["Memory"], 48 * MIB);
    assert_eq!(host["MemorySwap"], 48 * MIB, "no swap");
    assert_eq!(host["PidsLimit"], 64);
    assert_eq!(host["CapDrop"], serde_json::json!(["ALL"]));
    assert_eq!(host["CapAdd"], serde_json::json!(["NET_BIND_SERVICE"]));
    assert_eq!(host["Privileged"], false);
    assert_eq!(host["ReadonlyRootfs"], true);
    assert_eq!(
        host["SecurityOpt"],
        serde_json::json!(["no-new-privileges"])
    );
    let env: Vec<&str> = found["Config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(env.contains(&"EBB_CHUNK=17"), "{env:?}");
    // The one host mount: this run's scratch directory at /scratch.
    let mounts = found["Mounts"].as_array().unwrap();
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    assert_eq!(mounts[0]["Destination"], "/scratch");
    assert_eq!(mounts[0]["Type"], "bind");
    let source = mounts[0]["Source"].as_str().unwrap();
    assert!(
        Path::new(source).starts_with(dir.path()) && Path::new(source).is_dir(),
        "{source}"
    );

    // Without a pids limit in the spec the executor's default applies.
    let container = ex
        .launch_running(run(2), workload(&["--work-ms", "30000", "--mode", "sleep"]))
        .await;
    let found = inspect(&container);
    assert_eq!(
        found["HostConfig"]["PidsLimit"],
        ExecutorConfig::new("x").default_pids_limit
    );
    assert_eq!(found["HostConfig"]["ReadonlyRootfs"], false);
    assert_eq!(found["HostConfig"]["CapAdd"], serde_json::json!([]));

    // A capability outside the allow-list starts nothing and names the field.
    let bad = RunSpec {
        capabilities: vec!["SYS_ADMIN".into()],
        ..workload(&[])
    };
    ex.send(Command::Launch {
        run: run(3),
        spec: bad,
    })
    .await;
    let event = ex.next_event().await;
    assert!(
        matches!(
            event.kind,
            RunEventKind::StartFailed {
                reason: StartFailure::InvalidSpec(_)
            }
        ),
        "{event:?}"
    );
    assert!(
        event.message.contains("spec.capabilities[0]"),
        "{}",
        event.message
    );
    assert_eq!(
        containers_of(&id).len(),
        2,
        "no container for the invalid launch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_image_is_not_available_and_fails_fast() {
    let id = executor_id("absent");
    let _cleanup = Cleanup {
        executor_id: id.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut ex = Executor::start(config(&id, dir.path())).await;
    let image = format!("ebb-absent-{}:none", std::process::id());
    ex.send(Command::Launch {
        run: run(1),
        spec: RunSpec {
            image: image.clone(),
            ..workload(&[])
        },
    })
    .await;
    assert_eq!(ex.next_event().await.kind, RunEventKind::Starting);
    // Within REPORT_TIMEOUT, not a hang: the pull timeout (10 s here) bounds it.
    let event = ex.next_event().await;
    assert_eq!(
        event.kind,
        RunEventKind::StartFailed {
            reason: StartFailure::ImageNotAvailable {
                image: image.clone()
            }
        }
    );
    assert!(
        event.message.contains("image not available"),
        "{}",
        event.message
    );
    assert!(containers_of(&id).is_empty());
    let out = Cli::new("docker")
        .args(["image", "inspect", &image])
        .output()
        .unwrap();
    assert!(!out.status.success(), "no image appeared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_executor_adopts_its_running_container_without_restarting_it() {
    let id = executor_id("adopt");
    let _cleanup = Cleanup {
        executor_id: id.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut first = Executor::start(config(&id, dir.path())).await;
    let container = first
        .launch_running(run(1), workload(&["--work-ms", "60000", "--mode", "sleep"]))
        .await;
    let before = inspect(&container);
    first.shut_down().await;

    let mut second = Executor::start(config(&id, dir.path())).await;
    let observed: Vec<_> = second
        .inventory
        .runs
        .iter()
        .map(|o| (o.run, o.container_id.clone()))
        .collect();
    assert_eq!(observed, vec![(run(1), Some(container.clone()))]);
    assert!(matches!(
        second.inventory.runs[0].state,
        ObservedState::Running {
            started_at: Some(_)
        }
    ));
    let after = inspect(&container);
    assert_eq!(
        after["State"]["StartedAt"], before["State"]["StartedAt"],
        "not restarted"
    );
    assert_eq!(
        after["State"]["Pid"], before["State"]["Pid"],
        "same process"
    );
    assert_eq!(after["RestartCount"], 0);

    // A repeated launch of the run is answered, not run a second time.
    second
        .send(Command::Launch {
            run: run(1),
            spec: workload(&["--work-ms", "60000", "--mode", "sleep"]),
        })
        .await;
    let answer = second.next_event().await;
    assert_eq!(
        answer.kind,
        RunEventKind::Running {
            container_id: container.clone()
        }
    );
    assert_eq!(
        containers_of(&id),
        vec![container.clone()],
        "exactly one container"
    );

    // And the adopted run is still managed: a stop reaches it.
    second.wait_for_output(run(1), "workload: started").await;
    second
        .send(Command::Stop {
            run: run(1),
            grace_ms: 10_000,
            cause: StopCause::Preempt,
        })
        .await;
    let done = second.next_event().await;
    assert_eq!(
        done.kind,
        RunEventKind::Stopped {
            cause: StopCause::Preempt,
            sigkilled: false,
            exit_code: Some(0)
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_of_unknown_runs_are_stopped_and_removed() {
    let id = executor_id("discard");
    let _cleanup = Cleanup {
        executor_id: id.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut first = Executor::start(config(&id, dir.path())).await;
    let running = first
        .launch_running(run(1), workload(&["--work-ms", "60000", "--mode", "sleep"]))
        .await;
    let exited = first
        .launch_running(run(2), workload(&["--work-ms", "10", "--exit-code", "5"]))
        .await;
    assert_eq!(
        first.next_event().await.kind,
        RunEventKind::Failed { exit_code: 5 }
    );
    first.shut_down().await;

    let mut second = Executor::start(config(&id, dir.path())).await;
    let states: Vec<_> = second
        .inventory
        .runs
        .iter()
        .map(|o| (o.run, o.state.clone()))
        .collect();
    assert_eq!(states.len(), 2, "{states:?}");
    assert!(
        matches!(states[0], (r, ObservedState::Running { .. }) if r == run(1)),
        "{states:?}"
    );
    assert!(
        matches!(states[1], (r, ObservedState::Exited { exit_code: 5, oom_killed: false, .. }) if r == run(2)),
        "{states:?}"
    );
    for task in [1, 2] {
        second
            .send(Command::Discard {
                run: run(task),
                grace_ms: 5_000,
            })
            .await;
        let event = second.next_event().await;
        assert_eq!((event.run, event.kind), (run(task), RunEventKind::Removed));
    }
    assert!(containers_of(&id).is_empty(), "both removed");
    for container in [running, exited] {
        let out = Cli::new("docker")
            .args(["inspect", &container])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{container} still exists");
    }
    assert!(
        !dir.path().join("runs").join(run(1).slug()).exists(),
        "scratch directory removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_tail_is_served_after_the_container_is_removed() {
    let id = executor_id("logs");
    let _cleanup = Cleanup {
        executor_id: id.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let config = ExecutorConfig {
        retention_ms: 500,
        log_tail_lines: 100,
        log_tail_bytes: 2_000,
        ..config(&id, dir.path())
    };
    let mut ex = Executor::start(config).await;
    let container = ex
        .launch_running(
            run(1),
            workload(&["--work-ms", "10", "--print-lines", "5000"]),
        )
        .await;
    assert_eq!(ex.next_event().await.kind, RunEventKind::Succeeded);
    assert_eq!(ex.next_event().await.kind, RunEventKind::Removed);
    let out = Cli::new("docker")
        .args(["inspect", &container])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the container is gone after retention"
    );
    let tail = ex.logs(run(1)).await.result.unwrap();
    assert!(tail.truncated, "5000 lines do not fit");
    assert!(tail.text.len() <= 2_000, "{} bytes", tail.text.len());
    assert!(
        tail.text.ends_with("exiting with code 0\n"),
        "{:?}",
        &tail.text[tail.text.len().saturating_sub(200)..]
    );
    assert!(
        tail.text.contains("workload: line 5000\n"),
        "the newest lines are kept"
    );
    assert!(
        !tail.text.contains("workload: line 1\n"),
        "the oldest are dropped"
    );
}
