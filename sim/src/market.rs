//! The simulator's side of the market: it configures each pool and its
//! reservations in the core, reports streaming demand and failovers, and
//! reads the core's per-pool figures back for the time series.
//!
//! A pool with no `reservations` in the scenario is not configured as a
//! market pool: the core then does not limit batch work there, and its
//! market figures are reported as absent.

use anyhow::{Context, Result};
use ebb_scheduler::{
    Catalog, HeadroomPolicy, Ie, PoolId, PoolSpec, Reservation, Scheduler, Timestamp,
};

use crate::scenario::Scenario;

/// One pool's market figures at an instant, in IE. `None`: the pool is not
/// market-managed.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolView {
    /// Pool id.
    pub pool: String,
    /// Reserved IE.
    pub reserved: f64,
    /// Streaming demand in effect (including failed-over traffic).
    pub streaming: f64,
    /// Headroom kept for streaming.
    pub headroom: Option<f64>,
    /// What batch may lease.
    pub supply: Option<f64>,
    /// IE of hosts carrying batch work.
    pub leased: Option<f64>,
    /// Supply not leased.
    pub idle: Option<f64>,
    /// Clearing price per IE-hour.
    pub price: Option<f64>,
}

/// Which scenario pools are market-managed, by scenario index.
#[derive(Debug)]
pub struct MarketLink {
    ids: Vec<PoolId>,
    managed: Vec<bool>,
}

impl MarketLink {
    /// The scenario's pools.
    pub fn new(sc: &Scenario) -> Self {
        MarketLink {
            ids: sc
                .fleet
                .pools
                .iter()
                .map(|p| PoolId::from(p.id.as_str()))
                .collect(),
            managed: sc
                .fleet
                .pools
                .iter()
                .map(|p| !p.reservations.is_empty())
                .collect(),
        }
    }

    /// Configures every pool that has reservations, with its headroom policy.
    pub fn configure(&self, sc: &Scenario, core: &mut Scheduler, now: Timestamp) -> Result<()> {
        for (i, p) in sc.fleet.pools.iter().enumerate() {
            if !self.managed[i] {
                continue;
            }
            let at = || format!("`fleet.pools[{i}]` ({})", p.id);
            let spec = PoolSpec {
                id: self.ids[i].clone(),
                region: p.region.clone(),
                headroom: HeadroomPolicy {
                    daily_scaling_fraction: p.headroom.daily_scaling_fraction,
                    failover_multiplier: p.headroom.failover_multiplier,
                    failover_fixed: p.headroom.failover_fixed_ie.map(Ie::from_f64),
                },
            };
            core.handle_pool_configured(now, spec).with_context(at)?;
            let reservations = p
                .reservations
                .iter()
                .map(|r| Reservation::new(r.instance_type.clone(), r.count))
                .collect();
            core.handle_reservations(now, &self.ids[i], reservations)
                .with_context(|| format!("{}.reservations", at()))?;
        }
        Ok(())
    }

    /// Pool `pool_idx` now serves `ie` of streaming demand (ignored for
    /// pools that are not market-managed).
    pub fn set_demand(
        &self,
        core: &mut Scheduler,
        now: Timestamp,
        pool_idx: usize,
        ie: f64,
    ) -> Result<()> {
        if self.managed[pool_idx] {
            core.handle_streaming_demand(now, &self.ids[pool_idx], Ie::from_f64(ie))
                .with_context(|| format!("streaming demand of pool {}", self.ids[pool_idx]))?;
        }
        Ok(())
    }

    /// Reports a pool's demand forecast: `(time ms, IE)` points.
    pub fn set_forecast(
        &self,
        core: &mut Scheduler,
        now: Timestamp,
        pool_idx: usize,
        points: &[(u64, f64)],
    ) -> Result<()> {
        if self.managed[pool_idx] {
            let points = points
                .iter()
                .map(|&(t, ie)| (Timestamp::from_millis(t), Ie::from_f64(ie)))
                .collect();
            core.handle_demand_forecast(now, &self.ids[pool_idx], points)
                .with_context(|| format!("demand forecast of pool {}", self.ids[pool_idx]))?;
        }
        Ok(())
    }

    /// Region `region` fails over (`active`) or serves again.
    pub fn set_failover(
        &self,
        core: &mut Scheduler,
        now: Timestamp,
        region: &str,
        active: bool,
    ) -> Result<()> {
        core.handle_failover(now, region, active)
            .with_context(|| format!("failover of region {region}"))
    }

    /// Every pool's figures now, in scenario order.
    pub fn statuses(&self, core: &Scheduler) -> Vec<PoolView> {
        self.ids
            .iter()
            .zip(&self.managed)
            .map(|(id, &managed)| match core.pool(id).filter(|_| managed) {
                Some(s) => PoolView {
                    pool: id.to_string(),
                    reserved: s.reserved.as_f64(),
                    streaming: s.streaming.as_f64(),
                    headroom: Some(s.headroom.as_f64()),
                    supply: Some(s.supply.as_f64()),
                    leased: Some(s.leased.as_f64()),
                    idle: Some(s.idle.as_f64()),
                    price: Some(s.clearing_price.per_ie_hour()),
                },
                None => PoolView {
                    pool: id.to_string(),
                    reserved: 0.0,
                    streaming: 0.0,
                    headroom: None,
                    supply: None,
                    leased: None,
                    idle: None,
                    price: None,
                },
            })
            .collect()
    }

    /// Pool ids in scenario order.
    pub fn ids(&self) -> &[PoolId] {
        &self.ids
    }

    /// Which pools are market-managed, in scenario order.
    pub fn managed(&self) -> &[bool] {
        &self.managed
    }

    /// Reserved micro-IE per pool from the scenario's reservations and the
    /// catalog, computed here rather than read back from the core.
    pub fn reserved_micro(&self, sc: &Scenario, catalog: &Catalog) -> Vec<u64> {
        sc.fleet
            .pools
            .iter()
            .map(|p| {
                p.reservations
                    .iter()
                    .map(|r| {
                        catalog
                            .ie_of(&r.instance_type)
                            .map_or(0, |ie| ie.as_micro())
                            .saturating_mul(u64::from(r.count))
                    })
                    .sum()
            })
            .collect()
    }

    /// Per pool in scenario order: the core's (streaming, headroom, supply)
    /// in micro-IE, or `None` for a pool that is not market-managed.
    pub fn raw_statuses(&self, core: &Scheduler) -> Vec<Option<(u64, u64, u64)>> {
        self.ids
            .iter()
            .zip(&self.managed)
            .map(|(id, &managed)| {
                core.pool(id).filter(|_| managed).map(|s| {
                    (
                        s.streaming.as_micro(),
                        s.headroom.as_micro(),
                        s.supply.as_micro(),
                    )
                })
            })
            .collect()
    }

    /// True if any pool is market-managed.
    pub fn any_managed(&self) -> bool {
        self.managed.iter().any(|m| *m)
    }
}
