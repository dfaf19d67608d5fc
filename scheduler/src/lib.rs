//! The Ebb scheduler core: a sans-IO state machine that places batch and
//! critical containers on executor hosts, runs the internal spot market for
//! idle reserved capacity, and chooses preemption victims.
//!
//! ```text
//!   inputs (handle_*, with `now`)          decisions
//!   hosts, jobs, task events ──┐      ┌──▶ Plan (assignments, unplaced + reasons)
//!                              ▼      │         │ shell persists, then commit()
//!   ┌───────────┐   ┌───────────────────────┐   ▼
//!   │  queue/   │──▶│ place/                │  Action::Launch / Action::Stop
//!   │ tier ▸ DRF│   │ index ▸ checkers ▸    │  (poll_action)
//!   │ ▸ job rank│   │ scorers ▸ best host   │
//!   └───────────┘   └───────────────────────┘
//! ```
//!
//! The core never reads a clock, spawns a thread, touches the network or a
//! file, or draws OS randomness: time and seeds come in as arguments, and
//! `clippy.toml` forbids the rest. The control plane (`ebb-api`) and the
//! simulator (`ebb-sim`) are two thin shells around the same [`Scheduler`].
//!
//! Start at [`Scheduler`]: its doc gives the call order.

#![warn(missing_docs)]

pub mod config;
pub mod error;
pub mod host;
pub mod ids;
pub mod job;
pub mod ledger;
pub mod market;
pub mod place;
pub mod preempt;
pub(crate) mod queue;
pub mod resources;
pub mod round;
pub mod scheduler;
pub(crate) mod state;
pub mod time;

pub use config::{SchedulerConfig, SearchOrder, TeamConfig, TieBreak, TierPolicy};
pub use error::InputError;
pub use host::{HostSpec, HostState};
pub use ids::{HostId, JobId, PoolId, TaskId, TeamId};
pub use job::{BudgetLimit, Constraint, DisruptionBudget, JobSpec, Price, RetryPolicy, Tier};
pub use ledger::{LedgerEntry, PoolTotals};
pub use market::{
    Catalog, HeadroomPolicy, Ie, InstanceType, MarketConfig, PoolSpec, PoolStatus, Reservation,
};
pub use place::reason::{PendingReasons, Reason, ReasonCount};
pub use place::score::ScorerKind;
pub use preempt::{PreemptCause, Preemption, VictimPolicy};
pub use resources::{Dim, Resources};
pub use round::{Assignment, Plan, RoundStats, Unplaced};
pub use scheduler::{Action, CommitReport, JobCounts, Scheduler, TaskState, TaskView, Totals};
pub use state::{Host, StopCause};
pub use time::{DurationMs, Timestamp};
