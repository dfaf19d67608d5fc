//! The instance type catalog and the instance-equivalent (IE) conversion.
//!
//! **IE rule.** One IE is one instance of the reference type (default
//! `m5.16xlarge`). Within the reference type's family, a type is worth
//! `normalization_factor(type) / normalization_factor(reference)` (AWS's size
//! normalization: a `m5.8xlarge` is 0.5 IE). Across families AWS's factors
//! are not comparable (a `c5.xlarge` and an `r5.xlarge` both have factor 8
//! but very different memory), so we use the vCPU ratio
//! `vcpus(type) / vcpus(reference)`: Ebb's batch work is CPU-bound encoding,
//! and the vCPU is the unit the reservations are bought against. A `c5.9xlarge`
//! (36 vCPU) is 36/64 = 0.5625 IE against `m5.16xlarge`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::spec::error::InputError;
use crate::units::ie::Ie;
use crate::units::resources::Resources;

/// One EC2 instance type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceType {
    /// e.g. `m5.16xlarge`.
    pub name: String,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in GiB.
    pub memory_gib: u32,
    /// Network bandwidth in Mbps (the "up to" figure for burstable sizes).
    pub network_mbps: u64,
    /// GPU devices.
    #[serde(default)]
    pub gpus: u32,
    /// GPU model, e.g. `t4`, `a10g`, `v100`, `a100`.
    #[serde(default)]
    pub gpu_model: Option<String>,
    /// On-demand price in USD per hour.
    pub on_demand_usd_per_hour: f64,
    /// AWS size normalization factor (large = 4, xlarge = 8, …).
    pub normalization_factor: f64,
}

impl InstanceType {
    /// The family: the part of the name before the dot (`m5` of `m5.large`).
    pub fn family(&self) -> &str {
        self.name.split_once('.').map_or(&self.name, |(f, _)| f)
    }

    /// The size: the part after the dot (`large` of `m5.large`).
    pub fn size(&self) -> &str {
        self.name.split_once('.').map_or("", |(_, s)| s)
    }

    /// The type's capacity as a resource vector (all of it allocatable;
    /// shells that reserve system overhead subtract it themselves).
    pub fn capacity(&self) -> Resources {
        Resources {
            cpu_millis: u64::from(self.vcpus) * 1000,
            memory_mib: u64::from(self.memory_gib) * 1024,
            disk_mib: 0,
            network_mbps: self.network_mbps,
            gpus: u64::from(self.gpus),
            scalars: BTreeMap::new(),
        }
    }

