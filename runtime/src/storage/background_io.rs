//! Writing a large file in the background of a latency-sensitive WAL: snapshot images.
//!
//! Why this exists (measured, docs/performance.md "Snapshots taken under load"): a 1 GiB image
//! written as fast as the snapshotter can produce it lands in the page cache as up to 1 GiB of
//! dirty pages. The kernel then writes them back in bulk, and the image's final `fsync` waits
//! for all of it; meanwhile every write's WAL `fdatasync` on the same disk queues behind that
//! writeback. Three things keep the image out of the write path's way:
//!
//! - **Pacing** ([`Pacer`]): the image is written at most at `[snapshot] write_rate_mb_s`
//!   (a token bucket that does not let a writer that was held up rush to catch up).
//! - **Incremental writeback** ([`Writeback`]): every [`WRITEBACK_STEP`] bytes the writer
//!   starts the writeback of what it just wrote and waits for the step before it
//!   (`sync_file_range`), so at most two steps of the image are ever dirty or in flight, the
//!   device queue never holds more than that ahead of a WAL sync, and the final `fsync` is
//!   short. Each step written back is dropped from the page cache (`POSIX_FADV_DONTNEED`):
//!   three 1 GiB images per round would otherwise push the state machine's pages out of it,
//!   and the next snapshot would read the state from the disk.
//! - **Lower priority** ([`lower_thread_priority`]): the snapshotter's thread runs at nice
//!   [`BACKGROUND_NICE`] and, for the I/O it submits itself (the `sync_file_range` steps and
//!   the final `fsync`), the idle I/O class: the block layer serves it only when nothing of a
//!   normal class waits (mq-deadline and BFQ honour classes; `none` ignores them). The same
//!   priorities serve the snapshot transfer threads and a snapshot's import into the state
//!   store ([`PriorityGuard::background`]).
//! - **But never starved for good** ([`overdue`], [`PriorityGuard::foreground`]): on a
//!   saturated machine an idle-priority snapshot can wait as long as the machine stays busy,
//!   and the log it would compact keeps growing meanwhile (twice in memory, once in the WAL,
//!   and redb's file while the snapshot's read transaction pins pages). An image that falls
//!   behind twice its pace plus a grace is finished at normal priority.
//!
//! Linux only; elsewhere the writeback steps and the priorities are no-ops (the pacing still
//! applies, and the final `fsync` writes the image back).

use std::fs::File;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// Bytes between two writeback steps of a paced file: small enough that the dirty part of an
/// image (at most two steps) is nothing next to the device's queue, large enough that the
/// `sync_file_range` calls cost nothing (256 calls for 1 GiB).
pub const WRITEBACK_STEP: u64 = 4 * 1024 * 1024;

/// The nice value of a background writer's thread (0 is normal, 19 the lowest).
pub const BACKGROUND_NICE: i32 = 10;

/// A byte-rate limit: how long a writer must wait to stay at `bytes_per_s`.
///
/// A token bucket with a small burst: the schedule is `origin + written / rate`; a writer
/// ahead of it waits, and a writer that fell behind (descheduled, a slow disk) by more than
/// `burst` bytes' worth gets only `burst` of credit, so it does not then write at full
/// speed until it has caught up.
#[derive(Clone, Debug)]
pub struct Pacer {
    bytes_per_s: u64,
    burst: u64,
    origin: Instant,
    written: u64,
}

impl Pacer {
    /// A pacer at `bytes_per_s` (0: unpaced) allowing `burst` bytes of catch-up, starting
    /// `now`.
    pub fn new(bytes_per_s: u64, burst: u64, now: Instant) -> Pacer {
        Pacer {
            bytes_per_s,
            burst,
            origin: now,
            written: 0,
        }
    }

