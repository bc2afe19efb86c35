//! Supervision for actix actors: restart children that panic or stop, from factories, with a
//! strategy, exponential backoff and a restart budget that escalates when spent.
//!
//! actix's own `Supervisor` restarts an actor only when its context stops it (`Supervised`); a
//! panic inside a handler unwinds out of the actor's task and the actor is simply gone. This
//! module notices both through a [`ChildGuard`] that every supervised actor keeps in its state:
//! when the actor's state is dropped — a normal stop, or the unwinding of a panic — the guard
//! tells its supervisor, which then decides (DESIGN.md §3):
//!
//! - **one-for-one**: restart only that child; **one-for-all**: stop and restart every child
//!   (for children whose state is only consistent together);
//! - after a backoff that doubles with each restart in the budget window, capped;
//! - unless the budget (`max_restarts` within `window`) is spent: then the supervisor gives up,
//!   stops its children and itself, and its own guard escalates to its parent.
//!
//! A restarted child rebuilds its state from storage in its factory: nothing survives in memory.
//! Children find each other through [`Slot`]s that the factories refill on every start.

use actix::prelude::*;
use parking_lot::RwLock;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which children restart when one exits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Restart only the child that exited.
    OneForOne,
    /// Stop every other child too, then restart them all in declaration order.
    OneForAll,
}

/// How eagerly a supervisor restarts its children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    /// The strategy.
    pub strategy: Strategy,
    /// At most this many restarts within [`RestartPolicy::window`]; one more escalates.
    pub max_restarts: usize,
    /// The budget's sliding window.
    pub window: Duration,
    /// The first restart's delay; doubles with each restart inside the window.
    pub backoff_min: Duration,
    /// The largest delay.
    pub backoff_max: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            strategy: Strategy::OneForOne,
            max_restarts: 10,
            window: Duration::from_secs(60),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_secs(5),
        }
    }
}

impl RestartPolicy {
    /// Delay before the restart that follows `recent` restarts in the window.
    pub fn backoff(&self, recent: usize) -> Duration {
        let factor = 1u32 << recent.min(20);
        self.backoff_min
            .saturating_mul(factor)
            .min(self.backoff_max)
    }
}

/// How a child exited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Its state was dropped while a panic unwound.
    Panicked,
    /// It stopped on its own (or was stopped).
    Stopped,
}

/// Kept by a supervised actor in its state; reports the actor's exit to its supervisor when
/// dropped. Dropping happens when the actor stops normally and while a panic unwinds.
pub struct ChildGuard {
    index: usize,
    generation: u64,
    to: Recipient<ChildExited>,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let exit = if std::thread::panicking() {
            Exit::Panicked
        } else {
            Exit::Stopped
        };
        // The supervisor may be gone already (it stopped first): nothing left to tell.
        let _ = self.to.try_send(ChildExited {
            index: self.index,
            generation: self.generation,
            exit,
        });
    }
}

/// Sent by a [`ChildGuard`] to its supervisor.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ChildExited {
    index: usize,
    generation: u64,
    exit: Exit,
}

/// A handle to stop a running child (used by one-for-all and shutdown).
pub type StopFn = Box<dyn Fn()>;

/// Starts a child: gets its guard, returns how to stop it.
pub type Factory = Box<dyn FnMut(ChildGuard) -> StopFn>;

/// Where a child's current address lives; refilled by its factory on every (re)start, so that
/// other actors always reach the live instance.
pub struct Slot<A: Actor>(Arc<RwLock<Option<Addr<A>>>>);

impl<A: Actor> Clone for Slot<A> {
    fn clone(&self) -> Self {
        Slot(self.0.clone())
    }
}

impl<A: Actor> Default for Slot<A> {
    fn default() -> Self {
        Slot(Arc::new(RwLock::new(None)))
    }
}

impl<A: Actor> Slot<A> {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the live instance's address.
    pub fn set(&self, addr: Addr<A>) {
        *self.0.write() = Some(addr);
    }

    /// The live instance's address, if it is running.
    pub fn get(&self) -> Option<Addr<A>> {
        self.0.read().as_ref().filter(|a| a.connected()).cloned()
    }
}

