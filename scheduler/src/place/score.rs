//! Scorers: "how good is this feasible host for the task?".
//!
//! **Scale.** Every scorer returns a value in `[0, 1]`, higher is better, and
//! is computed from the host *after* the task would be placed. A tier's policy
//! combines scorers as `Σ wᵢ·sᵢ / Σ wᵢ`, which stays in `[0, 1]`, so the
//! "good enough" threshold means the same thing under any mix.
//!
//! Notation: for a dimension `d`, `cap_d` is the host's capacity, `used_d`
//! its allocation including the task, `req_d` the task's request,
//! `u_d = used_d / cap_d` and `f_d = 1 − u_d`. The dimensions `D` are CPU and
//! memory, plus disk, network and GPUs when the task requests them.

use serde::{Deserialize, Serialize};

use crate::job::{Constraint, Tier};
use crate::place::check::satisfies;
use crate::place::index::HostIdx;
use crate::resources::Resources;
use crate::state::{Host, Job, State};

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

    /// The score of placing one task of `job` on `host`, in `[0, 1]`.
    pub(crate) fn score(self, state: &State, job: &Job, host_idx: HostIdx, host: &Host) -> f64 {
        let req = &job.spec.request;
        let cap = &host.spec.capacity;
        match self {
            ScorerKind::CpuBinPack => {
                ratio(host.allocated.cpu_millis + req.cpu_millis, cap.cpu_millis)
            }
            ScorerKind::MemoryBinPack => {
                ratio(host.allocated.memory_mib + req.memory_mib, cap.memory_mib)
            }
            ScorerKind::CpuMemBinPack => {
                (ratio(host.allocated.cpu_millis + req.cpu_millis, cap.cpu_millis)
                    + ratio(host.allocated.memory_mib + req.memory_mib, cap.memory_mib))
                    / 2.0
            }
            ScorerKind::DotProduct => {
                let (mut dot, mut rr, mut ff) = (0.0, 0.0, 0.0);
                for (r, f) in dims(req, cap, &host.allocated, false) {
                    dot += r * f;
                    rr += r * r;
                    ff += f * f;
                }
                if rr == 0.0 || ff == 0.0 {
                    0.0
                } else {
                    (dot / (rr.sqrt() * ff.sqrt())).clamp(0.0, 1.0)
                }
            }
            ScorerKind::L2BestFit => {
                let (mut sum, mut n) = (0.0, 0.0);
                for (_, f_after) in dims(req, cap, &host.allocated, true) {
                    sum += f_after * f_after;
                    n += 1.0;
                }
                if n == 0.0 {
                    0.0
                } else {
                    1.0 - (sum / n).sqrt()
                }
            }
            ScorerKind::Spread => {
                1.0 - (ratio(host.allocated.cpu_millis + req.cpu_millis, cap.cpu_millis)
                    + ratio(host.allocated.memory_mib + req.memory_mib, cap.memory_mib))
                    / 2.0
            }
            ScorerKind::SoftConstraints => {
                let soft: &[Constraint] = &job.spec.soft_constraints;
                if soft.is_empty() {
                    1.0
                } else {
                    let n_ok = soft
                        .iter()
                        .filter(|c| satisfies(state, job, host_idx, host, c))
                        .count();
                    n_ok as f64 / soft.len() as f64
                }
            }
            ScorerKind::FlexConsolidation => {
                let has_flex = host.n_flex_tasks > 0;
                match job.spec.tier {
                    Tier::Flex => f64::from(u8::from(has_flex)),
                    Tier::Critical => f64::from(u8::from(!has_flex)),
                }
            }
        }
    }
}

/// `num / den` clamped to `[0, 1]`, 0 when `den` is 0.
fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        (num as f64 / den as f64).min(1.0)
    }
}

/// For each dimension in `D`: (request as a fraction of capacity, free
/// fraction) where "free" is after placement if `after`, else before.
fn dims(
    req: &Resources,
    cap: &Resources,
    allocated: &Resources,
    after: bool,
) -> impl Iterator<Item = (f64, f64)> {
    let entries = [
        (req.cpu_millis, cap.cpu_millis, allocated.cpu_millis, true),
        (req.memory_mib, cap.memory_mib, allocated.memory_mib, true),
        (
            req.disk_mib,
            cap.disk_mib,
            allocated.disk_mib,
            req.disk_mib > 0,
        ),
        (
            req.network_mbps,
            cap.network_mbps,
            allocated.network_mbps,
            req.network_mbps > 0,
        ),
        (req.gpus, cap.gpus, allocated.gpus, req.gpus > 0),
    ];
    entries
        .into_iter()
        .filter(|&(_, c, _, include)| include && c > 0)
        .map(move |(r, c, a, _)| {
            let used = if after { a + r } else { a };
            (r as f64 / c as f64, 1.0 - ratio(used, c))
        })
}
