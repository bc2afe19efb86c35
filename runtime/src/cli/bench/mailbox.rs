//! `conclave bench mailbox`: the runtime's message paths against tokio and crossbeam
//! channels measured in the same run.
//!
//! Every path moves the same message ([`Tell`]/[`Ask`]: one `u64` plus an optional payload
//! of `payload` bytes) and the same number of them; a run's time starts when the producers
//! are released and stops when the consumer has received the last message. Paths:
//!
//! | path | what it measures | baseline |
//! |---|---|---|
//! | `actix-local` | `Addr::do_send` to an actor on the producers' arbiter | `tokio-local` |
//! | `conclave-local` | [`BatchSender::do_send`] to an actor on the producers' arbiter | `tokio-local` |
//! | `actix-cross` | `Addr::do_send` from producer threads to an actor on another arbiter | `tokio-cross` |
//! | `conclave-cross` | [`BatchSender::do_send`] from producer threads to an actor on another arbiter | `tokio-cross` |
//! | `actix-request-reply` | `Addr::send(..).await` (bounded mailbox of `capacity`) across threads, one request in flight per producer | `tokio-request-reply` |
//! | `actix-try-send-full` | `Addr::try_send` into a full bounded mailbox (every attempt refused) | `tokio-try-send-full` |
//! | `conclave-try-send-full` | [`BatchSender::try_send`] into a full bounded mailbox | `tokio-try-send-full` |
//!
//! Baselines: `tokio-local` (unbounded `tokio::sync::mpsc`, producers and consumer tasks on
//! one current-thread runtime), `tokio-cross` (the same channel, producer threads, consumer
//! task on another thread's runtime), `crossbeam-cross` (unbounded `crossbeam-channel`, a
//! consumer thread), `tokio-request-reply` (bounded mpsc of `capacity` + a oneshot reply per
//! request), `tokio-try-send-full` and `crossbeam-try-send-full` (`try_send` on a full bounded
//! channel). Tokio consumers use `recv_many`, the fastest way to drain a tokio channel, so the
//! baselines are as strong as tokio gets.

use actix::prelude::*;
use conclave_actors::mailbox::{batch_sender, Batch, BatchSendError, BatchSender};
use serde::Serialize;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// The message every tell path carries: one `u64` and `payload` bytes.
pub struct Tell {
    /// A sequence number (summed by the consumer so no path can skip work).
    pub n: u64,
    /// Optional payload; empty boxes do not allocate.
    pub payload: Box<[u8]>,
}

impl Message for Tell {
    type Result = ();
}

/// The request of the request-reply paths; the reply is `n + 1`.
pub struct Ask {
    /// The number to echo back incremented.
    pub n: u64,
    /// Optional payload.
    pub payload: Box<[u8]>,
}

impl Message for Ask {
    type Result = u64;
}

fn payload(size: usize) -> Box<[u8]> {
    vec![0u8; size].into_boxed_slice()
}

/// What the user varies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MailboxOptions {
    /// Messages per path and round (split evenly between producers).
    pub messages: u64,
    /// Producer tasks (same-thread paths) or threads (cross-thread paths).
    pub producers: usize,
    /// Bound of the bounded mailboxes (request-reply, try-send-full).
    pub capacity: usize,
    /// Extra bytes carried by every message.
    pub payload: usize,
    /// Rounds per path; the reported rate is the median round's.
    pub rounds: usize,
}

impl MailboxOptions {
    /// Messages each producer sends (the total is rounded down to a multiple of producers).
    pub fn per_producer(&self) -> u64 {
        self.messages / self.producers as u64
    }

    /// The messages one round of a path actually moves.
    pub fn total(&self) -> u64 {
        self.per_producer() * self.producers as u64
    }
}

/// Whether a row is the runtime's or a reference channel's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathKind {
    /// Plain actix, as the runtime uses it.
    Actix,
    /// conclave-actors' batched mailbox.
    Conclave,
    /// A reference channel.
    Baseline,
}

