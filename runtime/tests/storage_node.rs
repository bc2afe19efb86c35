//! The key-value machine's storage behind a real node and its HTTP API: idempotency keys
//! reused by another request are refused (issue 12 finding 8), and a state store that cannot
//! write makes the node say so instead of looking healthy (finding 10).

#![allow(clippy::unwrap_used)]

mod common;

use actix_web::http::StatusCode;
use conclave::config::{Config, StorageEngine};
use conclave::node::{Node, NodeHandle};
use conclave::state_machine::{KvMachine, LogIndex};
use conclave::storage::health::StorageCondition;
use conclave::storage::state_store::{
    open_store, NextRecord, StateStore, StoreError, Visit, WriteBatch,
};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn call(
    method: &str,
    url: &str,
    idempotency: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(15))
        .finish();
    let mut req = client.request(method.parse().unwrap(), url);
    if let Some(k) = idempotency {
        req = req.insert_header(("Idempotency-Key", k));
    }
    let mut resp = match body {
        Some(b) => req.send_body(b.to_owned()).await.unwrap(),
        None => req.send().await.unwrap(),
    };
    let bytes = resp.body().limit(1 << 22).await.unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (resp.status(), json)
}

/// A single-node cluster with HTTP; `machine` opens the state machine on every (re)start.
async fn start_node(
    config: Config,
    machine: impl Fn() -> Result<KvMachine, conclave::state_machine::StateMachineError>
        + Send
        + Sync
        + 'static,
) -> (Node<KvMachine>, actix_web::dev::ServerHandle, String) {
    let node = Node::builder()
        .config(config.clone())
        .state_machine_with(machine)
        .start()
        .await
        .unwrap();
    let server = conclave::http::server(node.handle(), &config).unwrap();
    let handle = server.handle();
    actix::spawn(server);
    let base = format!("http://{}", config.node.http);
    wait_leader(&node.handle()).await;
    (node, handle, base)
}

async fn wait_leader(h: &NodeHandle<KvMachine>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.cluster_status().role != "leader" {
        assert!(Instant::now() < deadline, "no leader");
        actix::clock::sleep(Duration::from_millis(20)).await;
    }
}

/// Finding 8 over HTTP: `PUT /v1/kv/alpha` with key `abc`, then `PUT /v1/kv/beta` with `abc`
/// was a 200 although `beta` was never written; a DELETE or CAS reusing it was a 500.
#[actix::test]
async fn idempotency_key_reused_with_another_request_is_refused_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::local_configs(1, dir.path()).remove(0);
    let data = config.node.data_dir.clone();
    let (node, server, base) = start_node(config, move || {
        KvMachine::open_engine(StorageEngine::Redb, &data)
    })
    .await;
    let kv = |k: &str| format!("{base}/v1/kv/{k}");

    let (status, first) = call("PUT", &kv("alpha"), Some("abc"), Some("1")).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (status, body) = call("PUT", &kv("beta"), Some("abc"), Some("1")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "idempotency_key_reused");
    let (status, _) = call("GET", &kv("beta"), None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "beta was written");
    let (status, body) = call("DELETE", &kv("alpha"), Some("abc"), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "idempotency_key_reused");
    let (status, body) = call(
        "POST",
        &format!("{}/cas", kv("alpha")),
        Some("abc"),
        Some(r#"{"expected":"1","value":"2"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "idempotency_key_reused");
    // The real retry is answered as the first time (the index is the retry's own entry);
    // alpha is untouched.
    let (status, again) = call("PUT", &kv("alpha"), Some("abc"), Some("1")).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    let client = awc::Client::default();
    let mut resp = client.get(kv("alpha")).send().await.unwrap();
    assert_eq!(resp.body().await.unwrap().as_ref(), b"1");

    server.stop(true).await;
    node.shutdown().await;
}

/// A store that fails every commit once `fail` is set (a full or broken disk).
struct FailingStore {
    inner: Box<dyn StateStore>,
    fail: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
#[error("No space left on device (injected)")]
struct Injected;

impl StateStore for FailingStore {
    fn engine(&self) -> &'static str {
        "failing"
    }
    fn commit(&mut self, batch: WriteBatch, applied: LogIndex) -> Result<(), StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::engine("failing", "commit", Injected));
        }
        self.inner.commit(batch, applied)
    }
    fn finish(&mut self) -> Result<(), StoreError> {
        self.inner.finish()
    }
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }
    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        self.inner.scan(start, end, visit)
    }
    fn applied_index(&self) -> Result<LogIndex, StoreError> {
        self.inner.applied_index()
    }
    fn sync(&mut self) -> Result<(), StoreError> {
        self.inner.sync()
    }
    fn replace_all(
        &mut self,
        applied: LogIndex,
        next: &mut NextRecord<'_>,
    ) -> Result<(), StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::engine("failing", "replace_all", Injected));
        }
        self.inner.replace_all(applied, next)
    }
}

/// Finding 10: after the state store failed (and the group's supervisor gave up) the node
/// answered `/healthz` 200 and `/readyz` 200 and showed nothing wrong.
#[actix::test]
async fn a_failed_state_store_is_reported_by_readyz_healthz_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::local_configs(1, dir.path()).remove(0);
    let data = config.node.data_dir.clone();
    let fail = Arc::new(AtomicBool::new(false));
    let f = fail.clone();
    let (node, server, base) = start_node(config, move || {
        let inner = open_store(StorageEngine::Redb, &data)?;
        KvMachine::with_store(Box::new(FailingStore {
            inner,
            fail: f.clone(),
        }))
    })
    .await;
    let (status, _) = call("PUT", &format!("{base}/v1/kv/a"), None, Some("1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        call("GET", &format!("{base}/readyz"), None, None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call("GET", &format!("{base}/healthz"), None, None).await.0,
        StatusCode::OK
    );

    fail.store(true, Ordering::SeqCst);
    // This write cannot be applied: it is not acknowledged as a success.
    let (status, body) = call("PUT", &format!("{base}/v1/kv/b"), None, Some("2")).await;
    assert_ne!(status, StatusCode::OK, "{body}");

    let (status, body) = call("GET", &format!("{base}/readyz"), None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "storage_failed", "{body}");
    let (status, body) = call("GET", &format!("{base}/healthz"), None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "storage_failed");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("No space left on device (injected)"),
        "{body}"
    );
    let (_, status) = call("GET", &format!("{base}/v1/cluster"), None, None).await;
    assert_eq!(status["storage"]["state"], "failed", "{status}");
    assert_eq!(status["storage"]["component"], "state_machine/0");
    // Sticky: still failed after the supervisor's restarts, even once the disk "recovers".
    fail.store(false, Ordering::SeqCst);
    actix::clock::sleep(Duration::from_millis(300)).await;
    assert!(matches!(
        node.handle().storage_health().condition(),
        StorageCondition::Failed { .. }
    ));

    server.stop(true).await;
    node.shutdown().await;
}
