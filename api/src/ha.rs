//! Which replica leads, and the loop that makes this one lead or follow.
//!
//! With the embedded store there is one replica and it always leads. With
//! etcd, any number of `ebb server` replicas share one key prefix and elect
//! one leader through etcd's election API:
//!
//! 1. **Campaign.** A replica grants itself a lease (`ha.lease_ttl`), keeps
//!    it alive, and campaigns under `<prefix>leader` with its advertised
//!    address as the value. Until it wins it is a **follower**: its gRPC
//!    services answer `UNAVAILABLE` naming the leader (the `ebb-leader`
//!    metadata, [`crate::error::ApiError::NotLeader`]), which the CLI and
//!    executors follow.
//! 2. **Take over.** The winner opens the store **fenced** on its election
//!    key ([`crate::store::etcd::Fence`]): every write it makes is
//!    conditional on that key, which disappears with its lease. It rebuilds
//!    the core from the store (snapshot + log), then waits up to
//!    `ha.reconcile_window` for the hosts it knows to re-attach and report
//!    their runs before it plans a round (see the driver's `reconciling`).
//! 3. **Step down.** A leader whose lease is lost stops at once: the lease
//!    keeper sets the driver's `deposed` flag as soon as its last renewal is
//!    older than the TTL (measured from when the renewal was sent, so the
//!    leader gives up no later than etcd expires the key); a leader that
//!    was paused and wakes up finds its next write refused by the fence
//!    ([`crate::store::StoreError::Deposed`]). Either way the driver stops
//!    without acknowledging anything more, executor and watch streams close,
//!    and the replica campaigns again as a follower.
//!
//! A driver that fails for any other reason (a corrupt store) ends the
//! process, as with the embedded store: a replica that cannot trust its
//! state must not keep campaigning.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use etcd_client::{Client, LeaderKey, ResignOptions};
use tokio::sync::{oneshot, watch};

use crate::capacity::feed::OpenSource;
use crate::config::{Config, StoreBackend};
use crate::driver::{self, DriverHandle};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::store::etcd::{EtcdOptions, EtcdStore, Fence, rpc_error};
use crate::store::redb::RedbStore;
use crate::store::{Store, StoreError};

/// What this replica is now.
#[derive(Clone)]
pub enum RoleState {
    /// Not leading; `leader` is the leader's advertised address, if known.
    Follower {
        /// The leader's address.
        leader: Option<String>,
    },
    /// Leading, through this driver.
    Leader(DriverHandle),
    /// The replica loop ended (shutdown or a fatal error).
    Stopped,
}

/// The services' view of this replica's role (cheap to clone).
#[derive(Clone)]
pub struct Leadership {
    rx: watch::Receiver<RoleState>,
    /// Counts leadership terms of this replica (for things that must be
    /// redone once per term, such as attaching the reservation source).
    term: Arc<AtomicU64>,
}

impl Leadership {
    fn new(initial: RoleState) -> (Leadership, watch::Sender<RoleState>) {
        let (tx, rx) = watch::channel(initial);
        (
            Leadership {
                rx,
                term: Arc::new(AtomicU64::new(0)),
            },
            tx,
        )
    }

    /// The driver, if this replica leads; otherwise the redirect error.
    pub fn driver(&self) -> Result<DriverHandle, ApiError> {
        match &*self.rx.borrow() {
            RoleState::Leader(d) if d.alive.load(Ordering::SeqCst) => Ok(d.clone()),
            RoleState::Leader(_) | RoleState::Stopped => Err(ApiError::Unavailable(
                "the scheduler is not running on this replica".into(),
            )),
            RoleState::Follower { leader } => Err(ApiError::NotLeader {
                leader: leader.clone(),
            }),
        }
    }

    /// True while this replica leads and its store is unreachable: its
    /// answers come from memory and may include changes not yet durable.
    pub fn store_stale(&self) -> bool {
        matches!(&*self.rx.borrow(), RoleState::Leader(d) if d.store_stale.load(Ordering::SeqCst))
    }

