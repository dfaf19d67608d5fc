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
//! another host — the price is the highest losing bid (second-price, as
//! Armada bills), but never below the floor. Otherwise it is the floor.
//! Leases are charged at the price in force while they are held.

use std::collections::BTreeSet;

use crate::model::ledger::{Ledger, PoolSnapshot};
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
    pub(crate) clearing_price: Price,
    /// The smallest IE of any host that joined the pool (never raised when
    /// hosts leave, which only makes [`Market::can_lease_new_host`] conservative).
    pub(crate) min_host_ie: Option<Ie>,
    /// Cached by [`Market::recompute`] after every market input.
    pub(crate) streaming_now: Ie,
    pub(crate) headroom: Ie,
    /// `None` for unconfigured pools (no limit).
    pub(crate) supply: Option<Ie>,
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
            clearing_price: self.config.floor_price,
            streaming_now: Ie::ZERO,
            headroom: Ie::ZERO,
            supply: None,
            min_host_ie: None,
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
        self.pools[pool.get()]
            .reservations
            .iter()
            .filter(|r| r.is_active(now))
            .map(|r| {
                let one = self
                    .catalog
                    .ie_of(&r.instance_type)
                    .expect("validated on input");
                Ie::from_micro(one.as_micro() * u64::from(r.count))
            })
            .sum()
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

    /// Called when a host gains its first flex task (`leased = true`) or loses its last.
    pub(crate) fn set_leased(&mut self, now: Timestamp, pool: PoolIdx, host_ie: Ie, leased: bool) {
        let snapshot = self.snapshot(pool);
        self.ledger.accrue_pool(now, pool, snapshot);
        let p = &mut self.pools[pool.get()];
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
