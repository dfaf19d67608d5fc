//! The run manager: the state machine that owns the runs on this host. It
//! turns `Command`s into runtime calls and produces `Report`s, enforces
//! runtime limits, keeps log tails, removes containers after retention, and
//! reconciles with the containers it finds when it starts.
//!
//! Transport stays outside: commands arrive on one channel, reports leave on
//! another (the gRPC stream maps onto both one to one).
//!
//! ```text
//!  commands ─▶ RunManager::run ──(one task per run)──▶ Runtime (Docker)
//!                 │    ▲  table: RunId → Entry                 │
//!  reports  ◀─────┘    └────────── Internal messages ◀─────────┘
//! ```
//!
//! Call order: `RunManager::new`, then `run(commands, reports)`, which first
//! lists this executor's containers, adopts them and sends a
//! `Report::Inventory`, then serves commands until the command channel
//! closes. Ending `run` leaves containers running: the next run manager with
//! the same executor id adopts them without restarting them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::ExecutorConfig;
use crate::model::{
    Command, Inventory, KillReason, LogsError, LogsReply, ObservedRun, ObservedState, Report,
    RunEvent, RunEventKind, RunSpec, StartFailure, StopCause,
};
use crate::runtime::{
    Capability, ContainerConfig, ContainerInfo, ContainerState, LABEL_EXECUTOR, LABEL_JOB,
    LABEL_RUN, LABEL_RUNTIME_LIMIT_MS, LABEL_TASK, LogTail, RunId, Runtime, RuntimeError,
};

/// How long to back off after an engine error while watching a container
/// before asking again: long enough not to spin on a sick engine, short
/// enough that an exit is noticed promptly once it recovers.
const WATCH_RETRY: Duration = Duration::from_secs(1);
/// Docker handles the kernel's OOM event and the container's exit event
/// separately (engine 20.10), so right after an exit `OOMKilled` can still
/// read false. An exit by SIGKILL that the executor did not send is
/// re-inspected for this long before it is called a plain failure: the OOM
/// event lands within milliseconds on a healthy engine but was seen to miss
/// a 1 s wait on this loaded 2-core machine, and the pause costs only runs
/// that died by an outside SIGKILL.
const OOM_SETTLE: Duration = Duration::from_secs(3);
/// Exit code of a process killed by SIGKILL (128 + 9).
const EXIT_SIGKILL: i64 = 137;

/// Errors that end the run manager.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The initial listing of this executor's containers failed.
    #[error("reconciliation failed: {0}")]
    Reconcile(#[source] RuntimeError),
    /// The report channel closed: nobody listens any more.
    #[error("the report channel closed")]
    ReportsClosed,
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// What a run is doing, as the manager tracks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Pulling, creating, starting.
    Starting,
    /// The process runs.
    Running,
    /// A stop or discard is in progress.
    Stopping,
    /// It ended; the container is kept for the retention period.
    Ended,
    /// The container is removed; only the memory of it remains.
    Removed,
}

/// One run known to the manager.
struct Entry {
    phase: Phase,
    container_id: Option<String>,
    /// The newest event, sent again to answer a duplicate launch.
    last: RunEvent,
    /// The terminal event, once there is one.
    outcome: Option<RunEventKind>,
    /// The output tail captured when it ended.
    tail: Option<LogTail>,
    /// Tells the run's task to stop or discard; `None` once the task ended.
    control: Option<mpsc::UnboundedSender<Control>>,
}

/// Instructions from the manager to one run's task.
#[derive(Clone, Copy, Debug)]
enum Control {
    Stop { grace: Duration, cause: StopCause },
    Discard { grace: Duration },
}

/// Messages from run tasks to the manager.
enum Internal {
    Event {
        event: RunEvent,
        container_id: Option<String>,
    },
    Tail {
        run: RunId,
        tail: LogTail,
    },
    Logs(LogsReply),
    TaskDone {
        run: RunId,
    },
}

/// Why a container stopped running, as far as the executor knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Intent {
    /// It exited on its own.
    Natural,
    /// The server stopped it.
    Stop(StopCause),
    /// It ran into its runtime limit.
    RuntimeLimit,
    /// The server does not know it.
    Discard,
}

/// The terminal event kind for a container that exited: pure, so the table
/// test can pin every combination.
fn classify(intent: Intent, exit_code: i64, oom_killed: bool, sigkilled: bool) -> RunEventKind {
    match intent {
        Intent::Stop(cause) => RunEventKind::Stopped {
            cause,
            sigkilled,
            exit_code: Some(exit_code),
        },
        Intent::RuntimeLimit => RunEventKind::Killed {
            reason: KillReason::RuntimeLimit,
            sigkilled,
            exit_code,
        },
        Intent::Natural | Intent::Discard if oom_killed => RunEventKind::Oom { exit_code },
        Intent::Natural | Intent::Discard if exit_code == 0 => RunEventKind::Succeeded,
        Intent::Natural | Intent::Discard => RunEventKind::Failed { exit_code },
    }
}

