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

use crate::model::Host;
use crate::model::job::Job;
use crate::model::overlay::View;
use crate::policy::check::satisfies;
use crate::spec::config::ScorerKind;
use crate::spec::job::{Constraint, Tier};
use crate::units::ids::HostIdx;
use crate::units::resources::Resources;

/// The score of placing one task of `job` on `host` under `kind`, in `[0, 1]`.
pub(crate) fn score(kind: ScorerKind, view: &View<'_>, job: &Job, h: HostIdx, host: &Host) -> f64 {
    let req = &job.spec.request;
    let cap = &host.spec.capacity;
    let allocated = view.allocated(h);
    {
        match kind {
            ScorerKind::CpuBinPack => ratio(allocated.cpu_millis + req.cpu_millis, cap.cpu_millis),
            ScorerKind::MemoryBinPack => {
                ratio(allocated.memory_mib + req.memory_mib, cap.memory_mib)
            }
            ScorerKind::CpuMemBinPack => {
                (ratio(allocated.cpu_millis + req.cpu_millis, cap.cpu_millis)
                    + ratio(allocated.memory_mib + req.memory_mib, cap.memory_mib))
                    / 2.0
            }
            ScorerKind::DotProduct => {
                let (mut dot, mut rr, mut ff) = (0.0, 0.0, 0.0);
                for (r, f) in dims(req, cap, allocated, false) {
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
                for (_, f_after) in dims(req, cap, allocated, true) {
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
                1.0 - (ratio(allocated.cpu_millis + req.cpu_millis, cap.cpu_millis)
                    + ratio(allocated.memory_mib + req.memory_mib, cap.memory_mib))
                    / 2.0
            }
            ScorerKind::SoftConstraints => {
                let soft: &[Constraint] = &job.spec.soft_constraints;
                if soft.is_empty() {
                    1.0
                } else {
                    let n_ok = soft
                        .iter()
                        .filter(|c| satisfies(view, job, h, host, c))
                        .count();
                    n_ok as f64 / soft.len() as f64
                }
            }
            ScorerKind::FlexConsolidation => {
                let has_flex = view.n_flex(h) > 0;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::overlay::Overlay;
    use crate::policy::search::Pipeline;
    use crate::policy::testkit::{Fleet, host_spec, job_spec};
    use crate::spec::config::TierPolicy;
    use crate::spec::job::JobSpec;
    use crate::units::ids::JobId;

    /// A 4 vCPU / 16 GiB host with 100 GiB disk that already holds 1 vCPU
    /// and 4 GiB of a `held_tier` task, and the job to score on it.
    fn fleet(held_tier: Tier, job: JobSpec) -> (Fleet, JobId, HostIdx) {
        let mut f = Fleet::new();
        let mut spec = host_spec("h1", "a", 4, 16);
        spec.capacity.disk_mib = 100 * 1024;
        let h = f.host(spec);
        let mut filler = job_spec(99, Resources::cpu_mem(1000, 4096), vec![]);
        filler.tier = held_tier;
        let filler = f.job(filler);
        f.place(filler, h);
        let job = f.job(job);
        (f, job, h)
    }

    fn score_of(kind: ScorerKind, held_tier: Tier, job: JobSpec) -> f64 {
        let (f, job, h) = fleet(held_tier, job);
        let overlay = Overlay::default();
        score(
            kind,
            &View::new(&f.state, &overlay),
            f.job_ref(job),
            h,
            f.host_ref(h),
        )
    }

    /// 1 vCPU and 2 GiB, flex.
    fn task() -> JobSpec {
        job_spec(1, Resources::cpu_mem(1000, 2048), vec![])
    }

    fn tiered(tier: Tier) -> JobSpec {
        JobSpec { tier, ..task() }
    }

    fn with_disk(disk_mib: u64) -> JobSpec {
        let mut j = task();
        j.request.disk_mib = disk_mib;
        j
    }

    fn soft(cs: Vec<Constraint>) -> JobSpec {
        JobSpec {
            soft_constraints: cs,
            ..task()
        }
    }

    fn zone_is(z: &str) -> Constraint {
        Constraint::AttributeEquals {
            key: "zone".into(),
            value: z.into(),
        }
    }

    /// Each expected value is worked out by hand from the formula in the
    /// scorer's doc comment. Before placement the host has `u = (1/4, 4/16)`;
    /// the task adds `(1/4, 2/16)`.
    #[test]
    fn each_scorer_follows_its_formula() {
        use ScorerKind::*;
        let flex = Tier::Flex;
        let cases: Vec<(&str, ScorerKind, Tier, JobSpec, f64)> = vec![
            (
                "cpu bin-pack: u_cpu after = 2/4",
                CpuBinPack,
                flex,
                task(),
                0.5,
            ),
            (
                "cpu bin-pack: filling the host scores 1",
                CpuBinPack,
                flex,
                job_spec(1, Resources::cpu_mem(3000, 1), vec![]),
                1.0,
            ),
            ("memory bin-pack: 6/16", MemoryBinPack, flex, task(), 0.375),
            (
                "cpu+mem: (2/4 + 6/16) / 2",
                CpuMemBinPack,
                flex,
                task(),
                0.4375,
            ),
            ("spread: 1 - cpu+mem", Spread, flex, task(), 0.5625),
            (
                // r ∝ (2, 1) against free (3/4, 3/4) ∝ (1, 1): 3 / √10.
                "dot product: cosine of request and free vectors",
                DotProduct,
                flex,
                task(),
                3.0 / 10f64.sqrt(),
            ),
            (
                // D gains disk: r = (1/4, 1/8, 1/2), free = (3/4, 3/4, 1).
                "dot product counts disk when the task asks for it",
                DotProduct,
                flex,
                with_disk(50 * 1024),
                (0.25 * 0.75 + 0.125 * 0.75 + 0.5)
                    / ((0.0625f64 + 0.015625 + 0.25).sqrt() * (0.5625f64 * 2.0 + 1.0).sqrt()),
            ),
            (
                // f after = (2/4, 10/16): 1 - sqrt((0.25 + 0.390625) / 2).
                "l2 best fit",
                L2BestFit,
                flex,
                task(),
                1.0 - (0.640625f64 / 2.0).sqrt(),
            ),
            (
                // f after = (2/4, 10/16, 1/2).
                "l2 best fit counts disk when the task asks for it",
                L2BestFit,
                flex,
                with_disk(50 * 1024),
                1.0 - ((0.25f64 + 0.390625 + 0.25) / 3.0).sqrt(),
            ),
            (
                "soft constraints: none is a perfect 1",
                SoftConstraints,
                flex,
                task(),
                1.0,
            ),
            (
                "soft constraints: one of two holds",
                SoftConstraints,
                flex,
                soft(vec![zone_is("a"), zone_is("b")]),
                0.5,
            ),
            (
                "soft constraints: the only one fails",
                SoftConstraints,
                flex,
                soft(vec![zone_is("b")]),
                0.0,
            ),
            (
                "flex consolidation: flex onto a host with flex work",
                FlexConsolidation,
                flex,
                task(),
                1.0,
            ),
            (
                "flex consolidation: flex onto a host without flex work",
                FlexConsolidation,
                Tier::Critical,
                task(),
                0.0,
            ),
            (
                "flex consolidation: critical avoids hosts with flex work",
                FlexConsolidation,
                flex,
                tiered(Tier::Critical),
                0.0,
            ),
            (
                "flex consolidation: critical onto a host without flex work",
                FlexConsolidation,
                Tier::Critical,
                tiered(Tier::Critical),
                1.0,
            ),
        ];
        let covered: std::collections::BTreeSet<String> =
            cases.iter().map(|c| format!("{:?}", c.1)).collect();
        assert_eq!(covered.len(), ScorerKind::ALL.len(), "a scorer has no case");
        for (name, kind, held_tier, job, want) in cases {
            let got = score_of(kind, held_tier, job);
            assert!(
                (got - want).abs() < 1e-12,
                "case `{name}`: got {got}, want {want}"
            );
        }
    }

    /// The bin-packers prefer the fuller host, spread the emptier one, and
    /// dot product the host whose leftover shape matches the task.
    #[test]
    fn scorers_rank_hosts_the_way_their_names_promise() {
        // h_cpu has lots of CPU left, h_mem lots of memory; both 8 vCPU / 32 GiB.
        let mut f = Fleet::new();
        let h_cpu = f.host(host_spec("h-cpu", "a", 8, 32));
        let h_mem = f.host(host_spec("h-mem", "a", 8, 32));
        let mem_hog = f.job(job_spec(90, Resources::cpu_mem(1000, 24 * 1024), vec![]));
        let cpu_hog = f.job(job_spec(91, Resources::cpu_mem(6000, 4 * 1024), vec![]));
        f.place(mem_hog, h_cpu);
        f.place(cpu_hog, h_mem);
        let cpu_task = f.job(job_spec(1, Resources::cpu_mem(4000, 2048), vec![]));
        let mem_task = f.job(job_spec(2, Resources::cpu_mem(500, 16 * 1024), vec![]));
        let s = |kind: ScorerKind, job: JobId, h: HostIdx| {
            let overlay = Overlay::default();
            score(
                kind,
                &View::new(&f.state, &overlay),
                f.job_ref(job),
                h,
                f.host_ref(h),
            )
        };
        let cases = [
            (
                "dot product sends the cpu task to free cpu",
                ScorerKind::DotProduct,
                cpu_task,
                h_cpu,
                h_mem,
            ),
            (
                "dot product sends the memory task to free memory",
                ScorerKind::DotProduct,
                mem_task,
                h_mem,
                h_cpu,
            ),
            (
                "cpu bin-pack prefers the host with less cpu left",
                ScorerKind::CpuBinPack,
                mem_task,
                h_mem,
                h_cpu,
            ),
            (
                "memory bin-pack prefers the host with less memory left",
                ScorerKind::MemoryBinPack,
                cpu_task,
                h_cpu,
                h_mem,
            ),
            (
                "spread prefers the emptier host overall",
                ScorerKind::Spread,
                mem_task,
                h_cpu,
                h_mem,
            ),
        ];
        for (name, kind, job, better, worse) in cases {
            assert!(s(kind, job, better) > s(kind, job, worse), "case `{name}`");
        }
    }

    /// `Σ wᵢ·sᵢ / Σ wᵢ`, and every scorer stays in `[0, 1]` on a grid of hosts and requests.
    #[test]
    fn weighted_policy_stays_on_the_unit_scale() {
        let (f, job, h) = fleet(Tier::Flex, task());
        let policy = TierPolicy {
            scorers: vec![(ScorerKind::CpuBinPack, 3.0), (ScorerKind::Spread, 1.0)],
            ..TierPolicy::default()
        };
        let overlay = Overlay::default();
        let view = View::new(&f.state, &overlay);
        let got = Pipeline::default().score(&policy, &view, f.job_ref(job), h);
        assert!((got - (3.0 * 0.5 + 0.5625) / 4.0).abs() < 1e-12, "{got}");
        let empty = TierPolicy {
            scorers: vec![],
            ..TierPolicy::default()
        };
        assert_eq!(
            Pipeline::default().score(&empty, &view, f.job_ref(job), h),
            0.0
        );

        for held_cpu in [0, 1000, 3999, 4000] {
            for req in [(1, 1), (1000, 2048), (4000, 16 * 1024), (250, 8 * 1024)] {
                let mut f = Fleet::new();
                let h = f.host(host_spec("h1", "a", 4, 16));
                let filler = f.job(job_spec(99, Resources::cpu_mem(held_cpu, 1024), vec![]));
                f.place(filler, h);
                let job = f.job(job_spec(1, Resources::cpu_mem(req.0, req.1), vec![]));
                for kind in ScorerKind::ALL {
                    let overlay = Overlay::default();
                    let view = View::new(&f.state, &overlay);
                    let s = score(kind, &view, f.job_ref(job), h, f.host_ref(h));
                    assert!(
                        (0.0..=1.0).contains(&s),
                        "{kind:?} held {held_cpu} req {req:?}: {s}"
                    );
                }
            }
        }
    }
}
