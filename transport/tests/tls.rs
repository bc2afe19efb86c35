//! Mutual TLS over loopback: certificates generated at run time with rcgen.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::*;
use conclave_core::ids::NodeId;
use conclave_transport::metrics as names;
use conclave_transport::{Endpoint, TlsConfig, Transport, TransportError};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    /// Writes `{name}.pem`, `{name}.key` signed by this CA and `ca.pem` into `dir`: a
    /// certificate naming node `id` (DNS SAN `node-{id}.conclave`).
    fn issue(&self, dir: &Path, name: &str, id: u64) -> TlsConfig {
        let mut params = CertificateParams::new(vec![
            format!("node-{id}.conclave"),
            "127.0.0.1".to_string(),
            "localhost".to_string(),
        ])
        .unwrap();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}.key"));
        let ca_path = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        std::fs::write(&ca_path, self.issuer.pem()).unwrap();
        TlsConfig {
            cert: cert_path,
            key: key_path,
            ca: ca_path,
            server_name: None,
        }
    }
}

#[tokio::test]
async fn mutual_tls_delivers_both_ways() {
    let rec = metrics();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cluster ca");
    let mut cfg_a = config(NodeId::new(401), "t");
    cfg_a.tls = Some(ca.issue(dir.path(), "a", 401));
    let mut cfg_b = config(NodeId::new(402), "t");
    cfg_b.tls = Some(ca.issue(dir.path(), "b", 402));
    let (a, a_addr, mut a_rx) = start(cfg_a, 64).await;
    let (b, b_addr, mut b_rx) = start(cfg_b, 64).await;
    let to_b = a.peer(NodeId::new(402), b_addr);
    let to_a = b.peer(NodeId::new(401), a_addr);
    for i in 0..500 {
        to_b.send(Msg::new(i, 300)).await.unwrap();
        to_a.send(Msg::new(i, 3)).await.unwrap();
    }
    for i in 0..500 {
        assert_eq!(recv(&mut b_rx).await, (NodeId::new(401), Msg::new(i, 300)));
        assert_eq!(recv(&mut a_rx).await, (NodeId::new(402), Msg::new(i, 3)));
    }
    // Both links were created at once: the pair still ends with one TLS connection.
    eventually("one connection each", || {
        a.connection_count() == 1 && b.connection_count() == 1
    })
    .await;
    let opened = |n: &str| rec.get(names::CONNECTIONS_TOTAL, &[("node", n)]);
    assert_eq!((opened("401"), opened("402")), (1, 1));
    assert_eq!(
        rec.get(names::HANDSHAKE_REFUSED_TOTAL, &[("node", "402")]),
        0
    );
}