/// A sentence for a run event's message.
fn describe(kind: &RunEventKind, memory_mib: Option<u64>, runtime_limit_ms: Option<u64>) -> String {
    match kind {
        RunEventKind::Starting => "starting".into(),
        RunEventKind::Running { container_id } => format!("running in container {container_id}"),
        RunEventKind::Succeeded => "exited with code 0".into(),
        RunEventKind::Failed { exit_code } => format!("exited with code {exit_code}"),
        RunEventKind::Oom { exit_code } => match memory_mib {
            Some(mib) => format!(
                "out of memory: killed by the OOM killer at its {mib} MiB limit (exit code {exit_code})"
            ),
            None => format!("out of memory: killed by the OOM killer (exit code {exit_code})"),
        },
        RunEventKind::Stopped {
            cause,
            sigkilled,
            exit_code,
        } => {
            let cause = match cause {
                StopCause::Preempt => "preempted",
                StopCause::Cancel => "cancelled",
            };
            match (exit_code, sigkilled) {
                (None, _) => format!("{cause} before it started"),
                (Some(code), false) => {
                    format!("{cause}: exited with code {code} within the grace period")
                }
                (Some(code), true) => {
                    format!("{cause}: SIGKILL after the grace period (exit code {code})")
                }
            }
        }
        RunEventKind::Killed {
            reason: KillReason::RuntimeLimit,
            sigkilled,
            exit_code,
        } => {
            let limit = runtime_limit_ms
                .map(|ms| format!(" of {ms} ms"))
                .unwrap_or_default();
            let how = if *sigkilled {
                "SIGKILL after the grace period"
            } else {
                "SIGTERM"
            };
            format!("killed: runtime limit{limit} exceeded ({how}, exit code {exit_code})")
        }
        RunEventKind::StartFailed { .. } => "failed to start".into(),
        RunEventKind::Lost => "lost".into(),
        RunEventKind::Removed => "container removed".into(),
    }
}

/// The manager's view of the runtime and configuration, shared with run tasks.
struct Shared<R> {
    runtime: R,
    config: ExecutorConfig,
}

/// Owns the runs on this host. See the module docs for the call order.
pub struct RunManager<R: Runtime> {
    shared: Arc<Shared<R>>,
    entries: BTreeMap<RunId, Entry>,
    /// Ended runs in the order they ended, to forget the oldest.
    ended: VecDeque<RunId>,
    tasks: JoinSet<()>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal_rx: mpsc::UnboundedReceiver<Internal>,
}

impl<R: Runtime> RunManager<R> {
    /// A run manager over `runtime`; validates `config`.
    pub fn new(runtime: R, config: ExecutorConfig) -> Result<Self, ManagerError> {
        config.validate()?;
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        Ok(Self {
            shared: Arc::new(Shared { runtime, config }),
            entries: BTreeMap::new(),
            ended: VecDeque::new(),
            tasks: JoinSet::new(),
            internal_tx,
            internal_rx,
        })
    }

