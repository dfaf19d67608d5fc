//! Batch workload generators: encoding season drops, steady daily encoding
//! and gang-scheduled ML training. Everything is drawn up front from the
//! seed's `workload/<name>` stream, so every policy sees the same jobs.

use anyhow::Result;
use ebb_scheduler::{
    BudgetLimit, Constraint, DisruptionBudget, JobId, JobSpec, Price, Resources, RetryPolicy,
    TeamId,
};
use rand::Rng;
use rand_distr::{Distribution, Exp, LogNormal};

use crate::duration::Dur;
use crate::rng::SimRng;
use crate::scenario::{DistSpec, Scenario, WorkloadKind, WorkloadSpec};

/// A job the simulator will submit, with the work each of its tasks needs.
#[derive(Clone, Debug)]
pub struct SimJob {
    /// What is submitted to the core.
    pub spec: JobSpec,
    /// Submission time.
    pub submit_ms: u64,
    /// Run time each task needs to complete, in milliseconds.
    pub work_ms: Vec<u64>,
    /// Index of the generating `[[workload]]`.
    pub workload_idx: usize,
    /// Probability that one run fails.
    pub failure_probability: f64,
    /// Time a task needs to exit after SIGTERM.
    pub stop_ms: u64,
    /// Time to write one checkpoint.
    pub checkpoint_write_ms: u64,
    /// Time to restore from a checkpoint on resume.
    pub checkpoint_restore_ms: u64,
}

/// Generates every job of the scenario, sorted by submission time, with
/// job ids `0..n` in that order.
pub fn build(sc: &Scenario, seed: u64) -> Result<Vec<SimJob>> {
    let mut jobs = Vec::new();
    for (idx, w) in sc.workload.iter().enumerate() {
        let mut rng = crate::rng::stream(seed, &format!("workload/{}", w.name));
        match w.kind {
            WorkloadKind::SeasonDrop => season_drop(w, idx, &mut rng, &mut jobs),
            WorkloadKind::Steady => steady(sc, w, idx, &mut rng, &mut jobs),
            WorkloadKind::MlTraining => ml_training(sc, w, idx, &mut rng, &mut jobs),
        }
    }
    for j in &mut jobs {
        let w = &sc.workload[j.workload_idx];
        let declare = w
            .declare_runtime
            .unwrap_or(w.kind != WorkloadKind::MlTraining);
        if declare && !j.work_ms.is_empty() {
            let mut work = j.work_ms.clone();
            work.sort_unstable();
            let p90 = work[(work.len() * 9).div_ceil(10).saturating_sub(1)];
            j.spec.expected_runtime = Some(ebb_scheduler::DurationMs::from_millis(p90.max(1)));
        }
    }
    // Stable: jobs submitted at the same instant keep generator order.
    jobs.sort_by_key(|j| j.submit_ms);
    for (i, j) in jobs.iter_mut().enumerate() {
        j.spec.id = JobId(i as u64);
    }
    Ok(jobs)
}

fn template(w: &WorkloadSpec, name: String, n_tasks: u32) -> JobSpec {
    let mut hard = Vec::new();
    if let Some(m) = &w.gpu_model {
        hard.push(Constraint::GpuModel(m.clone()));
    }
    if let Some(max_skew) = w.zone_balance_max_skew {
        hard.push(Constraint::ZoneBalance { max_skew });
    }
    JobSpec {
        id: JobId(0),
        request_key: None,
        expected_runtime: None,
        name,
        team: TeamId::from(w.team.as_str()),
        tier: w.tier,
        priority: w.priority,
        bid: w.bid.and_then(Price::new),
        request: Resources {
            cpu_millis: (w.cpus * 1000.0).round() as u64,
            memory_mib: (w.memory_gib * 1024.0).round() as u64,
            gpus: u64::from(w.gpus),
            ..Resources::default()
        },
        n_tasks,
        hard_constraints: hard,
        soft_constraints: Vec::new(),
        gang: w.gang.unwrap_or(w.kind == WorkloadKind::MlTraining),
        retry: RetryPolicy {
            max_retries: w.max_retries,
            ..RetryPolicy::default()
        },
        disruption_budget: w.disruption_budget.as_ref().map(|b| DisruptionBudget {
            limit: match (b.max_tasks, b.max_percent) {
                (Some(n), _) => BudgetLimit::MaxTasks(n),
                (None, p) => BudgetLimit::MaxPercent(p.expect("validated")),
            },
            window: ebb_scheduler::DurationMs::from_millis(b.window.0),
        }),
        checkpoint_interval: w
            .checkpoint_interval
            .map(|d| ebb_scheduler::DurationMs::from_millis(d.0)),
    }
}

fn push(
    jobs: &mut Vec<SimJob>,
    w: &WorkloadSpec,
    idx: usize,
    spec: JobSpec,
    submit_ms: u64,
    work_ms: Vec<u64>,
) {
    jobs.push(SimJob {
        spec,
        submit_ms,
        work_ms,
        workload_idx: idx,
        failure_probability: w.failure_probability,
        stop_ms: w.stop_time.0,
        checkpoint_write_ms: w.checkpoint_write.0,
        checkpoint_restore_ms: w.checkpoint_restore.0,
    });
}

