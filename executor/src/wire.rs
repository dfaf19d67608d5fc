//! The one place where `ebb.v1` wire messages become the run manager's
//! model types and back: launch, stop and logs requests in; run events,
//! reconciliation inventories, log chunks, registration and heartbeats out.
//! Everything here is pure, so the table tests below pin every mapping.
//!
//! Mapping rules worth knowing (the rest is one to one):
//! - `Starting` and `Removed` have no wire form: the server learns a run
//!   started when its container runs, and removal is the executor's own
//!   housekeeping.
//! - A run that could not start (no image, invalid spec, engine refusal) is
//!   reported `exited` with [`EXIT_START_FAILED`] and the reason in the
//!   message: a failure the job's retry policy counts, not a `lost` run
//!   that would be requeued for ever on a host that cannot pull its image.
//! - A run killed at its runtime limit is a failure: `exited` with its exit
//!   code, or [`EXIT_RUNTIME_LIMIT`] when it exited 0 after the SIGTERM (code 0
//!   would complete the task).
//! - `stopped` echoes the reason the stop command carried (the model has
//!   only preempt and cancel; the wire also has gang restarts).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use ebb_proto::v1 as pb;
use pb::executor_message::Message as Up;
use pb::scheduler_message::Message as Down;

use crate::config::{HostConfig, HostResources};
use crate::model::{
    KillReason, LogsReply, ObservedRun, ObservedState, RunEvent, RunEventKind, RunSpec,
    StartFailure, StopCause,
};
use crate::runtime::RunId;

/// Exit code reported for a run that never started. 125 is what `docker run`
/// itself exits with when the engine cannot create or start the container.
pub const EXIT_START_FAILED: i32 = 125;
/// Exit code reported for a run killed at its runtime limit that exited 0
/// after its SIGTERM: 143 is 128 + SIGTERM, what a shell reports for it.
pub const EXIT_RUNTIME_LIMIT: i32 = 143;
/// Largest `data` of one `LogsChunk`. The server accepts messages of several
/// MiB; 256 KiB keeps any one message small next to run events on the same
/// stream, and the default log tail (64 KiB) fits in one chunk.
pub const MAX_LOG_CHUNK_BYTES: usize = 256 * 1024;

/// A wire message that does not make sense.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid field `{field}`: {message}")]
pub struct WireError {
    /// The field's path, e.g. `launch.run.attempt`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl WireError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why the server stopped a run, as the wire says it (kept so the `stopped`
/// report echoes it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// The market reclaimed the capacity (or a critical task needed it).
    Preempt,
    /// The owner cancelled, or the server does not own the run.
    Cancel,
    /// Another member of the run's gang ended; the gang restarts whole.
    Restart,
}

impl StopReason {
    /// The run manager's cause: a gang restart is, for the container, a
    /// preemption (it will run again).
    pub fn cause(self) -> StopCause {
        match self {
            StopReason::Preempt | StopReason::Restart => StopCause::Preempt,
            StopReason::Cancel => StopCause::Cancel,
        }
    }

    fn from_wire(reason: i32) -> Self {
        match pb::StopReason::try_from(reason) {
            Ok(pb::StopReason::Preempt) => StopReason::Preempt,
            Ok(pb::StopReason::Restart) => StopReason::Restart,
            // Cancel, unspecified, or a reason newer than this executor: the
            // container stops either way; only the echoed reason differs.
            _ => StopReason::Cancel,
        }
    }

    fn to_wire(self) -> pb::StopReason {
        match self {
            StopReason::Preempt => pb::StopReason::Preempt,
            StopReason::Cancel => pb::StopReason::Cancel,
            StopReason::Restart => pb::StopReason::Restart,
        }
    }
}

/// The refusal codes `executor.proto` lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefusalCode {
    /// The run is not the task's current run.
    StaleRun,
    /// The run is placed on another host.
    ForeignRun,
    /// The task is not known (its job was forgotten).
    UnknownTask,
    /// The report does not fit the task's state.
    WrongState,
    /// The stream has not registered.
    NotRegistered,
    /// The message was malformed.
    Invalid,
    /// A code this executor does not know.
    Other(String),
}

impl RefusalCode {
    fn parse(code: &str) -> Self {
        match code {
            "stale_run" => RefusalCode::StaleRun,
            "foreign_run" => RefusalCode::ForeignRun,
            "unknown_task" => RefusalCode::UnknownTask,
            "wrong_state" => RefusalCode::WrongState,
            "not_registered" => RefusalCode::NotRegistered,
            "invalid" => RefusalCode::Invalid,
            other => RefusalCode::Other(other.to_owned()),
        }
    }

