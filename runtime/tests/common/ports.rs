//! Loopback ports for test nodes that are stopped and restarted.
//!
//! A port the OS hands out for `127.0.0.1:0` lies in the ephemeral range
//! (`/proc/sys/net/ipv4/ip_local_port_range`, 32768–60999 by default): the same range every
//! outgoing connection on the machine takes its local port from. A node killed by a test
//! frees its listening port, and before it restarts an outgoing connection (a proxy, a
//! client, another test) may take that port, so the restart fails with "Address already in
//! use" — seen in the chaos runs and in `cli_failover`. Ports below the ephemeral range are
//! never taken that way. Each process starts probing at its own pseudo-random offset so
//! concurrent test processes rarely pick the same port; a port is handed out only after a
//! successful bind, and never twice by one process.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The range ports are taken from: `[10000, start of the ephemeral range)`, or the OS's
/// choice (port 0) if the ephemeral range starts too low to leave room.
fn range() -> Option<(u16, u16)> {
    static RANGE: OnceLock<Option<(u16, u16)>> = OnceLock::new();
    *RANGE.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok();
        let low = text
            .as_deref()
            .and_then(|t| t.split_whitespace().next())
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or(32768);
        (low > 12_000).then_some((10_000, low))
    })
}

/// The next candidate offset; starts per process at a value derived from the pid and clock.
fn next_offset() -> u32 {
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    NEXT.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        AtomicU32::new(std::process::id().wrapping_mul(7919) ^ nanos)
    })
    .fetch_add(1, Ordering::Relaxed)
}

fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A free loopback address whose port is outside the ephemeral range.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_base(0)))
}

/// A port `base` such that `base..=base + span` are all free and outside the ephemeral range
/// (for `conclave dev --base-port`, which derives every node's ports from one base).
pub fn free_base(span: u16) -> u16 {
    if let Some((low, high)) = range() {
        let slots = u32::from((high - low).saturating_sub(span).max(1));
        for _ in 0..10_000 {
            // Spread consecutive calls `span + 1` apart so blocks handed out do not overlap.
            let base = low + ((next_offset().wrapping_mul(u32::from(span) + 1)) % slots) as u16;
            if (base..=base + span).all(bindable) {
                return base;
            }
        }
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port");
    port.saturating_sub(span)
}