/// One measured message path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MailboxPath {
    /// See the module docs.
    ActixLocal,
    /// See the module docs.
    ConclaveLocal,
    /// See the module docs.
    TokioLocal,
    /// See the module docs.
    ActixCross,
    /// See the module docs.
    ConclaveCross,
    /// See the module docs.
    TokioCross,
    /// See the module docs.
    CrossbeamCross,
    /// See the module docs.
    ActixRequestReply,
    /// See the module docs.
    TokioRequestReply,
    /// See the module docs.
    ActixTrySendFull,
    /// See the module docs.
    ConclaveTrySendFull,
    /// See the module docs.
    TokioTrySendFull,
    /// See the module docs.
    CrossbeamTrySendFull,
}

impl MailboxPath {
    /// Every path, baselines right after the paths they anchor.
    pub const ALL: [MailboxPath; 13] = [
        MailboxPath::TokioLocal,
        MailboxPath::ActixLocal,
        MailboxPath::ConclaveLocal,
        MailboxPath::TokioCross,
        MailboxPath::CrossbeamCross,
        MailboxPath::ActixCross,
        MailboxPath::ConclaveCross,
        MailboxPath::TokioRequestReply,
        MailboxPath::ActixRequestReply,
        MailboxPath::TokioTrySendFull,
        MailboxPath::CrossbeamTrySendFull,
        MailboxPath::ActixTrySendFull,
        MailboxPath::ConclaveTrySendFull,
    ];

    /// The row's name.
    pub fn name(self) -> &'static str {
        match self {
            MailboxPath::ActixLocal => "actix-local",
            MailboxPath::ConclaveLocal => "conclave-local",
            MailboxPath::TokioLocal => "tokio-local",
            MailboxPath::ActixCross => "actix-cross",
            MailboxPath::ConclaveCross => "conclave-cross",
            MailboxPath::TokioCross => "tokio-cross",
            MailboxPath::CrossbeamCross => "crossbeam-cross",
            MailboxPath::ActixRequestReply => "actix-request-reply",
            MailboxPath::TokioRequestReply => "tokio-request-reply",
            MailboxPath::ActixTrySendFull => "actix-try-send-full",
            MailboxPath::ConclaveTrySendFull => "conclave-try-send-full",
            MailboxPath::TokioTrySendFull => "tokio-try-send-full",
            MailboxPath::CrossbeamTrySendFull => "crossbeam-try-send-full",
        }
    }

    /// Which side it is on.
    pub fn kind(self) -> PathKind {
        match self {
            MailboxPath::ActixLocal
            | MailboxPath::ActixCross
            | MailboxPath::ActixRequestReply
            | MailboxPath::ActixTrySendFull => PathKind::Actix,
            MailboxPath::ConclaveLocal
            | MailboxPath::ConclaveCross
            | MailboxPath::ConclaveTrySendFull => PathKind::Conclave,
            _ => PathKind::Baseline,
        }
    }

    /// The baseline a runtime path is compared with (`None` for baselines).
    pub fn baseline(self) -> Option<MailboxPath> {
        match self {
            MailboxPath::ActixLocal | MailboxPath::ConclaveLocal => Some(MailboxPath::TokioLocal),
            MailboxPath::ActixCross | MailboxPath::ConclaveCross => Some(MailboxPath::TokioCross),
            MailboxPath::ActixRequestReply => Some(MailboxPath::TokioRequestReply),
            MailboxPath::ActixTrySendFull | MailboxPath::ConclaveTrySendFull => {
                Some(MailboxPath::TokioTrySendFull)
            }
            _ => None,
        }
    }

    /// Runs one round and returns how long it took to move [`MailboxOptions::total`]
    /// messages. Fails when a path did not behave (a message lost, a full mailbox accepting).
    pub fn run(self, o: &MailboxOptions) -> anyhow::Result<Duration> {
        match self {
            MailboxPath::ActixLocal => actix_local(o, false),
            MailboxPath::ConclaveLocal => actix_local(o, true),
            MailboxPath::TokioLocal => tokio_local(o),
            MailboxPath::ActixCross => actix_cross(o, false),
            MailboxPath::ConclaveCross => actix_cross(o, true),
            MailboxPath::TokioCross => tokio_cross(o),
            MailboxPath::CrossbeamCross => crossbeam_cross(o),
            MailboxPath::ActixRequestReply => actix_request_reply(o),
            MailboxPath::TokioRequestReply => tokio_request_reply(o),
            MailboxPath::ActixTrySendFull => actix_try_send_full(o),
            MailboxPath::ConclaveTrySendFull => conclave_try_send_full(o),
            MailboxPath::TokioTrySendFull => tokio_try_send_full(o),
            MailboxPath::CrossbeamTrySendFull => crossbeam_try_send_full(o),
        }
    }
}