/// Draws one duration in milliseconds, at least `min_ms`.
pub fn draw(d: &DistSpec, rng: &mut SimRng, min_ms: u64) -> u64 {
    let ms = match d {
        DistSpec::Fixed { value } => value.0 as f64,
        DistSpec::Uniform { min, max } => {
            if min == max {
                min.0 as f64
            } else {
                rng.random_range(min.0 as f64..=max.0 as f64)
            }
        }
        DistSpec::Exponential { mean } => Exp::new(1.0 / (mean.0 as f64).max(1.0))
            .expect("positive rate")
            .sample(rng),
        DistSpec::Lognormal { mean, sigma } => {
            // E[X] = exp(mu + sigma²/2) = mean.
            let mu = (mean.0 as f64).max(1.0).ln() - sigma * sigma / 2.0;
            LogNormal::new(mu, *sigma)
                .expect("validated sigma")
                .sample(rng)
        }
    };
    (ms.round() as u64).max(min_ms)
}

/// Shortest task run: a zero-length task would finish before it started.
const MIN_TASK_MS: u64 = 1_000;

fn season_drop(w: &WorkloadSpec, idx: usize, rng: &mut SimRng, jobs: &mut Vec<SimJob>) {
    let episodes = w.episodes.expect("validated");
    let files = w.output_files.expect("validated");
    let cpu_hours = w.cpu_hours.expect("validated");
    let at = w.at.expect("validated").0;
    // Mean chunk runtime so that the season totals `cpu_hours`.
    let mean_ms = cpu_hours / f64::from(files) / w.cpus * 3_600_000.0;
    let shape = w.runtime.clone().unwrap_or(DistSpec::Lognormal {
        mean: Dur(1),
        sigma: 0.4,
    });
    let scaled = match shape {
        DistSpec::Lognormal { sigma, .. } => DistSpec::Lognormal {
            mean: Dur(mean_ms.round() as u64),
            sigma,
        },
        DistSpec::Exponential { .. } => DistSpec::Exponential {
            mean: Dur(mean_ms.round() as u64),
        },
        DistSpec::Fixed { .. } => DistSpec::Fixed {
            value: Dur(mean_ms.round() as u64),
        },
        DistSpec::Uniform { min, max } => {
            // Keep the relative spread, move the mean.
            let m = (min.0 + max.0) as f64 / 2.0;
            let k = if m > 0.0 { mean_ms / m } else { 1.0 };
            DistSpec::Uniform {
                min: Dur((min.0 as f64 * k) as u64),
                max: Dur((max.0 as f64 * k) as u64),
            }
        }
    };
    for e in 0..episodes {
        let n = files / episodes + u32::from(e < files % episodes);
        let work = (0..n).map(|_| draw(&scaled, rng, MIN_TASK_MS)).collect();
        let spec = template(w, format!("{}/episode-{}", w.name, e + 1), n);
        push(
            jobs,
            w,
            idx,
            spec,
            at + u64::from(e) * w.episode_interval.0,
            work,
        );
    }
}

/// Poisson arrivals at `per_ms` in `[start, end)`.
fn arrivals(rng: &mut SimRng, per_ms: f64, start: u64, end: u64) -> Vec<u64> {
    let gap = Exp::new(per_ms).expect("positive rate");
    let mut t = start as f64;
    let mut out = Vec::new();
    loop {
        t += gap.sample(rng);
        if t >= end as f64 {
            return out;
        }
        out.push(t as u64);
    }
}

fn steady(sc: &Scenario, w: &WorkloadSpec, idx: usize, rng: &mut SimRng, jobs: &mut Vec<SimJob>) {
    let end = w.end.unwrap_or(sc.sim.duration).0;
    let rate = w.jobs_per_hour.expect("validated") / 3_600_000.0;
    let n = w.tasks_per_job.expect("validated");
    let runtime = w.runtime.as_ref().expect("validated");
    for (k, t) in arrivals(rng, rate, w.start.0, end).into_iter().enumerate() {
        let work = (0..n).map(|_| draw(runtime, rng, MIN_TASK_MS)).collect();
        let spec = template(w, format!("{}/{}", w.name, k + 1), n);
        push(jobs, w, idx, spec, t, work);
    }
}

fn ml_training(
    sc: &Scenario,
    w: &WorkloadSpec,
    idx: usize,
    rng: &mut SimRng,
    jobs: &mut Vec<SimJob>,
) {
    let end = w.end.unwrap_or(sc.sim.duration).0;
    let rate = w.jobs_per_day.expect("validated") / 86_400_000.0;
    let n = w.gang_size.expect("validated");
    let runtime = w.runtime.as_ref().expect("validated");
    for (k, t) in arrivals(rng, rate, w.start.0, end).into_iter().enumerate() {
        // Data-parallel workers advance in lockstep: one runtime for the gang.
        let work_ms = draw(runtime, rng, MIN_TASK_MS);
        let spec = template(w, format!("{}/{}", w.name, k + 1), n);
        push(jobs, w, idx, spec, t, vec![work_ms; n as usize]);
    }
}
