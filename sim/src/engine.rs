//! The discrete-event loop: a virtual clock in integer milliseconds, events
//! ordered by (time, sequence number), one [`Scheduler`] fed through the same
//! `handle_*` inputs the server uses, and simulated executors answering its
//! actions.
//!
//! ```text
//!   heap of (time, seq, event) ──pop──▶ handle_* input ──▶ Scheduler
//!        ▲                                                    │ plan_round + commit
//!        │ Started / Exit / Stopped after latency,            ▼
//!        └──────── runtime, grace ◀──── simulated executor ◀─ poll_action
//! ```
//!
//! Nothing here reads the wall clock except the round timer and the
//! events-per-second figure, which are reported but never hashed.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::io::IsTerminal;
use std::time::Instant;

use anyhow::{Context, Result};
use ebb_scheduler::{
    Action, HostId, HostSpec, JobId, PoolId, RunId, Scheduler, StopCause, TaskId, TaskState,
    Timestamp,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::demand::{self, DemandSeries};
use crate::executors::Executors;
use crate::faults::{self, Fault};
use crate::market::MarketLink;
use crate::metrics::{FleetSample, JobRow, Metrics, PoolSample, Summary};
use crate::scenario::Scenario;
use crate::workload::{self, SimJob};

/// How long after a job finishes the core forgets it: an hour of simulated
/// time is long past any late executor report the simulator can produce
/// (they arrive within a launch latency or a grace period), and short
/// enough that a week-long run keeps few finished jobs in the core.
const FORGET_AFTER_MS: u64 = 3_600_000;

/// How to run a scenario.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Seed of every random stream.
    pub seed: u64,
    /// Policy name (scenario-defined or built-in).
    pub policy: String,
    /// Where progress is shown.
    pub progress: Progress,
    /// For tests of the conservation checks only: the simulated executors'
    /// bookkeeping forgets the n-th run that ends (1-based), as a buggy
    /// executor would, so the checks must catch the disagreement.
    #[doc(hidden)]
    pub corrupt_executor_view: Option<u64>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            seed: 1,
            policy: "binpack".into(),
            progress: Progress::Hidden,
            corrupt_executor_view: None,
        }
    }
}

/// Progress output of a run, in simulated hours.
#[derive(Clone, Debug)]
pub enum Progress {
    /// None.
    Hidden,
    /// A bar on stderr, only when stdout and stderr are terminals.
    Terminal,
    /// Advance this shared bar by the simulated hours (a sweep's bar).
    Shared(ProgressBar),
}

/// Everything a run produces.
#[derive(Debug)]
pub struct Outcome {
    /// The headline figures.
    pub summary: Summary,
    /// Per pool, every `sample_interval`.
    pub pool_series: Vec<PoolSample>,
    /// Fleet-wide, every `sample_interval`.
    pub fleet_series: Vec<FleetSample>,
    /// One row per job.
    pub jobs: Vec<JobRow>,
    /// Tasks the core and the simulated executors disagree about (empty
    /// unless there is a bug: the conservation test checks it).
    pub conservation_errors: Vec<String>,
}

/// A simulated executor's view of one task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Pending,
    Launching,
    Running,
    Stopping,
    Done,
}

/// `run_start` of a run the executor has not reported started.
const NOT_STARTED: u64 = u64::MAX;

#[derive(Clone, Debug)]
struct SimTask {
    /// Run time needed in total.
    work_ms: u64,
    /// Run time saved by checkpoints (or completed).
    done_ms: u64,
    /// When the current run started (executor reported it started).
    run_start: u64,
    /// When the current run exits by itself (finish or failure).
    exit_at: u64,
    /// Launch counter: events of older runs are stale.
    attempt: u32,
    phase: Phase,
    /// Pool of the host of the current run.
    pool: u16,
    /// Host (executor index) of the current run.
    host: u32,
    /// Restore time at the start of the current run (resuming saved progress).
    restore_ms: u64,
    /// The current run's stop is a preemption (not a gang restart): decides
    /// whether its unsaved work counts as lost to preemption or to failures.
    stop_is_preempt: bool,
}

#[derive(Clone, Copy, Debug)]
enum Ev {
    /// Periodic round; schedules the next one.
    Round,
    /// Round requested by the core's `poll_timeout`.
    TimeoutRound,
    Submit(u32),
    Demand {
        series: u32,
        point: u32,
    },
    Failover {
        region: u32,
        active: bool,
    },
    Started {
        task: TaskId,
        attempt: u32,
    },
    Exit {
        task: TaskId,
        attempt: u32,
        failed: bool,
    },
    Stopped {
        task: TaskId,
        attempt: u32,
    },
    /// The launch of this run failed before the task started.
    LaunchFailed {
        task: TaskId,
        attempt: u32,
    },
    /// A host fault (see `faults.rs`).
    Fault(Fault),
    Sample,
    /// A new streaming-demand forecast; schedules the next one.
    Forecast,
}

