//! `ebb-sim`: a discrete-event simulator that drives the real Ebb scheduler
//! core ([`ebb_scheduler::Scheduler`]) through days of streaming demand,
//! failovers and batch work, and reports what a policy harvests, loses and costs.
//!
//! ```text
//!   scenario.toml ─▶ scenario ─▶ workload (jobs, task work)  ─┐
//!                              └▶ demand (curves, failovers) ─┤
//!                                                             ▼
//!                      engine: event heap ⇄ Scheduler ⇄ simulated executors
//!                                                             │
//!                      metrics ─▶ report (table, JSON, CSV) ─ plot (SVG) ─ sweep
//! ```
//!
//! Same scenario and seed ⇒ the same decision trace, bit for bit; the run
//! prints its SHA-256.

pub mod demand;
pub mod duration;
pub mod engine;
pub mod executors;
pub mod faults;
pub mod market;
pub mod metrics;
pub mod plot;
pub mod policy;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod sweep;
pub mod workload;

pub use engine::{Outcome, Progress, RunOptions, run};
pub use scenario::Scenario;
