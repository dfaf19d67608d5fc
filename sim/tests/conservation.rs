//! Nothing is lost: every task ends completed, failed, killed, or is still
//! queued or placed; the core and the simulated executors agree on every
//! job; and the IE accounting adds up at every sample and over the run.

mod common;

use common::*;

fn close(a: f64, b: f64) -> bool {
    // The core keeps IE as integer micro-IE; reports are floats.
    (a - b).abs() <= 1e-5 * a.abs().max(b.abs()).max(1.0)
}

fn check(scenario: &str, seed: u64, policy: &str) {
    let sc = load(scenario);
    let o = run(&sc, seed, policy);
    assert!(
        o.conservation_errors.is_empty(),
        "{scenario}/{policy}/{seed}: {:?}",
        o.conservation_errors
    );
    let t = &o.summary.tasks;
    assert_eq!(
        t.completed + t.failed + t.killed + t.queued + t.placed,
        t.n_tasks,
        "{scenario}: {t:?}"
    );
    let per_job: u64 = o.jobs.iter().map(|j| u64::from(j.n_tasks)).sum();
    assert_eq!(per_job, t.n_tasks);
    let completed: u64 = o.jobs.iter().map(|j| u64::from(j.completed)).sum();
    assert_eq!(completed, t.completed);

    // Every sample of every market pool: supply and idle follow from the rest.
    let mut n_rows = 0;
    for r in &o.pool_series {
        let (Some(h), Some(s), Some(l), Some(i)) =
            (r.headroom_ie, r.supply_ie, r.leased_ie, r.idle_ie)
        else {
            continue;
        };
        n_rows += 1;
        let want_supply = (r.reserved_ie - r.streaming_ie - h).max(0.0);
        assert!(
            close(s, want_supply),
            "{scenario} t={} {}: supply {s} vs {want_supply}",
            r.t_h,
            r.pool
        );
        assert!(
            close(i, (s - l).max(0.0)),
            "{scenario} t={} {}: idle {i}",
            r.t_h,
            r.pool
        );
    }
    assert!(n_rows > 0, "{scenario}: no market samples");

    // Over the run: streaming + headroom + leased + idle = reserved.
    let c = &o.summary.capacity;
    assert!(c.market);
    let parts = c.streaming_ie_h + c.headroom_ie_h + c.leased_ie_h + c.idle_ie_h;
    assert!(
        close(parts, c.reserved_ie_h),
        "{scenario}: {parts} vs {}",
        c.reserved_ie_h
    );
    assert!(c.leased_ie_h <= c.supply_ie_h + c.headroom_violation_ie_min / 60.0 + 1e-6);
}

#[test]
fn tiny_conserves_tasks_and_ie_under_several_policies() {
    for policy in ["binpack", "spread", "consolidate", "victim-fewest"] {
        check("tiny.toml", 7, policy);
    }
}

#[test]
fn tiny_conserves_tasks_and_ie_over_seeds() {
    for seed in 1..=4 {
        check("tiny.toml", seed, "binpack");
    }
}
