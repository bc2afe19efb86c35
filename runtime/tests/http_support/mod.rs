//! A test double of the node's `KvService`: an in-memory map whose behaviour a test can switch
//! (act as leader, answer NotLeader with a hint, fail with a given error), and helpers to run
//! it behind a real loopback HTTP server.

#![allow(dead_code)] // Each test binary uses a different subset.

use conclave::config::ReadLevel;
use conclave::http::{server_with, HttpOptions};
use conclave::node::{
    ChangeOutcome, ClusterConfig, ClusterStatus, ConfigChange, ConfigMember, GossipMember,
    GossipMembers, GroupStatus, InvalidChange, KvService, LeaderHint, MemberStatus, NodeId,
    Readiness, RequestError, RttStats, SnapshotInfo, WriteResult,
};
use conclave::state_machine::{KvCommand, KvOutput};
use conclave::storage::health::StorageCondition;
use conclave_core::ids::GroupId;
use conclave_core::ids::ShardId;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the double does with requests.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Serve from the map.
    Leader,
    /// Refuse writes and non-stale reads with this error.
    Fail(RequestError),
}

#[derive(Debug)]
pub struct State {
    pub mode: Mode,
    pub map: BTreeMap<Vec<u8>, Vec<u8>>,
    pub index: u64,
    /// Idempotency key -> the result first returned for it.
    pub applied_keys: HashMap<String, WriteResult<KvOutput>>,
    /// Every idempotency key seen, in order.
    pub seen_keys: Vec<Option<String>>,
    /// Every consistency level a read was made at.
    pub reads: Vec<ReadLevel>,
    pub ready: bool,
    /// The storage condition reported to `/healthz`, `/readyz` and `/v1/cluster`.
    pub storage: StorageCondition,
    /// The double's membership: voters, learners, config id (bumped by every change).
    pub config: ClusterConfig,
    /// Every membership change that reached the service, with its `expected_config_id`.
    pub changes: Vec<(ConfigChange, Option<u64>)>,
    /// When set, the next membership changes fail with this error (after being recorded).
    pub change_error: Option<RequestError>,
}

fn config_member(id: NodeId, learner: bool) -> ConfigMember {
    ConfigMember {
        id,
        addr: Some(SocketAddr::from(([127, 0, 0, 1], 7000 + id.get() as u16))),
        http: Some(SocketAddr::from(([127, 0, 0, 1], 7100 + id.get() as u16))),
        match_index: Some(0),
        lag: Some(0),
        caught_up: learner.then_some(true),
        drained: false,
    }
}

#[derive(Clone)]
pub struct Double {
    pub id: NodeId,
    pub max_value: usize,
    pub state: Arc<Mutex<State>>,
}

