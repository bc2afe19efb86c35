//! The HTTP layer's metrics (DESIGN.md §8): `conclave_http_requests_total{route,method,status}`
//! and the `conclave_http_request_duration_seconds{route}` histogram, captured by a test
//! recorder installed as the process's global recorder (this binary holds only this test).

#![allow(clippy::unwrap_used)] // Tests (and their shared double) unwrap freely.

mod http_support;

use conclave_core::ids::NodeId;
use http_support::{Double, TestServer};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

#[derive(Default)]
struct Samples(AtomicU64);

impl metrics::HistogramFn for Samples {
    fn record(&self, value: f64) {
        assert!((0.0..60.0).contains(&value), "implausible latency {value}");
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counters and histogram sample counts by `name{label=value,…}` (labels in emission order).
#[derive(Default)]
struct Capture {
    counters: Mutex<HashMap<String, Arc<AtomicU64>>>,
    histograms: Mutex<HashMap<String, Arc<Samples>>>,
}

fn render(key: &Key) -> String {
    let labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

struct Handle(&'static Capture);

impl Recorder for Handle {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut map = self.0.counters.lock().unwrap();
        Counter::from_arc(map.entry(render(key)).or_default().clone())
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let mut map = self.0.histograms.lock().unwrap();
        Histogram::from_arc(map.entry(render(key)).or_default().clone())
    }
}

fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let c: &'static Capture = Box::leak(Box::default());
        metrics::set_global_recorder(Handle(c)).unwrap();
        c
    })
}

fn counter(c: &Capture, key: &str) -> u64 {
    c.counters
        .lock()
        .unwrap()
        .get(key)
        .map_or(0, |v| v.load(Ordering::Relaxed))
}

#[actix_web::test]
async fn requests_are_counted_by_route_method_and_status() {
    let c = capture();
    let s = TestServer::start(Double::new(NodeId::new(1)), 10);
    let client = awc::Client::default();
    for key in ["a", "b", "c"] {
        let r = client
            .put(s.url(&format!("/v1/kv/{key}")))
            .send_body("v")
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = client.get(s.url("/v1/kv/missing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = client
        .get(s.url("/v1/kv/a?consistency=bogus"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = client.get(s.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    s.stop().await;

    // Routes are labelled by pattern, not by key, so the label set stays bounded.
    assert_eq!(
        counter(
            c,
            "conclave_http_requests_total{route=/v1/kv/{key},method=PUT,status=200}"
        ),
        3
    );
    assert_eq!(
        counter(
            c,
            "conclave_http_requests_total{route=/v1/kv/{key},method=GET,status=404}"
        ),
        1
    );
    assert_eq!(
        counter(
            c,
            "conclave_http_requests_total{route=/v1/kv/{key},method=GET,status=400}"
        ),
        1
    );
    assert_eq!(
        counter(
            c,
            "conclave_http_requests_total{route=unmatched,method=GET,status=404}"
        ),
        1
    );
    let samples = c
        .histograms
        .lock()
        .unwrap()
        .get("conclave_http_request_duration_seconds{route=/v1/kv/{key}}")
        .map(|h| h.0.load(Ordering::Relaxed));
    assert_eq!(samples, Some(5));
}
