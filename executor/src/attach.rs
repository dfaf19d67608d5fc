//! The executor's end of `ebb.v1.ExecutorService.Attach`: the one
//! bidirectional gRPC stream between this host and `ebb server`.
//!
//! ```text
//!            RunManager ── Report ──▶ pump ──(unbounded, in order)──┐
//!                 ▲                                                 ▼
//!                 └──── Command ◀── Attach::run ◀── SchedulerMessage ── server
//!                                        └── ExecutorMessage (register, heartbeat,
//!                                            run events, log chunks) ─▶ server
//! ```
//!
//! One session is: list the containers (the run manager's `Inventory`),
//! connect, `register` with the host spec and every run the host has, then
//! serve until the stream breaks: commands become run manager `Command`s,
//! reports become run events and log chunks, and a heartbeat goes out every
//! `heartbeat_interval` the server's `registered` names. When the stream
//! breaks (server restart, network, host declared lost) the executor waits
//! with capped exponential back-off and jitter ([`Backoff`]) and starts a
//! new session; containers keep running meanwhile, and the next
//! registration reports them.
//!
//! What the server said no to is handled per `executor.proto`: a stop for a
//! run reported at registration that the server did not adopt is a discard
//! (stop, then remove the container at once: nobody owns the run), and a
//! refused report naming a run the server disowns (`stale_run`,
//! `foreign_run`, `unknown_task`) discards that run if it still runs here.
//!
//! Wire types are translated only in [`crate::wire`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use ebb_proto::v1 as pb;
use ebb_proto::v1::executor_service_client::ExecutorServiceClient;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

use crate::config::ServerConfig;
use crate::model::{Command, Inventory, ObservedState, Report, RunEvent, RunEventKind};
use crate::runtime::RunId;
use crate::wire::{self, FromServer, StopReason};

/// Heartbeat interval until the server's `registered` names one: the
/// server's own default (5 s).
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// Shortest heartbeat interval accepted from the server, so a misconfigured
/// server cannot make executors flood it.
const MIN_HEARTBEAT: Duration = Duration::from_millis(10);
/// How long the run manager may take to list its containers before a
/// session gives up and retries: a listing takes milliseconds; only a sick
/// engine takes longer, and then registering with a guess would be worse.
const INVENTORY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server may take to answer `register` once connected. It
/// reconciles every reported run in one driver step, which takes
/// milliseconds; far longer means the server is stuck.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 pings while attached: a server that vanished without closing the
/// connection (a partition, a powered-off machine) is noticed within
/// interval + timeout (10 s), before the server's 15 s heartbeat timeout
/// would make the host lose its runs on a plain network blip.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// See [`KEEPALIVE_INTERVAL`].
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages queued towards the server before sending waits: a burst of 50
/// launches answered by two events each, with room to spare.
const OUTBOUND_CAPACITY: usize = 1024;

/// Why the executor stopped talking to the server for good.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The server address is not a URI tonic can connect to.
    #[error("invalid server address `{address}`: {message}")]
    Address {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        message: String,
    },
    /// An `https://` address needs a CA certificate to verify the server.
    #[error(
        "the server address `{address}` is https:// but no CA certificate is configured (server.ca_cert or --ca-cert)"
    )]
    NoCaCert {
        /// The address as given.
        address: String,
    },
    /// The CA certificate could not be read.
    #[error("reading the CA certificate {}: {source}", path.display())]
    CaCert {
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// TLS could not be configured.
    #[error("configuring TLS for `{address}`: {message}")]
    Tls {
        /// The address as given.
        address: String,
        /// tonic's error.
        message: String,
    },
    /// The token has characters an HTTP header cannot carry.
    #[error("the token contains characters an HTTP header cannot carry")]
    Token,
    /// The server refused this executor in a way retrying cannot fix: a
    /// wrong or missing token, a principal that is not an executor, or a
    /// host spec it rejects (an unknown pool, an empty field).
    #[error("the server refused this executor ({code:?}): {message}")]
    Refused {
        /// The gRPC status code.
        code: Code,
        /// The server's message.
        message: String,
    },
    /// The run manager stopped (its own error says why).
    #[error("the run manager stopped")]
    ManagerGone,
}

