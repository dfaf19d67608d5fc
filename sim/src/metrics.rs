//! What a run measures: per-job progress, work done and lost, preemptions,
//! IE integrals per pool, host usage against the packing lower bound, and
//! the figures of the summary.

use std::collections::BTreeMap;

use ebb_scheduler::{JobCounts, JobId, LedgerEntry, PoolTotals, Resources, TaskState, Totals};
use serde::Serialize;

use crate::engine::RunOptions;
use crate::executors::PoolIntegrals;
use crate::market::PoolView;
use crate::scenario::{Scenario, WorkloadKind};
use crate::workload::SimJob;

/// Per-job progress.
#[derive(Clone, Debug, Default)]
struct JobTrack {
    first_launch: Option<u64>,
    done_at: Option<u64>,
    n_terminal: u32,
    n_completed: u32,
    n_failed: u32,
    n_preemptions: u32,
    goodput_cpu_h: f64,
    lost_preempt_cpu_h: f64,
    lost_failure_cpu_h: f64,
}

/// One row of `pools.csv`.
#[derive(Clone, Debug, Serialize)]
pub struct PoolSample {
    /// Hours since the start.
    pub t_h: f64,
    /// Pool id.
    pub pool: String,
    /// Reserved IE.
    pub reserved_ie: f64,
    /// Streaming demand IE.
    pub streaming_ie: f64,
    /// Headroom IE.
    pub headroom_ie: Option<f64>,
    /// Supply IE.
    pub supply_ie: Option<f64>,
    /// Leased IE.
    pub leased_ie: Option<f64>,
    /// Idle (supply not leased) IE.
    pub idle_ie: Option<f64>,
    /// Clearing price per IE-hour.
    pub clearing_price: Option<f64>,
    /// Fleet-wide pending tasks (tasks are not bound to pools while queued).
    pub queue_depth: u64,
    /// Preemptions of tasks on this pool's hosts since the previous row.
    pub preemptions: u32,
}

/// One row of `fleet.csv`.
#[derive(Clone, Debug, Serialize)]
pub struct FleetSample {
    /// Hours since the start.
    pub t_h: f64,
    /// Pending tasks.
    pub queue_depth: u64,
    /// Tasks holding resources.
    pub tasks_placed: u64,
    /// Hosts with at least one task.
    pub hosts_used: u32,
    /// Fewest hosts that could hold the allocation (see [`Summary::hosts`]).
    pub hosts_lower_bound: u32,
    /// Allocated vCPUs.
    pub cpus_allocated: f64,
    /// Preemptions since the previous row.
    pub preemptions: u32,
}

/// One row of `jobs.csv`.
#[derive(Clone, Debug, Serialize)]
pub struct JobRow {
    /// Job id.
    pub job: u64,
    /// Job name.
    pub name: String,
    /// Generator kind.
    pub kind: WorkloadKind,
    /// Team.
    pub team: String,
    /// Tier.
    pub tier: String,
    /// Tasks.
    pub n_tasks: u32,
    /// Submission time (h).
    pub submit_h: f64,
    /// Hours from submission to its first launch.
    pub wait_h: Option<f64>,
    /// Hours from submission until every task ended.
    pub completion_h: Option<f64>,
    /// Tasks completed.
    pub completed: u32,
    /// Tasks failed for good.
    pub failed: u32,
    /// Preemptions of its tasks.
    pub preemptions: u32,
    /// CPU-hours of completed work.
    pub goodput_cpu_h: f64,
    /// CPU-hours lost to preemption.
    pub lost_preempt_cpu_h: f64,
}

/// p50 / p90 / p99 of a distribution, and how many values it has.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Pctl {
    /// Values.
    pub n: usize,
    /// Values that are lower bounds (e.g. jobs still waiting at the end,
    /// counted at their wait so far); when nonzero the percentiles are lower bounds too.
    pub n_censored: usize,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
}

impl Pctl {
    /// Nearest-rank percentiles of `v` (sorted in place).
    pub fn of(v: &mut [f64]) -> Pctl {
        if v.is_empty() {
            return Pctl::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Pctl {
            n: v.len(),
            n_censored: 0,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
        }
    }
}

/// A season drop's makespan.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Season {
    /// Workload name.
    pub name: String,
    /// Drop time (h).
    pub drop_h: f64,
    /// Hours from the drop until its last task ended; `None` if unfinished.
    pub makespan_h: Option<f64>,
    /// Tasks not ended at the end of the run.
    pub tasks_left: u64,
}