/// Counts what it receives and reports the sum once `expected` messages arrived.
struct Counter {
    expected: u64,
    seen: u64,
    sum: u64,
    done: Option<tokio::sync::oneshot::Sender<u64>>,
}

impl Counter {
    fn new(expected: u64, done: tokio::sync::oneshot::Sender<u64>) -> Counter {
        Counter {
            expected,
            seen: 0,
            sum: 0,
            done: Some(done),
        }
    }

    fn count(&mut self, m: &Tell) {
        self.seen += 1;
        self.sum = self.sum.wrapping_add(m.n + m.payload.len() as u64);
        if self.seen == self.expected {
            if let Some(tx) = self.done.take() {
                let _ = tx.send(self.sum);
            }
        }
    }
}

impl Actor for Counter {
    type Context = Context<Self>;
}

impl Handler<Tell> for Counter {
    type Result = ();
    fn handle(&mut self, m: Tell, _: &mut Context<Self>) {
        self.count(&m);
    }
}

impl Handler<Batch<Tell>> for Counter {
    type Result = ();
    fn handle(&mut self, b: Batch<Tell>, _: &mut Context<Self>) {
        // Straight out of the mailbox's chunks, as `drain_tokio` takes tokio's messages
        // straight out of its blocks (`recv_many` into a buffer of at most 1024).
        b.drain_each(|m| self.count(&m));
    }
}

/// The sum a consumer must report: every producer sends `0..per`.
fn expected_sum(o: &MailboxOptions) -> u64 {
    let per = o.per_producer();
    let one = per.wrapping_mul(per.wrapping_sub(1)) / 2 + per * o.payload as u64;
    one.wrapping_mul(o.producers as u64)
}

fn check_sum(path: &str, got: u64, o: &MailboxOptions) -> anyhow::Result<()> {
    let want = expected_sum(o);
    anyhow::ensure!(
        got == want,
        "{path}: the consumer's checksum {got} differs from {want}: messages were lost"
    );
    Ok(())
}

/// Either a plain actix address or a batched sender to the same actor.
#[derive(Clone)]
enum Target {
    Addr(Addr<Counter>),
    Batched(BatchSender<Tell>),
}

impl Target {
    fn new(addr: Addr<Counter>, batched: bool) -> Target {
        if batched {
            Target::Batched(batch_sender(addr.recipient(), None))
        } else {
            Target::Addr(addr)
        }
    }

    fn tell_all(&self, per: u64, size: usize) -> anyhow::Result<()> {
        match self {
            Target::Addr(a) => {
                for n in 0..per {
                    a.do_send(Tell {
                        n,
                        payload: payload(size),
                    });
                }
            }
            Target::Batched(s) => {
                for n in 0..per {
                    s.do_send(Tell {
                        n,
                        payload: payload(size),
                    })
                    .map_err(|_| anyhow::anyhow!("the consumer stopped"))?;
                }
            }
        }
        Ok(())
    }
}

fn actix_local(o: &MailboxOptions, batched: bool) -> anyhow::Result<Duration> {
    let o = *o;
    let name = if batched {
        "conclave-local"
    } else {
        "actix-local"
    };
    let (elapsed, sum) = System::new().block_on(async move {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let addr = Counter::new(o.total(), tx).start();
        let target = Target::new(addr, batched);
        let start = Instant::now();
        for _ in 0..o.producers {
            let t = target.clone();
            actix::spawn(async move {
                let _ = t.tell_all(o.per_producer(), o.payload);
            });
        }
        let sum = rx.await;
        (start.elapsed(), sum)
    });
    check_sum(name, sum?, &o)?;
    Ok(elapsed)
}

fn tokio_local(o: &MailboxOptions) -> anyhow::Result<Duration> {
    let o = *o;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let local = tokio::task::LocalSet::new();
    let (elapsed, sum) = local.block_on(&rt, async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Tell>();
        let start = Instant::now();
        for _ in 0..o.producers {
            let tx = tx.clone();
            tokio::task::spawn_local(async move {
                for n in 0..o.per_producer() {
                    let _ = tx.send(Tell {
                        n,
                        payload: payload(o.payload),
                    });
                }
            });
        }
        drop(tx);
        let sum = drain_tokio(&mut rx, o.total()).await;
        (start.elapsed(), sum)
    });
    check_sum("tokio-local", sum, &o)?;
    Ok(elapsed)
}

