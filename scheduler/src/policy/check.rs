//! Feasibility checkers: "can this job's next task run on this host?".
//! Each returns the reason it rejects a host. They are pure predicates over
//! a [`View`] (the committed state plus a round's tentative changes), so
//! planning, commit's re-validation and preemption's what-if checks all use them.

use std::fmt::Debug;

use crate::model::Host;
use crate::model::job::Job;
use crate::model::overlay::View;
use crate::spec::host::HostState;
use crate::spec::job::{Constraint, Tier};
use crate::spec::reason::Reason;
use crate::units::ids::HostIdx;

/// One feasibility stage of the placement pipeline.
pub(crate) trait FeasibilityChecker: Debug + Send + Sync {
    /// `Ok` if a task of `job` may run on `host`, otherwise the reason it may not.
    fn check(
        &self,
        view: &View<'_>,
        job: &Job,
        host_idx: HostIdx,
        host: &Host,
    ) -> Result<(), Reason>;
    /// True for checks about room (resources, market supply) that preemption
    /// can change, as opposed to placement constraints it cannot.
    fn is_capacity_check(&self) -> bool {
        false
    }
    /// True for checks of the job's hard constraints alone, which accept
    /// every host for a job without any: searches for such jobs skip them.
    fn checks_hard_constraints_only(&self) -> bool {
        false
    }
}

/// The host accepts new work (it is not draining or lost).
#[derive(Debug)]
pub(crate) struct HostStateChecker;

impl FeasibilityChecker for HostStateChecker {
    fn check(&self, _: &View<'_>, _: &Job, _: HostIdx, host: &Host) -> Result<(), Reason> {
        if host.state == HostState::Active {
            Ok(())
        } else {
            Err(Reason::HostNotActive)
        }
    }
}

/// The request fits into the host's free capacity in every dimension.
#[derive(Debug)]
pub(crate) struct ResourceFitChecker;

impl FeasibilityChecker for ResourceFitChecker {
    fn is_capacity_check(&self) -> bool {
        true
    }
    fn check(&self, view: &View<'_>, job: &Job, h: HostIdx, host: &Host) -> Result<(), Reason> {
        match view
            .allocated(h)
            .shortfall_after_adding(&job.spec.request, &host.spec.capacity)
        {
            None => Ok(()),
            Some(dim) => Err(Reason::Insufficient(dim)),
        }
    }
}

/// Hard `attribute_equals` / `attribute_in` constraints hold.
#[derive(Debug)]
pub(crate) struct AttributeChecker;

impl FeasibilityChecker for AttributeChecker {
    fn checks_hard_constraints_only(&self) -> bool {
        true
    }
    fn check(&self, view: &View<'_>, job: &Job, h: HostIdx, host: &Host) -> Result<(), Reason> {
        for c in &job.spec.hard_constraints {
            if let Constraint::AttributeEquals { key, .. } | Constraint::AttributeIn { key, .. } = c
                && !satisfies(view, job, h, host, c)
            {
                return Err(Reason::AttributeMismatch(key.as_str().into()));
            }
        }
        Ok(())
    }
}

/// Runs `satisfies` over the job's hard constraints that `pick` selects.
fn all_hold(
    view: &View<'_>,
    job: &Job,
    h: HostIdx,
    host: &Host,
    pick: fn(&Constraint) -> bool,
) -> bool {
    job.spec
        .hard_constraints
        .iter()
        .filter(|c| pick(c))
        .all(|c| satisfies(view, job, h, host, c))
}

/// A hard `gpu_model` constraint holds.
#[derive(Debug)]
pub(crate) struct GpuModelChecker;

impl FeasibilityChecker for GpuModelChecker {
    fn checks_hard_constraints_only(&self) -> bool {
        true
    }
    fn check(&self, view: &View<'_>, job: &Job, h: HostIdx, host: &Host) -> Result<(), Reason> {
        if all_hold(view, job, h, host, |c| matches!(c, Constraint::GpuModel(_))) {
            Ok(())
        } else {
            Err(Reason::GpuModel)
        }
    }
}

/// A hard `unique_host` constraint holds: no other task of the job (or group) is on the host.
#[derive(Debug)]
pub(crate) struct UniqueHostChecker;

