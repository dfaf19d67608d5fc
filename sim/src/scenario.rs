//! Scenario files: fleet, streaming demand, failovers, batch workloads and
//! named policies, as TOML. The format is documented in
//! `examples/scenarios/README.md`; every check here names the field it rejects.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use ebb_scheduler::{SchedulerConfig, TeamConfig, TeamId};
use serde::Deserialize;

use crate::duration::Dur;

/// A parsed, validated scenario.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name; the default output directory is `out/<name>`.
    pub name: String,
    /// One paragraph saying what the scenario is for.
    #[serde(default)]
    pub description: String,
    /// Clock, rounds, executors.
    pub sim: SimSection,
    /// Regions, pools, reservations and executor hosts.
    pub fleet: Fleet,
    /// Streaming demand curves, one per pool (pools without one have none).
    #[serde(default)]
    pub demand: Vec<DemandSpec>,
    /// Regional failovers.
    #[serde(default)]
    pub failover: Vec<FailoverSpec>,
    /// Batch workload generators.
    #[serde(default)]
    pub workload: Vec<WorkloadSpec>,
    /// Host failures, drains, pool-wide losses and launch failures.
    #[serde(default)]
    pub faults: FaultsSpec,
    /// The streaming-demand forecast fed to the market.
    #[serde(default)]
    pub forecast: ForecastSpec,
    /// Team shares passed to the scheduler (`[teams.encoding] weight = 2`).
    #[serde(default)]
    pub teams: BTreeMap<String, TeamConfig>,
    /// Market knobs (a partial `MarketConfig`: floor_price, preempt_grace
    /// in ms, victim_policy); policies may override them.
    #[serde(default)]
    pub market: toml::Table,
    /// Named policies: each a (partial) `SchedulerConfig` table. They
    /// override built-in policies of the same name.
    #[serde(default)]
    pub policies: BTreeMap<String, toml::Table>,
    /// Directory relative paths (CSV curves) are resolved against.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// `[forecast]`: a streaming-demand forecast derived from each pool's own
/// demand curve, as a streaming autoscaler (Netflix's Scryer) would publish
/// it: every `interval`, the curve's points over the next `horizon`, each
/// off by a relative error drawn from N(0, `error`). Failovers are not in it:
/// the reactive path handles what no forecast predicts.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForecastSpec {
    /// Feed a forecast at all.
    pub enabled: bool,
    /// How far ahead each forecast reaches.
    pub horizon: Dur,
    /// How often a new forecast is published.
    pub interval: Dur,
    /// Standard deviation of each point's relative error (0.1 = ±10%).
    pub error: f64,
}

impl ForecastSpec {
    /// Checks the section; errors name the field.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.horizon.0 > 0,
            "`forecast.horizon` must be greater than zero"
        );
        ensure!(
            self.interval.0 > 0,
            "`forecast.interval` must be greater than zero"
        );
        ensure!(
            self.error.is_finite() && (0.0..=1.0).contains(&self.error),
            "`forecast.error` must be a relative error between 0 and 1"
        );
        Ok(())
    }
}

impl Default for ForecastSpec {
    /// On, three hours ahead (more than the longest drain lead and most
    /// encoding chunks), republished every 15 minutes, exact.
    fn default() -> Self {
        ForecastSpec {
            enabled: true,
            horizon: Dur::mins(180),
            interval: Dur::mins(15),
            error: 0.0,
        }
    }
}

/// `[sim]`: the clock and the simulated executors.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimSection {
    /// Simulated time span.
    pub duration: Dur,
    /// Time between scheduling rounds. 10 s is the server's default tick.
    #[serde(default = "default_round_interval")]
    pub round_interval: Dur,
    /// Time between rows of the time-series CSV.
    #[serde(default = "default_sample_interval")]
    pub sample_interval: Dur,
    /// Time between streaming-demand reports to the core.
    #[serde(default = "default_demand_step")]
    pub demand_step: Dur,
    /// Executor launch latency (Launch action → task started).
    #[serde(default = "default_launch_latency")]
    pub launch_latency: DistSpec,
    /// Policy used when `--policy` is not given.
    #[serde(default = "default_policy")]
    pub policy: String,
    /// Seed used when `--seed` is not given.
    #[serde(default = "default_seed")]
    pub seed: u64,
}

fn default_round_interval() -> Dur {
    Dur::secs(10)
}
fn default_sample_interval() -> Dur {
    Dur::mins(5)
}
fn default_demand_step() -> Dur {
    Dur::mins(5)
}
fn default_launch_latency() -> DistSpec {
    // Pulling a cached image and starting a container: a few seconds.
    DistSpec::Uniform {
        min: Dur::secs(2),
        max: Dur::secs(8),
    }
}
fn default_policy() -> String {
    "binpack".into()
}
fn default_seed() -> u64 {
    1
}

/// `[fleet]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// Regions and their clock offset (sets the phase of diurnal curves).
    pub regions: Vec<RegionSpec>,
    /// Pools of reserved capacity.
    pub pools: Vec<PoolDef>,
}

