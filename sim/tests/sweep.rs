//! A parallel sweep reports exactly what a sequential one does, and its
//! files use plain column names and integer counts.

mod common;

use common::*;
use ebb_sim::sweep;
use indicatif::ProgressBar;

#[test]
fn parallel_sweep_equals_sequential() {
    let sc = load("tiny.toml");
    let policies = vec!["binpack".to_string(), "spread".to_string()];
    let bar = ProgressBar::hidden();
    let seq = sweep::summaries(&sc, &policies, 3, Some(1), &bar).expect("sequential");
    let par = sweep::summaries(&sc, &policies, 3, Some(4), &bar).expect("parallel");
    assert_eq!(seq.len(), 2);
    for ((p1, a), (p2, b)) in seq.iter().zip(&par) {
        assert_eq!(p1, p2);
        assert_eq!(a.len(), 3);
        let seeds: Vec<u64> = a.iter().map(|s| s.seed).collect();
        assert_eq!(seeds, vec![7, 8, 9], "seeds ascending from the scenario's");
        for (x, y) in a.iter().zip(b) {
            let strip = |s: &ebb_sim::metrics::Summary| {
                let mut v = serde_json::to_value(s).expect("serializes");
                v.as_object_mut().expect("object").remove("perf");
                v
            };
            assert_eq!(strip(x), strip(y), "{p1} seed {}", x.seed);
        }
    }
    // The runs really differ by policy and seed (the comparison is not vacuous).
    assert_ne!(seq[0].1[0].trace_hash, seq[0].1[1].trace_hash);
    assert_ne!(seq[0].1[0].trace_hash, seq[1].1[0].trace_hash);
}

#[test]
fn sweep_files_have_plain_columns_and_integer_counts() {
    let sc = load("tiny.toml");
    let dir = std::env::temp_dir().join(format!("ebb-sim-sweep-{}", std::process::id()));
    let policies = vec!["binpack".to_string(), "victim-fewest".to_string()];
    let md = sweep::run(&sc, &policies, 2, &dir, Some(2)).expect("sweep runs");
    assert!(
        md.contains("| binpack |") && md.contains("| victim-fewest |"),
        "{md}"
    );
    let csv = std::fs::read_to_string(dir.join("sweep.csv")).expect("sweep.csv");
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    for col in &header {
        assert!(
            col.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "column `{col}` is not a plain name"
        );
    }
    let at = header
        .iter()
        .position(|c| *c == "preemptions")
        .expect("preemptions column");
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 4);
    for r in &rows {
        r[at]
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("preemptions `{}` is not an integer", r[at]));
    }
    assert!(
        sweep::run(&sc, &["binpack".into(), "binpack".into()], 1, &dir, None)
            .expect_err("duplicate")
            .to_string()
            .contains("listed twice")
    );
    std::fs::remove_dir_all(&dir).ok();
}
