//! Sweep mode: several policies × several seeds of one scenario, run in
//! parallel on all cores and compared in one report (`sweep.md`,
//! `sweep.csv`, `sweep.json`, `sweep.svg`).
//!
//! Every policy sees the same workloads and demand for a given seed (they
//! are drawn from seed-only streams), so differences between policies at one
//! seed are the policy's doing; the spread over seeds shows how robust it is.
//! Runs share nothing, and results are collected in (policy, seed) order, so
//! a parallel sweep reports exactly what a sequential one does.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;

use crate::engine::{Progress, RunOptions, run as run_one};
use crate::metrics::Summary;
use crate::plot::{self, SweepBar};
use crate::scenario::Scenario;

/// A compared metric: a plain CSV column name, a title with its unit, and
/// how to read it from a summary.
struct Metric {
    column: &'static str,
    title: &'static str,
    /// A count: written without decimals.
    integer: bool,
    get: fn(&Summary) -> Option<f64>,
}

const METRICS: [Metric; 13] = [
    Metric {
        column: "harvest_pct",
        title: "harvested share of supply, within supply (%)",
        integer: false,
        get: |s| {
            s.capacity
                .market
                .then_some(100.0 * s.capacity.harvested_share)
        },
    },
    Metric {
        column: "leased_beyond_supply_ie_h",
        title: "leased beyond supply (IE-h)",
        integer: false,
        get: |s| {
            s.capacity
                .market
                .then_some(s.capacity.leased_beyond_supply_ie_h)
        },
    },
    Metric {
        column: "goodput_cpu_h",
        title: "goodput (CPU-h)",
        integer: false,
        get: |s| Some(s.goodput_cpu_h),
    },
    Metric {
        column: "lost_preempt_pct",
        title: "work lost to preemption (% of goodput)",
        integer: false,
        get: |s| Some(s.lost_preempt_pct),
    },
    Metric {
        column: "preemptions",
        title: "preemptions",
        integer: true,
        get: |s| Some(s.n_preemptions as f64),
    },
    Metric {
        column: "job_wait_p90_h",
        title: "job wait p90, never-launched jobs included (h)",
        integer: false,
        get: |s| (s.job_wait_h.n > 0).then_some(s.job_wait_h.p90),
    },
    Metric {
        column: "jobs_never_launched",
        title: "jobs never launched",
        integer: true,
        get: |s| Some(s.n_jobs_never_launched as f64),
    },
    Metric {
        column: "job_completion_p90_h",
        title: "job completion p90 (h)",
        integer: false,
        get: |s| (s.job_completion_h.n > 0).then_some(s.job_completion_h.p90),
    },
    Metric {
        column: "season_makespan_h",
        title: "first season makespan (h)",
        integer: false,
        get: |s| s.seasons.first().and_then(|x| x.makespan_h),
    },
    Metric {
        column: "hosts_over_bound",
        title: "hosts used ÷ packing lower bound",
        integer: false,
        get: |s| (s.hosts.lower_bound_mean > 0.0).then_some(s.hosts.used_over_bound),
    },
    Metric {
        column: "violations_beyond_grace",
        title: "headroom violations lasting beyond one grace",
        integer: true,
        get: |s| {
            s.capacity
                .market
                .then_some(s.capacity.violations_beyond_grace as f64)
        },
    },
    Metric {
        column: "violation_ie_min_beyond_grace",
        title: "headroom violation beyond one grace (IE-min)",
        integer: false,
        get: |s| {
            s.capacity
                .market
                .then_some(s.capacity.violation_ie_min_beyond_grace)
        },
    },
    Metric {
        column: "shortfall_ie_h",
        title: "headroom shortfall: streaming + headroom above reserved (IE-h)",
        integer: false,
        get: |s| s.capacity.market.then_some(s.capacity.shortfall_ie_h),
    },
];

/// Nearest-rank percentile of sorted `v`.
fn pct(v: &[f64], p: f64) -> f64 {
    v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

/// Runs every policy × seed on `threads` threads (default: one per core)
/// and returns the summaries grouped by policy, in the order given, seeds
/// ascending. A run whose conservation check fails fails the sweep.
pub fn summaries(
    sc: &Scenario,
    policies: &[String],
    n_seeds: u64,
    threads: Option<usize>,
    bar: &ProgressBar,
) -> Result<Vec<(String, Vec<Summary>)>> {
    ensure!(!policies.is_empty(), "--policies: name at least one policy");
    ensure!(n_seeds > 0, "--seeds must be at least 1");
    for (i, p) in policies.iter().enumerate() {
        ensure!(
            !policies[..i].contains(p),
            "--policies: `{p}` is listed twice"
        );
        sc.scheduler_config(p)
            .with_context(|| format!("--policies: `{p}`"))?;
    }
    let runs: Vec<(usize, u64)> = (0..policies.len())
        .flat_map(|p| (0..n_seeds).map(move |k| (p, sc.sim.seed + k)))
        .collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.unwrap_or(0))
        .build()
        .context("starting the sweep's threads")?;
    let results: Vec<Result<Summary>> = pool.install(|| {
        runs.par_iter()
            .map(|&(p, seed)| {
                let policy = &policies[p];
                let opts = RunOptions {
                    seed,
                    policy: policy.clone(),
                    progress: Progress::Shared(bar.clone()),
                    ..RunOptions::default()
                };
                let out =
                    run_one(sc, &opts).with_context(|| format!("policy {policy}, seed {seed}"))?;
                ensure!(
                    out.conservation_errors.is_empty(),
                    "policy {policy}, seed {seed}: conservation check failed: {}",
                    out.conservation_errors.join("; ")
                );
                let s = out.summary;
                bar.suspend(|| {
                    eprintln!(
                        "  {policy:<18} seed {seed:<4} goodput {:>10.0} CPU-h  preemptions {:>6}  trace {}  ({:.1} s)",
                        s.goodput_cpu_h,
                        s.n_preemptions,
                        &s.trace_hash[..12],
                        s.perf.wall_s
                    )
                });
                Ok(s)
            })
            .collect()
    });
    let mut grouped: Vec<(String, Vec<Summary>)> =
        policies.iter().map(|p| (p.clone(), Vec::new())).collect();
    for (&(p, _), r) in runs.iter().zip(results) {
        grouped[p].1.push(r?);
    }
    Ok(grouped)
}

