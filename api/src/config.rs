//! `ebb server` configuration: a TOML file (`--config`), overridden by flags
//! and `EBB_*` environment variables. Every table refuses unknown keys, so a
//! typo is an error at startup rather than a silently ignored setting.
//!
//! With no file at all the server starts in dev mode: embedded store in
//! `./ebb-data`, a built-in demo market (one pool with four reserved
//! m5.16xlarge), loopback listeners, and no tokens (every caller is admin;
//! the server warns about it at startup).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use ebb_scheduler as core;
use serde::{Deserialize, Deserializer};

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// HTTP listen address (`/metrics`, `/healthz`, `/dashboard`).
    pub http_listen: SocketAddr,
    /// Where the embedded store keeps its file.
    pub data_dir: PathBuf,
    /// Optional TLS for the gRPC port.
    pub tls: Option<TlsConfig>,
    /// Bearer tokens and the principals they stand for.
    pub auth: AuthConfig,
    /// Executor liveness.
    pub executors: ExecutorConfig,
    /// Scheduling rounds.
    pub rounds: RoundConfig,
    /// Snapshots, retention.
    pub store: StoreConfig,
    /// Leader election among replicas (etcd store only).
    pub ha: HaConfig,
    /// Request limits.
    pub limits: LimitsConfig,
    /// Watch streams.
    pub watch: WatchConfig,
    /// Pools and their initial reservations.
    pub market: MarketSetup,
    /// Where reservations (and optionally streaming demand) come from: a
    /// static file or EC2. None: `market.pools` and `SetReservations`.
    pub capacity: Option<CapacitySetup>,
    /// The scheduler core's own knobs (placement policy, teams, market).
    pub scheduler: core::SchedulerConfig,
    /// Finance reports.
    pub finance: FinanceConfig,
}

/// Finance reports.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FinanceConfig {
    /// The reservations' effective hourly rate per IE (upfront amortized
    /// plus recurring), in USD. Unset: the catalog's on-demand price of the
    /// reference type stands in, and reports say so (idle cost is then an
    /// upper bound).
    pub reserved_usd_per_ie_hour: Option<f64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7600".parse().expect("valid address"),
            http_listen: "127.0.0.1:7601".parse().expect("valid address"),
            data_dir: PathBuf::from("./ebb-data"),
            tls: None,
            auth: AuthConfig::default(),
            executors: ExecutorConfig::default(),
            rounds: RoundConfig::default(),
            store: StoreConfig::default(),
            ha: HaConfig::default(),
            limits: LimitsConfig::default(),
            watch: WatchConfig::default(),
            market: MarketSetup::default(),
            capacity: None,
            scheduler: core::SchedulerConfig::default(),
            finance: FinanceConfig::default(),
        }
    }
}

/// TLS certificate and key (PEM files).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// Tokens. Empty means dev mode.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// One entry per token.
    pub tokens: Vec<TokenConfig>,
}

/// One bearer token and its principal. Give `token` or its hex `sha256`
/// (then the file holds no secret).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A name for logs (never the token).
    pub name: String,
    /// The token itself.
    #[serde(default)]
    pub token: Option<String>,
    /// Or its SHA-256, hex.
    #[serde(default)]
    pub sha256: Option<String>,
    /// `team`, `finance`, `admin`, `executor` or `autoscaler`.
    pub role: Role,
    /// For `team`: which team.
    #[serde(default)]
    pub team: Option<String>,
}

/// What a principal may do.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A member of one team: creates, sees and cancels that team's jobs.
    Team,
    /// Reads the market and the ledger.
    Finance,
    /// Everything except attaching as an executor.
    Admin,
    /// Attaches executor streams, nothing else.
    Executor,
    /// Reports streaming demand, forecasts and failovers; reads the market.
    Autoscaler,
}

/// Executor liveness: see `executor.proto`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutorConfig {
    /// How often an executor must send something.
    #[serde(deserialize_with = "duration")]
    pub heartbeat_interval: Duration,
    /// Intervals without a message before the host is declared lost.
    pub missed_heartbeats: u32,
}

impl Default for ExecutorConfig {
    /// 5 s × 3: a host is declared lost 15 s after it goes silent — long
    /// enough to ride out a GC pause or a brief partition, short enough that
    /// its work is requeued well before an encoding chunk's runtime.
    fn default() -> Self {
        ExecutorConfig {
            heartbeat_interval: Duration::from_secs(5),
            missed_heartbeats: 3,
        }
    }
}

