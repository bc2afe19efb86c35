//! Transport throughput on loopback: `conclave-transport` (MessagePack frames, bounded queue,
//! coalesced writes) against raw length-prefixed bytes over a tokio TCP socket, measured in the
//! same run, for 64-byte, 1 KiB and 4 KiB messages.
//!
//! Each iteration moves one message from a sender task to a receiver that has it in hand (the
//! transport: decoded `M` out of the inbound channel; raw: the body bytes read into a buffer),
//! so criterion's "elements/s" is messages per second. Two message shapes go through the
//! transport: `conclave_transport` carries its payload as a `Bytes` field declared with
//! `conclave_transport::shared_bytes` (decoded as a view into the read buffer),
//! `conclave_transport_vec` as a `Vec<u8>` (`serde_bytes`: one allocation and copy per decoded
//! message). Two raw baselines bracket the transport: `raw_write_per_msg` issues one
//! `write_all` per message (what a naive sender does); `raw_bufwriter` batches through a
//! 64 KiB `BufWriter` (the best a raw stream does without serialisation). A summary with
//! msgs/s, MB/s, the number of messages moved and the ratios is printed at the end. The bench
//! runs on mimalloc, the node binary's global allocator.
//!
//! Run: `cargo bench -p benches --bench transport -- --warm-up-time 1 --measurement-time 3`

// criterion_group! generates an undocumented pub fn.
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use conclave_core::ids::NodeId;
use conclave_transport::{Endpoint, Transport, TransportConfig};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

/// The node binary's allocator (runtime/src/main.rs), so that the bench measures the
/// allocation and cross-thread free of each decoded message as the node pays them.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The message with a zero-copy payload.
#[derive(Clone, Serialize, Deserialize)]
struct Msg {
    group: u32,
    seq: u64,
    #[serde(with = "conclave_transport::shared_bytes")]
    payload: Bytes,
}

/// The same message on the wire, with an owned `Vec<u8>` payload.
#[derive(Clone, Serialize, Deserialize)]
struct VecMsg {
    group: u32,
    seq: u64,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
}

/// A message type the bench can build at a given payload size and number.
trait BenchMsg: Clone + Serialize + DeserializeOwned + Send + Sync + 'static {
    fn new(payload: usize) -> Self;
    fn set_seq(&mut self, seq: u64);
}

impl BenchMsg for Msg {
    fn new(payload: usize) -> Self {
        Msg {
            group: 3,
            seq: 1 << 40,
            payload: Bytes::from(vec![7; payload]),
        }
    }
    fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
    }
}

impl BenchMsg for VecMsg {
    fn new(payload: usize) -> Self {
        VecMsg {
            group: 3,
            seq: 1 << 40,
            payload: vec![7; payload],
        }
    }
    fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
    }
}

/// Total messages and time per benchmark id, for the summary.
static TOTALS: Mutex<BTreeMap<String, (u64, Duration, usize)>> = Mutex::new(BTreeMap::new());

fn record(id: &str, msgs: u64, took: Duration, frame_bytes: usize) {
    if let Ok(mut t) = TOTALS.lock() {
        let e = t
            .entry(id.to_owned())
            .or_insert((0, Duration::ZERO, frame_bytes));
        e.0 += msgs;
        e.1 += took;
    }
}

/// A message whose encoded frame body is exactly `body` bytes.
fn message_of_body_size<T: BenchMsg>(body: usize) -> T {
    let mut payload = body.saturating_sub(16);
    loop {
        let m = T::new(payload);
        let len = conclave_transport::codec::encode_frame(&m, usize::MAX >> 1)
            .map(|f| f.len() - 4)
            .unwrap_or(body);
        if len >= body || payload == 0 {
            return m;
        }
        payload += 1;
    }
}

struct TransportPair<T> {
    _a: Transport<T>,
    _b: Transport<T>,
    link: conclave_transport::PeerLink<T>,
    rx: conclave_transport::InboundReceiver<T>,
}

fn transport_pair<T: BenchMsg>(rt: &Runtime) -> TransportPair<T> {
    rt.block_on(async {
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!());
        let mut cfg_a = TransportConfig::new(NodeId::new(1), "bench", lo);
        cfg_a.max_frame_size = 1 << 20;
        let mut cfg_b = TransportConfig::new(NodeId::new(2), "bench", lo);
        cfg_b.max_frame_size = 1 << 20;
        let (atx, _arx) = conclave_transport::inbound(1024);
        let (btx, rx) = conclave_transport::inbound(4096);
        let (a, _) = Transport::bind(cfg_a, atx).await.expect("bind a");
        let (b, b_addr) = Transport::bind(cfg_b, btx).await.expect("bind b");
        let link = a.peer(NodeId::new(2), b_addr);
        TransportPair {
            _a: a,
            _b: b,
            link,
            rx,
        }
    })
}

