//! Golden scenarios: every `scheduler/testdata/*.toml` file is a small
//! fleet, a list of jobs and a sequence of steps, followed by what each round
//! must place and why what it left pending is pending (raft-rs `testdata/`
//! style). One test runs them all.
//!
//! # File format
//! ```toml
//! [config]            # optional: a SchedulerConfig (every field defaults)
//! [[host]]            # a HostSpec, added active at t=0, in file order
//! [[step]]            # in order; `at` is the time in ms, then exactly one of:
//! at = 5              #   round = "name", submit = JobSpec, host_added = HostSpec,
//! round = "first"     #   host_draining / host_activated / host_lost = "host id",
//!                     #   task_started / task_finished / task_failed /
//!                     #   task_stopped / task_killed = { job = 1, index = 0 },
//!                     #   job_killed = 1
//! # ---- expected ... ----
//! [[expect]]          # one per round step, in order
//! round = "first"
//! placements = ["job-1/0 -> h1"]                      # in plan order
//! pending = ["job-2 (1 task): insufficient cpu on 2 hosts"]
//! ```
//! Everything from the marker line on is the expectation; text above it
//! (including comments, which say *why* the expectation is right) is input.
//!
//! # Updating expectations
//! `EBB_BLESS=1 cargo test -p ebb-scheduler --test golden` rewrites every
//! file's expectation section from what the scheduler now does. Do it only
//! on purpose: review the diff and check each changed line against the
//! comments above it before committing.

// The test harness is a shell around the sans-IO core: it may read files and
// the environment, which the core's clippy.toml forbids.
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::{Path, PathBuf};

use ebb_scheduler::*;
use serde::{Deserialize, Serialize};

/// Separates a scenario's input from its expectation.
const MARKER: &str = "# ---- expected (EBB_BLESS=1 rewrites everything below this line) ----";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    #[serde(default)]
    config: SchedulerConfig,
    #[serde(default)]
    host: Vec<HostSpec>,
    #[serde(default)]
    step: Vec<Step>,
    #[serde(default)]
    expect: Vec<Expect>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    at: u64,
    round: Option<String>,
    submit: Option<JobSpec>,
    host_added: Option<HostSpec>,
    host_draining: Option<String>,
    host_activated: Option<String>,
    host_lost: Option<String>,
    task_started: Option<TaskId>,
    task_finished: Option<TaskId>,
    task_failed: Option<TaskId>,
    task_stopped: Option<TaskId>,
    task_killed: Option<TaskId>,
    job_killed: Option<u64>,
}

/// What one round did, rendered as strings so the files read naturally.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    round: String,
    placements: Vec<String>,
    pending: Vec<String>,
}

#[derive(Serialize)]
struct ExpectFile<'a> {
    expect: &'a [Expect],
}

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

/// Runs a scenario's steps and returns what each round did.
fn play(sc: &Scenario, file: &str) -> Vec<Expect> {
    let mut s = Scheduler::new(sc.config.clone());
    for h in &sc.host {
        s.handle_host_added(common::t(0), h.clone())
            .unwrap_or_else(|e| panic!("{file}: host {}: {e}", h.id));
    }
    let mut out = Vec::new();
    for (i, step) in sc.step.iter().enumerate() {
        let now = common::t(step.at);
        let ctx = format!("{file}: step {} (at {})", i + 1, step.at);
        // Outcomes of the step's inputs: exactly one is expected.
        let mut done: Vec<Result<(), InputError>> = Vec::new();
        let mut once = |r: Result<(), InputError>| done.push(r);
        if let Some(name) = &step.round {
            once(Ok(()));
            let (plan, report) = s.run_round(now).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            assert!(report.rejected.is_empty(), "{ctx}: {:?}", report.rejected);
            out.push(Expect {
                round: name.clone(),
                placements: plan
                    .assignments
                    .iter()
                    .map(|a| format!("{} -> {}", a.run.task, a.host))
                    .collect(),
                pending: plan
                    .unplaced
                    .iter()
                    .map(|u| {
                        let s = if u.n_tasks == 1 { "" } else { "s" };
                        format!("{} ({} task{s}): {}", u.job, u.n_tasks, u.reasons)
                    })
                    .collect(),
            });
        }
        if let Some(j) = &step.submit {
            once(s.handle_job_submitted(now, j.clone()).map(|_| ()));
        }
        if let Some(h) = &step.host_added {
            once(s.handle_host_added(now, h.clone()));
        }
        if let Some(h) = &step.host_draining {
            once(s.handle_host_draining(now, &HostId::from(h.as_str())));
        }
        if let Some(h) = &step.host_activated {
            once(s.handle_host_activated(now, &HostId::from(h.as_str())));
        }
        if let Some(h) = &step.host_lost {
            once(
                s.handle_host_lost(now, &HostId::from(h.as_str()))
                    .map(|_| ()),
            );
        }
        if let Some(task) = step.task_started {
            once(s.handle_task_started(now, common::run(&s, task)));
        }
        if let Some(task) = step.task_finished {
            once(s.handle_task_finished(now, common::run(&s, task)));
        }
        if let Some(task) = step.task_failed {
            once(s.handle_task_failed(now, common::run(&s, task)));
        }
        if let Some(task) = step.task_stopped {
            once(s.handle_task_stopped(now, common::run(&s, task)));
        }
        if let Some(task) = step.task_killed {
            once(s.handle_task_killed(now, task));
        }
        if let Some(job) = step.job_killed {
            once(s.handle_job_killed(now, JobId(job)));
        }
        assert_eq!(done.len(), 1, "{ctx}: a step does exactly one thing");
        if let Some(Err(e)) = done.pop() {
            panic!("{ctx}: {e}");
        }
        while s.poll_action().is_some() {}
    }
    out
}

#[test]
fn golden_scenarios() {
    let bless = std::env::var("EBB_BLESS").is_ok_and(|v| v == "1");
    let mut files: Vec<PathBuf> = std::fs::read_dir(testdata())
        .expect("scheduler/testdata exists")
        .map(|e| e.expect("readable testdata entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let mut failures = Vec::new();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(path).unwrap();
        let sc: Scenario = toml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = play(&sc, &name);
        if bless {
            let input = text.split(MARKER).next().unwrap().trim_end();
            let expect = toml::to_string_pretty(&ExpectFile { expect: &got }).unwrap();
            std::fs::write(path, format!("{input}\n\n{MARKER}\n\n{expect}")).unwrap();
        } else if got != sc.expect {
            let rendered = toml::to_string_pretty(&ExpectFile { expect: &got }).unwrap();
            failures.push(format!(
                "{name}: the scheduler now does this instead:\n{rendered}\n\
                 (if that is right on purpose, rerun with EBB_BLESS=1 and review the diff)"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(
        files.len() >= 4,
        "expected the golden scenarios, found {files:?}"
    );
}