impl ExecutorConfig {
    /// Silence after which a host is lost.
    pub fn timeout(&self) -> Duration {
        self.heartbeat_interval * self.missed_heartbeats
    }
}

/// Scheduling rounds.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoundConfig {
    /// Shortest time between two rounds. A round runs when something
    /// changed or a core timeout is due, at most this often.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// Inputs applied between two rounds at most, so a flood of reports
    /// cannot starve placement.
    pub max_inputs_per_batch: usize,
}

impl Default for RoundConfig {
    /// 50 ms: placement latency well under a second, while a busy server
    /// still batches hundreds of inputs per round. 4,096 inputs per batch
    /// bound one batch's fsync to a few MiB.
    fn default() -> Self {
        RoundConfig {
            interval: Duration::from_millis(50),
            max_inputs_per_batch: 4096,
        }
    }
}

/// Snapshots and retention.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Write a snapshot (and compact the log) after this many records.
    pub snapshot_every_records: u64,
    /// Or after this many log bytes.
    pub snapshot_every_bytes: u64,
    /// Finished jobs are kept this long, then forgotten and compacted out.
    #[serde(deserialize_with = "duration")]
    pub finished_job_retention: Duration,
    /// How often the ledger is sampled for range queries.
    #[serde(deserialize_with = "duration")]
    pub ledger_sample_interval: Duration,
    /// How long ledger samples are kept.
    #[serde(deserialize_with = "duration")]
    pub ledger_retention: Duration,
    /// Samples older than this are down-sampled to one per
    /// `ledger_downsample_step` (samples are cumulative, so ranges stay exact;
    /// only their resolution coarsens).
    #[serde(deserialize_with = "duration")]
    pub ledger_downsample_after: Duration,
    /// The resolution kept after `ledger_downsample_after`.
    #[serde(deserialize_with = "duration")]
    pub ledger_downsample_step: Duration,
    /// Which store keeps the state.
    pub backend: StoreBackend,
    /// etcd client endpoints (`http://host:2379`), for `backend = "etcd"`.
    pub etcd_endpoints: Vec<String>,
    /// The key prefix everything lives under in etcd, so one etcd cluster
    /// can hold several Ebb installations (or serve other tenants).
    pub etcd_prefix: String,
    /// CA certificate (PEM) that signed etcd's server certificate; needed
    /// for `https://` endpoints.
    pub etcd_ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's `--client-cert-auth`, with
    /// `etcd_client_key`.
    pub etcd_client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub etcd_client_key: Option<PathBuf>,
    /// etcd user (etcd's `auth enable`), with `etcd_password_file`.
    pub etcd_user: Option<String>,
    /// A file holding the etcd user's password (trailing newline ignored),
    /// so the config file itself holds no secret.
    pub etcd_password_file: Option<PathBuf>,
}

/// Leader election among `ebb server` replicas sharing one etcd: one leads
/// (schedules, accepts writes, attaches executors); the others redirect
/// callers to it and take over when its lease expires.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HaConfig {
    /// The address callers and executors are redirected to while this
    /// replica leads (`http://host:port`, `https://` with TLS). Default:
    /// the gRPC listen address, when it names one host.
    pub advertise_url: Option<String>,
    /// The leader's etcd lease: how long after its last renewal a silent
    /// leader (crashed, paused, cut off) is replaced.
    #[serde(deserialize_with = "duration")]
    pub lease_ttl: Duration,
    /// After taking over (or restarting), how long the new leader waits for
    /// the hosts it knows to re-attach and report their runs before it plans
    /// rounds without the ones still missing. It plans as soon as all are
    /// back.
    #[serde(deserialize_with = "duration")]
    pub reconcile_window: Duration,
}

impl Default for HaConfig {
    /// A 5 s lease: a dead leader is replaced in 5–7 s, and a healthy one
    /// renews it three times per TTL, riding out a lost renewal or a second
    /// of etcd trouble. 10 s to reconcile: executors retry every ≤ 5 s
    /// (their back-off cap), so every live host is back in time.
    fn default() -> Self {
        HaConfig {
            advertise_url: None,
            lease_ttl: Duration::from_secs(5),
            reconcile_window: Duration::from_secs(10),
        }
    }
}

/// Where the state lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// One redb file in `data_dir`: zero setup, one server.
    #[default]
    Embedded,
    /// etcd (`store.etcd_endpoints`): production.
    Etcd,
}

