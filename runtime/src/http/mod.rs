//! The node's HTTP API (DESIGN.md §7) on actix-web.
//!
//! The server is generic over [`KvService`], the node's request interface, so it is tested on
//! its own against a test double. Every error is JSON `{"error":{"code":…,"message":…}}`
//! ([`ApiError`]); requests that reach a follower are forwarded to the leader with a hop limit
//! ([`HOPS_HEADER`]); bodies are read with a limit so an oversized value is refused with 413
//! before it is buffered.
//!
//! Routes: `PUT|GET|DELETE /v1/kv/{key}`, `POST /v1/kv/{key}/cas`, `GET /v1/cluster`,
//! `GET /v1/cluster/members`, `POST /v1/cluster/transfer-leader`, `POST /v1/cluster/snapshot`,
//! the membership routes (`GET /v1/cluster/config`, `POST
//! /v1/cluster/learners|promote|remove|replace`, see [`membership`]), `GET /v1/ring/route/{key}`,
//! `GET /v1/shards`,
//! `GET /metrics`, `GET /healthz`, `GET /readyz`.
//!
//! Hardening (docs/security.md): HTTPS with rustls (`[http.tls]`), bearer tokens with a
//! `client` and an `admin` role (`[http.tokens]`, [`auth`]), admission by request-body bytes
//! in flight (`http.max_inflight_bytes`, [`admission`]) and a body read deadline
//! (`http.body_timeout_ms`, 408).

mod admission;
pub mod auth;
mod error;
mod forward;
pub mod front;
mod keys;
mod membership;
mod route;
pub mod tls;

pub use admission::{Budget, Reservation};
pub use auth::{Access, Auth, Role};
pub use error::ApiError;
pub use keys::{decode_key, encode_key, KeyError, MAX_KEY_BYTES};

use crate::api::{KvService, NodeId, RequestError};
use crate::config::{Config, ConfigError, ReadLevel};
use crate::state_machine::{KvCommand, KvOutput};
use crate::storage::health::StorageCondition;
use actix_service::{IntoServiceFactory, ServiceFactoryExt};
use actix_web::dev::{Server, Service};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Method;
use actix_web::web::{self, Bytes};
use actix_web::{App, HttpRequest, HttpResponse, ResponseError};
use conclave_core::ids::GroupId;
use conclave_core::ids::ShardId;
use route::{Route, RouteMetrics};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Request header carrying how many times a request has been forwarded between nodes.
pub const HOPS_HEADER: &str = "x-conclave-hops";
/// Request header whose value makes a retried write apply once.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// Response header naming the node that served the request (after any forwarding).
pub const SERVED_BY_HEADER: &str = "x-conclave-served-by";
/// The `Retry-After` value of every 503, in seconds. An election takes a few hundred ms, so
/// one second is the smallest value the header can express that is not "immediately".
pub const RETRY_AFTER_SECS: u64 = 1;
/// The longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

const KV_PREFIX: &str = "/v1/kv/";
const ROUTE_PREFIX: &str = "/v1/ring/route/";

/// How the HTTP server runs. [`HttpOptions::from_config`] gives the node's options;
/// [`HttpOptions::default`] a plain-HTTP, unauthenticated server (tests).
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// actix-web worker threads.
    pub workers: usize,
    /// How long a forwarded request may wait for the leader's response head.
    pub forward_timeout: Duration,
    /// Most forwards of one request (`node.max_hops`).
    pub max_hops: u32,
    /// Bearer tokens; `None`: no authentication.
    pub auth: Option<Auth>,
    /// Serve HTTPS with this configuration; `None`: plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Forward to other nodes over HTTPS, trusting this configuration's CA; `None`: plain HTTP.
    pub forward_tls: Option<Arc<rustls::ClientConfig>>,
    /// Request-body bytes held at once (`http.max_inflight_bytes`).
    pub max_inflight_bytes: usize,
    /// Deadline for reading a request body (`http.body_timeout_ms`).
    pub body_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        let http = crate::config::HttpSection::default();
        HttpOptions {
            workers: 1,
            forward_timeout: Duration::from_secs(10),
            max_hops: 10,
            auth: None,
            tls: None,
            forward_tls: None,
            max_inflight_bytes: http.max_inflight_bytes,
            body_timeout: Duration::from_millis(http.body_timeout_ms),
        }
    }
}

