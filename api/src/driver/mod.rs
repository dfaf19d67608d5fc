//! The driver: one thread that owns the scheduler core. Services and
//! executor streams talk to it through a channel of [`Request`]s; nothing
//! else touches the core or the store.
//!
//! ```text
//!  requests ─▶ apply to core ─▶ record ─┐            (a batch of up to max_inputs_per_batch)
//!                (refused: reply error,  │
//!                 nothing stored)        ▼
//!                              store.append (fsync) ─▶ replies, launch/stop commands, watch events
//!  round due ─▶ tick ─▶ plan_round ─▶ Round record ─▶ store.append (fsync)
//!                                    ─▶ commit(now_at_commit, plan as stored) ─▶ commands, events
//! ```
//!
//! **Durability.** The core validates every input; an accepted one is
//! applied, encoded as a [`Record`] and appended to the batch. Nothing the
//! batch caused leaves the process — no reply, no executor command, no watch
//! event — until the batch is on disk. A crash before that loses only
//! inputs nobody was told about, and a refused input is never stored. A
//! round's plan is on disk before it is committed, and the commit uses the
//! plan *decoded from the stored bytes*, so replaying the log commits
//! exactly what the live server committed. A store failure stops the
//! driver (the core would be ahead of the disk), except an unreachable
//! store ([`StoreError::Unavailable`]): the driver then retries the same
//! batch (every append is idempotent) with back-off, acknowledging nothing
//! and planning no round until it is durable.
//!
//! **Leadership.** With etcd, the driver runs only while its replica leads
//! ([`crate::ha`]). Its writes are fenced; the `deposed` flag (set when the
//! lease is lost) or a fenced write refused ([`StoreError::Deposed`]) stops
//! it at once, and dropping it closes executor and watch streams so that
//! clients move to the new leader. After a (re)start it waits up to
//! `ha.reconcile_window` for the hosts it knows to re-attach and report
//! their runs before it plans a round.
//!
//! **Executors.** Each host has a slot: its stream (if attached), an outbox
//! for commands while it is not, and its last-seen time. Registration
//! reconciles reported runs with the core (see `executor.proto`); silence
//! beyond the heartbeat timeout declares the host lost.

mod exec;
pub mod hub;
mod jobs;
mod market;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ebb_proto::v1 as pb;
use ebb_scheduler as core;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use crate::auth::Principal;
use crate::config::Config;
use crate::convert;
use crate::error::ApiError;
use crate::metrics::{self, Metrics};
use crate::records::{self, JobExtras, Record, RunReport, ServerState, SnapshotFile};
use crate::store::{Batch, Store, StoreError};
use crate::validate::Limits;
use hub::{EventHub, HubEvent};

/// A reply channel.
pub type Reply<T> = oneshot::Sender<Result<T, ApiError>>;

/// Commands from the server to one executor stream.
pub type ExecSender = mpsc::UnboundedSender<Result<pb::SchedulerMessage, Status>>;

/// An attached executor stream.
pub struct ExecConn {
    /// Distinguishes a host's successive streams.
    pub id: u64,
    /// Where commands go.
    pub tx: ExecSender,
    /// Milliseconds since the driver's start when the stream last received
    /// anything (the reader task updates it; heartbeats never enter the channel).
    pub last_seen_ms: Arc<AtomicU64>,
    /// Dropped with the connection: tells the stream's reader to stop, so a
    /// closed or replaced stream is torn down on both halves.
    pub close: oneshot::Sender<()>,
}

/// What a watch starts from.
pub struct WatchStart {
    /// One snapshot event per job.
    pub snapshots: Vec<pb::WatchEvent>,
    /// The feed position the snapshots reflect.
    pub cursor: u64,
    /// For a single-job watch: the job has already ended.
    pub finished: bool,
}

/// Everything the driver does, as messages.
// Requests are moved once into the channel; boxing the large ones would
// only add an allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum Request {
    /// JobService.CreateJob.
    CreateJob {
        /// Caller.
        principal: Principal,
        /// The validated request.
        req: pb::CreateJobRequest,
        /// The created (or, for a retry, existing) job.
        reply: Reply<pb::Job>,
    },
    /// JobService.GetJob.
    GetJob {
        /// Caller.
        principal: Principal,
        /// Job id.
        job: u64,
        /// The job.
        reply: Reply<pb::Job>,
    },
    /// JobService.ListJobs.
    ListJobs {
        /// Caller.
        principal: Principal,
        /// Request.
        req: pb::ListJobsRequest,
        /// A page.
        reply: Reply<pb::ListJobsResponse>,
    },
    /// JobService.ListTasks.
    ListTasks {
        /// Caller.
        principal: Principal,
        /// Request.
        req: pb::ListTasksRequest,
        /// A page.
        reply: Reply<pb::ListTasksResponse>,
    },
    /// JobService.CancelJob.
    CancelJob {
        /// Caller.
        principal: Principal,
        /// Job id.
        job: u64,
        /// Validated grace.
        grace_ms: Option<u64>,
        /// The job after the cancel.
        reply: Reply<pb::Job>,
    },
    /// JobService.ExplainPending.
    Explain {
        /// Caller.
        principal: Principal,
        /// Request.
        req: pb::ExplainPendingRequest,
        /// The explanation.
        reply: Reply<pb::ExplainPendingResponse>,
    },
    /// Start of a WatchJob (`job`) or WatchJobs (`team` filter) stream.
    Watch {
        /// Caller.
        principal: Principal,
        /// One job, or all visible.
        job: Option<u64>,
        /// Team filter for all jobs.
        team: Option<String>,
        /// Snapshot and cursor.
        reply: Reply<WatchStart>,
    },
    /// JobService.GetTaskLogs: asked of the executor.
    TaskLogs {
        /// Caller.
        principal: Principal,
        /// Request.
        req: pb::GetTaskLogsRequest,
        /// The logs.
        reply: Reply<pb::GetTaskLogsResponse>,
    },
    /// MarketService.ListPools.
    Pools {
        /// Pools.
        reply: Reply<Vec<pb::Pool>>,
    },
    /// MarketService.ReportStreamingDemand.
    StreamingDemand {
        /// Pool.
        pool: String,
        /// Demand.
        demand_micro_ie: u64,
        /// The pool after the report.
        reply: Reply<pb::Pool>,
    },
    /// MarketService.ReportDemandForecast.
    Forecast {
        /// Pool.
        pool: String,
        /// (time ms, micro-IE), validated.
        points: Vec<(u64, u64)>,
        /// Done.
        reply: Reply<()>,
    },
    /// MarketService.GetDemandForecast.
    GetForecast {
        /// Pool.
        pool: String,
        /// The forecast.
        reply: Reply<pb::GetDemandForecastResponse>,
    },
    /// MarketService.ReportFailover.
    Failover {
        /// Region.
        region: String,
        /// Failed over or back.
        active: bool,
        /// Done.
        reply: Reply<()>,
    },
    /// MarketService.ListReservations.
    Reservations {
        /// All pools' reservations.
        reply: Reply<pb::ListReservationsResponse>,
    },
    /// MarketService.SetReservations.
    SetReservations {
        /// Request.
        req: pb::SetReservationsRequest,
        /// The pool after.
        reply: Reply<pb::Pool>,
    },
    /// An external reservation source (EC2) takes over the pools'
    /// reservations: from now on `SetReservations` is refused and
    /// `ListReservations` names the source. The server attaches it at startup.
    AttachReservationSource {
        /// The source's name, e.g. `ec2`.
        name: String,
        /// Done.
        reply: Reply<()>,
    },
    /// A fresh snapshot of the attached reservation source: its instance
    /// types, each pool's reservations and (with `streaming`) streaming
    /// demand, applied where they changed, in one durable batch.
    CapacitySnapshot {
        /// The snapshot.
        snapshot: Arc<crate::capacity::Snapshot>,
        /// Feed the pools' streaming figures as streaming demand.
        streaming: bool,
        /// How many inputs were applied.
        reply: Reply<usize>,
    },
    /// MarketService.GetLedger.
    Ledger {
        /// Caller (a team sees its own rows).
        principal: Principal,
        /// Range start (ms), unset: first sample.
        start: Option<u64>,
        /// Range end (ms), unset: now.
        end: Option<u64>,
        /// Rows.
        reply: Reply<pb::GetLedgerResponse>,
    },
    /// MarketService.GetUtilization (and the finance dashboard).
    Utilization {
        /// Range start (ms), unset: 24 h before the end.
        start: Option<u64>,
        /// Range end (ms), unset: now.
        end: Option<u64>,
        /// Step (ms), 0: the server picks (hourly, or at most 1,000 steps).
        step_ms: u64,
        /// Row grouping.
        by: crate::finance::Grouping,
        /// Series and totals.
        reply: Reply<pb::GetUtilizationResponse>,
    },
    /// MarketService.GetPoolTotals.
    PoolTotals {
        /// Range start.
        start: Option<u64>,
        /// Range end.
        end: Option<u64>,
        /// Rows.
        reply: Reply<pb::GetPoolTotalsResponse>,
    },
    /// An executor registered on a new stream.
    Attach {
        /// Its host, validated.
        host: pb::HostSpec,
        /// Runs it still has.
        runs: Vec<pb::RunEvent>,
        /// Its stream.
        conn: ExecConn,
        /// Accepted or refused.
        reply: Reply<()>,
    },
    /// An executor's run report.
    RunEvent {
        /// The host.
        host: String,
        /// Its stream.
        conn_id: u64,
        /// The report.
        event: pb::RunEvent,
    },
    /// A chunk of logs an executor sent.
    Logs {
        /// The host.
        host: String,
        /// The chunk.
        chunk: pb::LogsChunk,
    },
    /// An executor stream ended.
    Detached {
        /// The host.
        host: String,
        /// Its stream.
        conn_id: u64,
    },
    /// Flush, snapshot, close every stream and stop.
    Shutdown {
        /// Done.
        reply: oneshot::Sender<()>,
    },
}