async fn drain_tokio(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Tell>, total: u64) -> u64 {
    let mut buf = Vec::with_capacity(1024);
    let (mut seen, mut sum) = (0u64, 0u64);
    while seen < total {
        if rx.recv_many(&mut buf, 1024).await == 0 {
            break;
        }
        for m in buf.drain(..) {
            seen += 1;
            sum = sum.wrapping_add(m.n + m.payload.len() as u64);
        }
    }
    sum
}

/// Starts `producers` threads that wait on a barrier, then run `work`; returns the barrier
/// (the caller's wait releases them) and their handles.
fn producers<F>(n: usize, work: F) -> (Arc<Barrier>, Vec<std::thread::JoinHandle<()>>)
where
    F: Fn() + Send + Sync + Clone + 'static,
{
    let barrier = Arc::new(Barrier::new(n + 1));
    let handles = (0..n)
        .map(|_| {
            let b = Arc::clone(&barrier);
            let w = work.clone();
            std::thread::spawn(move || {
                b.wait();
                w();
            })
        })
        .collect();
    (barrier, handles)
}

fn join_all(handles: Vec<std::thread::JoinHandle<()>>) -> anyhow::Result<()> {
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("a producer thread panicked"))?;
    }
    Ok(())
}

fn actix_cross(o: &MailboxOptions, batched: bool) -> anyhow::Result<Duration> {
    let o = *o;
    let name = if batched {
        "conclave-cross"
    } else {
        "actix-cross"
    };
    let _sys = System::new();
    let arbiter = Arbiter::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let counter = Counter::new(o.total(), tx);
    let addr = Counter::start_in_arbiter(&arbiter.handle(), move |_| counter);
    let target = Target::new(addr, batched);
    let (barrier, handles) = producers(o.producers, move || {
        let _ = target.tell_all(o.per_producer(), o.payload);
    });
    barrier.wait();
    let start = Instant::now();
    let sum = rx.blocking_recv();
    let elapsed = start.elapsed();
    join_all(handles)?;
    arbiter.stop();
    let _ = arbiter.join();
    check_sum(name, sum?, &o)?;
    Ok(elapsed)
}

fn tokio_cross(o: &MailboxOptions) -> anyhow::Result<Duration> {
    let o = *o;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Tell>();
    let consumer = std::thread::spawn(move || -> anyhow::Result<u64> {
        let rt = tokio::runtime::Builder::new_current_thread().build()?;
        Ok(rt.block_on(drain_tokio(&mut rx, o.total())))
    });
    let (barrier, handles) = producers(o.producers, move || {
        for n in 0..o.per_producer() {
            let _ = tx.send(Tell {
                n,
                payload: payload(o.payload),
            });
        }
    });
    barrier.wait();
    let start = Instant::now();
    let sum = consumer
        .join()
        .map_err(|_| anyhow::anyhow!("the consumer thread panicked"))??;
    let elapsed = start.elapsed();
    join_all(handles)?;
    check_sum("tokio-cross", sum, &o)?;
    Ok(elapsed)
}

fn crossbeam_cross(o: &MailboxOptions) -> anyhow::Result<Duration> {
    let o = *o;
    let (tx, rx) = crossbeam_channel::unbounded::<Tell>();
    let consumer = std::thread::spawn(move || {
        let mut sum = 0u64;
        for _ in 0..o.total() {
            match rx.recv() {
                Ok(m) => sum = sum.wrapping_add(m.n + m.payload.len() as u64),
                Err(_) => break,
            }
        }
        sum
    });
    let (barrier, handles) = producers(o.producers, move || {
        for n in 0..o.per_producer() {
            let _ = tx.send(Tell {
                n,
                payload: payload(o.payload),
            });
        }
    });
    barrier.wait();
    let start = Instant::now();
    let sum = consumer
        .join()
        .map_err(|_| anyhow::anyhow!("the consumer thread panicked"))?;
    let elapsed = start.elapsed();
    join_all(handles)?;
    check_sum("crossbeam-cross", sum, &o)?;
    Ok(elapsed)
}

