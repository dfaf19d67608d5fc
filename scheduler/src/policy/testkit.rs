//! Test-only builders for the placement stages: a [`State`] with hosts and
//! jobs, without going through the [`crate::Scheduler`] inputs, so that the
//! table tests of checkers and scorers can set up exactly the host they need.
//!
//! Everything that knows how `State`, `Host` and `Job` are laid out lives
//! here, so a new field there is one fix, not one per test.

use crate::model::job::Job;
use crate::model::{Host, State};
use crate::spec::config::SchedulerConfig;
use crate::spec::host::{HostSpec, HostState};
use crate::spec::job::{Constraint, JobSpec, Tier};
use crate::units::ids::{HostId, HostIdx, JobId, PoolId, TaskId, TeamId};
use crate::units::ie::Ie;
use crate::units::resources::Resources;
use crate::units::time::Timestamp;

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
        request_key: None,
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
        expected_runtime: None,
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
        let rank = s.rank_of(s.n_hosts_added);
        s.n_hosts_added += 1;
        let zone = s.zone_idx(&spec.zone);
        let pool = s.market.pool_idx(&spec.pool);
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
            returning: None,
            flex_shares: Vec::new(),
            flex_share_total: 0,
        };
        let (free, gpus, part) = (host.free(), host.has_gpus(), host.index_part());
        let h = s.hosts.insert(host);
        s.market.pools[pool.get()].hosts.insert(h);
        s.market.pools[pool.get()].n_hosts += 1;
        match state {
            HostState::Active => {
                s.index.insert(h, rank, &free, gpus, part);
                s.zone_active_hosts[zone.get()] += 1;
                s.active_capacity.checked_add_assign(&capacity).unwrap();
            }
            HostState::Draining => s.n_draining += 1,
            HostState::Lost => {}
        }
        h
    }

    /// Registers a job (without queueing it) and returns its id.
    pub(crate) fn job(&mut self, spec: JobSpec) -> JobId {
        let s = &mut self.state;
        let team = s.team_idx(&spec.team);
        let id = spec.id;
        let mut job = Job::new(spec, team, Timestamp::ZERO);
        job.ready.clear();
        s.jobs.insert(id, job);
        id
    }

    /// Puts one more task of `job` on `host_idx` (allocation and every per-job count).
    pub(crate) fn place(&mut self, job: JobId, host_idx: HostIdx) {
        let j = self.state.jobs.get_mut(&job).expect("job registered");
        let index = j.tasks.len() as u32;
        let mut task = crate::model::Task::new(Timestamp::ZERO);
        task.phase = crate::model::job::Phase::Running(host_idx);
        task.attempt = 1;
        j.tasks.push(task);
        self.state
            .charge(host_idx, &[TaskId::new(job, index)], true, Timestamp::ZERO);
    }

    pub(crate) fn job_ref(&self, id: JobId) -> &Job {
        &self.state.jobs[&id]
    }

    pub(crate) fn host_ref(&self, host_idx: HostIdx) -> &Host {
        &self.state.hosts[host_idx]
    }
}

/// A seeded sequence for random test cases (SplitMix64 over a counter).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    /// Uniform in `0..n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(1);
        crate::model::splitmix64(self.0) % n
    }

    /// One of `items`, uniformly.
    pub(crate) fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}
