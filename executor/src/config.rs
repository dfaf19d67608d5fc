//! The executor's configuration (identity, data directory, limits defaults,
//! log and retention knobs, the resource slice it offers, where its host sits
//! in the market, how it reaches the server) and the detection of the host's
//! CPU and memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest executor id: it is part of every container name, and Docker names
/// have no hard limit, but ids longer than a DNS label (63) are a typo.
const MAX_EXECUTOR_ID_LEN: usize = 63;

/// A configuration value that is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A field has a value it cannot have.
    #[error("invalid field `{field}`: {message}")]
    Invalid {
        /// The field's path.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The host's resources could not be read.
    #[error("cannot detect the host's resources: {message}")]
    Detect {
        /// What failed.
        message: String,
    },
}

/// A share of the machine offered to the scheduler, so several executors can
/// share one machine in tests and the demo. A field left out offers the whole
/// detected amount.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSlice {
    /// CPU to offer, in millicores.
    #[serde(default)]
    pub cpu_millis: Option<u64>,
    /// Memory to offer, in MiB.
    #[serde(default)]
    pub memory_mib: Option<u64>,
}

/// CPU and memory of a host (or of the slice an executor offers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostResources {
    /// CPU in millicores (1000 per logical CPU).
    pub cpu_millis: u64,
    /// Memory in MiB.
    pub memory_mib: u64,
}

impl HostResources {
    /// The machine's logical CPUs (as this process may use them) and total
    /// memory (`MemTotal` of `/proc/meminfo`).
    pub fn detect() -> Result<Self, ConfigError> {
        let n_cpus = std::thread::available_parallelism()
            .map_err(|err| ConfigError::Detect {
                message: format!("CPU count: {err}"),
            })?
            .get();
        let meminfo =
            std::fs::read_to_string("/proc/meminfo").map_err(|err| ConfigError::Detect {
                message: format!("reading /proc/meminfo: {err}"),
            })?;
        let memory_kib = parse_mem_total_kib(&meminfo).ok_or_else(|| ConfigError::Detect {
            message: "no `MemTotal:` line in /proc/meminfo".into(),
        })?;
        Ok(Self {
            cpu_millis: n_cpus as u64 * 1000,
            memory_mib: memory_kib / 1024,
        })
    }

    /// The slice of `self` that `slice` asks for; more than the host has is
    /// an error naming the field.
    pub fn slice(self, slice: &ResourceSlice) -> Result<Self, ConfigError> {
        let pick = |field: &'static str, want: Option<u64>, have: u64, unit: &str| match want {
            None => Ok(have),
            Some(0) => Err(ConfigError::Invalid {
                field,
                message: "must be greater than zero".into(),
            }),
            Some(want) if want > have => Err(ConfigError::Invalid {
                field,
                message: format!("{want} {unit} asked but the host has only {have} {unit}"),
            }),
            Some(want) => Ok(want),
        };
        Ok(Self {
            cpu_millis: pick(
                "resources.cpu_millis",
                slice.cpu_millis,
                self.cpu_millis,
                "millicores",
            )?,
            memory_mib: pick(
                "resources.memory_mib",
                slice.memory_mib,
                self.memory_mib,
                "MiB",
            )?,
        })
    }
}

/// `MemTotal` in KiB from the text of `/proc/meminfo`.
fn parse_mem_total_kib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let mut words = line.split_whitespace().skip(1);
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => Some(value),
        Some(_) => None,
    }
}

/// Where this executor's host sits in the market, as `register` reports it.
/// The defaults match the dev-mode server's built-in market (pool `demo` in
/// region `local`, m5.16xlarge reservations), so `ebb server` and
/// `ebb-executor` work together with no configuration at all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostConfig {
    /// The pool whose reservations this host belongs to.
    pub pool: String,
    /// The EC2 instance type the host is (the catalog gives its IE).
    pub instance_type: String,
    /// Availability zone.
    pub zone: String,
    /// Region.
    pub region: String,
    /// Free-form attributes for placement constraints.
    pub attributes: BTreeMap<String, String>,
    /// GPU model, required by the server when the host offers GPUs.
    pub gpu_model: Option<String>,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            pool: "demo".into(),
            instance_type: "m5.16xlarge".into(),
            zone: "local-a".into(),
            region: "local".into(),
            attributes: BTreeMap::new(),
            gpu_model: None,
        }
    }
}

