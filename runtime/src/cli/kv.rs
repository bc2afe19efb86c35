//! `conclave kv`, `conclave status` and `conclave ring route`: clients of the HTTP API.

use super::{EndpointArg, KvArgs, KvOp, SnapshotArgs, StatusArgs, EXIT_FAILURE, EXIT_OK};
use crate::api::{ClusterStatus, GossipMembers, ShardsStatus};
use crate::storage::health::StorageCondition;
use conclave_core::ids::NodeId;
use conclave_core::ids::ShardId;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    // awc is single-threaded: a current-thread actix system is all the client needs.
    actix_web::rt::System::new().block_on(f)
}

/// `conclave kv …`.
pub(super) fn run_kv(args: KvArgs) -> anyhow::Result<u8> {
    let client = args.endpoint.client()?;
    block_on(async move {
        match args.op {
            KvOp::Put {
                key,
                value,
                idempotency_key,
            } => {
                let ack = client
                    .put(
                        key.as_bytes(),
                        value.into_bytes(),
                        idempotency_key.as_deref(),
                    )
                    .await?;
                println!("OK (index {}, term {})", ack.index, ack.term);
                Ok(EXIT_OK)
            }
            KvOp::Get { key, consistency } => {
                match client
                    .get(key.as_bytes(), consistency.map(Into::into))
                    .await?
                {
                    Some(value) => {
                        let mut out = std::io::stdout().lock();
                        out.write_all(&value)?;
                        out.write_all(b"\n")?;
                        Ok(EXIT_OK)
                    }
                    None => {
                        eprintln!("key {key:?} not found");
                        Ok(EXIT_FAILURE)
                    }
                }
            }
            KvOp::Del {
                key,
                idempotency_key,
            } => {
                let ack = client
                    .delete(key.as_bytes(), idempotency_key.as_deref())
                    .await?;
                let what = if ack.existed {
                    "deleted"
                } else {
                    "did not exist"
                };
                println!("OK, {what} (index {}, term {})", ack.index, ack.term);
                Ok(EXIT_OK)
            }
            KvOp::Cas(cas) => {
                let expected = if cas.absent { None } else { cas.expected };
                let value = if cas.delete { None } else { cas.value };
                let result = client
                    .cas(
                        cas.key.as_bytes(),
                        expected.as_deref(),
                        value.as_deref(),
                        cas.idempotency_key.as_deref(),
                    )
                    .await?;
                if result.ok {
                    println!("OK (index {}, term {})", result.index, result.term);
                    Ok(EXIT_OK)
                } else {
                    match result.current {
                        Some(c) => eprintln!("CAS failed: current value is {c:?}"),
                        None => eprintln!("CAS failed: the key is absent"),
                    }
                    Ok(EXIT_FAILURE)
                }
            }
        }
    })
}

/// `conclave status`.
pub(super) fn run_status(args: &StatusArgs) -> anyhow::Result<u8> {
    let client = args.endpoint.client()?;
    block_on(async move {
        if args.json {
            let json = client.status_json().await?;
            println!("{}", serde_json::to_string_pretty(&json)?);
        } else {
            let status = client.status().await?;
            // The gossip view adds incarnations and round trips; a node that cannot give it
            // (an older version) still gets its table.
            let members = client.members().await.ok();
            print!(
                "{}",
                status_table(client.endpoint(), &status, members.as_ref())
            );
            // A sharded node adds its shards by node; an unsharded one (or an older version
            // without `/v1/shards`) prints nothing more.
            if let Ok(shards) = client.shards().await {
                if shards.sharded {
                    print!("{}", shards_table(&shards));
                }
            }
        }
        Ok(EXIT_OK)
    })
}

/// `conclave snapshot [--group G]`.
pub(super) fn run_snapshot(args: &SnapshotArgs) -> anyhow::Result<u8> {
    let client = args.endpoint.client()?;
    block_on(async move {
        let s = client.take_snapshot(args.group).await?;
        if s.taken {
            println!(
                "group {}: snapshot at index {} (term {}), {} bytes, taken in {} ms",
                s.group, s.index, s.term, s.bytes, s.duration_ms
            );
        } else if s.index == 0 {
            println!("group {}: nothing applied yet, no snapshot taken", s.group);
        } else {
            println!(
                "group {}: nothing applied since the latest snapshot, at index {} (term {}), {} bytes",
                s.group, s.index, s.term, s.bytes
            );
        }
        Ok(EXIT_OK)
    })
}