struct Entry {
    time: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.time, self.seq) == (o.time, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    /// Reversed: `BinaryHeap` is a max-heap and we pop the earliest event.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.time, o.seq).cmp(&(self.time, self.seq))
    }
}

/// Runs `sc` once.
pub fn run(sc: &Scenario, opts: &RunOptions) -> Result<Outcome> {
    let config = sc.scheduler_config(&opts.policy)?;
    let mut core = Scheduler::try_new(config)
        .with_context(|| format!("policy `{}`: invalid scheduler configuration", opts.policy))?;
    // Nobody reads the change feed here: off, it costs nothing.
    core.set_event_feed(false);
    let jobs = workload::build(sc, opts.seed).context("generating workloads")?;
    let demand = demand::build(sc, opts.seed).context("building demand curves")?;
    let mut sim = Sim::new(sc, opts, core, jobs, demand)?;
    sim.run()?;
    Ok(sim.finish())
}

struct Sim<'a> {
    sc: &'a Scenario,
    seed: u64,
    core: Scheduler,
    heap: BinaryHeap<Entry>,
    seq: u64,
    now: u64,
    jobs: Vec<SimJob>,
    /// Flat index of each job's task 0.
    job_base: Vec<usize>,
    tasks: Vec<SimTask>,
    /// The simulated executors' own view of what runs where.
    exec: Executors,
    /// Every executor host's spec, by executor index (to add it back after a loss).
    host_specs: Vec<HostSpec>,
    demand: Vec<DemandSeries>,
    market: MarketLink,
    /// The forecast fed to the market.
    forecast: crate::scenario::ForecastSpec,
    metrics: Metrics,
    trace: Sha256,
    timeout_round_at: Option<u64>,
    progress: ProgressBar,
    /// Simulated hours already reported to the progress bar.
    progress_h: u64,
    /// The bar is this run's own (not a sweep's), so the run clears it.
    own_bar: bool,
    n_events: u64,
    /// Jobs already checked against the core and forgotten by it.
    forgotten: Vec<bool>,
}

