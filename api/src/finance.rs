//! Finance figures derived from the cumulative ledger samples: reservation
//! utilization, idle capacity and its cost, savings, and per-team
//! chargeback, per pool, region, family or team and per time step.
//!
//! The samples ([`LedgerSample`]) are *cumulative* integrals (micro-IE × ms
//! since the core started), so the figures over any interval are the
//! difference of the samples bounding it: exact integers, whatever the
//! sampling or down-sampling did in between (down-sampling only deletes
//! samples, and a difference of two kept samples is still the exact sum of
//! everything between them). Only the final presentation (IE-hours, %) is
//! a float.
//!
//! Formulas (all over one interval, one group):
//! - utilization ppm = (streaming + leased) × 10⁶ ÷ reserved, where leased
//!   is the IE of hosts carrying batch (flex) work;
//! - idle = reserved capacity neither streaming nor leased nor kept as
//!   headroom, as the core accounts it; idle cost = idle IE-hours × the
//!   reservation's effective hourly rate per IE (the catalog's on-demand
//!   price of the reference type when no reservation rate is configured,
//!   flagged by [`RateSource::OnDemand`]);
//! - savings = batch IE-hours held by tasks × the on-demand price per
//!   IE-hour of equivalent capacity − internal charges (what batch would
//!   have paid outside the market, minus what it paid inside).
//!
//! A counter lower at an interval's end than at its start was reset (a
//! core restarted from an empty store, or history imported from another
//! server): as Prometheus's `increase()` does, the interval then counts the
//! end value, accrued since the reset.
//!
//! Money is in micro-units (10⁻⁶ USD); a rate is micro-units per IE-hour.
//! Products are rounded down to a micro-unit once, at the end.

use std::collections::BTreeMap;

use ebb_scheduler as core;

use crate::records::LedgerSample;

/// micro-IE × ms in one IE-hour.
pub const MICRO_IE_MS_PER_IE_HOUR: u128 = 1_000_000 * 3_600_000;

/// How report rows are grouped.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Grouping {
    /// One row per pool.
    Pool,
    /// One row per region.
    Region,
    /// One row per instance family (of the pool's reservations).
    Family,
    /// One row per team (batch figures only: teams hold no reservation).
    Team,
}

/// Where a pool's reserved rate came from.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RateSource {
    /// `[finance] reserved_usd_per_ie_hour`.
    Configured,
    /// No reservation rate is known: the on-demand price stands in, so idle
    /// cost is an upper bound.
    OnDemand,
}

/// What the figures need to know about a pool besides its samples.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolMeta {
    /// The region.
    pub region: String,
    /// The instance family of its reservations (`mixed` or `-` otherwise).
    pub family: String,
    /// Effective reserved rate, micro-USD per IE-hour.
    pub reserved_rate_micros: u64,
    /// Where `reserved_rate_micros` came from.
    pub rate_source: RateSource,
    /// On-demand price of one IE for an hour, micro-USD.
    pub on_demand_rate_micros: u64,
}

/// Capacity integrals of one group over one interval, in micro-IE × ms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capacity {
    /// Reserved.
    pub reserved: u128,
    /// Used by streaming.
    pub streaming: u128,
    /// Kept free for streaming.
    pub headroom: u128,
    /// What batch could have leased.
    pub supply: u128,
    /// Leased to batch (hosts carrying flex work).
    pub leased: u128,
    /// Held by batch tasks (what is charged).
    pub allocated: u128,
    /// Reserved, paid for, unused.
    pub idle: u128,
}

/// One report row: a group over an interval.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Row {
    /// Interval start (ms since the Unix epoch; the sample actually used).
    pub start_ms: u64,
    /// Interval end (ms).
    pub end_ms: u64,
    /// The group (pool id, region, family or team).
    pub group: String,
    /// Capacity integrals (for team rows only `allocated` is set).
    pub capacity: Capacity,
    /// Internal charges, micro-USD.
    pub charges_micros: u64,
    /// Idle cost at the reserved rate, micro-USD.
    pub idle_cost_micros: u64,
    /// What the batch capacity would have cost on demand, micro-USD.
    pub on_demand_micros: u64,
    /// Work lost to preemption, micro-IE × ms.
    pub lost: u128,
    /// Preemptions.
    pub n_preemptions: u64,
    /// Preemptions beyond a job's disruption budget.
    pub n_over_budget: u64,
    /// Latest clearing price seen in the group at the interval's end,
    /// micro-USD per IE-hour (the highest of the group's pools).
    pub clearing_price_micros: u64,
    /// True if any pool in the row used the on-demand price as its reserved rate.
    pub rate_is_on_demand: bool,
}

