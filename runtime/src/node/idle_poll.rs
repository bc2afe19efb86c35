//! Keeps a core running, not halted, for a short window after the node's last write.
//!
//! Why: a write crosses threads about nine times (HTTP worker, Raft worker, the followers'
//! workers and log stores, the applier; docs/performance.md). When the core a thread is woken
//! on has gone idle, the wake-up waits for that core to come out of its halt, and on a virtual
//! machine without guest halt polling (this project's machine: `guest_halt_poll_ns = 0`) that
//! is a trip through the hypervisor: tens of microseconds per hand-off, on the write's path.
//! Measured on this machine (3 nodes, one client writing 256-byte values): with both cores
//! kept busy by idle-priority loops the write's median fell from 666 to 565 µs.
//!
//! The poller is one thread per node at `SCHED_IDLE`: the kernel runs it only when no other
//! thread wants the core (weight 3 against a normal thread's 1024), and a core running only
//! idle-policy threads counts as idle when a woken thread is placed, so that thread lands on a
//! core that is already running and takes it at once. It spins while the last write
//! ([`IdlePoll::mark`], called when a Raft worker hands entries to the log store) is less than
//! the window old (`[node] idle_poll_us`, default [`DEFAULT_WINDOW_US`]) and parks after, so an
//! idle node spends nothing; the first write after an idle spell wakes it. Seastar's reactor
//! (ScyllaDB, Redpanda) polls 200 µs before sleeping for the same reason, and Linux's
//! `haltpoll` idle driver does it inside guests that enable it.
//!
//! The cost is CPU time that nothing else wanted: while writes keep coming, up to one core
//! per node shows as busy in `top`. It is counted in `conclave_idle_poll_microseconds_total`, so a
//! dashboard can subtract it. The loop reads the clock and an atomic, not `PAUSE`: a guest
//! spinning on `PAUSE` is taken for a lock-waiter and descheduled by the hypervisor (KVM's
//! pause-loop exiting), which would halt the core this is meant to keep. Where `SCHED_IDLE`
//! is refused (not Linux, a seccomp filter) the poller does not run: spinning at a normal
//! priority would take CPU from the node's own threads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

/// The default window (`[node] idle_poll_us`): longer than the gap between two writes of one
/// client (about 0.7 ms here), so a steady writer keeps the poller spinning, and short
/// enough that a node that stops writing stops polling at once.
pub const DEFAULT_WINDOW_US: u64 = 1_000;

/// A batch of more entries than this means the node is past light load: concurrent writers
/// fill batches, the cores rarely halt between them, and every cycle counts.
pub const LIGHT_BATCH: usize = 2;

/// How long a batch larger than [`LIGHT_BATCH`] keeps the poller from spinning.
pub const BUSY_HOLDOFF: Duration = Duration::from_nanos(BUSY_HOLDOFF_NS);
const BUSY_HOLDOFF_NS: u64 = 100_000_000;

/// How often a long spin reports its time to `conclave_idle_poll_microseconds_total`.
const REPORT_EVERY: Duration = Duration::from_millis(100);

/// The poller's shared state.
struct Inner {
    epoch: Instant,
    /// Nanoseconds since `epoch` of the last [`IdlePoll::mark`] of a light batch.
    last: AtomicU64,
    /// Nanoseconds since `epoch` before which the poller does not spin (a heavy batch).
    busy_until: AtomicU64,
    /// The poller is parked (or about to park): a mark must unpark it.
    parked: AtomicBool,
    stop: AtomicBool,
    window_ns: u64,
    /// Nanoseconds spent spinning, for tests (the metric carries it for operators).
    spun_ns: AtomicU64,
    /// How many times the poller parked, for tests.
    parks: AtomicU64,
}

impl Inner {
    /// Nanoseconds since `epoch`, at least 1 (`last` 0 means never marked).
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn fresh(&self) -> bool {
        let now = self.now_ns();
        let last = self.last.load(Ordering::SeqCst);
        // 0: no light batch yet.
        last != 0
            && now.saturating_sub(last) < self.window_ns
            && now >= self.busy_until.load(Ordering::SeqCst)
    }
}

