//! `conclave bench cluster`: a closed-loop load generator against a cluster's HTTP API
//! (DESIGN.md §7).
//!
//! Each client owns one keep-alive HTTP/1.1 connection and keeps one request in flight:
//! `PUT /v1/kv/{key}` with a `value_size`-byte body, or `GET /v1/kv/{key}?consistency=…`.
//! Keys are `key_size` decimal digits drawn uniformly from `0..keyspace`. The client speaks
//! HTTP/1.1 directly over tokio's `TcpStream` (no pooling layer, one buffer reused per
//! connection) so the generator costs little next to the cluster; `docs/performance.md`
//! compares it with wrk on the same load.
//!
//! Latency goes into HdrHistograms (µs, successful requests only, reads and writes apart);
//! completions are counted per second since the start; failures are counted by kind.

use super::report::{latency_histogram, Latency};
use crate::config::ReadLevel;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The load's shape.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClusterOptions {
    /// `host:port` HTTP addresses the clients spread over.
    pub targets: Vec<String>,
    /// Concurrent clients (connections), one request in flight each.
    pub clients: usize,
    /// Stop after this long…
    pub duration: Option<Duration>,
    /// …or after this many operations (whichever is given; both: the first reached).
    pub ops: Option<u64>,
    /// Keys are drawn from `0..keyspace`.
    pub keyspace: u64,
    /// Key length in bytes (decimal digits, zero padded).
    pub key_size: usize,
    /// Value length in bytes.
    pub value_size: usize,
    /// Fraction of operations that are reads (0 = writes only, 1 = reads only).
    pub read_fraction: f64,
    /// Read consistency of the reads.
    #[serde(serialize_with = "ser_level")]
    pub consistency: ReadLevel,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Seed of the key and operation choice.
    pub seed: u64,
    /// Worker threads of the generator's runtime.
    pub threads: usize,
}

fn ser_level<S: serde::Serializer>(l: &ReadLevel, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(level_name(*l))
}

/// The query-string spelling of a read level.
pub fn level_name(l: ReadLevel) -> &'static str {
    match l {
        ReadLevel::Linearizable => "linearizable",
        ReadLevel::Lease => "lease",
        ReadLevel::Stale => "stale",
    }
}

/// Successes of one operation type.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct OpReport {
    /// Successful operations.
    pub ok: u64,
    /// Successful operations per second over the run.
    pub per_s: f64,
    /// Latency of the successful ones.
    pub latency: Latency,
}

/// What a run produced.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ClusterReport {
    /// Wall-clock length of the run, seconds.
    pub elapsed_s: f64,
    /// Successful operations.
    pub ops: u64,
    /// Successful operations per second.
    pub ops_per_s: f64,
    /// Writes.
    pub writes: OpReport,
    /// Reads (a 404 for a key never written is a successful read).
    pub reads: OpReport,
    /// Reads that found no value.
    pub not_found: u64,
    /// Failed requests by kind (`timeout`, `connect`, `io`, `http_503`, `http_504`,
    /// `http_5xx`, `http_4xx`, `bad_response`).
    pub errors: BTreeMap<String, u64>,
    /// Sum of `errors`.
    pub errors_total: u64,
    /// Successful operations completed in each second of the run.
    pub per_second: Vec<u64>,
}

/// Why one request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No answer within the timeout.
    Timeout,
    /// The connection could not be made.
    Connect,
    /// The connection broke mid-request.
    Io,
    /// An HTTP error status.
    Status(u16),
    /// An answer that is not HTTP/1.1 as expected.
    BadResponse,
}