/// The services' side of the driver.
#[derive(Clone)]
pub struct DriverHandle {
    tx: mpsc::Sender<Request>,
    /// Job events for watch streams.
    pub hub: Arc<EventHub>,
    /// Validation limits from the server's catalog.
    pub limits: Arc<Limits>,
    /// False once the driver thread has stopped.
    pub alive: Arc<AtomicBool>,
    /// The driver's clock origin for executor last-seen times.
    pub started: Instant,
    /// True while the store is unreachable: answers come from memory and
    /// may include changes not yet durable.
    pub store_stale: Arc<AtomicBool>,
}

impl DriverHandle {
    /// Sends a request built around a reply channel and waits for the answer.
    pub async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx)).await?;
        rx.await
            .map_err(|_| ApiError::Unavailable("the scheduler is shutting down".into()))?
    }

    /// Sends a request without waiting for an answer.
    pub async fn send(&self, r: Request) -> Result<(), ApiError> {
        self.tx
            .send(r)
            .await
            .map_err(|_| ApiError::Unavailable("the scheduler is shutting down".into()))
    }

    /// Asks the driver to flush, snapshot and stop; returns when it has.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Request::Shutdown { reply: tx }).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Capacity of the request channel: deep enough to absorb a burst of
/// executor reports from 10,000 hosts while a round is being planned;
/// senders wait (backpressure) beyond it.
const REQUEST_QUEUE: usize = 65_536;

/// How often the driver checks heartbeats, retention and ledger samples.
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(500);

/// How long a log request waits for the executor.
const LOGS_TIMEOUT: Duration = Duration::from_secs(10);

/// Replays the store and starts the driver thread.
/// `deposed` stops the driver when set (the replica lost its lease).
pub fn start(
    config: &Config,
    store: Box<dyn Store>,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
    deposed: Arc<AtomicBool>,
) -> anyhow::Result<(DriverHandle, std::thread::JoinHandle<anyhow::Result<()>>)> {
    let mut driver = Driver::load(config, store, metrics)?;
    driver.deposed = deposed;
    let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
    let handle = DriverHandle {
        tx,
        store_stale: driver.store_stale.clone(),
        hub: driver.hub.clone(),
        limits: Arc::new(Limits::from_catalog(driver.core.catalog())),
        alive: Arc::new(AtomicBool::new(true)),
        started: driver.started,
    };
    let alive = handle.alive.clone();
    let thread = std::thread::Builder::new()
        .name("ebb-driver".into())
        .spawn(move || {
            let r = driver.run(rx, runtime);
            alive.store(false, Ordering::SeqCst);
            if let Err(e) = &r {
                tracing::error!(error = %e, "driver stopped");
            }
            r
        })?;
    Ok((handle, thread))
}

impl Request {
    /// True for requests that only read the core (answered from memory,
    /// marked stale, while the store is unreachable).
    fn is_read(&self) -> bool {
        matches!(
            self,
            Request::GetJob { .. }
                | Request::ListJobs { .. }
                | Request::ListTasks { .. }
                | Request::Explain { .. }
                | Request::Pools { .. }
                | Request::GetForecast { .. }
                | Request::Reservations { .. }
                | Request::PoolTotals { .. }
        )
    }
}

/// A host's executor slot.
struct Slot {
    conn: Option<ExecConn>,
    /// Commands waiting for a stream.
    outbox: Vec<pb::SchedulerMessage>,
    /// When the host was last heard from, if it is not attached.
    detached_at: Instant,
}

/// A log request waiting for its executor.
struct LogsWait {
    reply: Reply<pb::GetTaskLogsResponse>,
    run: core::RunId,
    host: String,
    data: Vec<u8>,
    truncated: bool,
    deadline: Instant,
}

/// The driver state (see the module doc).
pub(crate) struct Driver {
    core: core::Scheduler,
    store: Box<dyn Store>,
    server: ServerState,
    extras: HashMap<core::JobId, Arc<JobExtras>>,
    /// Team and task count of every known job.
    job_info: HashMap<core::JobId, (Arc<str>, u32)>,
    /// Unfinished tasks per team (quota).
    team_live: HashMap<String, u64>,
    tasks_known: u64,
    /// (finish time, job): when retention makes each finished job forgettable.
    finished: BTreeSet<(u64, core::JobId)>,
    /// The host each task's latest run was placed on (for logs of ended runs).
    run_hosts: HashMap<core::TaskId, (u32, core::HostId)>,
    slots: HashMap<String, Slot>,
    /// The external source that owns reservations, if one is attached.
    reservation_source: Option<String>,
    /// Streaming demand last fed from that source, per pool (micro-IE), so
    /// an unchanged figure is not logged again on every refresh.
    fed_streaming: HashMap<core::PoolId, u64>,
    logs: HashMap<u64, LogsWait>,
    next_logs: u64,
    hub: Arc<EventHub>,
    metrics: Arc<Metrics>,
    config: Config,
    started: Instant,
    clock_ms: u64,
    // The open batch.
    seq: u64,
    batch: Batch,
    replies: Vec<Box<dyn FnOnce() + Send>>,
    outgoing: Vec<(String, pb::SchedulerMessage)>,
    events: Vec<Arc<HubEvent>>,
    actions: Vec<core::Action>,
    // Counters.
    records_since_snapshot: u64,
    bytes_since_snapshot: u64,
    round_generation: u64,
    last_round: Instant,
    last_housekeeping: Instant,
    last_sample_ms: u64,
    /// Ledger samples before this (ms) are already down-sampled.
    thinned_until: u64,
    replaying: bool,
    /// Set by the replica when its lease is lost: stop now.
    deposed: Arc<AtomicBool>,
    /// True while a batch waits for an unreachable store (shared with the
    /// services, which mark their answers stale meanwhile).
    store_stale: Arc<AtomicBool>,
    /// The request channel (taken by `run`).
    rx: Option<mpsc::Receiver<Request>>,
    /// Requests that change state, received while the store was
    /// unreachable: handled, in order, once it is back.
    deferred: std::collections::VecDeque<Request>,
    /// Until then (or until every known host is attached), no round is
    /// planned: hosts from before a restart or takeover report their runs.
    reconciling_until: Option<Instant>,
}