/// Task outcomes at the end of the run (they add up to `n_tasks`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TaskOutcomes {
    /// Tasks submitted.
    pub n_tasks: u64,
    /// Completed.
    pub completed: u64,
    /// Failed for good.
    pub failed: u64,
    /// Killed.
    pub killed: u64,
    /// Still queued at the end (pending or backing off).
    pub queued: u64,
    /// Placed at the end: on a host (assigned, running or stopping) when the run ended.
    pub placed: u64,
}

/// IE-hour integrals over the market-managed pools, integrated exactly
/// between events. Reserved comes from the scenario; leased, allocated and
/// critical from the simulated executors' own view of what runs where;
/// streaming, headroom, supply and idle from the core's market figures.
/// All zero when no pool is market-managed.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Capacity {
    /// True if at least one pool is market-managed.
    pub market: bool,
    /// Reserved IE-hours (the scenario's reservations × the catalog's IE).
    pub reserved_ie_h: f64,
    /// Streaming IE-hours (the core's account, capped at reserved).
    pub streaming_ie_h: f64,
    /// Headroom IE-hours kept free (the core's account: headroom eaten by
    /// leases beyond supply is not kept).
    pub headroom_ie_h: f64,
    /// Leased IE-hours: IE of hosts the executors run flex work on (capped
    /// at reserved − streaming, as the capacity split needs).
    pub leased_ie_h: f64,
    /// Idle IE-hours: supply not leased (the core's account).
    pub idle_ie_h: f64,
    /// reserved − (streaming + headroom + leased + idle): zero unless the
    /// core's lease accounting and the executors disagree.
    pub identity_gap_ie_h: f64,
    /// Supply IE-hours: what batch could lease.
    pub supply_ie_h: f64,
    /// Leased within supply: ∫ min(leased, supply).
    pub leased_within_supply_ie_h: f64,
    /// Leased beyond supply: ∫ max(0, leased − supply) — headroom eaten by batch.
    pub leased_beyond_supply_ie_h: f64,
    /// Harvested share of supply: leased within supply ÷ supply (at most 1).
    pub harvested_share: f64,
    /// The most that could have been harvested: ∫ min(supply, the pools'
    /// executor host IE) ÷ supply.
    pub reachable_share: f64,
    /// IE-hours that flex tasks actually hold on leased hosts (host IE ×
    /// dominant share of each task).
    pub allocated_ie_h: f64,
    /// Allocated ÷ leased (uncapped): how full the leased hosts were.
    pub allocated_share_of_leased: f64,
    /// IE-hours of hosts carrying critical work and no flex work: reserved
    /// capacity used outside the market (critical work ignores supply).
    pub critical_ie_h: f64,
    /// Headroom shortfall: ∫ max(0, streaming + headroom − reserved), IE-hours.
    pub shortfall_ie_h: f64,
    /// Violation episodes: a pool went from leased ≤ supply to leased > supply.
    pub headroom_violations: u64,
    /// Time pools spent with leased > supply, summed over pools, minutes.
    pub violation_minutes: f64,
    /// ∫ max(0, leased − supply) dt, in IE-minutes.
    pub headroom_violation_ie_min: f64,
    /// The grace a violation gets before it counts as "beyond grace": one
    /// round interval plus the preemption grace (reclaim notices at the next
    /// round; victims are gone by the end of their grace), s.
    pub violation_grace_s: f64,
    /// Episodes that lasted longer than that grace.
    pub violations_beyond_grace: u64,
    /// The part of `headroom_violation_ie_min` more than one grace into an episode.
    pub violation_ie_min_beyond_grace: f64,
    /// Preemptions planned as part of an emergency reclaim.
    pub n_emergency_preemptions: u64,
    /// Preemptions planned beyond a job's disruption budget.
    pub n_over_budget_preemptions: u64,
    /// Charges over all teams (IE-hours × clearing price).
    pub charges: f64,
    /// IE-hours of work lost to preemption, by the core's ledger.
    pub ledger_lost_ie_h: f64,
}

/// Executor faults and what they cost.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FaultFigures {
    /// Hosts lost (random, scheduled, or with their whole pool).
    pub n_host_losses: u64,
    /// Host drains started.
    pub n_host_drains: u64,
    /// Launches that failed before the task started.
    pub n_launch_failures: u64,
    /// CPU-hours of work since the last checkpoint lost with lost hosts.
    pub lost_host_cpu_h: f64,
    /// CPU-hours spent writing and restoring checkpoints.
    pub checkpoint_overhead_cpu_h: f64,
}

