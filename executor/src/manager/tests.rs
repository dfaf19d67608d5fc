//! Unit tests of the run manager's state machine against an in-memory
//! runtime (test-only; the product and the integration tests use Docker).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use tokio::sync::Notify;

use super::*;
use crate::model::ObservedState;
use crate::runtime::StopOutcome;

/// One fake container.
#[derive(Clone, Debug)]
struct FakeContainer {
    name: String,
    labels: BTreeMap<String, String>,
    state: ContainerState,
    started_at: Option<SystemTime>,
    /// Exits only on SIGKILL.
    ignores_sigterm: bool,
}

#[derive(Default)]
struct FakeState {
    images: BTreeSet<String>,
    containers: HashMap<String, FakeContainer>,
    n_creates: u32,
    n_starts: u32,
    next_id: u32,
    /// Output every container "printed".
    output: String,
}

/// An in-memory runtime: containers run until the test ends them.
#[derive(Default)]
struct FakeRuntime {
    state: Mutex<FakeState>,
    changed: Notify,
    /// When set, pulls block until notified.
    pull_gate: Option<Arc<Notify>>,
}

impl FakeRuntime {
    fn with_image(image: &str) -> Self {
        let fake = Self::default();
        fake.state.lock().unwrap().images.insert(image.into());
        fake
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    /// Ends a container as if its process exited.
    fn exit(&self, name: &str, exit_code: i64, oom_killed: bool) {
        let mut state = self.lock();
        let container = state
            .containers
            .values_mut()
            .find(|c| c.name == name)
            .expect("no such fake container");
        container.state = ContainerState::Exited {
            exit_code,
            oom_killed,
        };
        drop(state);
        self.changed.notify_waiters();
    }

    fn find(&self, container: &str) -> Option<(String, FakeContainer)> {
        let state = self.lock();
        state
            .containers
            .iter()
            .find(|(id, c)| *id == container || c.name == container)
            .map(|(id, c)| (id.clone(), c.clone()))
    }
}

impl Runtime for FakeRuntime {
    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        if let Some(gate) = &self.pull_gate {
            gate.notified().await;
        }
        if self.lock().images.contains(image) {
            Ok(())
        } else {
            Err(RuntimeError::ImageNotAvailable {
                image: image.into(),
                reason: "no registry".into(),
            })
        }
    }

    async fn create(&self, config: &ContainerConfig) -> Result<String, RuntimeError> {
        let mut state = self.lock();
        state.n_creates += 1;
        if state.containers.values().any(|c| c.name == config.name) {
            return Err(RuntimeError::AlreadyExists {
                name: config.name.clone(),
            });
        }
        state.next_id += 1;
        let id = format!("fake{}", state.next_id);
        let ignores_sigterm = config.command.iter().any(|arg| arg == "ignore");
        state.containers.insert(
            id.clone(),
            FakeContainer {
                name: config.name.clone(),
                labels: config.labels.clone(),
                state: ContainerState::Created,
                started_at: None,
                ignores_sigterm,
            },
        );
        Ok(id)
    }

    async fn start(&self, container: &str) -> Result<(), RuntimeError> {
        let mut state = self.lock();
        state.n_starts += 1;
        let c = state
            .containers
            .get_mut(container)
            .ok_or(RuntimeError::NotFound {
                container: container.into(),
            })?;
        c.state = ContainerState::Running;
        c.started_at = Some(SystemTime::now());
        state.output.push_str("hello\n");
        Ok(())
    }

    async fn inspect(&self, container: &str) -> Result<ContainerInfo, RuntimeError> {
        let (id, c) = self.find(container).ok_or(RuntimeError::NotFound {
            container: container.into(),
        })?;
        Ok(ContainerInfo {
            id,
            name: c.name,
            labels: c.labels,
            state: c.state,
            started_at: c.started_at,
            finished_at: None,
        })
    }

    async fn wait_exit(&self, container: &str) -> Result<(), RuntimeError> {
        loop {
            let changed = self.changed.notified();
            match self.find(container) {
                None => {
                    return Err(RuntimeError::NotFound {
                        container: container.into(),
                    });
                }
                Some((_, c)) if !matches!(c.state, ContainerState::Running) => return Ok(()),
                Some(_) => changed.await,
            }
        }
    }