/// How the executor reaches `ebb server`. The bearer token is not part of
/// the file (it is a secret): the binary takes it from `--token`/`EBB_TOKEN`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The server's gRPC address, `http://host:port` or `https://host:port`;
    /// with several replicas, their addresses comma-separated (a follower
    /// names the leader, and the executor attaches there).
    pub address: String,
    /// CA certificate (PEM) to verify an `https://` server with.
    pub ca_cert: Option<PathBuf>,
    /// How long one connection attempt (TCP, TLS, the `register` answer)
    /// may take, in ms.
    pub connect_timeout_ms: u64,
    /// Delay before the first reconnection attempt, in ms; it doubles per
    /// failed attempt up to `reconnect_max_ms`, with jitter.
    pub reconnect_initial_ms: u64,
    /// Longest delay between two reconnection attempts, in ms. Keep it well
    /// under the server's heartbeat timeout (15 s by default): a host that
    /// re-attaches within the timeout keeps its runs.
    pub reconnect_max_ms: u64,
}

impl Default for ServerConfig {
    /// 200 ms first retry: a restarting server is back within a second or
    /// two, and 10,000 executors retrying at once spread out by the jitter.
    /// 5 s cap: a host re-attaches within a third of the default 15 s
    /// heartbeat timeout, so a server restart never costs it its runs.
    /// 5 s connection timeout: a loopback or same-region connection takes
    /// milliseconds; anything slower is a sick network worth retrying.
    fn default() -> Self {
        Self {
            address: "http://127.0.0.1:7600".into(),
            ca_cert: None,
            connect_timeout_ms: 5_000,
            reconnect_initial_ms: 200,
            reconnect_max_ms: 5_000,
        }
    }
}

/// The executor's configuration. Every field has a default but
/// `executor_id`, which the binary takes from `--host-id` or the machine's
/// hostname when the file leaves it out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorConfig {
    /// This executor's id, which is also its host id on the server: labels
    /// and names every container it creates, so it must stay the same
    /// across restarts for adoption to work.
    #[serde(default)]
    pub executor_id: String,
    /// Where per-run scratch directories live (`<data_dir>/runs/<run>`).
    #[serde(default = "defaults::data_dir")]
    pub data_dir: PathBuf,
    /// Pids limit for runs whose spec sets none. 2048 stops a fork bomb long
    /// before it exhausts the host's pid space (32768 by default on Linux,
    /// shared by a dozen containers), while encoders and training data
    /// loaders, which use tens to a few hundred threads, never reach it.
    #[serde(default = "defaults::pids_limit")]
    pub default_pids_limit: u32,
    /// Lines of output kept per run after it ends.
    #[serde(default = "defaults::log_tail_lines")]
    pub log_tail_lines: u32,
    /// Bytes of output kept per run after it ends (the tail is cut to this).
    #[serde(default = "defaults::log_tail_bytes")]
    pub log_tail_bytes: usize,
    /// Cap on the engine's log file per container, in bytes.
    #[serde(default = "defaults::container_log_max_bytes")]
    pub container_log_max_bytes: u64,
    /// How long an exited container is kept before it is removed, in ms.
    /// Longer keeps `docker logs` and the scratch directory around for
    /// debugging; shorter frees disk sooner.
    #[serde(default = "defaults::retention_ms")]
    pub retention_ms: u64,
    /// How many ended runs the executor remembers (their log tail and final
    /// event) after their containers are removed; the oldest are forgotten.
    #[serde(default = "defaults::max_remembered_runs")]
    pub max_remembered_runs: usize,
    /// How long an image pull may take before the run fails with "image not
    /// available", in ms.
    #[serde(default = "defaults::image_pull_timeout_ms")]
    pub image_pull_timeout_ms: u64,
    /// Grace between SIGTERM and SIGKILL when the executor itself stops a run
    /// at its runtime limit, in ms.
    #[serde(default = "defaults::runtime_limit_grace_ms")]
    pub runtime_limit_grace_ms: u64,
    /// Grace between SIGTERM and SIGKILL for a run the server disowns (it
    /// refused a report about it as stale or foreign), in ms.
    #[serde(default = "defaults::disown_grace_ms")]
    pub disown_grace_ms: u64,
    /// The share of the machine this executor offers.
    #[serde(default)]
    pub resources: ResourceSlice,
    /// Where the host sits in the market.
    #[serde(default)]
    pub host: HostConfig,
    /// How to reach the server.
    #[serde(default)]
    pub server: ServerConfig,
}

