//! A small async client of a node's HTTP API (DESIGN.md §7), used by the `conclave` CLI.
//!
//! It runs on actix's runtime (awc is single-threaded): call it inside an actix system, e.g.
//! `actix_web::rt::System::new().block_on(…)`. It speaks HTTPS to `https://` endpoints,
//! trusting only the cluster CA given with [`ClientOptions::ca`], and sends a bearer token
//! ([`ClientOptions::token`]) with every request.

use crate::api::{
    ChangeOutcome, ClusterConfig, ClusterStatus, DrainOutcome, GossipMembers, NewMember, NodeId,
    ShardsStatus, SnapshotInfo,
};
use crate::config::ReadLevel;
use crate::http::{encode_key, IDEMPOTENCY_HEADER};
use awc::error::{ConnectError, SendRequestError};
use awc::http::StatusCode;
use conclave_core::ids::{GroupId, ShardId};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The default endpoint: node 1 of a `conclave init`/`dev` cluster.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7101";

/// Largest response body the client reads (a value, a status document).
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint is not an `http://host:port` or `https://host:port` URL. The field is
    /// the text the user gave, echoed back.
    #[error("invalid endpoint {0:?}: expected http://HOST:PORT or https://HOST:PORT")]
    InvalidEndpoint(String),
    /// An `https://` endpoint without the CA to verify it.
    #[error(
        "{endpoint} uses HTTPS: pass --ca FILE (or set CONCLAVE_CA) with the cluster's CA \
         certificate, e.g. DIR/certs/ca.crt written by `conclave init --secure`"
    )]
    MissingCa {
        /// The endpoint.
        endpoint: String,
    },
    /// The CA file could not be used.
    #[error("--ca: {0}")]
    Ca(#[source] crate::http::tls::TlsError),
    /// The token cannot be sent in an HTTP header.
    #[error("--token: a token must be visible ASCII characters without spaces")]
    InvalidToken,
    /// No connection could be made.
    #[error("cannot reach node at {endpoint}: {cause}")]
    Unreachable {
        /// The endpoint (the user's URL).
        endpoint: String,
        /// The connection error.
        #[source]
        cause: HttpFailure,
    },
    /// The connection broke after the request was (perhaps partly) sent and before the
    /// answer arrived: a write may or may not have been applied.
    #[error(
        "connection to {endpoint} lost before its answer (a write may have been applied): {cause}"
    )]
    ConnectionLost {
        /// The endpoint (the user's URL).
        endpoint: String,
        /// The transport error.
        #[source]
        cause: HttpFailure,
    },
    /// The node did not answer in time.
    #[error("node at {endpoint} did not answer within {timeout:?}")]
    Timeout {
        /// The endpoint.
        endpoint: String,
        /// The client's timeout.
        timeout: Duration,
    },
    /// The node answered with an error (`{"error":{"code","message"}}`). `code` and
    /// `message` are the node's answer, kept as it sent them (data, not a description made
    /// here).
    #[error("{message} (HTTP {status}, {code}{})", retry_after.map(|s| format!(", retry after {s} s")).unwrap_or_default())]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error's code, e.g. `no_leader`.
        code: String,
        /// The error's message (the whole body when it was not that JSON).
        message: String,
        /// `Retry-After` in seconds, on 503s.
        retry_after: Option<u64>,
    },
    /// The node's answer could not be understood.
    #[error("unexpected response from {endpoint}: {fault}")]
    BadResponse {
        /// The endpoint (the user's URL).
        endpoint: String,
        /// What was wrong.
        #[source]
        fault: ResponseFault,
    },
}

