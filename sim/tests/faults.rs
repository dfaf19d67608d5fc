//! Executor faults, launch failures, checkpoint costs, gang and zone
//! options: each changes what the run reports, and nothing is lost (the
//! conservation checks against the executors' own view still hold).

mod common;

use common::*;
use ebb_sim::Scenario;

fn tiny_with(extra: &str) -> Scenario {
    let good = std::fs::read_to_string(scenario_path("tiny.toml")).expect("read");
    Scenario::parse(&format!("{good}\n{extra}\n")).unwrap_or_else(|e| panic!("{e:#}"))
}

fn assert_conserved(o: &ebb_sim::Outcome) {
    assert!(
        o.conservation_errors.is_empty(),
        "{:?}",
        o.conservation_errors
    );
    let t = &o.summary.tasks;
    assert_eq!(
        t.completed + t.failed + t.killed + t.queued + t.placed,
        t.n_tasks
    );
}

#[test]
fn a_whole_pool_lost_at_once_requeues_its_work() {
    let base = run(&load("tiny.toml"), 7, "binpack");
    let sc = tiny_with(
        "[[faults.scheduled]]\nat = \"2h\"\nkind = \"pool_lost\"\npool = \"west-a\"\nduration = \"1h\"",
    );
    let o = run(&sc, 7, "binpack");
    assert_conserved(&o);
    let f = &o.summary.faults;
    assert_eq!(f.n_host_losses, 12, "west-a has 12 hosts");
    assert!(f.lost_host_cpu_h > 0.0, "work was running there at 2 h");
    assert_ne!(o.summary.trace_hash, base.summary.trace_hash);
    // While the pool is down nothing runs on it: no sample between 2 h and 3 h shows west-a leased.
    for r in o.pool_series.iter().filter(|r| r.pool == "west-a") {
        if r.t_h > 2.01 && r.t_h < 2.99 {
            assert_eq!(r.leased_ie, Some(0.0), "t={}", r.t_h);
        }
    }
}

#[test]
fn random_failures_drains_and_launch_failures_happen_and_conserve() {
    let sc = tiny_with(
        "[faults]\nhost_failures_per_day = 2.0\nhost_repair = \"30m\"\nhost_drains_per_day = 3.0\ndrain_duration = \"20m\"\nlaunch_failure_probability = 0.05\n\
         [[faults.scheduled]]\nat = \"1h\"\nkind = \"host_drain\"\npool = \"east-a\"\nhosts = 4\nduration = \"2h\"",
    );
    let o = run(&sc, 7, "binpack");
    assert_conserved(&o);
    let f = &o.summary.faults;
    // 24 hosts × 8 h × 2/day ≈ 16 failures, × 3/day ≈ 24 drains (+4 scheduled), 5% of launches.
    assert!(f.n_host_losses >= 5, "{f:?}");
    assert!(f.n_host_drains >= 10, "{f:?}");
    assert!(f.n_launch_failures >= 5, "{f:?}");
    // Same seed, same faults, under another policy too (drawn from seed-only streams).
    let again = run(&sc, 7, "binpack");
    assert_eq!(again.summary.trace_hash, o.summary.trace_hash);
    let other = run(&sc, 7, "spread");
    assert_eq!(other.summary.faults.n_host_losses, f.n_host_losses);
}

#[test]
fn checkpoint_costs_are_paid_and_reported() {
    let good = std::fs::read_to_string(scenario_path("tiny.toml")).expect("read");
    let text = good.replacen(
        "checkpoint_interval = \"15m\"",
        "checkpoint_interval = \"15m\"\ncheckpoint_write = \"1m\"\ncheckpoint_restore = \"3m\"",
        1,
    );
    let sc = Scenario::parse(&text).expect("parses");
    let base = run(&load("tiny.toml"), 7, "binpack");
    let o = run(&sc, 7, "binpack");
    assert_conserved(&o);
    assert_eq!(base.summary.faults.checkpoint_overhead_cpu_h, 0.0);
    assert!(o.summary.faults.checkpoint_overhead_cpu_h > 0.0);
    let err = Scenario::parse(&good.replacen(
        "max_retries = 1",
        "max_retries = 1\ncheckpoint_restore = \"1m\"",
        1,
    ))
    .map(|_| ())
    .expect_err("daily has no checkpoint_interval");
    assert!(
        format!("{err:#}").contains("`workload[1]` (daily): `checkpoint_write` and `checkpoint_restore` need a `checkpoint_interval`"),
        "{err:#}"
    );
}