/// Why the HTTP server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// `[http]` could not be used (a token file, a key).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A TLS file could not be used.
    #[error("config key `{key}`: {source}")]
    Tls {
        /// The `[http.tls]` key whose file failed.
        key: &'static str,
        /// What failed (boxed: rustls's errors are large).
        source: Box<tls::TlsError>,
    },
    /// The listener could not be bound or started.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl HttpOptions {
    /// The options of a node: `node.max_hops` and `[http]` from the config (reading the token
    /// and TLS files), up to 4 workers (the HTTP layer only parses and waits on the node; more
    /// threads would compete with the Raft actors), a 10 s forwarding timeout (longer than any
    /// election, shorter than a client's patience).
    pub fn from_config(config: &Config) -> Result<Self, ServerError> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let http = &config.http;
        let (tls, forward_tls) = match &http.tls {
            None => (None, None),
            Some(t) => {
                let server =
                    tls::server_config(&t.cert, &t.key).map_err(|source| ServerError::Tls {
                        key: "http.tls.cert",
                        source: Box::new(source),
                    })?;
                let ca =
                    t.ca.clone()
                        .or_else(|| config.tls.as_ref().map(|tr| tr.ca.clone()));
                let forward = match ca {
                    Some(ca) => Some(Arc::new(tls::client_config(&ca).map_err(|source| {
                        ServerError::Tls {
                            key: "http.tls.ca",
                            source: Box::new(source),
                        }
                    })?)),
                    None => None,
                };
                (Some(Arc::new(server)), forward)
            }
        };
        Ok(HttpOptions {
            workers: cpus.clamp(1, 4),
            forward_timeout: Duration::from_secs(10),
            max_hops: config.node.max_hops,
            auth: Auth::from_config(http)?,
            tls,
            forward_tls,
            max_inflight_bytes: http.max_inflight_bytes,
            body_timeout: Duration::from_millis(http.body_timeout_ms),
        })
    }
}

/// Binds `config.node.http` and builds the API server for `service`. The caller runs (awaits)
/// the returned [`Server`] inside an actix system and stops it through [`Server::handle`]; the
/// server installs no signal handlers of its own (the node owns SIGTERM/SIGINT).
pub fn server<S: KvService + Send>(service: S, config: &Config) -> Result<Server, ServerError> {
    let options = HttpOptions::from_config(config)?;
    serve(service, config, options)
}

/// Like [`server`] with options already loaded (the node loads them before it starts, so a bad
/// token or TLS file stops it before it joins the cluster).
pub fn serve<S: KvService + Send>(
    service: S,
    config: &Config,
    options: HttpOptions,
) -> Result<Server, ServerError> {
    let exposed = config.exposed_addresses();
    if !exposed.is_empty() && config.node.allow_insecure {
        let mut missing = Vec::new();
        if config.tls.is_none() {
            missing.push("transport TLS");
        }
        if options.tls.is_none() {
            missing.push("HTTPS");
        }
        if options.auth.is_none() {
            missing.push("bearer tokens");
        }
        if !missing.is_empty() {
            tracing::warn!(
                exposed = %exposed
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                missing = %missing.join(", "),
                "node.allow_insecure = true: this node is reachable off loopback without \
                 protection; anyone who reaches it can read, write and reconfigure the cluster"
            );
        }
    }
    let addr = config.node.http;
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| ServerError::Listen { addr, source })?;
    server_with(service, listener, options).map_err(|source| ServerError::Listen { addr, source })
}

