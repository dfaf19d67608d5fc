//! Test harness: a real server on a loopback port with a temporary data
//! directory (or a fresh key prefix in the test etcd), tonic clients with tokens, and a fake executor that speaks the
//! real executor protocol (it runs no containers) and keeps its own book of
//! what it was told to run.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ebb_api::config::{Config, StoreBackend};
use ebb_api::server::Running;
use ebb_api::store::Store;
use ebb_api::store::etcd::{EtcdOptions, EtcdStore};
use ebb_api::store::redb::RedbStore;
use ebb_proto::v1 as pb;
use ebb_proto::v1::executor_service_client::ExecutorServiceClient;
use ebb_proto::v1::job_service_client::JobServiceClient;
use ebb_proto::v1::market_service_client::MarketServiceClient;
use pb::executor_message::Message as In;
use pb::scheduler_message::Message as Out;
use tokio::sync::{Mutex, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// Which store a test server keeps its state in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestStore {
    /// The embedded redb file in the test's temporary directory.
    Embedded,
    /// The test etcd (`EBB_ETCD_ENDPOINT`), under a key prefix of its own.
    Etcd,
}

impl TestStore {
    /// `EBB_TEST_STORE`: `embedded` (the default) or `etcd`. scripts/test.sh
    /// runs the API suite a second time with `etcd`, so every API test runs
    /// against both stores.
    pub fn from_env() -> TestStore {
        match std::env::var("EBB_TEST_STORE").as_deref() {
            Err(_) | Ok("") | Ok("embedded") => TestStore::Embedded,
            Ok("etcd") => TestStore::Etcd,
            Ok(other) => panic!("EBB_TEST_STORE={other}: expected `embedded` or `etcd`"),
        }
    }
}

/// The test etcd's client endpoint; panics (never skips) when it is not set.
pub fn etcd_endpoint() -> String {
    std::env::var("EBB_ETCD_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "EBB_ETCD_ENDPOINT is not set: the etcd store tests need a real etcd. \
             Run `eval \"$(scripts/etcd.sh start)\"` first (scripts/test.sh does)."
        )
    })
}

/// A key prefix no other test (or earlier run) uses, so tests share one etcd.
pub fn unique_etcd_prefix(what: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "/ebb-test/{what}-{}-{nanos}-{}/",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Points `config` at the test etcd under a fresh prefix.
pub fn use_etcd(config: &mut Config) {
    config.store.backend = StoreBackend::Etcd;
    config.store.etcd_endpoints = vec![etcd_endpoint()];
    config.store.etcd_prefix = unique_etcd_prefix("server");
}

pub struct TestServer {
    pub running: Option<Running>,
    pub dir: tempfile::TempDir,
    pub addr: String,
    /// The server's configuration (to reopen its store after a shutdown).
    pub config: Config,
}

impl TestServer {
    /// A dev-mode server unless `edit` configures tokens, on the store
    /// `EBB_TEST_STORE` names.
    pub async fn start(edit: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::start_on(TestStore::from_env(), edit).await
    }

    /// A dev-mode server on `store`.
    pub async fn start_on(store: TestStore, edit: impl FnOnce(&mut Config)) -> TestServer {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("EBB_TEST_LOG"))
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            http_listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        config.rounds.interval = Duration::from_millis(10);
        if store == TestStore::Etcd {
            use_etcd(&mut config);
        }
        edit(&mut config);
        let running = ebb_api::server::start(config.clone()).await.unwrap();
        let addr = format!("http://{}", running.grpc_addr);
        TestServer {
            running: Some(running),
            dir,
            addr,
            config,
        }
    }

    /// Opens the store the server used (after it has shut down).
    pub fn open_store(&self) -> Box<dyn Store> {
        match self.config.store.backend {
            StoreBackend::Embedded => Box::new(RedbStore::open(&self.config.data_dir).unwrap()),
            StoreBackend::Etcd => Box::new(
                EtcdStore::open(EtcdOptions::new(
                    self.config.store.etcd_endpoints.clone(),
                    self.config.store.etcd_prefix.clone(),
                ))
                .unwrap(),
            ),
        }
    }

    pub fn http(&self) -> String {
        format!("http://{}", self.running.as_ref().unwrap().http_addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.addr.clone())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn jobs(
        &self,
        token: Option<&str>,
    ) -> JobServiceClient<InterceptedService<Channel, Bearer>> {
        JobServiceClient::with_interceptor(self.channel().await, Bearer::new(token))
    }

    pub async fn market(
        &self,
        token: Option<&str>,
    ) -> MarketServiceClient<InterceptedService<Channel, Bearer>> {
        MarketServiceClient::with_interceptor(self.channel().await, Bearer::new(token))
    }

    pub async fn executor(&self, token: Option<&str>, host: pb::HostSpec) -> FakeExecutor {
        FakeExecutor::attach(&self.addr, token, host, Vec::new())
            .await
            .unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.unwrap();
        }
    }
}

