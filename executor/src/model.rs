//! The run manager's command and report model: plain Rust types that the
//! executor's gRPC stream maps one to one (commands in from the server,
//! reports out to it). No transport type appears here.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::runtime::{Capability, LogTail, RunId};

/// Docker refuses memory limits below 6 MiB (engine 20.10's `linuxMinMemory`).
pub const MIN_MEMORY_MIB: u64 = 6;

/// What a run's container is made from, as the server sends it.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// Image reference (`ebb-workload:dev`).
    pub image: String,
    /// The argv; empty keeps the image's default command.
    #[serde(default)]
    pub command: Vec<String>,
    /// Environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// CPU the placement granted, in millicores (the container's CPU limit).
    pub cpu_millis: u64,
    /// Memory the placement granted, in MiB (the container's hard limit).
    pub memory_mib: u64,
    /// Most processes and threads; `None` takes the executor's default.
    #[serde(default)]
    pub pids_limit: Option<u32>,
    /// Capabilities to keep (from `Capability::ALL`); all others are dropped.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Mount the image read-only (`/scratch` stays writable).
    #[serde(default)]
    pub read_only_rootfs: bool,
    /// The job's runtime limit: the run is stopped and reported killed when
    /// it has run this long. `None` means no limit.
    #[serde(default)]
    pub runtime_limit_ms: Option<u64>,
}

/// A launch spec field that is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid field `{field}`: {message}")]
pub struct SpecError {
    /// The field's path, e.g. `spec.capabilities[1]`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl SpecError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl RunSpec {
    /// Checks every field and resolves the capabilities; the first wrong field
    /// is named in the error.
    pub fn validate(&self) -> Result<Vec<Capability>, SpecError> {
        if self.image.trim().is_empty() {
            return Err(SpecError::new("spec.image", "must not be empty"));
        }
        if self.image.chars().any(char::is_whitespace) {
            return Err(SpecError::new(
                "spec.image",
                format!("must not contain whitespace: {:?}", self.image),
            ));
        }
        if let Some(idx) = self.command.iter().position(|arg| arg.contains('\0')) {
            return Err(SpecError::new(
                format!("spec.command[{idx}]"),
                "must not contain a NUL byte",
            ));
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(SpecError::new(
                    format!("spec.env.{key}"),
                    "variable names must be non-empty and contain no `=` or NUL",
                ));
            }
            if value.contains('\0') {
                return Err(SpecError::new(
                    format!("spec.env.{key}"),
                    "must not contain a NUL byte",
                ));
            }
        }
        if self.cpu_millis == 0 {
            return Err(SpecError::new(
                "spec.cpu_millis",
                "must be greater than zero",
            ));
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(SpecError::new(
                "spec.memory_mib",
                format!(
                    "must be at least {MIN_MEMORY_MIB} (the container engine's minimum), got {}",
                    self.memory_mib
                ),
            ));
        }
        if self.pids_limit == Some(0) {
            return Err(SpecError::new(
                "spec.pids_limit",
                "must be greater than zero",
            ));
        }
        if self.runtime_limit_ms == Some(0) {
            return Err(SpecError::new(
                "spec.runtime_limit_ms",
                "must be greater than zero",
            ));
        }
        let mut caps = Vec::with_capacity(self.capabilities.len());
        for (idx, text) in self.capabilities.iter().enumerate() {
            let cap = Capability::parse(text).ok_or_else(|| {
                SpecError::new(
                    format!("spec.capabilities[{idx}]"),
                    format!(
                        "unknown or disallowed capability {text:?} (allowed: {})",
                        Capability::allowed_list()
                    ),
                )
            })?;
            if !caps.contains(&cap) {
                caps.push(cap);
            }
        }
        Ok(caps)
    }
}

/// Why the server stops a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StopCause {
    /// The market reclaimed the capacity; the task will be requeued.
    Preempt,
    /// The owner killed the job or task (the scheduler's `StopCause::Kill`).
    Cancel,
}

