//! Request validation on wire types, shared by the server and the CLI (which
//! checks a job file before sending it): every rule names the field it
//! refuses, and all violations of a request are reported at once.
//!
//! The core validates its own invariants again when an input is applied;
//! these are the API's limits (name syntax, the 100,000-task cap, sizes
//! within the catalog's largest instance type, duration bounds).

use std::sync::LazyLock;

use ebb_proto::v1 as pb;
use ebb_scheduler::{Catalog, MAX_GRACE, Price};
use regex::Regex;

use crate::error::Violation;

/// Largest job the API accepts. The core takes up to a million, but a job
/// is one create request and one watch stream; 100,000 tasks covers an
/// encoding season drop (9,570 files, split into chunks) with room to spare.
pub const MAX_TASKS_PER_JOB: u32 = 100_000;
/// Priorities run 0..=1000: enough bands for teams to order their own work,
/// and a bound that catches a timestamp pasted into the field.
pub const MAX_PRIORITY: i32 = 1000;
/// Longest job name: fits a season and episode identifier with room to spare.
const MAX_NAME_LEN: usize = 128;
/// A team name is a DNS label (63 characters), so it can be used in hostnames and metrics.
const MAX_TEAM_LEN: usize = 63;
/// Kubernetes' label limits: 63-character names and values, 253-character prefixes.
const MAX_LABEL_NAME_LEN: usize = 63;
const MAX_LABEL_PREFIX_LEN: usize = 253;
/// Labels per job: Docker and Kubernetes have no hard limit, but more than
/// 64 is a sign of data being smuggled through labels.
const MAX_LABELS: usize = 64;
/// Longest idempotency key, as in the core (a UUID or a composite key fits).
const MAX_REQUEST_ID_LEN: usize = 256;
/// Arguments and environment: Linux's ARG_MAX is 2 MiB for both together;
/// a quarter of it each keeps launch commands small.
const MAX_COMMAND_BYTES: usize = 512 * 1024;
const MAX_ENV_BYTES: usize = 512 * 1024;
/// Docker's reference grammar caps a repository name at 255 characters.
const MAX_IMAGE_NAME_LEN: usize = 255;
/// Longest job-level duration (runtime limit, checkpoint interval, budget
/// window, expected runtime): 30 days. Longer is almost always a unit mistake.
pub const MAX_JOB_DURATION_MS: u64 = 30 * 24 * 3_600_000;
/// Longest retry back-off: a day; a task retried less often than daily is
/// better resubmitted.
const MAX_BACKOFF_MS: u64 = 24 * 3_600_000;
/// Retries per task: beyond 100 a failing image only burns capacity.
const MAX_RETRIES: u32 = 100;
/// Disk has no catalog figure (instance storage varies); 64 TiB is more than
/// any EC2 instance's local storage.
const MAX_DISK_MIB: u64 = 64 * 1024 * 1024;
/// Forecast points per report: a week at one-minute resolution.
pub const MAX_FORECAST_POINTS: usize = 10_080;

/// What requests are checked against.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The largest value of each resource dimension over the catalog's instance types.
    pub max_request: pb::Resources,
}

impl Limits {
    /// Limits from an instance type catalog.
    pub fn from_catalog(catalog: &Catalog) -> Self {
        let mut max = pb::Resources::default();
        for t in catalog.types() {
            let c = t.capacity();
            max.cpu_millis = max.cpu_millis.max(c.cpu_millis);
            max.memory_mib = max.memory_mib.max(c.memory_mib);
            max.network_mbps = max.network_mbps.max(c.network_mbps);
            max.gpus = max.gpus.max(u32::try_from(c.gpus).unwrap_or(u32::MAX));
        }
        max.disk_mib = MAX_DISK_MIB;
        Limits { max_request: max }
    }

    /// Limits from the catalog shipped with the scheduler (the CLI's view).
    pub fn builtin() -> Self {
        Limits::from_catalog(&Catalog::builtin())
    }
}

/// Collects violations.
#[derive(Default)]
struct Check {
    v: Vec<Violation>,
}

