//! The driver's job requests: create, get, list, tasks, cancel, explain,
//! watch starts and log requests.

use std::sync::Arc;

use base64::Engine;
use ebb_proto::v1 as pb;
use ebb_scheduler as core;
use sha2::{Digest, Sha256};

use super::{Driver, LOGS_TIMEOUT, LogsWait, Reply, WatchStart};
use crate::auth::Principal;
use crate::convert;
use crate::error::ApiError;
use crate::records::{self, JobExtras, Record};

/// Page sizes (AIP-158): 100 by default, at most 1,000 per page.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

fn page_size(n: u32) -> usize {
    match n as usize {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

/// A page token: the last key returned and a hash of the filter it belongs to.
fn encode_token(after: u64, filter: u64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{after}.{filter:016x}"))
}

fn decode_token(token: &str, filter: u64) -> Result<Option<u64>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || ApiError::field("page_token", "is not a token this server issued");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let (after, hash) = raw.split_once('.').ok_or_else(bad)?;
    let after: u64 = after.parse().map_err(|_| bad())?;
    let hash = u64::from_str_radix(hash, 16).map_err(|_| bad())?;
    if hash != filter {
        return Err(ApiError::field(
            "page_token",
            "belongs to a request with different filters",
        ));
    }
    Ok(Some(after))
}

fn filter_hash(parts: &str) -> u64 {
    let d = Sha256::digest(parts.as_bytes());
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

impl Driver {
    fn extras_of(&self, id: core::JobId) -> Arc<JobExtras> {
        self.extras.get(&id).cloned().unwrap_or_default()
    }

    fn job_wire(&self, id: core::JobId) -> Option<pb::Job> {
        let v = self.core.job(id)?;
        Some(convert::job_to_wire(&v, &self.extras_of(id)))
    }

    /// The job, if the principal may see it.
    fn visible_job(&self, p: &Principal, job: u64, what: &str) -> Result<core::JobId, ApiError> {
        let id = core::JobId(job);
        let spec = self
            .core
            .job_spec(id)
            .ok_or_else(|| ApiError::NotFound(format!("job {job} not found")))?;
        p.check_team(spec.team.as_str(), what)?;
        Ok(id)
    }

    pub(super) fn create_job(
        &mut self,
        p: &Principal,
        req: pb::CreateJobRequest,
    ) -> Result<pb::Job, ApiError> {
        let spec = req
            .spec
            .as_ref()
            .ok_or_else(|| ApiError::field("spec", "is required"))?;
        p.check_team(&spec.team, "create")?;
        let id = core::JobId(self.server.next_job_id);
        let wall = self.now();
        let (core_spec, extras) = convert::job_from_wire(id, &req, wall)?;
        let team = core_spec.team.clone();
        if let Some(key) = &core_spec.request_key
            && let Some(existing) = self.core.job_by_request_key(&team, key)
        {
            let old = self.core.job_spec(existing).expect("known job");
            if old.same_request_as(&core_spec)
                && convert::same_job(&self.extras_of(existing), &extras)
            {
                return Ok(self.job_wire(existing).expect("known job"));
            }
            return Err(ApiError::AlreadyExists(format!(
                "request_id `{key}` of team {team} was used for job {} with a different spec",
                existing.0
            )));
        }
        let n = u64::from(core_spec.n_tasks);
        let limits = &self.config.limits;
        if self.tasks_known + n > limits.max_tasks_known {
            return Err(ApiError::ResourceExhausted(format!(
                "the server holds {} tasks; {n} more would exceed limits.max_tasks_known = {}",
                self.tasks_known, limits.max_tasks_known
            )));
        }
        if let Some(max) = limits.max_live_tasks_per_team {
            let live = self.team_live.get(team.as_str()).copied().unwrap_or(0);
            if live + n > max {
                return Err(ApiError::ResourceExhausted(format!(
                    "team {team} has {live} unfinished tasks; {n} more would exceed its limit of {max}"
                )));
            }
        }
        let now = self.now();
        self.input(
            Record::JobSubmitted {
                now,
                spec: core_spec,
            },
            "spec.",
        )?;
        self.batch.put_jobs.push((id.0, records::encode(&extras)));
        self.extras.insert(id, Arc::new(extras));
        Ok(self.job_wire(id).expect("just created"))
    }

    pub(super) fn get_job(&self, p: &Principal, job: u64) -> Result<pb::Job, ApiError> {
        let id = self.visible_job(p, job, "see")?;
        Ok(self.job_wire(id).expect("visible job"))
    }

    pub(super) fn list_jobs(
        &self,
        p: &Principal,
        req: &pb::ListJobsRequest,
    ) -> Result<pb::ListJobsResponse, ApiError> {
        let team = match (p.team(), req.team.as_str()) {
            (Some(own), "") => Some(own.to_owned()),
            (Some(own), t) if t == own => Some(own.to_owned()),
            (Some(own), t) => {
                return Err(ApiError::PermissionDenied(format!(
                    "team `{own}` may not list jobs of team `{t}`"
                )));
            }
            (None, "") => None,
            (None, t) => Some(t.to_owned()),
        };
        let phases = req
            .phases
            .iter()
            .enumerate()
            .map(|(i, ph)| convert::phase_from_wire(*ph, &format!("phases[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut labels: Vec<(&String, &String)> = req.labels.iter().collect();
        labels.sort();
        let hash = filter_hash(&format!("{team:?}|{phases:?}|{labels:?}"));
        let mut after = decode_token(&req.page_token, hash)?.map(core::JobId);
        let limit = page_size(req.page_size);
        let filter = core::JobFilter {
            team: team.map(core::TeamId::from),
            phases,
        };
        let mut jobs = Vec::new();
        let mut more = false;
        'pages: loop {
            let page = self.core.list_jobs(&filter, after, limit);
            for v in &page.items {
                after = Some(v.id);
                let x = self.extras_of(v.id);
                if labels.iter().all(|(k, val)| x.labels.get(*k) == Some(*val)) {
                    if jobs.len() == limit {
                        more = true;
                        break 'pages;
                    }
                    jobs.push(convert::job_to_wire(v, &x));
                }
            }
            if page.next.is_none() {
                break;
            }
        }
        let next_page_token = if more {
            let last = jobs.last().map_or(0, |j| j.job_id);
            encode_token(last, hash)
        } else {
            String::new()
        };
        Ok(pb::ListJobsResponse {
            jobs,
            next_page_token,
        })
    }

    pub(super) fn list_tasks(
        &self,
        p: &Principal,
        req: &pb::ListTasksRequest,
    ) -> Result<pb::ListTasksResponse, ApiError> {
        let id = self.visible_job(p, req.job_id, "see")?;
        let state = convert::task_state_filter(req.state)?;
        let hash = filter_hash(&format!("{}|{state:?}", req.job_id));
        let after = decode_token(&req.page_token, hash)?
            .map(|a| u32::try_from(a).map_err(|_| ApiError::field("page_token", "out of range")))
            .transpose()?;
        let page = self
            .core
            .list_tasks(id, state, after, page_size(req.page_size))
            .expect("visible job");
        Ok(pb::ListTasksResponse {
            tasks: page
                .items
                .iter()
                .map(|t| {
                    let mut w = convert::task_to_wire(t);
                    // The core names a host only while a run holds one; for
                    // an ended run, say where it ran (the server remembers
                    // the latest run's host) so `ebb job tasks` can answer
                    // "where did my task run?".
                    let ended = [
                        pb::TaskState::Completed,
                        pb::TaskState::Failed,
                        pb::TaskState::Cancelled,
                    ]
                    .map(|s| s as i32)
                    .contains(&w.state);
                    if ended
                        && w.host_id.is_empty()
                        && let Some((attempt, host)) = self.run_hosts.get(&t.id)
                        && *attempt == t.run.attempt
                    {
                        w.host_id = host.to_string();
                    }
                    w
                })
                .collect(),
            next_page_token: page
                .next
                .map(|n| encode_token(u64::from(n), hash))
                .unwrap_or_default(),
        })
    }

    pub(super) fn cancel_job(
        &mut self,
        p: &Principal,
        job: u64,
        grace_ms: Option<u64>,
    ) -> Result<pb::Job, ApiError> {
        let id = self.visible_job(p, job, "cancel")?;
        if self
            .core
            .job_phase(id)
            .is_some_and(core::JobPhase::is_finished)
        {
            return Err(ApiError::FailedPrecondition(format!(
                "job {job} has already ended"
            )));
        }
        let now = self.now();
        self.input(
            Record::JobKilled {
                now,
                job: id,
                grace_ms,
            },
            "",
        )?;
        if grace_ms.is_some() {
            let mut x = (*self.extras_of(id)).clone();
            x.cancel_grace_ms = grace_ms;
            self.batch.put_jobs.push((id.0, records::encode(&x)));
            self.extras.insert(id, Arc::new(x));
        }
        Ok(self.job_wire(id).expect("visible job"))
    }

    pub(super) fn explain(
        &self,
        p: &Principal,
        req: &pb::ExplainPendingRequest,
    ) -> Result<pb::ExplainPendingResponse, ApiError> {
        let id = self.visible_job(p, req.job_id, "see")?;
        let now = self.clock_ms;
        let mut out = pb::ExplainPendingResponse {
            job_id: req.job_id,
            task_index: req.task_index,
            ..Default::default()
        };
        let reasons = |out: &mut pb::ExplainPendingResponse, r: &core::PendingReasons| {
            out.reasons = convert::reasons_to_wire(r);
            out.resolvable_by_preemption = r.resolvable_by_preemption();
            out.summary = r.to_string();
        };
        match req.task_index {
            Some(index) => {
                let t = self
                    .core
                    .task(core::TaskId::new(id, index))
                    .ok_or_else(|| {
                        ApiError::NotFound(format!("job {} has no task {index}", req.job_id))
                    })?;
                match (&t.state, t.pending_reasons.as_deref()) {
                    (core::TaskState::Pending, _) if t.ready_at.as_millis() > now => {
                        out.n_backing_off = 1;
                        out.next_ready_time = Some(convert::ts_to_wire(t.ready_at));
                        out.summary = format!(
                            "waiting out a retry back-off after {} failure(s)",
                            t.n_failures
                        );
                    }
                    (core::TaskState::Pending, Some(r)) => {
                        out.n_pending = 1;
                        reasons(&mut out, r);
                    }
                    (core::TaskState::Pending, None) => {
                        out.n_pending = 1;
                        out.summary = "not yet considered by a scheduling round".into();
                    }
                    (state, _) => {
                        out.summary = format!("not pending: the task is {}", state.name());
                    }
                }
            }
            None => {
                let mut after = None;
                let mut next_ready: Option<core::Timestamp> = None;
                loop {
                    let page = self
                        .core
                        .list_tasks(id, Some("pending"), after, 10_000)
                        .expect("visible job");
                    for t in &page.items {
                        if t.ready_at.as_millis() > now {
                            out.n_backing_off += 1;
                            next_ready = Some(next_ready.map_or(t.ready_at, |n| n.min(t.ready_at)));
                        } else {
                            out.n_pending += 1;
                        }
                    }
                    match page.next {
                        Some(n) => after = Some(n),
                        None => break,
                    }
                }
                out.next_ready_time = next_ready.map(convert::ts_to_wire);
                match self.core.job_pending_reasons(id) {
                    Some(r) if out.n_pending > 0 => reasons(&mut out, &r),
                    _ if out.n_pending > 0 => {
                        out.summary = "not yet considered by a scheduling round".into();
                    }
                    _ if out.n_backing_off > 0 => {
                        out.summary =
                            format!("{} task(s) waiting out a retry back-off", out.n_backing_off);
                    }
                    _ => out.summary = "no task is pending".into(),
                }
            }
        }
        Ok(out)
    }

    pub(super) fn watch_start(
        &self,
        p: &Principal,
        job: Option<u64>,
        team: Option<String>,
    ) -> Result<WatchStart, ApiError> {
        let cursor = self.core.last_event_seq();
        let snapshot = |id: core::JobId| -> Option<pb::WatchEvent> {
            let job = self.job_wire(id)?;
            Some(pb::WatchEvent {
                cursor,
                time: Some(convert::ms_to_wire(self.clock_ms)),
                job_id: id.0,
                kind: Some(pb::watch_event::Kind::Snapshot(pb::JobSnapshot {
                    job: Some(job),
                    resync: false,
                })),
            })
        };
        match job {
            Some(job) => {
                let id = self.visible_job(p, job, "watch")?;
                Ok(WatchStart {
                    snapshots: snapshot(id).into_iter().collect(),
                    cursor,
                    finished: self
                        .core
                        .job_phase(id)
                        .is_some_and(core::JobPhase::is_finished),
                })
            }
            None => {
                let team = match (p.team(), team) {
                    (Some(own), Some(t)) if t != own => {
                        return Err(ApiError::PermissionDenied(format!(
                            "team `{own}` may not watch jobs of team `{t}`"
                        )));
                    }
                    (Some(own), _) => Some(own.to_owned()),
                    (None, t) => t,
                };
                let filter = core::JobFilter {
                    team: team.map(core::TeamId::from),
                    phases: Vec::new(),
                };
                let page = self.core.list_jobs(&filter, None, usize::MAX);
                Ok(WatchStart {
                    snapshots: page.items.iter().filter_map(|v| snapshot(v.id)).collect(),
                    cursor,
                    finished: false,
                })
            }
        }
    }

    pub(super) fn task_logs(
        &mut self,
        p: &Principal,
        req: &pb::GetTaskLogsRequest,
        reply: Reply<pb::GetTaskLogsResponse>,
    ) {
        let out = (|| -> Result<(core::RunId, String), ApiError> {
            let id = self.visible_job(p, req.job_id, "read logs of")?;
            let task = core::TaskId::new(id, req.task_index);
            let t = self.core.task(task).ok_or_else(|| {
                ApiError::NotFound(format!("job {} has no task {}", req.job_id, req.task_index))
            })?;
            let attempt = if req.attempt == 0 {
                t.run.attempt
            } else {
                req.attempt
            };
            if attempt == 0 {
                return Err(ApiError::FailedPrecondition(format!(
                    "task {task} has never been placed, so it has no logs"
                )));
            }
            let host = match self.run_hosts.get(&task) {
                Some((a, h)) if *a == attempt => h.to_string(),
                _ => {
                    return Err(ApiError::FailedPrecondition(format!(
                        "the host of run {} is not known to this server (it ran before the server's last restart)",
                        task.run(attempt)
                    )));
                }
            };
            Ok((task.run(attempt), host))
        })();
        let (run, host) = match out {
            Ok(x) => x,
            Err(e) => return self.reply(reply, Err(e)),
        };
        let Some(conn) = self.slots.get(&host).and_then(|s| s.conn.as_ref()) else {
            return self.reply(
                reply,
                Err(ApiError::Unavailable(format!(
                    "executor {host} of run {run} is not connected"
                ))),
            );
        };
        let id = self.next_logs;
        self.next_logs += 1;
        let tail = match req.tail_lines {
            0 => 100,
            n => n.min(10_000),
        };
        let msg = pb::SchedulerMessage {
            message: Some(pb::scheduler_message::Message::LogsRequest(
                pb::LogsRequest {
                    request_id: id,
                    run: Some(convert::run_to_wire(run)),
                    tail_lines: tail,
                },
            )),
        };
        if conn.tx.send(Ok(msg)).is_err() {
            return self.reply(
                reply,
                Err(ApiError::Unavailable(format!(
                    "executor {host} disconnected"
                ))),
            );
        }
        self.logs.insert(
            id,
            LogsWait {
                reply,
                run,
                host,
                data: Vec::new(),
                truncated: false,
                deadline: std::time::Instant::now() + LOGS_TIMEOUT,
            },
        );
    }

    pub(super) fn logs_chunk(&mut self, host: &str, chunk: pb::LogsChunk) {
        let Some(w) = self.logs.get_mut(&chunk.request_id) else {
            return;
        };
        if w.host != host {
            return;
        }
        if !chunk.error.is_empty() {
            let w = self.logs.remove(&chunk.request_id).expect("present");
            let _ = w.reply.send(Err(ApiError::Unavailable(format!(
                "executor {host} could not read the logs of {}: {}",
                w.run, chunk.error
            ))));
            return;
        }
        let max = self.config.limits.max_message_bytes / 2;
        w.data.extend_from_slice(&chunk.data);
        w.truncated |= chunk.truncated;
        if w.data.len() > max {
            let cut = w.data.len() - max;
            w.data.drain(..cut);
            w.truncated = true;
        }
        if chunk.eof {
            let w = self.logs.remove(&chunk.request_id).expect("present");
            let _ = w.reply.send(Ok(pb::GetTaskLogsResponse {
                run: Some(convert::run_to_wire(w.run)),
                host_id: w.host,
                data: w.data,
                truncated: w.truncated,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_are_tied_to_their_filter() {
        let t = encode_token(42, 7);
        assert_eq!(decode_token(&t, 7), Ok(Some(42)));
        assert!(decode_token(&t, 8).is_err());
        assert!(decode_token("garbage!", 7).is_err());
        assert_eq!(decode_token("", 7), Ok(None));
        assert_eq!(page_size(0), DEFAULT_PAGE);
        assert_eq!(page_size(5000), MAX_PAGE);
    }
}
