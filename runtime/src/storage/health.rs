//! The node's storage health: one shared record that every storage component (the Raft log
//! store, the state-machine store, the snapshotter) reports into, and that readiness
//! (`/readyz`, `/healthz`), `/v1/cluster` and the metrics read.
//!
//! Two conditions are reported, because operators act on them differently:
//! - **stalled**: a storage call has not returned within `[storage] stall_timeout_ms`. It may
//!   still return (a slow disk), so the condition clears when it does. The node is not ready.
//! - **failed**: a write could not be made durable (ENOSPC, EIO, a corrupt record). The
//!   component that failed stops writing for good — writing a later record after a failed
//!   one could leave a gap — so the condition is sticky until the process restarts.

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

/// What a component reports about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum StorageCondition {
    /// Every storage call returns in time and every write succeeded.
    #[default]
    Healthy,
    /// A storage call of `component` has been running for `for_ms` milliseconds, longer than
    /// the stall timeout.
    Stalled {
        /// Which component (e.g. `state_machine`, `raft_log`).
        component: String,
        /// How long the call has been running.
        for_ms: u64,
    },
    /// `component` could not persist; it writes nothing more until the node restarts.
    Failed {
        /// Which component.
        component: String,
        /// The error, as the component reported it.
        error: String,
    },
}

impl StorageCondition {
    /// The error code the HTTP API uses for this condition (`None` when healthy).
    pub fn code(&self) -> Option<&'static str> {
        match self {
            StorageCondition::Healthy => None,
            StorageCondition::Stalled { .. } => Some("storage_stalled"),
            StorageCondition::Failed { .. } => Some("storage_failed"),
        }
    }
}

#[derive(Default)]
struct State {
    /// Calls running past the stall timeout, by component, with when they started.
    stalled: BTreeMap<String, Instant>,
    /// The first failure, by component (sticky).
    failed: BTreeMap<String, String>,
}

/// The shared health record. Cheap to clone behind an `Arc`; every method takes a short lock.
#[derive(Default)]
pub struct StorageHealth {
    state: Mutex<State>,
}

impl StorageHealth {
    /// A healthy record.
    pub fn new() -> Self {
        Self::default()
    }

    /// `component` has a call that started at `since` and has not returned within the stall
    /// timeout. Counted in `conclave_storage_stalls_total{component}` once per stall.
    pub fn stalled(&self, component: &str, since: Instant) {
        let mut s = self.state.lock();
        if s.stalled.insert(component.to_owned(), since).is_none() {
            metrics::counter!("conclave_storage_stalls_total", "component" => component.to_owned())
                .increment(1);
            metrics::gauge!("conclave_storage_stalled", "component" => component.to_owned())
                .set(1.0);
            tracing::error!(
                component,
                "storage call has not returned within the stall timeout; the node reports itself not ready"
            );
        }
    }

    /// The stalled call of `component` returned.
    pub fn unstalled(&self, component: &str) {
        let mut s = self.state.lock();
        if let Some(since) = s.stalled.remove(component) {
            metrics::gauge!("conclave_storage_stalled", "component" => component.to_owned())
                .set(0.0);
            tracing::warn!(
                component,
                stalled_ms = since.elapsed().as_millis() as u64,
                "stalled storage call returned"
            );
        }
    }

    /// `component` could not persist: sticky until restart. The first error is kept.
    pub fn failed(&self, component: &str, error: &dyn std::error::Error) {
        let mut s = self.state.lock();
        if !s.failed.contains_key(component) {
            let text = error_chain(error);
            tracing::error!(
                component,
                error = %text,
                "storage failed: this component writes nothing more until the node is restarted"
            );
            metrics::gauge!("conclave_storage_failed", "component" => component.to_owned())
                .set(1.0);
            s.failed.insert(component.to_owned(), text);
        }
    }

    /// The worst condition: a failure before a stall (a failure does not clear by itself).
    pub fn condition(&self) -> StorageCondition {
        let s = self.state.lock();
        if let Some((component, error)) = s.failed.iter().next() {
            return StorageCondition::Failed {
                component: component.clone(),
                error: error.clone(),
            };
        }
        if let Some((component, since)) = s.stalled.iter().min_by_key(|(_, since)| **since) {
            return StorageCondition::Stalled {
                component: component.clone(),
                for_ms: since.elapsed().as_millis() as u64,
            };
        }
        StorageCondition::Healthy
    }

    /// True once any component failed.
    pub fn has_failed(&self) -> bool {
        !self.state.lock().failed.is_empty()
    }
}

/// An error and its sources, `: `-separated (what an operator needs to see in one line).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_outranks_a_stall_and_is_sticky() {
        let h = StorageHealth::new();
        assert_eq!(h.condition(), StorageCondition::Healthy);
        h.stalled("state_machine", Instant::now());
        assert_eq!(h.condition().code(), Some("storage_stalled"));
        let e = std::io::Error::other("No space left on device");
        h.failed("raft_log", &e);
        h.failed(
            "raft_log",
            &std::io::Error::other("second error is not kept"),
        );
        h.unstalled("state_machine");
        match h.condition() {
            StorageCondition::Failed { component, error } => {
                assert_eq!(component, "raft_log");
                assert!(error.contains("No space left"), "{error}");
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        assert!(h.has_failed());
    }

    #[test]
    fn a_stall_clears_when_the_call_returns() {
        let h = StorageHealth::new();
        h.stalled("state_machine", Instant::now());
        assert!(matches!(h.condition(), StorageCondition::Stalled { .. }));
        h.unstalled("state_machine");
        assert_eq!(h.condition(), StorageCondition::Healthy);
    }
}
