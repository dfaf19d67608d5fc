//! Executor hosts as the core sees them: identity, location, capacity, state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::units::ids::{HostId, PoolId};
use crate::units::resources::Resources;

/// What a shell tells the core about a host when it joins or changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    /// Unique host id.
    pub id: HostId,
    /// The pool whose reservations this host is part of.
    pub pool: PoolId,
    /// EC2 instance type, e.g. `m5.16xlarge`.
    pub instance_type: String,
    /// Availability zone, e.g. `us-east-1a`.
    pub zone: String,
    /// Region, e.g. `us-east-1`.
    pub region: String,
    /// Free-form attributes for constraints.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Total allocatable resources.
    pub capacity: Resources,
    /// The model of the host's GPUs, if it has any (e.g. `t4`, `a10g`, `v100`).
    #[serde(default)]
    pub gpu_model: Option<String>,
}

/// A host's lifecycle state.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum HostState {
    /// Accepts new work.
    Active,
    /// Keeps its running tasks but accepts no new ones.
    Draining,
    /// Gone; its tasks were returned to the queue.
    Lost,
}

impl HostSpec {
    /// The value of attribute `key` on this host. The built-in keys `zone`,
    /// `region`, `pool`, `instance_type` and `gpu_model` resolve to the
    /// host's own fields; any other key is looked up in `attributes`.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        match key {
            "zone" => Some(&self.zone),
            "region" => Some(&self.region),
            "pool" => Some(self.pool.as_str()),
            "instance_type" => Some(&self.instance_type),
            "gpu_model" => self.gpu_model.as_deref(),
            _ => self.attributes.get(key).map(String::as_str),
        }
    }
}
