//! Every shipped scenario parses and validates; bad input names its field.

mod common;

use common::*;
use ebb_sim::Scenario;

#[test]
fn every_shipped_scenario_loads() {
    let dir = scenario_path("");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("scenario dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let sc = Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            sc.scheduler_config(&sc.sim.policy)
                .expect("default policy resolves");
            n += 1;
        }
    }
    assert!(n >= 5, "expected the shipped scenarios, found {n}");
}

/// Bad scenario snippets, each a replacement in (or an addition to)
/// `tiny.toml`, and the text its error must contain: the key and where it is.
#[test]
fn bad_input_names_the_field() {
    let good = std::fs::read_to_string(scenario_path("tiny.toml")).expect("read");
    let append = |extra: &str| format!("{good}\n{extra}\n");
    let replace = |from: &str, to: &str| {
        assert!(
            good.contains(from),
            "fixture text `{from}` not in tiny.toml"
        );
        good.replacen(from, to, 1)
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown instance type",
            replace(
                "instance_type = \"m5.16xlarge\", count = 20",
                "instance_type = \"m5.17xlarge\", count = 20",
            ),
            "`fleet.pools[0]` (east-a).reservations[0].instance_type",
        ),
        (
            "unknown demand pool",
            replace("pool = \"west-a\"\nkind", "pool = \"nowhere\"\nkind"),
            "`demand[1]` (pool nowhere).pool",
        ),
        (
            "unknown failover region",
            replace("region = \"west\"\nat", "region = \"mars\"\nat"),
            "`failover[0].region`",
        ),
        (
            "zero episodes",
            replace("episodes = 3", "episodes = 0"),
            "`workload[0]` (mini-season).episodes",
        ),
        (
            "duration without unit",
            replace("duration = \"8h\"", "duration = \"8 hours\""),
            "expected a number with a unit",
        ),
        (
            "typo in a workload",
            replace("gang_size = 2", "gang_size = 2\ncolour = \"red\""),
            "unknown field `colour`",
        ),
        (
            "typo in [market]",
            append("[market]\nflor_price = 1.0"),
            "`market`: unknown field `flor_price`, expected one of `reference_instance_type`",
        ),
        (
            "typo in [teams.*]",
            append("[teams.ml]\nweigth = 2"),
            "unknown field `weigth`, expected one of `weight`, `guarantee`, `cap`",
        ),
        (
            "typo deep in [teams.*]",
            append("[teams.ml.guarantee.flex]\ncpu_milis = 4000"),
            "unknown field `cpu_milis`, expected one of `cpu_millis`",
        ),
        (
            "typo in [policies.*]",
            append("[policies.mine]\nflex.good_enuf = 0.5"),
            "`policies.mine`: unknown field `good_enuf`, expected one of `scorers`, `search_order`, `good_enough`, `max_hosts_scored`",
        ),
        (
            "typo in a policy's market",
            append("[policies.mine.market]\nvictim_polcy = \"cost\""),
            "unknown field `victim_polcy`, expected one of `reference_instance_type`",
        ),
        (
            "bad value in [market]",
            append("[market]\nvictim_policy = \"random\""),
            "`market`",
        ),
        (
            "unknown default policy",
            replace("policy = \"binpack\"", "policy = \"bin-pack\""),
            "`sim.policy`",
        ),
        (
            "huge task count per job",
            replace("output_files = 150", "output_files = 4000000000"),
            "`workload[0]` (mini-season).output_files: 1333333334 tasks per job; the scheduler takes at most 1000000 per job",
        ),
        (
            "huge task count in all",
            replace("jobs_per_hour = 6", "jobs_per_hour = 600000"),
            "tasks expected over the run; the simulator takes at most 20000000",
        ),
        (
            "impossible gpu_model",
            replace("gpu_model = \"t4\"", "gpu_model = \"a100\""),
            "`workload[2]` (train).gpu_model: no executor host in the fleet has GPU model `a100` (the fleet has: t4)",
        ),
        (
            "task bigger than every host",
            replace("cpus = 4\n", "cpus = 400\n"),
            "`workload[1]` (daily): no executor host type in the fleet can hold one task (400 vCPUs",
        ),
        (
            "season after the end",
            replace("at = \"30m\"", "at = \"9h\""),
            "`workload[0]` (mini-season).at (9h) is not before the run ends (`sim.duration` = 8h)",
        ),
        (
            "episodes after the end",
            replace("episodes = 3", "episodes = 3\nepisode_interval = \"4h\""),
            "`workload[0]` (mini-season).episode_interval: the last episode would be submitted at 510m",
        ),
        (
            "steady end after the end",
            replace("jobs_per_hour = 6", "jobs_per_hour = 6\nend = \"9h\""),
            "`workload[1]` (daily).end (9h) is after the run ends",
        ),
        (
            "failover after the end",
            replace("at = \"6h\"", "at = \"8h\""),
            "`failover[0].at` (8h) is not before the run ends",
        ),
        (
            "duplicate workload names",
            replace("name = \"daily\"", "name = \"train\""),
            "`workload[2].name`: `train` is also the name of `workload[1]`",
        ),
        (
            "csv demand without file",
            replace(
                "pool = \"west-a\"\nkind = \"diurnal\"",
                "pool = \"west-a\"\nkind = \"csv\"",
            ),
            "`demand[1]` (pool west-a).file is required",
        ),
    ];
    for (what, text, want) in cases {
        let err = match Scenario::parse(&text) {
            Ok(_) => panic!("{what}: accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            err.contains(want),
            "{what}: error `{err}` does not mention `{want}`"
        );
    }
    let sc = Scenario::parse(&good).expect("tiny parses");
    let err = format!("{:#}", sc.scheduler_config("no-such-policy").unwrap_err());
    assert!(
        err.contains("unknown policy `no-such-policy`") && err.contains("binpack"),
        "{err}"
    );
}

