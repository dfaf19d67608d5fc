//! `ebb server`: starts the replica (the embedded store's single leader, or
//! an etcd replica that campaigns: [`crate::ha`]), serves gRPC (jobs,
//! market, executors, health, reflection) and HTTP (`/metrics`,
//! `/healthz`), and shuts down in order: stop accepting, let the driver
//! flush, snapshot and resign, close executor and watch streams, then exit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ebb_proto::v1::executor_service_server::ExecutorServiceServer;
use ebb_proto::v1::job_service_server::JobServiceServer;
use ebb_proto::v1::market_service_server::MarketServiceServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::auth::Authenticator;
use crate::config::Config;
use crate::ha::{Leadership, Replica, RoleState};
use crate::metrics::Metrics;
use crate::services::executor::Executors;
use crate::services::jobs::Jobs;
use crate::services::market::Market;

/// Concurrent streams per HTTP/2 connection: a load executor fleet (or a
/// proxy in front of many executors) multiplexes thousands of Attach streams
/// over few connections; h2's default of 200 would refuse them.
const MAX_CONCURRENT_STREAMS: u32 = 20_000;
/// HTTP/2 keepalive: detects dead connections under NAT idle timeouts
/// (commonly 60 s and up) without chatter.
const KEEPALIVE: Duration = Duration::from_secs(20);

/// How long start-up waits to learn this replica's role (an etcd replica:
/// its first election round) before it serves anyway, as a follower that
/// does not know the leader yet.
const STARTUP_SETTLE: Duration = Duration::from_secs(10);

/// How long a graceful shutdown waits for clients to close their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running server.
pub struct Running {
    /// The gRPC address it listens on (useful with port 0).
    pub grpc_addr: SocketAddr,
    /// The HTTP address.
    pub http_addr: SocketAddr,
    /// This replica's role, for in-process callers (benchmarks, tests).
    pub leadership: Leadership,
    trigger: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Shuts down gracefully and waits.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(t) = self.trigger.take() {
            let _ = t.send(());
        }
        self.done.await.context("server task")?
    }

    /// Waits until the server stops (after a signal or a driver failure).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.done.await.context("server task")?
    }

    /// A trigger that shuts the server down when sent to (for signals).
    pub fn take_trigger(&mut self) -> Option<oneshot::Sender<()>> {
        self.trigger.take()
    }
}