/// Like [`server`], on an already bound listener (tests bind port 0) with explicit options.
pub fn server_with<S: KvService + Send>(
    service: S,
    listener: std::net::TcpListener,
    options: HttpOptions,
) -> std::io::Result<Server> {
    let workers = options.workers.max(1);
    let tls = options.tls.clone();
    let budget = Budget::new(options.max_inflight_bytes);
    let make_app = move || {
        let node_id = service.node_id();
        let builder = awc::Client::builder()
            .timeout(options.forward_timeout)
            .disable_redirects();
        let client = match &options.forward_tls {
            Some(config) => builder
                .connector(awc::Connector::new().rustls_0_23(Arc::clone(config)))
                .finish(),
            None => builder.finish(),
        };
        let ctx = Ctx {
            service: service.clone(),
            client,
            scheme: if options.forward_tls.is_some() {
                "https"
            } else {
                "http"
            },
            budget: budget.clone(),
            options: options.clone(),
        };
        let auth = options.auth.clone();
        let served_by = HeaderValue::from(node_id.get());
        let route_metrics = std::rc::Rc::new(RouteMetrics::default());
        App::new()
            .app_data(web::Data::new(ctx))
            // Authentication runs before routing: a request without the right token never
            // reaches a handler, and its body is never read.
            .wrap_fn(move |req, srv| {
                let outcome = match auth.as_ref().map(|a| a.check(req.request())) {
                    Some(Err(e)) => Err(req.into_response(e.error_response())),
                    _ => Ok(srv.call(req)),
                };
                async move {
                    match outcome {
                        Err(denied) => Ok(denied),
                        Ok(fut) => fut.await,
                    }
                }
            })
            .wrap_fn(move |req, srv| {
                let start = Instant::now();
                let method = req.method().clone();
                let route = route::label(req.path());
                let metrics = std::rc::Rc::clone(&route_metrics);
                let served_by = served_by.clone();
                let fut = srv.call(req);
                async move {
                    let result = fut.await;
                    let status = match &result {
                        Ok(res) => res.status(),
                        Err(e) => e.as_response_error().status_code(),
                    };
                    metrics.record(
                        route,
                        &method,
                        status.as_u16(),
                        start.elapsed().as_secs_f64(),
                    );
                    let mut res = result?;
                    if !res.headers().contains_key(SERVED_BY_HEADER) {
                        res.headers_mut()
                            .insert(header::HeaderName::from_static(SERVED_BY_HEADER), served_by);
                    }
                    Ok(res)
                }
            })
            // One handler for every path: `dispatch` routes by `Route::of` (no regex, see
            // `route`).
            .default_service(web::to(dispatch::<S>))
    };
    // actix-web's `HttpServer` with one change: every connection is wrapped in
    // `front::JsonErrors`, so the errors the HTTP/1 dispatcher answers itself (unparseable
    // requests, oversized heads, slow heads) carry JSON bodies too (finding 14). The timeouts
    // are `HttpServer`'s defaults: 5 s for a request head, 1 s to drain an unread body.
    let addr = listener.local_addr()?;
    let secure = tls.is_some();
    // A macro rather than a closure: the HTTP/1 service is generic over the connection type,
    // which differs between the plain and the TLS listener.
    macro_rules! h1 {
        ($app:expr) => {{
            let app = $app
                .into_factory()
                .map_err(|e: actix_web::Error| e.error_response());
            let builder = actix_http::HttpServiceBuilder::default()
                .client_request_timeout(Duration::from_secs(5))
                .client_disconnect_timeout(Duration::from_secs(1))
                .local_addr(addr);
            let builder = if secure { builder.secure() } else { builder };
            builder.h1(actix_service::map_config(app, move |()| {
                actix_web::dev::AppConfig::__priv_test_new(secure, addr.to_string(), addr)
            }))
        }};
    }
    let builder = actix_server::Server::build()
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(5);
    let builder = match tls {
        Some(config) => {
            let acceptor = actix_tls::accept::rustls_0_23::Acceptor::new((*config).clone());
            builder.listen("conclave-https", listener, move || {
                let h1 = h1!(make_app());
                acceptor
                    .clone()
                    .map_err(|e| tracing::debug!(error = %e, "TLS handshake failed"))
                    .and_then(actix_service::fn_service(
                        |io: actix_tls::accept::rustls_0_23::TlsStream<
                            actix_web::rt::net::TcpStream,
                        >| async move {
                            let peer = io.get_ref().0.peer_addr().ok();
                            Ok::<_, ()>((front::JsonErrors::new(io), peer))
                        },
                    ))
                    .and_then(
                        h1.map_err(|e| tracing::debug!(error = %e, "HTTPS connection failed")),
                    )
            })?
        }
        None => builder.listen("conclave-http", listener, move || {
            let h1 = h1!(make_app());
            actix_service::fn_service(|io: actix_web::rt::net::TcpStream| async move {
                let _ = io.set_nodelay(true);
                let peer = io.peer_addr().ok();
                Ok::<_, actix_http::error::DispatchError>((front::JsonErrors::new(io), peer))
            })
            .and_then(h1)
        })?,
    };
    Ok(builder.run())
}

/// Per-worker state: the service, a forwarding client (awc's client is single-threaded, so one
/// per worker), the node's admission budget (shared by every worker) and the options.
struct Ctx<S> {
    service: S,
    client: awc::Client,
    /// `http` or `https`: how other nodes are reached (every node of a cluster serves the same).
    scheme: &'static str,
    budget: Budget,
    options: HttpOptions,
}

type Data<S> = web::Data<Ctx<S>>;

impl<S: KvService> Ctx<S> {
    /// Turns a node error into the response: a `NotLeader` with a known leader is forwarded,
    /// everything else is the error's status.
    async fn on_error(
        &self,
        req: &HttpRequest,
        body: Bytes,
        e: RequestError,
    ) -> Result<HttpResponse, ApiError> {
        match e {
            RequestError::NotLeader { leader: Some(hint) } => {
                forward::forward(
                    &self.client,
                    self.scheme,
                    req,
                    body,
                    &hint,
                    self.service.node_id(),
                    self.options.max_hops,
                )
                .await
            }
            other => Err(other.into()),
        }
    }
}

