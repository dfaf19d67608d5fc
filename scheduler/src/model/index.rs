//! Ordered indexes of active hosts by free capacity, so a search starts at
//! the first host with enough room in the task's dominant dimension and never
//! visits hosts that are too full in it.
//!
//! Keys are `(free, rank, host_idx)`: `rank` is the tie-break (insertion order
//! or a seeded permutation, see [`crate::TieBreak`]) and unique per host, so
//! `host_idx` never decides an order; it only names the host.
//!
//! A round plans against the committed index plus a [`Shadow`]: a small
//! index of the hosts it touched tentatively ([`crate::model::overlay`]).
//! [`HostIndex::candidates`] merges both and skips the committed entries of
//! touched hosts. Skipping costs a step per stale entry the walk passes, so
//! once a round has touched many hosts of a partition the overlay *promotes*
//! it: the shadow then holds the whole partition, and the search reads that
//! partition only from the shadow (see [`Shadow::promoted`]). Either way a
//! search yields the same hosts in the same order: every live key is unique.
//!
//! Every entry also carries the host's free capacity in each fixed
//! dimension ([`Room`]), so a search can pass over the hosts that have room
//! in the walked dimension but not in another (say enough CPU but too little
//! memory) with a few integer comparisons, instead of sending each through
//! the feasibility checkers: see [`Fit`].

use std::collections::BTreeMap;
use std::collections::btree_map::Range;
use std::ops::Bound;

use crate::units::ids::{HostIdx, PoolIdx};
use crate::units::resources::{Dim, Resources};

type Key = (u64, u64, HostIdx);

/// A host's free capacity in the fixed dimensions, in
/// [`Resources::shortfall_after_adding`]'s order: CPU, memory, disk,
/// network, GPUs. (Named scalars are left to the checkers.)
pub(crate) type Room = [u64; 5];

/// The dimensions of [`Room`], in order.
const ROOM_DIMS: [Dim; 5] = [Dim::Cpu, Dim::Memory, Dim::Disk, Dim::Network, Dim::Gpu];

fn room(free: &Resources) -> Room {
    [
        free.cpu_millis,
        free.memory_mib,
        free.disk_mib,
        free.network_mbps,
        free.gpus,
    ]
}

/// A request's fixed dimensions, for a search that passes over hosts
/// without room for it, and the count of hosts it passed over, by the
/// dimension that was short.
///
/// Exactness: a host is passed over at dimension `d` only if the request
/// fits in every earlier dimension and exceeds its free capacity in `d`,
/// which is exactly when [`Resources::shortfall_after_adding`] (what
/// `ResourceFitChecker` runs) names `d` — with one exception the filter
/// cannot see: a host whose allocation exceeds its capacity in an earlier
/// dimension the request does not use (free capacity 0 either way). So a
/// host with 0 free in an earlier dimension the request asks 0 of is never
/// passed over; it goes to the checkers, which name the right reason.
#[derive(Clone, Debug)]
pub(crate) struct Fit {
    want: Room,
    passed_over: [u32; 5],
}

impl Fit {
    /// A filter for `request`'s fixed dimensions.
    pub(crate) fn new(request: &Resources) -> Fit {
        Fit {
            want: room(request),
            passed_over: [0; 5],
        }
    }

    /// True if the host may fit (send it to the checkers); otherwise counts
    /// it under the dimension that is short.
    #[inline]
    fn admits(&mut self, free: &Room) -> bool {
        let mut ambiguous = false;
        for d in 0..5 {
            let (want, free) = (self.want[d], free[d]);
            if want > free {
                if ambiguous {
                    return true;
                }
                self.passed_over[d] += 1;
                return false;
            }
            ambiguous |= free == 0;
        }
        true
    }

    /// Hosts passed over, by the dimension that was short.
    pub(crate) fn passed_over(&self) -> impl Iterator<Item = (Dim, u32)> + '_ {
        ROOM_DIMS
            .iter()
            .zip(self.passed_over)
            .filter(|&(_, n)| n > 0)
            .map(|(d, n)| (d.clone(), n))
    }

    /// Total hosts passed over.
    pub(crate) fn n_passed_over(&self) -> u32 {
        self.passed_over.iter().sum()
    }
}

/// Which index a search walks.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum IndexDim {
    Cpu,
    Memory,
    Gpu,
}

impl IndexDim {
    pub(crate) fn dim(self) -> Dim {
        match self {
            IndexDim::Cpu => Dim::Cpu,
            IndexDim::Memory => Dim::Memory,
            IndexDim::Gpu => Dim::Gpu,
        }
    }

