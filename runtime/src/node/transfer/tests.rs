//! The transfer protocol with the real file code: a sender's [`SendState`] reading a snapshot
//! store's image, a receiver's [`Receptions`] staging it, and a lossy "wire" between them that
//! the tests damage, cut, and restart either side on.

use super::*;
use conclave_core::raft::Membership;
use std::collections::BTreeSet;

const LEADER: NodeId = NodeId::new(1);
const FOLLOWER: NodeId = NodeId::new(2);
const GROUP: GroupId = GroupId::FIRST;
const CHUNK: usize = 1000;

fn membership() -> Membership {
    Membership::with_voters([NodeId::new(1), NodeId::new(2), NodeId::new(3)])
}

fn meta(index: LogIndex, term: Term) -> SnapshotMeta {
    SnapshotMeta {
        index,
        term,
        membership: membership(),
    }
}

fn view(term: Term, commit: LogIndex) -> GroupView {
    GroupView {
        term,
        leader: Some(LEADER),
        commit,
        membership: membership(),
    }
}

fn image(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A leader's snapshot store holding one image, and a follower's directory.
struct Setup {
    _tmp: tempfile::TempDir,
    leader_dir: PathBuf,
    follower_dir: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let leader_dir = tmp.path().join("leader");
        let follower_dir = tmp.path().join("follower");
        Setup {
            _tmp: tmp,
            leader_dir,
            follower_dir,
        }
    }

    fn snapshot(&self, m: SnapshotMeta, body: &[u8]) -> StoredSnapshot {
        let store = SnapshotStore::open(&self.leader_dir).unwrap();
        let mut w = store.create(m).unwrap();
        w.write_all(body).unwrap();
        w.finish(&store).unwrap()
    }

    fn receptions(&self) -> Receptions {
        Receptions::open(FOLLOWER, GROUP, &self.follower_dir).unwrap()
    }

    /// Names of the follower directory's files, for "nothing changed" checks.
    fn follower_files(&self) -> BTreeSet<(String, u64)> {
        match std::fs::read_dir(&self.follower_dir) {
            Ok(rd) => rd
                .map(|e| {
                    let e = e.unwrap();
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        e.metadata().unwrap().len(),
                    )
                })
                .collect(),
            Err(_) => BTreeSet::new(),
        }
    }
}

/// What happened during a run of the transfer.
#[derive(Default, Debug)]
struct Run {
    /// Data bytes put on the wire.
    data_bytes: u64,
    /// Chunks the receiver refused, by reason.
    refusals: Vec<ChunkRefusal>,
    /// The staged snapshot, once complete.
    staged: Option<SnapshotMeta>,
    /// How the sender's loop ended.
    end: Option<SendStep>,
}

/// Drives a transfer until it ends or `max_msgs` chunks were sent. `wire` may change a chunk
/// or drop it (`None`): a dropped chunk stands for a broken connection, after which the
/// sender times out and probes again.
fn drive(
    state: &mut SendState,
    image: &Path,
    rx: &mut Receptions,
    v: &GroupView,
    max_msgs: usize,
    mut wire: impl FnMut(usize, SnapshotChunk) -> Option<SnapshotChunk>,
) -> Run {
    let mut run = Run::default();
    let mut file = File::open(image).unwrap();
    // Every transfer starts by asking where the receiver stands.
    let mut next = Some(state.probe());
    for n in 0..max_msgs {
        let chunk = next.take().unwrap_or_else(|| state.probe());
        run.data_bytes += chunk.data.len() as u64;
        let Some(chunk) = wire(n, chunk) else {
            // Lost with its connection: the sender's ack timer fires and it probes.
            next = Some(state.probe());
            continue;
        };
        let outcome = rx.on_chunk(LEADER, v, &chunk, Instant::now());
        if let ChunkOutcome::Staged { meta, .. } = &outcome {
            run.staged = Some(meta.clone());
        }
        let ack = outcome.ack().clone();
        if let AckStatus::Refused(r) = &ack.status {
            run.refusals.push(r.clone());
        }
        match state.on_ack(&ack) {
            SendStep::Continue => next = Some(state.read_chunk(&mut file).unwrap()),
            end => {
                run.end = Some(end);
                return run;
            }
        }
    }
    run
}

