//! Why a task is not placed: reasons counted over hosts, split into those
//! preemption could resolve and those it cannot (Kubernetes' "unschedulable"
//! versus "unschedulable and unresolvable").

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::units::ids::PoolId;
use crate::units::resources::Dim;

/// One reason a host (or the whole task) was rejected.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Reason {
    /// The host lacks free capacity in this dimension.
    Insufficient(Dim),
    /// The host is draining and accepts no new work.
    HostNotActive,
    /// A hard attribute constraint on this key is not met.
    AttributeMismatch(Arc<str>),
    /// The host already runs a task of this job (or job group).
    UniqueHost,
    /// Placing here would exceed the job's zone skew.
    ZoneSkew,
    /// The host has no GPUs of the required model.
    GpuModel,
    /// The pool's market supply cannot cover leasing this host.
    PoolSupply(PoolId),
    /// The pool's region is failed over: it takes no new flex leases.
    RegionEvacuated(PoolId),
    /// The forecast says the pool's supply falls below this lease (or the
    /// host is due back) before the task would finish.
    LeaseEndsSoon(PoolId),
    /// The team reached its cap in this tier (task-level).
    TeamCapReached,
    /// A gang job could not place all of its tasks in one round (task-level).
    GangIncomplete {
        /// Tasks that could have been placed.
        n_placed: u32,
        /// Tasks the gang needs.
        n_needed: u32,
    },
    /// A gang waits for members that are still running, stopping or
    /// backing off: it is placed only with every live member (task-level).
    GangWaiting {
        /// Live members not ready yet.
        n_not_ready: u32,
    },
    /// There are no hosts at all (task-level).
    NoHosts,
    /// The host the round chose was lost or removed before the plan was
    /// committed; the task waits for the next round.
    HostGone,
}

impl Reason {
    /// True if preempting lower-ranked work could remove this obstacle.
    /// Capacity and supply shortfalls can be; constraints, host state and caps
    /// cannot. An incomplete gang is resolvable only through the reasons of
    /// the member that did not fit, which are listed beside it.
    pub fn resolvable_by_preemption(&self) -> bool {
        matches!(self, Reason::Insufficient(_) | Reason::PoolSupply(_))
    }

    /// True for reasons about the task as a whole rather than about a host.
    pub fn is_task_level(&self) -> bool {
        matches!(
            self,
            Reason::TeamCapReached
                | Reason::GangIncomplete { .. }
                | Reason::GangWaiting { .. }
                | Reason::NoHosts
        )
    }

    /// A stable snake_case code for the reason's kind, for wire APIs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::Insufficient(_) => "insufficient_resources",
            Reason::HostNotActive => "host_not_active",
            Reason::AttributeMismatch(_) => "attribute_mismatch",
            Reason::UniqueHost => "unique_host",
            Reason::ZoneSkew => "zone_skew",
            Reason::GpuModel => "gpu_model",
            Reason::PoolSupply(_) => "pool_supply",
            Reason::RegionEvacuated(_) => "region_evacuated",
            Reason::LeaseEndsSoon(_) => "lease_ends_soon",
            Reason::TeamCapReached => "team_cap_reached",
            Reason::GangIncomplete { .. } => "gang_incomplete",
            Reason::GangWaiting { .. } => "gang_waiting",
            Reason::NoHosts => "no_hosts",
            Reason::HostGone => "host_gone",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Insufficient(dim) => write!(f, "insufficient {dim}"),
            Reason::HostNotActive => f.write_str("host not active"),
            Reason::AttributeMismatch(key) => write!(f, "attribute `{key}` constraint"),
            Reason::UniqueHost => f.write_str("unique-host constraint"),
            Reason::ZoneSkew => f.write_str("zone-balance constraint"),
            Reason::GpuModel => f.write_str("gpu model constraint"),
            Reason::PoolSupply(pool) => write!(f, "pool {pool} supply exhausted"),
            Reason::RegionEvacuated(pool) => {
                write!(f, "pool {pool} is in a failed-over region")
            }
            Reason::LeaseEndsSoon(pool) => {
                write!(
                    f,
                    "pool {pool} capacity is due back before the task would end"
                )
            }
            Reason::TeamCapReached => f.write_str("team cap reached"),
            Reason::GangIncomplete { n_placed, n_needed } => {
                write!(f, "gang needs {n_needed} tasks, only {n_placed} fit")
            }
            Reason::GangWaiting { n_not_ready } => {
                let s = if *n_not_ready == 1 { "" } else { "s" };
                write!(f, "gang waits for {n_not_ready} member{s} still busy")
            }
            Reason::NoHosts => f.write_str("no hosts"),
            Reason::HostGone => f.write_str("planned host gone before commit"),
        }
    }
}

