//! End-to-end tests: the real `ebb server` (the `ebb` binary of ebb-api), real
//! `ebb-executor` processes, and the real Docker engine running the
//! `ebb-workload:dev` image. Nothing is mocked.
//!
//! They need a running engine, the image (`scripts/build-workload-image.sh`)
//! and the `ebb` binary next to this test's own target directory (`cargo
//! build --workspace --bins`); `scripts/test.sh` prepares all three. Without
//! any of them every test fails saying what is missing; none passes or skips.
//!
//! Each test gets its own server (a free loopback port, a temporary data
//! directory, auth tokens), its own executor ids (so it sees only its own
//! containers), and an `Env` guard that, when the test ends (passed or
//! failed), kills every process it started and removes every container of
//! its executor ids; a failing test prints the tail of every process log.
//! Facts are checked against the server's API, the `ebb` CLI and `docker`,
//! never against what an executor says about itself alone. The tests run one
//! at a time: each starts dozens of containers on a small machine, and
//! overlapping them would only make their timings noisy.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Cli, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ebb_executor::runtime::{LABEL_EXECUTOR, LABEL_RUN};
use ebb_proto::v1 as pb;
use ebb_proto::v1::job_service_client::JobServiceClient;
use ebb_proto::v1::market_service_client::MarketServiceClient;
use tokio::sync::Mutex;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Request, Status};

/// The image `scripts/build-workload-image.sh` builds.
const IMAGE: &str = "ebb-workload:dev";
/// Token of the executor principal the executors attach with.
const EXECUTOR_TOKEN: &str = "e2e-executor-token";
/// Token of the admin principal the tests submit and report demand with.
const ADMIN_TOKEN: &str = "e2e-admin-token";
/// Longest wait for any one condition: a guard against hangs, far above
/// what any step takes, not a speed assertion.
const WAIT: Duration = Duration::from_secs(45);
/// One IE in the wire's micro-IE.
const MICRO_IE: u64 = 1_000_000;

/// Serialises the tests (see the module docs). An async mutex: it is held
/// across awaits, and a failed test does not poison it for the next.
static SERIAL: Mutex<()> = Mutex::const_new(());

// ------------------------------------------------------------ prerequisites

/// Fails with a clear message unless the engine answers and the image exists.
fn require_docker() {
    let info = Cli::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    match info {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "no Docker engine is reachable, and these end-to-end tests need one: `docker info` said: {}. \
             Start dockerd (CI machines have it running) and rerun.",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(err) => panic!(
            "cannot run the `docker` CLI ({err}); these end-to-end tests need a Docker engine and its CLI"
        ),
    }
    let image = Cli::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
        .expect("running `docker image inspect`");
    assert!(
        image.status.success(),
        "the image {IMAGE} is missing: build it with `bash scripts/build-workload-image.sh` \
         (scripts/test.sh does this before the tests)"
    );
}

/// The `ebb` binary (server and CLI), built by `cargo build --workspace --bins`
/// into the same target directory as this test.
fn ebb_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/e2e-<hash> → target/<profile>/ebb
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/deps");
    let ebb = profile_dir.join("ebb");
    assert!(
        ebb.is_file(),
        "the `ebb` binary is missing at {}: build it with `cargo build --workspace --bins` \
         (scripts/test.sh does) before running these tests",
        ebb.display()
    );
    ebb
}

fn free_port() -> u16 {
    // The port is free when the listener is dropped; a race with another
    // process taking it in between is possible but would fail loudly.
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("binding a loopback port")
        .port()
}

// ------------------------------------------------------------ docker facts

/// One container of an executor, from `docker inspect`.
#[derive(Clone, Debug)]
struct Container {
    id: String,
    run: String,
    running: bool,
    exit_code: i64,
}

fn containers_of(executor_id: &str) -> Vec<Container> {
    let out = Cli::new("docker")
        .args([
            "ps",
            "--all",
            "--quiet",
            "--no-trunc",
            "--filter",
            &format!("label={LABEL_EXECUTOR}={executor_id}"),
        ])
        .output()
        .expect("running `docker ps`");
    assert!(out.status.success(), "docker ps failed");
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    if ids.is_empty() {
        return Vec::new();
    }
    let out = Cli::new("docker")
        .arg("inspect")
        .args(&ids)
        .output()
        .expect("running `docker inspect`");
    // A container removed between the two calls makes inspect fail; the
    // callers poll, so an empty answer just means "ask again".
    if !out.status.success() {
        return Vec::new();
    }
    let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    all.iter()
        .map(|c| Container {
            id: c["Id"].as_str().unwrap_or_default().to_owned(),
            run: c["Config"]["Labels"][LABEL_RUN]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            running: c["State"]["Running"].as_bool().unwrap_or(false),
            exit_code: c["State"]["ExitCode"].as_i64().unwrap_or(-1),
        })
        .collect()
}

