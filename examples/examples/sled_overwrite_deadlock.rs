//! A standalone reproduction of the sled 0.34.7 stall seen under `conclave bench cluster
//! --keyspace 1000 --value-size 1024` (issue 13): sled alone, no conclave code.
//!
//! One writer thread overwrites a small key space the way conclave's key-value machine does
//! (one `Tree::apply_batch` per write: the value plus an 8-byte "applied index" record), while
//! a watchdog thread checks that batches keep completing. When no batch completed for
//! `--stall-s` seconds the watchdog prints the elapsed time, the batches done and the process
//! id (for `gdb -p PID -batch -ex "thread apply all bt"`), then exits with status 2 (or, with
//! `--hold`, keeps the process alive for the debugger). A run that reaches `--duration-s`
//! without a stall exits 0.
//!
//! ```text
//! cargo run -p examples --example sled_overwrite_deadlock -- --duration-s 120
//! cargo run -p examples --example sled_overwrite_deadlock -- --mode single --flush-every-ms 0
//! ```

use clap::{Parser, ValueEnum};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Write {
    /// One `apply_batch` per write (value + applied index), like conclave's KvMachine.
    Batch,
    /// Two plain `insert`s per write (no batch).
    Single,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    /// sled's default.
    LowSpace,
    /// `Mode::HighThroughput`.
    HighThroughput,
}

#[derive(Parser, Debug)]
#[command(about = "Overwrite a small key space in sled until it stalls or the time is up")]
struct Args {
    /// How long to run without a stall before declaring success.
    #[arg(long, default_value_t = 60)]
    duration_s: u64,
    /// No completed batch for this long counts as a stall.
    #[arg(long, default_value_t = 10)]
    stall_s: u64,
    /// Distinct keys overwritten.
    #[arg(long, default_value_t = 1000)]
    keyspace: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 1024)]
    value_size: usize,
    /// sled's page cache, in bytes (sled's default is 1 GiB).
    #[arg(long, default_value_t = 1024 * 1024 * 1024)]
    cache_capacity: u64,
    /// sled's background flush period in ms (0: no background flusher; sled's default 500).
    #[arg(long, default_value_t = 500)]
    flush_every_ms: u64,
    /// sled's mode.
    #[arg(long, value_enum, default_value_t = Mode::LowSpace)]
    mode: Mode,
    /// Compress with zstd (needs sled's `compression` feature; refused otherwise).
    #[arg(long)]
    use_compression: bool,
    /// How each write is made.
    #[arg(long, value_enum, default_value_t = Write::Batch)]
    write: Write,
    /// Call `Db::flush` after every this many writes (0: never).
    #[arg(long, default_value_t = 0)]
    flush_every_writes: u64,
    /// Writer threads (conclave's applier is one).
    #[arg(long, default_value_t = 1)]
    threads: u64,
    /// On a stall, keep the process alive (for gdb) instead of exiting.
    #[arg(long)]
    hold: bool,
    /// Database directory (default: a fresh temporary directory).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.use_compression {
        anyhow::bail!("this build of sled has no `compression` feature; rebuild with it to try use_compression");
    }
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let db = sled::Config::new()
        .path(&dir)
        .cache_capacity(args.cache_capacity)
        .flush_every_ms(if args.flush_every_ms == 0 {
            None
        } else {
            Some(args.flush_every_ms)
        })
        .mode(match args.mode {
            Mode::LowSpace => sled::Mode::LowSpace,
            Mode::HighThroughput => sled::Mode::HighThroughput,
        })
        .open()?;
    let tree = db.open_tree("kv")?;
    println!(
        "pid {} dir {} args {:?}",
        std::process::id(),
        dir.display(),
        args
    );

    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    for t in 0..args.threads {
        let tree = tree.clone();
        let db = db.clone();
        let done = done.clone();
        let args_keyspace = args.keyspace;
        let value_size = args.value_size;
        let write = args.write;
        let flush_every = args.flush_every_writes;
        std::thread::Builder::new()
            .name(format!("writer-{t}"))
            .spawn(move || -> sled::Result<()> {
                // A cheap deterministic generator: no extra dependency.
                let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (t + 1);
                let mut value = vec![0u8; value_size];
                let mut n: u64 = 0;
                loop {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let key = format!("dkey-{:06}", x % args_keyspace);
                    value[..8].copy_from_slice(&x.to_le_bytes());
                    n += 1;
                    match write {
                        Write::Batch => {
                            let mut batch = sled::Batch::default();
                            batch.insert(key.as_bytes(), value.as_slice());
                            batch.insert(&b"m/applied"[..], &n.to_be_bytes()[..]);
                            tree.apply_batch(batch)?;
                        }
                        Write::Single => {
                            tree.insert(key.as_bytes(), value.as_slice())?;
                            tree.insert(b"m/applied", &n.to_be_bytes())?;
                        }
                    }
                    if flush_every > 0 && n % flush_every == 0 {
                        db.flush()?;
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })?;
    }

    // The watchdog: the main thread.
    let mut last = 0;
    let mut last_progress = Instant::now();
    let mut last_report = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = done.load(Ordering::Relaxed);
        if now != last {
            last = now;
            last_progress = Instant::now();
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            println!(
                "t={:>5.1}s batches={} ({:.0}/s)",
                start.elapsed().as_secs_f64(),
                now,
                now as f64 / start.elapsed().as_secs_f64()
            );
        }
        if last_progress.elapsed() >= Duration::from_secs(args.stall_s) {
            println!(
                "STALL: no batch completed for {:.1}s; elapsed {:.1}s, batches done {}, pid {}",
                last_progress.elapsed().as_secs_f64(),
                start.elapsed().as_secs_f64(),
                now,
                std::process::id()
            );
            if args.hold {
                println!("holding for the debugger (kill the process to end)");
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            std::process::exit(2);
        }
        if start.elapsed() >= Duration::from_secs(args.duration_s) {
            println!(
                "OK: {} batches in {:.1}s without a stall",
                now,
                start.elapsed().as_secs_f64()
            );
            return Ok(());
        }
    }
}