    async fn stop(&self, container: &str, grace: Duration) -> Result<StopOutcome, RuntimeError> {
        let (_, c) = self.find(container).ok_or(RuntimeError::NotFound {
            container: container.into(),
        })?;
        if c.ignores_sigterm {
            tokio::time::sleep(grace).await;
            self.exit(&c.name, 137, false);
            Ok(StopOutcome { sigkilled: true })
        } else {
            self.exit(&c.name, 0, false);
            Ok(StopOutcome { sigkilled: false })
        }
    }

    async fn logs_tail(
        &self,
        _container: &str,
        _max_lines: u32,
        max_bytes: usize,
    ) -> Result<LogTail, RuntimeError> {
        Ok(LogTail::from_raw(
            self.lock().output.as_bytes(),
            max_bytes,
            false,
        ))
    }

    async fn list(&self, executor_id: &str) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let ids: Vec<String> = self
            .lock()
            .containers
            .iter()
            .filter(|(_, c)| c.labels.get(LABEL_EXECUTOR).map(String::as_str) == Some(executor_id))
            .map(|(id, _)| id.clone())
            .collect();
        let mut infos = Vec::new();
        for id in ids {
            infos.push(self.inspect(&id).await?);
        }
        Ok(infos)
    }

    async fn remove(&self, container: &str) -> Result<(), RuntimeError> {
        if let Some((id, _)) = self.find(container) {
            self.lock().containers.remove(&id);
            self.changed.notify_waiters();
        }
        Ok(())
    }
}

const IMAGE: &str = "ebb-workload:dev";

fn spec() -> RunSpec {
    RunSpec {
        image: IMAGE.into(),
        cpu_millis: 500,
        memory_mib: 64,
        ..RunSpec::default()
    }
}

fn run(task: u32) -> RunId {
    RunId::new(7, task, 1).unwrap()
}

struct Harness {
    fake: Arc<FakeRuntime>,
    commands: mpsc::Sender<Command>,
    reports: mpsc::Receiver<Report>,
    _dir: tempfile::TempDir,
}