impl Row {
    /// Utilization in parts per million: (streaming + leased) ÷ reserved;
    /// `None` with nothing reserved.
    pub fn utilization_ppm(&self) -> Option<u64> {
        let c = &self.capacity;
        (c.reserved > 0).then(|| ((c.streaming + c.leased) * 1_000_000 / c.reserved) as u64)
    }

    /// Savings in micro-USD (negative if the market cost more than on demand).
    pub fn savings_micros(&self) -> i128 {
        self.on_demand_micros as i128 - self.charges_micros as i128
    }
}

/// IE-hours of a micro-IE × ms integral, for display.
pub fn ie_hours(micro_ie_ms: u128) -> f64 {
    micro_ie_ms as f64 / MICRO_IE_MS_PER_IE_HOUR as f64
}

/// `micro_ie_ms` IE-hours at `rate_micros` per IE-hour, in micro-units,
/// rounded down.
fn cost(micro_ie_ms: u128, rate_micros: u64) -> u64 {
    (micro_ie_ms * u128::from(rate_micros) / MICRO_IE_MS_PER_IE_HOUR) as u64
}

/// How much a cumulative counter grew from `start` to `end`; a decrease is
/// a reset (see the module doc), after which it grew by `end`.
fn increase<T: Ord + std::ops::Sub<Output = T> + Copy>(start: T, end: T) -> T {
    if end >= start { end - start } else { end }
}

/// The rows of one interval: `end − start` per group, ordered by group.
/// Pools without a [`PoolMeta`] count under region/family `-` at rate 0.
pub fn interval(
    (start_ms, start): (u64, &LedgerSample),
    (end_ms, end): (u64, &LedgerSample),
    meta: &BTreeMap<core::PoolId, PoolMeta>,
    by: Grouping,
) -> Vec<Row> {
    let unknown = PoolMeta {
        region: "-".into(),
        family: "-".into(),
        reserved_rate_micros: 0,
        rate_source: RateSource::Configured,
        on_demand_rate_micros: 0,
    };
    let meta_of = |pool: &core::PoolId| meta.get(pool).unwrap_or(&unknown);
    let key = |pool: &core::PoolId, team: &str| -> String {
        match by {
            Grouping::Pool => pool.to_string(),
            Grouping::Region => meta_of(pool).region.clone(),
            Grouping::Family => meta_of(pool).family.clone(),
            Grouping::Team => team.to_string(),
        }
    };
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    fn row(rows: &mut BTreeMap<String, Row>, k: String, start_ms: u64, end_ms: u64) -> &mut Row {
        rows.entry(k.clone()).or_insert_with(|| Row {
            start_ms,
            end_ms,
            group: k,
            ..Row::default()
        })
    }
    if by != Grouping::Team {
        for e in &end.pools {
            let s = start.pools.iter().find(|s| s.pool == e.pool);
            let d =
                |f: fn(&core::PoolTotals) -> core::IeMs| increase(s.map_or(0, |s| f(s).0), f(e).0);
            let m = meta_of(&e.pool);
            let price = end
                .prices
                .iter()
                .find(|(p, _)| *p == e.pool)
                .map_or(0, |(_, x)| *x);
            let r = row(&mut rows, key(&e.pool, ""), start_ms, end_ms);
            let idle = d(|p| p.idle);
            r.capacity.reserved += d(|p| p.reserved);
            r.capacity.streaming += d(|p| p.streaming);
            r.capacity.headroom += d(|p| p.headroom);
            r.capacity.supply += d(|p| p.supply);
            r.capacity.leased += d(|p| p.leased);
            r.capacity.idle += idle;
            r.idle_cost_micros += cost(idle, m.reserved_rate_micros);
            r.clearing_price_micros = r.clearing_price_micros.max(price);
            r.rate_is_on_demand |= m.rate_source == RateSource::OnDemand;
        }
    }
    for e in &end.entries {
        let s = start
            .entries
            .iter()
            .find(|s| s.team == e.team && s.pool == e.pool);
        let held = increase(s.map_or(0, |s| s.held.0), e.held.0);
        let lost = increase(s.map_or(0, |s| s.lost.0), e.lost.0);
        let m = meta_of(&e.pool);
        let r = row(
            &mut rows,
            key(&e.pool, &e.team.to_string()),
            start_ms,
            end_ms,
        );
        r.capacity.allocated += held;
        r.charges_micros += increase(
            s.map_or(0, |s| s.charges.as_micros()),
            e.charges.as_micros(),
        );
        r.on_demand_micros += cost(held, m.on_demand_rate_micros);
        r.lost += lost;
        r.n_preemptions += increase(s.map_or(0, |s| s.n_preemptions), e.n_preemptions);
        r.n_over_budget += increase(s.map_or(0, |s| s.n_over_budget), e.n_over_budget);
        r.rate_is_on_demand |= by != Grouping::Team && m.rate_source == RateSource::OnDemand;
    }
    rows.into_values().collect()
}

