//! Sweep mode: several policies × several seeds of one scenario, compared in
//! one report (`sweep.md`, `sweep.csv`, `sweep.json`, `sweep.svg`).
//!
//! Every policy sees the same workloads and demand for a given seed (they
//! are drawn from seed-only streams), so differences between policies at one
//! seed are the policy's doing; the spread over seeds shows how robust it is.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, ensure};

use crate::engine::{RunOptions, run as run_one};
use crate::metrics::Summary;
use crate::plot::{self, SweepBar};
use crate::scenario::Scenario;

/// A compared metric: name, unit, and how to read it from a summary.
struct Metric {
    name: &'static str,
    get: fn(&Summary) -> Option<f64>,
}

const METRICS: [Metric; 8] = [
    Metric {
        name: "harvested share of idle reserved IE-h (%)",
        get: |s| {
            s.capacity
                .market
                .then_some(100.0 * s.capacity.harvested_share)
        },
    },
    Metric {
        name: "batch goodput (CPU-h)",
        get: |s| Some(s.goodput_cpu_h),
    },
    Metric {
        name: "work lost to preemption (% of goodput)",
        get: |s| Some(s.lost_preempt_pct),
    },
    Metric {
        name: "preemptions",
        get: |s| Some(s.n_preemptions as f64),
    },
    Metric {
        name: "job completion p90 (h)",
        get: |s| (s.job_completion_h.n > 0).then_some(s.job_completion_h.p90),
    },
    Metric {
        name: "first season makespan (h)",
        get: |s| s.seasons.first().and_then(|x| x.makespan_h),
    },
    Metric {
        name: "hosts used ÷ packing lower bound",
        get: |s| (s.hosts.lower_bound_mean > 0.0).then_some(s.hosts.used_over_bound),
    },
    Metric {
        name: "headroom violations (IE-min)",
        get: |s| {
            s.capacity
                .market
                .then_some(s.capacity.headroom_violation_ie_min)
        },
    },
];

/// Nearest-rank percentile of sorted `v`.
fn pct(v: &[f64], p: f64) -> f64 {
    v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

/// Runs `policies × seeds` and writes the comparison into `dir`.
pub fn run(sc: &Scenario, policies: &[String], n_seeds: u64, dir: &Path) -> Result<()> {
    ensure!(!policies.is_empty(), "--policies: name at least one policy");
    ensure!(n_seeds > 0, "--seeds must be at least 1");
    for p in policies {
        sc.scheduler_config(p)?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut results: Vec<(String, Vec<Summary>)> = Vec::new();
    for policy in policies {
        let mut runs = Vec::new();
        for k in 0..n_seeds {
            let opts = RunOptions {
                seed: sc.sim.seed + k,
                policy: policy.clone(),
                progress: false,
            };
            let out = run_one(sc, &opts)
                .with_context(|| format!("policy {policy}, seed {}", opts.seed))?;
            ensure!(
                out.conservation_errors.is_empty(),
                "policy {policy}, seed {}: conservation check failed: {}",
                opts.seed,
                out.conservation_errors.join("; ")
            );
            eprintln!(
                "  {policy:<18} seed {:<4} goodput {:>10.0} CPU-h  preemptions {:>6}  trace {}  ({:.1} s)",
                opts.seed,
                out.summary.goodput_cpu_h,
                out.summary.n_preemptions,
                &out.summary.trace_hash[..12],
                out.summary.perf.wall_s
            );
            runs.push(out.summary);
        }
        results.push((policy.clone(), runs));
    }

    // sweep.csv: one row per run.
    let mut w = csv::Writer::from_path(dir.join("sweep.csv")).context("creating sweep.csv")?;
    let mut header = vec!["policy".to_string(), "seed".into(), "trace_hash".into()];
    header.extend(METRICS.iter().map(|m| m.name.to_string()));
    w.write_record(&header)?;
    for (policy, runs) in &results {
        for s in runs {
            let mut rec = vec![policy.clone(), s.seed.to_string(), s.trace_hash.clone()];
            rec.extend(
                METRICS
                    .iter()
                    .map(|m| (m.get)(s).map_or(String::new(), |v| format!("{v:.6}"))),
            );
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
        policies.len(),
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
            "## {}\n\n| policy | p50 | p90 | min | max |\n|---|---:|---:|---:|---:|",
            m.name
        );
        for (policy, runs) in &results {
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
            let _ = writeln!(
                md,
                "| {policy} | {:.3} | {:.3} | {:.3} | {:.3} |",
                bar.p50, bar.p90, bar.min, bar.max
            );
            bars.push(bar);
        }
        md.push('\n');
        if !bars.is_empty() {
            panels.push((m.name.to_string(), bars));
        }
    }
    std::fs::write(dir.join("sweep.md"), &md).context("writing sweep.md")?;
    plot::sweep(
        &dir.join("sweep.svg"),
        &format!(
            "{}: {} policies × {} seeds — bar min–max, ● p50, ✕ p90",
            sc.name,
            policies.len(),
            n_seeds
        ),
        &panels,
    )?;
    print!("{md}");
    println!("outputs: {}", dir.display());
    Ok(())
}