impl Failure {
    /// The error-table key.
    pub fn kind(self) -> String {
        match self {
            Failure::Timeout => "timeout".into(),
            Failure::Connect => "connect".into(),
            Failure::Io => "io".into(),
            Failure::Status(503) => "http_503".into(),
            Failure::Status(504) => "http_504".into(),
            Failure::Status(s) if s >= 500 => "http_5xx".into(),
            Failure::Status(_) => "http_4xx".into(),
            Failure::BadResponse => "bad_response".into(),
        }
    }
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// The parsed head of a response.
struct Head {
    status: u16,
    header_len: usize,
    content_length: usize,
}

/// Parses a response head from `buf`; `Ok(None)` when it is not complete yet.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, Failure> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > 64 * 1024 {
            return Err(Failure::BadResponse);
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| Failure::BadResponse)?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or(Failure::BadResponse)?;
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(Failure::BadResponse);
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(Failure::BadResponse)?;
    let mut content_length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(Failure::BadResponse);
        };
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| Failure::BadResponse)?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // The API answers with fixed-length bodies; anything else is unexpected here.
            return Err(Failure::BadResponse);
        }
    }
    let content_length = match (content_length, status) {
        (Some(n), _) => n,
        (None, 204 | 304) | (None, 100..=199) => 0,
        (None, _) => return Err(Failure::BadResponse),
    };
    Ok(Some(Head {
        status,
        header_len: end + 4,
        content_length,
    }))
}