    fn validate(&self) -> Result<(), InputError> {
        if self
            .name
            .split_once('.')
            .is_none_or(|(f, s)| f.is_empty() || s.is_empty())
        {
            return Err(InputError::field(
                "instance_type.name",
                format!("`{}` is not `family.size`", self.name),
            ));
        }
        if self.vcpus == 0 {
            return Err(InputError::field(
                "instance_type.vcpus",
                format!("{}: must be greater than zero", self.name),
            ));
        }
        if self.memory_gib == 0 {
            return Err(InputError::field(
                "instance_type.memory_gib",
                format!("{}: must be greater than zero", self.name),
            ));
        }
        if !(self.normalization_factor.is_finite() && self.normalization_factor > 0.0) {
            return Err(InputError::field(
                "instance_type.normalization_factor",
                format!("{}: must be a positive number", self.name),
            ));
        }
        if !(self.on_demand_usd_per_hour.is_finite() && self.on_demand_usd_per_hour >= 0.0) {
            return Err(InputError::field(
                "instance_type.on_demand_usd_per_hour",
                format!("{}: must be a non-negative number", self.name),
            ));
        }
        if self.gpus > 0 && self.gpu_model.as_deref().is_none_or(str::is_empty) {
            return Err(InputError::field(
                "instance_type.gpu_model",
                format!("{}: required when gpus > 0", self.name),
            ));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    instance_type: Vec<InstanceType>,
}

/// Instance types by name, plus the reference type IE is measured in.
#[derive(Clone, Debug, PartialEq)]
pub struct Catalog {
    types: BTreeMap<String, InstanceType>,
    reference: InstanceType,
}

/// The catalog shipped with the crate.
const BUILTIN: &str = include_str!("catalog.toml");

/// The default reference type: the instance the Netflix encoding figures
/// were counted in was m4.16xlarge; m5.16xlarge is its current equivalent.
pub const DEFAULT_REFERENCE: &str = "m5.16xlarge";

impl Catalog {
    /// The shipped catalog with `m5.16xlarge` as the reference.
    pub fn builtin() -> Catalog {
        Catalog::from_toml(BUILTIN, DEFAULT_REFERENCE).expect("the shipped catalog is valid")
    }

    /// Parses a catalog file (`[[instance_type]]` tables) with the given reference type.
    pub fn from_toml(text: &str, reference: &str) -> Result<Catalog, InputError> {
        let file: CatalogFile = toml::from_str(text)
            .map_err(|e| InputError::field("catalog", e.message().to_owned()))?;
        Catalog::from_types(file.instance_type, reference)
    }

    /// Builds a catalog from a list of types.
    pub fn from_types(list: Vec<InstanceType>, reference: &str) -> Result<Catalog, InputError> {
        let mut types = BTreeMap::new();
        for t in list {
            t.validate()?;
            types.insert(t.name.clone(), t);
        }
        let reference = types.get(reference).cloned().ok_or_else(|| {
            InputError::field(
                "reference_instance_type",
                format!("unknown instance type `{reference}`"),
            )
        })?;
        Ok(Catalog { types, reference })
    }

    /// This catalog with `overrides` added or replacing types of the same name,
    /// and `reference` as the reference type.
    pub fn with_overrides(
        &self,
        overrides: &[InstanceType],
        reference: &str,
    ) -> Result<Catalog, InputError> {
        let mut list: Vec<InstanceType> = self.types.values().cloned().collect();
        list.retain(|t| overrides.iter().all(|o| o.name != t.name));
        list.extend(overrides.iter().cloned());
        Catalog::from_types(list, reference)
    }

    /// A type by name.
    pub fn get(&self, name: &str) -> Option<&InstanceType> {
        self.types.get(name)
    }

    /// Every type, by name.
    pub fn types(&self) -> impl Iterator<Item = &InstanceType> {
        self.types.values()
    }

    /// The reference type.
    pub fn reference(&self) -> &InstanceType {
        &self.reference
    }

    /// One instance of `name` in IE (see the module doc for the rule).
    pub fn ie_of(&self, name: &str) -> Result<Ie, InputError> {
        let t = self.get(name).ok_or_else(|| {
            InputError::field("instance_type", format!("unknown instance type `{name}`"))
        })?;
        let r = &self.reference;
        let ie = if t.family() == r.family() {
            t.normalization_factor / r.normalization_factor
        } else {
            f64::from(t.vcpus) / f64::from(r.vcpus)
        };
        Ok(Ie::from_f64(ie))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ie_conversion_matches_hand_computed_values() {
        let c = Catalog::builtin();
        let cases = [
            ("reference itself", "m5.16xlarge", 1.0),
            ("same family by normalization factor", "m5.8xlarge", 0.5),
            ("same family, larger", "m5.24xlarge", 1.5),
            ("same family, small", "m5.large", 4.0 / 128.0),
            ("other family by vCPU ratio", "c5.9xlarge", 36.0 / 64.0),
            ("memory-heavy family by vCPU ratio", "r5.16xlarge", 1.0),
            ("older generation by vCPU ratio", "m4.16xlarge", 1.0),
            ("GPU type by vCPU ratio", "p3.16xlarge", 1.0),
            ("big GPU type", "g5.48xlarge", 3.0),
        ];
        for (name, ty, want) in cases {
            assert_eq!(c.ie_of(ty).unwrap(), Ie::from_f64(want), "{name}: {ty}");
        }
    }

    #[test]
    fn another_reference_changes_the_unit() {
        let c = Catalog::builtin()
            .with_overrides(&[], "c5.9xlarge")
            .unwrap();
        assert_eq!(c.ie_of("c5.18xlarge").unwrap(), Ie::from_whole(2));
        assert_eq!(c.ie_of("m5.16xlarge").unwrap(), Ie::from_f64(64.0 / 36.0));
    }

    #[test]
    fn unknown_types_and_bad_overrides_are_refused_with_the_field() {
        let c = Catalog::builtin();
        let e = c.ie_of("z9.huge").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid field `instance_type`: unknown instance type `z9.huge`"
        );
        let mut bad = c.get("m5.large").unwrap().clone();
        bad.name = "x1.weird".into();
        bad.vcpus = 0;
        assert!(matches!(
            c.with_overrides(&[bad], DEFAULT_REFERENCE),
            Err(InputError::InvalidField {
                field: "instance_type.vcpus",
                ..
            })
        ));
        assert!(c.with_overrides(&[], "nope.large").is_err());
    }

    #[test]
    fn the_builtin_catalog_covers_the_batch_and_streaming_families() {
        let c = Catalog::builtin();
        for family in [
            "m5", "m6i", "c5", "c6i", "r5", "r6i", "m4", "g4dn", "g5", "p3", "p4d",
        ] {
            assert!(c.types().any(|t| t.family() == family), "{family}");
        }
        assert_eq!(
            c.get("p4d.24xlarge").unwrap().gpu_model.as_deref(),
            Some("a100")
        );
    }
}