fn docker_logs(container: &str) -> String {
    let out = Cli::new("docker")
        .args(["logs", container])
        .output()
        .expect("running `docker logs`");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn remove_containers_of(executor_id: &str) {
    let Ok(out) = Cli::new("docker")
        .args([
            "ps",
            "--all",
            "--quiet",
            "--filter",
            &format!("label={LABEL_EXECUTOR}={executor_id}"),
        ])
        .output()
    else {
        return;
    };
    for id in String::from_utf8_lossy(&out.stdout).lines() {
        let _ = Cli::new("docker")
            .args(["rm", "--force", "--volumes", id])
            .output();
    }
}

// ------------------------------------------------------------ processes

/// A child process with its log file.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, mut command: Cli, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).expect("creating a log file");
        let err = file.try_clone().expect("cloning a file handle");
        command
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .env("NO_COLOR", "1");
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("starting {name}: {err}"));
        Proc {
            name: name.to_owned(),
            child,
            log,
        }
    }

    /// `kill -9`.
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Everything one test started; cleans up on drop (see the module docs).
struct Env {
    name: String,
    dir: tempfile::TempDir,
    port: u16,
    server_config: PathBuf,
    server: Option<Proc>,
    executors: BTreeMap<String, Proc>,
    executor_ids: BTreeSet<String>,
    /// Logs of processes that already ended, kept for the failure report.
    old_logs: Vec<(String, PathBuf)>,
    n_spawned: u32,
    /// The CA certificate when the server speaks TLS.
    tls_ca: Option<PathBuf>,
    /// A second `ebb server` replica on the same etcd prefix, and its port.
    standby: Option<(Proc, u16)>,
}