/// Routes a request (see [`route`]): 404 `route_not_found` for a path that is no route, 405
/// for a method the route does not serve, 400 `invalid_key` for a key prefix without a key.
async fn dispatch<S: KvService>(
    req: HttpRequest,
    payload: web::Payload,
    ctx: Data<S>,
) -> Result<HttpResponse, ApiError> {
    let Some(route) = Route::of(req.path()) else {
        return Err(ApiError::NotFound {
            code: "route_not_found",
            message: format!("no route {} {}", req.method(), req.path()),
        });
    };
    let method = req.method().clone();
    let get = method == Method::GET;
    let post = method == Method::POST;
    match route {
        Route::Kv if method == Method::PUT => put_kv(req, payload, ctx).await,
        Route::Kv if get => get_kv(req, ctx).await,
        Route::Kv if method == Method::DELETE => delete_kv(req, ctx).await,
        Route::KvNoKey | Route::RingNoKey => Err(ApiError::bad_request(
            "invalid_key",
            KeyError::Empty.to_string(),
        )),
        Route::Cas if post => cas_kv(req, payload, ctx).await,
        Route::Cluster if get => Ok(cluster(ctx).await),
        Route::Members if get => Ok(cluster_members(ctx).await),
        Route::Config if get => membership::config(req, ctx).await,
        Route::Learners if post => membership::add_learner(req, payload, ctx).await,
        Route::Promote if post => membership::promote(req, payload, ctx).await,
        Route::Remove if post => membership::remove(req, payload, ctx).await,
        Route::Replace if post => membership::replace(req, payload, ctx).await,
        Route::Drain if post => membership::drain(req, payload, ctx).await,
        Route::TransferLeader if post => transfer_leader(req, payload, ctx).await,
        Route::Snapshot if post => take_snapshot(req, ctx).await,
        Route::Ring if get => ring_route(req, ctx).await,
        Route::Shards if get => Ok(HttpResponse::Ok().json(ctx.service.shards().await)),
        Route::PreferredLeader if post => preferred_leader(req, payload, ctx).await,
        Route::Metrics if get => Ok(metrics_text(ctx).await),
        Route::Healthz if get => Ok(healthz(ctx).await),
        Route::Readyz if get => Ok(readyz(ctx).await),
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// The key of a `{prefix}{key}[/…]` path, decoded from the raw URI (see [`keys`]).
fn path_key(req: &HttpRequest, prefix: &str) -> Result<Vec<u8>, ApiError> {
    let rest = req.uri().path().strip_prefix(prefix).unwrap_or("");
    let raw = rest.split('/').next().unwrap_or("");
    decode_key(raw).map_err(|e| ApiError::bad_request("invalid_key", e.to_string()))
}

fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(s) if !s.is_empty() && s.len() <= MAX_IDEMPOTENCY_KEY_BYTES => Ok(Some(s.to_owned())),
        _ => Err(ApiError::bad_request(
            "invalid_header",
            format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} visible ASCII characters"
            ),
        )),
    }
}

/// The `consistency` query parameter, if given.
fn consistency(req: &HttpRequest) -> Result<Option<ReadLevel>, ApiError> {
    for pair in req.query_string().split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "consistency" {
            continue;
        }
        return match value {
            "linearizable" => Ok(Some(ReadLevel::Linearizable)),
            "lease" => Ok(Some(ReadLevel::Lease)),
            "stale" => Ok(Some(ReadLevel::Stale)),
            other => Err(ApiError::bad_request(
                "invalid_consistency",
                format!("unknown consistency {other:?}: expected linearizable, lease or stale"),
            )),
        };
    }
    Ok(None)
}

/// The 503 of a request refused by the admission budget.
fn over_budget(budget: &Budget) -> ApiError {
    ApiError::OverBudget {
        limit: budget.limit(),
    }
}

/// Reads the body within the node's limits and returns it with its share of the admission
/// budget (hold it until the request is answered):
/// - over `limit`: 413, from `Content-Length` before reading anything when the client sent
///   one, else as soon as the stream passes the limit;
/// - over the budget: 503 `overloaded`, for a declared length before reading anything, for a
///   chunked body as soon as a chunk does not fit;
/// - not complete within `http.body_timeout_ms`: 408 `request_timeout` (connection closed).
async fn read_body<S>(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    ctx: &Ctx<S>,
) -> Result<(Bytes, Reservation), ApiError> {
    use futures_core::Stream;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<usize>().ok());
    let mut held = ctx.budget.empty();
    if let Some(size) = declared {
        if size > limit {
            return Err(ApiError::TooLarge {
                size: Some(size),
                limit,
            });
        }
        if !held.grow(&ctx.budget, size) {
            return Err(over_budget(&ctx.budget));
        }
    }
    let timeout = ctx.options.body_timeout;
    let read = async {
        // A body that arrives as one chunk (a small value, the common case) is that chunk, a
        // slice of the connection's read buffer: not copied. Only a second chunk starts an
        // accumulating buffer.
        let mut first: Option<Bytes> = None;
        let mut body = web::BytesMut::new();
        loop {
            let next =
                std::future::poll_fn(|cx| std::pin::Pin::new(&mut payload).poll_next(cx)).await;
            let chunk = match next {
                None if body.is_empty() => return Ok(first.unwrap_or_default()),
                None => return Ok(body.freeze()),
                Some(Err(e)) => {
                    return Err(ApiError::bad_request(
                        "bad_body",
                        format!("cannot read the body: {e}"),
                    ))
                }
                Some(Ok(chunk)) => chunk,
            };
            let read = first.as_ref().map_or(body.len(), Bytes::len);
            if read + chunk.len() > limit {
                return Err(ApiError::TooLarge { size: None, limit });
            }
            let beyond_reserved = (read + chunk.len()).saturating_sub(held.bytes());
            if !held.grow(&ctx.budget, beyond_reserved) {
                return Err(over_budget(&ctx.budget));
            }
            if let Some(head) = first.take() {
                body.reserve(declared.unwrap_or(0).max(head.len() + chunk.len()));
                body.extend_from_slice(&head);
                body.extend_from_slice(&chunk);
            } else if body.is_empty() {
                first = Some(chunk);
            } else {
                body.extend_from_slice(&chunk);
            }
        }
    };
    match actix_web::rt::time::timeout(timeout, read).await {
        Ok(Ok(body)) => Ok((body, held)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ApiError::RequestTimeout {
            message: format!(
                "the request body did not arrive within {} ms",
                timeout.as_millis()
            ),
        }),
    }
}

