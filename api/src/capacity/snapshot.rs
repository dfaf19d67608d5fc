//! The plain snapshot every reservation source produces, and the one place
//! where raw records (reservations, fleet instances) become per-pool figures.
//!
//! Sources only gather [`ReservationRecord`]s and [`FleetInstance`]s; `build`
//! assigns them to pools, converts them to IE with the market's [`Catalog`]
//! and records every item it had to leave out as an [`ItemError`]. Both
//! sources therefore follow the same pool and IE rules by construction.
//!
//! **Which pool.** A zonal item (a zonal reservation, any instance) goes to
//! the most specific pool that covers it: same region, the pool's zone empty
//! or equal to the item's, the pool's family empty or equal to the item's
//! instance family; a pool naming the zone beats one naming only the family,
//! which beats a region-wide pool. Pool keys `(region, zone, family)` are
//! unique (`validate_pools`), so there is never a tie.
//!
//! **Regional reservations** (scope `Region`, no zone) are counted by
//! [`apportion_regional`]; the rule and its reasons are documented there.

use std::collections::BTreeMap;
use std::fmt;

use ebb_scheduler::{Catalog, Ie, InstanceType, PoolId, Reservation, Timestamp};
use serde::Deserialize;

/// A pool as a reservation source sees it: where its capacity is.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolDef {
    /// The market's pool id.
    pub id: PoolId,
    /// AWS region, e.g. `us-east-1`.
    pub region: String,
    /// Availability zone, e.g. `us-east-1a`; none: the whole region.
    #[serde(default)]
    pub zone: Option<String>,
    /// Instance family, e.g. `m5`; none: every family.
    #[serde(default)]
    pub family: Option<String>,
}

impl PoolDef {
    /// How specifically this pool covers a zonal item, or `None` if it does
    /// not: zone match counts 2, family match 1, so zone beats family.
    fn covers_zonal(&self, region: &str, zone: &str, family: &str) -> Option<u8> {
        if self.region != region {
            return None;
        }
        let zone_score = match &self.zone {
            None => 0,
            Some(z) if z == zone => 2,
            Some(_) => return None,
        };
        let family_score = match &self.family {
            None => 0,
            Some(f) if f == family => 1,
            Some(_) => return None,
        };
        Some(zone_score + family_score)
    }
}

/// A pool definition that [`validate_pools`] refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PoolDefError {
    /// Index of the offending pool in the list.
    pub index: usize,
    /// The offending field of that pool.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

/// Checks a pool list: ids and regions non-empty, ids unique, a zone inside
/// its region (AWS zone names, Local Zones included, start with the region
/// name), and no two pools with the same `(region, zone, family)`, which would
/// make "the most specific pool" ambiguous.
pub(crate) fn validate_pools(pools: &[PoolDef]) -> Result<(), PoolDefError> {
    let err = |index, field, message: String| {
        Err(PoolDefError {
            index,
            field,
            message,
        })
    };
    let mut ids = BTreeMap::new();
    let mut keys = BTreeMap::new();
    for (index, p) in pools.iter().enumerate() {
        if p.id.as_str().trim().is_empty() {
            return err(index, "id", "must not be empty".into());
        }
        if p.region.trim().is_empty() {
            return err(index, "region", "must not be empty".into());
        }
        if let Some(zone) = &p.zone
            && !(zone.starts_with(&p.region) && zone.len() > p.region.len())
        {
            return err(
                index,
                "zone",
                format!("`{zone}` is not a zone of region `{}`", p.region),
            );
        }
        if let Some(family) = &p.family
            && (family.is_empty() || family.contains('.'))
        {
            return err(
                index,
                "family",
                format!("`{family}` is not an instance family such as `m5`"),
            );
        }
        if let Some(first) = ids.insert(p.id.clone(), index) {
            return err(
                index,
                "id",
                format!("pool `{}` is already defined (pool {first})", p.id),
            );
        }
        let key = (p.region.clone(), p.zone.clone(), p.family.clone());
        if let Some(first) = keys.insert(key, index) {
            return err(
                index,
                "id",
                format!(
                    "pool `{}` covers the same region, zone and family as pool `{}`",
                    p.id, pools[first].id
                ),
            );
        }
    }
    Ok(())
}

/// Where a reservation applies.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// A zonal reservation: instances in this availability zone.
    Zone(String),
    /// A regional reservation: instances anywhere in the region.
    Region,
}

/// The offering class of a reservation.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OfferingClass {
    /// Fixed instance type for the whole term.
    #[default]
    Standard,
    /// May be exchanged for other types during the term.
    Convertible,
}

impl fmt::Display for OfferingClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OfferingClass::Standard => "standard",
            OfferingClass::Convertible => "convertible",
        })
    }
}