impl Conn {
    async fn connect(target: &str) -> Result<Conn, Failure> {
        let stream = TcpStream::connect(target)
            .await
            .map_err(|_| Failure::Connect)?;
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Appends what one read returns to `buf`; a closed connection is an I/O failure.
    async fn read_more(&mut self, chunk: &mut [u8]) -> Result<(), Failure> {
        let n = self.stream.read(chunk).await.map_err(|_| Failure::Io)?;
        if n == 0 {
            return Err(Failure::Io);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Writes `request` and reads one response; returns its status.
    async fn round_trip(&mut self, request: &[u8]) -> Result<u16, Failure> {
        self.stream
            .write_all(request)
            .await
            .map_err(|_| Failure::Io)?;
        self.buf.clear();
        let mut chunk = [0u8; 8192];
        let head = loop {
            if let Some(h) = parse_head(&self.buf)? {
                break h;
            }
            self.read_more(&mut chunk).await?;
        };
        let total = head.header_len + head.content_length;
        while self.buf.len() < total {
            self.read_more(&mut chunk).await?;
        }
        // One request in flight: nothing may follow the body.
        if self.buf.len() > total {
            return Err(Failure::BadResponse);
        }
        Ok(head.status)
    }
}

/// SplitMix64: a small, fast, seedable generator for keys and the read/write choice.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The key with index `i`: `width` decimal digits, zero padded (the last `width` digits
/// when `i` has more).
pub fn key(i: u64, width: usize) -> String {
    let s = format!("{i:0width$}");
    s[s.len() - width..].to_owned()
}

/// Counters the progress display reads while the run goes on.
#[derive(Default)]
pub struct Live {
    /// Successful operations so far.
    pub ok: AtomicU64,
    /// Failed requests so far.
    pub errors: AtomicU64,
    issued: AtomicU64,
    stop: AtomicBool,
}

struct ClientResult {
    writes: Histogram<u64>,
    reads: Histogram<u64>,
    not_found: u64,
    errors: BTreeMap<String, u64>,
    per_second: Vec<u64>,
}

async fn client(
    id: usize,
    o: Arc<ClusterOptions>,
    live: Arc<Live>,
    start: Instant,
) -> anyhow::Result<ClientResult> {
    let target = &o.targets[id % o.targets.len()];
    let mut rng = SplitMix(o.seed ^ (id as u64).wrapping_mul(0xd1b5_4a32_d192_ed03));
    let value = vec![b'v'; o.value_size];
    let read_query = format!("?consistency={}", level_name(o.consistency));
    let mut r = ClientResult {
        writes: latency_histogram()?,
        reads: latency_histogram()?,
        not_found: 0,
        errors: BTreeMap::new(),
        per_second: Vec::new(),
    };
    let mut conn: Option<Conn> = None;
    let mut request = Vec::with_capacity(512 + o.value_size);
    loop {
        if live.stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(max) = o.ops {
            if live.issued.fetch_add(1, Ordering::Relaxed) >= max {
                break;
            }
        }
        let k = key(rng.next() % o.keyspace.max(1), o.key_size);
        let is_read = rng.unit() < o.read_fraction;
        request.clear();
        if is_read {
            request.extend_from_slice(
                format!("GET /v1/kv/{k}{read_query} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes(),
            );
        } else {
            request.extend_from_slice(
                format!(
                    "PUT /v1/kv/{k} HTTP/1.1\r\nHost: {target}\r\nContent-Length: {}\r\n\r\n",
                    value.len()
                )
                .as_bytes(),
            );
            request.extend_from_slice(&value);
        }
        let t0 = Instant::now();
        let outcome = tokio::time::timeout(o.timeout, async {
            if conn.is_none() {
                conn = Some(Conn::connect(target).await?);
            }
            match conn.as_mut() {
                Some(c) => c.round_trip(&request).await,
                None => Err(Failure::Connect),
            }
        })
        .await
        .unwrap_or(Err(Failure::Timeout));
        let done = Instant::now();
        let ok = match outcome {
            Ok(200) => true,
            Ok(404) if is_read => {
                r.not_found += 1;
                true
            }
            Ok(status) => {
                fail(&mut r, &live, Failure::Status(status));
                false
            }
            Err(f) => {
                // The connection's state is unknown: start over on a fresh one.
                conn = None;
                fail(&mut r, &live, f);
                if f == Failure::Connect {
                    // Do not spin on a node that is down.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                false
            }
        };
        if ok {
            let us = u64::try_from(done.duration_since(t0).as_micros()).unwrap_or(u64::MAX);
            if is_read {
                r.reads.saturating_record(us.max(1));
            } else {
                r.writes.saturating_record(us.max(1));
            }
            let sec = usize::try_from(done.duration_since(start).as_secs()).unwrap_or(usize::MAX);
            if sec < 100_000 {
                if r.per_second.len() <= sec {
                    r.per_second.resize(sec + 1, 0);
                }
                r.per_second[sec] += 1;
            }
            live.ok.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(r)
}

fn fail(r: &mut ClientResult, live: &Live, f: Failure) {
    *r.errors.entry(f.kind()).or_insert(0) += 1;
    live.errors.fetch_add(1, Ordering::Relaxed);
}

/// Runs the load until the duration passes or the operations are done. `on_tick` is called
/// about five times a second with the live counters (for a progress display).
pub async fn run(
    o: ClusterOptions,
    on_tick: impl Fn(&Live, Duration) + Send + 'static,
) -> anyhow::Result<ClusterReport> {
    anyhow::ensure!(!o.targets.is_empty(), "no endpoint to load");
    anyhow::ensure!(o.clients > 0, "--clients must be at least 1");
    anyhow::ensure!(
        o.duration.is_some() || o.ops.is_some(),
        "give --duration or --ops"
    );
    let o = Arc::new(o);
    let live = Arc::new(Live::default());
    let start = Instant::now();
    let tasks: Vec<_> = (0..o.clients)
        .map(|id| tokio::spawn(client(id, Arc::clone(&o), Arc::clone(&live), start)))
        .collect();
    let ticker = {
        let live = Arc::clone(&live);
        let duration = o.duration;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let elapsed = start.elapsed();
                on_tick(&live, elapsed);
                if duration.is_some_and(|d| elapsed >= d) {
                    live.stop.store(true, Ordering::Relaxed);
                }
            }
        })
    };
    let mut writes = latency_histogram()?;
    let mut reads = latency_histogram()?;
    let mut report = ClusterReport::default();
    let mut join_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(r)) => {
                writes.add(&r.writes)?;
                reads.add(&r.reads)?;
                report.not_found += r.not_found;
                for (k, v) in r.errors {
                    *report.errors.entry(k).or_insert(0) += v;
                }
                if report.per_second.len() < r.per_second.len() {
                    report.per_second.resize(r.per_second.len(), 0);
                }
                for (i, v) in r.per_second.iter().enumerate() {
                    report.per_second[i] += v;
                }
            }
            Ok(Err(e)) => join_error = Some(e),
            Err(e) => join_error = Some(anyhow::anyhow!("a client task failed: {e}")),
        }
    }
    ticker.abort();
    if let Some(e) = join_error {
        return Err(e);
    }
    let elapsed = start.elapsed();
    report.elapsed_s = elapsed.as_secs_f64();
    report.writes = op_report(&writes, elapsed);
    report.reads = op_report(&reads, elapsed);
    report.ops = report.writes.ok + report.reads.ok;
    report.ops_per_s = super::report::rate(report.ops, elapsed);
    report.errors_total = report.errors.values().sum();
    Ok(report)
}

fn op_report(h: &Histogram<u64>, elapsed: Duration) -> OpReport {
    OpReport {
        ok: h.len(),
        per_s: super::report::rate(h.len(), elapsed),
        latency: Latency::from_histogram(h),
    }
}

/// One GET over a fresh connection; returns the status and body.
pub async fn get(target: &str, path: &str, timeout: Duration) -> Result<(u16, Vec<u8>), Failure> {
    tokio::time::timeout(timeout, async {
        let mut c = Conn::connect(target).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {target}\r\n\r\n");
        let status = c.round_trip(req.as_bytes()).await?;
        let head_end = c
            .buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(0, |p| p + 4);
        Ok((status, c.buf[head_end..].to_vec()))
    })
    .await
    .unwrap_or(Err(Failure::Timeout))
}

/// The HTTP address (`host:port`) of the leader of group 0 as `target` sees it.
pub async fn find_leader(target: &str) -> anyhow::Result<Option<String>> {
    let (status, body) = get(target, "/v1/cluster", Duration::from_secs(2))
        .await
        .map_err(|f| anyhow::anyhow!("GET /v1/cluster on {target}: {}", f.kind()))?;
    anyhow::ensure!(status == 200, "GET /v1/cluster on {target}: HTTP {status}");
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let Some(leader) = v.get("leader_id").and_then(serde_json::Value::as_u64) else {
        return Ok(None);
    };
    let http = v
        .get("members")
        .and_then(serde_json::Value::as_array)
        .and_then(|ms| {
            ms.iter()
                .find(|m| m.get("id").and_then(serde_json::Value::as_u64) == Some(leader))
        })
        .and_then(|m| m.get("http"))
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);
    Ok(http)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_requested_width() {
        assert_eq!(key(42, 8), "00000042");
        assert_eq!(key(123_456_789, 8), "23456789");
        assert_eq!(key(7, 1), "7");
    }

