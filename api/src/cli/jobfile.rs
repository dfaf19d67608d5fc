//! The job file format `ebb job submit -f` reads (YAML or JSON), and its
//! translation into a `CreateJobRequest`. Durations are human-readable
//! (`30s`, `5m`, `2h`), bids decimal per IE-hour; unknown keys are errors.
//! The request is then checked with the server's own rules
//! ([`crate::validate`]) before anything is sent.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use ebb_proto::v1 as pb;
use serde::Deserialize;

use crate::convert::duration_to_wire;
use crate::error::Violation;

/// A job file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    /// Job name.
    pub name: String,
    /// Owning team.
    pub team: String,
    /// `critical` or `flex`.
    pub tier: TierName,
    /// 0-1000.
    #[serde(default)]
    pub priority: i32,
    /// Maximum price per IE-hour, decimal.
    #[serde(default)]
    pub bid_per_ie_hour: Option<f64>,
    /// Number of tasks.
    pub tasks: u32,
    /// Per-task request.
    pub request: RequestFile,
    /// Constraints every host must meet.
    #[serde(default)]
    pub hard_constraints: Vec<ConstraintFile>,
    /// Constraints that raise a host's score.
    #[serde(default)]
    pub soft_constraints: Vec<ConstraintFile>,
    /// All tasks in one round or none.
    #[serde(default)]
    pub gang: bool,
    /// Retry policy.
    #[serde(default)]
    pub retry: Option<RetryFile>,
    /// Disruption budget.
    #[serde(default)]
    pub disruption_budget: Option<BudgetFile>,
    /// e.g. `10m`.
    #[serde(default)]
    pub checkpoint_interval: Option<String>,
    /// e.g. `2h`.
    #[serde(default)]
    pub runtime_limit: Option<String>,
    /// e.g. `40m`.
    #[serde(default)]
    pub expected_runtime: Option<String>,
    /// What to run.
    pub container: ContainerFile,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Idempotency key; `--request-id` overrides it.
    #[serde(default)]
    pub request_id: Option<String>,
}

/// A tier by name.
#[derive(Copy, Clone, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TierName {
    /// Streaming-grade.
    Critical,
    /// Batch.
    Flex,
}

/// A resource request.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFile {
    /// Millicores.
    #[serde(default)]
    pub cpu_millis: u64,
    /// MiB.
    #[serde(default)]
    pub memory_mib: u64,
    /// MiB.
    #[serde(default)]
    pub disk_mib: u64,
    /// Mbps.
    #[serde(default)]
    pub network_mbps: u64,
    /// Whole GPUs.
    #[serde(default)]
    pub gpus: u32,
    /// Named scalars.
    #[serde(default)]
    pub scalars: BTreeMap<String, u64>,
}

/// A constraint: exactly one of its keys, e.g. `{unique_host: {}}` or
/// `{attribute_equals: {key: zone, value: us-east-1a}}`. (A struct rather
/// than an enum so YAML's single-key maps parse without YAML tags.)
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConstraintFile {
    /// Host attribute `key` equals `value`.
    #[serde(default)]
    pub attribute_equals: Option<KeyValue>,
    /// Host attribute `key` is one of `values`.
    #[serde(default)]
    pub attribute_in: Option<KeyValues>,
    /// At most one task per host (per job, or per `group`).
    #[serde(default)]
    pub unique_host: Option<UniqueHostFile>,
    /// Spread over zones.
    #[serde(default)]
    pub zone_balance: Option<ZoneBalanceFile>,
    /// GPU model.
    #[serde(default)]
    pub gpu_model: Option<String>,
}

/// `{key, value}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyValue {
    /// Attribute.
    pub key: String,
    /// Value.
    pub value: String,
}

/// `{key, values}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyValues {
    /// Attribute.
    pub key: String,
    /// Values.
    pub values: Vec<String>,
}

/// `{group}`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UniqueHostFile {
    /// Shared group.
    #[serde(default)]
    pub group: Option<String>,
}