/// One reservation as a source reported it, before it is assigned to pools.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservationRecord {
    /// EC2's reserved instances id, or the static file's id.
    pub id: String,
    /// The region it was bought in.
    pub region: String,
    /// Zonal or regional.
    pub scope: Scope,
    /// e.g. `m5.16xlarge`.
    pub instance_type: String,
    /// Number of reserved instances.
    pub count: u32,
    /// When it starts counting; none: it already does.
    pub start: Option<Timestamp>,
    /// When it stops counting (exclusive); none: it never ends.
    pub end: Option<Timestamp>,
    /// Standard or convertible.
    pub offering_class: OfferingClass,
}

impl ReservationRecord {
    fn location(&self) -> String {
        match &self.scope {
            Scope::Zone(z) => z.clone(),
            Scope::Region => format!("region {}", self.region),
        }
    }
}

/// What a running instance is used for, from its tags.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// A latency-critical streaming service: counts as streaming demand.
    Streaming,
    /// An Ebb batch executor host.
    Batch,
}

/// One running instance with a role, as a source reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetInstance {
    /// EC2 instance id.
    pub id: String,
    /// Its region.
    pub region: String,
    /// Its availability zone.
    pub zone: String,
    /// e.g. `m5.16xlarge`.
    pub instance_type: String,
    /// Streaming or batch.
    pub role: Role,
}

/// The share of one reservation counted in one pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolReservation {
    /// The reservation's id.
    pub reservation_id: String,
    /// Zonal or regional.
    pub scope: Scope,
    /// e.g. `m5.16xlarge`.
    pub instance_type: String,
    /// Instances of the reservation counted in this pool: all of them for a
    /// zonal reservation, this pool's share for a regional one.
    pub count: u32,
    /// Instances in the whole reservation.
    pub total_count: u32,
    /// IE of one instance of the type.
    pub ie_per_instance: Ie,
    /// When it starts counting; none: it already does.
    pub start: Option<Timestamp>,
    /// When it stops counting (exclusive); none: it never ends.
    pub end: Option<Timestamp>,
    /// Standard or convertible.
    pub offering_class: OfferingClass,
}

impl PoolReservation {
    /// Whether it counts at `t`: `start ≤ t < end`.
    pub fn is_active_at(&self, t: Timestamp) -> bool {
        self.start.is_none_or(|s| s <= t) && self.end.is_none_or(|e| t < e)
    }

    /// IE of this pool's share: `count × ie_per_instance`.
    pub fn ie(&self) -> Ie {
        Ie::from_micro(
            self.ie_per_instance
                .as_micro()
                .saturating_mul(u64::from(self.count)),
        )
    }
}

/// The core's reservation for this pool's share, with its term: the core
/// counts it from `start` to `end` by itself (and `poll_timeout` names those
/// instants), so the shell feeds a pool's reservations once per snapshot.
pub fn to_core_reservation(r: &PoolReservation) -> Reservation {
    Reservation {
        instance_type: r.instance_type.clone(),
        count: r.count,
        start: r.start,
        end: r.end,
    }
}

/// A batch executor instance found in the fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchInstance {
    /// EC2 instance id.
    pub id: String,
    /// e.g. `m5.16xlarge`.
    pub instance_type: String,
    /// Its availability zone.
    pub zone: String,
    /// IE of the instance.
    pub ie: Ie,
}

/// One pool's figures in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolCapacity {
    /// The pool.
    pub pool: PoolDef,
    /// Reservation shares counted here, active at `fetched_at` or (static
    /// file) starting later; ordered by reservation id.
    pub reservations: Vec<PoolReservation>,
    /// Reserved IE at the snapshot's `fetched_at`.
    pub reserved_ie: Ie,
    /// Streaming demand: from the fleet (EC2) or the demand curve (static
    /// file) at `fetched_at`; none when the source has no figure for the pool.
    pub streaming_ie: Option<Ie>,
    /// Streaming instances counted in `streaming_ie` (EC2 only).
    pub n_streaming_instances: u32,
    /// Batch executor instances in the pool, by id (EC2 only).
    pub batch_fleet: Vec<BatchInstance>,
}

impl PoolCapacity {
    /// Reserved IE at `t`: the shares active at `t`.
    pub fn reserved_ie_at(&self, t: Timestamp) -> Ie {
        self.reservations
            .iter()
            .filter(|r| r.is_active_at(t))
            .map(PoolReservation::ie)
            .sum()
    }

    /// Every reservation share of this pool with its term, for the core
    /// (which counts each only while it is active), in reservation id order.
    pub fn core_reservations(&self) -> Vec<Reservation> {
        self.reservations.iter().map(to_core_reservation).collect()
    }

    /// The core's reservations for this pool at `t`, one per instance type
    /// (counts of shares active at `t` added up), ordered by type, without
    /// terms: a point-in-time view.
    pub fn core_reservations_at(&self, t: Timestamp) -> Vec<Reservation> {
        let mut by_type: BTreeMap<&str, u32> = BTreeMap::new();
        for r in self.reservations.iter().filter(|r| r.is_active_at(t)) {
            let n = by_type.entry(&r.instance_type).or_default();
            *n = n.saturating_add(r.count);
        }
        by_type
            .into_iter()
            .map(|(instance_type, count)| Reservation::new(instance_type, count))
            .collect()
    }
}

