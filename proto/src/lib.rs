//! The `ebb.v1` wire API (jobs, market, executors) as generated prost messages
//! and tonic services. Only `ebb-api` and `ebb-executor` depend on this crate;
//! the scheduler core never sees protobuf.

#![allow(missing_docs, unused_qualifications, clippy::all)]

/// Generated code for the `ebb.v1` package.
pub mod v1 {
    tonic::include_proto!("ebb.v1");
}

/// Linux capabilities a job may ask to keep (`ContainerSpec.capabilities`),
/// without the `CAP_` prefix. Every container starts with all capabilities
/// dropped; these are the ones batch work (encoders, trainers, their launch
/// wrappers) plausibly needs and that do not let a container reach the host:
/// no `SYS_ADMIN`, `NET_ADMIN`, `SYS_PTRACE`, `SYS_MODULE`,
/// `DAC_READ_SEARCH` or similar. The server validates requests against this
/// list and the executor enforces it again; both share it from here.
pub const ALLOWED_CAPABILITIES: [&str; 9] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "NET_BIND_SERVICE",
    "SETGID",
    "SETUID",
    "SYS_NICE",
];

/// A capability name as `ContainerSpec.capabilities` may spell it
/// (`net_bind_service`, `CAP_NET_BIND_SERVICE`), normalized to the list's
/// spelling; `None` if it is not allowed.
pub fn allowed_capability(text: &str) -> Option<&'static str> {
    let upper = text.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    ALLOWED_CAPABILITIES.into_iter().find(|c| *c == bare)
}

/// The encoded file descriptor set, for the gRPC reflection service.
/// Response metadata key naming the leader's address (`http://host:port`)
/// on the `UNAVAILABLE` status a follower replica answers with: clients
/// (the CLI, executors) retry there.
pub const LEADER_METADATA_KEY: &str = "ebb-leader";

/// The leader's address a status names (see [`LEADER_METADATA_KEY`]).
pub fn leader_hint(status: &tonic::Status) -> Option<String> {
    if status.code() != tonic::Code::Unavailable {
        return None;
    }
    let v = status.metadata().get(LEADER_METADATA_KEY)?.to_str().ok()?;
    (v.starts_with("http://") || v.starts_with("https://")).then(|| v.to_owned())
}

pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ebb_descriptor");
