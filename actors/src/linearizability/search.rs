//! Wing & Gong's search with Lowe's memoisation (the algorithm of porcupine and knossos'
//! `linear` checker), over one (sub-)history.

use super::{Model, Operation, SearchBudget, Verdict, Violation, ViolationKind};
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::{BuildHasherDefault, Hash, Hasher};

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
    match search(model, history, budget.max_states, &mut spent) {
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
    /// still in the list — and that return's node (`NIL` if none is left). Completed
    /// operations come first: trying pending ones last finds a linearization sooner, since
    /// most pending operations of a real history never have to take effect.
    fn candidates<I, O>(&self, ops: &[Operation<I, O>]) -> (Vec<usize>, usize) {
        let mut completed = Vec::new();
        let mut pending = Vec::new();
        let mut node = self.next[0];
        while node != NIL && self.is_call[node] {
            let op = self.op[node];
            if ops[op].ret.is_some() {
                completed.push(op);
            } else {
                pending.push(op);
            }
            node = self.next[node];
        }
        completed.extend(pending);
        (completed, node)
    }
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

/// The memo of visited configurations: bitset of linearized operations and model state,
/// bucketed by a hash of both.
type Cache<S> = HashMap<u64, Vec<(Box<[u64]>, S)>, BuildHasherDefault<PreHashed>>;

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
    let mut remaining = ops.iter().filter(|op| op.ret.is_some()).count();
    if remaining == 0 {
        return Outcome::Linearizable;
    }

    let mut events = Events::new(ops);
    let mut linearized = vec![0u64; ops.len().div_ceil(64)];
    let mut linearized_hash = 0u64;
    let mut cache: Cache<M::State> = Cache::default();

    let root = model.init();
    let (candidates, blocker) = events.candidates(ops);
    let mut deepest = Deepest {
        blocker,
        prefix: Vec::new(),
        state: format!("{root:?}"),
    };
    let mut frames = vec![Frame {
        state: root,
        candidates,
        next: 0,
        alternatives: Vec::new(),
        chosen: None,
    }];

    while let Some(top) = frames.last_mut() {
        // Coming back to this frame: undo the operation that led above it.
        if let Some(op) = top.chosen.take() {
            events.unlift(op);
            linearized[op / 64] &= !(1 << (op % 64));
            linearized_hash ^= zobrist(op);
            if ops[op].ret.is_some() {
                remaining += 1;
            }
        }

        // Find the next untried (operation, next state) from this configuration that leads to
        // a configuration not visited before.
        let mut step = None;
        loop {
            let (op, next_state) = if let Some(state) = top.alternatives.pop() {
                (top.candidates[top.next - 1], state)
            } else if top.next < top.candidates.len() {
                let op = top.candidates[top.next];
                top.next += 1;
                let operation = &ops[op];
                match &operation.output {
                    Some(output) => match model.step(&top.state, &operation.input, output) {
                        Some(state) => (op, state),
                        None => continue,
                    },
                    None => {
                        let mut alternatives = model.step_unobserved(&top.state, &operation.input);
                        // A pending operation that leaves the state unchanged is equivalent to
                        // one that never took effect, which the search already allows.
                        alternatives.retain(|state| *state != top.state);
                        alternatives.reverse();
                        top.alternatives = alternatives;
                        continue;
                    }
                }
            } else {
                break;
            };

            linearized[op / 64] |= 1 << (op % 64);
            let hash = (linearized_hash ^ zobrist(op))
                ^ state_hash(&next_state).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let bucket = cache.entry(hash).or_default();
            if bucket
                .iter()
                .any(|(bits, state)| **bits == *linearized && *state == next_state)
            {
                linearized[op / 64] &= !(1 << (op % 64));
                continue;
            }
            if *spent >= limit {
                return Outcome::Unknown;
            }
            *spent += 1;
            bucket.push((linearized.clone().into_boxed_slice(), next_state.clone()));
            step = Some((op, next_state));
            break;
        }

        let Some((op, state)) = step else {
            frames.pop();
            continue;
        };
        top.chosen = Some(op);
        events.lift(op);
        linearized_hash ^= zobrist(op);
        if ops[op].ret.is_some() {
            remaining -= 1;
            if remaining == 0 {
                return Outcome::Linearizable;
            }
        }
        let (candidates, blocker) = events.candidates(ops);
        if blocker > deepest.blocker {
            deepest = Deepest {
                blocker,
                prefix: frames.iter().filter_map(|frame| frame.chosen).collect(),
                state: format!("{state:?}"),
            };
        }
        frames.push(Frame {
            state,
            candidates,
            next: 0,
            alternatives: Vec::new(),
            chosen: None,
        });
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