/// A handle to mark activity; cheap to clone. Marking is an atomic store, plus an unpark
/// after an idle spell.
#[derive(Clone)]
pub struct IdlePoll {
    inner: Arc<Inner>,
    thread: Thread,
}

impl IdlePoll {
    /// Records a batch of `entries` entries handed to the log store now. A light batch (at
    /// most [`LIGHT_BATCH`]) has the poller spin for the next window; a heavier one stops it
    /// for [`BUSY_HOLDOFF`].
    pub fn mark(&self, entries: usize) {
        let inner = &self.inner;
        let now = inner.now_ns();
        if entries > LIGHT_BATCH {
            let until = now.saturating_add(BUSY_HOLDOFF_NS);
            inner.busy_until.fetch_max(until, Ordering::SeqCst);
            return;
        }
        inner.last.store(now, Ordering::SeqCst);
        // SeqCst on both sides (the poller stores `parked`, then reads `last`): either it sees
        // this mark and does not park, or this sees `parked` and wakes it.
        if inner.parked.load(Ordering::SeqCst) && inner.parked.swap(false, Ordering::SeqCst) {
            self.thread.unpark();
        }
    }

    /// Nanoseconds the poller has spun so far (what `conclave_idle_poll_microseconds_total` counts,
    /// up to the report in progress).
    pub fn spun(&self) -> Duration {
        Duration::from_nanos(self.inner.spun_ns.load(Ordering::SeqCst))
    }

    /// How many times the poller has parked (tests: it stops once the window has passed).
    pub fn parks(&self) -> u64 {
        self.inner.parks.load(Ordering::SeqCst)
    }
}

/// The polling thread; it ends when this is dropped (with the node).
pub struct IdlePoller {
    handle: IdlePoll,
    thread: Option<JoinHandle<()>>,
}

impl IdlePoller {
    /// Starts the poller with a window of `window`. `Ok(None)` when the window is zero (off).
    /// The thread exits at once, and marking is a no-op, if the kernel refuses `SCHED_IDLE`.
    pub fn start(window: Duration) -> std::io::Result<Option<IdlePoller>> {
        if window.is_zero() {
            return Ok(None);
        }
        let inner = Arc::new(Inner {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            busy_until: AtomicU64::new(0),
            parked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            window_ns: u64::try_from(window.as_nanos()).unwrap_or(u64::MAX),
            spun_ns: AtomicU64::new(0),
            parks: AtomicU64::new(0),
        });
        let shared = inner.clone();
        let thread = std::thread::Builder::new()
            .name("idle-poll".to_owned())
            .spawn(move || run(&shared))?;
        Ok(Some(IdlePoller {
            handle: IdlePoll {
                inner,
                thread: thread.thread().clone(),
            },
            thread: Some(thread),
        }))
    }

    /// A handle to mark activity with.
    pub fn handle(&self) -> IdlePoll {
        self.handle.clone()
    }
}

