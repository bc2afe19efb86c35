//! The API's error type and its JSON shape `{"error":{"code":…,"message":…}}` (DESIGN.md §7).

use super::RETRY_AFTER_SECS;
use crate::api::RequestError;
use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};

/// An error answered to an HTTP client. Every variant has one status code; `code` strings are
/// stable, machine-readable identifiers (clients and the CLI match on them).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed (bad key, bad JSON, missing body, bad query, bad header).
    #[error("{message}")]
    BadRequest {
        /// E.g. `invalid_key`, `invalid_json`, `missing_body`, `invalid_consistency`.
        code: &'static str,
        /// Human-readable detail.
        message: String,
    },
    /// 401 + `WWW-Authenticate: Bearer`: the request carries no token, or one the node does not
    /// know.
    #[error("{message}")]
    Unauthorized {
        /// Human-readable detail (never the token).
        message: String,
    },
    /// 403: the token is valid but its role may not use this route.
    #[error("{message}")]
    Forbidden {
        /// Human-readable detail.
        message: String,
    },
    /// 408: the request body did not arrive in time; the connection is closed.
    #[error("{message}")]
    RequestTimeout {
        /// Human-readable detail.
        message: String,
    },
    /// 409: the request conflicts with the cluster's state (e.g. a leadership transfer to a
    /// node that is not a voter).
    #[error("{message}")]
    Conflict {
        /// E.g. `not_a_voter`, `change_in_progress`, `not_caught_up`, `config_changed`.
        code: &'static str,
        /// Human-readable detail.
        message: String,
    },
    /// 404: no such key or no such route.
    #[error("{message}")]
    NotFound {
        /// `key_not_found` or `route_not_found`.
        code: &'static str,
        /// Human-readable detail.
        message: String,
    },
    /// 405: the route exists, the method does not.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// 413: the body or value exceeds the node's limit.
    #[error("payload{} exceeds the limit of {limit} bytes", size.map(|s| format!(" of {s} bytes")).unwrap_or_default())]
    TooLarge {
        /// The size when known up front (`Content-Length`).
        size: Option<usize>,
        /// The limit.
        limit: usize,
    },
    /// 422: well-formed, but refused as it stands (an `Idempotency-Key` already used by a
    /// different request: `idempotency_key_reused`).
    #[error("{message}")]
    Unprocessable {
        /// E.g. `idempotency_key_reused`.
        code: &'static str,
        /// Human-readable detail.
        message: String,
    },
    /// 503 + `Retry-After`: no leader, no quorum, overloaded, shutting down, hop limit reached,
    /// leader unreachable. Safe to retry.
    #[error("{message}")]
    Unavailable {
        /// E.g. `no_leader`, `overloaded`, `dropped`, `shutting_down`, `hop_limit`,
        /// `leader_unreachable`, `leader_not_ready`.
        code: &'static str,
        /// Human-readable detail.
        message: String,
    },
    /// 503 `overloaded` + `Retry-After` + `Connection: close`: the request's body does not
    /// fit the node's budget of bytes in flight (`http.max_inflight_bytes`). The body was not
    /// read, so the connection is closed rather than left to drain it.
    #[error("the node holds its budget of {limit} request-body bytes in flight; retry later")]
    OverBudget {
        /// The budget.
        limit: usize,
    },
    /// 504: accepted but not completed in time; a write may still apply.
    #[error("{message}")]
    Timeout {
        /// Human-readable detail.
        message: String,
    },
    /// 500: the node failed internally.
    #[error("{message}")]
    Internal {
        /// Human-readable detail.
        message: String,
    },
}

impl ApiError {
    /// A 400 with the given code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// A 503 with the given code.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Unavailable {
            code,
            message: message.into(),
        }
    }

    /// The stable machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. }
            | ApiError::Conflict { code, .. }
            | ApiError::NotFound { code, .. }
            | ApiError::Unprocessable { code, .. }
            | ApiError::Unavailable { code, .. } => code,
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::OverBudget { .. } => "overloaded",
            ApiError::Unauthorized { .. } => "unauthorized",
            ApiError::Forbidden { .. } => "forbidden",
            ApiError::RequestTimeout { .. } => "request_timeout",
            ApiError::TooLarge { .. } => "payload_too_large",
            ApiError::Timeout { .. } => "timeout",
            ApiError::Internal { .. } => "internal",
        }
    }
}

