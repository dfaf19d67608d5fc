//! Hosts as the core tracks them, and the host table: dense slots (so the
//! hot paths index a `Vec`), with the slots of lost hosts reused so a fleet
//! that churns keeps a flat table.

use serde::{Deserialize, Serialize};

use crate::model::index::part_of;
use crate::model::ledger::held_ie;
use crate::spec::host::{HostSpec, HostState};
use crate::units::ids::{HostId, HostIdx, PoolIdx, TaskId, TeamIdx, ZoneIdx};
use crate::units::ie::Ie;
use crate::units::price::Price;
use crate::units::resources::Resources;
use crate::units::time::Timestamp;
use crate::util::FxMap;

/// A host as the core tracks it.
#[derive(Clone, Debug)]
pub struct Host {
    pub(crate) spec: HostSpec,
    pub(crate) state: HostState,
    /// Sum of the requests of the tasks on the host (assigned, running, stopping).
    pub(crate) allocated: Resources,
    /// Tasks holding resources here, in the order they arrived.
    pub(crate) tasks: Vec<TaskId>,
    /// Tie-break rank in the host index: unique per host, fixed for its life
    /// and carried by snapshots, so ordering never depends on the slot.
    pub(crate) rank: u64,
    pub(crate) zone: ZoneIdx,
    /// Tasks of the flex tier on this host (the market leases hosts that carry flex work).
    pub(crate) n_flex_tasks: u32,
    /// The host's size in instance equivalents (zero if its type is unknown
    /// and its pool is not market-managed).
    pub(crate) ie: Ie,
    pub(crate) pool: PoolIdx,
    /// Reclaim is emptying this host of flex work: no new flex tasks go here.
    pub(crate) reclaiming: bool,
    /// The forecast says this lease is due back at this instant: the host
    /// takes only flex work that ends before then (see `PoolSupplyChecker`).
    pub(crate) returning: Option<Timestamp>,
    /// Per team and bid: the sum of the dominant shares (ppm) of its flex
    /// tasks here, and how many there are, for the ledger's attribution (see
    /// [`crate::model::ledger`]).
    pub(crate) flex_shares: Vec<(ShareKey, u64, u32)>,
    /// Sum of `flex_shares`.
    pub(crate) flex_share_total: u64,
}

/// Whose share of a host: a team, at one bid (accounts accrue per bid, see
/// [`crate::model::ledger::AccountKey`]).
pub(crate) type ShareKey = (TeamIdx, Option<Price>);

impl Host {
    /// IE each (team, bid) holds on this host.
    pub(crate) fn holdings(&self) -> impl Iterator<Item = (ShareKey, Ie)> + '_ {
        self.flex_shares
            .iter()
            .map(|&(k, share, _)| (k, held_ie(self.ie, share, self.flex_share_total)))
    }

    /// IE one (team, bid) holds here.
    pub(crate) fn holding_of(&self, key: ShareKey) -> Ie {
        self.flex_shares
            .iter()
            .find(|(k, _, _)| *k == key)
            .map_or(Ie::ZERO, |&(_, share, _)| {
                held_ie(self.ie, share, self.flex_share_total)
            })
    }

    /// Adds (or removes) the shares of `n` flex tasks of `share` each for `key`.
    pub(crate) fn add_share(&mut self, key: ShareKey, share: u64, n: u32, add: bool) {
        let pos = self.flex_shares.iter().position(|(k, _, _)| *k == key);
        let share = share * u64::from(n);
        if add {
            match pos {
                Some(i) => {
                    self.flex_shares[i].1 += share;
                    self.flex_shares[i].2 += n;
                }
                None => self.flex_shares.push((key, share, n)),
            }
            self.flex_share_total += share;
        } else {
            let i = pos.expect("a team removes only shares it added");
            let entry = &mut self.flex_shares[i];
            entry.1 = entry.1.checked_sub(share).expect("share sum");
            entry.2 = entry.2.checked_sub(n).expect("share count");
            self.flex_share_total = self
                .flex_share_total
                .checked_sub(share)
                .expect("share total");
            if entry.2 == 0 {
                self.flex_shares.remove(i);
            }
        }
    }
    /// The spec the host was added (or last updated) with.
    pub fn spec(&self) -> &HostSpec {
        &self.spec
    }

    /// Lifecycle state.
    pub fn state(&self) -> HostState {
        self.state
    }

    /// Resources held by assigned, running and stopping tasks.
    pub fn allocated(&self) -> &Resources {
        &self.allocated
    }

    /// Capacity not held by any task.
    pub fn free(&self) -> Resources {
        self.spec.capacity.saturating_sub(&self.allocated)
    }

    /// Tasks holding resources on this host.
    pub fn tasks(&self) -> &[TaskId] {
        &self.tasks
    }

    /// Number of flex-tier tasks on this host.
    pub fn n_flex_tasks(&self) -> u32 {
        self.n_flex_tasks
    }

    /// The host's size in instance equivalents.
    pub fn ie(&self) -> Ie {
        self.ie
    }

    /// True while the market is taking this host back from batch work.
    pub fn is_reclaiming(&self) -> bool {
        self.reclaiming
    }

    /// When the forecast says this host's lease is due back, if it does.
    pub fn returning_at(&self) -> Option<Timestamp> {
        self.returning
    }

    /// The host-index partition: its pool, with or without flex work.
    pub(crate) fn index_part(&self) -> usize {
        part_of(self.pool, self.n_flex_tasks > 0)
    }

    pub(crate) fn has_gpus(&self) -> bool {
        self.spec.capacity.gpus > 0
    }
}

