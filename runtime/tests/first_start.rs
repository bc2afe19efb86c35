//! Issue 13, "no data lost": a node killed (kill -9) at any point of its very first start —
//! while the files of its data directory are being created (the WAL and its first segment, the
//! state store, the snapshot directory, the membership marks, the gossip incarnation) — starts
//! again, becomes ready and applies.
//!
//! Found in a loaded CI run: a follower killed ~10 ms after its first election logged `cannot
//! open the state machine … state store error` on every restart. The cause was redb's
//! `Database::create` killed half way: it sizes the file and writes its header *without* the
//! magic number, fsyncs, and only then writes the magic number; redb ≥ 2.4 refuses a non-empty
//! file without it (`I/O error: invalid data`) on every later open. Before the fix, a shell loop
//! killing a fresh single node 0–30 ms after its start left such a file in 2 of 30 runs, and
//! [`a_single_node_killed_at_each_step_of_its_first_start_restarts_and_applies`] failed in 3 of
//! 3 runs at a kill 1.5–8 ms into the state store's creation. The store is now created under
//! another name and renamed into place (`runtime/src/storage/redb_store.rs`, `ensure_created`;
//! sled's likewise). The sled walk found a second cause, at every sled open: a kill while sled
//! writes its snapshot file left `snap.*.generating`, which sled then reads and refuses
//! (spacejam/sled#1527); its kills as that file appears failed 3 of 3 runs before
//! `SledStore::open` removed such files.
//!
//! CI runs a short loop; `CONCLAVE_FIRSTSTART_KILLS=N` makes each test kill N times (the single
//! node's kills after the fixed points are random offsets into the store's creation, random
//! delays of 0–200 ms after the spawn and, for sled, more snapshot kills).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Cluster;
use conclave::config::{ReadLevel, StorageEngine};
use conclave::storage::health::StorageCondition;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How many kills a test makes: `CONCLAVE_FIRSTSTART_KILLS`, else `default`.
fn kills(default: usize) -> usize {
    std::env::var("CONCLAVE_FIRSTSTART_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Every file and directory under `dir`, relative to it (nothing if it does not exist).
fn paths(dir: &Path) -> BTreeSet<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if let Ok(rel) = path.strip_prefix(root) {
                out.insert(rel.to_owned());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

/// Polls `dir` until a path never seen before has appeared `steps` times (several appearing
/// between two polls count once). Gives up, returning false, once no new path has appeared for
/// `quiet` (the node has created everything it creates at start). Blocking, on purpose: the
/// kill must follow the step as closely as possible.
fn wait_for_step(dir: &Path, steps: usize, quiet: Duration) -> bool {
    let mut last_new = Instant::now();
    let mut seen = BTreeSet::new();
    let mut reached = 0;
    while last_new.elapsed() < quiet {
        let now = paths(dir);
        if now.iter().any(|p| !seen.contains(p)) {
            reached += 1;
            if reached >= steps {
                return true;
            }
            seen.extend(now);
            last_new = Instant::now();
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    false
}

/// Polls `dir` until the state store's first file (`sm…`) appears, then waits `offset`. False if
/// it never appears within `timeout`. Blocking, like [`wait_for_step`].
fn wait_for_store(dir: &Path, offset: Duration, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let appeared = std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("sm"))
        });
        if appeared {
            let until = Instant::now() + offset;
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            return true;
        }
        std::thread::sleep(Duration::from_micros(20));
    }
    false
}

/// How the state store's files looked right after a kill (`sm.redb: magic` is a database redb
/// finished creating; `zero` the header of one whose creation was cut short).
fn store_files(dir: &Path) -> String {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return String::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("sm"))
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                return format!("{name}: directory");
            }
            let head = std::fs::read(e.path())
                .map(|b| b.into_iter().take(4).collect::<Vec<u8>>())
                .unwrap_or_default();
            let state = if head.is_empty() {
                "empty"
            } else if head == b"redb" {
                "magic"
            } else if head.iter().all(|b| *b == 0) {
                "zero"
            } else {
                "other"
            };
            format!("{name}: {state}")
        })
        .collect();
    out.sort();
    out.join(", ")
}

