//! Knobs: per-tier placement policy, tie-breaking, team shares, caps and
//! guarantees, and every policy enum as plain data (the policy layer
//! implements them). Every default says why it is that value, and
//! [`SchedulerConfig::validate`] names the first field that is wrong.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::spec::error::InputError;
use crate::spec::job::Tier;
use crate::spec::market::MarketConfig;
use crate::units::ids::TeamId;
use crate::units::resources::{ResourceCap, Resources};
use crate::units::time::DurationMs;

/// The scorers a tier policy can combine, by name.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScorerKind {
    /// `u_cpu`: fill CPU (Fenzo's CPU bin-packer).
    CpuBinPack,
    /// `u_mem`: fill memory.
    MemoryBinPack,
    /// `(u_cpu + u_mem) / 2`: fill both.
    CpuMemBinPack,
    /// Tetris-style alignment: cosine similarity between the request vector
    /// and the host's free vector before placement, both normalized by
    /// capacity over `D`. Prefers hosts whose leftover shape matches the task.
    DotProduct,
    /// Best fit by L2 norm: `1 − ‖f‖₂ / √|D|`. Prefers the least leftover, all dimensions together.
    L2BestFit,
    /// Worst fit: `(f_cpu + f_mem) / 2`. Spreads load.
    Spread,
    /// Share of the job's soft constraints the host satisfies (1 if it has none).
    SoftConstraints,
    /// For flex tasks: 1 if the host already carries flex work, else 0; for
    /// critical tasks: 1 if it carries none. Concentrates preemptible work so
    /// that reclaim can release whole hosts.
    FlexConsolidation,
}

impl ScorerKind {
    /// Every scorer, for sweeps and docs.
    pub const ALL: [ScorerKind; 8] = [
        ScorerKind::CpuBinPack,
        ScorerKind::MemoryBinPack,
        ScorerKind::CpuMemBinPack,
        ScorerKind::DotProduct,
        ScorerKind::L2BestFit,
        ScorerKind::Spread,
        ScorerKind::SoftConstraints,
        ScorerKind::FlexConsolidation,
    ];
}

/// How victims are ranked. Every policy frees whole hosts for reclaim and
/// never touches critical tasks; they differ in which hosts (and, for a
/// critical placement, which tasks) go first.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VictimPolicy {
    /// `(highest bid, highest priority, lost work, victims)`: the market's default.
    #[default]
    Cost,
    /// `(highest priority, highest bid, victims)`: plain priority order.
    LowestPriorityFirst,
    /// `(lost work, victims)`: protect long-running, uncheckpointed work.
    LeastLostWork,
    /// `(victims, lost work)`: disturb as few tasks as possible.
    FewestVictims,
    /// Kubernetes' node order: lowest highest-priority victim, then smallest
    /// priority sum, then fewest victims, then latest-started victims first.
    Kubernetes,
}

impl VictimPolicy {
    /// Every policy, for sweeps.
    pub const ALL: [VictimPolicy; 5] = [
        VictimPolicy::Cost,
        VictimPolicy::LowestPriorityFirst,
        VictimPolicy::LeastLostWork,
        VictimPolicy::FewestVictims,
        VictimPolicy::Kubernetes,
    ];
}

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
#[serde(default, deny_unknown_fields)]
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
    /// After the tier's admission, try to move its own placements off hosts
    /// it opened (a bounded local search, `policy/repack.rs`), keeping a
    /// proposal only if every moved placement passes every checker again.
    /// Buys fewer hosts on mixed shapes (on the optimal bench's snapshots it
    /// reaches the proven optimum in every case, against up to 22% over it
    /// without); costs about 1–2 ms on a round of ~90 mixed tasks that
    /// already packs tightly (two failed repairs), and nothing but an undo
    /// log on a round of one shape, one with an unplaced task, or one over
    /// 512 tasks. docs/BENCHMARKS.md, "Round repacking", has the figures.
    pub repack: bool,
    /// Keeps a scorer that can rank an empty host above a used one from
    /// spreading a small fleet's work over every host. Dot product does:
    /// an empty host's free shape is aligned with almost any request, so
    /// while fewer than `max_hosts_scored` used hosts fit, an empty one is
    /// scored and often wins. With a gate `g > 0`, a tightest-first search
    /// stops at the first empty host once it has scored
    /// `k = clamp(active hosts / g, 1, max_hosts_scored)` used hosts: on a
    /// fleet of fewer than `2g` hosts any used host that fits is preferred
    /// to opening one (k = 1); on a large fleet the search keeps its full
    /// choice, so the hosts it holds open beyond a tight packing stay
    /// near `1/g` of the fleet. `0` (the default) turns the gate off:
    /// bin-packing scorers rank a used host above an empty one of the same
    /// type anyway, and on mixed host types the gate would narrow their
    /// choice. [`TierPolicy::single`] sets 32 for dot product.
    /// Loosest-first searches (spreading on purpose) ignore it.
    /// docs/BENCHMARKS.md, "Dot product without spreading", has the
    /// figures behind 32.
    pub empty_host_gate: u32,
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
    /// Round repacking is on: with it every scorer reaches the proven
    /// optimum on the 100-host snapshots. CPU+memory bin-packing stays the
    /// scorer: dot product (with its empty-host gate, which keeps it from
    /// spreading on small fleets) packs a 10,000-host one-shot fill 5%
    /// tighter, but in the simulator's scenarios, where work arrives a
    /// little at a time, it used more hosts over the bound in 9 of 9 runs
    /// and preempted more (docs/BENCHMARKS.md, "Dot product without
    /// spreading").
    fn default() -> Self {
        TierPolicy {
            scorers: vec![(ScorerKind::CpuMemBinPack, 1.0)],
            search_order: SearchOrder::TightestFirst,
            good_enough: 0.95,
            max_hosts_scored: Some(8),
            repack: true,
            empty_host_gate: 0,
        }
    }
}

