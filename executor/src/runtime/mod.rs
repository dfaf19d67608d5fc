//! The container runtime the run manager drives: the `Runtime` trait, what a
//! container is made from (`ContainerConfig`), what the runtime reports back
//! (`ContainerInfo`), run identity and labels, and the capability allow-list.
//!
//! Docker (`docker.rs`, through bollard) is the one real implementation. The
//! trait exists so the run manager's state machine can be unit-tested against
//! an in-memory runtime that lives only in `#[cfg(test)]` code.

pub mod docker;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

pub use docker::DockerRuntime;

/// Label naming the job of a run's container: `job-3`.
pub const LABEL_JOB: &str = "ebb.job";
/// Label naming the task of a run's container: `job-3/17`.
pub const LABEL_TASK: &str = "ebb.task";
/// Label naming the run of a container: `job-3/17#2`.
pub const LABEL_RUN: &str = "ebb.run";
/// Label naming the executor that owns a container.
pub const LABEL_EXECUTOR: &str = "ebb.executor";
/// Label holding the run's runtime limit in milliseconds, so an executor that
/// restarts and adopts the container can still enforce it.
pub const LABEL_RUNTIME_LIMIT_MS: &str = "ebb.runtime-limit-ms";
/// Where the per-run scratch directory appears inside the container.
pub const SCRATCH_MOUNT: &str = "/scratch";

/// One placement of a task: the job, the task's index in the job and the
/// attempt (1 for the first placement, then one more per retry or requeue).
/// Every report about a container names its run, so the server can ignore
/// reports about runs that are no longer current.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunId {
    /// The job id.
    pub job: u64,
    /// The task's index inside its job.
    pub task: u32,
    /// The attempt, counting from 1.
    pub attempt: u32,
}

/// A run id that does not parse, or names attempt 0.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid run id {text:?}: expected `job-<job>/<task>#<attempt>` with attempt ≥ 1")]
pub struct RunIdError {
    /// The text that did not parse.
    pub text: String,
}

impl RunId {
    /// The run id; attempts count from 1.
    pub fn new(job: u64, task: u32, attempt: u32) -> Result<Self, RunIdError> {
        if attempt == 0 {
            return Err(RunIdError {
                text: format!("job-{job}/{task}#0"),
            });
        }
        Ok(Self { job, task, attempt })
    }

    /// The `ebb.job` label value, `job-3`.
    pub fn job_label(&self) -> String {
        format!("job-{}", self.job)
    }

    /// The `ebb.task` label value, `job-3/17`.
    pub fn task_label(&self) -> String {
        format!("job-{}/{}", self.job, self.task)
    }

    /// A name fragment safe in container and directory names, `j3-t17-a2`.
    pub fn slug(&self) -> String {
        format!("j{}-t{}-a{}", self.job, self.task, self.attempt)
    }
}

impl fmt::Display for RunId {
    /// `job-3/17#2`, the `ebb.run` label value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job-{}/{}#{}", self.job, self.task, self.attempt)
    }
}

impl FromStr for RunId {
    type Err = RunIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || RunIdError {
            text: text.to_owned(),
        };
        let rest = text.strip_prefix("job-").ok_or_else(err)?;
        let (job, rest) = rest.split_once('/').ok_or_else(err)?;
        let (task, attempt) = rest.split_once('#').ok_or_else(err)?;
        // `u64::from_str` accepts a leading `+`; a label we wrote never has one.
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !(digits(job) && digits(task) && digits(attempt)) {
            return Err(err());
        }
        let run = RunId::new(
            job.parse().map_err(|_| err())?,
            task.parse().map_err(|_| err())?,
            attempt.parse().map_err(|_| err())?,
        )
        .map_err(|_| err())?;
        Ok(run)
    }
}

