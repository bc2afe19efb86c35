//! What the state store writes per applied entry, by commit strategy (docs/storage.md, "Why
//! staged"): the key-value machine's pattern on raw redb — each entry a 1 KiB value on one of
//! 4,096 keys plus its two idempotency records, in runs of `CONCLAVE_REDB_RUN` entries (default
//! 5), over a store preloaded with `CONCLAVE_REDB_BIG_MB` MiB of 64 KiB values (default 256),
//! with a durable commit every `CONCLAVE_REDB_DURABLE_EVERY` entries (default `300`; a comma
//! list runs each; 300 is 100 ms at 3,000 writes/s, what `DURABLE_EVERY` gives under load).
//!
//! - `per_run`: a commit per run without fsync (`Durability::None`), durable every N entries —
//!   what `RedbStore` did before runs were staged;
//! - `staged`: runs staged in one write transaction, committed durably every N entries — what
//!   `RedbStore` does now.
//!
//! Printed per strategy: bytes the process caused to be written (`write_bytes` of
//! `/proc/self/io`, Linux) per entry, entries per second of this process's time, and the ratio
//! of the two in the same run. Not a criterion suite: `cargo bench -p benches --bench
//! redb_commits`; `CONCLAVE_REDB_ENTRIES` (default 30,000) sets the length.

#![allow(missing_docs)]

use redb::{Database, Durability, TableDefinition, WriteTransaction};
use std::time::Instant;

const KV: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}: a number")))
        .unwrap_or(default)
}

/// Bytes this process caused to be written to storage so far (Linux; 0 elsewhere).
fn written() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// xorshift64: the same keys in both strategies.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

struct Outcome {
    bytes_per_entry: f64,
    entries_per_s: f64,
}

fn run(staged: bool, big_mb: u64, entries: u64, run_len: u64, durable_every: u64) -> Outcome {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Database::builder()
        .set_cache_size(64 << 20)
        .create_with_file_format_v3(true)
        .create(dir.path().join("sm.redb"))
        .expect("create");
    let big = vec![7u8; 64 * 1024];
    let mut i = 0;
    while i < big_mb * 16 {
        let mut tx = db.begin_write().expect("begin");
        tx.set_durability(Durability::Immediate);
        {
            let mut kv = tx.open_table(KV).expect("table");
            for _ in 0..64 {
                if i >= big_mb * 16 {
                    break;
                }
                kv.insert(format!("dbig-{i:08}").as_bytes(), big.as_slice())
                    .expect("insert");
                i += 1;
            }
        }
        tx.commit().expect("commit");
    }
    let small = vec![3u8; 1024];
    let mut x = 88_172_645_463_325_252u64;
    let (w0, t0) = (written(), Instant::now());
    let (mut index, mut since_durable) = (0u64, 0u64);
    let mut open: Option<WriteTransaction> = None;
    while index < entries {
        let tx = open.get_or_insert_with(|| {
            let mut tx = db.begin_write().expect("begin");
            tx.set_durability(Durability::None);
            tx
        });
        {
            let mut kv = tx.open_table(KV).expect("table");
            for _ in 0..run_len {
                index += 1;
                let key = format!("dsmall-{:05}", next(&mut x) % 4096);
                kv.insert(key.as_bytes(), small.as_slice()).expect("insert");
                let id = format!("k/{:016x}", next(&mut x));
                kv.insert(id.as_bytes(), [9u8; 24].as_slice())
                    .expect("insert");
                let mut by_index = b"e/".to_vec();
                by_index.extend_from_slice(&index.to_be_bytes());
                kv.insert(by_index.as_slice(), &id.as_bytes()[2..])
                    .expect("insert");
            }
            let mut meta = tx.open_table(META).expect("table");
            meta.insert("applied", index).expect("insert");
        }
        since_durable += run_len;
        let durable = since_durable >= durable_every;
        if durable || !staged {
            let mut tx = open.take().expect("open transaction");
            tx.set_durability(if durable {
                since_durable = 0;
                Durability::Immediate
            } else {
                Durability::None
            });
            tx.commit().expect("commit");
        }
    }
    if let Some(mut tx) = open.take() {
        tx.set_durability(Durability::Immediate);
        tx.commit().expect("commit");
    }
    let secs = t0.elapsed().as_secs_f64();
    Outcome {
        bytes_per_entry: (written() - w0) as f64 / entries as f64,
        entries_per_s: entries as f64 / secs,
    }
}

fn main() {
    let big_mb = env_u64("CONCLAVE_REDB_BIG_MB", 256);
    let entries = env_u64("CONCLAVE_REDB_ENTRIES", 30_000);
    let run_len = env_u64("CONCLAVE_REDB_RUN", 5).max(1);
    let every: Vec<u64> = std::env::var("CONCLAVE_REDB_DURABLE_EVERY")
        .unwrap_or_else(|_| "300".to_owned())
        .split(',')
        .map(|v| {
            v.trim()
                .parse()
                .expect("CONCLAVE_REDB_DURABLE_EVERY: numbers")
        })
        .collect();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "redb commits: {big_mb} MiB of 64 KiB values, {entries} entries in runs of {run_len}; load {}",
        load.trim()
    );
    for n in every {
        let per_run = run(false, big_mb, entries, run_len, n);
        let staged = run(true, big_mb, entries, run_len, n);
        println!(
            "durable every {n} entries: per_run {:.1} KB/entry, {:.0} entries/s; staged {:.1} KB/entry, {:.0} entries/s; staged/per_run bytes {:.2}x",
            per_run.bytes_per_entry / 1e3,
            per_run.entries_per_s,
            staged.bytes_per_entry / 1e3,
            staged.entries_per_s,
            staged.bytes_per_entry / per_run.bytes_per_entry.max(1.0)
        );
    }
}