    /// The server does not own this run on this host: if it still runs
    /// here, nobody will ever account for it, so it must be stopped.
    pub fn disowns_run(&self) -> bool {
        matches!(
            self,
            RefusalCode::StaleRun | RefusalCode::ForeignRun | RefusalCode::UnknownTask
        )
    }
}

/// The server's answer to `register`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registered {
    /// The host id the server registered.
    pub host_id: String,
    /// Send something at least this often.
    pub heartbeat_interval: Option<Duration>,
    /// Silence after which the server declares the host lost.
    pub heartbeat_timeout: Option<Duration>,
    /// Reported runs the server adopted as this host's current runs.
    pub adopted: Vec<RunId>,
}

/// What a `SchedulerMessage` asks of the executor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FromServer {
    /// Registration succeeded.
    Registered(Registered),
    /// Start a run.
    Launch {
        /// The run.
        run: RunId,
        /// Its container and limits.
        spec: RunSpec,
    },
    /// Stop a run: SIGTERM, `grace_ms`, SIGKILL.
    Stop {
        /// The run.
        run: RunId,
        /// SIGTERM-to-SIGKILL grace in milliseconds.
        grace_ms: u64,
        /// Why, to echo in the `stopped` report.
        reason: StopReason,
    },
    /// Send the tail of a run's output.
    Logs {
        /// Echoed in every chunk of the answer.
        request_id: u64,
        /// The run.
        run: RunId,
        /// Lines from the end; 0 means all the executor kept.
        tail_lines: u32,
    },
    /// A logs request naming no valid run: answered with an error chunk.
    BadLogsRequest {
        /// Echoed in the answer.
        request_id: u64,
        /// What is wrong.
        error: WireError,
    },
    /// A message of this executor was refused; nothing was applied.
    Refused {
        /// The run it was about, if any.
        run: Option<RunId>,
        /// Why.
        code: RefusalCode,
        /// The server's sentence.
        message: String,
    },
}

/// A run id from the wire; attempt 0 ("never placed") cannot name a run.
pub fn run_from_wire(run: Option<&pb::RunId>, field: &str) -> Result<RunId, WireError> {
    let run = run.ok_or_else(|| WireError::new(field, "is required"))?;
    RunId::new(run.job_id, run.task_index, run.attempt).map_err(|_| {
        WireError::new(
            format!("{field}.attempt"),
            "must be at least 1 (attempt 0 means never placed)",
        )
    })
}

/// A run id to the wire.
pub fn run_to_wire(run: RunId) -> pb::RunId {
    pb::RunId {
        job_id: run.job,
        task_index: run.task,
        attempt: run.attempt,
    }
}

/// A wire duration in milliseconds (sub-millisecond parts dropped); negative
/// is an error.
fn duration_ms(d: &prost_types::Duration, field: &str) -> Result<u64, WireError> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(WireError::new(field, "must not be negative"));
    }
    Ok((d.seconds as u64)
        .saturating_mul(1000)
        .saturating_add(d.nanos as u64 / 1_000_000))
}

fn timestamp(at: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(at)
}

/// Decodes one message from the server.
pub fn from_server(message: pb::SchedulerMessage) -> Result<FromServer, WireError> {
    let message = message
        .message
        .ok_or_else(|| WireError::new("message", "is empty"))?;
    match message {
        Down::Registered(r) => {
            let interval = r
                .heartbeat_interval
                .as_ref()
                .map(|d| duration_ms(d, "registered.heartbeat_interval"))
                .transpose()?
                .filter(|&ms| ms > 0)
                .map(Duration::from_millis);
            let timeout = r
                .heartbeat_timeout
                .as_ref()
                .map(|d| duration_ms(d, "registered.heartbeat_timeout"))
                .transpose()?
                .filter(|&ms| ms > 0)
                .map(Duration::from_millis);
            let adopted = r
                .adopted
                .iter()
                .enumerate()
                .map(|(idx, run)| run_from_wire(Some(run), &format!("registered.adopted[{idx}]")))
                .collect::<Result<_, _>>()?;
            Ok(FromServer::Registered(Registered {
                host_id: r.host_id,
                heartbeat_interval: interval,
                heartbeat_timeout: timeout,
                adopted,
            }))
        }
        Down::Launch(launch) => {
            let run = run_from_wire(launch.run.as_ref(), "launch.run")?;
            Ok(FromServer::Launch {
                run,
                spec: spec_from_wire(&launch)?,
            })
        }
        Down::Stop(stop) => {
            let run = run_from_wire(stop.run.as_ref(), "stop.run")?;
            let grace_ms = stop
                .grace
                .as_ref()
                .map(|d| duration_ms(d, "stop.grace"))
                .transpose()?
                .unwrap_or(0);
            Ok(FromServer::Stop {
                run,
                grace_ms,
                reason: StopReason::from_wire(stop.reason),
            })
        }
        Down::LogsRequest(req) => match run_from_wire(req.run.as_ref(), "logs_request.run") {
            Ok(run) => Ok(FromServer::Logs {
                request_id: req.request_id,
                run,
                tail_lines: req.tail_lines,
            }),
            Err(error) => Ok(FromServer::BadLogsRequest {
                request_id: req.request_id,
                error,
            }),
        },
        Down::Refused(refused) => Ok(FromServer::Refused {
            // A refusal about a malformed run id names no usable run.
            run: refused
                .run
                .as_ref()
                .and_then(|run| run_from_wire(Some(run), "refused.run").ok()),
            code: RefusalCode::parse(&refused.code),
            message: refused.message,
        }),
    }
}