/// Linux capabilities a job may ask to keep. Every container starts with
/// `cap_drop: ALL`; a job may add back only these, which batch work
/// (encoders, trainers, their launch wrappers) plausibly needs and which do
/// not let a container reach the host: no `SYS_ADMIN`, `NET_ADMIN`,
/// `SYS_PTRACE`, `SYS_MODULE`, `DAC_READ_SEARCH` or similar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    /// Change file owners (tools that `chown` their outputs).
    Chown,
    /// Bypass file permission checks inside the container's own files.
    DacOverride,
    /// Bypass owner checks on the container's own files.
    Fowner,
    /// Keep set-id bits when modifying files.
    Fsetid,
    /// Signal processes of other users inside the container (process supervisors).
    Kill,
    /// Bind ports below 1024 inside the container's network namespace.
    NetBindService,
    /// Change group id (images that drop to an unprivileged user).
    Setgid,
    /// Change user id (images that drop to an unprivileged user).
    Setuid,
    /// Raise thread priorities (encoders that pin real-time-ish threads).
    SysNice,
}

impl Capability {
    /// Every allowed capability, in the order the error message lists them.
    pub const ALL: [Capability; 9] = [
        Capability::Chown,
        Capability::DacOverride,
        Capability::Fowner,
        Capability::Fsetid,
        Capability::Kill,
        Capability::NetBindService,
        Capability::Setgid,
        Capability::Setuid,
        Capability::SysNice,
    ];

    /// The name Docker and the kernel use, without the `CAP_` prefix.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Chown => "CHOWN",
            Capability::DacOverride => "DAC_OVERRIDE",
            Capability::Fowner => "FOWNER",
            Capability::Fsetid => "FSETID",
            Capability::Kill => "KILL",
            Capability::NetBindService => "NET_BIND_SERVICE",
            Capability::Setgid => "SETGID",
            Capability::Setuid => "SETUID",
            Capability::SysNice => "SYS_NICE",
        }
    }

    /// Parses `NET_BIND_SERVICE`, `CAP_NET_BIND_SERVICE` or lower case;
    /// `None` for a capability outside the allow-list.
    pub fn parse(text: &str) -> Option<Self> {
        let upper = text.trim().to_ascii_uppercase();
        let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
        Capability::ALL.into_iter().find(|cap| cap.name() == bare)
    }

    /// The allow-list as text, for error messages.
    pub fn allowed_list() -> String {
        Capability::ALL.map(Capability::name).join(", ")
    }
}

/// Everything a container is created from. The run manager builds it from a
/// validated launch; the runtime applies it verbatim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerConfig {
    /// The container name, unique per executor and run, so a second create
    /// of the same run fails with `AlreadyExists` instead of running twice.
    pub name: String,
    /// The image reference.
    pub image: String,
    /// The argv; empty keeps the image's default command.
    pub command: Vec<String>,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// Labels (`ebb.job`, `ebb.task`, `ebb.run`, `ebb.executor`, …).
    pub labels: BTreeMap<String, String>,
    /// CPU limit in millicores; Docker gets `nano_cpus = cpu_millis × 10⁶`.
    pub cpu_millis: u64,
    /// Memory hard limit in MiB; memory + swap is the same, so no swap.
    pub memory_mib: u64,
    /// Most processes and threads the container may have at once.
    pub pids_limit: u32,
    /// Capabilities added back after dropping all.
    pub cap_add: Vec<Capability>,
    /// Mount the image's root filesystem read-only.
    pub read_only_rootfs: bool,
    /// Host directory mounted read-write at `/scratch`; the only host mount.
    pub scratch_dir: PathBuf,
    /// Cap on the engine's own log file for this container, in bytes, so a
    /// chatty task cannot fill the host's disk.
    pub log_max_bytes: u64,
}

/// A container's lifecycle state, as the runtime sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerState {
    /// Created but never started.
    Created,
    /// Running (or paused, or restarting: its resources are in use).
    Running,
    /// Exited.
    Exited {
        /// The main process's exit code (137 after SIGKILL).
        exit_code: i64,
        /// The kernel's OOM killer ended it.
        oom_killed: bool,
    },
    /// Being removed, or dead: gone for every purpose but cleanup.
    Gone,
}

