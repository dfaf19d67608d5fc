//! The internal spot market: reserved capacity per pool in instance
//! equivalents, streaming demand and headroom, the supply batch work may
//! lease, and the clearing price.
//!
//! ```text
//!   reserved ─┬─ streaming demand (input; raised at once by a failover)
//!             ├─ headroom = daily_scaling × streaming + failover buffer
//!             └─ supply = max(0, reserved − streaming − headroom)
//!                  ├─ leased: IE of hosts that carry flex work (≤ supply)
//!                  └─ idle: supply not leased
//! ```
//!
//! **Leases are whole hosts.** An executor host counts as leased, by its IE,
//! while it carries at least one flex task (including tasks that are still
//! stopping: capacity returns to streaming only when the work has stopped).
//! A flex task may go to an unleased host only if the pool's supply covers
//! that host's IE ([`PoolSupplyChecker`]). Critical tasks ignore supply.
//!
//! **Failover buffer.** A pool keeps room for the largest inflow that the
//! failure of any one other region would send it: when a region fails, its
//! traffic is shared by every surviving pool in proportion to reserved IE.
//! (The max over regions, not the sum of all the others over N−1, which is
//! about twice too much with three similar regions.) While a region is failed
//! over, its traffic *moves*: its own pools carry no demand, the survivors'
//! demand rises by their inflow, and their buffer is consumed by exactly that
//! inflow, so no survivor's supply rises at a failover.
//!
//! **Clearing price** (per pool, per round). When the pool is *contended* —
//! a flex job went unplaced because supply ran out and the pool cannot lease
//! another host — the price is the highest losing bid in that pool (second
//! price, as Armada bills), capped by the lowest bid that won one of its
//! leases this round, and never below the floor. Otherwise it is the floor.
//! Each lease is charged `min(price, its bid)` while it is held.
//!
//! **Forecast.** With a demand forecast (`Scheduler::handle_demand_forecast`)
//! each pool keeps a forecast supply curve; placement keeps work off leases
//! the forecast says end first, and hosts needed back soon are drained
//! (`docs/ARCHITECTURE.md`, "Forecast-aware leasing").

use std::collections::BTreeSet;

use crate::model::ledger::{Ledger, PoolSnapshot};
use crate::model::overlay::View;
use crate::spec::catalog::Catalog;
use crate::spec::error::InputError;
use crate::spec::market::{MarketConfig, PoolSpec, PoolStatus, Reservation};
use crate::units::ids::{HostIdx, PoolId, PoolIdx};
use crate::units::ie::Ie;
use crate::units::price::Price;
use crate::units::time::Timestamp;
use crate::util::FxMap;

/// Market state of one pool.
#[derive(Clone, Debug)]
pub(crate) struct PoolState {
    pub(crate) id: PoolId,
    /// `None` until the shell configures the pool: then batch use is not limited.
    pub(crate) spec: Option<PoolSpec>,
    pub(crate) reservations: Vec<Reservation>,
    /// IE of the reservations active at the last market input or tick.
    pub(crate) reserved: Ie,
    pub(crate) streaming: Ie,
    pub(crate) leased: Ie,
    pub(crate) n_hosts: u32,
    pub(crate) n_leased_hosts: u32,
    /// Hosts in the pool, for reclaim and compaction.
    pub(crate) hosts: BTreeSet<HostIdx>,
    /// The pool's leases: its hosts that carry flex work
    /// (`n_flex_tasks > 0`), kept in step by [`Market::set_leased`]. A round
    /// that looks at leases (reclaim, drains, lease-end predictions) walks
    /// these instead of every host of the pool: on a 50,000-host fleet most
    /// rounds have nothing to do, and the walk over every host was most of
    /// what they cost.
    pub(crate) leased_hosts: BTreeSet<HostIdx>,
    /// The pool's hosts marked returning (`Host::returning` is set), kept in
    /// step by [`crate::model::State::set_returning`]. Only leased hosts are
    /// marked: commit marks a host only while it carries flex work, and its
    /// last flex task leaving clears the mark.
    pub(crate) returning_hosts: BTreeSet<HostIdx>,
    pub(crate) clearing_price: Price,
    /// The smallest IE of any host that joined the pool (never raised when
    /// hosts leave, which only makes [`Market::can_lease_new_host`] conservative).
    pub(crate) min_host_ie: Option<Ie>,
    /// Cached by [`Market::recompute`] after every market input.
    pub(crate) streaming_now: Ie,
    pub(crate) headroom: Ie,
    /// `None` for unconfigured pools (no limit).
    pub(crate) supply: Option<Ie>,
    /// The streaming-demand forecast the shell reported last: points
    /// (time, demand) in time order, and when it arrived.
    pub(crate) forecast: Vec<(Timestamp, Ie)>,
    pub(crate) forecast_at: Timestamp,
    /// Each reservation's IE (count × one instance), in `reservations`'
    /// order, so counting them never looks the catalog up again.
    pub(crate) reservation_ie: Vec<Ie>,
    /// The forecast supply as points `(t, supply)` from `forecast_at` on,
    /// rebuilt by [`Market::recompute`]: linear between points (a
    /// reservation boundary has a point just before it and one at it).
    pub(crate) supply_curve: Vec<(Timestamp, Ie)>,
}

