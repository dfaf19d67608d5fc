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
//! **Failover buffer.** With `N` regions, a pool keeps, by default, the
//! average streaming demand of the other regions, `demand_elsewhere / (N−1)`,
//! shared among the region's pools in proportion to their reserved IE: if any
//! one other region fails, about that much traffic lands in this region.
//! While a region is failed over, its demand is added to the other regions'
//! streaming demand in the same proportions, and their failover buffer is in
//! use (zero) rather than kept on top.
//!
//! **Clearing price** (per pool, per round). When the pool is *contended* —
//! a flex job went unplaced because supply ran out and the pool cannot lease
//! another host — the price is the highest losing bid (second-price, as
//! Armada bills), but never below the floor. Otherwise it is the floor.
//! Leases are charged at the price in force while they are held.

pub mod catalog;
pub mod compact;
pub mod ie;

use std::collections::BTreeSet;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::error::InputError;
use crate::ids::PoolId;
use crate::job::{Price, Tier};
use crate::ledger::Ledger;
use crate::place::check::FeasibilityChecker;
use crate::place::index::HostIdx;
use crate::place::reason::Reason;
use crate::preempt::VictimPolicy;
use crate::state::{Host, Job, State};
use crate::time::DurationMs;

pub use catalog::{Catalog, InstanceType};
pub use compact::{Compaction, Migration};
pub use ie::Ie;

/// Index of a pool in the market's pool table.
pub(crate) type PoolIdx = u32;

/// Market knobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MarketConfig {
    /// The instance type one IE stands for.
    pub reference_instance_type: String,
    /// Types added to (or replacing those in) the shipped catalog.
    pub catalog_overrides: Vec<InstanceType>,
    /// Price per IE-hour when supply is ample. Zero makes uncontended
    /// capacity free, which is the point of harvesting idle reservations;
    /// raise it to recover part of the reservation cost by chargeback.
    pub floor_price: Price,
    /// SIGTERM-to-SIGKILL grace for preempted tasks. 30 s lets an encoder
    /// flush its current segment; longer delays returning capacity.
    pub preempt_grace: DurationMs,
    /// How reclaim chooses victims.
    pub victim_policy: VictimPolicy,
}

impl Default for MarketConfig {
    fn default() -> Self {
        MarketConfig {
            reference_instance_type: catalog::DEFAULT_REFERENCE.to_owned(),
            catalog_overrides: Vec::new(),
            floor_price: Price::ZERO,
            preempt_grace: DurationMs::from_secs(30),
            victim_policy: VictimPolicy::default(),
        }
    }
}

/// How much streaming headroom a pool keeps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HeadroomPolicy {
    /// Daily-scaling buffer as a fraction of current streaming demand.
    /// 10% covers the steepest evening ramp between two demand reports.
    pub daily_scaling_fraction: f64,
    /// Multiplier on the default failover buffer (`demand_elsewhere / (N−1)`,
    /// see the module doc): 0 keeps none, 1 is the default.
    pub failover_multiplier: f64,
    /// A fixed failover buffer for this pool instead of the formula.
    pub failover_fixed: Option<Ie>,
}

impl Default for HeadroomPolicy {
    fn default() -> Self {
        HeadroomPolicy {
            daily_scaling_fraction: 0.10,
            failover_multiplier: 1.0,
            failover_fixed: None,
        }
    }
}

/// A pool as configured by the shell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolSpec {
    /// Pool id; hosts name it in [`crate::HostSpec::pool`].
    pub id: PoolId,
    /// The region the pool's capacity is in.
    pub region: String,
    /// Headroom policy.
    #[serde(default)]
    pub headroom: HeadroomPolicy,
}

/// Reserved instances of one type in a pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// Instance type.
    pub instance_type: String,
    /// Number of reserved instances.
    pub count: u32,
}