impl Default for StoreConfig {
    /// 10,000 records or 64 MiB between snapshots keeps a restart's replay
    /// under a second or two; a day of finished jobs lets teams inspect
    /// yesterday's runs; 1-minute ledger samples give finance's dashboard
    /// minute resolution for a week (~10k samples), then hourly samples
    /// (~9k a year) kept 400 days for year-over-year comparisons.
    fn default() -> Self {
        StoreConfig {
            snapshot_every_records: 10_000,
            snapshot_every_bytes: 64 << 20,
            finished_job_retention: Duration::from_secs(24 * 3600),
            ledger_sample_interval: Duration::from_secs(60),
            ledger_retention: Duration::from_secs(400 * 24 * 3600),
            ledger_downsample_after: Duration::from_secs(7 * 24 * 3600),
            ledger_downsample_step: Duration::from_secs(3600),
            backend: StoreBackend::Embedded,
            etcd_endpoints: Vec::new(),
            etcd_prefix: "/ebb/".into(),
            etcd_ca_cert: None,
            etcd_client_cert: None,
            etcd_client_key: None,
            etcd_user: None,
            etcd_password_file: None,
        }
    }
}

/// Request limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest gRPC message accepted or sent.
    pub max_message_bytes: usize,
    /// Tasks the server holds at most (live and retained); creates beyond
    /// it are RESOURCE_EXHAUSTED.
    pub max_tasks_known: u64,
    /// Unfinished tasks one team may have; unset is unlimited.
    pub max_live_tasks_per_team: Option<u64>,
}

impl Default for LimitsConfig {
    /// 16 MiB messages carry a full page of 1,000 tasks with reasons and a
    /// large log tail; 5 M tasks known stays within a few GiB of memory
    /// (docs/BENCHMARKS.md measures RSS at 1 M).
    fn default() -> Self {
        LimitsConfig {
            max_message_bytes: 16 << 20,
            max_tasks_known: 5_000_000,
            max_live_tasks_per_team: None,
        }
    }
}

/// Watch streams.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchConfig {
    /// Job events kept for resuming watches; a resume from an older cursor
    /// gets a fresh snapshot.
    pub retained_events: usize,
}

impl Default for WatchConfig {
    /// 500,000 events (~100 MiB): a few minutes of a 100,000-task job's
    /// changes, enough for a client to reconnect.
    fn default() -> Self {
        WatchConfig {
            retained_events: 500_000,
        }
    }
}

/// A reservation source (`[capacity]`): exactly one of `static_file` and
/// `[capacity.ec2]`. Its pools become the market's pools (a
/// `[[market.pools]]` entry with the same id may set their headroom), its
/// reservations replace theirs on every refresh, and, with
/// `streaming_demand`, its streaming figure (the EC2 fleet tagged as
/// streaming, or the static file's demand curve) is the pools' streaming
/// demand.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacitySetup {
    /// A static reservations file (format: `examples/reservations.toml`),
    /// read again on every refresh so edits take effect.
    #[serde(default)]
    pub static_file: Option<PathBuf>,
    /// EC2: DescribeReservedInstances, DescribeInstances (tags classify the
    /// fleet) and DescribeInstanceTypes, per region.
    #[cfg(feature = "ec2")]
    #[serde(default)]
    pub ec2: Option<crate::capacity::Ec2Config>,
    /// How often the source is read.
    #[serde(default = "default_refresh_interval", deserialize_with = "duration")]
    pub refresh_interval: Duration,
    /// Feed the source's streaming figure to the market as streaming demand
    /// (turn off when an autoscaler reports demand through the API).
    #[serde(default = "yes")]
    pub streaming_demand: bool,
}

/// One minute: reservations change on the scale of days, the streaming
/// fleet on the scale of minutes, and EC2's Describe calls are rate-limited
/// per account, so a minute keeps demand current without crowding the quota.
fn default_refresh_interval() -> Duration {
    Duration::from_secs(60)
}

fn yes() -> bool {
    true
}

impl CapacitySetup {
    /// Checks that exactly one source is named.
    fn validate(&self) -> anyhow::Result<()> {
        #[cfg(feature = "ec2")]
        let n_ec2 = usize::from(self.ec2.is_some());
        #[cfg(not(feature = "ec2"))]
        let n_ec2 = 0;
        anyhow::ensure!(
            usize::from(self.static_file.is_some()) + n_ec2 == 1,
            "capacity: give exactly one of `static_file` and `[capacity.ec2]`"
        );
        anyhow::ensure!(
            !self.refresh_interval.is_zero(),
            "capacity.refresh_interval must be greater than zero"
        );
        #[cfg(feature = "ec2")]
        if let Some(ec2) = &self.ec2 {
            ec2.validate().map_err(|e| match e {
                crate::capacity::SourceError::Config { field, message } => {
                    anyhow::anyhow!("invalid field `capacity.{field}`: {message}")
                }
                other => anyhow::anyhow!(other),
            })?;
        }
        Ok(())
    }
}