/// Node `i` serves: a write through it (a follower forwards it) is committed, and a
/// linearizable read on it — answered once it has applied that write — returns it. Its storage
/// is healthy.
async fn serves(c: &Cluster, i: usize, key: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let client = c.client(i);
    let value = format!("{key}-value").into_bytes();
    let mut last = String::new();
    while Instant::now() < deadline {
        match client.put(key.as_bytes(), value.clone(), Some(key)).await {
            Ok(_) => match client
                .get(key.as_bytes(), Some(ReadLevel::Linearizable))
                .await
            {
                Ok(Some(v)) if v == value => match client.status().await {
                    Ok(s) if s.storage == StorageCondition::Healthy && s.applied_index >= 1 => {
                        return Ok(())
                    }
                    Ok(s) => last = format!("status {s:?}"),
                    Err(e) => last = format!("status: {e}"),
                },
                Ok(other) => last = format!("read back {other:?}"),
                Err(e) => last = format!("get: {e}"),
            },
            Err(e) => last = format!("put: {e}"),
        }
        actix::clock::sleep(Duration::from_millis(50)).await;
    }
    Err(last)
}

/// Where the single-node test kills.
#[derive(Clone, Copy, Debug)]
enum KillPoint {
    /// Right after the `n`-th new path appeared in the data directory.
    Step(usize),
    /// This long after the state store's first file appeared: redb's creation of a file spans
    /// two fsyncs, a few milliseconds; these offsets land before, inside and after it.
    Store(Duration),
    /// This long after the process was spawned.
    After(Duration),
    /// As soon as sled begins to write a snapshot (`sm/snap.*.generating` appears; sled
    /// writes one at every open).
    SledSnapshot,
}

/// Polls `dir` until a path whose name starts with `prefix` and ends with `suffix` appears
/// anywhere under it. False if none does within `timeout`. Blocking, like [`wait_for_step`].
fn wait_for_file(dir: &Path, prefix: &str, suffix: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let found = paths(dir).iter().any(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
        });
        if found {
            return true;
        }
        std::thread::sleep(Duration::from_micros(20));
    }
    false
}

/// The kills CI makes: every step of the first start, then offsets into the state store's
/// creation (and, for sled, the start of its snapshot writes). `CONCLAVE_FIRSTSTART_KILLS`
/// adds random store offsets (0–10 ms), random delays after the spawn (0–200 ms) and, for
/// sled, snapshot kills, in turn, up to that many kills in all.
fn kill_points(rng: &mut ChaCha8Rng, engine: StorageEngine) -> Vec<KillPoint> {
    let us = Duration::from_micros;
    let sled = engine == StorageEngine::Sled;
    let mut points: Vec<KillPoint> = (1..=8).map(KillPoint::Step).collect();
    points.extend(
        [0, 200, 500, 1_000, 1_500, 2_000, 3_000, 5_000, 8_000].map(|u| KillPoint::Store(us(u))),
    );
    if sled {
        points.extend([KillPoint::SledSnapshot; 8]);
    }
    let total = kills(points.len());
    while points.len() < total {
        points.push(match points.len() % 3 {
            0 => KillPoint::Store(us(rng.random_range(0..=10_000))),
            1 if sled => KillPoint::SledSnapshot,
            _ => KillPoint::After(Duration::from_millis(rng.random_range(0..=200))),
        });
    }
    points.truncate(total);
    points
}