/// A request "has a body" when it declares one (`Content-Length`, even 0, or chunked).
fn has_body(req: &HttpRequest) -> bool {
    req.headers().contains_key(header::CONTENT_LENGTH)
        || req.headers().contains_key(header::TRANSFER_ENCODING)
}

/// [`read_body`] for a route that needs a body: an empty one is 400 `missing_body`, naming
/// `shape` (what the route expects).
async fn read_required_body<S>(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
    ctx: &Ctx<S>,
    shape: &str,
) -> Result<(Bytes, Reservation), ApiError> {
    let (body, held) = read_body(req, payload, limit, ctx).await?;
    if body.is_empty() {
        return Err(missing_body(shape));
    }
    Ok((body, held))
}

fn missing_body(what: &str) -> ApiError {
    ApiError::bad_request("missing_body", format!("the request needs a body: {what}"))
}

/// An output that does not answer the request's kind: a reused idempotency key (422), else a
/// bug (500).
fn unexpected_output(output: &KvOutput) -> ApiError {
    match output {
        KvOutput::IdempotencyKeyReused => ApiError::Unprocessable {
            code: "idempotency_key_reused",
            message:
                "this Idempotency-Key was already used by a different request; nothing was applied"
                    .to_owned(),
        },
        other => ApiError::Internal {
            message: format!("the state machine returned an unexpected output: {other:?}"),
        },
    }
}

/// A `PUT`'s answer, `{"index": …, "term": …}` (a struct: serialized without building a JSON
/// tree first).
#[derive(Serialize)]
struct Written {
    index: u64,
    term: u64,
}

async fn put_kv<S: KvService>(
    req: HttpRequest,
    payload: web::Payload,
    ctx: Data<S>,
) -> Result<HttpResponse, ApiError> {
    let key = path_key(&req, KV_PREFIX)?;
    let idempotency = idempotency_key(&req)?;
    if !has_body(&req) {
        return Err(missing_body("the value bytes"));
    }
    let (body, _held) = read_body(&req, payload, ctx.service.max_value_bytes(), &ctx).await?;
    // The one copy of the value on this node's HTTP side: `KvCommand` owns a `Vec` (the body
    // itself is kept for forwarding).
    let command = KvCommand::Put {
        key,
        value: body.to_vec(),
    };
    match ctx.service.write(command, idempotency).await {
        Ok(w) => match w.output {
            KvOutput::Put => Ok(HttpResponse::Ok().json(Written {
                index: w.index,
                term: w.term,
            })),
            other => Err(unexpected_output(&other)),
        },
        Err(e) => ctx.on_error(&req, body, e).await,
    }
}

async fn get_kv<S: KvService>(req: HttpRequest, ctx: Data<S>) -> Result<HttpResponse, ApiError> {
    let key = path_key(&req, KV_PREFIX)?;
    let level = consistency(&req)?.unwrap_or_else(|| ctx.service.default_consistency());
    match ctx.service.read(key, level).await {
        Ok(Some(value)) => Ok(HttpResponse::Ok()
            .content_type("application/octet-stream")
            .body(value)),
        Ok(None) => Err(ApiError::NotFound {
            code: "key_not_found",
            message: "no such key".to_owned(),
        }),
        Err(e) => ctx.on_error(&req, Bytes::new(), e).await,
    }
}