/// `conclave ring route KEY`.
pub(super) fn run_route(key: &str, endpoint: &EndpointArg) -> anyhow::Result<u8> {
    let client = endpoint.client()?;
    block_on(async move {
        let route = client.route(key.as_bytes()).await?;
        let replicas: Vec<String> = route.replicas.iter().map(NodeId::to_string).collect();
        let leader = route
            .leader
            .map_or_else(|| "unknown".to_owned(), |l| l.to_string());
        // A sharded node names the shard's group and its map version.
        let group = if route.map_version > 0 {
            format!(
                " (group {}, map version {})",
                route.group, route.map_version
            )
        } else {
            String::new()
        };
        println!(
            "key {key:?}: shard {}{group}, replicas [{}], leader {leader}",
            route.shard,
            replicas.join(", ")
        );
        Ok(EXIT_OK)
    })
}

/// `conclave ring prefer SHARD NODE`.
pub(super) fn run_prefer(
    shard: ShardId,
    node: NodeId,
    expected_version: Option<u64>,
    endpoint: &EndpointArg,
) -> anyhow::Result<u8> {
    let client = endpoint.client()?;
    block_on(async move {
        let c = client
            .prefer_shard_leader(shard, node, expected_version)
            .await?;
        let replicas: Vec<String> = c.replicas.iter().map(NodeId::to_string).collect();
        let what = if c.changed { "now" } else { "already" };
        println!(
            "shard {} (group {}): node {node} is {what} the preferred leader, replicas [{}], map version {}",
            c.shard,
            c.group,
            replicas.join(", "),
            c.map_version
        );
        Ok(EXIT_OK)
    })
}

fn opt(id: Option<NodeId>) -> String {
    id.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// The human-readable table of `conclave status`: `GET /v1/cluster`, with the incarnation and
/// mean round trip of each member from `GET /v1/cluster/members` when given.
pub(crate) fn status_table(
    endpoint: &str,
    s: &ClusterStatus,
    gossip: Option<&GossipMembers>,
) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; `let _` keeps clippy quiet without an unwrap.
    let _ = writeln!(
        out,
        "node {} at {endpoint}: {} in term {}, leader {}, commit {}, applied {}",
        s.node_id,
        s.role,
        s.term,
        opt(s.leader_id),
        s.commit_index,
        s.applied_index
    );
    let _ = match &s.storage {
        StorageCondition::Healthy => writeln!(out, "storage: healthy"),
        StorageCondition::Stalled { component, for_ms } => writeln!(
            out,
            "storage: STALLED ({component}: a call has not returned for {for_ms} ms)"
        ),
        StorageCondition::Failed { component, error } => writeln!(
            out,
            "storage: FAILED ({component}: {error}); the node must be restarted once the disk is fixed"
        ),
    };
    match s.membership {
        crate::api::MembershipState::Member => {}
        crate::api::MembershipState::NotAMember => {
            let _ = writeln!(
                out,
                "membership: NOT A MEMBER (waiting to be added: `conclave member add {}` on the cluster)",
                s.node_id
            );
        }
        crate::api::MembershipState::Removed => {
            let _ = writeln!(
                out,
                "membership: REMOVED from the cluster (it takes no part any more; stop it, or add it back)"
            );
        }
    }
    if let Some(g) = gossip {
        let _ = writeln!(
            out,
            "gossip: incarnation {}, local health {}, {}",
            g.incarnation,
            g.local_health,
            if g.joined {
                "joined"
            } else {
                "joining (no seed answered yet)"
            }
        );
    }
    let _ = writeln!(out, "\nMEMBERS");
    let _ = writeln!(
        out,
        "{:>4}  {:<22} {:<22} {:<8} {:>5} {:>8}",
        "ID", "ADDR", "HTTP", "STATE", "INC", "RTT_MS"
    );
    for m in &s.members {
        let leader = if Some(m.id) == s.leader_id {
            " (leader)"
        } else {
            ""
        };
        let known = gossip.and_then(|g| g.members.iter().find(|gm| gm.id == m.id));
        let incarnation = known.map_or_else(|| "-".to_owned(), |gm| gm.incarnation.to_string());
        let rtt = known
            .and_then(|gm| gm.rtt.as_ref())
            .map_or_else(|| "-".to_owned(), |r| format!("{:.1}", r.avg_ms));
        let _ = writeln!(
            out,
            "{:>4}  {:<22} {:<22} {:<8} {:>5} {:>8}{leader}",
            m.id,
            m.addr.to_string(),
            m.http.to_string(),
            m.state,
            incarnation,
            rtt
        );
    }
    let _ = writeln!(out, "\nGROUPS");
    let _ = writeln!(
        out,
        "{:>5}  {:<10} {:>6} {:>6} {:>10} {:>10} {:>10}  REPLICAS (id match/lag)",
        "GROUP", "ROLE", "LEADER", "TERM", "COMMIT", "APPLIED", "SNAPSHOT"
    );
    for g in &s.groups {
        let replicas: Vec<String> = g
            .replicas
            .iter()
            .map(|r| {
                let learner = if r.learner { " (learner)" } else { "" };
                format!("{} {}/{}{learner}", r.id, r.match_index, r.lag)
            })
            .collect();
        let _ = writeln!(
            out,
            "{:>5}  {:<10} {:>6} {:>6} {:>10} {:>10} {:>10}  {}",
            g.id,
            g.role,
            opt(g.leader_id),
            g.term,
            g.commit_index,
            g.applied_index,
            g.snapshot_index,
            if replicas.is_empty() {
                "-".to_owned()
            } else {
                replicas.join(", ")
            }
        );
    }
    out
}