/// `[[fleet.regions]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSpec {
    /// e.g. `us-east-1`.
    pub name: String,
    /// Local time minus simulation time, in hours (the simulation starts at 00:00 UTC).
    #[serde(default)]
    pub utc_offset_hours: f64,
}

/// `[[fleet.pools]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolDef {
    /// Pool id.
    pub id: String,
    /// Region name (must be listed in `fleet.regions`).
    pub region: String,
    /// Availability zone of the pool's hosts.
    pub zone: String,
    /// Headroom kept for streaming.
    #[serde(default)]
    pub headroom: HeadroomSpec,
    /// Reserved instances by type.
    #[serde(default)]
    pub reservations: Vec<TypeCount>,
    /// Executor hosts by type (the reserved instances batch work runs on).
    #[serde(default)]
    pub hosts: Vec<TypeCount>,
}

/// Headroom policy of a pool (mirrors the scheduler's `HeadroomPolicy`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadroomSpec {
    /// Daily-scaling buffer as a fraction of streaming demand.
    pub daily_scaling_fraction: f64,
    /// Multiplier on the default failover buffer.
    pub failover_multiplier: f64,
    /// A fixed failover buffer in IE instead of the formula.
    pub failover_fixed_ie: Option<f64>,
}

impl Default for HeadroomSpec {
    fn default() -> Self {
        // The scheduler's defaults: 10% daily scaling, the formula failover buffer.
        HeadroomSpec {
            daily_scaling_fraction: 0.10,
            failover_multiplier: 1.0,
            failover_fixed_ie: None,
        }
    }
}

/// `{ instance_type = "m5.16xlarge", count = 100 }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeCount {
    /// EC2 instance type.
    pub instance_type: String,
    /// How many.
    pub count: u32,
}

/// `[[demand]]`: one pool's streaming demand.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemandSpec {
    /// The pool.
    pub pool: String,
    /// `diurnal` (built-in generator) or `csv` (time series file).
    pub kind: DemandKind,
    /// Demand at the daily peak, in IE.
    pub peak_ie: f64,
    /// Demand at the daily trough, in IE.
    pub trough_ie: f64,
    /// `diurnal`: local hour of the peak (20 = 8 pm).
    #[serde(default = "default_peak_hour")]
    pub peak_hour: f64,
    /// Relative Gaussian noise per report (0.02 = 2%).
    #[serde(default)]
    pub noise: f64,
    /// `csv`: path of the file, relative to the scenario file.
    #[serde(default)]
    pub file: Option<String>,
    /// `csv`: the file's time that maps to simulation time zero.
    #[serde(default)]
    pub shift: Dur,
    /// `csv`: header of the time column.
    #[serde(default = "default_time_column")]
    pub time_column: String,
    /// `csv`: what one unit of the time column is (`"1s"`, `"1m"`, `"5m"`).
    #[serde(default = "default_time_unit")]
    pub time_unit: Dur,
    /// `csv`: header of the demand column.
    #[serde(default = "default_value_column")]
    pub value_column: String,
    /// `csv`: how values map onto `[trough_ie, peak_ie]`.
    #[serde(default)]
    pub value_scale: ValueScale,
}

fn default_time_column() -> String {
    "time_s".into()
}
fn default_time_unit() -> Dur {
    Dur::secs(1)
}
fn default_value_column() -> String {
    "value".into()
}

/// How a CSV curve's values become demand.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueScale {
    /// The file's minimum maps to `trough_ie` and its maximum to `peak_ie`.
    #[default]
    MinMax,
    /// Values are fractions in `[0, 1]`: 0 is `trough_ie`, 1 is `peak_ie`.
    Fraction,
}

fn default_peak_hour() -> f64 {
    20.0
}

/// How a demand curve is produced.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DemandKind {
    /// Cosine day between trough and peak, peaking at `peak_hour` local time.
    Diurnal,
    /// A CSV time series, min–max mapped onto `[trough_ie, peak_ie]`, looped.
    Csv,
}

/// `[[failover]]`: region `region`'s traffic moves to the others.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverSpec {
    /// The failed region.
    pub region: String,
    /// When it fails over.
    pub at: Dur,
    /// How long until it serves again.
    pub duration: Dur,
}

/// `[faults]`: what goes wrong with executors.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsSpec {
    /// Random host failures per host per day (Poisson): the host is lost
    /// with everything on it (`handle_host_lost`).
    #[serde(default)]
    pub host_failures_per_day: f64,
    /// A failed host comes back, empty, after this; absent: never.
    #[serde(default)]
    pub host_repair: Option<Dur>,
    /// Random maintenance drains per host per day (Poisson): the host takes
    /// no new work (`handle_host_draining`) for `drain_duration`.
    #[serde(default)]
    pub host_drains_per_day: f64,
    /// How long a random drain lasts.
    #[serde(default = "default_drain_duration")]
    pub drain_duration: Dur,
    /// Probability that one launch fails before the task starts (image pull,
    /// container create): reported as a task failure.
    #[serde(default)]
    pub launch_failure_probability: f64,
    /// Faults at given times.
    #[serde(default)]
    pub scheduled: Vec<ScheduledFault>,
}

