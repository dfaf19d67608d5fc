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
    // Tetris-style alignment of the request with each host's free shape.
    ("dot-product", "flex.scorers = [['dot_product', 1.0]]"),
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
