//! The Ebb executor (`ebb-executor`): one per host. It runs the scheduler's
//! launch and stop actions as Docker containers, with limits that match the
//! placement, graceful stops (SIGTERM, grace, SIGKILL), runtime limits, log
//! tails and reconciliation of the containers it finds on the host.
//!
//! ```text
//!  ebb server ◀═ gRPC stream ═▶ attach::Attach ── Command ──▶ manager::RunManager ──▶ runtime::Runtime
//!  (Attach)      (wire.rs maps)      │          ◀── Report ───   (one task per run)    (DockerRuntime,
//!                                    └ register, heartbeats, reconnect                   bollard)
//!                                                                                          │
//!                                                                                          ▼
//!                                                                                    Docker Engine
//! ```
//!
//! - `attach`: the gRPC stream to `ebb server` (`ebb.v1.ExecutorService.Attach`):
//!   registration with reconciliation, heartbeats, reconnection with back-off.
//! - `wire`: the one module that maps wire messages to `model` types and back.
//! - `model`: the commands and reports (plain types the gRPC stream maps onto).
//! - `manager`: the state machine that owns the runs on this host.
//! - `runtime`: the runtime trait, run ids and labels, and the Docker implementation.
//! - `config`: configuration and host resource detection.
//!
//! The `ebb-executor` binary (`src/main.rs`) wires them together: Docker,
//! a `RunManager`, and an `attach::Attach` on the manager's channels.

pub mod attach;
pub mod config;
pub mod manager;
pub mod model;
pub mod runtime;
pub mod wire;

pub use attach::{Attach, AttachError, AttachOptions};
pub use config::{ExecutorConfig, HostConfig, HostResources, ResourceSlice, ServerConfig};
pub use ebb_proto::v1::{ExecutorMessage, SchedulerMessage};
pub use manager::{ManagerError, RunManager};
pub use model::{Command, Report, RunEvent, RunEventKind, RunSpec, StopCause};
pub use runtime::{DockerRuntime, RunId, Runtime};
