//! The `conclave` binary: see `conclave --help` and DESIGN.md §6.

/// mimalloc instead of glibc's allocator. A node allocates on one thread and frees on another
/// all the time (the transport's reader decodes a message, the Raft worker or applier drops
/// it); glibc takes its slow paths for that (`_int_free`, `malloc_consolidate`: ~40 % of the
/// transport benchmark's CPU for 64-byte messages), mimalloc frees into the owning page's
/// list with one atomic operation. Measured in docs/transport.md, "2026-12-07: allocator
/// (mimalloc)". The node's `MemoryTrimmer` (`malloc_trim`) reaches only glibc's heap now;
/// mimalloc returns freed pages to the OS itself, after its purge delay.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    conclave::cli::main()
}