/// A pool's market figures at one instant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// The pool.
    pub pool: PoolId,
    /// Its region.
    pub region: String,
    /// Reserved IE.
    pub reserved: Ie,
    /// Streaming demand in effect (including failed-over traffic).
    pub streaming: Ie,
    /// Headroom kept for streaming.
    pub headroom: Ie,
    /// What batch may lease: `max(0, reserved − streaming − headroom)`.
    pub supply: Ie,
    /// IE of hosts carrying flex work.
    pub leased: Ie,
    /// Supply not leased.
    pub idle: Ie,
    /// Price per IE-hour set by the last round.
    pub clearing_price: Price,
    /// Hosts in the pool (active or draining).
    pub n_hosts: u32,
    /// Hosts carrying flex work.
    pub n_leased_hosts: u32,
}

/// Market state of one pool.
#[derive(Debug)]
pub(crate) struct PoolState {
    pub(crate) id: PoolId,
    /// `None` until the shell configures the pool: then batch use is not limited.
    pub(crate) spec: Option<PoolSpec>,
    pub(crate) reservations: Vec<Reservation>,
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
#[derive(Debug)]
pub(crate) struct Market {
    pub(crate) config: MarketConfig,
    pub(crate) catalog: Catalog,
    pub(crate) pools: Vec<PoolState>,
    pub(crate) pool_by_id: FxHashMap<PoolId, PoolIdx>,
    /// Regions currently failed over (their traffic served elsewhere).
    pub(crate) failed_over: BTreeSet<String>,
    pub(crate) ledger: Ledger,
}

impl Market {
    pub(crate) fn new(config: MarketConfig) -> Result<Market, InputError> {
        let catalog = Catalog::builtin()
            .with_overrides(&config.catalog_overrides, &config.reference_instance_type)?;
        Ok(Market {
            config,
            catalog,
            pools: Vec::new(),
            pool_by_id: FxHashMap::default(),
            failed_over: BTreeSet::new(),
            ledger: Ledger::default(),
        })
    }

