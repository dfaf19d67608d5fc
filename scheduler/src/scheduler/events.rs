//! The event feed: what changed in the core, in order, with a sequence
//! number. The server persists it and serves `watch` streams from it; the
//! simulator turns it off, and then no event is even built.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::policy::preempt::PreemptCause;
use crate::scheduler::{JobPhase, TaskState};
use crate::spec::host::HostState;
use crate::spec::reason::PendingReasons;
use crate::units::ids::{HostId, JobId, PoolId, RunId, TeamId};
use crate::units::ie::Ie;
use crate::units::price::Price;
use crate::units::time::Timestamp;

/// One change, numbered in the order the core made it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the feed: 1, 2, 3, … without gaps while the feed is on.
    pub seq: u64,
    /// The `now` of the input or commit that made the change.
    pub at: Timestamp,
    /// What changed.
    pub kind: EventKind,
}

/// What changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A job was accepted; all its tasks are pending.
    JobAccepted {
        /// The job.
        job: JobId,
        /// Its team.
        team: TeamId,
        /// Its task count.
        n_tasks: u32,
    },
    /// Every task of a job reached a terminal state.
    JobFinished {
        /// The job.
        job: JobId,
        /// How it ended.
        phase: JobPhase,
    },
    /// A finished job was forgotten after its retention.
    JobForgotten {
        /// The job.
        job: JobId,
    },
    /// A committed round left some of a job's ready tasks unplaced (or a
    /// planned placement was refused at commit), and why.
    JobUnplaced {
        /// The job.
        job: JobId,
        /// Ready tasks left unplaced.
        n_tasks: u32,
        /// Why, counted over hosts.
        reasons: Arc<PendingReasons>,
    },
    /// A task changed state. `run` names the run the change belongs to
    /// (attempt 0: a task killed before it was ever placed).
    TaskChanged {
        /// The run.
        run: RunId,
        /// The task's new state (with its host while it holds one).
        state: TaskState,
    },
    /// A preemption started: the victim was sent SIGTERM.
    PreemptionStarted {
        /// The victim's run.
        run: RunId,
        /// Its host.
        host: HostId,
        /// Why.
        cause: PreemptCause,
        /// Part of an emergency reclaim.
        emergency: bool,
        /// Beyond the job's disruption budget.
        over_budget: bool,
    },
    /// A host joined, changed state, or was lost.
    HostChanged {
        /// The host.
        host: HostId,
        /// Its new state.
        state: HostState,
    },
    /// A market input was applied.
    MarketInput {
        /// Which input.
        input: MarketInput,
    },
    /// A round set a pool's clearing price.
    PriceChanged {
        /// The pool.
        pool: PoolId,
        /// The new price per IE-hour.
        price: Price,
    },
    /// What a team holds in a pool changed (the ledger accrues at the old
    /// holding up to this instant, then at the new one).
    HoldingChanged {
        /// The team.
        team: TeamId,
        /// The pool.
        pool: PoolId,
        /// The new holding.
        held: Ie,
    },
}

/// Which market input was applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MarketInput {
    /// A pool was configured or reconfigured.
    PoolConfigured {
        /// The pool.
        pool: PoolId,
    },
    /// A pool's reservations were replaced, or one started or ended.
    Reserved {
        /// The pool.
        pool: PoolId,
        /// Reserved IE now active.
        reserved: Ie,
    },
    /// Streaming demand was reported.
    StreamingDemand {
        /// The pool.
        pool: PoolId,
        /// Demand in IE.
        demand: Ie,
    },
    /// A streaming-demand forecast was reported.
    Forecast {
        /// The pool.
        pool: PoolId,
        /// Its points.
        n_points: u32,
    },
    /// A region failed over, or came back.
    Failover {
        /// The region.
        region: String,
        /// True while failed over.
        active: bool,
    },
}

/// The queue of events not yet polled.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct EventFeed {
    pub(crate) enabled: bool,
    /// The sequence number of the last event emitted.
    pub(crate) last_seq: u64,
    pub(crate) queue: VecDeque<Event>,
}

impl EventFeed {
    /// Appends an event built by `kind` — only if the feed is on.
    #[inline]
    pub(crate) fn emit(&mut self, at: Timestamp, kind: impl FnOnce() -> EventKind) {
        if self.enabled {
            self.last_seq += 1;
            self.queue.push_back(Event {
                seq: self.last_seq,
                at,
                kind: kind(),
            });
        }
    }
}
