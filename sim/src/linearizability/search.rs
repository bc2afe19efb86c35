//! Wing & Gong's search with Lowe's memoisation (the algorithm of porcupine and knossos'
//! `linear` checker), over one (sub-)history, with domination of configurations that took
//! more lost operations, forced read-only moves, and exploration in rounds by the number of
//! lost operations taken when plain depth-first search runs long (see [`search`]).

use super::{Model, Operation, SearchBudget, Verdict, Violation, ViolationKind};
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::rc::Rc;

/// Checks `history` against `model`: [`Verdict::Linearizable`] if some order of the operations,
/// consistent with their call and return times, explains every observed output;
/// [`Verdict::NotLinearizable`] with the smallest prefix that cannot be linearized otherwise;
/// [`Verdict::Unknown`] if `budget` ran out first. Indices in the violation are indices into
/// `history`.
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    budget: SearchBudget,
) -> Verdict {
    let mut spent = 0;
    match search(
        model,
        history,
        PendingHints::default(),
        budget.max_states,
        &mut spent,
    ) {
        Outcome::Linearizable => Verdict::Linearizable,
        Outcome::Unknown => Verdict::Unknown,
        Outcome::Stuck(stuck) => {
            Verdict::NotLinearizable(stuck.into_violation(history, None, |i| i))
        }
    }
}

/// [`check`], exploring by rounds only (see [`PendingHints::rounds_only`]).
#[cfg(test)]
pub(super) fn check_by_rounds<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
) -> Verdict {
    let hints = PendingHints {
        rounds_only: true,
        ..PendingHints::default()
    };
    let mut spent = 0;
    match search(model, history, hints, u64::MAX, &mut spent) {
        Outcome::Linearizable => Verdict::Linearizable,
        Outcome::Unknown => Verdict::Unknown,
        Outcome::Stuck(stuck) => {
            Verdict::NotLinearizable(stuck.into_violation(history, None, |i| i))
        }
    }
}

/// The result of [`search`], with the violation still in the sub-history's indices.
pub(super) enum Outcome {
    Linearizable,
    Unknown,
    Stuck(Stuck),
}

/// Where the search got stuck (or why the history is malformed), in local indices.
pub(super) struct Stuck {
    kind: ViolationKind,
    culprit: usize,
    prefix: Vec<usize>,
    state: String,
    /// Set for malformed histories only: what is wrong with `culprit`.
    problem: Option<String>,
}

impl Stuck {
    /// Builds the public violation. `history` is the history that was searched; `global` maps
    /// its indices to those of the history the caller passed in (identity unless decomposed).
    pub(super) fn into_violation<I: Debug, O: Debug>(
        self,
        history: &[Operation<I, O>],
        key: Option<String>,
        global: impl Fn(usize) -> usize,
    ) -> Violation {
        /// Concurrent operations listed at most: pending operations stay concurrent with
        /// everything after their call, and a wall of them would bury the culprit.
        const MAX_CONCURRENT: usize = 16;
        /// Operations of the longest prefix listed (its end explains the state).
        const PREFIX_TAIL: usize = 4;

        let culprit_op = &history[self.culprit];
        let mut involved = vec![self.culprit];
        if self.kind == ViolationKind::NoLinearization {
            let (c_call, c_ret) = (culprit_op.call, culprit_op.ret.unwrap_or(u64::MAX));
            let mut concurrent: Vec<usize> = (0..history.len())
                .filter(|&j| {
                    j != self.culprit
                        && history[j].call <= c_ret
                        && c_call <= history[j].ret.unwrap_or(u64::MAX)
                })
                .collect();
            // Keep the ones that started closest to the culprit.
            concurrent.sort_by_key(|&j| (history[j].call.abs_diff(c_call), j));
            concurrent.truncate(MAX_CONCURRENT);
            involved.extend(concurrent);
            let skip = self.prefix.len().saturating_sub(PREFIX_TAIL);
            involved.extend_from_slice(&self.prefix[skip..]);
        }
        involved.sort_by_key(|&j| (history[j].call, j));
        involved.dedup();

        let details = involved
            .iter()
            .map(|&j| {
                let op = &history[j];
                let times = match op.ret {
                    Some(ret) => format!("[{}, {}]", op.call, ret),
                    None => format!("[{}, never returned]", op.call),
                };
                let output = match &op.output {
                    Some(output) => format!(" -> {output:?}"),
                    None => String::new(),
                };
                let mark = if j == self.culprit {
                    "   <- cannot be linearized"
                } else {
                    ""
                };
                format!(
                    "#{} client {} {} {:?}{}{}",
                    global(j),
                    op.client,
                    times,
                    op.input,
                    output,
                    mark
                )
            })
            .collect();

        let culprit = global(self.culprit);
        let explanation = match self.problem {
            Some(problem) => format!("malformed history: op #{culprit} {problem}"),
            None => format!(
                "op #{culprit} (client {}, returned at t={}) cannot be linearized: no order of the \
                 operations called by then that respects real time and the sequential \
                 specification explains its output together with those of every operation \
                 that returned before it",
                culprit_op.client,
                culprit_op.ret.unwrap_or(u64::MAX)
            ),
        };
        Violation {
            kind: self.kind,
            key,
            culprit,
            longest_prefix: self.prefix.into_iter().map(&global).collect(),
            state_after_prefix: self.state,
            ops: involved.into_iter().map(&global).collect(),
            explanation,
            details,
        }
    }
}

