//! Acceptance 4 of issue 12 with real processes: `conclave init --secure` makes a cluster
//! whose nodes talk TLS to each other and HTTPS with bearer tokens to clients; the CLI works
//! with `--token`/`CONCLAVE_TOKEN` and `--ca`, and is refused (401, 403, a clear error without
//! `--ca`) otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use conclave::client::{Client, ClientError, ClientOptions};
use conclave_core::ids::NodeId;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn conclave(args: &[&str], token_env: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_conclave"));
    cmd.args(args)
        .env_remove("CONCLAVE_ENDPOINT")
        .env_remove("CONCLAVE_TOKEN")
        .env_remove("CONCLAVE_CA")
        .env("RUST_LOG", "warn");
    if let Some(t) = token_env {
        cmd.env("CONCLAVE_TOKEN", t);
    }
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn token(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join("tokens").join(format!("{name}.token")))
        .unwrap()
        .trim()
        .to_owned()
}

fn secure_client(endpoint: &str, token: &str, ca: &Path) -> Client {
    Client::with_options(
        endpoint,
        &ClientOptions {
            timeout: Duration::from_secs(3),
            token: Some(token.to_owned()),
            ca: Some(ca.to_owned()),
        },
    )
    .unwrap()
}

#[test]
fn acceptance4_init_secure_cluster_with_tokens_and_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let base = common::ports::free_base(110);
    let o = conclave(
        &[
            "init",
            "--nodes",
            "3",
            "--dir",
            d,
            "--base-port",
            &base.to_string(),
            "--secure",
        ],
        None,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("CONCLAVE_TOKEN"),
        "{}",
        text(&o)
    );
    let ca: PathBuf = dir.path().join("certs").join("ca.crt");
    let ca_s = ca.to_str().unwrap().to_owned();
    let admin = token(dir.path(), "admin");
    let client_token = token(dir.path(), "client");

    let mut nodes = Nodes(Vec::new());
    for i in 1..=3 {
        let log = std::fs::File::create(dir.path().join(format!("n{i}.log"))).unwrap();
        nodes.0.push(
            Command::new(env!("CARGO_BIN_EXE_conclave"))
                .args(["node", "--config"])
                .arg(dir.path().join(format!("n{i}.toml")))
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }
    let endpoint = |i: u16| format!("https://127.0.0.1:{}", base + 100 + i);
    let logs = || {
        (1..=3)
            .map(|i| {
                std::fs::read_to_string(dir.path().join(format!("n{i}.log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n---\n")
    };

    actix_web::rt::System::new().block_on(async {
        // A leader is elected over mutual TLS.
        let deadline = Instant::now() + Duration::from_secs(30);
        let leader = loop {
            let mut found = None;
            for i in 1..=3 {
                if let Ok(s) = secure_client(&endpoint(i), &admin, &ca).status().await {
                    if let Some(l) = s.leader_id {
                        found = Some(l);
                    }
                }
            }
            if let Some(l) = found {
                break l;
            }
            assert!(Instant::now() < deadline, "no leader; logs:\n{}", logs());
            actix_web::rt::time::sleep(Duration::from_millis(200)).await;
        };
        let follower = (1..=3u16).find(|i| u64::from(*i) != leader.get()).unwrap();

        // The client token cannot move leadership (403); the admin token can.
        let e = secure_client(&endpoint(follower), &client_token, &ca)
            .transfer_leader(NodeId::new(u64::from(follower)))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ClientError::Api { status: 403, code, .. } if code == "forbidden"),
            "{e}"
        );
        secure_client(&endpoint(follower), &admin, &ca)
            .transfer_leader(leader)
            .await
            .unwrap();
    });

    let follower_ep = endpoint(2);
    // Without a token: 401, and the CLI says how to pass one.
    let o = conclave(
        &[
            "kv",
            "put",
            "k",
            "v",
            "--endpoint",
            &endpoint(1),
            "--ca",
            &ca_s,
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("HTTP 401, unauthorized"), "{}", text(&o));
    assert!(err.contains("--token"), "{}", text(&o));
    // With the client token (flag), written through node 1 and read back through node 2
    // (followers forward over HTTPS with the client's token).
    let o = conclave(
        &[
            "kv",
            "put",
            "k",
            "secret value",
            "--endpoint",
            &endpoint(1),
            "--ca",
            &ca_s,
            "--token",
            &client_token,
        ],
        None,
    );
    assert!(o.status.success(), "{}\nlogs:\n{}", text(&o), logs());
    // With the token from CONCLAVE_TOKEN.
    let o = conclave(
        &["kv", "get", "k", "--endpoint", &follower_ep, "--ca", &ca_s],
        Some(&client_token),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "secret value\n");
    // HTTPS without --ca: a clear error, nothing sent.
    let o = conclave(
        &["kv", "get", "k", "--endpoint", &endpoint(1)],
        Some(&client_token),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("pass --ca FILE"),
        "{}",
        text(&o)
    );
    // Plain HTTP to the HTTPS port does not work.
    let o = conclave(
        &[
            "kv",
            "get",
            "k",
            "--endpoint",
            &format!("http://127.0.0.1:{}", base + 101),
        ],
        Some(&client_token),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // A client token may read status.
    let o = conclave(
        &["status", "--endpoint", &endpoint(3), "--ca", &ca_s],
        Some(&client_token),
    );
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn acceptance3_a_node_off_loopback_refuses_to_start_without_tls_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let http = common::free_addr();
    let listen = common::free_addr();
    let config = format!(
        "[node]\nid = 1\ndata_dir = \"{}\"\nlisten = \"{listen}\"\nhttp = \"0.0.0.0:{}\"\n",
        dir.path().join("data").display(),
        http.port()
    );
    let path = dir.path().join("n1.toml");
    std::fs::write(&path, &config).unwrap();
    let o = conclave(&["node", "--config", path.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "node.http 0.0.0.0:{} is not a loopback address",
            http.port()
        )),
        "{}",
        text(&o)
    );
    assert!(
        err.contains("[tls] (transport TLS), [http.tls] (HTTPS) and [http.tokens] (bearer tokens)"),
        "{}",
        text(&o)
    );
    assert!(!dir.path().join("data").exists(), "nothing was created");

    // With the explicit opt-out it starts, and warns.
    std::fs::write(&path, format!("{config}allow_insecure = true\n")).unwrap();
    let log = dir.path().join("n1.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_conclave"))
        .args(["node", "--config", path.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("allow_insecure = true") {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the node exited: {text}"
        );
        assert!(Instant::now() < deadline, "no warning logged: {text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}