impl TierPolicy {
    /// A policy using a single scorer with the default search bounds:
    /// loosest-first for spreading, and the empty-host gate at 32 for dot
    /// product (the one scorer that ranks an empty host above a used one).
    pub fn single(scorer: ScorerKind) -> Self {
        let search_order = if scorer == ScorerKind::Spread {
            SearchOrder::LoosestFirst
        } else {
            SearchOrder::TightestFirst
        };
        let empty_host_gate = if scorer == ScorerKind::DotProduct {
            32
        } else {
            0
        };
        TierPolicy {
            scorers: vec![(scorer, 1.0)],
            search_order,
            empty_host_gate,
            ..TierPolicy::default()
        }
    }
}

/// A team's share of the fleet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TeamConfig {
    /// DRF weight, at least 1: a team with weight 2 is entitled to twice the
    /// dominant share of a team with weight 1.
    pub weight: u32,
    /// Per tier: resources the team is served first up to (Fenzo's tier SLA
    /// guarantee). A dimension left at zero guarantees nothing in it.
    pub guarantee: BTreeMap<Tier, Resources>,
    /// Per tier: resources the team may never exceed. A dimension left out
    /// is unlimited.
    pub cap: BTreeMap<Tier, ResourceCap>,
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
#[serde(default, deny_unknown_fields)]
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

    /// Checks every knob (the catalog is checked when the market is built);
    /// the error names the first field that is wrong.
    pub fn validate(&self) -> Result<(), InputError> {
        self.critical.validate("critical")?;
        self.flex.validate("flex")?;
        for (team, t) in &self.teams {
            if team.as_str().trim().is_empty() {
                return Err(InputError::field("teams", "a team name must not be empty"));
            }
            if t.weight == 0 {
                return Err(InputError::field(
                    "teams.weight",
                    format!("team `{team}`: must be at least 1"),
                ));
            }
        }
        let m = &self.market;
        if m.preempt_grace > MAX_GRACE {
            return Err(InputError::field(
                "market.preempt_grace",
                format!("must be at most {} ms", MAX_GRACE.as_millis()),
            ));
        }
        if self.kill_grace > MAX_GRACE {
            return Err(InputError::field(
                "kill_grace",
                format!("must be at most {} ms", MAX_GRACE.as_millis()),
            ));
        }
        if m.forecast_drain_lead > DurationMs::from_mins(24 * 60) {
            return Err(InputError::field(
                "market.forecast_drain_lead",
                "must be at most a day",
            ));
        }
        if let Some(margin) = m.bid_preemption_margin
            && !(margin.is_finite() && margin >= 0.0)
        {
            return Err(InputError::field(
                "market.bid_preemption_margin",
                "must be a finite, non-negative fraction",
            ));
        }
        if m.reference_instance_type.trim().is_empty() {
            return Err(InputError::field(
                "market.reference_instance_type",
                "must not be empty",
            ));
        }
        Ok(())
    }
}

/// The longest SIGTERM-to-SIGKILL grace the core accepts: an hour. A longer
/// grace is almost always a unit mistake (seconds given as milliseconds
/// elsewhere), and it would hold reclaimed capacity away from streaming.
pub const MAX_GRACE: DurationMs = DurationMs::from_mins(60);

impl TierPolicy {
    fn validate(&self, tier: &'static str) -> Result<(), InputError> {
        let field = |f: &'static str| -> &'static str {
            match (tier, f) {
                ("critical", "scorers") => "critical.scorers",
                ("critical", "good_enough") => "critical.good_enough",
                ("critical", "max_hosts_scored") => "critical.max_hosts_scored",
                (_, "scorers") => "flex.scorers",
                (_, "good_enough") => "flex.good_enough",
                _ => "flex.max_hosts_scored",
            }
        };
        if self.scorers.is_empty() {
            return Err(InputError::field(
                field("scorers"),
                "needs at least one scorer",
            ));
        }
        let mut total = 0.0;
        for (kind, w) in &self.scorers {
            if !(w.is_finite() && *w >= 0.0) {
                return Err(InputError::field(
                    field("scorers"),
                    format!("weight of {kind:?} must be a finite, non-negative number"),
                ));
            }
            total += w;
        }
        if total <= 0.0 {
            return Err(InputError::field(
                field("scorers"),
                "weights must not all be zero",
            ));
        }
        if !(self.good_enough.is_finite() && (0.0..=1.0).contains(&self.good_enough)) {
            return Err(InputError::field(
                field("good_enough"),
                "must be a number between 0 and 1",
            ));
        }
        if self.max_hosts_scored == Some(0) {
            return Err(InputError::field(
                field("max_hosts_scored"),
                "must be at least 1 when set",
            ));
        }
        Ok(())
    }
}
