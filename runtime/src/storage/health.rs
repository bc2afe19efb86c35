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
//!
//! Components and errors are typed ([`StorageComponent`], [`StorageError`]); the HTTP API
//! shows them as the strings it always did (`"raft_log"`, `"state_machine/0"`, the error and
//! its sources `: `-separated).

use crate::node::snapshotter::SnapshotError;
use crate::node::GroupGaveUp;
use crate::state_machine::StateMachineError;
use crate::storage::log_store::LogStoreError;
use conclave_core::ids::GroupId;
use parking_lot::Mutex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

/// A storage component of the node, as the health record, the metrics' `component` label and
/// the HTTP API name it. Ordered by that name's kind (a failure of the first is shown).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StorageComponent {
    /// A group's actors, which its supervisor gave up restarting: `group/{group}`.
    Group(GroupId),
    /// The Raft log store (the WAL all groups share): `raft_log`.
    RaftLog,
    /// A group's snapshots (taken, written, restored): `snapshots/{group}`.
    Snapshots(GroupId),
    /// A group's state-machine store: `state_machine/{group}`.
    StateMachine(GroupId),
}

impl fmt::Display for StorageComponent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageComponent::Group(g) => write!(f, "group/{g}"),
            StorageComponent::RaftLog => f.write_str("raft_log"),
            StorageComponent::Snapshots(g) => write!(f, "snapshots/{g}"),
            StorageComponent::StateMachine(g) => write!(f, "state_machine/{g}"),
        }
    }
}

/// A name that is no [`StorageComponent`]'s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a storage component (raft_log, state_machine/G, snapshots/G or group/G)")]
pub struct UnknownComponent;

impl std::str::FromStr for StorageComponent {
    type Err = UnknownComponent;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "raft_log" {
            return Ok(StorageComponent::RaftLog);
        }
        let (kind, group) = s.split_once('/').ok_or(UnknownComponent)?;
        let group: GroupId = group.parse().map_err(|_| UnknownComponent)?;
        match kind {
            "group" => Ok(StorageComponent::Group(group)),
            "snapshots" => Ok(StorageComponent::Snapshots(group)),
            "state_machine" => Ok(StorageComponent::StateMachine(group)),
            _ => Err(UnknownComponent),
        }
    }
}

/// As its name: the HTTP API's JSON is the one of the strings this type replaced.
impl Serialize for StorageComponent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StorageComponent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a storage component failed: the component's own error, shared (the health record,
/// every request refused because of it and the logs hold the same value).
///
/// It displays as the error and its sources, `: `-separated (what an operator needs in one
/// line, and what `/v1/cluster` and `/healthz` have always shown); two are equal when that
/// text is.
#[derive(Clone, Debug)]
pub enum StorageError {
    /// The Raft log store could not persist or recover.
    RaftLog(Arc<LogStoreError>),
    /// A group's state machine could not persist.
    StateMachine(Arc<StateMachineError>),
    /// A group's snapshot is missing or cannot be restored.
    Snapshot(Arc<SnapshotError>),
    /// A group's supervisor gave up restarting it.
    GroupGaveUp(Arc<GroupGaveUp>),
    /// Another node's failure, read back from its HTTP answer (`/v1/cluster`): all of the
    /// error that crosses the network is its text.
    Reported {
        /// The text that node showed: data read from its JSON answer, not a description
        /// made here.
        shown: Arc<str>,
    },
}

impl StorageError {
    /// The component's own error (`None` for a failure another node reported).
    pub fn inner(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            StorageError::RaftLog(e) => Some(&**e),
            StorageError::StateMachine(e) => Some(&**e),
            StorageError::Snapshot(e) => Some(&**e),
            StorageError::GroupGaveUp(e) => Some(&**e),
            StorageError::Reported { .. } => None,
        }
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self, self.inner()) {
            (StorageError::Reported { shown }, _) => f.write_str(shown),
            (_, Some(e)) => f.write_str(&error_chain(e)),
            (_, None) => Ok(()),
        }
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self.inner() {
            Some(e) => Some(e),
            None => None,
        }
    }
}