/// Pools the server configures at startup.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MarketSetup {
    /// Pools. Each is (re)configured at startup when its spec changed; its
    /// reservations seed the pool the first time it is configured, after
    /// which `SetReservations` owns them.
    pub pools: Vec<PoolSetup>,
}

impl Default for MarketSetup {
    /// The demo market: one pool `demo` in region `local` with four
    /// reserved m5.16xlarge (4 IE), so a new user sees the market work
    /// without writing a file.
    fn default() -> Self {
        MarketSetup {
            pools: vec![PoolSetup {
                id: core::PoolId::from("demo"),
                region: "local".into(),
                headroom: core::HeadroomPolicy::default(),
                reservations: vec![core::Reservation::new("m5.16xlarge", 4)],
            }],
        }
    }
}

/// One pool.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSetup {
    /// Pool id; hosts name it when they register.
    pub id: core::PoolId,
    /// The region the pool's capacity is in.
    pub region: String,
    /// Headroom kept for streaming.
    #[serde(default)]
    pub headroom: core::HeadroomPolicy,
    /// Initial reservations.
    #[serde(default)]
    pub reservations: Vec<core::Reservation>,
}

impl PoolSetup {
    /// The core's pool spec.
    pub fn spec(&self) -> core::PoolSpec {
        core::PoolSpec {
            id: self.id.clone(),
            region: self.region.clone(),
            headroom: self.headroom.clone(),
        }
    }
}

/// Parses a humantime duration (`5s`, `250ms`, `24h`).
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

