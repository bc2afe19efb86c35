//! The stall watchdog: every storage call of a watched component is timed, and one that runs
//! longer than `[storage] stall_timeout_ms` is reported to [`StorageHealth`] as a stall (and
//! cleared when it returns).
//!
//! The watchdog is a plain thread, not an actor: it must keep working when the thing it
//! watches has frozen the thread it runs on, and it must not depend on any arbiter (a storage
//! engine stuck on one is exactly what it is there to notice). Timing a call costs two atomic
//! stores; the thread wakes a few times per timeout and reads one atomic per component.
//!
//! Background calls (snapshot images, written paced at the lowest CPU and I/O priority so that
//! they yield to the write path: `storage::background_io`) get [`BACKGROUND_STALL_FACTOR`]
//! times the timeout: on a busy machine such a call may legitimately wait seconds for the CPU
//! or the disk (mq-deadline serves the idle I/O class after up to 10 s of aging), and a stall
//! refuses every request of the node — a snapshot that yields as designed must not. A
//! background call that moves nothing for that long is a real stall.

use super::health::{StorageComponent, StorageHealth};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// The clock of one component's storage calls (one call at a time: the component runs its
/// calls on one thread).
pub struct StallClock {
    component: StorageComponent,
    /// The stall timeout is multiplied by this (1, or [`BACKGROUND_STALL_FACTOR`]).
    timeout_factor: u32,
    health: Arc<StorageHealth>,
    epoch: Instant,
    /// Nanoseconds since `epoch` at which the running call started, plus one; 0 when idle.
    started: AtomicU64,
    /// Whether the running call was reported stalled (so its return clears the stall).
    reported: AtomicBool,
}

impl StallClock {
    /// The component's name, as [`StorageHealth`] shows it.
    pub fn component(&self) -> StorageComponent {
        self.component
    }

    /// Runs `f` as one timed storage call.
    pub fn time<T>(&self, f: impl FnOnce() -> T) -> T {
        let _call = self.begin();
        f()
    }

    /// Starts a timed call; it ends when the returned guard is dropped (also on a panic).
    pub fn begin(&self) -> CallGuard<'_> {
        let ns = self.epoch.elapsed().as_nanos() as u64;
        self.started.store(ns.saturating_add(1), Ordering::Release);
        CallGuard { clock: self }
    }

    /// A long call (a snapshot written or restored, chunk by chunk) made progress: it is
    /// timed from now on, and a stall it was reported for is cleared. Only what runs between
    /// two progress reports must stay under the timeout.
    pub fn progress(&self) {
        let ns = self.epoch.elapsed().as_nanos() as u64;
        self.started.store(ns.saturating_add(1), Ordering::Release);
        if self.reported.swap(false, Ordering::AcqRel) {
            self.health.unstalled(self.component);
        }
    }

    /// When the running call started, if one is running.
    fn running_since(&self) -> Option<Instant> {
        match self.started.load(Ordering::Acquire) {
            0 => None,
            n => Some(self.epoch + Duration::from_nanos(n - 1)),
        }
    }

    fn end(&self) {
        self.started.store(0, Ordering::Release);
        if self.reported.swap(false, Ordering::AcqRel) {
            self.health.unstalled(self.component);
        }
    }

    /// Reports the running call if it has run longer than `timeout` (times the clock's
    /// factor).
    fn check(&self, timeout: Duration) {
        let Some(since) = self.running_since() else {
            return;
        };
        let timeout = timeout.saturating_mul(self.timeout_factor);
        if since.elapsed() >= timeout && !self.reported.swap(true, Ordering::AcqRel) {
            self.health.stalled(self.component, since);
            // The call may have returned between the load and the report: clear it then.
            if self.running_since() != Some(since) && self.reported.swap(false, Ordering::AcqRel) {
                self.health.unstalled(self.component);
            }
        }
    }
}

/// Ends a timed call when dropped.
pub struct CallGuard<'a> {
    clock: &'a StallClock,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.clock.end();
    }
}

/// How many stall timeouts a background call may run without progress before it is a stall
/// (with the default `[storage] stall_timeout_ms`, 5 s: one minute).
pub const BACKGROUND_STALL_FACTOR: u32 = 12;

struct Shared {
    health: Arc<StorageHealth>,
    timeout: Duration,
    clocks: Mutex<Vec<Weak<StallClock>>>,
}

/// The node's watchdog: hands out [`StallClock`]s and checks them from its own thread, which
/// ends when the watchdog is dropped.
pub struct Watchdog {
    shared: Arc<Shared>,
}