/// "No node" in the event list.
const NIL: usize = usize::MAX;

/// The doubly linked list of call and return events, in time order, from which linearized
/// operations are lifted (and restored on backtracking, dancing-links style). Node 0 is the
/// head sentinel; nodes `1..` are events in time order, so a node's id is also its position.
struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// The operation each node belongs to.
    op: Vec<usize>,
    /// Whether each node is a call (else a return).
    is_call: Vec<bool>,
    /// Each operation's call node.
    call_node: Vec<usize>,
    /// Each operation's return node, `NIL` for operations that never returned.
    ret_node: Vec<usize>,
}

impl Events {
    fn new<I, O>(ops: &[Operation<I, O>]) -> Events {
        // Calls sort before returns at equal times: such operations count as concurrent.
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            events.push((op.call, false, i));
            if let Some(ret) = op.ret {
                events.push((ret, true, i));
            }
        }
        events.sort_unstable();
        let nodes = events.len() + 1;
        let mut list = Events {
            next: (1..=nodes)
                .map(|i| if i == nodes { NIL } else { i })
                .collect(),
            prev: (0..nodes).map(|i| i.wrapping_sub(1)).collect(),
            op: Vec::with_capacity(nodes),
            is_call: Vec::with_capacity(nodes),
            call_node: vec![NIL; ops.len()],
            ret_node: vec![NIL; ops.len()],
        };
        list.prev[0] = NIL;
        list.op.push(NIL);
        list.is_call.push(false);
        for (k, &(_, is_return, op)) in events.iter().enumerate() {
            list.op.push(op);
            list.is_call.push(!is_return);
            if is_return {
                list.ret_node[op] = k + 1;
            } else {
                list.call_node[op] = k + 1;
            }
        }
        list
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        if next != NIL {
            self.prev[next] = prev;
        }
    }

    /// Undoes `unlink(node)`; valid only in the reverse order of the unlinks.
    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        if next != NIL {
            self.prev[next] = node;
        }
    }

    /// Removes a linearized operation's events.
    fn lift(&mut self, op: usize) {
        self.unlink(self.call_node[op]);
        if self.ret_node[op] != NIL {
            self.unlink(self.ret_node[op]);
        }
    }

    fn unlift(&mut self, op: usize) {
        if self.ret_node[op] != NIL {
            self.relink(self.ret_node[op]);
        }
        self.relink(self.call_node[op]);
    }

    /// The operations that may be linearized next — those called before the first return
    /// still in the list — and that return's node (`NIL` if none is left). Read-only
    /// operations come first (the first that fits is linearized without trying anything
    /// else), then the other completed ones, then pending ones: most pending operations of a
    /// real history never have to take effect, so trying them last finds a linearization
    /// sooner. Of pending operations of one interchangeable class, only the first is offered.
    fn candidates<I, O>(&self, ops: &[Operation<I, O>], hints: &Hints<'_>) -> (Vec<usize>, usize) {
        let mut reads = Vec::new();
        let mut writes = Vec::new();
        let mut pending = Vec::new();
        let mut classes = Vec::new();
        let mut node = self.next[0];
        while node != NIL && self.is_call[node] {
            let op = self.op[node];
            if ops[op].ret.is_none() {
                match hints.class {
                    Some(class) if classes.contains(&class[op]) => {}
                    Some(class) => {
                        classes.push(class[op]);
                        pending.push(op);
                    }
                    None => pending.push(op),
                }
            } else if hints.read_only[op] {
                reads.push(op);
            } else {
                writes.push(op);
            }
            node = self.next[node];
        }
        reads.extend(writes);
        reads.extend(pending);
        (reads, node)
    }
}

