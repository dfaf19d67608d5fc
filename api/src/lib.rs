//! The Ebb control plane (`ebb server`) and its CLI (`ebb`).
//!
//! ```text
//!  gRPC (tonic) ──▶ services/ ──▶ driver/ (one thread owns the core) ──▶ store/ (redb)
//!   jobs, market,    auth, validate,   apply ─▶ record ─▶ fsync ─▶ reply,   log, snapshot,
//!   executors        role checks       round: plan ─▶ fsync ─▶ commit       job side data
//!                                        └─▶ launch/stop on executor streams, watch events
//! ```
//!
//! - [`convert`]: the one module where wire types become core types.
//! - [`capacity`]: reservation sources (a static file, or EC2 behind the
//!   default `ec2` feature) that feed the market.
//! - [`validate`]: request rules shared by the server and the CLI.
//! - [`error`]: errors to gRPC statuses with field violations.
//! - [`auth`]: bearer tokens to principals, and who may do what.
//! - [`driver`]: the loop around the sans-IO scheduler core.
//! - [`store`]: the `Store` trait and the embedded redb store.
//! - [`records`]: what is made durable.
//! - [`finance`]: utilization, idle cost, savings and chargeback from the
//!   ledger samples.
//! - [`services`], [`server`], [`http`], [`metrics`]: the network shell;
//!   [`dashboard`]: the finance dashboard on the HTTP port.
//! - [`cli`]: the `ebb` command-line client.

pub mod auth;
pub mod capacity;
pub mod cli;
pub mod config;
pub mod convert;
pub mod dashboard;
pub mod driver;
pub mod error;
pub mod finance;
pub mod ha;
pub mod http;
pub mod metrics;
pub mod records;
pub mod server;
pub mod services;
pub mod store;
pub mod validate;