impl Check {
    fn bad(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.v.push(Violation::new(field, description));
    }

    fn finish(self) -> Result<(), Vec<Violation>> {
        if self.v.is_empty() {
            Ok(())
        } else {
            Err(self.v)
        }
    }
}

/// Checks a `CreateJobRequest`.
pub fn create_job(req: &pb::CreateJobRequest, limits: &Limits) -> Result<(), Vec<Violation>> {
    let mut c = Check::default();
    if !req.request_id.is_empty() {
        request_id(&mut c, "request_id", &req.request_id);
    }
    match &req.spec {
        None => c.bad("spec", "is required"),
        Some(spec) => job_spec(&mut c, spec, limits),
    }
    c.finish()
}

fn request_id(c: &mut Check, field: &str, id: &str) {
    if id.len() > MAX_REQUEST_ID_LEN {
        c.bad(
            field,
            format!("must be at most {MAX_REQUEST_ID_LEN} characters"),
        );
    } else if !id.chars().all(|ch| ch.is_ascii_graphic()) {
        c.bad(field, "must be printable ASCII without spaces");
    }
}

fn job_spec(c: &mut Check, s: &pb::JobSpec, limits: &Limits) {
    if s.name.is_empty() || s.name.len() > MAX_NAME_LEN || !NAME.is_match(&s.name) {
        c.bad(
            "spec.name",
            format!(
                "must be 1-{MAX_NAME_LEN} letters, digits, `.`, `_` or `-`, starting with a letter or digit"
            ),
        );
    }
    team_name(c, "spec.team", &s.team);
    if !matches!(
        pb::Tier::try_from(s.tier),
        Ok(pb::Tier::Critical | pb::Tier::Flex)
    ) {
        c.bad("spec.tier", "must be TIER_CRITICAL or TIER_FLEX");
    }
    if !(0..=MAX_PRIORITY).contains(&s.priority) {
        c.bad(
            "spec.priority",
            format!("must be between 0 and {MAX_PRIORITY}"),
        );
    }
    if let Some(bid) = s.bid_micros_per_ie_hour
        && Price::from_micros(bid).is_none()
    {
        c.bad(
            "spec.bid_micros_per_ie_hour",
            format!("must be at most {} micro-units", Price::MAX.as_micros()),
        );
    }
    match &s.request {
        None => c.bad("spec.request", "is required"),
        Some(r) => request(c, r, limits),
    }
    if s.n_tasks == 0 || s.n_tasks > MAX_TASKS_PER_JOB {
        c.bad(
            "spec.n_tasks",
            format!("must be between 1 and {MAX_TASKS_PER_JOB}"),
        );
    }
    for (field, list) in [
        ("spec.hard_constraints", &s.hard_constraints),
        ("spec.soft_constraints", &s.soft_constraints),
    ] {
        for (i, k) in list.iter().enumerate() {
            constraint(c, &format!("{field}[{i}]"), k);
        }
    }
    if let Some(r) = &s.retry {
        if r.max_retries > MAX_RETRIES {
            c.bad(
                "spec.retry.max_retries",
                format!("must be at most {MAX_RETRIES}"),
            );
        }
        let init = duration(
            c,
            "spec.retry.initial_backoff",
            r.initial_backoff.as_ref(),
            MAX_BACKOFF_MS,
            false,
        );
        let max = duration(
            c,
            "spec.retry.max_backoff",
            r.max_backoff.as_ref(),
            MAX_BACKOFF_MS,
            false,
        );
        if let (Some(i), Some(m)) = (init, max)
            && i > m
        {
            c.bad(
                "spec.retry.initial_backoff",
                "must not exceed spec.retry.max_backoff",
            );
        }
    }
    if let Some(b) = &s.disruption_budget {
        match b.limit {
            None => c.bad(
                "spec.disruption_budget.limit",
                "set max_tasks or max_percent",
            ),
            Some(pb::disruption_budget::Limit::MaxPercent(p)) if p > 100 => {
                c.bad("spec.disruption_budget.max_percent", "must be at most 100")
            }
            Some(_) => {}
        }
        if b.window.is_none() {
            c.bad("spec.disruption_budget.window", "is required");
        }
        duration(
            c,
            "spec.disruption_budget.window",
            b.window.as_ref(),
            MAX_JOB_DURATION_MS,
            true,
        );
    }
    for (field, d) in [
        ("spec.checkpoint_interval", &s.checkpoint_interval),
        ("spec.runtime_limit", &s.runtime_limit),
        ("spec.expected_runtime", &s.expected_runtime),
    ] {
        duration(c, field, d.as_ref(), MAX_JOB_DURATION_MS, true);
    }
    match &s.container {
        None => c.bad("spec.container", "is required"),
        Some(k) => container(c, k),
    }
    if s.labels.len() > MAX_LABELS {
        c.bad("spec.labels", format!("at most {MAX_LABELS} labels"));
    }
    for (k, v) in &s.labels {
        label(c, "spec.labels", k, v);
    }
}