fn bench_transport(c: &mut Criterion, rt: &Runtime, label: &str, body: usize) {
    let mut group = c.benchmark_group(format!("transport/{label}"));
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    bench_shape::<Msg>(&mut group, rt, label, "conclave_transport", body);
    bench_shape::<VecMsg>(&mut group, rt, label, "conclave_transport_vec", body);
    for buffered in [false, true] {
        let name = if buffered {
            "raw_bufwriter"
        } else {
            "raw_write_per_msg"
        };
        let id = format!("{label}/{name}");
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let took = rt.block_on(raw_round(iters, body, buffered));
                record(&id, iters, took, body + 4);
                took
            })
        });
    }
    group.finish();
}

/// The transport with message type `T`: a producer task sending `iters` messages, the
/// receiver taking `iters` decoded messages out of the inbound sink.
fn bench_shape<T: BenchMsg>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &Runtime,
    label: &str,
    name: &str,
    body: usize,
) {
    let mut pair = transport_pair::<T>(rt);
    let msg = message_of_body_size::<T>(body);
    let id = format!("{label}/{name}");
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let link = pair.link.clone();
            let msg = msg.clone();
            let rx = &mut pair.rx;
            let took = rt.block_on(async move {
                let start = Instant::now();
                let producer = tokio::spawn(async move {
                    for i in 0..iters {
                        let mut m = msg.clone();
                        m.set_seq(i);
                        if link.send(m).await.is_err() {
                            return;
                        }
                    }
                });
                for _ in 0..iters {
                    if rx.recv().await.is_none() {
                        break;
                    }
                }
                let _ = producer.await;
                start.elapsed()
            });
            record(&id, iters, took, body + 4);
            took
        })
    });
}

/// Raw baseline: a fresh connected pair per sample (connect cost is negligible next to the
/// thousands of messages per sample), the sender writes `iters` length-prefixed bodies, the
/// receiver reads each prefix and body.
async fn raw_round(iters: u64, body: usize, buffered: bool) -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let client = client.expect("connect");
    let (server, _) = server.expect("accept");
    client.set_nodelay(true).expect("nodelay");
    let payload = vec![7u8; body];
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        let mut frame = Vec::with_capacity(body + 4);
        if buffered {
            let mut w = BufWriter::with_capacity(64 * 1024, client);
            for _ in 0..iters {
                w.write_all(&(body as u32).to_be_bytes()).await?;
                w.write_all(&payload).await?;
            }
            w.flush().await?;
        } else {
            let mut w = client;
            for _ in 0..iters {
                frame.clear();
                frame.extend_from_slice(&(body as u32).to_be_bytes());
                frame.extend_from_slice(&payload);
                w.write_all(&frame).await?;
            }
        }
        Ok::<_, std::io::Error>(())
    });
    let mut r = BufReader::with_capacity(64 * 1024, server);
    let mut buf = vec![0u8; body];
    for _ in 0..iters {
        let len = match r.read_u32().await {
            Ok(l) => l as usize,
            Err(_) => break,
        };
        buf.resize(len, 0);
        if r.read_exact(&mut buf).await.is_err() {
            break;
        }
    }
    let _ = writer.await;
    start.elapsed()
}

fn transport_benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    bench_transport(c, &rt, "64B", 64);
    bench_transport(c, &rt, "1KiB", 1024);
    bench_transport(c, &rt, "4KiB", 4096);
    print_summary();
}

fn print_summary() {
    let Ok(t) = TOTALS.lock() else { return };
    let rate = |id: &str| {
        t.get(id).map(|(n, d, bytes)| {
            let secs = d.as_secs_f64().max(f64::MIN_POSITIVE);
            (*n as f64 / secs, *n as f64 * *bytes as f64 / secs / 1e6)
        })
    };
    println!("\ntransport throughput summary (all criterion iterations, warm-up included)");
    println!(
        "{:<34} {:>14} {:>10} {:>12}",
        "bench", "msgs/s", "MB/s", "msgs"
    );
    for (id, (n, _, _)) in t.iter() {
        if let Some((mps, mbs)) = rate(id) {
            println!("{id:<34} {mps:>14.0} {mbs:>10.1} {n:>12}");
        }
    }
    for label in ["64B", "1KiB", "4KiB"] {
        for ours in ["conclave_transport", "conclave_transport_vec"] {
            let o = rate(&format!("{label}/{ours}"));
            for base in ["raw_write_per_msg", "raw_bufwriter"] {
                if let (Some((o, _)), Some((r, _))) = (o, rate(&format!("{label}/{base}"))) {
                    println!("ratio {label}: {ours} / {base} = {:.2}", o / r);
                }
            }
        }
    }
}

criterion_group!(benches, transport_benches);
criterion_main!(benches);