/// Simultaneous dials over TLS, then the lower-id node restarts: one connection each time, and
/// traffic flows both ways over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_simultaneous_dial_and_restart_keep_one_connection() {
    metrics();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cluster ca");
    let tls_a = ca.issue(dir.path(), "a", 441);
    let mut cfg_a = config(NodeId::new(441), "t");
    cfg_a.tls = Some(tls_a.clone());
    let mut cfg_b = config(NodeId::new(442), "t");
    cfg_b.tls = Some(ca.issue(dir.path(), "b", 442));
    let (a, a_addr, mut a_rx) = start(cfg_a, 64).await;
    let (b, b_addr, mut b_rx) = start(cfg_b, 64).await;
    let (to_b, to_a) = std::thread::scope(|s| {
        let ta = s.spawn(|| a.peer(NodeId::new(442), b_addr));
        let tb = s.spawn(|| b.peer(NodeId::new(441), a_addr));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    for i in 0..50 {
        to_b.send(Msg::new(i, 10)).await.unwrap();
        to_a.send(Msg::new(i, 11)).await.unwrap();
    }
    for i in 0..50 {
        assert_eq!(recv(&mut b_rx).await, (NodeId::new(441), Msg::new(i, 10)));
        assert_eq!(recv(&mut a_rx).await, (NodeId::new(442), Msg::new(i, 11)));
    }
    eventually("one connection each", || {
        a.connection_count() == 1 && b.connection_count() == 1
    })
    .await;
    // Restart A on the same address; B's queued messages reach the new A.
    drop(to_b);
    drop(a);
    drop(a_rx);
    let mut cfg = config(NodeId::new(441), "t");
    cfg.tls = Some(tls_a);
    cfg.listen = a_addr;
    let (a, mut a_rx) = loop {
        let (tx, rx) = conclave_transport::inbound(64);
        if let Ok((t, _)) = Transport::bind(cfg.clone(), tx).await {
            break (t, rx);
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let mut seq = 100;
    loop {
        to_a.send(Msg::new(seq, 1)).await.unwrap();
        if let Ok(Some((from, _))) =
            tokio::time::timeout(std::time::Duration::from_millis(100), a_rx.recv()).await
        {
            assert_eq!(from, NodeId::new(442));
            break;
        }
        seq += 1;
        assert!(seq < 200, "the restarted node was never reached");
    }
    let to_b = a.peer(NodeId::new(442), b_addr);
    to_b.send(Msg::new(1, 1)).await.unwrap();
    assert_eq!(recv(&mut b_rx).await, (NodeId::new(441), Msg::new(1, 1)));
    eventually("one connection each after the restart", || {
        a.connection_count() == 1 && b.connection_count() == 1
    })
    .await;
}

#[tokio::test]
async fn a_peer_signed_by_another_ca_is_refused() {
    let rec = metrics();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cluster ca");
    let rogue_ca = Ca::new("rogue ca");
    let mut cfg_b = config(NodeId::new(412), "t");
    cfg_b.tls = Some(ca.issue(dir.path(), "b", 412));
    let (_b, b_addr, mut b_rx) = start(cfg_b, 8).await;

    // The rogue trusts the cluster CA (so it would accept B's certificate) but presents a
    // certificate signed by its own CA: B must refuse it.
    let mut rogue_tls = rogue_ca.issue(dir.path(), "rogue", 413);
    rogue_tls.ca = ca.issue(dir.path(), "unused", 999).ca;
    let mut cfg_r = config(NodeId::new(413), "t");
    cfg_r.tls = Some(rogue_tls);
    let (rogue, _, _r_rx) = start(cfg_r, 8).await;
    rogue
        .peer(NodeId::new(412), b_addr)
        .try_send(Msg::new(0, 1))
        .unwrap();
    eventually("tls refusal counted", || {
        rec.get(
            names::HANDSHAKE_REFUSED_TOTAL,
            &[("node", "412"), ("reason", "tls")],
        ) >= 1
    })
    .await;
    assert!(b_rx.try_recv().is_err(), "a rogue message was delivered");

    // A good peer still gets through.
    let mut cfg_a = config(NodeId::new(411), "t");
    cfg_a.tls = Some(ca.issue(dir.path(), "a", 411));
    let (a, _, _a_rx) = start(cfg_a, 8).await;
    a.peer(NodeId::new(412), b_addr)
        .send(Msg::new(7, 1))
        .await
        .unwrap();
    assert_eq!(recv(&mut b_rx).await, (NodeId::new(411), Msg::new(7, 1)));
}

#[tokio::test]
async fn a_plain_tcp_peer_is_refused_by_a_tls_node() {
    let rec = metrics();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cluster ca");
    let mut cfg_b = config(NodeId::new(422), "t");
    cfg_b.tls = Some(ca.issue(dir.path(), "b", 422));
    let (_b, b_addr, mut b_rx) = start(cfg_b, 8).await;
    let (plain, _, _p_rx) = start(config(NodeId::new(423), "t"), 8).await;
    plain
        .peer(NodeId::new(422), b_addr)
        .try_send(Msg::new(0, 1))
        .unwrap();
    eventually("tls refusal counted", || {
        rec.get(
            names::HANDSHAKE_REFUSED_TOTAL,
            &[("node", "422"), ("reason", "tls")],
        ) >= 1
    })
    .await;
    assert!(b_rx.try_recv().is_err());
    // And a raw socket sending garbage is cut too.
    let mut s = TcpStream::connect(b_addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, b"hello?\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(r.is_ok());
}

#[tokio::test]
async fn missing_tls_files_fail_bind_naming_the_file() {
    let mut cfg = config(NodeId::new(431), "t");
    cfg.tls = Some(TlsConfig {
        cert: "/nonexistent/cert.pem".into(),
        key: "/nonexistent/key.pem".into(),
        ca: "/nonexistent/ca.pem".into(),
        server_name: None,
    });
    let (tx, _rx) = conclave_transport::inbound::<Msg>(1);
    match Transport::bind(cfg, tx).await {
        Err(TransportError::Tls(e)) => assert!(e.to_string().contains("/nonexistent/cert.pem")),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("bind succeeded without TLS files"),
    }
}

/// Finding 15: a certificate signed by the cluster CA but naming another node id is refused,
/// on the accepting side (the dialer claims an id its certificate does not name) and on the
/// dialling side (the node reached is not the one its certificate names).
#[tokio::test]
async fn finding15_certificate_must_name_the_claimed_node_id() {
    let rec = metrics();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cluster ca");
    let mut cfg_b = config(NodeId::new(462), "t");
    cfg_b.tls = Some(ca.issue(dir.path(), "b", 462));
    let (_b, b_addr, mut b_rx) = start(cfg_b, 8).await;

    // Node "463" holds a valid certificate of the cluster CA, but it names node 461.
    let mut cfg_r = config(NodeId::new(463), "t");
    cfg_r.tls = Some(ca.issue(dir.path(), "r", 461));
    let (rogue, r_addr, _r_rx) = start(cfg_r, 8).await;
    rogue
        .peer(NodeId::new(462), b_addr)
        .try_send(Msg::new(0, 1))
        .unwrap();
    eventually("certificate mismatch counted by the acceptor", || {
        rec.get(
            names::HANDSHAKE_REFUSED_TOTAL,
            &[("node", "462"), ("reason", "certificate_mismatch")],
        ) >= 1
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        b_rx.try_recv().is_err(),
        "a message from a mislabelled peer was delivered"
    );

    // Node 464 dials "463" at the rogue's address: the certificate there names 461, so the
    // dialer refuses it.
    let mut cfg_d = config(NodeId::new(464), "t");
    cfg_d.tls = Some(ca.issue(dir.path(), "d", 464));
    let (d, _, _d_rx) = start(cfg_d, 8).await;
    d.peer(NodeId::new(463), r_addr)
        .try_send(Msg::new(0, 1))
        .unwrap();
    eventually("certificate mismatch counted by the dialer", || {
        rec.get(
            names::HANDSHAKE_REFUSED_TOTAL,
            &[("node", "464"), ("reason", "certificate_mismatch")],
        ) >= 1
    })
    .await;
    assert!(!d.is_connected(NodeId::new(463)));

    // A correctly named peer gets through.
    let mut cfg_a = config(NodeId::new(461), "t");
    cfg_a.tls = Some(ca.issue(dir.path(), "a", 461));
    let (a, _, _a_rx) = start(cfg_a, 8).await;
    a.peer(NodeId::new(462), b_addr)
        .send(Msg::new(7, 1))
        .await
        .unwrap();
    assert_eq!(recv(&mut b_rx).await, (NodeId::new(461), Msg::new(7, 1)));
}