fn team_name(c: &mut Check, field: &str, team: &str) {
    if team.is_empty() || team.len() > MAX_TEAM_LEN || !DNS_LABEL.is_match(team) {
        c.bad(
            field,
            format!(
                "must be a lowercase DNS label: 1-{MAX_TEAM_LEN} of a-z, 0-9 and `-`, starting and ending alphanumeric"
            ),
        );
    }
}

fn request(c: &mut Check, r: &pb::Resources, limits: &Limits) {
    let max = &limits.max_request;
    let dims: [(&str, u64, u64, bool); 5] = [
        ("cpu_millis", r.cpu_millis, max.cpu_millis, true),
        ("memory_mib", r.memory_mib, max.memory_mib, true),
        ("disk_mib", r.disk_mib, max.disk_mib, false),
        ("network_mbps", r.network_mbps, max.network_mbps, false),
        ("gpus", u64::from(r.gpus), u64::from(max.gpus), false),
    ];
    for (name, value, max, required) in dims {
        let field = format!("spec.request.{name}");
        if required && value == 0 {
            c.bad(field, "must be greater than zero");
        } else if value > max {
            c.bad(
                field,
                format!("{value} exceeds {max}, the largest instance type in the catalog"),
            );
        }
    }
    for name in r.scalars.keys() {
        if name.is_empty() || name.len() > MAX_LABEL_NAME_LEN || !LABEL_NAME.is_match(name) {
            c.bad(
                format!("spec.request.scalars[{name}]"),
                "scalar names are 1-63 letters, digits, `-`, `_`, `.`, starting and ending alphanumeric",
            );
        }
    }
}

fn constraint(c: &mut Check, field: &str, k: &pb::Constraint) {
    use pb::constraint::Kind;
    let attr_key = |c: &mut Check, key: &str| {
        if key.is_empty() || key.len() > MAX_LABEL_PREFIX_LEN + 1 + MAX_LABEL_NAME_LEN {
            c.bad(format!("{field}.key"), "must be a non-empty attribute name");
        }
    };
    match &k.kind {
        None => c.bad(field, "constraint has no kind set"),
        Some(Kind::AttributeEquals(a)) => attr_key(c, &a.key),
        Some(Kind::AttributeIn(a)) => {
            attr_key(c, &a.key);
            if a.values.is_empty() {
                c.bad(format!("{field}.values"), "must list at least one value");
            }
        }
        Some(Kind::UniqueHost(_)) | Some(Kind::ZoneBalance(_)) => {}
        Some(Kind::GpuModel(m)) => {
            if m.trim().is_empty() {
                c.bad(format!("{field}.gpu_model"), "must not be empty");
            }
        }
    }
}

/// Checks a duration: non-negative, normalized, at most `max_ms`, and (if
/// `positive`) greater than zero. Returns it in milliseconds if valid.
fn duration(
    c: &mut Check,
    field: &str,
    d: Option<&prost_types::Duration>,
    max_ms: u64,
    positive: bool,
) -> Option<u64> {
    let d = d?;
    match duration_ms(d) {
        Err(why) => {
            c.bad(field, why);
            None
        }
        Ok(ms) if positive && ms == 0 => {
            c.bad(field, "must be at least 1 ms");
            None
        }
        Ok(ms) if ms > max_ms => {
            c.bad(
                field,
                format!(
                    "must be at most {}",
                    humantime::format_duration(std::time::Duration::from_millis(max_ms))
                ),
            );
            None
        }
        Ok(ms) => Some(ms),
    }
}