impl Driver {
    /// Rebuilds the core from the store (snapshot, then every record after it).
    fn load(
        config: &Config,
        store: Box<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Driver> {
        let loaded = store.load()?;
        let (core, server, seq) = match &loaded.snapshot {
            Some((seq, bytes)) => {
                let file: SnapshotFile = records::decode(bytes)
                    .map_err(|e| StoreError::Corrupt(format!("snapshot: {e}")))?;
                anyhow::ensure!(
                    file.version == records::FORMAT_VERSION,
                    "snapshot format version {} is not {}",
                    file.version,
                    records::FORMAT_VERSION
                );
                let core = core::Scheduler::restore(file.core)
                    .map_err(|e| anyhow::anyhow!("restoring the core snapshot: {e}"))?;
                (core, file.server, *seq)
            }
            None => {
                let core = core::Scheduler::try_new(config.scheduler.clone())
                    .map_err(|e| anyhow::anyhow!("scheduler configuration: {e}"))?;
                (core, ServerState::default(), 0)
            }
        };
        let hub = Arc::new(EventHub::new(
            config.watch.retained_events,
            core.last_event_seq(),
        ));
        let now = Instant::now();
        let mut d = Driver {
            clock_ms: core.now().as_millis(),
            core,
            store,
            server,
            extras: HashMap::new(),
            job_info: HashMap::new(),
            team_live: HashMap::new(),
            tasks_known: 0,
            finished: BTreeSet::new(),
            run_hosts: HashMap::new(),
            slots: HashMap::new(),
            reservation_source: None,
            fed_streaming: HashMap::new(),
            logs: HashMap::new(),
            next_logs: 1,
            hub,
            metrics,
            config: config.clone(),
            started: now,
            seq,
            batch: Batch::default(),
            replies: Vec::new(),
            outgoing: Vec::new(),
            events: Vec::new(),
            actions: Vec::new(),
            records_since_snapshot: 0,
            bytes_since_snapshot: 0,
            round_generation: u64::MAX,
            last_round: now,
            last_housekeeping: now,
            last_sample_ms: 0,
            thinned_until: 0,
            replaying: true,
            deposed: Arc::new(AtomicBool::new(false)),
            store_stale: Arc::new(AtomicBool::new(false)),
            rx: None,
            deferred: std::collections::VecDeque::new(),
            reconciling_until: None,
        };
        for (id, bytes) in &loaded.jobs {
            let x: JobExtras = records::decode(bytes)
                .map_err(|e| StoreError::Corrupt(format!("job {id} side data: {e}")))?;
            d.extras.insert(core::JobId(*id), Arc::new(x));
        }
        d.index_known_jobs();
        let n_records = loaded.records.len();
        for (seq, bytes) in &loaded.records {
            let record: Record = records::decode(bytes)
                .map_err(|e| StoreError::Corrupt(format!("record {seq}: {e}")))?;
            if let Err(e) = d.apply_record(&record) {
                // Records are only written once the core accepted them, and
                // the core is deterministic: this is a bug, not bad input.
                anyhow::bail!("replaying record {seq} failed: {e}");
            }
            d.seq = *seq;
            d.records_since_snapshot += 1;
            d.bytes_since_snapshot += bytes.len() as u64;
        }
        // Commands from before the restart are not re-sent: executors report
        // what they have when they re-register and reconciliation settles it.
        d.actions.clear();
        let events = std::mem::take(&mut d.events);
        d.hub.publish(events, d.core.last_event_seq());
        d.replaying = false;
        d.clock_ms = d.clock_ms.max(d.core.now().as_millis());
        d.server.next_job_id = d.server.next_job_id.max(1);
        // Hosts from before the restart get one heartbeat timeout to re-attach.
        for h in d.core.hosts() {
            d.slots.insert(
                h.spec().id.to_string(),
                Slot {
                    conn: None,
                    outbox: Vec::new(),
                    detached_at: now,
                },
            );
        }
        if !d.slots.is_empty() {
            d.reconciling_until = Some(now + config.ha.reconcile_window);
        }
        tracing::info!(
            snapshot = loaded.snapshot.as_ref().map(|(s, _)| *s),
            n_records,
            n_jobs = d.job_info.len(),
            n_hosts = d.slots.len(),
            "store replayed"
        );
        Ok(d)
    }

    /// Indexes the jobs the core knows (after a snapshot restore).
    fn index_known_jobs(&mut self) {
        for id in self.core.job_ids() {
            let Some(v) = self.core.job(id) else { continue };
            let team: Arc<str> = Arc::from(v.spec.team.as_str());
            let live = u64::from(v.counts.pending + v.counts.running + v.counts.stopping);
            *self.team_live.entry(team.to_string()).or_default() += live;
            self.tasks_known += u64::from(v.spec.n_tasks);
            if let Some(f) = v.finished_at {
                self.finished.insert((f.as_millis(), id));
            }
            self.job_info.insert(id, (team, v.spec.n_tasks));
        }
    }

    /// The wall clock in ms since the Unix epoch, never going backwards
    /// (the core refuses time that does).
    fn now(&mut self) -> u64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.clock_ms = self.clock_ms.max(wall);
        self.clock_ms
    }

    fn since_start_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    // ------------------------------------------------------------ the loop

    fn run(
        mut self,
        rx: mpsc::Receiver<Request>,
        rt: tokio::runtime::Handle,
    ) -> anyhow::Result<()> {
        self.rx = Some(rx);
        self.configure_pools()?;
        if self.store.first_sample()?.is_none() {
            self.take_sample();
        }
        self.update_gauges();
        self.flush()?;
        loop {
            self.check_deposed()?;
            let wait = self.next_wakeup();
            // Requests deferred while the store was unreachable come first.
            let first = match self.deferred.pop_front() {
                Some(r) => Ok(Some(r)),
                None => {
                    let rx = self.rx.as_mut().expect("set above");
                    rt.block_on(async { tokio::time::timeout(wait, rx.recv()).await })
                }
            };
            let mut shutdown = None;
            match first {
                Ok(Some(Request::Shutdown { reply })) => shutdown = Some(reply),
                Ok(Some(r)) => self.handle(r),
                Ok(None) => break,
                Err(_) => {}
            }
            let mut n = 1;
            while shutdown.is_none() && n < self.config.rounds.max_inputs_per_batch {
                let next = match self.deferred.pop_front() {
                    Some(r) => Ok(r),
                    None => self.rx.as_mut().expect("set above").try_recv(),
                };
                match next {
                    Ok(Request::Shutdown { reply }) => shutdown = Some(reply),
                    Ok(r) => self.handle(r),
                    Err(_) => break,
                }
                n += 1;
            }
            self.flush()?;
            if let Some(reply) = shutdown {
                self.stop()?;
                let _ = reply.send(());
                return Ok(());
            }
            if self.last_housekeeping.elapsed() >= HOUSEKEEPING_EVERY {
                self.housekeeping();
                self.flush()?;
            }
            if self.round_due() {
                self.round()?;
            }
            if self.snapshot_due() {
                self.snapshot()?;
            }
        }
        self.stop()
    }