/// What a session needs to know besides the run manager's channels.
#[derive(Clone, Debug)]
pub struct AttachOptions {
    /// Where the server is and how to reconnect.
    pub server: ServerConfig,
    /// The executor principal's bearer token; `None` for a dev-mode server.
    pub token: Option<String>,
    /// This host as `register` describes it.
    pub host: pb::HostSpec,
    /// SIGTERM-to-SIGKILL grace for runs a refusal disowns.
    pub disown_grace: Duration,
    /// Sent as `executor_version`.
    pub version: String,
    /// Seeds the back-off jitter (any value; tests pass a fixed one).
    pub jitter_seed: u64,
}

/// Capped exponential back-off with "equal jitter": each delay is half the
/// current step plus a uniformly random share of the other half, and the
/// step doubles per failure up to the cap. The floor of half a step keeps a
/// fleet from hammering a restarting server; the random half spreads 10,000
/// executors' retries over the window instead of synchronising them.
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
    rng: SmallRng,
}

impl Backoff {
    /// Starts at `initial`, never exceeds `max`.
    pub fn new(initial: Duration, max: Duration, seed: u64) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Self {
            initial,
            max: max.max(initial),
            step: initial,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// The delay before the next attempt; doubles the step for the one after.
    pub fn next_delay(&mut self) -> Duration {
        let half = self.step / 2;
        let jitter_ms = self.rng.random_range(0..=half.as_millis() as u64);
        let delay = half + Duration::from_millis(jitter_ms);
        self.step = (self.step * 2).min(self.max);
        delay
    }

    /// Back to the first step: after a session that registered.
    pub fn reset(&mut self) {
        self.step = self.initial;
    }
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// How a session ended.
enum SessionEnd {
    /// The shutdown signal fired; the stream was closed.
    Shutdown,
    /// The stream could not be opened or broke; try again.
    Broken {
        /// The session registered (so the back-off starts over).
        registered: bool,
        /// What happened, for the log.
        reason: String,
    },
    /// A follower replica named the leader: attach there.
    Redirect {
        /// The leader's address.
        leader: String,
    },
    /// Retrying cannot help.
    Fatal(AttachError),
}

/// What the executor remembers across sessions about its runs and the
/// server's answers.
#[derive(Default)]
struct Book {
    /// Runs starting or running here, per the latest inventory and events.
    live: HashSet<RunId>,
    /// The reason of the stop command each stopping run got, echoed in its
    /// `stopped` report; forgotten when the container is removed.
    stop_reasons: HashMap<RunId, StopReason>,
    /// Terminal events no stream took (they happened while disconnected, or
    /// the stream broke while sending): reported at the next registration,
    /// even if their container is gone by then.
    unsent: BTreeMap<RunId, pb::RunEvent>,
    /// Runs this session's registration reported live.
    registered_live: HashSet<RunId>,
    /// Runs this session's registration reported ended: the server may
    /// already have their outcome, so a refusal of one is expected.
    registered_ended: HashSet<RunId>,
    /// Reported runs the server adopted in this session.
    adopted: HashSet<RunId>,
    /// Open logs requests of this session: request id → lines asked for.
    logs_requests: HashMap<u64, u32>,
}

impl Book {
    /// Tracks which runs are live from the run manager's events.
    fn observe(&mut self, event: &RunEvent) {
        match &event.kind {
            RunEventKind::Starting | RunEventKind::Running { .. } => {
                self.live.insert(event.run);
            }
            RunEventKind::Removed => {
                self.live.remove(&event.run);
                self.stop_reasons.remove(&event.run);
            }
            _ => {
                self.live.remove(&event.run);
            }
        }
    }

    /// A report that arrived while no stream was open.
    fn offline(&mut self, report: Report) {
        match report {
            Report::Run(event) => {
                self.observe(&event);
                if event.kind.is_terminal() {
                    let reason = self.stop_reasons.get(&event.run).copied();
                    if let Some(wire) = wire::run_event_to_wire(&event, reason) {
                        self.unsent.insert(event.run, wire);
                    }
                }
            }
            // The request came on a stream that is gone; nobody waits for it.
            Report::Logs(reply) => {
                self.logs_requests.remove(&reply.request_id);
            }
            Report::Inventory(_) => {}
        }
    }

    /// The runs `register` reports: every container of this executor (live
    /// ones as started, exited ones with their outcome) and every terminal
    /// event no stream took. Resets the per-session sets.
    fn registration_runs(&mut self, inventory: &Inventory) -> Vec<pb::RunEvent> {
        self.live.clear();
        self.registered_live.clear();
        self.registered_ended.clear();
        self.adopted.clear();
        self.logs_requests.clear();
        let mut runs: BTreeMap<RunId, pb::RunEvent> = self.unsent.clone();
        self.registered_ended.extend(self.unsent.keys().copied());
        for observed in &inventory.runs {
            let reason = self.stop_reasons.get(&observed.run).copied();
            let Some(event) = wire::observed_to_wire(observed, inventory.at, reason) else {
                continue;
            };
            match observed.state {
                ObservedState::Starting | ObservedState::Running { .. } => {
                    self.live.insert(observed.run);
                    self.registered_live.insert(observed.run);
                }
                ObservedState::Exited { .. } => {
                    self.registered_ended.insert(observed.run);
                }
                ObservedState::NeverStarted => {}
            }
            runs.insert(observed.run, event);
        }
        runs.into_values().collect()
    }
}

/// The stream client. See the module docs for what a session does.
pub struct Attach {
    options: AttachOptions,
    /// The configured server addresses (replicas), in order.
    addresses: Vec<String>,
    tls: Option<ClientTlsConfig>,
    bearer: Bearer,
}

impl Attach {
    /// Checks the addresses, TLS settings and token; connects nothing yet.
    /// `server.address` may name several replicas, comma-separated.
    pub fn new(options: AttachOptions) -> Result<Self, AttachError> {
        let addresses: Vec<String> = options
            .server
            .address
            .split(',')
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect();
        let mut tls = None;
        if addresses.iter().any(|a| a.starts_with("https://")) {
            let address = options.server.address.clone();
            let path = options
                .server
                .ca_cert
                .clone()
                .ok_or_else(|| AttachError::NoCaCert {
                    address: address.clone(),
                })?;
            let pem = std::fs::read(&path).map_err(|source| AttachError::CaCert {
                path: path.clone(),
                source,
            })?;
            tls = Some(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)));
        }
        let bearer = options
            .token
            .as_deref()
            .map(|token| format!("Bearer {token}").parse::<MetadataValue<Ascii>>())
            .transpose()
            .map_err(|_| AttachError::Token)?;
        let attach = Self {
            options,
            addresses,
            tls,
            bearer: Bearer(bearer),
        };
        if attach.addresses.is_empty() {
            return Err(AttachError::Address {
                address: attach.options.server.address.clone(),
                message: "no address given".into(),
            });
        }
        for a in &attach.addresses {
            attach.endpoint(a)?;
        }
        Ok(attach)
    }