/// What an [`ItemError`] is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// A reservation, by id.
    Reservation(String),
    /// A streaming instance, by id.
    StreamingInstance(String),
    /// A batch instance, by id.
    BatchInstance(String),
}

impl Item {
    /// What the item would have counted towards.
    pub fn left_out_of(&self) -> &'static str {
        match self {
            Item::Reservation(_) => "supply",
            Item::StreamingInstance(_) => "streaming demand",
            Item::BatchInstance(_) => "the batch fleet",
        }
    }
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Item::Reservation(id) => write!(f, "reservation {id}"),
            Item::StreamingInstance(id) => write!(f, "streaming instance {id}"),
            Item::BatchInstance(id) => write!(f, "batch instance {id}"),
        }
    }
}

/// One item a snapshot left out or counted in a way worth telling, with why.
/// Never silent: every record that did not make it into the figures has one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ItemError {
    /// Neither the catalog nor the source could describe the instance type.
    #[error("unknown instance type {instance_type} in {item}: left out of {}", item.left_out_of())]
    UnknownInstanceType {
        /// The type.
        instance_type: String,
        /// The reservation or instance.
        item: Item,
    },
    /// No configured pool covers the item's region, zone and family.
    #[error("{item} ({instance_type} in {location}) matches no pool: left out of {}", item.left_out_of())]
    NoPool {
        /// The reservation or instance.
        item: Item,
        /// Its instance type.
        instance_type: String,
        /// Its zone, or `region <name>` for a regional reservation.
        location: String,
    },
    /// The source returned the item without a field Ebb needs.
    #[error("{item}: no `{field}` in the response: left out of {}", item.left_out_of())]
    MissingField {
        /// The reservation or instance (its id may be a placeholder).
        item: Item,
        /// The missing field, as EC2 names it.
        field: &'static str,
    },
    /// The source returned a field value Ebb cannot use.
    #[error("{item}: `{field}` is {value}: left out of {}", item.left_out_of())]
    BadField {
        /// The reservation or instance.
        item: Item,
        /// The field, as EC2 names it.
        field: &'static str,
        /// The value, quoted.
        value: String,
    },
    /// An instance carries both the streaming and the batch tag.
    #[error(
        "instance {instance_id} carries both the streaming and the batch tag: counted as streaming"
    )]
    BothRoles {
        /// The instance.
        instance_id: String,
    },
    /// EC2 described an instance type in a way Ebb cannot use.
    #[error("instance type {instance_type} as described by EC2: {message}")]
    InstanceFacts {
        /// The type.
        instance_type: String,
        /// What is wrong.
        message: String,
    },
}

/// Reserved capacity, streaming demand and batch fleet per pool at one instant.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// Which source produced it, e.g. `static file examples/reservations.toml`.
    pub source: String,
    /// When the source was read (ms since the Unix epoch).
    pub fetched_at: Timestamp,
    /// Every configured pool, ordered by id, empty ones included.
    pub pools: Vec<PoolCapacity>,
    /// Instance types the catalog lacked, as the source described them;
    /// feed them to `MarketConfig::catalog_overrides`.
    pub instance_types: Vec<InstanceType>,
    /// Running instances with neither the streaming nor the batch tag
    /// (EC2 only); they count nowhere.
    pub n_untagged_instances: u32,
    /// Items left out or counted specially, with the reason.
    pub errors: Vec<ItemError>,
}

impl Snapshot {
    /// A pool's figures by id.
    pub fn pool(&self, id: &PoolId) -> Option<&PoolCapacity> {
        self.pools.iter().find(|p| &p.pool.id == id)
    }

    /// The first instant after `t` at which a reservation starts or ends, so
    /// the shell can feed the core new reservations exactly then.
    pub fn next_change_after(&self, t: Timestamp) -> Option<Timestamp> {
        self.pools
            .iter()
            .flat_map(|p| &p.reservations)
            .flat_map(|r| [r.start, r.end])
            .flatten()
            .filter(|&x| x > t)
            .min()
    }
}

/// Where streaming demand comes from.
pub(crate) enum Streaming {
    /// From the fleet's streaming instances: every pool gets a figure.
    // Only the EC2 source reads a fleet.
    #[cfg_attr(not(feature = "ec2"), allow(dead_code))]
    Fleet,
    /// From demand curves evaluated at `fetched_at`: pools without a curve
    /// get none.
    Curves(BTreeMap<PoolId, Ie>),
}

/// Everything a source gathered, for [`build`].
pub(crate) struct Inputs<'a> {
    pub source: String,
    pub fetched_at: Timestamp,
    pub pools: &'a [PoolDef],
    /// The market's catalog, already extended with `learned_types`.
    pub catalog: &'a Catalog,
    pub learned_types: Vec<InstanceType>,
    pub reservations: Vec<ReservationRecord>,
    pub fleet: Vec<FleetInstance>,
    pub streaming: Streaming,
    pub n_untagged_instances: u32,
    /// Errors the source found while gathering.
    pub errors: Vec<ItemError>,
}

