//! The `conclave` binary: `init` output, argument errors, bad configs, and `kv` / `status` /
//! `ring route` against a test double of the node behind a real HTTP server.

#![allow(clippy::unwrap_used)] // Tests (and their shared double) unwrap freely.

mod http_support;

use conclave::config::Config;
use conclave_core::ids::NodeId;
use http_support::{start_in_background, Double};
use std::process::{Command, Output};

fn conclave(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_conclave"))
        .args(args)
        .env_remove("CONCLAVE_ENDPOINT")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn init_writes_loadable_configs_with_the_right_ports() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let o = conclave(&["init", "--nodes", "3", "--dir", d, "--base-port", "9000"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for i in 1..=3u16 {
        let c = Config::load(&dir.path().join(format!("n{i}.toml"))).unwrap();
        assert_eq!(c.node.id, NodeId::new(u64::from(i)));
        assert_eq!(c.node.listen.port(), 9000 + i);
        assert_eq!(c.node.http.port(), 9100 + i);
        assert_eq!(
            c.node.data_dir,
            dir.path().join("data").join(format!("n{i}"))
        );
        let members: Vec<(u64, u16, u16)> = c
            .cluster
            .initial_members
            .iter()
            .map(|m| (m.id.get(), m.addr.port(), m.http.port()))
            .collect();
        assert_eq!(
            members,
            vec![(1, 9001, 9101), (2, 9002, 9102), (3, 9003, 9103)]
        );
    }
    assert!(!dir.path().join("n4.toml").exists());

    // Existing files are not overwritten without --force, and nothing is written then.
    std::fs::write(dir.path().join("n2.toml"), "# mine\n").unwrap();
    let o = conclave(&["init", "--nodes", "3", "--dir", d]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("n2.toml")).unwrap(),
        "# mine\n"
    );
    let o = conclave(&["init", "--nodes", "3", "--dir", d, "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let c = Config::load(&dir.path().join("n2.toml")).unwrap();
    assert_eq!(c.node.http.port(), 7102, "default base port is 7000");
}

#[test]
fn argument_errors_exit_2_with_usage() {
    for args in [
        &["init", "--dir", "x"][..],
        &["init", "--nodes", "0", "--dir", "x"],
        &["init", "--nodes", "three", "--dir", "x"],
        &["kv", "get", "k", "--consistency", "strong"],
        &["kv", "cas", "k", "--value", "v"],
        &["kv", "cas", "k", "--absent"],
        &[
            "kv",
            "cas",
            "k",
            "--absent",
            "--expected",
            "x",
            "--value",
            "v",
        ],
        &["kv", "put", "k"],
        &["frobnicate"],
    ] {
        let o = conclave(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).starts_with("error:"), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn bad_configs_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    for (text, key) in [
        ("[raft]\nelection_timeout = 5\n", "election_timeout"),
        ("[node]\nid = 0\n", "node.id"),
    ] {
        std::fs::write(&path, text).unwrap();
        let o = conclave(&["node", "--config", path.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains(key), "{key}: {}", stderr(&o));
    }
    let o = conclave(&["node", "--config", "/nonexistent/n1.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("/nonexistent/n1.toml"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn kv_status_and_route_against_a_node() {
    let double = Double::new(NodeId::new(1));
    let addr = start_in_background(double.clone());
    let ep = format!("http://{addr}");
    let ep = ep.as_str();

    let o = conclave(&["kv", "put", "greeting", "hello", "--endpoint", ep]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("OK (index 1, term 1)"),
        "{}",
        stdout(&o)
    );
    // --endpoint is accepted before the operation too, and keys are escaped.
    let o = conclave(&["kv", "--endpoint", ep, "put", "a/b c", "x y"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(double.value(b"a/b c").as_deref(), Some(&b"x y"[..]));

    let o = conclave(&["kv", "get", "greeting", "--endpoint", ep]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "hello\n");
    let o = conclave(&[
        "kv",
        "get",
        "greeting",
        "--consistency",
        "stale",
        "--endpoint",
        ep,
    ]);
    assert_eq!(stdout(&o), "hello\n");
    assert_eq!(
        double.state.lock().unwrap().reads.last(),
        Some(&conclave::config::ReadLevel::Stale)
    );

    let o = conclave(&["kv", "get", "missing", "--endpoint", ep]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not found"), "{}", stderr(&o));

    let o = conclave(&[
        "kv",
        "cas",
        "lock",
        "--absent",
        "--value",
        "me",
        "--endpoint",
        ep,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = conclave(&[
        "kv",
        "cas",
        "lock",
        "--absent",
        "--value",
        "you",
        "--endpoint",
        ep,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("\"me\""), "{}", stderr(&o));
    let o = conclave(&[
        "kv",
        "cas",
        "lock",
        "--expected",
        "me",
        "--delete",
        "--endpoint",
        ep,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(double.value(b"lock"), None);

    let o = conclave(&["kv", "del", "greeting", "--endpoint", ep]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("deleted"), "{}", stdout(&o));
    let o = conclave(&["kv", "del", "greeting", "--endpoint", ep]);
    assert!(stdout(&o).contains("did not exist"), "{}", stdout(&o));

    let o = conclave(&["status", "--endpoint", ep]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("node 1 at"), "{out}");
    assert!(out.contains("MEMBERS") && out.contains("GROUPS"), "{out}");
    let o = conclave(&["status", "--json", "--endpoint", ep]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["node_id"], 1);
    assert_eq!(v["role"], "leader");

    let o = conclave(&["ring", "route", "abc", "--endpoint", ep]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "key \"abc\": shard 3, replicas [1, 2, 3], leader 1\n"
    );

    // A node that is not sharded refuses a shard map change: its code, exit 1.
    let o = conclave(&[
        "ring",
        "prefer",
        "3",
        "2",
        "--expect-version",
        "1",
        "--endpoint",
        ep,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("not_sharded"), "{}", stderr(&o));

    // Errors from the node are printed with their code, exit 1.
    double.set_mode(http_support::Mode::Fail(
        conclave::node::RequestError::Overloaded,
    ));
    let o = conclave(&["kv", "put", "k", "v", "--endpoint", ep]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("overloaded"), "{}", stderr(&o));
    assert!(stderr(&o).contains("503"), "{}", stderr(&o));
}

#[test]
fn an_unreachable_node_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ep = format!("http://127.0.0.1:{port}");
    let o = conclave(&["kv", "get", "k", "--endpoint", &ep]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!("cannot reach node at {ep}")),
        "{}",
        stderr(&o)
    );
    let o = conclave(&["status", "--endpoint", "localhost:7101"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("invalid endpoint"), "{}", stderr(&o));
}

#[test]
fn snapshot_command_takes_one_on_the_node() {
    let double = Double::new(NodeId::new(1));
    let addr = start_in_background(double.clone());
    let ep = format!("http://{addr}");
    let ep = ep.as_str();
    let o = conclave(&["kv", "put", "greeting", "hello", "--endpoint", ep]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = conclave(&["snapshot", "--endpoint", ep]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("group 0: snapshot at index 1 (term 1), 13 bytes"),
        "{}",
        stdout(&o)
    );
    let o = conclave(&["snapshot", "--group", "5", "--endpoint", ep]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("group_not_found"), "{}", stderr(&o));
}
