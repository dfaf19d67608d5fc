//! The resource model: integer vectors with checked arithmetic. Capacity
//! bookkeeping never uses floats; floats appear only in scores and reports.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A resource vector: a host's capacity, its allocation, or a task's request.
///
/// Named scalar resources (`scalars`) are for things the fleet counts but the
/// core does not know about (licences, FPGA slots). An absent scalar is zero.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Resources {
    /// CPU in millicores (1000 = one vCPU).
    pub cpu_millis: u64,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Local disk in MiB.
    pub disk_mib: u64,
    /// Network bandwidth in Mbps.
    pub network_mbps: u64,
    /// Whole GPU devices.
    pub gpus: u64,
    /// Named scalar resources, by name.
    pub scalars: BTreeMap<Arc<str>, u64>,
}

/// One dimension of [`Resources`], used to say which one is short.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Dim {
    /// CPU millicores.
    Cpu,
    /// Memory MiB.
    Memory,
    /// Disk MiB.
    Disk,
    /// Network Mbps.
    Network,
    /// GPU devices.
    Gpu,
    /// A named scalar resource.
    Scalar(Arc<str>),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Cpu => f.write_str("cpu"),
            Dim::Memory => f.write_str("memory"),
            Dim::Disk => f.write_str("disk"),
            Dim::Network => f.write_str("network"),
            Dim::Gpu => f.write_str("gpu"),
            Dim::Scalar(name) => write!(f, "scalar {name}"),
        }
    }
}

/// Arithmetic on resource vectors overflowed or went below zero: a
/// bookkeeping bug or hostile input, never silently wrapped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("resource arithmetic out of range in {dim}")]
pub struct ResourceOverflow {
    /// The dimension that overflowed or underflowed.
    pub dim: Dim,
}

impl Resources {
    /// A vector with only CPU and memory set.
    pub fn cpu_mem(cpu_millis: u64, memory_mib: u64) -> Self {
        Resources {
            cpu_millis,
            memory_mib,
            ..Resources::default()
        }
    }

    /// True if every dimension is zero.
    pub fn is_zero(&self) -> bool {
        self.cpu_millis == 0
            && self.memory_mib == 0
            && self.disk_mib == 0
            && self.network_mbps == 0
            && self.gpus == 0
            && self.scalars.values().all(|v| *v == 0)
    }

    /// The first dimension in which `self` (a request) does not fit into
    /// `free`, or `None` if it fits everywhere. Checked in a fixed order (cpu,
    /// memory, disk, network, gpu, scalars by name) so reasons are stable.
    pub fn first_shortfall(&self, free: &Resources) -> Option<Dim> {
        if self.cpu_millis > free.cpu_millis {
            return Some(Dim::Cpu);
        }
        if self.memory_mib > free.memory_mib {
            return Some(Dim::Memory);
        }
        if self.disk_mib > free.disk_mib {
            return Some(Dim::Disk);
        }
        if self.network_mbps > free.network_mbps {
            return Some(Dim::Network);
        }
        if self.gpus > free.gpus {
            return Some(Dim::Gpu);
        }
        self.scalars
            .iter()
            .find(|(name, want)| **want > free.scalars.get(*name).copied().unwrap_or(0))
            .map(|(name, _)| Dim::Scalar(name.clone()))
    }

    /// The first dimension in which `self + request` exceeds `capacity`, or
    /// `None` if it fits. Equivalent to `request.first_shortfall(capacity - self)`
    /// without building the difference.
    pub fn shortfall_after_adding(&self, request: &Resources, capacity: &Resources) -> Option<Dim> {
        let over = |used: u64, want: u64, cap: u64| used.checked_add(want).is_none_or(|t| t > cap);
        if over(self.cpu_millis, request.cpu_millis, capacity.cpu_millis) {
            return Some(Dim::Cpu);
        }
        if over(self.memory_mib, request.memory_mib, capacity.memory_mib) {
            return Some(Dim::Memory);
        }
        if over(self.disk_mib, request.disk_mib, capacity.disk_mib) {
            return Some(Dim::Disk);
        }
        if over(
            self.network_mbps,
            request.network_mbps,
            capacity.network_mbps,
        ) {
            return Some(Dim::Network);
        }
        if over(self.gpus, request.gpus, capacity.gpus) {
            return Some(Dim::Gpu);
        }
        request
            .scalars
            .iter()
            .find(|(name, want)| {
                over(
                    self.scalars.get(*name).copied().unwrap_or(0),
                    **want,
                    capacity.scalars.get(*name).copied().unwrap_or(0),
                )
            })
            .map(|(name, _)| Dim::Scalar(name.clone()))
    }