impl<'a> Sim<'a> {
    fn new(
        sc: &'a Scenario,
        opts: &RunOptions,
        core: Scheduler,
        jobs: Vec<SimJob>,
        demand: Vec<DemandSeries>,
    ) -> Result<Self> {
        let n_jobs = jobs.len();
        let mut job_base = Vec::with_capacity(jobs.len());
        let mut tasks = Vec::new();
        for j in &jobs {
            job_base.push(tasks.len());
            tasks.extend(j.work_ms.iter().map(|&w| SimTask {
                work_ms: w,
                done_ms: 0,
                run_start: 0,
                exit_at: 0,
                attempt: 0,
                phase: Phase::Pending,
                pool: 0,
                host: 0,
                restore_ms: 0,
                stop_is_preempt: false,
            }));
        }
        let progress = match &opts.progress {
            Progress::Shared(bar) => bar.clone(),
            Progress::Hidden => ProgressBar::hidden(),
            Progress::Terminal => {
                let draw = if std::io::stdout().is_terminal() && std::io::stderr().is_terminal() {
                    ProgressDrawTarget::stderr()
                } else {
                    ProgressDrawTarget::hidden()
                };
                let bar = ProgressBar::with_draw_target(Some(hours_up(sc.sim.duration.0)), draw);
                bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner} simulated {pos}/{len} h [{bar:40}] {percent}% eta {eta} {msg}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                bar
            }
        };
        let mut metrics = Metrics::new(sc, &jobs, opts);
        let market = MarketLink::new(sc);
        let grace_ms = core.config().market.preempt_grace.as_millis() + sc.sim.round_interval.0;
        metrics.grace_ms = grace_ms;
        let exec = Executors::new(
            market.managed(),
            &market.reserved_micro(sc, core.catalog()),
            grace_ms,
            opts.corrupt_executor_view,
        );
        Ok(Sim {
            sc,
            seed: opts.seed,
            core,
            heap: BinaryHeap::new(),
            seq: 0,
            now: 0,
            jobs,
            job_base,
            tasks,
            exec,
            host_specs: Vec::new(),
            demand,
            market,
            forecast: sc.forecast.clone(),
            metrics,
            trace: Sha256::new(),
            timeout_round_at: None,
            progress,
            progress_h: 0,
            own_bar: !matches!(opts.progress, Progress::Shared(_)),
            n_events: 0,
            forgotten: vec![false; n_jobs],
        })
    }

    fn push(&mut self, time: u64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Entry {
            time,
            seq: self.seq,
            ev,
        });
    }

    fn ts(&self) -> Timestamp {
        Timestamp::from_millis(self.now)
    }

    fn flat(&self, t: TaskId) -> usize {
        self.job_base[t.job.0 as usize] + t.index as usize
    }

    /// Adds the fleet, configures the market and schedules every known event.
    fn setup(&mut self) -> Result<()> {
        let now = self.ts();
        self.market.configure(self.sc, &mut self.core, now)?;
        let mut capacities = Vec::new();
        for (pool_idx, p) in self.sc.fleet.pools.iter().enumerate() {
            for tc in &p.hosts {
                let info = self
                    .core
                    .catalog()
                    .get(&tc.instance_type)
                    .expect("validated against the catalog")
                    .clone();
                let capacity = info.capacity();
                for i in 0..tc.count {
                    let id = HostId::from(format!("{}/{}/{i:05}", p.id, tc.instance_type));
                    let spec = HostSpec {
                        id: id.clone(),
                        pool: PoolId::from(p.id.as_str()),
                        instance_type: tc.instance_type.clone(),
                        zone: p.zone.clone(),
                        region: p.region.clone(),
                        attributes: Default::default(),
                        capacity: capacity.clone(),
                        gpu_model: info.gpu_model.clone(),
                    };
                    self.host_specs.push(spec.clone());
                    self.core
                        .handle_host_added(self.ts(), spec)
                        .with_context(|| format!("adding host {id} of pool {}", p.id))?;
                    let ie = self
                        .core
                        .catalog()
                        .ie_of(&tc.instance_type)
                        .map_or(0, |ie| ie.as_micro());
                    self.exec
                        .add_host(id, pool_idx as u16, ie, capacity.clone());
                    capacities.push(capacity.clone());
                }
            }
        }
        self.metrics.set_host_capacities(capacities);
        self.refresh_market();
        for i in 0..self.jobs.len() {
            self.push(self.jobs[i].submit_ms, Ev::Submit(i as u32));
        }
        for s in 0..self.demand.len() {
            for p in 0..self.demand[s].points.len() {
                let t = self.demand[s].points[p].0;
                self.push(
                    t,
                    Ev::Demand {
                        series: s as u32,
                        point: p as u32,
                    },
                );
            }
        }
        for f in &self.sc.failover {
            let region = self
                .sc
                .fleet
                .regions
                .iter()
                .position(|r| r.name == f.region)
                .expect("validated") as u32;
            let (a, b) = (f.at.0, f.at.0 + f.duration.0);
            self.push(
                a,
                Ev::Failover {
                    region,
                    active: true,
                },
            );
            self.push(
                b,
                Ev::Failover {
                    region,
                    active: false,
                },
            );
        }
        for (t, f) in faults::build(self.sc, self.seed, self.exec.n_hosts()) {
            self.push(t, Ev::Fault(f));
        }
        // Rounds and samples come after the inputs of the same instant.
        self.push(0, Ev::Round);
        self.push(0, Ev::Sample);
        if self.forecast.enabled {
            // After the demand reports of the same instant (pushed earlier).
            self.push(0, Ev::Forecast);
        }
        Ok(())
    }

    fn run(&mut self) -> Result<()> {
        self.setup()?;
        let end = self.sc.sim.duration.0;
        let wall = Instant::now();
        while let Some(e) = self.heap.pop() {
            if e.time > end {
                break;
            }
            debug_assert!(e.time >= self.now, "time went backwards");
            self.now = e.time;
            self.n_events += 1;
            if self.n_events.is_multiple_of(65_536) {
                self.advance_progress();
            }
            self.dispatch(e.ev)?;
        }
        self.now = end;
        self.metrics.wall_s = wall.elapsed().as_secs_f64();
        self.metrics.n_events = self.n_events;
        self.advance_progress();
        if self.own_bar {
            self.progress.finish_and_clear();
        }
        Ok(())
    }

    /// Moves the progress bar to the whole simulated hours done (the last,
    /// partial hour counts when the run ends: the bar's length rounds up).
    fn advance_progress(&mut self) {
        let end = self.sc.sim.duration.0;
        let done_h = if self.now >= end {
            hours_up(end)
        } else {
            self.now / 3_600_000
        };
        if done_h > self.progress_h {
            self.progress.inc(done_h - self.progress_h);
            self.progress_h = done_h;
        }
    }

    /// Hands the core's market figures of every pool to the executors' books
    /// (after a market input: supply moves only then).
    fn refresh_market(&mut self) {
        for (i, v) in self.market.raw_statuses(&self.core).into_iter().enumerate() {
            if let Some((streaming, headroom, supply)) = v {
                self.exec
                    .set_market(self.now, i, streaming, headroom, supply);
            }
        }
    }

    fn dispatch(&mut self, ev: Ev) -> Result<()> {
        let now = self.ts();
        match ev {
            Ev::Round => {
                self.round();
                let next = self.now + self.sc.sim.round_interval.0;
                self.push(next, Ev::Round);
            }
            Ev::TimeoutRound => {
                self.timeout_round_at = None;
                self.round();
            }
            Ev::Submit(i) => {
                let spec = self.jobs[i as usize].spec.clone();
                let n = spec.n_tasks;
                self.core.handle_job_submitted(now, spec).with_context(|| {
                    format!("submitting job {}", self.jobs[i as usize].spec.name)
                })?;
                self.metrics.on_submit(n);
            }
            Ev::Demand { series, point } => {
                let s = &self.demand[series as usize];
                let (pool, ie) = (s.pool_idx, s.points[point as usize].1);
                self.market.set_demand(&mut self.core, now, pool, ie)?;
                self.refresh_market();
            }
            Ev::Failover { region, active } => {
                let name = self.sc.fleet.regions[region as usize].name.clone();
                self.market
                    .set_failover(&mut self.core, now, &name, active)?;
                self.refresh_market();
            }
            Ev::Started { task, attempt } => self.on_started(task, attempt)?,
            Ev::Exit {
                task,
                attempt,
                failed,
            } => self.on_exit(task, attempt, failed)?,
            Ev::Stopped { task, attempt } => self.on_stopped(task, attempt)?,
            Ev::LaunchFailed { task, attempt } => self.on_launch_failed(task, attempt)?,
            Ev::Fault(f) => self.on_fault(f)?,
            Ev::Forecast => {
                self.forecast()?;
                let next = self.now + self.forecast.interval.0;
                self.push(next, Ev::Forecast);
            }
            Ev::Sample => {
                self.sample();
                let next = self.now + self.sc.sim.sample_interval.0;
                self.push(next, Ev::Sample);
            }
        }
        self.drain_actions();
        Ok(())
    }

    fn round(&mut self) {
        let now = self.ts();
        let t0 = Instant::now();
        self.core
            .handle_tick(now)
            .expect("the simulated clock never goes backwards");
        let plan = self
            .core
            .plan_round(now)
            .expect("the simulated clock never goes backwards");
        let planning = t0.elapsed();
        let busy = !plan.assignments.is_empty() || !plan.preemptions.is_empty();
        self.metrics.n_hosts_examined += plan.stats.n_hosts_examined;
        let (n_emergency, n_over_budget) = plan.preemptions.iter().fold((0, 0), |(e, o), p| {
            (e + u64::from(p.emergency), o + u64::from(p.over_budget))
        });
        let t1 = Instant::now();
        let report = self
            .core
            .commit(now, plan)
            .expect("the simulated clock never goes backwards");
        let elapsed = planning + t1.elapsed();
        self.metrics.round_nanos.push(elapsed.as_nanos() as u64);
        if !busy {
            self.metrics.n_idle_rounds += 1;
            self.metrics.idle_round_nanos += elapsed.as_nanos() as u64;
        }
        self.metrics.n_emergency_preemptions += n_emergency;
        self.metrics.n_over_budget_preemptions += n_over_budget;
        for (task, _why) in &report.rejected {
            self.trace.update(b"R");
            self.trace.update(self.now.to_le_bytes());
            hash_task(&mut self.trace, *task);
        }
        self.drain_actions();
        if let Some(t) = self.core.poll_timeout().map(Timestamp::as_millis)
            && t > self.now
            && self.timeout_round_at.is_none_or(|pending| t < pending)
            // Periodic rounds run at multiples of the interval anyway.
            && !t.is_multiple_of(self.sc.sim.round_interval.0)
        {
            self.timeout_round_at = Some(t);
            self.push(t, Ev::TimeoutRound);
        }
    }

    fn drain_actions(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Launch { run, host, .. } => self.on_launch(run, &host),
                Action::Stop {
                    run,
                    host,
                    grace,
                    cause,
                } => self.on_stop(run.task, &host, grace.as_millis(), cause),
            }
        }
    }

    fn on_launch(&mut self, run: RunId, host: &HostId) {
        let task = run.task;
        self.trace.update(b"L");
        self.trace.update(self.now.to_le_bytes());
        hash_task(&mut self.trace, task);
        self.trace.update(host.as_str().as_bytes());
        self.trace.update([0]);
        let h = self
            .exec
            .host_idx(host)
            .expect("the core launches on known hosts");
        let pool = self.exec.pool_of(h);
        let spec = &self.jobs[task.job.0 as usize].spec;
        self.exec
            .launch(self.now, h, task, spec.tier, &spec.request);
        let f = self.flat(task);
        let t = &mut self.tasks[f];
        t.attempt += 1;
        assert_eq!(
            t.attempt, run.attempt,
            "the core and the simulated executor count {task}'s runs alike"
        );
        t.phase = Phase::Launching;
        t.run_start = NOT_STARTED;
        t.pool = pool;
        t.host = h;
        let attempt = t.attempt;
        let latency = {
            let mut rng = crate::rng::for_run(self.seed, task.job.0, task.index, attempt, 1);
            workload::draw(&self.sc.sim.launch_latency, &mut rng, 0)
        };
        self.metrics.on_launch(task.job.0 as usize, self.now);
        let p = self.sc.faults.launch_failure_probability;
        if p > 0.0 && crate::rng::unit(self.seed, task.job.0, task.index, attempt, 4) < p {
            self.push(self.now + latency, Ev::LaunchFailed { task, attempt });
        } else {
            self.push(self.now + latency, Ev::Started { task, attempt });
        }
    }

    fn on_started(&mut self, task: TaskId, attempt: u32) -> Result<()> {
        let f = self.flat(task);
        let t = &self.tasks[f];
        if t.attempt != attempt || t.phase != Phase::Launching {
            return Ok(()); // stopped before it started
        }
        self.core
            .handle_task_started(self.ts(), task.run(attempt))
            .with_context(|| format!("task {task} started"))?;
        let job = &self.jobs[task.job.0 as usize];
        let remaining = t.work_ms - t.done_ms;
        let restore_ms = if t.done_ms > 0 {
            job.checkpoint_restore_ms
        } else {
            0
        };
        let wall_ms = run_wall_ms(
            restore_ms,
            remaining,
            job.spec.checkpoint_interval.map_or(0, |d| d.as_millis()),
            job.checkpoint_write_ms,
        );
        let fails = crate::rng::unit(self.seed, task.job.0, task.index, attempt, 2)
            < job.failure_probability;
        let run_ms = if fails {
            let at = crate::rng::unit(self.seed, task.job.0, task.index, attempt, 3);
            ((wall_ms as f64 * at) as u64).max(1)
        } else {
            wall_ms
        };
        let t = &mut self.tasks[f];
        t.restore_ms = restore_ms;
        t.phase = Phase::Running;
        t.run_start = self.now;
        t.exit_at = self.now + run_ms;
        self.push(
            self.now + run_ms,
            Ev::Exit {
                task,
                attempt,
                failed: fails,
            },
        );
        Ok(())
    }

    fn on_exit(&mut self, task: TaskId, attempt: u32, failed: bool) -> Result<()> {
        let f = self.flat(task);
        let t = &self.tasks[f];
        if t.attempt != attempt || !matches!(t.phase, Phase::Running | Phase::Stopping) {
            return Ok(());
        }
        let now = self.ts();
        let ran = self.now - t.run_start;
        let j = task.job.0 as usize;
        let cpus = self.jobs[j].spec.request.cpu_millis as f64 / 1000.0;
        self.exec.release(self.now, t.host, task);
        if failed {
            self.core
                .handle_task_failed(now, task.run(attempt))
                .with_context(|| format!("task {task} failed"))?;
            let (lost_cpu_h, state) = self.settle_run(f, task, ran);
            let n = self.jobs[j].spec.n_tasks;
            self.metrics.on_failed(j, self.now, lost_cpu_h, &state, n);
        } else {
            self.core
                .handle_task_finished(now, task.run(attempt))
                .with_context(|| format!("task {task} finished"))?;
            let t = &mut self.tasks[f];
            // The run did the remaining work; the rest of its wall time was
            // spent restoring and writing checkpoints.
            let overhead = ran.saturating_sub(t.work_ms - t.done_ms);
            t.done_ms = t.work_ms;
            t.phase = Phase::Done;
            let work = t.work_ms;
            let n = self.jobs[j].spec.n_tasks;
            self.metrics.checkpoint_overhead_cpu_h += cpus * overhead as f64 / 3.6e6;
            self.metrics
                .on_completed(j, self.now, cpus * work as f64 / 3.6e6, n);
        }
        Ok(())
    }

    fn on_stop(&mut self, task: TaskId, host: &HostId, grace_ms: u64, cause: StopCause) {
        self.trace.update(b"S");
        self.trace.update(self.now.to_le_bytes());
        hash_task(&mut self.trace, task);
        self.trace.update(host.as_str().as_bytes());
        self.trace.update([0, cause_byte(cause)]);
        self.trace.update(grace_ms.to_le_bytes());
        let f = self.flat(task);
        let job = &self.jobs[task.job.0 as usize];
        let stop_at = self.now + grace_ms.min(job.stop_ms);
        let t = &mut self.tasks[f];
        let pool = t.pool;
        if cause == StopCause::Preempt {
            self.metrics.on_preempt_started(task.job.0 as usize, pool);
        }
        match t.phase {
            Phase::Running if t.exit_at <= stop_at => {
                // It exits by itself before the stop completes; the Exit event reports it.
                t.phase = Phase::Stopping;
            }
            Phase::Running | Phase::Launching => {
                t.phase = Phase::Stopping;
                t.stop_is_preempt = cause == StopCause::Preempt;
                let attempt = t.attempt;
                self.push(stop_at, Ev::Stopped { task, attempt });
            }
            // A repeated stop for a task already stopping changes nothing.
            _ => {}
        }
    }

    fn on_stopped(&mut self, task: TaskId, attempt: u32) -> Result<()> {
        let f = self.flat(task);
        let t = &self.tasks[f];
        if t.attempt != attempt || t.phase != Phase::Stopping {
            return Ok(());
        }
        // A task stopped before it started ran for nothing.
        let ran = if t.run_start == NOT_STARTED {
            0
        } else {
            self.now - t.run_start
        };
        self.exec.release(self.now, t.host, task);
        self.core
            .handle_task_stopped(self.ts(), task.run(attempt))
            .with_context(|| format!("task {task} stopped"))?;
        let j = task.job.0 as usize;
        let preempted = self.tasks[f].stop_is_preempt;
        let (lost_cpu_h, state) = self.settle_run(f, task, ran);
        let n = self.jobs[j].spec.n_tasks;
        if preempted {
            self.metrics.on_stopped(j, self.now, lost_cpu_h, &state, n);
        } else {
            // A gang member stopped to restart with a member that failed or
            // was lost (the simulator never kills): the failure's loss, not
            // preemption's, as the core's ledger books it.
            self.metrics.on_failed(j, self.now, lost_cpu_h, &state, n);
        }
        Ok(())
    }

    /// After the core has been told a run ended without finishing (failed
    /// or stopped): banks the progress saved by checkpoints, follows the
    /// core's verdict (requeued or done) and returns the CPU-hours lost with
    /// the task's new state.
    fn settle_run(&mut self, f: usize, task: TaskId, ran: u64) -> (f64, Option<TaskState>) {
        let job = &self.jobs[task.job.0 as usize];
        let cpus = job.spec.request.cpu_millis as f64 / 1000.0;
        let interval = job.spec.checkpoint_interval.map_or(0, |d| d.as_millis());
        let t = &self.tasks[f];
        let (saved, unsaved, overhead) =
            run_progress(ran, t.restore_ms, interval, job.checkpoint_write_ms);
        let state = self.core.task(task).map(|v| v.state);
        let t = &mut self.tasks[f];
        t.done_ms = (t.done_ms + saved).min(t.work_ms);
        t.phase = if matches!(state, Some(TaskState::Pending)) {
            Phase::Pending
        } else {
            Phase::Done
        };
        self.metrics.checkpoint_overhead_cpu_h += cpus * overhead as f64 / 3.6e6;
        (cpus * unsaved as f64 / 3.6e6, state)
    }

    // ----------------------------------------------------------- faults
    // Host losses, drains and launch failures, fed to the core through its
    // existing inputs (handle_host_lost / _draining / _activated / _added,
    // handle_task_failed).

    fn on_launch_failed(&mut self, task: TaskId, attempt: u32) -> Result<()> {
        let f = self.flat(task);
        let t = &self.tasks[f];
        if t.attempt != attempt || t.phase != Phase::Launching {
            return Ok(()); // stopped (or its host lost) before the launch failed
        }
        self.exec.release(self.now, t.host, task);
        self.core
            .handle_task_failed(self.ts(), task.run(attempt))
            .with_context(|| format!("task {task} failed to launch"))?;
        let j = task.job.0 as usize;
        let (lost, state) = self.settle_run(f, task, 0);
        let n = self.jobs[j].spec.n_tasks;
        self.metrics.n_launch_failures += 1;
        self.metrics.on_failed(j, self.now, lost, &state, n);
        Ok(())
    }

    fn on_fault(&mut self, fault: Fault) -> Result<()> {
        match fault {
            Fault::HostDown(h) => self.host_down(h)?,
            Fault::HostUp(h) if !self.exec.is_alive(h) => {
                let spec = self.host_specs[h as usize].clone();
                self.core
                    .handle_host_added(self.ts(), spec)
                    .with_context(|| format!("host {} back", self.exec.host_id(h)))?;
                self.exec.host_back(self.now, h);
            }
            Fault::DrainStart(h) if self.exec.is_alive(h) => {
                let id = self.exec.host_id(h).clone();
                self.core
                    .handle_host_draining(self.ts(), &id)
                    .with_context(|| format!("draining host {id}"))?;
                self.metrics.n_host_drains += 1;
            }
            Fault::DrainEnd(h) if self.exec.is_alive(h) => {
                let id = self.exec.host_id(h).clone();
                self.core
                    .handle_host_activated(self.ts(), &id)
                    .with_context(|| format!("activating host {id}"))?;
            }
            Fault::Scheduled(i) => {
                let s = &self.sc.faults.scheduled[i as usize];
                let pool = self
                    .sc
                    .fleet
                    .pools
                    .iter()
                    .position(|p| p.id == s.pool)
                    .expect("validated") as u16;
                let live = self.exec.live_hosts_of(pool);
                for (t, f) in faults::expand(self.sc, i, self.now, &live) {
                    if t == self.now {
                        self.on_fault(f)?;
                    } else {
                        self.push(t, Ev::Fault(f));
                    }
                }
            }
            // Up while up, drain or end of drain while down: nothing to do.
            _ => {}
        }
        Ok(())
    }

    /// Host `h` is lost with its work: the core requeues its tasks; the
    /// work since their last checkpoint is lost.
    fn host_down(&mut self, h: u32) -> Result<()> {
        if !self.exec.is_alive(h) {
            return Ok(());
        }
        let id = self.exec.host_id(h).clone();
        self.core
            .handle_host_lost(self.ts(), &id)
            .with_context(|| format!("host {id} lost"))?;
        self.metrics.n_host_losses += 1;
        for task in self.exec.host_lost(self.now, h) {
            let f = self.flat(task);
            let t = &self.tasks[f];
            if t.host != h
                || !matches!(t.phase, Phase::Launching | Phase::Running | Phase::Stopping)
            {
                continue;
            }
            let ran = if t.run_start == NOT_STARTED {
                0
            } else {
                self.now - t.run_start
            };
            let j = task.job.0 as usize;
            let (lost, state) = self.settle_run(f, task, ran);
            let n = self.jobs[j].spec.n_tasks;
            self.metrics.lost_host_cpu_h += lost;
            self.metrics.on_failed(j, self.now, 0.0, &state, n);
        }
        Ok(())
    }

    /// Checks finished jobs against the executors' books, then has the core
    /// forget them, so the core's memory stays flat over long runs while the
    /// simulator keeps its own per-job rows.
    fn forget_finished(&mut self) {
        let cutoff = Timestamp::from_millis(self.now.saturating_sub(FORGET_AFTER_MS));
        let due = self.core.jobs_finished_before(cutoff);
        if due.is_empty() {
            return;
        }
        self.metrics.exec_runs_per_job = self.exec.runs_per_job();
        for job in due {
            let j = job.0 as usize;
            let counts = self.core.job_counts(job);
            self.metrics.check_job(j, &self.jobs[j], counts, true);
            self.forgotten[j] = true;
        }
        self.core
            .handle_forget_finished(self.ts(), cutoff)
            .expect("the simulated clock never goes backwards");
    }

    /// Publishes each pool's forecast: its demand curve's points over the
    /// horizon, each off by its own seeded relative error.
    fn forecast(&mut self) -> Result<()> {
        let now = self.now;
        let horizon = now + self.forecast.horizon.0;
        let sigma = self.forecast.error;
        for s in 0..self.demand.len() {
            let series = &self.demand[s];
            let points: Vec<(u64, f64)> = series
                .points
                .iter()
                .enumerate()
                .filter(|(_, (t, _))| *t > now && *t <= horizon)
                .map(|(k, &(t, ie))| {
                    let err = if sigma > 0.0 {
                        // Box–Muller from two seeded uniforms: the same
                        // forecast for the same seed, issue time and point.
                        let u1 = crate::rng::unit(self.seed, now, s as u32, k as u32, 5).max(1e-12);
                        let u2 = crate::rng::unit(self.seed, now, s as u32, k as u32, 6);
                        sigma * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
                    } else {
                        0.0
                    };
                    (t, (ie * (1.0 + err)).max(0.0))
                })
                .collect();
            let (pool, at) = (series.pool_idx, self.ts());
            self.market
                .set_forecast(&mut self.core, at, pool, &points)?;
        }
        Ok(())
    }

    fn sample(&mut self) {
        self.forget_finished();
        let errors = self
            .exec
            .check_against_core(self.now, &self.core, self.market.ids());
        self.metrics.on_conservation_errors(errors);
        let pools = self.market.statuses(&self.core);
        let totals = self.core.totals();
        let n_hosts_used = self.core.hosts().filter(|h| !h.tasks().is_empty()).count() as u32;
        self.metrics
            .on_sample(self.now, &pools, &totals, n_hosts_used);
    }

    fn finish(mut self) -> Outcome {
        let trace_hash = format!("{:x}", self.trace.clone().finalize());
        let end = self.ts();
        if self.market.any_managed() {
            self.metrics.pool_totals = Some(self.core.pool_totals(end));
        }
        self.metrics.ledger = self.core.ledger(end);
        let errors = self
            .exec
            .check_against_core(self.now, &self.core, self.market.ids());
        self.metrics.on_conservation_errors(errors);
        self.metrics.pool_books = self.exec.finish(self.now);
        self.metrics.exec_runs_per_job = self.exec.runs_per_job();
        // Conservation: the core and the simulated executors agree on every job.
        for (j, job) in self.jobs.iter().enumerate() {
            if self.forgotten[j] {
                continue; // checked when the core forgot it
            }
            let c = self.core.job_counts(JobId(j as u64));
            self.metrics.check_job(j, job, c, job.submit_ms <= self.now);
        }
        self.metrics
            .finish(self.sc, &self.jobs, trace_hash, self.now)
    }
}

