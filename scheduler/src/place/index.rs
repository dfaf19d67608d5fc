//! Ordered indexes of active hosts by free capacity, so a search starts at
//! the first host with enough room in the task's dominant dimension and never
//! visits hosts that are too full in it.
//!
//! Keys are `(free, rank, host_idx)`: `rank` is the tie-break (insertion order
//! or a seeded permutation, see [`crate::TieBreak`]), `host_idx` makes keys unique.

use std::collections::BTreeSet;
use std::ops::Bound;

use crate::resources::{Dim, Resources};

/// Index of a host in the scheduler's host table.
pub(crate) type HostIdx = u32;

type Key = (u64, u64, HostIdx);

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

/// One partition's ordered sets.
#[derive(Debug, Default)]
struct Sets {
    by_cpu: BTreeSet<Key>,
    by_memory: BTreeSet<Key>,
    by_gpu: BTreeSet<Key>,
}

impl Sets {
    fn set(&self, dim: IndexDim) -> &BTreeSet<Key> {
        match dim {
            IndexDim::Cpu => &self.by_cpu,
            IndexDim::Memory => &self.by_memory,
            IndexDim::Gpu => &self.by_gpu,
        }
    }
}

/// Hosts without flex work (partition 0) and with it (partition 1). Flex
/// tasks in a market whose pools cannot lease another host may only go to
/// hosts that already carry flex work, so a search can skip partition 0
/// entirely instead of rejecting thousands of empty hosts one by one.
pub(crate) const NO_FLEX: usize = 0;
/// See [`NO_FLEX`].
pub(crate) const HAS_FLEX: usize = 1;

/// Active hosts ordered by free CPU, free memory and (GPU hosts only) free
/// GPUs, in two partitions: hosts without and with flex work.
#[derive(Debug, Default)]
pub(crate) struct HostIndex {
    parts: [Sets; 2],
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
        let p = &mut self.parts[part];
        p.by_cpu.insert((free.cpu_millis, rank, host_idx));
        p.by_memory.insert((free.memory_mib, rank, host_idx));
        if has_gpus {
            p.by_gpu.insert((free.gpus, rank, host_idx));
        }
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
        let removed = p.by_cpu.remove(&(free.cpu_millis, rank, host_idx))
            & p.by_memory.remove(&(free.memory_mib, rank, host_idx));
        debug_assert!(
            removed,
            "host {host_idx} was not indexed with this free capacity"
        );
        if has_gpus {
            p.by_gpu.remove(&(free.gpus, rank, host_idx));
        }
    }

    /// Moves a host from (`old_part`, `old_free`) to (`new_part`, `new_free`),
    /// touching only the sets whose key changed.
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
        fn mv(set: &mut BTreeSet<Key>, old: u64, new: u64, rank: u64, h: HostIdx) {
            if old != new {
                let removed = set.remove(&(old, rank, h));
                debug_assert!(removed, "host {h} was not indexed at {old}");
                set.insert((new, rank, h));
            }
        }
        let p = &mut self.parts[old_part];
        mv(
            &mut p.by_cpu,
            old_free.cpu_millis,
            new_free.cpu_millis,
            rank,
            host_idx,
        );
        mv(
            &mut p.by_memory,
            old_free.memory_mib,
            new_free.memory_mib,
            rank,
            host_idx,
        );
        if has_gpus {
            mv(&mut p.by_gpu, old_free.gpus, new_free.gpus, rank, host_idx);
        }
    }

    /// Number of indexed (active) hosts.
    pub(crate) fn len(&self) -> usize {
        self.parts[NO_FLEX].by_cpu.len() + self.parts[HAS_FLEX].by_cpu.len()
    }

    /// Number of indexed hosts in one partition.
    pub(crate) fn len_part(&self, part: usize) -> usize {
        self.parts[part].by_cpu.len()
    }

    /// Hosts with at least `min_free` free in `dim`, from the partitions
    /// marked in `parts`, merged in key order: tightest first (ascending free)
    /// or loosest first (descending).
    pub(crate) fn candidates(
        &self,
        dim: IndexDim,
        min_free: u64,
        loosest_first: bool,
        parts: [bool; 2],
    ) -> Box<dyn Iterator<Item = HostIdx> + '_> {
        let range = |part: usize| {
            self.parts[part]
                .set(dim)
                .range((Bound::Included((min_free, 0, 0)), Bound::Unbounded))
        };
        match (parts[NO_FLEX], parts[HAS_FLEX], loosest_first) {
            (true, true, false) => Box::new(Merge::new(range(NO_FLEX), range(HAS_FLEX), false)),
            (true, true, true) => Box::new(Merge::new(
                range(NO_FLEX).rev(),
                range(HAS_FLEX).rev(),
                true,
            )),
            (only_no_flex, _, loosest) => {
                let part = if only_no_flex { NO_FLEX } else { HAS_FLEX };
                if !parts[part] {
                    return Box::new(std::iter::empty());
                }
                if loosest {
                    Box::new(range(part).rev().map(|k| k.2))
                } else {
                    Box::new(range(part).map(|k| k.2))
                }
            }
        }
    }
}

/// Merges two key-ordered iterators (ascending, or descending if `desc`).
struct Merge<'a, A: Iterator<Item = &'a Key>, B: Iterator<Item = &'a Key>> {
    a: std::iter::Peekable<A>,
    b: std::iter::Peekable<B>,
    desc: bool,
}

impl<'a, A: Iterator<Item = &'a Key>, B: Iterator<Item = &'a Key>> Merge<'a, A, B> {
    fn new(a: A, b: B, desc: bool) -> Self {
        Merge {
            a: a.peekable(),
            b: b.peekable(),
            desc,
        }
    }
}

impl<'a, A: Iterator<Item = &'a Key>, B: Iterator<Item = &'a Key>> Iterator for Merge<'a, A, B> {
    type Item = HostIdx;

    fn next(&mut self) -> Option<HostIdx> {
        let take_a = match (self.a.peek(), self.b.peek()) {
            (Some(a), Some(b)) => (a < b) != self.desc,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        let key = if take_a { self.a.next() } else { self.b.next() };
        key.map(|k| k.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_merge_in_key_order_and_can_be_skipped() {
        let mut idx = HostIndex::default();
        let free = |cpu| Resources::cpu_mem(cpu, 1024);
        idx.insert(0, 0, &free(4000), false, NO_FLEX);
        idx.insert(1, 1, &free(2000), false, HAS_FLEX);
        idx.insert(2, 2, &free(3000), false, NO_FLEX);
        idx.insert(3, 3, &free(1000), false, HAS_FLEX);
        let walk = |idx: &HostIndex, min, loosest, parts| {
            idx.candidates(IndexDim::Cpu, min, loosest, parts)
                .collect::<Vec<_>>()
        };
        assert_eq!(walk(&idx, 1500, false, [true, true]), vec![1, 2, 0]);
        assert_eq!(walk(&idx, 0, true, [true, true]), vec![0, 2, 1, 3]);
        assert_eq!(walk(&idx, 0, false, [false, true]), vec![3, 1]);
        assert_eq!(walk(&idx, 0, true, [true, false]), vec![0, 2]);
        assert!(walk(&idx, 0, false, [false, false]).is_empty());
        // A host gaining flex work moves partitions.
        idx.update(2, 2, NO_FLEX, &free(3000), HAS_FLEX, &free(2500), false);
        assert_eq!(walk(&idx, 0, false, [false, true]), vec![3, 1, 2]);
        assert_eq!((idx.len(), idx.len_part(NO_FLEX)), (4, 1));
    }
}