    pub(crate) fn amount(self, r: &Resources) -> u64 {
        match self {
            IndexDim::Cpu => r.cpu_millis,
            IndexDim::Memory => r.memory_mib,
            IndexDim::Gpu => r.gpus,
        }
    }
}

/// One partition's ordered sets: each maps a key to the host's [`Room`].
#[derive(Clone, Debug, Default)]
struct Sets {
    by_cpu: BTreeMap<Key, Room>,
    by_memory: BTreeMap<Key, Room>,
    by_gpu: BTreeMap<Key, Room>,
}

impl Sets {
    fn set(&self, dim: IndexDim) -> &BTreeMap<Key, Room> {
        match dim {
            IndexDim::Cpu => &self.by_cpu,
            IndexDim::Memory => &self.by_memory,
            IndexDim::Gpu => &self.by_gpu,
        }
    }
}

/// Hosts are partitioned by pool and by whether they carry flex work:
/// partition `2 × pool + HAS_FLEX`. Flex tasks may only go to hosts that
/// already carry flex work in a pool that cannot lease another host, so a
/// search leaves that pool's other partition out entirely instead of
/// rejecting its empty hosts one by one.
pub(crate) const NO_FLEX: usize = 0;
/// See [`NO_FLEX`].
pub(crate) const HAS_FLEX: usize = 1;

/// The partition of a host in `pool`, with or without flex work.
pub(crate) fn part_of(pool: PoolIdx, has_flex: bool) -> usize {
    2 * pool.get() + if has_flex { HAS_FLEX } else { NO_FLEX }
}

/// The pool of a partition.
pub(crate) fn pool_of_part(part: usize) -> PoolIdx {
    PoolIdx::from_usize(part / 2)
}

/// Active hosts ordered by free CPU, free memory and (GPU hosts only) free
/// GPUs, in partitions by pool and flex work (see [`part_of`]).
#[derive(Clone, Debug, Default)]
pub(crate) struct HostIndex {
    parts: Vec<Sets>,
    n_hosts: usize,
}

impl HostIndex {
    /// Adds a host with the given free capacity to partition `part`.
    pub(crate) fn insert(
        &mut self,
        host_idx: HostIdx,
        rank: u64,
        free: &Resources,
        has_gpus: bool,
        part: usize,
    ) {
        if self.parts.len() <= part {
            self.parts.resize_with(part + 1, Sets::default);
        }
        let p = &mut self.parts[part];
        let r = room(free);
        let old = p.by_cpu.insert((free.cpu_millis, rank, host_idx), r);
        debug_assert!(old.is_none(), "host {host_idx:?} indexed twice");
        p.by_memory.insert((free.memory_mib, rank, host_idx), r);
        if has_gpus {
            p.by_gpu.insert((free.gpus, rank, host_idx), r);
        }
        self.n_hosts += 1;
    }

    /// Removes a host whose free capacity was `free` from partition `part`.
    pub(crate) fn remove(
        &mut self,
        host_idx: HostIdx,
        rank: u64,
        free: &Resources,
        has_gpus: bool,
        part: usize,
    ) {
        let p = &mut self.parts[part];
        let removed = p
            .by_cpu
            .remove(&(free.cpu_millis, rank, host_idx))
            .is_some()
            & p.by_memory
                .remove(&(free.memory_mib, rank, host_idx))
                .is_some();
        assert!(
            removed,
            "host {host_idx:?} was not indexed with this free capacity"
        );
        if has_gpus {
            p.by_gpu.remove(&(free.gpus, rank, host_idx));
        }
        self.n_hosts -= 1;
    }