/// A wire duration in whole milliseconds (sub-millisecond parts truncated),
/// or why it is not a valid non-negative duration.
pub fn duration_ms(d: &prost_types::Duration) -> Result<u64, &'static str> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err("must not be negative");
    }
    if d.nanos >= 1_000_000_000 {
        return Err("nanos must be below 1,000,000,000");
    }
    (d.seconds as u64)
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(d.nanos as u64 / 1_000_000))
        .ok_or("is too large")
}

fn container(c: &mut Check, k: &pb::ContainerSpec) {
    if let Err(why) = image_reference(&k.image) {
        c.bad("spec.container.image", why);
    }
    let command_bytes: usize = k.command.iter().map(|a| a.len() + 1).sum();
    if command_bytes > MAX_COMMAND_BYTES {
        c.bad(
            "spec.container.command",
            format!("must be at most {MAX_COMMAND_BYTES} bytes in all"),
        );
    }
    if k.command.iter().any(|a| a.contains('\0')) {
        c.bad("spec.container.command", "arguments must not contain NUL");
    }
    let mut env_bytes = 0;
    for (key, value) in &k.env {
        env_bytes += key.len() + value.len() + 2;
        if !ENV_NAME.is_match(key) {
            c.bad(
                format!("spec.container.env[{key}]"),
                "names are letters, digits and `_`, not starting with a digit",
            );
        }
        if value.contains('\0') {
            c.bad(
                format!("spec.container.env[{key}]"),
                "values must not contain NUL",
            );
        }
    }
    if env_bytes > MAX_ENV_BYTES {
        c.bad(
            "spec.container.env",
            format!("must be at most {MAX_ENV_BYTES} bytes in all"),
        );
    }
    let mut kept = std::collections::BTreeSet::new();
    for (i, cap) in k.capabilities.iter().enumerate() {
        match ebb_proto::allowed_capability(cap) {
            None => c.bad(
                format!("spec.container.capabilities[{i}]"),
                format!(
                    "`{cap}` is not allowed; a job may keep only {}",
                    ebb_proto::ALLOWED_CAPABILITIES.join(", ")
                ),
            ),
            Some(name) if !kept.insert(name) => c.bad(
                format!("spec.container.capabilities[{i}]"),
                format!("`{cap}` is listed twice"),
            ),
            Some(_) => {}
        }
    }
    if k.pids_limit > MAX_PIDS_LIMIT {
        c.bad(
            "spec.container.pids_limit",
            format!("must be at most {MAX_PIDS_LIMIT} (0 takes the executor's default)"),
        );
    }
}

/// Linux's largest `pid_max` (2²²): a limit above it limits nothing.
const MAX_PIDS_LIMIT: u32 = 4_194_304;

/// Checks a Docker image reference against the distribution project's
/// grammar: `[domain[:port]/]path[:tag][@algorithm:hex]`.
pub fn image_reference(image: &str) -> Result<(), String> {
    if image.is_empty() {
        return Err("is required".into());
    }
    let Some(caps) = IMAGE.captures(image) else {
        return Err(format!(
            "`{image}` is not a valid image reference ([registry[:port]/]name[:tag][@digest], lowercase name)"
        ));
    };
    let name = caps.name("name").map_or("", |m| m.as_str());
    // Docker's normalization: the first component is a registry only if it
    // has a `.` or `:` or is `localhost`; otherwise it is part of the
    // (lowercase) repository path.
    if let Some((first, _)) = name.split_once('/')
        && !(first.contains('.') || first.contains(':') || first == "localhost")
        && first.chars().any(|c| c.is_ascii_uppercase())
    {
        return Err(format!("`{image}`: repository names must be lowercase"));
    }
    if name.len() > MAX_IMAGE_NAME_LEN {
        return Err(format!(
            "repository name must be at most {MAX_IMAGE_NAME_LEN} characters"
        ));
    }
    Ok(())
}