    /// The time `bytes` take at the pacer's rate.
    fn time_for(&self, bytes: u64) -> Duration {
        let nanos = u128::from(bytes) * 1_000_000_000 / u128::from(self.bytes_per_s.max(1));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Records that `n` more bytes were written at `now`; returns how long to wait before
    /// writing more (zero when unpaced or behind schedule).
    pub fn record(&mut self, n: u64, now: Instant) -> Duration {
        if self.bytes_per_s == 0 {
            return Duration::ZERO;
        }
        self.written = self.written.saturating_add(n);
        let due = self.origin + self.time_for(self.written);
        if due > now {
            return due - now;
        }
        // Behind schedule: keep at most `burst` of credit.
        let lag = now - due;
        let credit = self.time_for(self.burst);
        if lag > credit {
            self.origin += lag - credit;
        }
        Duration::ZERO
    }
}

/// One writeback step: wait for the bytes `wait` (written back since the previous step), and
/// start writing back `start` (just written). Each is `(offset, length)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WritebackStep {
    /// The range whose writeback was started by the previous step: wait for it.
    pub wait: Option<(u64, u64)>,
    /// The range written since the previous step: start its writeback.
    pub start: (u64, u64),
}

/// Where a file's incremental writeback is: which ranges were started and which are done.
#[derive(Clone, Debug)]
pub struct Writeback {
    step: u64,
    /// Everything below is written back and waited for.
    done_to: u64,
    /// Writeback started (not waited for) from `done_to` up to here.
    started_to: u64,
}

impl Writeback {
    /// Writeback every `step` bytes (0: never; the final `fsync` does it all).
    pub fn new(step: u64) -> Writeback {
        Writeback {
            step,
            done_to: 0,
            started_to: 0,
        }
    }

    /// Writeback every `step` bytes of a file whose first `len` bytes are already on disk (a
    /// received snapshot continued after a restart: its prefix was fsynced or is re-verified):
    /// the first step starts at `len`.
    pub fn resume(step: u64, len: u64) -> Writeback {
        Writeback {
            step,
            done_to: len,
            started_to: len,
        }
    }

    /// The bytes from the file's start that are written back and waited for.
    pub fn done_to(&self) -> u64 {
        self.done_to
    }

    /// The file is now `len` bytes long: the step to take, if a whole step was written
    /// since the last one.
    pub fn after_write(&mut self, len: u64) -> Option<WritebackStep> {
        if self.step == 0 || len < self.started_to.saturating_add(self.step) {
            return None;
        }
        let wait = (self.started_to > self.done_to)
            .then(|| (self.done_to, self.started_to - self.done_to));
        let start = (self.started_to, len - self.started_to);
        self.done_to = self.started_to;
        self.started_to = len;
        Some(WritebackStep { wait, start })
    }
}

/// How a [`PacedFile`] writes: its rate and writeback step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WritePacing {
    /// Bytes per second; 0: unpaced.
    pub bytes_per_s: u64,
    /// Bytes between writeback steps; 0: no incremental writeback.
    pub writeback_step: u64,
}

impl WritePacing {
    /// As fast as possible, written back only by the final `fsync` (tests, tools).
    pub const UNPACED: WritePacing = WritePacing {
        bytes_per_s: 0,
        writeback_step: 0,
    };

    /// `[snapshot] write_rate_mb_s` (10^6 bytes; 0: unpaced), with writeback every
    /// [`WRITEBACK_STEP`] either way.
    pub fn from_rate_mb_s(mb_s: u64) -> WritePacing {
        WritePacing {
            bytes_per_s: mb_s.saturating_mul(1_000_000),
            writeback_step: WRITEBACK_STEP,
        }
    }
}

/// A file written at a paced rate with incremental writeback (see the module docs). Put a
/// `BufWriter` in front of it: each write it receives is paced and may take a writeback step.
#[derive(Debug)]
pub struct PacedFile {
    file: File,
    pacer: Pacer,
    writeback: Writeback,
    len: u64,
}

impl PacedFile {
    /// Paces writes to `file` (empty, written from its start) as `pacing` says.
    pub fn new(file: File, pacing: WritePacing) -> PacedFile {
        PacedFile {
            file,
            // Up to one writeback step of catch-up.
            pacer: Pacer::new(pacing.bytes_per_s, pacing.writeback_step, Instant::now()),
            writeback: Writeback::new(pacing.writeback_step),
            len: 0,
        }
    }

    /// The file (to `fsync` it).
    pub fn into_file(self) -> File {
        self.file
    }
}