/// The hosts of pool `p` that carry flex work as `view` sees them, in host
/// order: the same list as filtering every host of the pool by
/// `view.n_flex(h) > 0`, without walking them all. Why it is the same: an
/// overlay changes a host's flex count only by charging a task onto it or
/// off it; a host it charged onto is in its placements, and a host it
/// charged off held flex work before, so it is among the committed leases.
/// Every other host keeps its committed count.
pub(crate) fn leased_hosts(view: &View<'_>, p: PoolIdx) -> Vec<HostIdx> {
    let state = view.state;
    let placed = view.overlay.placements();
    let mut hosts: Vec<HostIdx> = state.market.pools[p.get()]
        .leased_hosts
        .iter()
        .copied()
        .chain(
            placed
                .iter()
                .map(|&(_, h)| h)
                .filter(|&h| state.hosts[h].pool == p),
        )
        .filter(|&h| view.n_flex(h) > 0)
        .collect();
    if !placed.is_empty() {
        hosts.sort_unstable();
        hosts.dedup();
    }
    hosts
}

/// Supply, demand and leases for every pool.
#[derive(Clone, Debug)]
pub(crate) struct Market {
    pub(crate) config: MarketConfig,
    pub(crate) catalog: Catalog,
    pub(crate) pools: Vec<PoolState>,
    pub(crate) pool_by_id: FxMap<PoolId, PoolIdx>,
    /// Regions currently failed over (their traffic served elsewhere).
    pub(crate) failed_over: BTreeSet<String>,
    /// The instant the pools' `reserved` figures were counted at.
    pub(crate) reserved_at: Timestamp,
    pub(crate) ledger: Ledger,
}

impl Market {
    pub(crate) fn new(config: MarketConfig) -> Result<Market, InputError> {
        let floor = config.floor_price;
        let catalog = Catalog::builtin()
            .with_overrides(&config.catalog_overrides, &config.reference_instance_type)?;
        Ok(Market {
            config,
            catalog,
            pools: Vec::new(),
            pool_by_id: FxMap::default(),
            failed_over: BTreeSet::new(),
            reserved_at: Timestamp::ZERO,
            ledger: Ledger::new(floor),
        })
    }

    /// The pool's index, creating an unconfigured entry on first sight.
    pub(crate) fn pool_idx(&mut self, id: &PoolId) -> PoolIdx {
        if let Some(&p) = self.pool_by_id.get(id) {
            return p;
        }
        let idx = PoolIdx::from_usize(self.pools.len());
        self.pools.push(PoolState {
            id: id.clone(),
            spec: None,
            reservations: Vec::new(),
            reserved: Ie::ZERO,
            streaming: Ie::ZERO,
            leased: Ie::ZERO,
            n_hosts: 0,
            n_leased_hosts: 0,
            hosts: BTreeSet::new(),
            leased_hosts: BTreeSet::new(),
            returning_hosts: BTreeSet::new(),
            clearing_price: self.config.floor_price,
            streaming_now: Ie::ZERO,
            headroom: Ie::ZERO,
            supply: None,
            min_host_ie: None,
            forecast: Vec::new(),
            forecast_at: Timestamp::ZERO,
            reservation_ie: Vec::new(),
            supply_curve: Vec::new(),
        });
        self.pool_by_id.insert(id.clone(), idx);
        idx
    }