/// Hosts used versus the packing lower bound, averaged over samples.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Hosts {
    /// Executor hosts in the fleet.
    pub n_hosts: u32,
    /// Mean hosts carrying at least one task.
    pub used_mean: f64,
    /// Mean lower bound: for each dimension, the fewest hosts (largest
    /// first) whose capacity covers the allocation; the max over dimensions.
    pub lower_bound_mean: f64,
    /// `used_mean / lower_bound_mean` (1.0 is perfect packing).
    pub used_over_bound: f64,
}

/// Wall-clock figures: vary between runs, never part of the golden or the hash.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Perf {
    /// Rounds run.
    pub n_rounds: u64,
    /// Scheduler time per round (plan + commit), p50, ms.
    pub round_ms_p50: f64,
    /// p99, ms.
    pub round_ms_p99: f64,
    /// Max, ms.
    pub round_ms_max: f64,
    /// Events processed.
    pub n_events: u64,
    /// Wall time of the event loop, s.
    pub wall_s: f64,
    /// Events per wall second.
    pub events_per_s: f64,
    /// Wall time inside `plan_round` + `commit`, s.
    pub rounds_s: f64,
    /// Rounds that planned nothing (no assignment, no preemption).
    pub n_idle_rounds: u64,
    /// Wall time in those rounds, s.
    pub idle_rounds_s: f64,
    /// Hosts the core ran through its feasibility checkers, over all rounds.
    pub n_hosts_examined: u64,
    /// Events per wall second outside rounds: the engine, the simulated
    /// executors and the core's `handle_*` inputs.
    pub events_per_s_outside_rounds: f64,
}

/// The summary of one run (`summary.json`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// Scenario name.
    pub scenario: String,
    /// Policy name.
    pub policy: String,
    /// Seed.
    pub seed: u64,
    /// SHA-256 of the decision trace (launches, stops, refused assignments, in order).
    pub trace_hash: String,
    /// Simulated hours.
    pub duration_h: f64,
    /// Jobs submitted.
    pub n_jobs: u64,
    /// Task outcomes.
    pub tasks: TaskOutcomes,
    /// CPU-hours of completed work (both tiers).
    pub goodput_cpu_h: f64,
    /// The part of it done by critical-tier tasks.
    pub critical_goodput_cpu_h: f64,
    /// CPU-hours of work lost to preemption (run time since the last checkpoint).
    pub lost_preempt_cpu_h: f64,
    /// Lost to preemption as % of goodput.
    pub lost_preempt_pct: f64,
    /// CPU-hours of work lost to failed runs (task failures and launch
    /// failures, and gang members stopped to restart with a failed member).
    pub lost_failure_cpu_h: f64,
    /// Executor faults and checkpoint costs.
    pub faults: FaultFigures,
    /// Preemptions (stop requests with cause preempt).
    pub n_preemptions: u64,
    /// Hours from submission to first launch, over every submitted job; jobs
    /// that never launched count at their wait so far (censored).
    pub job_wait_h: Pctl,
    /// Submitted jobs none of whose tasks ever launched.
    pub n_jobs_never_launched: u64,
    /// Hours from submission to the end of every task, over finished jobs.
    pub job_completion_h: Pctl,
    /// Season drops.
    pub seasons: Vec<Season>,
    /// IE-hour integrals.
    pub capacity: Capacity,
    /// Why the harvested share is low, in one line (when it is below 80%).
    pub harvest_note: Option<String>,
    /// Packing.
    pub hosts: Hosts,
    /// Wall-clock figures.
    pub perf: Perf,
}

