//! The multi-group [`Host`]: coalescing, quiescence and wake-up on a loss-free in-test
//! network of hosts (every frame delivered 1 ms after it is sent, every persist complete at
//! once). The fault-injecting multi-group simulator is `conclave_sim::raft::MultiWorld`.

use super::*;
use std::collections::BTreeSet;

const GROUPS: u64 = 30;

struct Cluster {
    hosts: Vec<Option<Host>>,
    now: Millis,
    /// Frames in flight: (deliver at, frame).
    wire: Vec<(Millis, Frame)>,
    /// Frames sent per (from, to).
    sent: std::collections::BTreeMap<(NodeId, NodeId), u64>,
    /// Directed links whose frames are lost.
    blocked: BTreeSet<(NodeId, NodeId)>,
    template: RaftConfig,
}

impl Cluster {
    fn new(nodes: u64, quiesce: bool, template: RaftConfig) -> Cluster {
        let mut c = Cluster {
            hosts: Vec::new(),
            now: 0,
            wire: Vec::new(),
            sent: Default::default(),
            blocked: BTreeSet::new(),
            template,
        };
        for id in (1..=nodes).map(NodeId::new) {
            let mut h = Host::new(
                HostConfig {
                    id,
                    heartbeat_interval_ms: 50,
                    quiesce,
                },
                0,
            );
            for g in (0..GROUPS).map(GroupId::new) {
                let cfg = Host::group_config(&c.template, id, g);
                let restore = RestoreState {
                    base_membership: Membership::with_voters((1..=nodes).map(NodeId::new)),
                    ..RestoreState::default()
                };
                let raft = Raft::new(cfg, restore, id.get() * 1_000 + g.get(), 0).unwrap();
                h.add_group(raft).unwrap();
            }
            c.hosts.push(Some(h));
        }
        c.drain_all();
        c
    }

    fn host(&mut self, id: NodeId) -> &mut Host {
        self.hosts[(id.get() - 1) as usize].as_mut().unwrap()
    }

    fn drain(&mut self, i: usize) {
        let mut out = Vec::new();
        let now = self.now;
        loop {
            let Some(h) = self.hosts[i].as_mut() else {
                return;
            };
            h.drain(&mut out);
            if out.is_empty() {
                return;
            }
            for a in out.drain(..) {
                match a {
                    HostAction::Send(f) => {
                        *self.sent.entry((f.from, f.to)).or_default() += 1;
                        if !self.blocked.contains(&(f.from, f.to)) {
                            self.wire.push((now + 1, f));
                        }
                    }
                    HostAction::Group {
                        group,
                        action: Action::Persist(req),
                    } => {
                        let seq = req.seq;
                        if let Some(h) = self.hosts[i].as_mut() {
                            h.with_group(now, group, |r| r.persisted(now, seq));
                        }
                    }
                    HostAction::Group { .. } => {}
                }
            }
        }
    }

    fn drain_all(&mut self) {
        for i in 0..self.hosts.len() {
            self.drain(i);
        }
    }

    /// Advances time 1 ms at a time to `until`, delivering frames and firing timers.
    fn run(&mut self, ms: Millis) {
        let until = self.now + ms;
        while self.now < until {
            self.now += 1;
            let now = self.now;
            let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.wire)
                .into_iter()
                .partition(|(at, _)| *at <= now);
            self.wire = rest;
            for (_, f) in due {
                let i = (f.to.get() - 1) as usize;
                if let Some(h) = self.hosts[i].as_mut() {
                    h.handle_frame(now, f);
                    self.drain(i);
                }
            }
            for i in 0..self.hosts.len() {
                let due = self.hosts[i]
                    .as_ref()
                    .and_then(Host::next_deadline)
                    .is_some_and(|at| at <= now);
                if due {
                    if let Some(h) = self.hosts[i].as_mut() {
                        h.tick(now);
                    }
                    self.drain(i);
                }
            }
        }
    }

    fn leader(&self, g: GroupId) -> Option<(NodeId, Term)> {
        self.hosts
            .iter()
            .flatten()
            .filter_map(|h| {
                let r = h.raft(g)?;
                (r.role() == Role::Leader).then_some((r.term(), h.id()))
            })
            .max()
            .map(|(t, id)| (id, t))
    }

    fn all_quiesced(&self) -> bool {
        self.hosts
            .iter()
            .flatten()
            .all(|h| h.quiesced_count() == GROUPS as usize)
    }

    fn sent(&self, from: NodeId, to: NodeId) -> u64 {
        self.sent.get(&(from, to)).copied().unwrap_or(0)
    }
}

