//! The Ebb executor (`ebb-executor`): one per host. It registers the host with
//! the control plane over a bidirectional gRPC stream (`ebb.v1.ExecutorService`),
//! runs `LaunchTask` actions as Docker containers through bollard, turns
//! `StopTask` into SIGTERM, a grace period, then SIGKILL, and reports task exits.
//!
//! The Docker-backed implementation is the subject of a later issue; this crate
//! currently only fixes its place in the workspace and its wire contract, which
//! lives in `ebb-proto`.

pub use ebb_proto::v1::{ExecutorMessage, SchedulerMessage};
