//! `ebb-executor`: runs one host's share of Ebb's work as Docker containers,
//! attached to `ebb server` over one gRPC stream.
//!
//! Settings come from an optional TOML file (`--config`, the library's
//! `ExecutorConfig`; unknown keys are errors), overridden by flags and their
//! `EBB_*` variables. SIGTERM or Ctrl-C closes the stream and exits, leaving
//! containers running: a restarted executor with the same id adopts them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use ebb_executor::config::ConfigError;
use ebb_executor::{
    Attach, AttachError, AttachOptions, DockerRuntime, ExecutorConfig, RunManager, wire,
};
use tokio::sync::mpsc;

/// Commands and reports in flight between the stream and the run manager.
/// The run manager answers each command at once (slow work runs in per-run
/// tasks), so a few hundred covers a burst of launches.
const CHANNEL_CAPACITY: usize = 256;
/// How long shutdown waits for the run manager to let go of its runs. It
/// only aborts its per-run tasks; containers are not touched.
const MANAGER_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The `ebb-executor` command.
#[derive(Debug, Parser)]
#[command(
    name = "ebb-executor",
    version,
    about = "Ebb's per-host executor: runs the scheduler's tasks as Docker containers",
    long_about = "Ebb's per-host executor: attaches to `ebb server`, registers this host \
                  (pool, instance type, zone, region, resources) and the containers it \
                  already runs, then runs the tasks the server places here as Docker \
                  containers. SIGTERM or Ctrl-C detaches and exits; containers keep \
                  running and a restarted executor with the same --host-id adopts them."
)]
struct Args {
    /// The server's gRPC address, or every replica's, comma-separated (a follower names the leader) [default: http://127.0.0.1:7600, or the config's server.address].
    #[arg(long, env = "EBB_ADDR")]
    server: Option<String>,
    /// The executor principal's bearer token (not needed by a dev-mode server).
    #[arg(long, env = "EBB_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA certificate (PEM) to verify an https:// server with.
    #[arg(long, env = "EBB_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// TOML configuration file (examples/executor.toml); unknown keys are errors.
    #[arg(long, env = "EBB_EXECUTOR_CONFIG")]
    config: Option<PathBuf>,
    /// This host's id, also the executor id labelling its containers; keep
    /// it stable across restarts [default: the config's executor_id, else the hostname].
    #[arg(long, env = "EBB_HOST_ID")]
    host_id: Option<String>,
    /// Directory for per-run scratch directories [default: the config's data_dir, /var/lib/ebb-executor].
    #[arg(long, env = "EBB_EXECUTOR_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The pool whose reservations this host belongs to [default: demo].
    #[arg(long, env = "EBB_POOL")]
    pool: Option<String>,
    /// The host's EC2 instance type [default: m5.16xlarge].
    #[arg(long, env = "EBB_INSTANCE_TYPE")]
    instance_type: Option<String>,
    /// Availability zone [default: local-a].
    #[arg(long, env = "EBB_ZONE")]
    zone: Option<String>,
    /// Region [default: local].
    #[arg(long, env = "EBB_REGION")]
    region: Option<String>,
    /// A host attribute for placement constraints, key=value; repeatable
    /// (EBB_ATTRIBUTES: comma-separated).
    #[arg(long = "attribute", env = "EBB_ATTRIBUTES", value_delimiter = ',', value_parser = parse_attribute)]
    attributes: Vec<(String, String)>,
    /// GPU model, for hosts with GPUs.
    #[arg(long, env = "EBB_GPU_MODEL")]
    gpu_model: Option<String>,
    /// CPU to offer, in millicores, so several executors can share a machine [default: all].
    #[arg(long, env = "EBB_CPU_MILLIS")]
    cpu_millis: Option<u64>,
    /// Memory to offer, in MiB [default: all].
    #[arg(long, env = "EBB_MEMORY_MIB")]
    memory_mib: Option<u64>,
    /// Log format (the filter is EBB_LOG, default `info`).
    #[arg(long, env = "EBB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// Log output.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn parse_attribute(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("`{text}` is not key=value")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("EBB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => fmt.json().init(),
        LogFormat::Text => fmt.init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration: file (or defaults), then flags, then validation.
fn load_config(args: &Args) -> anyhow::Result<ExecutorConfig> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the config file {}", path.display()))?;
            ExecutorConfig::parse_toml(&text)
                .with_context(|| format!("in the config file {}", path.display()))?
        }
        None => ExecutorConfig::new(""),
    };
    if let Some(id) = &args.host_id {
        config.executor_id = id.clone();
    }
    if config.executor_id.is_empty() {
        config.executor_id = hostname().context(
            "no --host-id given and no executor_id in the config, so the hostname is the id",
        )?;
    }
    if let Some(dir) = &args.data_dir {
        // Relative paths are resolved now: the directory is bind-mounted
        // into containers, and the engine needs an absolute path.
        config.data_dir = std::path::absolute(dir)
            .with_context(|| format!("resolving --data-dir {}", dir.display()))?;
    }
    let host = &mut config.host;
    for (field, value) in [
        (&mut host.pool, &args.pool),
        (&mut host.instance_type, &args.instance_type),
        (&mut host.zone, &args.zone),
        (&mut host.region, &args.region),
    ] {
        if let Some(value) = value {
            value.clone_into(field);
        }
    }
    if args.gpu_model.is_some() {
        host.gpu_model.clone_from(&args.gpu_model);
    }
    host.attributes
        .extend(args.attributes.iter().cloned().collect::<BTreeMap<_, _>>());
    if args.cpu_millis.is_some() {
        config.resources.cpu_millis = args.cpu_millis;
    }
    if args.memory_mib.is_some() {
        config.resources.memory_mib = args.memory_mib;
    }
    if let Some(address) = &args.server {
        config.server.address.clone_from(address);
    }
    if args.ca_cert.is_some() {
        config.server.ca_cert.clone_from(&args.ca_cert);
    }
    config.validate().map_err(|err| match err {
        // Name the flag too: most fields can come from either.
        ConfigError::Invalid { field, message } => {
            anyhow::anyhow!("invalid setting `{field}` (config file or flag): {message}")
        }
        other => other.into(),
    })?;
    Ok(config)
}