    /// Moves a host from (`old_part`, `old_free`) to (`new_part`, `new_free`),
    /// moving only the entries whose key changed (the others get the new
    /// [`Room`] in place).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn update(
        &mut self,
        host_idx: HostIdx,
        rank: u64,
        old_part: usize,
        old_free: &Resources,
        new_part: usize,
        new_free: &Resources,
        has_gpus: bool,
    ) {
        if old_part != new_part {
            self.remove(host_idx, rank, old_free, has_gpus, old_part);
            self.insert(host_idx, rank, new_free, has_gpus, new_part);
            return;
        }
        let r = room(new_free);
        let mv = |set: &mut BTreeMap<Key, Room>, old: u64, new: u64| {
            if old == new {
                let entry = set.get_mut(&(old, rank, host_idx));
                *entry.unwrap_or_else(|| panic!("host {host_idx:?} was not indexed at {old}")) = r;
            } else {
                let removed = set.remove(&(old, rank, host_idx));
                assert!(
                    removed.is_some(),
                    "host {host_idx:?} was not indexed at {old}"
                );
                set.insert((new, rank, host_idx), r);
            }
        };
        let p = &mut self.parts[old_part];
        mv(&mut p.by_cpu, old_free.cpu_millis, new_free.cpu_millis);
        mv(&mut p.by_memory, old_free.memory_mib, new_free.memory_mib);
        if has_gpus {
            mv(&mut p.by_gpu, old_free.gpus, new_free.gpus);
        }
    }

    /// Number of indexed (active) hosts.
    pub(crate) fn len(&self) -> usize {
        self.n_hosts
    }

    /// Number of partitions (some may be empty).
    pub(crate) fn n_parts(&self) -> usize {
        self.parts.len()
    }

    /// Number of indexed hosts in one partition.
    pub(crate) fn len_part(&self, part: usize) -> usize {
        self.parts.get(part).map_or(0, |p| p.by_cpu.len())
    }

    /// A copy of partition `part` alone: the other partitions are empty.
    pub(crate) fn part_copy(&self, part: usize) -> HostIndex {
        let mut copy = HostIndex::default();
        if let Some(sets) = self.parts.get(part) {
            copy.parts.resize_with(part + 1, Sets::default);
            copy.parts[part] = sets.clone();
            copy.n_hosts = sets.by_cpu.len();
        }
        copy
    }

    /// Moves every entry of `other` into this index. No host may be in
    /// both. Each set takes the smaller side's entries one by one, so adding
    /// a few entries to a big copy (or a big copy to a few entries) costs
    /// O(few × log big), not a rebuild.
    pub(crate) fn absorb(&mut self, other: HostIndex) {
        if self.parts.len() < other.parts.len() {
            self.parts.resize_with(other.parts.len(), Sets::default);
        }
        fn absorb_set(into: &mut BTreeMap<Key, Room>, mut from: BTreeMap<Key, Room>) {
            if into.len() < from.len() {
                std::mem::swap(into, &mut from);
            }
            let n = into.len() + from.len();
            into.extend(from);
            assert_eq!(into.len(), n, "a host indexed on both sides");
        }
        for (mine, theirs) in self.parts.iter_mut().zip(other.parts) {
            absorb_set(&mut mine.by_cpu, theirs.by_cpu);
            absorb_set(&mut mine.by_memory, theirs.by_memory);
            absorb_set(&mut mine.by_gpu, theirs.by_gpu);
        }
        self.n_hosts += other.n_hosts;
    }

    /// Hosts with at least `min_free` free in `dim`, from the partitions
    /// `include` accepts, merged in key order: tightest first (ascending
    /// free) or loosest first (descending). With a `shadow`, the committed
    /// partitions it promoted are read only from its index, the committed
    /// entries of its touched hosts are skipped elsewhere, and its entries
    /// (touched hosts at their tentative free capacity) are merged in. With
    /// a `fit`, hosts short of room in another fixed dimension are passed
    /// over and counted (see [`Fit`]); the others come in the same order.
    pub(crate) fn candidates<'a, P, S>(
        &'a self,
        shadow: Option<Shadow<'a, P, S>>,
        dim: IndexDim,
        min_free: u64,
        loosest_first: bool,
        include: impl Fn(usize) -> bool,
        fit: Option<Fit>,
    ) -> Candidates<'a, S>
    where
        P: Fn(usize) -> bool,
        S: Fn(HostIdx) -> bool + 'a,
    {
        let mut heads: Vec<Head<'a>> = Vec::new();
        let promoted = |p: usize| shadow.as_ref().is_some_and(|s| (s.promoted)(p));
        for p in (0..self.parts.len()).filter(|&p| include(p) && !promoted(p)) {
            heads.extend(Head::new(self, p, dim, min_free, loosest_first, false));
        }
        let touched = shadow.map(|s| {
            for p in (0..s.index.parts.len()).filter(|&p| include(p)) {
                heads.extend(Head::new(s.index, p, dim, min_free, loosest_first, true));
            }
            s.touched
        });
        Candidates {
            heads,
            desc: loosest_first,
            touched,
            fit,
        }
    }
}

/// What a round's tentative changes do to a search over the committed index
/// (the overlay builds one, see `View::candidates`).
pub(crate) struct Shadow<'a, P, S> {
    /// Touched hosts at their tentative free capacity, in their tentative
    /// partitions, plus every untouched host of each promoted partition.
    pub(crate) index: &'a HostIndex,
    /// True for a committed partition that `index` holds whole: the search
    /// leaves the committed one out instead of skipping its stale entries
    /// one by one.
    pub(crate) promoted: P,
    /// True for a touched host: its committed entry is stale.
    pub(crate) touched: S,
}