impl PartialEq for StorageError {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for StorageError {}

/// As its text (see the type's docs).
impl Serialize for StorageError {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Read back as [`StorageError::Reported`].
impl<'de> Deserialize<'de> for StorageError {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(StorageError::Reported { shown: text.into() })
    }
}

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
        /// Which component (shown as e.g. `state_machine/0`, `raft_log`).
        component: StorageComponent,
        /// How long the call has been running.
        for_ms: u64,
    },
    /// `component` could not persist; it writes nothing more until the node restarts.
    Failed {
        /// Which component.
        component: StorageComponent,
        /// Its error.
        error: StorageError,
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
    stalled: BTreeMap<StorageComponent, Instant>,
    /// The first failure, by component (sticky).
    failed: BTreeMap<StorageComponent, StorageError>,
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
    pub fn stalled(&self, component: StorageComponent, since: Instant) {
        let mut s = self.state.lock();
        if s.stalled.insert(component, since).is_none() {
            metrics::counter!("conclave_storage_stalls_total", "component" => component.to_string())
                .increment(1);
            metrics::gauge!("conclave_storage_stalled", "component" => component.to_string())
                .set(1.0);
            tracing::error!(
                %component,
                "storage call has not returned within the stall timeout; the node reports itself not ready"
            );
        }
    }

    /// The stalled call of `component` returned.
    pub fn unstalled(&self, component: StorageComponent) {
        let mut s = self.state.lock();
        if let Some(since) = s.stalled.remove(&component) {
            metrics::gauge!("conclave_storage_stalled", "component" => component.to_string())
                .set(0.0);
            tracing::warn!(
                %component,
                stalled_ms = since.elapsed().as_millis() as u64,
                "stalled storage call returned"
            );
        }
    }

    /// `component` could not persist: sticky until restart. The first error is kept.
    pub fn failed(&self, component: StorageComponent, error: StorageError) {
        let mut s = self.state.lock();
        if let std::collections::btree_map::Entry::Vacant(first) = s.failed.entry(component) {
            tracing::error!(
                %component,
                %error,
                "storage failed: this component writes nothing more until the node is restarted"
            );
            metrics::gauge!("conclave_storage_failed", "component" => component.to_string())
                .set(1.0);
            first.insert(error);
        }
    }

    /// The worst condition: a failure before a stall (a failure does not clear by itself).
    pub fn condition(&self) -> StorageCondition {
        let s = self.state.lock();
        if let Some((component, error)) = s.failed.iter().next() {
            return StorageCondition::Failed {
                component: *component,
                error: error.clone(),
            };
        }
        if let Some((component, since)) = s.stalled.iter().min_by_key(|(_, since)| **since) {
            return StorageCondition::Stalled {
                component: *component,
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

    fn log_error(text: &str) -> StorageError {
        StorageError::RaftLog(Arc::new(LogStoreError::Wal(
            crate::storage::wal::WalError::Io {
                path: "wal".into(),
                source: std::io::Error::other(text.to_owned()),
            },
        )))
    }

    const SM0: StorageComponent = StorageComponent::StateMachine(GroupId::FIRST);

    #[test]
    fn failure_outranks_a_stall_and_is_sticky() {
        let h = StorageHealth::new();
        assert_eq!(h.condition(), StorageCondition::Healthy);
        h.stalled(SM0, Instant::now());
        assert_eq!(h.condition().code(), Some("storage_stalled"));
        h.failed(
            StorageComponent::RaftLog,
            log_error("No space left on device"),
        );
        h.failed(
            StorageComponent::RaftLog,
            log_error("second error is not kept"),
        );
        h.unstalled(SM0);
        match h.condition() {
            StorageCondition::Failed { component, error } => {
                assert_eq!(component, StorageComponent::RaftLog);
                assert!(error.to_string().contains("No space left"), "{error}");
                assert!(matches!(error, StorageError::RaftLog(_)));
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        assert!(h.has_failed());
    }

    #[test]
    fn a_stall_clears_when_the_call_returns() {
        let h = StorageHealth::new();
        h.stalled(SM0, Instant::now());
        assert!(matches!(h.condition(), StorageCondition::Stalled { .. }));
        h.unstalled(SM0);
        assert_eq!(h.condition(), StorageCondition::Healthy);
    }

    /// The JSON of `/v1/cluster` and `/readyz` is the one the string fields had.
    #[test]
    fn conditions_serialize_as_the_strings_they_replaced() {
        let failed = StorageCondition::Failed {
            component: StorageComponent::RaftLog,
            error: log_error("No space left on device"),
        };
        let json = serde_json::to_string(&failed).unwrap();
        let error = log_error("No space left on device").to_string();
        assert_eq!(error, "WAL I/O error on wal: No space left on device");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&json).unwrap(),
            serde_json::json!({"state": "failed", "component": "raft_log", "error": error})
        );
        let back: StorageCondition = serde_json::from_str(&json).unwrap();
        assert_eq!(back, failed);
        let stalled = StorageCondition::Stalled {
            component: StorageComponent::Snapshots(GroupId::new(12)),
            for_ms: 5,
        };
        assert_eq!(
            serde_json::to_string(&stalled).unwrap(),
            r#"{"state":"stalled","component":"snapshots/12","for_ms":5}"#
        );
        for name in ["raft_log", "state_machine/0", "snapshots/7", "group/3"] {
            let c: StorageComponent = name.parse().unwrap();
            assert_eq!(c.to_string(), name);
        }
        assert!("state_machine".parse::<StorageComponent>().is_err());
        assert!("disk/1".parse::<StorageComponent>().is_err());
    }
}