/// What the search knows about the operations beyond their times.
struct Hints<'a> {
    /// Per operation: it returned, and [`Model::is_read_only`] holds for it.
    read_only: Vec<bool>,
    /// Per operation, for pending ones: a class such that pending operations of one class are
    /// interchangeable (same effect in every state). Once two of them have been called, the
    /// configurations that linearize one or the other are mirror images, so only the first of
    /// a class is tried at each point.
    class: Option<&'a [usize]>,
    /// See [`PendingHints::lazy`].
    lazy: bool,
}

/// What a caller that knows its model can tell the search about pending operations.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct PendingHints<'a> {
    /// Per operation, for pending ones: pending operations of one class are interchangeable
    /// (same effect in every state). Ignored unless it has one entry per operation.
    pub(super) class: Option<&'a [usize]>,
    /// Linearize a pending operation only where its effect *enables* another candidate: a
    /// completed one whose output does not fit the current state but fits the new one, or a
    /// pending one that changes nothing now but would change the state after it. Sound for
    /// the key-value register only ([`check_kv`](super::check_kv) proves it there): any
    /// linearization that takes a pending write where it enables nothing can drop it (the next
    /// write overwrites it) or move a failed compare-and-set ahead of it.
    pub(super) lazy: bool,
    /// Skip the depth-first pass and explore by rounds from the start (tests use it to check
    /// the rounds on their own against an oracle).
    pub(super) rounds_only: bool,
}

/// One configuration on the depth-first search's stack.
struct Frame<S> {
    /// The model state in this configuration.
    state: S,
    /// The operations that may be linearized next, in the order they are tried.
    candidates: Vec<usize>,
    /// The next candidate to try.
    next: usize,
    /// Next states not yet tried for `candidates[next - 1]` (a pending operation whose output
    /// is unconstrained may lead to several).
    alternatives: Vec<S>,
    /// The operation linearized to reach the frame above this one, undone on backtracking.
    chosen: Option<usize>,
    /// The operations linearized to reach this configuration, in order.
    path: Path,
}

/// A linearization prefix as a persistent list (last operation first), shared between the
/// frames and seeds that extend it.
type Path = Option<Rc<PathNode>>;

struct PathNode {
    op: usize,
    parent: Path,
}

fn extend(path: &Path, op: usize) -> Path {
    Some(Rc::new(PathNode {
        op,
        parent: path.clone(),
    }))
}

/// The operations of `path`, first one first.
fn ops_of(path: &Path) -> Vec<usize> {
    let mut ops = Vec::new();
    let mut node = path.as_deref();
    while let Some(n) = node {
        ops.push(n.op);
        node = n.parent.as_deref();
    }
    ops.reverse();
    ops
}

/// A configuration reached by linearizing a pending operation, explored in the next round.
struct Seed<S> {
    state: S,
    path: Path,
}

/// The deepest point the search reached: the latest return node it could not get past.
struct Deepest {
    blocker: usize,
    prefix: Vec<usize>,
    state: String,
}

/// A hasher for keys that are already well-mixed 64-bit hashes.
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else in rather than lose it.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Which operations the current configuration has linearized. Completed and pending operations
/// are kept in separate bitsets because the memo treats them differently (see [`Visited`]).
struct Linearized {
    /// Per operation: whether it is pending, and its bit in `completed` or `pending`.
    slot: Vec<(bool, usize)>,
    completed: Vec<u64>,
    pending: Vec<u64>,
    /// The Zobrist hash of `completed`.
    completed_hash: u64,
}