/// Answers every [`Ask`] with `n + 1`, from a mailbox bounded to `capacity`.
struct Replier {
    capacity: usize,
}

impl Actor for Replier {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.capacity);
    }
}

impl Handler<Ask> for Replier {
    type Result = u64;
    fn handle(&mut self, m: Ask, _: &mut Context<Self>) -> u64 {
        m.n + 1 + m.payload.len() as u64
    }
}

/// Each producer thread runs its own current-thread runtime and awaits `ask(n)` in turn;
/// returns the elapsed time and the sum of replies.
fn request_reply<F, Fut>(o: &MailboxOptions, ask: F) -> anyhow::Result<(Duration, u64)>
where
    F: Fn(u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Option<u64>>,
{
    let o = *o;
    let sums = Arc::new(parking_lot::Mutex::new((0u64, 0u64)));
    let sums2 = Arc::clone(&sums);
    let (barrier, handles) = producers(o.producers, move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
            return;
        };
        let (mut ok, mut sum) = (0u64, 0u64);
        rt.block_on(async {
            for n in 0..o.per_producer() {
                if let Some(r) = ask(n).await {
                    ok += 1;
                    sum = sum.wrapping_add(r);
                }
            }
        });
        let mut s = sums2.lock();
        s.0 += ok;
        s.1 = s.1.wrapping_add(sum);
    });
    barrier.wait();
    let start = Instant::now();
    join_all(handles)?;
    let elapsed = start.elapsed();
    let (ok, sum) = *sums.lock();
    anyhow::ensure!(
        ok == o.total(),
        "{} of {} requests were answered",
        ok,
        o.total()
    );
    // Replies are n + 1 + payload: the tell checksum plus one per request.
    Ok((elapsed, sum.wrapping_sub(o.total())))
}

fn actix_request_reply(o: &MailboxOptions) -> anyhow::Result<Duration> {
    let _sys = System::new();
    let arbiter = Arbiter::new();
    let capacity = o.capacity;
    let addr = Replier::start_in_arbiter(&arbiter.handle(), move |_| Replier { capacity });
    let size = o.payload;
    let result = request_reply(o, move |n| {
        let send = addr.send(Ask {
            n,
            payload: payload(size),
        });
        async move { send.await.ok() }
    });
    arbiter.stop();
    let _ = arbiter.join();
    let (elapsed, sum) = result?;
    check_sum("actix-request-reply", sum, o)?;
    Ok(elapsed)
}

fn tokio_request_reply(o: &MailboxOptions) -> anyhow::Result<Duration> {
    type Request = (Ask, tokio::sync::oneshot::Sender<u64>);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Request>(o.capacity.max(1));
    let server = std::thread::spawn(move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread().build()?;
        rt.block_on(async {
            let mut buf = Vec::with_capacity(1024);
            while rx.recv_many(&mut buf, 1024).await > 0 {
                for (m, reply) in buf.drain(..) {
                    let _ = reply.send(m.n + 1 + m.payload.len() as u64);
                }
            }
        });
        Ok(())
    });
    let size = o.payload;
    let result = request_reply(o, move |n| {
        let tx = tx.clone();
        async move {
            let (rtx, rrx) = tokio::sync::oneshot::channel();
            tx.send((
                Ask {
                    n,
                    payload: payload(size),
                },
                rtx,
            ))
            .await
            .ok()?;
            rrx.await.ok()
        }
    });
    // Every sender is gone once the producers finished: the server's loop ends.
    server
        .join()
        .map_err(|_| anyhow::anyhow!("the server thread panicked"))??;
    let (elapsed, sum) = result?;
    check_sum("tokio-request-reply", sum, o)?;
    Ok(elapsed)
}

/// Times `total` calls of `attempt`, each of which must be refused.
fn time_refusals(total: u64, mut attempt: impl FnMut(u64) -> bool) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut refused = 0u64;
    for n in 0..total {
        if attempt(n) {
            refused += 1;
        }
    }
    let elapsed = start.elapsed();
    anyhow::ensure!(
        refused == total,
        "a full mailbox accepted {} of {total} messages",
        total - refused
    );
    Ok(elapsed)
}

/// Never runs: its mailbox stays full because the test never yields to its arbiter.
struct Sink;

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<Tell> for Sink {
    type Result = ();
    fn handle(&mut self, _: Tell, _: &mut Context<Self>) {}
}