mod defaults {
    use std::path::PathBuf;

    pub(super) fn data_dir() -> PathBuf {
        PathBuf::from("/var/lib/ebb-executor")
    }
    pub(super) fn pids_limit() -> u32 {
        2048
    }
    /// 1000 lines: a few screens, enough to see why a task failed.
    pub(super) fn log_tail_lines() -> u32 {
        1000
    }
    /// 64 KiB: 1000 lines of 64 bytes; bounds memory at 64 MiB for the
    /// default 1024 remembered runs.
    pub(super) fn log_tail_bytes() -> usize {
        64 * 1024
    }
    /// 64 MiB per container: a chatty task cannot fill the disk.
    pub(super) fn container_log_max_bytes() -> u64 {
        64 * 1024 * 1024
    }
    /// 10 minutes: long enough to look at a failed container, short enough
    /// that thousands of short encoding chunks do not pile up.
    pub(super) fn retention_ms() -> u64 {
        10 * 60 * 1000
    }
    /// 1024 ended runs: a few hours of short tasks on one host.
    pub(super) fn max_remembered_runs() -> usize {
        1024
    }
    /// 60 s: a pull from a nearby registry finishes well within it; one that
    /// has no registry to talk to fails in milliseconds anyway.
    pub(super) fn image_pull_timeout_ms() -> u64 {
        60_000
    }
    /// 10 s, Nomad's default `kill_timeout` is 5 s and Kubernetes' grace 30 s;
    /// a task over its limit gets a short chance to checkpoint.
    pub(super) fn runtime_limit_grace_ms() -> u64 {
        10_000
    }
    /// 10 s, as for the runtime limit: a run nobody accounts for should not
    /// hold capacity long, but may still checkpoint.
    pub(super) fn disown_grace_ms() -> u64 {
        10_000
    }
}

impl ExecutorConfig {
    /// A configuration with every default and this executor id.
    pub fn new(executor_id: impl Into<String>) -> Self {
        Self {
            executor_id: executor_id.into(),
            data_dir: defaults::data_dir(),
            default_pids_limit: defaults::pids_limit(),
            log_tail_lines: defaults::log_tail_lines(),
            log_tail_bytes: defaults::log_tail_bytes(),
            container_log_max_bytes: defaults::container_log_max_bytes(),
            retention_ms: defaults::retention_ms(),
            max_remembered_runs: defaults::max_remembered_runs(),
            image_pull_timeout_ms: defaults::image_pull_timeout_ms(),
            runtime_limit_grace_ms: defaults::runtime_limit_grace_ms(),
            disown_grace_ms: defaults::disown_grace_ms(),
            resources: ResourceSlice::default(),
            host: HostConfig::default(),
            server: ServerConfig::default(),
        }
    }

