//! The HTTP API against a test double of the node: every route, every error status, bad input,
//! forwarding across two real loopback servers and the hop limit.

#![allow(clippy::unwrap_used)] // Tests (and their shared double) unwrap freely.

mod http_support;

use actix_web::http::header::HeaderMap;
use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use conclave::config::ReadLevel;
use conclave::node::{InternalError, RequestError};
use conclave::storage::health::{StorageComponent, StorageCondition, StorageError};
use conclave_core::ids::{GroupId, NodeId};
use http_support::{Double, Mode, TestServer};
use serde_json::Value;

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts the status and the error shape `{"error":{"code","message"}}`; returns the code.
    fn error(&self, status: StatusCode) -> String {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        let v = self.json();
        assert!(v["error"]["message"].is_string(), "no error.message in {v}");
        v["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error.code in {v}"))
            .to_owned()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn send(req: awc::ClientRequest, body: Option<&[u8]>) -> Reply {
    let sent = match body {
        Some(b) => req.send_body(b.to_vec()).await,
        None => req.send().await,
    };
    let mut resp = sent.unwrap();
    let body = resp.body().limit(64 * 1024 * 1024).await.unwrap();
    Reply {
        status: resp.status(),
        headers: resp.headers().clone(),
        body,
    }
}

fn client() -> awc::Client {
    awc::Client::default()
}

async fn put(s: &TestServer, key: &str, value: &[u8]) -> Reply {
    send(client().put(s.url(&format!("/v1/kv/{key}"))), Some(value)).await
}

async fn get(s: &TestServer, path: &str) -> Reply {
    send(client().get(s.url(path)), None).await
}

async fn cas(s: &TestServer, key: &str, body: &str) -> Reply {
    send(
        client()
            .post(s.url(&format!("/v1/kv/{key}/cas")))
            .insert_header(("content-type", "application/json")),
        Some(body.as_bytes()),
    )
    .await
}

