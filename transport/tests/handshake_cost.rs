//! What authentication costs per connection: time to bind a transport, dial a peer, complete
//! the handshake and deliver one message, for plain TCP (the baseline, measured in the same
//! run), a cluster secret, TLS, and TLS with a secret. Steady-state traffic is unaffected (the
//! handshake runs once per connection). Ignored by default; run with
//! `cargo test -p conclave-transport --test handshake_cost -- --ignored --nocapture`
//! (`CONCLAVE_HANDSHAKE_ROUNDS`, default 100; add `--release` for representative numbers).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use conclave_core::ids::NodeId;
use conclave_transport::{ClusterSecret, Endpoint, TlsConfig, TransportConfig};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};

fn tls_for(
    dir: &std::path::Path,
    issuer: &CertifiedIssuer<'static, KeyPair>,
    id: u64,
) -> TlsConfig {
    let mut params = CertificateParams::new(vec![format!("node-{id}.conclave")]).unwrap();
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let (c, k, ca) = (
        dir.join(format!("{id}.pem")),
        dir.join(format!("{id}.key")),
        dir.join("ca.pem"),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    std::fs::write(&ca, issuer.pem()).unwrap();
    TlsConfig {
        cert: c,
        key: k,
        ca,
        server_name: None,
    }
}

async fn per_connection(rounds: u32, tweak: impl Fn(&mut TransportConfig, u64)) -> Duration {
    let mut cfg_b = config(NodeId::new(2), "bench");
    tweak(&mut cfg_b, 2);
    let (_b, b_addr, mut b_rx) = start(cfg_b, 64).await;
    let t0 = Instant::now();
    for i in 0..rounds {
        let mut cfg_a = config(NodeId::new(1), "bench");
        tweak(&mut cfg_a, 1);
        let (a, _, _a_rx) = start(cfg_a, 8).await;
        a.peer(NodeId::new(2), b_addr)
            .send(Msg::new(u64::from(i), 8))
            .await
            .unwrap();
        assert_eq!(recv(&mut b_rx).await.0, NodeId::new(1));
        a.shutdown();
    }
    t0.elapsed() / rounds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn handshake_cost_by_authentication() {
    let rounds: u32 = std::env::var("CONCLAVE_HANDSHAKE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let dir = tempfile::tempdir().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let tls = [
        tls_for(dir.path(), &issuer, 1),
        tls_for(dir.path(), &issuer, 2),
    ];
    let secret = ClusterSecret::new("bench-cluster-secret-0123456789");
    let tls_of = |id: u64| tls[usize::from(id == 2)].clone();
    // Warm-up (first sockets, TLS provider set-up), not measured.
    per_connection(10, |c, id| c.tls = Some(tls_of(id))).await;
    let plain = per_connection(rounds, |_, _| {}).await;
    let with_secret = per_connection(rounds, |c, _| c.secret = Some(secret.clone())).await;
    let with_tls = per_connection(rounds, |c, id| c.tls = Some(tls_of(id))).await;
    let both = per_connection(rounds, |c, id| {
        c.tls = Some(tls_of(id));
        c.secret = Some(secret.clone());
    })
    .await;
    println!("per connection (bind + dial + handshake + 1 message), {rounds} rounds:");
    for (name, d) in [
        ("plain (baseline)", plain),
        ("secret", with_secret),
        ("tls", with_tls),
        ("tls + secret", both),
    ] {
        println!(
            "  {name:<18} {:>9.1} us  ratio {:.2}",
            d.as_secs_f64() * 1e6,
            d.as_secs_f64() / plain.as_secs_f64()
        );
    }
}
