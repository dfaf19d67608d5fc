//! The one place errors become gRPC statuses: [`ApiError`] (what services and
//! the driver return) maps to a code and, for validation failures, a
//! `google.rpc.BadRequest` detail naming every offending field; core
//! [`InputError`]s map to [`ApiError`] here too.

use ebb_scheduler::InputError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// One invalid field of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Dotted path of the field in the request, e.g. `spec.request.cpu_millis`.
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

impl Violation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Violation {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// An error a request ends with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed; every violation names its field.
    #[error("invalid request: {}", describe(.0))]
    InvalidArgument(Vec<Violation>),
    /// The named resource does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The resource (or the request id) is already taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// The caller may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// No (valid) credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// The request is valid but the system is not in a state to apply it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A quota or capacity limit refuses the request.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A dependency (an executor, the store) is not reachable now.
    #[error("{0}")]
    Unavailable(String),
    /// Did not finish in time.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// This replica does not lead; `leader` is the one that does, if known.
    /// `UNAVAILABLE` with the leader's address in the `ebb-leader` metadata,
    /// so clients retry there.
    #[error("{}", match .leader {
        Some(l) => format!("this ebb server replica is a follower; the leader is {l} (retry there)"),
        None => "this ebb server replica is a follower and no leader is elected yet; retry shortly".to_owned(),
    })]
    NotLeader {
        /// The leader's advertised address.
        leader: Option<String>,
    },
    /// A server bug or an unexpected failure.
    #[error("internal error: {0}")]
    Internal(String),
}

fn describe(v: &[Violation]) -> String {
    v.iter()
        .map(|v| format!("`{}`: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ApiError {
    /// A single field violation.
    pub fn field(field: impl Into<String>, description: impl Into<String>) -> Self {
        ApiError::InvalidArgument(vec![Violation::new(field, description)])
    }

    /// The gRPC code.
    pub fn code(&self) -> Code {
        match self {
            ApiError::InvalidArgument(_) => Code::InvalidArgument,
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::AlreadyExists(_) => Code::AlreadyExists,
            ApiError::PermissionDenied(_) => Code::PermissionDenied,
            ApiError::Unauthenticated(_) => Code::Unauthenticated,
            ApiError::FailedPrecondition(_) => Code::FailedPrecondition,
            ApiError::ResourceExhausted(_) => Code::ResourceExhausted,
            ApiError::Unavailable(_) => Code::Unavailable,
            ApiError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            ApiError::NotLeader { .. } => Code::Unavailable,
            ApiError::Internal(_) => Code::Internal,
        }
    }

    /// Maps a core refusal. `prefix` is the request path of the core value
    /// the error's field paths are relative to (`spec.` for a job spec,
    /// `host.` for a host spec).
    pub fn from_core(e: InputError, prefix: &str) -> Self {
        match e {
            InputError::InvalidField { field, message } => {
                ApiError::field(format!("{prefix}{field}"), message)
            }
            InputError::DuplicateHost(_) | InputError::RequestKeyConflict { .. } => {
                ApiError::AlreadyExists(e.to_string())
            }
            InputError::DuplicateJob(_) => ApiError::Internal(e.to_string()),
            InputError::UnknownHost(_) | InputError::UnknownJob(_) | InputError::UnknownTask(_) => {
                ApiError::NotFound(e.to_string())
            }
            InputError::StaleRun { .. }
            | InputError::WrongTaskState { .. }
            | InputError::CapacityBelowAllocation { .. } => {
                ApiError::FailedPrecondition(e.to_string())
            }
            InputError::TimeWentBackwards { .. } | InputError::InvalidSnapshot(_) => {
                ApiError::Internal(e.to_string())
            }
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        match &e {
            ApiError::InvalidArgument(v) => {
                let violations: Vec<FieldViolation> = v
                    .iter()
                    .map(|v| FieldViolation::new(&v.field, &v.description))
                    .collect();
                Status::with_error_details(
                    Code::InvalidArgument,
                    e.to_string(),
                    ErrorDetails::with_bad_request(violations),
                )
            }
            ApiError::NotLeader { leader } => {
                let mut status = Status::new(e.code(), e.to_string());
                if let Some(v) = leader.as_deref().and_then(|l| l.parse().ok()) {
                    status
                        .metadata_mut()
                        .insert(ebb_proto::LEADER_METADATA_KEY, v);
                }
                status
            }
            _ => Status::new(e.code(), e.to_string()),
        }
    }
}

/// The field violations of a status, if it carries a `BadRequest` (for
/// clients: the CLI prints them, tests assert on them).
pub fn violations(status: &Status) -> Vec<Violation> {
    status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| Violation::new(v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ebb_scheduler::{HostId, JobId, TaskId, TeamId};

    #[test]
    fn core_errors_map_to_codes_and_fields() {
        let task = TaskId::new(JobId(1), 0);
        let cases: Vec<(InputError, Code)> = vec![
            (InputError::field("request", "bad"), Code::InvalidArgument),
            (
                InputError::DuplicateHost(HostId::from("h")),
                Code::AlreadyExists,
            ),
            (
                InputError::RequestKeyConflict {
                    team: TeamId::from("t"),
                    key: "k".into(),
                    existing: JobId(1),
                },
                Code::AlreadyExists,
            ),
            (InputError::UnknownJob(JobId(9)), Code::NotFound),
            (
                InputError::StaleRun {
                    run: task.run(1),
                    task,
                    state: "pending",
                    current: task.run(2),
                },
                Code::FailedPrecondition,
            ),
        ];
        for (e, code) in cases {
            let api = ApiError::from_core(e.clone(), "spec.");
            assert_eq!(api.code(), code, "{e}");
        }
        let status: Status =
            ApiError::from_core(InputError::field("request", "bad"), "spec.").into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            violations(&status),
            vec![Violation::new("spec.request", "bad")]
        );
    }
}