async fn delete_kv<S: KvService>(req: HttpRequest, ctx: Data<S>) -> Result<HttpResponse, ApiError> {
    let key = path_key(&req, KV_PREFIX)?;
    let idempotency = idempotency_key(&req)?;
    match ctx
        .service
        .write(KvCommand::Delete { key }, idempotency)
        .await
    {
        Ok(w) => match w.output {
            KvOutput::Delete { existed } => Ok(HttpResponse::Ok()
                .json(json!({ "index": w.index, "term": w.term, "existed": existed }))),
            other => Err(unexpected_output(&other)),
        },
        Err(e) => ctx.on_error(&req, Bytes::new(), e).await,
    }
}

/// A CAS request's `(expected, value)`; `None` means absent.
type CasFields = (Option<Vec<u8>>, Option<Vec<u8>>);

/// The body of `POST /v1/kv/{key}/cas`, parsed straight into its two fields (no intermediate
/// JSON tree: the body is read once, within its byte limit, and each string is allocated once).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CasBody {
    /// Required, `null` for absent: a missing `expected` silently meaning "absent" would turn
    /// a typo into a different operation.
    #[serde(deserialize_with = "required")]
    expected: Option<String>,
    #[serde(deserialize_with = "required")]
    value: Option<String>,
}

/// Makes an `Option` field required (present, possibly `null`).
fn required<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d)
}

/// Parses `{"expected": str|null, "value": str|null}`; each string at most `limit` bytes.
fn parse_cas(body: &[u8], limit: usize) -> Result<CasFields, ApiError> {
    let parsed: CasBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("expected {{\"expected\": str|null, \"value\": str|null}}: {e}"),
        )
    })?;
    for s in [&parsed.expected, &parsed.value].into_iter().flatten() {
        if s.len() > limit {
            return Err(ApiError::TooLarge {
                size: Some(s.len()),
                limit,
            });
        }
    }
    Ok((
        parsed.expected.map(String::into_bytes),
        parsed.value.map(String::into_bytes),
    ))
}

async fn cas_kv<S: KvService>(
    req: HttpRequest,
    payload: web::Payload,
    ctx: Data<S>,
) -> Result<HttpResponse, ApiError> {
    let key = path_key(&req, KV_PREFIX)?;
    let idempotency = idempotency_key(&req)?;
    let limit = ctx.service.max_value_bytes();
    // Two JSON strings of up to `limit` bytes each, with room for escaping (`\uXXXX` is 6
    // bytes per byte at worst) and the object around them.
    let body_limit = limit.saturating_mul(12).saturating_add(4096);
    let (body, _held) = read_required_body(
        &req,
        payload,
        body_limit,
        &ctx,
        "JSON {\"expected\": str|null, \"value\": str|null}",
    )
    .await?;
    let (expected, new) = parse_cas(&body, limit)?;
    let command = KvCommand::Cas {
        key,
        expected: expected.map(serde_bytes::ByteBuf::from),
        new: new.map(serde_bytes::ByteBuf::from),
    };
    match ctx.service.write(command, idempotency).await {
        Ok(w) => match w.output {
            KvOutput::Cas { ok: true, .. } => Ok(
                HttpResponse::Ok().json(json!({ "ok": true, "index": w.index, "term": w.term }))
            ),
            KvOutput::Cas { ok: false, current } => {
                // The API's values are strings; a value written as non-UTF-8 bytes through
                // PUT is shown lossily here.
                let current = current.map(|c| String::from_utf8_lossy(&c).into_owned());
                Ok(HttpResponse::Conflict().json(
                    json!({ "ok": false, "current": current, "index": w.index, "term": w.term }),
                ))
            }
            other => Err(unexpected_output(&other)),
        },
        Err(e) => ctx.on_error(&req, body, e).await,
    }
}

async fn cluster<S: KvService>(ctx: Data<S>) -> HttpResponse {
    HttpResponse::Ok().json(ctx.service.status().await)
}

async fn cluster_members<S: KvService>(ctx: Data<S>) -> HttpResponse {
    HttpResponse::Ok().json(ctx.service.members().await)
}

/// Parses `{"to": <node id>}`.
fn parse_transfer(body: &[u8]) -> Result<NodeId, ApiError> {
    let invalid = |m: String| ApiError::bad_request("invalid_json", m);
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| invalid(format!("the body is not JSON: {e}")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(invalid("expected an object {\"to\": <node id>}".to_owned()));
    };
    if let Some(unknown) = map.keys().find(|k| *k != "to") {
        return Err(invalid(format!("unknown field {unknown:?}")));
    }
    map.get("to")
        .and_then(serde_json::Value::as_u64)
        .map(NodeId::new)
        .ok_or_else(|| invalid("field \"to\" must be a node id (a positive integer)".to_owned()))
}

/// The body of `POST /v1/shards/preferred-leader`.
#[derive(Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PreferredLeaderBody {
    shard: ShardId,
    node: NodeId,
    #[serde(default)]
    expected_version: Option<u64>,
}