/// The run spec of a launch: image, argv, environment, the task's request
/// (enforced as limits), capabilities to keep, read-only root, pids limit
/// (0: the executor's default) and the runtime limit. The run manager
/// validates the result (capabilities against the allow-list again) and
/// reports a bad one as a start failure naming the field.
fn spec_from_wire(launch: &pb::LaunchTask) -> Result<RunSpec, WireError> {
    let container = launch.container.clone().unwrap_or_default();
    let limits = launch.limits.clone().unwrap_or_default();
    let runtime_limit_ms = launch
        .runtime_limit
        .as_ref()
        .map(|d| duration_ms(d, "launch.runtime_limit"))
        .transpose()?
        // Zero would kill the run at once; the wire's "no limit" is unset,
        // but a zero is read the same way rather than failing the run.
        .filter(|&ms| ms > 0);
    Ok(RunSpec {
        image: container.image,
        command: container.command,
        env: container.env.into_iter().collect::<BTreeMap<_, _>>(),
        cpu_millis: limits.cpu_millis,
        memory_mib: limits.memory_mib,
        pids_limit: (container.pids_limit > 0).then_some(container.pids_limit),
        capabilities: container.capabilities,
        read_only_rootfs: container.read_only_root_fs,
        runtime_limit_ms,
    })
}

/// The wire kind of a run event; `None` for the kinds the server does not
/// hear about (`Starting`, `Removed`). `reason` is the stop command's reason
/// for this run, if the executor remembers it.
fn kind_to_wire(
    kind: &RunEventKind,
    message: &str,
    reason: Option<StopReason>,
) -> Option<pb::run_event::Kind> {
    use pb::run_event::Kind;
    let exited = |exit_code: i32| {
        Kind::Exited(pb::RunExited {
            exit_code,
            message: message.to_owned(),
        })
    };
    Some(match kind {
        RunEventKind::Starting | RunEventKind::Removed => return None,
        RunEventKind::Running { .. } => Kind::Started(pb::RunStarted {}),
        RunEventKind::Succeeded => exited(0),
        RunEventKind::Failed { exit_code } => exited(exit_code_to_wire(*exit_code)),
        RunEventKind::Oom { .. } => Kind::OomKilled(pb::RunOomKilled {
            message: message.to_owned(),
        }),
        RunEventKind::Stopped {
            cause, sigkilled, ..
        } => {
            let reason = reason.unwrap_or(match cause {
                StopCause::Preempt => StopReason::Preempt,
                StopCause::Cancel => StopReason::Cancel,
            });
            Kind::Stopped(pb::RunStopped {
                reason: reason.to_wire() as i32,
                killed_after_grace: *sigkilled,
            })
        }
        RunEventKind::Killed {
            reason: KillReason::RuntimeLimit,
            exit_code,
            ..
        } => match exit_code_to_wire(*exit_code) {
            0 => exited(EXIT_RUNTIME_LIMIT),
            code => exited(code),
        },
        RunEventKind::StartFailed { reason } => {
            let why = match reason {
                StartFailure::ImageNotAvailable { .. } => "image not available",
                StartFailure::InvalidSpec(_) => "invalid launch",
                StartFailure::Runtime => "the container engine could not start it",
            };
            Kind::Exited(pb::RunExited {
                exit_code: EXIT_START_FAILED,
                message: format!("failed to start: {why}: {message}"),
            })
        }
        RunEventKind::Lost => Kind::Lost(pb::RunLost {
            message: message.to_owned(),
        }),
    })
}