fn family_of(instance_type: &str) -> &str {
    instance_type
        .split_once('.')
        .map_or(instance_type, |(f, _)| f)
}

/// The most specific pool covering a zonal item (see the module doc).
fn zonal_pool(pools: &[PoolDef], region: &str, zone: &str, family: &str) -> Option<usize> {
    pools
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.covers_zonal(region, zone, family).map(|s| (s, i)))
        // Highest score; unique keys make the maximum unique.
        .max_by_key(|&(s, i)| (s, std::cmp::Reverse(i)))
        .map(|(_, i)| i)
}

/// The pools a regional reservation of `family` in `region` may count in:
/// the region's pools that admit the family; if some of them name the family
/// itself, only those (the family-specific pools are where that family's
/// capacity is accounted).
fn regional_candidates(pools: &[PoolDef], region: &str, family: &str) -> Vec<usize> {
    let admits: Vec<usize> = pools
        .iter()
        .enumerate()
        .filter(|(_, p)| p.region == region && p.family.as_deref().is_none_or(|f| f == family))
        .map(|(i, _)| i)
        .collect();
    let specific: Vec<usize> = admits
        .iter()
        .copied()
        .filter(|&i| pools[i].family.as_deref() == Some(family))
        .collect();
    if specific.is_empty() {
        admits
    } else {
        specific
    }
}

/// Whether [`build`] would count the reservation in some pool.
pub(crate) fn has_pool(pools: &[PoolDef], r: &ReservationRecord) -> bool {
    let family = family_of(&r.instance_type);
    match &r.scope {
        Scope::Zone(zone) => zonal_pool(pools, &r.region, zone, family).is_some(),
        Scope::Region => !regional_candidates(pools, &r.region, family).is_empty(),
    }
}

/// How many of a regional reservation's `count` instances each candidate pool
/// counts, given each pool's zonal reserved IE (`weights_micro_ie`).
///
/// **Rule.** A regional reservation applies to matching instances anywhere in
/// its region, so no pool owns it; Ebb counts it in the region's pools *in
/// proportion to each pool's zonal reserved IE* (active at the snapshot's
/// instant), or *equally* when none of them has zonal reservations. Why:
/// zonal reservations are where the operator has placed capacity on purpose,
/// and the streaming fleet a regional reservation discounts runs where that
/// capacity is; spreading it by the same weights keeps each pool's share of
/// the region unchanged, so supply moves nowhere the operator did not already
/// put capacity. Equal shares are the neutral choice when there is no signal.
///
/// Shares are whole instances (the core's reservations are counts of one
/// type), by the largest-remainder method: each pool gets `⌊count × w / W⌋`,
/// and the instances left over go one each to the largest remainders, ties to
/// the earlier pool (pools are ordered by id). The shares always add up to
/// `count` exactly, so a region's reserved IE is never rounded away.
pub fn apportion_regional(count: u32, weights_micro_ie: &[u64]) -> Vec<u32> {
    if weights_micro_ie.is_empty() {
        return Vec::new();
    }
    let total: u128 = weights_micro_ie.iter().map(|&w| u128::from(w)).sum();
    let weights: Vec<u128> = if total == 0 {
        vec![1; weights_micro_ie.len()]
    } else {
        weights_micro_ie.iter().map(|&w| u128::from(w)).collect()
    };
    let total: u128 = weights.iter().sum();
    let count_wide = u128::from(count);
    let mut shares: Vec<u32> = Vec::with_capacity(weights.len());
    let mut remainders: Vec<(u128, usize)> = Vec::with_capacity(weights.len());
    for (i, &w) in weights.iter().enumerate() {
        let exact = count_wide * w;
        // ⌊count × w / W⌋ ≤ count, so it fits in u32.
        shares.push(u32::try_from(exact / total).unwrap_or(u32::MAX));
        remainders.push((exact % total, i));
    }
    let assigned: u32 = shares.iter().sum();
    // Largest remainder first; on equal remainders the earlier pool.
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in remainders.iter().take((count - assigned) as usize) {
        shares[i] += 1;
    }
    shares
}