    /// Reconciles, then serves `commands` until that channel closes, sending
    /// reports to `reports`. Returns `Err` if reconciliation fails or
    /// `reports` closes. Running containers are left running on return.
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        reports: mpsc::Sender<Report>,
    ) -> Result<(), ManagerError> {
        let inventory = self.reconcile().await.map_err(ManagerError::Reconcile)?;
        send(&reports, Report::Inventory(inventory)).await?;
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.handle_command(command, &reports).await?,
                    None => break,
                },
                Some(message) = self.internal_rx.recv() => self.handle_internal(message, &reports).await?,
                // Reap finished tasks so the set does not grow; a panicking
                // task is a bug worth a loud log line.
                Some(joined) = self.tasks.join_next() => {
                    if let Err(err) = joined
                        && err.is_panic()
                    {
                        tracing::error!(error = %err, "a run task panicked");
                    }
                }
            }
        }
        // Dropping the JoinSet aborts the run tasks; their containers live on.
        self.tasks.abort_all();
        Ok(())
    }

    fn config(&self) -> &ExecutorConfig {
        &self.shared.config
    }

    async fn handle_command(
        &mut self,
        command: Command,
        reports: &mpsc::Sender<Report>,
    ) -> Result<(), ManagerError> {
        match command {
            Command::Launch { run, spec } => self.handle_launch(run, spec, reports).await,
            Command::Stop {
                run,
                grace_ms,
                cause,
            } => {
                self.handle_stop(
                    run,
                    Control::Stop {
                        grace: Duration::from_millis(grace_ms),
                        cause,
                    },
                    reports,
                )
                .await
            }
            Command::Discard { run, grace_ms } => {
                self.handle_stop(
                    run,
                    Control::Discard {
                        grace: Duration::from_millis(grace_ms),
                    },
                    reports,
                )
                .await
            }
            Command::FetchLogs { request_id, run } => {
                self.handle_fetch_logs(request_id, run, reports).await
            }
            Command::Reconcile => match self.reconcile().await {
                Ok(inventory) => send(reports, Report::Inventory(inventory)).await,
                // A failed re-listing is not fatal: the runs are still
                // watched; the server may ask again.
                Err(err) => {
                    tracing::warn!(error = %err, "reconciliation failed");
                    Ok(())
                }
            },
        }
    }

    async fn handle_launch(
        &mut self,
        run: RunId,
        spec: RunSpec,
        reports: &mpsc::Sender<Report>,
    ) -> Result<(), ManagerError> {
        if let Some(entry) = self.entries.get(&run) {
            // Nothing runs twice: answer with what the run is doing.
            tracing::info!(%run, phase = ?entry.phase, "duplicate launch answered with the run's state");
            let mut answer = entry.last.clone();
            answer.message = format!("already launched: {}", answer.message);
            return send(reports, Report::Run(answer)).await;
        }
        let caps = match spec.validate() {
            Ok(caps) => caps,
            Err(err) => {
                let message = err.to_string();
                let kind = RunEventKind::StartFailed {
                    reason: StartFailure::InvalidSpec(err),
                };
                let event = RunEvent {
                    run,
                    at: SystemTime::now(),
                    kind: kind.clone(),
                    message,
                };
                self.insert_ended(run, event.clone(), None);
                return send(reports, Report::Run(event)).await;
            }
        };
        let event = RunEvent {
            run,
            at: SystemTime::now(),
            kind: RunEventKind::Starting,
            message: "starting".into(),
        };
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        self.entries.insert(
            run,
            Entry {
                phase: Phase::Starting,
                container_id: None,
                last: event.clone(),
                outcome: None,
                tail: None,
                control: Some(control_tx),
            },
        );
        send(reports, Report::Run(event)).await?;
        let task = RunTask {
            shared: Arc::clone(&self.shared),
            run,
            tx: self.internal_tx.clone(),
            control: control_rx,
            memory_mib: Some(spec.memory_mib),
            runtime_limit_ms: spec.runtime_limit_ms,
        };
        let config = self.container_config(run, &spec, caps);
        self.tasks.spawn(task.launch(config, spec.runtime_limit_ms));
        Ok(())
    }

    fn container_config(
        &self,
        run: RunId,
        spec: &RunSpec,
        caps: Vec<Capability>,
    ) -> ContainerConfig {
        let config = self.config();
        let mut labels = BTreeMap::from([
            (LABEL_JOB.to_owned(), run.job_label()),
            (LABEL_TASK.to_owned(), run.task_label()),
            (LABEL_RUN.to_owned(), run.to_string()),
            (LABEL_EXECUTOR.to_owned(), config.executor_id.clone()),
        ]);
        if let Some(limit_ms) = spec.runtime_limit_ms {
            labels.insert(LABEL_RUNTIME_LIMIT_MS.to_owned(), limit_ms.to_string());
        }
        ContainerConfig {
            name: container_name(&config.executor_id, run),
            image: spec.image.clone(),
            command: spec.command.clone(),
            env: spec.env.clone(),
            labels,
            cpu_millis: spec.cpu_millis,
            memory_mib: spec.memory_mib,
            pids_limit: spec.pids_limit.unwrap_or(config.default_pids_limit),
            cap_add: caps,
            read_only_rootfs: spec.read_only_rootfs,
            scratch_dir: config.scratch_dir(&run.slug()),
            log_max_bytes: config.container_log_max_bytes,
        }
    }

    async fn handle_stop(
        &mut self,
        run: RunId,
        control: Control,
        reports: &mpsc::Sender<Report>,
    ) -> Result<(), ManagerError> {
        let Some(entry) = self.entries.get_mut(&run) else {
            let kind = match control {
                // Nothing to discard is the goal reached.
                Control::Discard { .. } => RunEventKind::Removed,
                Control::Stop { .. } => RunEventKind::Lost,
            };
            let event = RunEvent {
                run,
                at: SystemTime::now(),
                kind,
                message: "no such run on this executor".into(),
            };
            return send(reports, Report::Run(event)).await;
        };
        if let (Phase::Starting | Phase::Running, Control::Stop { grace, cause }) =
            (entry.phase, control)
        {
            // Durable before the SIGTERM: if this process dies mid-stop, a
            // restarted one still knows the container ended because the
            // server stopped it, not by itself (see `StopMarker`).
            if let Err(err) = StopMarker::write(&self.shared.config, run, cause, grace).await {
                tracing::warn!(%run, error = %err, "recording the stop intent failed");
            }
        }
        let Some(entry) = self.entries.get_mut(&run) else {
            return Ok(());
        };
        match (entry.phase, control) {
            (Phase::Starting | Phase::Running, _) | (Phase::Ended, Control::Discard { .. }) => {
                if let Some(tx) = &entry.control
                    && tx.send(control).is_ok()
                {
                    if entry.phase != Phase::Ended {
                        entry.phase = Phase::Stopping;
                    }
                    return Ok(());
                }
                // The task is gone (it only ends after removal); say so.
                let mut answer = entry.last.clone();
                answer.message = format!("run already over: {}", answer.message);
                send(reports, Report::Run(answer)).await
            }
            (Phase::Stopping, Control::Stop { .. }) => {
                tracing::info!(%run, "stop while stopping: the first stop stands");
                Ok(())
            }
            // The task reads it once the stop is done and then removes the
            // container instead of retaining it.
            (Phase::Stopping, Control::Discard { .. }) => {
                if let Some(tx) = &entry.control {
                    let _ = tx.send(control);
                }
                Ok(())
            }
            (Phase::Removed, Control::Discard { .. }) => {
                let event = RunEvent {
                    run,
                    at: SystemTime::now(),
                    kind: RunEventKind::Removed,
                    message: "container already removed".into(),
                };
                send(reports, Report::Run(event)).await
            }
            (Phase::Ended | Phase::Removed, _) => {
                let mut answer = entry.last.clone();
                if let Some(outcome) = &entry.outcome {
                    answer.kind = outcome.clone();
                }
                answer.message = format!("run already over: {}", answer.message);
                send(reports, Report::Run(answer)).await
            }
        }
    }

    async fn handle_fetch_logs(
        &mut self,
        request_id: u64,
        run: RunId,
        reports: &mpsc::Sender<Report>,
    ) -> Result<(), ManagerError> {
        let Some(entry) = self.entries.get(&run) else {
            let result = Err(LogsError::UnknownRun { run });
            return send(
                reports,
                Report::Logs(LogsReply {
                    request_id,
                    run,
                    result,
                }),
            )
            .await;
        };
        if let Some(tail) = &entry.tail {
            let reply = LogsReply {
                request_id,
                run,
                result: Ok(tail.clone()),
            };
            return send(reports, Report::Logs(reply)).await;
        }
        let Some(container) = entry.container_id.clone() else {
            // Not started yet, or never started: no output exists.
            let reply = LogsReply {
                request_id,
                run,
                result: Ok(LogTail::default()),
            };
            return send(reports, Report::Logs(reply)).await;
        };
        // A live tail goes through the engine; do not hold the loop for it.
        let shared = Arc::clone(&self.shared);
        let tx = self.internal_tx.clone();
        self.tasks.spawn(async move {
            let config = &shared.config;
            let result = shared
                .runtime
                .logs_tail(&container, config.log_tail_lines, config.log_tail_bytes)
                .await
                .map_err(|err| LogsError::Runtime {
                    run,
                    message: err.to_string(),
                });
            let _ = tx.send(Internal::Logs(LogsReply {
                request_id,
                run,
                result,
            }));
        });
        Ok(())
    }

    async fn handle_internal(
        &mut self,
        message: Internal,
        reports: &mpsc::Sender<Report>,
    ) -> Result<(), ManagerError> {
        match message {
            Internal::Event {
                event,
                container_id,
            } => {
                let run = event.run;
                let mut newly_ended = false;
                if let Some(entry) = self.entries.get_mut(&run) {
                    if container_id.is_some() {
                        entry.container_id = container_id;
                    }
                    match &event.kind {
                        RunEventKind::Running { .. } if entry.phase == Phase::Starting => {
                            entry.phase = Phase::Running
                        }
                        RunEventKind::Removed => {
                            entry.phase = Phase::Removed;
                            newly_ended = entry.outcome.is_none();
                        }
                        kind if kind.is_terminal() => {
                            // A lost run or one that never started has no
                            // container left to retain.
                            entry.phase = match kind {
                                RunEventKind::Lost | RunEventKind::StartFailed { .. } => {
                                    Phase::Removed
                                }
                                _ => Phase::Ended,
                            };
                            entry.outcome = Some(kind.clone());
                            newly_ended = true;
                        }
                        _ => {}
                    }
                    entry.last = event.clone();
                }
                if newly_ended {
                    self.remember_ended(run);
                }
                send(reports, Report::Run(event)).await
            }
            Internal::Tail { run, tail } => {
                if let Some(entry) = self.entries.get_mut(&run) {
                    entry.tail = Some(tail);
                }
                Ok(())
            }
            Internal::Logs(reply) => send(reports, Report::Logs(reply)).await,
            Internal::TaskDone { run } => {
                if let Some(entry) = self.entries.get_mut(&run) {
                    entry.control = None;
                }
                Ok(())
            }
        }
    }

    /// Records a run that ended without a task (an invalid spec).
    fn insert_ended(&mut self, run: RunId, event: RunEvent, tail: Option<LogTail>) {
        self.entries.insert(
            run,
            Entry {
                phase: Phase::Removed,
                container_id: None,
                outcome: Some(event.kind.clone()),
                last: event,
                tail,
                control: None,
            },
        );
        self.remember_ended(run);
    }

    /// Keeps ended runs up to `max_remembered_runs`, forgetting the oldest
    /// whose container is gone.
    fn remember_ended(&mut self, run: RunId) {
        self.ended.push_back(run);
        if self.ended.len() <= self.config().max_remembered_runs {
            return;
        }
        // Runs still in retention keep their container and are never
        // forgotten; the oldest whose container is gone goes.
        let entries = &self.entries;
        let forgettable = self.ended.iter().position(|old| {
            entries
                .get(old)
                .is_none_or(|entry| entry.phase == Phase::Removed)
        });
        if let Some(pos) = forgettable
            && let Some(old) = self.ended.remove(pos)
        {
            self.entries.remove(&old);
        }
    }

    /// Lists this executor's containers and brings the table in line:
    /// adopts running ones it did not know, keeps exited ones for their
    /// retention, removes never-started ones. Returns what it found.
    async fn reconcile(&mut self) -> Result<Inventory, RuntimeError> {
        let shared = Arc::clone(&self.shared);
        let containers = shared.runtime.list(&shared.config.executor_id).await?;
        let mut runs = Vec::new();
        for info in containers {
            let Some(run) = info.run() else {
                // Our executor label but no valid run label: nothing of ours
                // would make it, so it cannot be tracked; remove it.
                tracing::warn!(container = %info.name, "removing a container with this executor's label but no valid run label");
                if let Err(err) = shared.runtime.remove(&info.id).await {
                    tracing::warn!(container = %info.name, error = %err, "removing it failed");
                }
                continue;
            };
            let known = self
                .entries
                .get(&run)
                .filter(|entry| entry.container_id.as_deref() == Some(info.id.as_str()));
            let outcome = known.and_then(|entry| entry.outcome.clone());
            // A run of this process still starting has a created container
            // with no id recorded yet.
            let starting = self
                .entries
                .get(&run)
                .is_some_and(|entry| entry.phase == Phase::Starting);
            let is_known = known.is_some() || starting;
            let state = match &info.state {
                ContainerState::Created if is_known => ObservedState::Starting,
                ContainerState::Created | ContainerState::Gone => {
                    tracing::info!(%run, container = %info.name, "removing a container that never started");
                    if let Err(err) = shared.runtime.remove(&info.id).await {
                        tracing::warn!(%run, error = %err, "removing it failed");
                    }
                    if let Err(err) = remove_scratch(&shared.config, run).await {
                        tracing::warn!(%run, error = %err, "removing its scratch directory failed");
                    }
                    ObservedState::NeverStarted
                }
                ContainerState::Running => ObservedState::Running {
                    started_at: info.started_at,
                },
                ContainerState::Exited {
                    exit_code,
                    oom_killed,
                } => ObservedState::Exited {
                    exit_code: *exit_code,
                    oom_killed: *oom_killed,
                    finished_at: info.finished_at,
                },
            };
            let mut outcome = outcome;
            if !is_known && state != ObservedState::NeverStarted {
                let stop = StopMarker::read(&shared.config, run).await;
                self.adopt(run, &info, stop);
                // An exited container that was being stopped ended because
                // the server asked: report it stopped, whatever its code.
                if stop.is_some() && matches!(state, ObservedState::Exited { .. }) {
                    outcome = self
                        .entries
                        .get(&run)
                        .and_then(|entry| entry.outcome.clone());
                }
            }
            runs.push(ObservedRun {
                run,
                container_id: Some(info.id.clone()),
                state,
                outcome,
            });
        }
        // Launches still pulling their image have no container yet.
        for (run, entry) in &self.entries {
            if entry.phase == Phase::Starting && !runs.iter().any(|observed| observed.run == *run) {
                runs.push(ObservedRun {
                    run: *run,
                    container_id: None,
                    state: ObservedState::Starting,
                    outcome: None,
                });
            }
        }
        runs.sort_by_key(|observed| observed.run);
        Ok(Inventory {
            at: SystemTime::now(),
            runs,
        })
    }

    /// Takes over a container this process did not create: watches a running
    /// one (with its runtime limit, from its label and start time), or keeps
    /// an exited one for the rest of its retention. With a recorded `stop`
    /// (an earlier process died mid-stop), an exited container is classified
    /// as stopped, and a running one is stopped again with the same cause.
    fn adopt(&mut self, run: RunId, info: &ContainerInfo, stop: Option<(StopCause, Duration)>) {
        let now = SystemTime::now();
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let runtime_limit_ms = info
            .labels
            .get(LABEL_RUNTIME_LIMIT_MS)
            .and_then(|ms| ms.parse::<u64>().ok());
        let task = RunTask {
            shared: Arc::clone(&self.shared),
            run,
            tx: self.internal_tx.clone(),
            control: control_rx,
            memory_mib: None,
            runtime_limit_ms,
        };
        let (phase, kind, outcome) = match info.state {
            ContainerState::Exited {
                exit_code,
                oom_killed,
            } => {
                let intent = stop.map_or(Intent::Natural, |(cause, _)| Intent::Stop(cause));
                let kind = classify(intent, exit_code, oom_killed, false);
                (Phase::Ended, kind.clone(), Some(kind))
            }
            _ => (
                Phase::Running,
                RunEventKind::Running {
                    container_id: info.id.clone(),
                },
                None,
            ),
        };
        let message = format!(
            "adopted after an executor restart: {}",
            describe(&kind, None, runtime_limit_ms)
        );
        tracing::info!(%run, container = %info.name, phase = ?phase, "adopted a container");
        self.entries.insert(
            run,
            Entry {
                phase,
                container_id: Some(info.id.clone()),
                last: RunEvent {
                    run,
                    at: now,
                    kind,
                    message,
                },
                outcome,
                tail: None,
                control: Some(control_tx),
            },
        );
        if phase == Phase::Ended {
            self.remember_ended(run);
            let elapsed = info
                .finished_at
                .and_then(|at| now.duration_since(at).ok())
                .unwrap_or_default();
            let retention_left = self.config().retention().saturating_sub(elapsed);
            self.tasks
                .spawn(task.adopt_ended(info.id.clone(), retention_left));
        } else {
            // Runtime limit left, from the container's own start time.
            let deadline = runtime_limit_ms.map(|limit_ms| {
                let ran = info
                    .started_at
                    .and_then(|at| now.duration_since(at).ok())
                    .unwrap_or_default();
                Instant::now() + Duration::from_millis(limit_ms).saturating_sub(ran)
            });
            self.tasks.spawn(task.watch(info.id.clone(), deadline));
            if let Some((cause, grace)) = stop {
                // The server still waits for this stop; finish it.
                if let Some(entry) = self.entries.get_mut(&run) {
                    entry.phase = Phase::Stopping;
                    if let Some(tx) = &entry.control {
                        let _ = tx.send(Control::Stop { grace, cause });
                    }
                }
            }
        }
    }
}

