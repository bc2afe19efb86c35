//! Fault-injecting TCP proxies between the nodes, run by the harness (no privileges needed).
//!
//! Every node-to-node byte stream goes through a proxy of its *ordered* pair: node `i`'s
//! configuration names, as the transport and HTTP address of peer `j`, the listen addresses of
//! proxies `T(i→j)` and `H(i→j)`, which forward to `j`'s real addresses. A connection opened by
//! `i` through `T(i→j)` carries bytes from `i` to `j` one way and from `j` to `i` the other, so
//! the proxy always knows which node sent each byte. The rules are per *direction of flow*:
//! "`i` cannot reach `j`" drops every byte flowing from `i` to `j` on any proxied connection
//! between them, whoever opened it. That covers a transport with one connection per direction
//! as well as one bidirectional connection per pair, and HTTP forwarding (a follower that
//! cannot reach the leader cannot forward to it either).
//!
//! Dropping bytes in the middle of a stream would desynchronise its framing once the
//! partition heals, so a connection that lost bytes in a direction is *poisoned*: it is closed
//! as soon as that direction is allowed again, and the nodes reconnect — as after a real
//! partition that outlived TCP's patience. Latency delays each chunk by the direction's
//! current latency, preserving order. [`Net::sever`] closes every current connection.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// The current rules: which directions drop bytes, which are delayed.
#[derive(Default, Clone, Debug)]
struct RuleState {
    /// `(from, to)`: bytes flowing from node index `from` to `to` are dropped.
    cut: HashSet<(usize, usize)>,
    /// `(from, to)`: bytes flowing from `from` to `to` are delayed this long.
    latency: HashMap<(usize, usize), Duration>,
}

struct Rules {
    state: parking_lot::RwLock<RuleState>,
    /// Bumped on every change (and on [`Net::sever`]): connections re-check their poison.
    changed: watch::Sender<u64>,
    /// Connections opened before this generation are closed.
    sever_gen: AtomicU64,
    /// Bytes dropped so far (all directions).
    dropped: AtomicU64,
}

impl Rules {
    fn get(&self, from: usize, to: usize) -> (bool, Duration) {
        let s = self.state.read();
        (
            s.cut.contains(&(from, to)),
            s.latency.get(&(from, to)).copied().unwrap_or_default(),
        )
    }

    fn is_cut(&self, from: usize, to: usize) -> bool {
        self.state.read().cut.contains(&(from, to))
    }

    fn bump(&self) {
        self.changed.send_modify(|g| *g += 1);
    }
}

/// The proxies of an `n`-node cluster and their rules.
pub struct Net {
    n: usize,
    rt: Option<tokio::runtime::Runtime>,
    rules: Arc<Rules>,
    /// `(i, j)` → where node `i` reaches peer `j`'s transport.
    transport: HashMap<(usize, usize), SocketAddr>,
    /// `(i, j)` → where node `i` reaches peer `j`'s HTTP API.
    http: HashMap<(usize, usize), SocketAddr>,
}

