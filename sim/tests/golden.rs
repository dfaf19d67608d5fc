//! Golden summary of `tiny.toml` (seed 7, binpack): every deterministic
//! field. A change here is a change in what the simulator or the scheduler
//! decides; update it on purpose with `UPDATE_GOLDEN=1 cargo test -p ebb-sim
//! --test golden` and explain the change in the commit.

mod common;

use common::*;

#[test]
fn tiny_summary_matches_the_golden_file() {
    let sc = load("tiny.toml");
    let got = deterministic_json(&run(&sc, 7, "binpack"));
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/tiny.summary.json");
    let text = serde_json::to_string_pretty(&got).expect("serializes") + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).expect("write golden");
        return;
    }
    let want =
        std::fs::read_to_string(&path).expect("golden file exists (UPDATE_GOLDEN=1 creates it)");
    assert_eq!(text, want, "summary differs from {}", path.display());
}
