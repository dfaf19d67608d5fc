//! What shells configure the market with: pools, reservations, headroom
//! policy and market knobs, and the figures the market reports per pool.

use serde::{Deserialize, Serialize};

use crate::spec::catalog::{self, InstanceType};
use crate::spec::config::VictimPolicy;
use crate::units::ids::PoolId;
use crate::units::ie::Ie;
use crate::units::price::Price;
use crate::units::time::{DurationMs, Timestamp};

/// Market knobs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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
    /// Whether flex work may take new leases in a region that is failed over
    /// (its traffic served elsewhere). Off by default: its traffic comes back
    /// at failback without warning, and every new lease there would then be
    /// reclaimed at once. Leases it already has are kept either way.
    pub lease_in_evacuated_regions: bool,
    /// Bids preempt: in a pool where supply ran out, a flex job whose bid is
    /// more than `(1 + margin)` times the highest bid among a host's flex
    /// tasks may displace them (within their disruption budgets). The margin
    /// keeps close bids from displacing each other back and forth (prices
    /// would thrash, and each displacement loses work). `None` turns bid
    /// preemption off: bids then only order placement and victims.
    pub bid_preemption_margin: Option<f64>,
    /// With a demand forecast, hosts whose lease the forecast says will be
    /// needed back within this lead are *returning*: they take no new work
    /// that would still run when the capacity is due, so most are empty by
    /// then and little is lost. 30 minutes is about the longest encoding
    /// chunk; longer leads return capacity earlier and harvest less.
    pub forecast_drain_lead: DurationMs,
}

impl Default for MarketConfig {
    fn default() -> Self {
        MarketConfig {
            reference_instance_type: catalog::DEFAULT_REFERENCE.to_owned(),
            catalog_overrides: Vec::new(),
            floor_price: Price::ZERO,
            preempt_grace: DurationMs::from_secs(30),
            victim_policy: VictimPolicy::default(),
            lease_in_evacuated_regions: false,
            // 50%: a bid must be half again as high to displace work, so a
            // displaced job outbidding back by a little displaces nothing.
            bid_preemption_margin: Some(0.5),
            forecast_drain_lead: DurationMs::from_mins(30),
        }
    }
}

/// How much streaming headroom a pool keeps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeadroomPolicy {
    /// Daily-scaling buffer as a fraction of current streaming demand.
    /// 10% covers the steepest evening ramp between two demand reports.
    pub daily_scaling_fraction: f64,
    /// Multiplier on the default failover buffer (the largest inflow one
    /// other region's failure would send the pool; `docs/ARCHITECTURE.md`,
    /// "The market"): 0 keeps none, 1 is the default.
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
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// Pool id; hosts name it in [`crate::HostSpec::pool`].
    pub id: PoolId,
    /// The region the pool's capacity is in.
    pub region: String,
    /// Headroom policy.
    #[serde(default)]
    pub headroom: HeadroomPolicy,
}

/// Reserved instances of one type in a pool, active from `start` (inclusive)
/// to `end` (exclusive); an absent bound is open. The market counts a
/// reservation only while it is active, and [`crate::Scheduler::poll_timeout`]
/// includes the next start or end so the shell ticks the core at that instant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reservation {
    /// Instance type.
    pub instance_type: String,
    /// Number of reserved instances.
    pub count: u32,
    /// First instant it counts, if it starts in the future.
    #[serde(default)]
    pub start: Option<Timestamp>,
    /// First instant it no longer counts, if it expires.
    #[serde(default)]
    pub end: Option<Timestamp>,
}

impl Reservation {
    /// `count` instances of `instance_type`, active forever.
    pub fn new(instance_type: impl Into<String>, count: u32) -> Self {
        Reservation {
            instance_type: instance_type.into(),
            count,
            start: None,
            end: None,
        }
    }

    /// True if the reservation counts at `now`.
    pub fn is_active(&self, now: Timestamp) -> bool {
        self.start.is_none_or(|s| s <= now) && self.end.is_none_or(|e| now < e)
    }
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