    /// Fails with [`StoreError::Deposed`] once the replica lost its lease.
    fn check_deposed(&self) -> Result<(), StoreError> {
        if self.deposed.load(Ordering::SeqCst) {
            return Err(StoreError::Deposed(
                "the replica's etcd lease was lost; stopped scheduling".into(),
            ));
        }
        Ok(())
    }

    /// For `wait`, while a batch waits for the store: answers read-only
    /// requests at once from memory (the services mark them stale: they may
    /// show changes not yet durable, which nobody was told about) and defers
    /// every other request until the store is back. True if a shutdown was
    /// asked for.
    fn serve_reads_while_down(&mut self, wait: Duration) -> bool {
        let until = Instant::now() + wait;
        loop {
            let next = self.rx.as_mut().map(|rx| rx.try_recv());
            match next {
                Some(Ok(r)) if r.is_read() => {
                    let held = self.replies.len();
                    self.handle(r);
                    for reply in self.replies.drain(held..).collect::<Vec<_>>() {
                        reply();
                    }
                }
                Some(Ok(r)) => {
                    let shutdown = matches!(r, Request::Shutdown { .. });
                    self.deferred.push_back(r);
                    if shutdown {
                        return true;
                    }
                }
                _ => {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    std::thread::sleep(left.min(Duration::from_millis(5)));
                }
            }
        }
    }

    /// True while hosts from before a restart or takeover may still
    /// re-attach and report their runs (no round is planned meanwhile).
    fn reconciling(&mut self) -> bool {
        let Some(until) = self.reconciling_until else {
            return false;
        };
        let missing = self.slots.values().filter(|s| s.conn.is_none()).count();
        if missing > 0 && Instant::now() < until {
            return true;
        }
        self.reconciling_until = None;
        if missing > 0 {
            tracing::warn!(
                n_missing = missing,
                "reconciliation window over: planning without the hosts that have not re-attached"
            );
        } else {
            tracing::info!("every known host re-attached: planning rounds");
        }
        false
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        self.flush()?;
        if self.records_since_snapshot > 0 {
            self.snapshot()?;
        }
        for (_, slot) in self.slots.iter_mut() {
            if let Some(conn) = slot.conn.take() {
                let _ = conn
                    .tx
                    .send(Err(Status::unavailable("the server is shutting down")));
            }
        }
        self.hub.close();
        tracing::info!(seq = self.seq, "driver stopped cleanly");
        Ok(())
    }

    fn next_wakeup(&self) -> Duration {
        let mut wait = HOUSEKEEPING_EVERY.saturating_sub(self.last_housekeeping.elapsed());
        if self.core.generation() != self.round_generation {
            wait = wait.min(
                self.config
                    .rounds
                    .interval
                    .saturating_sub(self.last_round.elapsed()),
            );
        }
        if let Some(t) = self.core.poll_timeout() {
            let wall = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            wait = wait.min(Duration::from_millis(t.as_millis().saturating_sub(wall)));
        }
        wait.max(Duration::from_millis(1))
    }

    fn handle(&mut self, r: Request) {
        match r {
            Request::CreateJob {
                principal,
                req,
                reply,
            } => {
                let out = self.create_job(&principal, req);
                self.reply(reply, out);
            }
            Request::GetJob {
                principal,
                job,
                reply,
            } => {
                let out = self.get_job(&principal, job);
                self.reply(reply, out);
            }
            Request::ListJobs {
                principal,
                req,
                reply,
            } => {
                let out = self.list_jobs(&principal, &req);
                self.reply(reply, out);
            }
            Request::ListTasks {
                principal,
                req,
                reply,
            } => {
                let out = self.list_tasks(&principal, &req);
                self.reply(reply, out);
            }
            Request::CancelJob {
                principal,
                job,
                grace_ms,
                reply,
            } => {
                let out = self.cancel_job(&principal, job, grace_ms);
                self.reply(reply, out);
            }
            Request::Explain {
                principal,
                req,
                reply,
            } => {
                let out = self.explain(&principal, &req);
                self.reply(reply, out);
            }
            Request::Watch {
                principal,
                job,
                team,
                reply,
            } => {
                let out = self.watch_start(&principal, job, team);
                self.reply(reply, out);
            }
            Request::TaskLogs {
                principal,
                req,
                reply,
            } => self.task_logs(&principal, &req, reply),
            Request::Pools { reply } => {
                let out = Ok(self
                    .core
                    .pools()
                    .iter()
                    .map(convert::pool_to_wire)
                    .collect());
                self.reply(reply, out);
            }
            Request::StreamingDemand {
                pool,
                demand_micro_ie,
                reply,
            } => {
                let out = self.streaming_demand(pool, demand_micro_ie);
                self.reply(reply, out);
            }
            Request::Forecast {
                pool,
                points,
                reply,
            } => {
                let out = self.forecast(pool, points);
                self.reply(reply, out);
            }
            Request::GetForecast { pool, reply } => {
                let out = self.get_forecast(&pool);
                self.reply(reply, out);
            }
            Request::Failover {
                region,
                active,
                reply,
            } => {
                let out = self.failover(region, active);
                self.reply(reply, out);
            }
            Request::Reservations { reply } => {
                let out = Ok(self.reservations());
                self.reply(reply, out);
            }
            Request::SetReservations { req, reply } => {
                let out = self.set_reservations(req);
                self.reply(reply, out);
            }
            Request::AttachReservationSource { name, reply } => {
                tracing::info!(source = %name, "reservations now come from an external source");
                self.reservation_source = Some(name);
                self.reply(reply, Ok(()));
            }
            Request::CapacitySnapshot {
                snapshot,
                streaming,
                reply,
            } => {
                let out = self.capacity_snapshot(&snapshot, streaming);
                self.reply(reply, out);
            }
            Request::Ledger {
                principal,
                start,
                end,
                reply,
            } => {
                let out = self.ledger(&principal, start, end);
                self.reply(reply, out);
            }
            Request::Utilization {
                start,
                end,
                step_ms,
                by,
                reply,
            } => {
                let out = self.utilization(start, end, step_ms, by);
                self.reply(reply, out);
            }
            Request::PoolTotals { start, end, reply } => {
                let out = self.pool_totals(start, end);
                self.reply(reply, out);
            }
            Request::Attach {
                host,
                runs,
                conn,
                reply,
            } => {
                let out = self.attach(host, runs, conn);
                self.reply(reply, out);
            }
            Request::RunEvent {
                host,
                conn_id,
                event,
            } => self.run_event(&host, conn_id, event),
            Request::Logs { host, chunk } => self.logs_chunk(&host, chunk),
            Request::Detached { host, conn_id } => self.detached(&host, conn_id),
            Request::Shutdown { .. } => unreachable!("handled by the loop"),
        }
    }