/// The shards part of `conclave status` on a sharded node (`GET /v1/shards`): per node, the
/// shards it replicates and the shards it leads as this node sees them (its own replicas'
/// view for the shards it hosts, its leader cache for the others), then this node's replicas'
/// lag (committed, not yet applied).
pub(crate) fn shards_table(s: &ShardsStatus) -> String {
    let mut out = String::new();
    let mut hosted: BTreeMap<NodeId, usize> = BTreeMap::new();
    let mut leads: BTreeMap<NodeId, usize> = BTreeMap::new();
    let mut leaderless = 0;
    for sh in &s.shards {
        for &r in &sh.replicas {
            *hosted.entry(r).or_default() += 1;
        }
        match sh.leader {
            Some(l) => *leads.entry(l).or_default() += 1,
            None => leaderless += 1,
        }
    }
    let _ = writeln!(
        out,
        "\nSHARDS (map version {}, {} shards; leaders as node {} sees them)",
        s.map_version,
        s.shards.len(),
        s.node_id
    );
    let _ = writeln!(out, "{:>4}  {:>6} {:>6}", "NODE", "HOSTS", "LEADS");
    for (node, n) in &hosted {
        let _ = writeln!(
            out,
            "{node:>4}  {n:>6} {:>6}",
            leads.get(node).copied().unwrap_or(0)
        );
    }
    if leaderless > 0 {
        let _ = writeln!(out, "{leaderless} shard(s) without a known leader");
    }
    let here: Vec<&crate::api::ShardStatus> = s.shards.iter().filter(|sh| sh.hosted).collect();
    let lagging = here.iter().filter(|sh| sh.lag > 0).count();
    let max_lag = here.iter().map(|sh| sh.lag).max().unwrap_or(0);
    let _ = writeln!(
        out,
        "node {}: {} shard(s) hosted, {} applying behind their commit (most {} entries)",
        s.node_id,
        here.len(),
        lagging,
        max_lag
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shards_table_sums_hosts_and_leaders_by_node() {
        use crate::api::ShardStatus;
        let shard =
            |shard: ShardId, replicas: Vec<NodeId>, leader: Option<NodeId>, lag: u64| ShardStatus {
                shard,
                group: conclave_ring::group_of_shard(shard),
                hosted: replicas.contains(&NodeId::new(1)),
                replicas,
                leader,
                term: 2,
                commit: 10,
                applied: 10 - lag,
                lag,
            };
        let s = ShardsStatus {
            node_id: NodeId::new(1),
            sharded: true,
            map_version: 3,
            shards: vec![
                shard(
                    ShardId::new(0),
                    vec![NodeId::new(1), NodeId::new(2)],
                    Some(NodeId::new(1)),
                    0,
                ),
                shard(
                    ShardId::new(1),
                    vec![NodeId::new(2), NodeId::new(3)],
                    Some(NodeId::new(3)),
                    0,
                ),
                shard(
                    ShardId::new(2),
                    vec![NodeId::new(3), NodeId::new(1)],
                    Some(NodeId::new(1)),
                    4,
                ),
                shard(
                    ShardId::new(3),
                    vec![NodeId::new(1), NodeId::new(2)],
                    None,
                    0,
                ),
            ],
            map_adoptions: crate::api::MapAdoptions::default(),
        };
        let t = shards_table(&s);
        assert!(
            t.contains("SHARDS (map version 3, 4 shards; leaders as node 1 sees them)"),
            "{t}"
        );
        let row = |n: &str| {
            t.lines()
                .find(|l| l.split_whitespace().next() == Some(n))
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
        };
        assert_eq!(row("1"), Some(vec!["1", "3", "2"]), "{t}");
        assert_eq!(row("2"), Some(vec!["2", "3", "0"]), "{t}");
        assert_eq!(row("3"), Some(vec!["3", "2", "1"]), "{t}");
        assert!(t.contains("1 shard(s) without a known leader"), "{t}");
        assert!(
            t.contains(
                "node 1: 3 shard(s) hosted, 1 applying behind their commit (most 4 entries)"
            ),
            "{t}"
        );
    }
    use crate::api::{GossipMember, GroupStatus, MemberStatus, ReplicaStatus, RttStats};
    use conclave_core::ids::GroupId;

    #[test]
    fn table_shows_members_groups_and_lag() {
        let s = ClusterStatus {
            node_id: NodeId::new(1),
            role: "leader".into(),
            term: 3,
            leader_id: Some(NodeId::new(1)),
            commit_index: 10,
            applied_index: 9,
            members: vec![MemberStatus {
                id: NodeId::new(2),
                addr: "127.0.0.1:7002".parse().unwrap(),
                http: "127.0.0.1:7102".parse().unwrap(),
                state: "alive".into(),
                drained: false,
            }],
            groups: vec![GroupStatus {
                id: GroupId::FIRST,
                role: "leader".into(),
                leader_id: Some(NodeId::new(1)),
                term: 3,
                commit_index: 10,
                applied_index: 9,
                snapshot_index: 8,
                voters: vec![NodeId::new(1), NodeId::new(2)],
                learners: vec![],
                replicas: vec![
                    ReplicaStatus {
                        id: NodeId::new(2),
                        match_index: 7,
                        lag: 3,
                        learner: false,
                    },
                    ReplicaStatus {
                        id: NodeId::new(4),
                        match_index: 2,
                        lag: 8,
                        learner: true,
                    },
                ],
                membership: Default::default(),
            }],
            storage: Default::default(),
            membership: Default::default(),
        };
        let t = status_table("http://x", &s, None);
        assert!(t.contains("storage: healthy"), "{t}");
        assert!(!t.contains("membership:"), "a member says nothing: {t}");
        for (state, line) in [
            (
                crate::api::MembershipState::NotAMember,
                "membership: NOT A MEMBER (waiting to be added",
            ),
            (
                crate::api::MembershipState::Removed,
                "membership: REMOVED from the cluster",
            ),
        ] {
            let mut other = s.clone();
            other.membership = state;
            let t = status_table("http://x", &other, None);
            assert!(t.contains(line), "{t}");
        }
        let mut failed = s.clone();
        failed.storage = StorageCondition::Failed {
            component: crate::storage::health::StorageComponent::StateMachine(GroupId::FIRST),
            error: crate::storage::health::StorageError::Reported {
                shown: "No space left on device".into(),
            },
        };
        let f = status_table("http://x", &failed, None);
        assert!(
            f.contains("storage: FAILED (state_machine/0: No space left on device)"),
            "{f}"
        );
        assert!(
            t.contains("node 1 at http://x: leader in term 3, leader 1"),
            "{t}"
        );
        assert!(t.contains("127.0.0.1:7102"), "{t}");
        assert!(t.contains("2 7/3"), "{t}");
        assert!(t.contains("SNAPSHOT"), "{t}");
        assert!(t.contains("        10          9          8  2 7/3"), "{t}");
        assert!(t.contains("2 7/3, 4 2/8 (learner)"), "{t}");
        let gossip = GossipMembers {
            node_id: NodeId::new(1),
            incarnation: 4,
            local_health: 0,
            joined: true,
            counts: Default::default(),
            stats: Default::default(),
            members: vec![GossipMember {
                id: NodeId::new(2),
                state: "alive".into(),
                incarnation: 7,
                addr: "127.0.0.1:7002".into(),
                http: "127.0.0.1:7102".into(),
                metadata: Default::default(),
                metadata_version: 0,
                rtt: Some(RttStats {
                    samples_ms: vec![1, 2],
                    last_ms: 2,
                    min_ms: 1,
                    avg_ms: 1.5,
                    max_ms: 2,
                }),
            }],
        };
        let t = status_table("http://x", &s, Some(&gossip));
        assert!(
            t.contains("gossip: incarnation 4, local health 0, joined"),
            "{t}"
        );
        let row = t.lines().find(|l| l.contains("127.0.0.1:7002")).unwrap();
        assert!(
            row.contains("alive") && row.contains(" 7 ") && row.ends_with("1.5"),
            "{row}"
        );
    }
}