/// Docker's exit codes are `i64`; a process's are 0–255, and anything else
/// (never seen) is clamped rather than wrapped into a misleading code.
fn exit_code_to_wire(code: i64) -> i32 {
    code.clamp(i32::MIN.into(), i32::MAX.into()) as i32
}

/// A run event for the stream; `None` for kinds the server does not hear about.
pub fn run_event_to_wire(event: &RunEvent, reason: Option<StopReason>) -> Option<pb::RunEvent> {
    Some(pb::RunEvent {
        run: Some(run_to_wire(event.run)),
        time: Some(timestamp(event.at)),
        kind: Some(kind_to_wire(&event.kind, &event.message, reason)?),
    })
}

/// A run found by reconciliation, as `register` reports it: a live container
/// (or a launch still starting) as `started`, an exited one with its outcome
/// (the precise one when this process saw the run end, else classified from
/// the container's exit code and OOM flag). A container that never started
/// was removed and is not reported: the server requeues its run as lost.
pub fn observed_to_wire(
    observed: &ObservedRun,
    at: SystemTime,
    reason: Option<StopReason>,
) -> Option<pb::RunEvent> {
    use pb::run_event::Kind;
    let (kind, time) = match (&observed.state, &observed.outcome) {
        (ObservedState::NeverStarted, _) => return None,
        (ObservedState::Starting | ObservedState::Running { .. }, _) => {
            (Kind::Started(pb::RunStarted {}), at)
        }
        (ObservedState::Exited { finished_at, .. }, Some(outcome)) => {
            let message = "reported again at registration";
            (
                kind_to_wire(outcome, message, reason)?,
                finished_at.unwrap_or(at),
            )
        }
        (
            ObservedState::Exited {
                exit_code,
                oom_killed,
                finished_at,
            },
            None,
        ) => {
            let kind = if *oom_killed {
                Kind::OomKilled(pb::RunOomKilled {
                    message: format!(
                        "out of memory: killed by the OOM killer while the executor was away (exit code {exit_code})"
                    ),
                })
            } else {
                Kind::Exited(pb::RunExited {
                    exit_code: exit_code_to_wire(*exit_code),
                    message: format!("exited with code {exit_code} while the executor was away"),
                })
            };
            (kind, finished_at.unwrap_or(at))
        }
    };
    Some(pb::RunEvent {
        run: Some(run_to_wire(observed.run)),
        time: Some(timestamp(time)),
        kind: Some(kind),
    })
}

/// Keeps the last `n_lines` lines of `text` (all for 0); true if it cut any.
fn last_lines(text: &str, n_lines: u32) -> (&str, bool) {
    if n_lines == 0 {
        return (text, false);
    }
    // A trailing newline ends the last line; it does not start another.
    let body = text.strip_suffix('\n').unwrap_or(text);
    let mut seen = 0;
    for (idx, byte) in body.bytes().enumerate().rev() {
        if byte == b'\n' {
            seen += 1;
            if seen == n_lines {
                return (&text[idx + 1..], true);
            }
        }
    }
    (text, false)
}

/// The answer to a logs request: one or more chunks, the last with `eof`.
/// `tail_lines` is what the request asked for (0: all the executor kept).
pub fn logs_to_wire(
    reply: &LogsReply,
    tail_lines: u32,
    max_chunk_bytes: usize,
) -> Vec<pb::ExecutorMessage> {
    let chunk = |data: Vec<u8>, truncated: bool, eof: bool, error: String| pb::ExecutorMessage {
        message: Some(Up::Logs(pb::LogsChunk {
            request_id: reply.request_id,
            data,
            truncated,
            eof,
            error,
        })),
    };
    let tail = match &reply.result {
        Ok(tail) => tail,
        Err(err) => return vec![chunk(Vec::new(), false, true, err.to_string())],
    };
    let (text, cut) = last_lines(&tail.text, tail_lines);
    // `truncated` says output the request wanted is missing: cutting to the
    // lines it asked for loses nothing it wanted, while a tail the executor
    // already cut (to its byte or line budget) may be short of them.
    let truncated = tail.truncated && !cut;
    let bytes = text.as_bytes();
    if bytes.is_empty() {
        return vec![chunk(Vec::new(), truncated, true, String::new())];
    }
    let max = max_chunk_bytes.max(1);
    let n_chunks = bytes.len().div_ceil(max);
    bytes
        .chunks(max)
        .enumerate()
        .map(|(idx, part)| chunk(part.to_vec(), truncated, idx + 1 == n_chunks, String::new()))
        .collect()
}