    /// The endpoint for one server address (a configured one, or a leader
    /// a follower named).
    fn endpoint(&self, address: &str) -> Result<Endpoint, AttachError> {
        let mut endpoint =
            Endpoint::from_shared(address.to_owned()).map_err(|err| AttachError::Address {
                address: address.to_owned(),
                message: err.to_string(),
            })?;
        endpoint = endpoint
            .connect_timeout(Duration::from_millis(
                self.options.server.connect_timeout_ms,
            ))
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        if address.starts_with("https://") {
            let tls = self.tls.clone().ok_or_else(|| AttachError::NoCaCert {
                address: address.to_owned(),
            })?;
            endpoint = endpoint.tls_config(tls).map_err(|err| AttachError::Tls {
                address: address.to_owned(),
                message: error_chain(&err),
            })?;
        }
        Ok(endpoint)
    }

    /// Serves the server until `shutdown` completes (then closes the stream
    /// and returns `Ok`) or something retrying cannot fix happens.
    ///
    /// Call order: start `RunManager::run` on the other ends of `commands`
    /// and `reports` first; its first report, the inventory it takes when it
    /// starts, opens the first session. Returning drops `commands`, which
    /// ends the run manager and leaves every container running for the next
    /// executor process to adopt.
    pub async fn run(
        self,
        commands: mpsc::Sender<Command>,
        reports: mpsc::Receiver<Report>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AttachError> {
        let mut shutdown: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(shutdown);
        let mut queue = pump(reports);
        let mut book = Book::default();
        let server = &self.options.server;
        let mut backoff = Backoff::new(
            Duration::from_millis(server.reconnect_initial_ms),
            Duration::from_millis(server.reconnect_max_ms),
            self.options.jitter_seed,
        );
        // The run manager lists its containers by itself when it starts;
        // every later session asks it to list them again.
        let mut ask_inventory = false;
        // Which server to attach to: a configured replica, or the leader a
        // follower named; on failure, the next configured replica.
        let mut next = 0;
        let mut address = self.addresses[0].clone();
        let mut redirected = false;
        loop {
            let inventory = tokio::select! {
                () = &mut shutdown => return Ok(()),
                inventory = next_inventory(&mut queue, &commands, &mut book, ask_inventory) => inventory?,
            };
            ask_inventory = true;
            let end = match inventory {
                Some(inventory) => {
                    self.session(
                        &address,
                        inventory,
                        &mut book,
                        &mut queue,
                        &commands,
                        &mut shutdown,
                    )
                    .await
                }
                None => SessionEnd::Broken {
                    registered: false,
                    reason: format!(
                        "the run manager did not list its containers within {INVENTORY_TIMEOUT:?}"
                    ),
                },
            };
            let (registered, reason) = match end {
                SessionEnd::Shutdown => return Ok(()),
                SessionEnd::Fatal(err) => return Err(err),
                SessionEnd::Broken { registered, reason } => (registered, reason),
                SessionEnd::Redirect { leader } if !redirected || leader != address => {
                    // At once, once: a replica that keeps naming a leader
                    // that sends us back is retried with back-off below.
                    tracing::info!(follower = %address, %leader, "attaching to the leader");
                    address = leader;
                    redirected = true;
                    continue;
                }
                SessionEnd::Redirect { leader } => {
                    (false, format!("{leader} says it is not the leader"))
                }
            };
            redirected = false;
            if registered {
                backoff.reset();
            } else {
                // Try the next replica (a leader that died, or a follower
                // that knows no leader yet).
                next = (next + 1) % self.addresses.len();
                address = self.addresses[next].clone();
            }
            let delay = backoff.next_delay();
            tracing::warn!(server = %address, %reason, retry_in = ?delay, "not attached to the server; retrying");
            // Keep draining reports while waiting, so the run manager never
            // blocks and terminal events are kept for the next registration.
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    () = &mut sleep => break,
                    report = queue.recv() => match report {
                        Some(report) => book.offline(report),
                        None => return Err(AttachError::ManagerGone),
                    },
                }
            }
        }
    }

    /// One session: connect, register, serve until the stream ends.
    async fn session(
        &self,
        address: &str,
        inventory: Inventory,
        book: &mut Book,
        queue: &mut mpsc::UnboundedReceiver<Report>,
        commands: &mpsc::Sender<Command>,
        shutdown: &mut Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> SessionEnd {
        let runs = book.registration_runs(&inventory);
        let n_runs = runs.len();
        let register = wire::register(self.options.host.clone(), runs, &self.options.version);
        let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_CAPACITY);
        // Cannot fail: the receiver is right here.
        let _ = outbound.try_send(register);
        let attach = async {
            let endpoint = self.endpoint(address).map_err(|e| e.to_string())?;
            let channel = endpoint
                .connect()
                .await
                .map_err(|err| format!("cannot connect to {address}: {}", error_chain(&err)))?;
            let mut client = ExecutorServiceClient::with_interceptor(channel, self.bearer.clone());
            tokio::time::timeout(
                REGISTER_TIMEOUT,
                client.attach(ReceiverStream::new(outbound_rx)),
            )
            .await
            .map_err(|_| format!("{address} did not answer `register` within {REGISTER_TIMEOUT:?}"))
            .map(|answer| answer.map(tonic::Response::into_inner))
        };
        let attached = tokio::select! {
            () = &mut *shutdown => return SessionEnd::Shutdown,
            attached = attach => attached,
        };
        let mut inbound = match attached {
            Ok(Ok(inbound)) => inbound,
            Ok(Err(status)) => return status_end(status, false, "the server refused the stream"),
            Err(reason) => {
                return SessionEnd::Broken {
                    registered: false,
                    reason,
                };
            }
        };
        // The server answers the call only after it has reconciled the
        // registration, so every run it reported is now with the server.
        book.unsent.clear();
        tracing::debug!(%address, n_runs, "register sent");
        let mut registered = false;
        let mut heartbeat = heartbeat_timer(DEFAULT_HEARTBEAT);
        loop {
            tokio::select! {
                () = &mut *shutdown => {
                    // Dropping the sender ends the request stream: the server
                    // sees the executor leave rather than a broken connection.
                    drop(outbound);
                    tracing::info!("closing the stream to the server; containers keep running");
                    return SessionEnd::Shutdown;
                }
                message = inbound.message() => match message {
                    Ok(Some(message)) => {
                        if let Err(end) = self
                            .handle_message(message, book, commands, &outbound, &mut registered, &mut heartbeat)
                            .await
                        {
                            return end;
                        }
                    }
                    Ok(None) => {
                        return SessionEnd::Broken {
                            registered,
                            reason: "the server closed the stream".into(),
                        };
                    }
                    Err(status) => return status_end(status, registered, "the stream broke"),
                },
                report = queue.recv() => {
                    let Some(report) = report else {
                        return SessionEnd::Fatal(AttachError::ManagerGone);
                    };
                    if let Err(reason) = handle_report(report, book, &outbound).await {
                        return SessionEnd::Broken { registered, reason };
                    }
                }
                _ = heartbeat.tick() => {
                    if outbound.send(wire::heartbeat(SystemTime::now())).await.is_err() {
                        return SessionEnd::Broken {
                            registered,
                            reason: "the stream closed".into(),
                        };
                    }
                }
            }
        }
    }

    /// Acts on one message from the server.
    async fn handle_message(
        &self,
        message: pb::SchedulerMessage,
        book: &mut Book,
        commands: &mpsc::Sender<Command>,
        outbound: &mpsc::Sender<pb::ExecutorMessage>,
        registered: &mut bool,
        heartbeat: &mut tokio::time::Interval,
    ) -> Result<(), SessionEnd> {
        let message = match wire::from_server(message) {
            Ok(message) => message,
            Err(err) => {
                tracing::warn!(error = %err, "ignoring a malformed message from the server");
                return Ok(());
            }
        };
        let command = match message {
            FromServer::Registered(answer) => {
                *registered = true;
                book.adopted = answer.adopted.iter().copied().collect();
                let interval = answer
                    .heartbeat_interval
                    .unwrap_or(DEFAULT_HEARTBEAT)
                    .max(MIN_HEARTBEAT);
                *heartbeat = heartbeat_timer(interval);
                tracing::info!(
                    host = %answer.host_id,
                    heartbeat_interval = ?interval,
                    heartbeat_timeout = ?answer.heartbeat_timeout,
                    n_reported_live = book.registered_live.len(),
                    n_adopted = answer.adopted.len(),
                    "registered with the server"
                );
                return Ok(());
            }
            FromServer::Launch { run, spec } => {
                book.live.insert(run);
                Command::Launch { run, spec }
            }
            FromServer::Stop {
                run,
                grace_ms,
                reason,
            } => {
                if book.registered_live.contains(&run) && !book.adopted.contains(&run) {
                    // Reported at registration, not adopted: the server does
                    // not own this run and will never account for it.
                    tracing::info!(%run, "the server does not own this run: stopping and removing it");
                    Command::Discard { run, grace_ms }
                } else {
                    book.stop_reasons.insert(run, reason);
                    Command::Stop {
                        run,
                        grace_ms,
                        cause: reason.cause(),
                    }
                }
            }
            FromServer::Logs {
                request_id,
                run,
                tail_lines,
            } => {
                book.logs_requests.insert(request_id, tail_lines);
                Command::FetchLogs { request_id, run }
            }
            FromServer::BadLogsRequest { request_id, error } => {
                tracing::warn!(request_id, %error, "a logs request names no valid run");
                return outbound
                    .send(wire::logs_error_to_wire(request_id, &error))
                    .await
                    .map_err(|_| SessionEnd::Broken {
                        registered: *registered,
                        reason: "the stream closed".into(),
                    });
            }
            FromServer::Refused { run, code, message } => {
                match run {
                    Some(run) if book.registered_ended.contains(&run) => {
                        // An outcome reported again at registration that the
                        // server already had: expected, nothing to do.
                        tracing::debug!(%run, ?code, %message, "the server already had this outcome");
                        return Ok(());
                    }
                    Some(run) if code.disowns_run() && book.live.contains(&run) => {
                        tracing::warn!(%run, ?code, %message, "the server disowns a run that runs here: stopping and removing it");
                        Command::Discard {
                            run,
                            grace_ms: self.options.disown_grace.as_millis() as u64,
                        }
                    }
                    _ => {
                        tracing::warn!(run = ?run.map(|r| r.to_string()), ?code, %message, "the server refused a report");
                        return Ok(());
                    }
                }
            }
        };
        commands
            .send(command)
            .await
            .map_err(|_| SessionEnd::Fatal(AttachError::ManagerGone))
    }
}