/// Accumulates a run's measurements.
#[derive(Debug)]
pub struct Metrics {
    policy: String,
    seed: u64,
    jobs: Vec<JobTrack>,
    n_pending: u64,
    n_placed: u64,
    n_preemptions: u64,
    outcomes: TaskOutcomes,
    preempt_since_sample: Vec<u32>,
    cap: Capacity,
    n_samples: u64,
    n_samples_queue_empty: u64,
    // Hosts.
    host_caps_desc: [Vec<u64>; 3],
    n_hosts: u32,
    used_sum: f64,
    bound_sum: f64,
    n_host_samples: u64,
    /// Per-round scheduler wall time, ns.
    pub round_nanos: Vec<u64>,
    /// Events processed.
    pub n_events: u64,
    /// Loop wall time.
    pub wall_s: f64,
    /// Rows of pools.csv.
    pub pool_series: Vec<PoolSample>,
    /// Rows of fleet.csv.
    pub fleet_series: Vec<FleetSample>,
    conservation_errors: Vec<String>,
    /// Preemptions planned as part of an emergency reclaim.
    pub n_emergency_preemptions: u64,
    /// Preemptions planned beyond a job's disruption budget.
    pub n_over_budget_preemptions: u64,
    /// Hosts run through feasibility checkers, over all rounds.
    pub n_hosts_examined: u64,
    /// Rounds that planned no assignment and no preemption.
    pub n_idle_rounds: u64,
    /// Wall time in those rounds, ns.
    pub idle_round_nanos: u64,
    /// The core's per-pool integrals at the end (market-managed pools).
    pub pool_totals: Option<Vec<PoolTotals>>,
    /// The core's ledger at the end.
    pub ledger: Vec<LedgerEntry>,
    /// The executors' integrals per pool, in scenario order, at the end.
    pub pool_books: Vec<PoolIntegrals>,
    /// Live runs per job in the executors' view at the end.
    pub exec_runs_per_job: BTreeMap<JobId, u32>,
    /// Pool ids, in scenario order.
    pool_ids: Vec<String>,
    /// Preemption grace + round interval (see [`Capacity::violation_grace_s`]), ms.
    pub grace_ms: u64,
    /// Hosts lost (random, scheduled or pool-wide).
    pub n_host_losses: u64,
    /// Host drains started.
    pub n_host_drains: u64,
    /// Launches that failed before the task started.
    pub n_launch_failures: u64,
    /// CPU-hours of work lost with lost hosts.
    pub lost_host_cpu_h: f64,
    /// CPU-hours spent writing and restoring checkpoints.
    pub checkpoint_overhead_cpu_h: f64,
}

impl Metrics {
    /// Empty measurements for `jobs`.
    pub fn new(sc: &Scenario, jobs: &[SimJob], opts: &RunOptions) -> Self {
        Metrics {
            policy: opts.policy.clone(),
            seed: opts.seed,
            jobs: vec![JobTrack::default(); jobs.len()],
            n_pending: 0,
            n_placed: 0,
            n_preemptions: 0,
            outcomes: TaskOutcomes::default(),
            preempt_since_sample: vec![0; sc.fleet.pools.len()],
            cap: Capacity::default(),
            n_samples: 0,
            n_samples_queue_empty: 0,
            host_caps_desc: Default::default(),
            n_hosts: 0,
            used_sum: 0.0,
            bound_sum: 0.0,
            n_host_samples: 0,
            round_nanos: Vec::new(),
            n_events: 0,
            wall_s: 0.0,
            pool_series: Vec::new(),
            fleet_series: Vec::new(),
            conservation_errors: Vec::new(),
            n_emergency_preemptions: 0,
            n_over_budget_preemptions: 0,
            n_hosts_examined: 0,
            n_idle_rounds: 0,
            idle_round_nanos: 0,
            pool_totals: None,
            ledger: Vec::new(),
            pool_books: Vec::new(),
            exec_runs_per_job: BTreeMap::new(),
            pool_ids: sc.fleet.pools.iter().map(|p| p.id.clone()).collect(),
            grace_ms: 0,
            n_host_losses: 0,
            n_host_drains: 0,
            n_launch_failures: 0,
            lost_host_cpu_h: 0.0,
            checkpoint_overhead_cpu_h: 0.0,
        }
    }

    /// Disagreements between the core and the simulated executors.
    pub fn on_conservation_errors(&mut self, errors: Vec<String>) {
        // One bug shows at every sample after it: keep the first few.
        const KEEP: usize = 20;
        for e in errors {
            if self.conservation_errors.len() < KEEP {
                self.conservation_errors.push(e);
            }
        }
    }

    /// Capacities of every executor host, for the packing lower bound.
    pub fn set_host_capacities(&mut self, caps: Vec<Resources>) {
        self.n_hosts = caps.len() as u32;
        let mut dims: [Vec<u64>; 3] = [
            caps.iter().map(|c| c.cpu_millis).collect(),
            caps.iter().map(|c| c.memory_mib).collect(),
            caps.iter().map(|c| c.gpus).collect(),
        ];
        for d in &mut dims {
            d.sort_unstable_by(|a, b| b.cmp(a));
            // Prefix sums: d[k] = capacity of the k+1 largest hosts.
            for i in 1..d.len() {
                d[i] += d[i - 1];
            }
        }
        self.host_caps_desc = dims;
    }

