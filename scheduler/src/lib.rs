//! The Ebb scheduler core: a sans-IO state machine that places batch and
//! critical containers on executor hosts, runs the internal spot market for
//! idle reserved capacity, and chooses preemption victims.
//!
//! ```text
//!   inputs (handle_*, with `now`)                     decisions
//!   hosts, jobs, runs, market ──▶ State ──▶ plan_round(&self, now) ──▶ Plan
//!                                  ▲          │ reads State + Overlay     │ shell persists
//!                                  │          ▼                           ▼
//!                                  │   ┌──────────┐  ┌───────────────┐  commit(now, plan)
//!                                  │   │ queue    │─▶│ search:       │    re-validates,
//!                                  │   │ tier▸DRF │  │ index▸checkers│    applies once
//!                                  │   │ ▸job rank│  │ ▸scorers      │       │
//!                                  │   └──────────┘  └───────────────┘       ▼
//!                                  └────────── charge path ◀──────── Launch/Stop (poll_action)
//!                                                                    Events    (poll_event)
//! ```
//!
//! The crate is layered; each layer uses only the ones above it in this list:
//!
//! - [`units`]: ids, time, resources, instance equivalents, prices.
//! - [`spec`]: what shells submit and configure, reasons, errors, the catalog.
//! - `model`: the state — hosts and their index, jobs, teams, queue, pools,
//!   ledger — the one charge path, and the overlay rounds plan against.
//! - `policy`: pure functions over the state: checkers, scorers, the host
//!   search, victim selection, prices, compaction.
//! - [`round`]: the pipeline assembled into one round.
//! - [`scheduler`]: the [`Scheduler`] facade — inputs, commit, queries,
//!   events, snapshots.
//!
//! The core never reads a clock, spawns a thread, touches the network or a
//! file, or draws OS randomness: time and seeds come in as arguments, and
//! `clippy.toml` forbids the rest. The control plane (`ebb-api`) and the
//! simulator (`ebb-sim`) are two thin shells around the same [`Scheduler`].
//!
//! Start at [`Scheduler`]: its doc gives the call contract.

#![warn(missing_docs)]

pub(crate) mod model;
pub(crate) mod policy;
pub mod round;
pub mod scheduler;
pub mod spec;
pub mod units;
pub(crate) mod util;

pub use model::host::Host;
pub use model::job::StopCause;
pub use model::ledger::{IeMs, LedgerEntry, PoolTotals};
pub use policy::compact::{Compaction, Migration};
pub use policy::preempt::{PreemptCause, Preemption};
pub use round::{Assignment, Drain, Plan, RoundStats, Unplaced};
pub use scheduler::events::{Event, EventKind, MarketInput};
pub use scheduler::snapshot::Snapshot;
pub use scheduler::{
    Action, CommitReport, JobCounts, JobFilter, JobPhase, JobView, MAX_TASKS_PER_JOB, Page,
    PreemptRefusal, Scheduler, TaskState, TaskView, Totals,
};
pub use spec::catalog::{Catalog, InstanceType};
pub use spec::config::{
    MAX_GRACE, SchedulerConfig, ScorerKind, SearchOrder, TeamConfig, TieBreak, TierPolicy,
    VictimPolicy,
};
pub use spec::error::InputError;
pub use spec::host::{HostSpec, HostState};
pub use spec::job::{BudgetLimit, Constraint, DisruptionBudget, JobSpec, RetryPolicy, Tier};
pub use spec::market::{HeadroomPolicy, MarketConfig, PoolSpec, PoolStatus, Reservation};
pub use spec::reason::{PendingReasons, Reason, ReasonCount};
pub use units::ids::{HostId, JobId, PoolId, RunId, TaskId, TeamId};
pub use units::ie::Ie;
pub use units::price::{Money, Price};
pub use units::resources::{Dim, ResourceCap, Resources};
pub use units::time::{DurationMs, Timestamp};