impl Drop for IdlePoller {
    fn drop(&mut self) {
        self.handle.inner.stop.store(true, Ordering::SeqCst);
        self.handle.thread.unpark();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(inner: &Inner) {
    if let Err(e) = crate::storage::background_io::set_idle_cpu_policy() {
        tracing::info!(error = %e, "SCHED_IDLE refused: the idle poller is off");
        // Parked for good: marks find `parked` and unpark a thread that has ended.
        inner.parked.store(true, Ordering::SeqCst);
        return;
    }
    let counter = metrics::counter!("conclave_idle_poll_microseconds_total");
    let mut spinning_since: Option<Instant> = None;
    let mut reported = Duration::ZERO;
    loop {
        if inner.stop.load(Ordering::SeqCst) {
            return;
        }
        if inner.fresh() {
            // Spin: the clock and an atomic, no PAUSE (see the module docs).
            let since = *spinning_since.get_or_insert_with(Instant::now);
            let spun = since.elapsed();
            if spun - reported >= REPORT_EVERY {
                report(inner, &counter, spun - reported);
                reported = spun;
            }
            continue;
        }
        if let Some(since) = spinning_since.take() {
            report(inner, &counter, since.elapsed().saturating_sub(reported));
            reported = Duration::ZERO;
        }
        inner.parked.store(true, Ordering::SeqCst);
        if inner.fresh() || inner.stop.load(Ordering::SeqCst) {
            inner.parked.store(false, Ordering::SeqCst);
            continue;
        }
        inner.parks.fetch_add(1, Ordering::SeqCst);
        // Spurious returns are fine: the loop checks again.
        std::thread::park();
        inner.parked.store(false, Ordering::SeqCst);
    }
}

fn report(inner: &Inner, counter: &metrics::Counter, spun: Duration) {
    let ns = u64::try_from(spun.as_nanos()).unwrap_or(u64::MAX);
    counter.increment(ns / 1_000);
    inner.spun_ns.fetch_add(ns, Ordering::SeqCst);
}

#[cfg(test)]
impl IdlePoll {
    /// Whether the poller may spin now (the window is open and no heavy batch holds it off).
    pub(crate) fn spinning_allowed(&self) -> bool {
        self.inner.fresh()
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Polls `cond` every millisecond for up to 10 s (the poller runs at `SCHED_IDLE`: on a
    /// busy machine it may wait a while for a core).
    fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn started(window: Duration) -> IdlePoller {
        IdlePoller::start(window)
            .expect("the thread starts")
            .expect("a non-zero window starts a poller")
    }

    #[test]
    fn a_zero_window_starts_nothing() {
        assert!(IdlePoller::start(Duration::ZERO).expect("start").is_none());
    }

    #[test]
    fn it_spins_after_a_light_batch_and_parks_once_the_window_has_passed() {
        let poller = started(Duration::from_millis(30));
        let poll = poller.handle();
        // Idle from the start: it parks without spinning.
        eventually("the idle poller parks", || poll.parks() >= 1);
        assert_eq!(poll.spun(), Duration::ZERO);
        assert!(!poll.spinning_allowed());
        // A light batch opens the window; the poller spins through it and parks again (once
        // more if it got no core during the window).
        let deadline = Instant::now() + Duration::from_secs(10);
        while poll.spun() == Duration::ZERO {
            assert!(Instant::now() < deadline, "the poller never spun");
            let parks = poll.parks();
            poll.mark(1);
            assert!(poll.spinning_allowed());
            eventually("the poller parks again", || poll.parks() > parks);
        }
        assert!(poll.spun() > Duration::ZERO, "spun {:?}", poll.spun());
        // Without marks it stays parked.
        let (parks, spun) = (poll.parks(), poll.spun());
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!((poll.parks(), poll.spun()), (parks, spun));
    }

    #[test]
    fn a_heavy_batch_stops_the_spin_and_holds_it_off() {
        let poller = started(Duration::from_secs(60));
        let poll = poller.handle();
        eventually("the idle poller parks", || poll.parks() >= 1);
        poll.mark(LIGHT_BATCH);
        assert!(poll.spinning_allowed());
        let parks = poll.parks();
        // A minute's window, yet a batch of three entries ends the spin.
        poll.mark(LIGHT_BATCH + 1);
        assert!(!poll.spinning_allowed());
        eventually("the poller parks after the heavy batch", || {
            poll.parks() > parks
        });
        // Light batches within the hold-off do not restart it...
        poll.mark(1);
        assert!(!poll.spinning_allowed());
        // ...after it they do.
        std::thread::sleep(BUSY_HOLDOFF);
        poll.mark(1);
        assert!(poll.spinning_allowed());
    }

    #[test]
    fn dropping_the_poller_stops_a_spinning_thread() {
        let poller = started(Duration::from_secs(60));
        let poll = poller.handle();
        poll.mark(1);
        // Joins the thread: this returns only if the spinning loop sees the stop.
        drop(poller);
        // A mark after the poller is gone is harmless.
        poll.mark(1);
    }
}
