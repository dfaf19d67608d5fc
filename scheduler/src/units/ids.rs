//! Newtype identifiers. High-cardinality ids (jobs, tasks, runs) are integers
//! that the shell allocates or the core counts; low-cardinality names (hosts,
//! pools, teams) are shared strings that are cheap to clone. The `*Idx` types
//! are the core's own dense table positions and never leave the crate.

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

    /// Run number `attempt` of this task.
    pub const fn run(self, attempt: u32) -> RunId {
        RunId {
            task: self,
            attempt,
        }
    }
}

/// One placement of a task: the task and its attempt number, counted from 1.
///
/// Every `Launch` and `Stop` action names the run, and every executor report
/// must name it back; a report for a run that is not the task's current run
/// is refused (fencing against late and duplicate reports).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RunId {
    /// The task.
    pub task: TaskId,
    /// Which placement of the task this is: 1 for the first.
    pub attempt: u32,
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.task, self.attempt)
    }
}

macro_rules! table_idx {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub(crate) struct $name(pub(crate) u32);

        impl $name {
            /// The position as a `usize`, for indexing the table.
            #[inline]
            pub(crate) const fn get(self) -> usize {
                self.0 as usize
            }

            /// The position `i` of a table that never holds more than `u32::MAX` rows.
            #[inline]
            pub(crate) fn from_usize(i: usize) -> Self {
                $name(u32::try_from(i).expect("table index fits in u32"))
            }
        }
    };
}

table_idx!(
    /// A slot in the core's host table. Slots of lost hosts are reused.
    HostIdx
);
table_idx!(
    /// A position in the market's pool table (pools are never removed).
    PoolIdx
);
table_idx!(
    /// A position in the team table (teams are never removed).
    TeamIdx
);
table_idx!(
    /// A position in the zone table (zones are never removed).
    ZoneIdx
);

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
