//! The driver's executor side: registration and reconciliation, run reports
//! (fenced by run id and host), heartbeat timeouts, and routing launch and
//! stop commands to the right stream.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use ebb_proto::v1 as pb;
use ebb_scheduler as core;
use tonic::Status;

use super::{Driver, ExecConn, Slot};
use crate::convert;
use crate::error::ApiError;
use crate::records::{Record, RunReport};

use pb::scheduler_message::Message as Out;

/// How a reported run relates to the core's view of this host.
enum Fence {
    /// The task's current run, placed on this host.
    Current(core::TaskState),
    /// Refused: (code, message).
    Refused(&'static str, String),
}

fn report_of(kind: &pb::run_event::Kind) -> RunReport {
    use pb::run_event::Kind;
    match kind {
        Kind::Started(_) => RunReport::Started,
        Kind::Exited(e) if e.exit_code == 0 => RunReport::Finished,
        Kind::Exited(_) | Kind::OomKilled(_) => RunReport::Failed,
        Kind::Stopped(_) => RunReport::Stopped,
        Kind::Lost(_) => RunReport::Lost,
    }
}

impl Driver {
    fn fence(&self, host: &str, run: core::RunId) -> Fence {
        let Some(t) = self.core.task(run.task) else {
            return Fence::Refused("unknown_task", format!("task {} is not known", run.task));
        };
        if t.run != run {
            return Fence::Refused(
                "stale_run",
                format!(
                    "run {run} is not current (task {} is {}, current run {})",
                    run.task,
                    t.state.name(),
                    t.run
                ),
            );
        }
        let on = match &t.state {
            core::TaskState::Assigned { host }
            | core::TaskState::Running { host }
            | core::TaskState::Stopping { host, .. } => Some(host.as_str()),
            _ => None,
        };
        match on {
            Some(h) if h == host => Fence::Current(t.state),
            Some(h) => Fence::Refused(
                "foreign_run",
                format!("run {run} is placed on host {h}, not {host}"),
            ),
            None => Fence::Refused(
                "stale_run",
                format!(
                    "run {run} is not placed (task {} is {})",
                    run.task,
                    t.state.name()
                ),
            ),
        }
    }

    fn refuse(&mut self, host: &str, run: Option<core::RunId>, code: &str, message: String) {
        self.metrics
            .refused_inputs
            .get_or_create(&crate::metrics::label("kind", code))
            .inc();
        tracing::debug!(host, code, %message, "executor report refused");
        self.outgoing.push((
            host.to_owned(),
            pb::SchedulerMessage {
                message: Some(Out::Refused(pb::Refused {
                    run: run.map(convert::run_to_wire),
                    code: code.to_owned(),
                    message,
                })),
            },
        ));
    }

    fn stop_message(&self, run: core::RunId, cause: core::StopCause) -> pb::SchedulerMessage {
        let grace = match cause {
            core::StopCause::Kill => self
                .extras
                .get(&run.task.job)
                .and_then(|x| x.cancel_grace_ms)
                .unwrap_or(self.core.config().kill_grace.as_millis()),
            core::StopCause::Preempt | core::StopCause::Restart => {
                self.core.config().market.preempt_grace.as_millis()
            }
        };
        pb::SchedulerMessage {
            message: Some(Out::Stop(convert::stop_to_wire(run, grace, cause))),
        }
    }

