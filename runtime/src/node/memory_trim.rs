//! Hands memory the allocator keeps but nothing uses back to the operating system.
//!
//! Why: glibc's allocator keeps freed memory in its arenas (one per thread that allocates, up
//! to eight per core) and returns little of it by itself. A node's working set rises and falls
//! with load — the in-memory Raft log between two snapshots, entries waiting for the applier,
//! transport queues — so without this its RSS stays at the highest point it ever reached, not
//! at what it holds now. Measured on this machine (a 64 KiB-value soak, three release nodes,
//! after 200 s): RSS 444 → 330 MiB and 528 → 355 MiB when `malloc_trim(0)` was called once
//! from a debugger; a 30-minute soak had climbed to 1.5 GiB for about 350 MiB in use.
//!
//! A plain thread at normal priority (not the snapshotter's idle-priority one: `malloc_trim`
//! takes each arena's lock in turn, and a starved thread holding one would stall every thread
//! allocating from it) calls `malloc_trim(0)` every [`TRIM_EVERY`]; each call is timed in
//! `conclave_memory_trim_seconds` and what it gave back is counted in
//! `conclave_memory_trimmed_bytes_total`. On other platforms and allocators it does nothing:
//! the `conclave` binary allocates with mimalloc (runtime/src/main.rs), which returns freed
//! pages itself, so there it reaches only what still uses glibc's heap; it is kept for
//! programs that embed the runtime with the system allocator.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

/// How often the allocator's free memory is handed back.
pub const TRIM_EVERY: Duration = Duration::from_secs(30);

/// The trimming thread; it ends when this is dropped (with the node).
pub struct MemoryTrimmer {
    _stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl MemoryTrimmer {
    /// Starts the thread, trimming every `every`.
    pub fn start(every: Duration) -> std::io::Result<MemoryTrimmer> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("memory-trim".to_owned())
            .spawn(move || loop {
                match stopped.recv_timeout(every) {
                    Err(RecvTimeoutError::Timeout) => {
                        let t = std::time::Instant::now();
                        let released = trim();
                        metrics::histogram!("conclave_memory_trim_seconds")
                            .record(t.elapsed().as_secs_f64());
                        metrics::counter!("conclave_memory_trimmed_bytes_total")
                            .increment(released);
                    }
                    // The node dropped its trimmer.
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            })?;
        Ok(MemoryTrimmer {
            _stop: stop,
            thread,
        })
    }

    /// Whether the thread has ended (it should not while the trimmer lives).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}

/// Trims the allocator once; returns how much the resident set shrank (bytes, 0 if it did
/// not or cannot be read).
pub fn trim() -> u64 {
    let before = resident_bytes();
    sys::malloc_trim();
    match (before, resident_bytes()) {
        (Some(b), Some(a)) => b.saturating_sub(a),
        _ => 0,
    }
}

/// This process's resident set size, from `/proc/self/statm` (Linux); `None` elsewhere.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// The page size `/proc/self/statm` counts in.
fn page_size() -> u64 {
    sys::page_size()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod sys {
    /// `sysconf(_SC_PAGESIZE)`.
    pub fn page_size() -> u64 {
        // SAFETY: sysconf takes an integer and returns one.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(n).unwrap_or(4096)
    }

    /// glibc's `malloc_trim(0)`: releases the free memory of every arena (not only the top of
    /// the heap) with `MADV_DONTNEED`.
    pub fn malloc_trim() {
        // SAFETY: malloc_trim takes an integer, touches only the allocator's own state, and
        // is safe to call from any thread at any time.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod sys {
    /// Other allocators return memory by themselves (or offer no such call).
    pub fn malloc_trim() {}

    /// Only used with `/proc/self/statm`, i.e. on Linux.
    pub fn page_size() -> u64 {
        4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_memory_is_given_back() {
        // Many mid-sized blocks (below the mmap threshold, so they live in the heap), the
        // first of each pair kept, so the freed ones cannot be returned by shrinking the top.
        let mut keep = Vec::new();
        let mut free = Vec::new();
        for i in 0..2048 {
            let v = vec![i as u8; 60 * 1024];
            if i % 64 == 0 {
                keep.push(v);
            } else {
                free.push(v);
            }
        }
        let touched = resident_bytes().unwrap();
        drop(free);
        let released = trim();
        let after = resident_bytes().unwrap();
        assert!(
            released > 50 * 1024 * 1024 && after < touched,
            "released {released} bytes; resident {touched} -> {after}"
        );
        assert_eq!(keep.len(), 32);
    }

    #[test]
    fn the_thread_runs_until_the_trimmer_is_dropped() {
        let t = MemoryTrimmer::start(Duration::from_millis(5)).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert!(!t.is_finished(), "the thread ended on its own");
        let MemoryTrimmer { _stop, thread } = t;
        drop(_stop);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !thread.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "the thread outlived its trimmer"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
