//! Each honest metric on a scenario built to break it: the metric must
//! report the problem (and a corrupted executor view must fail the
//! conservation check). One pool of ten m5.16xlarge hosts (1 IE each, ten
//! reserved) and whole-host tasks keep the expected figures easy to derive.

mod common;

use ebb_sim::{Outcome, RunOptions, Scenario};

/// A demand curve as a CSV step function (`time_s,value` fractions of `peak_ie`).
fn curve(name: &str, rows: &[(u64, f64)]) -> String {
    let dir = std::env::temp_dir().join(format!("ebb-sim-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join(format!("{name}.csv"));
    let mut text = String::from("time_s,value\n");
    for (t, v) in rows {
        text.push_str(&format!("{t},{v}\n"));
    }
    std::fs::write(&path, text).expect("write curve");
    path.to_str().expect("utf-8").to_string()
}

/// One region, one pool: 10 reserved m5.16xlarge, 10 executor hosts,
/// headroom 50% of streaming and no failover buffer (one region). No
/// demand forecast: the probes' demand steps come unannounced.
fn scenario(duration: &str, sample: &str, demand: &str, workload: &str) -> Scenario {
    scenario_with(duration, sample, demand, workload, false)
}

fn scenario_with(
    duration: &str,
    sample: &str,
    demand: &str,
    workload: &str,
    forecast: bool,
) -> Scenario {
    let text = format!(
        r#"
name = "probe"
[forecast]
enabled = {forecast}
[sim]
duration = "{duration}"
sample_interval = "{sample}"
demand_step = "1m"
launch_latency = {{ dist = "fixed", value = "1s" }}
[[fleet.regions]]
name = "r"
[[fleet.pools]]
id = "p"
region = "r"
zone = "z"
headroom = {{ daily_scaling_fraction = 0.5 }}
reservations = [{{ instance_type = "m5.16xlarge", count = 10 }}]
hosts = [{{ instance_type = "m5.16xlarge", count = 10 }}]
{demand}
{workload}
"#
    );
    Scenario::parse(&text).unwrap_or_else(|e| panic!("{e:#}\n{text}"))
}

/// `n` whole-host tasks of 10 h each, submitted at 1 min.
fn whole_host_tasks(n: u32, extra: &str) -> String {
    whole_host_tasks_of(n, 10.0, extra)
}

/// `n` whole-host tasks of `hours` each, submitted at 1 min.
fn whole_host_tasks_of(n: u32, hours: f64, extra: &str) -> String {
    format!(
        r#"
[[workload]]
kind = "season_drop"
name = "big"
team = "t"
at = "1m"
episodes = 1
output_files = {n}
cpu_hours = {cpu_h}
cpus = 64
memory_gib = 200
runtime = {{ dist = "fixed", value = "1h" }}
{extra}
"#,
        cpu_h = f64::from(n) * 64.0 * hours
    )
}

fn step_demand(name: &str, peak_ie: f64, at_s: u64) -> String {
    let file = curve(
        name,
        &[(0, 0.0), (at_s, 0.0), (at_s + 1, 1.0), (86_400, 1.0)],
    );
    format!(
        "[[demand]]\npool = \"p\"\nkind = \"csv\"\nfile = \"{file}\"\nvalue_scale = \"fraction\"\ntrough_ie = 0\npeak_ie = {peak_ie}\n"
    )
}

fn run(sc: &Scenario) -> Outcome {
    common::run(sc, 1, "binpack")
}

/// Streaming rises from 0 to 4 IE at 1 h: supply falls from 10 to
/// 10 − 4 − 2 = 4 IE while six hosts carry work whose disruption budget
/// forbids preemption (and 6 ≤ reserved − streaming, so it is no emergency).
/// The old "leased ÷ supply" share is above 100%; the honest share is not,
/// and the excess is reported as leased beyond supply, beyond grace.
#[test]
fn leases_beyond_supply_are_reported_not_harvested() {
    let sc = scenario(
        "4h",
        "5m",
        &step_demand("beyond", 4.0, 3600),
        &whole_host_tasks(6, "disruption_budget = { max_tasks = 0, window = \"1d\" }"),
    );
    let o = run(&sc);
    assert!(
        o.conservation_errors.is_empty(),
        "{:?}",
        o.conservation_errors
    );
    let c = &o.summary.capacity;
    let old_share = (c.leased_within_supply_ie_h + c.leased_beyond_supply_ie_h) / c.supply_ie_h;
    assert!(
        old_share > 1.0,
        "the probe must lease more than supply: {old_share}"
    );
    assert!(c.harvested_share <= 1.0, "{}", c.harvested_share);
    // Two hosts beyond supply from about 1 h (the first report after the step) to 4 h.
    assert!(
        (c.leased_beyond_supply_ie_h - 2.0 * 2.98).abs() < 0.1,
        "{}",
        c.leased_beyond_supply_ie_h
    );
    assert_eq!(c.headroom_violations, 1);
    assert_eq!(c.violations_beyond_grace, 1);
    assert!(c.violation_ie_min_beyond_grace > 300.0);
    assert!(
        c.harvested_share > 0.5 && c.harvested_share < 0.99,
        "{}",
        c.harvested_share
    );
    // Six whole hosts leased, each holding one task using all 64 of 64 vCPUs.
    assert!(
        c.allocated_share_of_leased > 0.99,
        "{}",
        c.allocated_share_of_leased
    );
}

/// A leased host that is mostly empty: one 16-vCPU, 32 GiB task alone on an
/// m5.16xlarge (64 vCPU, 256 GiB) holds a quarter of it, so a quarter of the
/// leased IE is allocated, not all of it.
#[test]
fn a_mostly_empty_leased_host_reports_its_allocated_share() {
    let workload = r#"
[[workload]]
kind = "season_drop"
name = "one"
team = "t"
at = "1m"
episodes = 1
output_files = 1
cpu_hours = 32
cpus = 16
memory_gib = 32
runtime = { dist = "fixed", value = "1h" }
"#;
    let o = run(&scenario("3h", "5m", "", workload));
    assert!(
        o.conservation_errors.is_empty(),
        "{:?}",
        o.conservation_errors
    );
    let c = &o.summary.capacity;
    // One host leased for the task's 2 h.
    assert!((c.leased_ie_h - 2.0).abs() < 0.01, "{}", c.leased_ie_h);
    assert!(
        (c.allocated_share_of_leased - 0.25).abs() < 1e-6,
        "{}",
        c.allocated_share_of_leased
    );
    assert!((c.allocated_ie_h - 0.25 * c.leased_ie_h).abs() < 1e-6);
}

/// A fleet full of critical work: nothing is leased, and the report says
/// what critical work used instead of showing an empty fleet.
#[test]
fn critical_work_is_reported() {
    let sc = scenario(
        "3h",
        "5m",
        "",
        &whole_host_tasks_of(20, 1.0, "tier = \"critical\""),
    );
    let o = run(&sc);
    assert!(
        o.conservation_errors.is_empty(),
        "{:?}",
        o.conservation_errors
    );
    let c = &o.summary.capacity;
    assert_eq!(c.leased_ie_h, 0.0);
    // Twenty 1-hour whole-host tasks on ten hosts: busy from about 1 min to 2 h 1 min.
    assert!((c.critical_ie_h - 20.0).abs() < 0.2, "{}", c.critical_ie_h);
    assert!((o.summary.critical_goodput_cpu_h - 20.0 * 64.0).abs() < 1.0);
    let table = ebb_sim::report::table(&o.summary, false);
    assert!(
        table.contains("critical work (outside the market)"),
        "{table}"
    );
}

/// Streaming above what is reserved: the shortfall is reported.
#[test]
fn headroom_shortfall_is_reported() {
    let demand = "[[demand]]\npool = \"p\"\nkind = \"diurnal\"\ntrough_ie = 12\npeak_ie = 12\n";
    let sc = scenario("2h", "5m", demand, "");
    let o = run(&sc);
    let c = &o.summary.capacity;
    // streaming 12 + headroom 6 − reserved 10 = 8 IE for 2 h.
    assert!(
        (c.shortfall_ie_h - 16.0).abs() < 1e-6,
        "{}",
        c.shortfall_ie_h
    );
    assert_eq!(c.supply_ie_h, 0.0);
}

/// A violation that starts and ends between two samples (hourly samples,
/// reclaim within a minute of the demand step) is found from the event
/// times, though no sample shows it.
#[test]
fn violations_come_from_event_times_not_samples() {
    let sc = scenario(
        "3h",
        "1h",
        &step_demand("between", 4.0, 5400),
        &whole_host_tasks(6, ""),
    );
    let o = run(&sc);
    assert!(
        o.conservation_errors.is_empty(),
        "{:?}",
        o.conservation_errors
    );
    let sampled = o
        .pool_series
        .iter()
        .filter(|r| r.leased_ie.unwrap_or(0.0) > r.supply_ie.unwrap_or(0.0) + 1e-6)
        .count();
    assert_eq!(
        sampled, 0,
        "the samples must miss it for this probe to mean anything"
    );
    let c = &o.summary.capacity;
    assert!(c.headroom_violations >= 1, "{c:?}");
    assert!(
        c.violation_minutes > 0.0 && c.violation_minutes < 2.0,
        "{}",
        c.violation_minutes
    );
    assert!(c.headroom_violation_ie_min > 0.0);
    // Reclaimed within one grace (round interval + preemption grace): a
    // violation, but none beyond grace.
    assert!(c.violation_minutes * 60.0 < c.violation_grace_s, "{c:?}");
    assert_eq!(c.violations_beyond_grace, 0, "{c:?}");
    assert_eq!(c.violation_ie_min_beyond_grace, 0.0, "{c:?}");
    assert!(o.summary.n_preemptions >= 2);
}

/// A job that never launches (no supply, ever) counts in the job wait as
/// censored, instead of vanishing from it.
#[test]
fn jobs_that_never_launch_count_in_the_wait() {
    let demand = "[[demand]]\npool = \"p\"\nkind = \"diurnal\"\ntrough_ie = 10\npeak_ie = 10\n";
    let sc = scenario("5h", "5m", demand, &whole_host_tasks(2, ""));
    let o = run(&sc);
    let w = &o.summary.job_wait_h;
    assert_eq!(o.summary.n_jobs_never_launched, 1);
    assert_eq!((w.n, w.n_censored), (1, 1));
    assert!((w.p50 - (5.0 - 1.0 / 60.0)).abs() < 1e-9, "{}", w.p50);
}

/// An executor view that forgets one ended run disagrees with the core: the
/// conservation check fails, and so does the capacity identity. (Whole-host
/// tasks, so the forgotten run keeps a host leased in the executors' view.)
#[test]
fn a_corrupted_executor_view_fails_the_conservation_check() {
    let sc = scenario(
        "3h",
        "5m",
        &step_demand("corrupt", 4.0, 5400),
        &whole_host_tasks(6, ""),
    );
    let clean = run(&sc);
    assert!(
        clean.conservation_errors.is_empty(),
        "{:?}",
        clean.conservation_errors
    );
    assert!(clean.summary.capacity.identity_gap_ie_h.abs() < 1e-6);
    let o = ebb_sim::run(
        &sc,
        &RunOptions {
            seed: 1,
            corrupt_executor_view: Some(1),
            ..RunOptions::default()
        },
    )
    .expect("runs");
    let errors = o.conservation_errors.join("\n");
    assert!(
        errors.contains("the executors run flex work on"),
        "{errors}"
    );
    assert!(errors.contains("the executor runs"), "{errors}");
    assert!(
        errors.contains("reserved = streaming + headroom + leased (executors) + idle"),
        "{errors}"
    );
    assert!(o.summary.capacity.identity_gap_ie_h < -1e-3);
}

/// The same unannounced step as above, now in the forecast: hosts are given
/// back ahead of it, so nothing is leased beyond supply and no work is lost
/// (the tasks declare their 1-hour runtime; the step comes at 1.5 h).
#[test]
fn a_forecast_step_is_met_ahead_of_time() {
    let make = |forecast| {
        scenario_with(
            "3h",
            "5m",
            &step_demand(if forecast { "ahead-on" } else { "ahead-off" }, 4.0, 5400),
            &whole_host_tasks(6, ""),
            forecast,
        )
    };
    let off = run(&make(false));
    let on = run(&make(true));
    for o in [&off, &on] {
        assert!(
            o.conservation_errors.is_empty(),
            "{:?}",
            o.conservation_errors
        );
    }
    assert!(off.summary.capacity.headroom_violations >= 1);
    assert!(off.summary.lost_preempt_cpu_h > 0.0);
    let c = &on.summary.capacity;
    assert_eq!(c.headroom_violations, 0, "{c:?}");
    assert_eq!(c.leased_beyond_supply_ie_h, 0.0);
    assert_eq!(on.summary.lost_preempt_cpu_h, 0.0, "{:?}", on.summary);
    // The same work gets done.
    assert!((on.summary.goodput_cpu_h - off.summary.goodput_cpu_h).abs() < 1e-6);
}