    /// The pool's index, creating an unconfigured entry on first sight.
    pub(crate) fn pool_idx(&mut self, id: &PoolId) -> PoolIdx {
        if let Some(&p) = self.pool_by_id.get(id) {
            return p;
        }
        let idx = self.pools.len() as PoolIdx;
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

    fn region_totals(&self, region: &str) -> (Ie, Ie) {
        let mut reserved = Ie::ZERO;
        let mut streaming = Ie::ZERO;
        for p in &self.pools {
            if p.spec.as_ref().is_some_and(|s| s.region == region) {
                reserved += p.reserved;
                streaming += p.streaming;
            }
        }
        (reserved, streaming)
    }

    /// The pool's share of its region's reserved IE (equal shares if nothing is reserved).
    fn share_of_region(&self, pool: &PoolState, region: &str) -> f64 {
        let (reserved, _) = self.region_totals(region);
        if reserved == Ie::ZERO {
            let n = self
                .pools
                .iter()
                .filter(|p| p.spec.as_ref().is_some_and(|s| s.region == region))
                .count();
            return 1.0 / n.max(1) as f64;
        }
        pool.reserved.as_f64() / reserved.as_f64()
    }

    /// (effective streaming demand, headroom) of a configured pool right now.
    pub(crate) fn demand_and_headroom(&self, idx: PoolIdx) -> (Ie, Ie) {
        let pool = &self.pools[idx as usize];
        let Some(spec) = &pool.spec else {
            return (Ie::ZERO, Ie::ZERO);
        };
        let regions = self.regions();
        let n_regions = regions.len();
        let share = self.share_of_region(pool, &spec.region);
        let mut streaming = pool.streaming;
        // Traffic of failed-over regions spreads over the regions still serving.
        let n_serving = regions
            .iter()
            .filter(|r| !self.failed_over.contains(**r))
            .count();
        if !self.failed_over.contains(&spec.region) && n_serving > 0 {
            for failed in &self.failed_over {
                let (_, failed_demand) = self.region_totals(failed);
                streaming += failed_demand.scale(share / n_serving as f64);
            }
        }
        let daily = streaming.scale(spec.headroom.daily_scaling_fraction);
        let failover = if !self.failed_over.is_empty() {
            Ie::ZERO // the buffer is in use
        } else if let Some(fixed) = spec.headroom.failover_fixed {
            fixed
        } else if n_regions > 1 {
            let elsewhere: Ie = regions
                .iter()
                .filter(|r| **r != spec.region)
                .map(|r| self.region_totals(r).1)
                .sum();
            elsewhere.scale(spec.headroom.failover_multiplier * share / (n_regions - 1) as f64)
        } else {
            Ie::ZERO
        };
        (streaming, daily + failover)
    }

    /// Refreshes every pool's effective streaming demand, headroom and supply
    /// (headroom depends on other regions, so one input can move them all).
    pub(crate) fn recompute(&mut self) {
        for idx in 0..self.pools.len() {
            let (streaming, headroom) = self.demand_and_headroom(idx as PoolIdx);
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
    pub(crate) fn can_lease_in(&self, pool: PoolIdx) -> bool {
        let Some(p) = self.pools.get(pool as usize) else {
            return true;
        };
        match (p.supply, p.min_host_ie) {
            (None, _) => true,
            (Some(supply), Some(min_ie)) => p.leased <= supply && p.leased + min_ie <= supply,
            (Some(_), None) => false,
        }
    }

    /// The figures the ledger integrates for one pool.
    pub(crate) fn snapshot(&self, idx: PoolIdx) -> crate::ledger::PoolSnapshot {
        let pool = &self.pools[idx as usize];
        crate::ledger::PoolSnapshot {
            reserved: pool.reserved,
            streaming: pool.streaming_now,
            headroom: pool.headroom,
            supply: pool.supply.unwrap_or(Ie::ZERO),
            leased: pool.leased,
        }
    }

    pub(crate) fn status(&self, idx: PoolIdx) -> PoolStatus {
        let pool = &self.pools[idx as usize];
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
    pub(crate) fn set_leased(
        &mut self,
        now: crate::time::Timestamp,
        pool: PoolIdx,
        host_ie: Ie,
        leased: bool,
    ) {
        let snapshot = self.snapshot(pool);
        self.ledger.accrue_pool(now, pool, snapshot);
        let p = &mut self.pools[pool as usize];
        if leased {
            p.leased += host_ie;
            p.n_leased_hosts += 1;
        } else {
            p.leased = p.leased.saturating_sub(host_ie);
            p.n_leased_hosts -= 1;
        }
    }
}

/// Flex work may lease an unleased host only within the pool's supply, and
/// never goes to a host that reclaim is emptying, nor into a pool that is
/// over supply. Critical work is unaffected.
#[derive(Debug)]
pub(crate) struct PoolSupplyChecker;

impl FeasibilityChecker for PoolSupplyChecker {
    fn is_capacity_check(&self) -> bool {
        true
    }
    fn check(&self, state: &State, job: &Job, _: HostIdx, host: &Host) -> Result<(), Reason> {
        if job.spec.tier != Tier::Flex {
            return Ok(());
        }
        if host.reclaiming {
            return Err(Reason::PoolSupply);
        }
        let pool = &state.market.pools[host.pool as usize];
        let Some(supply) = pool.supply else {
            return Ok(());
        };
        // Over supply, reclaim is under way: more flex work anywhere in the
        // pool would only eat further into headroom and be preempted.
        let over_supply = pool.leased > supply;
        // An unleased host needs supply for its whole IE.
        let needs_lease = host.n_flex_tasks == 0 && pool.leased + host.ie > supply;
        if over_supply || needs_lease {
            Err(Reason::PoolSupply)
        } else {
            Ok(())
        }
    }
}