impl Linearized {
    fn new<I, O>(ops: &[Operation<I, O>]) -> Linearized {
        let (mut completed, mut pending) = (0, 0);
        let slot = ops
            .iter()
            .map(|op| {
                let counter = if op.ret.is_some() {
                    &mut completed
                } else {
                    &mut pending
                };
                *counter += 1;
                (op.ret.is_none(), *counter - 1)
            })
            .collect();
        Linearized {
            slot,
            completed: vec![0; completed.div_ceil(64)],
            pending: vec![0; pending.div_ceil(64)],
            completed_hash: 0,
        }
    }

    /// Marks `op` linearized if it was not, or not linearized if it was.
    fn toggle(&mut self, op: usize) {
        let (pending, bit) = self.slot[op];
        if pending {
            self.pending[bit / 64] ^= 1 << (bit % 64);
        } else {
            self.completed[bit / 64] ^= 1 << (bit % 64);
            self.completed_hash ^= zobrist(bit);
        }
    }
}

/// The configurations visited with one set of completed operations and one model state: the
/// sets of pending operations they had linearized.
///
/// A configuration whose pending set is a superset of a visited one's is *dominated* and need
/// not be explored: pending operations have no return
/// event, so they never constrain which operation may go next, and the configuration that
/// took fewer of them can still do everything the other can. Without this, every subset of the
/// pending operations called so far would be explored: exponential in their number.
struct Visited<S> {
    completed: Box<[u64]>,
    state: S,
    /// An antichain: no element is a subset of another.
    pending: Vec<Box<[u64]>>,
}

fn is_subset(small: &[u64], large: &[u64]) -> bool {
    small.iter().zip(large).all(|(s, l)| s & !l == 0)
}

/// The memo of visited configurations, bucketed by a hash of the completed set and the state.
type Cache<S> = HashMap<u64, Vec<Visited<S>>, BuildHasherDefault<PreHashed>>;

/// A per-operation random word; the XOR of those of the linearized operations is an
/// incrementally maintained hash of the bitset (Zobrist hashing).
fn zobrist(op: usize) -> u64 {
    // splitmix64's finaliser.
    let mut z = (op as u64)
        .wrapping_add(1)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn state_hash<S: Hash>(state: &S) -> u64 {
    // `DefaultHasher::new()` uses fixed keys: the search is deterministic run to run.
    let mut hasher = DefaultHasher::new();
    state.hash(&mut hasher);
    hasher.finish()
}

/// Whether taking pending operation `pending` (state `before` → `after`) enables another of the
/// `candidates`: see [`PendingHints::lazy`].
fn enables<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    candidates: &[usize],
    pending: usize,
    before: &M::State,
    after: &M::State,
) -> bool {
    candidates.iter().any(|&other| {
        if other == pending {
            return false;
        }
        let op = &ops[other];
        match &op.output {
            Some(output) => {
                model.step(before, &op.input, output).is_none()
                    && model.step(after, &op.input, output).is_some()
            }
            None => {
                model
                    .step_unobserved(before, &op.input)
                    .iter()
                    .all(|next| next == before)
                    && model
                        .step_unobserved(after, &op.input)
                        .iter()
                        .any(|next| next != after)
            }
        }
    })
}

fn malformed(culprit: usize, problem: String) -> Outcome {
    Outcome::Stuck(Stuck {
        kind: ViolationKind::Malformed,
        culprit,
        prefix: Vec::new(),
        state: String::new(),
        problem: Some(problem),
    })
}