impl Drop for Env {
    fn drop(&mut self) {
        // Never panic here: a panic while a failed test unwinds aborts the
        // test binary and hides the real failure.
        for proc in self
            .executors
            .values_mut()
            .chain(self.server.as_mut())
            .chain(self.standby.as_mut().map(|(p, _)| p))
        {
            proc.kill9();
        }
        if std::thread::panicking() {
            let live = self
                .executors
                .values()
                .chain(self.server.as_ref())
                .map(|p| (p.name.clone(), p.log.clone()));
            for (name, log) in self.old_logs.iter().cloned().chain(live) {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("---- {} / {name} (last {} lines)", self.name, tail.len());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        for id in &self.executor_ids {
            remove_containers_of(id);
        }
    }
}

/// A pool of the server's market.
struct PoolDef {
    id: &'static str,
    zone: &'static str,
}

impl Env {
    /// Checks the prerequisites and writes the server's configuration.
    fn new(test: &str, pools: &[PoolDef]) -> Env {
        Env::with_server_config(test, pools, "")
    }

    /// Like `new`, with `extra` TOML tables for the server's configuration.
    fn with_server_config(test: &str, pools: &[PoolDef], extra: &str) -> Env {
        require_docker();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = free_port();
        let mut config = format!(
            r#"listen = "127.0.0.1:{port}"
http_listen = "127.0.0.1:0"
data_dir = "{data}"

[rounds]
interval = "20ms"

[[auth.tokens]]
name = "executors"
token = "{EXECUTOR_TOKEN}"
role = "executor"

[[auth.tokens]]
name = "e2e-admin"
token = "{ADMIN_TOKEN}"
role = "admin"

[scheduler.market]
# Preempted workloads checkpoint in milliseconds; a short grace keeps a
# broken SIGTERM path from hiding behind a long wait.
preempt_grace = 10000
"#,
            data = dir.path().join("server-data").display(),
        );
        config.push_str(extra);
        for pool in pools {
            // Four reserved m5.16xlarge (4 IE) per pool; a host is one.
            config.push_str(&format!(
                "\n[[market.pools]]\nid = \"{}\"\nregion = \"local\"\n[[market.pools.reservations]]\ninstance_type = \"m5.16xlarge\"\ncount = 4\n",
                pool.id
            ));
        }
        let server_config = dir.path().join("server.toml");
        std::fs::write(&server_config, config).unwrap();
        Env {
            name: test.to_owned(),
            dir,
            port,
            server_config,
            server: None,
            executors: BTreeMap::new(),
            executor_ids: BTreeSet::new(),
            old_logs: Vec::new(),
            n_spawned: 0,
            tls_ca: None,
            standby: None,
        }
    }

    /// Like `new`, with the state in the test etcd (`EBB_ETCD_ENDPOINT`)
    /// under a prefix of its own, so that a second replica can share it.
    fn with_etcd(test: &str, pools: &[PoolDef]) -> Env {
        let endpoint = std::env::var("EBB_ETCD_ENDPOINT").unwrap_or_else(|_| {
            panic!("EBB_ETCD_ENDPOINT is not set: run `eval \"$(scripts/etcd.sh start)\"` (scripts/test.sh does)")
        });
        let extra = format!(
            "\n[store]\nbackend = \"etcd\"\netcd_endpoints = [\"{endpoint}\"]\netcd_prefix = \"/ebb-e2e/{test}-{}-{}/\"\n\
             [ha]\nlease_ttl = \"2s\"\nreconcile_window = \"10s\"\n",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        Env::with_server_config(test, pools, &extra)
    }

    /// Starts a second replica of the server (same configuration, another
    /// port) and waits until it follows.
    async fn start_standby(&mut self) {
        let port = free_port();
        let config = std::fs::read_to_string(&self.server_config)
            .unwrap()
            .replace(
                &format!("listen = \"127.0.0.1:{}\"", self.port),
                &format!("listen = \"127.0.0.1:{port}\""),
            );
        let path = self.dir.path().join("standby.toml");
        std::fs::write(&path, config).unwrap();
        let mut command = Cli::new(ebb_binary());
        command
            .arg("server")
            .arg("--config")
            .arg(&path)
            .env("EBB_LOG", "info");
        let log = self.next_log("standby");
        self.standby = Some((Proc::spawn("ebb server (standby)", command, log), port));
        let addr = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            // A follower answers UNAVAILABLE naming the leader.
            if let Ok(ch) = Channel::from_shared(addr.clone()).unwrap().connect().await {
                let mut jobs = JobServiceClient::with_interceptor(ch, Bearer);
                if let Err(status) = jobs.list_jobs(pb::ListJobsRequest::default()).await
                    && ebb_proto::leader_hint(&status).is_some()
                {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the standby did not follow within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every replica's address, the standby's first (so executors and the
    /// CLI are redirected to the leader).
    fn server_list(&self) -> String {
        match &self.standby {
            Some((_, port)) => format!("http://127.0.0.1:{port},{}", self.addr()),
            None => self.addr(),
        }
    }

    /// `kill -9` the leader; the standby becomes the server this `Env`
    /// talks to.
    fn kill_leader(&mut self) {
        self.kill_server();
        let (proc, port) = self.standby.take().expect("a standby");
        self.server = Some(proc);
        self.port = port;
    }

    /// Like `new`, with the server speaking TLS only, with a self-signed
    /// certificate for `localhost`.
    fn with_tls(test: &str, pools: &[PoolDef]) -> Env {
        // Built with the whole workspace, rustls has two crypto providers
        // and wants one chosen (see `main.rs`); this process's clients too.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("a self-signed certificate");
        let mut env = Env::new(test, pools);
        let (cert_path, key_path) = (
            env.dir.path().join("cert.pem"),
            env.dir.path().join("key.pem"),
        );
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
        let mut config = std::fs::read_to_string(&env.server_config).unwrap();
        config.push_str(&format!(
            "\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert_path.display(),
            key_path.display()
        ));
        std::fs::write(&env.server_config, config).unwrap();
        env.tls_ca = Some(cert_path);
        env
    }

    fn addr(&self) -> String {
        match self.tls_ca {
            Some(_) => format!("https://localhost:{}", self.port),
            None => format!("http://127.0.0.1:{}", self.port),
        }
    }

    async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        let mut endpoint = Channel::from_shared(self.addr()).unwrap();
        if let Some(ca) = &self.tls_ca {
            let pem = std::fs::read(ca).expect("reading the CA certificate");
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))?;
        }
        endpoint.connect().await
    }

    fn next_log(&mut self, name: &str) -> PathBuf {
        self.n_spawned += 1;
        self.dir
            .path()
            .join(format!("{:02}-{name}.log", self.n_spawned))
    }

    /// Starts (or restarts) `ebb server` and waits until it answers.
    async fn start_server(&mut self) {
        assert!(self.server.is_none(), "a server is already running");
        let mut command = Cli::new(ebb_binary());
        command
            .arg("server")
            .arg("--config")
            .arg(&self.server_config)
            .env("EBB_LOG", "info");
        let log = self.next_log("server");
        self.server = Some(Proc::spawn("ebb server", command, log));
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(mut jobs) = self.try_jobs().await
                && jobs.list_jobs(pb::ListJobsRequest::default()).await.is_ok()
            {
                return;
            }
            if let Some(server) = self.server.as_mut()
                && let Ok(Some(status)) = server.child.try_wait()
            {
                panic!("ebb server exited with {status}:\n{}", server.log_text());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "ebb server did not answer within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9` the server.
    fn kill_server(&mut self) {
        let mut server = self.server.take().expect("a running server");
        server.kill9();
        self.old_logs
            .push((server.name.clone(), server.log.clone()));
    }

    /// A unique executor id for this test and process.
    fn executor_id(&mut self, role: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "e2e-{role}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.executor_ids.insert(id.clone());
        id
    }

    /// Starts `ebb-executor` as host `id` in `pool`, offering `cpu_millis`
    /// and 4 GiB. The same id and data directory on a restart.
    fn start_executor(&mut self, id: &str, pool: &PoolDef, cpu_millis: u64) {
        self.start_executor_with_token(id, pool, cpu_millis, EXECUTOR_TOKEN);
    }

    fn start_executor_with_token(
        &mut self,
        id: &str,
        pool: &PoolDef,
        cpu_millis: u64,
        token: &str,
    ) {
        assert!(
            !self.executors.contains_key(id),
            "executor {id} is already running"
        );
        let data_dir = self.dir.path().join(id);
        let config = self.dir.path().join(format!("{id}.toml"));
        // Quick reconnection so the server restart test does not wait long;
        // exited containers are kept for the whole test (the guard removes
        // them) so their exit codes and logs can be checked.
        std::fs::write(
            &config,
            "retention_ms = 600000\nimage_pull_timeout_ms = 10000\n[server]\nreconnect_initial_ms = 100\nreconnect_max_ms = 1000\n",
        )
        .unwrap();
        let mut command = Cli::new(env!("CARGO_BIN_EXE_ebb-executor"));
        command
            .arg("--config")
            .arg(&config)
            .args(["--server", &self.server_list()])
            .args(["--host-id", id])
            .args(["--pool", pool.id, "--zone", pool.zone, "--region", "local"])
            .args(["--cpu-millis", &cpu_millis.to_string()])
            .args(["--memory-mib", "4096"])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--log-format", "json"])
            .env("EBB_TOKEN", token)
            .env_remove("EBB_CA_CERT")
            .env("EBB_LOG", "info,ebb_executor=debug");
        if let Some(ca) = &self.tls_ca {
            command.arg("--ca-cert").arg(ca);
        }
        let log = self.next_log(id);
        let proc = Proc::spawn(&format!("ebb-executor {id}"), command, log);
        self.executors.insert(id.to_owned(), proc);
    }

    /// `kill -9` an executor.
    fn kill9_executor(&mut self, id: &str) {
        let mut proc = self.executors.remove(id).expect("a running executor");
        proc.kill9();
        self.old_logs.push((proc.name.clone(), proc.log.clone()));
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to a running executor.
    fn signal_executor(&self, id: &str, signal: &str) {
        let pid = self.executors[id].child.id();
        let status = Cli::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("running `kill`");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// SIGTERM an executor and wait for it to exit; returns its exit status.
    async fn terminate_executor(&mut self, id: &str) -> std::process::ExitStatus {
        self.signal_executor(id, "TERM");
        self.wait_exit(id).await
    }

    /// Waits for an executor to exit; returns its exit status.
    async fn wait_exit(&mut self, id: &str) -> std::process::ExitStatus {
        let mut proc = self.executors.remove(id).expect("a running executor");
        let deadline = tokio::time::Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = proc.child.try_wait().expect("waiting for the executor") {
                break status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} did not exit within {WAIT:?}",
                proc.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.old_logs.push((proc.name.clone(), proc.log.clone()));
        status
    }

    /// Every "registered with the server" event in the executor's logs,
    /// across its restarts, oldest first, as JSON fields.
    fn registrations(&self, id: &str) -> Vec<serde_json::Value> {
        let logs = self
            .old_logs
            .iter()
            .filter(|(name, _)| *name == format!("ebb-executor {id}"))
            .map(|(_, log)| log.clone())
            .chain(self.executors.get(id).map(|p| p.log.clone()));
        logs.flat_map(|log| {
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .lines()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .filter(|v| v["fields"]["message"] == "registered with the server")
                .map(|v| v["fields"].clone())
                .collect::<Vec<_>>()
        })
        .collect()
    }

    /// Waits until the executor has registered `n` times in all; returns
    /// the last registration. Fails early if the process died.
    async fn wait_registrations(&mut self, id: &str, n: usize) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let all = self.registrations(id);
            if all.len() >= n {
                return all[n - 1].clone();
            }
            if let Some(proc) = self.executors.get_mut(id)
                && let Ok(Some(status)) = proc.child.try_wait()
            {
                panic!("{} exited with {status}:\n{}", proc.name, proc.log_text());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id} did not register {n} time(s) within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn try_jobs(&self) -> Result<Jobs, tonic::transport::Error> {
        Ok(JobServiceClient::with_interceptor(
            self.channel().await?,
            Bearer,
        ))
    }

    async fn jobs(&self) -> Jobs {
        self.try_jobs().await.expect("connecting to the server")
    }

    async fn market(&self) -> MarketServiceClient<InterceptedService<Channel, Bearer>> {
        let channel = self.channel().await.expect("connecting to the server");
        MarketServiceClient::with_interceptor(channel, Bearer)
    }

    /// Runs the `ebb` CLI as the admin; returns stdout, failing on a non-zero exit.
    fn cli(&self, args: &[&str]) -> String {
        let mut command = Cli::new(ebb_binary());
        if let Some(ca) = &self.tls_ca {
            command.env("EBB_CA_CERT", ca);
        }
        let out = command
            .args(args)
            .env("EBB_ADDR", self.server_list())
            .env("EBB_TOKEN", ADMIN_TOKEN)
            .env("NO_COLOR", "1")
            .output()
            .expect("running the ebb CLI");
        assert!(
            out.status.success(),
            "ebb {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes a job file and submits it with `ebb job submit -f`; returns the job id.
    fn submit(&self, name: &str, n_tasks: u32, command: &[&str]) -> u64 {
        let command = command
            .iter()
            .map(|arg| format!("{arg:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let file = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &file,
            format!(
                "name: {name}\nteam: encoding\ntier: flex\npriority: 50\ntasks: {n_tasks}\n\
                 request:\n  cpu_millis: 100\n  memory_mib: 32\n\
                 retry:\n  max_retries: 0\n\
                 container:\n  image: {IMAGE}\n  command: [{command}]\n"
            ),
        )
        .unwrap();
        let out = self.cli(&["job", "submit", "-f", file.to_str().unwrap()]);
        // "job 7 created: ..."
        out.split_whitespace()
            .nth(1)
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("no job id in {out:?}"))
    }
}

type Jobs = JobServiceClient<InterceptedService<Channel, Bearer>>;

/// Adds the admin token to every call.
#[derive(Clone)]
struct Bearer;

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
        );
        Ok(request)
    }
}

// ------------------------------------------------------------ job queries

async fn tasks(jobs: &mut Jobs, job_id: u64) -> Vec<pb::Task> {
    jobs.list_tasks(pb::ListTasksRequest {
        job_id,
        page_size: 1000,
        ..Default::default()
    })
    .await
    .expect("ListTasks")
    .into_inner()
    .tasks
}

/// Polls the job's tasks until `done` holds; returns them. Fails with the
/// last tasks seen.
async fn wait_tasks(
    jobs: &mut Jobs,
    job_id: u64,
    what: &str,
    done: impl Fn(&[pb::Task]) -> bool,
) -> Vec<pb::Task> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let tasks = tasks(jobs, job_id).await;
        if done(&tasks) {
            return tasks;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {job_id}: timed out waiting for {what}; tasks: {:#?}",
            tasks
                .iter()
                .map(|t| (t.task_index, t.state, t.host_id.clone(), t.run))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for the job to end; fails unless it succeeded.
async fn wait_succeeded(jobs: &mut Jobs, job_id: u64) -> pb::Job {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let job = jobs
            .get_job(pb::GetJobRequest { job_id })
            .await
            .expect("GetJob")
            .into_inner();
        let phase = pb::JobPhase::try_from(job.phase).unwrap_or(pb::JobPhase::Unspecified);
        match phase {
            pb::JobPhase::Succeeded => return job,
            pb::JobPhase::Failed | pb::JobPhase::Cancelled => {
                panic!("job {job_id} ended {phase:?}: {:?}", job.counts)
            }
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {job_id} did not succeed within {WAIT:?}: {phase:?} {:?}",
            job.counts
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn is_running(task: &pb::Task) -> bool {
    task.state == pb::TaskState::Running as i32
}

/// `job-<job>/<task>#<attempt>`, the `ebb.run` label.
fn run_label(job: u64, task: u32, attempt: u32) -> String {
    format!("job-{job}/{task}#{attempt}")
}

/// Polls docker until `cond` holds for the executor's containers.
async fn wait_containers(
    executor_id: &str,
    what: &str,
    cond: impl Fn(&[Container]) -> bool,
) -> Vec<Container> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let containers = containers_of(executor_id);
        if cond(&containers) {
            return containers;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{executor_id}: timed out waiting for {what}; containers: {containers:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const EAST: PoolDef = PoolDef {
    id: "east",
    zone: "local-a",
};
const WEST: PoolDef = PoolDef {
    id: "west",
    zone: "local-b",
};

// ------------------------------------------------------------ the tests

/// A 20-task job submitted through the CLI runs to completion on one
/// executor: every task once, in its own container, exit code 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_tasks_submitted_through_the_cli_succeed_on_one_executor() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new("twenty-tasks", &[EAST]);
    env.start_server().await;
    let a = env.executor_id("twenty");
    // 1000 millicores for 100-millicore tasks: ten at a time, two waves.
    env.start_executor(&a, &EAST, 1000);
    env.wait_registrations(&a, 1).await;
    let job = env.submit(
        "twenty",
        20,
        &[
            "/workload",
            "--work-ms",
            "300",
            "--mode",
            "sleep",
            "--progress-ms",
            "100",
        ],
    );
    let mut jobs = env.jobs().await;
    let done = wait_succeeded(&mut jobs, job).await;
    assert_eq!(done.counts.unwrap().completed, 20, "{:?}", done.counts);
    let tasks = tasks(&mut jobs, job).await;
    assert_eq!(tasks.len(), 20);
    for task in &tasks {
        assert_eq!(task.state, pb::TaskState::Completed as i32, "{task:?}");
        assert_eq!(task.run.unwrap().attempt, 1, "ran once: {task:?}");
        assert_eq!(task.n_failures + task.n_preemptions, 0, "{task:?}");
    }
    // The engine's view: exactly one container per task, all on executor a,
    // all exited 0.
    let containers = containers_of(&a);
    let runs: BTreeSet<String> = containers.iter().map(|c| c.run.clone()).collect();
    let want: BTreeSet<String> = (0..20).map(|task| run_label(job, task, 1)).collect();
    assert_eq!(runs, want, "one container per task");
    assert_eq!(containers.len(), 20, "none duplicated: {containers:#?}");
    for c in &containers {
        assert!(!c.running && c.exit_code == 0, "{c:?}");
    }
    // Logs travel executor → server → CLI, and the server says where they came from.
    let logs = env.cli(&["job", "logs", &job.to_string(), "7", "--tail", "2"]);
    assert!(logs.contains("workload: done after"), "{logs:?}");
    assert_eq!(logs.lines().count(), 2, "--tail 2: {logs:?}");
    let from = jobs
        .get_task_logs(pb::GetTaskLogsRequest {
            job_id: job,
            task_index: 19,
            attempt: 0,
            tail_lines: 0,
        })
        .await
        .expect("GetTaskLogs")
        .into_inner();
    assert_eq!(from.host_id, a);
    assert!(String::from_utf8_lossy(&from.data).contains("started work_ms=300"));
}

/// Streaming demand takes pool east back: its run gets SIGTERM, checkpoints,
/// is reported stopped (preempted, not failed), and the requeued task
/// finishes as a second attempt on the executor in pool west.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preempted_run_is_requeued_and_finishes_on_the_other_executor() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new("preempt", &[EAST, WEST]);
    env.start_server().await;
    let a = env.executor_id("east");
    let b = env.executor_id("west");
    env.start_executor(&a, &EAST, 1000);
    env.wait_registrations(&a, 1).await;
    let job = env.submit(
        "preempt",
        2,
        &[
            "/workload",
            "--work-ms",
            "6000",
            "--mode",
            "sleep",
            "--on-sigterm",
            "checkpoint",
            "--checkpoint-ms",
            "100",
        ],
    );
    let mut jobs = env.jobs().await;
    wait_tasks(&mut jobs, job, "both tasks running on east", |t| {
        t.len() == 2 && t.iter().all(|t| is_running(t) && t.host_id == a)
    })
    .await;
    // The workload prints its start line once the container runs.
    wait_containers(&a, "both workloads started", |c| {
        c.len() == 2
            && c.iter()
                .all(|c| c.running && docker_logs(&c.id).contains("started work_ms"))
    })
    .await;
    env.start_executor(&b, &WEST, 1000);
    env.wait_registrations(&b, 1).await;
    // Streaming now needs all 4 IE of east: supply 0, its lease is reclaimed.
    let pool = env
        .market()
        .await
        .report_streaming_demand(pb::ReportStreamingDemandRequest {
            pool: EAST.id.into(),
            demand_micro_ie: 4 * MICRO_IE,
        })
        .await
        .expect("ReportStreamingDemand")
        .into_inner()
        .pool
        .unwrap();
    assert_eq!(pool.supply_micro_ie, 0, "{pool:?}");
    let done = wait_succeeded(&mut jobs, job).await;
    assert_eq!(done.counts.unwrap().completed, 2);
    for task in tasks(&mut jobs, job).await {
        assert_eq!(task.run.unwrap().attempt, 2, "requeued once: {task:?}");
        assert_eq!(task.n_preemptions, 1, "{task:?}");
        assert_eq!(
            task.n_failures, 0,
            "a preemption is not a failure: {task:?}"
        );
    }
    // East ran the first attempts, which saw SIGTERM and checkpointed.
    let east = containers_of(&a);
    let east_runs: BTreeSet<String> = east.iter().map(|c| c.run.clone()).collect();
    assert_eq!(
        east_runs,
        BTreeSet::from([run_label(job, 0, 1), run_label(job, 1, 1)])
    );
    for c in &east {
        assert!(!c.running, "{c:?}");
        let logs = docker_logs(&c.id);
        assert!(
            logs.contains("SIGTERM received, checkpoint at")
                && logs.contains("exiting after SIGTERM"),
            "{}: {logs}",
            c.run
        );
        assert!(
            !logs.contains("done after"),
            "{}: it was preempted: {logs}",
            c.run
        );
    }
    // West ran the second attempts to the end.
    let west = containers_of(&b);
    let west_runs: BTreeSet<String> = west.iter().map(|c| c.run.clone()).collect();
    assert_eq!(
        west_runs,
        BTreeSet::from([run_label(job, 0, 2), run_label(job, 1, 2)])
    );
    for c in &west {
        assert!(!c.running && c.exit_code == 0, "{c:?}");
        assert!(docker_logs(&c.id).contains("done after"), "{c:?}");
    }
    let logs = jobs
        .get_task_logs(pb::GetTaskLogsRequest {
            job_id: job,
            task_index: 0,
            attempt: 0,
            tail_lines: 5,
        })
        .await
        .expect("GetTaskLogs")
        .into_inner();
    assert_eq!(logs.host_id, b);
}

/// `kill -9` the executor while its runs go on: the containers keep running,
/// and the restarted executor reports and adopts the very same containers
/// (none restarted, none duplicated, none left behind); SIGTERM then detaches
/// it cleanly, and the job completes with every task on its first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_executor_adopts_its_running_containers_after_restart() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new("kill-9", &[EAST]);
    env.start_server().await;
    let a = env.executor_id("adopt");
    env.start_executor(&a, &EAST, 1000);
    env.wait_registrations(&a, 1).await;
    let job = env.submit(
        "adopt",
        3,
        &["/workload", "--work-ms", "12000", "--mode", "sleep"],
    );
    let mut jobs = env.jobs().await;
    wait_tasks(&mut jobs, job, "three tasks running", |t| {
        t.len() == 3 && t.iter().all(is_running)
    })
    .await;
    let before = wait_containers(&a, "three running containers", |c| {
        c.len() == 3 && c.iter().all(|c| c.running)
    })
    .await;
    let ids = |cs: &[Container]| cs.iter().map(|c| c.id.clone()).collect::<BTreeSet<_>>();

    env.kill9_executor(&a);
    let orphans = containers_of(&a);
    assert_eq!(ids(&orphans), ids(&before), "kill -9 leaves the containers");
    assert!(orphans.iter().all(|c| c.running), "{orphans:#?}");

    env.start_executor(&a, &EAST, 1000);
    let again = env.wait_registrations(&a, 2).await;
    assert_eq!(again["n_reported_live"], 3, "{again}");
    assert_eq!(
        again["n_adopted"], 3,
        "the server adopted all three: {again}"
    );
    let adopted = containers_of(&a);
    assert_eq!(ids(&adopted), ids(&before), "same containers, none new");
    assert!(
        adopted.iter().all(|c| c.running),
        "none restarted: {adopted:#?}"
    );
    let running = tasks(&mut jobs, job).await;
    assert!(
        running
            .iter()
            .all(|t| is_running(t) && t.run.unwrap().attempt == 1 && t.host_id == a),
        "still the first attempts, on a: {running:#?}"
    );

    // Graceful shutdown detaches and leaves the containers to the next process.
    let status = env.terminate_executor(&a).await;
    assert!(status.success(), "SIGTERM exits cleanly: {status}");
    assert!(containers_of(&a).iter().all(|c| c.running));
    env.start_executor(&a, &EAST, 1000);
    let third = env.wait_registrations(&a, 3).await;
    assert_eq!(third["n_adopted"], 3, "{third}");

    wait_succeeded(&mut jobs, job).await;
    for task in tasks(&mut jobs, job).await {
        assert_eq!(task.run.unwrap().attempt, 1, "never rerun: {task:?}");
    }
    let after = containers_of(&a);
    assert_eq!(
        ids(&after),
        ids(&before),
        "no container appeared or vanished"
    );
    for c in &after {
        assert!(!c.running && c.exit_code == 0, "{c:?}");
        // One start only: the output has a single start line.
        let logs = docker_logs(&c.id);
        assert_eq!(logs.matches("started work_ms").count(), 1, "{logs}");
    }
}

/// The server goes away (`kill -9`) and comes back on the same address: the
/// executor reconnects with back-off and re-registers with its runs, the
/// server adopts them, and a run that ended while the server was down is
/// reported at the registration instead of being rerun.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_executor_reconnects_and_reregisters_when_the_server_comes_back() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new("server-restart", &[EAST]);
    env.start_server().await;
    let a = env.executor_id("reconnect");
    env.start_executor(&a, &EAST, 1000);
    env.wait_registrations(&a, 1).await;
    let short = env.submit(
        "short",
        1,
        &["/workload", "--work-ms", "2500", "--mode", "sleep"],
    );
    let long = env.submit(
        "long",
        2,
        &["/workload", "--work-ms", "9000", "--mode", "sleep"],
    );
    let mut jobs = env.jobs().await;
    wait_tasks(&mut jobs, short, "the short task running", |t| {
        t.iter().all(is_running)
    })
    .await;
    wait_tasks(&mut jobs, long, "the long tasks running", |t| {
        t.len() == 2 && t.iter().all(is_running)
    })
    .await;

    env.kill_server();
    // The short run ends while nobody listens.
    let short_run = run_label(short, 0, 1);
    wait_containers(&a, "the short run to exit while the server is down", |c| {
        c.iter().any(|c| c.run == short_run && !c.running)
    })
    .await;
    env.start_server().await;

    let again = env.wait_registrations(&a, 2).await;
    assert_eq!(again["n_reported_live"], 2, "{again}");
    assert_eq!(again["n_adopted"], 2, "{again}");
    let mut jobs = env.jobs().await;
    let done = wait_succeeded(&mut jobs, short).await;
    assert_eq!(done.counts.unwrap().completed, 1);
    wait_succeeded(&mut jobs, long).await;
    for job in [short, long] {
        for task in tasks(&mut jobs, job).await {
            assert_eq!(task.run.unwrap().attempt, 1, "never rerun: {task:?}");
        }
    }
    let containers = containers_of(&a);
    assert_eq!(containers.len(), 3, "{containers:#?}");
    assert!(containers.iter().all(|c| !c.running && c.exit_code == 0));
}

/// A token the server does not know, or one of a principal that is not an
/// executor, is refused for good: the executor exits non-zero saying so
/// instead of retrying for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_a_clear_error_not_a_retry_loop() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new("bad-token", &[EAST]);
    env.start_server().await;
    for (token, code) in [
        ("not-a-known-token", "Unauthenticated"),
        (ADMIN_TOKEN, "PermissionDenied"),
    ] {
        let id = env.executor_id("token");
        env.start_executor_with_token(&id, &EAST, 1000, token);
        let log = env.executors[&id].log.clone();
        let status = env.wait_exit(&id).await;
        let text = std::fs::read_to_string(log).unwrap();
        assert!(!status.success(), "{token}: {status}\n{text}");
        assert!(
            text.contains("the server refused this executor") && text.contains(code),
            "{token}: {text}"
        );
        assert!(env.registrations(&id).is_empty(), "{text}");
    }
}

/// An executor that goes silent (SIGSTOP) beyond the heartbeat timeout is
/// declared lost and its runs requeued. When it comes back it re-registers
/// with the containers it still runs; the server owns none of them any more
/// and says `stop`, which the executor turns into a discard (the containers
/// are removed, not kept), and the tasks run again as second attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_a_host_declared_lost_are_discarded_when_it_returns() {
    let _serial = SERIAL.lock().await;
    // 300 ms × 3: the host is lost after 0.9 s of silence.
    let mut env = Env::with_server_config(
        "lost-host",
        &[EAST],
        "\n[executors]\nheartbeat_interval = \"300ms\"\nmissed_heartbeats = 3\n",
    );
    env.start_server().await;
    let a = env.executor_id("lost");
    env.start_executor(&a, &EAST, 1000);
    env.wait_registrations(&a, 1).await;
    let job = env.submit(
        "lost",
        2,
        &["/workload", "--work-ms", "8000", "--mode", "sleep"],
    );
    let mut jobs = env.jobs().await;
    wait_tasks(&mut jobs, job, "both tasks running", |t| {
        t.len() == 2 && t.iter().all(is_running)
    })
    .await;
    wait_containers(&a, "two running containers", |c| {
        c.len() == 2 && c.iter().all(|c| c.running)
    })
    .await;

    env.signal_executor(&a, "STOP");
    wait_tasks(&mut jobs, job, "the lost host's tasks requeued", |t| {
        t.iter().all(|t| t.state == pb::TaskState::Pending as i32)
    })
    .await;
    env.signal_executor(&a, "CONT");

    let again = env.wait_registrations(&a, 2).await;
    assert_eq!(again["n_reported_live"], 2, "{again}");
    assert_eq!(again["n_adopted"], 0, "the server owns neither: {again}");
    let first: BTreeSet<String> = (0..2).map(|task| run_label(job, task, 1)).collect();
    wait_containers(&a, "the first attempts' containers removed", |c| {
        c.iter().all(|c| !first.contains(&c.run))
    })
    .await;
    wait_succeeded(&mut jobs, job).await;
    for task in tasks(&mut jobs, job).await {
        assert_eq!(task.run.unwrap().attempt, 2, "{task:?}");
        assert_eq!(task.n_failures, 0, "a lost host costs no retry: {task:?}");
    }
    let containers = containers_of(&a);
    let runs: BTreeSet<String> = containers.iter().map(|c| c.run.clone()).collect();
    assert_eq!(
        runs,
        BTreeSet::from([run_label(job, 0, 2), run_label(job, 1, 2)])
    );
    assert!(containers.iter().all(|c| !c.running && c.exit_code == 0));
}

/// Over TLS (`https://`, the server's certificate checked against
/// `--ca-cert`) the executor registers and runs a job like over plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_executor_attaches_over_tls() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::with_tls("tls", &[EAST]);
    env.start_server().await;
    let a = env.executor_id("tls");
    env.start_executor(&a, &EAST, 1000);
    env.wait_registrations(&a, 1).await;
    let job = env.submit(
        "tls",
        2,
        &["/workload", "--work-ms", "200", "--mode", "sleep"],
    );
    let mut jobs = env.jobs().await;
    wait_succeeded(&mut jobs, job).await;
    let containers = containers_of(&a);
    assert_eq!(containers.len(), 2, "{containers:#?}");
    assert!(containers.iter().all(|c| c.exit_code == 0));
}

/// Two `ebb server` replicas on etcd; the executor is pointed at the
/// follower first and attaches to the leader; the leader is killed: the
/// executor re-attaches to the new leader, which adopts its running
/// containers (nothing is run twice) and sees them finish; the CLI follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_executor_follows_a_takeover_to_the_new_leader_and_keeps_its_runs() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::with_etcd("takeover", &[EAST]);
    env.start_server().await;
    env.start_standby().await;
    let a = env.executor_id("ha");
    env.start_executor(&a, &EAST, 1000);
    let first = env.wait_registrations(&a, 1).await;
    assert_eq!(first["n_reported_live"], 0, "{first}");
    // It went where the follower's answer sent it, not merely to the next
    // address on its list.
    let log = env.executors[&a].log_text();
    assert!(log.contains("attaching to the leader"), "{log}");
    let long = env.submit(
        "long",
        2,
        &["/workload", "--work-ms", "9000", "--mode", "sleep"],
    );
    let mut jobs = env.jobs().await;
    wait_tasks(&mut jobs, long, "the long tasks running", |t| {
        t.len() == 2 && t.iter().all(is_running)
    })
    .await;

    env.kill_leader();
    let again = env.wait_registrations(&a, 2).await;
    assert_eq!(again["n_reported_live"], 2, "{again}");
    assert_eq!(again["n_adopted"], 2, "{again}");
    // Submitted through the CLI with both addresses, to the new leader.
    let short = env.submit(
        "short",
        1,
        &["/workload", "--work-ms", "200", "--mode", "sleep"],
    );
    let mut jobs = env.jobs().await;
    wait_succeeded(&mut jobs, long).await;
    wait_succeeded(&mut jobs, short).await;
    for task in tasks(&mut jobs, long).await {
        assert_eq!(task.run.unwrap().attempt, 1, "never rerun: {task:?}");
    }
    let containers = containers_of(&a);
    assert_eq!(containers.len(), 3, "{containers:#?}");
    assert!(containers.iter().all(|c| !c.running && c.exit_code == 0));
}