/// Why a connection could not be made or broke ([`ClientError::Unreachable`],
/// [`ClientError::ConnectionLost`]): awc's error, reduced to parts that can cross threads
/// (some of awc's carry errors that are not `Send`; those keep their kind only).
#[derive(Debug, thiserror::Error)]
pub enum HttpFailure {
    /// The socket failed: refused, reset, closed while sending.
    #[error("{0}")]
    Io(#[source] std::io::Error),
    /// Connecting took longer than the client's timeout.
    #[error("timeout while establishing connection")]
    ConnectTimeout,
    /// The host name has no address.
    #[error("no DNS records found for the host")]
    NoRecords,
    /// The resolver failed (its error is not `Send`, so only the kind is kept).
    #[error("failed resolving the host name")]
    Resolver,
    /// The answer is not HTTP.
    #[error("malformed response: {0}")]
    Response(#[source] actix_http::error::ParseError),
    /// The request could not be built.
    #[error("{0}")]
    Http(#[source] awc::error::HttpError),
    /// The URL was refused.
    #[error("invalid URL: {0}")]
    Url(#[source] awc::error::InvalidUrl),
    /// The connection was closed after the request was sent.
    #[error("the connection was closed before the answer")]
    Disconnected,
    /// Another of awc's failures, named by its kind (HTTP/2, request body, TLS support).
    #[error("{0}")]
    Other(&'static str),
}

impl HttpFailure {
    fn of_connect(e: ConnectError) -> HttpFailure {
        match e {
            ConnectError::Io(e) => HttpFailure::Io(e),
            ConnectError::Timeout => HttpFailure::ConnectTimeout,
            ConnectError::NoRecords => HttpFailure::NoRecords,
            ConnectError::Resolver(_) => HttpFailure::Resolver,
            ConnectError::Disconnected => HttpFailure::Disconnected,
            ConnectError::H2(_) => HttpFailure::Other("HTTP/2 protocol error while connecting"),
            ConnectError::Unresolved => HttpFailure::Other("unresolved host"),
            ConnectError::SslIsNotSupported => HttpFailure::Other("TLS is not supported"),
            _ => HttpFailure::Other("the connection failed"),
        }
    }

    fn of_send(e: SendRequestError) -> HttpFailure {
        match e {
            SendRequestError::Connect(c) => HttpFailure::of_connect(c),
            SendRequestError::Send(e) => HttpFailure::Io(e),
            SendRequestError::Response(e) => HttpFailure::Response(e),
            SendRequestError::Http(e) => HttpFailure::Http(e),
            SendRequestError::Url(e) => HttpFailure::Url(e),
            SendRequestError::Timeout => HttpFailure::Other("timeout while waiting for response"),
            SendRequestError::H2(_) => HttpFailure::Other("HTTP/2 protocol error"),
            SendRequestError::TunnelNotSupported => {
                HttpFailure::Other("tunnels are not supported on HTTP/2 connections")
            }
            SendRequestError::Body(_) => HttpFailure::Other("sending the request body failed"),
            _ => HttpFailure::Other("the request failed"),
        }
    }
}

/// What is wrong with a node's answer ([`ClientError::BadResponse`]).
#[derive(Debug, thiserror::Error)]
pub enum ResponseFault {
    /// The body could not be read (broken, or larger than the client reads).
    #[error("cannot read the body: {0}")]
    Body(#[source] awc::error::PayloadError),
    /// The body is not the JSON document expected.
    #[error("invalid {what}: {source}")]
    Json {
        /// What was expected: `JSON`, `status`.
        what: &'static str,
        /// The decoder's error.
        source: serde_json::Error,
    },
    /// A member being waited for left the configuration.
    #[error("node {node} is no longer a member (configuration {config_id})")]
    NoLongerMember {
        /// The node waited for.
        node: NodeId,
        /// The configuration that no longer lists it.
        config_id: u64,
    },
}

/// A committed and applied write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteAck {
    /// The log index it was applied at.
    pub index: u64,
    /// The leader's term.
    pub term: u64,
}

/// A committed and applied delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteAck {
    /// The log index it was applied at.
    pub index: u64,
    /// The leader's term.
    pub term: u64,
    /// Whether the key existed.
    pub existed: bool,
}

/// A compare-and-set's outcome (both outcomes were applied at `index`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CasResult {
    /// Whether the expected value matched and the new one was stored.
    pub ok: bool,
    /// On failure, the value the key held (`None`: absent).
    #[serde(default)]
    pub current: Option<String>,
    /// The log index.
    pub index: u64,
    /// The leader's term.
    pub term: u64,
}

/// Where a key lives (`GET /v1/ring/route/{key}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteInfo {
    /// The shard.
    pub shard: ShardId,
    /// The Raft group serving it (0 on a node that is not sharded; absent from nodes before
    /// sharding existed).
    #[serde(default)]
    pub group: GroupId,
    /// Its replicas, preferred first.
    pub replicas: Vec<NodeId>,
    /// Its leader, when known.
    pub leader: Option<NodeId>,
    /// The version of the shard map the answer comes from (0: not sharded).
    #[serde(default)]
    pub map_version: u64,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

/// How a [`Client`] connects.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Per-request timeout. Default 30 s.
    pub timeout: Duration,
    /// Bearer token sent with every request (`--token`, `CONCLAVE_TOKEN`).
    pub token: Option<String>,
    /// The cluster CA's certificate, needed for `https://` endpoints (`--ca`, `CONCLAVE_CA`).
    pub ca: Option<PathBuf>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(30),
            token: None,
            ca: None,
        }
    }
}

