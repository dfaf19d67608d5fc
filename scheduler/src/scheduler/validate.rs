//! Validation of what shells submit: every refusal names the field.

use crate::spec::catalog::Catalog;
use crate::spec::error::InputError;
use crate::spec::host::HostSpec;
use crate::spec::job::{BudgetLimit, Constraint, JobSpec};
use crate::spec::market::{PoolSpec, Reservation};
use crate::units::time::DurationMs;

/// Largest job the core accepts. A bigger array is almost always a mistake
/// (a unit error in a generator), and one job's tasks share one `Vec`.
pub const MAX_TASKS_PER_JOB: u32 = 1_000_000;

/// Longest idempotency key: enough for a UUID or a client's own composite
/// key, short enough that keys cost little memory per job.
const MAX_REQUEST_KEY_LEN: usize = 256;

pub(super) fn validate_pool(spec: &PoolSpec) -> Result<(), InputError> {
    if spec.id.as_str().trim().is_empty() {
        return Err(InputError::field("pool.id", "must not be empty"));
    }
    if spec.region.trim().is_empty() {
        return Err(InputError::field("pool.region", "must not be empty"));
    }
    let h = &spec.headroom;
    if !(h.daily_scaling_fraction.is_finite() && h.daily_scaling_fraction >= 0.0) {
        return Err(InputError::field(
            "pool.headroom.daily_scaling_fraction",
            "must be a finite, non-negative fraction",
        ));
    }
    if !(h.failover_multiplier.is_finite() && h.failover_multiplier >= 0.0) {
        return Err(InputError::field(
            "pool.headroom.failover_multiplier",
            "must be a finite, non-negative number",
        ));
    }
    Ok(())
}

pub(super) fn validate_reservations(
    catalog: &Catalog,
    reservations: &[Reservation],
) -> Result<(), InputError> {
    let mut total: u64 = 0;
    for r in reservations {
        let ie = catalog.ie_of(&r.instance_type).map_err(|_| {
            InputError::field(
                "reservations.instance_type",
                format!("unknown instance type `{}`", r.instance_type),
            )
        })?;
        if let (Some(s), Some(e)) = (r.start, r.end)
            && e <= s
        {
            return Err(InputError::field(
                "reservations.end",
                format!("{}: must be after start", r.instance_type),
            ));
        }
        total = ie
            .as_micro()
            .checked_mul(u64::from(r.count))
            .and_then(|x| total.checked_add(x))
            .ok_or_else(|| {
                InputError::field("reservations.count", "total reserved IE overflows")
            })?;
    }
    Ok(())
}

pub(super) fn validate_host(spec: &HostSpec) -> Result<(), InputError> {
    if spec.id.as_str().trim().is_empty() {
        return Err(InputError::field("id", "must not be empty"));
    }
    if spec.pool.as_str().trim().is_empty() {
        return Err(InputError::field("pool", "must not be empty"));
    }
    if spec.zone.trim().is_empty() {
        return Err(InputError::field("zone", "must not be empty"));
    }
    if spec.capacity.cpu_millis == 0 {
        return Err(InputError::field(
            "capacity.cpu_millis",
            "must be greater than zero",
        ));
    }
    if spec.capacity.memory_mib == 0 {
        return Err(InputError::field(
            "capacity.memory_mib",
            "must be greater than zero",
        ));
    }
    if spec.capacity.gpus > 0
        && spec
            .gpu_model
            .as_deref()
            .is_none_or(|m| m.trim().is_empty())
    {
        return Err(InputError::field(
            "gpu_model",
            "required when capacity.gpus > 0",
        ));
    }
    Ok(())
}

pub(super) fn validate_job(spec: &JobSpec) -> Result<(), InputError> {
    if spec.team.as_str().trim().is_empty() {
        return Err(InputError::field("team", "must not be empty"));
    }
    if spec.n_tasks == 0 || spec.n_tasks > MAX_TASKS_PER_JOB {
        return Err(InputError::field(
            "n_tasks",
            format!("must be between 1 and {MAX_TASKS_PER_JOB}"),
        ));
    }
    if spec.request.checked_mul(u64::from(spec.n_tasks)).is_none() {
        return Err(InputError::field(
            "request",
            "times n_tasks overflows: the job asks for more than any fleet has",
        ));
    }
    if let Some(key) = &spec.request_key
        && (key.trim().is_empty() || key.len() > MAX_REQUEST_KEY_LEN)
    {
        return Err(InputError::field(
            "request_key",
            format!("must be 1 to {MAX_REQUEST_KEY_LEN} characters when set"),
        ));
    }
    if spec.expected_runtime == Some(DurationMs::ZERO) {
        return Err(InputError::field(
            "expected_runtime",
            "must be greater than zero when set",
        ));
    }
    if spec.request.cpu_millis == 0 && spec.request.memory_mib == 0 {
        return Err(InputError::field(
            "request",
            "must ask for some cpu_millis or memory_mib",
        ));
    }
    for (field, list) in [
        ("hard_constraints", &spec.hard_constraints),
        ("soft_constraints", &spec.soft_constraints),
    ] {
        for c in list {
            validate_constraint(field, c)?;
        }
    }
    if spec.retry.initial_backoff > spec.retry.max_backoff {
        return Err(InputError::field(
            "retry.initial_backoff",
            "must not exceed retry.max_backoff",
        ));
    }
    if let Some(b) = &spec.disruption_budget {
        if b.window == DurationMs::ZERO {
            return Err(InputError::field(
                "disruption_budget.window",
                "must be greater than zero",
            ));
        }
        if let BudgetLimit::MaxPercent(p) = b.limit
            && p > 100
        {
            return Err(InputError::field(
                "disruption_budget.limit",
                "a percentage must be at most 100",
            ));
        }
    }
    if spec.checkpoint_interval == Some(DurationMs::ZERO) {
        return Err(InputError::field(
            "checkpoint_interval",
            "must be greater than zero when set",
        ));
    }
    Ok(())
}

fn validate_constraint(field: &'static str, c: &Constraint) -> Result<(), InputError> {
    match c {
        Constraint::AttributeEquals { key, .. } | Constraint::AttributeIn { key, .. }
            if key.trim().is_empty() =>
        {
            Err(InputError::field(
                field,
                "attribute constraint with an empty key",
            ))
        }
        Constraint::AttributeIn { values, .. } if values.is_empty() => Err(InputError::field(
            field,
            "attribute_in constraint with no values",
        )),
        Constraint::UniqueHost { group: Some(g) } if g.trim().is_empty() => Err(InputError::field(
            field,
            "unique_host group must not be empty when set",
        )),
        Constraint::GpuModel(m) if m.trim().is_empty() => {
            Err(InputError::field(field, "gpu_model must not be empty"))
        }
        _ => Ok(()),
    }
}