impl From<RequestError> for ApiError {
    /// Maps the node's errors to statuses. `NotLeader` with a hint never gets here: the handler
    /// forwards it; without a hint it is a 503 like `NoLeader`.
    fn from(e: RequestError) -> Self {
        let message = e.to_string();
        match e {
            RequestError::NotLeader { .. } | RequestError::NoLeader { .. } => {
                ApiError::unavailable("no_leader", message)
            }
            RequestError::Overloaded => ApiError::unavailable("overloaded", message),
            RequestError::LeaderNotReady => ApiError::unavailable("leader_not_ready", message),
            RequestError::Dropped => ApiError::unavailable("dropped", message),
            RequestError::ShuttingDown => ApiError::unavailable("shutting_down", message),
            RequestError::StorageFailed { .. } => ApiError::unavailable("storage_failed", message),
            RequestError::StorageStalled { .. } => {
                ApiError::unavailable("storage_stalled", message)
            }
            RequestError::Timeout => ApiError::Timeout { message },
            RequestError::TooLarge { size, limit } => ApiError::TooLarge {
                size: Some(size),
                limit,
            },
            RequestError::NotAVoter(_) => ApiError::Conflict {
                code: "not_a_voter",
                message,
            },
            RequestError::SnapshotInProgress { .. } => ApiError::Conflict {
                code: "snapshot_in_progress",
                message,
            },
            RequestError::ChangeInProgress { .. } => ApiError::Conflict {
                code: "change_in_progress",
                message,
            },
            RequestError::NotCaughtUp { .. } => ApiError::Conflict {
                code: "not_caught_up",
                message,
            },
            RequestError::ConfigChanged { .. } => ApiError::Conflict {
                code: "config_changed",
                message,
            },
            RequestError::InvalidChange(_) => ApiError::BadRequest {
                code: "invalid_change",
                message,
            },
            RequestError::CannotDrain { .. } => ApiError::Conflict {
                code: "cannot_drain",
                message,
            },
            RequestError::HopLimit => ApiError::unavailable("hop_limit", message),
            RequestError::ShardMapConflict { .. } => ApiError::Internal { message },
            RequestError::NotSharded => ApiError::BadRequest {
                code: "not_sharded",
                message,
            },
            RequestError::ShardMapChanged { .. } => ApiError::Conflict {
                code: "shard_map_changed",
                message,
            },
            RequestError::InvalidShardChange(_) => ApiError::BadRequest {
                code: "invalid_shard_change",
                message,
            },
            RequestError::Internal(_) => ApiError::Internal { message },
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable { .. } | ApiError::OverBudget { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut builder = HttpResponse::build(self.status_code());
        if matches!(
            self,
            ApiError::Unavailable { .. } | ApiError::OverBudget { .. }
        ) {
            builder.insert_header((header::RETRY_AFTER, RETRY_AFTER_SECS.to_string()));
        }
        if matches!(self, ApiError::Unauthorized { .. }) {
            builder.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"conclave\""));
        }
        if matches!(
            self,
            ApiError::TooLarge { .. }
                | ApiError::RequestTimeout { .. }
                | ApiError::OverBudget { .. }
        ) {
            // The body may not have been read: make the client open a new connection rather
            // than have it send the rest of the body as the next request.
            builder.insert_header((header::CONNECTION, "close"));
        }
        builder.json(serde_json::json!({
            "error": { "code": self.code(), "message": self.to_string() }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::health::{StorageComponent, StorageError};
    use conclave_core::ids::{GroupId, NodeId};

    #[test]
    fn request_errors_map_to_documented_statuses() {
        let cases = [
            (
                RequestError::NotLeader { leader: None },
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                RequestError::NoLeader {
                    group: GroupId::FIRST,
                },
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (RequestError::Overloaded, StatusCode::SERVICE_UNAVAILABLE),
            (
                RequestError::LeaderNotReady,
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (RequestError::Dropped, StatusCode::SERVICE_UNAVAILABLE),
            (RequestError::ShuttingDown, StatusCode::SERVICE_UNAVAILABLE),
            (
                RequestError::StorageFailed {
                    component: StorageComponent::RaftLog,
                    error: StorageError::Reported {
                        shown: "No space left on device".into(),
                    },
                },
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                RequestError::StorageStalled {
                    component: StorageComponent::StateMachine(GroupId::FIRST),
                    for_ms: 5000,
                },
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (RequestError::Timeout, StatusCode::GATEWAY_TIMEOUT),
            (
                RequestError::NotAVoter(NodeId::new(4)),
                StatusCode::CONFLICT,
            ),
            (
                RequestError::CannotDrain {
                    id: NodeId::new(1),
                    group: GroupId::FIRST,
                },
                StatusCode::CONFLICT,
            ),
            (
                RequestError::SnapshotInProgress {
                    group: GroupId::FIRST,
                },
                StatusCode::CONFLICT,
            ),
            (
                RequestError::ChangeInProgress { config_id: 7 },
                StatusCode::CONFLICT,
            ),
            (
                RequestError::NotCaughtUp {
                    id: NodeId::new(4),
                    lag: 5000,
                    max_lag: 1000,
                },
                StatusCode::CONFLICT,
            ),
            (
                RequestError::ConfigChanged {
                    expected: 3,
                    current: 7,
                },
                StatusCode::CONFLICT,
            ),
            (
                RequestError::InvalidChange(crate::api::InvalidChange::NoVoters),
                StatusCode::BAD_REQUEST,
            ),
            (
                RequestError::TooLarge { size: 10, limit: 5 },
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            (
                RequestError::Internal(crate::api::InternalError::failed(std::io::Error::other(
                    "disk",
                ))),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ];
        for (e, status) in cases {
            let api = ApiError::from(e.clone());
            assert_eq!(api.status_code(), status, "{e:?}");
            let resp = api.error_response();
            assert_eq!(
                resp.headers().contains_key(header::RETRY_AFTER),
                status == StatusCode::SERVICE_UNAVAILABLE,
                "{e:?}"
            );
        }
    }
}