struct Child {
    name: String,
    factory: Factory,
    generation: u64,
    stop: Option<StopFn>,
    restarts: VecDeque<Instant>,
}

/// Supervision events, for logs, metrics and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SupervisionEvent {
    /// A child exited.
    Exited {
        /// Its name.
        child: String,
        /// How.
        exit: Exit,
    },
    /// A child is being restarted after `delay`.
    Restarting {
        /// Its name.
        child: String,
        /// The backoff applied.
        delay: Duration,
    },
    /// The budget is spent: the supervisor stops and escalates to its parent.
    Escalated {
        /// The supervisor's name.
        supervisor: String,
    },
}

/// A supervisor actor. Build it with [`SupervisorBuilder`].
pub struct Supervisor {
    name: String,
    policy: RestartPolicy,
    children: Vec<Child>,
    events: Option<Recipient<SupervisionEventMsg>>,
    giving_up: bool,
    /// This supervisor's own guard when it is itself supervised.
    _guard: Option<ChildGuard>,
}

/// A [`SupervisionEvent`] delivered to an observer.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct SupervisionEventMsg(pub SupervisionEvent);

/// Builds a [`Supervisor`].
pub struct SupervisorBuilder {
    name: String,
    policy: RestartPolicy,
    children: Vec<(String, Factory)>,
    events: Option<Recipient<SupervisionEventMsg>>,
    guard: Option<ChildGuard>,
}

impl SupervisorBuilder {
    /// A supervisor named `name` (for logs) with the default policy.
    pub fn new(name: impl Into<String>) -> Self {
        SupervisorBuilder {
            name: name.into(),
            policy: RestartPolicy::default(),
            children: Vec::new(),
            events: None,
            guard: None,
        }
    }

    /// Sets the restart policy.
    pub fn policy(mut self, policy: RestartPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Adds a child, started in declaration order. The factory must keep the guard in the
    /// actor's state and return a function that stops the actor.
    pub fn child(mut self, name: impl Into<String>, factory: Factory) -> Self {
        self.children.push((name.into(), factory));
        self
    }

    /// Sends every supervision event to `to` as well as to the log.
    pub fn events(mut self, to: Recipient<SupervisionEventMsg>) -> Self {
        self.events = Some(to);
        self
    }

    /// Makes this supervisor a supervised child itself (its exit reaches its parent).
    pub fn guard(mut self, guard: ChildGuard) -> Self {
        self.guard = Some(guard);
        self
    }

    /// Starts the supervisor (and, from its `started`, every child) on the current arbiter.
    pub fn start(self) -> Addr<Supervisor> {
        Supervisor {
            name: self.name,
            policy: self.policy,
            children: self
                .children
                .into_iter()
                .map(|(name, factory)| Child {
                    name,
                    factory,
                    generation: 0,
                    stop: None,
                    restarts: VecDeque::new(),
                })
                .collect(),
            events: self.events,
            giving_up: false,
            _guard: self.guard,
        }
        .start()
    }
}

impl Supervisor {
    fn emit(&self, event: SupervisionEvent) {
        match &event {
            SupervisionEvent::Exited { child, exit } => {
                tracing::warn!(supervisor = %self.name, %child, ?exit, "child exited")
            }
            SupervisionEvent::Restarting { child, delay } => {
                tracing::info!(supervisor = %self.name, %child, ?delay, "restarting child")
            }
            SupervisionEvent::Escalated { supervisor } => {
                tracing::error!(%supervisor, "restart budget spent, escalating")
            }
        }
        if let Some(to) = &self.events {
            let _ = to.try_send(SupervisionEventMsg(event));
        }
    }

    fn start_child(&mut self, index: usize, ctx: &mut Context<Self>) {
        let child = &mut self.children[index];
        child.generation += 1;
        let guard = ChildGuard {
            index,
            generation: child.generation,
            to: ctx.address().recipient(),
        };
        child.stop = Some((child.factory)(guard));
    }

