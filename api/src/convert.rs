//! Wire (`ebb.v1`) ⇄ core conversions. The only place protobuf types meet
//! scheduler types; errors name the offending field so gRPC callers can fix
//! their request.

use ebb_proto::v1 as pb;
use ebb_scheduler as core;

/// A wire message could not become a core value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field `{field}`: {message}")]
pub struct ConvertError {
    /// Dotted path of the offending field.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

fn err(field: &str, message: impl Into<String>) -> ConvertError {
    ConvertError {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// Wire resources to core resources.
pub fn resources_from_wire(r: &pb::Resources) -> core::Resources {
    core::Resources {
        cpu_millis: r.cpu_millis,
        memory_mib: r.memory_mib,
        disk_mib: r.disk_mib,
        network_mbps: r.network_mbps,
        gpus: u64::from(r.gpus),
        scalars: r
            .scalars
            .iter()
            .map(|(k, v)| (k.as_str().into(), *v))
            .collect(),
    }
}

/// Wire tier to core tier; `TIER_UNSPECIFIED` is refused.
pub fn tier_from_wire(tier: i32) -> Result<core::Tier, ConvertError> {
    match pb::Tier::try_from(tier) {
        Ok(pb::Tier::Critical) => Ok(core::Tier::Critical),
        Ok(pb::Tier::Flex) => Ok(core::Tier::Flex),
        _ => Err(err("spec.tier", "must be TIER_CRITICAL or TIER_FLEX")),
    }
}

/// Core tier to wire tier.
pub fn tier_to_wire(tier: core::Tier) -> pb::Tier {
    match tier {
        core::Tier::Critical => pb::Tier::Critical,
        core::Tier::Flex => pb::Tier::Flex,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_round_trip_and_unspecified_is_refused() {
        for tier in core::Tier::ALL {
            assert_eq!(tier_from_wire(tier_to_wire(tier) as i32), Ok(tier));
        }
        let e = tier_from_wire(0).unwrap_err();
        assert_eq!(e.field, "spec.tier");
    }

    #[test]
    fn resources_keep_every_dimension() {
        let mut wire = pb::Resources {
            cpu_millis: 1500,
            memory_mib: 2048,
            disk_mib: 10,
            network_mbps: 100,
            gpus: 1,
            ..Default::default()
        };
        wire.scalars.insert("fpga".into(), 2);
        let r = resources_from_wire(&wire);
        assert_eq!(
            (
                r.cpu_millis,
                r.memory_mib,
                r.disk_mib,
                r.network_mbps,
                r.gpus
            ),
            (1500, 2048, 10, 100, 1)
        );
        assert_eq!(r.scalars.get("fpga"), Some(&2));
    }
}