impl Double {
    pub fn new(id: NodeId) -> Self {
        Double {
            id,
            max_value: 1024,
            state: Arc::new(Mutex::new(State {
                mode: Mode::Leader,
                map: BTreeMap::new(),
                index: 0,
                applied_keys: HashMap::new(),
                seen_keys: Vec::new(),
                reads: Vec::new(),
                ready: true,
                storage: StorageCondition::Healthy,
                config: ClusterConfig {
                    config_id: 0,
                    voters: (1..=3)
                        .map(NodeId::new)
                        .map(|id| config_member(id, false))
                        .collect(),
                    learners: Vec::new(),
                    outgoing_voters: Vec::new(),
                    change_pending: false,
                    leader_id: Some(id),
                    term: 1,
                    commit_index: 0,
                    last_index: 0,
                    promote_max_lag: 1000,
                },
                changes: Vec::new(),
                change_error: None,
            })),
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    pub fn follower_of(&self, id: NodeId, http: SocketAddr) {
        self.set_mode(Mode::Fail(RequestError::NotLeader {
            leader: Some(LeaderHint { id, http }),
        }));
    }

    pub fn value(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.state.lock().unwrap().map.get(key).cloned()
    }

    pub fn index(&self) -> u64 {
        self.state.lock().unwrap().index
    }
}

impl KvService for Double {
    fn node_id(&self) -> NodeId {
        self.id
    }

    fn max_value_bytes(&self) -> usize {
        self.max_value
    }

    async fn write(
        &self,
        command: KvCommand,
        idempotency_key: Option<String>,
    ) -> Result<WriteResult<KvOutput>, RequestError> {
        let mut s = self.state.lock().unwrap();
        s.seen_keys.push(idempotency_key.clone());
        if let Mode::Fail(e) = &s.mode {
            return Err(e.clone());
        }
        if let Some(k) = &idempotency_key {
            if let Some(done) = s.applied_keys.get(k) {
                return Ok(done.clone());
            }
        }
        s.index += 1;
        let output = match command {
            KvCommand::Put { key, value } => {
                s.map.insert(key, value);
                KvOutput::Put
            }
            KvCommand::Delete { key } => KvOutput::Delete {
                existed: s.map.remove(&key).is_some(),
            },
            KvCommand::Cas { key, expected, new } => {
                let current = s.map.get(&key).cloned();
                let ok = current.as_deref() == expected.as_deref().map(|e| e.as_slice());
                if ok {
                    match new {
                        Some(v) => {
                            s.map.insert(key, v.into_vec());
                        }
                        None => {
                            s.map.remove(&key);
                        }
                    }
                }
                KvOutput::Cas {
                    ok,
                    current: current.map(serde_bytes::ByteBuf::from),
                }
            }
            // The HTTP API never sends the node's metadata command.
            KvCommand::SetMetadata { .. } => KvOutput::Cas {
                ok: false,
                current: None,
            },
        };
        let result = WriteResult {
            index: s.index,
            term: 1,
            output,
        };
        if let Some(k) = idempotency_key {
            s.applied_keys.insert(k, result.clone());
        }
        Ok(result)
    }

    async fn read(
        &self,
        key: Vec<u8>,
        consistency: ReadLevel,
    ) -> Result<Option<Vec<u8>>, RequestError> {
        let mut s = self.state.lock().unwrap();
        s.reads.push(consistency);
        if consistency != ReadLevel::Stale {
            if let Mode::Fail(e) = &s.mode {
                return Err(e.clone());
            }
        }
        Ok(s.map.get(&key).cloned())
    }

    fn storage(&self) -> StorageCondition {
        self.state.lock().unwrap().storage.clone()
    }

    fn default_consistency(&self) -> ReadLevel {
        ReadLevel::Linearizable
    }

    async fn status(&self) -> ClusterStatus {
        let s = self.state.lock().unwrap();
        let leader = match &s.mode {
            Mode::Leader => Some(self.id),
            Mode::Fail(RequestError::NotLeader { leader: Some(h) }) => Some(h.id),
            Mode::Fail(_) => None,
        };
        let role = if leader == Some(self.id) {
            "leader"
        } else {
            "follower"
        };
        ClusterStatus {
            node_id: self.id,
            role: role.into(),
            term: 1,
            leader_id: leader,
            commit_index: s.index,
            applied_index: s.index,
            members: vec![MemberStatus {
                id: self.id,
                addr: "127.0.0.1:1".parse().unwrap(),
                http: "127.0.0.1:2".parse().unwrap(),
                state: "alive".into(),
                drained: false,
            }],
            groups: vec![GroupStatus {
                id: GroupId::FIRST,
                role: role.into(),
                leader_id: leader,
                term: 1,
                commit_index: s.index,
                applied_index: s.index,
                snapshot_index: 0,
                voters: vec![self.id],
                learners: vec![],
                replicas: vec![],
                membership: Default::default(),
            }],
            storage: s.storage.clone(),
            membership: Default::default(),
        }
    }

    async fn members(&self) -> GossipMembers {
        // Itself and one suspect peer with metadata and a round-trip history.
        let mut metadata = BTreeMap::new();
        metadata.insert("shards".to_owned(), "0,1".to_owned());
        GossipMembers {
            node_id: self.id,
            incarnation: 2,
            local_health: 0,
            joined: true,
            counts: [("alive", 1), ("suspect", 1), ("dead", 0), ("left", 0)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            stats: Default::default(),
            members: vec![
                GossipMember {
                    id: self.id,
                    state: "alive".into(),
                    incarnation: 2,
                    addr: "127.0.0.1:1".into(),
                    http: "127.0.0.1:2".into(),
                    metadata: BTreeMap::new(),
                    metadata_version: 0,
                    rtt: None,
                },
                GossipMember {
                    id: NodeId::new(self.id.get() + 1),
                    state: "suspect".into(),
                    incarnation: 5,
                    addr: "127.0.0.1:3".into(),
                    http: "127.0.0.1:4".into(),
                    metadata,
                    metadata_version: 3,
                    rtt: Some(RttStats {
                        samples_ms: vec![1, 3],
                        last_ms: 3,
                        min_ms: 1,
                        avg_ms: 2.0,
                        max_ms: 3,
                    }),
                },
            ],
        }
    }

    async fn readiness(&self) -> Readiness {
        let s = self.state.lock().unwrap();
        let mut reasons = Vec::new();
        if !s.ready {
            reasons.push("no leader known for group 0".to_owned());
        }
        if s.storage != StorageCondition::Healthy {
            reasons.push(format!("storage: {:?}", s.storage));
        }
        Readiness {
            ready: reasons.is_empty(),
            reasons,
            storage: s.storage.clone(),
            code: None,
        }
    }

    fn leader_hint(&self) -> Option<LeaderHint> {
        match &self.state.lock().unwrap().mode {
            Mode::Fail(RequestError::NotLeader { leader }) => leader.clone(),
            _ => None,
        }
    }

    fn route(&self, key: &[u8]) -> conclave::api::KeyRoute {
        conclave::api::KeyRoute {
            shard: ShardId::new(key.len() as u64 % 64),
            group: GroupId::FIRST,
            replicas: vec![self.id, NodeId::new(2), NodeId::new(3)],
            leader: Some(self.id),
            map_version: 0,
        }
    }

    async fn transfer_leader(&self, _to: NodeId) -> Result<(), RequestError> {
        match &self.state.lock().unwrap().mode {
            Mode::Fail(e) => Err(e.clone()),
            Mode::Leader => Ok(()),
        }
    }

    /// A small model of the membership rules, enough to show the HTTP layer's mapping; the
    /// real checks are the node's (runtime/src/node/group/membership.rs).
    async fn change_config(
        &self,
        change: ConfigChange,
        expected_config_id: Option<u64>,
    ) -> Result<ChangeOutcome, RequestError> {
        let mut s = self.state.lock().unwrap();
        s.changes.push((change.clone(), expected_config_id));
        if let Mode::Fail(e) = &s.mode {
            return Err(e.clone());
        }
        if let Some(e) = s.change_error.clone() {
            return Err(e);
        }
        let current = s.config.config_id;
        if let Some(expected) = expected_config_id {
            if expected != current {
                return Err(RequestError::ConfigChanged { expected, current });
            }
        }
        let c = &mut s.config;
        let is_voter = |c: &ClusterConfig, id| c.voters.iter().any(|m| m.id == id);
        let is_learner = |c: &ClusterConfig, id| c.learners.iter().any(|m| m.id == id);
        match change {
            ConfigChange::AddLearner(m) => {
                if is_voter(c, m.id) || is_learner(c, m.id) {
                    return Err(InvalidChange::AlreadyMember(m.id).into());
                }
                let mut learner = config_member(m.id, true);
                learner.addr = Some(m.addr);
                learner.http = Some(m.http);
                c.learners.push(learner);
            }
            ConfigChange::Promote(id) => {
                let Some(at) = c.learners.iter().position(|m| m.id == id) else {
                    return Err(InvalidChange::NotALearner(id).into());
                };
                let mut m = c.learners.remove(at);
                m.caught_up = None;
                c.voters.push(m);
            }
            ConfigChange::Remove(id) => {
                if is_voter(c, id) && c.voters.len() == 1 {
                    return Err(InvalidChange::NoVoters.into());
                }
                let before = c.voters.len() + c.learners.len();
                c.voters.retain(|m| m.id != id);
                c.learners.retain(|m| m.id != id);
                if c.voters.len() + c.learners.len() == before {
                    return Err(InvalidChange::NotAMember(id).into());
                }
            }
            ConfigChange::Replace { remove, add } => {
                if !is_voter(c, remove) {
                    return Err(InvalidChange::NotAVoter(remove).into());
                }
                c.voters.retain(|m| m.id != remove);
                let mut m = config_member(add.id, false);
                m.addr = Some(add.addr);
                m.http = Some(add.http);
                c.voters.push(m);
            }
        }
        c.config_id += 1;
        c.commit_index = c.config_id;
        c.last_index = c.config_id;
        Ok(ChangeOutcome {
            index: c.config_id,
            term: 1,
            config: c.clone(),
        })
    }

    async fn cluster_config(&self) -> Result<ClusterConfig, RequestError> {
        let s = self.state.lock().unwrap();
        if let Mode::Fail(e) = &s.mode {
            return Err(e.clone());
        }
        Ok(s.config.clone())
    }

    fn is_member(&self, id: NodeId) -> bool {
        (1..=3).contains(&id.get()) || id == self.id
    }

    /// The double's "snapshot": its write index and the bytes of its map.
    async fn take_snapshot(&self, group: GroupId) -> Result<SnapshotInfo, RequestError> {
        let s = self.state.lock().unwrap();
        match &s.mode {
            Mode::Fail(e) => Err(e.clone()),
            Mode::Leader => Ok(SnapshotInfo {
                group,
                index: s.index,
                term: 1,
                bytes: s.map.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum(),
                taken: true,
                duration_ms: 0,
            }),
        }
    }

    fn render_metrics(&self) -> String {
        format!("# TYPE conclave_raft_term gauge\nconclave_raft_term{{group=\"0\"}} 1\nconclave_test_node {}\n", self.id)
    }
}

/// A double behind a real HTTP server on a loopback port; the server stops on drop.
pub struct TestServer {
    pub double: Double,
    pub addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
}

impl TestServer {
    /// Starts a server for `double` inside the current actix system.
    pub fn start(double: Double, max_hops: u32) -> TestServer {
        Self::start_with(
            double,
            HttpOptions {
                workers: 1,
                forward_timeout: Duration::from_secs(5),
                max_hops,
                ..HttpOptions::default()
            },
        )
    }

    /// Starts a server for `double` with explicit options (tokens, TLS, budgets).
    pub fn start_with(double: Double, options: HttpOptions) -> TestServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = server_with(double.clone(), listener, options).unwrap();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        TestServer {
            double,
            addr,
            handle,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

/// Starts a server on its own thread and actix system (for tests that block, e.g. running the
/// CLI binary as a subprocess). Returns the address; the server lives until the process ends.
pub fn start_in_background(double: Double) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = TestServer::start(double, 10);
            tx.send(server.addr).unwrap();
            std::future::pending::<()>().await;
        });
    });
    rx.recv().unwrap()
}
