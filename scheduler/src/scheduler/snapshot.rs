//! Snapshot and restore: the facts a core cannot re-derive (specs, task
//! phases and runs, host slots and ranks, market inputs, ledger accounts,
//! queued actions and events), serializable; everything derived (indexes,
//! allocations, leases, per-job counts, the queue) is rebuilt on restore
//! through the same charge path the core uses, then checked.
//!
//! Orders that decide outcomes are carried explicitly (host slots and
//! ranks, team and zone table order), and collections that come from hash
//! maps are written sorted, so a snapshot of a restored core equals the
//! original's and the two make bit-identical decisions.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::host::{Host, HostRecord, HostTable};
use crate::model::job::{Job, Phase, Task};
use crate::model::ledger::{Account, AccountKey, PoolAccount};
use crate::model::queue::JobRank;
use crate::model::{ShapeKey, State};
use crate::policy::search::Pipeline;
use crate::scheduler::events::EventFeed;
use crate::scheduler::{Action, Scheduler};
use crate::spec::config::SchedulerConfig;
use crate::spec::error::InputError;
use crate::spec::host::HostState;
use crate::spec::job::JobSpec;
use crate::spec::market::{PoolSpec, Reservation};
use crate::spec::reason::PendingReasons;
use crate::units::ids::{HostIdx, PoolId, TaskId, TeamId};
use crate::units::ie::Ie;
use crate::units::price::Price;
use crate::units::resources::Resources;
use crate::units::time::Timestamp;

/// The snapshot format version; [`Scheduler::restore`] refuses others.
const SNAPSHOT_VERSION: u32 = 1;