/// One partition's entries from `min_free` on, in search order.
struct Head<'a> {
    range: Range<'a, Key, Room>,
    desc: bool,
    next: Option<(&'a Key, &'a Room)>,
    is_extra: bool,
}

impl<'a> Head<'a> {
    /// The keys of `index`'s partition `part` from `min_free` on, in search
    /// order; `None` if there are none.
    #[inline]
    fn new(
        index: &'a HostIndex,
        part: usize,
        dim: IndexDim,
        min_free: u64,
        desc: bool,
        is_extra: bool,
    ) -> Option<Head<'a>> {
        let set = index.parts[part].set(dim);
        if set.is_empty() {
            return None;
        }
        let range = set.range((Bound::Included((min_free, 0, HostIdx(0))), Bound::Unbounded));
        let mut head = Head {
            range,
            desc,
            next: None,
            is_extra,
        };
        head.advance();
        head.next.is_some().then_some(head)
    }

    #[inline]
    fn advance(&mut self) {
        self.next = if self.desc {
            self.range.next_back()
        } else {
            self.range.next()
        };
    }
}

/// The hosts a search walks: key-ordered partitions merged (ascending, or
/// descending if `desc`) by a linear scan over the heads, at most two per
/// partition (committed and tentative).
pub(crate) struct Candidates<'a, S> {
    heads: Vec<Head<'a>>,
    desc: bool,
    /// With a shadow: true for hosts whose committed entries are stale.
    touched: Option<S>,
    fit: Option<Fit>,
}

impl<S> Candidates<'_, S> {
    /// The filter, with the hosts it passed over so far.
    pub(crate) fn fit(&self) -> Option<&Fit> {
        self.fit.as_ref()
    }
}

