//! The ledger: per team and pool, IE-hours held, charges at the clearing
//! price, work lost to preemption; per pool, reserved / streaming / headroom /
//! leased / idle IE-hours over time (the finance views).
//!
//! **Attribution.** A leased host counts against supply by its whole IE
//! ([`crate::market`]), but teams are charged for what they hold: a flex task
//! holds `host IE × dominant share of its request on that host`. What a
//! leased host's tasks do not hold (packing waste) is the market's, visible as
//! `leased − Σ held` per pool.
//!
//! **Accrual** is lazy and exact: every account remembers when it last
//! changed and adds `amount × elapsed` (micro-IE × ms, in integers) just
//! before it changes, so the cost is O(1) per event and the pool identity
//! `streaming + headroom + leased + idle = reserved` holds to the micro-IE-ms.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::ids::{PoolId, TeamId};
use crate::job::Price;
use crate::market::Ie;
use crate::market::PoolIdx;
use crate::state::TeamIdx;
use crate::time::Timestamp;

/// micro-IE × ms per IE-hour.
const MICRO_IE_MS_PER_IE_HOUR: f64 = 1_000_000.0 * 3_600_000.0;

/// One team's account in one pool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// The team.
    pub team: TeamId,
    /// The pool.
    pub pool: PoolId,
    /// IE-hours held by the team's flex tasks.
    pub leased_ie_hours: f64,
    /// Charges: held IE-hours × the clearing price in force.
    pub charges: f64,
    /// IE-hours of work lost to preemption (since each victim's last checkpoint).
    pub lost_ie_hours: f64,
    /// Tasks preempted.
    pub n_preemptions: u64,
    /// Preemptions that exceeded the job's disruption budget (emergencies).
    pub n_over_budget: u64,
}

/// One pool's capacity integrated over time. The first five add up:
/// `streaming + headroom + leased + idle = reserved`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolTotals {
    /// The pool.
    pub pool: PoolId,
    /// Reserved IE-hours.
    pub reserved_ie_hours: f64,
    /// Streaming IE-hours (capped at what was reserved).
    pub streaming_ie_hours: f64,
    /// Headroom IE-hours actually kept free.
    pub headroom_ie_hours: f64,
    /// Leased IE-hours (capped at what streaming left).
    pub leased_ie_hours: f64,
    /// Idle IE-hours: reserved, paid for, unused.
    pub idle_ie_hours: f64,
    /// Supply IE-hours: what batch could have leased.
    pub supply_ie_hours: f64,
    /// Leased IE-hours beyond supply (headroom eaten by batch; target zero).
    pub violation_ie_hours: f64,
}

#[derive(Clone, Debug, Default)]
struct Account {
    held: Ie,
    last: Timestamp,
    held_micro_ms: u128,
    charges: f64,
    lost_micro_ms: u128,
    n_preemptions: u64,
    n_over_budget: u64,
}

impl Account {
    fn accrue(&mut self, now: Timestamp, price: Price) {
        let dt = u128::from(now.saturating_since(self.last).as_millis());
        if dt > 0 && self.held > Ie::ZERO {
            let amount = u128::from(self.held.as_micro()) * dt;
            self.held_micro_ms += amount;
            self.charges += amount as f64 / MICRO_IE_MS_PER_IE_HOUR * price.per_ie_hour();
        }
        self.last = self.last.max(now);
    }
}

/// The pool quantities the ledger integrates, at one instant.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PoolSnapshot {
    pub(crate) reserved: Ie,
    pub(crate) streaming: Ie,
    pub(crate) headroom: Ie,
    pub(crate) supply: Ie,
    pub(crate) leased: Ie,
}

#[derive(Clone, Debug, Default)]
struct PoolAccount {
    last: Timestamp,
    /// reserved, streaming, headroom, leased, idle, supply, violation (micro-IE × ms).
    sums: [u128; 7],
}

impl PoolAccount {
    fn accrue(&mut self, now: Timestamp, s: PoolSnapshot) {
        let dt = u128::from(now.saturating_since(self.last).as_millis());
        if dt > 0 {
            for (sum, v) in self.sums.iter_mut().zip(split(s)) {
                *sum += u128::from(v) * dt;
            }
        }
        self.last = self.last.max(now);
    }
}

/// Splits reserved capacity into parts that add up exactly (micro-IE):
/// streaming first, then leased, then headroom, then idle; plus supply and
/// the leased excess over supply.
fn split(s: PoolSnapshot) -> [u64; 7] {
    let reserved = s.reserved.as_micro();
    let streaming = s.streaming.as_micro().min(reserved);
    let leased = s.leased.as_micro().min(reserved - streaming);
    let headroom = s.headroom.as_micro().min(reserved - streaming - leased);
    let idle = reserved - streaming - leased - headroom;
    let violation = s.leased.as_micro().saturating_sub(s.supply.as_micro());
    [
        reserved,
        streaming,
        headroom,
        leased,
        idle,
        s.supply.as_micro(),
        violation,
    ]
}

/// Accounts per (team, pool) and per pool.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    accounts: FxHashMap<(TeamIdx, PoolIdx), Account>,
    pools: Vec<PoolAccount>,
}

impl Ledger {
    /// Changes what a team holds in a pool, accruing the old holding first.
    pub(crate) fn hold(
        &mut self,
        now: Timestamp,
        team: TeamIdx,
        pool: PoolIdx,
        price: Price,
        ie: Ie,
        add: bool,
    ) {
        let a = self
            .accounts
            .entry((team, pool))
            .or_insert_with(|| Account {
                last: now,
                ..Account::default()
            });
        a.accrue(now, price);
        if add {
            a.held += ie;
        } else {
            a.held = a.held.saturating_sub(ie);
        }
    }

