//! Shared helpers for the simulator's tests.
#![allow(dead_code)]

use std::path::PathBuf;

use ebb_sim::{Outcome, RunOptions, Scenario};

/// Path of a shipped scenario.
pub fn scenario_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/scenarios")
        .join(name)
}

/// Loads a shipped scenario.
pub fn load(name: &str) -> Scenario {
    Scenario::load(&scenario_path(name)).expect("shipped scenario loads")
}

/// Runs `sc` with `seed` and `policy`.
pub fn run(sc: &Scenario, seed: u64, policy: &str) -> Outcome {
    ebb_sim::run(
        sc,
        &RunOptions {
            seed,
            policy: policy.into(),
            ..RunOptions::default()
        },
    )
    .expect("scenario runs")
}

/// The summary as JSON without its wall-clock part.
pub fn deterministic_json(o: &Outcome) -> serde_json::Value {
    let mut v = serde_json::to_value(&o.summary).expect("summary serializes");
    v.as_object_mut().expect("object").remove("perf");
    v
}