/// A reason and how many hosts gave it (zero for task-level reasons).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReasonCount {
    /// The reason.
    pub reason: Reason,
    /// Hosts that rejected the task for it.
    pub n_hosts: u32,
}

/// Why a job's ready tasks were not placed in a round. Shared (behind an
/// `Arc`) by all tasks of the job, so storing it costs nothing per task.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingReasons {
    /// Reasons, most frequent first; ties in reason order.
    pub counts: Vec<ReasonCount>,
}

impl PendingReasons {
    /// A single task-level reason.
    pub fn task_level(reason: Reason) -> Self {
        PendingReasons {
            counts: vec![ReasonCount { reason, n_hosts: 0 }],
        }
    }

    /// Builds the list from raw (reason, count) pairs, merging duplicates and sorting.
    pub fn from_counts(mut raw: Vec<(Reason, u32)>) -> Self {
        raw.sort_by(|a, b| a.0.cmp(&b.0));
        let mut counts: Vec<ReasonCount> = Vec::with_capacity(raw.len());
        for (reason, n) in raw {
            match counts.last_mut() {
                Some(last) if last.reason == reason => last.n_hosts += n,
                _ => counts.push(ReasonCount { reason, n_hosts: n }),
            }
        }
        counts.sort_by(|a, b| {
            b.n_hosts
                .cmp(&a.n_hosts)
                .then_with(|| a.reason.cmp(&b.reason))
        });
        PendingReasons { counts }
    }

    /// True if no reason was recorded (never the case for an unplaced task).
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// True if any reason could be removed by preemption.
    pub fn resolvable_by_preemption(&self) -> bool {
        self.counts
            .iter()
            .any(|c| c.reason.resolvable_by_preemption())
    }

    /// Reasons preemption could resolve.
    pub fn resolvable(&self) -> impl Iterator<Item = &ReasonCount> {
        self.counts
            .iter()
            .filter(|c| c.reason.resolvable_by_preemption())
    }

    /// Reasons preemption cannot resolve.
    pub fn unresolvable(&self) -> impl Iterator<Item = &ReasonCount> {
        self.counts
            .iter()
            .filter(|c| !c.reason.resolvable_by_preemption())
    }
}

impl fmt::Display for PendingReasons {
    /// e.g. `insufficient cpu on 812 hosts, unique-host constraint on 3 hosts`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.counts.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            if c.reason.is_task_level() {
                write!(f, "{}", c.reason)?;
            } else {
                let s = if c.n_hosts == 1 { "" } else { "s" };
                write!(f, "{} on {} host{s}", c.reason, c.n_hosts)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_merge_sort_and_render() {
        let r = PendingReasons::from_counts(vec![
            (Reason::UniqueHost, 3),
            (Reason::Insufficient(Dim::Cpu), 800),
            (Reason::Insufficient(Dim::Cpu), 12),
        ]);
        assert_eq!(
            r.to_string(),
            "insufficient cpu on 812 hosts, unique-host constraint on 3 hosts"
        );
        assert!(r.resolvable_by_preemption());
        assert_eq!(r.unresolvable().count(), 1);
        // An incomplete gang is resolvable only through its blocking
        // member's reasons: a unique-host block is not, a cpu shortfall is.
        let gang = Reason::GangIncomplete {
            n_placed: 1,
            n_needed: 2,
        };
        let blocked = PendingReasons::from_counts(vec![(gang.clone(), 0), (Reason::UniqueHost, 4)]);
        assert!(!blocked.resolvable_by_preemption());
        let short =
            PendingReasons::from_counts(vec![(gang, 0), (Reason::Insufficient(Dim::Cpu), 4)]);
        assert!(short.resolvable_by_preemption());
        let cap = PendingReasons::task_level(Reason::TeamCapReached);
        assert_eq!(cap.to_string(), "team cap reached");
        assert!(!cap.resolvable_by_preemption());
    }
}