/// `{max_skew}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneBalanceFile {
    /// Largest difference.
    pub max_skew: u32,
}

/// A retry policy.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryFile {
    /// Failures tolerated.
    pub max_retries: u32,
    /// e.g. `10s`.
    #[serde(default)]
    pub initial_backoff: Option<String>,
    /// e.g. `5m`.
    #[serde(default)]
    pub max_backoff: Option<String>,
}

/// A disruption budget: `max_tasks` or `max_percent`, and a window.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetFile {
    /// Tasks per window.
    #[serde(default)]
    pub max_tasks: Option<u32>,
    /// Percent per window.
    #[serde(default)]
    pub max_percent: Option<u32>,
    /// e.g. `1h`.
    pub window: String,
}

/// What to run.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerFile {
    /// Image reference.
    pub image: String,
    /// Argument vector.
    #[serde(default)]
    pub command: Vec<String>,
    /// Environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Capabilities to keep (all others are dropped).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Mount the image read-only.
    #[serde(default)]
    pub read_only_root_fs: bool,
    /// Process limit; none takes the executor's default.
    #[serde(default)]
    pub pids_limit: Option<u32>,
}

/// Reads a job file: JSON if it ends in `.json` (or starts with `{`), YAML otherwise.
pub fn read(path: &Path) -> anyhow::Result<JobFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text, path.extension().is_some_and(|e| e == "json"))
        .with_context(|| format!("parsing {}", path.display()))
}

/// Parses a job file's text.
pub fn parse(text: &str, json: bool) -> anyhow::Result<JobFile> {
    if json || text.trim_start().starts_with('{') {
        Ok(serde_json::from_str(text)?)
    } else {
        Ok(serde_yaml_ng::from_str(text)?)
    }
}

