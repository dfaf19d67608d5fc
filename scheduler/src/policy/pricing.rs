//! Clearing prices: per market-managed pool and round, the floor, or the
//! highest losing bid when the pool is contended (second-price billing).

use crate::model::host::Host;
use crate::model::overlay::View;
use crate::spec::host::HostState;
use crate::spec::job::Tier;
use crate::units::ids::{JobId, PoolId};
use crate::units::price::Price;

/// Per managed pool: the floor, or the highest losing bid when the pool is
/// contended (a flex job lost for lack of supply and the pool cannot lease
/// another host). `lost_for_supply` are the jobs the round left unplaced
/// with market supply among their reasons. See [`crate::model::market`].
pub(crate) fn clearing_prices(
    view: &View<'_>,
    lost_for_supply: impl Iterator<Item = JobId>,
) -> Vec<(PoolId, Price)> {
    let state = view.state;
    let market = &state.market;
    let floor = market.config.floor_price;
    let highest_losing_bid = lost_for_supply
        .map(|j| &state.jobs[&j].spec)
        .filter(|spec| spec.tier == Tier::Flex)
        .map(|spec| spec.bid.unwrap_or(Price::ZERO))
        .max();
    let mut prices = Vec::new();
    for (p, pool) in market.pools.iter().enumerate() {
        let Some(supply) = pool.supply else { continue };
        let p = crate::units::ids::PoolIdx::from_usize(p);
        let price = match highest_losing_bid {
            Some(bid) => {
                let cheapest_new_lease = pool
                    .hosts
                    .iter()
                    .filter(|&&h| view.n_flex(h) == 0)
                    .map(|&h| -> &Host { &state.hosts[h] })
                    .filter(|h| h.state == HostState::Active)
                    .map(|h| h.ie)
                    .min();
                let leased = view.leased(p);
                let contended = cheapest_new_lease.is_none_or(|ie| leased + ie > supply);
                if contended { bid.max(floor) } else { floor }
            }
            None => floor,
        };
        prices.push((pool.id.clone(), price));
    }
    prices
}