fn adopt_and_read(s: &Setup, rx: &mut Receptions, m: &SnapshotMeta) -> Vec<u8> {
    let store = SnapshotStore::open(&s.follower_dir.join("store")).unwrap();
    // The store lives in its own directory in these tests; the node keeps both in the group's
    // snapshot directory so the rename stays on one file system.
    let stored = match rx.adopt(m, &store) {
        Ok(st) => st,
        Err(e) => panic!("adopt: {e}"),
    };
    let mut out = Vec::new();
    store
        .reader(&stored)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn a_whole_transfer_stages_an_identical_image_and_adopts_it() {
    let s = Setup::new();
    let body = image(10_500, 1);
    let snap = s.snapshot(meta(50, 2), &body);
    let mut st = SendState::new(GROUP, LEADER, FOLLOWER, 3, &snap, CHUNK);
    let mut rx = s.receptions();
    let run = drive(&mut st, &snap.path, &mut rx, &view(3, 10), 100, |_, c| {
        Some(c)
    });
    assert_eq!(run.end, Some(SendStep::Done));
    assert_eq!(run.staged, Some(meta(50, 2)));
    assert!(run.refusals.is_empty(), "{:?}", run.refusals);
    assert_eq!(run.data_bytes, body.len() as u64);
    assert_eq!(adopt_and_read(&s, &mut rx, &meta(50, 2)), body);
    assert!(rx.list().is_empty(), "the reception is gone once adopted");
}

#[test]
fn a_corrupt_chunk_is_refused_and_sent_again() {
    let s = Setup::new();
    let body = image(8_000, 2);
    let snap = s.snapshot(meta(40, 2), &body);
    let mut st = SendState::new(GROUP, LEADER, FOLLOWER, 3, &snap, CHUNK);
    let mut rx = s.receptions();
    // The fourth data chunk has a byte flipped in flight.
    let run = drive(
        &mut st,
        &snap.path,
        &mut rx,
        &view(3, 10),
        100,
        |n, mut c| {
            if n == 4 {
                c.data[17] ^= 0x40;
            }
            Some(c)
        },
    );
    assert_eq!(run.refusals, vec![ChunkRefusal::BadChecksum]);
    assert_eq!(run.end, Some(SendStep::Done));
    // Exactly the damaged chunk was sent twice.
    assert_eq!(run.data_bytes, body.len() as u64 + CHUNK as u64);
    assert_eq!(adopt_and_read(&s, &mut rx, &meta(40, 2)), body);
}

#[test]
fn a_connection_broken_midway_resumes_from_the_acknowledged_offset() {
    let s = Setup::new();
    let body = image(20_000, 3);
    let snap = s.snapshot(meta(60, 2), &body);
    let mut st = SendState::new(GROUP, LEADER, FOLLOWER, 3, &snap, CHUNK);
    let mut rx = s.receptions();
    // Messages 8 and 9 are lost with the connection (a chunk and the probe after it).
    let run = drive(&mut st, &snap.path, &mut rx, &view(3, 10), 100, |n, c| {
        (!(8..=9).contains(&n)).then_some(c)
    });
    assert_eq!(run.end, Some(SendStep::Done));
    // One chunk was lost and sent again; nothing before it was.
    assert_eq!(run.data_bytes, body.len() as u64 + CHUNK as u64);
    assert_eq!(adopt_and_read(&s, &mut rx, &meta(60, 2)), body);
}

#[test]
fn a_restarted_sender_and_a_restarted_receiver_resume_instead_of_starting_over() {
    let s = Setup::new();
    let body = image(30_000, 4);
    let snap = s.snapshot(meta(70, 2), &body);
    let mut rx = s.receptions();
    // The first sender gets 12 chunks through, then dies.
    let mut first = SendState::new(GROUP, LEADER, FOLLOWER, 3, &snap, CHUNK);
    let run = drive(&mut first, &snap.path, &mut rx, &view(3, 10), 13, |_, c| {
        Some(c)
    });
    assert_eq!(run.end, None);
    assert_eq!(rx.list(), vec![(70, 2, 12 * CHUNK as u64)]);
    // The receiver restarts too: it finds its partial file and verified length again.
    drop(rx);
    let mut rx = s.receptions();
    assert_eq!(rx.list(), vec![(70, 2, 12 * CHUNK as u64)]);
    // A new sender (a restarted leader) probes and continues from there.
    let mut second = SendState::new(GROUP, LEADER, FOLLOWER, 3, &snap, CHUNK);
    let run = drive(
        &mut second,
        &snap.path,
        &mut rx,
        &view(3, 10),
        100,
        |_, c| Some(c),
    );
    assert_eq!(run.end, Some(SendStep::Done));
    assert_eq!(run.data_bytes, body.len() as u64 - 12 * CHUNK as u64);
    assert_eq!(rx.resumed(), 1, "one resumption, counted once");
    assert_eq!(adopt_and_read(&s, &mut rx, &meta(70, 2)), body);
}

#[test]
fn a_restarted_receiver_continues_a_sender_that_never_noticed() {
    let s = Setup::new();
    let body = image(9_000, 13);
    let snap = s.snapshot(meta(75, 2), &body);
    let v = view(3, 10);
    let mut rx = s.receptions();
    let mut st = SendState::new(GROUP, LEADER, FOLLOWER, 3, &snap, CHUNK);
    let mut file = File::open(&snap.path).unwrap();
    let mut next = st.probe();
    let mut sent = 0;
    loop {
        if sent == 5 {
            // The receiver restarts between two chunks; the sender goes on as if nothing
            // happened (its connection came back before its ack timer fired).
            drop(rx);
            rx = s.receptions();
            assert_eq!(rx.resumed(), 0);
        }
        sent += 1;
        let out = rx.on_chunk(LEADER, &v, &next, Instant::now());
        match st.on_ack(out.ack()) {
            SendStep::Continue => next = st.read_chunk(&mut file).unwrap(),
            SendStep::Done => break,
            other => panic!("{other:?}"),
        }
    }
    // Probe + 9 chunks, each sent once: the reception continued from its partial file.
    assert_eq!(sent, 10);
    assert_eq!(rx.resumed(), 1);
    assert_eq!(adopt_and_read(&s, &mut rx, &meta(75, 2)), body);
}

/// A received image is written back step by step while it arrives (not all at once by the
/// final fsync), also across a receiver restart, and the staged image is the sender's.
#[test]
fn a_reception_writes_its_partial_file_back_step_by_step() {
    let s = Setup::new();
    let body = image(9_500, 17);
    let snap = s.snapshot(meta(80, 2), &body);
    let v = view(3, 10);
    let open = || Receptions::open_with_step(FOLLOWER, GROUP, &s.follower_dir, 2_000).unwrap();
    let mut rx = open();
    let mut st = SendState::new(GROUP, LEADER, FOLLOWER, 3, &snap, CHUNK);
    let mut file = File::open(&snap.path).unwrap();
    let mut next = st.probe();
    let mut sent = 0;
    let mut written_back = Vec::new();
    loop {
        if sent == 6 {
            // 5,000 bytes received, 2,000 of them written back and waited for (the second
            // step's range is under way). The receiver restarts: it resumes after its prefix.
            drop(rx);
            rx = open();
        }
        sent += 1;
        let out = rx.on_chunk(LEADER, &v, &next, Instant::now());
        if let Some(r) = rx.open.get(&(80, 2)) {
            written_back.push(r.writeback.done_to());
        }
        match st.on_ack(out.ack()) {
            SendStep::Continue => next = st.read_chunk(&mut file).unwrap(),
            SendStep::Done => break,
            other => panic!("{other:?}"),
        }
    }
    // Probe + 10 chunks of 1,000 bytes: after each, the bytes written back and waited for
    // (the range started by the step before). The restart resumed at 5,000.
    assert_eq!(
        written_back,
        vec![0, 0, 0, 0, 2_000, 2_000, 5_000, 5_000, 5_000, 7_000, 7_000]
    );
    assert_eq!(rx.resumed(), 1);
    assert_eq!(adopt_and_read(&s, &mut rx, &meta(80, 2)), body);
}

#[test]
fn a_partial_file_damaged_on_disk_fails_the_digest_and_the_transfer_starts_over() {
    let s = Setup::new();
    let body = image(6_000, 5);
    let snap = s.snapshot(meta(30, 2), &body);
    let mut rx = s.receptions();
    let mut first = SendState::new(GROUP, LEADER, FOLLOWER, 3, &snap, CHUNK);
    drive(&mut first, &snap.path, &mut rx, &view(3, 10), 4, |_, c| {
        Some(c)
    });
    drop(rx);
    // A power loss left garbage in the verified prefix.
    let partial = s.follower_dir.join("recv-30-2.partial");
    let mut bytes = std::fs::read(&partial).unwrap();
    bytes[5] ^= 1;
    std::fs::write(&partial, bytes).unwrap();
    let mut rx = s.receptions();
    let mut second = SendState::new(GROUP, LEADER, FOLLOWER, 3, &snap, CHUNK);
    let run = drive(
        &mut second,
        &snap.path,
        &mut rx,
        &view(3, 10),
        100,
        |_, c| Some(c),
    );
    assert_eq!(run.refusals, vec![ChunkRefusal::DigestMismatch]);
    assert_eq!(run.end, Some(SendStep::Done));
    assert_eq!(adopt_and_read(&s, &mut rx, &meta(30, 2)), body);
}

#[test]
fn a_stale_snapshot_after_a_newer_one_is_ignored() {
    let s = Setup::new();
    let old = s.snapshot(meta(40, 2), &image(3_000, 6));
    let new_body = image(3_000, 7);
    let new = s.snapshot(meta(80, 3), &new_body);
    let mut rx = s.receptions();
    let mut st = SendState::new(GROUP, LEADER, FOLLOWER, 3, &new, CHUNK);
    let run = drive(&mut st, &new.path, &mut rx, &view(3, 10), 100, |_, c| {
        Some(c)
    });
    assert_eq!(run.end, Some(SendStep::Done));
    adopt_and_read(&s, &mut rx, &meta(80, 3));
    // The install moved the commit index to 80; the older snapshot now arrives.
    let before = s.follower_files();
    let mut st = SendState::new(GROUP, LEADER, FOLLOWER, 3, &old, CHUNK);
    let run = drive(&mut st, &old.path, &mut rx, &view(3, 80), 100, |_, c| {
        Some(c)
    });
    assert_eq!(run.refusals, vec![ChunkRefusal::Stale(80)]);
    assert_eq!(run.end, Some(SendStep::Failed(ChunkRefusal::Stale(80))));
    assert_eq!(run.staged, None);
    assert_eq!(s.follower_files(), before, "nothing changed");
    assert!(rx.list().is_empty());
}

#[test]
fn a_reception_overtaken_by_the_commit_index_is_dropped() {
    let s = Setup::new();
    let snap = s.snapshot(meta(40, 2), &image(5_000, 8));
    let mut rx = s.receptions();
    let mut st = SendState::new(GROUP, LEADER, FOLLOWER, 3, &snap, CHUNK);
    drive(&mut st, &snap.path, &mut rx, &view(3, 10), 3, |_, c| {
        Some(c)
    });
    assert_eq!(rx.list().len(), 1);
    let newer = s.snapshot(meta(90, 3), &image(2_000, 9));
    let mut st = SendState::new(GROUP, LEADER, FOLLOWER, 3, &newer, CHUNK);
    // Appends moved the commit index past 40 meanwhile.
    let run = drive(&mut st, &newer.path, &mut rx, &view(3, 50), 100, |_, c| {
        Some(c)
    });
    assert_eq!(run.end, Some(SendStep::Done));
    assert_eq!(rx.list(), vec![(90, 3, 2_000)]);
    assert!(!s.follower_dir.join("recv-40-2.partial").exists());
}

/// A chunk with every field right, for the hostile-input test to spoil one at a time.
fn good_chunk() -> SnapshotChunk {
    let data = image(100, 10);
    SnapshotChunk {
        group: GROUP,
        from: LEADER,
        term: 3,
        meta: meta(50, 2),
        total: 1_000,
        digest: 7,
        offset: 0,
        checksum: checksum(&data),
        data,
    }
}

#[test]
fn hostile_chunks_are_refused_with_a_typed_reason_and_change_nothing() {
    let s = Setup::new();
    let mut rx = s.receptions();
    let v = view(3, 10);
    let mut cases: Vec<(&str, NodeId, SnapshotChunk, ChunkRefusal)> = Vec::new();
    let mut c = good_chunk();
    c.data = vec![0; MAX_CHUNK_BYTES + 1];
    c.checksum = checksum(&c.data);
    c.total = MAX_SNAPSHOT_BYTES;
    cases.push((
        "chunk above the cap",
        LEADER,
        c,
        ChunkRefusal::ChunkTooLarge(MAX_CHUNK_BYTES as u64 + 1),
    ));
    let mut c = good_chunk();
    c.offset = 950;
    cases.push((
        "chunk past the total",
        LEADER,
        c,
        ChunkRefusal::PastTotal {
            offset: 950,
            len: 100,
            total: 1_000,
        },
    ));
    let mut c = good_chunk();
    c.offset = u64::MAX;
    cases.push((
        "offset past the total",
        LEADER,
        c,
        ChunkRefusal::PastTotal {
            offset: u64::MAX,
            len: 100,
            total: 1_000,
        },
    ));
    let mut c = good_chunk();
    c.total = u64::MAX;
    cases.push((
        "absurd total",
        LEADER,
        c,
        ChunkRefusal::TotalTooLarge(u64::MAX),
    ));
    let mut c = good_chunk();
    c.from = NodeId::new(9);
    cases.push(("non-member", NodeId::new(9), c, ChunkRefusal::NotMember));
    cases.push((
        "claims another sender than the authenticated one",
        NodeId::new(3),
        good_chunk(),
        ChunkRefusal::Malformed,
    ));
    let mut c = good_chunk();
    c.from = NodeId::new(3);
    cases.push((
        "a member that does not lead",
        NodeId::new(3),
        c,
        ChunkRefusal::NotLeader,
    ));
    let mut c = good_chunk();
    c.term = 2;
    cases.push(("stale leader term", LEADER, c, ChunkRefusal::StaleTerm(3)));
    let mut c = good_chunk();
    c.meta.index = 10;
    cases.push(("stale snapshot", LEADER, c, ChunkRefusal::Stale(10)));
    let mut c = good_chunk();
    c.meta.term = 4;
    cases.push((
        "snapshot term above the leader's",
        LEADER,
        c,
        ChunkRefusal::Malformed,
    ));
    let mut c = good_chunk();
    c.checksum ^= 1;
    cases.push(("bad checksum", LEADER, c, ChunkRefusal::BadChecksum));
    for (what, from, chunk, expected) in cases {
        let before = s.follower_files();
        let out = rx.on_chunk(from, &v, &chunk, Instant::now());
        assert_eq!(
            out.ack().status,
            AckStatus::Refused(expected),
            "{what}: wrong answer"
        );
        assert!(matches!(out, ChunkOutcome::Ack(_)), "{what}");
        assert_eq!(s.follower_files(), before, "{what}: something changed");
        assert!(rx.list().is_empty(), "{what}");
    }
}

/// Issue 14: a node whose log ends before the membership change that added its leader stages
/// that leader's snapshot once its core follows it in the current term, and only then.
#[test]
fn the_followed_leader_of_the_current_term_may_stage_a_snapshot_without_being_a_member() {
    let s = Setup::new();
    let mut rx = s.receptions();
    let mut chunk = good_chunk();
    chunk.from = NodeId::new(9);
    // Not followed (another leader, or none known in this term, or a newer term): refused.
    for (leader, term) in [(Some(LEADER), 3), (None, 3), (Some(NodeId::new(9)), 2)] {
        let v = GroupView {
            leader,
            ..view(term, 10)
        };
        let out = rx.on_chunk(NodeId::new(9), &v, &chunk, Instant::now());
        assert!(
            matches!(
                out.ack().status,
                AckStatus::Refused(ChunkRefusal::NotMember)
            ),
            "leader {leader:?} term {term}: {:?}",
            out.ack().status
        );
    }
    assert!(rx.list().is_empty());
    // The core follows 9 in term 3: its chunk is staged.
    let v = GroupView {
        leader: Some(NodeId::new(9)),
        ..view(3, 10)
    };
    let out = rx.on_chunk(NodeId::new(9), &v, &chunk, Instant::now());
    assert_eq!(out.ack().status, AckStatus::Accepted, "{:?}", out.ack());
    assert_eq!(rx.list().len(), 1);
}

#[test]
fn too_many_concurrent_receptions_are_refused_until_one_goes_idle() {
    let s = Setup::new();
    let mut rx = s.receptions();
    let v = view(3, 10);
    let start = Instant::now();
    for i in 0..MAX_RECEPTIONS as u64 {
        let mut c = good_chunk();
        c.meta.index = 20 + i;
        let out = rx.on_chunk(LEADER, &v, &c, start);
        assert_eq!(out.ack().status, AckStatus::Accepted);
    }
    let mut c = good_chunk();
    c.meta.index = 99;
    let before = s.follower_files();
    let out = rx.on_chunk(LEADER, &v, &c, start + Duration::from_secs(1));
    assert_eq!(
        out.ack().status,
        AckStatus::Refused(ChunkRefusal::TooManyReceptions)
    );
    assert_eq!(s.follower_files(), before);
    // Once the others have been idle long enough, they make room.
    let out = rx.on_chunk(LEADER, &v, &c, start + IDLE_RECEPTION);
    assert_eq!(out.ack().status, AckStatus::Accepted);
    assert_eq!(rx.list(), vec![(99, 2, 100)]);
}

#[test]
fn a_probe_of_a_complete_reception_answers_complete_again() {
    let s = Setup::new();
    let body = image(2_500, 11);
    let snap = s.snapshot(meta(45, 2), &body);
    let mut rx = s.receptions();
    let mut st = SendState::new(GROUP, LEADER, FOLLOWER, 3, &snap, CHUNK);
    let run = drive(&mut st, &snap.path, &mut rx, &view(3, 10), 100, |_, c| {
        Some(c)
    });
    assert_eq!(run.end, Some(SendStep::Done));
    // The `Complete` ack was lost: the sender asks again.
    let mut again = SendState::new(GROUP, LEADER, FOLLOWER, 3, &snap, CHUNK);
    let out = rx.on_chunk(LEADER, &view(3, 10), &again.probe(), Instant::now());
    assert!(matches!(out, ChunkOutcome::Staged { .. }));
    assert_eq!(again.on_ack(out.ack()), SendStep::Done);
}

#[test]
fn acks_for_another_transfer_are_ignored_and_lying_offsets_are_clamped() {
    let s = Setup::new();
    let snap = s.snapshot(meta(45, 2), &image(2_500, 12));
    let mut st = SendState::new(GROUP, LEADER, FOLLOWER, 3, &snap, CHUNK);
    let ack = SnapshotAck {
        group: GROUP,
        from: FOLLOWER,
        term: 3,
        index: 45,
        snapshot_term: 2,
        next_offset: u64::MAX,
        status: AckStatus::Accepted,
    };
    let mut other = ack.clone();
    other.from = NodeId::new(3);
    assert_eq!(st.on_ack(&other), SendStep::Ignored);
    let mut other = ack.clone();
    other.index = 44;
    assert_eq!(st.on_ack(&other), SendStep::Ignored);
    assert_eq!(st.on_ack(&ack), SendStep::Continue);
    assert_eq!(st.next_offset(), 2_500);
}

#[test]
fn wire_messages_round_trip_through_messagepack() {
    let c = good_chunk();
    let bytes = rmp_serde::to_vec(&c).unwrap();
    // The data travels as one binary blob, not as an array of integers.
    assert!(bytes.len() < c.data.len() + 200, "{} bytes", bytes.len());
    assert_eq!(rmp_serde::from_slice::<SnapshotChunk>(&bytes).unwrap(), c);
    let a = SnapshotAck {
        group: GroupId::FIRST,
        from: NodeId::new(2),
        term: 3,
        index: 4,
        snapshot_term: 2,
        next_offset: 9,
        status: AckStatus::Refused(ChunkRefusal::PastTotal {
            offset: 1,
            len: 2,
            total: 3,
        }),
    };
    let bytes = rmp_serde::to_vec(&a).unwrap();
    assert_eq!(rmp_serde::from_slice::<SnapshotAck>(&bytes).unwrap(), a);
}
