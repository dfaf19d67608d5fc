//! The ledger: per team and pool, IE-hours held, charges at the clearing
//! price, work lost to preemption; per pool, reserved / streaming / headroom /
//! leased / idle IE-hours over time (the finance views).
//!
//! **Attribution.** A leased host counts against supply by its whole IE
//! ([`crate::model::market`]), but teams are charged for what they hold.
//! Each flex task has a *dominant share* of its host: the largest fraction
//! of the host's CPU, memory or GPUs its request takes. A team holds
//! `host IE × (its tasks' shares on the host) / max(1, Σ all shares on the host)`:
//! while the tasks' shares add up to at most the whole host, each pays its
//! dominant share (what it makes unusable for others); when complementary
//! tasks (one CPU-heavy, one memory-heavy) add up to more, they split the
//! host pro rata. Either way the holdings on a host never exceed its lease.
//! What a leased host's tasks do not hold (packing waste) is the market's,
//! visible as `leased − Σ held` per pool.
//!
//! **Accrual** is lazy and exact: every account remembers when it last
//! changed and adds `amount × elapsed` (micro-IE × ms, in integers) just
//! before it changes, so the cost is O(1) per event and the pool identity
//! `streaming + headroom + leased + idle = reserved` holds to the micro-IE-ms.
//! Charges accrue as `micro-IE × ms × micro-price per IE-hour`, also in
//! integers, so no number of rounds drifts them.

use serde::{Deserialize, Serialize};

use crate::units::ids::{PoolId, PoolIdx, TeamId, TeamIdx};
use crate::units::ie::Ie;
use crate::units::price::{Money, Price};
use crate::units::resources::Resources;
use crate::units::time::Timestamp;
use crate::util::FxMap;

/// micro-IE × ms per IE-hour.
const MICRO_IE_MS_PER_IE_HOUR: u128 = 1_000_000 * 3_600_000;

/// An exact amount of capacity over time, in micro-IE × milliseconds.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct IeMs(pub u128);

impl IeMs {
    /// In IE-hours, for reports.
    pub fn ie_hours(self) -> f64 {
        self.0 as f64 / MICRO_IE_MS_PER_IE_HOUR as f64
    }
}

/// One team's account in one pool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// The team.
    pub team: TeamId,
    /// The pool.
    pub pool: PoolId,
    /// Capacity held by the team's flex tasks over time.
    pub held: IeMs,
    /// Charges: held IE-hours × the clearing price in force, rounded down to
    /// a micro-unit (the exact figure is kept internally).
    pub charges: Money,
    /// Work lost to preemption (since each victim's last checkpoint).
    pub lost: IeMs,
    /// Runs that ended because they were preempted.
    pub n_preemptions: u64,
    /// Of those, preemptions that exceeded the job's disruption budget (emergencies).
    pub n_over_budget: u64,
}

impl LedgerEntry {
    /// IE-hours held.
    pub fn leased_ie_hours(&self) -> f64 {
        self.held.ie_hours()
    }

    /// IE-hours of work lost to preemption.
    pub fn lost_ie_hours(&self) -> f64 {
        self.lost.ie_hours()
    }
}

/// Parts per million of a whole host.
pub(crate) const PPM: u64 = 1_000_000;

/// A flex task's dominant share of a host, in parts per million: the
/// largest fraction of the host's CPU, memory or GPUs its request takes.
pub(crate) fn dominant_ppm(request: &Resources, capacity: &Resources) -> u64 {
    let ppm = |r: u64, c: u64| {
        if c == 0 {
            0
        } else {
            (u128::from(r.min(c)) * u128::from(PPM) / u128::from(c)) as u64
        }
    };
    ppm(request.cpu_millis, capacity.cpu_millis)
        .max(ppm(request.memory_mib, capacity.memory_mib))
        .max(ppm(request.gpus, capacity.gpus))
}

/// IE that `share_ppm` of a host's flex shares holds, when all flex shares
/// on the host add up to `total_ppm` (see the module doc). Rounded down, so
/// the holdings on a host never add up to more than the host.
pub(crate) fn held_ie(host_ie: Ie, share_ppm: u64, total_ppm: u64) -> Ie {
    let den = u128::from(total_ppm.max(PPM));
    Ie::from_micro((u128::from(host_ie.as_micro()) * u128::from(share_ppm) / den) as u64)
}