#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    pub fn new(token: Option<&str>) -> Self {
        Bearer(token.map(|t| format!("Bearer {t}").parse().unwrap()))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub fn host(id: &str, cpu_millis: u64, memory_mib: u64) -> pb::HostSpec {
    pb::HostSpec {
        host_id: id.into(),
        pool: "demo".into(),
        instance_type: "m5.16xlarge".into(),
        zone: "local-a".into(),
        region: "local".into(),
        capacity: Some(pb::Resources {
            cpu_millis,
            memory_mib,
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn job(team: &str, n_tasks: u32) -> pb::CreateJobRequest {
    pb::CreateJobRequest {
        spec: Some(pb::JobSpec {
            name: "encode".into(),
            team: team.into(),
            tier: pb::Tier::Flex as i32,
            priority: 10,
            request: Some(pb::Resources {
                cpu_millis: 1000,
                memory_mib: 1024,
                ..Default::default()
            }),
            n_tasks,
            container: Some(pb::ContainerSpec {
                image: "busybox:1.36".into(),
                command: vec!["sleep".into(), "1".into()],
                env: [("CHUNK".to_owned(), "7".to_owned())].into_iter().collect(),
                ..Default::default()
            }),
            labels: [("show".to_owned(), "tidewater".to_owned())]
                .into_iter()
                .collect(),
            ..Default::default()
        }),
        request_id: String::new(),
    }
}

pub fn run_key(r: &pb::RunId) -> (u64, u32, u32) {
    (r.job_id, r.task_index, r.attempt)
}

/// The fake executor's own book.
#[derive(Default, Debug)]
pub struct Book {
    /// Every launch received, in order.
    pub launches: Vec<pb::LaunchTask>,
    /// Every stop received.
    pub stops: Vec<pb::StopTask>,
    /// Every refusal received.
    pub refused: Vec<pb::Refused>,
    /// Registered messages.
    pub registered: Vec<pb::Registered>,
    /// Runs it holds now: (job, task) -> attempt.
    pub live: BTreeMap<(u64, u32), u32>,
    /// Set if a launch arrived for a task it already runs.
    pub double_launch: Vec<(u64, u32)>,
    /// Log requests to answer.
    pub logs: Vec<pb::LogsRequest>,
    /// Runs it reported ended, with their exit code (a real executor keeps
    /// these until the server has them, and reports them at registration).
    pub ended: Vec<(pb::RunId, i32)>,
}

pub struct FakeExecutor {
    pub host: pb::HostSpec,
    pub addr: String,
    tx: mpsc::Sender<pb::ExecutorMessage>,
    pub book: Arc<Mutex<Book>>,
    pub heartbeats: Arc<AtomicBool>,
    pub closed: Arc<Mutex<Option<Status>>>,
    notify: Arc<tokio::sync::Notify>,
}

impl FakeExecutor {
    /// Opens a stream and registers, reporting `runs` as live.
    pub async fn attach(
        addr: &str,
        token: Option<&str>,
        host: pb::HostSpec,
        runs: Vec<pb::RunId>,
    ) -> Result<FakeExecutor, Status> {
        let book = Arc::new(Mutex::new(Book::default()));
        {
            let mut b = book.lock().await;
            for r in &runs {
                b.live.insert((r.job_id, r.task_index), r.attempt);
            }
        }
        Self::attach_with_book(addr, token, host, runs, book).await
    }

    pub async fn attach_with_book(
        addr: &str,
        token: Option<&str>,
        host: pb::HostSpec,
        runs: Vec<pb::RunId>,
        book: Arc<Mutex<Book>>,
    ) -> Result<FakeExecutor, Status> {
        let ended = Vec::new();
        Self::reattach(addr, token, host, runs, ended, book).await
    }

    /// Registers reporting `runs` as live and `ended` runs with their exit codes.
    pub async fn reattach(
        addr: &str,
        token: Option<&str>,
        host: pb::HostSpec,
        runs: Vec<pb::RunId>,
        ended: Vec<(pb::RunId, i32)>,
        book: Arc<Mutex<Book>>,
    ) -> Result<FakeExecutor, Status> {
        let n_registered = book.lock().await.registered.len();
        let channel = Channel::from_shared(addr.to_owned())
            .unwrap()
            .connect()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut client = ExecutorServiceClient::with_interceptor(channel, Bearer::new(token));
        let (tx, rx) = mpsc::channel(1024);
        tx.send(pb::ExecutorMessage {
            message: Some(In::Register(pb::Register {
                host: Some(host.clone()),
                runs: runs
                    .into_iter()
                    .map(|r| pb::RunEvent {
                        run: Some(r),
                        time: None,
                        kind: Some(pb::run_event::Kind::Started(pb::RunStarted {})),
                    })
                    .chain(ended.into_iter().map(|(r, code)| pb::RunEvent {
                        run: Some(r),
                        time: None,
                        kind: Some(pb::run_event::Kind::Exited(pb::RunExited {
                            exit_code: code,
                            message: String::new(),
                        })),
                    }))
                    .collect(),
                executor_version: "fake".into(),
            })),
        })
        .await
        .unwrap();
        let mut inbound = client.attach(ReceiverStream::new(rx)).await?.into_inner();
        let heartbeats = Arc::new(AtomicBool::new(true));
        let closed = Arc::new(Mutex::new(None));
        let notify = Arc::new(tokio::sync::Notify::new());
        {
            let (book, closed, notify) = (book.clone(), closed.clone(), notify.clone());
            tokio::spawn(async move {
                loop {
                    match inbound.next().await {
                        Some(Ok(m)) => {
                            let mut b = book.lock().await;
                            match m.message {
                                Some(Out::Launch(l)) => {
                                    let r = l.run.unwrap();
                                    let key = (r.job_id, r.task_index);
                                    if b.live.contains_key(&key) {
                                        b.double_launch.push(key);
                                    }
                                    b.live.insert(key, r.attempt);
                                    b.launches.push(l);
                                }
                                Some(Out::Stop(s)) => b.stops.push(s),
                                Some(Out::Refused(r)) => b.refused.push(r),
                                Some(Out::Registered(r)) => b.registered.push(r),
                                Some(Out::LogsRequest(l)) => b.logs.push(l),
                                None => {}
                            }
                            drop(b);
                            notify.notify_waiters();
                        }
                        Some(Err(s)) => {
                            *closed.lock().await = Some(s);
                            notify.notify_waiters();
                            return;
                        }
                        None => {
                            *closed.lock().await = Some(Status::ok("stream ended"));
                            notify.notify_waiters();
                            return;
                        }
                    }
                }
            });
        }
        {
            let (tx, heartbeats) = (tx.clone(), heartbeats.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if !heartbeats.load(Ordering::Relaxed) {
                        continue;
                    }
                    let hb = pb::ExecutorMessage {
                        message: Some(In::Heartbeat(pb::Heartbeat { sent_time: None })),
                    };
                    if tx.send(hb).await.is_err() {
                        return;
                    }
                }
            });
        }
        let fake = FakeExecutor {
            addr: addr.to_owned(),
            host,
            tx,
            book,
            heartbeats,
            closed,
            notify,
        };
        fake.wait_for(|b| b.registered.len() > n_registered, "registered")
            .await;
        Ok(fake)
    }

    /// Waits (up to 20 s) until `cond` holds on the book.
    pub async fn wait_for(&self, cond: impl Fn(&Book) -> bool, what: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let notified = self.notify.notified();
            if cond(&*self.book.lock().await) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let b = self.book.lock().await;
                panic!(
                    "{}: timed out waiting for {what}: {} launches, {} stops, {} refused, closed {:?}",
                    self.host.host_id,
                    b.launches.len(),
                    b.stops.len(),
                    b.refused.len(),
                    self.closed.try_lock().ok().and_then(|c| c.clone())
                );
            }
        }
    }

    pub async fn wait_closed(&self) -> Status {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let notified = self.notify.notified();
            if let Some(s) = self.closed.lock().await.clone() {
                return s;
            }
            tokio::time::timeout_at(deadline, notified)
                .await
                .expect("stream to close");
        }
    }

    pub async fn send(&self, m: In) {
        // After the server is gone the stream is closed: the report is lost,
        // as it would be for a real executor.
        let _ = self.tx.send(pb::ExecutorMessage { message: Some(m) }).await;
    }

    pub async fn report(&self, run: &pb::RunId, kind: pb::run_event::Kind) {
        let terminal = !matches!(kind, pb::run_event::Kind::Started(_));
        if terminal {
            let mut b = self.book.lock().await;
            if b.live.get(&(run.job_id, run.task_index)) == Some(&run.attempt) {
                b.live.remove(&(run.job_id, run.task_index));
            }
            if let pb::run_event::Kind::Exited(e) = &kind {
                b.ended.push((*run, e.exit_code));
            }
        }
        self.send(In::RunEvent(pb::RunEvent {
            run: Some(*run),
            time: None,
            kind: Some(kind),
        }))
        .await;
    }

    pub async fn started(&self, run: &pb::RunId) {
        self.report(run, pb::run_event::Kind::Started(pb::RunStarted {}))
            .await;
    }

    pub async fn exited(&self, run: &pb::RunId, code: i32) {
        self.report(
            run,
            pb::run_event::Kind::Exited(pb::RunExited {
                exit_code: code,
                message: String::new(),
            }),
        )
        .await;
    }

    pub async fn stopped(&self, run: &pb::RunId) {
        self.report(
            run,
            pb::run_event::Kind::Stopped(pb::RunStopped {
                reason: 0,
                killed_after_grace: false,
            }),
        )
        .await;
    }

    /// Runs launched so far.
    pub async fn launched(&self) -> Vec<pb::RunId> {
        self.book
            .lock()
            .await
            .launches
            .iter()
            .map(|l| l.run.unwrap())
            .collect()
    }

    pub async fn wait_launches(&self, n: usize) -> Vec<pb::RunId> {
        self.wait_for(|b| b.launches.len() >= n, &format!("{n} launches"))
            .await;
        self.launched().await
    }

    pub async fn n_refused(&self) -> usize {
        self.book.lock().await.refused.len()
    }
}

/// A loopback port free now (for a server started as a separate process).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` until it returns `Some`, for up to 20 s.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The field violations of a status.
pub fn fields(s: &Status) -> Vec<String> {
    ebb_api::error::violations(s)
        .into_iter()
        .map(|v| v.field)
        .collect()
}

pub fn counts_map(j: &pb::Job) -> HashMap<&'static str, u32> {
    let c = j.counts.unwrap_or_default();
    [
        ("pending", c.pending),
        ("running", c.running),
        ("stopping", c.stopping),
        ("completed", c.completed),
        ("failed", c.failed),
        ("cancelled", c.cancelled),
    ]
    .into_iter()
    .collect()
}