impl Write for PacedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.len += n as u64;
        if let Some(step) = self.writeback.after_write(self.len) {
            sys::start_writeback(&self.file, step.start)?;
            if let Some(wait) = step.wait {
                sys::wait_writeback(&self.file, wait, true)?;
            }
        }
        let delay = self.pacer.record(n as u64, Instant::now());
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// A reader paced at a [`Pacer`]'s rate: reading what a restore consumes (a snapshot image
/// imported into the state machine) at a bounded rate bounds what the import writes.
#[derive(Debug)]
pub struct PacedReader<R> {
    inner: R,
    pacer: Pacer,
}

impl<R: Read> PacedReader<R> {
    /// Reads `inner` at most at `bytes_per_s` (0: unpaced), with up to `burst` bytes of
    /// catch-up.
    pub fn new(inner: R, bytes_per_s: u64, burst: u64) -> PacedReader<R> {
        PacedReader {
            inner,
            pacer: Pacer::new(bytes_per_s, burst, Instant::now()),
        }
    }

    /// The wrapped reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for PacedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let delay = self.pacer.record(n as u64, Instant::now());
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        Ok(n)
    }
}

/// Takes one incremental writeback step of a file written by other means than a
/// [`PacedFile`] (a snapshot received chunk by chunk): starts writing back `step.start` and
/// waits for `step.wait`. With `drop_cached` the range waited for also leaves the page cache;
/// without, it stays there clean (a received image is read again at once to restore it).
pub fn write_back(file: &File, step: WritebackStep, drop_cached: bool) -> std::io::Result<()> {
    sys::start_writeback(file, step.start)?;
    if let Some(wait) = step.wait {
        sys::wait_writeback(file, wait, drop_cached)?;
    }
    Ok(())
}

/// Keeps the dirty pages of a file that another library writes (redb importing a snapshot) to
/// about what was written since the previous call: waits for the writeback the previous call
/// started, then starts writing back everything dirty now. Called every few MiB, it turns the
/// one burst of a large import's final `fsync` — a GiB the disk writes while every WAL
/// `fdatasync` queues behind it — into a steady stream.
pub fn write_back_dirty(file: &File) -> std::io::Result<()> {
    sys::write_back_dirty(file)
}

/// Lowers the calling thread's CPU priority to nice [`BACKGROUND_NICE`] (not `SCHED_IDLE`) and
/// its I/O priority to the idle class: for background work that must keep moving however busy
/// the machine is — the snapshot transfer threads, whose stalled stream would leave a learner
/// or a lagging follower behind for as long as the machine stays saturated. At nice 10 the
/// scheduler still gives the thread about a tenth of a normal thread's share.
pub fn lower_thread_priority_unstarved() {
    if let Err(e) = rustix::process::setpriority_process(None, BACKGROUND_NICE) {
        tracing::warn!(error = %e, "cannot lower the thread's CPU priority");
    }
    if let Err(e) = sys::set_idle_io_priority() {
        tracing::warn!(error = %e, "cannot lower the thread's I/O priority");
    }
}

/// Lowers the calling thread's CPU priority to `SCHED_IDLE` (Linux: it runs when nothing
/// else of its process group wants the CPU; elsewhere, or if refused, nice
/// [`BACKGROUND_NICE`]) and its I/O priority to the idle class. Best effort: a refusal is
/// logged, the thread goes on at its priority. Call it on a thread that does only
/// background work (the snapshotter's arbiter).
pub fn lower_thread_priority() {
    if let Err(e) = sys::set_idle_cpu_policy() {
        tracing::debug!(error = %e, "SCHED_IDLE refused; lowering the nice value instead");
        if let Err(e) = rustix::process::setpriority_process(None, BACKGROUND_NICE) {
            tracing::warn!(error = %e, "cannot lower the snapshot thread's CPU priority");
        }
    }
    if let Err(e) = sys::set_idle_io_priority() {
        tracing::warn!(error = %e, "cannot lower the snapshot thread's I/O priority");
    }
}