impl Config {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Config::from_toml(&text).with_context(|| format!("parsing config {}", path.display()))
    }

    /// Parses a configuration. With a `[capacity]` source and no `[market]`
    /// table, the pools are the source's alone (no demo pool).
    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        let mut config: Config = toml::from_str(text)?;
        if config.capacity.is_some() {
            let table: toml::Table = toml::from_str(text)?;
            if !table.contains_key("market") {
                config.market.pools.clear();
            }
        }
        Ok(config)
    }

    /// Where callers are redirected while this replica leads:
    /// `ha.advertise_url`, or the listen address when it names one host.
    pub fn advertise_url(&self) -> anyhow::Result<String> {
        if let Some(url) = &self.ha.advertise_url {
            anyhow::ensure!(
                url.starts_with("http://") || url.starts_with("https://"),
                "ha.advertise_url must start with http:// or https:// (got {url:?})"
            );
            return Ok(url.clone());
        }
        anyhow::ensure!(
            !self.listen.ip().is_unspecified(),
            "ha.advertise_url is required when listen ({}) is a wildcard address: other replicas redirect callers to it",
            self.listen
        );
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        Ok(format!("{scheme}://{}", self.listen))
    }

    /// The etcd store's credentials, read from the configured files.
    pub fn etcd_access(&self) -> anyhow::Result<crate::store::etcd::EtcdAccess> {
        let s = &self.store;
        let user = match (&s.etcd_user, &s.etcd_password_file) {
            (Some(u), Some(f)) => {
                let p = std::fs::read_to_string(f)
                    .with_context(|| format!("reading store.etcd_password_file {}", f.display()))?;
                Some((u.clone(), p.trim_end_matches(['\n', '\r']).to_owned()))
            }
            _ => None,
        };
        Ok(crate::store::etcd::EtcdAccess {
            ca_cert: s.etcd_ca_cert.clone(),
            client_cert: s.etcd_client_cert.clone().zip(s.etcd_client_key.clone()),
            user,
        })
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.executors.heartbeat_interval.is_zero(),
            "executors.heartbeat_interval must be greater than zero"
        );
        anyhow::ensure!(
            self.executors.missed_heartbeats >= 1,
            "executors.missed_heartbeats must be at least 1"
        );
        anyhow::ensure!(
            self.rounds.max_inputs_per_batch >= 1,
            "rounds.max_inputs_per_batch must be at least 1"
        );
        anyhow::ensure!(
            self.store.snapshot_every_records >= 1,
            "store.snapshot_every_records must be at least 1"
        );
        anyhow::ensure!(
            !self.store.ledger_sample_interval.is_zero(),
            "store.ledger_sample_interval must be greater than zero"
        );
        anyhow::ensure!(
            self.store.ledger_downsample_step >= self.store.ledger_sample_interval,
            "store.ledger_downsample_step must be at least store.ledger_sample_interval"
        );
        if self.store.backend == StoreBackend::Etcd {
            anyhow::ensure!(
                !self.store.etcd_endpoints.is_empty(),
                "store.etcd_endpoints must name at least one endpoint when store.backend is \"etcd\""
            );
            anyhow::ensure!(
                self.store.etcd_prefix.starts_with('/'),
                "store.etcd_prefix must start with \"/\" (e.g. \"/ebb/\")"
            );
            anyhow::ensure!(
                self.store.etcd_client_cert.is_some() == self.store.etcd_client_key.is_some(),
                "store.etcd_client_cert and store.etcd_client_key go together: set both or neither"
            );
            anyhow::ensure!(
                self.store.etcd_user.is_some() == self.store.etcd_password_file.is_some(),
                "store.etcd_user and store.etcd_password_file go together: set both or neither"
            );
            anyhow::ensure!(
                self.ha.lease_ttl >= Duration::from_secs(2),
                "ha.lease_ttl must be at least 2s (etcd leases are whole seconds, renewed a third of the way through)"
            );
            self.advertise_url()?;
        }
        if let Some(rate) = self.finance.reserved_usd_per_ie_hour {
            anyhow::ensure!(
                (0.0..1e9).contains(&rate),
                "finance.reserved_usd_per_ie_hour must be a non-negative number below 10^9"
            );
        }
        anyhow::ensure!(
            self.limits.max_message_bytes >= 64 * 1024,
            "limits.max_message_bytes must be at least 64 KiB"
        );
        anyhow::ensure!(
            self.watch.retained_events >= 1,
            "watch.retained_events must be at least 1"
        );
        for (i, t) in self.auth.tokens.iter().enumerate() {
            anyhow::ensure!(
                t.token.is_some() != t.sha256.is_some(),
                "auth.tokens[{i}] ({}): give exactly one of `token` and `sha256`",
                t.name
            );
            if let Some(h) = &t.sha256 {
                anyhow::ensure!(
                    h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()),
                    "auth.tokens[{i}].sha256 ({}): must be 64 hex digits",
                    t.name
                );
            }
            anyhow::ensure!(
                (t.role == Role::Team) == t.team.is_some(),
                "auth.tokens[{i}] ({}): `team` is required for role `team` and only for it",
                t.name
            );
        }
        if let Some(c) = &self.capacity {
            c.validate()?;
            for (i, p) in self.market.pools.iter().enumerate() {
                anyhow::ensure!(
                    p.reservations.is_empty(),
                    "market.pools[{i}].reservations ({}): reservations come from the [capacity] source",
                    p.id
                );
            }
        }
        self.scheduler
            .validate()
            .map_err(|e| anyhow::anyhow!("scheduler: {e}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_errors_at_every_level() {
        let cases = [
            ("top level", "lisen = \"127.0.0.1:1\""),
            ("executors", "[executors]\nheartbeat = \"5s\""),
            ("rounds", "[rounds]\nintervall = \"5s\""),
            ("store", "[store]\nsnapshots = 3"),
            ("ha", "[ha]\nlease = \"5s\""),
            ("limits", "[limits]\nmax_msg = 3"),
            ("watch", "[watch]\nevents = 3"),
            (
                "token",
                "[[auth.tokens]]\nname = \"a\"\ntoken = \"x\"\nrole = \"admin\"\nteem = \"x\"",
            ),
            ("tls", "[tls]\ncert = \"a\"\nkey = \"b\"\nca = \"c\""),
            (
                "pool",
                "[[market.pools]]\nid = \"p\"\nregion = \"r\"\nzone = \"z\"",
            ),
            (
                "reservation",
                "[[market.pools]]\nid = \"p\"\nregion = \"r\"\n[[market.pools.reservations]]\ninstance_type = \"m5.large\"\ncount = 1\ncost = 2",
            ),
            ("scheduler", "[scheduler]\nkill_grase = 3"),
            ("finance", "[finance]\nreserved_rate = 2.0"),
            (
                "capacity",
                "[capacity]\nstatic_file = \"r.toml\"\nrefresh = \"1m\"",
            ),
            ("capacity.ec2", "[capacity.ec2]\nendpoint = \"http://x\""),
            (
                "capacity.ec2.pool",
                "[[capacity.ec2.pool]]\nid = \"p\"\nregion = \"r\"\nzones = \"z\"",
            ),
        ];
        for (name, text) in cases {
            let r: Result<Config, _> = toml::from_str(text);
            assert!(r.is_err(), "{name}: unknown key accepted");
        }
        let ok: Config = toml::from_str(
            "[executors]\nheartbeat_interval = \"2s\"\n[[market.pools]]\nid = \"p\"\nregion = \"r\"\n[[market.pools.reservations]]\ninstance_type = \"m5.large\"\ncount = 1",
        )
        .unwrap();
        assert_eq!(ok.executors.timeout(), Duration::from_secs(6));
        assert_eq!(ok.market.pools[0].reservations.len(), 1);
        let ok = Config::from_toml(
            "[finance]\nreserved_usd_per_ie_hour = 2.5\n[store]\nledger_downsample_after = \"2d\"",
        )
        .unwrap();
        assert_eq!(ok.finance.reserved_usd_per_ie_hour, Some(2.5));
        assert_eq!(
            ok.store.ledger_downsample_after,
            Duration::from_secs(2 * 24 * 3600)
        );
        ok.validate().unwrap();
        let mut bad = ok;
        bad.finance.reserved_usd_per_ie_hour = Some(-1.0);
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("finance.reserved_usd_per_ie_hour"), "{e}");
    }

    #[test]
    fn the_store_backend_is_embedded_or_etcd_with_endpoints() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.store.backend, StoreBackend::Embedded);
        let c = Config::from_toml(
            "[store]\nbackend = \"etcd\"\netcd_endpoints = [\"http://127.0.0.1:2379\"]\netcd_prefix = \"/ebb-prod/\"",
        )
        .unwrap();
        assert_eq!(c.store.backend, StoreBackend::Etcd);
        assert_eq!(c.store.etcd_endpoints, ["http://127.0.0.1:2379"]);
        c.validate().unwrap();
        let e = Config::from_toml("[store]\nbackend = \"etcd\"")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("store.etcd_endpoints"), "{e}");
        let e = Config::from_toml(
            "[store]\nbackend = \"etcd\"\netcd_endpoints = [\"x\"]\netcd_prefix = \"ebb\"",
        )
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("store.etcd_prefix"), "{e}");
        assert!(Config::from_toml("[store]\nbackend = \"zookeeper\"").is_err());
        assert!(Config::from_toml("[store]\netcd_endpoint = \"x\"").is_err());
    }

    #[test]
    fn a_capacity_source_replaces_the_demo_pool_and_owns_reservations() {
        let c = Config::from_toml("[capacity]\nstatic_file = \"r.toml\"").unwrap();
        assert!(c.market.pools.is_empty(), "the demo pool is gone");
        assert_eq!(
            c.capacity.as_ref().unwrap().refresh_interval,
            Duration::from_secs(60)
        );
        c.validate().unwrap();
        // Headroom for a source pool may be set; reservations may not.
        let c = Config::from_toml(
            "[capacity]\nstatic_file = \"r.toml\"\n[[market.pools]]\nid = \"p\"\nregion = \"r\"\n[[market.pools.reservations]]\ninstance_type = \"m5.large\"\ncount = 1",
        )
        .unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("market.pools[0].reservations"), "{e}");
        // Neither source, or both, is an error naming the table.
        let mut c = Config::from_toml("[capacity]\nrefresh_interval = \"5s\"").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("exactly one of `static_file`"), "{e}");
        c.capacity.as_mut().unwrap().refresh_interval = Duration::ZERO;
        c.capacity.as_mut().unwrap().static_file = Some("r.toml".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("capacity.refresh_interval"), "{e}");
    }

    #[test]
    fn the_readme_example_config_parses() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("a production file looks like:\n\n```toml\n")
            .expect("the README shows a config");
        let body = &readme[start..];
        let body = &body[body.find("```toml\n").unwrap() + 8..];
        let body = &body[..body.find("```").unwrap()];
        let c: Config = toml::from_str(body).unwrap();
        c.validate().unwrap();
        assert_eq!(c.auth.tokens[0].role, Role::Team);
        assert_eq!(c.market.pools[0].reservations[0].count, 1200);
    }

    #[test]
    fn the_default_is_valid_dev_mode_with_a_demo_pool() {
        let c = Config::default();
        c.validate().unwrap();
        assert!(c.auth.tokens.is_empty());
        assert_eq!(c.listen.to_string(), "127.0.0.1:7600");
        assert_eq!(c.market.pools.len(), 1);
    }
}
