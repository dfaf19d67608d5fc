//! Errors for inputs the core refuses. A refused input leaves the state
//! unchanged. "Could not place" is never an error: it is an outcome of a round
//! (see [`crate::PendingReasons`]).

use crate::units::ids::{HostId, JobId, RunId, TaskId, TeamId};
use crate::units::time::Timestamp;

/// An input the core refused; nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// A field of a spec is invalid; `field` is its path, e.g. `request.cpu_millis`.
    #[error("invalid field `{field}`: {message}")]
    InvalidField {
        /// Dotted path of the offending field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A host with this id is already known.
    #[error("host {0} already exists")]
    DuplicateHost(HostId),
    /// No host with this id is known.
    #[error("unknown host {0}")]
    UnknownHost(HostId),
    /// A job with this id was already submitted.
    #[error("job {0} already exists")]
    DuplicateJob(JobId),
    /// No job with this id is known.
    #[error("unknown job {0}")]
    UnknownJob(JobId),
    /// No task with this id is known.
    #[error("unknown task {0}")]
    UnknownTask(TaskId),
    /// An executor reported on a run that is not the task's current run (a
    /// late or duplicate report, e.g. from a host that was declared lost).
    #[error("run {run} is not current (task {task} is {state}, current run {current})")]
    StaleRun {
        /// The run the report named.
        run: RunId,
        /// Its task.
        task: TaskId,
        /// The task's state.
        state: &'static str,
        /// The task's current run (attempt 0: never placed).
        current: RunId,
    },
    /// The event does not apply to the task's current state.
    #[error("task {task} is {state}; cannot apply `{event}`")]
    WrongTaskState {
        /// The task.
        task: TaskId,
        /// Its current state.
        state: &'static str,
        /// The refused event.
        event: &'static str,
    },
    /// The change would leave a host with more allocated than its capacity.
    #[error("host {host}: new capacity is below what running tasks hold ({dim})")]
    CapacityBelowAllocation {
        /// The host.
        host: HostId,
        /// The dimension that would be over-committed.
        dim: crate::units::resources::Dim,
    },
    /// An input carried a time earlier than one the core already saw.
    #[error("time went backwards: input at {now} after {last}")]
    TimeWentBackwards {
        /// The input's time.
        now: Timestamp,
        /// The latest time the core has seen.
        last: Timestamp,
    },
    /// A job reused a request key of the same team with a different spec.
    #[error("request key `{key}` of team {team} was used for job {existing} with a different spec")]
    RequestKeyConflict {
        /// The team.
        team: TeamId,
        /// The key.
        key: String,
        /// The job that holds the key.
        existing: JobId,
    },
    /// A snapshot does not describe a consistent core.
    #[error("invalid snapshot: {0}")]
    InvalidSnapshot(String),
}

impl InputError {
    /// Shorthand for [`InputError::InvalidField`].
    pub fn field(field: &'static str, message: impl Into<String>) -> Self {
        InputError::InvalidField {
            field,
            message: message.into(),
        }
    }
}