/// A client of one node.
pub struct Client {
    endpoint: String,
    timeout: Duration,
    http: awc::Client,
}

impl Client {
    /// A client of the node at `endpoint` (`http://host:port`), with a 30 s timeout.
    pub fn new(endpoint: &str) -> Result<Client, ClientError> {
        Client::with_timeout(endpoint, Duration::from_secs(30))
    }

    /// A client with an explicit per-request timeout.
    pub fn with_timeout(endpoint: &str, timeout: Duration) -> Result<Client, ClientError> {
        Client::with_options(
            endpoint,
            &ClientOptions {
                timeout,
                ..ClientOptions::default()
            },
        )
    }

    /// A client of `endpoint` (`http://` or `https://host:port`) with a token and a CA.
    pub fn with_options(endpoint: &str, options: &ClientOptions) -> Result<Client, ClientError> {
        let trimmed = endpoint.trim_end_matches('/');
        let (https, authority) = if let Some(a) = trimmed.strip_prefix("http://") {
            (false, a)
        } else if let Some(a) = trimmed.strip_prefix("https://") {
            (true, a)
        } else {
            return Err(ClientError::InvalidEndpoint(endpoint.to_owned()));
        };
        if authority.is_empty() || authority.contains('/') {
            return Err(ClientError::InvalidEndpoint(endpoint.to_owned()));
        }
        let mut builder = awc::Client::builder()
            .timeout(options.timeout)
            .disable_redirects();
        if let Some(token) = &options.token {
            let value = awc::http::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ClientError::InvalidToken)?;
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ClientError::InvalidToken);
            }
            builder = builder.add_default_header((awc::http::header::AUTHORIZATION, value));
        }
        let http = match (&options.ca, https) {
            (None, true) => {
                return Err(ClientError::MissingCa {
                    endpoint: trimmed.to_owned(),
                })
            }
            (Some(ca), true) => {
                let config = crate::http::tls::client_config(ca).map_err(ClientError::Ca)?;
                builder
                    .connector(awc::Connector::new().rustls_0_23(Arc::new(config)))
                    .finish()
            }
            // A CA with a plain endpoint is harmless (a shell may export CONCLAVE_CA for
            // every command).
            (_, false) => builder.finish(),
        };
        Ok(Client {
            endpoint: trimmed.to_owned(),
            timeout: options.timeout,
            http,
        })
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn kv_url(&self, key: &[u8]) -> String {
        format!("{}/v1/kv/{}", self.endpoint, encode_key(key))
    }

    fn send_error(&self, e: SendRequestError) -> ClientError {
        match e {
            SendRequestError::Timeout => ClientError::Timeout {
                endpoint: self.endpoint.clone(),
                timeout: self.timeout,
            },
            // awc reports a connection closed after the request was sent as
            // `Connect(Disconnected)`: not "unreachable", the request may have arrived.
            SendRequestError::Connect(c) if !matches!(c, ConnectError::Disconnected) => {
                ClientError::Unreachable {
                    endpoint: self.endpoint.clone(),
                    cause: HttpFailure::of_connect(c),
                }
            }
            other => ClientError::ConnectionLost {
                endpoint: self.endpoint.clone(),
                cause: HttpFailure::of_send(other),
            },
        }
    }

    fn bad(&self, fault: ResponseFault) -> ClientError {
        ClientError::BadResponse {
            endpoint: self.endpoint.clone(),
            fault,
        }
    }

    /// Sends a request and returns the status and the whole body.
    async fn call(
        &self,
        request: awc::ClientRequest,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Vec<u8>, Option<u64>), ClientError> {
        let sent = match body {
            Some(b) => request.send_body(b).await,
            None => request.send().await,
        };
        let mut response = sent.map_err(|e| self.send_error(e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse().ok());
        let bytes = response
            .body()
            .limit(MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| self.bad(ResponseFault::Body(e)))?;
        Ok((status, bytes.to_vec(), retry_after))
    }

    /// The error a non-success answer carries.
    fn api_error(&self, status: StatusCode, body: &[u8], retry_after: Option<u64>) -> ClientError {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(e) => ClientError::Api {
                status: status.as_u16(),
                code: e.error.code,
                message: e.error.message,
                retry_after,
            },
            Err(_) => ClientError::Api {
                status: status.as_u16(),
                code: "unknown".to_owned(),
                message: String::from_utf8_lossy(body).into_owned(),
                retry_after,
            },
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, body: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(body).map_err(|source| {
            self.bad(ResponseFault::Json {
                what: "JSON",
                source,
            })
        })
    }

    fn write_request(
        &self,
        method: awc::http::Method,
        url: &str,
        idempotency_key: Option<&str>,
    ) -> awc::ClientRequest {
        let mut req = self.http.request(method, url);
        if let Some(k) = idempotency_key {
            req = req.insert_header((IDEMPOTENCY_HEADER, k));
        }
        req
    }

    /// `PUT /v1/kv/{key}`: stores `value`, returns once it is committed and applied.
    pub async fn put(
        &self,
        key: &[u8],
        value: Vec<u8>,
        idempotency_key: Option<&str>,
    ) -> Result<WriteAck, ClientError> {
        let req = self.write_request(awc::http::Method::PUT, &self.kv_url(key), idempotency_key);
        let (status, body, retry) = self.call(req, Some(value)).await?;
        if status != StatusCode::OK {
            return Err(self.api_error(status, &body, retry));
        }
        self.decode(&body)
    }

    /// `GET /v1/kv/{key}`: the value, or `None` when the key is absent.
    pub async fn get(
        &self,
        key: &[u8],
        consistency: Option<ReadLevel>,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        let mut url = self.kv_url(key);
        if let Some(level) = consistency {
            url.push_str(match level {
                ReadLevel::Linearizable => "?consistency=linearizable",
                ReadLevel::Lease => "?consistency=lease",
                ReadLevel::Stale => "?consistency=stale",
            });
        }
        let (status, body, retry) = self.call(self.http.get(url), None).await?;
        match status {
            StatusCode::OK => Ok(Some(body)),
            StatusCode::NOT_FOUND => match self.api_error(status, &body, retry) {
                ClientError::Api { code, .. } if code == "key_not_found" => Ok(None),
                other => Err(other),
            },
            _ => Err(self.api_error(status, &body, retry)),
        }
    }

    /// `DELETE /v1/kv/{key}`.
    pub async fn delete(
        &self,
        key: &[u8],
        idempotency_key: Option<&str>,
    ) -> Result<DeleteAck, ClientError> {
        let req = self.write_request(
            awc::http::Method::DELETE,
            &self.kv_url(key),
            idempotency_key,
        );
        let (status, body, retry) = self.call(req, None).await?;
        if status != StatusCode::OK {
            return Err(self.api_error(status, &body, retry));
        }
        self.decode(&body)
    }

    /// `POST /v1/kv/{key}/cas`: sets `key` to `value` (`None`: deletes it) if it holds
    /// `expected` (`None`: absent). A mismatch is `Ok` with `ok == false`.
    pub async fn cas(
        &self,
        key: &[u8],
        expected: Option<&str>,
        value: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> Result<CasResult, ClientError> {
        let url = format!("{}/cas", self.kv_url(key));
        let req = self
            .write_request(awc::http::Method::POST, &url, idempotency_key)
            .insert_header(("content-type", "application/json"));
        let body = serde_json::json!({ "expected": expected, "value": value }).to_string();
        let (status, body, retry) = self.call(req, Some(body.into_bytes())).await?;
        match status {
            StatusCode::OK | StatusCode::CONFLICT => self.decode(&body),
            _ => Err(self.api_error(status, &body, retry)),
        }
    }

    /// `GET /v1/cluster`: the cluster as the node sees it.
    pub async fn status(&self) -> Result<ClusterStatus, ClientError> {
        self.status_json().await.and_then(|v| {
            serde_json::from_value(v).map_err(|source| {
                self.bad(ResponseFault::Json {
                    what: "status",
                    source,
                })
            })
        })
    }

    /// `GET /v1/cluster` as raw JSON (what `conclave status --json` prints).
    pub async fn status_json(&self) -> Result<serde_json::Value, ClientError> {
        let url = format!("{}/v1/cluster", self.endpoint);
        let (status, body, retry) = self.call(self.http.get(url), None).await?;
        if status != StatusCode::OK {
            return Err(self.api_error(status, &body, retry));
        }
        self.decode(&body)
    }

    /// `GET /v1/shards`: every shard with its replicas, leader and this node's replica's
    /// term, commit, applied index and lag (`sharded: false` and no shards on a node that is
    /// not sharded).
    pub async fn shards(&self) -> Result<ShardsStatus, ClientError> {
        let url = format!("{}/v1/shards", self.endpoint);
        let (status, body, retry) = self.call(self.http.get(url), None).await?;
        if status != StatusCode::OK {
            return Err(self.api_error(status, &body, retry));
        }
        self.decode(&body)
    }

    /// `GET /v1/cluster/members`: the node's gossip view (states, incarnations, metadata,
    /// round trips).
    pub async fn members(&self) -> Result<GossipMembers, ClientError> {
        let url = format!("{}/v1/cluster/members", self.endpoint);
        let (status, body, retry) = self.call(self.http.get(url), None).await?;
        if status != StatusCode::OK {
            return Err(self.api_error(status, &body, retry));
        }
        self.decode(&body)
    }

    /// `POST /v1/cluster/transfer-leader`: asks the leader to hand leadership to node `to`
    /// (returns once the transfer has started).
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), ClientError> {
        let url = format!("{}/v1/cluster/transfer-leader", self.endpoint);
        let req = self
            .http
            .post(url)
            .insert_header(("content-type", "application/json"));
        let body = serde_json::json!({ "to": to }).to_string();
        let (status, body, retry) = self.call(req, Some(body.into_bytes())).await?;
        if status != StatusCode::OK {
            return Err(self.api_error(status, &body, retry));
        }
        Ok(())
    }

    /// `POST /v1/cluster/snapshot?group=G`: the node takes a snapshot of the group now (admin
    /// token when tokens are configured); 409 `snapshot_in_progress` while one is running.
    pub async fn take_snapshot(&self, group: GroupId) -> Result<SnapshotInfo, ClientError> {
        let url = format!("{}/v1/cluster/snapshot?group={group}", self.endpoint);
        let (status, body, retry) = self.call(self.http.post(url), None).await?;
        if status != StatusCode::OK {
            return Err(self.api_error(status, &body, retry));
        }
        self.decode(&body)
    }

    /// `GET /v1/cluster/config`: the configuration in force (voters, learners with their
    /// lag, config id, whether a change is pending), as the leader sees it.
    pub async fn cluster_config(&self) -> Result<ClusterConfig, ClientError> {
        let url = format!("{}/v1/cluster/config", self.endpoint);
        let (status, body, retry) = self.call(self.http.get(url), None).await?;
        if status != StatusCode::OK {
            return Err(self.api_error(status, &body, retry));
        }
        self.decode(&body)
    }

    /// Posts a membership change to `/v1/cluster/{route}` with `expected_config_id` added
    /// when given; returns the change's outcome.
    async fn change(
        &self,
        route: &str,
        mut body: serde_json::Value,
        expected_config_id: Option<u64>,
    ) -> Result<ChangeOutcome, ClientError> {
        if let (Some(id), Some(map)) = (expected_config_id, body.as_object_mut()) {
            map.insert("expected_config_id".to_owned(), id.into());
        }
        let url = format!("{}/v1/cluster/{route}", self.endpoint);
        let req = self
            .http
            .post(url)
            .insert_header(("content-type", "application/json"));
        let (status, body, retry) = self.call(req, Some(body.to_string().into_bytes())).await?;
        if status != StatusCode::OK {
            return Err(self.api_error(status, &body, retry));
        }
        self.decode(&body)
    }

    /// `POST /v1/cluster/learners`: adds `member` as a learner (returns once committed).
    pub async fn add_learner(
        &self,
        member: &NewMember,
        expected_config_id: Option<u64>,
    ) -> Result<ChangeOutcome, ClientError> {
        let body = serde_json::json!({ "id": member.id, "addr": member.addr, "http": member.http });
        self.change("learners", body, expected_config_id).await
    }

    /// `POST /v1/cluster/promote`: makes learner `id` a voter (409 `not_caught_up` while it
    /// lags).
    pub async fn promote(
        &self,
        id: NodeId,
        expected_config_id: Option<u64>,
    ) -> Result<ChangeOutcome, ClientError> {
        let body = serde_json::json!({ "id": id });
        self.change("promote", body, expected_config_id).await
    }

    /// `POST /v1/cluster/remove`: removes voter or learner `id`.
    pub async fn remove(
        &self,
        id: NodeId,
        expected_config_id: Option<u64>,
    ) -> Result<ChangeOutcome, ClientError> {
        let body = serde_json::json!({ "id": id });
        self.change("remove", body, expected_config_id).await
    }

    /// `POST /v1/cluster/replace`: swaps voter `remove` for `add` (added as a learner first,
    /// swapped in once caught up; 409 `not_caught_up` when it is not within the node's wait —
    /// retrying resumes).
    pub async fn replace(
        &self,
        remove: NodeId,
        add: &NewMember,
        expected_config_id: Option<u64>,
    ) -> Result<ChangeOutcome, ClientError> {
        let body = serde_json::json!({ "remove": remove, "add": add });
        self.change("replace", body, expected_config_id).await
    }

    /// `POST /v1/cluster/drain`: drains node `id` (`undo`: makes it electable again); the
    /// request is forwarded to that node, which answers once its groups started handing
    /// leadership off.
    pub async fn drain(&self, id: NodeId, undo: bool) -> Result<DrainOutcome, ClientError> {
        let url = format!("{}/v1/cluster/drain", self.endpoint);
        let req = self
            .http
            .post(url)
            .insert_header(("content-type", "application/json"));
        let body = serde_json::json!({ "id": id, "undo": undo });
        let (status, body, retry) = self.call(req, Some(body.to_string().into_bytes())).await?;
        if status != StatusCode::OK {
            return Err(self.api_error(status, &body, retry));
        }
        self.decode(&body)
    }

    /// `GET /v1/ring/route/{key}`.
    /// `POST /v1/shards/preferred-leader`: makes `node` the preferred leader of `shard`
    /// through group 0 (admin token when tokens are configured), refused with 409
    /// `shard_map_changed` when the map is not at `expected_version`.
    pub async fn prefer_shard_leader(
        &self,
        shard: ShardId,
        node: NodeId,
        expected_version: Option<u64>,
    ) -> Result<crate::api::ShardMapChange, ClientError> {
        let url = format!("{}/v1/shards/preferred-leader", self.endpoint);
        let req = self
            .http
            .post(url)
            .insert_header(("content-type", "application/json"));
        let mut body = serde_json::json!({ "shard": shard, "node": node });
        if let Some(v) = expected_version {
            body["expected_version"] = v.into();
        }
        let (status, body, retry) = self.call(req, Some(body.to_string().into_bytes())).await?;
        if status != StatusCode::OK {
            return Err(self.api_error(status, &body, retry));
        }
        self.decode(&body)
    }

    /// `GET /v1/ring/route/{key}`.
    pub async fn route(&self, key: &[u8]) -> Result<RouteInfo, ClientError> {
        let url = format!("{}/v1/ring/route/{}", self.endpoint, encode_key(key));
        let (status, body, retry) = self.call(self.http.get(url), None).await?;
        if status != StatusCode::OK {
            return Err(self.api_error(status, &body, retry));
        }
        self.decode(&body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_validated() {
        assert!(Client::new("http://127.0.0.1:7101").is_ok());
        assert_eq!(
            Client::new("http://127.0.0.1:7101/").unwrap().endpoint(),
            "http://127.0.0.1:7101"
        );
        assert!(matches!(
            Client::new("https://127.0.0.1:7101"),
            Err(ClientError::MissingCa { .. })
        ));
        let e = Client::new("https://127.0.0.1:7101")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--ca"), "{e}");
        for bad in ["127.0.0.1:7101", "ftp://x:1", "http://", "http://h:1/path"] {
            assert!(
                matches!(Client::new(bad), Err(ClientError::InvalidEndpoint(_))),
                "{bad}"
            );
        }
    }

    #[actix_web::test]
    async fn connection_refused_names_the_endpoint() {
        // Bind then drop a listener: nothing listens on that port afterwards.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = Client::new(&format!("http://127.0.0.1:{port}")).unwrap();
        let err = client.get(b"k", None).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("cannot reach node at http://127.0.0.1:{port}: ")),
            "{text}"
        );
        // The socket's error is kept as the source, with its kind.
        assert!(
            matches!(
                &err,
                ClientError::Unreachable { cause: HttpFailure::Io(e), .. }
                    if e.kind() == std::io::ErrorKind::ConnectionRefused
            ),
            "{err:?}"
        );
    }

    #[test]
    fn bad_responses_say_what_was_wrong() {
        let client = Client::new("http://127.0.0.1:7101").unwrap();
        let err = client.decode::<WriteAck>(b"{").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("unexpected response from http://127.0.0.1:7101: invalid JSON: "),
            "{err}"
        );
        assert!(std::error::Error::source(&err).is_some());
        let err = client.bad(ResponseFault::NoLongerMember {
            node: NodeId::new(4),
            config_id: 9,
        });
        assert_eq!(
            err.to_string(),
            "unexpected response from http://127.0.0.1:7101: node 4 is no longer a member \
             (configuration 9)"
        );
    }
}