impl Watchdog {
    /// Starts the watchdog thread. `timeout` is `[storage] stall_timeout_ms`.
    pub fn start(health: Arc<StorageHealth>, timeout: Duration) -> std::io::Result<Watchdog> {
        let shared = Arc::new(Shared {
            health,
            timeout,
            clocks: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&shared);
        // Check a few times per timeout, so a stall is reported within ~1.25 × the timeout.
        let tick = (timeout / 4).clamp(Duration::from_millis(5), Duration::from_millis(500));
        std::thread::Builder::new()
            .name("storage-watchdog".to_owned())
            .spawn(move || loop {
                std::thread::sleep(tick);
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                let clocks: Vec<Arc<StallClock>> = {
                    let mut list = shared.clocks.lock();
                    list.retain(|c| c.strong_count() > 0);
                    list.iter().filter_map(Weak::upgrade).collect()
                };
                for clock in clocks {
                    clock.check(shared.timeout);
                }
            })?;
        Ok(Watchdog { shared })
    }

    /// A clock for `component` (e.g. `state_machine/0`), watched while anyone holds it.
    pub fn clock(&self, component: StorageComponent) -> Arc<StallClock> {
        self.clock_with_factor(component, 1)
    }

    /// A clock for a background component (`snapshots/0`): a stall only after
    /// [`BACKGROUND_STALL_FACTOR`] times the timeout (see the module docs).
    pub fn background_clock(&self, component: StorageComponent) -> Arc<StallClock> {
        self.clock_with_factor(component, BACKGROUND_STALL_FACTOR)
    }

    fn clock_with_factor(
        &self,
        component: StorageComponent,
        timeout_factor: u32,
    ) -> Arc<StallClock> {
        let clock = Arc::new(StallClock {
            component,
            timeout_factor,
            health: self.shared.health.clone(),
            epoch: Instant::now(),
            started: AtomicU64::new(0),
            reported: AtomicBool::new(false),
        });
        self.shared.clocks.lock().push(Arc::downgrade(&clock));
        clock
    }

    /// The health record the watchdog reports into.
    pub fn health(&self) -> &Arc<StorageHealth> {
        &self.shared.health
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::health::StorageCondition;

    fn wait_for(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_call_longer_than_the_timeout_is_reported_and_cleared_when_it_returns() {
        let health = Arc::new(StorageHealth::new());
        let dog = Watchdog::start(health.clone(), Duration::from_millis(50)).unwrap();
        let clock = dog.clock(crate::storage::health::StorageComponent::StateMachine(
            conclave_core::ids::GroupId::FIRST,
        ));
        // Short calls are never reported.
        for _ in 0..20 {
            clock.time(|| std::thread::sleep(Duration::from_millis(1)));
        }
        assert_eq!(health.condition(), StorageCondition::Healthy);

        let (release, released) = std::sync::mpsc::channel::<()>();
        let c = clock.clone();
        let call = std::thread::spawn(move || c.time(|| released.recv().unwrap()));
        wait_for(
            "the stall",
            || matches!(health.condition(), StorageCondition::Stalled { ref component, .. } if component.to_string() == "state_machine/0"),
        );
        release.send(()).unwrap();
        call.join().unwrap();
        assert_eq!(health.condition(), StorageCondition::Healthy);
    }

    #[test]
    fn a_background_call_is_a_stall_only_after_the_longer_timeout() {
        let health = Arc::new(StorageHealth::new());
        let dog = Watchdog::start(health.clone(), Duration::from_millis(20)).unwrap();
        let background = dog.background_clock(crate::storage::health::StorageComponent::Snapshots(
            conclave_core::ids::GroupId::FIRST,
        ));
        let foreground = dog.clock(crate::storage::health::StorageComponent::StateMachine(
            conclave_core::ids::GroupId::FIRST,
        ));
        // Five foreground timeouts without progress: not a background stall yet.
        background.time(|| std::thread::sleep(Duration::from_millis(100)));
        assert_eq!(health.condition(), StorageCondition::Healthy);
        // The same call on a foreground clock is one.
        let (release, released) = std::sync::mpsc::channel::<()>();
        let c = foreground.clone();
        let call = std::thread::spawn(move || c.time(|| released.recv().unwrap()));
        wait_for("the foreground stall", || {
            matches!(health.condition(), StorageCondition::Stalled { .. })
        });
        release.send(()).unwrap();
        call.join().unwrap();
        // Past the longer timeout the background call is reported too.
        let (release, released) = std::sync::mpsc::channel::<()>();
        let c = background.clone();
        let started = Instant::now();
        let call = std::thread::spawn(move || c.time(|| released.recv().unwrap()));
        wait_for(
            "the background stall",
            || matches!(health.condition(), StorageCondition::Stalled { ref component, .. } if component.to_string() == "snapshots/0"),
        );
        assert!(started.elapsed() >= Duration::from_millis(20) * BACKGROUND_STALL_FACTOR);
        release.send(()).unwrap();
        call.join().unwrap();
        assert_eq!(health.condition(), StorageCondition::Healthy);
    }

    #[test]
    fn the_thread_ends_with_the_watchdog() {
        let health = Arc::new(StorageHealth::new());
        let dog = Watchdog::start(health, Duration::from_millis(20)).unwrap();
        let weak = Arc::downgrade(&dog.shared);
        drop(dog);
        // Only the thread's short-lived upgrade can hold it now.
        wait_for("the watchdog's state to be dropped", || {
            weak.strong_count() == 0
        });
    }
}