/// What a snapshot keeps of a host: the facts that are not derived from
/// the tasks on it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct HostRecord {
    pub(crate) spec: HostSpec,
    pub(crate) state: HostState,
    pub(crate) rank: u64,
    pub(crate) reclaiming: bool,
    #[serde(default)]
    pub(crate) returning: Option<Timestamp>,
    /// In arrival order (victim lists walk it).
    pub(crate) tasks: Vec<TaskId>,
}

/// Hosts by slot, with a free list of the slots lost hosts left.
#[derive(Clone, Debug, Default)]
pub(crate) struct HostTable {
    slots: Vec<Option<Host>>,
    /// Free slots, reused last-freed first.
    free: Vec<HostIdx>,
    by_id: FxMap<HostId, HostIdx>,
}

impl HostTable {
    /// The slot the next added host will take.
    pub(crate) fn next_slot(&self) -> HostIdx {
        self.free
            .last()
            .copied()
            .unwrap_or(HostIdx::from_usize(self.slots.len()))
    }

    /// Stores a host in [`HostTable::next_slot`].
    pub(crate) fn insert(&mut self, host: Host) -> HostIdx {
        let idx = self.next_slot();
        self.by_id.insert(host.spec.id.clone(), idx);
        if self.free.last() == Some(&idx) {
            self.free.pop();
            self.slots[idx.get()] = Some(host);
        } else {
            self.slots.push(Some(host));
        }
        idx
    }

    /// Frees a (lost, empty) host's slot.
    pub(crate) fn remove(&mut self, idx: HostIdx) -> Host {
        let host = self.slots[idx.get()].take().expect("removed host exists");
        debug_assert!(host.tasks.is_empty(), "a removed host holds no tasks");
        self.by_id.remove(&host.spec.id);
        self.free.push(idx);
        host
    }

    pub(crate) fn idx(&self, id: &HostId) -> Option<HostIdx> {
        self.by_id.get(id).copied()
    }

    pub(crate) fn get(&self, idx: HostIdx) -> Option<&Host> {
        self.slots.get(idx.get()).and_then(Option::as_ref)
    }

    /// Hosts in slot order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (HostIdx, &Host)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.as_ref().map(|h| (HostIdx::from_usize(i), h)))
    }

    /// Number of slots, used and free.
    pub(crate) fn n_slots(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn free_slots(&self) -> &[HostIdx] {
        &self.free
    }

    /// Rebuilds a table with hosts in the given slots and free list (restore).
    pub(crate) fn from_slots(slots: Vec<Option<Host>>, free: Vec<HostIdx>) -> Self {
        let by_id = slots
            .iter()
            .enumerate()
            .filter_map(|(i, h)| {
                h.as_ref()
                    .map(|h| (h.spec.id.clone(), HostIdx::from_usize(i)))
            })
            .collect();
        HostTable { slots, free, by_id }
    }
}

impl std::ops::Index<HostIdx> for HostTable {
    type Output = Host;
    #[inline]
    fn index(&self, idx: HostIdx) -> &Host {
        self.slots[idx.get()].as_ref().expect("host slot in use")
    }
}

impl std::ops::IndexMut<HostIdx> for HostTable {
    #[inline]
    fn index_mut(&mut self, idx: HostIdx) -> &mut Host {
        self.slots[idx.get()].as_mut().expect("host slot in use")
    }
}