/// Starts the server.
pub async fn start(mut config: Config) -> anyhow::Result<Running> {
    config.validate()?;
    // Before the driver: the source's pools join the market setup.
    let capacity = crate::capacity::feed::open(&mut config).await?;
    let metrics = Arc::new(Metrics::new());
    let capacity_status = capacity.as_ref().map(|c| c.status());
    let mut replica = Replica::start(&config, metrics.clone(), capacity).await?;
    let leadership = replica.leadership.clone();
    // Say where this replica stands before serving: the leader once its core
    // is rebuilt, or a follower once it knows the leader.
    leadership.settled(STARTUP_SETTLE).await;
    let auth = Authenticator::new(&config.auth);
    if auth.is_dev_mode() {
        tracing::warn!(
            "DEV MODE: no auth tokens are configured, so every caller is treated as admin \
             (and may attach executors). Configure [[auth.tokens]] before exposing this server."
        );
    }
    let grpc = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding gRPC on {}", config.listen))?;
    let http = TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("binding HTTP on {}", config.http_listen))?;
    let grpc_addr = grpc.local_addr()?;
    let http_addr = http.local_addr()?;

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<JobServiceServer<Jobs>>().await;
    reporter.set_serving::<MarketServiceServer<Market>>().await;
    reporter
        .set_serving::<ExecutorServiceServer<Executors>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ebb_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ebb_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let max = config.limits.max_message_bytes;
    let jobs = JobServiceServer::new(Jobs::new(leadership.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let market = MarketServiceServer::new(Market::new(leadership.clone(), capacity_status))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let executors = ExecutorServiceServer::new(Executors::new(
        leadership.clone(),
        config.executors.timeout(),
    ))
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);

    let mut builder = Server::builder()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_keepalive_interval(Some(KEEPALIVE))
        .tcp_nodelay(true);
    if let Some(tls) = &config.tls {
        install_crypto_provider();
        let cert = std::fs::read(&tls.cert)
            .with_context(|| format!("reading TLS certificate {}", tls.cert.display()))?;
        let key = std::fs::read(&tls.key)
            .with_context(|| format!("reading TLS key {}", tls.key.display()))?;
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
            .context("TLS configuration")?;
    }
    let router = builder
        .layer(MarkStale(leadership.clone()))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(InterceptedService::new(jobs, auth.interceptor()))
        .add_service(InterceptedService::new(market, auth.interceptor()))
        .add_service(InterceptedService::new(executors, auth.interceptor()));

    let (grpc_stop_tx, grpc_stop_rx) = oneshot::channel::<()>();
    let (http_stop_tx, http_stop_rx) = oneshot::channel::<()>();
    let (replica_stopped_tx, replica_stopped_rx) = oneshot::channel::<()>();
    let grpc_shutdown = async move {
        let _ = grpc_stop_rx.await;
        tracing::info!("shutting down: flushing the store and closing streams");
        // The driver closes executor and watch streams, so that tonic's
        // graceful shutdown does not wait for them forever.
        let _ = replica_stopped_rx.await;
    };
    let grpc_task = tokio::spawn(
        router.serve_with_incoming_shutdown(TcpListenerStream::new(grpc), grpc_shutdown),
    );
    tracing::info!(
        url = %format!("http://{http_addr}/dashboard"),
        "finance dashboard (finance or admin token)"
    );
    let http_task = tokio::spawn(crate::http::serve(
        http,
        metrics,
        leadership.clone(),
        crate::dashboard::Dashboard::new(leadership.clone(), auth.clone()),
        async move {
            let _ = http_stop_rx.await;
        },
    ));
    let (trigger, triggered) = oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        let died = tokio::select! {
            _ = triggered => None,
            r = replica.wait() => Some(r),
        };
        if let Some(r) = died {
            // The replica stopped by itself (a store failure): stop serving.
            grpc_task.abort();
            http_task.abort();
            return r.and(Err(anyhow::anyhow!("the scheduler driver stopped")));
        }
        let _ = grpc_stop_tx.send(());
        // Flush, snapshot, close streams and (etcd) resign, then let the
        // gRPC server finish.
        replica.stop();
        let replica_result = replica.wait().await;
        let _ = replica_stopped_tx.send(());
        // Streams were closed by the driver; a client that keeps its half
        // open does not hold the shutdown up for long.
        let grpc_result = match tokio::time::timeout(SHUTDOWN_GRACE, grpc_task).await {
            Ok(r) => r.context("gRPC task")?,
            Err(_) => {
                tracing::warn!("connections still open after the shutdown grace; closing them");
                Ok(())
            }
        };
        let _ = http_stop_tx.send(());
        let _ = http_task.await;
        grpc_result.context("gRPC server")?;
        replica_result
    });
    let role = match leadership.state() {
        RoleState::Leader(_) => "leader".to_owned(),
        RoleState::Follower { leader } => format!(
            "follower of {}",
            leader.as_deref().unwrap_or("(no leader elected yet)")
        ),
        RoleState::Stopped => "stopped".to_owned(),
    };
    tracing::info!(%grpc_addr, %http_addr, tls = config.tls.is_some(), store = ?config.store.backend, data_dir = %config.data_dir.display(), %role, "ebb server listening");
    Ok(Running {
        grpc_addr,
        http_addr,
        leadership,
        trigger: Some(trigger),
        done,
    })
}

/// Response header on every answer given while the store is unreachable.
pub const STALE_HEADER: &str = "ebb-stale";

/// Adds [`STALE_HEADER`] to every response while this replica's store is
/// unreachable (reads are then answered from memory, and may show changes
/// that are not durable yet and were acknowledged to nobody).
#[derive(Clone)]
struct MarkStale(Leadership);

impl<S> tower::Layer<S> for MarkStale {
    type Service = MarkStaleService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MarkStaleService {
            inner,
            role: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct MarkStaleService<S> {
    inner: S,
    role: Leadership,
}

impl<S, Req, B> tower::Service<Req> for MarkStaleService<S>
where
    S: tower::Service<Req, Response = tonic::codegen::http::Response<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let fut = self.inner.call(req);
        let role = self.role.clone();
        Box::pin(async move {
            let mut resp = fut.await?;
            if role.store_stale() {
                resp.headers_mut().insert(
                    STALE_HEADER,
                    tonic::codegen::http::HeaderValue::from_static(
                        "the store is unreachable: answered from memory",
                    ),
                );
            }
            Ok(resp)
        })
    }
}

/// Makes ring rustls's process-wide crypto provider (once; later calls are
/// no-ops). With the `ec2` feature the AWS SDK brings aws-lc-rs as well, and
/// rustls refuses to pick between two providers on its own.
pub fn install_crypto_provider() {
    // An `Err` only says a provider is installed already, which is the goal.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
