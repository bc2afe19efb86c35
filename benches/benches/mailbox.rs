//! Actor message paths against tokio and crossbeam channels (issue 7): the same paths as
//! `conclave bench mailbox` (see `conclave::cli::bench::mailbox`), as criterion suites.
//!
//! ```text
//! cargo bench -p benches --bench mailbox -- --warm-up-time 1 --measurement-time 5
//! ```
//!
//! Each iteration moves `MESSAGES` messages (one u64, no payload) through one path; the
//! throughput criterion prints is messages per second. Compare each runtime path with the
//! baseline named in the module docs of `conclave::cli::bench::mailbox`.

// criterion_group! generates an undocumented pub fn.
#![allow(missing_docs)]

use conclave::cli::bench::mailbox::{MailboxOptions, MailboxPath};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;

const MESSAGES: u64 = 100_000;

fn paths(c: &mut Criterion) {
    let o = MailboxOptions {
        messages: MESSAGES,
        producers: 1,
        capacity: 16,
        payload: 0,
        rounds: 1,
    };
    let mut g = c.benchmark_group("mailbox");
    g.throughput(Throughput::Elements(o.total()));
    g.sample_size(10);
    for p in MailboxPath::ALL {
        g.bench_function(p.name(), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += p.run(&o).unwrap_or_else(|e| panic!("{}: {e:#}", p.name()));
                }
                total
            });
        });
    }
    g.finish();
}

criterion_group!(benches, paths);
criterion_main!(benches);