/// Turns what a source gathered into a snapshot (see the module doc).
pub(crate) fn build(inputs: Inputs<'_>) -> Snapshot {
    let Inputs {
        source,
        fetched_at,
        pools,
        catalog,
        learned_types,
        mut reservations,
        mut fleet,
        streaming,
        n_untagged_instances,
        mut errors,
    } = inputs;

    // Pools in id order: the order shares and ties are decided in.
    let mut order: Vec<usize> = (0..pools.len()).collect();
    order.sort_by(|&a, &b| pools[a].id.cmp(&pools[b].id));
    let sorted: Vec<PoolDef> = order.iter().map(|&i| pools[i].clone()).collect();
    let mut out: Vec<PoolCapacity> = sorted
        .iter()
        .map(|p| PoolCapacity {
            pool: p.clone(),
            reservations: Vec::new(),
            reserved_ie: Ie::ZERO,
            streaming_ie: match &streaming {
                Streaming::Fleet => Some(Ie::ZERO),
                Streaming::Curves(c) => c.get(&p.id).copied(),
            },
            n_streaming_instances: 0,
            batch_fleet: Vec::new(),
        })
        .collect();

    reservations.sort_by(|a, b| a.id.cmp(&b.id));
    let share = |r: &ReservationRecord, count: u32, ie: Ie| PoolReservation {
        reservation_id: r.id.clone(),
        scope: r.scope.clone(),
        instance_type: r.instance_type.clone(),
        count,
        total_count: r.count,
        ie_per_instance: ie,
        start: r.start,
        end: r.end,
        offering_class: r.offering_class,
    };

    // Zonal reservations first: their IE is the weight regional ones follow.
    let mut regional: Vec<(ReservationRecord, Ie)> = Vec::new();
    for r in reservations {
        let Ok(ie) = catalog.ie_of(&r.instance_type) else {
            errors.push(ItemError::UnknownInstanceType {
                instance_type: r.instance_type.clone(),
                item: Item::Reservation(r.id.clone()),
            });
            continue;
        };
        let family = family_of(&r.instance_type);
        match &r.scope {
            Scope::Region => regional.push((r, ie)),
            Scope::Zone(zone) => match zonal_pool(&sorted, &r.region, zone, family) {
                Some(i) => out[i].reservations.push(share(&r, r.count, ie)),
                None => errors.push(ItemError::NoPool {
                    item: Item::Reservation(r.id.clone()),
                    instance_type: r.instance_type.clone(),
                    location: r.location(),
                }),
            },
        }
    }
    let zonal_weights: Vec<u64> = out
        .iter()
        .map(|p| p.reserved_ie_at(fetched_at).as_micro())
        .collect();
    for (r, ie) in regional {
        let candidates = regional_candidates(&sorted, &r.region, family_of(&r.instance_type));
        if candidates.is_empty() {
            errors.push(ItemError::NoPool {
                item: Item::Reservation(r.id.clone()),
                instance_type: r.instance_type.clone(),
                location: r.location(),
            });
            continue;
        }
        let weights: Vec<u64> = candidates.iter().map(|&i| zonal_weights[i]).collect();
        for (&i, n) in candidates.iter().zip(apportion_regional(r.count, &weights)) {
            if n > 0 {
                out[i].reservations.push(share(&r, n, ie));
            }
        }
    }
    for p in &mut out {
        p.reservations
            .sort_by(|a, b| a.reservation_id.cmp(&b.reservation_id));
        p.reserved_ie = p.reserved_ie_at(fetched_at);
    }

    fleet.sort_by(|a, b| a.id.cmp(&b.id));
    for inst in fleet {
        let item = match inst.role {
            Role::Streaming => Item::StreamingInstance(inst.id.clone()),
            Role::Batch => Item::BatchInstance(inst.id.clone()),
        };
        let Ok(ie) = catalog.ie_of(&inst.instance_type) else {
            errors.push(ItemError::UnknownInstanceType {
                instance_type: inst.instance_type.clone(),
                item,
            });
            continue;
        };
        let family = family_of(&inst.instance_type);
        let Some(i) = zonal_pool(&sorted, &inst.region, &inst.zone, family) else {
            errors.push(ItemError::NoPool {
                item,
                instance_type: inst.instance_type.clone(),
                location: inst.zone.clone(),
            });
            continue;
        };
        let p = &mut out[i];
        match inst.role {
            Role::Streaming => {
                p.n_streaming_instances += 1;
                // Only fleet-fed snapshots carry instances, so this is `Some`.
                let s = p.streaming_ie.get_or_insert(Ie::ZERO);
                *s += ie;
            }
            Role::Batch => p.batch_fleet.push(BatchInstance {
                id: inst.id,
                instance_type: inst.instance_type,
                zone: inst.zone,
                ie,
            }),
        }
    }

    let mut learned_types = learned_types;
    learned_types.sort_by(|a, b| a.name.cmp(&b.name));
    learned_types.dedup_by(|a, b| a.name == b.name);
    Snapshot {
        source,
        fetched_at,
        pools: out,
        instance_types: learned_types,
        n_untagged_instances,
        errors,
    }
}