    /// Parses TOML, rejecting unknown keys, and validates.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config = Self::parse_toml(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML, rejecting unknown keys at every level, without
    /// validating: the binary applies its flags first, then validates.
    pub fn parse_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|err| ConfigError::Invalid {
            field: "(config file)",
            message: err.to_string(),
        })
    }

    /// Checks every field, naming the first wrong one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, message: &str| {
            Err(ConfigError::Invalid {
                field,
                message: message.into(),
            })
        };
        let id = &self.executor_id;
        let id_ok = !id.is_empty()
            && id.len() <= MAX_EXECUTOR_ID_LEN
            && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !id_ok {
            return invalid(
                "executor_id",
                "must be 1 to 63 characters of letters, digits, `-`, `_` or `.`, starting with a letter or digit",
            );
        }
        if !self.data_dir.is_absolute() {
            return invalid(
                "data_dir",
                "must be an absolute path (it is mounted into containers)",
            );
        }
        if self.default_pids_limit == 0 {
            return invalid("default_pids_limit", "must be greater than zero");
        }
        if self.log_tail_lines == 0 {
            return invalid("log_tail_lines", "must be greater than zero");
        }
        if self.log_tail_bytes == 0 {
            return invalid("log_tail_bytes", "must be greater than zero");
        }
        if self.container_log_max_bytes < 1024 {
            return invalid("container_log_max_bytes", "must be at least 1024");
        }
        if self.image_pull_timeout_ms == 0 {
            return invalid("image_pull_timeout_ms", "must be greater than zero");
        }
        for (field, value) in [
            ("host.pool", &self.host.pool),
            ("host.instance_type", &self.host.instance_type),
            ("host.zone", &self.host.zone),
            ("host.region", &self.host.region),
        ] {
            if value.trim().is_empty() {
                return invalid(field, "must not be empty");
            }
        }
        if self
            .host
            .gpu_model
            .as_deref()
            .is_some_and(|m| m.trim().is_empty())
        {
            return invalid("host.gpu_model", "must not be empty when given");
        }
        let server = &self.server;
        if server.address.split(',').any(|a| {
            let a = a.trim();
            !(a.starts_with("http://") || a.starts_with("https://"))
        }) {
            return invalid(
                "server.address",
                "must start with http:// or https:// (e.g. http://127.0.0.1:7600); several replicas are comma-separated",
            );
        }
        if server.connect_timeout_ms == 0 {
            return invalid("server.connect_timeout_ms", "must be greater than zero");
        }
        if server.reconnect_initial_ms == 0 {
            return invalid("server.reconnect_initial_ms", "must be greater than zero");
        }
        if server.reconnect_max_ms < server.reconnect_initial_ms {
            return invalid(
                "server.reconnect_max_ms",
                "must be at least server.reconnect_initial_ms",
            );
        }
        Ok(())
    }

    /// The directory holding per-run scratch directories.
    pub fn runs_dir(&self) -> PathBuf {
        self.data_dir.join("runs")
    }

    /// The resources this executor offers: the detected host, cut to the
    /// configured slice.
    pub fn offered_resources(&self) -> Result<HostResources, ConfigError> {
        HostResources::detect()?.slice(&self.resources)
    }

    pub(crate) fn retention(&self) -> Duration {
        Duration::from_millis(self.retention_ms)
    }

    pub(crate) fn scratch_dir(&self, slug: &str) -> PathBuf {
        Path::new(&self.runs_dir()).join(slug)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_parses_kib() {
        let meminfo = "MemTotal:       24683212 kB\nMemFree:        23000000 kB\n";
        assert_eq!(parse_mem_total_kib(meminfo), Some(24683212));
        assert_eq!(parse_mem_total_kib("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total_kib("MemTotal: 12 MB\n"), None);
    }

    #[test]
    fn detection_matches_the_machine() {
        let host = HostResources::detect().unwrap();
        // Independent source: the kernel's online CPU list and sysinfo-style
        // numbers from /proc, read differently from `detect`.
        let n_online = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap()
            .lines()
            .filter(|line| line.starts_with("processor"))
            .count() as u64;
        assert!(
            host.cpu_millis >= 1000 && host.cpu_millis <= n_online * 1000,
            "{host:?} vs {n_online} CPUs"
        );
        assert!(host.memory_mib > 64, "{host:?}");
    }

    #[test]
    fn slice_takes_less_and_refuses_more() {
        let host = HostResources {
            cpu_millis: 2000,
            memory_mib: 4096,
        };
        let half = host
            .slice(&ResourceSlice {
                cpu_millis: Some(1000),
                memory_mib: None,
            })
            .unwrap();
        assert_eq!(
            half,
            HostResources {
                cpu_millis: 1000,
                memory_mib: 4096
            }
        );
        let err = host
            .slice(&ResourceSlice {
                cpu_millis: None,
                memory_mib: Some(8192),
            })
            .unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    field: "resources.memory_mib",
                    ..
                }
            ),
            "{err}"
        );
        let err = host
            .slice(&ResourceSlice {
                cpu_millis: Some(0),
                memory_mib: None,
            })
            .unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    field: "resources.cpu_millis",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_rejected_at_every_level() {
        let err = ExecutorConfig::from_toml("executor_id = \"a\"\nretention = 5\n").unwrap_err();
        assert!(err.to_string().contains("retention"), "{err}");
        let err =
            ExecutorConfig::from_toml("executor_id = \"a\"\n[resources]\ncpus = 2\n").unwrap_err();
        assert!(err.to_string().contains("cpus"), "{err}");
        let err =
            ExecutorConfig::from_toml("executor_id = \"a\"\n[host]\nzones = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("zones"), "{err}");
        let err = ExecutorConfig::from_toml("executor_id = \"a\"\n[server]\ntoken = \"x\"\n")
            .unwrap_err();
        assert!(err.to_string().contains("token"), "{err}");
        let config =
            ExecutorConfig::from_toml("executor_id = \"host-1\"\n[resources]\ncpu_millis = 500\n")
                .unwrap();
        assert_eq!(config.resources.cpu_millis, Some(500));
        assert_eq!(config.default_pids_limit, 2048);
    }

    #[test]
    fn the_shipped_example_parses() {
        let text = include_str!("../../examples/executor.toml");
        let config = ExecutorConfig::from_toml(text).unwrap();
        assert_eq!(config.host.pool, "east");
        assert_eq!(config.resources.cpu_millis, Some(1000));
    }

    #[test]
    fn host_and_server_fields_are_checked() {
        /// A named edit of a valid configuration and the field it breaks.
        type Case = (&'static str, fn(&mut ExecutorConfig), &'static str);
        let cases: Vec<Case> = vec![
            ("empty pool", |c| c.host.pool = " ".into(), "host.pool"),
            ("empty zone", |c| c.host.zone.clear(), "host.zone"),
            (
                "no scheme",
                |c| c.server.address = "127.0.0.1:7600".into(),
                "server.address",
            ),
            (
                "cap below the first delay",
                |c| c.server.reconnect_max_ms = 10,
                "server.reconnect_max_ms",
            ),
            (
                "no connect timeout",
                |c| c.server.connect_timeout_ms = 0,
                "server.connect_timeout_ms",
            ),
        ];
        for (name, edit, field) in cases {
            let mut config = ExecutorConfig::new("host-1");
            edit(&mut config);
            match config.validate() {
                Err(ConfigError::Invalid { field: got, .. }) => assert_eq!(got, field, "{name}"),
                other => panic!("{name}: {other:?}"),
            }
        }
        ExecutorConfig::new("host-1").validate().unwrap();
    }

    #[test]
    fn executor_id_must_be_name_safe() {
        for bad in ["", "-a", "a b", "a/b", &"x".repeat(64)] {
            let err = ExecutorConfig::new(bad).validate().unwrap_err();
            assert!(
                matches!(
                    err,
                    ConfigError::Invalid {
                        field: "executor_id",
                        ..
                    }
                ),
                "{bad:?}"
            );
        }
        ExecutorConfig::new("host-1.pool_a").validate().unwrap();
    }
}