impl FeasibilityChecker for UniqueHostChecker {
    fn checks_hard_constraints_only(&self) -> bool {
        true
    }
    fn check(&self, view: &View<'_>, job: &Job, h: HostIdx, host: &Host) -> Result<(), Reason> {
        if all_hold(view, job, h, host, |c| {
            matches!(c, Constraint::UniqueHost { .. })
        }) {
            Ok(())
        } else {
            Err(Reason::UniqueHost)
        }
    }
}

/// A hard `zone_balance` constraint holds after placing one more task here.
#[derive(Debug)]
pub(crate) struct ZoneBalanceChecker;

impl FeasibilityChecker for ZoneBalanceChecker {
    fn checks_hard_constraints_only(&self) -> bool {
        true
    }
    fn check(&self, view: &View<'_>, job: &Job, h: HostIdx, host: &Host) -> Result<(), Reason> {
        if all_hold(view, job, h, host, |c| {
            matches!(c, Constraint::ZoneBalance { .. })
        }) {
            Ok(())
        } else {
            Err(Reason::ZoneSkew)
        }
    }
}

/// Flex work may lease an unleased host only within the pool's supply, and
/// never goes to a host that reclaim is emptying, nor into a pool that is
/// over supply. Critical work is unaffected.
#[derive(Debug)]
pub(crate) struct PoolSupplyChecker;

impl FeasibilityChecker for PoolSupplyChecker {
    fn is_capacity_check(&self) -> bool {
        true
    }
    fn check(&self, view: &View<'_>, job: &Job, h: HostIdx, host: &Host) -> Result<(), Reason> {
        if job.spec.tier != Tier::Flex {
            return Ok(());
        }
        let market = &view.state.market;
        let pool = &market.pools[host.pool.get()];
        let supply_short = || Err(Reason::PoolSupply(pool.id.clone()));
        if view.reclaiming(h) {
            return supply_short();
        }
        let Some(supply) = pool.supply else {
            return Ok(());
        };
        let leased = view.leased(host.pool);
        // An unleased host needs supply for its whole IE.
        let needs_lease = view.n_flex(h) == 0;
        if needs_lease
            && market.is_evacuated(host.pool)
            && !market.config.lease_in_evacuated_regions
        {
            return Err(Reason::RegionEvacuated(pool.id.clone()));
        }
        // Over supply, reclaim is under way: more flex work anywhere in the
        // pool would only eat further into headroom and be preempted.
        if leased > supply || (needs_lease && leased + host.ie > supply) {
            return supply_short();
        }
        // With a forecast: work that would still run when capacity is due
        // back stays off it — off a new lease the forecast supply would not
        // cover for the task's runtime, and off a leased host whose lease is
        // expected to end before the task would (a host marked returning, or
        // by the round's prediction). Checkpointing tasks lose little and may
        // go anywhere; work of unknown length counts as running the drain lead.
        let now = view.now;
        let runtime = match job.spec.checkpoint_interval {
            Some(_) => return Ok(()),
            None => job.spec.expected_runtime,
        };
        let d = runtime.unwrap_or(market.config.forecast_drain_lead);
        let until = now.saturating_add(d);
        if !needs_lease {
            // The round's prediction ranks every lease of the pool; when the
            // forecast cannot end any of them before `until`, the host's
            // mark alone decides, as the prediction would not come earlier.
            let end = if market.leases_outlast(host.pool, now, until) {
                host.returning
            } else {
                view.lease_end(h)
            };
            if end.is_some_and(|end| until > end) {
                return Err(Reason::LeaseEndsSoon(pool.id.clone()));
            }
        }
        if needs_lease
            && market.has_forecast(host.pool, now)
            && leased + host.ie > market.min_forecast_supply(host.pool, now, until)
        {
            return Err(Reason::LeaseEndsSoon(pool.id.clone()));
        }
        Ok(())
    }
}

