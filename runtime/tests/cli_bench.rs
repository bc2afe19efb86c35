//! `conclave bench`: the mailbox benchmark's JSON has every path with a positive rate and a
//! ratio for every runtime path; the cluster benchmark starts a durable 3-node cluster,
//! commits writes and reads, reports latency and errors, and stops the cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn conclave() -> Command {
    Command::new(env!("CARGO_BIN_EXE_conclave"))
}

#[test]
fn bench_mailbox_json_has_every_path() {
    let out = conclave()
        .args([
            "bench",
            "mailbox",
            "--messages",
            "5000",
            "--producers",
            "2",
            "--capacity",
            "8",
            "--payload",
            "16",
            "--rounds",
            "1",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["path"].as_str().unwrap()).collect();
    for want in [
        "tokio-local",
        "actix-local",
        "conclave-local",
        "tokio-cross",
        "crossbeam-cross",
        "actix-cross",
        "conclave-cross",
        "tokio-request-reply",
        "actix-request-reply",
        "tokio-try-send-full",
        "crossbeam-try-send-full",
        "actix-try-send-full",
        "conclave-try-send-full",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for r in rows {
        assert!(r["rate"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["messages"].as_u64(), Some(5000), "{r}");
        if r["kind"] == "baseline" {
            assert!(r["ratio"].is_null(), "{r}");
        } else {
            assert!(r["ratio"].as_f64().unwrap() > 0.0, "{r}");
        }
    }
}

#[test]
fn bench_cluster_spawns_a_cluster_and_reports() {
    let out = conclave()
        .args([
            "bench",
            "cluster",
            "--spawn",
            "3",
            "--duration-s",
            "2",
            "--clients",
            "4",
            "--read-fraction",
            "0.5",
            "--keyspace",
            "50",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = &v["report"];
    assert!(r["writes"]["ok"].as_u64().unwrap() > 0, "{r}");
    assert!(r["reads"]["ok"].as_u64().unwrap() > 0, "{r}");
    assert!(
        r["writes"]["latency"]["p50_us"].as_u64().unwrap() > 0,
        "{r}"
    );
    assert!(
        r["writes"]["latency"]["p99_us"].as_u64() >= r["writes"]["latency"]["p50_us"].as_u64(),
        "{r}"
    );
    // Errors are reported (as an object and a total), whatever their number.
    assert!(r["errors"].is_object(), "{r}");
    assert_eq!(
        r["errors_total"].as_u64().unwrap(),
        r["errors"]
            .as_object()
            .unwrap()
            .values()
            .map(|x| x.as_u64().unwrap())
            .sum::<u64>()
    );
    let per_second: u64 = r["per_second"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .sum();
    assert_eq!(per_second, r["ops"].as_u64().unwrap());
    assert_eq!(v["options"]["consistency"], "linearizable");
}
