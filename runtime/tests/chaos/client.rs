//! Concurrent clients: put, get (linearizable and lease), compare-and-set over a handful of keys,
//! through random nodes, every invocation and its outcome recorded for the checker.
//!
//! Outcomes follow the API's contract (DESIGN.md §7): a success is a completed operation; a 503
//! ("safe to retry"), a refused connection, and any failed read certainly did not take effect
//! and are removed from the history; a timeout (504 or the client's own), a connection lost
//! mid-request or a 500 leaves a write *indeterminate* — it may take effect at any later point,
//! or never, and the checker treats it so.
//!
//! Keys rotate: every `key_period` the clients move to a fresh set of keys, so that each key's
//! sub-history stays small enough for the checker however long the run.

use conclave_sim::linearizability::{History, KvInput, KvOutput, OpId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The operations clients issue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Put,
    GetLinearizable,
    GetLease,
    Cas,
    /// A put of a key written exactly once (checked on every node at the end).
    UniquePut,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Put => "put",
            Kind::GetLinearizable => "get linearizable",
            Kind::GetLease => "get lease",
            Kind::Cas => "cas",
            Kind::UniquePut => "put unique key",
        }
    }
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Ok,
    /// Certainly not applied (removed from the history).
    Fail,
    /// Unknown (kept, never returns).
    Indeterminate,
}

/// The shared record of a run.
pub struct Recorder {
    start: Instant,
    pub history: History<KvInput, KvOutput>,
    /// `(kind, outcome)` → count.
    pub counts: BTreeMap<(Kind, Outcome), u64>,
    /// Failure reasons (error code or transport error) → count.
    pub reasons: BTreeMap<String, u64>,
    /// Every register key used.
    pub keys: std::collections::BTreeSet<String>,
    /// Unique keys whose put was acknowledged, with the value.
    pub unique_acked: BTreeMap<String, String>,
    /// Unique keys whose put is indeterminate.
    pub unique_unknown: BTreeMap<String, String>,
    /// Unique keys whose put was refused as certainly not applied (503, refused connection).
    pub unique_failed: BTreeMap<String, String>,
    /// Writes refused as certainly not applied: `(client, input, reason)`, kept for diagnosis
    /// (they are removed from the checked history).
    pub refused_writes: Vec<(u64, KvInput, String)>,
}

impl Recorder {
    pub fn new() -> Self {
        Recorder {
            start: Instant::now(),
            history: History::new(),
            counts: BTreeMap::new(),
            reasons: BTreeMap::new(),
            keys: Default::default(),
            unique_acked: BTreeMap::new(),
            unique_unknown: BTreeMap::new(),
            unique_failed: BTreeMap::new(),
            refused_writes: Vec::new(),
        }
    }

    /// Nanoseconds since the run started (one monotonic clock for every client).
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn invoke(&mut self, client: u64, input: KvInput) -> OpId {
        let at = self.now();
        self.history.invoke(client, input, at)
    }

    /// Records the end of `op`.
    pub fn finish(&mut self, op: OpId, kind: Kind, result: Result<KvOutput, Failure>) {
        self.finish_write(op, kind, None, result)
    }