    fn lower_bound(&self, alloc: &Resources) -> u32 {
        let need = [alloc.cpu_millis, alloc.memory_mib, alloc.gpus];
        need.iter()
            .zip(&self.host_caps_desc)
            .map(|(&n, prefix)| {
                if n == 0 {
                    0
                } else {
                    (prefix.partition_point(|&c| c < n) + 1).min(prefix.len()) as u32
                }
            })
            .max()
            .unwrap_or(0)
    }

    /// A job of `n` tasks was submitted.
    pub fn on_submit(&mut self, n: u32) {
        self.n_pending += u64::from(n);
    }

    /// A task of job `j` was launched.
    pub fn on_launch(&mut self, j: usize, now: u64) {
        self.n_pending -= 1;
        self.n_placed += 1;
        self.jobs[j].first_launch.get_or_insert(now);
    }

    fn terminal(&mut self, j: usize, now: u64, n_tasks_of: impl FnOnce() -> u32) {
        let t = &mut self.jobs[j];
        t.n_terminal += 1;
        if t.n_terminal == n_tasks_of() {
            t.done_at = Some(now);
        }
    }

    /// A task of job `j` completed after `cpu_h` CPU-hours of work.
    pub fn on_completed(&mut self, j: usize, now: u64, cpu_h: f64, n_tasks: u32) {
        self.n_placed -= 1;
        let t = &mut self.jobs[j];
        t.n_completed += 1;
        t.goodput_cpu_h += cpu_h;
        self.terminal(j, now, || n_tasks);
    }

    /// A run of a task of job `j` failed (or, in a gang, was stopped to
    /// restart with a member that failed or was lost), losing `lost_cpu_h`.
    pub fn on_failed(
        &mut self,
        j: usize,
        now: u64,
        lost_cpu_h: f64,
        state: &Option<TaskState>,
        n_tasks: u32,
    ) {
        self.jobs[j].lost_failure_cpu_h += lost_cpu_h;
        self.after_release(j, now, state, n_tasks);
    }

    /// A task of job `j` on a host of pool `pool` was asked to stop for preemption.
    pub fn on_preempt_started(&mut self, j: usize, pool: u16) {
        self.jobs[j].n_preemptions += 1;
        self.n_preemptions += 1;
        self.preempt_since_sample[pool as usize] += 1;
    }

    /// A preempted task of job `j` stopped and released its resources, losing `lost_cpu_h`.
    pub fn on_stopped(
        &mut self,
        j: usize,
        now: u64,
        lost_cpu_h: f64,
        state: &Option<TaskState>,
        n_tasks: u32,
    ) {
        self.jobs[j].lost_preempt_cpu_h += lost_cpu_h;
        self.after_release(j, now, state, n_tasks);
    }

    fn after_release(&mut self, j: usize, now: u64, state: &Option<TaskState>, n_tasks: u32) {
        self.n_placed -= 1;
        match state {
            Some(TaskState::Pending) => self.n_pending += 1,
            Some(TaskState::Failed) => {
                self.jobs[j].n_failed += 1;
                self.terminal(j, now, || n_tasks);
            }
            Some(TaskState::Killed) | Some(TaskState::Completed) => {
                self.terminal(j, now, || n_tasks)
            }
            _ => {}
        }
    }

    /// A time-series sample.
    pub fn on_sample(&mut self, now: u64, pools: &[PoolView], totals: &Totals, hosts_used: u32) {
        let t_h = now as f64 / 3.6e6;
        let mut n_pre = 0;
        for (i, p) in pools.iter().enumerate() {
            n_pre += self.preempt_since_sample[i];
            self.pool_series.push(PoolSample {
                t_h,
                pool: p.pool.clone(),
                reserved_ie: p.reserved,
                streaming_ie: p.streaming,
                headroom_ie: p.headroom,
                supply_ie: p.supply,
                leased_ie: p.leased,
                idle_ie: p.idle,
                clearing_price: p.price,
                queue_depth: self.n_pending,
                preemptions: std::mem::take(&mut self.preempt_since_sample[i]),
            });
        }
        self.n_samples += 1;
        self.n_samples_queue_empty += u64::from(self.n_pending == 0);
        let bound = self.lower_bound(&totals.allocated);
        self.used_sum += f64::from(hosts_used);
        self.bound_sum += f64::from(bound);
        self.n_host_samples += 1;
        self.fleet_series.push(FleetSample {
            t_h,
            queue_depth: self.n_pending,
            tasks_placed: self.n_placed,
            hosts_used,
            hosts_lower_bound: bound,
            cpus_allocated: totals.allocated.cpu_millis as f64 / 1000.0,
            preemptions: n_pre,
        });
    }