/// The pure predicate behind every constraint checker and the soft-constraint
/// scorer: would one more task of `job` on `host` satisfy `c`?
pub(crate) fn satisfies(
    view: &View<'_>,
    job: &Job,
    h: HostIdx,
    host: &Host,
    c: &Constraint,
) -> bool {
    match c {
        Constraint::AttributeEquals { key, value } => {
            host.spec.attribute(key) == Some(value.as_str())
        }
        Constraint::AttributeIn { key, values } => host
            .spec
            .attribute(key)
            .is_some_and(|v| values.iter().any(|w| w == v)),
        Constraint::GpuModel(model) => host.spec.gpu_model.as_deref() == Some(model.as_str()),
        Constraint::UniqueHost { group: None } => view.job_on_host(job.spec.id, job, h) == 0,
        Constraint::UniqueHost { group: Some(_) } => match &job.unique_group {
            Some(g) => view.group_on_host(g, h) == 0,
            None => true,
        },
        Constraint::ZoneBalance { max_skew } => {
            let state = view.state;
            let count = |z: usize| {
                view.job_in_zone(job.spec.id, job, crate::units::ids::ZoneIdx::from_usize(z))
            };
            // Only zones that can take work count toward the minimum, as in
            // Kubernetes' topology spread over eligible domains.
            let min = (0..state.zones.len())
                .filter(|&z| state.zone_active_hosts[z] > 0)
                .map(count)
                .min()
                .unwrap_or(0);
            (count(host.zone.get()) + 1).saturating_sub(min) <= *max_skew
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::overlay::Overlay;
    use crate::policy::search::Pipeline;
    use crate::policy::testkit::{Fleet, host_spec, job_spec};
    use crate::spec::host::HostSpec;
    use crate::spec::job::JobSpec;
    use crate::units::ids::JobId;
    use crate::units::resources::{Dim, Resources};

    /// Builds a fleet and returns the job and host to check.
    type Setup = Box<dyn Fn(&mut Fleet) -> (JobId, HostIdx)>;

    /// Runs each named case through `checker` and compares with the expected result.
    fn table(checker: &dyn FeasibilityChecker, cases: Vec<(&str, Setup, Result<(), Reason>)>) {
        for (name, setup, want) in cases {
            let mut fleet = Fleet::new();
            let (job, host_idx) = setup(&mut fleet);
            let overlay = Overlay::default();
            let view = View::new(&fleet.state, &overlay);
            let got = checker.check(
                &view,
                fleet.job_ref(job),
                host_idx,
                fleet.host_ref(host_idx),
            );
            assert_eq!(got, want, "case `{name}`");
        }
    }

    fn small_job() -> JobSpec {
        job_spec(1, Resources::cpu_mem(1000, 1024), vec![])
    }

    fn with_attrs(mut h: HostSpec, attrs: &[(&str, &str)]) -> HostSpec {
        for (k, v) in attrs {
            h.attributes.insert((*k).into(), (*v).into());
        }
        h
    }

    fn with_gpus(mut h: HostSpec, n: u64, model: &str) -> HostSpec {
        h.capacity.gpus = n;
        h.gpu_model = Some(model.into());
        h
    }

    #[test]
    fn host_state_checker() {
        let on = |state: HostState| -> Setup {
            Box::new(move |f: &mut Fleet| {
                let h = f.host_in_state(host_spec("h1", "a", 4, 16), state);
                (f.job(small_job()), h)
            })
        };
        table(
            &HostStateChecker,
            vec![
                ("active host accepts work", on(HostState::Active), Ok(())),
                (
                    "draining host refuses new work",
                    on(HostState::Draining),
                    Err(Reason::HostNotActive),
                ),
                (
                    "lost host refuses new work",
                    on(HostState::Lost),
                    Err(Reason::HostNotActive),
                ),
            ],
        );
    }

    #[test]
    fn resource_fit_checker() {
        // A 4 vCPU / 16 GiB host with 100 GiB disk, 1 Gbps, 2 GPUs and one
        // `fpga` slot, already holding `held`; the job asks for `want`.
        let fit = |held: Resources, want: Resources| -> Setup {
            Box::new(move |f: &mut Fleet| {
                let mut spec = with_gpus(host_spec("h1", "a", 4, 16), 2, "t4");
                spec.capacity.disk_mib = 100 * 1024;
                spec.capacity.network_mbps = 1000;
                spec.capacity.scalars.insert("fpga".into(), 1);
                let h = f.host(spec);
                if !held.is_zero() {
                    let filler = f.job(job_spec(99, held.clone(), vec![]));
                    f.place(filler, h);
                }
                (f.job(job_spec(1, want.clone(), vec![])), h)
            })
        };
        let r = Resources::cpu_mem;
        let with = |mut base: Resources, edit: fn(&mut Resources)| {
            edit(&mut base);
            base
        };
        table(
            &ResourceFitChecker,
            vec![
                ("fits an empty host", fit(r(0, 0), r(1000, 1024)), Ok(())),
                (
                    "exact fit of what is left",
                    fit(r(3000, 15 * 1024), r(1000, 1024)),
                    Ok(()),
                ),
                (
                    "one millicore too many",
                    fit(r(3000, 0), r(1001, 1024)),
                    Err(Reason::Insufficient(Dim::Cpu)),
                ),
                (
                    "memory short because of what the host holds",
                    fit(r(0, 15 * 1024 + 1), r(1000, 1024)),
                    Err(Reason::Insufficient(Dim::Memory)),
                ),
                (
                    "cpu is reported before memory when both are short",
                    fit(r(4000, 16 * 1024), r(1, 1)),
                    Err(Reason::Insufficient(Dim::Cpu)),
                ),
                (
                    "disk",
                    fit(r(0, 0), with(r(1, 1), |x| x.disk_mib = 100 * 1024 + 1)),
                    Err(Reason::Insufficient(Dim::Disk)),
                ),
                (
                    "network",
                    fit(r(0, 0), with(r(1, 1), |x| x.network_mbps = 1001)),
                    Err(Reason::Insufficient(Dim::Network)),
                ),
                (
                    "gpus",
                    fit(with(r(0, 0), |x| x.gpus = 1), with(r(1, 1), |x| x.gpus = 2)),
                    Err(Reason::Insufficient(Dim::Gpu)),
                ),
                (
                    "named scalar the host has",
                    fit(
                        r(0, 0),
                        with(r(1, 1), |x| {
                            x.scalars.insert("fpga".into(), 1);
                        }),
                    ),
                    Ok(()),
                ),
                (
                    "named scalar the host lacks",
                    fit(
                        r(0, 0),
                        with(r(1, 1), |x| {
                            x.scalars.insert("licence".into(), 1);
                        }),
                    ),
                    Err(Reason::Insufficient(Dim::Scalar("licence".into()))),
                ),
            ],
        );
    }

    #[test]
    fn attribute_checker() {
        let on = |attrs: &'static [(&'static str, &'static str)], hard: Vec<Constraint>| -> Setup {
            Box::new(move |f: &mut Fleet| {
                let h = f.host(with_attrs(host_spec("h1", "us-east-1a", 4, 16), attrs));
                let job = job_spec(1, Resources::cpu_mem(1000, 1024), hard.clone());
                (f.job(job), h)
            })
        };
        let eq = |k: &str, v: &str| Constraint::AttributeEquals {
            key: k.into(),
            value: v.into(),
        };
        let one_of = |k: &str, vs: &[&str]| Constraint::AttributeIn {
            key: k.into(),
            values: vs.iter().map(|v| (*v).into()).collect(),
        };
        let mismatch = |k: &str| Err(Reason::AttributeMismatch(k.into()));
        table(
            &AttributeChecker,
            vec![
                ("no constraints", on(&[], vec![]), Ok(())),
                (
                    "equals matches",
                    on(&[("rack", "r1")], vec![eq("rack", "r1")]),
                    Ok(()),
                ),
                (
                    "equals differs",
                    on(&[("rack", "r2")], vec![eq("rack", "r1")]),
                    mismatch("rack"),
                ),
                (
                    "host lacks the attribute",
                    on(&[], vec![eq("rack", "r1")]),
                    mismatch("rack"),
                ),
                (
                    "built-in zone key",
                    on(&[], vec![eq("zone", "us-east-1a")]),
                    Ok(()),
                ),
                (
                    "built-in key is not shadowed by a free-form attribute",
                    on(&[("zone", "elsewhere")], vec![eq("zone", "elsewhere")]),
                    mismatch("zone"),
                ),
                (
                    "in-set member",
                    on(&[("ssd", "yes")], vec![one_of("ssd", &["no", "yes"])]),
                    Ok(()),
                ),
                (
                    "in-set non-member",
                    on(&[("ssd", "maybe")], vec![one_of("ssd", &["no", "yes"])]),
                    mismatch("ssd"),
                ),
                (
                    "the first failing key is named",
                    on(
                        &[("rack", "r1")],
                        vec![eq("rack", "r1"), eq("kernel", "6"), eq("ssd", "yes")],
                    ),
                    mismatch("kernel"),
                ),
                (
                    "other constraint kinds are not its business",
                    on(
                        &[],
                        vec![
                            Constraint::GpuModel("a100".into()),
                            Constraint::UniqueHost { group: None },
                        ],
                    ),
                    Ok(()),
                ),
            ],
        );
    }

    #[test]
    fn gpu_model_checker() {
        let on = |gpus: Option<&'static str>, hard: Vec<Constraint>| -> Setup {
            Box::new(move |f: &mut Fleet| {
                let spec = host_spec("h1", "a", 8, 64);
                let spec = match gpus {
                    Some(model) => with_gpus(spec, 4, model),
                    None => spec,
                };
                let h = f.host(spec);
                let job = job_spec(1, Resources::cpu_mem(1000, 1024), hard.clone());
                (f.job(job), h)
            })
        };
        let model = |m: &str| Constraint::GpuModel(m.into());
        table(
            &GpuModelChecker,
            vec![
                ("no constraint on a cpu host", on(None, vec![]), Ok(())),
                (
                    "no constraint on a gpu host",
                    on(Some("t4"), vec![]),
                    Ok(()),
                ),
                (
                    "model matches",
                    on(Some("a10g"), vec![model("a10g")]),
                    Ok(()),
                ),
                (
                    "other model",
                    on(Some("t4"), vec![model("a10g")]),
                    Err(Reason::GpuModel),
                ),
                (
                    "host without gpus",
                    on(None, vec![model("a10g")]),
                    Err(Reason::GpuModel),
                ),
                (
                    "two different models can never both hold",
                    on(Some("t4"), vec![model("t4"), model("v100")]),
                    Err(Reason::GpuModel),
                ),
            ],
        );
    }

    #[test]
    fn unique_host_checker() {
        let unique = |group: Option<&str>| Constraint::UniqueHost {
            group: group.map(Into::into),
        };
        // Two hosts; `placed` lists (job spec, host) already placed; the
        // checked job is job 1 on host h1.
        let on = |hard: Vec<Constraint>, placed: Vec<(JobSpec, usize)>| -> Setup {
            Box::new(move |f: &mut Fleet| {
                let hosts = [
                    f.host(host_spec("h1", "a", 8, 32)),
                    f.host(host_spec("h2", "a", 8, 32)),
                ];
                let job = f.job(job_spec(1, Resources::cpu_mem(1000, 1024), hard.clone()));
                for (spec, h) in &placed {
                    let id = if spec.id == job {
                        job
                    } else {
                        f.job(spec.clone())
                    };
                    f.place(id, hosts[*h]);
                }
                (job, hosts[0])
            })
        };
        let me = |hard: Vec<Constraint>| job_spec(1, Resources::cpu_mem(1000, 1024), hard);
        let other =
            |id: u64, hard: Vec<Constraint>| job_spec(id, Resources::cpu_mem(1000, 1024), hard);
        table(
            &UniqueHostChecker,
            vec![
                (
                    "without the constraint tasks may share a host",
                    on(vec![], vec![(me(vec![]), 0)]),
                    Ok(()),
                ),
                (
                    "first task of the job",
                    on(vec![unique(None)], vec![]),
                    Ok(()),
                ),
                (
                    "a task of the job is already here",
                    on(vec![unique(None)], vec![(me(vec![unique(None)]), 0)]),
                    Err(Reason::UniqueHost),
                ),
                (
                    "a task of the job is on another host",
                    on(vec![unique(None)], vec![(me(vec![unique(None)]), 1)]),
                    Ok(()),
                ),
                (
                    "another job without a group does not count",
                    on(vec![unique(None)], vec![(other(2, vec![unique(None)]), 0)]),
                    Ok(()),
                ),
                (
                    "another job of the same group is here",
                    on(
                        vec![unique(Some("ps"))],
                        vec![(other(2, vec![unique(Some("ps"))]), 0)],
                    ),
                    Err(Reason::UniqueHost),
                ),
                (
                    "another job of another group is here",
                    on(
                        vec![unique(Some("ps"))],
                        vec![(other(2, vec![unique(Some("workers"))]), 0)],
                    ),
                    Ok(()),
                ),
                (
                    "a soft group membership still claims the host for the group",
                    on(
                        vec![unique(Some("ps"))],
                        vec![(
                            {
                                let mut s = other(2, vec![]);
                                s.soft_constraints = vec![unique(Some("ps"))];
                                s
                            },
                            0,
                        )],
                    ),
                    Err(Reason::UniqueHost),
                ),
            ],
        );
    }

    #[test]
    fn zone_balance_checker() {
        // Zones a, b, c with one active host each (c draining when
        // `c_draining`); `placed` gives the job's task count per zone; the
        // job is checked against the host in `zone`.
        let on = |max_skew: u32, placed: [u32; 3], c_draining: bool, zone: usize| -> Setup {
            Box::new(move |f: &mut Fleet| {
                let hosts = [
                    f.host(host_spec("ha", "a", 64, 256)),
                    f.host(host_spec("hb", "b", 64, 256)),
                    f.host_in_state(
                        host_spec("hc", "c", 64, 256),
                        if c_draining {
                            HostState::Draining
                        } else {
                            HostState::Active
                        },
                    ),
                ];
                let job = f.job(job_spec(
                    1,
                    Resources::cpu_mem(1000, 1024),
                    vec![Constraint::ZoneBalance { max_skew }],
                ));
                for (z, n) in placed.iter().enumerate() {
                    for _ in 0..*n {
                        f.place(job, hosts[z]);
                    }
                }
                (job, hosts[zone])
            })
        };
        let skew = Err(Reason::ZoneSkew);
        table(
            &ZoneBalanceChecker,
            vec![
                ("empty zones, skew 1", on(1, [0, 0, 0], false, 0), Ok(())),
                (
                    "a zone one ahead, skew 1",
                    on(1, [1, 0, 0], false, 0),
                    skew.clone(),
                ),
                ("the least loaded zone", on(1, [1, 0, 0], false, 1), Ok(())),
                (
                    "two ahead, skew 2 allows it",
                    on(2, [1, 0, 0], false, 0),
                    Ok(()),
                ),
                ("level zones", on(1, [2, 2, 2], false, 2), Ok(())),
                ("one zone behind", on(1, [2, 2, 1], false, 0), skew.clone()),
                (
                    "a zone with no active host does not hold the others back",
                    on(1, [1, 1, 0], true, 0),
                    Ok(()),
                ),
                (
                    "but it does while its host is active",
                    on(1, [1, 1, 0], false, 0),
                    skew.clone(),
                ),
                ("skew 0 can never be met", on(0, [0, 0, 0], false, 0), skew),
            ],
        );
    }

    /// The assembled pipeline: the first failing stage names the reason.
    #[test]
    fn pipeline_reports_the_first_failing_stage() {
        let draining_and_full: Setup = Box::new(|f: &mut Fleet| {
            let h = f.host_in_state(host_spec("h1", "a", 1, 1), HostState::Draining);
            (
                f.job(job_spec(1, Resources::cpu_mem(2000, 1024), vec![])),
                h,
            )
        });
        let full_and_wrong_model: Setup = Box::new(|f: &mut Fleet| {
            let h = f.host(host_spec("h1", "a", 1, 1));
            let hard = vec![Constraint::GpuModel("a100".into())];
            (f.job(job_spec(1, Resources::cpu_mem(2000, 1024), hard)), h)
        });
        let wrong_model_and_attribute: Setup = Box::new(|f: &mut Fleet| {
            let h = f.host(host_spec("h1", "a", 4, 16));
            let hard = vec![
                Constraint::AttributeEquals {
                    key: "rack".into(),
                    value: "r1".into(),
                },
                Constraint::GpuModel("a100".into()),
            ];
            (f.job(job_spec(1, Resources::cpu_mem(1000, 1024), hard)), h)
        });
        let pipeline = Pipeline::default();
        let cases = [
            (
                "host state before resources",
                draining_and_full,
                Err(Reason::HostNotActive),
            ),
            (
                "resources before constraints",
                full_and_wrong_model,
                Err(Reason::Insufficient(Dim::Cpu)),
            ),
            (
                "gpu model before attributes",
                wrong_model_and_attribute,
                Err(Reason::GpuModel),
            ),
        ];
        for (name, setup, want) in cases {
            let mut fleet = Fleet::new();
            let (job, host_idx) = setup(&mut fleet);
            let overlay = Overlay::default();
            let got = pipeline.check(
                &View::new(&fleet.state, &overlay),
                fleet.job_ref(job),
                host_idx,
            );
            assert_eq!(got, want, "case `{name}`");
        }
    }
}