fn label(c: &mut Check, field: &str, key: &str, value: &str) {
    let name = match key.rsplit_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty()
                || prefix.len() > MAX_LABEL_PREFIX_LEN
                || !DNS_SUBDOMAIN.is_match(prefix)
            {
                c.bad(
                    format!("{field}[{key}]"),
                    "a key prefix must be a lowercase DNS subdomain of at most 253 characters",
                );
            }
            name
        }
        None => key,
    };
    if name.is_empty() || name.len() > MAX_LABEL_NAME_LEN || !LABEL_NAME.is_match(name) {
        c.bad(
            format!("{field}[{key}]"),
            "key names are 1-63 letters, digits, `-`, `_`, `.`, starting and ending alphanumeric",
        );
    }
    if key.starts_with("ebb.") || key.starts_with("ebb/") {
        c.bad(
            format!("{field}[{key}]"),
            "the `ebb` prefix is reserved for the scheduler",
        );
    }
    if value.len() > MAX_LABEL_NAME_LEN || !(value.is_empty() || LABEL_NAME.is_match(value)) {
        c.bad(
            format!("{field}[{key}]"),
            "values are 0-63 letters, digits, `-`, `_`, `.`, starting and ending alphanumeric",
        );
    }
}

/// Checks a host spec an executor registers with (the core checks the rest:
/// ids, capacity, GPU model).
pub fn host_spec(h: &pb::HostSpec) -> Result<(), Vec<Violation>> {
    let mut c = Check::default();
    for (field, value) in [
        ("register.host.host_id", &h.host_id),
        ("register.host.pool", &h.pool),
        ("register.host.instance_type", &h.instance_type),
        ("register.host.zone", &h.zone),
        ("register.host.region", &h.region),
    ] {
        if value.trim().is_empty() {
            c.bad(field, "must not be empty");
        } else if value.len() > MAX_LABEL_PREFIX_LEN {
            c.bad(field, "must be at most 253 characters");
        }
    }
    match &h.capacity {
        None => c.bad("register.host.capacity", "is required"),
        Some(cap) => {
            if cap.cpu_millis == 0 {
                c.bad(
                    "register.host.capacity.cpu_millis",
                    "must be greater than zero",
                );
            }
            if cap.memory_mib == 0 {
                c.bad(
                    "register.host.capacity.memory_mib",
                    "must be greater than zero",
                );
            }
        }
    }
    c.finish()
}

/// Checks a team filter or a team name given in a request.
pub fn team(field: &str, team: &str) -> Result<(), Vec<Violation>> {
    let mut c = Check::default();
    team_name(&mut c, field, team);
    c.finish()
}

/// Checks a cancel grace period.
pub fn grace(
    field: &str,
    d: Option<&prost_types::Duration>,
) -> Result<Option<u64>, Vec<Violation>> {
    let mut c = Check::default();
    let ms = duration(&mut c, field, d, MAX_GRACE.as_millis(), false);
    c.finish().map(|()| ms)
}

/// Checks a forecast's points: at most [`MAX_FORECAST_POINTS`], strictly increasing times.
pub fn forecast(points: &[pb::ForecastPoint]) -> Result<(), Vec<Violation>> {
    let mut c = Check::default();
    if points.len() > MAX_FORECAST_POINTS {
        c.bad("points", format!("at most {MAX_FORECAST_POINTS} points"));
    }
    let mut last: Option<(i64, i32)> = None;
    for (i, p) in points.iter().enumerate() {
        match &p.time {
            None => c.bad(format!("points[{i}].time"), "is required"),
            Some(t) => {
                if t.seconds < 0 || !(0..1_000_000_000).contains(&t.nanos) {
                    c.bad(
                        format!("points[{i}].time"),
                        "must be a valid time after 1970",
                    );
                }
                let key = (t.seconds, t.nanos);
                if last.is_some_and(|l| key <= l) {
                    c.bad(
                        format!("points[{i}].time"),
                        "times must be strictly increasing",
                    );
                }
                last = Some(key);
            }
        }
    }
    c.finish()
}

