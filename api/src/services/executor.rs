//! `ebb.v1.ExecutorService.Attach`: one task per stream reads the
//! executor's messages; the first must register. Heartbeats only touch the
//! stream's last-seen time (they never queue at the driver); run events and
//! log chunks go to the driver, commands come back on the response stream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ebb_proto::v1 as pb;
use ebb_proto::v1::executor_service_server::ExecutorService;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::principal;
use crate::driver::{ExecConn, Request as D};
use crate::error::ApiError;
use crate::ha::Leadership;
use crate::validate;

/// The executor service.
#[derive(Clone)]
pub struct Executors {
    role: Leadership,
    /// Stream ids, unique for the server's life.
    next_conn: Arc<AtomicU64>,
    /// How long the first message may take.
    register_timeout: std::time::Duration,
}

impl Executors {
    /// Over the replica's driver (a follower redirects executors to the
    /// leader); `register_timeout` bounds the wait for `register`.
    pub fn new(role: Leadership, register_timeout: std::time::Duration) -> Self {
        Executors {
            role,
            next_conn: Arc::new(AtomicU64::new(1)),
            register_timeout,
        }
    }
}

type Commands = Pin<Box<dyn Stream<Item = Result<pb::SchedulerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl ExecutorService for Executors {
    type AttachStream = Commands;

    async fn attach(
        &self,
        req: Request<Streaming<pb::ExecutorMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        principal(&req)?.check_executor()?;
        // A follower says so before reading anything: the executor goes to
        // the leader. The driver of this term owns the stream to its end.
        let driver = self.role.driver()?;
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(self.register_timeout, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded("no `register` message within the heartbeat timeout")
            })??
            .ok_or_else(|| Status::cancelled("the stream ended before `register`"))?;
        let Some(pb::executor_message::Message::Register(reg)) = first.message else {
            return Err(ApiError::FailedPrecondition(
                "the first message on an executor stream must be `register`".into(),
            )
            .into());
        };
        let host = reg
            .host
            .ok_or_else(|| ApiError::field("register.host", "is required"))?;
        validate::host_spec(&host).map_err(ApiError::InvalidArgument)?;
        let host_id = host.host_id.clone();
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let started = driver.started;
        let last_seen = Arc::new(AtomicU64::new(started.elapsed().as_millis() as u64));
        let (close, mut closed) = tokio::sync::oneshot::channel::<()>();
        let conn = ExecConn {
            id,
            tx,
            last_seen_ms: last_seen.clone(),
            close,
        };
        driver
            .call(|reply| D::Attach {
                host,
                runs: reg.runs,
                conn,
                reply,
            })
            .await?;
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = inbound.message() => match m {
                        Ok(Some(m)) => m,
                        Ok(None) | Err(_) => break,
                    },
                    // The driver dropped this stream (lost, replaced, shutdown).
                    _ = &mut closed => break,
                };
                last_seen.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                let req = match msg.message {
                    Some(pb::executor_message::Message::Heartbeat(_)) | None => continue,
                    Some(pb::executor_message::Message::RunEvent(event)) => D::RunEvent {
                        host: host_id.clone(),
                        conn_id: id,
                        event,
                    },
                    Some(pb::executor_message::Message::Logs(chunk)) => D::Logs {
                        host: host_id.clone(),
                        chunk,
                    },
                    Some(pb::executor_message::Message::Register(_)) => {
                        tracing::warn!(host = %host_id, "a second `register` on one stream is ignored");
                        continue;
                    }
                };
                if driver.send(req).await.is_err() {
                    return;
                }
            }
            let _ = driver
                .send(D::Detached {
                    host: host_id,
                    conn_id: id,
                })
                .await;
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}