/// One pool's capacity integrated over time, exactly. The first five add up:
/// `streaming + headroom + leased + idle = reserved`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolTotals {
    /// The pool.
    pub pool: PoolId,
    /// Reserved.
    pub reserved: IeMs,
    /// Streaming (capped at what was reserved).
    pub streaming: IeMs,
    /// Headroom actually kept free.
    pub headroom: IeMs,
    /// Leased (capped at what streaming left).
    pub leased: IeMs,
    /// Idle: reserved, paid for, unused.
    pub idle: IeMs,
    /// Supply: what batch could have leased.
    pub supply: IeMs,
    /// Leased beyond supply (headroom eaten by batch; target zero).
    pub violation: IeMs,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Account {
    held: Ie,
    last: Timestamp,
    held_micro_ms: u128,
    /// micro-IE × ms × micro-price per IE-hour.
    charges_raw: u128,
    lost_micro_ms: u128,
    n_preemptions: u64,
    n_over_budget: u64,
}

impl Account {
    fn accrue(&mut self, now: Timestamp, price: Price) {
        debug_assert!(now >= self.last, "ledger accrual went backwards");
        let dt = u128::from(now.saturating_since(self.last).as_millis());
        if dt > 0 && self.held > Ie::ZERO {
            let amount = u128::from(self.held.as_micro()) * dt;
            self.held_micro_ms += amount;
            self.charges_raw += amount * u128::from(price.as_micros());
        }
        self.last = self.last.max(now);
    }

