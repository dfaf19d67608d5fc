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

/// Hosts are partitioned by pool and by whether they carry flex work:
/// partition `2 × pool + HAS_FLEX`. Flex tasks may only go to hosts that
/// already carry flex work in a pool that cannot lease another host, so a
/// search leaves that pool's other partition out entirely instead of
/// rejecting its empty hosts one by one.
pub(crate) const NO_FLEX: usize = 0;
/// See [`NO_FLEX`].
pub(crate) const HAS_FLEX: usize = 1;

/// The partition of a host in `pool`, with or without flex work.
pub(crate) fn part_of(pool: u32, has_flex: bool) -> usize {
    2 * pool as usize + if has_flex { HAS_FLEX } else { NO_FLEX }
}

/// Active hosts ordered by free CPU, free memory and (GPU hosts only) free
/// GPUs, in partitions by pool and flex work (see [`part_of`]).
#[derive(Debug, Default)]
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
        p.by_cpu.insert((free.cpu_millis, rank, host_idx));
        p.by_memory.insert((free.memory_mib, rank, host_idx));
        if has_gpus {
            p.by_gpu.insert((free.gpus, rank, host_idx));
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
        let removed = p.by_cpu.remove(&(free.cpu_millis, rank, host_idx))
            & p.by_memory.remove(&(free.memory_mib, rank, host_idx));
        debug_assert!(
            removed,
            "host {host_idx} was not indexed with this free capacity"
        );
        if has_gpus {
            p.by_gpu.remove(&(free.gpus, rank, host_idx));
        }
        self.n_hosts -= 1;
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

    /// Hosts with at least `min_free` free in `dim`, from the partitions
    /// `include` accepts, merged in key order: tightest first (ascending
    /// free) or loosest first (descending).
    pub(crate) fn candidates(
        &self,
        dim: IndexDim,
        min_free: u64,
        loosest_first: bool,
        include: impl Fn(usize) -> bool,
    ) -> impl Iterator<Item = HostIdx> + '_ {
        let heads: Vec<Head<'_>> = (0..self.parts.len())
            .filter(|&p| include(p) && !self.parts[p].set(dim).is_empty())
            .map(|p| {
                let range = self.parts[p]
                    .set(dim)
                    .range((Bound::Included((min_free, 0, 0)), Bound::Unbounded));
                let it: Box<dyn Iterator<Item = &Key> + '_> = if loosest_first {
                    Box::new(range.rev())
                } else {
                    Box::new(range)
                };
                it.peekable()
            })
            .collect();
        Merge {
            heads,
            desc: loosest_first,
        }
    }
}

type Head<'a> = std::iter::Peekable<Box<dyn Iterator<Item = &'a Key> + 'a>>;

/// Merges key-ordered iterators (ascending, or descending if `desc`). A
/// linear scan over the heads: there are at most two per pool.
struct Merge<'a> {
    heads: Vec<Head<'a>>,
    desc: bool,
}

impl Iterator for Merge<'_> {
    type Item = HostIdx;

    fn next(&mut self) -> Option<HostIdx> {
        let desc = self.desc;
        let mut best: Option<(usize, Key)> = None;
        for (i, head) in self.heads.iter_mut().enumerate() {
            if let Some(&&k) = head.peek() {
                let better = match best {
                    None => true,
                    Some((_, b)) => (k < b) != desc,
                };
                if better {
                    best = Some((i, k));
                }
            }
        }
        let (i, _) = best?;
        self.heads[i].next().map(|k| k.2)
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
        idx.insert(2, 2, &free(3000), false, part_of(1, false));
        idx.insert(3, 3, &free(1000), false, HAS_FLEX);
        let walk = |idx: &HostIndex, min, loosest, skip: usize| {
            idx.candidates(IndexDim::Cpu, min, loosest, |p| p != skip)
                .collect::<Vec<_>>()
        };
        assert_eq!(walk(&idx, 1500, false, usize::MAX), vec![1, 2, 0]);
        assert_eq!(walk(&idx, 0, true, usize::MAX), vec![0, 2, 1, 3]);
        assert_eq!(walk(&idx, 0, false, NO_FLEX), vec![3, 1, 2]);
        assert_eq!(walk(&idx, 0, true, HAS_FLEX), vec![0, 2]);
        assert!(
            idx.candidates(IndexDim::Cpu, 0, false, |_| false)
                .next()
                .is_none()
        );
        // A host gaining flex work moves partitions.
        idx.update(
            2,
            2,
            part_of(1, false),
            &free(3000),
            part_of(1, true),
            &free(2500),
            false,
        );
        assert_eq!(walk(&idx, 0, false, NO_FLEX), vec![3, 1, 2]);
        assert_eq!((idx.len(), idx.len_part(NO_FLEX), idx.n_parts()), (4, 1, 4));
    }
}