/// Sends one run manager report on the stream; `Err` if the stream closed
/// (a terminal event that could not be sent is kept for the next
/// registration).
async fn handle_report(
    report: Report,
    book: &mut Book,
    outbound: &mpsc::Sender<pb::ExecutorMessage>,
) -> Result<(), String> {
    match report {
        Report::Run(event) => {
            book.observe(&event);
            let reason = book.stop_reasons.get(&event.run).copied();
            let Some(wire) = wire::run_event_to_wire(&event, reason) else {
                return Ok(());
            };
            tracing::debug!(run = %event.run, kind = ?event.kind, "reporting");
            if outbound
                .send(wire::run_event_message(wire.clone()))
                .await
                .is_err()
            {
                if event.kind.is_terminal() {
                    book.unsent.insert(event.run, wire);
                }
                return Err("the stream closed".into());
            }
            Ok(())
        }
        Report::Logs(reply) => {
            let tail_lines = book.logs_requests.remove(&reply.request_id).unwrap_or(0);
            for message in wire::logs_to_wire(&reply, tail_lines, wire::MAX_LOG_CHUNK_BYTES) {
                if outbound.send(message).await.is_err() {
                    return Err("the stream closed".into());
                }
            }
            Ok(())
        }
        // A listing that arrived after its session had given up waiting.
        Report::Inventory(_) => Ok(()),
    }
}

