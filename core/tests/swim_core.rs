//! Unit tests of the SWIM core asserting its exact outputs (issue 6, items 1 and 4): probe,
//! ping-req, suspect, refute, dead, prune, rumor limits, joins, leaves, metadata, and bad input.

use conclave_core::swim::{
    Action, Body, ConfigError, Event, Identity, Member, MemberState, Message, Metadata, NodeId,
    Swim, SwimConfig, Timer, Update, MAX_INCARNATION, MAX_RUMOR_INCARNATION,
};
use std::collections::{BTreeMap, BTreeSet};

/// Node 1, as a pattern.
const SEED: NodeId = NodeId::new(1);

fn ident(id: NodeId) -> Identity {
    Identity {
        id,
        addr: format!("n{id}:7946"),
        http: format!("n{id}:8080"),
    }
}

fn member(id: NodeId, incarnation: u64) -> Member {
    let i = ident(id);
    Member {
        id,
        addr: i.addr,
        http: i.http,
        incarnation,
        state: MemberState::Alive,
        metadata: Metadata::default(),
    }
}

fn update(id: NodeId, incarnation: u64, state: MemberState, by: NodeId) -> Update {
    let i = ident(id);
    Update {
        id,
        addr: i.addr,
        http: i.http,
        incarnation,
        state,
        metadata: Metadata::default(),
        by,
    }
}

fn msg(from: NodeId, to: NodeId, body: Body, updates: Vec<Update>) -> Message {
    Message {
        from,
        from_addr: ident(from).addr,
        from_incarnation: 0,
        to,
        body,
        updates,
    }
}

fn drain(s: &mut Swim) -> Vec<Action> {
    let mut out = Vec::new();
    s.poll_actions(&mut out);
    out
}

/// A started node that knows `others`, with its start-up actions drained.
fn node(id: NodeId, others: &[NodeId], cfg: SwimConfig) -> Swim {
    let mut s = Swim::new(cfg, ident(id), id.get()).expect("valid");
    s.preload(others.iter().map(|o| member(*o, 0)));
    s.start(0);
    drain(&mut s);
    s
}

fn sends(actions: &[Action]) -> Vec<(NodeId, &Body, &Vec<Update>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { to, msg, .. } => Some((*to, &msg.body, &msg.updates)),
            _ => None,
        })
        .collect()
}

fn timers(actions: &[Action]) -> Vec<(u64, Timer)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SetTimer { at, timer } => Some((*at, timer.clone())),
            _ => None,
        })
        .collect()
}

