//! Newtype identifiers. High-cardinality ids (jobs, tasks) are integers that
//! the shell allocates; low-cardinality names (hosts, pools, teams) are shared
//! strings that are cheap to clone.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A job: an array of identical tasks submitted together. Allocated by the shell.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub u64);

/// One task of a job: the job id and the task's index inside the job.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskId {
    /// The job this task belongs to.
    pub job: JobId,
    /// The task's index in `0..n_tasks`.
    pub index: u32,
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Wraps a name.
            pub fn new(name: impl Into<Arc<str>>) -> Self {
                $name(name.into())
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.into())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(s.into())
            }
        }
    };
}

name_id!(
    /// An executor host, e.g. its EC2 instance id.
    HostId
);
name_id!(
    /// A pool of reserved capacity the market accounts for (region/zone or family).
    PoolId
);
name_id!(
    /// A team: the unit of fair share, caps, guarantees and chargeback.
    TeamId
);

impl TaskId {
    /// Task `index` of `job`.
    pub const fn new(job: JobId, index: u32) -> Self {
        TaskId { job, index }
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job-{}", self.0)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job-{}/{}", self.job.0, self.index)
    }
}
