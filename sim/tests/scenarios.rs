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

#[test]
fn bad_input_names_the_field() {
    let good = std::fs::read_to_string(scenario_path("tiny.toml")).expect("read");
    let cases = [
        (
            "instance_type = \"m5.16xlarge\", count = 20",
            "instance_type = \"m5.17xlarge\", count = 20",
            "`fleet.pools[0]` (east-a).reservations[0].instance_type",
        ),
        (
            "pool = \"west-a\"\nkind",
            "pool = \"nowhere\"\nkind",
            "`demand[1]` (pool nowhere).pool",
        ),
        (
            "region = \"west\"\nat",
            "region = \"mars\"\nat",
            "`failover[0].region`",
        ),
        (
            "episodes = 3",
            "episodes = 0",
            "`workload[0]` (mini-season).episodes",
        ),
        (
            "duration = \"8h\"",
            "duration = \"8 hours\"",
            "expected a number with a unit",
        ),
        (
            "gang_size = 2",
            "gang_size = 2\ncolour = \"red\"",
            "unknown field `colour`",
        ),
    ];
    for (from, to, want) in cases {
        assert!(
            good.contains(from),
            "fixture text `{from}` not in tiny.toml"
        );
        let text = good.replacen(from, to, 1);
        let err = format!("{:#}", Scenario::parse(&text).expect_err(to));
        assert!(
            err.contains(want),
            "`{to}`: error `{err}` does not mention `{want}`"
        );
    }
    let sc = Scenario::parse(&good).expect("tiny parses");
    let err = format!("{:#}", sc.scheduler_config("no-such-policy").unwrap_err());
    assert!(
        err.contains("unknown policy `no-such-policy`") && err.contains("binpack"),
        "{err}"
    );
}