/// The rows of consecutive intervals bounded by `samples` (in time order),
/// one [`interval`] per adjacent pair; a pair whose two samples are the
/// same instant (no sample fell inside that step) is skipped.
pub fn series(
    samples: &[(u64, LedgerSample)],
    meta: &BTreeMap<core::PoolId, PoolMeta>,
    by: Grouping,
) -> Vec<Row> {
    samples
        .windows(2)
        .filter(|w| w[0].0 < w[1].0)
        .flat_map(|w| interval((w[0].0, &w[0].1), (w[1].0, &w[1].1), meta, by))
        .collect()
}

/// One row per group summing `rows` (e.g. a [`series`]): the range's
/// totals, with a counter reset inside the range counted per step. The
/// clearing price is the latest row's.
pub fn totals(rows: &[Row]) -> Vec<Row> {
    let mut out: BTreeMap<&str, Row> = BTreeMap::new();
    for r in rows {
        let t = out.entry(&r.group).or_insert_with(|| Row {
            start_ms: r.start_ms,
            end_ms: r.end_ms,
            group: r.group.clone(),
            ..Row::default()
        });
        t.start_ms = t.start_ms.min(r.start_ms);
        if r.end_ms >= t.end_ms {
            t.end_ms = r.end_ms;
            t.clearing_price_micros = r.clearing_price_micros;
        }
        let (c, x) = (&mut t.capacity, &r.capacity);
        c.reserved += x.reserved;
        c.streaming += x.streaming;
        c.headroom += x.headroom;
        c.supply += x.supply;
        c.leased += x.leased;
        c.allocated += x.allocated;
        c.idle += x.idle;
        t.charges_micros += r.charges_micros;
        t.idle_cost_micros += r.idle_cost_micros;
        t.on_demand_micros += r.on_demand_micros;
        t.lost += r.lost;
        t.n_preemptions += r.n_preemptions;
        t.n_over_budget += r.n_over_budget;
        t.rate_is_on_demand |= r.rate_is_on_demand;
    }
    out.into_values().collect()
}

