//! Forwarding a request from a follower to the leader (DESIGN.md §7): the same method, path,
//! query, body and idempotency key, with a hop counter so that stale leader hints cannot make
//! requests circle between nodes forever.

use super::{ApiError, HOPS_HEADER, IDEMPOTENCY_HEADER};
use crate::api::{LeaderHint, NodeId};
use actix_web::http::header::{self, HeaderName};
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse};
use awc::error::{ConnectError, SendRequestError};

/// The hop count a request arrived with (0 when it comes from a client).
pub(crate) fn incoming_hops(req: &HttpRequest) -> Result<u32, ApiError> {
    match req.headers().get(HOPS_HEADER) {
        None => Ok(0),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_header",
                    format!("{HOPS_HEADER} must be a non-negative integer"),
                )
            }),
    }
}

/// Response headers that describe one connection, not the message: never copied across a hop.
fn hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::CONTENT_LENGTH
        || name == header::TE
        || name == header::TRAILER
        || name == header::UPGRADE
        || name.as_str() == "keep-alive"
}

/// Sends `req` (with `body`) to the leader named by `hint` and streams its answer back.
pub(crate) async fn forward(
    client: &awc::Client,
    scheme: &str,
    req: &HttpRequest,
    body: Bytes,
    hint: &LeaderHint,
    self_id: NodeId,
    max_hops: u32,
) -> Result<HttpResponse, ApiError> {
    if hint.id == self_id {
        // The node names itself leader yet refused as a follower: a transient state during a
        // leader change. Forwarding to ourselves would loop.
        return Err(ApiError::unavailable(
            "no_leader",
            "leadership is changing; retry",
        ));
    }
    let next = incoming_hops(req)?.saturating_add(1);
    if next > max_hops {
        return Err(ApiError::unavailable(
            "hop_limit",
            format!("request forwarded more than {max_hops} times; the cluster's leader hints are stale, retry"),
        ));
    }
    let path = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let url = format!("{scheme}://{}{}", hint.http, path);
    let mut outbound = client
        .request(req.method().clone(), &url)
        .insert_header((HOPS_HEADER, next.to_string()));
    // The client's own token travels with its request: the leader checks it again with the
    // same tokens (every node of a cluster has the same token files), so forwarding never
    // grants more than the client holds — no node-wide credential that a follower could use
    // to escalate.
    for name in [
        header::CONTENT_TYPE,
        header::AUTHORIZATION,
        HeaderName::from_static(IDEMPOTENCY_HEADER),
    ] {
        if let Some(v) = req.headers().get(&name) {
            outbound = outbound.insert_header((name.clone(), v.clone()));
        }
    }
    tracing::debug!(leader = %hint.id, %url, hops = next, "forwarding request to the leader");
    let response = outbound.send_body(body).await.map_err(|e| match e {
        // No connection was made: the leader never saw the request, so it is safe to retry.
        // (awc also reports a connection closed *after* the request was sent, before the
        // response head, as `Connect(Disconnected)`: that one is not safe, see below.)
        SendRequestError::Connect(c) if !matches!(c, ConnectError::Disconnected) => {
            ApiError::unavailable(
                "leader_unreachable",
                format!(
                    "cannot reach the leader (node {} at {}): {c}",
                    hint.id, hint.http
                ),
            )
        }
        SendRequestError::Timeout => ApiError::Timeout {
            message: format!("the leader (node {}) did not answer in time", hint.id),
        },
        // The connection failed after (part of) the request was sent: the leader may have
        // received it whole and applied it, so this is not a "safe to retry" 503 but the
        // 504 of an outcome the client cannot know.
        other => ApiError::Timeout {
            message: format!(
                "the connection to the leader (node {} at {}) failed before it answered; \
                 the request may have been applied: {other}",
                hint.id, hint.http
            ),
        },
    })?;
    let mut builder = HttpResponse::build(response.status());
    for (name, value) in response.headers() {
        if !hop_by_hop(name) {
            builder.append_header((name.clone(), value.clone()));
        }
    }
    // The leader's answers have a length: keep it, so the client gets the same framing as
    // from the leader (a streamed body would otherwise go out chunked, which simple clients,
    // such as `conclave bench cluster`, refuse). The body is still streamed, not buffered.
    let length = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(length) = length {
        builder.no_chunking(length);
    }
    Ok(builder.streaming(response))
}