/// Runs `policies × seeds` in parallel and writes the comparison into `dir`;
/// returns the report (`sweep.md`'s text and where the outputs are).
pub fn run(
    sc: &Scenario,
    policies: &[String],
    n_seeds: u64,
    dir: &Path,
    threads: Option<usize>,
) -> Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let hours = sc.sim.duration.0.div_ceil(3_600_000);
    let n_runs = policies.len() as u64 * n_seeds;
    let draw = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(n_runs * hours), draw);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} sweep: simulated {pos}/{len} h over {msg} [{bar:40}] {percent}% eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(format!("{n_runs} runs"));
    let results = summaries(sc, policies, n_seeds, threads, &bar);
    bar.finish_and_clear();
    let results = results?;
    write_report(sc, &results, n_seeds, dir)
}

/// Writes `sweep.csv`, `sweep.json`, `sweep.md` and `sweep.svg`.
fn write_report(
    sc: &Scenario,
    results: &[(String, Vec<Summary>)],
    n_seeds: u64,
    dir: &Path,
) -> Result<String> {
    let n_policies = results.len();
    // sweep.csv: one row per run.
    let mut w = csv::Writer::from_path(dir.join("sweep.csv")).context("creating sweep.csv")?;
    let mut header = vec!["policy".to_string(), "seed".into(), "trace_hash".into()];
    header.extend(METRICS.iter().map(|m| m.column.to_string()));
    w.write_record(&header)?;
    for (policy, runs) in results {
        for s in runs {
            let mut rec = vec![policy.clone(), s.seed.to_string(), s.trace_hash.clone()];
            rec.extend(METRICS.iter().map(|m| {
                (m.get)(s).map_or(String::new(), |v| {
                    if m.integer {
                        format!("{}", v.round() as i64)
                    } else {
                        format!("{v:.6}")
                    }
                })
            }));
            w.write_record(&rec)?;
        }
    }
    w.flush()?;
    let all: Vec<&Summary> = results.iter().flat_map(|(_, r)| r).collect();
    std::fs::write(
        dir.join("sweep.json"),
        serde_json::to_string_pretty(&all).expect("summaries serialize") + "\n",
    )
    .context("writing sweep.json")?;

    // sweep.md and sweep.svg: per metric and policy, p50 / p90 / min / max over seeds.
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Sweep: {} — {} policies × {} seeds (seeds {}..={})\n",
        sc.name,
        n_policies,
        n_seeds,
        sc.sim.seed,
        sc.sim.seed + n_seeds - 1
    );
    let _ = writeln!(
        md,
        "Each cell: p50 [p90] (min–max) over seeds. Same seed ⇒ same workload and demand for every policy.\n"
    );
    let mut panels = Vec::new();
    for m in &METRICS {
        let mut bars = Vec::new();
        let _ = writeln!(
            md,
            "## {} (`{}`)\n\n| policy | p50 | p90 | min | max |\n|---|---:|---:|---:|---:|",
            m.title, m.column
        );
        for (policy, runs) in results {
            let mut v: Vec<f64> = runs.iter().filter_map(|s| (m.get)(s)).collect();
            if v.is_empty() {
                let _ = writeln!(md, "| {policy} | n/a | n/a | n/a | n/a |");
                continue;
            }
            v.sort_by(f64::total_cmp);
            let bar = SweepBar {
                policy: policy.clone(),
                p50: pct(&v, 0.5),
                p90: pct(&v, 0.9),
                min: v[0],
                max: v[v.len() - 1],
            };
            let cell = |v: f64| {
                if m.integer {
                    format!("{}", v.round() as i64)
                } else {
                    format!("{v:.3}")
                }
            };
            let _ = writeln!(
                md,
                "| {policy} | {} | {} | {} | {} |",
                cell(bar.p50),
                cell(bar.p90),
                cell(bar.min),
                cell(bar.max)
            );
            bars.push(bar);
        }
        md.push('\n');
        if !bars.is_empty() {
            panels.push((m.title.to_string(), bars));
        }
    }
    std::fs::write(dir.join("sweep.md"), &md).context("writing sweep.md")?;
    plot::sweep(
        &dir.join("sweep.svg"),
        &format!(
            "{}: {} policies × {} seeds — bar min–max, ● p50, ✕ p90",
            sc.name, n_policies, n_seeds
        ),
        &panels,
    )?;
    let _ = writeln!(md, "outputs: {}", dir.display());
    Ok(md)
}