/// The sample times to keep when down-sampling `times` (sorted) to one per
/// `step_ms` bucket: the first of each bucket. Because samples are
/// cumulative, deleting the others loses resolution, never accuracy.
pub fn thin(times: &[u64], step_ms: u64) -> Vec<u64> {
    let mut last_bucket = None;
    times
        .iter()
        .copied()
        .filter(|t| {
            let b = t / step_ms.max(1);
            let first = last_bucket != Some(b);
            last_bucket = Some(b);
            !first
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600_000;
    /// One IE held for one hour, in micro-IE × ms.
    const IEH: u128 = MICRO_IE_MS_PER_IE_HOUR;

    fn totals_of(
        pool: &str,
        reserved: u128,
        streaming: u128,
        leased: u128,
        idle: u128,
    ) -> core::PoolTotals {
        core::PoolTotals {
            pool: pool.into(),
            reserved: core::IeMs(reserved * IEH),
            streaming: core::IeMs(streaming * IEH),
            headroom: core::IeMs((reserved - streaming - leased - idle) * IEH),
            leased: core::IeMs(leased * IEH),
            idle: core::IeMs(idle * IEH),
            supply: core::IeMs((leased + idle) * IEH),
            violation: core::IeMs(0),
        }
    }

    fn entry(team: &str, pool: &str, held: u128, charges: u64, n_pre: u64) -> core::LedgerEntry {
        core::LedgerEntry {
            team: team.into(),
            pool: pool.into(),
            held: core::IeMs(held * IEH),
            charges: core::Money::from_micros(charges),
            lost: core::IeMs(0),
            n_preemptions: n_pre,
            n_over_budget: 0,
        }
    }

    fn meta() -> BTreeMap<core::PoolId, PoolMeta> {
        let m = |region: &str, family: &str, source| PoolMeta {
            region: region.into(),
            family: family.into(),
            // 2 USD per IE-hour reserved, 3 on demand.
            reserved_rate_micros: 2_000_000,
            rate_source: source,
            on_demand_rate_micros: 3_000_000,
        };
        BTreeMap::from([
            (
                "use1-m5".into(),
                m("us-east-1", "m5", RateSource::Configured),
            ),
            ("use1-c5".into(), m("us-east-1", "c5", RateSource::OnDemand)),
        ])
    }

    /// A recorded series of cumulative samples, by hour:
    /// - `use1-m5`: 10 IE reserved for hours 0–1; its 4-IE reservation
    ///   expires at hour 1, so 6 IE for hours 1–2. Per hour: streaming 4,
    ///   leased 3 then 1, idle 2 then 0 (headroom makes up the rest).
    /// - `use1-c5`: 5 IE reserved, streaming 1, leased 2, idle 1 each hour.
    /// - team `enc` holds 3 IE-hours then 1 in m5 (charged 1.50 then 0.50)
    ///   and 2 IE-hours per hour in c5 (charged 1.00 per hour); one
    ///   preemption in hour 1–2.
    fn recorded() -> Vec<(u64, LedgerSample)> {
        let s = |pools, entries| LedgerSample {
            entries,
            pools,
            prices: vec![("use1-m5".into(), 500_000), ("use1-c5".into(), 500_000)],
        };
        vec![
            (
                0,
                s(
                    vec![
                        totals_of("use1-m5", 0, 0, 0, 0),
                        totals_of("use1-c5", 0, 0, 0, 0),
                    ],
                    vec![],
                ),
            ),
            (
                H,
                s(
                    vec![
                        totals_of("use1-m5", 10, 4, 3, 2),
                        totals_of("use1-c5", 5, 1, 2, 1),
                    ],
                    vec![
                        entry("enc", "use1-m5", 3, 1_500_000, 0),
                        entry("enc", "use1-c5", 2, 1_000_000, 0),
                    ],
                ),
            ),
            (
                2 * H,
                s(
                    vec![
                        totals_of("use1-m5", 16, 8, 4, 2),
                        totals_of("use1-c5", 10, 2, 4, 2),
                    ],
                    vec![
                        entry("enc", "use1-m5", 4, 2_000_000, 1),
                        entry("enc", "use1-c5", 4, 2_000_000, 0),
                    ],
                ),
            ),
        ]
    }

    #[test]
    fn pool_figures_over_a_range_spanning_a_reservation_expiring() {
        let rec = recorded();
        let rows = interval((0, &rec[0].1), (2 * H, &rec[2].1), &meta(), Grouping::Pool);
        let m5 = rows.iter().find(|r| r.group == "use1-m5").unwrap();
        // Reserved 10 + 6 = 16 IE-hours; used (8 streaming + 4 leased) → 75 %.
        assert_eq!(m5.capacity.reserved, 16 * IEH);
        assert_eq!(m5.utilization_ppm(), Some(750_000));
        // Idle 2 IE-hours at 2 USD = 4 USD.
        assert_eq!(m5.idle_cost_micros, 4_000_000);
        // Savings: 4 IE-hours held × 3 USD on demand − 2 USD charged = 10 USD.
        assert_eq!(m5.on_demand_micros, 12_000_000);
        assert_eq!(m5.savings_micros(), 10_000_000);
        assert!(!m5.rate_is_on_demand);
        assert_eq!(m5.n_preemptions, 1);
        // The hour after the expiry alone: 6 reserved, 4 + 1 used → 83.3333 %.
        let rows = interval((H, &rec[1].1), (2 * H, &rec[2].1), &meta(), Grouping::Pool);
        let m5 = rows.iter().find(|r| r.group == "use1-m5").unwrap();
        assert_eq!(m5.capacity.reserved, 6 * IEH);
        assert_eq!(m5.utilization_ppm(), Some(833_333));
        assert_eq!(m5.idle_cost_micros, 0);
        let c5 = rows.iter().find(|r| r.group == "use1-c5").unwrap();
        assert!(c5.rate_is_on_demand, "c5 has no reservation rate");
    }

    #[test]
    fn grouping_by_region_family_and_team_sums_the_pools() {
        let rec = recorded();
        let (a, b) = ((0, &rec[0].1), (2 * H, &rec[2].1));
        let region = interval(a, b, &meta(), Grouping::Region);
        assert_eq!(region.len(), 1);
        let r = &region[0];
        assert_eq!(r.group, "us-east-1");
        // Reserved 16 + 10 = 26; used 12 + 6 = 18 → 692,307 ppm.
        assert_eq!(r.capacity.reserved, 26 * IEH);
        assert_eq!(r.utilization_ppm(), Some(692_307));
        // Idle 2 + 2 IE-hours at 2 USD.
        assert_eq!(r.idle_cost_micros, 8_000_000);
        assert!(r.rate_is_on_demand);
        let family = interval(a, b, &meta(), Grouping::Family);
        let groups: Vec<&str> = family.iter().map(|r| r.group.as_str()).collect();
        assert_eq!(groups, ["c5", "m5"]);
        let team = interval(a, b, &meta(), Grouping::Team);
        assert_eq!(team.len(), 1);
        let t = &team[0];
        assert_eq!((t.group.as_str(), t.capacity.allocated), ("enc", 8 * IEH));
        assert_eq!(t.capacity.reserved, 0, "a team holds no reservation");
        // 8 IE-hours × 3 USD − 4 USD charged.
        assert_eq!(t.charges_micros, 4_000_000);
        assert_eq!(t.savings_micros(), 20_000_000);
    }

    #[test]
    fn totals_of_the_steps_equal_the_range_and_survive_a_counter_reset() {
        let rec = recorded();
        let whole = interval((0, &rec[0].1), (2 * H, &rec[2].1), &meta(), Grouping::Pool);
        let steps = series(&rec, &meta(), Grouping::Pool);
        assert_eq!(steps.len(), 4, "two steps × two pools");
        assert_eq!(totals(&steps), whole);
        // The core restarts from zero after hour 2 and accrues 1 IE-hour
        // reserved (all idle) by hour 3: that hour counts 1, not 16 − 1.
        let mut rec = rec;
        let restarted = LedgerSample {
            entries: vec![],
            pools: vec![totals_of("use1-m5", 1, 0, 0, 1)],
            prices: vec![],
        };
        rec.push((3 * H, restarted));
        let steps = series(&rec, &meta(), Grouping::Pool);
        let m5 = totals(&steps)
            .into_iter()
            .find(|r| r.group == "use1-m5")
            .unwrap();
        assert_eq!(m5.capacity.reserved, 17 * IEH);
        assert_eq!(m5.capacity.idle, 3 * IEH);
        assert_eq!(m5.charges_micros, 2_000_000);
    }

    #[test]
    fn down_sampling_keeps_the_range_figures_exact() {
        // Minute samples over two hours of a constant 10 IE reserved, 7 used.
        let minute = 60_000;
        let samples: Vec<(u64, LedgerSample)> = (0..=120u64)
            .map(|i| {
                let at = i * minute;
                let ms = u128::from(at);
                let t = core::PoolTotals {
                    pool: "use1-m5".into(),
                    reserved: core::IeMs(10_000_000 * ms),
                    streaming: core::IeMs(7_000_000 * ms),
                    headroom: core::IeMs(0),
                    leased: core::IeMs(0),
                    idle: core::IeMs(3_000_000 * ms),
                    supply: core::IeMs(3_000_000 * ms),
                    violation: core::IeMs(0),
                };
                (
                    at,
                    LedgerSample {
                        entries: vec![],
                        pools: vec![t],
                        prices: vec![],
                    },
                )
            })
            .collect();
        let times: Vec<u64> = samples.iter().map(|(t, _)| *t).collect();
        let deleted = thin(&times, H);
        // Kept: the first sample of each hour bucket (0, 60 and 120 minutes).
        assert_eq!(deleted.len(), 121 - 3);
        let kept: Vec<(u64, LedgerSample)> = samples
            .into_iter()
            .filter(|(t, _)| !deleted.contains(t))
            .collect();
        assert_eq!(
            kept.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            [0, H, 2 * H]
        );
        let rows = series(&kept, &meta(), Grouping::Pool);
        assert_eq!(rows.len(), 2);
        for r in &rows {
            assert_eq!(r.capacity.reserved, 10 * IEH);
            assert_eq!(r.utilization_ppm(), Some(700_000));
            assert_eq!(r.idle_cost_micros, 6_000_000);
        }
    }
}