impl Default for FaultsSpec {
    /// Nothing goes wrong.
    fn default() -> Self {
        FaultsSpec {
            host_failures_per_day: 0.0,
            host_repair: None,
            host_drains_per_day: 0.0,
            drain_duration: default_drain_duration(),
            launch_failure_probability: 0.0,
            scheduled: Vec::new(),
        }
    }
}

fn default_drain_duration() -> Dur {
    // A rolling kernel or agent upgrade: about an hour per host.
    Dur::hours(1)
}

/// `[[faults.scheduled]]`: a fault at a given time.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduledFault {
    /// When.
    pub at: Dur,
    /// What.
    pub kind: FaultKind,
    /// The pool whose hosts it hits.
    pub pool: String,
    /// How many of the pool's live hosts (in host order); `pool_lost` takes all.
    #[serde(default)]
    pub hosts: Option<u32>,
    /// Lost hosts come back, drained hosts take work again, after this; absent: never.
    #[serde(default)]
    pub duration: Option<Dur>,
}

/// Kinds of scheduled fault.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// `hosts` hosts are lost with their work.
    HostLost,
    /// `hosts` hosts drain: running work continues, no new work lands.
    HostDrain,
    /// The whole pool's executors are lost at once (an executor-wide failure).
    PoolLost,
}

/// A random duration: `{ dist = "lognormal", mean = "20m", sigma = 0.5 }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "dist", rename_all = "snake_case", deny_unknown_fields)]
pub enum DistSpec {
    /// Always `value`.
    Fixed {
        /// The duration.
        value: Dur,
    },
    /// Uniform in `[min, max]`.
    Uniform {
        /// Lower bound.
        min: Dur,
        /// Upper bound.
        max: Dur,
    },
    /// Exponential with this mean.
    Exponential {
        /// Mean.
        mean: Dur,
    },
    /// Log-normal with this mean and log-space standard deviation `sigma`.
    Lognormal {
        /// Mean (not median).
        mean: Dur,
        /// Standard deviation of the logarithm.
        sigma: f64,
    },
}

impl DistSpec {
    /// The distribution's mean in milliseconds.
    pub fn mean_ms(&self) -> f64 {
        match self {
            DistSpec::Fixed { value } => value.0 as f64,
            DistSpec::Uniform { min, max } => (min.0 + max.0) as f64 / 2.0,
            DistSpec::Exponential { mean } | DistSpec::Lognormal { mean, .. } => mean.0 as f64,
        }
    }

    fn validate(&self, field: &str) -> Result<()> {
        match self {
            DistSpec::Uniform { min, max } => {
                ensure!(min <= max, "{field}: `min` ({min}) exceeds `max` ({max})")
            }
            DistSpec::Lognormal { sigma, .. } => ensure!(
                sigma.is_finite() && *sigma >= 0.0,
                "{field}: `sigma` must be finite and non-negative"
            ),
            _ => {}
        }
        Ok(())
    }
}