    fn regions(&self) -> BTreeSet<&str> {
        self.pools
            .iter()
            .filter_map(|p| p.spec.as_ref())
            .map(|s| s.region.as_str())
            .collect()
    }

    /// Streaming demand reported by a region's pools.
    fn region_demand(&self, region: &str) -> Ie {
        self.pools
            .iter()
            .filter(|p| p.spec.as_ref().is_some_and(|s| s.region == region))
            .map(|p| p.streaming)
            .sum()
    }

    /// The part of `demand` (the traffic of the regions in `failed`) that
    /// lands in pool `p` when those regions fail over: the surviving pools
    /// take it in proportion to their reserved IE (equally if none has any).
    /// Exact: integer micro-IE, rounded down.
    fn inflow(&self, p: PoolIdx, failed: &BTreeSet<&str>, demand: Ie) -> Ie {
        let survives = |q: &PoolState| {
            q.spec
                .as_ref()
                .is_some_and(|s| !failed.contains(s.region.as_str()))
        };
        let pool = &self.pools[p.get()];
        if !survives(pool) || demand == Ie::ZERO {
            return Ie::ZERO;
        }
        let (mut total, mut n) = (0u128, 0u128);
        for q in self.pools.iter().filter(|q| survives(q)) {
            total += u128::from(q.reserved.as_micro());
            n += 1;
        }
        let d = u128::from(demand.as_micro());
        // Equal shares when nothing is reserved among the survivors.
        let micro = (d * u128::from(pool.reserved.as_micro()))
            .checked_div(total)
            .unwrap_or(d / n);
        Ie::from_micro(micro as u64)
    }

    /// True if the pool's region is failed over (its traffic moved away).
    pub(crate) fn is_evacuated(&self, p: PoolIdx) -> bool {
        self.pools[p.get()]
            .spec
            .as_ref()
            .is_some_and(|s| self.failed_over.contains(&s.region))
    }

    /// (effective streaming demand, headroom) of a configured pool right now.
    ///
    /// - A pool keeps a failover buffer for the largest inflow that the
    ///   failure of any *one* other region would send it (see
    ///   [`Market::inflow`]), times the headroom policy's multiplier, or the
    ///   policy's fixed buffer.
    /// - While regions are failed over, their traffic *moves*: their pools
    ///   carry no streaming demand (and keep no headroom), each surviving
    ///   pool's demand rises by its inflow, and its buffer is consumed by
    ///   exactly that inflow. So a failover never raises a survivor's
    ///   supply: it falls by the daily-scaling share of the inflow, and by
    ///   more if the inflow exceeds the buffer.
    pub(crate) fn demand_and_headroom(&self, idx: PoolIdx) -> (Ie, Ie) {
        let pool = &self.pools[idx.get()];
        let Some(spec) = &pool.spec else {
            return (Ie::ZERO, Ie::ZERO);
        };
        if self.failed_over.contains(&spec.region) {
            return (Ie::ZERO, Ie::ZERO);
        }
        let failed: BTreeSet<&str> = self.failed_over.iter().map(String::as_str).collect();
        let inflow_now: Ie = failed
            .iter()
            .map(|x| self.inflow(idx, &failed, self.region_demand(x)))
            .sum();
        let streaming = pool.streaming + inflow_now;
        let daily = streaming.scale(spec.headroom.daily_scaling_fraction);
        let buffer = match spec.headroom.failover_fixed {
            Some(fixed) => fixed,
            None => self
                .regions()
                .into_iter()
                .filter(|r| *r != spec.region)
                .map(|r| {
                    let one: BTreeSet<&str> = [r].into_iter().collect();
                    self.inflow(idx, &one, self.region_demand(r))
                })
                .max()
                .unwrap_or(Ie::ZERO)
                .scale(spec.headroom.failover_multiplier),
        };
        (streaming, daily + buffer.saturating_sub(inflow_now))
    }

    /// Refreshes every pool's effective streaming demand, headroom and supply
    /// (headroom depends on other regions, so one input can move them all).
    pub(crate) fn recompute(&mut self) {
        for idx in 0..self.pools.len() {
            let (streaming, headroom) = self.demand_and_headroom(PoolIdx::from_usize(idx));
            let pool = &self.pools[idx];
            let supply = pool.spec.as_ref().map(|_| {
                pool.reserved
                    .saturating_sub(streaming)
                    .saturating_sub(headroom)
            });
            let pool = &mut self.pools[idx];
            pool.streaming_now = streaming;
            pool.headroom = headroom;
            pool.supply = supply;
        }
        for idx in 0..self.pools.len() {
            self.rebuild_supply_curve(PoolIdx::from_usize(idx));
        }
    }

