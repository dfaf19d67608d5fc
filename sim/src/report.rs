//! Run outputs: the summary table on stdout, `summary.json`, `pools.csv`,
//! `fleet.csv` and `jobs.csv`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::engine::{Outcome, RunOptions};
use crate::metrics::{Pctl, Summary};
use crate::scenario::Scenario;

/// Writes every output file of a run into `dir`.
pub fn write_all(out: &Outcome, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::to_string_pretty(&out.summary).expect("summary serializes");
    let path = dir.join("summary.json");
    std::fs::write(&path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    write_csv(&dir.join("pools.csv"), &out.pool_series)?;
    write_csv(&dir.join("fleet.csv"), &out.fleet_series)?;
    write_csv(&dir.join("jobs.csv"), &out.jobs)?;
    crate::plot::run_plots(out, dir)?;
    Ok(())
}

fn write_csv<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut w =
        csv::Writer::from_path(path).with_context(|| format!("creating {}", path.display()))?;
    for r in rows {
        w.serialize(r)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    w.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The default output directory of a run: `out/<scenario>/<policy>-seed<seed>`,
/// so runs of other policies or seeds never overwrite each other.
pub fn default_dir(sc: &Scenario, opts: &RunOptions) -> PathBuf {
    PathBuf::from("out")
        .join(&sc.name)
        .join(format!("{}-seed{}", opts.policy, opts.seed))
}

fn pctl(p: &Pctl) -> String {
    if p.n == 0 {
        return "none".into();
    }
    let censored = if p.n_censored > 0 {
        format!(
            "; {} never launched, counted at their wait so far, so these are lower bounds",
            p.n_censored
        )
    } else {
        String::new()
    };
    format!(
        "{:.2} / {:.2} / {:.2} h (n={}{censored})",
        p.p50, p.p90, p.p99, p.n
    )
}

/// The summary table for a user; `verbose` adds the developer counters
/// (round timings, hosts examined, rounds that planned nothing, events/s).
pub fn table(s: &Summary, verbose: bool) -> String {
    let mut t = String::new();
    let mut row = |k: &str, v: String| {
        let _ = writeln!(t, "  {k:<44} {v}");
    };
    row(
        "scenario / policy / seed",
        format!("{} / {} / {}", s.scenario, s.policy, s.seed),
    );
    row(
        "simulated",
        format!(
            "{:.1} h, {} jobs, {} tasks",
            s.duration_h, s.n_jobs, s.tasks.n_tasks
        ),
    );
    row(
        "tasks completed / failed / killed",
        format!(
            "{} / {} / {}",
            s.tasks.completed, s.tasks.failed, s.tasks.killed
        ),
    );
    row(
        "tasks at the end: queued / on a host",
        format!(
            "{} / {} (on a host = placed: assigned, running or stopping when the run ended)",
            s.tasks.queued, s.tasks.placed
        ),
    );
    let c = &s.capacity;
    if c.market {
        row(
            "harvested share of supply",
            format!(
                "{:.1}% ({:.0} of {:.0} supply IE-h leased, counting leases within supply only)",
                100.0 * c.harvested_share,
                c.leased_within_supply_ie_h,
                c.supply_ie_h
            ),
        );
        if let Some(note) = &s.harvest_note {
            row("  why so low", note.clone());
        }
        row(
            "leased beyond supply (headroom eaten)",
            format!(
                "{:.1} IE-h in {} episodes, {:.0} min in all",
                c.leased_beyond_supply_ie_h, c.headroom_violations, c.violation_minutes
            ),
        );
        row(
            "  of it beyond one grace period",
            format!(
                "{:.1} IE-min in {} episodes longer than {:.0} s (round interval + preemption grace)",
                c.violation_ie_min_beyond_grace, c.violations_beyond_grace, c.violation_grace_s
            ),
        );
        row(
            "headroom shortfall",
            format!(
                "{:.1} IE-h with streaming + headroom above reserved",
                c.shortfall_ie_h
            ),
        );
        row(
            "leased IE allocated to tasks",
            format!(
                "{:.1}% ({:.0} IE-h held by flex tasks on leased hosts)",
                100.0 * c.allocated_share_of_leased,
                c.allocated_ie_h
            ),
        );
        row(
            "reserved = streaming+headroom+leased+idle",
            format!(
                "{:.0} = {:.0} + {:.0} + {:.0} + {:.0} IE-h (idle: supply not leased; leased: the executors' count){}",
                c.reserved_ie_h,
                c.streaming_ie_h,
                c.headroom_ie_h,
                c.leased_ie_h,
                c.idle_ie_h,
                if c.identity_gap_ie_h.abs() > 1e-3 {
                    format!("; DOES NOT ADD UP by {:.3} IE-h", c.identity_gap_ie_h)
                } else {
                    String::new()
                }
            ),
        );
        if c.critical_ie_h > 0.0 || s.critical_goodput_cpu_h > 0.0 {
            row(
                "critical work (outside the market)",
                format!(
                    "{:.0} IE-h of hosts carrying only critical work; {:.0} CPU-h completed",
                    c.critical_ie_h, s.critical_goodput_cpu_h
                ),
            );
        }
    } else {
        row(
            "harvested share of supply",
            "n/a (no market-managed pool)".into(),
        );
    }
    row(
        "goodput",
        format!("{:.0} CPU-h of completed tasks", s.goodput_cpu_h),
    );
    row(
        "work lost to preemption",
        format!(
            "{:.0} CPU-h ({:.2}% of goodput)",
            s.lost_preempt_cpu_h, s.lost_preempt_pct
        ),
    );
    row(
        "work lost to failures",
        format!("{:.0} CPU-h", s.lost_failure_cpu_h),
    );
    row("preemptions", s.n_preemptions.to_string());
    let f = &s.faults;
    if f.n_host_losses + f.n_host_drains + f.n_launch_failures > 0 {
        row(
            "host losses / drains / launch failures",
            format!(
                "{} / {} / {}; {:.0} CPU-h of work lost with lost hosts",
                f.n_host_losses, f.n_host_drains, f.n_launch_failures, f.lost_host_cpu_h
            ),
        );
    }
    if f.checkpoint_overhead_cpu_h > 0.0 {
        row(
            "checkpoint write + restore time",
            format!("{:.0} CPU-h", f.checkpoint_overhead_cpu_h),
        );
    }
    row("job wait p50 / p90 / p99", pctl(&s.job_wait_h));
    row("job completion p50 / p90 / p99", pctl(&s.job_completion_h));
    for season in &s.seasons {
        row(
            &format!("season makespan ({})", season.name),
            season.makespan_h.map_or_else(
                || format!("unfinished, {} tasks left", season.tasks_left),
                |m| format!("{m:.2} h after the drop at {:.1} h", season.drop_h),
            ),
        );
    }
    if c.market {
        row(
            "emergency / over-budget preemptions",
            format!(
                "{} / {}",
                c.n_emergency_preemptions, c.n_over_budget_preemptions
            ),
        );
    }
    let h = &s.hosts;
    row(
        "hosts used vs packing lower bound",
        format!(
            "{:.1} vs {:.1} of {} (×{:.3})",
            h.used_mean, h.lower_bound_mean, h.n_hosts, h.used_over_bound
        ),
    );
    if verbose {
        let p = &s.perf;
        row(
            "scheduler time per round p50 / p99",
            format!(
                "{:.3} / {:.3} ms ({} rounds, max {:.1} ms)",
                p.round_ms_p50, p.round_ms_p99, p.n_rounds, p.round_ms_max
            ),
        );
        row(
            "rounds that planned nothing",
            format!(
                "{} ({:.2} s); hosts examined {:.3e}",
                p.n_idle_rounds, p.idle_rounds_s, p.n_hosts_examined as f64
            ),
        );
        row(
            "simulated events/s",
            format!(
                "{:.0} ({} events in {:.2} s; {:.0}/s outside the {:.2} s in rounds)",
                p.events_per_s, p.n_events, p.wall_s, p.events_per_s_outside_rounds, p.rounds_s
            ),
        );
    }
    row("trace hash", s.trace_hash.clone());
    t
}