/// `[[workload]]`: a batch workload generator.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// Which generator.
    pub kind: WorkloadKind,
    /// Name, used in job names and reports.
    pub name: String,
    /// The owning team.
    pub team: String,
    /// `flex` (default) or `critical`.
    #[serde(default = "default_tier")]
    pub tier: ebb_scheduler::Tier,
    /// Priority within the team.
    #[serde(default)]
    pub priority: i32,
    /// Bid per IE-hour.
    #[serde(default)]
    pub bid: Option<f64>,
    /// vCPUs per task.
    pub cpus: f64,
    /// Memory per task in GiB.
    pub memory_gib: f64,
    /// GPUs per task.
    #[serde(default)]
    pub gpus: u32,
    /// Required GPU model (hard constraint).
    #[serde(default)]
    pub gpu_model: Option<String>,
    /// Probability that one run of a task fails (at a uniform point of its run).
    #[serde(default)]
    pub failure_probability: f64,
    /// Failure retries per task.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Time a task needs to exit after SIGTERM; the stop completes after
    /// `min(grace, stop_time)`.
    #[serde(default = "default_stop_time")]
    pub stop_time: Dur,
    /// Progress is saved every this much run time; `None`: never.
    #[serde(default)]
    pub checkpoint_interval: Option<Dur>,
    /// Time to write one checkpoint (no progress meanwhile); each
    /// `checkpoint_interval` of progress is saved only once its write completes.
    #[serde(default)]
    pub checkpoint_write: Dur,
    /// Time to restore from a checkpoint when a run resumes saved progress.
    #[serde(default)]
    pub checkpoint_restore: Dur,
    /// Gang-schedule each job: all its ready tasks are placed together or
    /// none (default: true for `ml_training`, false otherwise).
    #[serde(default)]
    pub gang: Option<bool>,
    /// Spread each job's tasks over zones: a zone may hold at most this many
    /// more of the job's tasks than the least-loaded zone (hard constraint).
    #[serde(default)]
    pub zone_balance_max_skew: Option<u32>,
    /// Per-job disruption budget for ordinary reclaim.
    #[serde(default)]
    pub disruption_budget: Option<BudgetSpec>,
    /// Declare each job's expected task runtime to the core (the 90th
    /// percentile of its tasks' work), as encoding pipelines can: with a
    /// demand forecast the market keeps work off capacity due back before it
    /// would finish. Default: true for encoding kinds, false for `ml_training`.
    #[serde(default)]
    pub declare_runtime: Option<bool>,
    /// Task runtime (`steady`, `ml_training`; for `season_drop` the shape,
    /// rescaled so the mean matches `cpu_hours`).
    #[serde(default)]
    pub runtime: Option<DistSpec>,

    // season_drop
    /// `season_drop`: when the season drops.
    #[serde(default)]
    pub at: Option<Dur>,
    /// `season_drop`: episodes (one job each).
    #[serde(default)]
    pub episodes: Option<u32>,
    /// `season_drop`: total CPU-hours of the season.
    #[serde(default)]
    pub cpu_hours: Option<f64>,
    /// `season_drop`: output files = chunk tasks over all episodes.
    #[serde(default)]
    pub output_files: Option<u32>,
    /// `season_drop`: time between episode submissions.
    #[serde(default)]
    pub episode_interval: Dur,

    // steady, ml_training
    /// First submission time (default 0).
    #[serde(default)]
    pub start: Dur,
    /// No submissions after this (default: the scenario's duration).
    #[serde(default)]
    pub end: Option<Dur>,
    /// `steady`: Poisson job arrival rate.
    #[serde(default)]
    pub jobs_per_hour: Option<f64>,
    /// `steady`: tasks per job.
    #[serde(default)]
    pub tasks_per_job: Option<u32>,
    /// `ml_training`: Poisson job arrival rate.
    #[serde(default)]
    pub jobs_per_day: Option<f64>,
    /// `ml_training`: tasks per job, all placed together.
    #[serde(default)]
    pub gang_size: Option<u32>,
}

fn default_tier() -> ebb_scheduler::Tier {
    ebb_scheduler::Tier::Flex
}
fn default_max_retries() -> u32 {
    3
}
fn default_stop_time() -> Dur {
    // An encoder flushes its current segment and exits in a few seconds.
    Dur::secs(5)
}

/// `disruption_budget = { max_percent = 10, window = "1h" }` (or `max_tasks`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    /// At most this many tasks per window.
    #[serde(default)]
    pub max_tasks: Option<u32>,
    /// At most this percentage of the job's tasks per window.
    #[serde(default)]
    pub max_percent: Option<u32>,
    /// The sliding window.
    pub window: Dur,
}

/// The batch workload generators.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadKind {
    /// A season of N episodes dropped at once, split into chunk tasks.
    SeasonDrop,
    /// Encoding jobs arriving all day (Poisson).
    Steady,
    /// Gang-scheduled GPU training jobs with checkpoints.
    MlTraining,
}