/// `ebb-<executor>-j<job>-t<task>-a<attempt>`: unique per executor and run,
/// so a second create of the same run collides instead of running twice.
pub fn container_name(executor_id: &str, run: RunId) -> String {
    format!("ebb-{executor_id}-{}", run.slug())
}

async fn send(reports: &mpsc::Sender<Report>, report: Report) -> Result<(), ManagerError> {
    reports
        .send(report)
        .await
        .map_err(|_| ManagerError::ReportsClosed)
}

/// Removes a run's files: its scratch directory and its stop marker.
async fn remove_scratch(config: &ExecutorConfig, run: RunId) -> std::io::Result<()> {
    StopMarker::remove(config, run).await?;
    match tokio::fs::remove_dir_all(config.scratch_dir(&run.slug())).await {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// A stop the server asked for, recorded on disk before the SIGTERM is sent
/// (`<data_dir>/stops/<run>`: `preempt 30000` or `cancel 30000`, the cause
/// and the grace in ms). Without it, an executor that dies while stopping a
/// run would, once restarted, find only an exited container — and a
/// preempted workload that checkpoints and exits 0 on SIGTERM would be
/// reported as having *succeeded*, completing a task whose work was not
/// done. Kept outside the scratch directory, which the container can write.
struct StopMarker;

impl StopMarker {
    fn path(config: &ExecutorConfig, run: RunId) -> std::path::PathBuf {
        config.data_dir.join("stops").join(run.slug())
    }

    async fn write(
        config: &ExecutorConfig,
        run: RunId,
        cause: StopCause,
        grace: Duration,
    ) -> std::io::Result<()> {
        let path = Self::path(config, run);
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let cause = match cause {
            StopCause::Preempt => "preempt",
            StopCause::Cancel => "cancel",
        };
        tokio::fs::write(&path, format!("{cause} {}", grace.as_millis())).await
    }

    /// The recorded stop, if any (an unreadable marker counts as none).
    async fn read(config: &ExecutorConfig, run: RunId) -> Option<(StopCause, Duration)> {
        let text = tokio::fs::read_to_string(Self::path(config, run))
            .await
            .ok()?;
        let (cause, grace) = text.trim().split_once(' ')?;
        let cause = match cause {
            "preempt" => StopCause::Preempt,
            "cancel" => StopCause::Cancel,
            _ => return None,
        };
        Some((cause, Duration::from_millis(grace.parse().ok()?)))
    }

    async fn remove(config: &ExecutorConfig, run: RunId) -> std::io::Result<()> {
        match tokio::fs::remove_file(Self::path(config, run)).await {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

/// One run's task: drives its container from launch (or adoption) to removal.
struct RunTask<R> {
    shared: Arc<Shared<R>>,
    run: RunId,
    tx: mpsc::UnboundedSender<Internal>,
    control: mpsc::UnboundedReceiver<Control>,
    /// For messages: the memory limit, when this process launched the run.
    memory_mib: Option<u64>,
    runtime_limit_ms: Option<u64>,
}

impl<R: Runtime> RunTask<R> {
    fn event(&self, kind: RunEventKind, message: String, container_id: Option<String>) {
        let event = RunEvent {
            run: self.run,
            at: SystemTime::now(),
            kind,
            message,
        };
        // The manager outlives its tasks; a closed channel means it is
        // shutting down, and the event is moot.
        let _ = self.tx.send(Internal::Event {
            event,
            container_id,
        });
    }

    fn describe(&self, kind: &RunEventKind) -> String {
        describe(kind, self.memory_mib, self.runtime_limit_ms)
    }

    fn start_failed(&self, reason: StartFailure, message: String) {
        self.event(RunEventKind::StartFailed { reason }, message, None);
    }

    async fn launch(mut self, config: ContainerConfig, runtime_limit_ms: Option<u64>) {
        let shared = Arc::clone(&self.shared);
        let runtime = &shared.runtime;
        // A stop during the pull cancels the launch before any container exists.
        let pulled = tokio::select! {
            pulled = runtime.ensure_image(&config.image) => pulled,
            Some(control) = self.control.recv() => {
                let cause = match control {
                    Control::Stop { cause, .. } => Some(cause),
                    Control::Discard { .. } => None,
                };
                match cause {
                    Some(cause) => {
                        let kind = RunEventKind::Stopped { cause, sigkilled: false, exit_code: None };
                        let message = self.describe(&kind);
                        self.event(kind, message, None);
                    }
                    None => self.event(RunEventKind::Removed, "discarded before it started".into(), None),
                }
                return self.done();
            }
        };
        if let Err(err) = pulled {
            let reason = match &err {
                RuntimeError::ImageNotAvailable { image, .. } => StartFailure::ImageNotAvailable {
                    image: image.clone(),
                },
                _ => StartFailure::Runtime,
            };
            self.start_failed(reason, err.to_string());
            return self.done();
        }
        if let Err(err) = tokio::fs::create_dir_all(&config.scratch_dir).await {
            let message = format!(
                "cannot create the scratch directory {}: {err}",
                config.scratch_dir.display()
            );
            self.start_failed(StartFailure::Runtime, message);
            return self.done();
        }
        let container = match runtime.create(&config).await {
            Ok(id) => id,
            Err(RuntimeError::AlreadyExists { name }) => {
                // Created by an earlier launch of this run (this manager
                // never saw it): take it over as it is; never start a second.
                match runtime.inspect(&name).await {
                    Ok(info) if info.state == ContainerState::Created => info.id,
                    Ok(info) => {
                        tracing::info!(run = %self.run, container = %name, "launch found the run's container; adopting it");
                        let deadline =
                            runtime_limit_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
                        let kind = RunEventKind::Running {
                            container_id: info.id.clone(),
                        };
                        let message = format!("already running: {}", self.describe(&kind));
                        self.event(kind, message, Some(info.id.clone()));
                        return match info.state {
                            ContainerState::Running => self.watch(info.id, deadline).await,
                            _ => self.finish(info.id, Intent::Natural, false).await,
                        };
                    }
                    Err(err) => {
                        self.start_failed(StartFailure::Runtime, err.to_string());
                        return self.done();
                    }
                }
            }
            Err(err) => {
                let reason = match &err {
                    RuntimeError::ImageNotAvailable { image, .. } => {
                        StartFailure::ImageNotAvailable {
                            image: image.clone(),
                        }
                    }
                    _ => StartFailure::Runtime,
                };
                self.start_failed(reason, err.to_string());
                let _ = remove_scratch(&self.shared.config, self.run).await;
                return self.done();
            }
        };
        if let Err(err) = runtime.start(&container).await {
            self.start_failed(StartFailure::Runtime, err.to_string());
            let _ = runtime.remove(&container).await;
            let _ = remove_scratch(&self.shared.config, self.run).await;
            return self.done();
        }
        // The limit counts from the moment the process started.
        let deadline = runtime_limit_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
        let kind = RunEventKind::Running {
            container_id: container.clone(),
        };
        let message = self.describe(&kind);
        self.event(kind, message, Some(container.clone()));
        self.watch(container, deadline).await;
    }

    async fn adopt_ended(mut self, container: String, retention_left: Duration) {
        self.capture_tail(&container).await;
        self.retain(container, retention_left).await;
    }

    /// Waits for the container to exit, for a stop, or for the runtime limit.
    async fn watch(mut self, container: String, deadline: Option<Instant>) {
        let shared = Arc::clone(&self.shared);
        let runtime = &shared.runtime;
        let mut control_open = true;
        let (intent, grace) = loop {
            let limit = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                exited = runtime.wait_exit(&container) => match exited {
                    Ok(()) => break (Intent::Natural, Duration::ZERO),
                    Err(RuntimeError::NotFound { .. }) => return self.lost(&container, "its container vanished".into()),
                    Err(err) => {
                        tracing::warn!(run = %self.run, error = %err, "waiting for the container failed; retrying");
                        tokio::time::sleep(WATCH_RETRY).await;
                    }
                },
                control = self.control.recv(), if control_open => match control {
                    Some(Control::Stop { grace, cause }) => break (Intent::Stop(cause), grace),
                    Some(Control::Discard { grace }) => break (Intent::Discard, grace),
                    None => control_open = false,
                },
                () = limit => {
                    tracing::info!(run = %self.run, "runtime limit reached, stopping the run");
                    break (Intent::RuntimeLimit, Duration::from_millis(self.shared.config.runtime_limit_grace_ms));
                }
            }
        };
        let mut sigkilled = false;
        if intent != Intent::Natural {
            match runtime.stop(&container, grace).await {
                Ok(outcome) => sigkilled = outcome.sigkilled,
                Err(RuntimeError::NotFound { .. }) => {
                    return self.lost(&container, "its container vanished".into());
                }
                Err(err) => {
                    // The engine would not stop it; a forced removal kills it.
                    tracing::warn!(run = %self.run, error = %err, "stop failed; removing the container by force");
                    sigkilled = true;
                    if let Err(err) = runtime.remove(&container).await {
                        tracing::error!(run = %self.run, error = %err, "forced removal failed too");
                    }
                }
            }
        }
        self.finish(container, intent, sigkilled).await;
    }

    /// Classifies the exit, captures the tail, reports, then retains.
    async fn finish(mut self, container: String, intent: Intent, sigkilled: bool) {
        let shared = Arc::clone(&self.shared);
        let runtime = &shared.runtime;
        let info = match runtime.inspect(&container).await {
            Ok(info) => info,
            Err(RuntimeError::NotFound { .. }) if intent == Intent::Discard => {
                return self.removed(&container).await;
            }
            Err(err) => return self.lost(&container, format!("cannot read its exit: {err}")),
        };
        let (exit_code, mut oom_killed) = match info.state {
            ContainerState::Exited {
                exit_code,
                oom_killed,
            } => (exit_code, oom_killed),
            other => {
                return self.lost(
                    &container,
                    format!("container in state {other:?} after it stopped"),
                );
            }
        };
        if intent == Intent::Discard {
            return self.removed(&container).await;
        }
        if intent == Intent::Natural && exit_code == EXIT_SIGKILL && !oom_killed {
            oom_killed = self.settle_oom(&container).await;
        }
        self.capture_tail(&container).await;
        let kind = classify(intent, exit_code, oom_killed, sigkilled);
        let message = self.describe(&kind);
        self.event(kind, message, None);
        let retention = self.shared.config.retention();
        self.retain(container, retention).await;
    }

    /// Re-inspects for up to `OOM_SETTLE` whether the engine marks the exit
    /// as an OOM kill.
    async fn settle_oom(&self, container: &str) -> bool {
        /// Between two inspections.
        const STEP: Duration = Duration::from_millis(50);
        let deadline = Instant::now() + OOM_SETTLE;
        while Instant::now() < deadline {
            tokio::time::sleep(STEP).await;
            if let Ok(ContainerInfo {
                state:
                    ContainerState::Exited {
                        oom_killed: true, ..
                    },
                ..
            }) = self.shared.runtime.inspect(container).await
            {
                return true;
            }
        }
        false
    }

    async fn capture_tail(&mut self, container: &str) {
        let config = &self.shared.config;
        match self
            .shared
            .runtime
            .logs_tail(container, config.log_tail_lines, config.log_tail_bytes)
            .await
        {
            Ok(tail) => {
                let _ = self.tx.send(Internal::Tail {
                    run: self.run,
                    tail,
                });
            }
            Err(err) => {
                tracing::warn!(run = %self.run, error = %err, "capturing the log tail failed")
            }
        }
    }

    /// Keeps the exited container for `retention` (or until discarded), then
    /// removes it.
    async fn retain(mut self, container: String, retention: Duration) {
        let sleep = tokio::time::sleep(retention);
        tokio::pin!(sleep);
        let mut control_open = true;
        loop {
            tokio::select! {
                () = &mut sleep => break,
                control = self.control.recv(), if control_open => match control {
                    Some(Control::Discard { .. }) => break,
                    // Already stopped; the manager answers stops itself.
                    Some(Control::Stop { .. }) => {}
                    // The manager is shutting down and this task is about to
                    // be aborted: the container stays for the next manager,
                    // which finds it exited and keeps its retention.
                    None => control_open = false,
                },
            }
        }
        self.removed(&container).await;
    }

    async fn removed(self, container: &str) {
        if let Err(err) = self.shared.runtime.remove(container).await {
            tracing::warn!(run = %self.run, error = %err, "removing the container failed");
        }
        if let Err(err) = remove_scratch(&self.shared.config, self.run).await {
            tracing::warn!(run = %self.run, error = %err, "removing the scratch directory failed");
        }
        self.event(
            RunEventKind::Removed,
            format!("container {container} removed"),
            None,
        );
        self.done();
    }

    fn lost(self, container: &str, why: String) {
        tracing::warn!(run = %self.run, container, %why, "run lost");
        self.event(RunEventKind::Lost, format!("lost: {why}"), None);
        self.done();
    }

    fn done(self) {
        let _ = self.tx.send(Internal::TaskDone { run: self.run });
    }
}

#[cfg(test)]
mod tests;