/// What the runtime knows about one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    /// The engine's container id.
    pub id: String,
    /// The container name, without Docker's leading `/`.
    pub name: String,
    /// All labels.
    pub labels: BTreeMap<String, String>,
    /// Lifecycle state.
    pub state: ContainerState,
    /// When the main process started, if it ever did.
    pub started_at: Option<SystemTime>,
    /// When it last exited, if it did.
    pub finished_at: Option<SystemTime>,
}

impl ContainerInfo {
    /// The run named by the `ebb.run` label, if it has a valid one.
    pub fn run(&self) -> Option<RunId> {
        self.labels.get(LABEL_RUN)?.parse().ok()
    }
}

/// How a stop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StopOutcome {
    /// The container outlived the grace period after SIGTERM and got SIGKILL.
    pub sigkilled: bool,
}

/// The tail of a container's combined stdout and stderr.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogTail {
    /// The text (invalid UTF-8 replaced), oldest line first.
    pub text: String,
    /// Earlier output was cut off to keep within the configured size.
    pub truncated: bool,
}

impl LogTail {
    /// Keeps at most `max_bytes` of the end of `raw`, cutting at a line start
    /// where one is available so the first line is whole.
    pub fn from_raw(raw: &[u8], max_bytes: usize, mut truncated: bool) -> Self {
        let mut start = 0;
        if raw.len() > max_bytes {
            truncated = true;
            start = raw.len() - max_bytes;
            if let Some(newline) = raw[start..].iter().position(|&b| b == b'\n')
                && start + newline + 1 < raw.len()
            {
                start += newline + 1;
            }
        }
        let mut text = String::from_utf8_lossy(&raw[start..]).into_owned();
        // Replacement characters can make the text longer than the raw bytes.
        while text.len() > max_bytes {
            let mut cut = text.len() - max_bytes;
            while !text.is_char_boundary(cut) {
                cut += 1;
            }
            text.drain(..cut);
        }
        LogTail { text, truncated }
    }
}

/// Errors of a runtime operation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// The container engine could not be reached or answered nonsense.
    #[error("cannot reach the container engine: {message}")]
    Unreachable {
        /// What went wrong.
        message: String,
    },
    /// The image is not present and could not be pulled.
    #[error("image not available: `{image}`: {reason}")]
    ImageNotAvailable {
        /// The image reference.
        image: String,
        /// Why the pull failed (or that it timed out).
        reason: String,
    },
    /// A container of this name exists already.
    #[error("container `{name}` already exists")]
    AlreadyExists {
        /// The container name.
        name: String,
    },
    /// No container by this name or id.
    #[error("no such container `{container}`")]
    NotFound {
        /// The name or id asked for.
        container: String,
    },
    /// The engine refused or failed an operation.
    #[error("container engine: {operation} `{container}` failed: {message}")]
    Engine {
        /// The operation (`create`, `start`, `kill`, …).
        operation: &'static str,
        /// The container (or image) it was about.
        container: String,
        /// The engine's message.
        message: String,
    },
}