impl Scenario {
    /// Reads, parses and validates a scenario file.
    pub fn load(path: &Path) -> Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading scenario {}", path.display()))?;
        let mut sc =
            Scenario::parse(&text).with_context(|| format!("in scenario {}", path.display()))?;
        sc.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(sc)
    }

    /// Parses and validates scenario text (relative paths resolve against `.`).
    pub fn parse(text: &str) -> Result<Scenario> {
        // Every table, the simulator's own and the core's config types
        // embedded here (`[teams.*]`), denies unknown fields: a typo is an
        // error with its line, naming the key and the fields expected there.
        let sc: Scenario = toml::from_str(text).context("parsing TOML")?;
        sc.validate()?;
        Ok(sc)
    }

    fn validate(&self) -> Result<()> {
        ensure!(!self.name.trim().is_empty(), "`name` must not be empty");
        self.validate_core_tables()?;
        let s = &self.sim;
        ensure!(s.duration.0 > 0, "`sim.duration` must be greater than zero");
        ensure!(
            s.round_interval.0 > 0,
            "`sim.round_interval` must be greater than zero"
        );
        ensure!(
            s.sample_interval.0 > 0,
            "`sim.sample_interval` must be greater than zero"
        );
        ensure!(
            s.demand_step.0 > 0,
            "`sim.demand_step` must be greater than zero"
        );
        s.launch_latency.validate("`sim.launch_latency`")?;
        self.forecast.validate()?;

        ensure!(
            !self.fleet.regions.is_empty(),
            "`fleet.regions` must list at least one region"
        );
        let mut regions = BTreeMap::new();
        for (i, r) in self.fleet.regions.iter().enumerate() {
            ensure!(
                regions.insert(r.name.as_str(), i).is_none(),
                "`fleet.regions[{i}].name`: region `{}` listed twice",
                r.name
            );
            ensure!(
                r.utc_offset_hours.is_finite() && r.utc_offset_hours.abs() <= 14.0,
                "`fleet.regions[{i}].utc_offset_hours` must be within ±14"
            );
        }
        ensure!(
            !self.fleet.pools.is_empty(),
            "`fleet.pools` must list at least one pool"
        );
        let catalog = self.catalog()?;
        let mut pools = BTreeMap::new();
        for (i, p) in self.fleet.pools.iter().enumerate() {
            let at = format!("`fleet.pools[{i}]` ({})", p.id);
            ensure!(
                !p.id.trim().is_empty(),
                "`fleet.pools[{i}].id` must not be empty"
            );
            ensure!(
                pools.insert(p.id.as_str(), i).is_none(),
                "{at}: pool id listed twice"
            );
            ensure!(
                regions.contains_key(p.region.as_str()),
                "{at}.region: unknown region `{}` (not in fleet.regions)",
                p.region
            );
            ensure!(!p.zone.trim().is_empty(), "{at}.zone must not be empty");
            let h = &p.headroom;
            ensure!(
                h.daily_scaling_fraction.is_finite() && h.daily_scaling_fraction >= 0.0,
                "{at}.headroom.daily_scaling_fraction must be finite and non-negative"
            );
            ensure!(
                h.failover_multiplier.is_finite() && h.failover_multiplier >= 0.0,
                "{at}.headroom.failover_multiplier must be finite and non-negative"
            );
            if let Some(f) = h.failover_fixed_ie {
                ensure!(
                    f.is_finite() && f >= 0.0,
                    "{at}.headroom.failover_fixed_ie must be finite and non-negative"
                );
            }
            for (what, list) in [("reservations", &p.reservations), ("hosts", &p.hosts)] {
                for (j, tc) in list.iter().enumerate() {
                    ensure!(
                        catalog.get(&tc.instance_type).is_some(),
                        "{at}.{what}[{j}].instance_type: unknown instance type `{}` (known: {})",
                        tc.instance_type,
                        catalog
                            .types()
                            .map(|t| t.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    ensure!(
                        tc.count > 0,
                        "{at}.{what}[{j}].count must be greater than zero"
                    );
                }
            }
        }

        let n_hosts: u64 = self
            .fleet
            .pools
            .iter()
            .flat_map(|p| &p.hosts)
            .map(|h| u64::from(h.count))
            .sum();
        ensure!(
            n_hosts > 0,
            "`fleet.pools[*].hosts`: no pool has executor hosts, so no batch work could ever run"
        );
        ensure!(
            n_hosts <= MAX_HOSTS,
            "`fleet.pools[*].hosts`: {n_hosts} executor hosts in all; the simulator takes at most {MAX_HOSTS}"
        );
        let steps = |every: Dur| s.duration.0 / every.0.max(1) + 1;
        let n_reports = steps(s.demand_step) * self.demand.len() as u64;
        ensure!(
            n_reports <= MAX_PREBUILT_EVENTS,
            "`sim.demand_step`: {n_reports} streaming-demand reports over `sim.duration` ({}); at most {MAX_PREBUILT_EVENTS}: use a longer step",
            s.duration
        );
        let n_rows = steps(s.sample_interval) * self.fleet.pools.len() as u64;
        ensure!(
            n_rows <= MAX_PREBUILT_EVENTS,
            "`sim.sample_interval`: {n_rows} rows of pools.csv over `sim.duration` ({}); at most {MAX_PREBUILT_EVENTS}: use a longer interval",
            s.duration
        );

        let mut seen = BTreeMap::new();
        for (i, d) in self.demand.iter().enumerate() {
            let at = format!("`demand[{i}]` (pool {})", d.pool);
            ensure!(
                pools.contains_key(d.pool.as_str()),
                "{at}.pool: unknown pool `{}`",
                d.pool
            );
            ensure!(
                seen.insert(d.pool.as_str(), i).is_none(),
                "{at}: the pool has two demand curves"
            );
            ensure!(
                d.peak_ie.is_finite() && d.trough_ie.is_finite() && d.trough_ie >= 0.0,
                "{at}: `peak_ie` and `trough_ie` must be finite and non-negative"
            );
            ensure!(
                d.trough_ie <= d.peak_ie,
                "{at}: `trough_ie` exceeds `peak_ie`"
            );
            ensure!(
                d.noise.is_finite() && (0.0..1.0).contains(&d.noise),
                "{at}.noise must be in [0, 1)"
            );
            ensure!(
                d.peak_hour.is_finite() && (0.0..24.0).contains(&d.peak_hour),
                "{at}.peak_hour must be in [0, 24)"
            );
            match d.kind {
                DemandKind::Csv => {
                    ensure!(d.file.is_some(), "{at}.file is required for kind = \"csv\"");
                    ensure!(
                        !d.time_column.trim().is_empty() && !d.value_column.trim().is_empty(),
                        "{at}: `time_column` and `value_column` must not be empty"
                    );
                    ensure!(
                        d.time_unit.0 > 0,
                        "{at}.time_unit must be greater than zero"
                    );
                }
                DemandKind::Diurnal => {
                    ensure!(d.file.is_none(), "{at}.file is only for kind = \"csv\"")
                }
            }
        }
        for (i, f) in self.failover.iter().enumerate() {
            ensure!(
                regions.contains_key(f.region.as_str()),
                "`failover[{i}].region`: unknown region `{}`",
                f.region
            );
            ensure!(
                f.duration.0 > 0,
                "`failover[{i}].duration` must be greater than zero"
            );
            ensure!(
                f.at < s.duration,
                "`failover[{i}].at` ({}) is not before the run ends (`sim.duration` = {})",
                f.at,
                s.duration
            );
        }
        self.validate_faults(&pools)?;
        let mut names = BTreeMap::new();
        let mut n_tasks = 0.0;
        for (i, w) in self.workload.iter().enumerate() {
            if let Some(first) = names.insert(w.name.as_str(), i) {
                bail!(
                    "`workload[{i}].name`: `{}` is also the name of `workload[{first}]`; workload names must be unique (they name jobs and reports)",
                    w.name
                );
            }
            w.validate(i, s.duration)?;
            self.check_fits_some_host(i, w, &catalog)?;
            n_tasks += w.expected_tasks(s.duration);
        }
        ensure!(
            n_tasks <= MAX_TASKS as f64,
            "`workload`: about {n_tasks:.0} tasks expected over the run; the simulator takes at most {MAX_TASKS}"
        );
        Ok(())
    }

    fn validate_faults(&self, pools: &BTreeMap<&str, usize>) -> Result<()> {
        let f = &self.faults;
        for (v, key) in [
            (f.host_failures_per_day, "host_failures_per_day"),
            (f.host_drains_per_day, "host_drains_per_day"),
        ] {
            ensure!(
                v.is_finite() && v >= 0.0,
                "`faults.{key}` must be finite and non-negative"
            );
        }
        ensure!(
            (0.0..=1.0).contains(&f.launch_failure_probability),
            "`faults.launch_failure_probability` must be in [0, 1]"
        );
        ensure!(
            f.drain_duration.0 > 0,
            "`faults.drain_duration` must be greater than zero"
        );
        if let Some(r) = f.host_repair {
            ensure!(
                r.0 > 0,
                "`faults.host_repair` must be greater than zero when set"
            );
        }
        for (i, x) in f.scheduled.iter().enumerate() {
            let at = format!("`faults.scheduled[{i}]`");
            ensure!(
                pools.contains_key(x.pool.as_str()),
                "{at}.pool: unknown pool `{}`",
                x.pool
            );
            ensure!(
                x.at < self.sim.duration,
                "{at}.at ({}) is not before the run ends (`sim.duration` = {})",
                x.at,
                self.sim.duration
            );
            match x.kind {
                FaultKind::PoolLost => ensure!(
                    x.hosts.is_none(),
                    "{at}.hosts: `pool_lost` takes every host of the pool; use `host_lost` for some"
                ),
                _ => ensure!(
                    x.hosts.is_some_and(|n| n > 0),
                    "{at}.hosts is required (> 0) for kind = \"{:?}\"",
                    x.kind
                ),
            }
            if let Some(d) = x.duration {
                ensure!(d.0 > 0, "{at}.duration must be greater than zero when set");
            }
        }
        Ok(())
    }

    /// The instance type catalog the core will use: the built-in one with
    /// the scenario's `[market]` overrides.
    pub fn catalog(&self) -> Result<ebb_scheduler::Catalog> {
        let market: ebb_scheduler::MarketConfig =
            ebb_scheduler::MarketConfig::deserialize(toml::Value::Table(self.market.clone()))
                .context("`market`")?;
        ebb_scheduler::Catalog::builtin()
            .with_overrides(&market.catalog_overrides, &market.reference_instance_type)
            .context("`market.catalog_overrides` / `market.reference_instance_type`")
    }

    /// `[market]` and every `[policies.*]` deserialize into the core's
    /// types with no key left over, and the default policy exists.
    fn validate_core_tables(&self) -> Result<()> {
        strict::<ebb_scheduler::MarketConfig>(&self.market, "market")?;
        for (name, table) in &self.policies {
            strict::<SchedulerConfig>(table, &format!("policies.{name}"))?;
        }
        self.scheduler_config(&self.sim.policy)
            .context("`sim.policy`")?;
        Ok(())
    }

    /// Refuses a workload whose tasks no executor host of the fleet could
    /// ever hold: they would wait forever and make every figure misleading.
    fn check_fits_some_host(
        &self,
        i: usize,
        w: &WorkloadSpec,
        catalog: &ebb_scheduler::Catalog,
    ) -> Result<()> {
        let at = format!("`workload[{i}]` ({})", w.name);
        let types: Vec<&ebb_scheduler::InstanceType> = self
            .fleet
            .pools
            .iter()
            .flat_map(|p| &p.hosts)
            .filter_map(|h| catalog.get(&h.instance_type))
            .collect();
        if let Some(model) = &w.gpu_model {
            let mut models: Vec<&str> = types
                .iter()
                .filter_map(|t| t.gpu_model.as_deref())
                .collect();
            models.sort_unstable();
            models.dedup();
            ensure!(
                models.contains(&model.as_str()),
                "{at}.gpu_model: no executor host in the fleet has GPU model `{model}` (the fleet has: {})",
                if models.is_empty() {
                    "no GPU hosts".to_string()
                } else {
                    models.join(", ")
                }
            );
        }
        let fits = |t: &&ebb_scheduler::InstanceType| {
            f64::from(t.vcpus) >= w.cpus
                && f64::from(t.memory_gib) >= w.memory_gib
                && t.gpus >= w.gpus
                && w.gpu_model
                    .as_ref()
                    .is_none_or(|m| t.gpu_model.as_ref() == Some(m))
        };
        ensure!(
            types.iter().any(fits),
            "{at}: no executor host type in the fleet can hold one task ({} vCPUs, {} GiB{}{})",
            w.cpus,
            w.memory_gib,
            if w.gpus > 0 {
                format!(", {} GPUs", w.gpus)
            } else {
                String::new()
            },
            w.gpu_model
                .as_ref()
                .map_or(String::new(), |m| format!(" of model {m}"))
        );
        Ok(())
    }

    /// The scheduler configuration of policy `name`: a scenario-defined
    /// policy, else a built-in one; the scenario's teams are added.
    pub fn scheduler_config(&self, name: &str) -> Result<SchedulerConfig> {
        let policy = match self.policies.get(name) {
            Some(table) => table.clone(),
            None => crate::policy::builtin(name).with_context(|| {
                let mut names: Vec<&str> = self.policies.keys().map(String::as_str).collect();
                names.extend(crate::policy::BUILTIN.iter().map(|(n, _)| *n));
                format!("unknown policy `{name}` (known: {})", names.join(", "))
            })?,
        };
        // The scenario's market knobs, then the policy on top.
        let mut table = toml::Table::new();
        table.insert("market".into(), toml::Value::Table(self.market.clone()));
        crate::policy::merge(&mut table, &policy);
        let mut config = SchedulerConfig::deserialize(toml::Value::Table(table)).with_context(|| {
            format!(
                "policy `{name}` (over the scenario's `[market]`) is not a valid scheduler configuration"
            )
        })?;
        for (team, tc) in &self.teams {
            config.teams.insert(TeamId::from(team.as_str()), tc.clone());
        }
        Ok(config)
    }

    /// Resolves a path from the scenario file against its directory.
    pub fn resolve(&self, rel: &str) -> PathBuf {
        self.base_dir.join(rel)
    }
}

impl WorkloadSpec {
    /// Tasks this workload submits over a run of `duration`, on average.
    pub fn expected_tasks(&self, duration: Dur) -> f64 {
        let span_h = self.end.unwrap_or(duration).0.saturating_sub(self.start.0) as f64 / 3.6e6;
        match self.kind {
            WorkloadKind::SeasonDrop => f64::from(self.output_files.unwrap_or(0)),
            WorkloadKind::Steady => {
                self.jobs_per_hour.unwrap_or(0.0)
                    * span_h
                    * f64::from(self.tasks_per_job.unwrap_or(0))
            }
            WorkloadKind::MlTraining => {
                self.jobs_per_day.unwrap_or(0.0) / 24.0
                    * span_h
                    * f64::from(self.gang_size.unwrap_or(0))
            }
        }
    }

    fn validate(&self, i: usize, duration: Dur) -> Result<()> {
        let at = format!("`workload[{i}]` ({})", self.name);
        ensure!(
            !self.name.trim().is_empty(),
            "`workload[{i}].name` must not be empty"
        );
        ensure!(!self.team.trim().is_empty(), "{at}.team must not be empty");
        ensure!(
            self.cpus.is_finite() && self.cpus > 0.0,
            "{at}.cpus must be greater than zero"
        );
        ensure!(
            self.memory_gib.is_finite() && self.memory_gib > 0.0,
            "{at}.memory_gib must be greater than zero"
        );
        if let Some(b) = self.bid {
            ensure!(
                b.is_finite() && b >= 0.0,
                "{at}.bid must be finite and non-negative"
            );
        }
        ensure!(
            (0.0..=1.0).contains(&self.failure_probability),
            "{at}.failure_probability must be in [0, 1]"
        );
        if self.checkpoint_interval == Some(Dur(0)) {
            bail!("{at}.checkpoint_interval must be greater than zero when set");
        }
        if self.gpu_model.is_some() {
            ensure!(self.gpus > 0, "{at}.gpu_model needs `gpus` > 0");
        }
        if self.checkpoint_interval.is_none() {
            ensure!(
                self.checkpoint_write.0 == 0 && self.checkpoint_restore.0 == 0,
                "{at}: `checkpoint_write` and `checkpoint_restore` need a `checkpoint_interval`"
            );
        }
        if let Some(r) = &self.runtime {
            r.validate(&format!("{at}.runtime"))?;
        }
        if let Some(b) = &self.disruption_budget {
            ensure!(
                b.max_tasks.is_some() != b.max_percent.is_some(),
                "{at}.disruption_budget: set exactly one of `max_tasks` and `max_percent`"
            );
            ensure!(
                b.max_percent.is_none_or(|p| p <= 100),
                "{at}.disruption_budget.max_percent must be at most 100"
            );
            ensure!(
                b.window.0 > 0,
                "{at}.disruption_budget.window must be greater than zero"
            );
        }
        let need = |v: bool, field: &str| -> Result<()> {
            ensure!(v, "{at}.{field} is required for kind = \"{:?}\"", self.kind);
            Ok(())
        };
        let end = self.end.unwrap_or(duration);
        ensure!(
            end <= duration,
            "{at}.end ({end}) is after the run ends (`sim.duration` = {duration}); jobs after the end would never be submitted"
        );
        let per_job_limit = ebb_scheduler::scheduler::MAX_TASKS_PER_JOB;
        let tasks_per_job = match self.kind {
            WorkloadKind::SeasonDrop => self
                .output_files
                .zip(self.episodes)
                .map(|(f, e)| f.div_ceil(e.max(1))),
            WorkloadKind::Steady => self.tasks_per_job,
            WorkloadKind::MlTraining => self.gang_size,
        };
        if let Some(n) = tasks_per_job {
            let field = match self.kind {
                WorkloadKind::SeasonDrop => "output_files",
                WorkloadKind::Steady => "tasks_per_job",
                WorkloadKind::MlTraining => "gang_size",
            };
            ensure!(
                n <= per_job_limit,
                "{at}.{field}: {n} tasks per job; the scheduler takes at most {per_job_limit} per job"
            );
        }
        match self.kind {
            WorkloadKind::SeasonDrop => {
                need(self.at.is_some(), "at")?;
                let drop = self.at.unwrap_or_default();
                ensure!(
                    drop < duration,
                    "{at}.at ({drop}) is not before the run ends (`sim.duration` = {duration}); the season would never be submitted"
                );
                let last = u64::from(self.episodes.unwrap_or(1).saturating_sub(1))
                    .saturating_mul(self.episode_interval.0)
                    .saturating_add(drop.0);
                ensure!(
                    last < duration.0,
                    "{at}.episode_interval: the last episode would be submitted at {}, after the run ends (`sim.duration` = {duration})",
                    Dur(last)
                );
                need(self.episodes.is_some_and(|e| e > 0), "episodes (> 0)")?;
                need(
                    self.cpu_hours.is_some_and(|c| c.is_finite() && c > 0.0),
                    "cpu_hours (> 0)",
                )?;
                let files = self.output_files.unwrap_or(0);
                need(
                    files >= self.episodes.unwrap_or(0) && files > 0,
                    "output_files (≥ episodes)",
                )?;
            }
            WorkloadKind::Steady => {
                need(self.runtime.is_some(), "runtime")?;
                need(
                    self.jobs_per_hour.is_some_and(|r| r.is_finite() && r > 0.0),
                    "jobs_per_hour (> 0)",
                )?;
                need(
                    self.tasks_per_job.is_some_and(|n| n > 0),
                    "tasks_per_job (> 0)",
                )?;
                ensure!(self.start < end, "{at}: `start` must be before `end`");
            }
            WorkloadKind::MlTraining => {
                need(self.runtime.is_some(), "runtime")?;
                need(
                    self.jobs_per_day.is_some_and(|r| r.is_finite() && r > 0.0),
                    "jobs_per_day (> 0)",
                )?;
                need(self.gang_size.is_some_and(|n| n > 0), "gang_size (> 0)")?;
                ensure!(self.start < end, "{at}: `start` must be before `end`");
            }
        }
        Ok(())
    }
}

/// Most executor hosts in one scenario: 20x the 50,000-host fleet that the
/// largest benchmark scenario targets; beyond it setup alone takes minutes.
pub const MAX_HOSTS: u64 = 1_000_000;

/// Most tasks over one run: the simulator and the core keep about 100 bytes
/// per task, so 20 million is about 2 GiB, within the 24 GiB machine with
/// room for the rest; 4x the 5M-task scenario that issue 13 targets.
pub const MAX_TASKS: u64 = 20_000_000;

/// Most demand reports, or time-series rows, over one run: each is kept in
/// memory (an event or a row of ~100 bytes), so 10 million is about 1 GiB.
pub const MAX_PREBUILT_EVENTS: u64 = 10_000_000;

/// Deserializes `table` (found at `at` in the scenario) into `T`. The
/// core's config types deny unknown fields, so a typo anywhere inside is an
/// error naming the key and the fields it could have been.
fn strict<T: serde::de::DeserializeOwned>(table: &toml::Table, at: &str) -> Result<T> {
    T::deserialize(toml::Value::Table(table.clone())).with_context(|| format!("`{at}`"))
}