fn parse_preferred_leader(body: &[u8]) -> Result<PreferredLeaderBody, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("expected {{\"shard\": <shard>, \"node\": <node id>, \"expected_version\": <version, optional>}}: {e}"),
        )
    })
}

/// `POST /v1/shards/preferred-leader {"shard", "node", "expected_version"?}`: makes `node` the
/// shard's preferred leader through group 0 (docs/sharding.md; forwarded to group 0's leader
/// when this node does not lead it). 200 with the shard's replicas and the map's version.
async fn preferred_leader<S: KvService>(
    req: HttpRequest,
    payload: web::Payload,
    ctx: Data<S>,
) -> Result<HttpResponse, ApiError> {
    let (body, _held) = read_required_body(
        &req,
        payload,
        4096,
        &ctx,
        "JSON {\"shard\": <shard>, \"node\": <node id>}",
    )
    .await?;
    let b = parse_preferred_leader(&body)?;
    match ctx
        .service
        .prefer_shard_leader(b.shard, b.node, b.expected_version)
        .await
    {
        Ok(change) => Ok(HttpResponse::Ok().json(change)),
        Err(e) => ctx.on_error(&req, body, e).await,
    }
}

/// `POST /v1/cluster/transfer-leader {"to": id}`: 200 once the leader has started handing
/// leadership to `to` (forwarded to the leader when this node does not lead).
async fn transfer_leader<S: KvService>(
    req: HttpRequest,
    payload: web::Payload,
    ctx: Data<S>,
) -> Result<HttpResponse, ApiError> {
    let (body, _held) =
        read_required_body(&req, payload, 4096, &ctx, "JSON {\"to\": <node id>}").await?;
    let to = parse_transfer(&body)?;
    if !ctx.service.is_member(to) {
        return Err(ApiError::bad_request(
            "unknown_member",
            format!("node {to} is not a member of the cluster"),
        ));
    }
    match ctx.service.transfer_leader(to).await {
        Ok(()) => Ok(HttpResponse::Ok().json(json!({ "ok": true, "to": to }))),
        Err(e) => ctx.on_error(&req, body, e).await,
    }
}

/// The `group` query parameter of `POST /v1/cluster/snapshot` (default 0).
fn snapshot_group(query: &str) -> Result<GroupId, ApiError> {
    let mut group = GroupId::FIRST;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "group" {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("unknown query parameter {name:?} (expected group)"),
            ));
        }
        group = value.parse().map_err(|_| {
            ApiError::bad_request(
                "invalid_query",
                format!("group must be a group id (a non-negative integer), got {value:?}"),
            )
        })?;
    }
    Ok(group)
}

/// `POST /v1/cluster/snapshot[?group=G]` (admin): takes a snapshot of the group's state
/// machine on *this* node now and compacts its log behind it; 200 with `{group, index, term,
/// bytes, taken, duration_ms}` (`taken: false`: nothing was applied since the latest snapshot,
/// which is described); 409 `snapshot_in_progress` while one is being taken.
async fn take_snapshot<S: KvService>(
    req: HttpRequest,
    ctx: Data<S>,
) -> Result<HttpResponse, ApiError> {
    let group = snapshot_group(req.query_string())?;
    if !ctx.service.has_group(group) {
        return Err(ApiError::NotFound {
            code: "group_not_found",
            message: format!("this node hosts no group {group}"),
        });
    }
    match ctx.service.take_snapshot(group).await {
        Ok(info) => Ok(HttpResponse::Ok().json(info)),
        Err(e) => Err(e.into()),
    }
}

async fn ring_route<S: KvService>(
    req: HttpRequest,
    ctx: Data<S>,
) -> Result<HttpResponse, ApiError> {
    let key = path_key(&req, ROUTE_PREFIX)?;
    Ok(HttpResponse::Ok().json(ctx.service.route(&key)))
}

async fn metrics_text<S: KvService>(ctx: Data<S>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(ctx.service.render_metrics())
}

/// Liveness. 503 `storage_failed` once a storage component failed (sticky: the node cannot
/// persist, so restarting it — after fixing the disk — is the way out); a stall alone keeps
/// liveness at 200 (it may clear by itself; `/readyz` already takes the node out of rotation).
async fn healthz<S: KvService>(ctx: Data<S>) -> HttpResponse {
    let storage = ctx.service.storage();
    if let StorageCondition::Failed { component, error } = &storage {
        return HttpResponse::ServiceUnavailable()
            .insert_header((header::RETRY_AFTER, RETRY_AFTER_SECS.to_string()))
            .json(json!({
                "error": {
                    "code": "storage_failed",
                    "message": format!("storage of {component} failed: {error}"),
                },
                "status": "storage_failed",
                "node_id": ctx.service.node_id(),
                "storage": storage,
            }));
    }
    HttpResponse::Ok().json(json!({ "status": "ok", "node_id": ctx.service.node_id() }))
}