    /// Checks that the core's counts for job `j` add up and agree with the
    /// simulated executors' (completed, failed, and runs live on hosts).
    /// `submitted`: the job's submission time was within the run.
    pub fn check_job(&mut self, j: usize, job: &SimJob, c: Option<JobCounts>, submitted: bool) {
        let Some(c) = c else {
            if submitted {
                self.conservation_errors
                    .push(format!("job {j} was submitted but is unknown to the core"));
            }
            return;
        };
        let sum = c.pending + c.running + c.stopping + c.completed + c.failed + c.killed;
        let o = &mut self.outcomes;
        o.n_tasks += u64::from(job.spec.n_tasks);
        o.completed += u64::from(c.completed);
        o.failed += u64::from(c.failed);
        o.killed += u64::from(c.killed);
        o.queued += u64::from(c.pending);
        o.placed += u64::from(c.running + c.stopping);
        if sum != job.spec.n_tasks {
            self.conservation_errors.push(format!(
                "job {j}: states add up to {sum}, not {}",
                job.spec.n_tasks
            ));
        }
        if c.completed != self.jobs[j].n_completed || c.failed != self.jobs[j].n_failed {
            self.conservation_errors.push(format!(
                "job {j}: core says {} completed / {} failed, simulator {} / {}",
                c.completed, c.failed, self.jobs[j].n_completed, self.jobs[j].n_failed
            ));
        }
        let live = self
            .exec_runs_per_job
            .get(&JobId(j as u64))
            .copied()
            .unwrap_or(0);
        if c.running + c.stopping != live {
            self.conservation_errors.push(format!(
                "job {j}: core places {} tasks on hosts, the executors run {live}",
                c.running + c.stopping
            ));
        }
    }

    /// Conservation problems found by [`Metrics::check_job`].
    pub fn conservation_errors(&self) -> &[String] {
        &self.conservation_errors
    }
}