/// The machine's hostname, if it is a valid executor id.
fn hostname() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading /proc/sys/kernel/hostname")?;
    let name = name.trim().to_owned();
    if ExecutorConfig::new(name.clone()).validate().is_err() {
        bail!("the hostname `{name}` is not a valid executor id; pass --host-id");
    }
    Ok(name)
}

/// Takes `<data_dir>/<executor id>.lock` for the life of the process: two
/// executors with one id would adopt, stop and remove each other's
/// containers. The kernel drops the lock when the process dies, `kill -9`
/// included, so a restart never finds a stale lock.
fn lock_executor_id(config: &ExecutorConfig) -> anyhow::Result<std::fs::File> {
    let path = config.data_dir.join(format!("{}.lock", config.executor_id));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another ebb-executor with id `{}` is running (it holds {}); give each executor its own --host-id",
            config.executor_id,
            path.display()
        ),
        Err(std::fs::TryLockError::Error(err)) => {
            Err(err).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// Where bollard looks for the engine, for error messages.
fn docker_socket() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

async fn run(args: Args) -> anyhow::Result<()> {
    // ring as rustls's process-wide crypto provider, before any TLS: built
    // with the whole workspace, rustls also has aws-lc-rs (the AWS SDK of
    // ebb-api brings it) and would refuse to choose, failing https://. An
    // `Err` only says a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = load_config(&args)?;
    std::fs::create_dir_all(config.runs_dir()).with_context(|| {
        format!(
            "creating the data directory {} (choose another with --data-dir)",
            config.data_dir.display()
        )
    })?;
    let _lock = lock_executor_id(&config)?;
    let resources = config
        .offered_resources()
        .context("working out the resources to offer")?;
    let options = AttachOptions {
        server: config.server.clone(),
        token: args.token.clone(),
        host: wire::host_spec(&config.executor_id, &config.host, resources),
        disown_grace: Duration::from_millis(config.disown_grace_ms),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        jitter_seed: jitter_seed(),
    };
    // Checked before Docker so a typo in the address fails at once.
    let attach = Attach::new(options).context("setting up the connection to the server")?;
    let socket = docker_socket();
    let docker = DockerRuntime::connect(Duration::from_millis(config.image_pull_timeout_ms))
        .await
        .with_context(|| format!("cannot reach the Docker engine at {socket}"))?;
    tracing::info!(
        executor = %config.executor_id,
        server = %config.server.address,
        pool = %config.host.pool,
        instance_type = %config.host.instance_type,
        zone = %config.host.zone,
        cpu_millis = resources.cpu_millis,
        memory_mib = resources.memory_mib,
        docker = %socket,
        docker_api = %docker.api_version(),
        data_dir = %config.data_dir.display(),
        "ebb-executor starting"
    );
    let manager = RunManager::new(docker, config).context("starting the run manager")?;
    let (commands, commands_rx) = mpsc::channel(CHANNEL_CAPACITY);
    let (reports_tx, reports) = mpsc::channel(CHANNEL_CAPACITY);
    let manager = tokio::spawn(manager.run(commands_rx, reports_tx));
    let attached = attach.run(commands, reports, shutdown_signal()).await;
    // `run` dropped the command sender: the run manager returns, leaving
    // every container as it is.
    let managed = tokio::time::timeout(MANAGER_EXIT_TIMEOUT, manager).await;
    match (attached, managed) {
        (Ok(()), _) => {
            tracing::info!(
                "detached from the server; containers keep running for the next executor to adopt"
            );
            Ok(())
        }
        (Err(AttachError::ManagerGone), Ok(Ok(Err(err)))) => {
            Err(err).context("the run manager stopped")
        }
        (Err(err), _) => Err(err.into()),
    }
}

/// Differs per process and start, so executors restarted together do not
/// retry in lockstep. Not security-relevant.
fn jitter_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// Completes on SIGTERM or Ctrl-C (SIGINT).
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::warn!(error = %err, "cannot watch SIGTERM; only Ctrl-C stops the executor");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["ebb-executor"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).unwrap()
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("executor.toml");
        std::fs::write(
            &file,
            "executor_id = \"from-file\"\n[host]\npool = \"east\"\nzone = \"z1\"\n[server]\naddress = \"http://10.0.0.1:7600\"\n",
        )
        .unwrap();
        let file_arg = file.to_str().unwrap();
        let config = load_config(&args(&[
            "--config",
            file_arg,
            "--host-id",
            "exec-b",
            "--pool",
            "west",
            "--attribute",
            "rack=r2",
            "--cpu-millis",
            "500",
            "--data-dir",
            "rel/dir",
        ]))
        .unwrap();
        assert_eq!(config.executor_id, "exec-b");
        assert_eq!(config.host.pool, "west");
        assert_eq!(config.host.zone, "z1", "kept from the file");
        assert_eq!(config.server.address, "http://10.0.0.1:7600");
        assert_eq!(config.host.attributes["rack"], "r2");
        assert_eq!(config.resources.cpu_millis, Some(500));
        assert!(config.data_dir.is_absolute() && config.data_dir.ends_with("rel/dir"));
    }

    #[test]
    fn config_errors_name_the_file_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("executor.toml");
        std::fs::write(&file, "executor_id = \"a\"\n[host]\npol = \"east\"\n").unwrap();
        let err = load_config(&args(&["--config", file.to_str().unwrap()])).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("executor.toml") && text.contains("pol"),
            "{text}"
        );
        let err =
            load_config(&args(&["--host-id", "a", "--server", "127.0.0.1:7600"])).unwrap_err();
        assert!(format!("{err:#}").contains("server.address"), "{err:#}");
    }

    #[test]
    fn attributes_must_be_key_value() {
        assert!(Args::try_parse_from(["ebb-executor", "--attribute", "novalue"]).is_err());
        let parsed = args(&["--attribute", "a=1", "--attribute", "b="]);
        assert_eq!(
            parsed.attributes,
            [
                ("a".to_owned(), "1".to_owned()),
                ("b".to_owned(), String::new())
            ]
        );
    }

    #[test]
    fn a_second_executor_with_one_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ExecutorConfig::new("twin");
        config.data_dir = dir.path().to_owned();
        let _held = lock_executor_id(&config).unwrap();
        let err = lock_executor_id(&config).unwrap_err();
        assert!(err.to_string().contains("another ebb-executor"), "{err}");
        config.executor_id = "other".into();
        lock_executor_id(&config).unwrap();
    }
}