    /// True if the pool has a demand forecast reaching past `now`.
    pub(crate) fn has_forecast(&self, p: PoolIdx, now: Timestamp) -> bool {
        let pool = &self.pools[p.get()];
        pool.spec.is_some() && pool.forecast.last().is_some_and(|(t, _)| *t > now)
    }

    /// The reported streaming demand the forecast predicts for `t`: linear
    /// between its points, from the demand reported when it arrived to its
    /// first point, and its last value after it.
    fn forecast_demand(&self, p: PoolIdx, t: Timestamp) -> Ie {
        let pool = &self.pools[p.get()];
        let mut prev = (pool.forecast_at, pool.streaming);
        for &(pt, v) in &pool.forecast {
            if t <= pt {
                if pt <= prev.0 {
                    return v;
                }
                // Linear between prev and (pt, v), in exact integers.
                let (t0, v0) = (
                    u128::from(prev.0.as_millis()),
                    i128::from(prev.1.as_micro()),
                );
                let (t1, v1) = (u128::from(pt.as_millis()), i128::from(v.as_micro()));
                let x = u128::from(t.as_millis().max(prev.0.as_millis()));
                let micro = v0 + (v1 - v0) * ((x - t0) as i128) / ((t1 - t0) as i128);
                return Ie::from_micro(micro.max(0) as u64);
            }
            prev = (pt, v);
        }
        prev.1
    }

    /// The supply the forecast predicts for `t`: reservations active then,
    /// less the forecast demand (with any failover inflow in force now) and
    /// its headroom (the daily share, plus the failover buffer as it is now).
    pub(crate) fn forecast_supply(&self, p: PoolIdx, t: Timestamp) -> Ie {
        let pool = &self.pools[p.get()];
        let Some(spec) = &pool.spec else {
            return Ie::ZERO;
        };
        let inflow_now = pool.streaming_now.saturating_sub(pool.streaming);
        let daily_now = pool
            .streaming_now
            .scale(spec.headroom.daily_scaling_fraction);
        let buffer_now = pool.headroom.saturating_sub(daily_now);
        let demand = self.forecast_demand(p, t) + inflow_now;
        let headroom = demand.scale(spec.headroom.daily_scaling_fraction) + buffer_now;
        self.active_reserved(p, t)
            .saturating_sub(demand)
            .saturating_sub(headroom)
    }

    /// Rebuilds a pool's forecast supply curve (after any market input).
    fn rebuild_supply_curve(&mut self, p: PoolIdx) {
        let pool = &self.pools[p.get()];
        if pool.forecast.is_empty() || pool.spec.is_none() {
            self.pools[p.get()].supply_curve.clear();
            return;
        }
        let from = pool.forecast_at;
        let mut times: Vec<Timestamp> = std::iter::once(from)
            .chain(pool.forecast.iter().map(|(t, _)| *t))
            .chain(
                pool.reservations
                    .iter()
                    .flat_map(|r| [r.start, r.end])
                    .flatten()
                    .flat_map(|b| [Timestamp::from_millis(b.as_millis().saturating_sub(1)), b]),
            )
            .filter(|t| *t >= from)
            .collect();
        times.sort_unstable();
        times.dedup();
        let curve = times
            .into_iter()
            .map(|t| (t, self.forecast_supply(p, t)))
            .collect();
        self.pools[p.get()].supply_curve = curve;
    }

    /// The forecast supply at `t` read off the curve: linear between its
    /// points, its last value after them.
    fn curve_at(curve: &[(Timestamp, Ie)], t: Timestamp) -> Ie {
        let i = curve.partition_point(|(pt, _)| *pt <= t);
        if i == 0 {
            return curve.first().map_or(Ie::ZERO, |c| c.1);
        }
        let (t0, v0) = curve[i - 1];
        let Some(&(t1, v1)) = curve.get(i) else {
            return v0;
        };
        let (v0, v1) = (i128::from(v0.as_micro()), i128::from(v1.as_micro()));
        let span = i128::from(t1.as_millis() - t0.as_millis()).max(1);
        let x = i128::from(t.as_millis() - t0.as_millis());
        Ie::from_micro((v0 + (v1 - v0) * x / span).max(0) as u64)
    }