/// A command from the server to the run manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Start a run. A launch for a run the executor already has (in any
    /// phase) starts nothing and is answered with the run's latest event.
    Launch {
        /// The run.
        run: RunId,
        /// What to run and with which limits.
        spec: RunSpec,
    },
    /// SIGTERM, `grace_ms`, then SIGKILL; reported as `Stopped { cause }`.
    /// A stop for a run that already ended is answered with its terminal
    /// event; a second stop while one is in progress changes nothing (the
    /// first grace and cause stand); a stop for an unknown run is answered
    /// with `Lost`.
    Stop {
        /// The run.
        run: RunId,
        /// Time between SIGTERM and SIGKILL, in milliseconds.
        grace_ms: u64,
        /// Preemption or cancel, echoed in the report.
        cause: StopCause,
    },
    /// The server does not know this run (after reconciliation): stop it
    /// (SIGTERM, `grace_ms`, SIGKILL) and remove its container at once,
    /// reported as `Removed`.
    Discard {
        /// The run.
        run: RunId,
        /// Time between SIGTERM and SIGKILL, in milliseconds.
        grace_ms: u64,
    },
    /// Ask for the tail of a run's output; answered by `Report::Logs` with
    /// the same `request_id`.
    FetchLogs {
        /// Chosen by the server to match the answer.
        request_id: u64,
        /// The run.
        run: RunId,
    },
    /// List this executor's containers again and send a `Report::Inventory`
    /// (on every reconnect to the server).
    Reconcile,
}

/// Why the executor itself ended a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KillReason {
    /// The run exceeded its job's runtime limit.
    RuntimeLimit,
}

/// Why a run could not start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartFailure {
    /// The image is absent and could not be pulled ("image not available").
    ImageNotAvailable {
        /// The image reference.
        image: String,
    },
    /// The launch spec is invalid.
    InvalidSpec(SpecError),
    /// The container engine refused to create or start the container.
    Runtime,
}

/// What happened to a run. The terminal kinds (`Succeeded` … `Lost`) are
/// sent once the container has exited, so the run's CPU and memory are free
/// when the server sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunEventKind {
    /// Accepted; pulling the image, creating the container.
    Starting,
    /// The container's process is running.
    Running {
        /// The engine's container id.
        container_id: String,
    },
    /// Exited with code 0 on its own.
    Succeeded,
    /// Exited with a non-zero code on its own.
    Failed {
        /// The exit code.
        exit_code: i64,
    },
    /// The kernel's OOM killer ended it at its memory limit.
    Oom {
        /// The exit code (137: SIGKILL).
        exit_code: i64,
    },
    /// Stopped because the server asked.
    Stopped {
        /// The cause the stop carried.
        cause: StopCause,
        /// It outlived the grace period and got SIGKILL.
        sigkilled: bool,
        /// Its exit code; `None` when it was stopped before it started.
        exit_code: Option<i64>,
    },
    /// Ended by the executor itself.
    Killed {
        /// Why.
        reason: KillReason,
        /// It outlived the grace period after SIGTERM and got SIGKILL.
        sigkilled: bool,
        /// Its exit code.
        exit_code: i64,
    },
    /// It never started.
    StartFailed {
        /// Why.
        reason: StartFailure,
    },
    /// Its container vanished, or the engine lost track of it, or the server
    /// named a run this executor does not have.
    Lost,
    /// Its container (and scratch directory) has been removed: after the
    /// retention period, or at once for a discarded run.
    Removed,
}

impl RunEventKind {
    /// True for the kinds that end a run (all but `Starting`, `Running` and
    /// `Removed`).
    pub fn is_terminal(&self) -> bool {
        !matches!(
            self,
            RunEventKind::Starting | RunEventKind::Running { .. } | RunEventKind::Removed
        )
    }
}

/// One thing that happened to one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunEvent {
    /// The run.
    pub run: RunId,
    /// When the executor observed it (wall clock).
    pub at: SystemTime,
    /// What happened.
    pub kind: RunEventKind,
    /// A human-readable sentence for users ("exited with code 3").
    pub message: String,
}

/// A container's state as found by reconciliation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObservedState {
    /// A launch by this process is pulling, creating or starting it.
    Starting,
    /// Created but never started (the executor died between create and
    /// start). It never ran; the executor has removed it.
    NeverStarted,
    /// Running; the executor has adopted it and will report its end.
    Running {
        /// When its process started (unchanged by the adoption).
        started_at: Option<SystemTime>,
    },
    /// Exited; kept for the retention period so its logs can be read.
    Exited {
        /// Exit code.
        exit_code: i64,
        /// Killed by the OOM killer.
        oom_killed: bool,
        /// When it exited.
        finished_at: Option<SystemTime>,
    },
}