    /// The current role.
    pub fn state(&self) -> RoleState {
        self.rx.borrow().clone()
    }

    /// This replica's leadership term (increases each time it wins).
    pub fn term(&self) -> u64 {
        self.term.load(Ordering::SeqCst)
    }

    /// Waits until this replica leads or knows who does (for start-up:
    /// `ebb server` reports its role before it says it is ready), at most
    /// `timeout`.
    pub async fn settled(&self, timeout: Duration) {
        let mut rx = self.rx.clone();
        let _ = tokio::time::timeout(timeout, async {
            loop {
                let decided = match &*rx.borrow_and_update() {
                    RoleState::Leader(_) | RoleState::Stopped => true,
                    RoleState::Follower { leader } => leader.is_some(),
                };
                if decided || rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    /// Waits until this replica leads, and returns its driver.
    pub async fn leading(&self) -> Option<DriverHandle> {
        let mut rx = self.rx.clone();
        loop {
            match &*rx.borrow_and_update() {
                RoleState::Leader(d) => return Some(d.clone()),
                RoleState::Stopped => return None,
                RoleState::Follower { .. } => {}
            }
            rx.changed().await.ok()?;
        }
    }
}

/// The running replica loop.
pub struct Replica {
    /// Its role, for the services.
    pub leadership: Leadership,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Replica {
    /// Starts leading (embedded store) or campaigning (etcd).
    pub async fn start(
        config: &Config,
        metrics: Arc<Metrics>,
        capacity: Option<OpenSource>,
    ) -> anyhow::Result<Replica> {
        let (stop_tx, stop_rx) = oneshot::channel();
        let (leadership, role_tx) = Leadership::new(RoleState::Follower { leader: None });
        let ctx = Ctx {
            config: config.clone(),
            metrics,
            role: role_tx,
            leadership: leadership.clone(),
        };
        if let Some(c) = capacity {
            tokio::spawn(c.follow(leadership.clone()));
        }
        let done = match config.store.backend {
            StoreBackend::Embedded => {
                let store: Box<dyn Store> =
                    Box::new(RedbStore::open(&config.data_dir).with_context(|| {
                        format!("opening the store in {}", config.data_dir.display())
                    })?);
                let term = ctx.lead(store, Arc::new(AtomicBool::new(false)))?;
                tokio::spawn(async move {
                    let r = ctx.serve_term(term, stop_rx, None).await;
                    let _ = ctx.role.send(RoleState::Stopped);
                    match r {
                        TermEnd::Shutdown => Ok(()),
                        TermEnd::Failed(e) => Err(e),
                        TermEnd::Deposed => Err(anyhow::anyhow!("the embedded store deposed")),
                    }
                })
            }
            StoreBackend::Etcd => {
                let elector = Elector::connect(config).await?;
                tokio::spawn(async move {
                    let r = ctx.campaign_loop(elector, stop_rx).await;
                    let _ = ctx.role.send(RoleState::Stopped);
                    r
                })
            }
        };
        Ok(Replica {
            leadership,
            stop: Some(stop_tx),
            done,
        })
    }

    /// Asks the replica to stop: a leader flushes, snapshots and resigns.
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Waits for the loop to end (after [`Replica::stop`] or a fatal error).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        (&mut self.done).await.context("replica task")?
    }
}

struct Ctx {
    config: Config,
    metrics: Arc<Metrics>,
    role: watch::Sender<RoleState>,
    leadership: Leadership,
}

/// One leadership term in progress.
struct Term {
    driver: DriverHandle,
    died: oneshot::Receiver<anyhow::Result<()>>,
    deposed: Arc<AtomicBool>,
}

enum TermEnd {
    Shutdown,
    Deposed,
    Failed(anyhow::Error),
}

impl Ctx {
    /// Starts a driver over `store` and announces this replica as leader.
    fn lead(&self, store: Box<dyn Store>, deposed: Arc<AtomicBool>) -> anyhow::Result<Term> {
        let (driver, thread) = driver::start(
            &self.config,
            store,
            self.metrics.clone(),
            tokio::runtime::Handle::current(),
            deposed.clone(),
        )?;
        let (died_tx, died) = oneshot::channel();
        std::thread::spawn(move || {
            let r = thread
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the driver panicked")));
            let _ = died_tx.send(r);
        });
        self.leadership.term.fetch_add(1, Ordering::SeqCst);
        let _ = self.role.send(RoleState::Leader(driver.clone()));
        self.metrics.leader.set(1);
        Ok(Term {
            driver,
            died,
            deposed,
        })
    }

    /// Serves a term until shutdown, deposition or failure.
    async fn serve_term(
        &self,
        mut term: Term,
        mut stop: oneshot::Receiver<()>,
        mut lost: Option<watch::Receiver<bool>>,
    ) -> TermEnd {
        let lease_lost = async {
            match lost.as_mut() {
                Some(rx) => {
                    let _ = rx.wait_for(|lost| *lost).await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let end = tokio::select! {
            _ = &mut stop => {
                term.driver.shutdown().await;
                match (&mut term.died).await {
                    Ok(Err(e)) if is_deposed(&e) => TermEnd::Deposed,
                    Ok(Err(e)) => TermEnd::Failed(e),
                    _ => TermEnd::Shutdown,
                }
            }
            r = &mut term.died => match r {
                Ok(Err(e)) if is_deposed(&e) => TermEnd::Deposed,
                Ok(Err(e)) => TermEnd::Failed(e),
                Ok(Ok(())) | Err(_) => TermEnd::Failed(anyhow::anyhow!("the scheduler driver stopped")),
            },
            () = lease_lost => {
                // Stop scheduling now; the driver notices the flag within one
                // wake-up (≤ 0.5 s) and its writes are fenced meanwhile.
                term.deposed.store(true, Ordering::SeqCst);
                let _ = (&mut term.died).await;
                TermEnd::Deposed
            }
        };
        self.metrics.leader.set(0);
        end
    }

    /// Campaigns, leads, steps down, campaigns again, until stopped.
    async fn campaign_loop(
        &self,
        elector: Elector,
        mut stop: oneshot::Receiver<()>,
    ) -> anyhow::Result<()> {
        let mut retry = Duration::from_millis(200);
        loop {
            let session = tokio::select! {
                _ = &mut stop => return Ok(()),
                s = elector.session() => s,
            };
            let session = match session {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?retry, "etcd: cannot start an election session; retrying");
                    let _ = self.role.send(RoleState::Follower { leader: None });
                    tokio::select! {
                        _ = &mut stop => return Ok(()),
                        () = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            retry = Duration::from_millis(200);
            let won = tokio::select! {
                _ = &mut stop => {
                    session.close(None).await;
                    return Ok(());
                }
                won = elector.campaign(&session, &self.role) => won,
            };
            let key = match won {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(error = %e, "etcd: campaign ended without leadership; starting over");
                    session.close(None).await;
                    continue;
                }
            };
            let fence = Fence {
                key: key.key().to_vec(),
                revision: key.rev(),
            };
            let won_at = Instant::now();
            tracing::info!(
                advertise = %elector.advertise,
                key = %String::from_utf8_lossy(key.key()),
                revision = key.rev(),
                "elected leader; rebuilding the core from etcd"
            );
            let mut opts = elector.store_options.clone();
            opts.fence = Some(fence);
            let deposed = Arc::new(AtomicBool::new(false));
            let opened = tokio::task::spawn_blocking(move || EtcdStore::open(opts))
                .await
                .context("opening the store")?
                .map_err(anyhow::Error::from);
            let store = match opened {
                Ok(store) => store,
                Err(e) if is_deposed(&e) || is_unavailable(&e) => {
                    tracing::warn!(error = %format!("{e:#}"), "could not open the store as leader; stepping down");
                    session.close(Some(key)).await;
                    continue;
                }
                Err(e) => return Err(e.context("opening the etcd store")),
            };
            // Rebuilding blocks this worker for the replay (the store's own
            // runtime does the I/O); the services answer "not leader" meanwhile.
            let term = match self.lead(Box::new(store), deposed) {
                Ok(t) => t,
                Err(e) if is_deposed(&e) || is_unavailable(&e) => {
                    tracing::warn!(error = %format!("{e:#}"), "could not rebuild the core as leader; stepping down");
                    session.close(Some(key)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.metrics
                .takeover_seconds
                .set(won_at.elapsed().as_secs_f64());
            tracing::info!(
                ms = won_at.elapsed().as_millis() as u64,
                "leading: the core is rebuilt and serving"
            );
            let (stop_term_tx, stop_term_rx) = oneshot::channel();
            let lost = session.lost.clone();
            let term_task = self.serve_term(term, stop_term_rx, Some(lost));
            tokio::pin!(term_task);
            let (end, stopping) = tokio::select! {
                end = &mut term_task => (end, false),
                _ = &mut stop => {
                    let _ = stop_term_tx.send(());
                    ((&mut term_task).await, true)
                }
            };
            let _ = self.role.send(RoleState::Follower { leader: None });
            match end {
                TermEnd::Shutdown => {
                    session.close(Some(key)).await;
                    return Ok(());
                }
                TermEnd::Failed(e) => {
                    session.close(None).await;
                    return Err(e);
                }
                TermEnd::Deposed => {
                    tracing::warn!(
                        "no longer the leader (lease lost or fenced write refused): stopped scheduling; campaigning again"
                    );
                    session.close(None).await;
                    if stopping {
                        return Ok(());
                    }
                }
            }
        }
    }
}

fn store_error(e: &anyhow::Error) -> Option<&StoreError> {
    e.chain().find_map(|c| c.downcast_ref::<StoreError>())
}

fn is_deposed(e: &anyhow::Error) -> bool {
    matches!(store_error(e), Some(StoreError::Deposed(_)))
}

fn is_unavailable(e: &anyhow::Error) -> bool {
    matches!(store_error(e), Some(StoreError::Unavailable(_)))
}

/// The etcd side of the election.
struct Elector {
    client: Client,
    /// `<prefix>leader`.
    name: Vec<u8>,
    advertise: String,
    ttl: Duration,
    store_options: EtcdOptions,
}

/// A lease kept alive in the background; `lost` turns true once it may
/// have expired.
struct Session {
    lease: i64,
    lost: watch::Receiver<bool>,
    keeper: tokio::task::JoinHandle<()>,
    client: Client,
}

impl Session {
    /// Resigns `key` (if leading) and revokes the lease, best effort: a
    /// clean stop hands leadership over at once instead of after the TTL.
    async fn close(self, key: Option<LeaderKey>) {
        self.keeper.abort();
        let mut c = self.client.clone();
        let quick = Duration::from_secs(2);
        if let Some(k) = key {
            let _ =
                tokio::time::timeout(quick, c.resign(Some(ResignOptions::new().with_leader(k))))
                    .await;
        }
        let _ = tokio::time::timeout(quick, c.lease_revoke(self.lease)).await;
    }
}

impl Elector {
    async fn connect(config: &Config) -> anyhow::Result<Elector> {
        let access = config.etcd_access()?;
        let endpoints = config.store.etcd_endpoints.clone();
        let client = Client::connect(endpoints.clone(), Some(access.connect_options()?))
            .await
            .map_err(|e| rpc_error(&format!("connecting to {}", endpoints.join(",")), e))
            .context("leader election")?;
        let mut prefix = config.store.etcd_prefix.clone();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        let mut store_options = EtcdOptions::new(endpoints, prefix.clone());
        store_options.access = access;
        Ok(Elector {
            client,
            name: format!("{prefix}leader").into_bytes(),
            advertise: config.advertise_url()?,
            ttl: config.ha.lease_ttl,
            store_options,
        })
    }

    /// Grants a lease and keeps it alive in the background.
    async fn session(&self) -> anyhow::Result<Session> {
        let mut c = self.client.clone();
        let ttl = self.ttl.as_secs().max(2) as i64;
        let lease = c
            .lease_grant(ttl, None)
            .await
            .map_err(|e| rpc_error("lease grant", e))?
            .id();
        let (lost_tx, lost) = watch::channel(false);
        let keeper = tokio::spawn(keep_alive(c.clone(), lease, self.ttl, lost_tx));
        Ok(Session {
            lease,
            lost,
            keeper,
            client: c,
        })
    }

    /// Campaigns until this replica wins; meanwhile keeps the role's
    /// leader address current from `leader`.
    async fn campaign(
        &self,
        session: &Session,
        role: &watch::Sender<RoleState>,
    ) -> anyhow::Result<LeaderKey> {
        let mut c = self.client.clone();
        let name = self.name.clone();
        let value = self.advertise.clone();
        let campaign = async move {
            c.campaign(name, value, session.lease)
                .await
                .map_err(|e| rpc_error("campaign", e))?
                .take_leader()
                .ok_or_else(|| anyhow::anyhow!("etcd answered the campaign without a leader key"))
        };
        tokio::pin!(campaign);
        let mut lost = session.lost.clone();
        let mut poll = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                won = &mut campaign => return won,
                () = async { let _ = lost.wait_for(|l| *l).await; } => {
                    anyhow::bail!("the lease expired while campaigning")
                }
                _ = poll.tick() => {
                    let leader = self.current_leader().await;
                    role.send_if_modified(|r| match r {
                        RoleState::Follower { leader: l } if *l != leader => {
                            if let Some(addr) = &leader {
                                tracing::info!(leader = %addr, "following");
                            }
                            *l = leader;
                            true
                        }
                        _ => false,
                    });
                }
            }
        }
    }

    /// The current leader's advertised address, if one is elected.
    async fn current_leader(&self) -> Option<String> {
        let mut c = self.client.clone();
        let r = tokio::time::timeout(Duration::from_secs(2), c.leader(self.name.clone()))
            .await
            .ok()?
            .ok()?;
        let kv = r.kv()?;
        let v = String::from_utf8_lossy(kv.value()).into_owned();
        (v != self.advertise).then_some(v)
    }
}

/// Renews `lease` a third of the way through its TTL. `lost` turns true,
/// for good, when the last successful renewal was *sent* more than a TTL
/// ago (etcd then may have expired it: this side gives up no later than
/// etcd does) or when etcd answers that the lease is gone.
async fn keep_alive(mut c: Client, lease: i64, ttl: Duration, lost: watch::Sender<bool>) {
    let every = ttl / 3;
    let mut valid_until = Instant::now() + ttl;
    let mut stream = None;
    loop {
        let sent = Instant::now();
        if sent >= valid_until {
            tracing::warn!(
                lease,
                "etcd lease not renewed within its TTL: leadership lost"
            );
            let _ = lost.send(true);
            return;
        }
        let remaining = valid_until - sent;
        let renewed = tokio::time::timeout(
            remaining.min(every.max(Duration::from_millis(500))),
            async {
                if stream.is_none() {
                    stream = Some(c.lease_keep_alive(lease).await.map_err(|e| e.to_string())?);
                }
                let (keeper, responses) = stream.as_mut().expect("just set");
                keeper.keep_alive().await.map_err(|e| e.to_string())?;
                match responses.message().await {
                    Ok(Some(r)) => Ok(r.ttl()),
                    Ok(None) => Err("keep-alive stream closed".to_owned()),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await;
        match renewed {
            Ok(Ok(left)) if left > 0 => {
                valid_until = sent + Duration::from_secs(left as u64).min(ttl);
                tokio::time::sleep(every.saturating_sub(sent.elapsed())).await;
            }
            Ok(Ok(_)) => {
                tracing::warn!(lease, "etcd says the lease expired: leadership lost");
                let _ = lost.send(true);
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(lease, error = %e, "etcd lease renewal failed; retrying");
                stream = None;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(_) => {
                stream = None;
            }
        }
    }
}