/// A fleet without executor hosts is refused, naming the field.
#[test]
fn zero_hosts_is_an_error() {
    let text = r#"
name = "empty"
[sim]
duration = "1h"
[[fleet.regions]]
name = "r"
[[fleet.pools]]
id = "p"
region = "r"
zone = "z"
reservations = [{ instance_type = "m5.16xlarge", count = 2 }]
"#;
    let err = format!("{:#}", Scenario::parse(text).expect_err("no hosts"));
    assert!(
        err.contains("`fleet.pools[*].hosts`: no pool has executor hosts"),
        "{err}"
    );
}

/// A CSV curve's bad line is reported with the file, the line and the column.
#[test]
fn csv_curve_errors_name_the_line() {
    let dir = std::env::temp_dir().join(format!("ebb-sim-csv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    std::fs::write(
        dir.join("curve.csv"),
        "# comment\nminute,demand_fraction\n0,0.5\n5,-0.1\n",
    )
    .expect("write csv");
    let good = std::fs::read_to_string(scenario_path("tiny.toml")).expect("read");
    let text = good.replacen(
        "pool = \"west-a\"\nkind = \"diurnal\"",
        "pool = \"west-a\"\nkind = \"csv\"\nfile = \"curve.csv\"\ntime_column = \"minute\"\ntime_unit = \"1m\"\nvalue_column = \"demand_fraction\"\nvalue_scale = \"fraction\"",
        1,
    );
    let path = dir.join("s.toml");
    std::fs::write(&path, text.replace("peak_hour = 9\n", "")).expect("write scenario");
    let sc = Scenario::load(&path).expect("the scenario itself is valid");
    let err = format!(
        "{:#}",
        ebb_sim::run(&sc, &ebb_sim::RunOptions::default()).expect_err("negative demand")
    );
    assert!(
        err.contains("`demand[1].file`")
            && err
                .contains("line 4: `demand_fraction` value `-0.1` must be finite and non-negative"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// `ebb-sim run x | head -1`: a closed stdout is not a panic, and the run's
/// outputs are still written.
#[test]
fn a_closed_stdout_does_not_panic() {
    let out = std::env::temp_dir().join(format!("ebb-sim-pipe-{}", std::process::id()));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ebb-sim"))
        .args([
            "run",
            scenario_path("tiny.toml").to_str().expect("utf-8"),
            "--out",
        ])
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn ebb-sim");
    drop(child.stdout.take()); // the reader goes away before anything is written
    let result = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(result.status.success(), "{:?}: {stderr}", result.status);
    assert!(out.join("summary.json").exists());
    std::fs::remove_dir_all(&out).ok();
}