/// The calling thread's CPU policy and I/O class changed until the guard is dropped, then
/// restored. Best effort: what could not be changed is not restored.
///
/// - [`PriorityGuard::background`]: `SCHED_IDLE` and the idle I/O class, for a stretch of
///   background work on a thread that otherwise does foreground work (a snapshot imported into
///   the state store on an applier's thread): the node's Raft work, WAL syncs and the other
///   nodes sharing the machine go first (`mq-deadline` and BFQ honour the I/O classes; `none`
///   ignores them).
/// - [`PriorityGuard::foreground`]: the normal policy and I/O class, for background work that
///   has fallen so far behind that yielding costs more than it saves (a snapshot starved on a
///   saturated machine while the log it would compact grows: [`overdue`]).
pub struct PriorityGuard {
    cpu: Option<libc::c_int>,
    io: Option<libc::c_long>,
}

impl PriorityGuard {
    /// Lowers both priorities.
    pub fn background() -> PriorityGuard {
        Self::change(sys::set_idle_cpu_policy, sys::set_idle_io_priority)
    }

    /// Raises both to the normal ones.
    pub fn foreground() -> PriorityGuard {
        Self::change(
            || sys::set_cpu_policy(libc::SCHED_OTHER),
            // IOPRIO_CLASS_NONE: the class and level follow the CPU nice value (best effort).
            || sys::set_io_priority(0),
        )
    }

    fn change(
        cpu: impl FnOnce() -> std::io::Result<()>,
        io: impl FnOnce() -> std::io::Result<()>,
    ) -> PriorityGuard {
        let cpu = sys::cpu_policy().ok().and_then(|p| match cpu() {
            Ok(()) => Some(p),
            Err(e) => {
                tracing::debug!(error = %e, "cannot change the thread's CPU priority");
                None
            }
        });
        let io = sys::io_priority().ok().and_then(|p| match io() {
            Ok(()) => Some(p),
            Err(e) => {
                tracing::debug!(error = %e, "cannot change the thread's I/O priority");
                None
            }
        });
        PriorityGuard { cpu, io }
    }
}

impl Drop for PriorityGuard {
    fn drop(&mut self) {
        if let Some(p) = self.io {
            if let Err(e) = sys::set_io_priority(p) {
                tracing::warn!(error = %e, "cannot restore the thread's I/O priority");
            }
        }
        if let Some(p) = self.cpu {
            if let Err(e) = sys::set_cpu_policy(p) {
                tracing::warn!(error = %e, "cannot restore the thread's CPU priority");
            }
        }
    }
}

/// Whether background work that has written `bytes` in `elapsed`, paced at `bytes_per_s`
/// (0: unpaced, expected at [`EXPECTED_UNPACED_BYTES_PER_S`]), is overdue: more than twice
/// the time its pace allows plus `grace`. A snapshot at idle priority on a saturated machine
/// can be starved for as long as the machine stays busy, and meanwhile the log it would
/// compact — in memory twice and in the WAL — grows with the write rate; past this point the
/// snapshotter stops yielding ([`PriorityGuard::foreground`]).
pub fn overdue(bytes: u64, elapsed: Duration, bytes_per_s: u64, grace: Duration) -> bool {
    let rate = if bytes_per_s == 0 {
        EXPECTED_UNPACED_BYTES_PER_S
    } else {
        bytes_per_s
    };
    let allowed = Duration::from_secs_f64(2.0 * bytes as f64 / rate as f64) + grace;
    elapsed > allowed
}

/// The calling thread's CPU scheduling policy (`libc::SCHED_*`), if the platform says.
pub fn thread_cpu_policy() -> Option<libc::c_int> {
    sys::cpu_policy().ok()
}

/// Sets the calling thread's CPU policy to `SCHED_IDLE` (no fallback: the caller decides what
/// to do when it is refused, e.g. on other platforms).
pub fn set_idle_cpu_policy() -> std::io::Result<()> {
    sys::set_idle_cpu_policy()
}