    /// The least supply the forecast predicts over `[from, to]` (and never
    /// more than the supply now): the curve is linear between its points, so
    /// the minimum is at one of them or at an end.
    pub(crate) fn min_forecast_supply(&self, p: PoolIdx, from: Timestamp, to: Timestamp) -> Ie {
        let pool = &self.pools[p.get()];
        let now_supply = pool.supply.unwrap_or(Ie::ZERO);
        let curve = &pool.supply_curve;
        if curve.is_empty() {
            return now_supply;
        }
        let i = curve.partition_point(|(t, _)| *t <= from);
        curve[i..]
            .iter()
            .take_while(|(t, _)| *t < to)
            .map(|(_, v)| *v)
            .chain([Self::curve_at(curve, from), Self::curve_at(curve, to)])
            .fold(now_supply, Ie::min)
    }

    /// The first instant in `[from, to]` at which the forecast supply falls
    /// below `leased`, if it does.
    pub(crate) fn forecast_shortfall_at(
        &self,
        p: PoolIdx,
        leased: Ie,
        from: Timestamp,
        to: Timestamp,
    ) -> Option<Timestamp> {
        let curve = &self.pools[p.get()].supply_curve;
        let i = curve.partition_point(|(t, _)| *t <= from);
        let points = std::iter::once((from, Self::curve_at(curve, from)))
            .chain(curve[i..].iter().copied().take_while(|(t, _)| *t < to))
            .chain(std::iter::once((to, Self::curve_at(curve, to))));
        let mut prev: Option<(Timestamp, Ie)> = None;
        for (t, s) in points {
            if s < leased {
                return Some(match prev {
                    Some((t0, s0)) if s0 > s => {
                        // s0 ≥ leased > s: the crossing is in (t0, t].
                        let span = u128::from(t.as_millis() - t0.as_millis());
                        let drop = u128::from((s0 - s).as_micro());
                        let above = u128::from((s0 - leased).as_micro());
                        Timestamp::from_millis(t0.as_millis() + (span * above / drop.max(1)) as u64)
                    }
                    _ => t,
                });
            }
            prev = Some((t, s));
        }
        None
    }

    /// For thresholds in descending order, the first instant at or after
    /// `from` at which the forecast supply falls below each (`None`: not
    /// within the forecast). The instants are non-decreasing, so one sweep
    /// along the curve answers them all.
    pub(crate) fn shortfall_times(
        &self,
        p: PoolIdx,
        from: Timestamp,
        thresholds: &[Ie],
    ) -> Vec<Option<Timestamp>> {
        let curve = &self.pools[p.get()].supply_curve;
        if curve.is_empty() {
            return vec![None; thresholds.len()];
        }
        let start = curve.partition_point(|(t, _)| *t <= from);
        let mut points: Vec<(Timestamp, Ie)> = vec![(from, Self::curve_at(curve, from))];
        points.extend(curve[start..].iter().copied());
        let mut out = Vec::with_capacity(thresholds.len());
        let mut i = 0; // the point at or after which the next crossing lies
        for &level in thresholds {
            while i < points.len() && points[i].1 >= level {
                i += 1;
            }
            out.push(points.get(i).map(|&(t, s)| {
                if i == 0 {
                    return t;
                }
                // points[i-1] ≥ level > s: the crossing is in (t0, t].
                let (t0, s0) = points[i - 1];
                let span = u128::from(t.as_millis() - t0.as_millis());
                let drop = u128::from((s0 - s).as_micro()).max(1);
                let above = u128::from((s0 - level).as_micro());
                Timestamp::from_millis(t0.as_millis() + (span * above / drop) as u64)
            }));
            // A lower level is first crossed no earlier; step back one point
            // so the next search starts at this crossing's segment.
            i = i.saturating_sub(1);
        }
        out
    }

