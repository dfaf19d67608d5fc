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

/// A wire constraint to a core constraint.
pub fn constraint_from_wire(
    c: &pb::Constraint,
    field: &str,
) -> Result<core::Constraint, ConvertError> {
    use pb::constraint::Kind;
    match &c.kind {
        Some(Kind::AttributeEquals(a)) => Ok(core::Constraint::AttributeEquals {
            key: a.key.clone(),
            value: a.value.clone(),
        }),
        Some(Kind::AttributeIn(a)) => Ok(core::Constraint::AttributeIn {
            key: a.key.clone(),
            values: a.values.clone(),
        }),
        Some(Kind::UniqueHost(u)) => Ok(core::Constraint::UniqueHost {
            group: (!u.group.is_empty()).then(|| u.group.clone()),
        }),
        Some(Kind::ZoneBalance(z)) => Ok(core::Constraint::ZoneBalance {
            max_skew: z.max_skew,
        }),
        Some(Kind::GpuModel(m)) => Ok(core::Constraint::GpuModel(m.clone())),
        None => Err(err(field, "constraint has no kind set")),
    }
}

/// A submitted wire job to a core job with the id the control plane allocated.
/// Field errors use the request's field paths (`spec.request.cpu_millis`);
/// the core validates values again when the job is submitted.
pub fn job_from_wire(id: core::JobId, spec: &pb::JobSpec) -> Result<core::JobSpec, ConvertError> {
    let request = spec
        .request
        .as_ref()
        .ok_or_else(|| err("spec.request", "is required"))?;
    let bid = match spec.bid_per_ie_hour {
        None => None,
        Some(b) => Some(core::Price::new(b).ok_or_else(|| {
            err(
                "spec.bid_per_ie_hour",
                "must be a finite, non-negative price",
            )
        })?),
    };
    let constraints =
        |list: &[pb::Constraint], field: &str| -> Result<Vec<core::Constraint>, ConvertError> {
            list.iter()
                .map(|c| constraint_from_wire(c, field))
                .collect()
        };
    let retry = match &spec.retry {
        None => core::RetryPolicy::default(),
        Some(r) => core::RetryPolicy {
            max_retries: r.max_retries,
            initial_backoff: core::DurationMs::from_millis(r.initial_backoff_ms),
            max_backoff: core::DurationMs::from_millis(r.max_backoff_ms),
        },
    };
    let disruption_budget = match &spec.disruption_budget {
        None => None,
        Some(b) => {
            use pb::disruption_budget::Limit;
            let limit = match b.limit {
                Some(Limit::MaxTasks(n)) => core::BudgetLimit::MaxTasks(n),
                Some(Limit::MaxPercent(p)) => core::BudgetLimit::MaxPercent(p),
                None => {
                    return Err(err(
                        "spec.disruption_budget.limit",
                        "set max_tasks or max_percent",
                    ));
                }
            };
            Some(core::DisruptionBudget {
                limit,
                window: core::DurationMs::from_millis(b.window_ms),
            })
        }
    };
    Ok(core::JobSpec {
        id,
        request_key: None,
        expected_runtime: None,
        name: spec.name.clone(),
        team: core::TeamId::from(spec.team.as_str()),
        tier: tier_from_wire(spec.tier)?,
        priority: spec.priority,
        bid,
        request: resources_from_wire(request),
        n_tasks: spec.n_tasks,
        hard_constraints: constraints(&spec.hard_constraints, "spec.hard_constraints")?,
        soft_constraints: constraints(&spec.soft_constraints, "spec.soft_constraints")?,
        gang: spec.gang,
        retry,
        disruption_budget,
        checkpoint_interval: spec
            .checkpoint_interval_ms
            .map(core::DurationMs::from_millis),
    })
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

    fn wire_job() -> pb::JobSpec {
        pb::JobSpec {
            name: "encode".into(),
            team: "encoding".into(),
            tier: pb::Tier::Flex as i32,
            priority: 3,
            bid_per_ie_hour: Some(1.5),
            request: Some(pb::Resources {
                cpu_millis: 4000,
                memory_mib: 8192,
                ..Default::default()
            }),
            n_tasks: 10,
            hard_constraints: vec![pb::Constraint {
                kind: Some(pb::constraint::Kind::UniqueHost(pb::UniqueHost {
                    group: String::new(),
                })),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_wire_job_becomes_a_core_job() {
        let job = job_from_wire(core::JobId(7), &wire_job()).unwrap();
        assert_eq!(job.id, core::JobId(7));
        assert_eq!(
            (job.tier, job.priority, job.n_tasks),
            (core::Tier::Flex, 3, 10)
        );
        assert_eq!(job.bid, core::Price::new(1.5));
        assert_eq!(
            job.hard_constraints,
            vec![core::Constraint::UniqueHost { group: None }]
        );
        assert_eq!(job.retry, core::RetryPolicy::default());
    }

    #[test]
    fn bad_wire_jobs_name_the_field() {
        type Case = (&'static str, fn(&mut pb::JobSpec), &'static str);
        let cases: [Case; 4] = [
            ("missing request", |j| j.request = None, "spec.request"),
            (
                "infinite bid",
                |j| j.bid_per_ie_hour = Some(f64::INFINITY),
                "spec.bid_per_ie_hour",
            ),
            ("unspecified tier", |j| j.tier = 0, "spec.tier"),
            (
                "empty constraint",
                |j| j.soft_constraints.push(pb::Constraint { kind: None }),
                "spec.soft_constraints",
            ),
        ];
        for (name, break_it, field) in cases {
            let mut wire = wire_job();
            break_it(&mut wire);
            let e = job_from_wire(core::JobId(1), &wire).unwrap_err();
            assert_eq!(e.field, field, "{name}: {e}");
        }
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