#[actix_web::test]
async fn every_route_on_a_leader() {
    let s = TestServer::start(Double::new(NodeId::new(1)), 10);

    let r = put(&s, "greeting", b"hello").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), serde_json::json!({"index": 1, "term": 1}));
    assert_eq!(r.header("x-conclave-served-by"), Some("1"));
    assert_eq!(s.double.value(b"greeting").as_deref(), Some(&b"hello"[..]));

    let r = get(&s, "/v1/kv/greeting").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], b"hello");
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));

    // Binary values and escaped keys round-trip.
    let r = put(&s, "a%2Fb%20c", &[0, 255, 10]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        s.double.value(b"a/b c").as_deref(),
        Some(&[0u8, 255, 10][..])
    );
    let r = get(&s, "/v1/kv/a%2Fb%20c?consistency=stale").await;
    assert_eq!(&r.body[..], &[0, 255, 10]);

    // An empty value is a value.
    let r = put(&s, "empty", b"").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(s.double.value(b"empty").as_deref(), Some(&b""[..]));

    let r = get(&s, "/v1/kv/missing").await;
    assert_eq!(r.error(StatusCode::NOT_FOUND), "key_not_found");

    // Every consistency level reaches the service; no parameter means the default.
    for (q, level) in [
        ("?consistency=linearizable", ReadLevel::Linearizable),
        ("?consistency=lease", ReadLevel::Lease),
        ("?consistency=stale", ReadLevel::Stale),
        ("", ReadLevel::Linearizable),
    ] {
        s.double.state.lock().unwrap().reads.clear();
        let r = get(&s, &format!("/v1/kv/greeting{q}")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(s.double.state.lock().unwrap().reads, vec![level]);
    }

    let r = send(client().delete(s.url("/v1/kv/greeting")), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["existed"], true);
    assert!(r.json()["index"].is_u64());
    let r = send(client().delete(s.url("/v1/kv/greeting")), None).await;
    assert_eq!(r.json()["existed"], false);

    // CAS: create when absent, conflict shows the current value, swap, delete.
    let r = cas(&s, "lock", r#"{"expected":null,"value":"a"}"#).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["ok"], true);
    let r = cas(&s, "lock", r#"{"expected":null,"value":"b"}"#).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.json()["ok"], false);
    assert_eq!(r.json()["current"], "a");
    let r = cas(&s, "lock", r#"{"expected":"a","value":"b"}"#).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(s.double.value(b"lock").as_deref(), Some(&b"b"[..]));
    let r = cas(&s, "lock", r#"{"expected":"b","value":null}"#).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(s.double.value(b"lock"), None);
    let r = cas(&s, "lock", r#"{"expected":"b","value":"c"}"#).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.json()["current"], Value::Null);

    let r = get(&s, "/v1/cluster").await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    for field in [
        "node_id",
        "role",
        "term",
        "leader_id",
        "commit_index",
        "applied_index",
        "members",
        "groups",
    ] {
        assert!(v.get(field).is_some(), "missing {field} in {v}");
    }
    assert_eq!(v["role"], "leader");
    assert_eq!(v["groups"][0]["leader_id"], 1);
    assert_eq!(v["members"][0]["state"], "alive");

    let r = get(&s, "/v1/ring/route/abc").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        serde_json::json!({"shard": 3, "group": 0, "replicas": [1, 2, 3], "leader": 1, "map_version": 0})
    );

    // A service that is not sharded lists no shards.
    let r = get(&s, "/v1/shards").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        serde_json::json!({"node_id": 1, "sharded": false, "map_version": 0, "shards": [],
            "map_adoptions": {"group0": 0, "peers": 0}})
    );
    // Nor changes a shard map.
    let r = post_json(
        &s,
        "/v1/shards/preferred-leader",
        r#"{"shard": 0, "node": 1}"#,
    )
    .await;
    assert_eq!(r.error(StatusCode::BAD_REQUEST), "not_sharded");
    let r = post_json(&s, "/v1/shards/preferred-leader", r#"{"shard": 0}"#).await;
    assert_eq!(r.error(StatusCode::BAD_REQUEST), "invalid_json");

    let r = get(&s, "/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    assert!(String::from_utf8_lossy(&r.body).contains("conclave_test_node 1"));

    let r = get(&s, "/healthz").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], "ok");

    let r = get(&s, "/readyz").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["ready"], true);
    s.double.state.lock().unwrap().ready = false;
    let r = get(&s, "/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["ready"], false);
    assert_eq!(r.json()["reasons"][0], "no leader known for group 0");
    assert_eq!(r.header("retry-after"), Some("1"));
    // Liveness does not depend on readiness.
    assert_eq!(get(&s, "/healthz").await.status, StatusCode::OK);
    s.double.state.lock().unwrap().ready = true;

    // A storage stall: not ready (503 `storage_stalled`, JSON error + reasons), still live.
    s.double.state.lock().unwrap().storage = StorageCondition::Stalled {
        component: StorageComponent::StateMachine(GroupId::FIRST),
        for_ms: 6000,
    };
    let r = get(&s, "/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["error"]["code"], "storage_stalled");
    assert_eq!(r.json()["ready"], false);
    assert_eq!(r.json()["storage"]["state"], "stalled");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(get(&s, "/healthz").await.status, StatusCode::OK);
    assert_eq!(
        get(&s, "/v1/cluster").await.json()["storage"]["state"],
        "stalled"
    );
    // A storage failure: neither ready nor live (503 `storage_failed` on both).
    s.double.state.lock().unwrap().storage = StorageCondition::Failed {
        component: StorageComponent::StateMachine(GroupId::FIRST),
        error: StorageError::Reported {
            shown: "No space left on device".into(),
        },
    };
    let r = get(&s, "/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["error"]["code"], "storage_failed");
    let r = get(&s, "/healthz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["error"]["code"], "storage_failed");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("No space left on device"));
    let v = get(&s, "/v1/cluster").await.json();
    assert_eq!(v["storage"]["state"], "failed");
    assert_eq!(v["storage"]["component"], "state_machine/0");

    s.stop().await;
}

#[actix_web::test]
async fn bad_input_is_a_json_4xx_and_the_server_keeps_serving() {
    let s = TestServer::start(Double::new(NodeId::new(1)), 10);
    let limit = s.double.max_value;

    // CAS: bad JSON, missing body, wrong shapes.
    assert_eq!(
        cas(&s, "k", "{not json")
            .await
            .error(StatusCode::BAD_REQUEST),
        "invalid_json"
    );
    assert_eq!(
        cas(&s, "k", "").await.error(StatusCode::BAD_REQUEST),
        "missing_body"
    );
    let r = send(client().post(s.url("/v1/kv/k/cas")), None).await;
    assert_eq!(r.error(StatusCode::BAD_REQUEST), "missing_body");
    assert_eq!(
        cas(&s, "k", r#"{"value":"v"}"#)
            .await
            .error(StatusCode::BAD_REQUEST),
        "invalid_json"
    );
    assert_eq!(
        cas(&s, "k", r#"{"expected":5,"value":"v"}"#)
            .await
            .error(StatusCode::BAD_REQUEST),
        "invalid_json"
    );

    // PUT without a body at all (awc always declares one, so speak HTTP by hand; this is
    // what `curl -X PUT URL` sends).
    let raw = raw_request(
        s.addr,
        b"PUT /v1/kv/k HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    );
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert!(raw.contains("\"missing_body\""), "{raw}");

    // Oversized values: a declared length over the limit, and a CAS value over it.
    let big = vec![b'x'; limit + 1];
    let r = put(&s, "k", &big).await;
    assert_eq!(r.error(StatusCode::PAYLOAD_TOO_LARGE), "payload_too_large");
    let body = format!(r#"{{"expected":null,"value":"{}"}}"#, "x".repeat(limit + 1));
    assert_eq!(
        cas(&s, "k", &body)
            .await
            .error(StatusCode::PAYLOAD_TOO_LARGE),
        "payload_too_large"
    );
    // Exactly at the limit is fine.
    assert_eq!(
        put(&s, "k", &vec![b'y'; limit]).await.status,
        StatusCode::OK
    );

    // A chunked body (no Content-Length) over the limit is cut off while streaming.
    let raw = chunked_put(s.addr, "/v1/kv/streamed", limit, 4);
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    assert!(raw.contains("payload_too_large"), "{raw}");
    assert_eq!(s.double.value(b"streamed"), None);

    // Unknown consistency.
    assert_eq!(
        get(&s, "/v1/kv/k?consistency=strong")
            .await
            .error(StatusCode::BAD_REQUEST),
        "invalid_consistency"
    );

    // Invalid key bytes: not UTF-8, a control character, a broken escape, empty, too long.
    for path in [
        "/v1/kv/%FF%FE".to_owned(),
        "/v1/kv/a%00b".to_owned(),
        "/v1/kv/a%0".to_owned(),
        "/v1/kv/".to_owned(),
        format!("/v1/kv/{}", "k".repeat(1025)),
        "/v1/ring/route/%C3".to_owned(),
    ] {
        let r = get(&s, &path).await;
        assert_eq!(r.error(StatusCode::BAD_REQUEST), "invalid_key", "{path}");
    }
    let r = put(&s, "%FF", b"v").await;
    assert_eq!(r.error(StatusCode::BAD_REQUEST), "invalid_key");

    // Bad headers.
    let r = send(
        client()
            .put(s.url("/v1/kv/k"))
            .insert_header(("idempotency-key", "x".repeat(300))),
        Some(b"v"),
    )
    .await;
    assert_eq!(r.error(StatusCode::BAD_REQUEST), "invalid_header");

    // Unknown routes and methods are JSON too.
    assert_eq!(
        get(&s, "/v2/nothing").await.error(StatusCode::NOT_FOUND),
        "route_not_found"
    );
    let r = send(client().post(s.url("/v1/kv/k")), Some(b"v")).await;
    assert_eq!(
        r.error(StatusCode::METHOD_NOT_ALLOWED),
        "method_not_allowed"
    );
    let r = send(client().get(s.url("/v1/kv/k/cas")), None).await;
    assert_eq!(
        r.error(StatusCode::METHOD_NOT_ALLOWED),
        "method_not_allowed"
    );

    // None of it was applied, and the server still serves.
    assert_eq!(s.double.value(b"k").map(|v| v.len()), Some(limit));
    assert_eq!(put(&s, "after", b"fine").await.status, StatusCode::OK);
    assert_eq!(&get(&s, "/v1/kv/after").await.body[..], b"fine");
    s.stop().await;
}

/// Sends a chunked PUT of `chunks` chunks of `size` bytes over a raw socket (no
/// Content-Length, so the server only learns the size while reading) and returns the raw
/// response. Write errors are ignored: the server may answer and close before the end.
fn chunked_put(addr: std::net::SocketAddr, path: &str, size: usize, chunks: usize) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let _ = stream.write_all(head.as_bytes());
    for _ in 0..chunks {
        let _ = stream.write_all(format!("{size:x}\r\n").as_bytes());
        let _ = stream.write_all(&vec![b'z'; size]);
        let _ = stream.write_all(b"\r\n");
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends raw request bytes and returns the raw response (the request must ask to close).
fn raw_request(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[actix_web::test]
async fn node_errors_map_to_their_statuses() {
    let s = TestServer::start(Double::new(NodeId::new(1)), 10);
    let cases = [
        (
            RequestError::NotLeader { leader: None },
            StatusCode::SERVICE_UNAVAILABLE,
            "no_leader",
        ),
        (
            RequestError::NoLeader {
                group: GroupId::FIRST,
            },
            StatusCode::SERVICE_UNAVAILABLE,
            "no_leader",
        ),
        (
            RequestError::Overloaded,
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
        ),
        (
            RequestError::Dropped,
            StatusCode::SERVICE_UNAVAILABLE,
            "dropped",
        ),
        (
            RequestError::ShuttingDown,
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
        ),
        (
            RequestError::Timeout,
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
        ),
        (
            RequestError::TooLarge { size: 9, limit: 8 },
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            RequestError::Internal(InternalError::failed(std::io::Error::other("disk on fire"))),
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
        ),
    ];
    for (e, status, code) in cases {
        s.double.set_mode(Mode::Fail(e.clone()));
        for r in [
            put(&s, "k", b"v").await,
            get(&s, "/v1/kv/k").await,
            send(client().delete(s.url("/v1/kv/k")), None).await,
            cas(&s, "k", r#"{"expected":null,"value":"v"}"#).await,
        ] {
            assert_eq!(r.error(status), code, "{e:?}");
            let retry = r.header("retry-after");
            if status == StatusCode::SERVICE_UNAVAILABLE {
                assert_eq!(retry, Some("1"), "{e:?}");
            } else {
                assert_eq!(retry, None, "{e:?}");
            }
        }
        // Stale reads are served locally whatever the leader situation.
        assert_eq!(
            get(&s, "/v1/kv/k?consistency=stale")
                .await
                .error(StatusCode::NOT_FOUND),
            "key_not_found"
        );
    }
    s.stop().await;
}

#[actix_web::test]
async fn followers_forward_to_the_leader() {
    let leader = TestServer::start(Double::new(NodeId::new(2)), 10);
    let follower = TestServer::start(Double::new(NodeId::new(1)), 10);
    follower.double.follower_of(NodeId::new(2), leader.addr);

    let r = send(
        client()
            .put(follower.url("/v1/kv/fwd%2Fkey"))
            .insert_header(("idempotency-key", "op-1")),
        Some(b"forwarded"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.header("x-conclave-served-by"), Some("2"));
    // Framed as the leader framed it: a length, not chunks.
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(
        leader.double.value(b"fwd/key").as_deref(),
        Some(&b"forwarded"[..])
    );
    assert_eq!(follower.double.value(b"fwd/key"), None);
    // The idempotency key went along, and a retry through the follower applies once.
    let r2 = send(
        client()
            .put(follower.url("/v1/kv/fwd%2Fkey"))
            .insert_header(("idempotency-key", "op-1")),
        Some(b"forwarded"),
    )
    .await;
    assert_eq!(r2.json(), r.json());
    assert_eq!(leader.double.index(), 1);
    let seen = leader.double.state.lock().unwrap().seen_keys.clone();
    assert_eq!(seen, vec![Some("op-1".to_owned()), Some("op-1".to_owned())]);

    // An empty value survives the hop.
    assert_eq!(put(&follower, "empty", b"").await.status, StatusCode::OK);
    assert_eq!(leader.double.value(b"empty").as_deref(), Some(&b""[..]));

    // Linearizable reads, their query string and 404s come from the leader.
    let r = get(&follower, "/v1/kv/fwd%2Fkey?consistency=lease").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], b"forwarded");
    assert_eq!(r.header("x-conclave-served-by"), Some("2"));
    assert_eq!(
        leader.double.state.lock().unwrap().reads.last(),
        Some(&ReadLevel::Lease)
    );
    assert_eq!(
        get(&follower, "/v1/kv/nope")
            .await
            .error(StatusCode::NOT_FOUND),
        "key_not_found"
    );
    // Stale reads are answered by the follower itself.
    let r = get(&follower, "/v1/kv/fwd%2Fkey?consistency=stale").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.header("x-conclave-served-by"), Some("1"));

    // CAS and DELETE, including a 409, come back as the leader answered them.
    let r = cas(&follower, "c", r#"{"expected":null,"value":"1"}"#).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = cas(&follower, "c", r#"{"expected":null,"value":"2"}"#).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.json()["current"], "1");
    let r = send(client().delete(follower.url("/v1/kv/c")), None).await;
    assert_eq!(r.json()["existed"], true);

    // The leader's errors are relayed with their status and Retry-After.
    leader.double.set_mode(Mode::Fail(RequestError::Overloaded));
    let r = put(&follower, "k", b"v").await;
    assert_eq!(r.error(StatusCode::SERVICE_UNAVAILABLE), "overloaded");
    assert_eq!(r.header("retry-after"), Some("1"));

    // Bad input is refused by the follower before any forwarding.
    leader.double.set_mode(Mode::Leader);
    let before = leader.double.state.lock().unwrap().seen_keys.len();
    assert_eq!(
        cas(&follower, "k", "nope")
            .await
            .error(StatusCode::BAD_REQUEST),
        "invalid_json"
    );
    assert_eq!(
        put(&follower, "k", &vec![0; 2000])
            .await
            .error(StatusCode::PAYLOAD_TOO_LARGE),
        "payload_too_large"
    );
    assert_eq!(leader.double.state.lock().unwrap().seen_keys.len(), before);

    follower.stop().await;
    leader.stop().await;
}

#[actix_web::test]
async fn forwarding_stops_at_the_hop_limit() {
    // Two nodes that each believe the other leads: a request bounces until the hop limit.
    let a = TestServer::start(Double::new(NodeId::new(1)), 3);
    let b = TestServer::start(Double::new(NodeId::new(2)), 3);
    a.double.follower_of(NodeId::new(2), b.addr);
    b.double.follower_of(NodeId::new(1), a.addr);
    let r = put(&a, "k", b"v").await;
    assert_eq!(r.error(StatusCode::SERVICE_UNAVAILABLE), "hop_limit");
    assert_eq!(r.header("retry-after"), Some("1"));
    // Hops 1..=3 were forwarded; the node receiving hop 3 refused to make a 4th.
    let attempts = a.double.state.lock().unwrap().seen_keys.len()
        + b.double.state.lock().unwrap().seen_keys.len();
    assert_eq!(attempts, 4);

    // A client-sent hop count counts too; a malformed one is a 400.
    b.double.set_mode(Mode::Leader);
    let r = send(
        client()
            .put(a.url("/v1/kv/k"))
            .insert_header(("x-conclave-hops", "3")),
        Some(b"v"),
    )
    .await;
    assert_eq!(r.error(StatusCode::SERVICE_UNAVAILABLE), "hop_limit");
    let r = send(
        client()
            .put(a.url("/v1/kv/k"))
            .insert_header(("x-conclave-hops", "many")),
        Some(b"v"),
    )
    .await;
    assert_eq!(r.error(StatusCode::BAD_REQUEST), "invalid_header");
    let r = put(&a, "k", b"v").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-conclave-served-by"), Some("2"));

    a.stop().await;
    b.stop().await;
}

#[actix_web::test]
async fn an_unreachable_or_self_named_leader_is_a_503() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let s = TestServer::start(Double::new(NodeId::new(1)), 10);
    s.double.follower_of(NodeId::new(7), port);
    let r = put(&s, "k", b"v").await;
    assert_eq!(
        r.error(StatusCode::SERVICE_UNAVAILABLE),
        "leader_unreachable"
    );
    assert_eq!(r.header("retry-after"), Some("1"));

    s.double.follower_of(NodeId::new(1), s.addr);
    let r = put(&s, "k", b"v").await;
    assert_eq!(r.error(StatusCode::SERVICE_UNAVAILABLE), "no_leader");
    s.stop().await;
}

/// Regression (found by the chaos harness, runtime/tests/chaos.rs): a follower forwarding a
/// write whose connection to the leader broke *after* the request was sent answered 503
/// `leader_unreachable` ("certainly not applied, safe to retry") although the leader may have
/// received and applied it — the harness saw such a "refused" write present on every node.
/// The outcome is unknown: it must be a 504.
#[actix_web::test]
async fn forwarded_write_whose_answer_is_lost_is_a_504_not_a_503() {
    use std::io::Read;
    // A "leader" that reads the forwarded request and closes the connection unanswered.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let leader = listener.local_addr().unwrap();
    let received = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = received.clone();
    std::thread::spawn(move || {
        if let Ok((mut conn, _)) = listener.accept() {
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            while !String::from_utf8_lossy(&got).contains("value-bytes") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            seen.store(true, std::sync::atomic::Ordering::SeqCst);
            // Dropped: closed without an answer.
        }
    });
    let s = TestServer::start(Double::new(NodeId::new(1)), 10);
    s.double.follower_of(NodeId::new(7), leader);
    let r = put(&s, "k", b"value-bytes").await;
    assert!(received.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(r.error(StatusCode::GATEWAY_TIMEOUT), "timeout");
    assert_eq!(r.header("retry-after"), None);
    s.stop().await;
}

#[actix_web::test]
async fn idempotency_keys_reach_the_service() {
    let s = TestServer::start(Double::new(NodeId::new(1)), 10);
    for _ in 0..3 {
        let r = send(
            client()
                .put(s.url("/v1/kv/k"))
                .insert_header(("Idempotency-Key", "abc")),
            Some(b"v"),
        )
        .await;
        assert_eq!(r.json()["index"], 1);
    }
    let r = put(&s, "k", b"w").await;
    assert_eq!(r.json()["index"], 2);
    let seen = s.double.state.lock().unwrap().seen_keys.clone();
    assert_eq!(
        seen,
        vec![
            Some("abc".into()),
            Some("abc".into()),
            Some("abc".into()),
            None
        ]
    );
    s.stop().await;
}

#[actix_web::test]
async fn cluster_members_lists_the_gossip_view() {
    let s = TestServer::start(Double::new(NodeId::new(1)), 10);
    let r = get(&s, "/v1/cluster/members").await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["node_id"], 1);
    assert_eq!(v["incarnation"], 2);
    assert_eq!(v["counts"]["suspect"], 1);
    let members = v["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    let me = &members[0];
    assert_eq!(
        (&me["id"], &me["state"], &me["rtt"]),
        (&Value::from(1), &Value::from("alive"), &Value::Null)
    );
    let peer = &members[1];
    assert_eq!(peer["state"], "suspect");
    assert_eq!(peer["incarnation"], 5);
    assert_eq!(peer["addr"], "127.0.0.1:3");
    assert_eq!(peer["http"], "127.0.0.1:4");
    assert_eq!(peer["metadata"]["shards"], "0,1");
    assert_eq!(peer["metadata_version"], 3);
    assert_eq!(peer["rtt"]["samples_ms"], serde_json::json!([1, 3]));
    assert_eq!(peer["rtt"]["avg_ms"], 2.0);
    // The typed client reads the same body.
    let client = conclave::client::Client::new(&s.endpoint()).unwrap();
    let typed = client.members().await.unwrap();
    assert_eq!(typed.members[1].rtt.as_ref().unwrap().max_ms, 3);
    // Only GET.
    let r = send(
        awc::Client::default().post(s.url("/v1/cluster/members")),
        Some(b"x"),
    )
    .await;
    assert_eq!(
        r.error(StatusCode::METHOD_NOT_ALLOWED),
        "method_not_allowed"
    );
    s.stop().await;
}

/// `POST /v1/cluster/snapshot`: what the service took, typed errors for bad input, an unknown
/// group and a snapshot already running.
#[actix_web::test]
async fn snapshot_route() {
    let s = TestServer::start(Double::new(NodeId::new(1)), 10);
    assert_eq!(put(&s, "k", b"value").await.status, StatusCode::OK);
    let post = |path: &str| send(client().post(s.url(path)), None);
    let r = post("/v1/cluster/snapshot").await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(
        (
            v["group"].as_u64(),
            v["index"].as_u64(),
            v["bytes"].as_u64()
        ),
        (Some(0), Some(1), Some(6))
    );
    assert_eq!(v["taken"], serde_json::json!(true));
    assert_eq!(
        post("/v1/cluster/snapshot?group=0").await.status,
        StatusCode::OK
    );
    assert_eq!(
        post("/v1/cluster/snapshot?group=x")
            .await
            .error(StatusCode::BAD_REQUEST),
        "invalid_query"
    );
    assert_eq!(
        post("/v1/cluster/snapshot?grp=0")
            .await
            .error(StatusCode::BAD_REQUEST),
        "invalid_query"
    );
    assert_eq!(
        post("/v1/cluster/snapshot?group=4")
            .await
            .error(StatusCode::NOT_FOUND),
        "group_not_found"
    );
    assert_eq!(
        get(&s, "/v1/cluster/snapshot").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    s.double
        .set_mode(Mode::Fail(RequestError::SnapshotInProgress {
            group: GroupId::FIRST,
        }));
    assert_eq!(
        post("/v1/cluster/snapshot")
            .await
            .error(StatusCode::CONFLICT),
        "snapshot_in_progress"
    );
    s.stop().await;
}

async fn post_json(s: &TestServer, path: &str, body: &str) -> Reply {
    send(
        client()
            .post(s.url(path))
            .insert_header(("content-type", "application/json")),
        Some(body.as_bytes()),
    )
    .await
}

/// The membership routes on a leader: each change reaches the service as the typed change with
/// its `expected_config_id`, answers the outcome, and `GET /v1/cluster/config` shows the result.
#[actix_web::test]
async fn membership_routes_on_a_leader() {
    use conclave::node::{ConfigChange, NewMember};
    let s = TestServer::start(Double::new(NodeId::new(1)), 10);
    let r = get(&s, "/v1/cluster/config").await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["config_id"], 0);
    assert_eq!(v["voters"].as_array().unwrap().len(), 3);
    assert_eq!(v["change_pending"], false);
    for field in ["learners", "leader_id", "promote_max_lag", "last_index"] {
        assert!(v.get(field).is_some(), "missing {field} in {v}");
    }

    let r = post_json(
        &s,
        "/v1/cluster/learners",
        r#"{"id":4,"addr":"127.0.0.1:7004","http":"127.0.0.1:7104","expected_config_id":0}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["config"]["config_id"], 1);
    assert_eq!(r.json()["config"]["learners"][0]["id"], 4);
    assert_eq!(r.json()["config"]["learners"][0]["caught_up"], true);
    let r = post_json(&s, "/v1/cluster/promote", r#"{"id":4}"#).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = post_json(
        &s,
        "/v1/cluster/remove",
        r#"{"id":2,"expected_config_id":2}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = post_json(
        &s,
        "/v1/cluster/replace",
        r#"{"remove":3,"add":{"id":5,"addr":"127.0.0.1:7005","http":"127.0.0.1:7105"}}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let v = get(&s, "/v1/cluster/config").await.json();
    let voters: Vec<u64> = v["voters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(voters, vec![1, 4, 5]);
    assert_eq!(v["config_id"], 4);
    let member = |id: u64| NewMember {
        id: NodeId::new(id),
        addr: format!("127.0.0.1:700{id}").parse().unwrap(),
        http: format!("127.0.0.1:710{id}").parse().unwrap(),
    };
    assert_eq!(
        s.double.state.lock().unwrap().changes,
        vec![
            (ConfigChange::AddLearner(member(4)), Some(0)),
            (ConfigChange::Promote(NodeId::new(4)), None),
            (ConfigChange::Remove(NodeId::new(2)), Some(2)),
            (
                ConfigChange::Replace {
                    remove: NodeId::new(3),
                    add: member(5)
                },
                None
            ),
        ]
    );
    // Reading the configuration is a GET; changing it a POST.
    assert_eq!(
        post_json(&s, "/v1/cluster/config", "{}")
            .await
            .error(StatusCode::METHOD_NOT_ALLOWED),
        "method_not_allowed"
    );
    assert_eq!(
        get(&s, "/v1/cluster/learners")
            .await
            .error(StatusCode::METHOD_NOT_ALLOWED),
        "method_not_allowed"
    );
    s.stop().await;
}

/// Every membership error is a JSON 4xx with its code, and nothing reaches the service for
/// malformed bodies.
#[actix_web::test]
async fn membership_errors_are_json_with_their_codes() {
    use conclave::node::InvalidChange;
    let s = TestServer::start(Double::new(NodeId::new(1)), 10);
    let add4 = r#"{"id":4,"addr":"127.0.0.1:7004","http":"127.0.0.1:7104"}"#;

    // Malformed bodies: 400 invalid_json / missing_body, never seen by the service.
    for (path, body, code) in [
        ("/v1/cluster/learners", "", "missing_body"),
        ("/v1/cluster/learners", r#"{"id":4}"#, "invalid_json"),
        (
            "/v1/cluster/learners",
            r#"{"id":4,"addr":"not an address","http":"127.0.0.1:7104"}"#,
            "invalid_json",
        ),
        ("/v1/cluster/promote", r#"{"id":"4"}"#, "invalid_json"),
        (
            "/v1/cluster/remove",
            r#"{"id":2,"force":true}"#,
            "invalid_json",
        ),
        ("/v1/cluster/replace", r#"{"remove":2}"#, "invalid_json"),
        ("/v1/cluster/replace", "{not json", "invalid_json"),
    ] {
        let r = post_json(&s, path, body).await;
        assert_eq!(r.error(StatusCode::BAD_REQUEST), code, "{path} {body}");
    }
    let r = post_json(&s, "/v1/cluster/learners", &"x".repeat(10_000)).await;
    assert_eq!(r.error(StatusCode::PAYLOAD_TOO_LARGE), "payload_too_large");
    assert!(s.double.state.lock().unwrap().changes.is_empty());

    // Invalid changes for the configuration: 400 invalid_change.
    for (path, body) in [
        ("/v1/cluster/promote", r#"{"id":2}"#),
        ("/v1/cluster/remove", r#"{"id":9}"#),
        (
            "/v1/cluster/replace",
            r#"{"remove":9,"add":{"id":5,"addr":"127.0.0.1:7005","http":"127.0.0.1:7105"}}"#,
        ),
        (
            "/v1/cluster/learners",
            r#"{"id":2,"addr":"127.0.0.1:7002","http":"127.0.0.1:7102"}"#,
        ),
    ] {
        let r = post_json(&s, path, body).await;
        assert_eq!(
            r.error(StatusCode::BAD_REQUEST),
            "invalid_change",
            "{path} {body}"
        );
    }

    // A stale expected_config_id: 409 config_changed, nothing changed.
    let r = post_json(
        &s,
        "/v1/cluster/learners",
        r#"{"id":4,"addr":"127.0.0.1:7004","http":"127.0.0.1:7104","expected_config_id":7}"#,
    )
    .await;
    assert_eq!(r.error(StatusCode::CONFLICT), "config_changed");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not the expected 7"),
        "{}",
        r.json()
    );
    assert_eq!(s.double.state.lock().unwrap().config.config_id, 0);

    // The node's refusals keep their 409 codes, and no Retry-After (retrying at once would
    // fail the same way).
    for (e, code) in [
        (
            RequestError::ChangeInProgress { config_id: 3 },
            "change_in_progress",
        ),
        (
            RequestError::NotCaughtUp {
                id: NodeId::new(4),
                lag: 5000,
                max_lag: 1000,
            },
            "not_caught_up",
        ),
        (
            RequestError::InvalidChange(InvalidChange::NoVoters),
            "invalid_change",
        ),
    ] {
        s.double.state.lock().unwrap().change_error = Some(e.clone());
        let r = post_json(&s, "/v1/cluster/learners", add4).await;
        let status = if code == "invalid_change" {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::CONFLICT
        };
        assert_eq!(r.error(status), code, "{e:?}");
        assert_eq!(r.header("retry-after"), None);
    }
    // No leader: 503 with Retry-After, for changes and for reading the configuration.
    s.double.state.lock().unwrap().change_error = None;
    s.double.set_mode(Mode::Fail(RequestError::NoLeader {
        group: GroupId::FIRST,
    }));
    for r in [
        post_json(&s, "/v1/cluster/promote", r#"{"id":4}"#).await,
        get(&s, "/v1/cluster/config").await,
    ] {
        assert_eq!(r.error(StatusCode::SERVICE_UNAVAILABLE), "no_leader");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    s.stop().await;
}

/// A follower forwards membership changes and configuration reads to the leader, with the body
/// and the client's token; the leader's 409s come back as they were.
#[actix_web::test]
async fn followers_forward_membership_routes_to_the_leader() {
    let leader = TestServer::start(Double::new(NodeId::new(2)), 10);
    let follower = TestServer::start(Double::new(NodeId::new(1)), 10);
    follower.double.follower_of(NodeId::new(2), leader.addr);

    let r = post_json(
        &follower,
        "/v1/cluster/learners",
        r#"{"id":4,"addr":"127.0.0.1:7004","http":"127.0.0.1:7104"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.header("x-conclave-served-by"), Some("2"));
    assert_eq!(leader.double.state.lock().unwrap().changes.len(), 1);
    // The follower recorded the attempt, refused it as NotLeader and forwarded it.
    assert_eq!(follower.double.state.lock().unwrap().changes.len(), 1);
    assert_eq!(follower.double.state.lock().unwrap().config.config_id, 0);

    let r = get(&follower, "/v1/cluster/config").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-conclave-served-by"), Some("2"));
    assert_eq!(r.json()["config_id"], 1);
    assert_eq!(r.json()["learners"][0]["id"], 4);

    let r = post_json(
        &follower,
        "/v1/cluster/promote",
        r#"{"id":4,"expected_config_id":0}"#,
    )
    .await;
    assert_eq!(r.error(StatusCode::CONFLICT), "config_changed");
    assert_eq!(r.header("x-conclave-served-by"), Some("2"));
    follower.stop().await;
    leader.stop().await;
}
