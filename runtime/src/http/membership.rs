//! The operator's membership routes (DESIGN.md §7, issue 14): `POST /v1/cluster/learners`,
//! `/promote`, `/remove`, `/replace` (admin when tokens are configured) and `GET
//! /v1/cluster/config`.
//!
//! Every body is a small JSON object parsed into a typed struct that refuses unknown fields
//! (a typo must not silently become a different change). Every change may carry
//! `expected_config_id`: the node refuses it with 409 `config_changed` unless that is the
//! configuration in force, so two operators cannot both act on the same stale view. Only the
//! leader changes the membership: a follower forwards the request (same body, same token) like
//! every other leader-only route.

use super::{forward, read_required_body, ApiError, Data};
use crate::api::{
    ConfigChange, InvalidChange, KvService, LeaderHint, NewMember, NodeId, RequestError,
};
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use serde::Deserialize;

/// Largest body a membership route reads: a few ids and addresses.
const MAX_BODY: usize = 4096;

/// `POST /v1/cluster/learners`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    id: NodeId,
    addr: std::net::SocketAddr,
    http: std::net::SocketAddr,
    #[serde(default)]
    expected_config_id: Option<u64>,
}

/// `POST /v1/cluster/promote` and `/remove`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdBody {
    id: NodeId,
    #[serde(default)]
    expected_config_id: Option<u64>,
}

/// `POST /v1/cluster/replace`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplaceBody {
    remove: NodeId,
    add: NewMember,
    #[serde(default)]
    expected_config_id: Option<u64>,
}

/// `POST /v1/cluster/drain`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainBody {
    id: NodeId,
    /// Undo an earlier drain.
    #[serde(default)]
    undo: bool,
}

const DRAIN_SHAPE: &str = "{\"id\": <node id>[, \"undo\": true]}";

/// Parses `POST /v1/cluster/drain`'s body: the node and whether to undo.
pub(super) fn parse_drain(body: &[u8]) -> Result<(NodeId, bool), ApiError> {
    let invalid = |e: serde_json::Error| {
        ApiError::bad_request("invalid_json", format!("expected {DRAIN_SHAPE}: {e}"))
    };
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(invalid)?;
    let b: DrainBody =
        serde_json::from_value(serde_json::Value::Object(object)).map_err(invalid)?;
    Ok((b.id, b.undo))
}

/// `POST /v1/cluster/drain {"id", "undo"}` (admin): drains node `id` (or undoes it). The drain
/// state lives on that node, so a request naming another node is forwarded to it (same body,
/// same token); 200 with the node's [`crate::api::DrainOutcome`], 400 `invalid_change` for a
/// node that is no member, 409 `cannot_drain` for the only voter of a group it leads.
pub(super) async fn drain<S: KvService>(
    req: HttpRequest,
    payload: web::Payload,
    ctx: Data<S>,
) -> Result<HttpResponse, ApiError> {
    let (body, _held) = read_required_body(&req, payload, MAX_BODY, &ctx, DRAIN_SHAPE).await?;
    let (id, undo) = parse_drain(&body)?;
    if id == ctx.service.node_id() {
        return match ctx.service.drain(!undo).await {
            Ok(outcome) => Ok(HttpResponse::Ok().json(outcome)),
            Err(e) => Err(e.into()),
        };
    }
    let http = ctx
        .service
        .member_http(id)
        .ok_or_else(|| ApiError::from(RequestError::from(InvalidChange::NotAMember(id))))?;
    forward::forward(
        &ctx.client,
        ctx.scheme,
        &req,
        body,
        &LeaderHint { id, http },
        ctx.service.node_id(),
        ctx.options.max_hops,
    )
    .await
}

/// Which route a body belongs to (it decides the shape expected).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ChangeRoute {
    Learners,
    Promote,
    Remove,
    Replace,
}

impl ChangeRoute {
    fn shape(self) -> &'static str {
        match self {
            ChangeRoute::Learners => {
                "{\"id\": <node id>, \"addr\": \"HOST:PORT\", \"http\": \"HOST:PORT\"[, \"expected_config_id\": N]}"
            }
            ChangeRoute::Promote | ChangeRoute::Remove => {
                "{\"id\": <node id>[, \"expected_config_id\": N]}"
            }
            ChangeRoute::Replace => {
                "{\"remove\": <node id>, \"add\": {\"id\": <node id>, \"addr\": \"HOST:PORT\", \"http\": \"HOST:PORT\"}[, \"expected_config_id\": N]}"
            }
        }
    }
}

/// Parses a membership route's body into the change and its `expected_config_id`.
pub(super) fn parse_change(
    route: ChangeRoute,
    body: &[u8],
) -> Result<(ConfigChange, Option<u64>), ApiError> {
    fn parse<T: serde::de::DeserializeOwned>(
        route: ChangeRoute,
        body: &[u8],
    ) -> Result<T, ApiError> {
        let invalid = |e: serde_json::Error| {
            ApiError::bad_request("invalid_json", format!("expected {}: {e}", route.shape()))
        };
        // An object first: serde would also accept the fields as an array (`[2]`), a shape
        // nobody documents and that a typo could produce.
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(body).map_err(invalid)?;
        serde_json::from_value(serde_json::Value::Object(object)).map_err(invalid)
    }
    Ok(match route {
        ChangeRoute::Learners => {
            let b: AddBody = parse(route, body)?;
            (
                ConfigChange::AddLearner(NewMember {
                    id: b.id,
                    addr: b.addr,
                    http: b.http,
                }),
                b.expected_config_id,
            )
        }
        ChangeRoute::Promote => {
            let b: IdBody = parse(route, body)?;
            (ConfigChange::Promote(b.id), b.expected_config_id)
        }
        ChangeRoute::Remove => {
            let b: IdBody = parse(route, body)?;
            (ConfigChange::Remove(b.id), b.expected_config_id)
        }
        ChangeRoute::Replace => {
            let b: ReplaceBody = parse(route, body)?;
            (
                ConfigChange::Replace {
                    remove: b.remove,
                    add: b.add,
                },
                b.expected_config_id,
            )
        }
    })
}