/// A logs answer for a request that named no valid run.
pub fn logs_error_to_wire(request_id: u64, error: &WireError) -> pb::ExecutorMessage {
    pb::ExecutorMessage {
        message: Some(Up::Logs(pb::LogsChunk {
            request_id,
            data: Vec::new(),
            truncated: false,
            eof: true,
            error: error.to_string(),
        })),
    }
}

/// This host as `register` describes it.
pub fn host_spec(host_id: &str, host: &HostConfig, resources: HostResources) -> pb::HostSpec {
    pb::HostSpec {
        host_id: host_id.to_owned(),
        pool: host.pool.clone(),
        instance_type: host.instance_type.clone(),
        zone: host.zone.clone(),
        region: host.region.clone(),
        attributes: host
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        capacity: Some(pb::Resources {
            cpu_millis: resources.cpu_millis,
            memory_mib: resources.memory_mib,
            ..pb::Resources::default()
        }),
        gpu_model: host.gpu_model.clone().unwrap_or_default(),
    }
}

/// The `register` message: the host and every run it reports.
pub fn register(host: pb::HostSpec, runs: Vec<pb::RunEvent>, version: &str) -> pb::ExecutorMessage {
    pb::ExecutorMessage {
        message: Some(Up::Register(pb::Register {
            host: Some(host),
            runs,
            executor_version: version.to_owned(),
        })),
    }
}

/// A run event message.
pub fn run_event_message(event: pb::RunEvent) -> pb::ExecutorMessage {
    pb::ExecutorMessage {
        message: Some(Up::RunEvent(event)),
    }
}