    /// True if the forecast cannot end any of the pool's leases before
    /// `until`: the least forecast supply over `[now, until]` is above the
    /// pool's leased IE. Then no lease-end prediction (see
    /// `round::predict_pool_lease_ends`) falls before `until`, and a check
    /// that only asks "does this lease end before `until`?" need not work
    /// the predictions out (ranking every lease of the pool by work left).
    ///
    /// Why, exactly and not just roughly: a prediction is
    /// [`Market::shortfall_times`] for a level at most the leased IE, that
    /// is the first point on or after `now` below the level, and a crossing
    /// on the segment that ends there, rounded down. Every point this
    /// minimum reads (the curve's points in `[now, until)` and its values at
    /// both ends) is at least one micro-IE above the level, so that first
    /// point lies after `until`. If its segment starts at or after `until`,
    /// so does the crossing. Otherwise the minimum read the segment's line
    /// at `until`, rounded up by under one micro-IE, so the line is still
    /// above the level there (the sweep's first segment starts at its own
    /// rounded-up value at `now`, which only raises it); the line's
    /// crossing is after `until`, and rounded down it is not before it.
    pub(crate) fn leases_outlast(&self, p: PoolIdx, now: Timestamp, until: Timestamp) -> bool {
        let pool = &self.pools[p.get()];
        !self.has_forecast(p, now) || self.min_forecast_supply(p, now, until) > pool.leased
    }

    /// True if the pool has a supply, so that its leased total can change
    /// a placement check: without one (a pool the shell never configured)
    /// `PoolSupplyChecker` accepts flex work on any host not being reclaimed
    /// and [`Market::can_lease_with`] is true whatever is leased, so a new
    /// lease changes no other host's feasibility.
    pub(crate) fn limits_leases(&self, pool: PoolIdx) -> bool {
        self.pools
            .get(pool.get())
            .is_some_and(|p| p.supply.is_some())
    }

    /// True if flex work may lease some host of this pool that carries no
    /// flex work now. When false, a flex search need not visit such hosts.
    ///
    /// `leased` is the pool's leased IE as the caller sees it (a round's
    /// tentative figure).
    pub(crate) fn can_lease_with(&self, pool: PoolIdx, leased: Ie) -> bool {
        let Some(p) = self.pools.get(pool.get()) else {
            return true;
        };
        if self.is_evacuated(pool) && !self.config.lease_in_evacuated_regions {
            return false;
        }
        match (p.supply, p.min_host_ie) {
            (None, _) => true,
            (Some(supply), Some(min_ie)) => leased <= supply && leased + min_ie <= supply,
            (Some(_), None) => false,
        }
    }

    /// Moves the reservation figures to instant `at` (a reservation
    /// boundary, or an input's `now`): accrues every pool at the figures in
    /// force until `at`, then recounts the reservations active at `at`.
    pub(crate) fn refresh_reservations(&mut self, at: Timestamp) {
        for p in 0..self.pools.len() {
            let p = PoolIdx::from_usize(p);
            let snapshot = self.snapshot(p);
            self.ledger.accrue_pool(at, p, snapshot);
        }
        for idx in 0..self.pools.len() {
            self.pools[idx].reserved = self.active_reserved(PoolIdx::from_usize(idx), at);
        }
        self.reserved_at = self.reserved_at.max(at);
        self.recompute();
    }

    /// IE of a pool's reservations that are active at `now`. Their types
    /// were validated against the catalog when the reservations came in.
    pub(crate) fn active_reserved(&self, pool: PoolIdx, now: Timestamp) -> Ie {
        let pool = &self.pools[pool.get()];
        pool.reservations
            .iter()
            .zip(&pool.reservation_ie)
            .filter(|(r, _)| r.is_active(now))
            .map(|(_, ie)| *ie)
            .sum()
    }

    /// Sets a pool's reservations (their types were validated against the
    /// catalog), with each one's IE counted once.
    pub(crate) fn set_reservations(&mut self, pool: PoolIdx, reservations: Vec<Reservation>) {
        let ie = reservations
            .iter()
            .map(|r| {
                let one = self
                    .catalog
                    .ie_of(&r.instance_type)
                    .expect("validated on input");
                Ie::from_micro(one.as_micro() * u64::from(r.count))
            })
            .collect();
        let p = &mut self.pools[pool.get()];
        p.reservations = reservations;
        p.reservation_ie = ie;
    }

    /// The next instant after `now` at which a reservation starts or ends.
    pub(crate) fn next_reservation_change(&self, now: Timestamp) -> Option<Timestamp> {
        self.pools
            .iter()
            .flat_map(|p| &p.reservations)
            .flat_map(|r| [r.start, r.end])
            .flatten()
            .filter(|t| *t > now)
            .min()
    }

