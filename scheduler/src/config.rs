//! Knobs: per-tier placement policy, tie-breaking, team shares, caps and
//! guarantees. Every default says why it is that value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::TeamId;
use crate::job::Tier;
use crate::market::MarketConfig;
use crate::place::score::ScorerKind;
use crate::resources::Resources;
use crate::time::DurationMs;

/// How equally good hosts are ordered.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TieBreak {
    /// The order in which hosts were added (host id order when the shell adds
    /// them sorted, as the simulator does).
    HostOrder,
    /// A permutation drawn from this seed: spreads identical hosts' load
    /// across racks without any OS randomness.
    Seeded(u64),
}

/// Which end of the free-capacity index a search starts from.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchOrder {
    /// Fullest hosts that still fit first: right for bin-packing scorers,
    /// whose best host is usually among the first few visited.
    TightestFirst,
    /// Emptiest hosts first: right for spreading.
    LoosestFirst,
}

/// How one tier places its tasks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TierPolicy {
    /// Scorers and their weights; the host score is `Σ wᵢ·sᵢ / Σ wᵢ`, in `[0, 1]`.
    pub scorers: Vec<(ScorerKind, f64)>,
    /// Where the host search starts.
    pub search_order: SearchOrder,
    /// Stop searching as soon as a feasible host scores at least this
    /// (Fenzo's "fitness good enough"). 1.0 only stops on a perfect host;
    /// lower values trade packing quality for speed.
    pub good_enough: f64,
    /// Stop after this many feasible hosts were scored (Kubernetes'
    /// "percentage of nodes to score", as a count). `None` scores every feasible host.
    pub max_hosts_scored: Option<u32>,
}

impl Default for TierPolicy {
    /// CPU+memory bin-packing walking tightest-first, scoring up to 8
    /// feasible hosts and stopping early on a host scoring ≥ 0.95.
    /// docs/BENCHMARKS.md has the measurements behind 8 and 0.95 (10,000
    /// hosts, 4-dimension uniform mix): with dot-product scoring, 8 hosts
    /// use 5% fewer hosts than 1 and 0.4% fewer than 4, while 32, or
    /// good_enough 1.0, change hosts used by under 0.2%; scoring every
    /// feasible host is 12-140x slower and packs no better. On Fenzo's
    /// shape 8 costs 0.54 ms per 200-task round against 0.45 ms for 1.
    fn default() -> Self {
        TierPolicy {
            scorers: vec![(ScorerKind::CpuMemBinPack, 1.0)],
            search_order: SearchOrder::TightestFirst,
            good_enough: 0.95,
            max_hosts_scored: Some(8),
        }
    }
}

impl TierPolicy {
    /// A policy using a single scorer with the default search bounds.
    pub fn single(scorer: ScorerKind) -> Self {
        let search_order = if scorer == ScorerKind::Spread {
            SearchOrder::LoosestFirst
        } else {
            SearchOrder::TightestFirst
        };
        TierPolicy {
            scorers: vec![(scorer, 1.0)],
            search_order,
            ..TierPolicy::default()
        }
    }
}

/// A team's share of the fleet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TeamConfig {
    /// DRF weight: a team with weight 2 is entitled to twice the dominant
    /// share of a team with weight 1.
    pub weight: u32,
    /// Per tier: resources the team is served first up to (Fenzo's tier SLA guarantee).
    pub guarantee: BTreeMap<Tier, Resources>,
    /// Per tier: resources the team may never exceed.
    pub cap: BTreeMap<Tier, Resources>,
}

impl Default for TeamConfig {
    fn default() -> Self {
        TeamConfig {
            weight: 1,
            guarantee: BTreeMap::new(),
            cap: BTreeMap::new(),
        }
    }
}

/// Everything the core is configured with. Serializable so the simulator and
/// the server read the same file format.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    /// Placement policy for critical tasks.
    pub critical: TierPolicy,
    /// Placement policy for flex tasks.
    pub flex: TierPolicy,
    /// Tie-breaking among equally good hosts.
    pub tie_break: TieBreak,
    /// Teams with non-default shares. Unknown teams get weight 1, no cap, no guarantee.
    pub teams: BTreeMap<TeamId, TeamConfig>,
    /// Grace period between SIGTERM and SIGKILL when a user kills a task.
    pub kill_grace: DurationMs,
    /// The internal market: catalog, floor price, victim policy.
    pub market: MarketConfig,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            critical: TierPolicy::default(),
            flex: TierPolicy::default(),
            tie_break: TieBreak::HostOrder,
            teams: BTreeMap::new(),
            // 30 s, Kubernetes' default terminationGracePeriodSeconds.
            kill_grace: DurationMs::from_secs(30),
            market: MarketConfig::default(),
        }
    }
}

impl SchedulerConfig {
    /// The placement policy of `tier`.
    pub fn policy(&self, tier: Tier) -> &TierPolicy {
        match tier {
            Tier::Critical => &self.critical,
            Tier::Flex => &self.flex,
        }
    }
}