    /// Accrues every account of `pool` (before its price changes).
    pub(crate) fn accrue_pool_accounts(&mut self, now: Timestamp, pool: PoolIdx, price: Price) {
        for ((_, p), a) in self.accounts.iter_mut() {
            if *p == pool {
                a.accrue(now, price);
            }
        }
    }

    /// Records a preemption: work lost since the victim's last checkpoint.
    pub(crate) fn preempted(
        &mut self,
        team: TeamIdx,
        pool: PoolIdx,
        lost: Ie,
        lost_ms: u64,
        over_budget: bool,
    ) {
        let a = self.accounts.entry((team, pool)).or_default();
        a.lost_micro_ms += u128::from(lost.as_micro()) * u128::from(lost_ms);
        a.n_preemptions += 1;
        a.n_over_budget += u64::from(over_budget);
    }

    /// Accrues a pool's capacity figures up to `now` with the values in force until now.
    pub(crate) fn accrue_pool(&mut self, now: Timestamp, pool: PoolIdx, snapshot: PoolSnapshot) {
        let idx = pool as usize;
        if self.pools.len() <= idx {
            self.pools.resize(
                idx + 1,
                PoolAccount {
                    last: now,
                    sums: [0; 7],
                },
            );
        }
        self.pools[idx].accrue(now, snapshot);
    }

    /// Team accounts as of `now` (without mutating).
    pub(crate) fn entries(
        &self,
        now: Timestamp,
        team_id: impl Fn(TeamIdx) -> TeamId,
        pool_id: impl Fn(PoolIdx) -> (PoolId, Price),
    ) -> Vec<LedgerEntry> {
        let mut out: Vec<LedgerEntry> = self
            .accounts
            .iter()
            .map(|(&(team, pool), a)| {
                let (pool, price) = pool_id(pool);
                let mut a = a.clone();
                a.accrue(now, price);
                LedgerEntry {
                    team: team_id(team),
                    pool,
                    leased_ie_hours: a.held_micro_ms as f64 / MICRO_IE_MS_PER_IE_HOUR,
                    charges: a.charges,
                    lost_ie_hours: a.lost_micro_ms as f64 / MICRO_IE_MS_PER_IE_HOUR,
                    n_preemptions: a.n_preemptions,
                    n_over_budget: a.n_over_budget,
                }
            })
            .collect();
        out.sort_by(|a, b| {
            (a.team.as_str(), a.pool.as_str()).cmp(&(b.team.as_str(), b.pool.as_str()))
        });
        out
    }

    /// Pool totals as of `now`, given each pool's current snapshot (without mutating).
    pub(crate) fn pool_totals(
        &self,
        now: Timestamp,
        pool: PoolIdx,
        id: PoolId,
        snapshot: PoolSnapshot,
    ) -> PoolTotals {
        let mut acc = self
            .pools
            .get(pool as usize)
            .cloned()
            .unwrap_or(PoolAccount {
                last: now,
                sums: [0; 7],
            });
        acc.accrue(now, snapshot);
        let h = |i: usize| acc.sums[i] as f64 / MICRO_IE_MS_PER_IE_HOUR;
        PoolTotals {
            pool: id,
            reserved_ie_hours: h(0),
            streaming_ie_hours: h(1),
            headroom_ie_hours: h(2),
            leased_ie_hours: h(3),
            idle_ie_hours: h(4),
            supply_ie_hours: h(5),
            violation_ie_hours: h(6),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_adds_up_and_caps_each_part() {
        let ie = Ie::from_whole;
        let cases = [
            (
                "ample",
                PoolSnapshot {
                    reserved: ie(100),
                    streaming: ie(40),
                    headroom: ie(10),
                    supply: ie(50),
                    leased: ie(20),
                },
                [100, 40, 10, 20, 30, 50, 0],
            ),
            (
                "headroom eaten",
                PoolSnapshot {
                    reserved: ie(100),
                    streaming: ie(40),
                    headroom: ie(10),
                    supply: ie(50),
                    leased: ie(55),
                },
                [100, 40, 5, 55, 0, 50, 5],
            ),
            (
                "streaming over reserved",
                PoolSnapshot {
                    reserved: ie(100),
                    streaming: ie(130),
                    headroom: ie(13),
                    supply: ie(0),
                    leased: ie(8),
                },
                [100, 100, 0, 0, 0, 0, 8],
            ),
        ];
        for (name, snapshot, want) in cases {
            let got = split(snapshot).map(|v| v / 1_000_000);
            assert_eq!(got, want, "{name}");
            assert_eq!(
                got[1] + got[2] + got[3] + got[4],
                got[0],
                "{name}: parts add up"
            );
        }
    }

    #[test]
    fn holdings_accrue_lazily_at_the_price_in_force() {
        let mut l = Ledger::default();
        let price = Price::new(2.0).unwrap();
        let hour = 3_600_000;
        l.hold(
            Timestamp::from_millis(0),
            0,
            0,
            price,
            Ie::from_whole(3),
            true,
        );
        l.hold(
            Timestamp::from_millis(hour),
            0,
            0,
            price,
            Ie::from_whole(1),
            false,
        );
        let e = l.entries(
            Timestamp::from_millis(2 * hour),
            |_| TeamId::from("t"),
            |_| (PoolId::from("p"), price),
        );
        assert_eq!(e.len(), 1);
        assert!(
            (e[0].leased_ie_hours - 5.0).abs() < 1e-9,
            "3 IE for 1h then 2 IE for 1h"
        );
        assert!((e[0].charges - 10.0).abs() < 1e-9);
    }
}