/// Shares the fake with the test through an `Arc`.
impl Runtime for Arc<FakeRuntime> {
    fn ensure_image(&self, image: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        (**self).ensure_image(image)
    }
    fn create(
        &self,
        config: &ContainerConfig,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send {
        (**self).create(config)
    }
    fn start(&self, container: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        (**self).start(container)
    }
    fn inspect(
        &self,
        container: &str,
    ) -> impl Future<Output = Result<ContainerInfo, RuntimeError>> + Send {
        (**self).inspect(container)
    }
    fn wait_exit(&self, container: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        (**self).wait_exit(container)
    }
    fn stop(
        &self,
        container: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<StopOutcome, RuntimeError>> + Send {
        (**self).stop(container, grace)
    }
    fn logs_tail(
        &self,
        container: &str,
        max_lines: u32,
        max_bytes: usize,
    ) -> impl Future<Output = Result<LogTail, RuntimeError>> + Send {
        (**self).logs_tail(container, max_lines, max_bytes)
    }
    fn list(
        &self,
        executor_id: &str,
    ) -> impl Future<Output = Result<Vec<ContainerInfo>, RuntimeError>> + Send {
        (**self).list(executor_id)
    }
    fn remove(&self, container: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        (**self).remove(container)
    }
}

use std::future::Future;

fn config(dir: &tempfile::TempDir) -> ExecutorConfig {
    ExecutorConfig {
        data_dir: dir.path().to_owned(),
        retention_ms: 60_000,
        ..ExecutorConfig::new("unit")
    }
}

async fn start(fake: FakeRuntime) -> (Harness, Inventory) {
    start_shared(Arc::new(fake)).await
}

async fn start_shared(fake: Arc<FakeRuntime>) -> (Harness, Inventory) {
    let dir = tempfile::tempdir().unwrap();
    let manager = RunManager::new(Arc::clone(&fake), config(&dir)).unwrap();
    let (commands, commands_rx) = mpsc::channel(16);
    let (reports_tx, mut reports) = mpsc::channel(16);
    tokio::spawn(manager.run(commands_rx, reports_tx));
    let Some(Report::Inventory(inventory)) = reports.recv().await else {
        panic!("no inventory first")
    };
    (
        Harness {
            fake,
            commands,
            reports,
            _dir: dir,
        },
        inventory,
    )
}

impl Harness {
    async fn send(&self, command: Command) {
        self.commands.send(command).await.unwrap();
    }

    async fn next_event(&mut self) -> RunEvent {
        // A hang guard: above the longest virtual wait of the paused tests
        // (the 60 s retention), and real-time tests get their events within
        // milliseconds.
        match tokio::time::timeout(Duration::from_secs(120), self.reports.recv()).await {
            Ok(Some(Report::Run(event))) => event,
            other => panic!("expected a run event, got {other:?}"),
        }
    }

    async fn launch_running(&mut self, run: RunId, spec: RunSpec) -> String {
        self.send(Command::Launch { run, spec }).await;
        assert_eq!(self.next_event().await.kind, RunEventKind::Starting);
        match self.next_event().await.kind {
            RunEventKind::Running { container_id } => container_id,
            other => panic!("expected running, got {other:?}"),
        }
    }
}

#[test]
fn classify_table() {
    use RunEventKind::*;
    let cases = [
        ("clean exit", Intent::Natural, 0, false, false, Succeeded),
        (
            "failing exit",
            Intent::Natural,
            3,
            false,
            false,
            Failed { exit_code: 3 },
        ),
        (
            "oom",
            Intent::Natural,
            137,
            true,
            false,
            Oom { exit_code: 137 },
        ),
        // A stop the server asked for is reported as such whatever the code.
        (
            "preempted, graceful",
            Intent::Stop(StopCause::Preempt),
            0,
            false,
            false,
            Stopped {
                cause: StopCause::Preempt,
                sigkilled: false,
                exit_code: Some(0),
            },
        ),
        (
            "cancelled, sigkilled",
            Intent::Stop(StopCause::Cancel),
            137,
            false,
            true,
            Stopped {
                cause: StopCause::Cancel,
                sigkilled: true,
                exit_code: Some(137),
            },
        ),
        (
            "runtime limit",
            Intent::RuntimeLimit,
            0,
            false,
            false,
            Killed {
                reason: KillReason::RuntimeLimit,
                sigkilled: false,
                exit_code: 0,
            },
        ),
    ];
    for (name, intent, code, oom, sigkilled, want) in cases {
        assert_eq!(classify(intent, code, oom, sigkilled), want, "{name}");
    }
}

#[tokio::test]
async fn duplicate_launch_is_answered_with_the_state_and_creates_nothing() {
    let (mut h, _) = start(FakeRuntime::with_image(IMAGE)).await;
    let id = h.launch_running(run(1), spec()).await;
    h.send(Command::Launch {
        run: run(1),
        spec: spec(),
    })
    .await;
    let answer = h.next_event().await;
    assert_eq!(answer.kind, RunEventKind::Running { container_id: id });
    assert!(
        answer.message.contains("already launched"),
        "{}",
        answer.message
    );
    let state = h.fake.lock();
    assert_eq!(
        (state.n_creates, state.n_starts, state.containers.len()),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn a_container_left_by_an_earlier_launch_is_adopted_not_started_again() {
    let (mut h, _) = start(FakeRuntime::with_image(IMAGE)).await;
    // The run's container appears after the manager's listing (an earlier
    // launch that the listing missed).
    h.fake.lock().containers.insert(
        "early".into(),
        FakeContainer {
            name: container_name("unit", run(1)),
            labels: BTreeMap::new(),
            state: ContainerState::Running,
            started_at: Some(SystemTime::now()),
            ignores_sigterm: false,
        },
    );
    h.send(Command::Launch {
        run: run(1),
        spec: spec(),
    })
    .await;
    assert_eq!(h.next_event().await.kind, RunEventKind::Starting);
    assert_eq!(
        h.next_event().await.kind,
        RunEventKind::Running {
            container_id: "early".into()
        }
    );
    let (n_starts, n_containers) = {
        let state = h.fake.lock();
        (state.n_starts, state.containers.len())
    };
    assert_eq!((n_starts, n_containers), (0, 1), "never started twice");
    h.fake.exit(&container_name("unit", run(1)), 0, false);
    assert_eq!(h.next_event().await.kind, RunEventKind::Succeeded);
}

#[tokio::test]
async fn invalid_spec_fails_to_start_naming_the_field_and_creates_nothing() {
    let (mut h, _) = start(FakeRuntime::with_image(IMAGE)).await;
    let bad = RunSpec {
        capabilities: vec!["SYS_ADMIN".into()],
        ..spec()
    };
    h.send(Command::Launch {
        run: run(1),
        spec: bad,
    })
    .await;
    let event = h.next_event().await;
    let RunEventKind::StartFailed {
        reason: StartFailure::InvalidSpec(err),
    } = &event.kind
    else {
        panic!("{event:?}")
    };
    assert_eq!(err.field, "spec.capabilities[0]");
    assert!(event.message.contains("SYS_ADMIN"), "{}", event.message);
    assert_eq!(h.fake.lock().n_creates, 0);
}

#[tokio::test]
async fn absent_image_fails_to_start_as_image_not_available() {
    let (mut h, _) = start(FakeRuntime::default()).await;
    h.send(Command::Launch {
        run: run(1),
        spec: spec(),
    })
    .await;
    assert_eq!(h.next_event().await.kind, RunEventKind::Starting);
    let event = h.next_event().await;
    assert_eq!(
        event.kind,
        RunEventKind::StartFailed {
            reason: StartFailure::ImageNotAvailable {
                image: IMAGE.into()
            }
        }
    );
    assert!(
        event.message.contains("image not available"),
        "{}",
        event.message
    );
}

#[tokio::test]
async fn stop_during_the_pull_cancels_the_launch_before_any_container() {
    let gate = Arc::new(Notify::new());
    let fake = FakeRuntime {
        pull_gate: Some(Arc::clone(&gate)),
        ..FakeRuntime::with_image(IMAGE)
    };
    let (mut h, _) = start(fake).await;
    h.send(Command::Launch {
        run: run(1),
        spec: spec(),
    })
    .await;
    assert_eq!(h.next_event().await.kind, RunEventKind::Starting);
    h.send(Command::Stop {
        run: run(1),
        grace_ms: 1000,
        cause: StopCause::Cancel,
    })
    .await;
    let event = h.next_event().await;
    assert_eq!(
        event.kind,
        RunEventKind::Stopped {
            cause: StopCause::Cancel,
            sigkilled: false,
            exit_code: None
        }
    );
    gate.notify_waiters();
    tokio::task::yield_now().await;
    assert_eq!(h.fake.lock().n_creates, 0);
}

#[tokio::test]
async fn stop_of_an_unknown_run_is_answered_lost() {
    let (mut h, _) = start(FakeRuntime::with_image(IMAGE)).await;
    h.send(Command::Stop {
        run: run(9),
        grace_ms: 0,
        cause: StopCause::Preempt,
    })
    .await;
    assert_eq!(h.next_event().await.kind, RunEventKind::Lost);
}

#[tokio::test]
async fn exits_are_classified_and_preemption_is_told_from_cancel() {
    let (mut h, _) = start(FakeRuntime::with_image(IMAGE)).await;
    let name = |task| container_name("unit", run(task));
    h.launch_running(run(1), spec()).await;
    h.fake.exit(&name(1), 0, false);
    assert_eq!(h.next_event().await.kind, RunEventKind::Succeeded);
    h.launch_running(run(2), spec()).await;
    h.fake.exit(&name(2), 4, false);
    assert_eq!(
        h.next_event().await.kind,
        RunEventKind::Failed { exit_code: 4 }
    );
    h.launch_running(run(3), spec()).await;
    h.fake.exit(&name(3), 137, true);
    let event = h.next_event().await;
    assert_eq!(event.kind, RunEventKind::Oom { exit_code: 137 });
    assert!(event.message.contains("64 MiB"), "{}", event.message);
    for (task, cause) in [(4, StopCause::Preempt), (5, StopCause::Cancel)] {
        h.launch_running(run(task), spec()).await;
        h.send(Command::Stop {
            run: run(task),
            grace_ms: 1000,
            cause,
        })
        .await;
        assert_eq!(
            h.next_event().await.kind,
            RunEventKind::Stopped {
                cause,
                sigkilled: false,
                exit_code: Some(0)
            }
        );
    }
    // A stop after the end is answered with the outcome, not acted on.
    h.send(Command::Stop {
        run: run(1),
        grace_ms: 0,
        cause: StopCause::Cancel,
    })
    .await;
    assert_eq!(h.next_event().await.kind, RunEventKind::Succeeded);
}

#[tokio::test(start_paused = true)]
async fn runtime_limit_kills_the_run() {
    let (mut h, _) = start(FakeRuntime::with_image(IMAGE)).await;
    let limited = RunSpec {
        runtime_limit_ms: Some(5_000),
        command: vec!["ignore".into()],
        ..spec()
    };
    h.launch_running(run(1), limited).await;
    let started = Instant::now();
    let event = h.next_event().await;
    assert_eq!(
        event.kind,
        RunEventKind::Killed {
            reason: KillReason::RuntimeLimit,
            sigkilled: true,
            exit_code: 137
        }
    );
    // The limit, then the configured grace for a workload that ignores SIGTERM.
    let grace = Duration::from_millis(ExecutorConfig::new("x").runtime_limit_grace_ms);
    assert!(
        started.elapsed() >= Duration::from_secs(5) + grace,
        "{:?}",
        started.elapsed()
    );
    assert!(
        event.message.contains("runtime limit of 5000 ms"),
        "{}",
        event.message
    );
}

#[tokio::test(start_paused = true)]
async fn ended_containers_are_removed_after_retention_and_logs_outlive_them() {
    let (mut h, _) = start(FakeRuntime::with_image(IMAGE)).await;
    h.launch_running(run(1), spec()).await;
    let ended_at = Instant::now();
    h.fake.exit(&container_name("unit", run(1)), 0, false);
    assert_eq!(h.next_event().await.kind, RunEventKind::Succeeded);
    assert_eq!(h.fake.lock().containers.len(), 1, "kept during retention");
    assert_eq!(h.next_event().await.kind, RunEventKind::Removed);
    assert!(ended_at.elapsed() >= Duration::from_millis(60_000));
    assert!(h.fake.lock().containers.is_empty());
    h.fake.lock().output.push_str("written after the end\n");
    h.send(Command::FetchLogs {
        request_id: 42,
        run: run(1),
    })
    .await;
    let Some(Report::Logs(reply)) = h.reports.recv().await else {
        panic!()
    };
    assert_eq!(reply.request_id, 42);
    assert_eq!(
        reply.result.unwrap().text,
        "hello\n",
        "the tail captured at the end"
    );
    h.send(Command::FetchLogs {
        request_id: 43,
        run: run(2),
    })
    .await;
    let Some(Report::Logs(reply)) = h.reports.recv().await else {
        panic!()
    };
    assert_eq!(reply.result, Err(LogsError::UnknownRun { run: run(2) }));
    // A duplicate launch of the removed run still runs nothing.
    h.send(Command::Launch {
        run: run(1),
        spec: spec(),
    })
    .await;
    assert_eq!(h.next_event().await.kind, RunEventKind::Removed);
    assert_eq!(h.fake.lock().n_creates, 1);
}

#[tokio::test]
async fn reconciliation_adopts_running_containers_and_removes_never_started_ones() {
    let fake = FakeRuntime::with_image(IMAGE);
    let labels = |task: u32| {
        BTreeMap::from([
            (LABEL_EXECUTOR.to_owned(), "unit".to_owned()),
            (LABEL_RUN.to_owned(), run(task).to_string()),
        ])
    };
    let started_at = SystemTime::now() - Duration::from_secs(30);
    {
        let mut state = fake.lock();
        for (id, task, container_state) in [
            ("c1", 1, ContainerState::Running),
            ("c2", 2, ContainerState::Created),
            (
                "c3",
                3,
                ContainerState::Exited {
                    exit_code: 2,
                    oom_killed: false,
                },
            ),
        ] {
            state.containers.insert(
                id.into(),
                FakeContainer {
                    name: container_name("unit", run(task)),
                    labels: labels(task),
                    state: container_state,
                    started_at: Some(started_at),
                    ignores_sigterm: false,
                },
            );
        }
        // Another executor's container is none of our business.
        state.containers.insert(
            "other".into(),
            FakeContainer {
                name: "ebb-other-j1-t1-a1".into(),
                labels: BTreeMap::from([(LABEL_EXECUTOR.to_owned(), "other".to_owned())]),
                state: ContainerState::Running,
                started_at: None,
                ignores_sigterm: false,
            },
        );
    }
    let (mut h, inventory) = start(fake).await;
    let states: Vec<_> = inventory
        .runs
        .iter()
        .map(|o| (o.run, o.state.clone()))
        .collect();
    assert_eq!(
        states,
        vec![
            (
                run(1),
                ObservedState::Running {
                    started_at: Some(started_at)
                }
            ),
            (run(2), ObservedState::NeverStarted),
            (
                run(3),
                ObservedState::Exited {
                    exit_code: 2,
                    oom_killed: false,
                    finished_at: None
                }
            ),
        ]
    );
    {
        let state = h.fake.lock();
        assert!(
            !state.containers.contains_key("c2"),
            "never-started container removed"
        );
        assert!(state.containers.contains_key("other"));
        assert_eq!(
            (state.n_creates, state.n_starts),
            (0, 0),
            "adoption starts nothing"
        );
    }
    // The adopted run's end is reported.
    h.fake.exit(&container_name("unit", run(1)), 0, false);
    assert_eq!(h.next_event().await.kind, RunEventKind::Succeeded);
    // The server does not know run 3: discard removes it at once.
    h.send(Command::Discard {
        run: run(3),
        grace_ms: 0,
    })
    .await;
    assert_eq!(h.next_event().await.kind, RunEventKind::Removed);
    assert!(!h.fake.lock().containers.contains_key("c3"));
}

#[tokio::test(start_paused = true)]
async fn a_late_oom_flag_is_waited_for_and_a_plain_sigkill_is_a_failure() {
    let (mut h, _) = start(FakeRuntime::with_image(IMAGE)).await;
    // The engine marks the OOM kill a little after the exit.
    h.launch_running(run(1), spec()).await;
    let name = container_name("unit", run(1));
    h.fake.exit(&name, 137, false);
    let fake = Arc::clone(&h.fake);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        fake.exit(&name, 137, true);
    });
    assert_eq!(
        h.next_event().await.kind,
        RunEventKind::Oom { exit_code: 137 }
    );
    // A SIGKILL from elsewhere, never marked as OOM, is an ordinary failure.
    h.launch_running(run(2), spec()).await;
    h.fake.exit(&container_name("unit", run(2)), 137, false);
    assert_eq!(
        h.next_event().await.kind,
        RunEventKind::Failed { exit_code: 137 }
    );
}

#[tokio::test(start_paused = true)]
async fn a_discard_during_a_stop_removes_the_container_once_it_stopped() {
    let (mut h, _) = start(FakeRuntime::with_image(IMAGE)).await;
    let ignoring = RunSpec {
        command: vec!["ignore".into()],
        ..spec()
    };
    h.launch_running(run(1), ignoring).await;
    h.send(Command::Stop {
        run: run(1),
        grace_ms: 5_000,
        cause: StopCause::Preempt,
    })
    .await;
    h.send(Command::Discard {
        run: run(1),
        grace_ms: 0,
    })
    .await;
    assert_eq!(
        h.next_event().await.kind,
        RunEventKind::Stopped {
            cause: StopCause::Preempt,
            sigkilled: true,
            exit_code: Some(137)
        }
    );
    let stopped_at = Instant::now();
    let removed = h.next_event().await;
    assert_eq!(removed.kind, RunEventKind::Removed);
    // At once, not at the end of the 60 s retention.
    assert!(
        stopped_at.elapsed() < Duration::from_secs(1),
        "{:?}",
        stopped_at.elapsed()
    );
    assert!(h.fake.lock().containers.is_empty());
}

/// An executor that died while stopping runs left stop markers: after the
/// restart, an exited container is reported *stopped* with the recorded
/// cause (not succeeded — a preempted workload that checkpoints and exits 0
/// must be requeued, not completed), and a still-running one is stopped
/// again with the recorded cause. A run without a marker is unaffected.
#[tokio::test]
async fn a_stop_interrupted_by_an_executor_restart_is_finished_and_reported_as_a_stop() {
    let fake = Arc::new(FakeRuntime::with_image(IMAGE));
    let labels = |task: u32| {
        BTreeMap::from([
            (LABEL_EXECUTOR.to_owned(), "unit".to_owned()),
            (LABEL_RUN.to_owned(), run(task).to_string()),
        ])
    };
    {
        let mut state = fake.lock();
        for (id, task, container_state) in [
            (
                "c1",
                1,
                ContainerState::Exited {
                    exit_code: 0,
                    oom_killed: false,
                },
            ),
            ("c2", 2, ContainerState::Running),
            (
                "c3",
                3,
                ContainerState::Exited {
                    exit_code: 0,
                    oom_killed: false,
                },
            ),
        ] {
            state.containers.insert(
                id.into(),
                FakeContainer {
                    name: container_name("unit", run(task)),
                    labels: labels(task),
                    state: container_state,
                    started_at: Some(SystemTime::now()),
                    ignores_sigterm: false,
                },
            );
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir);
    // What the process that died had recorded before its SIGTERMs.
    StopMarker::write(&cfg, run(1), StopCause::Preempt, Duration::from_secs(1))
        .await
        .unwrap();
    StopMarker::write(&cfg, run(2), StopCause::Cancel, Duration::from_secs(1))
        .await
        .unwrap();
    let manager = RunManager::new(Arc::clone(&fake), cfg.clone()).unwrap();
    let (commands, commands_rx) = mpsc::channel(16);
    let (reports_tx, mut reports) = mpsc::channel(16);
    tokio::spawn(manager.run(commands_rx, reports_tx));
    let Some(Report::Inventory(inventory)) = reports.recv().await else {
        panic!("no inventory first")
    };
    let outcome = |task: u32| {
        inventory
            .runs
            .iter()
            .find(|o| o.run == run(task))
            .unwrap()
            .outcome
            .clone()
    };
    assert_eq!(
        outcome(1),
        Some(RunEventKind::Stopped {
            cause: StopCause::Preempt,
            sigkilled: false,
            exit_code: Some(0)
        }),
        "exited 0 mid-preemption is a stop, not a success"
    );
    assert_eq!(outcome(3), None, "no marker: the exit speaks for itself");
    // The running one is stopped again, and its end reported as the cancel.
    let mut h = Harness {
        fake,
        commands,
        reports,
        _dir: dir,
    };
    assert_eq!(
        h.next_event().await.kind,
        RunEventKind::Stopped {
            cause: StopCause::Cancel,
            sigkilled: false,
            exit_code: Some(0)
        }
    );
    // A stop this process starts is recorded before the SIGTERM.
    h.launch_running(run(4), spec()).await;
    h.send(Command::Stop {
        run: run(4),
        grace_ms: 2500,
        cause: StopCause::Preempt,
    })
    .await;
    assert!(matches!(
        h.next_event().await.kind,
        RunEventKind::Stopped {
            cause: StopCause::Preempt,
            ..
        }
    ));
    assert_eq!(
        StopMarker::read(&cfg, run(4)).await,
        Some((StopCause::Preempt, Duration::from_millis(2500)))
    );
}