/// Readiness: 503 while not ready; a storage stall or failure also carries the JSON error
/// (`storage_stalled`, `storage_failed`) next to the reasons, and so does a node outside the
/// membership (`not_a_member`, `removed`).
async fn readyz<S: KvService>(ctx: Data<S>) -> HttpResponse {
    let readiness = ctx.service.readiness().await;
    if readiness.ready {
        return HttpResponse::Ok().json(readiness);
    }
    let mut body = json!(readiness);
    if let Some(code) = readiness.storage.code().or(readiness.code.as_deref()) {
        body["error"] = json!({ "code": code, "message": readiness.reasons.join("; ") });
    }
    HttpResponse::ServiceUnavailable()
        .insert_header((header::RETRY_AFTER, RETRY_AFTER_SECS.to_string()))
        .json(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn consistency_parameter() {
        let level = |q: &str| {
            consistency(&TestRequest::with_uri(&format!("/v1/kv/k?{q}")).to_http_request())
        };
        assert_eq!(level("consistency=stale").unwrap(), Some(ReadLevel::Stale));
        assert_eq!(
            level("a=b&consistency=lease").unwrap(),
            Some(ReadLevel::Lease)
        );
        assert_eq!(
            level("consistency=linearizable").unwrap(),
            Some(ReadLevel::Linearizable)
        );
        assert_eq!(level("other=1").unwrap(), None);
        assert_eq!(
            level("consistency=strong").unwrap_err().code(),
            "invalid_consistency"
        );
        assert_eq!(
            level("consistency").unwrap_err().code(),
            "invalid_consistency"
        );
    }

    #[test]
    fn cas_body_parsing() {
        assert_eq!(
            parse_cas(br#"{"expected":null,"value":"v"}"#, 10).unwrap(),
            (None, Some(b"v".to_vec()))
        );
        assert_eq!(
            parse_cas(br#"{"expected":"a","value":null}"#, 10).unwrap(),
            (Some(b"a".to_vec()), None)
        );
        for bad in [
            &br#"{"value":"v"}"#[..],
            br#"{"expected":1,"value":"v"}"#,
            br#"{"expected":null,"value":"v","x":1}"#,
            br#"["a"]"#,
            b"{not json",
        ] {
            assert_eq!(parse_cas(bad, 10).unwrap_err().code(), "invalid_json");
        }
        assert_eq!(
            parse_cas(br#"{"expected":null,"value":"0123456789X"}"#, 10)
                .unwrap_err()
                .code(),
            "payload_too_large"
        );
    }

    #[test]
    fn snapshot_group_parsing() {
        assert_eq!(snapshot_group("").unwrap(), GroupId::FIRST);
        assert_eq!(snapshot_group("group=3").unwrap(), GroupId::new(3));
        for bad in ["group=x", "group=-1", "groups=1", "group"] {
            assert_eq!(
                snapshot_group(bad).unwrap_err().code(),
                "invalid_query",
                "{bad}"
            );
        }
    }

    #[test]
    fn preferred_leader_body_parsing() {
        assert_eq!(
            parse_preferred_leader(br#"{"shard": 3, "node": 2}"#).unwrap(),
            PreferredLeaderBody {
                shard: ShardId::new(3),
                node: NodeId::new(2),
                expected_version: None
            }
        );
        assert_eq!(
            parse_preferred_leader(br#"{"shard": 0, "node": 1, "expected_version": 4}"#)
                .unwrap()
                .expected_version,
            Some(4)
        );
        for bad in [
            &br#"{"shard": 3}"#[..],
            br#"{"shard": 3, "node": 2, "to": 1}"#,
            br#"{"shard": -1, "node": 2}"#,
            b"not json",
        ] {
            assert!(parse_preferred_leader(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn transfer_body_parsing() {
        assert_eq!(parse_transfer(br#"{"to":3}"#).unwrap(), NodeId::new(3));
        for bad in [
            &br#"{}"#[..],
            br#"{"to":-1}"#,
            br#"{"to":"3"}"#,
            br#"{"to":3,"x":1}"#,
            br#"[3]"#,
            b"{not json",
        ] {
            assert_eq!(parse_transfer(bad).unwrap_err().code(), "invalid_json");
        }
    }

    #[test]
    fn keys_come_from_the_raw_path() {
        let req = TestRequest::with_uri("/v1/kv/a%2Fb/cas").to_http_request();
        assert_eq!(path_key(&req, KV_PREFIX).unwrap(), b"a/b");
        let req = TestRequest::with_uri("/v1/kv/%FF").to_http_request();
        assert_eq!(path_key(&req, KV_PREFIX).unwrap_err().code(), "invalid_key");
    }
}
