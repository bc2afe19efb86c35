//! Shared test helpers: a metrics recorder that tests can query, message type, transports.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use conclave_transport::{NodeId, Transport, TransportConfig};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use serde::{Deserialize, Serialize};

/// Counters keyed by name, each with its sorted labels.
#[derive(Clone, Default)]
pub struct TestRecorder {
    counters: Arc<Mutex<HashMap<Key, Arc<AtomicU64>>>>,
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut map = self.counters.lock().unwrap();
        Counter::from_arc(Arc::clone(map.entry(key.clone()).or_default()))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

impl TestRecorder {
    /// Sum of every counter named `name` whose labels include all of `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let map = self.counters.lock().unwrap();
        map.iter()
            .filter(|(k, _)| k.name() == name)
            .filter(|(k, _)| {
                labels
                    .iter()
                    .all(|(lk, lv)| k.labels().any(|l| l.key() == *lk && l.value() == *lv))
            })
            .map(|(_, v)| v.load(Ordering::Relaxed))
            .sum()
    }
}

/// The process-wide recorder; installed on first use (before any transport registers handles).
pub fn metrics() -> &'static TestRecorder {
    static REC: OnceLock<TestRecorder> = OnceLock::new();
    REC.get_or_init(|| {
        let rec = TestRecorder::default();
        metrics::set_global_recorder(rec.clone()).expect("first recorder");
        rec
    })
}

/// Polls `cond` every 10 ms for up to 10 s.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// A Raft-like message: a group id, a sequence number, a payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Msg {
    pub group: u32,
    pub seq: u64,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl Msg {
    pub fn new(seq: u64, size: usize) -> Self {
        Self {
            group: (seq % 7) as u32,
            seq,
            payload: vec![(seq % 251) as u8; size],
        }
    }
}

/// A config on a free loopback port with short timers, so failure tests run fast.
pub fn config(node: NodeId, cluster: &str) -> TransportConfig {
    let mut cfg = TransportConfig::new(node, cluster, "127.0.0.1:0".parse().unwrap());
    cfg.backoff_base = Duration::from_millis(10);
    cfg.backoff_cap = Duration::from_millis(100);
    cfg.handshake_timeout = Duration::from_secs(2);
    cfg
}

pub type Rx = conclave_transport::InboundReceiver<Msg>;

/// Binds a transport with an inbound channel of `cap`.
pub async fn start(cfg: TransportConfig, cap: usize) -> (Transport<Msg>, SocketAddr, Rx) {
    let (tx, rx) = conclave_transport::inbound(cap);
    let (t, addr) = Transport::bind(cfg, tx).await.expect("bind");
    (t, addr, rx)
}

/// Receives one message or fails after 10 s.
pub async fn recv(rx: &mut Rx) -> (NodeId, Msg) {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("timed out waiting for a message")
        .expect("inbound closed")
}