    /// The figures the ledger integrates for one pool.
    pub(crate) fn snapshot(&self, idx: PoolIdx) -> PoolSnapshot {
        let pool = &self.pools[idx.get()];
        PoolSnapshot {
            reserved: pool.reserved,
            streaming: pool.streaming_now,
            headroom: pool.headroom,
            supply: pool.supply.unwrap_or(Ie::ZERO),
            leased: pool.leased,
        }
    }

    pub(crate) fn status(&self, idx: PoolIdx) -> PoolStatus {
        let pool = &self.pools[idx.get()];
        let supply = pool.supply.unwrap_or(Ie::ZERO);
        PoolStatus {
            pool: pool.id.clone(),
            region: pool
                .spec
                .as_ref()
                .map(|s| s.region.clone())
                .unwrap_or_default(),
            reserved: pool.reserved,
            streaming: pool.streaming_now,
            headroom: pool.headroom,
            supply,
            leased: pool.leased,
            idle: supply.saturating_sub(pool.leased),
            clearing_price: pool.clearing_price,
            n_hosts: pool.n_hosts,
            n_leased_hosts: pool.n_leased_hosts,
        }
    }

    /// Called when host `h` of `pool` gains its first flex task (`leased =
    /// true`) or loses its last.
    pub(crate) fn set_leased(
        &mut self,
        now: Timestamp,
        pool: PoolIdx,
        h: HostIdx,
        host_ie: Ie,
        leased: bool,
    ) {
        let snapshot = self.snapshot(pool);
        self.ledger.accrue_pool(now, pool, snapshot);
        let p = &mut self.pools[pool.get()];
        let changed = if leased {
            p.leased_hosts.insert(h)
        } else {
            p.leased_hosts.remove(&h)
        };
        debug_assert!(changed, "a host is leased or released once");
        if leased {
            p.leased += host_ie;
            p.n_leased_hosts += 1;
        } else {
            p.leased -= host_ie;
            p.n_leased_hosts = p
                .n_leased_hosts
                .checked_sub(1)
                .expect("a pool never releases more hosts than it leased");
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::model::overlay::Overlay;
    use crate::model::splitmix64;
    use crate::policy::testkit::{Fleet, host_spec, job_spec};
    use crate::spec::market::HeadroomPolicy;
    use crate::units::ids::TaskId;
    use crate::units::resources::Resources;

    /// A market of one configured pool whose forecast supply is `curve`
    /// (times in ms, values in micro-IE), with `leased` and `supply` now.
    fn market_with_curve(curve: &[(u64, u64)], leased: u64, supply: u64) -> (Market, PoolIdx) {
        let mut m = Market::new(MarketConfig::default()).expect("default config is valid");
        let p = m.pool_idx(&PoolId::from("p"));
        let pool = &mut m.pools[p.get()];
        pool.spec = Some(PoolSpec {
            id: PoolId::from("p"),
            region: "r".into(),
            headroom: HeadroomPolicy::default(),
        });
        // `has_forecast` asks only that the forecast reaches past `now`.
        pool.forecast = vec![(Timestamp::from_millis(u64::MAX), Ie::ZERO)];
        pool.supply_curve = curve
            .iter()
            .map(|&(t, v)| (Timestamp::from_millis(t), Ie::from_micro(v)))
            .collect();
        pool.leased = Ie::from_micro(leased);
        pool.supply = Some(Ie::from_micro(supply));
        (m, p)
    }

    proptest! {
        /// [`Market::leases_outlast`] is exact, rounding included: when it
        /// holds, no lease-end prediction (a shortfall time for a level at
        /// most the leased IE) falls before `until`. Values and times are
        /// tiny so that the integer rounding of the curve matters.
        #[test]
        fn no_shortfall_before_until_when_leases_outlast(
            steps in prop::collection::vec((1..7u64, 0..40u64), 1..8),
            leased in 0..40u64,
            supply in 0..60u64,
            now in 0..30u64,
            d in 0..30u64,
            drops in prop::collection::vec(0..6u64, 1..6),
        ) {
            let mut t = 0;
            let curve: Vec<(u64, u64)> = steps
                .iter()
                .map(|&(dt, v)| {
                    t += dt;
                    (t, v)
                })
                .collect();
            let (m, p) = market_with_curve(&curve, leased, supply);
            let (now, until) = (Timestamp::from_millis(now), Timestamp::from_millis(now + d));
            // Levels as predictions use them: the leased IE less the hosts
            // before each, descending.
            let mut level = leased;
            let levels: Vec<Ie> = drops
                .iter()
                .map(|&x| {
                    let l = Ie::from_micro(level);
                    level = level.saturating_sub(x);
                    l
                })
                .collect();
            if m.leases_outlast(p, now, until) {
                for end in m.shortfall_times(p, now, &levels).into_iter().flatten() {
                    prop_assert!(end >= until, "a lease ends at {end:?}, before {until:?}");
                }
            }
        }
    }

    /// The same, exhaustively over every two-point curve, leased IE, `now`
    /// and `until` in a small range (where the rounding bites: random cases
    /// rarely hit the instants just past a rounded crossing).
    #[test]
    fn no_shortfall_before_until_on_any_small_curve() {
        let (mut m, p) = market_with_curve(&[], 0, u64::MAX);
        for (t0, t1) in [(1, 2), (1, 4), (2, 5), (3, 7)] {
            for (v0, v1) in (0..12u64).flat_map(|a| (0..12u64).map(move |b| (a, b))) {
                m.pools[p.get()].supply_curve = vec![
                    (Timestamp::from_millis(t0), Ie::from_micro(v0)),
                    (Timestamp::from_millis(t1), Ie::from_micro(v1)),
                ];
                for leased in 0..12u64 {
                    m.pools[p.get()].leased = Ie::from_micro(leased);
                    let levels = [Ie::from_micro(leased)];
                    for now in 0..t1 + 1 {
                        let now_t = Timestamp::from_millis(now);
                        let end = m.shortfall_times(p, now_t, &levels)[0];
                        for until in now..t1 + 2 {
                            let until = Timestamp::from_millis(until);
                            if m.leases_outlast(p, now_t, until) {
                                assert!(
                                    end.is_none_or(|e| e >= until),
                                    "curve ({t0}, {v0}) ({t1}, {v1}), leased {leased}, \
                                     now {now}: a lease ends at {end:?}, before {until:?}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// [`leased_hosts`] lists the same hosts as filtering every host of the
    /// pool by its flex count in the view, over random committed leases and
    /// random tentative placements, removals and rollbacks.
    #[test]
    fn leased_hosts_match_a_walk_over_every_host() {
        for seed in 0..64u64 {
            let mut x = seed;
            let mut below = |n: u64| {
                x = x.wrapping_add(1);
                splitmix64(x) % n
            };
            let mut fleet = Fleet::new();
            let hosts: Vec<HostIdx> = (0..24)
                .map(|i| {
                    let mut spec = host_spec(&format!("h{i}"), "z", 8, 32);
                    spec.pool = PoolId::from(["pool-a", "pool-b"][i % 2]);
                    fleet.host(spec)
                })
                .collect();
            let job = fleet.job(job_spec(1, Resources::cpu_mem(1000, 1024), vec![]));
            let mut committed: Vec<(TaskId, HostIdx)> = Vec::new();
            for _ in 0..below(20) {
                let h = hosts[below(24) as usize];
                let index = fleet.job_ref(job).tasks.len() as u32;
                fleet.place(job, h);
                committed.push((TaskId::new(job, index), h));
            }
            let state = &fleet.state;
            let mut overlay = Overlay::default();
            let mark = overlay.checkpoint();
            let mut next = 1000;
            for _ in 0..below(30) {
                match below(4) {
                    0 if !committed.is_empty() => {
                        let (task, h) =
                            committed.swap_remove(below(committed.len() as u64) as usize);
                        overlay.charge(state, task, h, false);
                    }
                    1 if below(3) == 0 => {
                        overlay.rollback(state, mark);
                        let _ = overlay.checkpoint();
                    }
                    _ => {
                        let h = hosts[below(24) as usize];
                        overlay.charge(state, TaskId::new(job, next), h, true);
                        next += 1;
                    }
                }
            }
            let view = View::new(state, &overlay);
            for p in 0..state.market.pools.len() {
                let p = PoolIdx::from_usize(p);
                let walked: Vec<HostIdx> = state.market.pools[p.get()]
                    .hosts
                    .iter()
                    .copied()
                    .filter(|&h| view.n_flex(h) > 0)
                    .collect();
                assert_eq!(leased_hosts(&view, p), walked, "seed {seed}, pool {p:?}");
            }
        }
    }
}