    /// `self += other`, failing (and leaving `self` unchanged) on overflow.
    pub fn checked_add_assign(&mut self, other: &Resources) -> Result<(), ResourceOverflow> {
        if other.scalars.is_empty() {
            return self.fixed_assign(other, u64::checked_add);
        }
        let sum = self.checked_add(other)?;
        *self = sum;
        Ok(())
    }

    /// `self -= other`, failing (and leaving `self` unchanged) on underflow.
    pub fn checked_sub_assign(&mut self, other: &Resources) -> Result<(), ResourceOverflow> {
        if other.scalars.is_empty() {
            return self.fixed_assign(other, u64::checked_sub);
        }
        let diff = self.checked_sub(other)?;
        *self = diff;
        Ok(())
    }

    /// `op` on the fixed dimensions in place, for an `other` without named
    /// scalars (most requests): the same result as [`Resources::zip_with`]
    /// without building a new value (and its scalar map) per charge.
    fn fixed_assign(
        &mut self,
        other: &Resources,
        op: impl Fn(u64, u64) -> Option<u64>,
    ) -> Result<(), ResourceOverflow> {
        let dim = |d: Dim| ResourceOverflow { dim: d };
        let cpu_millis = op(self.cpu_millis, other.cpu_millis).ok_or_else(|| dim(Dim::Cpu))?;
        let memory_mib = op(self.memory_mib, other.memory_mib).ok_or_else(|| dim(Dim::Memory))?;
        let disk_mib = op(self.disk_mib, other.disk_mib).ok_or_else(|| dim(Dim::Disk))?;
        let network_mbps =
            op(self.network_mbps, other.network_mbps).ok_or_else(|| dim(Dim::Network))?;
        let gpus = op(self.gpus, other.gpus).ok_or_else(|| dim(Dim::Gpu))?;
        (
            self.cpu_millis,
            self.memory_mib,
            self.disk_mib,
            self.network_mbps,
            self.gpus,
        ) = (cpu_millis, memory_mib, disk_mib, network_mbps, gpus);
        Ok(())
    }

    /// `self + other`, or the first dimension that overflowed.
    pub fn checked_add(&self, other: &Resources) -> Result<Resources, ResourceOverflow> {
        self.zip_with(other, u64::checked_add)
    }

    /// `self - other`, or the first dimension that would go below zero.
    pub fn checked_sub(&self, other: &Resources) -> Result<Resources, ResourceOverflow> {
        self.zip_with(other, u64::checked_sub)
    }

    fn zip_with(
        &self,
        other: &Resources,
        op: impl Fn(u64, u64) -> Option<u64>,
    ) -> Result<Resources, ResourceOverflow> {
        let dim = |d: Dim| ResourceOverflow { dim: d };
        let mut scalars = self.scalars.clone();
        for (name, v) in &other.scalars {
            let mine = scalars.get(name).copied().unwrap_or(0);
            let r = op(mine, *v).ok_or_else(|| dim(Dim::Scalar(name.clone())))?;
            scalars.insert(name.clone(), r);
        }
        Ok(Resources {
            cpu_millis: op(self.cpu_millis, other.cpu_millis).ok_or_else(|| dim(Dim::Cpu))?,
            memory_mib: op(self.memory_mib, other.memory_mib).ok_or_else(|| dim(Dim::Memory))?,
            disk_mib: op(self.disk_mib, other.disk_mib).ok_or_else(|| dim(Dim::Disk))?,
            network_mbps: op(self.network_mbps, other.network_mbps)
                .ok_or_else(|| dim(Dim::Network))?,
            gpus: op(self.gpus, other.gpus).ok_or_else(|| dim(Dim::Gpu))?,
            scalars,
        })
    }