/// The rate an unpaced background write is expected to reach, for [`overdue`].
pub const EXPECTED_UNPACED_BYTES_PER_S: u64 = 50_000_000;

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod sys {
    //! The two Linux calls neither `std` nor `rustix` offers.
    use std::fs::File;
    use std::os::fd::AsRawFd;

    fn range_call(file: &File, (offset, len): (u64, u64), flags: u32) -> std::io::Result<()> {
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
        };
        // SAFETY: the descriptor is open for as long as `file` is borrowed, and
        // sync_file_range reads and writes no memory of this process.
        let r = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Starts writing back the dirty pages of `range` without waiting for them.
    pub fn start_writeback(file: &File, range: (u64, u64)) -> std::io::Result<()> {
        range_call(file, range, libc::SYNC_FILE_RANGE_WRITE)
    }

    /// The whole file (length 0: to its end): wait for the writeback under way, start the rest.
    pub fn write_back_dirty(file: &File) -> std::io::Result<()> {
        range_call(
            file,
            (0, 0),
            libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE,
        )
    }

    /// Waits until `range` is written back (starting what is not yet under way), then, with
    /// `drop_cached`, drops it from the page cache: an image the snapshotter wrote is read
    /// again only if a follower needs it, while keeping it cached would push the state
    /// machine's own pages out.
    pub fn wait_writeback(
        file: &File,
        range: (u64, u64),
        drop_cached: bool,
    ) -> std::io::Result<()> {
        range_call(
            file,
            range,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        )?;
        if !drop_cached {
            return Ok(());
        }
        let (Ok(offset), Ok(len)) = (i64::try_from(range.0), i64::try_from(range.1)) else {
            return Ok(());
        };
        // SAFETY: as for sync_file_range: a valid descriptor, no memory of ours touched.
        // Advice only: its failure changes nothing that matters.
        let _ = unsafe {
            libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED)
        };
        Ok(())
    }

    /// `sched_setscheduler(0, SCHED_IDLE)`: the calling thread gets the CPU only when the
    /// other threads of its group leave it (weight 3 against a normal thread's 1024).
    pub fn set_idle_cpu_policy() -> std::io::Result<()> {
        set_cpu_policy(libc::SCHED_IDLE)
    }

    /// `sched_setscheduler(0, policy)` with priority 0 (the normal, batch and idle policies).
    pub fn set_cpu_policy(policy: libc::c_int) -> std::io::Result<()> {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid sched_param that outlives the call; pid 0 is the
        // calling thread.
        let r = unsafe { libc::sched_setscheduler(0, policy, &param) };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// `sched_getscheduler(0)`: the calling thread's policy.
    pub fn cpu_policy() -> std::io::Result<libc::c_int> {
        // SAFETY: takes an integer, touches no memory of this process.
        let r = unsafe { libc::sched_getscheduler(0) };
        if r >= 0 {
            Ok(r)
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    const IOPRIO_WHO_PROCESS: libc::c_long = 1;

    /// `ioprio_set(IOPRIO_WHO_PROCESS, 0, IOPRIO_PRIO_VALUE(IOPRIO_CLASS_IDLE, 0))`: the
    /// calling thread's I/O is served only when no other class waits.
    pub fn set_idle_io_priority() -> std::io::Result<()> {
        const IOPRIO_CLASS_IDLE: libc::c_long = 3;
        const IOPRIO_CLASS_SHIFT: u32 = 13;
        set_io_priority(IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT)
    }

    /// `ioprio_set` of the calling thread (a value [`io_priority`] returned).
    pub fn set_io_priority(value: libc::c_long) -> std::io::Result<()> {
        // SAFETY: ioprio_set takes three integers and touches no memory of this process.
        let r = unsafe {
            libc::syscall(
                libc::SYS_ioprio_set,
                IOPRIO_WHO_PROCESS,
                0 as libc::c_long,
                value,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// `ioprio_get` of the calling thread.
    pub fn io_priority() -> std::io::Result<libc::c_long> {
        // SAFETY: ioprio_get takes two integers and touches no memory of this process.
        let r =
            unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0 as libc::c_long) };
        if r >= 0 {
            Ok(r)
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    //! No incremental writeback or I/O class elsewhere: the final `fsync` writes the image.
    use std::fs::File;

    pub fn start_writeback(_: &File, _: (u64, u64)) -> std::io::Result<()> {
        Ok(())
    }

    pub fn write_back_dirty(_: &File) -> std::io::Result<()> {
        Ok(())
    }

    pub fn wait_writeback(_: &File, _: (u64, u64), _: bool) -> std::io::Result<()> {
        Ok(())
    }

    pub fn set_idle_io_priority() -> std::io::Result<()> {
        Ok(())
    }

    pub fn set_io_priority(_: libc::c_long) -> std::io::Result<()> {
        Ok(())
    }

    pub fn io_priority() -> std::io::Result<libc::c_long> {
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
    }

    pub fn set_idle_cpu_policy() -> std::io::Result<()> {
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
    }

    pub fn set_cpu_policy(_: libc::c_int) -> std::io::Result<()> {
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
    }

    pub fn cpu_policy() -> std::io::Result<libc::c_int> {
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn an_unstarved_background_thread_is_niced_not_idle() {
        std::thread::spawn(|| {
            lower_thread_priority_unstarved();
            assert_eq!(sys::cpu_policy().expect("policy"), libc::SCHED_OTHER);
            assert_eq!(
                rustix::process::getpriority_process(None).expect("nice"),
                BACKGROUND_NICE
            );
            assert_eq!(sys::io_priority().expect("ioprio_get") >> 13, 3);
        })
        .join()
        .expect("the thread");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn priority_guards_change_the_threads_priorities_and_restore_them() {
        // On a thread of its own: the test runner's threads keep their priorities.
        std::thread::spawn(|| {
            let io = sys::io_priority().expect("ioprio_get");
            let cpu = sys::cpu_policy().expect("sched_getscheduler");
            assert_ne!(cpu, libc::SCHED_IDLE);
            {
                let _background = PriorityGuard::background();
                let during = sys::io_priority().expect("ioprio_get");
                assert_eq!(during >> 13, 3, "idle I/O class while the guard lives");
                assert_eq!(sys::cpu_policy().expect("policy"), libc::SCHED_IDLE);
                {
                    let _foreground = PriorityGuard::foreground();
                    assert_eq!(sys::cpu_policy().expect("policy"), libc::SCHED_OTHER);
                    assert_ne!(sys::io_priority().expect("ioprio_get") >> 13, 3);
                }
                assert_eq!(sys::cpu_policy().expect("policy"), libc::SCHED_IDLE);
                assert_eq!(sys::io_priority().expect("ioprio_get") >> 13, 3);
            }
            assert_eq!(sys::io_priority().expect("ioprio_get"), io);
            assert_eq!(sys::cpu_policy().expect("policy"), cpu);
        })
        .join()
        .expect("the thread");
    }

    const MB: u64 = 1_000_000;

    #[test]
    fn a_paced_reader_passes_the_bytes_through_and_takes_at_least_their_time() {
        use std::io::Read;
        let data: Vec<u8> = (0..3 * MB).map(|i| (i % 251) as u8).collect();
        // 3 MB at 20 MB/s with 1 MB of catch-up: at least (3 - 1) / 20 s. Only a lower
        // bound: a slow machine makes it longer, never shorter.
        let started = Instant::now();
        let mut paced = PacedReader::new(&data[..], 20 * MB, MB);
        let mut out = Vec::new();
        paced.read_to_end(&mut out).expect("read");
        assert!(out == data, "the bytes changed");
        assert!(
            started.elapsed() >= Duration::from_millis(100),
            "{:?}",
            started.elapsed()
        );
        // Unpaced: the same bytes.
        let mut out = Vec::new();
        PacedReader::new(&data[..], 0, 0)
            .read_to_end(&mut out)
            .expect("read");
        assert!(out == data);
    }

    #[test]
    fn background_work_is_overdue_past_twice_its_pace_plus_the_grace() {
        let grace = Duration::from_secs(2);
        // 50 MB at 50 MB/s: 1 s of pace, 2 s allowed, plus the grace.
        assert!(!overdue(50 * MB, Duration::from_secs(4), 50 * MB, grace));
        assert!(overdue(
            50 * MB,
            Duration::from_millis(4_100),
            50 * MB,
            grace
        ));
        // Nothing written yet: overdue once the grace has passed.
        assert!(!overdue(0, Duration::from_secs(1), 50 * MB, grace));
        assert!(overdue(0, Duration::from_millis(2_100), 50 * MB, grace));
        // Unpaced: judged at the expected rate.
        assert!(!overdue(50 * MB, Duration::from_secs(4), 0, grace));
        assert!(overdue(50 * MB, Duration::from_secs(5), 0, grace));
    }

    #[test]
    fn a_pacer_holds_a_writer_to_its_rate() {
        let t0 = Instant::now();
        let mut p = Pacer::new(100 * MB, MB, t0);
        // 1 MB at 100 MB/s is due at 10 ms: written at once, the writer waits 10 ms.
        assert_eq!(p.record(MB, t0), Duration::from_millis(10));
        // Having waited, the next MB is due at 20 ms.
        assert_eq!(
            p.record(MB, t0 + Duration::from_millis(10)),
            Duration::from_millis(10)
        );
        // A writer slower than the rate never waits.
        assert_eq!(p.record(MB, t0 + Duration::from_millis(35)), Duration::ZERO);
        // 100 MB in a second, whatever the chunking.
        let mut p = Pacer::new(100 * MB, MB, t0);
        let mut now = t0;
        for _ in 0..1000 {
            now += p.record(100_000, now);
        }
        assert_eq!(now - t0, Duration::from_secs(1));
    }

    #[test]
    fn a_writer_that_fell_behind_gets_only_the_burst_as_credit() {
        let t0 = Instant::now();
        let mut p = Pacer::new(100 * MB, 2 * MB, t0);
        // Held up for a second after its first MB: 99 MB of schedule unused.
        assert_eq!(p.record(MB, t0 + Duration::from_secs(1)), Duration::ZERO);
        // Only 2 MB (20 ms) of it is kept: two more MB go through at once, the third waits.
        let now = t0 + Duration::from_secs(1);
        assert_eq!(p.record(MB, now), Duration::ZERO);
        assert_eq!(p.record(MB, now), Duration::ZERO);
        assert_eq!(p.record(MB, now), Duration::from_millis(10));
    }

    #[test]
    fn an_unpaced_pacer_never_waits() {
        let t0 = Instant::now();
        let mut p = Pacer::new(0, 0, t0);
        assert_eq!(p.record(u64::MAX, t0), Duration::ZERO);
        assert_eq!(p.record(u64::MAX, t0), Duration::ZERO);
    }

    #[test]
    fn writeback_steps_start_each_range_and_wait_for_the_one_before() {
        let mut w = Writeback::new(4);
        assert_eq!(w.after_write(3), None);
        assert_eq!(
            w.after_write(5),
            Some(WritebackStep {
                wait: None,
                start: (0, 5)
            })
        );
        assert_eq!(w.after_write(8), None);
        assert_eq!(
            w.after_write(9),
            Some(WritebackStep {
                wait: Some((0, 5)),
                start: (5, 4)
            })
        );
        assert_eq!(
            w.after_write(20),
            Some(WritebackStep {
                wait: Some((5, 4)),
                start: (9, 11)
            })
        );
        // A step of 0: no incremental writeback.
        let mut w = Writeback::new(0);
        assert_eq!(w.after_write(1 << 40), None);
    }

    #[test]
    fn a_resumed_writeback_starts_at_the_prefix_already_on_disk() {
        let mut w = Writeback::resume(4, 10);
        // Nothing of the prefix is written back again, and nothing waited for.
        assert_eq!(w.after_write(13), None);
        assert_eq!(
            w.after_write(14),
            Some(WritebackStep {
                wait: None,
                start: (10, 4)
            })
        );
        assert_eq!(
            w.after_write(19),
            Some(WritebackStep {
                wait: Some((10, 4)),
                start: (14, 5)
            })
        );
    }

    #[test]
    fn a_paced_file_writes_everything_at_about_its_rate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let pacing = WritePacing {
            bytes_per_s: 20 * MB,
            writeback_step: 64 * 1024,
        };
        let body: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
        let t = Instant::now();
        let mut f = std::io::BufWriter::with_capacity(
            32 * 1024,
            PacedFile::new(File::create(&path).unwrap(), pacing),
        );
        f.write_all(&body).unwrap();
        let file = f.into_inner().unwrap().into_file();
        file.sync_all().unwrap();
        // 2 MB at 20 MB/s: about 100 ms, less the burst of one step (3 ms). The bound leaves
        // room for a loaded machine's clock reads; unpaced, the write takes a few ms.
        assert!(
            t.elapsed() >= Duration::from_millis(80),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(std::fs::read(&path).unwrap(), body);
    }
}
