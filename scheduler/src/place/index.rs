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

/// Active hosts ordered by free CPU, free memory and (GPU hosts only) free GPUs.
#[derive(Debug, Default)]
pub(crate) struct HostIndex {
    by_cpu: BTreeSet<Key>,
    by_memory: BTreeSet<Key>,
    by_gpu: BTreeSet<Key>,
}

impl HostIndex {
    /// Adds a host with the given free capacity.
    pub(crate) fn insert(
        &mut self,
        host_idx: HostIdx,
        rank: u64,
        free: &Resources,
        has_gpus: bool,
    ) {
        self.by_cpu.insert((free.cpu_millis, rank, host_idx));
        self.by_memory.insert((free.memory_mib, rank, host_idx));
        if has_gpus {
            self.by_gpu.insert((free.gpus, rank, host_idx));
        }
    }

    /// Removes a host whose free capacity was `free`.
    pub(crate) fn remove(
        &mut self,
        host_idx: HostIdx,
        rank: u64,
        free: &Resources,
        has_gpus: bool,
    ) {
        let removed = self.by_cpu.remove(&(free.cpu_millis, rank, host_idx))
            & self.by_memory.remove(&(free.memory_mib, rank, host_idx));
        debug_assert!(
            removed,
            "host {host_idx} was not indexed with this free capacity"
        );
        if has_gpus {
            self.by_gpu.remove(&(free.gpus, rank, host_idx));
        }
    }

    /// Moves a host from `old_free` to `new_free`, touching only the indexes whose key changed.
    pub(crate) fn update(
        &mut self,
        host_idx: HostIdx,
        rank: u64,
        old_free: &Resources,
        new_free: &Resources,
        has_gpus: bool,
    ) {
        fn mv(set: &mut BTreeSet<Key>, old: u64, new: u64, rank: u64, h: HostIdx) {
            if old != new {
                let removed = set.remove(&(old, rank, h));
                debug_assert!(removed, "host {h} was not indexed at {old}");
                set.insert((new, rank, h));
            }
        }
        mv(
            &mut self.by_cpu,
            old_free.cpu_millis,
            new_free.cpu_millis,
            rank,
            host_idx,
        );
        mv(
            &mut self.by_memory,
            old_free.memory_mib,
            new_free.memory_mib,
            rank,
            host_idx,
        );
        if has_gpus {
            mv(
                &mut self.by_gpu,
                old_free.gpus,
                new_free.gpus,
                rank,
                host_idx,
            );
        }
    }

    /// Number of indexed (active) hosts.
    pub(crate) fn len(&self) -> usize {
        self.by_cpu.len()
    }

    fn set(&self, dim: IndexDim) -> &BTreeSet<Key> {
        match dim {
            IndexDim::Cpu => &self.by_cpu,
            IndexDim::Memory => &self.by_memory,
            IndexDim::Gpu => &self.by_gpu,
        }
    }

    /// Hosts with at least `min_free` free in `dim`: tightest first
    /// (ascending free) or loosest first (descending).
    pub(crate) fn candidates(
        &self,
        dim: IndexDim,
        min_free: u64,
        loosest_first: bool,
    ) -> Box<dyn Iterator<Item = HostIdx> + '_> {
        let range = self
            .set(dim)
            .range((Bound::Included((min_free, 0, 0)), Bound::Unbounded));
        if loosest_first {
            Box::new(range.rev().map(|k| k.2))
        } else {
            Box::new(range.map(|k| k.2))
        }
    }
}