/// A container runtime: what the run manager needs from Docker.
///
/// Every method is safe to call concurrently for different containers. All
/// take names or ids, which the engine resolves alike.
pub trait Runtime: Send + Sync + 'static {
    /// Returns once `image` is present, pulling it if it is not; a pull that
    /// fails or does not finish within the runtime's pull timeout is
    /// `ImageNotAvailable`, never a hang.
    fn ensure_image(&self, image: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Creates (does not start) a container; `AlreadyExists` when the name
    /// is taken, which is how a duplicate launch is detected.
    fn create(
        &self,
        config: &ContainerConfig,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;

    /// Starts a created container.
    fn start(&self, container: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// The container's current state.
    fn inspect(
        &self,
        container: &str,
    ) -> impl Future<Output = Result<ContainerInfo, RuntimeError>> + Send;

    /// Returns when the container is not running (at once if it is not).
    fn wait_exit(&self, container: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// SIGTERM, up to `grace` for the container to exit, then SIGKILL; returns
    /// once it has exited. Stopping a container that already exited is fine.
    fn stop(
        &self,
        container: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<StopOutcome, RuntimeError>> + Send;

    /// The last `max_lines` lines of output, cut to at most `max_bytes`.
    fn logs_tail(
        &self,
        container: &str,
        max_lines: u32,
        max_bytes: usize,
    ) -> impl Future<Output = Result<LogTail, RuntimeError>> + Send;

    /// Every container (running or not) labelled `ebb.executor = executor_id`.
    fn list(
        &self,
        executor_id: &str,
    ) -> impl Future<Output = Result<Vec<ContainerInfo>, RuntimeError>> + Send;

    /// Removes a container, killing it if it runs; removing one that is
    /// already gone is fine.
    fn remove(&self, container: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_id_round_trips_through_its_label() {
        let run = RunId::new(3, 17, 2).unwrap();
        assert_eq!(run.to_string(), "job-3/17#2");
        assert_eq!(run.task_label(), "job-3/17");
        assert_eq!(run.job_label(), "job-3");
        assert_eq!("job-3/17#2".parse::<RunId>().unwrap(), run);
    }

    #[test]
    fn run_id_rejects_malformed_text() {
        for text in [
            "",
            "job-3/17",
            "job-3#2",
            "3/17#2",
            "job-3/17#0",
            "job-+3/17#2",
            "job-3/17#2x",
            "job-3/-1#2",
            "job-99999999999999999999/1#1",
        ] {
            assert!(text.parse::<RunId>().is_err(), "{text:?} parsed");
        }
        assert!(RunId::new(1, 0, 0).is_err());
    }

    #[test]
    fn capabilities_parse_with_or_without_prefix_and_reject_the_rest() {
        let cases = [
            ("NET_BIND_SERVICE", Some(Capability::NetBindService)),
            ("cap_net_bind_service", Some(Capability::NetBindService)),
            ("chown", Some(Capability::Chown)),
            ("SYS_ADMIN", None),
            ("NET_ADMIN", None),
            ("ALL", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(Capability::parse(text), want, "{text:?}");
        }
        for cap in Capability::ALL {
            assert_eq!(Capability::parse(cap.name()), Some(cap));
        }
        // The server validates requests against the list in ebb-proto; the
        // executor must enforce exactly the same one.
        assert_eq!(
            Capability::ALL.map(Capability::name),
            ebb_proto::ALLOWED_CAPABILITIES,
            "the executor's allow-list and the server's differ"
        );
    }

    #[test]
    fn log_tail_keeps_the_end_and_whole_lines() {
        let raw = b"line 1\nline 2\nline 3\n";
        assert_eq!(
            LogTail::from_raw(raw, 100, false),
            LogTail {
                text: String::from_utf8_lossy(raw).into(),
                truncated: false
            }
        );
        // 10 bytes from the end is "2\nline 3\n": the partial first line goes.
        let tail = LogTail::from_raw(raw, 10, false);
        assert_eq!(
            tail,
            LogTail {
                text: "line 3\n".into(),
                truncated: true
            }
        );
        // One long line: no line start to cut at, keep the last bytes.
        let tail = LogTail::from_raw(b"abcdefghij", 4, false);
        assert_eq!(
            tail,
            LogTail {
                text: "ghij".into(),
                truncated: true
            }
        );
        // Never more than the limit, even with multi-byte characters.
        let tail = LogTail::from_raw("ééééé".as_bytes(), 5, false);
        assert!(tail.text.len() <= 5 && tail.truncated, "{tail:?}");
    }
}
