//! The `ebb` command line: `ebb server` and the client commands (`job`,
//! `capacity`, `price`, `ledger`, `report`). Client commands find the server with
//! `--addr`/`EBB_ADDR` and authenticate with `--token`/`EBB_TOKEN`; errors
//! print the server's message and every offending field, and exit non-zero.

pub mod jobfile;
pub(crate) mod output;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use ebb_proto::v1 as pb;
use ebb_proto::v1::job_service_client::JobServiceClient;
use ebb_proto::v1::market_service_client::MarketServiceClient;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

use crate::error::Violation;

/// The `ebb` command.
#[derive(Debug, Parser)]
#[command(
    name = "ebb",
    version,
    about = "Ebb: an internal spot market for idle reserved capacity"
)]
pub struct Cli {
    #[command(subcommand)]
    /// What to do.
    pub command: Command,
}

/// Top-level commands.
#[derive(Clone, Debug, Subcommand)]
pub enum Command {
    /// Run the control plane (gRPC on 127.0.0.1:7600; metrics and the finance dashboard on 127.0.0.1:7601).
    Server(ServerArgs),
    /// Submit, inspect, watch and cancel jobs.
    Job {
        #[command(flatten)]
        /// Where the server is.
        conn: Conn,
        #[command(subcommand)]
        /// Which job command.
        command: JobCommand,
    },
    /// Pools: reserved, streaming, headroom, supply, leased and idle IE.
    Capacity {
        #[command(flatten)]
        /// Where the server is.
        conn: Conn,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Clearing prices per pool.
    Price {
        #[command(flatten)]
        /// Where the server is.
        conn: Conn,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// IE-hours held, charges and work lost to preemption over a time range.
    Ledger(LedgerArgs),
    /// Report streaming demand or a regional failover, as a streaming
    /// autoscaler does (admin or autoscaler principals).
    Demand {
        #[command(flatten)]
        /// Where the server is.
        conn: Conn,
        #[command(subcommand)]
        /// Which report.
        command: DemandCommand,
    },
    /// Finance reports: reservation utilization, idle cost, savings, chargeback.
    Report {
        #[command(flatten)]
        /// Where the server is.
        conn: Conn,
        #[command(subcommand)]
        /// Which report.
        command: ReportCommand,
    },
}

/// `ebb report ...` (finance or admin token).
#[derive(Clone, Debug, Subcommand)]
pub enum ReportCommand {
    /// Reserved vs streaming vs batch vs idle IE-hours, utilization %, idle
    /// cost and savings, per pool, region, family or team.
    Utilization(ReportArgs),
    /// Per team: IE-hours, internal charges, what the same capacity costs on
    /// demand, savings, and work lost to preemption.
    Chargeback(ReportArgs),
}

/// `ebb report` flags.
#[derive(Clone, Debug, Args)]
pub struct ReportArgs {
    /// Range start (RFC 3339, e.g. 2026-12-01T00:00:00Z); default: 24 h before the end.
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    pub from: Option<std::time::SystemTime>,
    /// Range end (RFC 3339); default: now.
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    pub to: Option<std::time::SystemTime>,
    /// Group rows by (default: pool for utilization, team for chargeback).
    #[arg(long, value_enum)]
    pub by: Option<ReportBy>,
    /// One row per step and group (e.g. 1h); default: one row per group over the range.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub step: Option<Duration>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// Report grouping.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReportBy {
    /// One row per pool.
    Pool,
    /// One row per region.
    Region,
    /// One row per instance family.
    Family,
    /// One row per team (batch figures only).
    Team,
}

/// `ebb server` flags; each overrides the config file and has an `EBB_*` variable.
#[derive(Clone, Debug, Args)]
pub struct ServerArgs {
    /// TOML configuration file (unknown keys are errors).
    #[arg(long, env = "EBB_CONFIG")]
    pub config: Option<PathBuf>,
    /// gRPC listen address.
    #[arg(long, env = "EBB_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// HTTP listen address (/metrics, /healthz, the finance /dashboard).
    #[arg(long, env = "EBB_HTTP_LISTEN")]
    pub http_listen: Option<std::net::SocketAddr>,
    /// Data directory of the embedded store.
    #[arg(long, env = "EBB_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where the state lives: `embedded` (a file in the data directory) or
    /// `etcd` (needs --etcd-endpoints or `store.etcd_endpoints`).
    #[arg(long = "store", env = "EBB_STORE", value_enum)]
    pub store: Option<crate::config::StoreBackend>,
    /// etcd client endpoints, comma-separated (`http://10.0.0.1:2379,...`).
    #[arg(long, env = "EBB_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Option<Vec<String>>,
    /// The key prefix in etcd (default `/ebb/`).
    #[arg(long, env = "EBB_ETCD_PREFIX")]
    pub etcd_prefix: Option<String>,
    /// TLS certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "EBB_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "EBB_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "EBB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Log output.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `ebb demand ...`
#[derive(Clone, Debug, Subcommand)]
pub enum DemandCommand {
    /// The IE streaming uses in a pool now; supply shrinks (and batch work
    /// is reclaimed) or grows at the next round.
    Report {
        /// The pool.
        #[arg(long)]
        pool: String,
        /// Streaming demand in instance equivalents (e.g. `4` or `2.5`).
        #[arg(long)]
        ie: f64,
    },
    /// A region failed over (its traffic moves to the others), or, with
    /// `--end`, came back.
    Failover {
        /// The region.
        #[arg(long)]
        region: String,
        /// The failover ended (failback).
        #[arg(long)]
        end: bool,
    },
}

/// Where the server is and who we are.
#[derive(Clone, Debug, Args)]
pub struct Conn {
    /// Server address; with several replicas, any of them or all,
    /// comma-separated (`http://a:7600,http://b:7600`): a follower's answer
    /// names the leader and the command is sent there.
    #[arg(
        long,
        env = "EBB_ADDR",
        default_value = "http://127.0.0.1:7600",
        global = true
    )]
    pub addr: String,
    /// Bearer token.
    #[arg(long, env = "EBB_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) to verify an https:// server with.
    #[arg(long, env = "EBB_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
}

/// `ebb job ...`
#[derive(Clone, Debug, Subcommand)]
pub enum JobCommand {
    /// Submit a job file (YAML or JSON), checked here with the server's rules first.
    Submit {
        /// The job file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Idempotency key (overrides the file's `request_id`): retrying returns the same job.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// List jobs.
    List {
        /// Only this team's.
        #[arg(long)]
        team: Option<String>,
        /// Only jobs in these phases.
        #[arg(long, value_enum)]
        phase: Vec<PhaseArg>,
        /// Only jobs with this label (key=value), repeatable.
        #[arg(long, value_parser = parse_label)]
        label: Vec<(String, String)>,
        /// At most this many (follows page tokens).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// A job's summary.
    Get {
        /// Job id.
        job: u64,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// A job's tasks.
    Tasks {
        /// Job id.
        job: u64,
        /// Only tasks in this state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Cancel a job.
    Cancel {
        /// Job id.
        job: u64,
        /// SIGTERM-to-SIGKILL grace, e.g. 30s.
        #[arg(long, value_parser = humantime::parse_duration)]
        grace: Option<Duration>,
    },
    /// Follow a job with a progress bar until it ends.
    Watch {
        /// Job id.
        job: u64,
    },
    /// A task's container output.
    Logs {
        /// Job id.
        job: u64,
        /// Task index.
        task: u32,
        /// Run attempt (default: the latest).
        #[arg(long, default_value_t = 0)]
        attempt: u32,
        /// Lines from the end.
        #[arg(long, default_value_t = 100)]
        tail: u32,
    },
    /// Why a job (or one task) is pending.
    Why {
        /// Job id.
        job: u64,
        /// One task.
        #[arg(long)]
        task: Option<u32>,
    },
}

/// `ebb ledger` flags.
#[derive(Clone, Debug, Args)]
pub struct LedgerArgs {
    #[command(flatten)]
    /// Where the server is.
    pub conn: Conn,
    /// Range start (RFC 3339, e.g. 2026-12-01T00:00:00Z); default: the beginning.
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    pub from: Option<std::time::SystemTime>,
    /// Range end (RFC 3339); default: now.
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    pub to: Option<std::time::SystemTime>,
    /// Group rows by pool or by team.
    #[arg(long, value_enum, default_value_t = By::Team)]
    pub by: By,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// Ledger grouping.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum By {
    /// One row per pool.
    Pool,
    /// One row per team.
    Team,
}

/// Output formats.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// Comma-separated values with a header.
    Csv,
    /// JSON.
    Json,
}

/// Job phases for filters.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum PhaseArg {
    /// No task holds a host.
    Queued,
    /// Some task holds a host.
    Running,
    /// Every task completed.
    Succeeded,
    /// Some task failed.
    Failed,
    /// Cancelled.
    Cancelled,
}

/// Task states for filters.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    /// Waiting.
    Pending,
    /// Placed, not started.
    Assigned,
    /// Running.
    Running,
    /// Being stopped.
    Stopping,
    /// Done.
    Completed,
    /// Failed.
    Failed,
    /// Cancelled.
    Cancelled,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{s}` is not key=value"))
}

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A channel with the token attached.
pub type Authed = InterceptedService<Channel, Bearer>;

/// Connects to the server.
pub async fn connect(conn: &Conn) -> anyhow::Result<(Channel, Bearer)> {
    let mut endpoint = Endpoint::from_shared(conn.addr.clone())
        .with_context(|| format!("bad server address `{}`", conn.addr))?
        .connect_timeout(Duration::from_secs(5));
    if conn.addr.starts_with("https://") {
        let ca = conn
            .ca_cert
            .as_ref()
            .context("an https:// address needs --ca-cert (or EBB_CA_CERT)")?;
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        crate::server::install_crypto_provider();
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("connecting to {}", conn.addr))?;
    let token = conn
        .token
        .as_ref()
        .map(|t| format!("Bearer {t}").parse())
        .transpose()
        .context("the token has characters a header cannot carry")?;
    Ok((channel, Bearer(token)))
}

/// A job service client.
pub async fn jobs_client(conn: &Conn) -> anyhow::Result<JobServiceClient<Authed>> {
    let (ch, b) = connect(conn).await?;
    Ok(JobServiceClient::with_interceptor(ch, b).max_decoding_message_size(64 << 20))
}

/// A market service client.
pub async fn market_client(conn: &Conn) -> anyhow::Result<MarketServiceClient<Authed>> {
    let (ch, b) = connect(conn).await?;
    Ok(MarketServiceClient::with_interceptor(ch, b).max_decoding_message_size(64 << 20))
}

/// A failed client command: the server's status, or the file's violations.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The server refused.
    #[error("{}", .0.message())]
    Status(Status),
    /// The job file is invalid.
    #[error("the job file is invalid")]
    Invalid(Vec<Violation>),
    /// Anything else.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<Status> for CliError {
    fn from(s: Status) -> Self {
        CliError::Status(s)
    }
}

impl CliError {
    /// Prints the error and the fields it names to stderr.
    pub fn print(&self) {
        match self {
            CliError::Status(s) => {
                eprintln!("error: {} ({:?})", s.message(), s.code());
                for v in crate::error::violations(s) {
                    eprintln!("  field `{}`: {}", v.field, v.description);
                }
            }
            CliError::Invalid(v) => {
                eprintln!("error: the job file is invalid");
                for v in v {
                    eprintln!("  field `{}`: {}", v.field, v.description);
                }
            }
            CliError::Other(e) => eprintln!("error: {e:#}"),
        }
    }
}

impl Command {
    fn conn_mut(&mut self) -> Option<&mut Conn> {
        match self {
            Command::Server(_) => None,
            Command::Job { conn, .. }
            | Command::Capacity { conn, .. }
            | Command::Price { conn, .. }
            | Command::Demand { conn, .. }
            | Command::Report { conn, .. }
            | Command::Ledger(LedgerArgs { conn, .. }) => Some(conn),
        }
    }
}

/// How long a command keeps trying while no replica answers as leader (a
/// takeover after a leader failure takes a lease TTL plus the rebuild).
const FAILOVER_WAIT: Duration = Duration::from_secs(30);

/// Redirects followed for one command, at most (a leader that changes
/// while the command follows it).
const MAX_REDIRECTS: usize = 5;

/// Why an attempt may be tried again, and where.
enum Retry {
    /// A follower named the leader.
    Leader(String),
    /// No leader now, or this replica is unreachable: try the next address
    /// after a pause.
    Elsewhere(String),
}

/// What a failed attempt means for the next one. Every command is safe to
/// repeat: a follower refuses before acting, a refused connection carried
/// nothing, and a submission whose answer was lost is repeated with the
/// same idempotency key (see `run_client`); cancelling and reporting are
/// idempotent.
fn retry_for(e: &CliError) -> Option<Retry> {
    match e {
        CliError::Status(s) => {
            if let Some(leader) = ebb_proto::leader_hint(s) {
                return Some(Retry::Leader(leader));
            }
            replica_gone(s).then(|| Retry::Elsewhere(s.message().to_owned()))
        }
        CliError::Other(e) => format!("{e:#}")
            .starts_with("connecting to")
            .then(|| Retry::Elsewhere(format!("{e:#}"))),
        CliError::Invalid(_) => None,
    }
}

/// True if a status says the replica is not serving (gone, stopping, a
/// follower with no leader yet, or the connection broke), so another
/// attempt may succeed; false for the server's own answers, including its
/// `UNAVAILABLE` ones about something else (an executor that is not
/// connected for `job logs`).
fn replica_gone(s: &Status) -> bool {
    const SERVER: [&str; 3] = [
        "no leader is elected yet",
        "the scheduler is shutting down",
        "the scheduler is not running on this replica",
    ];
    const TRANSPORT: [&str; 7] = [
        "transport error",
        "tcp connect error",
        "error trying to connect",
        "connection refused",
        "connection reset",
        "broken pipe",
        "h2 protocol error",
    ];
    let message = s.message().to_lowercase();
    match s.code() {
        tonic::Code::Unavailable => {
            SERVER.iter().any(|w| message.contains(w))
                || TRANSPORT.iter().any(|w| message.contains(w))
        }
        tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled => {
            TRANSPORT.iter().any(|w| message.contains(w))
        }
        _ => false,
    }
}

/// Runs a client command; returns the process exit code. With several
/// server addresses, or when a follower answers, the command goes to the
/// leader (and waits out a takeover, up to [`FAILOVER_WAIT`]).
pub async fn run_client(mut command: Command) -> Result<i32, CliError> {
    // One idempotency key for every attempt of a submission without one,
    // so a retry after a lost answer returns the job the first attempt
    // created rather than a second job.
    let auto_id = format!("ebb-cli-{:016x}", rand::random::<u64>());
    let addresses: Vec<String> = match command.conn_mut() {
        Some(c) => c
            .addr
            .split(',')
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect(),
        None => return run_once(command, &auto_id).await,
    };
    if addresses.is_empty() {
        return Err(anyhow::anyhow!("--addr names no server").into());
    }
    let deadline = std::time::Instant::now() + FAILOVER_WAIT;
    let mut next = 0;
    let mut addr = addresses[0].clone();
    let mut redirects = 0;
    loop {
        let mut attempt = command.clone();
        if let Some(c) = attempt.conn_mut() {
            c.addr.clone_from(&addr);
        }
        let err = match run_once(attempt, &auto_id).await {
            Err(e) => e,
            ok => return ok,
        };
        match retry_for(&err) {
            Some(Retry::Leader(leader)) if redirects < MAX_REDIRECTS && leader != addr => {
                eprintln!("note: {addr} is a follower; sending to the leader at {leader}");
                redirects += 1;
                addr = leader;
            }
            Some(Retry::Elsewhere(why)) | Some(Retry::Leader(why))
                if std::time::Instant::now() < deadline =>
            {
                next = (next + 1) % addresses.len();
                eprintln!(
                    "note: {addr}: {why}; retrying{}",
                    if addresses.len() > 1 {
                        format!(" with {}", addresses[next])
                    } else {
                        String::new()
                    }
                );
                addr = addresses[next].clone();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            _ => return Err(err),
        }
    }
}

/// One attempt; `auto_id` is the idempotency key of a submission that has
/// none of its own.
async fn run_once(command: Command, auto_id: &str) -> Result<i32, CliError> {
    match command {
        Command::Server(_) => unreachable!("handled by main"),
        Command::Job { conn, command } => job(&conn, command, auto_id).await,
        Command::Capacity { conn, format } => {
            let mut m = market_client(&conn).await?;
            let resp = m.list_pools(pb::ListPoolsRequest {}).await?.into_inner();
            output::capacity(&resp.pools, format);
            output::capacity_source(resp.source.as_ref(), format);
            Ok(0)
        }
        Command::Demand { conn, command } => {
            let mut m = market_client(&conn).await?;
            match command {
                DemandCommand::Report { pool, ie } => {
                    if !ie.is_finite() || ie < 0.0 {
                        return Err(
                            anyhow::anyhow!("--ie must be a finite number ≥ 0, not {ie}").into(),
                        );
                    }
                    let p = m
                        .report_streaming_demand(pb::ReportStreamingDemandRequest {
                            pool,
                            demand_micro_ie: (ie * 1e6).round() as u64,
                        })
                        .await?
                        .into_inner()
                        .pool
                        .unwrap_or_default();
                    println!(
                        "pool {}: streaming {} IE, supply {} IE, leased {} IE",
                        p.pool,
                        p.streaming_micro_ie as f64 / 1e6,
                        p.supply_micro_ie as f64 / 1e6,
                        p.leased_micro_ie as f64 / 1e6
                    );
                }
                DemandCommand::Failover { region, end } => {
                    m.report_failover(pb::ReportFailoverRequest {
                        region: region.clone(),
                        active: !end,
                    })
                    .await?;
                    println!(
                        "failover of region {region} {}",
                        if end { "ended" } else { "reported" }
                    );
                }
            }
            Ok(0)
        }
        Command::Price { conn, format } => {
            let mut m = market_client(&conn).await?;
            let pools = m
                .list_pools(pb::ListPoolsRequest {})
                .await?
                .into_inner()
                .pools;
            output::prices(&pools, format);
            Ok(0)
        }
        Command::Ledger(args) => {
            let mut m = market_client(&args.conn).await?;
            let ts = |t: std::time::SystemTime| prost_types::Timestamp::from(t);
            let r = m
                .get_ledger(pb::GetLedgerRequest {
                    start_time: args.from.map(ts),
                    end_time: args.to.map(ts),
                })
                .await?
                .into_inner();
            output::ledger(&r, args.by, args.format);
            Ok(0)
        }
        Command::Report { conn, command } => {
            let (args, default_by, chargeback) = match command {
                ReportCommand::Utilization(a) => (a, ReportBy::Pool, false),
                ReportCommand::Chargeback(a) => (a, ReportBy::Team, true),
            };
            let group_by = match args.by.unwrap_or(default_by) {
                ReportBy::Pool => pb::UtilizationGrouping::Pool,
                ReportBy::Region => pb::UtilizationGrouping::Region,
                ReportBy::Family => pb::UtilizationGrouping::Family,
                ReportBy::Team => pb::UtilizationGrouping::Team,
            };
            let mut m = market_client(&conn).await?;
            let ts = |t: std::time::SystemTime| prost_types::Timestamp::from(t);
            let r = m
                .get_utilization(pb::GetUtilizationRequest {
                    start_time: args.from.map(ts),
                    end_time: args.to.map(ts),
                    step_seconds: args.step.map_or(0, |d| d.as_secs().max(1)),
                    group_by: group_by.into(),
                })
                .await?
                .into_inner();
            let kind = if chargeback {
                output::Report::Chargeback
            } else {
                output::Report::Utilization
            };
            output::report(&r, args.step.is_some(), kind, args.format);
            Ok(0)
        }
    }
}

async fn job(conn: &Conn, command: JobCommand, auto_id: &str) -> Result<i32, CliError> {
    match command {
        JobCommand::Submit { file, request_id } => {
            let f = jobfile::read(&file)?;
            let mut req = f.to_request().map_err(CliError::Invalid)?;
            match request_id {
                Some(id) => req.request_id = id,
                None if req.request_id.is_empty() => req.request_id = auto_id.to_owned(),
                None => {}
            }
            crate::validate::create_job(&req, &crate::validate::Limits::builtin())
                .map_err(CliError::Invalid)?;
            let mut c = jobs_client(conn).await?;
            let job = c.create_job(req).await?.into_inner();
            let spec = job.spec.as_ref();
            println!(
                "job {} created: {} ({} tasks, team {})",
                job.job_id,
                spec.map_or("", |s| s.name.as_str()),
                spec.map_or(0, |s| s.n_tasks),
                spec.map_or("", |s| s.team.as_str()),
            );
            Ok(0)
        }
        JobCommand::List {
            team,
            phase,
            label,
            limit,
            format,
        } => {
            let mut c = jobs_client(conn).await?;
            let mut jobs = Vec::new();
            let mut token = String::new();
            while jobs.len() < limit {
                let page = c
                    .list_jobs(pb::ListJobsRequest {
                        team: team.clone().unwrap_or_default(),
                        phases: phase.iter().map(|p| phase_wire(*p) as i32).collect(),
                        labels: label.iter().cloned().collect(),
                        page_size: (limit - jobs.len()).min(1000) as u32,
                        page_token: token,
                    })
                    .await?
                    .into_inner();
                jobs.extend(page.jobs);
                token = page.next_page_token;
                if token.is_empty() {
                    break;
                }
            }
            output::jobs(&jobs, format);
            Ok(0)
        }
        JobCommand::Get { job, format } => {
            let mut c = jobs_client(conn).await?;
            let j = c
                .get_job(pb::GetJobRequest { job_id: job })
                .await?
                .into_inner();
            output::job(&j, format);
            Ok(0)
        }
        JobCommand::Tasks {
            job,
            state,
            limit,
            format,
        } => {
            let mut c = jobs_client(conn).await?;
            let mut tasks = Vec::new();
            let mut token = String::new();
            while tasks.len() < limit {
                let page = c
                    .list_tasks(pb::ListTasksRequest {
                        job_id: job,
                        state: state.map_or(0, |s| state_wire(s) as i32),
                        page_size: (limit - tasks.len()).min(1000) as u32,
                        page_token: token,
                    })
                    .await?
                    .into_inner();
                tasks.extend(page.tasks);
                token = page.next_page_token;
                if token.is_empty() {
                    break;
                }
            }
            output::tasks(&tasks, format);
            Ok(0)
        }
        JobCommand::Cancel { job, grace } => {
            let mut c = jobs_client(conn).await?;
            let j = c
                .cancel_job(pb::CancelJobRequest {
                    job_id: job,
                    grace: grace.map(|g| crate::convert::duration_to_wire(g.as_millis() as u64)),
                })
                .await?
                .into_inner();
            println!(
                "job {} cancelling ({})",
                j.job_id,
                output::phase_name(j.phase)
            );
            Ok(0)
        }
        JobCommand::Watch { job } => watch(conn, job).await,
        JobCommand::Logs {
            job,
            task,
            attempt,
            tail,
        } => {
            let mut c = jobs_client(conn).await?;
            let r = c
                .get_task_logs(pb::GetTaskLogsRequest {
                    job_id: job,
                    task_index: task,
                    attempt,
                    tail_lines: tail,
                })
                .await?
                .into_inner();
            use std::io::Write;
            std::io::stdout()
                .write_all(&r.data)
                .context("writing logs")?;
            if r.truncated {
                eprintln!("(output truncated by the executor)");
            }
            Ok(0)
        }
        JobCommand::Why { job, task } => {
            let mut c = jobs_client(conn).await?;
            let r = c
                .explain_pending(pb::ExplainPendingRequest {
                    job_id: job,
                    task_index: task,
                })
                .await?
                .into_inner();
            output::why(&r);
            Ok(0)
        }
    }
}

/// `ebb job watch`: a progress bar of task states until the job ends. The
/// stream's events trigger count refreshes (at most every 300 ms, with
/// `GetJob`, so the bar is exact however many events it skipped), and a
/// dropped stream resumes from the last cursor.
async fn watch(conn: &Conn, job: u64) -> Result<i32, CliError> {
    use indicatif::{ProgressBar, ProgressStyle};
    let mut c = jobs_client(conn).await?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} job {prefix} [{bar:40}] {pos}/{len} ended  {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(job.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut cursor: Option<u64> = None;
    let mut retries = 0;
    let mut refresh = tokio::time::interval(Duration::from_millis(300));
    let mut dirty = true;
    let show = |j: &pb::Job| {
        let counts = j.counts.unwrap_or_default();
        bar.set_length(u64::from(j.spec.as_ref().map_or(0, |s| s.n_tasks)));
        bar.set_position(u64::from(
            counts.completed + counts.failed + counts.cancelled,
        ));
        bar.set_message(output::counts_line(&counts));
    };
    loop {
        let stream = c
            .watch_job(pb::WatchJobRequest {
                job_id: job,
                after_cursor: cursor,
            })
            .await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(s) if s.code() == tonic::Code::Unavailable && retries < 10 => {
                retries += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(s) => return Err(s.into()),
        };
        let ended = loop {
            tokio::select! {
                msg = stream.message() => {
                    let ev = match msg {
                        Ok(Some(ev)) => ev,
                        Ok(None) => break None,
                        Err(s) if s.code() == tonic::Code::Unavailable => break None,
                        Err(s) => return Err(s.into()),
                    };
                    retries = 0;
                    cursor = Some(ev.cursor);
                    dirty = true;
                    match ev.kind {
                        Some(pb::watch_event::Kind::Snapshot(s)) => {
                            let j = s.job.unwrap_or_default();
                            show(&j);
                            if output::phase_ended(j.phase) {
                                break Some(j.phase);
                            }
                        }
                        Some(pb::watch_event::Kind::Finished(f)) => break Some(f.phase),
                        _ => {}
                    }
                }
                _ = refresh.tick(), if dirty => {
                    dirty = false;
                    let j = c.get_job(pb::GetJobRequest { job_id: job }).await?.into_inner();
                    show(&j);
                }
            }
        };
        if let Some(phase) = ended {
            let j = c
                .get_job(pb::GetJobRequest { job_id: job })
                .await?
                .into_inner();
            show(&j);
            bar.finish();
            println!("job {job} {}", output::phase_name(phase));
            return Ok(if phase == pb::JobPhase::Succeeded as i32 {
                0
            } else {
                1
            });
        }
        // The stream dropped: resume from the last cursor.
        retries += 1;
        if retries > 10 {
            return Err(CliError::Other(anyhow::anyhow!("lost the watch stream")));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn phase_wire(p: PhaseArg) -> pb::JobPhase {
    match p {
        PhaseArg::Queued => pb::JobPhase::Queued,
        PhaseArg::Running => pb::JobPhase::Running,
        PhaseArg::Succeeded => pb::JobPhase::Succeeded,
        PhaseArg::Failed => pb::JobPhase::Failed,
        PhaseArg::Cancelled => pb::JobPhase::Cancelled,
    }
}

fn state_wire(s: StateArg) -> pb::TaskState {
    match s {
        StateArg::Pending => pb::TaskState::Pending,
        StateArg::Assigned => pb::TaskState::Assigned,
        StateArg::Running => pb::TaskState::Running,
        StateArg::Stopping => pb::TaskState::Stopping,
        StateArg::Completed => pb::TaskState::Completed,
        StateArg::Failed => pb::TaskState::Failed,
        StateArg::Cancelled => pb::TaskState::Cancelled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ApiError;

    #[test]
    fn only_a_replica_that_is_not_serving_is_retried_elsewhere() {
        // From the server's own errors, so a reworded message breaks this.
        let retried: Vec<Status> = vec![
            ApiError::NotLeader { leader: None }.into(),
            ApiError::Unavailable("the scheduler is shutting down".into()).into(),
            Status::unavailable("tcp connect error: Connection refused (os error 111)"),
            Status::unknown("transport error"),
            Status::unavailable("error trying to connect: connection reset by peer"),
        ];
        for s in &retried {
            assert!(replica_gone(s), "{s:?}");
        }
        let final_: Vec<Status> = vec![
            ApiError::Unavailable("executor h1 of run 1/0/1 is not connected".into()).into(),
            ApiError::Unavailable("executor h1 disconnected".into()).into(),
            ApiError::NotFound("job 9".into()).into(),
            Status::internal("replaying record 3 failed"),
        ];
        for s in &final_ {
            assert!(!replica_gone(s), "{s:?}");
        }
        // A follower that names the leader is followed, whatever else.
        let named: Status = ApiError::NotLeader {
            leader: Some("http://10.0.0.2:7600".into()),
        }
        .into();
        assert!(matches!(
            retry_for(&CliError::Status(named)),
            Some(Retry::Leader(l)) if l == "http://10.0.0.2:7600"
        ));
    }
}
