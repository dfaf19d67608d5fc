//! The Ebb executor (`ebb-executor`): one per host. It runs the scheduler's
//! launch and stop actions as Docker containers, with limits that match the
//! placement, graceful stops (SIGTERM, grace, SIGKILL), runtime limits, log
//! tails and reconciliation of the containers it finds on the host.
//!
//! ```text
//!  server ── Command ──▶ manager::RunManager ──▶ runtime::Runtime (DockerRuntime, bollard)
//!         ◀── Report ───        (one task per run)        │
//!                                                          ▼
//!                                                    Docker Engine
//! ```
//!
//! - `model`: the commands and reports (plain types the gRPC stream maps onto).
//! - `manager`: the state machine that owns the runs on this host.
//! - `runtime`: the runtime trait, run ids and labels, and the Docker implementation.
//! - `config`: configuration and host resource detection.
//!
//! The gRPC stream to `ebb server` (`ebb.v1.ExecutorService.Attach`, whose
//! messages `ebb-proto` defines) plugs in on top of `RunManager`'s channels.

pub mod config;
pub mod manager;
pub mod model;
pub mod runtime;

pub use config::{ExecutorConfig, HostResources, ResourceSlice};
pub use ebb_proto::v1::{ExecutorMessage, SchedulerMessage};
pub use manager::{ManagerError, RunManager};
pub use model::{Command, Report, RunEvent, RunEventKind, RunSpec, StopCause};
pub use runtime::{DockerRuntime, RunId, Runtime};