/// Waits for the run manager's next inventory (asking for one if `ask`),
/// keeping the reports that come before it as offline ones. `Ok(None)` if
/// none comes within `INVENTORY_TIMEOUT`.
async fn next_inventory(
    queue: &mut mpsc::UnboundedReceiver<Report>,
    commands: &mpsc::Sender<Command>,
    book: &mut Book,
    ask: bool,
) -> Result<Option<Inventory>, AttachError> {
    if ask {
        commands
            .send(Command::Reconcile)
            .await
            .map_err(|_| AttachError::ManagerGone)?;
    }
    let deadline = Instant::now() + INVENTORY_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, queue.recv()).await {
            Err(_) => return Ok(None),
            Ok(None) => return Err(AttachError::ManagerGone),
            Ok(Some(Report::Inventory(inventory))) => return Ok(Some(inventory)),
            Ok(Some(other)) => book.offline(other),
        }
    }
}

/// Moves the run manager's reports into an unbounded queue, in order. The
/// run manager waits when its report channel is full, and it must never
/// wait on the network: while a session connects or backs off, reports pile
/// up here (a few per run at most) instead of stalling launches and stops.
fn pump(mut reports: mpsc::Receiver<Report>) -> mpsc::UnboundedReceiver<Report> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(report) = reports.recv().await {
            if tx.send(report).is_err() {
                break;
            }
        }
    });
    rx
}