/// A membership change: 200 with the outcome (`index`, `term`, `config`) once it took effect;
/// 400 `invalid_json`/`invalid_change`, 409 `change_in_progress`/`not_caught_up`/
/// `config_changed`, 503 without a leader; forwarded to the leader from a follower.
async fn change<S: KvService>(
    route: ChangeRoute,
    req: HttpRequest,
    payload: web::Payload,
    ctx: Data<S>,
) -> Result<HttpResponse, ApiError> {
    let (body, _held) = read_required_body(&req, payload, MAX_BODY, &ctx, route.shape()).await?;
    let (change, expected) = parse_change(route, &body)?;
    match ctx.service.change_config(change, expected).await {
        Ok(outcome) => Ok(HttpResponse::Ok().json(outcome)),
        Err(e) => ctx.on_error(&req, body, e).await,
    }
}

pub(super) async fn add_learner<S: KvService>(
    req: HttpRequest,
    payload: web::Payload,
    ctx: Data<S>,
) -> Result<HttpResponse, ApiError> {
    change(ChangeRoute::Learners, req, payload, ctx).await
}

pub(super) async fn promote<S: KvService>(
    req: HttpRequest,
    payload: web::Payload,
    ctx: Data<S>,
) -> Result<HttpResponse, ApiError> {
    change(ChangeRoute::Promote, req, payload, ctx).await
}

pub(super) async fn remove<S: KvService>(
    req: HttpRequest,
    payload: web::Payload,
    ctx: Data<S>,
) -> Result<HttpResponse, ApiError> {
    change(ChangeRoute::Remove, req, payload, ctx).await
}

pub(super) async fn replace<S: KvService>(
    req: HttpRequest,
    payload: web::Payload,
    ctx: Data<S>,
) -> Result<HttpResponse, ApiError> {
    change(ChangeRoute::Replace, req, payload, ctx).await
}

/// `GET /v1/cluster/config`: the configuration in force as the leader sees it (forwarded to
/// the leader from a follower; 503 while no leader is known).
pub(super) async fn config<S: KvService>(
    req: HttpRequest,
    ctx: Data<S>,
) -> Result<HttpResponse, ApiError> {
    match ctx.service.cluster_config().await {
        Ok(config) => Ok(HttpResponse::Ok().json(config)),
        Err(e) => ctx.on_error(&req, Bytes::new(), e).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: NodeId) -> NewMember {
        NewMember {
            id,
            addr: "127.0.0.1:7004".parse().unwrap(),
            http: "127.0.0.1:7104".parse().unwrap(),
        }
    }

    #[test]
    fn bodies_parse_into_changes() {
        assert_eq!(
            parse_change(
                ChangeRoute::Learners,
                br#"{"id":4,"addr":"127.0.0.1:7004","http":"127.0.0.1:7104"}"#
            )
            .unwrap(),
            (ConfigChange::AddLearner(member(NodeId::new(4))), None)
        );
        assert_eq!(
            parse_change(ChangeRoute::Promote, br#"{"id":4,"expected_config_id":12}"#).unwrap(),
            (ConfigChange::Promote(NodeId::new(4)), Some(12))
        );
        assert_eq!(
            parse_change(ChangeRoute::Remove, br#"{"id":2}"#).unwrap(),
            (ConfigChange::Remove(NodeId::new(2)), None)
        );
        assert_eq!(
            parse_change(
                ChangeRoute::Replace,
                br#"{"remove":2,"add":{"id":4,"addr":"127.0.0.1:7004","http":"127.0.0.1:7104"},"expected_config_id":0}"#
            )
            .unwrap(),
            (
                ConfigChange::Replace {
                    remove: NodeId::new(2),
                    add: member(NodeId::new(4))
                },
                Some(0)
            )
        );
    }

    #[test]
    fn bad_bodies_are_invalid_json() {
        for (route, bad) in [
            (
                ChangeRoute::Learners,
                &br#"{"id":4,"addr":"127.0.0.1:7004"}"#[..],
            ),
            (
                ChangeRoute::Learners,
                br#"{"id":4,"addr":"nowhere","http":"127.0.0.1:7104"}"#,
            ),
            (
                ChangeRoute::Learners,
                br#"{"id":-4,"addr":"127.0.0.1:7004","http":"127.0.0.1:7104"}"#,
            ),
            (ChangeRoute::Promote, br#"{"id":"4"}"#),
            (ChangeRoute::Promote, br#"{"id":4,"force":true}"#),
            (ChangeRoute::Remove, br#"{}"#),
            (ChangeRoute::Remove, br#"[2]"#),
            (ChangeRoute::Remove, br#"{"id":2,"expected_config_id":"x"}"#),
            (ChangeRoute::Replace, br#"{"remove":2}"#),
            (ChangeRoute::Replace, br#"{"remove":2,"add":{"id":4}}"#),
            (ChangeRoute::Replace, b"{not json"),
        ] {
            let err = parse_change(route, bad).unwrap_err();
            assert_eq!(
                err.code(),
                "invalid_json",
                "{route:?} {}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