impl Metrics {
    /// The summary, the time series and the per-job rows.
    pub fn finish(
        mut self,
        sc: &Scenario,
        jobs: &[SimJob],
        trace_hash: String,
        end: u64,
    ) -> crate::engine::Outcome {
        self.capacity_from_books(end);
        self.cap.n_emergency_preemptions = self.n_emergency_preemptions;
        self.cap.n_over_budget_preemptions = self.n_over_budget_preemptions;
        self.cap.charges = self.ledger.iter().map(|e| e.charges.as_f64()).sum();
        self.cap.ledger_lost_ie_h = self.ledger.iter().map(|e| e.lost_ie_hours()).sum();
        let mut rows = Vec::with_capacity(jobs.len());
        let (mut waits, mut completions) = (Vec::new(), Vec::new());
        let (mut goodput, mut lost_pre, mut lost_fail) = (0.0, 0.0, 0.0);
        let (mut critical_goodput, mut n_never) = (0.0, 0);
        for (j, job) in jobs.iter().enumerate() {
            let t = &self.jobs[j];
            let wait_h = t.first_launch.map(|l| (l - job.submit_ms) as f64 / 3.6e6);
            let completion_h = t.done_at.map(|d| (d - job.submit_ms) as f64 / 3.6e6);
            if job.submit_ms <= end {
                // A job that never launched has waited at least until the end.
                waits.push(wait_h.unwrap_or((end - job.submit_ms) as f64 / 3.6e6));
                n_never += u64::from(wait_h.is_none());
            }
            completions.extend(completion_h);
            goodput += t.goodput_cpu_h;
            if job.spec.tier == ebb_scheduler::Tier::Critical {
                critical_goodput += t.goodput_cpu_h;
            }
            lost_pre += t.lost_preempt_cpu_h;
            lost_fail += t.lost_failure_cpu_h;
            rows.push(JobRow {
                job: j as u64,
                name: job.spec.name.clone(),
                kind: sc.workload[job.workload_idx].kind,
                team: job.spec.team.to_string(),
                tier: job.spec.tier.to_string(),
                n_tasks: job.spec.n_tasks,
                submit_h: job.submit_ms as f64 / 3.6e6,
                wait_h,
                completion_h,
                completed: t.n_completed,
                failed: t.n_failed,
                preemptions: t.n_preemptions,
                goodput_cpu_h: t.goodput_cpu_h,
                lost_preempt_cpu_h: t.lost_preempt_cpu_h,
            });
        }
        let seasons = sc
            .workload
            .iter()
            .enumerate()
            .filter(|(_, w)| w.kind == WorkloadKind::SeasonDrop)
            .map(|(wi, w)| {
                let drop = w.at.expect("validated").0;
                let mine = || {
                    jobs.iter()
                        .enumerate()
                        .filter(move |(_, j)| j.workload_idx == wi)
                };
                let left: u64 = mine()
                    .map(|(j, job)| u64::from(job.spec.n_tasks - self.jobs[j].n_terminal))
                    .sum();
                let last = mine()
                    .map(|(j, _)| self.jobs[j].done_at)
                    .collect::<Option<Vec<_>>>();
                Season {
                    name: w.name.clone(),
                    drop_h: drop as f64 / 3.6e6,
                    makespan_h: last
                        .and_then(|v| v.into_iter().max())
                        .map(|d| (d - drop) as f64 / 3.6e6),
                    tasks_left: left,
                }
            })
            .collect();
        let mut round_ms: Vec<f64> = self.round_nanos.iter().map(|&n| n as f64 / 1e6).collect();
        let round_max = round_ms.iter().copied().fold(0.0, f64::max);
        let rounds_s = round_ms.iter().sum::<f64>() / 1e3;
        let rp = Pctl::of(&mut round_ms);
        let (used_mean, lower_bound_mean) = if self.n_host_samples > 0 {
            (
                self.used_sum / self.n_host_samples as f64,
                self.bound_sum / self.n_host_samples as f64,
            )
        } else {
            (0.0, 0.0)
        };
        let summary = Summary {
            scenario: sc.name.clone(),
            policy: self.policy.clone(),
            seed: self.seed,
            trace_hash,
            duration_h: end as f64 / 3.6e6,
            n_jobs: jobs.len() as u64,
            tasks: self.outcomes.clone(),
            goodput_cpu_h: goodput,
            lost_preempt_cpu_h: lost_pre,
            lost_preempt_pct: if goodput > 0.0 {
                100.0 * lost_pre / goodput
            } else {
                0.0
            },
            lost_failure_cpu_h: lost_fail,
            critical_goodput_cpu_h: critical_goodput,
            faults: FaultFigures {
                n_host_losses: self.n_host_losses,
                n_host_drains: self.n_host_drains,
                n_launch_failures: self.n_launch_failures,
                lost_host_cpu_h: self.lost_host_cpu_h,
                checkpoint_overhead_cpu_h: self.checkpoint_overhead_cpu_h,
            },
            n_preemptions: self.n_preemptions,
            job_wait_h: Pctl {
                n_censored: n_never as usize,
                ..Pctl::of(&mut waits)
            },
            n_jobs_never_launched: n_never,
            job_completion_h: Pctl::of(&mut completions),
            seasons,
            capacity: self.cap.clone(),
            harvest_note: self.harvest_note(),
            hosts: Hosts {
                n_hosts: self.n_hosts,
                used_mean,
                lower_bound_mean,
                used_over_bound: if lower_bound_mean > 0.0 {
                    used_mean / lower_bound_mean
                } else {
                    0.0
                },
            },
            perf: Perf {
                n_rounds: self.round_nanos.len() as u64,
                round_ms_p50: rp.p50,
                round_ms_p99: rp.p99,
                round_ms_max: round_max,
                n_events: self.n_events,
                wall_s: self.wall_s,
                events_per_s: if self.wall_s > 0.0 {
                    self.n_events as f64 / self.wall_s
                } else {
                    0.0
                },
                rounds_s,
                n_idle_rounds: self.n_idle_rounds,
                idle_rounds_s: self.idle_round_nanos as f64 / 1e9,
                n_hosts_examined: self.n_hosts_examined,
                events_per_s_outside_rounds: if self.wall_s > rounds_s {
                    self.n_events as f64 / (self.wall_s - rounds_s)
                } else {
                    0.0
                },
            },
        };
        crate::engine::Outcome {
            summary,
            pool_series: self.pool_series,
            fleet_series: self.fleet_series,
            jobs: rows,
            conservation_errors: self.conservation_errors,
        }
    }
}

