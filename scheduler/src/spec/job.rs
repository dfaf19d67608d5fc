//! Jobs and tasks as submitted: tier, priority, bid, request, constraints,
//! retry policy, disruption budget. A job is an array of identical tasks.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::units::ids::{JobId, TeamId};
use crate::units::price::Price;
use crate::units::resources::Resources;
use crate::units::time::DurationMs;

/// Scheduling tier. Tiers are strictly ordered: every ready critical task is
/// considered before any flex task.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Streaming-grade work: never limited by market supply, never preempted by flex work.
    Critical,
    /// Batch work on leased idle reservations: preemptible.
    Flex,
}

impl Tier {
    /// All tiers in scheduling order.
    pub const ALL: [Tier; 2] = [Tier::Critical, Tier::Flex];

    /// Position in [`Tier::ALL`].
    pub const fn index(self) -> usize {
        match self {
            Tier::Critical => 0,
            Tier::Flex => 1,
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Critical => "critical",
            Tier::Flex => "flex",
        })
    }
}

/// A placement constraint. Hard constraints filter hosts; soft constraints
/// only raise the score of hosts that satisfy them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Constraint {
    /// Host attribute `key` equals `value` (see [`crate::HostSpec::attribute`]).
    AttributeEquals {
        /// Attribute name.
        key: String,
        /// Required value.
        value: String,
    },
    /// Host attribute `key` is one of `values`.
    AttributeIn {
        /// Attribute name.
        key: String,
        /// Accepted values.
        values: Vec<String>,
    },
    /// At most one task of this job per host; with a `group`, at most one task
    /// of all jobs naming that group per host.
    UniqueHost {
        /// Optional job group shared by several jobs.
        group: Option<String>,
    },
    /// Spread the job's tasks over the fleet's zones so that the task count in
    /// any zone exceeds the least-loaded zone's by at most `max_skew`.
    ZoneBalance {
        /// Largest allowed difference between zone task counts.
        max_skew: u32,
    },
    /// The host's GPUs must be of this model.
    GpuModel(String),
}

impl Constraint {
    /// True if the constraint's outcome on a host depends on which other
    /// tasks of the same job (or group) are placed, so that two jobs with the
    /// same request are not interchangeable.
    pub fn is_job_dependent(&self) -> bool {
        matches!(
            self,
            Constraint::UniqueHost { .. } | Constraint::ZoneBalance { .. }
        )
    }
}

/// How failures are retried. Preemptions and host losses never count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Failures tolerated per task before it is marked failed.
    pub max_retries: u32,
    /// Back-off after the first failure; doubles with each further failure.
    pub initial_backoff: DurationMs,
    /// Upper bound on the back-off.
    pub max_backoff: DurationMs,
}

impl Default for RetryPolicy {
    /// Three retries starting at 10 s, capped at 5 min: enough to ride out a
    /// flaky host without hammering the fleet with a broken image.
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            initial_backoff: DurationMs::from_secs(10),
            max_backoff: DurationMs::from_mins(5),
        }
    }
}

impl RetryPolicy {
    /// The back-off before attempt number `n_failures + 1`, given `n_failures >= 1`.
    pub fn backoff(&self, n_failures: u32) -> DurationMs {
        let doublings = n_failures.saturating_sub(1).min(32);
        let d = self.initial_backoff.saturating_mul(1u64 << doublings);
        d.min(self.max_backoff)
    }
}

/// How many of a job's tasks ordinary reclaim may preempt per window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisruptionBudget {
    /// The limit within one window.
    pub limit: BudgetLimit,
    /// The sliding window's length.
    pub window: DurationMs,
}

/// The limit of a [`DisruptionBudget`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetLimit {
    /// At most this many tasks; zero allows none.
    MaxTasks(u32),
    /// At most this percentage of the job's tasks, rounded up as Kubernetes
    /// rounds a percentage `maxUnavailable`; zero allows none.
    MaxPercent(u32),
}

impl BudgetLimit {
    /// The number of a job's `n_tasks` tasks this limit allows per window.
    pub fn max_tasks(self, n_tasks: u32) -> u32 {
        match self {
            BudgetLimit::MaxTasks(k) => k,
            BudgetLimit::MaxPercent(p) => {
                let allowed = (u64::from(n_tasks) * u64::from(p)).div_ceil(100);
                u32::try_from(allowed).unwrap_or(u32::MAX)
            }
        }
    }
}

/// A job as submitted. All `n_tasks` tasks share the request and constraints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Shell-allocated unique id.
    pub id: JobId,
    /// A client's idempotency key, unique per team: submitting a job with the
    /// key of a job the core still knows returns that job if the specs match
    /// (apart from `id`) and is refused if they differ.
    #[serde(default)]
    pub request_key: Option<String>,
    /// Human-readable name.
    #[serde(default)]
    pub name: String,
    /// The owning team.
    pub team: TeamId,
    /// Tier.
    pub tier: Tier,
    /// Higher runs first within a team (after bid).
    #[serde(default)]
    pub priority: i32,
    /// Optional maximum price per IE-hour.
    #[serde(default)]
    pub bid: Option<Price>,
    /// Per-task resource request.
    pub request: Resources,
    /// Number of tasks.
    pub n_tasks: u32,
    /// Constraints every host must satisfy.
    #[serde(default)]
    pub hard_constraints: Vec<Constraint>,
    /// Constraints that raise a host's score when satisfied.
    #[serde(default)]
    pub soft_constraints: Vec<Constraint>,
    /// All ready tasks must be placed in one round, or none (distributed training).
    #[serde(default)]
    pub gang: bool,
    /// Failure retries.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Limit on preemptions by ordinary reclaim.
    #[serde(default)]
    pub disruption_budget: Option<DisruptionBudget>,
    /// Work since the last checkpoint is lost on preemption; `None` means the
    /// task never checkpoints (all work since start is lost).
    #[serde(default)]
    pub checkpoint_interval: Option<DurationMs>,
    /// How long one task is expected to run, if the submitter knows (encoding
    /// chunks do). The market uses it to keep long work off hosts it expects
    /// to reclaim soon.
    #[serde(default)]
    pub expected_runtime: Option<DurationMs>,
}

impl JobSpec {
    /// True if `other` asks for the same job, ignoring the shell-allocated `id`.
    pub fn same_request_as(&self, other: &JobSpec) -> bool {
        let mut a = self.clone();
        a.id = other.id;
        a == *other
    }
}