fn events(actions: &[Action]) -> Vec<Event> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Notify(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn cycle(s: &mut Swim, now: u64) -> Vec<Action> {
    s.handle_timer(now, Timer::Cycle { generation: 0 });
    drain(s)
}

fn ping_probe(actions: &[Action], to: NodeId) -> u64 {
    sends(actions)
        .into_iter()
        .find_map(|(t, b, _)| match b {
            Body::Ping { probe } if t == to => Some(*probe),
            _ => None,
        })
        .expect("a ping to the target")
}

#[test]
fn config_defaults_are_seed_000s_and_validation_names_the_key() {
    let c = SwimConfig::default();
    assert_eq!(
        (
            c.cycle_interval_ms,
            c.suspect_timeout_s,
            c.dead_timeout_s,
            c.prune_timeout_s,
            c.hybrid_threshold,
            c.rumor_limit_per_frame
        ),
        (1000, 10, 30, 300, 10, 5)
    );
    assert_eq!(c.validate(), Ok(()));
    let bad = SwimConfig {
        rumor_limit_per_frame: 0,
        ..SwimConfig::default()
    };
    assert_eq!(
        bad.validate(),
        Err(ConfigError::Zero {
            key: "rumor_limit_per_frame"
        })
    );
    let bad = SwimConfig {
        dead_timeout_s: 5,
        ..SwimConfig::default()
    };
    let err = bad.validate().expect_err("dead < suspect").to_string();
    assert!(err.contains("gossip.dead_timeout_s"), "{err}");
    let bad = SwimConfig {
        probe_timeout_ms: 1000,
        ..SwimConfig::default()
    };
    assert!(bad.validate().is_err());
    assert!(Swim::new(SwimConfig::default(), ident(NodeId::NONE), 1).is_err());
}

#[test]
fn start_arms_the_cycle_within_one_period_and_the_announce_timer() {
    let mut s = Swim::new(SwimConfig::default(), ident(NodeId::new(1)), 7).expect("valid");
    s.start(5_000);
    let t = timers(&drain(&mut s));
    assert_eq!(t.len(), 2);
    assert!(matches!(t[0], (at, Timer::Cycle { generation: 0 }) if (5_000..6_000).contains(&at)));
    assert_eq!(t[1], (6_000, Timer::Announce { generation: 0 }));
    assert!(s.is_joined(), "a node without seeds forms its own cluster");
}

#[test]
fn small_cluster_probes_every_member_each_cycle() {
    let mut s = node(
        NodeId::new(1),
        &[NodeId::new(2), NodeId::new(3)],
        SwimConfig::default(),
    );
    let a = cycle(&mut s, 1_000);
    let pings: Vec<NodeId> = sends(&a)
        .into_iter()
        .filter(|(_, b, _)| matches!(b, Body::Ping { .. }))
        .map(|(to, _, _)| to)
        .collect();
    assert_eq!(pings, vec![NodeId::new(2), NodeId::new(3)]);
    let p2 = ping_probe(&a, NodeId::new(2));
    let p3 = ping_probe(&a, NodeId::new(3));
    assert_eq!(
        timers(&a),
        vec![
            (1_300, Timer::ProbeTimeout { probe: p2 }),
            (2_000, Timer::ProbeEnd { probe: p2 }),
            (1_300, Timer::ProbeTimeout { probe: p3 }),
            (2_000, Timer::ProbeEnd { probe: p3 }),
            (2_000, Timer::Cycle { generation: 0 }),
        ]
    );
}

#[test]
fn large_cluster_probes_one_member_per_cycle_round_robin() {
    let others: Vec<NodeId> = (2..=20).map(NodeId::new).collect();
    let mut s = node(NodeId::new(1), &others, SwimConfig::default());
    let mut seen = Vec::new();
    for c in 1..=19u64 {
        let a = cycle(&mut s, c * 1_000);
        let pings: Vec<NodeId> = sends(&a)
            .into_iter()
            .filter(|(_, b, _)| matches!(b, Body::Ping { .. }))
            .map(|(to, _, _)| to)
            .collect();
        assert_eq!(pings.len(), 1, "one probe per cycle above hybrid_threshold");
        seen.push(pings[0]);
        // Answer so nobody becomes suspect.
        let probe = ping_probe(&a, pings[0]);
        s.handle_message(
            c * 1_000 + 5,
            msg(pings[0], NodeId::new(1), Body::Ack { probe }, vec![]),
        );
        drain(&mut s);
    }
    seen.sort_unstable();
    assert_eq!(
        seen, others,
        "a full pass probes every member once (SWIM §4.3)"
    );
}

#[test]
fn ping_is_answered_with_an_ack_of_the_same_probe() {
    let mut s = node(NodeId::new(1), &[NodeId::new(2)], SwimConfig::default());
    s.handle_message(
        10,
        msg(
            NodeId::new(2),
            NodeId::new(1),
            Body::Ping { probe: 77 },
            vec![],
        ),
    );
    let a = drain(&mut s);
    assert_eq!(
        sends(&a),
        vec![(NodeId::new(2), &Body::Ack { probe: 77 }, &vec![])]
    );
    match &a[0] {
        Action::Send { addr, msg, .. } => {
            assert_eq!(addr, "n2:7946");
            assert_eq!(msg.from, NodeId::new(1));
            assert_eq!(msg.to, NodeId::new(2));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn acked_probe_reports_rtt_and_suspects_nobody() {
    let mut s = node(
        NodeId::new(1),
        &[NodeId::new(2), NodeId::new(3)],
        SwimConfig::default(),
    );
    let a = cycle(&mut s, 1_000);
    let p2 = ping_probe(&a, NodeId::new(2));
    s.handle_message(
        1_042,
        msg(
            NodeId::new(2),
            NodeId::new(1),
            Body::Ack { probe: p2 },
            vec![],
        ),
    );
    assert_eq!(
        drain(&mut s),
        vec![Action::RoundTrip {
            peer: NodeId::new(2),
            rtt_ms: 42
        }]
    );
    s.handle_timer(1_300, Timer::ProbeTimeout { probe: p2 });
    assert!(drain(&mut s).is_empty(), "no ping-req for an acked probe");
    s.handle_timer(2_000, Timer::ProbeEnd { probe: p2 });
    assert!(drain(&mut s).is_empty());
    assert_eq!(
        s.member(NodeId::new(2)).map(|m| m.state),
        Some(MemberState::Alive)
    );
}

#[test]
fn unanswered_ping_triggers_ping_reqs_through_k_others_and_a_direct_retry() {
    let mut s = node(
        NodeId::new(1),
        &[
            NodeId::new(2),
            NodeId::new(3),
            NodeId::new(4),
            NodeId::new(5),
        ],
        SwimConfig::default(),
    );
    let a = cycle(&mut s, 1_000);
    let p2 = ping_probe(&a, NodeId::new(2));
    s.handle_timer(1_300, Timer::ProbeTimeout { probe: p2 });
    let a = drain(&mut s);
    let sent = sends(&a);
    assert_eq!(
        sent[0],
        (NodeId::new(2), &Body::Ping { probe: p2 }, &vec![])
    );
    let mut helpers: Vec<NodeId> = sent[1..]
        .iter()
        .map(|(to, body, _)| {
            assert_eq!(
                **body,
                Body::PingReq {
                    probe: p2,
                    target: NodeId::new(2),
                    target_addr: "n2:7946".into()
                }
            );
            *to
        })
        .collect();
    helpers.sort_unstable();
    assert_eq!(
        helpers,
        vec![NodeId::new(3), NodeId::new(4), NodeId::new(5)],
        "k = indirect_probes = 3 helpers, never the target"
    );
    // An indirect ack saves the target.
    s.handle_message(
        1_500,
        msg(
            NodeId::new(3),
            NodeId::new(1),
            Body::IndirectAck {
                probe: p2,
                target: NodeId::new(2),
            },
            vec![],
        ),
    );
    s.handle_timer(2_000, Timer::ProbeEnd { probe: p2 });
    assert!(events(&drain(&mut s)).is_empty());
    assert_eq!(
        s.member(NodeId::new(2)).map(|m| m.state),
        Some(MemberState::Alive)
    );
}

#[test]
fn relay_pings_the_target_and_forwards_its_ack_or_nacks() {
    let mut s = node(
        NodeId::new(1),
        &[NodeId::new(2), NodeId::new(3)],
        SwimConfig::default(),
    );
    let req = Body::PingReq {
        probe: 9,
        target: NodeId::new(3),
        target_addr: "n3:7946".into(),
    };
    s.handle_message(
        100,
        msg(NodeId::new(2), NodeId::new(1), req.clone(), vec![]),
    );
    let a = drain(&mut s);
    let relay = ping_probe(&a, NodeId::new(3));
    assert_eq!(
        timers(&a),
        vec![
            (400, Timer::RelayNack { probe: relay }),
            (1_100, Timer::RelayExpire { probe: relay }),
        ]
    );
    s.handle_message(
        150,
        msg(
            NodeId::new(3),
            NodeId::new(1),
            Body::Ack { probe: relay },
            vec![],
        ),
    );
    assert_eq!(
        sends(&drain(&mut s)),
        vec![(
            NodeId::new(2),
            &Body::IndirectAck {
                probe: 9,
                target: NodeId::new(3)
            },
            &vec![]
        )]
    );
    s.handle_timer(400, Timer::RelayNack { probe: relay });
    assert!(drain(&mut s).is_empty(), "no nack after an ack");

    // Second request: the target stays silent, so a nack goes back (Lifeguard §IV-A).
    s.handle_message(2_000, msg(NodeId::new(2), NodeId::new(1), req, vec![]));
    let a = drain(&mut s);
    let relay = ping_probe(&a, NodeId::new(3));
    s.handle_timer(2_300, Timer::RelayNack { probe: relay });
    assert_eq!(
        sends(&drain(&mut s)),
        vec![(
            NodeId::new(2),
            &Body::Nack {
                probe: 9,
                target: NodeId::new(3)
            },
            &vec![]
        )]
    );
}

/// Drives a failed probe of member 2 on node 1 of `{1, 2, 3}`; returns the end time.
fn fail_probe_of_2(s: &mut Swim) -> u64 {
    let a = cycle(s, 1_000);
    let p2 = ping_probe(&a, NodeId::new(2));
    let p3 = ping_probe(&a, NodeId::new(3));
    s.handle_message(
        1_010,
        msg(
            NodeId::new(3),
            NodeId::new(1),
            Body::Ack { probe: p3 },
            vec![],
        ),
    );
    s.handle_timer(1_300, Timer::ProbeTimeout { probe: p2 });
    drain(s);
    s.handle_timer(2_000, Timer::ProbeEnd { probe: p3 });
    s.handle_timer(2_000, Timer::ProbeEnd { probe: p2 });
    2_000
}

#[test]
fn failed_probe_suspects_then_the_suspicion_runs_out_into_dead() {
    let mut s = node(
        NodeId::new(1),
        &[NodeId::new(2), NodeId::new(3)],
        SwimConfig::default(),
    );
    let t = fail_probe_of_2(&mut s);
    let a = drain(&mut s);
    let ev = events(&a);
    assert_eq!(ev.len(), 1);
    assert!(matches!(&ev[0], Event::Suspect(m) if m.id == NodeId::new(2) && m.incarnation == 0));
    // Lifeguard: one possible confirmer (member 3), none yet, so the maximum: dead_timeout_s.
    assert!(timers(&a).contains(&(
        t + 30_000,
        Timer::Suspicion {
            member: NodeId::new(2),
            incarnation: 0
        }
    )));
    assert_eq!(s.stats().suspicions_started, 1);

    // The suspicion rides the next frames, to the suspect first (buddy system).
    s.handle_message(
        t + 100,
        msg(
            NodeId::new(3),
            NodeId::new(1),
            Body::Ping { probe: 1 },
            vec![],
        ),
    );
    let a = drain(&mut s);
    let (_, _, ups) = sends(&a)[0];
    assert!(ups.iter().any(|u| u.id == NodeId::new(2)
        && u.state == MemberState::Suspect
        && u.by == NodeId::new(1)));

    // Early timer (a stale one) does nothing; the right one declares dead.
    s.handle_timer(
        t + 29_999,
        Timer::Suspicion {
            member: NodeId::new(2),
            incarnation: 0,
        },
    );
    assert!(events(&drain(&mut s)).is_empty());
    s.handle_timer(
        t + 30_000,
        Timer::Suspicion {
            member: NodeId::new(2),
            incarnation: 0,
        },
    );
    let ev = events(&drain(&mut s));
    assert!(matches!(&ev[..], [Event::Dead(m)] if m.id == NodeId::new(2)));
    assert_eq!(
        s.member(NodeId::new(2)).map(|m| m.state),
        Some(MemberState::Dead)
    );
    assert_eq!(s.count(MemberState::Dead), 1);
    assert_eq!(s.count(MemberState::Alive), 1);
}

#[test]
fn independent_confirmation_shortens_the_suspicion_to_suspect_timeout() {
    let mut s = node(
        NodeId::new(1),
        &[NodeId::new(2), NodeId::new(3)],
        SwimConfig::default(),
    );
    let t = fail_probe_of_2(&mut s);
    drain(&mut s);
    // Member 3 suspects 2 independently: K = 1 reached, timeout = suspect_timeout_s.
    s.handle_message(
        t + 500,
        msg(
            NodeId::new(3),
            NodeId::new(1),
            Body::Gossip,
            vec![update(
                NodeId::new(2),
                0,
                MemberState::Suspect,
                NodeId::new(3),
            )],
        ),
    );
    let a = drain(&mut s);
    assert_eq!(
        timers(&a),
        vec![(
            t + 10_000,
            Timer::Suspicion {
                member: NodeId::new(2),
                incarnation: 0
            }
        )]
    );
    s.handle_timer(
        t + 10_000,
        Timer::Suspicion {
            member: NodeId::new(2),
            incarnation: 0,
        },
    );
    assert!(matches!(&events(&drain(&mut s))[..], [Event::Dead(m)] if m.id == NodeId::new(2)));
}

#[test]
fn without_lifeguard_the_suspicion_lasts_exactly_suspect_timeout() {
    let cfg = SwimConfig {
        lifeguard: false,
        ..SwimConfig::default()
    };
    let mut s = node(NodeId::new(1), &[NodeId::new(2), NodeId::new(3)], cfg);
    let t = fail_probe_of_2(&mut s);
    let a = drain(&mut s);
    assert!(timers(&a).contains(&(
        t + 10_000,
        Timer::Suspicion {
            member: NodeId::new(2),
            incarnation: 0
        }
    )));
    assert_eq!(
        s.local_health(),
        0,
        "no local health multiplier without Lifeguard"
    );
}

#[test]
fn refutation_from_the_suspect_clears_the_suspicion() {
    let mut s = node(
        NodeId::new(1),
        &[NodeId::new(2), NodeId::new(3)],
        SwimConfig::default(),
    );
    let t = fail_probe_of_2(&mut s);
    drain(&mut s);
    s.handle_message(
        t + 100,
        msg(
            NodeId::new(2),
            NodeId::new(1),
            Body::Gossip,
            vec![update(
                NodeId::new(2),
                1,
                MemberState::Alive,
                NodeId::new(2),
            )],
        ),
    );
    let ev = events(&drain(&mut s));
    assert!(matches!(&ev[..], [Event::Alive(m)] if m.id == NodeId::new(2) && m.incarnation == 1));
    s.handle_timer(
        t + 30_000,
        Timer::Suspicion {
            member: NodeId::new(2),
            incarnation: 0,
        },
    );
    assert!(events(&drain(&mut s)).is_empty(), "stale suspicion timer");
    assert_eq!(
        s.member(NodeId::new(2)).map(|m| m.state),
        Some(MemberState::Alive)
    );
    // An alive rumor of the same incarnation does not override a suspicion (SWIM §4.2).
    let mut s = node(
        NodeId::new(1),
        &[NodeId::new(2), NodeId::new(3)],
        SwimConfig::default(),
    );
    fail_probe_of_2(&mut s);
    s.handle_message(
        t + 100,
        msg(
            NodeId::new(2),
            NodeId::new(1),
            Body::Gossip,
            vec![update(
                NodeId::new(2),
                0,
                MemberState::Alive,
                NodeId::new(2),
            )],
        ),
    );
    assert_eq!(
        s.member(NodeId::new(2)).map(|m| m.state),
        Some(MemberState::Suspect)
    );
}

#[test]
fn suspected_node_refutes_with_a_higher_incarnation() {
    let mut s = node(
        NodeId::new(1),
        &[NodeId::new(2), NodeId::new(3)],
        SwimConfig::default(),
    );
    s.handle_message(
        10,
        msg(
            NodeId::new(2),
            NodeId::new(1),
            Body::Gossip,
            vec![update(
                NodeId::new(1),
                0,
                MemberState::Suspect,
                NodeId::new(2),
            )],
        ),
    );
    let a = drain(&mut s);
    assert_eq!(events(&a), vec![Event::Refuted { incarnation: 1 }]);
    assert_eq!(s.incarnation(), 1);
    assert_eq!(
        s.local_health(),
        1,
        "being suspected raises the local health score"
    );
    s.handle_message(
        20,
        msg(
            NodeId::new(3),
            NodeId::new(1),
            Body::Ping { probe: 4 },
            vec![],
        ),
    );
    let a = drain(&mut s);
    let (_, _, ups) = sends(&a)[0];
    assert_eq!(
        ups,
        &vec![
            update(NodeId::new(1), 1, MemberState::Alive, NodeId::new(1)).with_meta_incarnation(1)
        ]
    );
}

trait WithMetaIncarnation {
    fn with_meta_incarnation(self, inc: u64) -> Self;
}

impl WithMetaIncarnation for Update {
    fn with_meta_incarnation(mut self, inc: u64) -> Self {
        self.metadata.incarnation = inc;
        self
    }
}

#[test]
fn dead_members_are_pruned_after_prune_timeout() {
    let mut s = node(
        NodeId::new(1),
        &[NodeId::new(2), NodeId::new(3)],
        SwimConfig::default(),
    );
    s.handle_message(
        100,
        msg(
            NodeId::new(3),
            NodeId::new(1),
            Body::Gossip,
            vec![update(NodeId::new(2), 0, MemberState::Dead, NodeId::new(3))],
        ),
    );
    assert!(matches!(&events(&drain(&mut s))[..], [Event::Dead(m)] if m.id == NodeId::new(2)));
    let a = cycle(&mut s, 299_000);
    assert!(events(&a).is_empty());
    assert!(
        s.member(NodeId::new(2)).is_some(),
        "kept (and reported) until prune_timeout_s"
    );
    let a = cycle(&mut s, 300_100);
    assert_eq!(events(&a), vec![Event::Removed(NodeId::new(2))]);
    assert!(s.member(NodeId::new(2)).is_none());
    assert_eq!(s.count(MemberState::Dead), 0);
    // Dead members are never probed.
    let pings = sends(&a)
        .into_iter()
        .filter(|(to, b, _)| *to == NodeId::new(2) && matches!(b, Body::Ping { .. }))
        .count();
    assert_eq!(pings, 0);
}

#[test]
fn frames_carry_at_most_rumor_limit_updates_and_each_rumor_a_bounded_number_of_times() {
    let cfg = SwimConfig::default();
    let limit = cfg.rumor_limit_per_frame;
    let mut s = node(NodeId::new(1), &[NodeId::new(2)], cfg);
    // Twelve members join through gossip (five per frame, as a peer would send).
    for batch in (10..22u64).collect::<Vec<_>>().chunks(5) {
        let ups = batch
            .iter()
            .map(|id| update(NodeId::new(*id), 0, MemberState::Alive, NodeId::new(*id)))
            .collect();
        s.handle_message(10, msg(NodeId::new(2), NodeId::new(1), Body::Gossip, ups));
    }
    drain(&mut s);
    assert_eq!(s.pending_rumors(), 12);
    // n = 13 active others + 1: ceil(3 * log2(15)) = 12 sends per rumor.
    let per_rumor = (3.0 * 15f64.log2()).ceil() as usize;
    let mut counts: BTreeMap<NodeId, usize> = BTreeMap::new();
    let mut frames = 0;
    while s.pending_rumors() > 0 {
        s.handle_message(
            20,
            msg(
                NodeId::new(2),
                NodeId::new(1),
                Body::Ping { probe: 1 },
                vec![],
            ),
        );
        for (_, _, ups) in sends(&drain(&mut s)) {
            assert!(ups.len() <= limit, "{} rumors in one frame", ups.len());
            frames += 1;
            for u in ups {
                *counts.entry(u.id).or_default() += 1;
            }
        }
        assert!(frames < 1_000);
    }
    assert_eq!(counts.len(), 12);
    assert!(counts.values().all(|c| *c == per_rumor), "{counts:?}");
    assert_eq!(frames, (12 * per_rumor).div_ceil(limit));
}

#[test]
fn join_retries_until_a_seed_answers_then_learns_the_view() {
    let cfg = SwimConfig {
        seeds: vec!["n1:7946".into(), "n4:7946".into()],
        ..SwimConfig::default()
    };
    let mut j = Swim::new(cfg, ident(NodeId::new(4)), 3).expect("valid");
    j.start(0);
    let a = drain(&mut j);
    let joins: Vec<(NodeId, &Body)> = sends(&a).into_iter().map(|(t, b, _)| (t, b)).collect();
    assert_eq!(joins.len(), 1, "never joins through its own address");
    assert!(
        matches!(joins[0], (NodeId::NONE, Body::Join { member }) if member.id == NodeId::new(4))
    );
    assert!(!j.is_joined());
    j.handle_timer(1_000, Timer::Announce { generation: 0 });
    let a = drain(&mut j);
    assert_eq!(sends(&a).len(), 1, "retried every seed_retry_ms");
    assert!(timers(&a).contains(&(2_000, Timer::Announce { generation: 0 })));

    // The seed adds the joiner, gossips it, and answers with its view.
    let mut seed = node(
        NodeId::new(1),
        &[NodeId::new(2), NodeId::new(3)],
        SwimConfig::default(),
    );
    let join = match &a[0] {
        Action::Send { msg, .. } => msg.clone(),
        other => panic!("unexpected {other:?}"),
    };
    seed.handle_message(1_010, join);
    let a = drain(&mut seed);
    assert!(matches!(&events(&a)[..], [Event::Joined(m)] if m.id == NodeId::new(4)));
    let ack = a
        .iter()
        .find_map(|x| match x {
            Action::Send { msg, .. } if matches!(msg.body, Body::JoinAck { .. }) => {
                Some(msg.clone())
            }
            _ => None,
        })
        .expect("join ack");
    match &ack.body {
        Body::JoinAck { members } => {
            let ids: Vec<NodeId> = members.iter().map(|u| u.id).collect();
            assert_eq!(ids, vec![NodeId::new(1), NodeId::new(2), NodeId::new(3)]);
        }
        other => panic!("unexpected {other:?}"),
    }
    j.handle_message(1_020, ack);
    let ev = events(&drain(&mut j));
    assert_eq!(ev.last(), Some(&Event::JoinedCluster));
    assert_eq!(
        ev.len(),
        4,
        "three members joined plus JoinedCluster: {ev:?}"
    );
    assert!(j.is_joined());
    assert_eq!(j.count(MemberState::Alive), 3);
    j.handle_timer(2_000, Timer::Announce { generation: 0 });
    assert!(
        sends(&drain(&mut j)).is_empty(),
        "no more joins once joined"
    );
}

#[test]
fn restarted_node_learns_it_was_declared_dead_and_rejoins_with_a_higher_incarnation() {
    let mut seed = node(
        NodeId::new(1),
        &[NodeId::new(2), NodeId::new(3)],
        SwimConfig::default(),
    );
    seed.handle_message(
        100,
        msg(
            NodeId::new(2),
            NodeId::new(1),
            Body::Gossip,
            vec![update(NodeId::new(3), 0, MemberState::Dead, NodeId::new(2))],
        ),
    );
    drain(&mut seed);
    // Node 3 comes back with a fresh state (incarnation 0) and joins through node 1.
    let cfg = SwimConfig {
        seeds: vec!["n1:7946".into()],
        ..SwimConfig::default()
    };
    let mut r = Swim::new(cfg, ident(NodeId::new(3)), 9).expect("valid");
    r.start(5_000);
    let join = drain(&mut r)
        .into_iter()
        .find_map(|a| match a {
            Action::Send { msg, .. } => Some(msg),
            _ => None,
        })
        .expect("join");
    seed.handle_message(5_010, join);
    let a = drain(&mut seed);
    assert!(
        events(&a).is_empty(),
        "a join at the dead incarnation changes nothing"
    );
    for action in a {
        if let Action::Send { msg, .. } = action {
            r.handle_message(5_020, msg);
        }
    }
    let ev = events(&drain(&mut r));
    assert!(ev.contains(&Event::Refuted { incarnation: 1 }), "{ev:?}");
    assert_eq!(r.incarnation(), 1);
    // Its refutation reaches the seed with its next frame; the seed sees it rejoin.
    r.handle_timer(6_000, Timer::Cycle { generation: 0 });
    for action in drain(&mut r) {
        if let Action::Send { to: SEED, msg, .. } = action {
            seed.handle_message(6_010, msg);
        }
    }
    let ev = events(&drain(&mut seed));
    assert!(
        ev.iter()
            .any(|e| matches!(e, Event::Joined(m) if m.id == NodeId::new(3) && m.incarnation == 1)),
        "{ev:?}"
    );
    assert_eq!(
        seed.member(NodeId::new(3)).map(|m| m.state),
        Some(MemberState::Alive)
    );
}

#[test]
fn graceful_leave_tells_others_who_mark_it_left() {
    let mut s = node(
        NodeId::new(1),
        &[NodeId::new(2), NodeId::new(3)],
        SwimConfig::default(),
    );
    s.leave(500);
    let a = drain(&mut s);
    let sent = sends(&a);
    assert_eq!(sent.len(), 2);
    for (_, body, ups) in &sent {
        assert_eq!(**body, Body::Gossip);
        assert_eq!(ups[0].state, MemberState::Left);
        assert_eq!(ups[0].id, NodeId::new(1));
    }
    assert!(s.has_left());
    assert!(cycle(&mut s, 1_000).is_empty(), "no probing after leaving");
    let leave = match &a[0] {
        Action::Send { msg, .. } => msg.clone(),
        other => panic!("unexpected {other:?}"),
    };
    let mut other = node(
        NodeId::new(2),
        &[NodeId::new(1), NodeId::new(3)],
        SwimConfig::default(),
    );
    other.handle_message(510, leave);
    assert!(matches!(&events(&drain(&mut other))[..], [Event::Left(m)] if m.id == NodeId::new(1)));
    assert_eq!(
        other.member(NodeId::new(1)).map(|m| m.state),
        Some(MemberState::Left)
    );
}

#[test]
fn metadata_is_published_and_merged_last_writer_wins() {
    let mut a = node(NodeId::new(1), &[NodeId::new(2)], SwimConfig::default());
    let mut entries = BTreeMap::new();
    entries.insert("load".to_owned(), "0.5".to_owned());
    a.set_metadata(10, entries.clone()).expect("valid metadata");
    assert_eq!(a.metadata().version, 1);
    a.handle_message(
        20,
        msg(
            NodeId::new(2),
            NodeId::new(1),
            Body::Ping { probe: 1 },
            vec![],
        ),
    );
    let frame = drain(&mut a)
        .into_iter()
        .find_map(|x| match x {
            Action::Send { msg, .. } => Some(msg),
            _ => None,
        })
        .expect("ack");
    let mut b = node(NodeId::new(2), &[NodeId::new(1)], SwimConfig::default());
    b.handle_message(30, frame.clone());
    let ev = events(&drain(&mut b));
    assert!(matches!(&ev[..], [Event::MetadataChanged(m)] if m.metadata.entries == entries));
    // An older version (e.g. a late, reordered frame) does not win.
    let mut old = frame.clone();
    old.updates[0].metadata.version = 0;
    old.updates[0].metadata.entries.clear();
    b.handle_message(40, old);
    assert!(events(&drain(&mut b)).is_empty());
    assert_eq!(
        b.member(NodeId::new(1)).map(|m| m.metadata.entries),
        Some(entries)
    );
}

// ----- bad input (issue 6, item 4) -----

#[test]
fn forged_you_are_dead_is_refuted_and_the_own_view_stays_alive() {
    let mut s = node(
        NodeId::new(1),
        &[NodeId::new(2), NodeId::new(3)],
        SwimConfig::default(),
    );
    s.handle_message(
        10,
        msg(
            NodeId::new(2),
            NodeId::new(1),
            Body::Gossip,
            vec![update(NodeId::new(1), 0, MemberState::Dead, NodeId::new(2))],
        ),
    );
    assert_eq!(
        events(&drain(&mut s)),
        vec![Event::Refuted { incarnation: 1 }]
    );
    let me = &s.members()[0];
    assert_eq!(
        (me.id, me.state, me.incarnation),
        (NodeId::new(1), MemberState::Alive, 1)
    );
    // A stale verdict (older incarnation) is not refuted again, but our alive rumor is
    // spread again for whoever still holds it.
    s.handle_message(
        20,
        msg(
            NodeId::new(2),
            NodeId::new(1),
            Body::Gossip,
            vec![update(NodeId::new(1), 0, MemberState::Dead, NodeId::new(2))],
        ),
    );
    assert!(events(&drain(&mut s)).is_empty());
    assert_eq!(s.incarnation(), 1);
    // A forged "left".
    s.handle_message(
        30,
        msg(
            NodeId::new(3),
            NodeId::new(1),
            Body::Gossip,
            vec![update(NodeId::new(1), 1, MemberState::Left, NodeId::new(1))],
        ),
    );
    assert_eq!(
        events(&drain(&mut s)),
        vec![Event::Refuted { incarnation: 2 }]
    );
    assert!(!s.has_left());
}

#[test]
fn rumor_about_an_incarnation_never_had_is_not_adopted_but_outbid() {
    let mut s = node(
        NodeId::new(1),
        &[NodeId::new(2), NodeId::new(3)],
        SwimConfig::default(),
    );
    // "Node 1 is suspect at incarnation 7": we never had 7. We do not adopt it; we move
    // above it so the cluster believes us over the rumor.
    s.handle_message(
        10,
        msg(
            NodeId::new(2),
            NodeId::new(1),
            Body::Gossip,
            vec![update(
                NodeId::new(1),
                7,
                MemberState::Suspect,
                NodeId::new(2),
            )],
        ),
    );
    assert_eq!(
        events(&drain(&mut s)),
        vec![Event::Refuted { incarnation: 8 }]
    );
    // "Node 1 is alive at incarnation 20 with other metadata": also never ours.
    let mut forged = update(NodeId::new(1), 20, MemberState::Alive, NodeId::new(1));
    forged
        .metadata
        .entries
        .insert("shards".into(), "all of them".into());
    forged.metadata.incarnation = 20;
    s.handle_message(
        20,
        msg(NodeId::new(2), NodeId::new(1), Body::Gossip, vec![forged]),
    );
    assert_eq!(
        events(&drain(&mut s)),
        vec![Event::Refuted { incarnation: 21 }]
    );
    assert!(s.metadata().entries.is_empty(), "own metadata untouched");
    // An incarnation beyond what any node could reach is garbage.
    s.handle_message(
        30,
        msg(
            NodeId::new(2),
            NodeId::new(1),
            Body::Gossip,
            vec![update(
                NodeId::new(1),
                MAX_INCARNATION + 1,
                MemberState::Dead,
                NodeId::new(2),
            )],
        ),
    );
    assert!(events(&drain(&mut s)).is_empty());
    assert_eq!(s.incarnation(), 21);
    assert_eq!(s.stats().rejected_updates, 1);
    // Suspect/dead rumors about members we never knew are ignored, not invented.
    s.handle_message(
        40,
        msg(
            NodeId::new(2),
            NodeId::new(1),
            Body::Gossip,
            vec![update(
                NodeId::new(99),
                3,
                MemberState::Dead,
                NodeId::new(2),
            )],
        ),
    );
    assert!(s.member(NodeId::new(99)).is_none());
}

#[test]
fn garbage_metadata_is_rejected_and_the_view_unchanged() {
    let cfg = SwimConfig::default();
    let mut s = node(
        NodeId::new(1),
        &[NodeId::new(2), NodeId::new(3)],
        cfg.clone(),
    );
    let mut too_many = update(NodeId::new(2), 1, MemberState::Alive, NodeId::new(2));
    for i in 0..=cfg.max_metadata_entries {
        too_many
            .metadata
            .entries
            .insert(format!("k{i}"), "v".into());
    }
    let mut too_big = update(NodeId::new(2), 1, MemberState::Alive, NodeId::new(2));
    too_big
        .metadata
        .entries
        .insert("blob".into(), "x".repeat(cfg.max_metadata_bytes + 1));
    let mut empty_key = update(NodeId::new(2), 1, MemberState::Alive, NodeId::new(2));
    empty_key.metadata.entries.insert(String::new(), "v".into());
    let mut future_meta = update(NodeId::new(2), 1, MemberState::Alive, NodeId::new(2));
    future_meta.metadata.incarnation = 2;
    let mut bad_addr = update(NodeId::new(2), 1, MemberState::Alive, NodeId::new(2));
    bad_addr.addr = String::new();
    let garbage = vec![too_many, too_big, empty_key, future_meta, bad_addr];
    let n = garbage.len() as u64;
    for u in garbage {
        s.handle_message(
            10,
            msg(NodeId::new(2), NodeId::new(1), Body::Gossip, vec![u]),
        );
    }
    assert!(events(&drain(&mut s)).is_empty());
    assert_eq!(s.stats().rejected_updates, n);
    assert_eq!(s.member(NodeId::new(2)), Some(member(NodeId::new(2), 0)));
    // Our own metadata API refuses the same garbage.
    let mut e = BTreeMap::new();
    e.insert(String::new(), "v".to_owned());
    assert!(s.set_metadata(20, e).is_err());
    assert_eq!(s.metadata().version, 0);
}

#[test]
fn misaddressed_or_self_sent_frames_are_dropped() {
    let mut s = node(NodeId::new(1), &[NodeId::new(2)], SwimConfig::default());
    s.handle_message(
        10,
        msg(
            NodeId::new(2),
            NodeId::new(5),
            Body::Ping { probe: 1 },
            vec![],
        ),
    );
    s.handle_message(
        10,
        msg(
            NodeId::new(1),
            NodeId::new(1),
            Body::Ping { probe: 1 },
            vec![],
        ),
    );
    s.handle_message(
        10,
        msg(
            NodeId::NONE,
            NodeId::new(1),
            Body::Ping { probe: 1 },
            vec![],
        ),
    );
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.stats().rejected_messages, 3);
}

#[test]
fn cut_off_node_drops_its_verdicts_and_re_announces_to_the_members_it_knew() {
    let mut s = node(
        NodeId::new(1),
        &[NodeId::new(2), NodeId::new(3)],
        SwimConfig::default(),
    );
    s.handle_message(
        10,
        msg(
            NodeId::new(2),
            NodeId::new(1),
            Body::Gossip,
            vec![update(NodeId::new(3), 0, MemberState::Dead, NodeId::new(2))],
        ),
    );
    drain(&mut s);
    assert_eq!(
        s.pending_rumors(),
        1,
        "the verdict about 3 waits to be spread"
    );
    s.handle_message(
        20,
        msg(
            NodeId::new(3),
            NodeId::new(1),
            Body::Gossip,
            vec![update(NodeId::new(2), 0, MemberState::Dead, NodeId::new(3))],
        ),
    );
    drain(&mut s);
    assert_eq!(
        s.count(MemberState::Alive) + s.count(MemberState::Suspect),
        0
    );
    assert_eq!(
        s.pending_rumors(),
        0,
        "verdicts nobody can receive are dropped"
    );
    s.handle_timer(1_000, Timer::Announce { generation: 0 });
    let a = drain(&mut s);
    let mut joins: Vec<(NodeId, MemberState)> = sends(&a)
        .into_iter()
        .map(|(to, body, ups)| {
            assert!(matches!(body, Body::Join { member } if member.id == NodeId::new(1)));
            // Buddy update first: the member learns we hold it dead, so it refutes.
            assert_eq!(ups[0].id, to);
            (to, ups[0].state)
        })
        .collect();
    joins.sort_unstable();
    assert_eq!(
        joins,
        vec![
            (NodeId::new(2), MemberState::Dead),
            (NodeId::new(3), MemberState::Dead)
        ]
    );
}

#[test]
fn join_answer_contradicting_a_verdict_tells_the_member_directly_without_broadcasting() {
    let mut s = node(
        NodeId::new(1),
        &[NodeId::new(2), NodeId::new(3)],
        SwimConfig::default(),
    );
    s.handle_message(
        10,
        msg(
            NodeId::new(3),
            NodeId::new(1),
            Body::Gossip,
            vec![update(NodeId::new(2), 0, MemberState::Dead, NodeId::new(3))],
        ),
    );
    drain(&mut s);
    assert_eq!(s.pending_rumors(), 1);
    let ack = Body::JoinAck {
        members: vec![
            update(NodeId::new(3), 0, MemberState::Alive, NodeId::new(3)),
            update(NodeId::new(2), 0, MemberState::Alive, NodeId::new(2)),
        ],
    };
    s.handle_message(20, msg(NodeId::new(3), NodeId::new(1), ack, vec![]));
    let a = drain(&mut s);
    let sent = sends(&a);
    assert_eq!(sent.len(), 1);
    let (to, body, ups) = sent[0];
    assert_eq!((to, body), (NodeId::new(2), &Body::Gossip));
    assert_eq!(
        ups[0],
        update(NodeId::new(2), 0, MemberState::Dead, NodeId::new(3))
    );
    assert_eq!(s.pending_rumors(), 0, "the verdict is no longer broadcast");
    assert_eq!(
        s.member(NodeId::new(2)).map(|m| m.state),
        Some(MemberState::Dead)
    );
}

#[test]
fn failed_probes_raise_local_health_which_stretches_the_period_and_timeouts() {
    let mut s = node(
        NodeId::new(1),
        &[
            NodeId::new(2),
            NodeId::new(3),
            NodeId::new(4),
            NodeId::new(5),
        ],
        SwimConfig::default(),
    );
    let a = cycle(&mut s, 1_000);
    let p2 = ping_probe(&a, NodeId::new(2));
    for target in (3..=5).map(NodeId::new) {
        let p = ping_probe(&a, target);
        s.handle_message(
            1_010,
            msg(target, NodeId::new(1), Body::Ack { probe: p }, vec![]),
        );
        s.handle_timer(2_000, Timer::ProbeEnd { probe: p });
    }
    assert_eq!(s.local_health(), 0);
    s.handle_timer(1_300, Timer::ProbeTimeout { probe: p2 });
    drain(&mut s);
    // Two of the three helpers nack: one nack is missing.
    for helper in [NodeId::new(3), NodeId::new(4)] {
        s.handle_message(
            1_700,
            msg(
                helper,
                NodeId::new(1),
                Body::Nack {
                    probe: p2,
                    target: NodeId::new(2),
                },
                vec![],
            ),
        );
    }
    s.handle_timer(2_000, Timer::ProbeEnd { probe: p2 });
    assert_eq!(s.local_health(), 2, "failed probe +1, missing nack +1");
    // Score 2: period and probe timeout are three times as long (Lifeguard §IV-A).
    let a = cycle(&mut s, 2_000);
    let t = timers(&a);
    assert_eq!(t.last(), Some(&(5_000, Timer::Cycle { generation: 0 })));
    let p3 = ping_probe(&a, NodeId::new(3));
    assert!(t.contains(&(2_900, Timer::ProbeTimeout { probe: p3 })));
    assert!(t.contains(&(5_000, Timer::ProbeEnd { probe: p3 })));
    // Successful probes bring it back down.
    s.handle_message(
        2_010,
        msg(
            NodeId::new(3),
            NodeId::new(1),
            Body::Ack { probe: p3 },
            vec![],
        ),
    );
    s.handle_timer(5_000, Timer::ProbeEnd { probe: p3 });
    assert_eq!(s.local_health(), 1);
}

#[test]
fn at_most_rumor_limit_plus_the_buddy_update_are_read_from_a_frame() {
    let mut s = node(NodeId::new(1), &[NodeId::new(2)], SwimConfig::default());
    let flood: Vec<Update> = (100..200u64)
        .map(|id| update(NodeId::new(id), 0, MemberState::Alive, NodeId::new(id)))
        .collect();
    s.handle_message(10, msg(NodeId::new(2), NodeId::new(1), Body::Gossip, flood));
    drain(&mut s);
    assert_eq!(s.count(MemberState::Alive), 1 + 5 + 1);
}

#[test]
fn starting_twice_arms_one_cycle() {
    let mut s = Swim::new(SwimConfig::default(), ident(NodeId::new(1)), 7).expect("valid");
    s.start(0);
    drain(&mut s);
    s.start(10);
    assert!(drain(&mut s).is_empty());
}

#[test]
fn preloaded_members_publish_no_event_but_a_preloaded_suspect_is_timed() {
    let mut s = Swim::new(SwimConfig::default(), ident(NodeId::new(1)), 1).expect("valid");
    let mut suspect = member(NodeId::new(3), 2);
    suspect.state = MemberState::Suspect;
    s.preload(vec![member(NodeId::new(2), 0), suspect]);
    let actions = drain(&mut s);
    assert!(events(&actions).is_empty(), "{actions:?}");
    // The suspicion of the preloaded suspect runs (unconfirmed: dead_timeout_s with Lifeguard).
    assert_eq!(
        timers(&actions),
        vec![(
            30_000,
            Timer::Suspicion {
                member: NodeId::new(3),
                incarnation: 2
            }
        )]
    );
    assert_eq!(s.count(MemberState::Alive), 1);
    assert_eq!(s.count(MemberState::Suspect), 1);
}

/// Issue 12, finding 4: "node 1 suspect at incarnation 2^62 - 1" must not poison node 1. Such
/// a rumor is refused (never adopted, never refuted into an incarnation nobody accepts), and a
/// suspicion at the highest acceptable incarnation is refuted with one every peer accepts.
#[test]
fn finding4_rumor_near_the_maximum_incarnation_cannot_poison_a_member() {
    let mut s = node(
        NodeId::new(1),
        &[NodeId::new(2), NodeId::new(3)],
        SwimConfig::default(),
    );
    let mut peer = node(
        NodeId::new(3),
        &[NodeId::new(1), NodeId::new(2)],
        SwimConfig::default(),
    );
    s.handle_message(
        10,
        msg(
            NodeId::new(2),
            NodeId::new(1),
            Body::Gossip,
            vec![update(
                NodeId::new(1),
                (1 << 62) - 1,
                MemberState::Suspect,
                NodeId::new(2),
            )],
        ),
    );
    assert!(
        events(&drain(&mut s)).is_empty(),
        "the poison rumor was acted on"
    );
    assert_eq!(s.incarnation(), 0);
    assert_eq!(s.stats().rejected_updates, 1);
    // The same about node 2, told to node 3: refused too, node 2 stays alive there.
    peer.handle_message(
        10,
        msg(
            NodeId::new(1),
            NodeId::new(3),
            Body::Gossip,
            vec![update(
                NodeId::new(2),
                (1 << 62) - 1,
                MemberState::Suspect,
                NodeId::new(1),
            )],
        ),
    );
    assert_eq!(
        peer.member(NodeId::new(2)).map(|m| m.state),
        Some(MemberState::Alive)
    );
    // The highest acceptable rumor is refuted, and the refutation is acceptable to peers.
    let top = MAX_RUMOR_INCARNATION - 1;
    s.handle_message(
        20,
        msg(
            NodeId::new(2),
            NodeId::new(1),
            Body::Gossip,
            vec![update(
                NodeId::new(1),
                top,
                MemberState::Suspect,
                NodeId::new(2),
            )],
        ),
    );
    assert_eq!(
        events(&drain(&mut s)),
        vec![Event::Refuted {
            incarnation: top + 1
        }]
    );
    assert!(s.incarnation() <= MAX_INCARNATION);
    // Node 3 first hears the suspicion, then node 1's refutation: node 1 ends alive there.
    peer.handle_message(
        30,
        msg(
            NodeId::new(2),
            NodeId::new(3),
            Body::Gossip,
            vec![update(
                NodeId::new(1),
                top,
                MemberState::Suspect,
                NodeId::new(2),
            )],
        ),
    );
    assert_eq!(
        peer.member(NodeId::new(1)).map(|m| m.state),
        Some(MemberState::Suspect)
    );
    peer.handle_message(
        40,
        msg(
            NodeId::new(1),
            NodeId::new(3),
            Body::Gossip,
            vec![update(
                NodeId::new(1),
                top + 1,
                MemberState::Alive,
                NodeId::new(1),
            )],
        ),
    );
    assert_eq!(
        peer.member(NodeId::new(1)).map(|m| m.state),
        Some(MemberState::Alive)
    );
    assert_eq!(
        peer.member(NodeId::new(1)).map(|m| m.incarnation),
        Some(top + 1)
    );
}

/// Issue 12, finding 4 (member side): a node whose own incarnation is at the maximum never
/// refutes into an incarnation above it.
#[test]
fn finding4_a_member_never_refutes_into_an_invalid_incarnation() {
    let mut s = Swim::new(SwimConfig::default(), ident(NodeId::new(1)), 1)
        .expect("valid")
        .with_incarnation(MAX_INCARNATION);
    s.preload([member(NodeId::new(2), 0)]);
    s.start(0);
    drain(&mut s);
    // A forged "alive" in our own name at our incarnation with other metadata would normally
    // be refuted one incarnation above: here that would be invalid, so it is not.
    let mut forged = update(
        NodeId::new(1),
        MAX_INCARNATION,
        MemberState::Alive,
        NodeId::new(1),
    );
    forged.metadata.incarnation = MAX_INCARNATION;
    forged.metadata.version = 9;
    forged.metadata.entries.insert("k".into(), "v".into());
    s.handle_message(
        10,
        msg(NodeId::new(2), NodeId::new(1), Body::Gossip, vec![forged]),
    );
    let actions = drain(&mut s);
    assert!(
        events(&actions).is_empty(),
        "refuted into an invalid incarnation"
    );
    assert_eq!(s.incarnation(), MAX_INCARNATION);
}

/// Issue 12, finding 6: with the configured members as the allowlist, an unsolicited `JoinAck`
/// from a stranger adds nobody, a member's rumors about strangers add nobody (so nobody ever
/// dials an address a stranger chose), and without an allowlist the table is still bounded.
#[test]
fn finding6_strangers_cannot_fill_the_member_table() {
    let fakes: Vec<Update> = (1000..1300)
        .map(|id| Update {
            addr: format!("10.66.{}.{}:7946", id / 256, id % 256),
            ..update(NodeId::new(id), 0, MemberState::Alive, NodeId::new(id))
        })
        .collect();
    let mut s = node(
        NodeId::new(1),
        &[NodeId::new(2), NodeId::new(3)],
        SwimConfig::default(),
    );
    s.set_allowed_members(Some(BTreeSet::from([
        NodeId::new(1),
        NodeId::new(2),
        NodeId::new(3),
    ])));
    // From a stranger.
    s.handle_message(
        10,
        msg(
            NodeId::new(666),
            NodeId::new(1),
            Body::JoinAck {
                members: fakes.clone(),
            },
            vec![],
        ),
    );
    // `members()` lists this node first.
    assert_eq!(s.members().len(), 3, "a stranger's JoinAck added members");
    assert_eq!(s.stats().rejected_messages, 1);
    // From a member, about strangers.
    s.handle_message(
        20,
        msg(
            NodeId::new(2),
            NodeId::new(1),
            Body::JoinAck {
                members: fakes.clone(),
            },
            vec![],
        ),
    );
    assert_eq!(
        s.members().len(),
        3,
        "rumors about non-members were adopted"
    );
    let actions = cycle(&mut s, 1000);
    assert!(
        sends(&actions)
            .iter()
            .all(|(to, _, _)| [NodeId::new(2), NodeId::new(3)].contains(to)),
        "the node contacts a non-member"
    );

    // No allowlist: the table still stops at max_members.
    let cfg = SwimConfig {
        max_members: 50,
        ..SwimConfig::default()
    };
    let mut open = node(NodeId::new(1), &[NodeId::new(2)], cfg);
    open.handle_message(
        10,
        msg(
            NodeId::new(2),
            NodeId::new(1),
            Body::JoinAck { members: fakes },
            vec![],
        ),
    );
    assert_eq!(open.members().len(), 51);
}

/// Issue 14: a member removed from the replicated membership is marked `left` by each node on
/// its own (no rumor), and once it is off the allowlist neither its own "alive" refutation nor
/// a rumor relayed by another member brings it back.
#[test]
fn a_removed_member_is_marked_left_and_its_refutations_are_refused() {
    let mut s = node(
        NodeId::new(1),
        &[NodeId::new(2), NodeId::new(3)],
        SwimConfig::default(),
    );
    s.set_allowed_members(Some(BTreeSet::from([NodeId::new(1), NodeId::new(2)])));
    s.mark_left(10, NodeId::new(3));
    let out = drain(&mut s);
    assert!(
        matches!(events(&out).as_slice(), [Event::Left(m)] if m.id == NodeId::new(3)),
        "{:?}",
        events(&out)
    );
    assert_eq!(
        s.member(NodeId::new(3)).map(|m| m.state),
        Some(MemberState::Left)
    );
    assert_eq!(s.count(MemberState::Left), 1);
    assert_eq!(s.count(MemberState::Alive), 1);
    // No rumor is spread about it: the next frame to node 2 carries nothing about node 3.
    let out = cycle(&mut s, 1000);
    for (_, _, updates) in sends(&out) {
        assert!(
            updates.iter().all(|u| u.id != NodeId::new(3)),
            "{updates:?}"
        );
    }
    // Its refutation (from itself, refused as a sender) and the same relayed by node 2.
    s.handle_message(
        1100,
        msg(
            NodeId::new(3),
            NodeId::new(1),
            Body::Gossip,
            vec![update(
                NodeId::new(3),
                5,
                MemberState::Alive,
                NodeId::new(3),
            )],
        ),
    );
    s.handle_message(
        1200,
        msg(
            NodeId::new(2),
            NodeId::new(1),
            Body::Gossip,
            vec![update(
                NodeId::new(3),
                6,
                MemberState::Alive,
                NodeId::new(3),
            )],
        ),
    );
    assert_eq!(
        s.member(NodeId::new(3)).map(|m| m.state),
        Some(MemberState::Left)
    );
    // Marking it again, or marking a stranger, changes nothing.
    s.mark_left(1300, NodeId::new(3));
    s.mark_left(1300, NodeId::new(99));
    assert!(events(&drain(&mut s)).is_empty());
    assert_eq!(s.count(MemberState::Left), 1);
}