impl Metrics {
    /// Fills [`Capacity`] from the executors' books and checks them against
    /// the core's own accounts (`pool_totals`), pool by pool.
    fn capacity_from_books(&mut self, end: u64) {
        let ie_h = PoolIntegrals::ie_h;
        let Some(totals) = self.pool_totals.clone() else {
            return;
        };
        let c = &mut self.cap;
        c.market = true;
        c.violation_grace_s = self.grace_ms as f64 / 1e3;
        let (mut uncapped_leased, mut held, mut reachable) = (0.0, 0.0, 0.0);
        for (i, b) in self.pool_books.iter().enumerate() {
            let id = &self.pool_ids[i];
            let Some(t) = totals.iter().find(|t| t.pool.as_str() == id) else {
                continue;
            };
            c.reserved_ie_h += ie_h(b.reserved);
            c.streaming_ie_h += t.streaming.ie_hours();
            c.headroom_ie_h += t.headroom.ie_hours();
            c.leased_ie_h += ie_h(b.leased);
            c.idle_ie_h += t.idle.ie_hours();
            c.supply_ie_h += ie_h(b.supply);
            c.leased_within_supply_ie_h += ie_h(b.within_supply);
            c.leased_beyond_supply_ie_h += ie_h(b.beyond_supply);
            c.critical_ie_h += ie_h(b.critical);
            c.shortfall_ie_h += ie_h(b.shortfall);
            c.headroom_violations += b.n_violations;
            c.violation_minutes += b.violating_ms as f64 / 60_000.0;
            c.headroom_violation_ie_min += ie_h(b.beyond_supply) * 60.0;
            c.violations_beyond_grace += b.n_long_violations;
            c.violation_ie_min_beyond_grace += ie_h(b.beyond_after_grace) * 60.0;
            uncapped_leased += ie_h(b.within_supply + b.beyond_supply);
            held += b.held / 3.6e12;
            reachable += ie_h(b.reachable);
            // Independent sums against the core's accounts.
            let parts =
                t.streaming.ie_hours() + t.headroom.ie_hours() + ie_h(b.leased) + t.idle.ie_hours();
            let checks = [
                (
                    "reserved = streaming + headroom + leased (executors) + idle",
                    ie_h(b.reserved),
                    parts,
                ),
                (
                    "leased IE-h (core vs executors)",
                    t.leased.ie_hours(),
                    ie_h(b.leased),
                ),
                (
                    "supply IE-h (core's account vs its reports)",
                    t.supply.ie_hours(),
                    ie_h(b.supply),
                ),
                (
                    "leased beyond supply IE-h (core vs executors)",
                    t.violation.ie_hours(),
                    ie_h(b.beyond_supply),
                ),
                (
                    "reserved IE-h (core vs scenario)",
                    t.reserved.ie_hours(),
                    ie_h(b.reserved),
                ),
            ];
            for (what, a, b) in checks {
                // Both sides are exact integer micro-IE·ms sums; the slack is float printing.
                if (a - b).abs() > 1e-6 * a.abs().max(b.abs()).max(1.0) {
                    self.conservation_errors.push(format!(
                        "pool {id} over {:.1} h: {what}: {a:.6} vs {b:.6}",
                        end as f64 / 3.6e6
                    ));
                }
            }
        }
        c.identity_gap_ie_h =
            c.reserved_ie_h - (c.streaming_ie_h + c.headroom_ie_h + c.leased_ie_h + c.idle_ie_h);
        let share = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        c.harvested_share = share(c.leased_within_supply_ie_h, c.supply_ie_h);
        c.reachable_share = share(reachable, c.supply_ie_h);
        c.allocated_ie_h = held;
        c.allocated_share_of_leased = share(held, uncapped_leased);
    }

    /// One line saying why the harvested share is low, or `None` if it is
    /// at least 80% (or there is no market).
    fn harvest_note(&self) -> Option<String> {
        let c = &self.cap;
        if !c.market || c.supply_ie_h <= 0.0 || c.harvested_share >= 0.8 {
            return None;
        }
        // The executor fleet is the limit only when batch got most of what it could reach.
        if c.reachable_share < 0.9 && c.harvested_share >= 0.8 * c.reachable_share {
            return Some(format!(
                "the market pools' executor hosts can hold at most {:.0}% of supply: supply outgrows the executor fleet, so more executor hosts (not another policy) would harvest more",
                100.0 * c.reachable_share
            ));
        }
        let empty = if self.n_samples > 0 {
            self.n_samples_queue_empty as f64 / self.n_samples as f64
        } else {
            0.0
        };
        if empty > 0.25 {
            return Some(format!(
                "no batch task was waiting in {:.0}% of the samples: the workload, not the market, is the limit (the executor hosts could hold {:.0}% of supply)",
                100.0 * empty,
                100.0 * c.reachable_share
            ));
        }
        Some(
            "batch work waited while supply was idle: see the jobs' pending reasons (placement, constraints, team caps) and the packing figures"
                .into(),
        )
    }
}