impl Handler<Batch<Tell>> for Sink {
    type Result = ();
    fn handle(&mut self, _: Batch<Tell>, _: &mut Context<Self>) {}
}

fn actix_try_send_full(o: &MailboxOptions) -> anyhow::Result<Duration> {
    let o = *o;
    System::new().block_on(async move {
        let addr = Sink::create(|ctx| {
            ctx.set_mailbox_capacity(o.capacity);
            Sink
        });
        // Fill: actix accepts one message past the bound and parks the sender.
        let mut filled = 0usize;
        while addr
            .try_send(Tell {
                n: 0,
                payload: payload(o.payload),
            })
            .is_ok()
        {
            filled += 1;
            anyhow::ensure!(filled <= o.capacity + 1, "the mailbox never filled");
        }
        time_refusals(o.total(), |n| {
            matches!(
                addr.try_send(Tell {
                    n,
                    payload: payload(o.payload)
                }),
                Err(SendError::Full(_))
            )
        })
    })
}

fn conclave_try_send_full(o: &MailboxOptions) -> anyhow::Result<Duration> {
    let o = *o;
    System::new().block_on(async move {
        let addr = Sink.start();
        let s = batch_sender(addr.recipient::<Batch<Tell>>(), Some(o.capacity));
        for _ in 0..o.capacity {
            s.try_send(Tell {
                n: 0,
                payload: payload(o.payload),
            })
            .map_err(|_| anyhow::anyhow!("an empty mailbox refused a message"))?;
        }
        time_refusals(o.total(), |n| {
            matches!(
                s.try_send(Tell {
                    n,
                    payload: payload(o.payload)
                }),
                Err(BatchSendError::Full(_))
            )
        })
    })
}

fn tokio_try_send_full(o: &MailboxOptions) -> anyhow::Result<Duration> {
    let (tx, _rx) = tokio::sync::mpsc::channel::<Tell>(o.capacity.max(1));
    while tx
        .try_send(Tell {
            n: 0,
            payload: payload(o.payload),
        })
        .is_ok()
    {}
    time_refusals(o.total(), |n| {
        matches!(
            tx.try_send(Tell {
                n,
                payload: payload(o.payload)
            }),
            Err(tokio::sync::mpsc::error::TrySendError::Full(_))
        )
    })
}

fn crossbeam_try_send_full(o: &MailboxOptions) -> anyhow::Result<Duration> {
    let (tx, _rx) = crossbeam_channel::bounded::<Tell>(o.capacity.max(1));
    while tx
        .try_send(Tell {
            n: 0,
            payload: payload(o.payload),
        })
        .is_ok()
    {}
    time_refusals(o.total(), |n| {
        matches!(
            tx.try_send(Tell {
                n,
                payload: payload(o.payload)
            }),
            Err(crossbeam_channel::TrySendError::Full(_))
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_runtime_path_names_a_baseline_that_is_measured() {
        for p in MailboxPath::ALL {
            match p.kind() {
                PathKind::Baseline => assert_eq!(p.baseline(), None, "{}", p.name()),
                _ => {
                    let b = p
                        .baseline()
                        .unwrap_or_else(|| panic!("{} has no baseline", p.name()));
                    assert_eq!(b.kind(), PathKind::Baseline);
                    assert!(MailboxPath::ALL.contains(&b));
                }
            }
        }
    }

    #[test]
    fn expected_sum_matches_a_direct_count() {
        let o = MailboxOptions {
            messages: 10,
            producers: 3,
            capacity: 4,
            payload: 2,
            rounds: 1,
        };
        assert_eq!(o.total(), 9);
        // Each producer: 0+1+2 plus 2 payload bytes per message.
        assert_eq!(expected_sum(&o), 3 * (3 + 3 * 2));
    }

    #[test]
    fn every_path_moves_every_message() {
        let o = MailboxOptions {
            messages: 2_000,
            producers: 2,
            capacity: 8,
            payload: 3,
            rounds: 1,
        };
        for p in MailboxPath::ALL {
            let d = p.run(&o).unwrap_or_else(|e| panic!("{}: {e:#}", p.name()));
            assert!(d > Duration::ZERO, "{}", p.name());
        }
    }
}