impl<S: Fn(HostIdx) -> bool> Iterator for Candidates<'_, S> {
    type Item = HostIdx;

    fn next(&mut self) -> Option<HostIdx> {
        loop {
            let desc = self.desc;
            let i = if self.heads.len() == 1 {
                // One partition (the common case): no merge.
                self.heads[0].next?;
                0
            } else {
                let mut best: Option<(usize, &Key)> = None;
                for (i, head) in self.heads.iter().enumerate() {
                    if let Some((k, _)) = head.next {
                        let better = match best {
                            None => true,
                            Some((_, b)) => (k < b) != desc,
                        };
                        if better {
                            best = Some((i, k));
                        }
                    }
                }
                best?.0
            };
            let head = &mut self.heads[i];
            let (key, room) = head.next.expect("a head with no entry is never best");
            head.advance();
            if !head.is_extra
                && let Some(touched) = &self.touched
                && touched(key.2)
            {
                continue;
            }
            if let Some(fit) = &mut self.fit
                && !fit.admits(room)
            {
                continue;
            }
            return Some(key.2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u32) -> HostIdx {
        HostIdx(i)
    }

    /// A search without a shadow (the committed index alone).
    type NoShadow = Shadow<'static, fn(usize) -> bool, fn(HostIdx) -> bool>;

    #[test]
    fn fit_passes_over_hosts_short_in_a_dimension_and_names_it() {
        let want = Resources {
            disk_mib: 10,
            ..Resources::cpu_mem(2_000, 1024)
        };
        let mut fit = Fit::new(&want);
        assert!(fit.admits(&[2_000, 1024, 10, 0, 0]), "an exact fit");
        assert!(!fit.admits(&[8_000, 512, 0, 0, 0]), "short of memory first");
        assert!(!fit.admits(&[8_000, 4096, 9, 0, 0]));
        assert!(!fit.admits(&[1_000, 0, 0, 0, 0]));
        let counted: Vec<(Dim, u32)> = fit.passed_over().collect();
        assert_eq!(
            counted,
            vec![(Dim::Cpu, 1), (Dim::Memory, 1), (Dim::Disk, 1)]
        );
        // No network asked and none free: the host may be over-committed in
        // network (the checker then names network, not disk), so it is not
        // passed over.
        let mut fit = Fit::new(&Resources {
            gpus: 1,
            ..Resources::cpu_mem(1_000, 1024)
        });
        assert!(fit.admits(&[4_000, 4096, 100, 0, 0]));
        assert_eq!(fit.n_passed_over(), 0);
    }

    #[test]
    fn partitions_merge_in_key_order_and_can_be_skipped() {
        let mut idx = HostIndex::default();
        let free = |cpu| Resources::cpu_mem(cpu, 1024);
        let p1 = PoolIdx(1);
        idx.insert(h(0), 0, &free(4000), false, NO_FLEX);
        idx.insert(h(1), 1, &free(2000), false, HAS_FLEX);
        idx.insert(h(2), 2, &free(3000), false, part_of(p1, false));
        idx.insert(h(3), 3, &free(1000), false, HAS_FLEX);
        let walk = |idx: &HostIndex, min, loosest, skip: usize| {
            idx.candidates(
                None::<NoShadow>,
                IndexDim::Cpu,
                min,
                loosest,
                |p| p != skip,
                None,
            )
            .map(|x| x.0)
            .collect::<Vec<_>>()
        };
        assert_eq!(walk(&idx, 1500, false, usize::MAX), vec![1, 2, 0]);
        assert_eq!(walk(&idx, 0, true, usize::MAX), vec![0, 2, 1, 3]);
        assert_eq!(walk(&idx, 0, false, NO_FLEX), vec![3, 1, 2]);
        assert_eq!(walk(&idx, 0, true, HAS_FLEX), vec![0, 2]);
        // A host gaining flex work moves partitions.
        idx.update(
            h(2),
            2,
            part_of(p1, false),
            &free(3000),
            part_of(p1, true),
            &free(2500),
            false,
        );
        assert_eq!(walk(&idx, 0, false, NO_FLEX), vec![3, 1, 2]);
        assert_eq!((idx.len(), idx.len_part(NO_FLEX), idx.n_parts()), (4, 1, 4));
    }

    #[test]
    fn a_tentative_index_shadows_the_committed_entries_of_touched_hosts() {
        let free = |cpu| Resources::cpu_mem(cpu, 1024);
        let mut base = HostIndex::default();
        base.insert(h(0), 0, &free(4000), false, NO_FLEX);
        base.insert(h(1), 1, &free(3000), false, NO_FLEX);
        base.insert(h(2), 2, &free(2000), false, NO_FLEX);
        // Host 0 took 3 vCPU tentatively: it is now the tightest.
        let mut extra = HostIndex::default();
        extra.insert(h(0), 0, &free(1000), false, HAS_FLEX);
        let walk = |min| {
            let shadow = Shadow {
                index: &extra,
                promoted: |_| false,
                touched: |x| x == h(0),
            };
            base.candidates(Some(shadow), IndexDim::Cpu, min, false, |_| true, None)
                .map(|x| x.0)
                .collect::<Vec<_>>()
        };
        assert_eq!(walk(0), vec![0, 2, 1]);
        assert_eq!(walk(1500), vec![2, 1], "host 0 no longer has 1.5 vCPU free");
    }

    #[test]
    fn a_promoted_partition_is_read_only_from_the_shadow() {
        let free = |cpu| Resources::cpu_mem(cpu, 1024);
        let mut base = HostIndex::default();
        base.insert(h(0), 0, &free(4000), false, NO_FLEX);
        base.insert(h(1), 1, &free(3000), false, NO_FLEX);
        base.insert(h(2), 2, &free(2000), false, NO_FLEX);
        base.insert(h(3), 3, &free(2500), false, HAS_FLEX);
        // Host 0 took 3 vCPU of flex work tentatively; NO_FLEX is promoted:
        // the shadow holds its untouched hosts, without host 0's old entry.
        let mut shadow_index = base.part_copy(NO_FLEX);
        assert_eq!(
            (shadow_index.len(), shadow_index.len_part(HAS_FLEX)),
            (3, 0)
        );
        shadow_index.remove(h(0), 0, &free(4000), false, NO_FLEX);
        let mut touched = HostIndex::default();
        touched.insert(h(0), 0, &free(1000), false, HAS_FLEX);
        shadow_index.absorb(touched);
        assert_eq!((shadow_index.len(), shadow_index.len_part(NO_FLEX)), (3, 2));
        let walk = |min, loosest, promoted: bool, touched: bool| {
            let shadow = Shadow {
                index: &shadow_index,
                promoted: move |p| promoted && p == NO_FLEX,
                // Host 0's committed entry is left out with its partition,
                // so it does not even need to be marked touched.
                touched: move |x| touched && x == h(0),
            };
            base.candidates(Some(shadow), IndexDim::Cpu, min, loosest, |_| true, None)
                .map(|x| x.0)
                .collect::<Vec<_>>()
        };
        assert_eq!(walk(0, false, true, false), vec![0, 2, 3, 1]);
        assert_eq!(walk(2200, true, true, true), vec![1, 3]);
        // Without promotion the committed NO_FLEX is walked too: its entries
        // of untouched hosts then show up twice. (The overlay never builds
        // such a shadow; this shows the committed partition really is left out.)
        assert_eq!(walk(2200, false, false, true), vec![3, 1, 1]);
    }
}