/// `ie` instance equivalents in micro-IE, for tests that spell out IE arithmetic.
#[cfg(test)]
fn micro(ie: f64) -> u64 {
    Ie::from_f64(ie).as_micro()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(id: &str, region: &str, zone: Option<&str>, family: Option<&str>) -> PoolDef {
        PoolDef {
            id: id.into(),
            region: region.into(),
            zone: zone.map(Into::into),
            family: family.map(Into::into),
        }
    }

    fn ri(id: &str, scope: Scope, ty: &str, count: u32) -> ReservationRecord {
        ReservationRecord {
            id: id.into(),
            region: "us-east-1".into(),
            scope,
            instance_type: ty.into(),
            count,
            start: None,
            end: None,
            offering_class: OfferingClass::Standard,
        }
    }

    fn zone(z: &str) -> Scope {
        Scope::Zone(z.into())
    }

    fn snapshot(pools: &[PoolDef], reservations: Vec<ReservationRecord>) -> Snapshot {
        build(Inputs {
            source: "test".into(),
            fetched_at: Timestamp::from_millis(1_000),
            pools,
            catalog: &Catalog::builtin(),
            learned_types: Vec::new(),
            reservations,
            fleet: Vec::new(),
            streaming: Streaming::Curves(BTreeMap::new()),
            n_untagged_instances: 0,
            errors: Vec::new(),
        })
    }

    #[test]
    fn apportionment_table() {
        let cases: [(&str, u32, &[u64], &[u32]); 7] = [
            // 10 × 6/8 = 7.5, 10 × 2/8 = 2.5: floors 7 + 2 = 9; the last
            // instance goes to the tie's earlier pool.
            ("proportional with a tie", 10, &[6, 2, 0], &[8, 2, 0]),
            // 7 × 1/3 = 2.33 each: floors 2+2+2, one left for the first.
            ("equal when no weights", 7, &[0, 0, 0], &[3, 2, 2]),
            // 5 × 3/4 = 3.75, 5 × 1/4 = 1.25: 3 + 1, remainder .75 wins.
            ("largest remainder wins", 5, &[3, 1], &[4, 1]),
            ("single pool takes all", 9, &[0], &[9]),
            ("nothing to share", 0, &[4, 4], &[0, 0]),
            // 3 × 1/6 = 0.5, 3 × 5/6 = 2.5: 0 + 2, tie → first pool.
            ("tie goes to the earlier pool", 3, &[1, 5], &[1, 2]),
            // Weights in micro-IE: 10.5 IE and 3.125 IE; 4 × 10.5/13.625 =
            // 3.08, 4 × 3.125/13.625 = 0.92: floors 3 + 0, .92 wins.
            ("micro-IE weights", 4, &[10_500_000, 3_125_000], &[3, 1]),
        ];
        for (name, count, weights, want) in cases {
            assert_eq!(apportion_regional(count, weights), want, "{name}");
            assert_eq!(want.iter().sum::<u32>(), count, "{name}: table is wrong");
        }
        assert!(apportion_regional(5, &[]).is_empty());
    }

    #[test]
    fn a_regional_reservation_follows_zonal_reserved_ie() {
        let pools = [
            pool("use1-a", "us-east-1", Some("us-east-1a"), None),
            pool("use1-b", "us-east-1", Some("us-east-1b"), None),
            pool("use1-c", "us-east-1", Some("us-east-1c"), None),
        ];
        let s = snapshot(
            &pools,
            vec![
                // a: 6 × m5.16xlarge = 6 IE zonal.
                ri("r-a", zone("us-east-1a"), "m5.16xlarge", 6),
                // b: 4 × m5.8xlarge = 4 × 0.5 = 2 IE zonal.
                ri("r-b", zone("us-east-1b"), "m5.8xlarge", 4),
                // 10 × c5.9xlarge regional (36/64 = 0.5625 IE each), weights
                // 6 : 2 : 0 → 7.5, 2.5, 0 → 8, 2, 0 (tie to a).
                ri("r-region", Scope::Region, "c5.9xlarge", 10),
            ],
        );
        let a = s.pool(&"use1-a".into()).unwrap();
        let b = s.pool(&"use1-b".into()).unwrap();
        let c = s.pool(&"use1-c".into()).unwrap();
        // a: 6 + 8 × 0.5625 = 10.5 IE; b: 2 + 2 × 0.5625 = 3.125 IE; c: 0.
        assert_eq!(a.reserved_ie.as_micro(), micro(10.5));
        assert_eq!(b.reserved_ie.as_micro(), micro(3.125));
        assert_eq!(c.reserved_ie, Ie::ZERO);
        assert!(c.reservations.is_empty());
        let share = a
            .reservations
            .iter()
            .find(|r| r.reservation_id == "r-region")
            .unwrap();
        assert_eq!((share.count, share.total_count), (8, 10));
        assert_eq!(share.scope, Scope::Region);
        // The region's total is the zonal 8 IE plus all 10 × 0.5625 = 5.625.
        let region: u64 = s.pools.iter().map(|p| p.reserved_ie.as_micro()).sum();
        assert_eq!(region, micro(13.625));
        assert!(s.errors.is_empty(), "{:?}", s.errors);
    }

    #[test]
    fn a_regional_reservation_is_shared_equally_without_zonal_ones() {
        let pools = [
            pool("b", "us-east-1", Some("us-east-1b"), None),
            pool("a", "us-east-1", Some("us-east-1a"), None),
            pool("w", "us-west-2", Some("us-west-2a"), None),
        ];
        // 5 × m5.16xlarge over two pools: 2.5 each → 3 (a, first by id), 2 (b).
        let s = snapshot(&pools, vec![ri("r", Scope::Region, "m5.16xlarge", 5)]);
        assert_eq!(s.pool(&"a".into()).unwrap().reserved_ie, Ie::from_whole(3));
        assert_eq!(s.pool(&"b".into()).unwrap().reserved_ie, Ie::from_whole(2));
        assert_eq!(s.pool(&"w".into()).unwrap().reserved_ie, Ie::ZERO);
        let ids: Vec<&str> = s.pools.iter().map(|p| p.pool.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "w"], "pools are ordered by id");
    }

    #[test]
    fn the_most_specific_pool_wins() {
        let pools = [
            pool("region", "us-east-1", None, None),
            pool("m5", "us-east-1", None, Some("m5")),
            pool("zone-a", "us-east-1", Some("us-east-1a"), None),
            pool("zone-a-c5", "us-east-1", Some("us-east-1a"), Some("c5")),
        ];
        let s = snapshot(
            &pools,
            vec![
                ri("1", zone("us-east-1a"), "c5.18xlarge", 1), // zone + family
                ri("2", zone("us-east-1a"), "m5.16xlarge", 1), // zone beats family
                ri("3", zone("us-east-1b"), "m5.16xlarge", 1), // family
                ri("4", zone("us-east-1b"), "r5.16xlarge", 1), // region
            ],
        );
        let ids = |p: &str| -> Vec<String> {
            s.pool(&p.into())
                .unwrap()
                .reservations
                .iter()
                .map(|r| r.reservation_id.clone())
                .collect()
        };
        assert_eq!(ids("zone-a-c5"), ["1"]);
        assert_eq!(ids("zone-a"), ["2"]);
        assert_eq!(ids("m5"), ["3"]);
        assert_eq!(ids("region"), ["4"]);
    }

    #[test]
    fn a_regional_reservation_prefers_pools_of_its_family() {
        let pools = [
            pool("a", "us-east-1", Some("us-east-1a"), None),
            pool("m5", "us-east-1", None, Some("m5")),
            pool("c5", "us-east-1", None, Some("c5")),
        ];
        let s = snapshot(
            &pools,
            vec![
                ri("m", Scope::Region, "m5.16xlarge", 4),
                // r5 is in no family pool: candidates are the pools admitting
                // every family, here only `a`.
                ri("r", Scope::Region, "r5.16xlarge", 2),
            ],
        );
        assert_eq!(s.pool(&"m5".into()).unwrap().reserved_ie, Ie::from_whole(4));
        assert_eq!(s.pool(&"a".into()).unwrap().reserved_ie, Ie::from_whole(2));
        assert_eq!(s.pool(&"c5".into()).unwrap().reserved_ie, Ie::ZERO);
    }

    #[test]
    fn unknown_types_and_unmatched_items_are_errors_not_zeros() {
        let pools = [pool("a", "us-east-1", Some("us-east-1a"), None)];
        let s = snapshot(
            &pools,
            vec![
                ri("r-123", zone("us-east-1a"), "x1.weird", 3),
                ri("r-elsewhere", zone("us-east-1f"), "m5.16xlarge", 2),
                ri("r-ok", zone("us-east-1a"), "m5.16xlarge", 2),
            ],
        );
        let messages: Vec<String> = s.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [
                "unknown instance type x1.weird in reservation r-123: left out of supply",
                "reservation r-elsewhere (m5.16xlarge in us-east-1f) matches no pool: left out of supply",
            ]
        );
        assert_eq!(s.pool(&"a".into()).unwrap().reserved_ie, Ie::from_whole(2));
    }

    #[test]
    fn reservations_count_only_inside_their_term() {
        let pools = [pool("a", "us-east-1", Some("us-east-1a"), None)];
        let mut r = ri("r", zone("us-east-1a"), "m5.16xlarge", 4);
        r.start = Some(Timestamp::from_millis(500));
        r.end = Some(Timestamp::from_millis(2_000));
        let mut later = ri("later", zone("us-east-1a"), "m5.8xlarge", 2);
        later.start = Some(Timestamp::from_millis(3_000));
        let s = snapshot(&pools, vec![r, later]);
        let p = s.pool(&"a".into()).unwrap();
        // fetched_at = 1 000 ms: only `r` (4 IE) is active.
        assert_eq!(p.reserved_ie, Ie::from_whole(4));
        assert_eq!(p.reserved_ie_at(Timestamp::from_millis(499)), Ie::ZERO);
        assert_eq!(
            p.reserved_ie_at(Timestamp::from_millis(1_999)),
            Ie::from_whole(4)
        );
        // The end is exclusive.
        assert_eq!(p.reserved_ie_at(Timestamp::from_millis(2_000)), Ie::ZERO);
        // 2 × m5.8xlarge = 1 IE from 3 000 ms on.
        assert_eq!(
            p.reserved_ie_at(Timestamp::from_millis(3_000)),
            Ie::from_whole(1)
        );
        let t = |ms| Some(Timestamp::from_millis(ms));
        assert_eq!(s.next_change_after(Timestamp::from_millis(1_000)), t(2_000));
        assert_eq!(s.next_change_after(Timestamp::from_millis(2_000)), t(3_000));
        assert_eq!(s.next_change_after(Timestamp::from_millis(3_000)), None);
        assert_eq!(
            p.core_reservations_at(Timestamp::from_millis(3_000)),
            [Reservation::new("m5.8xlarge", 2)]
        );
    }

    #[test]
    fn core_reservations_add_up_shares_of_one_type() {
        let pools = [pool("a", "us-east-1", Some("us-east-1a"), None)];
        let s = snapshot(
            &pools,
            vec![
                ri("r1", zone("us-east-1a"), "m5.16xlarge", 2),
                ri("r2", zone("us-east-1a"), "m5.16xlarge", 3),
                ri("r3", Scope::Region, "c5.9xlarge", 1),
            ],
        );
        let p = s.pool(&"a".into()).unwrap();
        assert_eq!(
            p.core_reservations_at(s.fetched_at),
            [
                Reservation::new("c5.9xlarge", 1),
                Reservation::new("m5.16xlarge", 5),
            ]
        );
        assert_eq!(
            to_core_reservation(&p.reservations[0]),
            Reservation::new("m5.16xlarge", 2)
        );
    }

    #[test]
    fn fleet_gives_streaming_demand_and_batch_hosts() {
        let pools = [
            pool("a", "us-east-1", Some("us-east-1a"), None),
            pool("b", "us-east-1", Some("us-east-1b"), None),
        ];
        let inst = |id: &str, zone: &str, ty: &str, role| FleetInstance {
            id: id.into(),
            region: "us-east-1".into(),
            zone: zone.into(),
            instance_type: ty.into(),
            role,
        };
        let s = build(Inputs {
            source: "test".into(),
            fetched_at: Timestamp::ZERO,
            pools: &pools,
            catalog: &Catalog::builtin(),
            learned_types: Vec::new(),
            reservations: Vec::new(),
            fleet: vec![
                inst("i-1", "us-east-1a", "m5.16xlarge", Role::Streaming),
                inst("i-2", "us-east-1a", "c5.9xlarge", Role::Streaming),
                inst("i-3", "us-east-1a", "m5.8xlarge", Role::Batch),
                inst("i-4", "us-east-1a", "x1.weird", Role::Streaming),
                inst("i-5", "us-east-1d", "m5.large", Role::Batch),
            ],
            streaming: Streaming::Fleet,
            n_untagged_instances: 7,
            errors: Vec::new(),
        });
        let a = s.pool(&"a".into()).unwrap();
        // 1 + 36/64 = 1.5625 IE from two streaming instances.
        assert_eq!(a.streaming_ie.unwrap().as_micro(), micro(1.5625));
        assert_eq!(a.n_streaming_instances, 2);
        assert_eq!(a.batch_fleet.len(), 1);
        assert_eq!(a.batch_fleet[0].ie.as_micro(), micro(0.5));
        // A pool with no streaming instances reports zero, not "unknown".
        assert_eq!(s.pool(&"b".into()).unwrap().streaming_ie, Some(Ie::ZERO));
        let messages: Vec<String> = s.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [
                "unknown instance type x1.weird in streaming instance i-4: left out of streaming demand",
                "batch instance i-5 (m5.large in us-east-1d) matches no pool: left out of the batch fleet",
            ]
        );
        assert_eq!(s.n_untagged_instances, 7);
    }

    #[test]
    fn pool_lists_are_validated() {
        let ok = [
            pool("a", "us-east-1", Some("us-east-1a"), None),
            pool("a-m5", "us-east-1", Some("us-east-1a"), Some("m5")),
            pool("lax", "us-west-2", Some("us-west-2-lax-1a"), None),
        ];
        assert_eq!(validate_pools(&ok), Ok(()));
        let cases = [
            (
                vec![pool("", "us-east-1", None, None)],
                0,
                "id",
                "must not be empty",
            ),
            (
                vec![pool("a", "us-east-1", Some("eu-west-1a"), None)],
                0,
                "zone",
                "`eu-west-1a` is not a zone of region `us-east-1`",
            ),
            (
                vec![pool("a", "us-east-1", None, Some("m5.large"))],
                0,
                "family",
                "`m5.large` is not an instance family such as `m5`",
            ),
            (
                vec![
                    pool("a", "us-east-1", None, None),
                    pool("a", "us-west-2", None, None),
                ],
                1,
                "id",
                "pool `a` is already defined (pool 0)",
            ),
            (
                vec![
                    pool("a", "us-east-1", None, None),
                    pool("b", "us-east-1", None, None),
                ],
                1,
                "id",
                "pool `b` covers the same region, zone and family as pool `a`",
            ),
        ];
        for (pools, index, field, message) in cases {
            assert_eq!(
                validate_pools(&pools),
                Err(PoolDefError {
                    index,
                    field,
                    message: message.into()
                })
            );
        }
    }
}