/// One run found on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedRun {
    /// The run, from the container's `ebb.run` label.
    pub run: RunId,
    /// The engine's container id; `None` while a launch is still pulling.
    pub container_id: Option<String>,
    /// Its true state.
    pub state: ObservedState,
    /// The terminal event this executor already reported for it, if this
    /// process did (`None` after a restart, when only the container's exit
    /// code is known).
    pub outcome: Option<RunEventKind>,
}

/// Every run container of this executor, so the server can decide which to
/// keep: sent first when the run manager starts and after `Reconcile`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inventory {
    /// When the listing was taken.
    pub at: SystemTime,
    /// Runs with a container on this host, by run id.
    pub runs: Vec<ObservedRun>,
}

/// Why logs could not be served.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LogsError {
    /// The executor has no record of the run (never here, or forgotten).
    #[error("no logs for run {run}: the executor does not know it")]
    UnknownRun {
        /// The run.
        run: RunId,
    },
    /// The container engine failed to read them.
    #[error("reading logs of run {run} failed: {message}")]
    Runtime {
        /// The run.
        run: RunId,
        /// The engine's error.
        message: String,
    },
}

/// The answer to `Command::FetchLogs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogsReply {
    /// The request's id.
    pub request_id: u64,
    /// The run.
    pub run: RunId,
    /// The tail, or why there is none.
    pub result: Result<LogTail, LogsError>,
}

/// A report from the run manager to the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// Something happened to a run.
    Run(RunEvent),
    /// The runs on this host (reconciliation).
    Inventory(Inventory),
    /// Logs asked for by `FetchLogs`.
    Logs(LogsReply),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RunSpec {
        RunSpec {
            image: "ebb-workload:dev".into(),
            cpu_millis: 500,
            memory_mib: 64,
            ..RunSpec::default()
        }
    }

    #[test]
    fn validation_names_the_wrong_field() {
        let cases: Vec<(&str, RunSpec, &str)> = vec![
            (
                "empty image",
                RunSpec {
                    image: " ".into(),
                    ..spec()
                },
                "spec.image",
            ),
            (
                "no cpu",
                RunSpec {
                    cpu_millis: 0,
                    ..spec()
                },
                "spec.cpu_millis",
            ),
            (
                "tiny memory",
                RunSpec {
                    memory_mib: 5,
                    ..spec()
                },
                "spec.memory_mib",
            ),
            (
                "zero pids",
                RunSpec {
                    pids_limit: Some(0),
                    ..spec()
                },
                "spec.pids_limit",
            ),
            (
                "zero runtime limit",
                RunSpec {
                    runtime_limit_ms: Some(0),
                    ..spec()
                },
                "spec.runtime_limit_ms",
            ),
            (
                "bad env name",
                RunSpec {
                    env: BTreeMap::from([("A=B".into(), "x".into())]),
                    ..spec()
                },
                "spec.env.A=B",
            ),
            (
                "nul in argv",
                RunSpec {
                    command: vec!["/w".into(), "a\0b".into()],
                    ..spec()
                },
                "spec.command[1]",
            ),
            (
                "disallowed capability",
                RunSpec {
                    capabilities: vec!["CHOWN".into(), "SYS_ADMIN".into()],
                    ..spec()
                },
                "spec.capabilities[1]",
            ),
        ];
        for (name, spec, field) in cases {
            let err = spec.validate().expect_err(name);
            assert_eq!(err.field, field, "{name}: {err}");
        }
    }

    #[test]
    fn validation_resolves_capabilities_without_duplicates() {
        let spec = RunSpec {
            capabilities: vec!["chown".into(), "CAP_CHOWN".into(), "KILL".into()],
            ..spec()
        };
        assert_eq!(
            spec.validate().unwrap(),
            vec![Capability::Chown, Capability::Kill]
        );
    }

    #[test]
    fn unknown_spec_keys_are_rejected() {
        let err = serde_json::from_str::<RunSpec>(
            r#"{"image":"x","cpu_millis":1,"memory_mib":64,"privileged":true}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("privileged"), "{err}");
    }
}