    /// `self - other` in every dimension, stopping at zero.
    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        let mut scalars = self.scalars.clone();
        for (name, v) in &other.scalars {
            if let Some(mine) = scalars.get_mut(name) {
                *mine = mine.saturating_sub(*v);
            }
        }
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_mib: self.memory_mib.saturating_sub(other.memory_mib),
            disk_mib: self.disk_mib.saturating_sub(other.disk_mib),
            network_mbps: self.network_mbps.saturating_sub(other.network_mbps),
            gpus: self.gpus.saturating_sub(other.gpus),
            scalars,
        }
    }

    /// `self * n` in every dimension, or `None` on overflow.
    pub fn checked_mul(&self, n: u64) -> Option<Resources> {
        let mut scalars = BTreeMap::new();
        for (name, v) in &self.scalars {
            scalars.insert(name.clone(), v.checked_mul(n)?);
        }
        Some(Resources {
            cpu_millis: self.cpu_millis.checked_mul(n)?,
            memory_mib: self.memory_mib.checked_mul(n)?,
            disk_mib: self.disk_mib.checked_mul(n)?,
            network_mbps: self.network_mbps.checked_mul(n)?,
            gpus: self.gpus.checked_mul(n)?,
            scalars,
        })
    }

    /// True if `self` fits into `limit` in every dimension.
    pub fn fits_in(&self, limit: &Resources) -> bool {
        self.first_shortfall(limit).is_none()
    }

    /// The dominant share of `self` against `total`, in parts per million:
    /// `max over dimensions of self_d / total_d` (DRF). Dimensions where the
    /// total is zero are ignored.
    pub fn dominant_share_ppm(&self, total: &Resources) -> u64 {
        let share = |used: u64, cap: u64| {
            if cap == 0 {
                0
            } else {
                ((used as u128 * 1_000_000) / cap as u128) as u64
            }
        };
        let mut best = share(self.cpu_millis, total.cpu_millis)
            .max(share(self.memory_mib, total.memory_mib))
            .max(share(self.disk_mib, total.disk_mib))
            .max(share(self.network_mbps, total.network_mbps))
            .max(share(self.gpus, total.gpus));
        for (name, v) in &self.scalars {
            best = best.max(share(*v, total.scalars.get(name).copied().unwrap_or(0)));
        }
        best
    }

    /// CPU, memory, disk, network and GPU as fractions of `capacity`
    /// (dimensions with zero capacity are reported as 0). For scorers only.
    pub fn fractions_of(&self, capacity: &Resources) -> [f64; 5] {
        let frac = |v: u64, cap: u64| if cap == 0 { 0.0 } else { v as f64 / cap as f64 };
        [
            frac(self.cpu_millis, capacity.cpu_millis),
            frac(self.memory_mib, capacity.memory_mib),
            frac(self.disk_mib, capacity.disk_mib),
            frac(self.network_mbps, capacity.network_mbps),
            frac(self.gpus, capacity.gpus),
        ]
    }
}

/// An upper bound per dimension, for team caps. An absent dimension (or an
/// absent named scalar) is unlimited, so a cap written as `{ cpu_millis =
/// 8000 }` limits CPU and nothing else.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourceCap {
    /// CPU millicores, or unlimited.
    pub cpu_millis: Option<u64>,
    /// Memory MiB, or unlimited.
    pub memory_mib: Option<u64>,
    /// Disk MiB, or unlimited.
    pub disk_mib: Option<u64>,
    /// Network Mbps, or unlimited.
    pub network_mbps: Option<u64>,
    /// GPU devices, or unlimited.
    pub gpus: Option<u64>,
    /// Named scalars that are limited; the others are unlimited.
    pub scalars: BTreeMap<Arc<str>, u64>,
}

impl ResourceCap {
    /// A cap on CPU and memory only.
    pub fn cpu_mem(cpu_millis: u64, memory_mib: u64) -> Self {
        ResourceCap {
            cpu_millis: Some(cpu_millis),
            memory_mib: Some(memory_mib),
            ..ResourceCap::default()
        }
    }

