//! Wire (`ebb.v1`) ⇄ core conversions: the only place protobuf types meet
//! scheduler types (architecture invariant 3). Errors name the offending
//! field so gRPC callers can fix their request.
//!
//! Times: the server runs the core on milliseconds since the Unix epoch, so
//! a core `Timestamp` converts to `google.protobuf.Timestamp` directly.

use std::collections::BTreeMap;

use ebb_proto::v1 as pb;
use ebb_scheduler as core;

use crate::error::{ApiError, Violation};
use crate::records::{Container, JobExtras, LedgerSample};

/// A wire message could not become a core value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field `{field}`: {message}")]
pub struct ConvertError {
    /// Dotted path of the offending field.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl From<ConvertError> for ApiError {
    fn from(e: ConvertError) -> ApiError {
        ApiError::InvalidArgument(vec![Violation::new(e.field, e.message)])
    }
}

fn err(field: &str, message: impl Into<String>) -> ConvertError {
    ConvertError {
        field: field.to_owned(),
        message: message.into(),
    }
}

// ------------------------------------------------------------------ scalars

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

/// Core resources to wire resources.
pub fn resources_to_wire(r: &core::Resources) -> pb::Resources {
    pb::Resources {
        cpu_millis: r.cpu_millis,
        memory_mib: r.memory_mib,
        disk_mib: r.disk_mib,
        network_mbps: r.network_mbps,
        gpus: u32::try_from(r.gpus).unwrap_or(u32::MAX),
        scalars: r.scalars.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
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

/// Milliseconds to a wire duration.
pub fn duration_to_wire(ms: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// A wire duration to milliseconds, naming `field` if it is invalid.
pub fn duration_from_wire(d: &prost_types::Duration, field: &str) -> Result<u64, ConvertError> {
    crate::validate::duration_ms(d).map_err(|why| err(field, why))
}

fn opt_duration(
    d: Option<&prost_types::Duration>,
    field: &str,
) -> Result<Option<core::DurationMs>, ConvertError> {
    d.map(|d| duration_from_wire(d, field).map(core::DurationMs::from_millis))
        .transpose()
}

/// Milliseconds since the Unix epoch to a wire timestamp.
pub fn ms_to_wire(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// A core instant to a wire timestamp.
pub fn ts_to_wire(t: core::Timestamp) -> prost_types::Timestamp {
    ms_to_wire(t.as_millis())
}

/// A wire timestamp to milliseconds since the Unix epoch.
pub fn ms_from_wire(t: &prost_types::Timestamp, field: &str) -> Result<u64, ConvertError> {
    if t.seconds < 0 || !(0..1_000_000_000).contains(&t.nanos) {
        return Err(err(field, "must be a valid time after 1970-01-01"));
    }
    (t.seconds as u64)
        .checked_mul(1000)
        .map(|ms| ms + t.nanos as u64 / 1_000_000)
        .ok_or_else(|| err(field, "is too far in the future"))
}

/// A run id to the wire.
pub fn run_to_wire(run: core::RunId) -> pb::RunId {
    pb::RunId {
        job_id: run.task.job.0,
        task_index: run.task.index,
        attempt: run.attempt,
    }
}

/// A wire run id to a core run id.
pub fn run_from_wire(run: Option<&pb::RunId>, field: &str) -> Result<core::RunId, ConvertError> {
    let r = run.ok_or_else(|| err(field, "is required"))?;
    Ok(core::TaskId::new(core::JobId(r.job_id), r.task_index).run(r.attempt))
}

/// Micro-IE to IE.
pub fn ie_from_wire(micro: u64) -> core::Ie {
    core::Ie::from_micro(micro)
}

// ---------------------------------------------------------------- job specs

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

/// A core constraint to the wire.
pub fn constraint_to_wire(c: &core::Constraint) -> pb::Constraint {
    use pb::constraint::Kind;
    let kind = match c {
        core::Constraint::AttributeEquals { key, value } => {
            Kind::AttributeEquals(pb::AttributeEquals {
                key: key.clone(),
                value: value.clone(),
            })
        }
        core::Constraint::AttributeIn { key, values } => Kind::AttributeIn(pb::AttributeIn {
            key: key.clone(),
            values: values.clone(),
        }),
        core::Constraint::UniqueHost { group } => Kind::UniqueHost(pb::UniqueHost {
            group: group.clone().unwrap_or_default(),
        }),
        core::Constraint::ZoneBalance { max_skew } => Kind::ZoneBalance(pb::ZoneBalance {
            max_skew: *max_skew,
        }),
        core::Constraint::GpuModel(m) => Kind::GpuModel(m.clone()),
    };
    pb::Constraint { kind: Some(kind) }
}

/// A create request to a core job (with the id the server allocated) and
/// its side data. Field errors use the request's paths
/// (`spec.request.cpu_millis`); the core validates values again.
pub fn job_from_wire(
    id: core::JobId,
    req: &pb::CreateJobRequest,
    created_ms: u64,
) -> Result<(core::JobSpec, JobExtras), ConvertError> {
    let spec = req
        .spec
        .as_ref()
        .ok_or_else(|| err("spec", "is required"))?;
    let request = spec
        .request
        .as_ref()
        .ok_or_else(|| err("spec.request", "is required"))?;
    let bid = spec
        .bid_micros_per_ie_hour
        .map(|b| {
            core::Price::from_micros(b).ok_or_else(|| {
                err(
                    "spec.bid_micros_per_ie_hour",
                    "must be a finite, non-negative price",
                )
            })
        })
        .transpose()?;
    let constraints =
        |list: &[pb::Constraint], field: &str| -> Result<Vec<core::Constraint>, ConvertError> {
            list.iter()
                .enumerate()
                .map(|(i, c)| constraint_from_wire(c, &format!("{field}[{i}]")))
                .collect()
        };
    let retry = match &spec.retry {
        None => core::RetryPolicy::default(),
        Some(r) => {
            let default = core::RetryPolicy::default();
            core::RetryPolicy {
                max_retries: r.max_retries,
                initial_backoff: opt_duration(
                    r.initial_backoff.as_ref(),
                    "spec.retry.initial_backoff",
                )?
                .unwrap_or(default.initial_backoff),
                max_backoff: opt_duration(r.max_backoff.as_ref(), "spec.retry.max_backoff")?
                    .unwrap_or(default.max_backoff),
            }
        }
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
            let window = opt_duration(b.window.as_ref(), "spec.disruption_budget.window")?
                .ok_or_else(|| err("spec.disruption_budget.window", "is required"))?;
            Some(core::DisruptionBudget { limit, window })
        }
    };
    let container = spec
        .container
        .as_ref()
        .ok_or_else(|| err("spec.container", "is required"))?;
    let core_spec = core::JobSpec {
        id,
        request_key: (!req.request_id.is_empty()).then(|| req.request_id.clone()),
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
        checkpoint_interval: opt_duration(
            spec.checkpoint_interval.as_ref(),
            "spec.checkpoint_interval",
        )?,
        expected_runtime: opt_duration(spec.expected_runtime.as_ref(), "spec.expected_runtime")?,
    };
    let extras = JobExtras {
        team: spec.team.clone(),
        request_id: req.request_id.clone(),
        container: Container {
            image: container.image.clone(),
            command: container.command.clone(),
            env: container
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            // Validated before conversion; normalized so that `cap_kill`
            // and `KILL` are the same job for an idempotent retry.
            capabilities: container
                .capabilities
                .iter()
                .map(|c| ebb_proto::allowed_capability(c).unwrap_or(c).to_owned())
                .collect(),
            read_only_root_fs: container.read_only_root_fs,
            pids_limit: container.pids_limit,
        },
        labels: spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        runtime_limit_ms: opt_duration(spec.runtime_limit.as_ref(), "spec.runtime_limit")?
            .map(core::DurationMs::as_millis),
        cancel_grace_ms: None,
        created_ms,
    };
    Ok((core_spec, extras))
}

/// True if two creates ask for the same job (for idempotent retries): the
/// core spec apart from its id, and the side data apart from times.
pub fn same_job(a: &JobExtras, b: &JobExtras) -> bool {
    a.container == b.container && a.labels == b.labels && a.runtime_limit_ms == b.runtime_limit_ms
}

fn container_to_wire(c: &Container) -> pb::ContainerSpec {
    pb::ContainerSpec {
        image: c.image.clone(),
        command: c.command.clone(),
        env: c.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        capabilities: c.capabilities.clone(),
        read_only_root_fs: c.read_only_root_fs,
        pids_limit: c.pids_limit,
    }
}

/// A core job spec and its side data back to the wire.
pub fn job_spec_to_wire(s: &core::JobSpec, x: &JobExtras) -> pb::JobSpec {
    pb::JobSpec {
        name: s.name.clone(),
        team: s.team.to_string(),
        tier: tier_to_wire(s.tier) as i32,
        priority: s.priority,
        bid_micros_per_ie_hour: s.bid.map(core::Price::as_micros),
        request: Some(resources_to_wire(&s.request)),
        n_tasks: s.n_tasks,
        hard_constraints: s.hard_constraints.iter().map(constraint_to_wire).collect(),
        soft_constraints: s.soft_constraints.iter().map(constraint_to_wire).collect(),
        gang: s.gang,
        retry: Some(pb::RetryPolicy {
            max_retries: s.retry.max_retries,
            initial_backoff: Some(duration_to_wire(s.retry.initial_backoff.as_millis())),
            max_backoff: Some(duration_to_wire(s.retry.max_backoff.as_millis())),
        }),
        disruption_budget: s.disruption_budget.as_ref().map(|b| pb::DisruptionBudget {
            limit: Some(match b.limit {
                core::BudgetLimit::MaxTasks(n) => pb::disruption_budget::Limit::MaxTasks(n),
                core::BudgetLimit::MaxPercent(p) => pb::disruption_budget::Limit::MaxPercent(p),
            }),
            window: Some(duration_to_wire(b.window.as_millis())),
        }),
        checkpoint_interval: s
            .checkpoint_interval
            .map(|d| duration_to_wire(d.as_millis())),
        container: Some(container_to_wire(&x.container)),
        runtime_limit: x.runtime_limit_ms.map(duration_to_wire),
        expected_runtime: s.expected_runtime.map(|d| duration_to_wire(d.as_millis())),
        labels: x
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

// ------------------------------------------------------------------- views

/// A core job phase to the wire.
pub fn phase_to_wire(p: core::JobPhase) -> pb::JobPhase {
    match p {
        core::JobPhase::Queued => pb::JobPhase::Queued,
        core::JobPhase::Running => pb::JobPhase::Running,
        core::JobPhase::Succeeded => pb::JobPhase::Succeeded,
        core::JobPhase::Failed => pb::JobPhase::Failed,
        core::JobPhase::Killed => pb::JobPhase::Cancelled,
    }
}

/// A wire job phase filter to the core's, naming `field` if unspecified.
pub fn phase_from_wire(p: i32, field: &str) -> Result<core::JobPhase, ConvertError> {
    match pb::JobPhase::try_from(p) {
        Ok(pb::JobPhase::Queued) => Ok(core::JobPhase::Queued),
        Ok(pb::JobPhase::Running) => Ok(core::JobPhase::Running),
        Ok(pb::JobPhase::Succeeded) => Ok(core::JobPhase::Succeeded),
        Ok(pb::JobPhase::Failed) => Ok(core::JobPhase::Failed),
        Ok(pb::JobPhase::Cancelled) => Ok(core::JobPhase::Killed),
        _ => Err(err(field, "must be a specific job phase")),
    }
}

/// A wire task-state filter to the core's state name (`None`: any state).
pub fn task_state_filter(s: i32) -> Result<Option<&'static str>, ConvertError> {
    Ok(Some(match pb::TaskState::try_from(s) {
        Ok(pb::TaskState::Unspecified) => return Ok(None),
        Ok(pb::TaskState::Pending) => "pending",
        Ok(pb::TaskState::Assigned) => "assigned",
        Ok(pb::TaskState::Running) => "running",
        Ok(pb::TaskState::Stopping) => "stopping",
        Ok(pb::TaskState::Completed) => "completed",
        Ok(pb::TaskState::Failed) => "failed",
        Ok(pb::TaskState::Cancelled) => "killed",
        Err(_) => return Err(err("state", "unknown task state")),
    }))
}

fn stop_reason(cause: core::StopCause) -> pb::StopReason {
    match cause {
        core::StopCause::Kill => pb::StopReason::Cancel,
        core::StopCause::Preempt => pb::StopReason::Preempt,
        core::StopCause::Restart => pb::StopReason::Restart,
    }
}

/// A core task state to the wire: (state, host, stop reason).
pub fn task_state_to_wire(s: &core::TaskState) -> (pb::TaskState, String, pb::StopReason) {
    match s {
        core::TaskState::Pending => (
            pb::TaskState::Pending,
            String::new(),
            pb::StopReason::Unspecified,
        ),
        core::TaskState::Assigned { host } => (
            pb::TaskState::Assigned,
            host.to_string(),
            pb::StopReason::Unspecified,
        ),
        core::TaskState::Running { host } => (
            pb::TaskState::Running,
            host.to_string(),
            pb::StopReason::Unspecified,
        ),
        core::TaskState::Stopping { host, cause } => (
            pb::TaskState::Stopping,
            host.to_string(),
            stop_reason(*cause),
        ),
        core::TaskState::Completed => (
            pb::TaskState::Completed,
            String::new(),
            pb::StopReason::Unspecified,
        ),
        core::TaskState::Failed => (
            pb::TaskState::Failed,
            String::new(),
            pb::StopReason::Unspecified,
        ),
        core::TaskState::Killed => (
            pb::TaskState::Cancelled,
            String::new(),
            pb::StopReason::Unspecified,
        ),
    }
}

fn reason_code(r: &core::Reason) -> pb::PendingReasonCode {
    use pb::PendingReasonCode as C;
    match r {
        core::Reason::Insufficient(_) => C::InsufficientResources,
        core::Reason::HostNotActive => C::HostNotActive,
        core::Reason::AttributeMismatch(_) => C::AttributeMismatch,
        core::Reason::UniqueHost => C::UniqueHost,
        core::Reason::ZoneSkew => C::ZoneSkew,
        core::Reason::GpuModel => C::GpuModel,
        core::Reason::PoolSupply(_) => C::PoolSupply,
        core::Reason::RegionEvacuated(_) => C::RegionEvacuated,
        core::Reason::LeaseEndsSoon(_) => C::LeaseEndsSoon,
        core::Reason::GangWaiting { .. } => C::GangWaiting,
        core::Reason::TeamCapReached => C::TeamCapReached,
        core::Reason::GangIncomplete { .. } => C::GangIncomplete,
        core::Reason::NoHosts => C::NoHosts,
        core::Reason::HostGone => C::HostGone,
    }
}

/// Pending reasons to the wire, most frequent first.
pub fn reasons_to_wire(r: &core::PendingReasons) -> Vec<pb::PendingReason> {
    r.counts
        .iter()
        .map(|c| pb::PendingReason {
            code: reason_code(&c.reason) as i32,
            code_name: c.reason.code().to_owned(),
            message: c.reason.to_string(),
            n_hosts: c.n_hosts,
            resolvable_by_preemption: c.reason.resolvable_by_preemption(),
            dimension: match &c.reason {
                core::Reason::Insufficient(d) => d.to_string(),
                _ => String::new(),
            },
            pool: match &c.reason {
                core::Reason::PoolSupply(p)
                | core::Reason::RegionEvacuated(p)
                | core::Reason::LeaseEndsSoon(p) => p.to_string(),
                _ => String::new(),
            },
        })
        .collect()
}

/// A job summary to the wire.
pub fn job_to_wire(v: &core::JobView, x: &JobExtras) -> pb::Job {
    let c = &v.counts;
    pb::Job {
        job_id: v.id.0,
        spec: Some(job_spec_to_wire(&v.spec, x)),
        phase: phase_to_wire(v.phase) as i32,
        counts: Some(pb::TaskCounts {
            pending: c.pending,
            running: c.running,
            stopping: c.stopping,
            completed: c.completed,
            failed: c.failed,
            cancelled: c.killed,
        }),
        create_time: Some(ts_to_wire(v.submitted_at)),
        finish_time: v.finished_at.map(ts_to_wire),
        pending_reasons: v
            .pending_reasons
            .as_deref()
            .filter(|_| c.pending > 0)
            .map(reasons_to_wire)
            .unwrap_or_default(),
        request_id: x.request_id.clone(),
    }
}

/// A task to the wire.
pub fn task_to_wire(t: &core::TaskView) -> pb::Task {
    let (state, host_id, stop) = task_state_to_wire(&t.state);
    pb::Task {
        job_id: t.id.job.0,
        task_index: t.id.index,
        run: Some(run_to_wire(t.run)),
        state: state as i32,
        host_id,
        n_failures: t.n_failures,
        n_preemptions: t.n_preemptions,
        create_time: Some(ts_to_wire(t.submitted_at)),
        ready_time: Some(ts_to_wire(t.ready_at)),
        assign_time: t.assigned_at.map(ts_to_wire),
        start_time: t.started_at.map(ts_to_wire),
        end_time: t.ended_at.map(ts_to_wire),
        pending_reasons: t
            .pending_reasons
            .as_deref()
            .map(reasons_to_wire)
            .unwrap_or_default(),
        stop_reason: stop as i32,
    }
}

// ---------------------------------------------------------------- executors

/// A registered host spec to the core's.
pub fn host_from_wire(h: &pb::HostSpec) -> core::HostSpec {
    let capacity = h
        .capacity
        .as_ref()
        .map(resources_from_wire)
        .unwrap_or_default();
    core::HostSpec {
        id: core::HostId::from(h.host_id.as_str()),
        pool: core::PoolId::from(h.pool.as_str()),
        instance_type: h.instance_type.clone(),
        zone: h.zone.clone(),
        region: h.region.clone(),
        attributes: h
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        capacity,
        gpu_model: (!h.gpu_model.is_empty()).then(|| h.gpu_model.clone()),
    }
}

/// The launch command for a run.
pub fn launch_to_wire(
    run: core::RunId,
    request: &core::Resources,
    spec: &core::JobSpec,
    x: &JobExtras,
) -> pb::LaunchTask {
    let mut labels: BTreeMap<String, String> = x.labels.clone();
    labels.insert("ebb.job_id".into(), run.task.job.0.to_string());
    labels.insert("ebb.task_index".into(), run.task.index.to_string());
    labels.insert("ebb.attempt".into(), run.attempt.to_string());
    labels.insert("ebb.team".into(), spec.team.to_string());
    pb::LaunchTask {
        run: Some(run_to_wire(run)),
        container: Some(container_to_wire(&x.container)),
        limits: Some(resources_to_wire(request)),
        labels: labels.into_iter().collect(),
        runtime_limit: x.runtime_limit_ms.map(duration_to_wire),
        job_name: spec.name.clone(),
        team: spec.team.to_string(),
    }
}

/// The stop command for a run.
pub fn stop_to_wire(run: core::RunId, grace_ms: u64, cause: core::StopCause) -> pb::StopTask {
    pb::StopTask {
        run: Some(run_to_wire(run)),
        grace: Some(duration_to_wire(grace_ms)),
        reason: stop_reason(cause) as i32,
    }
}

// ------------------------------------------------------------------- market

/// A pool's figures to the wire.
pub fn pool_to_wire(p: &core::PoolStatus) -> pb::Pool {
    pb::Pool {
        pool: p.pool.to_string(),
        region: p.region.clone(),
        reserved_micro_ie: p.reserved.as_micro(),
        streaming_micro_ie: p.streaming.as_micro(),
        headroom_micro_ie: p.headroom.as_micro(),
        supply_micro_ie: p.supply.as_micro(),
        leased_micro_ie: p.leased.as_micro(),
        idle_micro_ie: p.idle.as_micro(),
        clearing_price_micros_per_ie_hour: p.clearing_price.as_micros(),
        n_hosts: p.n_hosts,
        n_leased_hosts: p.n_leased_hosts,
    }
}

/// A wire reservation to the core's.
pub fn reservation_from_wire(
    r: &pb::Reservation,
    field: &str,
) -> Result<core::Reservation, ConvertError> {
    let time = |t: Option<&prost_types::Timestamp>, f: &str| {
        t.map(|t| ms_from_wire(t, &format!("{field}.{f}")).map(core::Timestamp::from_millis))
            .transpose()
    };
    if r.instance_type.trim().is_empty() {
        return Err(err(&format!("{field}.instance_type"), "must not be empty"));
    }
    Ok(core::Reservation {
        instance_type: r.instance_type.clone(),
        count: r.count,
        start: time(r.start_time.as_ref(), "start_time")?,
        end: time(r.end_time.as_ref(), "end_time")?,
    })
}

/// A core reservation to the wire.
pub fn reservation_to_wire(r: &core::Reservation) -> pb::Reservation {
    pb::Reservation {
        instance_type: r.instance_type.clone(),
        count: r.count,
        start_time: r.start.map(ts_to_wire),
        end_time: r.end.map(ts_to_wire),
    }
}

fn ie_hours(v: u128) -> f64 {
    core::IeMs(v).ie_hours()
}

/// Ledger rows over a range: `end − start` of two cumulative samples (a row
/// missing from `start` started at zero).
pub fn ledger_to_wire(start: &LedgerSample, end: &LedgerSample) -> Vec<pb::LedgerEntry> {
    end.entries
        .iter()
        .map(|e| {
            let s = start
                .entries
                .iter()
                .find(|s| s.team == e.team && s.pool == e.pool);
            let held = e.held.0 - s.map_or(0, |s| s.held.0);
            let lost = e.lost.0 - s.map_or(0, |s| s.lost.0);
            pb::LedgerEntry {
                team: e.team.to_string(),
                pool: e.pool.to_string(),
                held_micro_ie_ms: held.to_string(),
                held_ie_hours: ie_hours(held),
                charges_micros: e.charges.as_micros() - s.map_or(0, |s| s.charges.as_micros()),
                lost_micro_ie_ms: lost.to_string(),
                lost_ie_hours: ie_hours(lost),
                n_preemptions: e.n_preemptions - s.map_or(0, |s| s.n_preemptions),
                n_over_budget: e.n_over_budget - s.map_or(0, |s| s.n_over_budget),
            }
        })
        .collect()
}

/// A finance report row.
pub fn utilization_row_to_wire(r: &crate::finance::Row) -> pb::UtilizationRow {
    let c = &r.capacity;
    pb::UtilizationRow {
        start_time: Some(ms_to_wire(r.start_ms)),
        end_time: Some(ms_to_wire(r.end_ms)),
        group: r.group.clone(),
        reserved_micro_ie_ms: c.reserved.to_string(),
        streaming_micro_ie_ms: c.streaming.to_string(),
        headroom_micro_ie_ms: c.headroom.to_string(),
        supply_micro_ie_ms: c.supply.to_string(),
        leased_micro_ie_ms: c.leased.to_string(),
        allocated_micro_ie_ms: c.allocated.to_string(),
        idle_micro_ie_ms: c.idle.to_string(),
        reserved_ie_hours: ie_hours(c.reserved),
        streaming_ie_hours: ie_hours(c.streaming),
        headroom_ie_hours: ie_hours(c.headroom),
        supply_ie_hours: ie_hours(c.supply),
        leased_ie_hours: ie_hours(c.leased),
        allocated_ie_hours: ie_hours(c.allocated),
        idle_ie_hours: ie_hours(c.idle),
        utilization_ppm: r.utilization_ppm(),
        charges_micros: r.charges_micros,
        idle_cost_micros: r.idle_cost_micros,
        on_demand_micros: r.on_demand_micros,
        savings_micros: r.savings_micros().clamp(i64::MIN.into(), i64::MAX.into()) as i64,
        lost_micro_ie_ms: r.lost.to_string(),
        lost_ie_hours: ie_hours(r.lost),
        n_preemptions: r.n_preemptions,
        n_over_budget: r.n_over_budget,
        clearing_price_micros: r.clearing_price_micros,
        rate_is_on_demand: r.rate_is_on_demand,
    }
}

/// The finance grouping of a wire enum value (unspecified: pool).
pub fn grouping_from_wire(v: i32) -> Result<crate::finance::Grouping, ApiError> {
    use crate::finance::Grouping;
    match pb::UtilizationGrouping::try_from(v) {
        Ok(pb::UtilizationGrouping::Unspecified | pb::UtilizationGrouping::Pool) => {
            Ok(Grouping::Pool)
        }
        Ok(pb::UtilizationGrouping::Region) => Ok(Grouping::Region),
        Ok(pb::UtilizationGrouping::Family) => Ok(Grouping::Family),
        Ok(pb::UtilizationGrouping::Team) => Ok(Grouping::Team),
        Err(_) => Err(ApiError::field("group_by", format!("unknown grouping {v}"))),
    }
}

/// Pool totals over a range, by difference of two cumulative samples.
pub fn pool_totals_to_wire(start: &LedgerSample, end: &LedgerSample) -> Vec<pb::PoolTotals> {
    end.pools
        .iter()
        .map(|e| {
            let s = start.pools.iter().find(|s| s.pool == e.pool);
            let d = |f: fn(&core::PoolTotals) -> core::IeMs| f(e).0 - s.map_or(0, |s| f(s).0);
            let (reserved, streaming, headroom, leased, idle) = (
                d(|p| p.reserved),
                d(|p| p.streaming),
                d(|p| p.headroom),
                d(|p| p.leased),
                d(|p| p.idle),
            );
            pb::PoolTotals {
                pool: e.pool.to_string(),
                reserved_micro_ie_ms: reserved.to_string(),
                streaming_micro_ie_ms: streaming.to_string(),
                headroom_micro_ie_ms: headroom.to_string(),
                leased_micro_ie_ms: leased.to_string(),
                idle_micro_ie_ms: idle.to_string(),
                supply_micro_ie_ms: d(|p| p.supply).to_string(),
                violation_micro_ie_ms: d(|p| p.violation).to_string(),
                reserved_ie_hours: ie_hours(reserved),
                streaming_ie_hours: ie_hours(streaming),
                headroom_ie_hours: ie_hours(headroom),
                leased_ie_hours: ie_hours(leased),
                idle_ie_hours: ie_hours(idle),
            }
        })
        .collect()
}

// ------------------------------------------------------------------- events

/// A job-related core event to a watch event (`None` for events watchers
/// do not see: hosts, market inputs, prices, holdings).
pub fn event_to_wire(e: &core::Event) -> Option<pb::WatchEvent> {
    use pb::watch_event::Kind;
    let (job, kind) = match &e.kind {
        core::EventKind::JobAccepted { job, team, n_tasks } => (
            *job,
            Kind::Accepted(pb::JobAccepted {
                team: team.to_string(),
                n_tasks: *n_tasks,
            }),
        ),
        core::EventKind::JobFinished { job, phase } => (
            *job,
            Kind::Finished(pb::JobFinished {
                phase: phase_to_wire(*phase) as i32,
            }),
        ),
        core::EventKind::JobForgotten { job } => (*job, Kind::Forgotten(pb::JobForgotten {})),
        core::EventKind::JobUnplaced {
            job,
            n_tasks,
            reasons,
        } => (
            *job,
            Kind::Unplaced(pb::JobUnplaced {
                n_tasks: *n_tasks,
                reasons: reasons_to_wire(reasons),
            }),
        ),
        core::EventKind::TaskChanged { run, state } => {
            let (state, host_id, stop) = task_state_to_wire(state);
            (
                run.task.job,
                Kind::TaskChanged(pb::TaskChanged {
                    run: Some(run_to_wire(*run)),
                    state: state as i32,
                    host_id,
                    stop_reason: stop as i32,
                }),
            )
        }
        core::EventKind::PreemptionStarted {
            run,
            host,
            cause,
            emergency,
            over_budget,
        } => (
            run.task.job,
            Kind::PreemptionStarted(pb::PreemptionStarted {
                run: Some(run_to_wire(*run)),
                host_id: host.to_string(),
                cause: match cause {
                    core::PreemptCause::Reclaim { .. } => "reclaim".into(),
                    core::PreemptCause::Critical { .. } => "critical".into(),
                    core::PreemptCause::Outbid { .. } => "outbid".into(),
                },
                emergency: *emergency,
                over_budget: *over_budget,
            }),
        ),
        _ => return None,
    };
    Some(pb::WatchEvent {
        cursor: e.seq,
        time: Some(ts_to_wire(e.at)),
        job_id: job.0,
        kind: Some(kind),
    })
}

/// The job an event is about, if any.
pub fn event_job(e: &core::EventKind) -> Option<core::JobId> {
    match e {
        core::EventKind::JobAccepted { job, .. }
        | core::EventKind::JobFinished { job, .. }
        | core::EventKind::JobForgotten { job }
        | core::EventKind::JobUnplaced { job, .. } => Some(*job),
        core::EventKind::TaskChanged { run, .. }
        | core::EventKind::PreemptionStarted { run, .. } => Some(run.task.job),
        _ => None,
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

    fn wire_job() -> pb::CreateJobRequest {
        pb::CreateJobRequest {
            spec: Some(pb::JobSpec {
                name: "encode".into(),
                team: "encoding".into(),
                tier: pb::Tier::Flex as i32,
                priority: 3,
                bid_micros_per_ie_hour: Some(1_500_000),
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
                container: Some(pb::ContainerSpec {
                    image: "busybox:1.36".into(),
                    command: vec!["true".into()],
                    ..Default::default()
                }),
                runtime_limit: Some(duration_to_wire(90_000)),
                ..Default::default()
            }),
            request_id: "r-1".into(),
        }
    }

    #[test]
    fn a_wire_job_becomes_a_core_job_and_back() {
        let req = wire_job();
        let (job, extras) = job_from_wire(core::JobId(7), &req, 0).unwrap();
        assert_eq!(job.id, core::JobId(7));
        assert_eq!(job.request_key.as_deref(), Some("r-1"));
        assert_eq!(
            (job.tier, job.priority, job.n_tasks),
            (core::Tier::Flex, 3, 10)
        );
        assert_eq!(job.bid, core::Price::from_micros(1_500_000));
        assert_eq!(
            job.hard_constraints,
            vec![core::Constraint::UniqueHost { group: None }]
        );
        assert_eq!(job.retry, core::RetryPolicy::default());
        assert_eq!(extras.runtime_limit_ms, Some(90_000));
        let back = job_spec_to_wire(&job, &extras);
        let mut want = req.spec.clone().unwrap();
        // Defaults are filled in explicitly on the way back.
        want.retry = back.retry;
        assert_eq!(back, want);
    }

    #[test]
    fn bad_wire_jobs_name_the_field() {
        type Case = (&'static str, fn(&mut pb::JobSpec), &'static str);
        let cases: [Case; 5] = [
            ("missing request", |j| j.request = None, "spec.request"),
            ("unspecified tier", |j| j.tier = 0, "spec.tier"),
            (
                "empty constraint",
                |j| j.soft_constraints.push(pb::Constraint { kind: None }),
                "spec.soft_constraints[0]",
            ),
            (
                "missing container",
                |j| j.container = None,
                "spec.container",
            ),
            (
                "negative runtime limit",
                |j| {
                    j.runtime_limit = Some(prost_types::Duration {
                        seconds: -1,
                        nanos: 0,
                    })
                },
                "spec.runtime_limit",
            ),
        ];
        for (name, break_it, field) in cases {
            let mut wire = wire_job();
            break_it(wire.spec.as_mut().unwrap());
            let e = job_from_wire(core::JobId(1), &wire, 0).unwrap_err();
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
        assert_eq!(resources_to_wire(&r), wire);
    }

    #[test]
    fn times_convert_exactly_to_the_millisecond() {
        for ms in [0, 1, 999, 1_000, 1_764_000_000_123] {
            assert_eq!(ms_from_wire(&ms_to_wire(ms), "t"), Ok(ms));
            assert_eq!(duration_from_wire(&duration_to_wire(ms), "d"), Ok(ms));
        }
        let bad = prost_types::Timestamp {
            seconds: -5,
            nanos: 0,
        };
        assert_eq!(
            ms_from_wire(&bad, "start_time").unwrap_err().field,
            "start_time"
        );
    }
}
