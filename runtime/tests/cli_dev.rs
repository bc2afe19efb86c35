//! `conclave dev` when a node cannot start: it writes the configs, starts the child, notices
//! the child's exit before any leader is known, quotes its log and exits 1 without leaving
//! processes behind.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn dev_reports_a_node_that_exits_before_a_leader_is_known() {
    // Hold the HTTP port node 1 would use, so the node cannot start whatever else it does.
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http_port = blocker.local_addr().unwrap().port();
    let Some(base) = http_port.checked_sub(101) else {
        panic!("the OS gave a port below 101: {http_port}");
    };
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_conclave"))
        .args(["dev", "--nodes", "1", "--leader-timeout-s", "20"])
        .arg("--dir")
        .arg(dir.path())
        .arg("--base-port")
        .arg(base.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("conclave dev did not give up on a node that cannot bind its HTTP port");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("node 1 exited") || stderr.contains("no leader was elected"),
        "{stderr}"
    );
    let log = dir.path().join("logs").join("n1.log");
    assert!(stderr.contains(&log.display().to_string()), "{stderr}");
    let config = conclave::config::Config::load(&dir.path().join("n1.toml")).unwrap();
    assert_eq!(config.node.http.port(), http_port);
    drop(blocker);
}