#[test]
fn host_refuses_cores_it_cannot_drive() {
    let mut h = Host::new(
        HostConfig {
            id: NodeId::new(1),
            heartbeat_interval_ms: 50,
            quiesce: true,
        },
        0,
    );
    let restore = || RestoreState {
        base_membership: Membership::with_voters([NodeId::new(1), NodeId::new(2), NodeId::new(3)]),
        ..RestoreState::default()
    };
    let own = Raft::new(cfg(NodeId::new(1)), restore(), 1, 0).unwrap();
    assert_eq!(
        h.add_group(own),
        Err(HostError::OwnHeartbeats(GroupId::new(7)))
    );
    let other = Raft::new(
        Host::group_config(&cfg(NodeId::new(2)), NodeId::new(2), GroupId::new(7)),
        restore(),
        1,
        0,
    )
    .unwrap();
    assert!(matches!(
        h.add_group(other),
        Err(HostError::WrongNode { .. })
    ));
    let ok = Raft::new(
        Host::group_config(&cfg(NodeId::new(1)), NodeId::new(1), GroupId::new(7)),
        restore(),
        1,
        0,
    )
    .unwrap();
    assert_eq!(h.add_group(ok), Ok(()));
    let again = Raft::new(
        Host::group_config(&cfg(NodeId::new(1)), NodeId::new(1), GroupId::new(7)),
        restore(),
        1,
        0,
    )
    .unwrap();
    assert_eq!(
        h.add_group(again),
        Err(HostError::GroupExists(GroupId::new(7)))
    );
    assert!(h.remove_group(GroupId::new(7)).is_some());
    assert!(h.is_empty());
}

#[test]
fn every_groups_heartbeats_share_one_frame_per_beat() {
    let mut c = Cluster::new(3, false, RaftConfig::default());
    c.run(2_000);
    assert!((0..GROUPS).map(GroupId::new).all(|g| c.leader(g).is_some()));
    let led_by_1 = (0..GROUPS)
        .map(GroupId::new)
        .filter(|g| c.leader(*g).map(|l| l.0) == Some(NodeId::new(1)))
        .count() as u64;
    let frames = c.sent(NodeId::new(1), NodeId::new(2));
    let hb = c.host(NodeId::new(1)).stats().heartbeats;
    c.run(1_000);
    let frames = c.sent(NodeId::new(1), NodeId::new(2)) - frames;
    let hb = c.host(NodeId::new(1)).stats().heartbeats - hb;
    // 20 beats: at most one heartbeat frame and one answer frame per beat each way.
    assert!(frames <= 41, "{frames} frames n1 -> n2 in 1 s");
    // Every group n1 leads heartbeats both peers at every beat, all in those frames.
    assert!(led_by_1 > 0);
    assert!(
        hb >= 2 * 19 * led_by_1,
        "{hb} heartbeats for {led_by_1} groups"
    );
    assert_eq!(c.host(NodeId::new(1)).quiesced_count(), 0, "quiescence off");
}