#[test]
fn gang_and_zone_options_reach_the_job_spec() {
    let good = std::fs::read_to_string(scenario_path("tiny.toml")).expect("read");
    let text = good.replacen(
        "gang_size = 2",
        "gang_size = 2\ngang = false\nzone_balance_max_skew = 1",
        1,
    );
    let sc = Scenario::parse(&text).expect("parses");
    let jobs = ebb_sim::workload::build(&sc, 7).expect("builds");
    let train: Vec<_> = jobs
        .iter()
        .filter(|j| j.spec.name.starts_with("train/"))
        .collect();
    assert!(!train.is_empty());
    for j in &train {
        assert!(!j.spec.gang);
        assert!(
            j.spec
                .hard_constraints
                .contains(&ebb_scheduler::Constraint::ZoneBalance { max_skew: 1 })
        );
    }
    let default = ebb_sim::workload::build(&load("tiny.toml"), 7).expect("builds");
    assert!(
        default
            .iter()
            .filter(|j| j.spec.name.starts_with("train/"))
            .all(|j| j.spec.gang)
    );
    assert!(
        default
            .iter()
            .filter(|j| j.spec.name.starts_with("daily/"))
            .all(|j| !j.spec.gang)
    );
    assert_conserved(&run(&sc, 7, "binpack"));
}

#[test]
fn bad_faults_name_the_field() {
    let cases = [
        (
            "[faults]\nlaunch_failure_probability = 2",
            "`faults.launch_failure_probability` must be in [0, 1]",
        ),
        (
            "[faults]\nhost_failures_per_day = -1",
            "`faults.host_failures_per_day` must be finite",
        ),
        (
            "[faults]\nhost_failure_rate = 1",
            "unknown field `host_failure_rate`",
        ),
        (
            "[[faults.scheduled]]\nat = \"1h\"\nkind = \"host_lost\"\npool = \"nowhere\"\nhosts = 1",
            "`faults.scheduled[0]`.pool: unknown pool `nowhere`",
        ),
        (
            "[[faults.scheduled]]\nat = \"1h\"\nkind = \"host_lost\"\npool = \"west-a\"",
            "`faults.scheduled[0]`.hosts is required",
        ),
        (
            "[[faults.scheduled]]\nat = \"9h\"\nkind = \"pool_lost\"\npool = \"west-a\"",
            "`faults.scheduled[0]`.at (9h) is not before the run ends",
        ),
    ];
    let good = std::fs::read_to_string(scenario_path("tiny.toml")).expect("read");
    for (extra, want) in cases {
        let err = format!(
            "{:#}",
            Scenario::parse(&format!("{good}\n{extra}\n")).expect_err(extra)
        );
        assert!(err.contains(want), "`{extra}`: `{err}` lacks `{want}`");
    }
}

/// Gangs whose members fail, on a fleet with no market and no contention:
/// nothing is preempted, so no work may count as lost to preemption. The
/// members stopped to restart with a failed one lose their work to the
/// failure (as the core's ledger books it), not to preemption.
#[test]
fn gang_restarts_after_a_failure_are_not_counted_as_preemption() {
    let sc = Scenario::parse(
        r#"
name = "gang-fail"
[sim]
duration = "12h"
launch_latency = { dist = "fixed", value = "1s" }
[[fleet.regions]]
name = "r"
[[fleet.pools]]
id = "p"
region = "r"
zone = "z"
hosts = [{ instance_type = "m5.16xlarge", count = 20 }]
[[workload]]
kind = "ml_training"
name = "g"
team = "ml"
jobs_per_day = 20
gang_size = 4
cpus = 16
memory_gib = 32
runtime = { dist = "fixed", value = "2h" }
failure_probability = 0.3
"#,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let o = run(&sc, 1, "binpack");
    assert_conserved(&o);
    let s = &o.summary;
    assert_eq!(s.n_preemptions, 0, "nothing contends for the hosts");
    assert_eq!(s.lost_preempt_cpu_h, 0.0, "{s:?}");
    assert!(s.lost_failure_cpu_h > 0.0, "{s:?}");
    assert!(o.jobs.iter().all(|j| j.lost_preempt_cpu_h == 0.0));
}