    /// Defers a reply until the open batch is durable.
    fn reply<T: Send + 'static>(&mut self, reply: Reply<T>, out: Result<T, ApiError>) {
        self.replies.push(Box::new(move || {
            let _ = reply.send(out);
        }));
    }

    // -------------------------------------------------------- inputs

    /// Applies an input to the core; if accepted, it joins the open batch.
    /// `prefix` is the request path the core's field names are relative to.
    fn input(&mut self, record: Record, prefix: &str) -> Result<(), ApiError> {
        if let Err(e) = self.apply_record(&record) {
            self.metrics
                .refused_inputs
                .get_or_create(&metrics::label("kind", record_kind(&record)))
                .inc();
            return Err(ApiError::from_core(e, prefix));
        }
        self.append(&record);
        Ok(())
    }

    fn append(&mut self, record: &Record) {
        let bytes = records::encode(record);
        self.seq += 1;
        self.batch.records.push((self.seq, bytes));
    }

    /// Applies a record to the core and the server state, then takes the
    /// core's outputs. The same function replays the log.
    fn apply_record(&mut self, record: &Record) -> Result<(), core::InputError> {
        apply(&mut self.core, &mut self.server, record)?;
        self.drain_core();
        Ok(())
    }

    /// Takes the core's queued actions and events.
    fn drain_core(&mut self) {
        while let Some(a) = self.core.poll_action() {
            if !self.replaying {
                self.actions.push(a);
            }
        }
        while let Some(e) = self.core.poll_event() {
            self.observe(e);
        }
    }

    /// Keeps the server's indexes in step with the core's change feed, and
    /// turns job events into hub events.
    fn observe(&mut self, e: core::Event) {
        use core::EventKind as K;
        let Some(job) = convert::event_job(&e.kind) else {
            return;
        };
        let at = e.at.as_millis();
        match &e.kind {
            K::JobAccepted { team, n_tasks, .. } => {
                self.job_info
                    .insert(job, (Arc::from(team.as_str()), *n_tasks));
                *self.team_live.entry(team.to_string()).or_default() += u64::from(*n_tasks);
                self.tasks_known += u64::from(*n_tasks);
            }
            K::TaskChanged { run, state } => {
                if state.is_terminal()
                    && let Some((team, _)) = self.job_info.get(&job)
                    && let Some(n) = self.team_live.get_mut(&**team)
                {
                    *n = n.saturating_sub(1);
                }
                if let core::TaskState::Assigned { host } = state {
                    self.run_hosts.insert(run.task, (run.attempt, host.clone()));
                }
            }
            K::JobFinished { .. } => {
                self.finished.insert((at, job));
            }
            _ => {}
        }
        let team = self
            .job_info
            .get(&job)
            .map(|(t, _)| t.clone())
            .unwrap_or_default();
        if let K::JobForgotten { .. } = &e.kind {
            if let Some((_, n)) = self.job_info.remove(&job) {
                self.tasks_known = self.tasks_known.saturating_sub(u64::from(n));
            }
            self.extras.remove(&job);
            self.run_hosts.retain(|t, _| t.job != job);
            if !self.replaying {
                self.batch.delete_jobs.push(job.0);
            }
        }
        if let Some(wire) = convert::event_to_wire(&e) {
            self.events.push(Arc::new(HubEvent {
                seq: e.seq,
                job: job.0,
                team,
                finished: matches!(e.kind, K::JobFinished { .. }),
                wire,
            }));
        }
    }

    /// Makes the open batch durable, then releases what it caused. While
    /// the store is unreachable it retries the same batch (appends are
    /// idempotent), with back-off, until it is durable or the replica is
    /// deposed; nothing is acknowledged meanwhile.
    fn flush(&mut self) -> Result<(), StoreError> {
        self.check_deposed()?;
        if !self.batch.is_empty() {
            let batch = std::mem::take(&mut self.batch);
            let n = batch.records.len() as u64;
            let bytes = batch.record_bytes() as u64;
            let t = Instant::now();
            let mut backoff = Duration::from_millis(50);
            let mut down_since: Option<Instant> = None;
            loop {
                match self.store.append(&batch) {
                    Ok(()) => break,
                    Err(StoreError::Unavailable(e)) => {
                        self.check_deposed()?;
                        if down_since.is_none() {
                            tracing::warn!(error = %e, "store unreachable: writes and rounds wait; nothing is acknowledged until it is back; reads are answered from memory, marked stale");
                            self.metrics.store_unavailable.set(1);
                            self.store_stale.store(true, Ordering::SeqCst);
                            down_since = Some(Instant::now());
                        }
                        if self.serve_reads_while_down(backoff) {
                            // Shutting down while the store is unreachable:
                            // what is not durable is not acknowledged.
                            return Err(StoreError::Unavailable(format!(
                                "shut down while the store was unreachable ({e}); the last batch was not acknowledged"
                            )));
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                    Err(e) => return Err(e),
                }
            }
            if let Some(since) = down_since {
                self.metrics.store_unavailable.set(0);
                self.store_stale.store(false, Ordering::SeqCst);
                tracing::info!(
                    ms = since.elapsed().as_millis() as u64,
                    "store reachable again: the waiting batch is durable"
                );
            }
            self.metrics
                .store_write_seconds
                .observe(t.elapsed().as_secs_f64());
            self.metrics.store_records.inc_by(n);
            self.records_since_snapshot += n;
            self.bytes_since_snapshot += bytes;
        }
        for r in self.replies.drain(..) {
            r();
        }
        self.release();
        Ok(())
    }

    /// Sends commands and publishes events (their causes are durable).
    fn release(&mut self) {
        let actions = std::mem::take(&mut self.actions);
        for a in actions {
            self.route_action(a);
        }
        let outgoing = std::mem::take(&mut self.outgoing);
        for (host, msg) in outgoing {
            self.deliver(&host, msg);
        }
        let events = std::mem::take(&mut self.events);
        if !events.is_empty() || self.core.last_event_seq() > 0 {
            self.hub.publish(events, self.core.last_event_seq());
        }
    }

    // -------------------------------------------------------- rounds

    fn round_due(&mut self) -> bool {
        if self.reconciling() {
            return false;
        }
        if self.last_round.elapsed() < self.config.rounds.interval {
            return false;
        }
        if self.core.generation() != self.round_generation {
            return true;
        }
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.core
            .poll_timeout()
            .is_some_and(|t| t.as_millis() <= wall)
    }

    /// Tick, plan, persist the plan, commit the persisted plan, send.
    fn round(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        self.last_round = started;
        let tick = self.now();
        let now = core::Timestamp::from_millis(tick);
        self.core
            .handle_tick(now)
            .map_err(|e| anyhow::anyhow!("tick: {e}"))?;
        let plan = self
            .core
            .plan_round(now)
            .map_err(|e| anyhow::anyhow!("plan: {e}"))?;
        let planned = started.elapsed();
        let span = tracing::debug_span!(
            "round",
            round = plan.round,
            n_placed = plan.stats.n_placed,
            n_unplaced = plan.stats.n_unplaced,
            n_preempted = plan.stats.n_preempted
        )
        .entered();
        let plan_bytes = records::encode(&plan);
        drop(plan);
        let commit = self.now();
        let record = Record::Round {
            tick,
            commit,
            plan: plan_bytes,
        };
        self.append(&record);
        // The plan is durable before it is committed.
        self.flush()?;
        let persisted = started.elapsed();
        let Record::Round { plan, .. } = &record else {
            unreachable!()
        };
        let stored: core::Plan =
            records::decode(plan).map_err(|e| anyhow::anyhow!("plan decode: {e}"))?;
        let report = self
            .core
            .commit(core::Timestamp::from_millis(commit), stored)
            .map_err(|e| anyhow::anyhow!("commit: {e}"))?;
        let committed = started.elapsed();
        self.drain_core();
        self.release();
        self.round_generation = self.core.generation();
        self.metrics.rounds.inc();
        self.metrics.placements.inc_by(u64::from(report.n_applied));
        self.metrics
            .preemptions
            .inc_by(u64::from(report.n_preempted));
        self.metrics
            .round_seconds
            .observe(started.elapsed().as_secs_f64());
        if report.n_applied > 0 || report.n_preempted > 0 {
            tracing::debug!(
                parent: &span,
                n_applied = report.n_applied,
                n_preempted = report.n_preempted,
                n_rejected = report.rejected.len(),
                plan_ms = planned.as_millis() as u64,
                persist_ms = (persisted - planned).as_millis() as u64,
                commit_ms = (committed - persisted).as_millis() as u64,
                release_ms = (started.elapsed() - committed).as_millis() as u64,
                "round committed"
            );
        }
        Ok(())
    }

    // -------------------------------------------------------- snapshots

    fn snapshot_due(&self) -> bool {
        self.records_since_snapshot >= self.config.store.snapshot_every_records
            || self.bytes_since_snapshot >= self.config.store.snapshot_every_bytes
    }

    fn snapshot(&mut self) -> anyhow::Result<()> {
        self.flush()?;
        let t = Instant::now();
        let file = SnapshotFile {
            version: records::FORMAT_VERSION,
            core: self.core.snapshot(),
            server: self.server.clone(),
        };
        let bytes = records::encode(&file);
        drop(file);
        match self.store.write_snapshot(self.seq, &bytes) {
            Ok(()) => {}
            // The log still holds everything: try again at the next round.
            Err(StoreError::Unavailable(e)) => {
                tracing::warn!(error = %e, "snapshot not written (store unreachable); retrying later");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        self.records_since_snapshot = 0;
        self.bytes_since_snapshot = 0;
        self.metrics.snapshots.inc();
        self.metrics.store_bytes.set(self.store.size_bytes() as i64);
        tracing::info!(
            seq = self.seq,
            bytes = bytes.len(),
            ms = t.elapsed().as_millis() as u64,
            "snapshot written"
        );
        Ok(())
    }

    // -------------------------------------------------------- housekeeping

    fn housekeeping(&mut self) {
        self.last_housekeeping = Instant::now();
        self.check_heartbeats();
        self.forget_finished();
        let now = self.now();
        let every = self.config.store.ledger_sample_interval.as_millis() as u64;
        if now >= self.last_sample_ms + every {
            self.take_sample();
        }
        let now_i = Instant::now();
        let expired: Vec<u64> = self
            .logs
            .iter()
            .filter(|(_, w)| w.deadline <= now_i)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(w) = self.logs.remove(&id) {
                let _ = w.reply.send(Err(ApiError::DeadlineExceeded(format!(
                    "executor {} did not send the logs of {} within {} s",
                    w.host,
                    w.run,
                    LOGS_TIMEOUT.as_secs()
                ))));
            }
        }
        self.update_gauges();
    }

    /// The core's cumulative ledger and pool totals at `now`, with each
    /// pool's clearing price.
    pub(crate) fn ledger_sample(&self, now: u64) -> records::LedgerSample {
        let t = core::Timestamp::from_millis(now);
        records::LedgerSample {
            entries: self.core.ledger(t),
            pools: self.core.pool_totals(t),
            prices: self
                .core
                .pools()
                .into_iter()
                .map(|p| (p.pool, p.clearing_price.as_micros()))
                .collect(),
        }
    }

    fn take_sample(&mut self) {
        let now = self.now();
        let sample = self.ledger_sample(now);
        self.batch.put_samples.push((now, records::encode(&sample)));
        let retention = self.config.store.ledger_retention.as_millis() as u64;
        if now > retention {
            self.batch.delete_samples_before = Some(now - retention);
        }
        self.last_sample_ms = now;
        self.downsample(now);
    }

    /// Deletes all but the first sample of each `ledger_downsample_step`
    /// bucket older than `ledger_downsample_after`, whole buckets only (a
    /// bucket thinned in two passes would lose its first sample's role).
    /// Samples are cumulative, so every range stays exact.
    fn downsample(&mut self, now: u64) {
        let store = &self.config.store;
        let step = (store.ledger_downsample_step.as_millis() as u64).max(1);
        let cutoff = now.saturating_sub(store.ledger_downsample_after.as_millis() as u64);
        let until = cutoff / step * step;
        if until <= self.thinned_until {
            return;
        }
        match self.store.sample_times(self.thinned_until, until) {
            Ok(times) => {
                self.batch
                    .delete_samples
                    .extend(crate::finance::thin(&times, step));
                self.thinned_until = until;
            }
            // A failed read deletes nothing; the next sample retries.
            Err(e) => tracing::warn!(error = %e, "reading ledger sample times to down-sample"),
        }
    }

    fn forget_finished(&mut self) {
        let now = self.now();
        let retention = self.config.store.finished_job_retention.as_millis() as u64;
        let before = now.saturating_sub(retention);
        if self.finished.first().is_none_or(|(f, _)| *f >= before) {
            return;
        }
        let record = Record::ForgetFinished { now, before };
        match self.input(record, "") {
            Ok(()) => {
                self.finished.retain(|(f, _)| *f >= before);
            }
            Err(e) => tracing::error!(error = %e, "forgetting finished jobs failed"),
        }
    }

    fn update_gauges(&mut self) {
        let totals = self.core.totals();
        for tier in core::Tier::ALL {
            self.metrics
                .queue_jobs
                .get_or_create(&metrics::label("tier", &tier.to_string()))
                .set(i64::from(totals.n_jobs_queued[tier.index()]));
        }
        self.metrics
            .hosts
            .get_or_create(&metrics::label("state", "active"))
            .set(i64::from(totals.n_hosts_active));
        self.metrics
            .hosts
            .get_or_create(&metrics::label("state", "draining"))
            .set(i64::from(totals.n_hosts_draining));
        for p in self.core.pools() {
            let l = metrics::label("pool", p.pool.as_str());
            self.metrics
                .pool_supply_ie
                .get_or_create(&l)
                .set(p.supply.as_f64());
            self.metrics
                .pool_leased_ie
                .get_or_create(&l)
                .set(p.leased.as_f64());
        }
        let connected = self.slots.values().filter(|s| s.conn.is_some()).count();
        self.metrics.executors_connected.set(connected as i64);
        // Tasks by state and tier: one pass over live jobs' counts.
        let mut counts: HashMap<(core::Tier, &'static str), i64> = HashMap::new();
        for id in self.core.job_ids() {
            let (Some(spec), Some(c)) = (self.core.job_spec(id), self.core.job_counts(id)) else {
                continue;
            };
            let tier = spec.tier;
            for (state, n) in [
                ("pending", c.pending),
                ("running", c.running),
                ("stopping", c.stopping),
            ] {
                *counts.entry((tier, state)).or_default() += i64::from(n);
            }
        }
        for tier in core::Tier::ALL {
            for state in ["pending", "running", "stopping"] {
                let n = counts.get(&(tier, state)).copied().unwrap_or(0);
                self.metrics
                    .tasks
                    .get_or_create(&metrics::labels2("tier", &tier.to_string(), "state", state))
                    .set(n);
            }
        }
    }

    /// Applies the configured pools: a pool whose spec is new or changed is
    /// (re)configured; a pool configured for the first time gets the
    /// configured reservations.
    fn configure_pools(&mut self) -> anyhow::Result<()> {
        for p in self.config.market.pools.clone() {
            let spec = p.spec();
            let known = self.server.pool_specs.get(&spec.id);
            if known == Some(&spec) {
                continue;
            }
            let first = known.is_none();
            let now = self.now();
            self.input(Record::PoolConfigured { now, spec }, "market.pools.")
                .map_err(|e| anyhow::anyhow!("configuring pool {}: {e}", p.id))?;
            if first && !p.reservations.is_empty() {
                self.input(
                    Record::Reservations {
                        now,
                        pool: p.id.clone(),
                        reservations: p.reservations.clone(),
                    },
                    "market.pools.",
                )
                .map_err(|e| anyhow::anyhow!("reservations of pool {}: {e}", p.id))?;
            }
            tracing::info!(pool = %p.id, region = %p.region, "pool configured");
        }
        Ok(())
    }
}

impl Drop for Driver {
    /// However the driver ends (shutdown, deposed, failed), its executor
    /// and watch streams end with it, so executors and watchers reconnect
    /// (to the new leader, after a takeover) instead of waiting on a driver
    /// that is gone. Replies not yet sent are dropped: their callers see
    /// `UNAVAILABLE`, never an acknowledgement of something not durable.
    fn drop(&mut self) {
        for slot in self.slots.values_mut() {
            if let Some(conn) = slot.conn.take() {
                let _ = conn.tx.send(Err(Status::unavailable(
                    "the scheduler on this replica stopped; reconnect (to the leader)",
                )));
            }
        }
        self.hub.close();
    }
}

fn record_kind(r: &Record) -> &'static str {
    match r {
        Record::JobSubmitted { .. } => "job_submitted",
        Record::JobKilled { .. } => "job_killed",
        Record::HostAdded { .. } => "host_added",
        Record::HostUpdated { .. } => "host_updated",
        Record::HostActivated { .. } => "host_activated",
        Record::HostLost { .. } => "host_lost",
        Record::Run { .. } => "run_report",
        Record::PoolConfigured { .. } => "pool_configured",
        Record::Reservations { .. } => "reservations",
        Record::StreamingDemand { .. } => "streaming_demand",
        Record::Failover { .. } => "failover",
        Record::Forecast { .. } => "forecast",
        Record::ForgetFinished { .. } => "forget_finished",
        Record::Round { .. } => "round",
        Record::InstanceTypes { .. } => "instance_types",
    }
}

/// Applies one record to the core and the server state. Live inputs and
/// log replay both go through here, so a replayed log rebuilds the same core.
pub(crate) fn apply(
    core: &mut core::Scheduler,
    server: &mut ServerState,
    record: &Record,
) -> Result<(), core::InputError> {
    use core::Timestamp as T;
    match record {
        Record::JobSubmitted { now, spec } => {
            let id = core.handle_job_submitted(T::from_millis(*now), spec.clone())?;
            server.next_job_id = server.next_job_id.max(id.0 + 1);
        }
        Record::JobKilled { now, job, .. } => core.handle_job_killed(T::from_millis(*now), *job)?,
        Record::HostAdded { now, spec } => {
            core.handle_host_added(T::from_millis(*now), spec.clone())?
        }
        Record::HostUpdated { now, spec } => {
            core.handle_host_updated(T::from_millis(*now), spec.clone())?
        }
        Record::HostActivated { now, host } => {
            core.handle_host_activated(T::from_millis(*now), host)?
        }
        Record::HostLost { now, host } => {
            core.handle_host_lost(T::from_millis(*now), host)?;
        }
        Record::Run { now, run, event } => {
            let now = T::from_millis(*now);
            match event {
                RunReport::Started => core.handle_task_started(now, *run)?,
                RunReport::Finished => core.handle_task_finished(now, *run)?,
                RunReport::Failed => core.handle_task_failed(now, *run)?,
                RunReport::Stopped => core.handle_task_stopped(now, *run)?,
                RunReport::Lost => core.handle_task_lost(now, *run)?,
            }
        }
        Record::PoolConfigured { now, spec } => {
            core.handle_pool_configured(T::from_millis(*now), spec.clone())?;
            server.pool_specs.insert(spec.id.clone(), spec.clone());
        }
        Record::Reservations {
            now,
            pool,
            reservations,
        } => {
            core.handle_reservations(T::from_millis(*now), pool, reservations.clone())?;
            server
                .reservations
                .insert(pool.clone(), reservations.clone());
        }
        Record::StreamingDemand {
            now,
            pool,
            demand_micro_ie,
        } => core.handle_streaming_demand(
            T::from_millis(*now),
            pool,
            core::Ie::from_micro(*demand_micro_ie),
        )?,
        Record::Failover {
            now,
            region,
            active,
        } => core.handle_failover(T::from_millis(*now), region, *active)?,
        Record::Forecast { now, pool, points } => {
            let core_points = points
                .iter()
                .map(|(t, ie)| (T::from_millis(*t), core::Ie::from_micro(*ie)))
                .collect();
            core.handle_demand_forecast(T::from_millis(*now), pool, core_points)?;
            server
                .forecasts
                .insert(pool.clone(), (*now, points.clone()));
        }
        Record::ForgetFinished { now, before } => {
            core.handle_forget_finished(T::from_millis(*now), T::from_millis(*before))?;
        }
        Record::Round { tick, commit, plan } => {
            core.handle_tick(T::from_millis(*tick))?;
            let plan: core::Plan = records::decode(plan)
                .map_err(|e| core::InputError::InvalidSnapshot(format!("round plan: {e}")))?;
            core.commit(T::from_millis(*commit), plan)?;
        }
        Record::InstanceTypes { now, types } => {
            core.handle_instance_types(T::from_millis(*now), types.clone())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;
    use crate::store::Loaded;

    /// An in-memory [`Store`] whose clones share their contents, so a second
    /// driver can replay what the first wrote.
    #[derive(Clone, Default)]
    struct MemStore(Arc<Mutex<Mem>>);

    #[derive(Default)]
    struct Mem {
        log: BTreeMap<u64, Vec<u8>>,
        snapshot: Option<(u64, Vec<u8>)>,
        jobs: BTreeMap<u64, Vec<u8>>,
        samples: BTreeMap<u64, Vec<u8>>,
    }

    impl Store for MemStore {
        fn load(&self) -> Result<Loaded, StoreError> {
            let m = self.0.lock().unwrap();
            let after = m.snapshot.as_ref().map_or(0, |s| s.0);
            Ok(Loaded {
                snapshot: m.snapshot.clone(),
                records: m
                    .log
                    .range(after + 1..)
                    .map(|(k, v)| (*k, v.clone()))
                    .collect(),
                jobs: m.jobs.iter().map(|(k, v)| (*k, v.clone())).collect(),
            })
        }
        fn append(&mut self, b: &Batch) -> Result<(), StoreError> {
            let b = b.clone();
            let mut m = self.0.lock().unwrap();
            m.log.extend(b.records);
            m.jobs.extend(b.put_jobs);
            for j in b.delete_jobs {
                m.jobs.remove(&j);
            }
            m.samples.extend(b.put_samples);
            for at in b.delete_samples {
                m.samples.remove(&at);
            }
            Ok(())
        }
        fn write_snapshot(&mut self, through: u64, snapshot: &[u8]) -> Result<(), StoreError> {
            let mut m = self.0.lock().unwrap();
            m.snapshot = Some((through, snapshot.to_vec()));
            m.log.retain(|k, _| *k > through);
            Ok(())
        }
        fn sample_at_or_before(&self, at: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
            let m = self.0.lock().unwrap();
            Ok(m.samples
                .range(..=at)
                .next_back()
                .map(|(k, v)| (*k, v.clone())))
        }
        fn first_sample(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
            let m = self.0.lock().unwrap();
            Ok(m.samples.iter().next().map(|(k, v)| (*k, v.clone())))
        }
        fn sample_times(&self, from: u64, to: u64) -> Result<Vec<u64>, StoreError> {
            let m = self.0.lock().unwrap();
            Ok(m.samples.range(from..to).map(|(k, _)| *k).collect())
        }
        fn size_bytes(&self) -> u64 {
            0
        }
    }

    fn host(id: &str) -> pb::HostSpec {
        pb::HostSpec {
            host_id: id.into(),
            pool: "demo".into(),
            instance_type: "m5.4xlarge".into(),
            zone: "z".into(),
            region: "local".into(),
            capacity: Some(pb::Resources {
                cpu_millis: 4000,
                memory_mib: 16384,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn job(n_tasks: u32) -> pb::CreateJobRequest {
        pb::CreateJobRequest {
            spec: Some(pb::JobSpec {
                name: "j".into(),
                team: "t".into(),
                tier: pb::Tier::Flex as i32,
                request: Some(pb::Resources {
                    cpu_millis: 1000,
                    memory_mib: 1024,
                    ..Default::default()
                }),
                n_tasks,
                container: Some(pb::ContainerSpec {
                    image: "busybox".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            request_id: String::new(),
        }
    }

    fn report(d: &mut Driver, host: &str, run: core::RunId, kind: pb::run_event::Kind) {
        d.run_event(
            host,
            1,
            pb::RunEvent {
                run: Some(convert::run_to_wire(run)),
                time: None,
                kind: Some(kind),
            },
        );
    }

    #[test]
    fn old_ledger_samples_are_thinned_to_one_per_step_in_whole_buckets() {
        const H: u64 = 3_600_000;
        let store = MemStore::default();
        let mut d = Driver::load(
            &Config::default(),
            Box::new(store.clone()),
            Arc::new(Metrics::new()),
        )
        .unwrap();
        let now = d.now();
        // Minute samples from 3 h before the 7-day cutoff to 1 h after it.
        let cutoff = now - 7 * 24 * H;
        let times: Vec<u64> = (0..240).map(|i| cutoff - 3 * H + i * 60_000).collect();
        store
            .0
            .lock()
            .unwrap()
            .samples
            .extend(times.iter().map(|t| (*t, vec![])));
        let kept = || -> Vec<u64> { store.0.lock().unwrap().samples.keys().copied().collect() };
        let expected = |until: u64| -> Vec<u64> {
            times
                .iter()
                .copied()
                .filter(|t| *t >= until || times.iter().find(|x| *x / H == t / H) == Some(t))
                .collect()
        };
        d.downsample(now);
        d.flush().unwrap();
        // Whole hour buckets before the cutoff keep their first sample; the
        // bucket the cutoff falls in is left whole until it is all older.
        let until = cutoff / H * H;
        assert_eq!(kept(), expected(until));
        assert!(kept().len() < times.len());
        // Idempotent, then the next hour's bucket follows.
        d.downsample(now);
        d.flush().unwrap();
        assert_eq!(kept(), expected(until));
        d.downsample(now + H);
        d.flush().unwrap();
        assert_eq!(kept(), expected(until + H));
    }

    #[test]
    fn an_external_reservation_source_owns_reservations() {
        let store = MemStore::default();
        let mut d = Driver::load(
            &Config::default(),
            Box::new(store),
            Arc::new(Metrics::new()),
        )
        .unwrap();
        d.configure_pools().unwrap();
        let set = |n| pb::SetReservationsRequest {
            pool: "demo".into(),
            reservations: vec![pb::Reservation {
                instance_type: "m5.16xlarge".into(),
                count: n,
                ..Default::default()
            }],
        };
        assert_eq!(
            d.set_reservations(set(2)).unwrap().reserved_micro_ie,
            2_000_000
        );
        assert_eq!(d.reservations().source, "api");
        d.reservation_source = Some("ec2".into());
        let e = d.set_reservations(set(3)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        // The source's snapshot is what changes them now.
        let snapshot = crate::capacity::StaticFile::from_toml(
            "[[pool]]\nid = \"demo\"\nregion = \"local\"\n\n[[reservation]]\nid = \"r1\"\n\
             instance_type = \"m5.16xlarge\"\ncount = 5\nregion = \"local\"\n",
            core::Catalog::builtin(),
        )
        .unwrap()
        .snapshot_at(core::Timestamp::from_millis(d.now()))
        .unwrap();
        assert_eq!(d.capacity_snapshot(&snapshot, true).unwrap(), 1);
        let p = d.pool_wire(&core::PoolId::from("demo")).unwrap();
        assert_eq!(p.reserved_micro_ie, 5_000_000);
        assert_eq!(d.reservations().source, "ec2");
        // The same snapshot again changes nothing and logs nothing.
        assert_eq!(d.capacity_snapshot(&snapshot, true).unwrap(), 0);
    }

    #[test]
    fn replaying_snapshot_and_log_rebuilds_the_same_core() {
        let config = Config {
            store: crate::config::StoreConfig {
                snapshot_every_records: u64::MAX,
                ..Default::default()
            },
            ..Default::default()
        };
        let store = MemStore::default();
        let metrics = Arc::new(Metrics::new());
        let mut d = Driver::load(&config, Box::new(store.clone()), metrics.clone()).unwrap();
        d.configure_pools().unwrap();
        let (tx, _rx) = mpsc::unbounded_channel();
        let (close, _closed) = oneshot::channel();
        let conn = ExecConn {
            id: 1,
            tx,
            last_seen_ms: Arc::new(AtomicU64::new(0)),
            close,
        };
        d.attach(host("h1"), vec![], conn).unwrap();
        for n in [3, 2, 4] {
            d.create_job(&Principal::Dev, job(n)).unwrap();
        }
        d.flush().unwrap();
        d.round().unwrap();
        // Some runs start, one fails, one completes; then a snapshot, then more.
        let placed: Vec<core::RunId> = d
            .core
            .host(&core::HostId::from("h1"))
            .unwrap()
            .tasks()
            .iter()
            .map(|t| d.core.task(*t).unwrap().run)
            .collect();
        assert_eq!(placed.len(), 4, "a 4-CPU host takes four 1-CPU tasks");
        for r in &placed {
            report(
                &mut d,
                "h1",
                *r,
                pb::run_event::Kind::Started(pb::RunStarted {}),
            );
        }
        report(
            &mut d,
            "h1",
            placed[0],
            pb::run_event::Kind::Exited(pb::RunExited {
                exit_code: 0,
                message: String::new(),
            }),
        );
        report(
            &mut d,
            "h1",
            placed[1],
            pb::run_event::Kind::Exited(pb::RunExited {
                exit_code: 9,
                message: String::new(),
            }),
        );
        d.flush().unwrap();
        let t1 = d.core.task(placed[1].task).unwrap();
        assert_eq!(t1.n_failures, 1, "the failure was applied");
        assert_eq!(
            d.core.task(placed[0].task).unwrap().state,
            core::TaskState::Completed
        );
        d.snapshot().unwrap();
        d.round().unwrap();
        // After the snapshot: a failure, a stop, a cancel, a market input.
        report(
            &mut d,
            "h1",
            placed[2],
            pb::run_event::Kind::Exited(pb::RunExited {
                exit_code: 2,
                message: String::new(),
            }),
        );
        d.cancel_job(&Principal::Dev, 3, Some(1000)).unwrap();
        d.streaming_demand("demo".into(), 500_000).unwrap();
        d.flush().unwrap();
        d.round().unwrap();
        let live = d.core.snapshot();
        let replayed = Driver::load(&config, Box::new(store.clone()), metrics).unwrap();
        assert!(
            store.0.lock().unwrap().snapshot.is_some() && !store.0.lock().unwrap().log.is_empty()
        );
        assert_eq!(
            replayed.core.snapshot(),
            live,
            "replay must rebuild the identical core"
        );
        assert_eq!(replayed.server, d.server);
        assert_eq!(replayed.extras.len(), d.extras.len());
    }
}
