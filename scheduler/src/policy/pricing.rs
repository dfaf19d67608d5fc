//! Clearing prices: per market-managed pool and round, the floor, or — when
//! the pool is contended — the highest bid that lost *in that pool*
//! (second-price billing, as Armada's market-driven pools bill). A lease is
//! then charged the price but never more than its own bid
//! ([`crate::model::ledger::charge_rate`]).

use crate::model::host::Host;
use crate::model::overlay::View;
use crate::spec::host::HostState;
use crate::units::ids::{PoolId, PoolIdx};
use crate::units::price::Price;
use crate::util::FxMap;

/// Per managed pool: the floor, or, if the pool is contended (it cannot
/// lease another host and a flex job lost for lack of its supply), the
/// highest bid among the jobs that lost for lack of that pool's supply,
/// never below the floor. `lost` maps each pool to that highest losing bid
/// (jobs without a bid count as zero); `won` to the lowest bid that won one
/// of its leases this round, which caps the price (a uniform price lies
/// between the highest losing and the lowest winning bid; they cross only
/// when an all-or-nothing gang lost).
pub(crate) fn clearing_prices(
    view: &View<'_>,
    lost: &FxMap<PoolIdx, Price>,
    won: &FxMap<PoolIdx, Price>,
) -> Vec<(PoolId, Price)> {
    let state = view.state;
    let market = &state.market;
    let floor = market.config.floor_price;
    let mut prices = Vec::new();
    for (p, pool) in market.pools.iter().enumerate() {
        let Some(supply) = pool.supply else { continue };
        let p = PoolIdx::from_usize(p);
        let price = match lost.get(&p) {
            Some(&bid) => {
                let leased = view.leased(p);
                // No host of the pool is smaller than `min_host_ie` (the
                // smallest that ever joined), so when even that does not fit
                // the pool is contended whatever its cheapest new lease:
                // the walk over its hosts is only needed when supply is left.
                let full = pool.min_host_ie.is_some_and(|ie| leased + ie > supply);
                let contended = full || {
                    let cheapest_new_lease = pool
                        .hosts
                        .iter()
                        .filter(|&&h| view.n_flex(h) == 0)
                        .map(|&h| -> &Host { &state.hosts[h] })
                        .filter(|h| h.state == HostState::Active)
                        .map(|h| h.ie)
                        .min();
                    cheapest_new_lease.is_none_or(|ie| leased + ie > supply)
                };
                let bid = won.get(&p).map_or(bid, |&w| bid.min(w));
                if contended { bid.max(floor) } else { floor }
            }
            None => floor,
        };
        prices.push((pool.id.clone(), price));
    }
    prices
}