/// Everything needed to rebuild a core (see the module doc).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    version: u32,
    config: SchedulerConfig,
    last_now: Timestamp,
    generation: u64,
    n_rounds: u64,
    n_hosts_added: u64,
    zones: Vec<String>,
    teams: Vec<TeamId>,
    pools: Vec<PoolRecord>,
    failed_over: Vec<String>,
    reserved_at: Timestamp,
    hosts: Vec<Option<HostRecord>>,
    free_slots: Vec<HostIdx>,
    jobs: Vec<JobRecord>,
    accounts: Vec<(AccountKey, Account)>,
    pool_accounts: Vec<PoolAccount>,
    failed_shapes: Vec<(ShapeKey, Arc<PendingReasons>)>,
    budget_wakeup: Option<Timestamp>,
    actions: VecDeque<Action>,
    events: EventFeed,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolRecord {
    id: PoolId,
    spec: Option<PoolSpec>,
    reservations: Vec<Reservation>,
    reserved: Ie,
    streaming: Ie,
    clearing_price: Price,
    min_host_ie: Option<Ie>,
    forecast: Vec<(Timestamp, Ie)>,
    forecast_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobRecord {
    spec: JobSpec,
    submit_time: Timestamp,
    tasks: Vec<Task>,
    /// Pending tasks that rounds may place; the other pending ones wait out a back-off.
    ready: Vec<u32>,
    pending_reasons: Option<Arc<PendingReasons>>,
    preempted_at: Vec<Timestamp>,
    finished_at: Option<Timestamp>,
}

impl Scheduler {
    /// A serializable copy of everything the core knows.
    pub fn snapshot(&self) -> Snapshot {
        let st = &self.state;
        let mut jobs: Vec<JobRecord> = st
            .job_order
            .iter()
            .map(|id| {
                let j = &st.jobs[id];
                JobRecord {
                    spec: (*j.spec).clone(),
                    submit_time: j.submit_time,
                    tasks: j.tasks.clone(),
                    ready: j.ready.iter().copied().collect(),
                    pending_reasons: j.pending_reasons.clone(),
                    preempted_at: j.preempted_at.clone(),
                    finished_at: j.finished_at,
                }
            })
            .collect();
        jobs.sort_by_key(|j| j.spec.id);
        let mut accounts: Vec<_> = st
            .market
            .ledger
            .accounts
            .iter()
            .map(|(k, a)| (*k, a.clone()))
            .collect();
        accounts.sort_by_key(|(k, _)| *k);
        let mut failed_shapes: Vec<_> = st
            .failed_shapes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        failed_shapes.sort_by(|a, b| a.0.cmp(&b.0));
        let hosts = (0..st.hosts.n_slots())
            .map(|i| {
                st.hosts.get(HostIdx::from_usize(i)).map(|h| HostRecord {
                    spec: h.spec.clone(),
                    state: h.state,
                    rank: h.rank,
                    reclaiming: h.reclaiming,
                    returning: h.returning,
                    tasks: h.tasks.clone(),
                })
            })
            .collect();
        Snapshot {
            version: SNAPSHOT_VERSION,
            config: st.config.clone(),
            last_now: st.last_now,
            generation: st.generation,
            n_rounds: self.n_rounds,
            n_hosts_added: st.n_hosts_added,
            zones: st.zones.iter().map(|z| z.to_string()).collect(),
            teams: st.teams.iter().map(|t| t.id.clone()).collect(),
            pools: st
                .market
                .pools
                .iter()
                .map(|p| PoolRecord {
                    id: p.id.clone(),
                    spec: p.spec.clone(),
                    reservations: p.reservations.clone(),
                    reserved: p.reserved,
                    streaming: p.streaming,
                    clearing_price: p.clearing_price,
                    min_host_ie: p.min_host_ie,
                    forecast: p.forecast.clone(),
                    forecast_at: p.forecast_at,
                })
                .collect(),
            failed_over: st.market.failed_over.iter().cloned().collect(),
            reserved_at: st.market.reserved_at,
            hosts,
            free_slots: st.hosts.free_slots().to_vec(),
            jobs,
            accounts,
            pool_accounts: st.market.ledger.pools.clone(),
            failed_shapes,
            budget_wakeup: st.budget_wakeup,
            actions: self.actions.clone(),
            events: self.events.clone(),
        }
    }

    /// Rebuilds a core from a snapshot. The result makes the same decisions,
    /// actions and events as the core the snapshot was taken from, given the
    /// same inputs. Refuses a snapshot of another version or one whose facts
    /// contradict each other.
    pub fn restore(snap: Snapshot) -> Result<Scheduler, InputError> {
        let bad = |m: String| InputError::InvalidSnapshot(m);
        if snap.version != SNAPSHOT_VERSION {
            return Err(bad(format!(
                "version {} (this core reads version {SNAPSHOT_VERSION})",
                snap.version
            )));
        }
        snap.config.validate()?;
        let mut st = State::new(snap.config)?;
        for z in &snap.zones {
            st.zone_idx(z);
        }
        for t in &snap.teams {
            st.team_idx(t);
        }
        for p in snap.pools {
            let idx = st.market.pool_idx(&p.id);
            let pool = &mut st.market.pools[idx.get()];
            pool.spec = p.spec;
            pool.reserved = p.reserved;
            pool.streaming = p.streaming;
            pool.clearing_price = p.clearing_price;
            pool.min_host_ie = p.min_host_ie;
            pool.forecast = p.forecast;
            pool.forecast_at = p.forecast_at;
            st.market.set_reservations(idx, p.reservations);
        }
        st.market.failed_over = snap.failed_over.into_iter().collect();
        st.market.reserved_at = snap.reserved_at;
        st.market.recompute();

        // Hosts, empty at first, then jobs, then every task charged back onto its host.
        let mut slots: Vec<Option<Host>> = Vec::with_capacity(snap.hosts.len());
        let mut host_tasks: Vec<(HostIdx, Vec<TaskId>)> = Vec::new();
        let mut reclaiming: Vec<(HostIdx, bool, Option<Timestamp>)> = Vec::new();
        for (i, rec) in snap.hosts.into_iter().enumerate() {
            let Some(rec) = rec else {
                slots.push(None);
                continue;
            };
            let h = HostIdx::from_usize(i);
            let pool = st.market.pool_idx(&rec.spec.pool);
            let managed = st.market.pools[pool.get()].spec.is_some();
            let ie = match st.market.catalog.ie_of(&rec.spec.instance_type) {
                Ok(ie) => ie,
                Err(_) if !managed => Ie::ZERO,
                Err(e) => return Err(e),
            };
            let zone = st.zone_idx(&rec.spec.zone);
            let host = Host {
                spec: rec.spec,
                state: rec.state,
                allocated: Resources::default(),
                tasks: Vec::new(),
                rank: rec.rank,
                zone,
                n_flex_tasks: 0,
                ie,
                pool,
                reclaiming: false,
                returning: None,
                flex_shares: Vec::new(),
                flex_share_total: 0,
            };
            let p = &mut st.market.pools[pool.get()];
            p.hosts.insert(h);
            p.n_hosts += 1;
            match host.state {
                HostState::Active => {
                    st.index.insert(
                        h,
                        host.rank,
                        &host.free(),
                        host.has_gpus(),
                        host.index_part(),
                    );
                    st.zone_active_hosts[zone.get()] += 1;
                    st.active_capacity
                        .checked_add_assign(&host.spec.capacity)
                        .map_err(|e| bad(e.to_string()))?;
                }
                HostState::Draining => st.n_draining += 1,
                HostState::Lost => return Err(bad(format!("host {} is lost", host.spec.id))),
            }
            host_tasks.push((h, rec.tasks));
            // Set after charging: charging clears it on hosts without flex work.
            if rec.reclaiming || rec.returning.is_some() {
                reclaiming.push((h, rec.reclaiming, rec.returning));
            }
            slots.push(Some(host));
        }
        st.hosts = HostTable::from_slots(slots, snap.free_slots);
        st.n_hosts_added = snap.n_hosts_added;

        for rec in snap.jobs {
            let id = rec.spec.id;
            let team = st.team_idx(&rec.spec.team);
            if rec.tasks.len() != rec.spec.n_tasks as usize {
                return Err(bad(format!("{id}: task count differs from its spec")));
            }
            let mut job = Job::new(rec.spec, team, rec.submit_time);
            job.tasks = rec.tasks;
            job.ready = rec.ready.iter().copied().collect();
            job.pending_reasons = rec.pending_reasons;
            job.preempted_at = rec.preempted_at;
            job.finished_at = rec.finished_at;
            job.n_live = job.tasks.iter().filter(|t| !t.phase.is_terminal()).count() as u32;
            for (i, t) in job.tasks.iter().enumerate() {
                let i = i as u32;
                let is_ready = job.ready.contains(&i);
                if is_ready && t.phase != Phase::Pending {
                    return Err(bad(format!("{id}/{i} is ready but {}", t.phase.name())));
                }
                if t.phase == Phase::Pending && !is_ready {
                    st.queue.delay(TaskId::new(id, i), t.ready_at);
                }
            }
            if !job.ready.is_empty() {
                st.queue
                    .insert_job(job.spec.tier, team, JobRank::of(&job.spec, job.submit_time));
            }
            if let Some(key) = &job.spec.request_key {
                st.request_keys.insert((team, key.clone()), id);
            }
            if let Some(at) = job.finished_at {
                st.finished.insert((at, id));
            }
            st.teams[team.get()].jobs.insert(id);
            st.job_order.insert(id);
            st.jobs.insert(id, job);
        }
        let now = snap.last_now;
        for (h, tasks) in &host_tasks {
            for t in tasks {
                let phase = st
                    .task(*t)
                    .ok_or_else(|| bad(format!("{t} on a host but unknown")))?
                    .phase;
                if phase.host() != Some(*h) {
                    return Err(bad(format!("{t} listed on a host it is not placed on")));
                }
            }
            st.charge(*h, tasks, true, now);
        }
        for (h, reclaim, returning) in reclaiming {
            st.hosts[h].reclaiming = reclaim;
            st.set_returning(h, returning);
        }
        // Every placed task must have been listed on its host.
        let n_placed: usize = st.jobs.values().map(|j| j.n_placed as usize).sum();
        let n_listed: usize = host_tasks.iter().map(|(_, t)| t.len()).sum();
        let n_phased: usize = st
            .jobs
            .values()
            .flat_map(|j| &j.tasks)
            .filter(|t| t.phase.host().is_some())
            .count();
        if n_placed != n_listed || n_phased != n_listed {
            return Err(bad("a placed task is not listed on its host".into()));
        }
        st.market.ledger.accounts = snap.accounts.into_iter().collect();
        st.market.ledger.pools = snap.pool_accounts;
        st.failed_shapes = snap.failed_shapes.into_iter().collect();
        st.budget_wakeup = snap.budget_wakeup;
        st.generation = snap.generation;
        st.last_now = snap.last_now;
        st.check_accounts().map_err(bad)?;
        Ok(Scheduler {
            state: st,
            pipeline: Arc::new(Pipeline::default()),
            actions: snap.actions,
            events: snap.events,
            n_rounds: snap.n_rounds,
        })
    }
}