/// A heartbeat.
pub fn heartbeat(now: SystemTime) -> pb::ExecutorMessage {
    pb::ExecutorMessage {
        message: Some(Up::Heartbeat(pb::Heartbeat {
            sent_time: Some(timestamp(now)),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LogsError, SpecError};
    use crate::runtime::LogTail;
    use pb::run_event::Kind;

    fn run() -> RunId {
        RunId::new(3, 17, 2).unwrap()
    }

    fn wire_run() -> pb::RunId {
        pb::RunId {
            job_id: 3,
            task_index: 17,
            attempt: 2,
        }
    }

    fn dur(ms: u64) -> prost_types::Duration {
        prost_types::Duration {
            seconds: (ms / 1000) as i64,
            nanos: ((ms % 1000) * 1_000_000) as i32,
        }
    }

    #[test]
    fn a_zero_pids_limit_takes_the_executors_default() {
        let launch = pb::LaunchTask {
            run: Some(wire_run()),
            container: Some(pb::ContainerSpec {
                image: "ebb-workload:dev".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let decoded = from_server(pb::SchedulerMessage {
            message: Some(Down::Launch(launch)),
        })
        .unwrap();
        let FromServer::Launch { spec, .. } = decoded else {
            panic!("{decoded:?}");
        };
        assert_eq!(
            (
                spec.pids_limit,
                spec.capabilities.len(),
                spec.read_only_rootfs
            ),
            (None, 0, false)
        );
    }

    #[test]
    fn launch_maps_container_limits_and_runtime_limit() {
        let launch = pb::LaunchTask {
            run: Some(wire_run()),
            container: Some(pb::ContainerSpec {
                image: "ebb-workload:dev".into(),
                command: vec!["/workload".into(), "--work-ms".into(), "500".into()],
                env: [("CHUNK".to_owned(), "7".to_owned())].into_iter().collect(),
                capabilities: vec!["NET_BIND_SERVICE".into()],
                read_only_root_fs: true,
                pids_limit: 64,
            }),
            limits: Some(pb::Resources {
                cpu_millis: 500,
                memory_mib: 64,
                ..Default::default()
            }),
            runtime_limit: Some(dur(90_500)),
            ..Default::default()
        };
        let decoded = from_server(pb::SchedulerMessage {
            message: Some(Down::Launch(launch)),
        })
        .unwrap();
        let FromServer::Launch { run: got, spec } = decoded else {
            panic!("{decoded:?}");
        };
        assert_eq!(got, run());
        assert_eq!(
            spec,
            RunSpec {
                image: "ebb-workload:dev".into(),
                command: vec!["/workload".into(), "--work-ms".into(), "500".into()],
                env: BTreeMap::from([("CHUNK".to_owned(), "7".to_owned())]),
                cpu_millis: 500,
                memory_mib: 64,
                pids_limit: Some(64),
                capabilities: vec!["NET_BIND_SERVICE".into()],
                read_only_rootfs: true,
                runtime_limit_ms: Some(90_500),
            }
        );
        assert!(spec.validate().is_ok());
    }

    #[test]
    fn malformed_messages_name_the_field() {
        let cases: Vec<(&str, Down, &str)> = vec![
            (
                "launch without run",
                Down::Launch(pb::LaunchTask::default()),
                "launch.run",
            ),
            (
                "launch of attempt 0",
                Down::Launch(pb::LaunchTask {
                    run: Some(pb::RunId {
                        attempt: 0,
                        ..wire_run()
                    }),
                    ..Default::default()
                }),
                "launch.run.attempt",
            ),
            (
                "negative grace",
                Down::Stop(pb::StopTask {
                    run: Some(wire_run()),
                    grace: Some(prost_types::Duration {
                        seconds: -1,
                        nanos: 0,
                    }),
                    reason: 0,
                }),
                "stop.grace",
            ),
            (
                "adopted attempt 0",
                Down::Registered(pb::Registered {
                    adopted: vec![pb::RunId::default()],
                    ..Default::default()
                }),
                "registered.adopted[0].attempt",
            ),
        ];
        for (name, message, field) in cases {
            let err = from_server(pb::SchedulerMessage {
                message: Some(message),
            })
            .unwrap_err();
            assert_eq!(err.field, field, "{name}: {err}");
        }
        assert_eq!(
            from_server(pb::SchedulerMessage { message: None })
                .unwrap_err()
                .field,
            "message"
        );
    }

    #[test]
    fn stops_keep_their_reason_and_grace() {
        let cases = [
            (
                pb::StopReason::Preempt,
                StopReason::Preempt,
                StopCause::Preempt,
            ),
            (
                pb::StopReason::Restart,
                StopReason::Restart,
                StopCause::Preempt,
            ),
            (
                pb::StopReason::Cancel,
                StopReason::Cancel,
                StopCause::Cancel,
            ),
            (
                pb::StopReason::Unspecified,
                StopReason::Cancel,
                StopCause::Cancel,
            ),
        ];
        for (wire, reason, cause) in cases {
            let decoded = from_server(pb::SchedulerMessage {
                message: Some(Down::Stop(pb::StopTask {
                    run: Some(wire_run()),
                    grace: Some(dur(30_000)),
                    reason: wire as i32,
                })),
            })
            .unwrap();
            assert_eq!(
                decoded,
                FromServer::Stop {
                    run: run(),
                    grace_ms: 30_000,
                    reason
                },
                "{wire:?}"
            );
            assert_eq!(reason.cause(), cause);
        }
    }

    #[test]
    fn registered_refused_and_logs_requests_decode() {
        let registered = from_server(pb::SchedulerMessage {
            message: Some(Down::Registered(pb::Registered {
                host_id: "a".into(),
                heartbeat_interval: Some(dur(5000)),
                heartbeat_timeout: Some(dur(15_000)),
                adopted: vec![wire_run()],
            })),
        })
        .unwrap();
        assert_eq!(
            registered,
            FromServer::Registered(Registered {
                host_id: "a".into(),
                heartbeat_interval: Some(Duration::from_secs(5)),
                heartbeat_timeout: Some(Duration::from_secs(15)),
                adopted: vec![run()],
            })
        );
        let refused = from_server(pb::SchedulerMessage {
            message: Some(Down::Refused(pb::Refused {
                run: Some(wire_run()),
                code: "stale_run".into(),
                message: "not current".into(),
            })),
        })
        .unwrap();
        let FromServer::Refused { run: r, code, .. } = refused else {
            panic!()
        };
        assert_eq!((r, code.disowns_run()), (Some(run()), true));
        for (code, disowns) in [
            ("foreign_run", true),
            ("unknown_task", true),
            ("wrong_state", false),
            ("not_registered", false),
            ("invalid", false),
            ("brand_new", false),
        ] {
            assert_eq!(RefusalCode::parse(code).disowns_run(), disowns, "{code}");
        }
        let bad_logs = from_server(pb::SchedulerMessage {
            message: Some(Down::LogsRequest(pb::LogsRequest {
                request_id: 9,
                run: None,
                tail_lines: 10,
            })),
        })
        .unwrap();
        assert!(
            matches!(bad_logs, FromServer::BadLogsRequest { request_id: 9, .. }),
            "{bad_logs:?}"
        );
    }

    fn event(kind: RunEventKind) -> RunEvent {
        RunEvent {
            run: run(),
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            kind,
            message: "msg".into(),
        }
    }

    #[test]
    fn run_events_map_to_the_wire_kinds() {
        let exited = |code: i32, message: &str| {
            Some(Kind::Exited(pb::RunExited {
                exit_code: code,
                message: message.into(),
            }))
        };
        let stopped = |reason: pb::StopReason, killed: bool| {
            Some(Kind::Stopped(pb::RunStopped {
                reason: reason as i32,
                killed_after_grace: killed,
            }))
        };
        let cases: Vec<(&str, RunEventKind, Option<StopReason>, Option<Kind>)> = vec![
            ("starting is not sent", RunEventKind::Starting, None, None),
            ("removed is not sent", RunEventKind::Removed, None, None),
            (
                "running",
                RunEventKind::Running {
                    container_id: "c".into(),
                },
                None,
                Some(Kind::Started(pb::RunStarted {})),
            ),
            ("succeeded", RunEventKind::Succeeded, None, exited(0, "msg")),
            (
                "failed",
                RunEventKind::Failed { exit_code: 3 },
                None,
                exited(3, "msg"),
            ),
            (
                "oom",
                RunEventKind::Oom { exit_code: 137 },
                None,
                Some(Kind::OomKilled(pb::RunOomKilled {
                    message: "msg".into(),
                })),
            ),
            (
                "preempted, reason from the cause",
                RunEventKind::Stopped {
                    cause: StopCause::Preempt,
                    sigkilled: false,
                    exit_code: Some(0),
                },
                None,
                stopped(pb::StopReason::Preempt, false),
            ),
            (
                "gang restart echoed",
                RunEventKind::Stopped {
                    cause: StopCause::Preempt,
                    sigkilled: true,
                    exit_code: Some(137),
                },
                Some(StopReason::Restart),
                stopped(pb::StopReason::Restart, true),
            ),
            (
                "cancelled",
                RunEventKind::Stopped {
                    cause: StopCause::Cancel,
                    sigkilled: false,
                    exit_code: None,
                },
                None,
                stopped(pb::StopReason::Cancel, false),
            ),
            (
                "runtime limit with a failing code",
                RunEventKind::Killed {
                    reason: KillReason::RuntimeLimit,
                    sigkilled: true,
                    exit_code: 137,
                },
                None,
                exited(137, "msg"),
            ),
            (
                "runtime limit after a clean exit is still a failure",
                RunEventKind::Killed {
                    reason: KillReason::RuntimeLimit,
                    sigkilled: false,
                    exit_code: 0,
                },
                None,
                exited(EXIT_RUNTIME_LIMIT, "msg"),
            ),
            (
                "image not available",
                RunEventKind::StartFailed {
                    reason: StartFailure::ImageNotAvailable { image: "x".into() },
                },
                None,
                exited(
                    EXIT_START_FAILED,
                    "failed to start: image not available: msg",
                ),
            ),
            (
                "invalid spec",
                RunEventKind::StartFailed {
                    reason: StartFailure::InvalidSpec(SpecError {
                        field: "spec.cpu_millis".into(),
                        message: "must be greater than zero".into(),
                    }),
                },
                None,
                exited(EXIT_START_FAILED, "failed to start: invalid launch: msg"),
            ),
            (
                "lost",
                RunEventKind::Lost,
                None,
                Some(Kind::Lost(pb::RunLost {
                    message: "msg".into(),
                })),
            ),
        ];
        for (name, kind, reason, want) in cases {
            let got = run_event_to_wire(&event(kind), reason);
            assert_eq!(got.as_ref().and_then(|e| e.kind.clone()), want, "{name}");
            if let Some(got) = got {
                assert_eq!(got.run, Some(wire_run()), "{name}");
                assert_eq!(got.time.unwrap().seconds, 1_700_000_000, "{name}");
            }
        }
    }

    #[test]
    fn inventory_maps_to_registration_runs() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let finished = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let observed = |state: ObservedState, outcome: Option<RunEventKind>| ObservedRun {
            run: run(),
            container_id: Some("c".into()),
            state,
            outcome,
        };
        let kind = |o: &ObservedRun| observed_to_wire(o, at, None).and_then(|e| e.kind);
        let started = Some(Kind::Started(pb::RunStarted {}));
        assert_eq!(
            kind(&observed(ObservedState::Starting, None)),
            started,
            "a launch in progress is this host's run"
        );
        assert_eq!(
            kind(&observed(
                ObservedState::Running {
                    started_at: Some(finished)
                },
                None
            )),
            started
        );
        assert_eq!(kind(&observed(ObservedState::NeverStarted, None)), None);
        let exited = ObservedState::Exited {
            exit_code: 0,
            oom_killed: false,
            finished_at: Some(finished),
        };
        // Known to this process: the precise outcome (a preemption stays one).
        let preempted = observed(
            exited.clone(),
            Some(RunEventKind::Stopped {
                cause: StopCause::Preempt,
                sigkilled: false,
                exit_code: Some(0),
            }),
        );
        let got = observed_to_wire(&preempted, at, None).unwrap();
        assert!(matches!(got.kind, Some(Kind::Stopped(_))), "{got:?}");
        assert_eq!(got.time.unwrap().seconds, 1_700_000_000, "its exit time");
        // After a restart only the exit code is known.
        assert!(matches!(
            kind(&observed(exited, None)),
            Some(Kind::Exited(pb::RunExited { exit_code: 0, .. }))
        ));
        let oom = ObservedState::Exited {
            exit_code: 137,
            oom_killed: true,
            finished_at: None,
        };
        assert!(matches!(
            kind(&observed(oom, None)),
            Some(Kind::OomKilled(_))
        ));
    }

    fn reply(text: &str, truncated: bool) -> LogsReply {
        LogsReply {
            request_id: 4,
            run: run(),
            result: Ok(LogTail {
                text: text.into(),
                truncated,
            }),
        }
    }

    fn chunks(messages: Vec<pb::ExecutorMessage>) -> Vec<pb::LogsChunk> {
        messages
            .into_iter()
            .map(|m| match m.message {
                Some(Up::Logs(chunk)) => chunk,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn logs_are_cut_to_the_asked_lines_and_chunked() {
        let text = "a\nb\nc\nd\n";
        let one = chunks(logs_to_wire(&reply(text, false), 2, 1024));
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].data, b"c\nd\n");
        assert!(!one[0].truncated && one[0].eof && one[0].request_id == 4);
        let cut_by_both = chunks(logs_to_wire(&reply(text, true), 2, 1024));
        assert!(
            !cut_by_both[0].truncated,
            "the two asked lines are all there"
        );
        let all = chunks(logs_to_wire(&reply(text, false), 0, 1024));
        assert_eq!(
            (all[0].data.as_slice(), all[0].truncated),
            (text.as_bytes(), false)
        );
        let more_than_kept = chunks(logs_to_wire(&reply(text, true), 10, 1024));
        assert_eq!(more_than_kept[0].data, text.as_bytes());
        assert!(
            more_than_kept[0].truncated,
            "the executor's own cut is kept"
        );
        let split = chunks(logs_to_wire(&reply(text, false), 0, 3));
        assert_eq!(split.len(), 3);
        assert_eq!(
            split
                .iter()
                .flat_map(|c| c.data.clone())
                .collect::<Vec<_>>(),
            text.as_bytes()
        );
        assert_eq!(
            split.iter().map(|c| c.eof).collect::<Vec<_>>(),
            [false, false, true]
        );
        let empty = chunks(logs_to_wire(&reply("", false), 5, 3));
        assert_eq!(empty.len(), 1);
        assert!(empty[0].eof && empty[0].data.is_empty());
        let failed = chunks(logs_to_wire(
            &LogsReply {
                request_id: 4,
                run: run(),
                result: Err(LogsError::UnknownRun { run: run() }),
            },
            5,
            3,
        ));
        assert_eq!(failed.len(), 1);
        assert!(failed[0].eof && failed[0].error.contains("does not know"));
    }

    #[test]
    fn last_lines_handles_missing_trailing_newline() {
        assert_eq!(last_lines("a\nb\nc", 1), ("c", true));
        assert_eq!(last_lines("a\nb\nc", 3), ("a\nb\nc", false));
        assert_eq!(last_lines("one line\n", 1), ("one line\n", false));
    }

    #[test]
    fn host_spec_carries_the_offered_slice() {
        let host = HostConfig {
            pool: "east".into(),
            instance_type: "m5.16xlarge".into(),
            zone: "local-a".into(),
            region: "local".into(),
            attributes: BTreeMap::from([("rack".to_owned(), "r1".to_owned())]),
            gpu_model: None,
        };
        let spec = host_spec(
            "exec-a",
            &host,
            HostResources {
                cpu_millis: 1500,
                memory_mib: 2048,
            },
        );
        assert_eq!(spec.host_id, "exec-a");
        assert_eq!(spec.pool, "east");
        assert_eq!(spec.attributes.get("rack").map(String::as_str), Some("r1"));
        let capacity = spec.capacity.unwrap();
        assert_eq!((capacity.cpu_millis, capacity.memory_mib), (1500, 2048));
        assert!(spec.gpu_model.is_empty());
    }
}