    /// The first dimension in which `held + request` would exceed the cap
    /// (an overflowing sum exceeds every cap), or `None` if it stays within.
    pub fn excess_after_adding(&self, held: &Resources, request: &Resources) -> Option<Dim> {
        let over = |used: u64, want: u64, cap: Option<u64>| {
            cap.is_some_and(|cap| used.checked_add(want).is_none_or(|t| t > cap))
        };
        if over(held.cpu_millis, request.cpu_millis, self.cpu_millis) {
            return Some(Dim::Cpu);
        }
        if over(held.memory_mib, request.memory_mib, self.memory_mib) {
            return Some(Dim::Memory);
        }
        if over(held.disk_mib, request.disk_mib, self.disk_mib) {
            return Some(Dim::Disk);
        }
        if over(held.network_mbps, request.network_mbps, self.network_mbps) {
            return Some(Dim::Network);
        }
        if over(held.gpus, request.gpus, self.gpus) {
            return Some(Dim::Gpu);
        }
        self.scalars
            .iter()
            .find(|(name, cap)| {
                over(
                    held.scalars.get(*name).copied().unwrap_or(0),
                    request.scalars.get(*name).copied().unwrap_or(0),
                    Some(**cap),
                )
            })
            .map(|(name, _)| Dim::Scalar(name.clone()))
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpu={}m mem={}MiB", self.cpu_millis, self.memory_mib)?;
        if self.disk_mib > 0 {
            write!(f, " disk={}MiB", self.disk_mib)?;
        }
        if self.network_mbps > 0 {
            write!(f, " net={}Mbps", self.network_mbps)?;
        }
        if self.gpus > 0 {
            write!(f, " gpus={}", self.gpus)?;
        }
        for (name, v) in &self.scalars {
            write!(f, " {name}={v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(cpu: u64, mem: u64) -> Resources {
        Resources::cpu_mem(cpu, mem)
    }

    #[test]
    fn shortfall_names_the_first_short_dimension() {
        let cases = [
            ("fits", r(1000, 512), r(2000, 1024), None),
            ("cpu short", r(3000, 512), r(2000, 1024), Some(Dim::Cpu)),
            (
                "memory short",
                r(1000, 4096),
                r(2000, 1024),
                Some(Dim::Memory),
            ),
            (
                "both short reports cpu",
                r(3000, 4096),
                r(2000, 1024),
                Some(Dim::Cpu),
            ),
            ("exact fit", r(2000, 1024), r(2000, 1024), None),
        ];
        for (name, want, free, expected) in cases {
            assert_eq!(want.first_shortfall(&free), expected, "{name}");
            assert_eq!(
                Resources::default().shortfall_after_adding(&want, &free),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn scalar_resources_are_checked_by_name() {
        let mut want = r(0, 0);
        want.scalars.insert("fpga".into(), 1);
        assert_eq!(
            want.first_shortfall(&r(1, 1)),
            Some(Dim::Scalar("fpga".into()))
        );
        let mut free = r(1, 1);
        free.scalars.insert("fpga".into(), 2);
        assert_eq!(want.first_shortfall(&free), None);
    }

    #[test]
    fn checked_arithmetic_refuses_underflow_and_overflow() {
        let mut a = r(1000, 100);
        assert_eq!(
            a.checked_sub_assign(&r(2000, 0)),
            Err(ResourceOverflow { dim: Dim::Cpu })
        );
        assert_eq!(a, r(1000, 100), "unchanged after a failed subtraction");
        assert!(r(u64::MAX, 0).checked_add(&r(1, 0)).is_err());
        assert_eq!(r(3, 4).checked_mul(2), Some(r(6, 8)));
    }

    #[test]
    fn absent_cap_dimensions_are_unlimited() {
        let cap = ResourceCap {
            cpu_millis: Some(2000),
            ..ResourceCap::default()
        };
        let cases = [
            (
                "within cpu, memory unlimited",
                r(1000, 0),
                r(1000, 1 << 40),
                None,
            ),
            ("cpu exceeded", r(1500, 0), r(501, 0), Some(Dim::Cpu)),
            ("exactly at the cap", r(1500, 0), r(500, 0), None),
            (
                "overflowing sum exceeds",
                r(u64::MAX, 0),
                r(1, 0),
                Some(Dim::Cpu),
            ),
        ];
        for (name, held, want, expected) in cases {
            assert_eq!(cap.excess_after_adding(&held, &want), expected, "{name}");
        }
        let mut gpu_scalar = ResourceCap::default();
        gpu_scalar.scalars.insert("fpga".into(), 1);
        let mut two = r(0, 0);
        two.scalars.insert("fpga".into(), 2);
        assert_eq!(
            gpu_scalar.excess_after_adding(&r(0, 0), &two),
            Some(Dim::Scalar("fpga".into()))
        );
        assert_eq!(ResourceCap::default().excess_after_adding(&two, &two), None);
    }

    #[test]
    fn dominant_share_is_the_max_over_dimensions() {
        let total = r(10_000, 1_000);
        assert_eq!(r(1_000, 500).dominant_share_ppm(&total), 500_000);
        assert_eq!(r(5_000, 100).dominant_share_ppm(&total), 500_000);
        assert_eq!(r(0, 0).dominant_share_ppm(&Resources::default()), 0);
    }
}