    #[test]
    fn heads_parse_and_bad_ones_are_refused() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        let h = parse_head(ok)
            .ok()
            .flatten()
            .map(|h| (h.status, h.header_len, h.content_length));
        assert_eq!(h, Some((200, ok.len() - 5, 5)));
        assert!(matches!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-le"),
            Ok(None)
        ));
        assert!(matches!(
            parse_head(b"HTTP/1.1 503 X\r\nContent-Length: 0\r\nretry-after: 1\r\n\r\n"),
            Ok(Some(Head { status: 503, .. }))
        ));
        assert!(matches!(
            parse_head(b"SSH-2.0\r\n\r\n"),
            Err(Failure::BadResponse)
        ));
        assert!(matches!(
            parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
            Err(Failure::BadResponse)
        ));
        assert!(matches!(
            parse_head(b"HTTP/1.1 200 OK\r\n\r\n"),
            Err(Failure::BadResponse)
        ));
    }

    #[test]
    fn failures_map_to_kinds() {
        assert_eq!(Failure::Status(503).kind(), "http_503");
        assert_eq!(Failure::Status(500).kind(), "http_5xx");
        assert_eq!(Failure::Status(413).kind(), "http_4xx");
        assert_eq!(Failure::Timeout.kind(), "timeout");
    }

    #[test]
    fn splitmix_unit_is_in_range_and_roughly_uniform() {
        let mut r = SplitMix(1);
        let n = 10_000;
        let below = (0..n).filter(|_| r.unit() < 0.25).count();
        assert!((2_200..2_800).contains(&below), "{below}");
    }

    #[tokio::test]
    async fn a_dead_endpoint_is_reported_as_connect_errors() {
        // Bind then drop a listener: the port is very likely closed afterwards.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(1);
        let o = ClusterOptions {
            targets: vec![format!("127.0.0.1:{port}")],
            clients: 2,
            duration: None,
            ops: Some(10),
            keyspace: 100,
            key_size: 8,
            value_size: 16,
            read_fraction: 0.5,
            consistency: ReadLevel::Linearizable,
            timeout: Duration::from_millis(500),
            seed: 1,
            threads: 1,
        };
        let r = run(o, |_, _| {}).await.unwrap_or_default();
        assert_eq!(r.ops, 0);
        assert_eq!(r.errors.get("connect"), Some(&10));
        assert_eq!(r.errors_total, 10);
    }
}