#[test]
fn idle_groups_quiesce_and_a_proposal_wakes_only_its_group() {
    let mut c = Cluster::new(3, true, RaftConfig::default());
    c.run(2_000);
    assert!(c.all_quiesced(), "every group quiesced on every node");
    let before: u64 = (1..=3)
        .map(NodeId::new)
        .map(|id| c.host(id).stats().frames)
        .sum();
    let ticks: u64 = (1..=3)
        .map(NodeId::new)
        .map(|id| c.host(id).stats().ticks)
        .sum();
    c.run(2_000);
    assert_eq!(
        (1..=3)
            .map(NodeId::new)
            .map(|id| c.host(id).stats().frames)
            .sum::<u64>(),
        before,
        "quiesced groups send nothing"
    );
    assert_eq!(
        (1..=3)
            .map(NodeId::new)
            .map(|id| c.host(id).stats().ticks)
            .sum::<u64>(),
        ticks
    );
    assert_eq!(
        c.host(NodeId::new(1)).next_deadline(),
        None,
        "no timer at all"
    );

    let (l, _) = c.leader(GroupId::new(5)).unwrap();
    let now = c.now;
    let p = c
        .host(l)
        .with_group(now, GroupId::new(5), |r| r.propose(now, b"x".to_vec()))
        .unwrap()
        .unwrap();
    c.drain((l.get() - 1) as usize);
    c.run(5);
    for id in (1..=3).map(NodeId::new) {
        assert!(c.host(id).raft(GroupId::new(5)).unwrap().commit_index() >= p.index - 1);
    }
    let awake: usize = (1..=3)
        .map(NodeId::new)
        .map(|id| GROUPS as usize - c.host(id).quiesced_count())
        .sum();
    assert_eq!(awake, 3, "only group 5 woke, on each node");
    c.run(10);
    assert!(c.host(l).raft(GroupId::new(5)).unwrap().commit_index() >= p.index);
    c.run(300);
    assert!(c.all_quiesced(), "and it quiesces again");
}

#[test]
fn peer_down_wakes_the_followers_of_a_dead_leader() {
    let mut c = Cluster::new(3, true, RaftConfig::default());
    c.run(2_000);
    assert!(c.all_quiesced());
    let (dead, _) = c.leader(GroupId::FIRST).unwrap();
    let led: BTreeSet<GroupId> = (0..GROUPS)
        .map(GroupId::new)
        .filter(|g| c.leader(*g).map(|l| l.0) == Some(dead))
        .collect();
    c.hosts[(dead.get() - 1) as usize] = None;
    c.run(1_000);
    // Without gossip nothing happens: the followers are quiesced.
    assert!(led
        .iter()
        .all(|g| c.leader(*g).map(|l| l.0) == Some(dead) || c.leader(*g).is_none()));
    let now = c.now;
    for id in (1..=3).map(NodeId::new).filter(|id| *id != dead) {
        c.host(id).peer_down(now, dead);
        c.drain((id.get() - 1) as usize);
    }
    c.run(1_000);
    for g in &led {
        let (l, _) = c.leader(*g).expect("re-elected");
        assert_ne!(l, dead);
    }
}

#[test]
fn a_false_suspicion_costs_no_election() {
    let mut c = Cluster::new(3, true, RaftConfig::default());
    c.run(2_000);
    assert!(c.all_quiesced());
    let terms: Vec<_> = (0..GROUPS).map(GroupId::new).map(|g| c.leader(g)).collect();
    let (l, _) = terms[0].unwrap();
    let f = (1..=3).map(NodeId::new).find(|id| *id != l).unwrap();
    let now = c.now;
    c.host(f).peer_down(now, l);
    c.drain((f.get() - 1) as usize);
    c.run(1_000);
    // The woken followers asked their leader to wake; it heartbeat, nobody campaigned.
    assert_eq!(
        (0..GROUPS)
            .map(GroupId::new)
            .map(|g| c.leader(g))
            .collect::<Vec<_>>(),
        terms
    );
    // While gossip still reports the leader down the follower stays awake...
    let awake = GROUPS as usize - c.host(f).quiesced_count();
    assert!(awake > 0);
    let now = c.now;
    c.host(f).peer_up(now, l);
    c.run(500);
    // ...and quiesces again once it is reported up.
    assert!(c.all_quiesced());
    assert_eq!(
        (0..GROUPS)
            .map(GroupId::new)
            .map(|g| c.leader(g))
            .collect::<Vec<_>>(),
        terms
    );
}

#[test]
fn a_closed_connection_wakes_the_followers_of_a_crashed_leader() {
    let mut c = Cluster::new(3, true, RaftConfig::default());
    c.run(2_000);
    assert!(c.all_quiesced());
    let (dead, _) = c.leader(GroupId::FIRST).unwrap();
    let led: BTreeSet<GroupId> = (0..GROUPS)
        .map(GroupId::new)
        .filter(|g| c.leader(*g).map(|l| l.0) == Some(dead))
        .collect();
    c.hosts[(dead.get() - 1) as usize] = None;
    let now = c.now;
    // The transport reports the closed connections; gossip says nothing yet.
    for id in (1..=3).map(NodeId::new).filter(|id| *id != dead) {
        c.host(id).peer_unreachable(now, dead);
        c.drain((id.get() - 1) as usize);
    }
    // One election timeout (at most 300 ms), a pre-vote and a vote round.
    c.run(700);
    for g in &led {
        let (l, _) = c.leader(*g).expect("re-elected");
        assert_ne!(l, dead);
    }
}

