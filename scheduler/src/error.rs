//! Errors for inputs the core refuses. A refused input leaves the state
//! unchanged. "Could not place" is never an error: it is an outcome of a round
//! (see [`crate::PendingReasons`]).

use crate::ids::{HostId, JobId, TaskId};

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
    /// The event does not apply to the task's current state (for example a
    /// late report from an executor about a task that was already requeued).
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
        dim: crate::resources::Dim,
    },
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