/// A bid given as a decimal number per IE-hour (job files) in micro-units,
/// or why it is not a finite, non-negative price.
pub fn bid_from_decimal(bid: f64) -> Result<u64, String> {
    Price::new(bid).map(Price::as_micros).ok_or_else(|| {
        format!(
            "{bid} is not a finite, non-negative price per IE-hour (at most {})",
            Price::MAX.per_ie_hour()
        )
    })
}

static NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9][A-Za-z0-9._-]*$").expect("valid regex"));
static DNS_LABEL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$").expect("valid regex"));
static DNS_SUBDOMAIN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
        .expect("valid regex")
});
static LABEL_NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$").expect("valid regex")
});
static ENV_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z_][A-Za-z0-9_]*$").expect("valid regex"));
/// The reference grammar of github.com/distribution/reference (`regexp.go`),
/// anchored: domain (host and optional port), path components with their
/// separators, tag, and digest.
static IMAGE: LazyLock<Regex> = LazyLock::new(|| {
    let alnum = r"[a-z0-9]+";
    let sep = r"(?:[._]|__|[-]+)";
    let path_component = format!("{alnum}(?:{sep}{alnum})*");
    let domain_component = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
    let domain_name = format!(r"{domain_component}(?:\.{domain_component})*");
    let ipv6 = r"\[(?:[a-fA-F0-9:]+)\]";
    let host = format!("(?:{domain_name}|{ipv6})");
    let domain = format!(r"{host}(?::[0-9]+)?");
    let tag = r"[\w][\w.-]{0,127}";
    let digest = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}";
    let name = format!("(?:{domain}/)?{path_component}(?:/{path_component})*");
    Regex::new(&format!(
        "^(?P<name>{name})(?::(?P<tag>{tag}))?(?:@(?P<digest>{digest}))?$"
    ))
    .expect("valid regex")
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_follow_the_docker_grammar() {
        let good = [
            "busybox",
            "library/busybox:1.36",
            "registry.local:5000/encode/x264:v2.1",
            "localhost/ebb-sleeper",
            "ghcr.io/org/team/tool@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "a__b/c-d--e.f:tag_1.2-x",
            "[::1]:5000/img",
        ];
        for image in good {
            assert_eq!(image_reference(image), Ok(()), "{image}");
        }
        let bad = [
            "",
            "UPPER/case",
            "name:",
            "-leading/dash",
            "trailing-/x",
            "double//slash",
            "with space",
            "img:tag@sha256:short",
            "img:.badtag",
            "img@md5",
        ];
        for image in bad {
            assert!(image_reference(image).is_err(), "{image} should be refused");
        }
        let long = format!("{}/img", "a".repeat(300));
        assert!(image_reference(&long).is_err());
    }

    #[test]
    fn durations_refuse_negative_and_denormal_values() {
        let d = |seconds, nanos| prost_types::Duration { seconds, nanos };
        assert_eq!(duration_ms(&d(1, 500_000_000)), Ok(1500));
        assert_eq!(duration_ms(&d(0, 999_999)), Ok(0));
        assert!(duration_ms(&d(-1, 0)).is_err());
        assert!(duration_ms(&d(0, -1)).is_err());
        assert!(duration_ms(&d(0, 1_000_000_000)).is_err());
        assert!(duration_ms(&d(i64::MAX, 0)).is_err());
    }

    #[test]
    fn limits_come_from_the_largest_catalog_type() {
        let l = Limits::builtin();
        let catalog = Catalog::builtin();
        let max_cpu = catalog
            .types()
            .map(|t| u64::from(t.vcpus) * 1000)
            .max()
            .unwrap();
        assert_eq!(l.max_request.cpu_millis, max_cpu);
        assert!(
            l.max_request.memory_mib >= 256 * 1024,
            "{:?}",
            l.max_request
        );
    }
}