    fn stop_child(&mut self, index: usize) {
        let child = &mut self.children[index];
        // Bump the generation first, so the exit this stop causes is recognised as ours.
        child.generation += 1;
        if let Some(stop) = child.stop.take() {
            stop();
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        for i in 0..self.children.len() {
            self.start_child(i, ctx);
        }
    }

    fn stopping(&mut self, _: &mut Context<Self>) -> Running {
        self.giving_up = true;
        for i in 0..self.children.len() {
            self.stop_child(i);
        }
        Running::Stop
    }
}

impl Handler<ChildExited> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: ChildExited, ctx: &mut Context<Self>) {
        let Some(child) = self.children.get(msg.index) else {
            return;
        };
        // An exit we caused (one-for-all, shutdown) or of an older instance: not news.
        if self.giving_up || child.generation != msg.generation {
            return;
        }
        let name = child.name.clone();
        self.emit(SupervisionEvent::Exited {
            child: name.clone(),
            exit: msg.exit,
        });
        let now = Instant::now();
        let window = self.policy.window;
        let restarts = &mut self.children[msg.index].restarts;
        while restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            restarts.pop_front();
        }
        if restarts.len() >= self.policy.max_restarts {
            self.giving_up = true;
            self.emit(SupervisionEvent::Escalated {
                supervisor: self.name.clone(),
            });
            ctx.stop();
            return;
        }
        let delay = self.policy.backoff(restarts.len());
        restarts.push_back(now);
        self.children[msg.index].stop = None;
        let to_restart: Vec<usize> = match self.policy.strategy {
            Strategy::OneForOne => vec![msg.index],
            Strategy::OneForAll => {
                for i in 0..self.children.len() {
                    if i != msg.index {
                        self.stop_child(i);
                    }
                }
                (0..self.children.len()).collect()
            }
        };
        for &i in &to_restart {
            self.emit(SupervisionEvent::Restarting {
                child: self.children[i].name.clone(),
                delay,
            });
        }
        ctx.run_later(delay, move |act, ctx| {
            if act.giving_up {
                return;
            }
            for i in to_restart {
                act.start_child(i, ctx);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Worker {
        _guard: ChildGuard,
        starts: Arc<AtomicUsize>,
    }
    impl Actor for Worker {
        type Context = Context<Self>;
    }

    #[derive(Message)]
    #[rtype(result = "usize")]
    struct Ping;

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Crash;

    impl Handler<Ping> for Worker {
        type Result = usize;
        fn handle(&mut self, _: Ping, _: &mut Context<Self>) -> usize {
            self.starts.load(Ordering::SeqCst)
        }
    }
    impl Handler<Crash> for Worker {
        type Result = ();
        fn handle(&mut self, _: Crash, _: &mut Context<Self>) {
            panic!("planted panic in a supervised worker");
        }
    }

    fn worker_factory(slot: Slot<Worker>, starts: Arc<AtomicUsize>) -> Factory {
        Box::new(move |guard| {
            starts.fetch_add(1, Ordering::SeqCst);
            let addr = Worker {
                _guard: guard,
                starts: starts.clone(),
            }
            .start();
            slot.set(addr.clone());
            Box::new(move || {
                addr.do_send(StopWorker);
            })
        })
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct StopWorker;
    impl Handler<StopWorker> for Worker {
        type Result = ();
        fn handle(&mut self, _: StopWorker, ctx: &mut Context<Self>) {
            ctx.stop();
        }
    }

    struct Events(Arc<parking_lot::Mutex<Vec<SupervisionEvent>>>);
    impl Actor for Events {
        type Context = Context<Self>;
    }
    impl Handler<SupervisionEventMsg> for Events {
        type Result = ();
        fn handle(&mut self, m: SupervisionEventMsg, _: &mut Context<Self>) {
            self.0.lock().push(m.0);
        }
    }

    fn fast(strategy: Strategy, max_restarts: usize) -> RestartPolicy {
        RestartPolicy {
            strategy,
            max_restarts,
            window: Duration::from_secs(60),
            backoff_min: Duration::from_millis(1),
            backoff_max: Duration::from_millis(8),
        }
    }

    async fn until<F: Fn() -> bool>(f: F) {
        for _ in 0..500 {
            if f() {
                return;
            }
            actix::clock::sleep(Duration::from_millis(2)).await;
        }
        panic!("condition not reached in time");
    }

    #[actix::test]
    async fn panicking_child_is_restarted_one_for_one() {
        let (a, b) = (Slot::new(), Slot::new());
        let (sa, sb) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let log = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let _sup = SupervisorBuilder::new("test")
            .policy(fast(Strategy::OneForOne, 5))
            .child("a", worker_factory(a.clone(), sa.clone()))
            .child("b", worker_factory(b.clone(), sb.clone()))
            .events(Events(log.clone()).start().recipient())
            .start();
        until(|| a.get().is_some() && b.get().is_some()).await;
        let first = a.get().unwrap();
        first.do_send(Crash);
        until(|| sa.load(Ordering::SeqCst) == 2 && a.get().is_some()).await;
        assert_eq!(a.get().unwrap().send(Ping).await.unwrap(), 2);
        // The sibling was left alone.
        assert_eq!(sb.load(Ordering::SeqCst), 1);
        let events = log.lock().clone();
        assert!(events.contains(&SupervisionEvent::Exited {
            child: "a".into(),
            exit: Exit::Panicked
        }));
    }

    #[actix::test]
    async fn one_for_all_restarts_every_child() {
        let (a, b) = (Slot::new(), Slot::new());
        let (sa, sb) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let _sup = SupervisorBuilder::new("test")
            .policy(fast(Strategy::OneForAll, 5))
            .child("a", worker_factory(a.clone(), sa.clone()))
            .child("b", worker_factory(b.clone(), sb.clone()))
            .start();
        until(|| a.get().is_some() && b.get().is_some()).await;
        b.get().unwrap().do_send(Crash);
        until(|| sa.load(Ordering::SeqCst) == 2 && sb.load(Ordering::SeqCst) == 2).await;
        until(|| a.get().is_some() && b.get().is_some()).await;
        // No restart storm: the stops the supervisor caused are not counted as failures.
        actix::clock::sleep(Duration::from_millis(50)).await;
        assert_eq!(sa.load(Ordering::SeqCst), 2);
        assert_eq!(sb.load(Ordering::SeqCst), 2);
    }

    #[actix::test]
    async fn spent_budget_escalates_to_the_parent() {
        let slot = Slot::new();
        let starts = Arc::new(AtomicUsize::new(0));
        let log = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let inner_slot: Slot<Supervisor> = Slot::new();
        let inner_factory: Factory = {
            let slot = slot.clone();
            let starts = starts.clone();
            let inner_slot = inner_slot.clone();
            Box::new(move |guard| {
                let addr = SupervisorBuilder::new("inner")
                    .policy(fast(Strategy::OneForOne, 2))
                    .child("w", worker_factory(slot.clone(), starts.clone()))
                    .guard(guard)
                    .start();
                inner_slot.set(addr.clone());
                Box::new(move || addr.do_send(StopSupervisor))
            })
        };
        let _outer = SupervisorBuilder::new("outer")
            .policy(fast(Strategy::OneForOne, 5))
            .child("inner", inner_factory)
            .events(Events(log.clone()).start().recipient())
            .start();
        // Crash the worker three times: two restarts are allowed, the third escalates, and the
        // outer supervisor restarts the inner one (which starts a fresh worker).
        for n in 1..=3 {
            until(|| starts.load(Ordering::SeqCst) == n && slot.get().is_some()).await;
            slot.get().unwrap().do_send(Crash);
        }
        until(|| {
            log.lock().iter().any(
                |e| matches!(e, SupervisionEvent::Restarting { child, .. } if child == "inner"),
            )
        })
        .await;
        until(|| starts.load(Ordering::SeqCst) == 4 && slot.get().is_some()).await;
        assert_eq!(slot.get().unwrap().send(Ping).await.unwrap(), 4);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RestartPolicy {
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(100),
            ..RestartPolicy::default()
        };
        let d: Vec<u64> = (0..6).map(|i| p.backoff(i).as_millis() as u64).collect();
        assert_eq!(d, vec![10, 20, 40, 80, 100, 100]);
    }
}

/// Asks a supervisor to stop its children and itself (a clean shutdown: no escalation).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct StopSupervisor;

impl Handler<StopSupervisor> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: StopSupervisor, ctx: &mut Context<Self>) {
        self.giving_up = true;
        ctx.stop();
    }
}