/// A heartbeat timer whose first tick is one interval from now; a late tick
/// is not followed by a burst.
fn heartbeat_timer(interval: Duration) -> tokio::time::Interval {
    let mut timer = tokio::time::interval_at(Instant::now() + interval, interval);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    timer
}

/// A session end for a status from the server: fatal for the codes that
/// retrying cannot change, a broken stream otherwise.
fn status_end(status: Status, registered: bool, what: &str) -> SessionEnd {
    if let Some(leader) = ebb_proto::leader_hint(&status) {
        return SessionEnd::Redirect { leader };
    }
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument => {
            SessionEnd::Fatal(AttachError::Refused {
                code: status.code(),
                message: status.message().to_owned(),
            })
        }
        code => SessionEnd::Broken {
            registered,
            reason: format!("{what}: {code:?}: {}", status.message()),
        },
    }
}

/// An error and its sources, `a: b: c` (tonic's transport errors say
/// "transport error" at the top and the useful part below).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ObservedRun;
    use pb::run_event::Kind;
    use pb::scheduler_message::Message as Down;

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter() {
        let initial = Duration::from_millis(200);
        let max = Duration::from_millis(5000);
        let mut backoff = Backoff::new(initial, max, 7);
        let mut step = initial;
        for attempt in 0..12 {
            let delay = backoff.next_delay();
            assert!(
                delay >= step / 2 && delay <= step,
                "attempt {attempt}: {delay:?} outside [{:?}, {step:?}]",
                step / 2
            );
            step = (step * 2).min(max);
        }
        assert_eq!(backoff.step, max, "capped");
        backoff.reset();
        assert!(backoff.next_delay() <= initial, "reset starts over");
    }

    #[test]
    fn backoff_jitter_spreads_executors() {
        // Executors seeded differently do not retry in lockstep.
        let delays: HashSet<Duration> = (0..20)
            .map(|seed| {
                let mut backoff =
                    Backoff::new(Duration::from_millis(1000), Duration::from_secs(5), seed);
                backoff.next_delay()
            })
            .collect();
        assert!(delays.len() > 10, "{delays:?}");
    }

    fn run(task: u32) -> RunId {
        RunId::new(1, task, 1).unwrap()
    }

    fn event(task: u32, kind: RunEventKind) -> RunEvent {
        RunEvent {
            run: run(task),
            at: SystemTime::now(),
            kind,
            message: String::new(),
        }
    }

    #[test]
    fn registration_reports_containers_and_unsent_outcomes() {
        let mut book = Book::default();
        // Task 0 ended while disconnected and its container is already gone;
        // task 1 was removed after an outcome that reached the server.
        book.offline(Report::Run(event(0, RunEventKind::Succeeded)));
        book.offline(Report::Run(event(0, RunEventKind::Removed)));
        let inventory = Inventory {
            at: SystemTime::now(),
            runs: vec![
                ObservedRun {
                    run: run(2),
                    container_id: Some("c2".into()),
                    state: ObservedState::Running { started_at: None },
                    outcome: None,
                },
                ObservedRun {
                    run: run(3),
                    container_id: Some("c3".into()),
                    state: ObservedState::Exited {
                        exit_code: 4,
                        oom_killed: false,
                        finished_at: None,
                    },
                    outcome: None,
                },
                ObservedRun {
                    run: run(4),
                    container_id: Some("c4".into()),
                    state: ObservedState::NeverStarted,
                    outcome: None,
                },
            ],
        };
        let runs = book.registration_runs(&inventory);
        let got: Vec<(u32, &str)> = runs
            .iter()
            .map(|e| {
                let kind = match e.kind.as_ref().unwrap() {
                    Kind::Started(_) => "started",
                    Kind::Exited(x) if x.exit_code == 0 => "succeeded",
                    Kind::Exited(_) => "failed",
                    _ => "other",
                };
                (e.run.unwrap().task_index, kind)
            })
            .collect();
        assert_eq!(got, [(0, "succeeded"), (2, "started"), (3, "failed")]);
        assert_eq!(book.registered_live, HashSet::from([run(2)]));
        assert_eq!(book.registered_ended, HashSet::from([run(0), run(3)]));
        assert_eq!(book.live, HashSet::from([run(2)]));
    }

    #[test]
    fn stop_reasons_are_echoed_and_forgotten_on_removal() {
        let mut book = Book::default();
        book.stop_reasons.insert(run(1), StopReason::Restart);
        book.offline(Report::Run(event(
            1,
            RunEventKind::Stopped {
                cause: crate::model::StopCause::Preempt,
                sigkilled: false,
                exit_code: Some(0),
            },
        )));
        let kept = book.unsent.get(&run(1)).unwrap();
        assert!(matches!(
            kept.kind,
            Some(Kind::Stopped(pb::RunStopped { reason, .. })) if reason == pb::StopReason::Restart as i32
        ));
        book.observe(&event(1, RunEventKind::Removed));
        assert!(book.stop_reasons.is_empty());
    }

    #[test]
    fn only_unfixable_statuses_are_fatal() {
        for (code, fatal) in [
            (Code::Unauthenticated, true),
            (Code::PermissionDenied, true),
            (Code::InvalidArgument, true),
            (Code::Unavailable, false),
            (Code::Aborted, false),
            (Code::DeadlineExceeded, false),
            (Code::Internal, false),
        ] {
            let end = status_end(Status::new(code, "x"), false, "test");
            assert_eq!(matches!(end, SessionEnd::Fatal(_)), fatal, "{code:?}");
        }
    }

    fn attach() -> Attach {
        Attach::new(AttachOptions {
            server: ServerConfig::default(),
            token: None,
            host: pb::HostSpec::default(),
            disown_grace: Duration::from_millis(1234),
            version: "test".into(),
            jitter_seed: 1,
        })
        .unwrap()
    }

    /// Feeds one server message to `handle_message`; returns the command it
    /// sent to the run manager, if any.
    async fn command_for(book: &mut Book, message: Down) -> Option<Command> {
        let (commands, mut commands_rx) = mpsc::channel(4);
        let (outbound, _outbound_rx) = mpsc::channel(4);
        let mut registered = true;
        let mut heartbeat = heartbeat_timer(DEFAULT_HEARTBEAT);
        let result = attach()
            .handle_message(
                pb::SchedulerMessage {
                    message: Some(message),
                },
                book,
                &commands,
                &outbound,
                &mut registered,
                &mut heartbeat,
            )
            .await;
        assert!(result.is_ok());
        commands_rx.try_recv().ok()
    }

    fn stop(task: u32) -> Down {
        Down::Stop(pb::StopTask {
            run: Some(wire::run_to_wire(run(task))),
            grace: Some(prost_types::Duration {
                seconds: 5,
                nanos: 0,
            }),
            reason: pb::StopReason::Cancel as i32,
        })
    }

    fn refused(task: u32, code: &str) -> Down {
        Down::Refused(pb::Refused {
            run: Some(wire::run_to_wire(run(task))),
            code: code.into(),
            message: "no".into(),
        })
    }

    #[tokio::test]
    async fn runs_the_server_disowns_are_discarded_and_owned_ones_stopped() {
        let mut book = Book::default();
        // Registration reported tasks 1 and 2 live and task 3 ended; the
        // server adopted task 1 only.
        book.registered_live.extend([run(1), run(2)]);
        book.live.extend([run(1), run(2), run(4)]);
        book.registered_ended.insert(run(3));
        book.adopted.insert(run(1));
        assert_eq!(
            command_for(&mut book, stop(1)).await,
            Some(Command::Stop {
                run: run(1),
                grace_ms: 5000,
                cause: crate::model::StopCause::Cancel
            }),
            "an adopted run is stopped and reported"
        );
        assert_eq!(
            command_for(&mut book, stop(2)).await,
            Some(Command::Discard {
                run: run(2),
                grace_ms: 5000
            }),
            "a reported run the server did not adopt is discarded"
        );
        assert_eq!(
            command_for(&mut book, refused(4, "stale_run")).await,
            Some(Command::Discard {
                run: run(4),
                grace_ms: 1234
            }),
            "a live run the server disowns is discarded"
        );
        for (task, code) in [(3, "stale_run"), (5, "foreign_run"), (1, "wrong_state")] {
            assert_eq!(
                command_for(&mut book, refused(task, code)).await,
                None,
                "task {task}, {code}: an ended or unknown run, or a mere state mismatch"
            );
        }
    }

    #[test]
    fn bad_addresses_and_missing_ca_are_errors_up_front() {
        let options = |address: &str| AttachOptions {
            server: ServerConfig {
                address: address.into(),
                ..ServerConfig::default()
            },
            token: None,
            host: pb::HostSpec::default(),
            disown_grace: Duration::from_secs(1),
            version: "test".into(),
            jitter_seed: 1,
        };
        assert!(matches!(
            Attach::new(options("http://[::1")),
            Err(AttachError::Address { .. })
        ));
        assert!(matches!(
            Attach::new(options("https://127.0.0.1:7600")),
            Err(AttachError::NoCaCert { .. })
        ));
        let mut with_token = options("http://127.0.0.1:7600");
        with_token.token = Some("line\nbreak".into());
        assert!(matches!(Attach::new(with_token), Err(AttachError::Token)));
        Attach::new(options("http://127.0.0.1:7600")).unwrap();
    }
}