/// The search proper. `spent` counts visited configurations and is shared across the keys of
/// a decomposed history; the search gives up with `Unknown` when it would exceed `limit`.
pub(super) fn search<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    pending_hints: PendingHints<'_>,
    limit: u64,
    spent: &mut u64,
) -> Outcome {
    for (i, op) in ops.iter().enumerate() {
        match (op.ret, &op.output) {
            (Some(ret), Some(_)) if ret < op.call => {
                return malformed(
                    i,
                    format!("returns at t={ret} before it is called at t={}", op.call),
                )
            }
            (Some(_), None) => return malformed(i, "has a return time but no output".into()),
            (None, Some(_)) => return malformed(i, "has an output but no return time".into()),
            _ => {}
        }
    }
    // Operations that never returned need not take effect: the search is done once every
    // operation that returned is linearized.
    let remaining = ops.iter().filter(|op| op.ret.is_some()).count();
    if remaining == 0 {
        return Outcome::Linearizable;
    }

    let mut events = Events::new(ops);
    let hints = Hints {
        read_only: ops
            .iter()
            .map(|op| {
                op.output
                    .as_ref()
                    .is_some_and(|output| model.is_read_only(&op.input, output))
            })
            .collect(),
        class: pending_hints.class.filter(|class| class.len() == ops.len()),
        lazy: pending_hints.lazy,
    };
    // A plain depth-first search finds a linearization fastest when there is one, but when
    // there is none and many operations never returned it can explore the same
    // configurations many times over (see `explore`); rounds by pending operations explore
    // each once, at a higher cost per configuration. So: depth first within a tenth of the
    // budget, then by rounds with what is left.
    let first = if pending_hints.rounds_only {
        *spent
    } else {
        spent
            .saturating_add(limit.saturating_sub(*spent) / 10)
            .min(limit)
    };
    match explore(
        model,
        ops,
        &hints,
        &mut events,
        remaining,
        false,
        first,
        spent,
    ) {
        Outcome::Unknown if *spent < limit => {}
        outcome => return outcome,
    }
    let mut events = Events::new(ops);
    explore(
        model,
        ops,
        &hints,
        &mut events,
        remaining,
        true,
        limit,
        spent,
    )
}