impl JobFile {
    /// The create request, or the file's field violations (named by the
    /// request paths the server would name).
    pub fn to_request(&self) -> Result<pb::CreateJobRequest, Vec<Violation>> {
        let mut bad = Vec::new();
        let mut dur = |field: &str, text: &Option<String>| -> Option<prost_types::Duration> {
            let t = text.as_ref()?;
            match humantime::parse_duration(t) {
                Ok(d) => Some(duration_to_wire(d.as_millis() as u64)),
                Err(e) => {
                    bad.push(Violation::new(
                        field,
                        format!("`{t}`: {e} (e.g. 30s, 5m, 2h)"),
                    ));
                    None
                }
            }
        };
        let retry = self.retry.as_ref().map(|r| pb::RetryPolicy {
            max_retries: r.max_retries,
            initial_backoff: dur("spec.retry.initial_backoff", &r.initial_backoff),
            max_backoff: dur("spec.retry.max_backoff", &r.max_backoff),
        });
        let disruption_budget = self
            .disruption_budget
            .as_ref()
            .map(|b| pb::DisruptionBudget {
                limit: match (b.max_tasks, b.max_percent) {
                    (Some(n), None) => Some(pb::disruption_budget::Limit::MaxTasks(n)),
                    (None, Some(p)) => Some(pb::disruption_budget::Limit::MaxPercent(p)),
                    _ => None,
                },
                window: dur("spec.disruption_budget.window", &Some(b.window.clone())),
            });
        let checkpoint_interval = dur("spec.checkpoint_interval", &self.checkpoint_interval);
        let runtime_limit = dur("spec.runtime_limit", &self.runtime_limit);
        let expected_runtime = dur("spec.expected_runtime", &self.expected_runtime);
        let bid = match self.bid_per_ie_hour {
            None => None,
            Some(b) => match crate::validate::bid_from_decimal(b) {
                Ok(m) => Some(m),
                Err(e) => {
                    bad.push(Violation::new("spec.bid_per_ie_hour", e));
                    None
                }
            },
        };
        let mut constraints = |list: &[ConstraintFile], field: &str| -> Vec<pb::Constraint> {
            use pb::constraint::Kind;
            let mut out = Vec::new();
            for (i, c) in list.iter().enumerate() {
                let mut kinds = Vec::new();
                if let Some(a) = &c.attribute_equals {
                    kinds.push(Kind::AttributeEquals(pb::AttributeEquals {
                        key: a.key.clone(),
                        value: a.value.clone(),
                    }));
                }
                if let Some(a) = &c.attribute_in {
                    kinds.push(Kind::AttributeIn(pb::AttributeIn {
                        key: a.key.clone(),
                        values: a.values.clone(),
                    }));
                }
                if let Some(u) = &c.unique_host {
                    kinds.push(Kind::UniqueHost(pb::UniqueHost {
                        group: u.group.clone().unwrap_or_default(),
                    }));
                }
                if let Some(z) = &c.zone_balance {
                    kinds.push(Kind::ZoneBalance(pb::ZoneBalance {
                        max_skew: z.max_skew,
                    }));
                }
                if let Some(m) = &c.gpu_model {
                    kinds.push(Kind::GpuModel(m.clone()));
                }
                if kinds.len() != 1 {
                    bad.push(Violation::new(
                        format!("spec.{field}[{i}]"),
                        "give exactly one of attribute_equals, attribute_in, unique_host, zone_balance, gpu_model",
                    ));
                }
                out.extend(
                    kinds
                        .into_iter()
                        .next()
                        .map(|k| pb::Constraint { kind: Some(k) }),
                );
            }
            out
        };
        let hard_constraints = constraints(&self.hard_constraints, "hard_constraints");
        let soft_constraints = constraints(&self.soft_constraints, "soft_constraints");
        if !bad.is_empty() {
            return Err(bad);
        }
        let r = &self.request;
        Ok(pb::CreateJobRequest {
            spec: Some(pb::JobSpec {
                name: self.name.clone(),
                team: self.team.clone(),
                tier: match self.tier {
                    TierName::Critical => pb::Tier::Critical,
                    TierName::Flex => pb::Tier::Flex,
                } as i32,
                priority: self.priority,
                bid_micros_per_ie_hour: bid,
                request: Some(pb::Resources {
                    cpu_millis: r.cpu_millis,
                    memory_mib: r.memory_mib,
                    disk_mib: r.disk_mib,
                    network_mbps: r.network_mbps,
                    gpus: r.gpus,
                    scalars: r.scalars.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                }),
                n_tasks: self.tasks,
                hard_constraints,
                soft_constraints,
                gang: self.gang,
                retry,
                disruption_budget,
                checkpoint_interval,
                container: Some(pb::ContainerSpec {
                    image: self.container.image.clone(),
                    command: self.container.command.clone(),
                    env: self
                        .container
                        .env
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    capabilities: self.container.capabilities.clone(),
                    read_only_root_fs: self.container.read_only_root_fs,
                    pids_limit: self.container.pids_limit.unwrap_or(0),
                }),
                runtime_limit,
                expected_runtime,
                labels: self
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            }),
            request_id: self.request_id.clone().unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate;

    #[test]
    fn shipped_examples_parse_and_validate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/jobs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if !matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "json")
            ) {
                continue;
            }
            let file = read(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            let req = file.to_request().unwrap();
            validate::create_job(&req, &validate::Limits::builtin())
                .unwrap_or_else(|v| panic!("{}: {v:?}", path.display()));
            n += 1;
        }
        assert!(n >= 2, "expected the shipped examples in {}", dir.display());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let base = "name: x\nteam: t\ntier: flex\ntasks: 1\nrequest: {cpu_millis: 1000, memory_mib: 1024}\ncontainer: {image: busybox}\n";
        assert!(parse(base, false).is_ok());
        assert!(parse(&format!("{base}colour: red\n"), false).is_err());
        assert!(parse(&base.replace("cpu_millis", "cpus"), false).is_err());
        let f = parse(
            &format!("{base}runtime_limit: soon\nbid_per_ie_hour: -1\n"),
            false,
        )
        .unwrap();
        let v = f.to_request().unwrap_err();
        let fields: Vec<&str> = v.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, vec!["spec.runtime_limit", "spec.bid_per_ie_hour"]);
    }
}
