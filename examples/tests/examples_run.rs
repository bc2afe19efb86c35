//! Smoke test of the bank example: the same code `cargo run -p examples --example bank` runs,
//! checked for the outcomes a deterministic replicated bank must produce.

#![allow(clippy::unwrap_used)]

#[path = "../examples/bank.rs"]
mod bank;

use bank::Refusal;

#[test]
fn bank_example_refuses_overdrafts_and_every_replica_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let run = actix::System::new()
        .block_on(bank::run(dir.path()))
        .unwrap();
    assert_eq!(
        run.outcomes,
        vec![
            Ok(100),
            Ok(50),
            Ok(70),
            Err(Refusal::InsufficientFunds {
                balance: 80,
                wanted: 500
            }),
            Err(Refusal::UnknownAccount("carol".into())),
            Ok(100),
        ]
    );
    let expected = vec![
        ("alice".to_owned(), Some(70)),
        ("bob".to_owned(), Some(100)),
        ("carol".to_owned(), None),
    ];
    assert_eq!(run.replicas.len(), 3);
    for (node, balances) in &run.replicas {
        assert_eq!(balances, &expected, "node {node} diverged");
    }
}
