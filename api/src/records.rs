//! What the server makes durable, as plain serde types encoded with
//! postcard: log records (every accepted input and every round, in the
//! order they were applied to the core), the per-job side data the core does
//! not know (container, labels, limits), the server's own state, and the
//! snapshot file that holds a core snapshot plus that state.
//!
//! Replaying the records after a snapshot through [`crate::driver::apply`]
//! rebuilds exactly the core that wrote them: inputs carry their `now`, and
//! a round record carries the tick time, the plan as it was persisted and
//! the commit time.

use std::collections::BTreeMap;

use ebb_scheduler as core;
use serde::{Deserialize, Serialize};

/// The format version of records and snapshot files; a store written by
/// another version is refused at startup rather than misread.
pub const FORMAT_VERSION: u32 = 1;

/// One durable input, in the order it was applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// `handle_job_submitted`; the job's side data is stored beside it.
    JobSubmitted { now: u64, spec: core::JobSpec },
    /// `handle_job_killed`, with the grace the canceller asked for.
    JobKilled {
        now: u64,
        job: core::JobId,
        grace_ms: Option<u64>,
    },
    /// `handle_host_added`.
    HostAdded { now: u64, spec: core::HostSpec },
    /// `handle_host_updated`.
    HostUpdated { now: u64, spec: core::HostSpec },
    /// `handle_host_activated`.
    HostActivated { now: u64, host: core::HostId },
    /// `handle_host_lost`.
    HostLost { now: u64, host: core::HostId },
    /// An executor report.
    Run {
        now: u64,
        run: core::RunId,
        event: RunReport,
    },
    /// `handle_pool_configured`.
    PoolConfigured { now: u64, spec: core::PoolSpec },
    /// `handle_reservations`.
    Reservations {
        now: u64,
        pool: core::PoolId,
        reservations: Vec<core::Reservation>,
    },
    /// `handle_streaming_demand`.
    StreamingDemand {
        now: u64,
        pool: core::PoolId,
        demand_micro_ie: u64,
    },
    /// `handle_failover`.
    Failover {
        now: u64,
        region: String,
        active: bool,
    },
    /// `handle_demand_forecast` (the server also keeps the points for `GetDemandForecast`).
    Forecast {
        now: u64,
        pool: core::PoolId,
        points: Vec<(u64, u64)>,
    },
    /// `handle_forget_finished`.
    ForgetFinished { now: u64, before: u64 },
    /// A round: `handle_tick(tick)`, then `commit(commit, plan)` with the
    /// plan decoded from `plan` (postcard bytes of [`core::Plan`]), exactly
    /// as the live server committed it.
    Round {
        tick: u64,
        commit: u64,
        plan: Vec<u8>,
    },
    /// `handle_instance_types`: types the catalog lacked, as a reservation
    /// source (EC2's DescribeInstanceTypes) described them. Appended last so
    /// logs written before it still decode.
    InstanceTypes {
        now: u64,
        types: Vec<core::InstanceType>,
    },
}

/// An executor's report on a run, as applied to the core.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunReport {
    /// `handle_task_started`.
    Started,
    /// `handle_task_finished`.
    Finished,
    /// `handle_task_failed` (non-zero exit, OOM).
    Failed,
    /// `handle_task_stopped`.
    Stopped,
    /// `handle_task_lost`.
    Lost,
}

/// What the core does not know about a job: what to run and how to label it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobExtras {
    /// The owning team (kept here so events about a forgotten job can still be routed).
    pub team: String,
    /// The client's idempotency key, if any.
    pub request_id: String,
    /// Image, command, environment.
    pub container: Container,
    /// Labels, passed to containers.
    pub labels: BTreeMap<String, String>,
    /// Runtime limit the executor enforces.
    pub runtime_limit_ms: Option<u64>,
    /// Set when the job was cancelled with an explicit grace.
    pub cancel_grace_ms: Option<u64>,
    /// Wall-clock creation time (ms since the Unix epoch).
    pub created_ms: u64,
}

/// A container spec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// Docker image reference.
    pub image: String,
    /// Argument vector.
    pub command: Vec<String>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Capabilities to keep, normalized (`NET_BIND_SERVICE`).
    pub capabilities: Vec<String>,
    /// Mount the image read-only.
    pub read_only_root_fs: bool,
    /// Process limit; 0 takes the executor's default.
    pub pids_limit: u32,
}

/// The server's own durable state besides the core and the job side data.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerState {
    /// The next job id to allocate.
    pub next_job_id: u64,
    /// Pool specs as last configured (to reconfigure only what changed).
    pub pool_specs: BTreeMap<core::PoolId, core::PoolSpec>,
    /// Reservations per pool as last set (the core does not report them back).
    pub reservations: BTreeMap<core::PoolId, Vec<core::Reservation>>,
    /// Latest demand forecast per pool: (report time, points of (time ms, micro-IE)).
    pub forecasts: BTreeMap<core::PoolId, (u64, Vec<(u64, u64)>)>,
}

/// A snapshot file: the core and the server state as of a log position.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotFile {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// The core.
    pub core: core::Snapshot,
    /// The server state.
    pub server: ServerState,
}

/// A ledger sample: cumulative accounts at an instant, so ranges can be
/// answered by difference (the core's ledger is cumulative since start).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LedgerSample {
    /// Team × pool accounts.
    pub entries: Vec<core::LedgerEntry>,
    /// Pool totals.
    pub pools: Vec<core::PoolTotals>,
    /// Each pool's clearing price at the instant, micro-units per IE-hour.
    /// Appended last: samples written before it decode through
    /// [`LedgerSample::decode`] with no prices.
    pub prices: Vec<(core::PoolId, u64)>,
}

impl LedgerSample {
    /// Decodes a stored sample, including one written before `prices`
    /// existed (postcard is not self-describing, so such bytes end early
    /// and are read as the older shape).
    pub fn decode(bytes: &[u8]) -> Result<LedgerSample, postcard::Error> {
        #[derive(Deserialize)]
        struct Legacy {
            entries: Vec<core::LedgerEntry>,
            pools: Vec<core::PoolTotals>,
        }
        decode(bytes).or_else(|e| match decode::<Legacy>(bytes) {
            Ok(l) => Ok(LedgerSample {
                entries: l.entries,
                pools: l.pools,
                prices: Vec::new(),
            }),
            Err(_) => Err(e),
        })
    }
}

/// Encodes a durable value.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("in-memory serialization cannot fail")
}

/// Decodes a durable value.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_written_before_prices_existed_still_decodes() {
        #[derive(Serialize)]
        struct Old {
            entries: Vec<core::LedgerEntry>,
            pools: Vec<core::PoolTotals>,
        }
        let pools = vec![core::PoolTotals {
            pool: "p".into(),
            reserved: core::IeMs(7),
            streaming: core::IeMs(1),
            headroom: core::IeMs(2),
            leased: core::IeMs(3),
            idle: core::IeMs(1),
            supply: core::IeMs(4),
            violation: core::IeMs(0),
        }];
        let old = encode(&Old {
            entries: vec![],
            pools: pools.clone(),
        });
        let s = LedgerSample::decode(&old).unwrap();
        assert_eq!((s.pools, s.prices), (pools.clone(), vec![]));
        let new = LedgerSample {
            entries: vec![],
            pools,
            prices: vec![("p".into(), 5)],
        };
        assert_eq!(LedgerSample::decode(&encode(&new)).unwrap(), new);
    }
}
