//! Test-only builders for the placement stages: a [`State`] with hosts and
//! jobs, without going through the [`crate::Scheduler`] inputs, so that the
//! table tests of checkers and scorers can set up exactly the host they need.
//!
//! Everything that knows how `State`, `Host` and `Job` are laid out lives
//! here, so a new field there is one fix, not one per test.

use std::collections::BTreeSet;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::config::SchedulerConfig;
use crate::host::{HostSpec, HostState};
use crate::ids::{HostId, JobId, PoolId, TeamId};
use crate::job::{Constraint, JobSpec, Tier};
use crate::market::Ie;
use crate::place::index::HostIdx;
use crate::resources::Resources;
use crate::state::{Host, Job, State, placement_tracking};
use crate::time::Timestamp;

/// A host spec with `cpus` vCPUs and `mem_gib` GiB in `zone`.
pub(crate) fn host_spec(id: &str, zone: &str, cpus: u64, mem_gib: u64) -> HostSpec {
    HostSpec {
        id: HostId::from(id),
        pool: PoolId::from("pool-a"),
        instance_type: "m5.2xlarge".into(),
        zone: zone.into(),
        region: "us-east-1".into(),
        attributes: Default::default(),
        capacity: Resources::cpu_mem(cpus * 1000, mem_gib * 1024),
        gpu_model: None,
    }
}

/// A flex job spec of one task with this request and hard constraints.
pub(crate) fn job_spec(id: u64, request: Resources, hard: Vec<Constraint>) -> JobSpec {
    JobSpec {
        id: JobId(id),
        name: format!("job-{id}"),
        team: TeamId::from("team"),
        tier: Tier::Flex,
        priority: 0,
        bid: None,
        request,
        n_tasks: 1,
        hard_constraints: hard,
        soft_constraints: vec![],
        gang: false,
        retry: Default::default(),
        disruption_budget: None,
        checkpoint_interval: None,
    }
}

/// A [`State`] built host by host and job by job.
pub(crate) struct Fleet {
    pub(crate) state: State,
}

impl Fleet {
    pub(crate) fn new() -> Self {
        Fleet {
            state: State::new(SchedulerConfig::default()).expect("default config is valid"),
        }
    }

    /// Adds an active host, mirroring `Scheduler::handle_host_added`.
    pub(crate) fn host(&mut self, spec: HostSpec) -> HostIdx {
        self.host_in_state(spec, HostState::Active)
    }

    /// Adds a host in the given state (only active hosts are indexed).
    pub(crate) fn host_in_state(&mut self, spec: HostSpec, state: HostState) -> HostIdx {
        let s = &mut self.state;
        let host_idx = s.hosts.len() as HostIdx;
        let rank = s.next_rank();
        let zone = s.zone_idx(&spec.zone);
        let pool = s.market.pool_idx(&spec.pool);
        let p = &mut s.market.pools[pool as usize];
        p.hosts.insert(host_idx);
        p.n_hosts += 1;
        s.host_by_id.insert(spec.id.clone(), host_idx);
        let capacity = spec.capacity.clone();
        let host = Host {
            spec,
            state,
            allocated: Resources::default(),
            tasks: Vec::new(),
            rank,
            zone,
            n_flex_tasks: 0,
            // Outside the market (the default config manages no pool).
            ie: Ie::ZERO,
            pool,
            reclaiming: false,
        };
        match state {
            HostState::Active => {
                s.index.insert(
                    host_idx,
                    rank,
                    &host.free(),
                    host.has_gpus(),
                    host.index_part(),
                );
                s.zone_active_hosts[zone as usize] += 1;
                s.active_capacity.checked_add_assign(&capacity).unwrap();
            }
            HostState::Draining => s.n_draining += 1,
            HostState::Lost => {}
        }
        s.hosts.push(host);
        host_idx
    }

    /// Registers a job (without queueing it) and returns its id.
    pub(crate) fn job(&mut self, spec: JobSpec) -> JobId {
        let s = &mut self.state;
        let team = s.team_idx(&spec.team);
        let (tracks_placement, unique_group) = placement_tracking(&spec);
        let id = spec.id;
        s.jobs.insert(
            id,
            Job {
                spec: Arc::new(spec),
                team,
                submit_time: Timestamp::ZERO,
                tasks: Vec::new(),
                ready: BTreeSet::new(),
                per_host: FxHashMap::default(),
                per_zone: Vec::new(),
                unique_group,
                tracks_placement,
                pending_reasons: None,
                n_live: 0,
                preempted_at: Vec::new(),
            },
        );
        id
    }

    /// Puts one task of `job` on `host_idx` (allocation and every per-job count).
    pub(crate) fn place(&mut self, job: JobId, host_idx: HostIdx) {
        self.state.charge(job, host_idx, Timestamp::ZERO);
    }

    pub(crate) fn job_ref(&self, id: JobId) -> &Job {
        &self.state.jobs[&id]
    }

    pub(crate) fn host_ref(&self, host_idx: HostIdx) -> &Host {
        &self.state.hosts[host_idx as usize]
    }
}