    /// [`Recorder::finish`] for a write, whose input is kept if it is refused.
    pub fn finish_write(
        &mut self,
        op: OpId,
        kind: Kind,
        write: Option<(u64, KvInput)>,
        result: Result<KvOutput, Failure>,
    ) {
        if let (Some((client, input)), Err(Failure::Definite(reason))) = (write, &result) {
            self.refused_writes.push((client, input, reason.clone()));
        }
        let outcome = match result {
            Ok(output) => {
                let at = self.now();
                assert!(self.history.complete(op, output, at));
                Outcome::Ok
            }
            Err(Failure::Definite(reason)) => {
                assert!(self.history.fail(op));
                *self.reasons.entry(reason).or_default() += 1;
                Outcome::Fail
            }
            Err(Failure::Indeterminate(reason)) => {
                // A read with no answer cannot matter: the checker drops it.
                *self.reasons.entry(reason).or_default() += 1;
                Outcome::Indeterminate
            }
        };
        *self.counts.entry((kind, outcome)).or_default() += 1;
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

/// Why an operation did not complete.
#[derive(Clone, Debug)]
pub enum Failure {
    /// It certainly did not take effect.
    Definite(String),
    /// It may have taken effect.
    Indeterminate(String),
}

/// A raw HTTP answer: status and body.
type Answer = (u16, Vec<u8>);

fn error_code(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Sends a request; transport errors are classified: a failed connect never sent anything.
async fn send(req: awc::ClientRequest, body: Option<Vec<u8>>) -> Result<Answer, Failure> {
    let sent = match body {
        Some(b) => req.send_body(b).await,
        None => req.send().await,
    };
    let mut response = match sent {
        Ok(r) => r,
        // awc reports a connection closed after the request was sent, before the answer, as
        // `Connect(Disconnected)`: only the other connect errors mean nothing was sent.
        Err(awc::error::SendRequestError::Connect(e))
            if !matches!(e, awc::error::ConnectError::Disconnected) =>
        {
            return Err(Failure::Definite(format!(
                "connect: {}",
                short(&e.to_string())
            )))
        }
        Err(awc::error::SendRequestError::Timeout) => {
            return Err(Failure::Indeterminate("client timeout".to_owned()))
        }
        Err(e) => {
            return Err(Failure::Indeterminate(format!(
                "transport: {}",
                short(&e.to_string())
            )))
        }
    };
    let status = response.status().as_u16();
    match response.body().limit(1 << 20).await {
        Ok(b) => Ok((status, b.to_vec())),
        Err(e) => Err(Failure::Indeterminate(format!(
            "body: {}",
            short(&e.to_string())
        ))),
    }
}

fn short(s: &str) -> String {
    s.chars().take(60).collect()
}

/// A write's answer: `ok_output` for 200 (and 409 for CAS), else classified by status.
fn write_outcome(answer: Result<Answer, Failure>, cas: bool) -> Result<KvOutput, Failure> {
    let (status, body) = answer?;
    match status {
        200 if cas => Ok(KvOutput::Cas { ok: true }),
        200 => Ok(KvOutput::Put),
        409 if cas => Ok(KvOutput::Cas { ok: false }),
        // The contract: 503 means the write certainly did not apply ("safe to retry").
        503 => Err(Failure::Definite(format!("503 {}", error_code(&body)))),
        504 => Err(Failure::Indeterminate(format!("504 {}", error_code(&body)))),
        s => Err(Failure::Indeterminate(format!("{s} {}", error_code(&body)))),
    }
}

fn read_outcome(answer: Result<Answer, Failure>) -> Result<KvOutput, Failure> {
    let (status, body) = answer.map_err(|f| match f {
        Failure::Definite(r) | Failure::Indeterminate(r) => Failure::Definite(r),
    })?;
    match status {
        200 => match String::from_utf8(body) {
            Ok(v) => Ok(KvOutput::Get(Some(v))),
            Err(_) => Err(Failure::Definite("non-UTF-8 value".to_owned())),
        },
        404 if error_code(&body) == "key_not_found" => Ok(KvOutput::Get(None)),
        s => Err(Failure::Definite(format!("{s} {}", error_code(&body)))),
    }
}

/// The HTTP requests of the workload, against one node.
pub struct Api {
    http: awc::Client,
}

impl Api {
    pub fn new(timeout: Duration) -> Self {
        Api {
            http: awc::Client::builder()
                .timeout(timeout)
                .disable_redirects()
                .finish(),
        }
    }

    pub async fn put(&self, endpoint: &str, key: &str, value: &str) -> Result<KvOutput, Failure> {
        let url = format!("{endpoint}/v1/kv/{key}");
        write_outcome(
            send(self.http.put(url), Some(value.as_bytes().to_vec())).await,
            false,
        )
    }

    pub async fn get(&self, endpoint: &str, key: &str, level: &str) -> Result<KvOutput, Failure> {
        let url = format!("{endpoint}/v1/kv/{key}?consistency={level}");
        read_outcome(send(self.http.get(url), None).await)
    }

    pub async fn cas(
        &self,
        endpoint: &str,
        key: &str,
        expected: Option<&str>,
        new: Option<&str>,
    ) -> Result<KvOutput, Failure> {
        let url = format!("{endpoint}/v1/kv/{key}/cas");
        let body = serde_json::json!({ "expected": expected, "value": new }).to_string();
        let req = self
            .http
            .post(url)
            .insert_header(("content-type", "application/json"));
        write_outcome(send(req, Some(body.into_bytes())).await, true)
    }
}

/// What every client needs.
#[derive(Clone)]
pub struct Workload {
    pub endpoints: Vec<String>,
    pub keys_per_period: usize,
    pub key_period: Duration,
    pub timeout: Duration,
    /// Think time between a client's operations (upper bound, uniform).
    pub think: Duration,
    /// Only read at this level (`None`: both linearizable and lease).
    pub read_level: Option<&'static str>,
}

/// One client: issues operations one at a time until `stop`.
pub async fn run_client(
    id: u64,
    seed: u64,
    w: Workload,
    rec: Rc<RefCell<Recorder>>,
    stop: Rc<std::cell::Cell<bool>>,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (id << 40) ^ 0xC1_1E47);
    let api = Api::new(w.timeout);
    let mut seq = 0u64;
    let started = Instant::now();
    // The last value this client saw per key: what its compare-and-sets expect.
    let mut seen: BTreeMap<String, Option<String>> = BTreeMap::new();
    while !stop.get() {
        let period = (started.elapsed().as_millis() / w.key_period.as_millis().max(1)) as u64;
        let key = format!("p{period}-k{}", rng.random_range(0..w.keys_per_period));
        let endpoint = &w.endpoints[rng.random_range(0..w.endpoints.len())];
        seq += 1;
        let value = format!("c{id}.{seq}");
        let roll = rng.random_range(0..100);
        let kind = match roll {
            0..30 => Kind::Put,
            30..52 => Kind::GetLinearizable,
            52..72 => Kind::GetLease,
            72..97 => Kind::Cas,
            _ => Kind::UniquePut,
        };
        let kind = match (kind, w.read_level) {
            (Kind::GetLinearizable | Kind::GetLease, Some("lease")) => Kind::GetLease,
            (Kind::GetLinearizable | Kind::GetLease, Some(_)) => Kind::GetLinearizable,
            (k, _) => k,
        };
        match kind {
            Kind::Put => {
                rec.borrow_mut().keys.insert(key.clone());
                let input = KvInput::Put {
                    key: key.clone(),
                    value: value.clone(),
                };
                let op = rec.borrow_mut().invoke(id, input.clone());
                let r = api.put(endpoint, &key, &value).await;
                if r.is_ok() {
                    seen.insert(key, Some(value));
                }
                rec.borrow_mut()
                    .finish_write(op, kind, Some((id, input)), r);
            }
            Kind::GetLinearizable | Kind::GetLease => {
                let level = if kind == Kind::GetLease {
                    "lease"
                } else {
                    "linearizable"
                };
                rec.borrow_mut().keys.insert(key.clone());
                let op = rec
                    .borrow_mut()
                    .invoke(id, KvInput::Get { key: key.clone() });
                let r = api.get(endpoint, &key, level).await;
                if let Ok(KvOutput::Get(v)) = &r {
                    seen.insert(key, v.clone());
                }
                rec.borrow_mut().finish(op, kind, r);
            }
            Kind::Cas => {
                rec.borrow_mut().keys.insert(key.clone());
                let expected = seen.get(&key).cloned().flatten();
                let input = KvInput::Cas {
                    key: key.clone(),
                    expected: expected.clone(),
                    new: Some(value.clone()),
                };
                let op = rec.borrow_mut().invoke(id, input.clone());
                let r = api
                    .cas(endpoint, &key, expected.as_deref(), Some(&value))
                    .await;
                match &r {
                    Ok(KvOutput::Cas { ok: true }) => {
                        seen.insert(key, Some(value));
                    }
                    // Learn the current value on the next read.
                    _ => {
                        seen.remove(&key);
                    }
                }
                rec.borrow_mut()
                    .finish_write(op, kind, Some((id, input)), r);
            }
            Kind::UniquePut => {
                let key = format!("u-c{id}-{seq}");
                let op = rec.borrow_mut().invoke(
                    id,
                    KvInput::Put {
                        key: key.clone(),
                        value: value.clone(),
                    },
                );
                let r = api.put(endpoint, &key, &value).await;
                {
                    let mut rb = rec.borrow_mut();
                    match &r {
                        Ok(_) => {
                            rb.unique_acked.insert(key, value);
                        }
                        Err(Failure::Indeterminate(_)) => {
                            rb.unique_unknown.insert(key, value);
                        }
                        Err(Failure::Definite(_)) => {
                            rb.unique_failed.insert(key, value);
                        }
                    }
                }
                rec.borrow_mut().finish(op, kind, r);
            }
        }
        if !w.think.is_zero() {
            let ms = rng.random_range(0..=w.think.as_millis() as u64);
            actix::clock::sleep(Duration::from_millis(ms)).await;
        }
    }
}
