//! The labels of a group's metrics, and the shard aggregates (docs/node.md, "Metrics per
//! group and shard").
//!
//! Every group's series carry `group`; on a sharded node a shard's group also carries `shard`
//! — while `[ring] shards` is at most [`MAX_LABELLED_SHARDS`]. Above it a node could host
//! thousands of shard groups, each with a dozen series (and one per peer for the replication
//! lag), so shard groups export no series of their own: the node exports aggregates over its
//! shard groups instead (`conclave_shard_groups{role}`, `conclave_shard_apply_lag_max`, …),
//! which it exports in both cases. The cap is on the cluster's shard count, not on how many
//! shards a node hosts, so every node of a cluster exports the same metric names.

use super::GroupId;
use metrics::Label;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// Most shards (`[ring] shards`) whose groups export per-shard series; above it only the
/// aggregates are exported. 128 shards on a node that hosts every one of them is about 2,000
/// series (a dozen per group, plus the replication lag per peer and the apply histogram).
pub const MAX_LABELLED_SHARDS: u64 = 128;

/// The labels of one group's series, and the handles of the series already registered.
#[derive(Clone, Debug)]
pub struct GroupLabels {
    /// `None`: the group's own series are not exported (a shard group above the cap).
    labels: Option<Vec<Label>>,
    /// Whether the group serves a shard (it counts in the shard aggregates).
    shard: bool,
    /// The group's series by name, once first used (shared by the clones: the group actor
    /// and the applier). Looking a labelled series up in the recorder clones the labels
    /// (an allocation per label), hashes them and searches the registry; a group's actors
    /// did that several times per run of entries, ~2.5% of a 64-shard node's CPU. A handle
    /// is registered with the recorder installed when it is first used, as before.
    handles: Arc<Mutex<Handles>>,
}

/// Registered series of one group, by name.
#[derive(Debug, Default)]
struct Handles {
    counters: HashMap<&'static str, metrics::Counter>,
    gauges: HashMap<&'static str, metrics::Gauge>,
    histograms: HashMap<&'static str, metrics::Histogram>,
}

impl GroupLabels {
    /// The labels of `group` on a node with `[ring]` `sharded` and `shards`: shard `s` is
    /// served by group `s + 1` (docs/sharding.md); group 0 and groups created at runtime are
    /// no shard's.
    pub fn new(group: GroupId, sharded: bool, shards: u64) -> Self {
        let shard = if sharded {
            conclave_ring::shard_of_group(group, shards)
        } else {
            None
        };
        let group_label = Label::new("group", group.to_string());
        match shard {
            None => GroupLabels {
                labels: Some(vec![group_label]),
                shard: false,
                handles: Arc::default(),
            },
            Some(_) if shards > MAX_LABELLED_SHARDS => GroupLabels {
                labels: None,
                shard: true,
                handles: Arc::default(),
            },
            Some(s) => GroupLabels {
                labels: Some(vec![group_label, Label::new("shard", s.to_string())]),
                shard: true,
                handles: Arc::default(),
            },
        }
    }

    /// The group's labels, `None` when its own series are not exported.
    pub fn get(&self) -> Option<Vec<Label>> {
        self.labels.clone()
    }

    /// The group's labels and one more (e.g. `peer`), `None` when its own series are not
    /// exported.
    pub fn with(&self, key: &'static str, value: String) -> Option<Vec<Label>> {
        self.labels.as_ref().map(|l| {
            let mut l = l.clone();
            l.push(Label::new(key, value));
            l
        })
    }

    /// The group's counter `name` (a no-op when its series are not exported).
    pub fn counter(&self, name: &'static str) -> metrics::Counter {
        match &self.labels {
            Some(l) => self
                .handles
                .lock()
                .counters
                .entry(name)
                .or_insert_with(|| metrics::counter!(name, l.clone()))
                .clone(),
            None => metrics::Counter::noop(),
        }
    }

    /// The group's gauge `name` (a no-op when its series are not exported).
    pub fn gauge(&self, name: &'static str) -> metrics::Gauge {
        match &self.labels {
            Some(l) => self
                .handles
                .lock()
                .gauges
                .entry(name)
                .or_insert_with(|| metrics::gauge!(name, l.clone()))
                .clone(),
            None => metrics::Gauge::noop(),
        }
    }

    /// The group's gauge `name` with one more label (a no-op when its series are not
    /// exported). Not cached: callers that set it often keep the handle.
    pub fn gauge_with(
        &self,
        name: &'static str,
        key: &'static str,
        value: String,
    ) -> metrics::Gauge {
        match self.with(key, value) {
            Some(l) => metrics::gauge!(name, l),
            None => metrics::Gauge::noop(),
        }
    }

    /// The group's histogram `name` (a no-op when its series are not exported).
    pub fn histogram(&self, name: &'static str) -> metrics::Histogram {
        match &self.labels {
            Some(l) => self
                .handles
                .lock()
                .histograms
                .entry(name)
                .or_insert_with(|| metrics::histogram!(name, l.clone()))
                .clone(),
            None => metrics::Histogram::noop(),
        }
    }

    /// Whether the group serves a shard.
    pub fn is_shard(&self) -> bool {
        self.shard
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pairs(l: Option<Vec<Label>>) -> Option<Vec<(String, String)>> {
        l.map(|l| {
            l.iter()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect()
        })
    }

    #[test]
    fn shard_groups_carry_their_shard_up_to_the_cap() {
        let g = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        // Not sharded: every group by its id only.
        let l = GroupLabels::new(GroupId::new(3), false, 64);
        assert_eq!(pairs(l.get()), Some(vec![g("group", "3")]));
        assert!(!l.is_shard());
        // Sharded: group 0 serves no shard; group s + 1 serves shard s.
        assert_eq!(
            pairs(GroupLabels::new(GroupId::new(0), true, 64).get()),
            Some(vec![g("group", "0")])
        );
        let l = GroupLabels::new(GroupId::new(5), true, 64);
        assert_eq!(pairs(l.get()), Some(vec![g("group", "5"), g("shard", "4")]));
        assert!(l.is_shard());
        assert_eq!(
            pairs(l.with("peer", "2".to_owned())),
            Some(vec![g("group", "5"), g("shard", "4"), g("peer", "2")])
        );
        // At the cap still labelled; above it no series of its own, still a shard.
        assert!(
            GroupLabels::new(GroupId::new(MAX_LABELLED_SHARDS), true, MAX_LABELLED_SHARDS)
                .get()
                .is_some()
        );
        let over = GroupLabels::new(GroupId::new(7), true, MAX_LABELLED_SHARDS + 1);
        assert!(over.get().is_none() && over.with("peer", "1".to_owned()).is_none());
        assert!(over.is_shard());
        // A group beyond the shards (created at runtime) keeps its own series.
        let extra = GroupLabels::new(
            GroupId::new(MAX_LABELLED_SHARDS + 5),
            true,
            MAX_LABELLED_SHARDS + 1,
        );
        assert!(!extra.is_shard() && extra.get().is_some());
    }
}