    /// IE the account holds now.
    pub(crate) fn held(&self) -> Ie {
        self.held
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

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PoolAccount {
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

/// An account: a team's holdings in a pool at one bid. A lease is never
/// charged more than its own bid, so holdings at different bids accrue at
/// different rates; [`Ledger::entries`] adds them up per team and pool.
pub(crate) type AccountKey = (TeamIdx, PoolIdx, Option<Price>);

/// What one IE-hour costs an account at the pool's clearing price: a job
/// pays the clearing price but never more than its own bid; a job that did
/// not bid pays the floor.
pub(crate) fn charge_rate(price: Price, bid: Option<Price>, floor: Price) -> Price {
    match bid {
        Some(bid) => price.min(bid),
        None => floor.min(price),
    }
}

/// Accounts per (team, pool, bid) and per pool.
#[derive(Clone, Debug, Default)]
pub(crate) struct Ledger {
    pub(crate) accounts: FxMap<AccountKey, Account>,
    pub(crate) pools: Vec<PoolAccount>,
    /// The market's floor price, what jobs without a bid pay.
    pub(crate) floor: Price,
}

impl Ledger {
    pub(crate) fn new(floor: Price) -> Ledger {
        Ledger {
            floor,
            ..Ledger::default()
        }
    }

    /// Changes what an account holds, accruing the old holding first at the
    /// pool's current `price`.
    pub(crate) fn hold(
        &mut self,
        now: Timestamp,
        key: AccountKey,
        price: Price,
        ie: Ie,
        add: bool,
    ) {
        let floor = self.floor;
        let a = self.accounts.entry(key).or_insert_with(|| Account {
            last: now,
            ..Account::default()
        });
        a.accrue(now, charge_rate(price, key.2, floor));
        if add {
            a.held += ie;
        } else {
            a.held -= ie;
        }
    }

    /// Accrues every account of `pool` (before its price changes).
    pub(crate) fn accrue_pool_accounts(&mut self, now: Timestamp, pool: PoolIdx, price: Price) {
        let floor = self.floor;
        for ((_, p, bid), a) in self.accounts.iter_mut() {
            if *p == pool {
                a.accrue(now, charge_rate(price, *bid, floor));
            }
        }
    }

    /// Records a preemption: work lost since the victim's last checkpoint.
    pub(crate) fn preempted(&mut self, key: AccountKey, lost: Ie, lost_ms: u64, over_budget: bool) {
        let a = self.accounts.entry(key).or_default();
        a.lost_micro_ms += u128::from(lost.as_micro()) * u128::from(lost_ms);
        a.n_preemptions += 1;
        a.n_over_budget += u64::from(over_budget);
    }

    /// Accrues a pool's capacity figures up to `now` with the values in force until now.
    pub(crate) fn accrue_pool(&mut self, now: Timestamp, pool: PoolIdx, snapshot: PoolSnapshot) {
        let idx = pool.get();
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

    /// Team accounts per pool as of `now` (without mutating), the accounts
    /// at different bids added up.
    pub(crate) fn entries(
        &self,
        now: Timestamp,
        team_id: impl Fn(TeamIdx) -> TeamId,
        pool_id: impl Fn(PoolIdx) -> (PoolId, Price),
    ) -> Vec<LedgerEntry> {
        let mut sums: FxMap<(TeamIdx, PoolIdx), Account> = FxMap::default();
        for (&(team, pool, bid), a) in &self.accounts {
            let (_, price) = pool_id(pool);
            let mut a = a.clone();
            a.accrue(now.max(a.last), charge_rate(price, bid, self.floor));
            let s = sums.entry((team, pool)).or_default();
            s.held_micro_ms += a.held_micro_ms;
            s.charges_raw += a.charges_raw;
            s.lost_micro_ms += a.lost_micro_ms;
            s.n_preemptions += a.n_preemptions;
            s.n_over_budget += a.n_over_budget;
        }
        let mut out: Vec<LedgerEntry> = sums
            .into_iter()
            .map(|((team, pool), a)| {
                let micros = a.charges_raw / MICRO_IE_MS_PER_IE_HOUR;
                LedgerEntry {
                    team: team_id(team),
                    pool: pool_id(pool).0,
                    held: IeMs(a.held_micro_ms),
                    charges: Money::from_micros(u64::try_from(micros).unwrap_or(u64::MAX)),
                    lost: IeMs(a.lost_micro_ms),
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
        let mut acc = self.pools.get(pool.get()).cloned().unwrap_or(PoolAccount {
            last: now,
            sums: [0; 7],
        });
        acc.accrue(now.max(acc.last), snapshot);
        let h = |i: usize| IeMs(acc.sums[i]);
        PoolTotals {
            pool: id,
            reserved: h(0),
            streaming: h(1),
            headroom: h(2),
            leased: h(3),
            idle: h(4),
            supply: h(5),
            violation: h(6),
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
    fn shares_are_dominant_and_never_add_up_to_more_than_the_host() {
        let cap = Resources::cpu_mem(64_000, 256 * 1024);
        let host = Ie::from_whole(1);
        let cases = [
            (
                "all of the host",
                Resources::cpu_mem(64_000, 256 * 1024),
                1_000_000,
            ),
            (
                "all cpu, a little memory",
                Resources::cpu_mem(64_000, 1024),
                1_000_000,
            ),
            (
                "a quarter of cpu, half the memory",
                Resources::cpu_mem(16_000, 128 * 1024),
                500_000,
            ),
            ("a third of cpu", Resources::cpu_mem(64_000 / 3, 0), 333_328),
            ("nothing", Resources::cpu_mem(0, 0), 0),
        ];
        for (name, req, want) in cases {
            assert_eq!(dominant_ppm(&req, &cap), want, "{name}");
        }
        // Alone on a host, a task pays its dominant share.
        assert_eq!(held_ie(host, 250_000, 250_000), Ie::from_f64(0.25));
        // The case a per-task dominant share got wrong: a CPU-heavy and a
        // memory-heavy task on one host held 1.5 IE of a 1 IE lease. Now
        // they split the host by their shares: 2/3 and 1/3.
        let cpu = dominant_ppm(&Resources::cpu_mem(64_000, 64 * 1024), &cap);
        let mem = dominant_ppm(&Resources::cpu_mem(0, 128 * 1024), &cap);
        assert_eq!((cpu, mem), (1_000_000, 500_000));
        let total = cpu + mem;
        let (a, b) = (held_ie(host, cpu, total), held_ie(host, mem, total));
        assert_eq!((a.as_micro(), b.as_micro()), (666_666, 333_333));
        assert!(a + b <= host);
    }

    #[test]
    fn a_lease_is_never_charged_more_than_its_bid() {
        let p = |x: f64| Price::new(x).unwrap();
        let cases = [
            (
                "bid above the price pays the price",
                p(2.0),
                Some(p(3.0)),
                p(0.5),
                p(2.0),
            ),
            (
                "bid below the price pays its bid",
                p(2.0),
                Some(p(1.0)),
                p(0.5),
                p(1.0),
            ),
            ("no bid pays the floor", p(2.0), None, p(0.5), p(0.5)),
            (
                "uncontended: the floor for all",
                p(0.5),
                Some(p(3.0)),
                p(0.5),
                p(0.5),
            ),
        ];
        for (name, price, bid, floor, want) in cases {
            assert_eq!(charge_rate(price, bid, floor), want, "{name}");
        }
    }

    #[test]
    fn holdings_accrue_lazily_at_the_price_in_force() {
        let mut l = Ledger::default();
        let price = Price::new(2.0).unwrap();
        let hour = 3_600_000;
        let key = (TeamIdx(0), PoolIdx(0), Some(Price::new(5.0).unwrap()));
        l.hold(
            Timestamp::from_millis(0),
            key,
            price,
            Ie::from_whole(3),
            true,
        );
        l.hold(
            Timestamp::from_millis(hour),
            key,
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
        // 3 IE for 1 h, then 2 IE for 1 h.
        assert_eq!(e[0].held, IeMs(5 * MICRO_IE_MS_PER_IE_HOUR));
        assert_eq!(e[0].charges, Money::from_micros(10_000_000));
    }
}