impl Net {
    /// Starts `2·n·(n-1)` proxies: for each ordered pair `(i, j)`, one to `targets[j].0` (the
    /// transport) and one to `targets[j].1` (HTTP).
    pub fn start(targets: &[(SocketAddr, SocketAddr)]) -> Net {
        let n = targets.len();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("chaos-proxy")
            .enable_all()
            .build()
            .expect("proxy runtime");
        let (changed, _) = watch::channel(0);
        let rules = Arc::new(Rules {
            state: parking_lot::RwLock::new(RuleState::default()),
            changed,
            sever_gen: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let mut transport = HashMap::new();
        let mut http = HashMap::new();
        for i in 0..n {
            for j in (0..n).filter(|&j| j != i) {
                for (map, target) in [(&mut transport, targets[j].0), (&mut http, targets[j].1)] {
                    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                    std_listener.set_nonblocking(true).unwrap();
                    map.insert((i, j), std_listener.local_addr().unwrap());
                    let rules = rules.clone();
                    rt.spawn(async move {
                        let listener = TcpListener::from_std(std_listener).unwrap();
                        accept_loop(listener, target, i, j, rules).await;
                    });
                }
            }
        }
        Net {
            n,
            rt: Some(rt),
            rules,
            transport,
            http,
        }
    }

    /// The address node `i` must use for peer `j`'s transport.
    pub fn transport_addr(&self, i: usize, j: usize) -> SocketAddr {
        self.transport[&(i, j)]
    }

    /// The address node `i` must use for peer `j`'s HTTP API.
    pub fn http_addr(&self, i: usize, j: usize) -> SocketAddr {
        self.http[&(i, j)]
    }

    fn update(&self, f: impl FnOnce(&mut RuleState)) {
        f(&mut self.rules.state.write());
        self.rules.bump();
    }

    /// `from` cannot reach `to` (one way).
    pub fn cut(&self, from: usize, to: usize) {
        self.update(|s| {
            s.cut.insert((from, to));
        });
    }

    /// Neither of `a` and `b` can reach the other.
    pub fn cut_both(&self, a: usize, b: usize) {
        self.update(|s| {
            s.cut.insert((a, b));
            s.cut.insert((b, a));
        });
    }

    /// Nodes in different groups cannot reach each other (both ways); nodes in no group are
    /// left alone.
    pub fn partition(&self, groups: &[Vec<usize>]) {
        self.update(|s| {
            for (gi, g) in groups.iter().enumerate() {
                for (hi, h) in groups.iter().enumerate() {
                    if gi != hi {
                        for &a in g {
                            for &b in h {
                                s.cut.insert((a, b));
                            }
                        }
                    }
                }
            }
        });
    }

    /// `i` can reach no one and no one can reach `i`.
    pub fn isolate(&self, i: usize) {
        let n = self.n;
        self.update(|s| {
            for j in (0..n).filter(|&j| j != i) {
                s.cut.insert((i, j));
                s.cut.insert((j, i));
            }
        });
    }

    /// Bytes from `from` to `to` are delayed by `delay`.
    pub fn set_latency(&self, from: usize, to: usize, delay: Duration) {
        self.update(|s| {
            s.latency.insert((from, to), delay);
        });
    }

    /// Every link, both ways, delayed by `delay`.
    pub fn latency_all(&self, delay: Duration) {
        let n = self.n;
        self.update(|s| {
            for i in 0..n {
                for j in (0..n).filter(|&j| j != i) {
                    s.latency.insert((i, j), delay);
                }
            }
        });
    }

    /// Removes every cut and every delay.
    pub fn heal(&self) {
        self.update(|s| {
            s.cut.clear();
            s.latency.clear();
        });
    }

    /// Closes every connection currently open through the proxies.
    pub fn sever(&self) {
        self.rules.sever_gen.fetch_add(1, Ordering::SeqCst);
        self.rules.bump();
    }

    /// Whether any direction is cut or delayed.
    pub fn is_healed(&self) -> bool {
        let s = self.rules.state.read();
        s.cut.is_empty() && s.latency.is_empty()
    }

    /// Bytes dropped by cuts so far.
    pub fn dropped_bytes(&self) -> u64 {
        self.rules.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Dropped from inside the harness's async runtime, where a blocking shutdown panics.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    i: usize,
    j: usize,
    rules: Arc<Rules>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let rules = rules.clone();
        tokio::spawn(async move {
            serve(client, target, i, j, rules).await;
        });
    }
}

/// One proxied connection opened by node `i` towards node `j`.
async fn serve(client: TcpStream, target: SocketAddr, i: usize, j: usize, rules: Arc<Rules>) {
    let gen = rules.sever_gen.load(Ordering::SeqCst);
    let Ok(Ok(server)) =
        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(target)).await
    else {
        // The target is down: the client sees its connection closed, as a refused connect.
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let poisoned_ij = Arc::new(AtomicBool::new(false));
    let poisoned_ji = Arc::new(AtomicBool::new(false));
    let mut changes = rules.changed.subscribe();
    let watchdog = {
        let rules = rules.clone();
        let (p_ij, p_ji) = (poisoned_ij.clone(), poisoned_ji.clone());
        async move {
            loop {
                if rules.sever_gen.load(Ordering::SeqCst) != gen
                    || (p_ij.load(Ordering::SeqCst) && !rules.is_cut(i, j))
                    || (p_ji.load(Ordering::SeqCst) && !rules.is_cut(j, i))
                {
                    return;
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        }
    };
    tokio::select! {
        _ = pump(cr, sw, i, j, rules.clone(), poisoned_ij) => {}
        _ = pump(sr, cw, j, i, rules.clone(), poisoned_ji) => {}
        _ = watchdog => {}
    }
    // Dropping the halves closes both sockets.
}

/// Copies bytes flowing from node `from` to node `to`, applying the rules to each chunk.
async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    from: usize,
    to: usize,
    rules: Arc<Rules>,
    poisoned: Arc<AtomicBool>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(256);
    let reader = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let (cut, delay) = rules.get(from, to);
            if cut {
                poisoned.store(true, Ordering::SeqCst);
                rules.dropped.fetch_add(n as u64, Ordering::Relaxed);
                continue;
            }
            if poisoned.load(Ordering::SeqCst) {
                // This direction lost bytes: its framing is gone, close the connection.
                return;
            }
            if tx
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .await
                .is_err()
            {
                return;
            }
        }
    };
    let writer = async {
        while let Some((at, data)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if w.write_all(&data).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = reader => {}
        _ = writer => {}
    }
}
