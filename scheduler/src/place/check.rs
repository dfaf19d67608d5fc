//! Feasibility checkers: "can this job's next task run on this host?".
//! Each returns the reason it rejects a host. They are pure predicates over
//! the state, so preemption's what-if checks reuse them.

use std::fmt::Debug;

use crate::host::HostState;
use crate::job::Constraint;
use crate::place::index::HostIdx;
use crate::place::reason::Reason;
use crate::state::{Host, Job, State};

/// One feasibility stage of the placement pipeline.
pub(crate) trait FeasibilityChecker: Debug + Send + Sync {
    /// `Ok` if a task of `job` may run on `host`, otherwise the reason it may not.
    fn check(&self, state: &State, job: &Job, host_idx: HostIdx, host: &Host)
    -> Result<(), Reason>;
    /// True for checks about room (resources, market supply) that preemption
    /// can change, as opposed to placement constraints it cannot.
    fn is_capacity_check(&self) -> bool {
        false
    }
}

/// The host accepts new work (it is not draining or lost).
#[derive(Debug)]
pub(crate) struct HostStateChecker;

impl FeasibilityChecker for HostStateChecker {
    fn check(&self, _: &State, _: &Job, _: HostIdx, host: &Host) -> Result<(), Reason> {
        if host.state == HostState::Active {
            Ok(())
        } else {
            Err(Reason::HostNotActive)
        }
    }
}

/// The request fits into the host's free capacity in every dimension.
#[derive(Debug)]
pub(crate) struct ResourceFitChecker;

impl FeasibilityChecker for ResourceFitChecker {
    fn is_capacity_check(&self) -> bool {
        true
    }
    fn check(&self, _: &State, job: &Job, _: HostIdx, host: &Host) -> Result<(), Reason> {
        match host
            .allocated
            .shortfall_after_adding(&job.spec.request, &host.spec.capacity)
        {
            None => Ok(()),
            Some(dim) => Err(Reason::Insufficient(dim)),
        }
    }
}

/// Hard `attribute_equals` / `attribute_in` constraints hold.
#[derive(Debug)]
pub(crate) struct AttributeChecker;

impl FeasibilityChecker for AttributeChecker {
    fn check(
        &self,
        state: &State,
        job: &Job,
        host_idx: HostIdx,
        host: &Host,
    ) -> Result<(), Reason> {
        for c in &job.spec.hard_constraints {
            if let Constraint::AttributeEquals { key, .. } | Constraint::AttributeIn { key, .. } = c
                && !satisfies(state, job, host_idx, host, c)
            {
                return Err(Reason::AttributeMismatch(key.as_str().into()));
            }
        }
        Ok(())
    }
}

/// A hard `gpu_model` constraint holds.
#[derive(Debug)]
pub(crate) struct GpuModelChecker;

impl FeasibilityChecker for GpuModelChecker {
    fn check(
        &self,
        state: &State,
        job: &Job,
        host_idx: HostIdx,
        host: &Host,
    ) -> Result<(), Reason> {
        let ok = job
            .spec
            .hard_constraints
            .iter()
            .filter(|c| matches!(c, Constraint::GpuModel(_)))
            .all(|c| satisfies(state, job, host_idx, host, c));
        if ok { Ok(()) } else { Err(Reason::GpuModel) }
    }
}

/// A hard `unique_host` constraint holds: no other task of the job (or group) is on the host.
#[derive(Debug)]
pub(crate) struct UniqueHostChecker;

impl FeasibilityChecker for UniqueHostChecker {
    fn check(
        &self,
        state: &State,
        job: &Job,
        host_idx: HostIdx,
        host: &Host,
    ) -> Result<(), Reason> {
        let ok = job
            .spec
            .hard_constraints
            .iter()
            .filter(|c| matches!(c, Constraint::UniqueHost { .. }))
            .all(|c| satisfies(state, job, host_idx, host, c));
        if ok { Ok(()) } else { Err(Reason::UniqueHost) }
    }
}

/// A hard `zone_balance` constraint holds after placing one more task here.
#[derive(Debug)]
pub(crate) struct ZoneBalanceChecker;

impl FeasibilityChecker for ZoneBalanceChecker {
    fn check(
        &self,
        state: &State,
        job: &Job,
        host_idx: HostIdx,
        host: &Host,
    ) -> Result<(), Reason> {
        let ok = job
            .spec
            .hard_constraints
            .iter()
            .filter(|c| matches!(c, Constraint::ZoneBalance { .. }))
            .all(|c| satisfies(state, job, host_idx, host, c));
        if ok { Ok(()) } else { Err(Reason::ZoneSkew) }
    }
}

/// The pure predicate behind every constraint checker and the soft-constraint
/// scorer: would one more task of `job` on `host` satisfy `c`?
pub(crate) fn satisfies(
    state: &State,
    job: &Job,
    host_idx: HostIdx,
    host: &Host,
    c: &Constraint,
) -> bool {
    match c {
        Constraint::AttributeEquals { key, value } => {
            host.spec.attribute(key) == Some(value.as_str())
        }
        Constraint::AttributeIn { key, values } => host
            .spec
            .attribute(key)
            .is_some_and(|v| values.iter().any(|w| w == v)),
        Constraint::GpuModel(model) => host.spec.gpu_model.as_deref() == Some(model.as_str()),
        Constraint::UniqueHost { group: None } => !job.per_host.contains_key(&host_idx),
        Constraint::UniqueHost { group: Some(g) } => state
            .unique_groups
            .get(g.as_str())
            .is_none_or(|hosts| !hosts.contains_key(&host_idx)),
        Constraint::ZoneBalance { max_skew } => {
            let count = |z: usize| job.per_zone.get(z).copied().unwrap_or(0);
            // Only zones that can take work count toward the minimum, as in
            // Kubernetes' topology spread over eligible domains.
            let min = (0..state.zones.len())
                .filter(|&z| state.zone_active_hosts[z] > 0)
                .map(count)
                .min()
                .unwrap_or(0);
            (count(host.zone as usize) + 1).saturating_sub(min) <= *max_skew
        }
    }
}