/// Explores configurations until one linearizes every completed operation. With `by_rounds`,
/// taking a pending operation makes a seed of the next round instead of descending (see
/// below); otherwise pending operations are tried in the same depth-first stack.
#[allow(clippy::too_many_arguments)]
fn explore<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    hints: &Hints<'_>,
    events: &mut Events,
    mut remaining: usize,
    by_rounds: bool,
    limit: u64,
    spent: &mut u64,
) -> Outcome {
    let mut linearized = Linearized::new(ops);
    let mut cache: Cache<M::State> = Cache::default();
    let root = model.init();
    let (_, blocker) = events.candidates(ops, hints);
    let mut deepest = Deepest {
        blocker,
        prefix: Vec::new(),
        state: format!("{root:?}"),
    };

    // Rounds by the number of pending operations taken: round k explores, depth first over
    // completed operations only, every configuration that took exactly k pending operations;
    // taking one more makes a seed of round k + 1. So every configuration is explored after
    // all those that took a subset of its pending operations — the ones that dominate it —
    // and none is explored twice. (A plain depth-first search that tries pending operations
    // in the same stack explores configurations that a later branch then dominates, and
    // re-explores their subtrees: tens of times more work with many lost writes. It is
    // still the faster way to *find* a linearization.)
    let mut round = vec![Seed {
        state: root,
        path: None,
    }];
    let mut next_round = Vec::new();
    while !round.is_empty() {
        for seed in round.drain(..) {
            // Rebuild the seed's configuration; undone in reverse order below.
            let prefix = ops_of(&seed.path);
            for &op in &prefix {
                events.lift(op);
                linearized.toggle(op);
                if ops[op].ret.is_some() {
                    remaining -= 1;
                }
            }
            let (candidates, _) = events.candidates(ops, hints);
            let mut frames = vec![Frame {
                state: seed.state,
                candidates,
                next: 0,
                alternatives: Vec::new(),
                chosen: None,
                path: seed.path,
            }];

            while let Some(top) = frames.last_mut() {
                // Coming back to this frame: undo the operation that led above it.
                if let Some(op) = top.chosen.take() {
                    events.unlift(op);
                    linearized.toggle(op);
                    if ops[op].ret.is_some() {
                        remaining += 1;
                    }
                }

                // Find the next untried completed operation from this configuration that
                // leads to a configuration neither visited nor dominated; pending ones that
                // do become seeds of the next round.
                let mut step = None;
                loop {
                    let (op, next_state) = if let Some(state) = top.alternatives.pop() {
                        (top.candidates[top.next - 1], state)
                    } else if top.next < top.candidates.len() {
                        let op = top.candidates[top.next];
                        top.next += 1;
                        let operation = &ops[op];
                        match &operation.output {
                            Some(output) => {
                                match model.step(&top.state, &operation.input, output) {
                                    Some(state) => {
                                        if hints.read_only[op] {
                                            // If any linearization exists from here, one
                                            // starts with this operation: it changes
                                            // nothing, so moving it first changes no other
                                            // step, and linearizing it early only lifts a
                                            // return event, which relaxes the real-time
                                            // order. Nothing else needs trying from here.
                                            top.next = top.candidates.len();
                                        }
                                        (op, state)
                                    }
                                    None => continue,
                                }
                            }
                            None => {
                                let mut alternatives =
                                    model.step_unobserved(&top.state, &operation.input);
                                // A pending operation that leaves the state unchanged is
                                // equivalent to one that never took effect, which the
                                // search already allows.
                                alternatives.retain(|state| *state != top.state);
                                if hints.lazy {
                                    alternatives.retain(|after| {
                                        enables(model, ops, &top.candidates, op, &top.state, after)
                                    });
                                }
                                alternatives.reverse();
                                top.alternatives = alternatives;
                                continue;
                            }
                        }
                    } else {
                        break;
                    };

                    linearized.toggle(op);
                    let hash = linearized.completed_hash
                        ^ state_hash(&next_state).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    let bucket = cache.entry(hash).or_default();
                    let same = bucket
                        .iter_mut()
                        .find(|v| *v.completed == *linearized.completed && v.state == next_state);
                    if same.as_ref().is_some_and(|v| {
                        v.pending.iter().any(|p| is_subset(p, &linearized.pending))
                    }) {
                        linearized.toggle(op);
                        continue;
                    }
                    if *spent >= limit {
                        return Outcome::Unknown;
                    }
                    *spent += 1;
                    let pending = linearized.pending.clone().into_boxed_slice();
                    match same {
                        Some(visited) => {
                            // Entries this one dominates can no longer prune anything.
                            visited.pending.retain(|p| !is_subset(&pending, p));
                            visited.pending.push(pending);
                        }
                        None => bucket.push(Visited {
                            completed: linearized.completed.clone().into_boxed_slice(),
                            state: next_state.clone(),
                            pending: vec![pending],
                        }),
                    }
                    if by_rounds && ops[op].ret.is_none() {
                        linearized.toggle(op);
                        next_round.push(Seed {
                            state: next_state,
                            path: extend(&top.path, op),
                        });
                        continue;
                    }
                    step = Some((op, next_state));
                    break;
                }

                let Some((op, state)) = step else {
                    frames.pop();
                    continue;
                };
                top.chosen = Some(op);
                let path = extend(&top.path, op);
                events.lift(op);
                if ops[op].ret.is_some() {
                    remaining -= 1;
                    if remaining == 0 {
                        return Outcome::Linearizable;
                    }
                }
                let (candidates, blocker) = events.candidates(ops, hints);
                if blocker > deepest.blocker {
                    deepest = Deepest {
                        blocker,
                        prefix: ops_of(&path),
                        state: format!("{state:?}"),
                    };
                }
                frames.push(Frame {
                    state,
                    candidates,
                    next: 0,
                    alternatives: Vec::new(),
                    chosen: None,
                    path,
                });
            }

            for &op in prefix.iter().rev() {
                events.unlift(op);
                linearized.toggle(op);
                if ops[op].ret.is_some() {
                    remaining += 1;
                }
            }
        }
        std::mem::swap(&mut round, &mut next_round);
    }

    // Every configuration was explored. Some completed operation is unlinearized in every one
    // of them, so a return is always left in the list and `deepest.blocker` is a return node.
    Outcome::Stuck(Stuck {
        kind: ViolationKind::NoLinearization,
        culprit: events.op.get(deepest.blocker).copied().unwrap_or(0),
        prefix: deepest.prefix,
        state: deepest.state,
        problem: None,
    })
}