    /// A new stream registered: add or update the host, reconcile its runs.
    pub(super) fn attach(
        &mut self,
        host: pb::HostSpec,
        runs: Vec<pb::RunEvent>,
        conn: ExecConn,
    ) -> Result<(), ApiError> {
        let spec = convert::host_from_wire(&host);
        // The core accepts a host of any pool (critical work may run there),
        // but a pool the server does not configure is almost always a typo
        // that would leave the host idle forever: refuse it by name.
        if !self.server.pool_specs.contains_key(&spec.pool) {
            let known: Vec<String> = self
                .server
                .pool_specs
                .keys()
                .map(ToString::to_string)
                .collect();
            return Err(ApiError::field(
                "register.host.pool",
                format!(
                    "pool `{}` is not configured on this server (configured: {})",
                    spec.pool,
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        let id = spec.id.to_string();
        let now = self.now();
        match self.core.host(&spec.id).map(|h| h.spec().clone()) {
            None => self.input(Record::HostAdded { now, spec }, "register.host.")?,
            Some(old) if old != spec => {
                self.input(Record::HostUpdated { now, spec }, "register.host.")?
            }
            Some(_) => {}
        }
        if self
            .core
            .host(&core::HostId::from(id.as_str()))
            .is_some_and(|h| h.state() == core::HostState::Draining)
        {
            self.input(
                Record::HostActivated {
                    now,
                    host: core::HostId::from(id.as_str()),
                },
                "register.host.",
            )?;
        }
        let slot = self.slots.entry(id.clone()).or_insert_with(|| Slot {
            conn: None,
            outbox: Vec::new(),
            detached_at: Instant::now(),
        });
        if let Some(old) = slot.conn.take() {
            let _ = old.tx.send(Err(Status::aborted(
                "superseded: the host registered on a new stream",
            )));
        }
        let outbox = std::mem::take(&mut slot.outbox);
        slot.conn = Some(conn);
        // Runs whose launch never reached the executor: still to be sent.
        let mut undelivered: HashMap<core::RunId, ()> = HashMap::new();
        for m in &outbox {
            if let Some(Out::Launch(l)) = &m.message
                && let Ok(run) = convert::run_from_wire(l.run.as_ref(), "run")
            {
                undelivered.insert(run, ());
            }
        }
        // Reconcile what the executor reports.
        let mut reported: HashMap<core::RunId, ()> = HashMap::new();
        let mut adopted = Vec::new();
        let mut after: Vec<pb::SchedulerMessage> = Vec::new();
        for ev in runs {
            let Ok(run) = convert::run_from_wire(ev.run.as_ref(), "run") else {
                self.refuse(&id, None, "invalid", "a reported run has no run id".into());
                continue;
            };
            let Some(kind) = &ev.kind else {
                self.refuse(
                    &id,
                    Some(run),
                    "invalid",
                    format!("run {run} reported without a state"),
                );
                continue;
            };
            reported.insert(run, ());
            let live = matches!(kind, pb::run_event::Kind::Started(_));
            match self.fence(&id, run) {
                Fence::Current(state) => {
                    let report = report_of(kind);
                    match (&state, report) {
                        (core::TaskState::Running { .. }, RunReport::Started) => adopted.push(run),
                        (core::TaskState::Stopping { cause, .. }, RunReport::Started) => {
                            // The stop may never have arrived: ask again.
                            adopted.push(run);
                            after.push(self.stop_message(run, *cause));
                        }
                        _ => {
                            let now = self.now();
                            match self.input(
                                Record::Run {
                                    now,
                                    run,
                                    event: report,
                                },
                                "",
                            ) {
                                Ok(()) if live => adopted.push(run),
                                Ok(()) => {}
                                Err(e) => self.refuse(&id, Some(run), "wrong_state", e.to_string()),
                            }
                        }
                    }
                }
                Fence::Refused(code, message) => {
                    if live {
                        // Not this host's current run: it must not keep running.
                        tracing::info!(host = %id, %run, code, "stopping a run the scheduler does not own");
                        after.push(pb::SchedulerMessage {
                            message: Some(Out::Stop(convert::stop_to_wire(
                                run,
                                self.core.config().kill_grace.as_millis(),
                                core::StopCause::Kill,
                            ))),
                        });
                    } else {
                        self.refuse(&id, Some(run), code, message);
                    }
                }
            }
        }
        // Runs the core has on this host that the executor does not report.
        let hid = core::HostId::from(id.as_str());
        let on_host: Vec<core::TaskId> = self
            .core
            .host(&hid)
            .map(|h| h.tasks().to_vec())
            .unwrap_or_default();
        for task in on_host {
            let Some(t) = self.core.task(task) else {
                continue;
            };
            if reported.contains_key(&t.run) || undelivered.contains_key(&t.run) {
                continue;
            }
            let now = self.now();
            tracing::info!(host = %id, run = %t.run, "run not reported at registration: lost");
            if let Err(e) = self.input(
                Record::Run {
                    now,
                    run: t.run,
                    event: RunReport::Lost,
                },
                "",
            ) {
                tracing::error!(host = %id, run = %t.run, error = %e, "could not mark run lost");
            }
        }
        let (interval, timeout) = (
            self.config.executors.heartbeat_interval,
            self.config.executors.timeout(),
        );
        let registered = pb::SchedulerMessage {
            message: Some(Out::Registered(pb::Registered {
                host_id: id.clone(),
                heartbeat_interval: Some(convert::duration_to_wire(interval.as_millis() as u64)),
                heartbeat_timeout: Some(convert::duration_to_wire(timeout.as_millis() as u64)),
                adopted: adopted.into_iter().map(convert::run_to_wire).collect(),
            })),
        };
        // Registered first, then what waited for this host (minus stops of
        // runs just declared lost), then reconciliation's stops.
        self.outgoing.push((id.clone(), registered));
        for m in outbox {
            let keep = match &m.message {
                Some(Out::Stop(s)) => convert::run_from_wire(s.run.as_ref(), "run")
                    .is_ok_and(|run| matches!(self.fence(&id, run), Fence::Current(_))),
                _ => true,
            };
            if keep {
                self.outgoing.push((id.clone(), m));
            }
        }
        for m in after {
            self.outgoing.push((id.clone(), m));
        }
        tracing::info!(host = %id, "executor registered");
        Ok(())
    }

    /// A run report from an attached stream.
    pub(super) fn run_event(&mut self, host: &str, conn_id: u64, ev: pb::RunEvent) {
        let current = self
            .slots
            .get(host)
            .and_then(|s| s.conn.as_ref())
            .is_some_and(|c| c.id == conn_id);
        if !current {
            // A superseded stream: its host re-registered and was reconciled.
            return;
        }
        let run = match convert::run_from_wire(ev.run.as_ref(), "run_event.run") {
            Ok(r) => r,
            Err(e) => return self.refuse(host, None, "invalid", e.to_string()),
        };
        let Some(kind) = &ev.kind else {
            return self.refuse(host, Some(run), "invalid", "run_event has no kind".into());
        };
        match self.fence(host, run) {
            Fence::Refused(code, message) => self.refuse(host, Some(run), code, message),
            Fence::Current(_) => {
                let now = self.now();
                if let Err(e) = self.input(
                    Record::Run {
                        now,
                        run,
                        event: report_of(kind),
                    },
                    "",
                ) {
                    self.refuse(host, Some(run), "wrong_state", e.to_string());
                }
            }
        }
    }

    /// A stream ended; the host has until the heartbeat timeout to come back.
    pub(super) fn detached(&mut self, host: &str, conn_id: u64) {
        if let Some(slot) = self.slots.get_mut(host)
            && slot.conn.as_ref().is_some_and(|c| c.id == conn_id)
        {
            slot.conn = None;
            slot.detached_at = Instant::now();
            tracing::info!(host, "executor stream ended; waiting for it to re-attach");
        }
    }

    /// Declares hosts lost that were silent beyond the heartbeat timeout.
    pub(super) fn check_heartbeats(&mut self) {
        let timeout = self.config.executors.timeout();
        let now_ms = self.since_start_ms();
        let mut lost = Vec::new();
        for (host, slot) in &self.slots {
            let silent = match &slot.conn {
                Some(c) => {
                    let seen = c.last_seen_ms.load(Ordering::Relaxed);
                    std::time::Duration::from_millis(now_ms.saturating_sub(seen))
                }
                None => slot.detached_at.elapsed(),
            };
            if silent > timeout {
                lost.push(host.clone());
            }
        }
        for host in lost {
            let slot = self.slots.remove(&host).expect("present");
            if let Some(conn) = slot.conn {
                let _ = conn.tx.send(Err(Status::unavailable(format!(
                    "no message for {} ms (heartbeat timeout): host declared lost",
                    timeout.as_millis()
                ))));
            }
            let hid = core::HostId::from(host.as_str());
            if self.core.host(&hid).is_none() {
                continue;
            }
            let now = self.now();
            tracing::warn!(host, "heartbeat timeout: host lost, its runs requeued");
            if let Err(e) = self.input(Record::HostLost { now, host: hid }, "") {
                tracing::error!(host, error = %e, "could not mark host lost");
            }
        }
    }

    /// Turns a core action into a command for its host.
    pub(super) fn route_action(&mut self, a: core::Action) {
        let (host, msg) = match a {
            core::Action::Launch { run, host, request } => {
                let Some(spec) = self.core.job_spec(run.task.job).cloned() else {
                    return;
                };
                let extras = self.extras.get(&run.task.job).cloned().unwrap_or_default();
                let launch = convert::launch_to_wire(run, &request, &spec, &extras);
                (
                    host,
                    pb::SchedulerMessage {
                        message: Some(Out::Launch(launch)),
                    },
                )
            }
            core::Action::Stop {
                run,
                host,
                grace,
                cause,
            } => {
                let mut msg = self.stop_message(run, cause);
                if cause == core::StopCause::Preempt
                    && let Some(Out::Stop(s)) = &mut msg.message
                {
                    s.grace = Some(convert::duration_to_wire(grace.as_millis()));
                }
                (host, msg)
            }
        };
        self.deliver(host.as_str(), msg);
    }

    /// Sends a command on the host's stream, or keeps it for when it attaches.
    pub(super) fn deliver(&mut self, host: &str, msg: pb::SchedulerMessage) {
        // Look up before inserting: `entry` would allocate the key per command.
        if !self.slots.contains_key(host) {
            self.slots.insert(
                host.to_owned(),
                Slot {
                    conn: None,
                    outbox: Vec::new(),
                    detached_at: Instant::now(),
                },
            );
        }
        let slot = self.slots.get_mut(host).expect("just ensured");
        match &slot.conn {
            Some(c) => {
                if let Err(e) = c.tx.send(Ok(msg)) {
                    // The stream is gone; keep the command for its successor.
                    if let Ok(m) = e.0 {
                        slot.outbox.push(m);
                    }
                    slot.conn = None;
                    slot.detached_at = Instant::now();
                }
            }
            None => slot.outbox.push(msg),
        }
    }
}