/// Wall time of a run that restores for `restore_ms`, then does
/// `remaining_ms` of work, writing a checkpoint (`write_ms`, no progress)
/// after every `interval_ms` of work except at the very end.
fn run_wall_ms(restore_ms: u64, remaining_ms: u64, interval_ms: u64, write_ms: u64) -> u64 {
    let n_writes = remaining_ms
        .saturating_sub(1)
        .checked_div(interval_ms)
        .unwrap_or(0);
    restore_ms + remaining_ms + n_writes * write_ms
}

/// What a run that ended after `ran_ms` of wall time leaves:
/// `(saved_ms, unsaved_ms, overhead_ms)` — progress kept by completed
/// checkpoints, progress lost, and time spent restoring or writing.
fn run_progress(ran_ms: u64, restore_ms: u64, interval_ms: u64, write_ms: u64) -> (u64, u64, u64) {
    let restoring = ran_ms.min(restore_ms);
    let worked = ran_ms - restoring;
    if interval_ms == 0 {
        return (0, worked, restoring);
    }
    let cycle = interval_ms + write_ms;
    let full = worked / cycle;
    let rest = worked - full * cycle;
    let unsaved = rest.min(interval_ms);
    let writing = full * write_ms + (rest - unsaved);
    (full * interval_ms, unsaved, restoring + writing)
}

