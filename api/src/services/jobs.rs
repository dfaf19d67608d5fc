//! `ebb.v1.JobService`: validates requests, checks the caller's role, and
//! forwards to the driver; watch streams read the event hub.

use std::pin::Pin;

use ebb_proto::v1 as pb;
use ebb_proto::v1::job_service_server::JobService;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::{Principal, principal};
use crate::driver::{Request as D, WatchStart};
use crate::error::ApiError;
use crate::ha::Leadership;
use crate::validate;

/// The job service.
#[derive(Clone)]
pub struct Jobs {
    role: Leadership,
}

impl Jobs {
    /// Over the replica's driver (a follower redirects to the leader).
    pub fn new(role: Leadership) -> Self {
        Jobs { role }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

/// Events buffered per watch stream before the watcher waits for the client.
const WATCH_BUFFER: usize = 1024;

#[tonic::async_trait]
impl JobService for Jobs {
    async fn create_job(
        &self,
        req: Request<pb::CreateJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let p = principal(&req)?;
        p.check_jobs("create")?;
        let req = req.into_inner();
        validate::create_job(&req, &self.role.driver()?.limits)
            .map_err(ApiError::InvalidArgument)?;
        let job = self
            .role
            .driver()?
            .call(|reply| D::CreateJob {
                principal: p,
                req,
                reply,
            })
            .await?;
        Ok(Response::new(job))
    }

    async fn get_job(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let p = principal(&req)?;
        p.check_jobs("see")?;
        let job = req.into_inner().job_id;
        let out = self
            .role
            .driver()?
            .call(|reply| D::GetJob {
                principal: p,
                job,
                reply,
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let p = principal(&req)?;
        p.check_jobs("list")?;
        let req = req.into_inner();
        if !req.team.is_empty() {
            validate::team("team", &req.team).map_err(ApiError::InvalidArgument)?;
        }
        let out = self
            .role
            .driver()?
            .call(|reply| D::ListJobs {
                principal: p,
                req,
                reply,
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn list_tasks(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let p = principal(&req)?;
        p.check_jobs("see")?;
        let req = req.into_inner();
        let out = self
            .role
            .driver()?
            .call(|reply| D::ListTasks {
                principal: p,
                req,
                reply,
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn cancel_job(
        &self,
        req: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let p = principal(&req)?;
        p.check_jobs("cancel")?;
        let req = req.into_inner();
        let grace_ms =
            validate::grace("grace", req.grace.as_ref()).map_err(ApiError::InvalidArgument)?;
        let out = self
            .role
            .driver()?
            .call(|reply| D::CancelJob {
                principal: p,
                job: req.job_id,
                grace_ms,
                reply,
            })
            .await?;
        Ok(Response::new(out))
    }

    type WatchJobStream = WatchStream;

    async fn watch_job(
        &self,
        req: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let p = principal(&req)?;
        p.check_jobs("watch")?;
        let req = req.into_inner();
        let stream = self
            .watch(p, Some(req.job_id), None, req.after_cursor)
            .await?;
        Ok(Response::new(stream))
    }

    type WatchJobsStream = WatchStream;

    async fn watch_jobs(
        &self,
        req: Request<pb::WatchJobsRequest>,
    ) -> Result<Response<Self::WatchJobsStream>, Status> {
        let p = principal(&req)?;
        p.check_jobs("watch")?;
        let req = req.into_inner();
        let team = (!req.team.is_empty()).then_some(req.team);
        if let Some(t) = &team {
            validate::team("team", t).map_err(ApiError::InvalidArgument)?;
        }
        let stream = self.watch(p, None, team, req.after_cursor).await?;
        Ok(Response::new(stream))
    }

    async fn get_task_logs(
        &self,
        req: Request<pb::GetTaskLogsRequest>,
    ) -> Result<Response<pb::GetTaskLogsResponse>, Status> {
        let p = principal(&req)?;
        p.check_jobs("read logs of")?;
        let req = req.into_inner();
        let out = self
            .role
            .driver()?
            .call(|reply| D::TaskLogs {
                principal: p,
                req,
                reply,
            })
            .await?;
        Ok(Response::new(out))
    }

    async fn explain_pending(
        &self,
        req: Request<pb::ExplainPendingRequest>,
    ) -> Result<Response<pb::ExplainPendingResponse>, Status> {
        let p = principal(&req)?;
        p.check_jobs("see")?;
        let req = req.into_inner();
        let out = self
            .role
            .driver()?
            .call(|reply| D::Explain {
                principal: p,
                req,
                reply,
            })
            .await?;
        Ok(Response::new(out))
    }
}

impl Jobs {
    async fn start(
        &self,
        p: &Principal,
        job: Option<u64>,
        team: &Option<String>,
    ) -> Result<WatchStart, ApiError> {
        let (p, team) = (p.clone(), team.clone());
        self.role
            .driver()?
            .call(|reply| D::Watch {
                principal: p,
                job,
                team,
                reply,
            })
            .await
    }

    /// A watch stream: a snapshot (unless resuming from a cursor the hub
    /// still holds), then every matching event until the job ends.
    async fn watch(
        &self,
        p: Principal,
        job: Option<u64>,
        team: Option<String>,
        after: Option<u64>,
    ) -> Result<WatchStream, Status> {
        let start = self.start(&p, job, &team).await?;
        let hub = self.role.driver()?.hub.clone();
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let resumable = after.is_some_and(|c| c <= start.cursor && hub.can_resume(c));
        let mut cursor = match after {
            Some(c) if resumable => c,
            _ => {
                for mut s in start.snapshots {
                    if let Some(pb::watch_event::Kind::Snapshot(snap)) = &mut s.kind {
                        snap.resync = after.is_some();
                    }
                    if tx.send(Ok(s)).await.is_err() {
                        return Err(Status::cancelled("client went away"));
                    }
                }
                if start.finished && job.is_some() {
                    return Ok(Box::pin(ReceiverStream::new(rx)));
                }
                start.cursor
            }
        };
        let own_team = p.team().map(str::to_owned).or(team);
        let this = self.clone();
        tokio::spawn(async move {
            let mut notify = hub.subscribe();
            loop {
                notify.borrow_and_update();
                let batch = match hub.read_after(cursor, 1024) {
                    Ok(b) => b,
                    Err(_) => {
                        // Fell behind the ring: start over from a fresh snapshot.
                        let Ok(s) = this.start(&p, job, &own_team).await else {
                            return;
                        };
                        for mut e in s.snapshots {
                            if let Some(pb::watch_event::Kind::Snapshot(snap)) = &mut e.kind {
                                snap.resync = true;
                            }
                            if tx.send(Ok(e)).await.is_err() {
                                return;
                            }
                        }
                        cursor = s.cursor;
                        continue;
                    }
                };
                for e in &batch {
                    cursor = e.seq;
                    let wanted = match job {
                        Some(j) => e.job == j,
                        None => own_team.as_deref().is_none_or(|t| t == &*e.team),
                    };
                    if !wanted {
                        continue;
                    }
                    if tx.send(Ok(e.wire.clone())).await.is_err() {
                        return;
                    }
                    if job.is_some() && e.finished {
                        return;
                    }
                }
                if batch.is_empty() {
                    if notify.borrow().1 {
                        let _ = tx
                            .send(Err(Status::unavailable("the server is shutting down")))
                            .await;
                        return;
                    }
                    if notify.changed().await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}
