//! Built-in policies by name, as partial `SchedulerConfig` tables (the same
//! format as a scenario's `[policies.NAME]`, which overrides a built-in of
//! the same name). Placement policies change the flex tier only, so
//! comparisons measure batch placement; `victim-*` policies change how the
//! market chooses preemption victims.

/// (name, partial `SchedulerConfig` in TOML).
pub const BUILTIN: [(&str, &str); 11] = [
    // The core's default: CPU+memory bin-packing, 8 hosts scored, good enough at 0.95,
    // victims by cost (bid, priority, lost work, count).
    ("binpack", ""),
    // Worst fit: spreads load, keeps hosts half-empty (what bin-packing is measured against).
    (
        "spread",
        "flex.scorers = [['spread', 1.0]]\nflex.search_order = 'loosest_first'",
    ),
    // Tetris-style alignment of the request with each host's free shape,
    // gated so it does not open empty hosts on small fleets.
    (
        "dot-product",
        "flex.scorers = [['dot_product', 1.0]]\nflex.empty_host_gate = 32",
    ),
    // Least leftover in all dimensions together.
    ("l2-best-fit", "flex.scorers = [['l2_best_fit', 1.0]]"),
    // Bin-packing plus a preference for hosts already carrying flex work,
    // so that reclaim can release whole hosts.
    (
        "consolidate",
        "flex.scorers = [['cpu_mem_bin_pack', 1.0], ['flex_consolidation', 1.0]]",
    ),
    // Cheap: take the first host at least 80% full, score at most 2.
    ("fast", "flex.good_enough = 0.80\nflex.max_hosts_scored = 2"),
    // Exhaustive: score every feasible host, stop only on a perfect fit. TOML
    // has no null for `max_hosts_scored = None`, and leaving it out means the
    // default (8), so the bound is u32::MAX: more hosts than any fleet has.
    (
        "thorough",
        "flex.good_enough = 1.0\nflex.max_hosts_scored = 4294967295",
    ),
    // Victim policies on default placement.
    (
        "victim-priority",
        "market.victim_policy = 'lowest_priority_first'",
    ),
    (
        "victim-least-lost",
        "market.victim_policy = 'least_lost_work'",
    ),
    ("victim-fewest", "market.victim_policy = 'fewest_victims'"),
    ("victim-kubernetes", "market.victim_policy = 'kubernetes'"),
];

/// The built-in policy `name` as a table, or `None`.
pub fn builtin(name: &str) -> Option<toml::Table> {
    let (_, text) = BUILTIN.iter().find(|(n, _)| *n == name)?;
    let table: toml::Table = text.parse().expect("built-in policies are valid TOML");
    Some(table)
}

/// Deep-merges `top` into `base`: tables merge key by key, anything else replaces.
pub fn merge(base: &mut toml::Table, top: &toml::Table) {
    for (k, v) in top {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => merge(b, t),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ebb_scheduler::{ScorerKind, SearchOrder, VictimPolicy};

    use crate::scenario::Scenario;

    fn tiny() -> Scenario {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/scenarios/tiny.toml"
        );
        Scenario::load(std::path::Path::new(path)).expect("tiny loads")
    }

    #[test]
    fn every_builtin_resolves_to_what_its_comment_says() {
        let sc = tiny();
        for (name, _) in super::BUILTIN {
            sc.scheduler_config(name)
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
        let c = sc.scheduler_config("consolidate").unwrap();
        assert_eq!(
            c.flex.scorers,
            vec![
                (ScorerKind::CpuMemBinPack, 1.0),
                (ScorerKind::FlexConsolidation, 1.0)
            ]
        );
        let c = sc.scheduler_config("spread").unwrap();
        assert_eq!(c.flex.search_order, SearchOrder::LoosestFirst);
        let c = sc.scheduler_config("thorough").unwrap();
        assert_eq!(
            (c.flex.good_enough, c.flex.max_hosts_scored),
            (1.0, Some(u32::MAX))
        );
        let c = sc.scheduler_config("victim-fewest").unwrap();
        assert_eq!(c.market.victim_policy, VictimPolicy::FewestVictims);
        // Critical work keeps the core's default everywhere.
        assert_eq!(c.critical, ebb_scheduler::TierPolicy::default());
    }

    #[test]
    fn scenario_market_is_the_base_and_policies_override_it() {
        let mut sc = tiny();
        sc.market.insert(
            "victim_policy".into(),
            toml::Value::String("kubernetes".into()),
        );
        sc.market
            .insert("floor_price".into(), toml::Value::Float(0.25));
        let c = sc.scheduler_config("binpack").unwrap();
        assert_eq!(c.market.victim_policy, VictimPolicy::Kubernetes);
        let c = sc.scheduler_config("victim-least-lost").unwrap();
        assert_eq!(c.market.victim_policy, VictimPolicy::LeastLostWork);
        assert_eq!(c.market.floor_price.per_ie_hour(), 0.25);
    }
}