/// Hours in `ms`, rounded up: the progress bar's length.
fn hours_up(ms: u64) -> u64 {
    ms.div_ceil(3_600_000)
}

fn hash_task(h: &mut Sha256, t: TaskId) {
    h.update(t.job.0.to_le_bytes());
    h.update(t.index.to_le_bytes());
}

fn cause_byte(c: StopCause) -> u8 {
    match c {
        StopCause::Kill => 1,
        StopCause::Preempt => 2,
        StopCause::Restart => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_costs_add_to_runs_and_split_progress() {
        // 50 min of work, 10 min interval, 1 min writes, 2 min restore:
        // 4 writes (none after the last interval), so 2 + 50 + 4 = 56 min.
        let m = 60_000;
        assert_eq!(run_wall_ms(2 * m, 50 * m, 10 * m, m), 56 * m);
        assert_eq!(
            run_wall_ms(0, 50 * m, 0, m),
            50 * m,
            "no interval, no writes"
        );
        // Stopped after 25 min: 2 restoring, then 11-min cycles: 2 saved
        // intervals (20 min) after 22 min, 1 min of unsaved work.
        assert_eq!(run_progress(25 * m, 2 * m, 10 * m, m), (20 * m, m, 4 * m));
        // Stopped while writing the first checkpoint: that interval is lost.
        assert_eq!(
            run_progress(10 * m + m / 2, 0, 10 * m, m),
            (0, 10 * m, m / 2)
        );
        // Still restoring: nothing done.
        assert_eq!(run_progress(m, 2 * m, 10 * m, m), (0, 0, m));
        // Without costs, as before: whole intervals are saved.
        assert_eq!(run_progress(25 * m, 0, 10 * m, 0), (20 * m, 5 * m, 0));
        assert_eq!(run_progress(25 * m, 0, 0, 0), (0, 25 * m, 0));
    }
}