/// Kills a fresh single node with `engine` at every point of [`kill_points`], restarts it and
/// checks that it serves; `whole` is how its complete state store looks in [`store_files`].
async fn kill_walk(engine: StorageEngine, whole: &str) {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let points = kill_points(&mut rng, engine);
    // How the state store looked at the kills (printed: whether they landed inside its
    // creation depends on the disk's speed).
    let mut store_states = BTreeSet::new();
    let mut before_store = 0;
    for (k, point) in points.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Cluster::new_with(dir.path(), 1, |cfg| cfg.storage.engine = engine);
        let data = c.configs[0].node.data_dir.clone();
        let reached = match *point {
            KillPoint::Step(n) => wait_for_step(&data, n, Duration::from_secs(2)),
            KillPoint::Store(offset) => wait_for_store(&data, offset, Duration::from_secs(20)),
            KillPoint::After(delay) => {
                std::thread::sleep(delay);
                true
            }
            KillPoint::SledSnapshot => {
                wait_for_file(&data, "snap.", ".generating", Duration::from_secs(20))
            }
        };
        c.kill9(0);
        let left = paths(&data);
        let store = store_files(&data);
        if store.is_empty() {
            before_store += 1;
        }
        eprintln!("kill {k} at {point:?} (reached: {reached}): [{store}] {left:?}");
        store_states.insert(store.clone());
        c.restart(0);
        if let Err(e) = serves(&c, 0, &format!("k{k}"), Duration::from_secs(30)).await {
            panic!(
                "killed at {point:?} of its first start (state store [{store}], {left:?}), the \
                 node does not serve after a restart: {e}\n{}",
                c.logs()
            );
        }
    }
    eprintln!("state store at the kills: {store_states:?}");
    // The walk began before the store existed and went on until it was complete.
    assert!(before_store > 0, "{store_states:?}");
    assert!(store_states.contains(whole), "{store_states:?}");
}

#[actix::test]
async fn a_single_node_killed_at_each_step_of_its_first_start_restarts_and_applies() {
    kill_walk(StorageEngine::Redb, "sm.redb: magic").await;
}

#[actix::test]
async fn a_single_sled_node_killed_at_each_step_of_its_first_start_restarts_and_applies() {
    kill_walk(StorageEngine::Sled, "sm: directory").await;
}

#[actix::test]
async fn a_follower_killed_right_after_the_first_election_restarts_and_applies() {
    let n = kills(3);
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    for k in 0..n {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Cluster::new(dir.path(), 3);
        if k % 3 == 2 {
            // The CI run's case from the other side: a node still creating its state store
            // while the others elect a leader (what a loaded machine makes of a first start).
            let data = c.configs[2].node.data_dir.clone();
            let offset = Duration::from_micros(rng.random_range(0..=5_000));
            let reached = wait_for_store(&data, offset, Duration::from_secs(20));
            c.kill9(2);
            let store = store_files(&data);
            eprintln!(
                "kill {k}: node 3 {offset:?} into its store's creation ({reached}): [{store}]"
            );
            c.restart(2);
            if let Err(e) = serves(&c, 2, &format!("k{k}"), Duration::from_secs(60)).await {
                panic!(
                    "node 3 killed {offset:?} into its store's creation ([{store}]) does not \
                     serve after a restart: {e}\n{}",
                    c.logs()
                );
            }
            continue;
        }
        let leader = c.leader(Duration::from_secs(30)).await;
        let f = (leader + 1) % 3;
        // Every third kill lands right after the first applied entries: one write acknowledged
        // by the leader (the follower may or may not have applied it yet).
        let point = if k % 3 == 1 {
            let wrote = c
                .client(leader)
                .put(b"first", b"1".to_vec(), Some("first"))
                .await;
            format!("after the first write ({:?})", wrote.map(|a| a.index))
        } else {
            let ms = rng.random_range(0..=50u64);
            actix::clock::sleep(Duration::from_millis(ms)).await;
            format!("{ms} ms after the election")
        };
        c.kill9(f);
        let data = &c.configs[f].node.data_dir;
        let left = paths(data);
        let store = store_files(data);
        eprintln!("kill {k}: follower {f} {point}: [{store}] {left:?}");
        c.restart(f);
        if let Err(e) = serves(&c, f, &format!("k{k}"), Duration::from_secs(60)).await {
            panic!(
                "follower {f} killed {point} (state store [{store}], {left:?}) does not serve \
                 after a restart: {e}\n{}",
                c.logs()
            );
        }
    }
}