/// The transport's connection between a follower and its leader resets while every group is
/// quiesced, and stays down longer than an election timeout, so the follower's request that
/// the leader wake is lost and its election timer fires: the other follower, woken by the
/// pre-vote, holds its vote lease again and refuses, the leader wakes on that follower's
/// request and heartbeats. No group changes leader. (Without the lease taken up again on
/// wake-up, the quiesced follower grants the pre-vote and the vote: the leader is deposed.)
#[test]
fn a_connection_reset_to_a_live_leader_costs_no_election() {
    let mut c = Cluster::new(3, true, RaftConfig::default());
    c.run(2_000);
    assert!(c.all_quiesced());
    let before: Vec<_> = (0..GROUPS).map(GroupId::new).map(|g| c.leader(g)).collect();
    let (l, _) = before[0].unwrap();
    let f = (1..=3).map(NodeId::new).find(|id| *id != l).unwrap();
    let woken = c.host(f).stats().woken;
    c.blocked.insert((f, l));
    c.blocked.insert((l, f));
    let now = c.now;
    c.host(f).peer_unreachable(now, l);
    c.drain((f.get() - 1) as usize);
    assert!(c.host(f).stats().woken > woken, "the follower woke");
    c.run(800);
    c.blocked.clear();
    c.run(1_000);
    assert_eq!(
        (0..GROUPS)
            .map(GroupId::new)
            .map(|g| c.leader(g))
            .collect::<Vec<_>>(),
        before
    );
    // Nothing is remembered: once the link is back everything quiesces again.
    c.run(1_000);
    assert!(c.all_quiesced());
    assert_eq!(
        (0..GROUPS)
            .map(GroupId::new)
            .map(|g| c.leader(g))
            .collect::<Vec<_>>(),
        before
    );
}

#[test]
fn planted_quiesced_follower_ignoring_peer_down_stalls() {
    let template = RaftConfig {
        planted_bugs: PlantedBugs {
            quiesced_follower_ignores_peer_down: true,
            ..PlantedBugs::default()
        },
        ..RaftConfig::default()
    };
    let mut c = Cluster::new(3, true, template);
    c.run(2_000);
    let (dead, _) = c.leader(GroupId::FIRST).unwrap();
    c.hosts[(dead.get() - 1) as usize] = None;
    let now = c.now;
    for id in (1..=3).map(NodeId::new).filter(|id| *id != dead) {
        c.host(id).peer_down(now, dead);
        c.drain((id.get() - 1) as usize);
    }
    c.run(3_000);
    assert!(
        c.leader(GroupId::FIRST).is_none(),
        "group 0 never elects a new leader"
    );
}

#[test]
fn writes_between_beats_never_leave_a_follower_awake_under_a_quiesced_leader() {
    // A leader must not quiesce on acknowledgements that predate new activity: the append
    // wakes the followers, and a leader that then went silent would let their election
    // timers fire and depose it (liveness cost only, but an election per idle write).
    let mut c = Cluster::new(3, true, RaftConfig::default());
    c.run(2_000);
    assert!(c.all_quiesced());
    let before: Vec<_> = (0..GROUPS).map(GroupId::new).map(|g| c.leader(g)).collect();
    for i in 0..300u64 {
        // Three groups, written 1-90 ms apart: many writes land while their group's leader
        // is collecting the followers' `quiesced` answers.
        let g = GroupId::new(i % 3);
        let (l, _) = c.leader(g).unwrap();
        let now = c.now;
        c.host(l)
            .with_group(now, g, |r| r.propose(now, vec![i as u8]))
            .unwrap()
            .unwrap();
        c.drain((l.get() - 1) as usize);
        c.run(1 + (i * 37) % 40);
    }
    c.run(2_000);
    assert_eq!(
        (0..GROUPS)
            .map(GroupId::new)
            .map(|g| c.leader(g))
            .collect::<Vec<_>>(),
        before
    );
    assert!(c.all_quiesced());
}
