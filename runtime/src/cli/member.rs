//! `conclave member add|promote|remove|replace|drain|list`: the operator's membership commands,
//! clients of `POST /v1/cluster/learners|promote|remove|replace|drain` and `GET
//! /v1/cluster/config` (admin token when the cluster has tokens; any node: followers forward
//! changes to the leader, a drain to the node it names).

use super::{EndpointArg, EXIT_FAILURE, EXIT_OK};
use crate::api::{ChangeOutcome, ClusterConfig, NewMember, NodeId};
use crate::client::{Client, ClientError, ResponseFault};
use clap::{Args, Subcommand};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// `conclave member`.
#[derive(Debug, Args)]
pub struct MemberArgs {
    /// The node to talk to (any member: followers forward to the leader).
    #[command(flatten)]
    pub endpoint: EndpointArg,
    /// Print the JSON answer instead of a summary.
    #[arg(long, global = true)]
    pub json: bool,
    /// The operation.
    #[command(subcommand)]
    pub op: MemberOp,
}

/// `conclave member …`.
#[derive(Debug, Subcommand)]
pub enum MemberOp {
    /// Add node ID as a learner (it receives the log without voting). Start it first with a
    /// config from `conclave init --join`.
    Add {
        /// The new node's id.
        id: NodeId,
        /// Its transport address (`node.listen`).
        #[arg(long)]
        addr: SocketAddr,
        /// Its HTTP address (`node.http`).
        #[arg(long)]
        http: SocketAddr,
        /// Wait until the learner has caught up (is within `promote_max_lag` of the leader,
        /// so `member promote` will be accepted).
        #[arg(long)]
        wait: bool,
        /// How long `--wait` waits, in seconds.
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
        /// Refuse (409 config_changed) unless this is the configuration in force.
        #[arg(long)]
        expected_config_id: Option<u64>,
    },
    /// Make learner ID a voter (409 not_caught_up while it lags).
    Promote {
        /// The learner's id.
        id: NodeId,
        /// Refuse (409 config_changed) unless this is the configuration in force.
        #[arg(long)]
        expected_config_id: Option<u64>,
    },
    /// Remove voter or learner ID (a removed leader steps down once the change commits).
    Remove {
        /// The node's id.
        id: NodeId,
        /// Refuse (409 config_changed) unless this is the configuration in force.
        #[arg(long)]
        expected_config_id: Option<u64>,
    },
    /// Replace voter OLD by a new node: added as a learner, swapped in once caught up.
    Replace {
        /// The voter to remove.
        old: NodeId,
        /// The new node's id.
        #[arg(long)]
        id: NodeId,
        /// Its transport address.
        #[arg(long)]
        addr: SocketAddr,
        /// Its HTTP address.
        #[arg(long)]
        http: SocketAddr,
        /// How long to keep retrying while the new node catches up, in seconds.
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
        /// Refuse (409 config_changed) unless this is the configuration in force when the
        /// replace starts.
        #[arg(long)]
        expected_config_id: Option<u64>,
    },
    /// Prepare node ID for maintenance or removal: every group it leads hands leadership to a
    /// caught-up voter, and it takes no leadership (still votes and replicates) until it is
    /// undrained (`--undo`) or restarted.
    Drain {
        /// The node's id.
        id: NodeId,
        /// Make the node electable again.
        #[arg(long)]
        undo: bool,
    },
    /// Show the configuration: voters, learners with their lag, config id, pending change.
    List,
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    actix_web::rt::System::new().block_on(f)
}

/// How often `--wait` and `replace` look again.
const POLL: Duration = Duration::from_millis(200);

/// Whether an error is worth retrying while waiting: a 503 (no leader, overloaded), an
/// unreachable node (restarting), or a replace whose learner has not caught up yet.
fn transient(e: &ClientError) -> bool {
    match e {
        ClientError::Api { status, code, .. } => *status == 503 || code == "not_caught_up",
        ClientError::Unreachable { .. } => true,
        _ => false,
    }
}

/// `conclave member …`.
pub(super) fn run(args: MemberArgs) -> anyhow::Result<u8> {
    let client = args.endpoint.client()?;
    let json = args.json;
    block_on(async move {
        match args.op {
            MemberOp::Add {
                id,
                addr,
                http,
                wait,
                timeout_s,
                expected_config_id,
            } => {
                let member = NewMember { id, addr, http };
                let outcome = client.add_learner(&member, expected_config_id).await?;
                if !wait {
                    print_outcome(json, &format!("node {id} added as a learner"), &outcome)?;
                    return Ok(EXIT_OK);
                }
                if !json {
                    println!(
                        "node {id} added as a learner (config {}); waiting until it has caught up",
                        outcome.config.config_id
                    );
                }
                let started = Instant::now();
                match wait_caught_up(&client, id, Duration::from_secs(timeout_s)).await? {
                    Some(config) => {
                        if json {
                            println!("{}", serde_json::to_string_pretty(&config)?);
                        } else {
                            println!(
                                "node {id} has caught up after {:.1} s; promote it with: conclave member promote {id}",
                                started.elapsed().as_secs_f64()
                            );
                        }
                        Ok(EXIT_OK)
                    }
                    None => {
                        eprintln!(
                            "node {id} did not catch up within {timeout_s} s; it stays a learner \
                             (see `conclave member list`)"
                        );
                        Ok(EXIT_FAILURE)
                    }
                }
            }
            MemberOp::Promote {
                id,
                expected_config_id,
            } => {
                let outcome = client.promote(id, expected_config_id).await?;
                print_outcome(json, &format!("node {id} is a voter"), &outcome)?;
                Ok(EXIT_OK)
            }
            MemberOp::Remove {
                id,
                expected_config_id,
            } => {
                let outcome = client.remove(id, expected_config_id).await?;
                print_outcome(json, &format!("node {id} removed"), &outcome)?;
                Ok(EXIT_OK)
            }
            MemberOp::Replace {
                old,
                id,
                addr,
                http,
                timeout_s,
                expected_config_id,
            } => {
                let member = NewMember { id, addr, http };
                let deadline = Instant::now() + Duration::from_secs(timeout_s);
                let mut expected = expected_config_id;
                loop {
                    match client.replace(old, &member, expected).await {
                        Ok(outcome) => {
                            print_outcome(
                                json,
                                &format!("node {old} replaced by node {id}"),
                                &outcome,
                            )?;
                            return Ok(EXIT_OK);
                        }
                        Err(e) if transient(&e) && Instant::now() < deadline => {
                            if !json {
                                eprintln!("waiting: {e}");
                            }
                            // A learner added by the first attempt changed the configuration:
                            // later attempts resume it rather than expect the old one.
                            expected = None;
                            actix::clock::sleep(POLL).await;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            MemberOp::Drain { id, undo } => {
                let outcome = client.drain(id, undo).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&outcome)?);
                } else if outcome.drained {
                    let handed: Vec<String> = outcome
                        .groups
                        .iter()
                        .filter_map(|g| {
                            g.hand_off_to
                                .map(|to| format!("group {} to node {to}", g.group))
                        })
                        .collect();
                    if handed.is_empty() {
                        println!("OK: node {id} drained (it led no group)");
                    } else {
                        println!(
                            "OK: node {id} drained; handing leadership off: {}",
                            handed.join(", ")
                        );
                    }
                } else {
                    println!("OK: node {id} undrained (it may lead again)");
                }
                Ok(EXIT_OK)
            }
            MemberOp::List => {
                let config = client.cluster_config().await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&config)?);
                } else {
                    print!("{}", config_table(&config));
                }
                Ok(EXIT_OK)
            }
        }
    })
}

/// Polls the configuration until learner `id` has caught up (`Some(config)`), or `timeout`
/// passes (`None`). Transient errors (leader changes) are retried; others end the wait.
async fn wait_caught_up(
    client: &Client,
    id: NodeId,
    timeout: Duration,
) -> Result<Option<ClusterConfig>, ClientError> {
    let deadline = Instant::now() + timeout;
    let mut last_report = Instant::now();
    loop {
        match client.cluster_config().await {
            Ok(config) => {
                if config.voters.iter().any(|m| m.id == id) {
                    // Promoted meanwhile (by someone else): caught up by definition.
                    return Ok(Some(config));
                }
                let Some(learner) = config.learners.iter().find(|m| m.id == id) else {
                    return Err(ClientError::BadResponse {
                        endpoint: client.endpoint().to_owned(),
                        fault: ResponseFault::NoLongerMember {
                            node: id,
                            config_id: config.config_id,
                        },
                    });
                };
                if learner.caught_up == Some(true) {
                    return Ok(Some(config));
                }
                if last_report.elapsed() >= Duration::from_secs(5) {
                    last_report = Instant::now();
                    eprintln!(
                        "node {id}: {} entries behind (promotable at {})",
                        learner
                            .lag
                            .map_or_else(|| "?".to_owned(), |l| l.to_string()),
                        config.promote_max_lag
                    );
                }
            }
            Err(e) if transient(&e) => {}
            Err(e) => return Err(e),
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        actix::clock::sleep(POLL).await;
    }
}

fn print_outcome(json: bool, what: &str, outcome: &ChangeOutcome) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(outcome)?);
    } else {
        println!(
            "OK: {what} (configuration {}, index {}, term {})",
            outcome.config.config_id, outcome.index, outcome.term
        );
        print!("{}", config_table(&outcome.config));
    }
    Ok(())
}

/// The configuration as a table (`member list`).
pub(crate) fn config_table(c: &ClusterConfig) -> String {
    let mut out = String::new();
    let leader = c
        .leader_id
        .map_or_else(|| "none".to_owned(), |l| l.to_string());
    let _ = writeln!(
        out,
        "configuration {}{}: leader {leader}, term {}, commit {}, last index {}",
        c.config_id,
        if c.change_pending {
            " (change pending)"
        } else {
            ""
        },
        c.term,
        c.commit_index,
        c.last_index
    );
    if !c.outgoing_voters.is_empty() {
        let old: Vec<String> = c.outgoing_voters.iter().map(NodeId::to_string).collect();
        let _ = writeln!(
            out,
            "joint: the old voters [{}] must also agree until the change completes",
            old.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "{:>4}  {:<8} {:<22} {:<22} {:>10} {:>8}  CAUGHT_UP",
        "ID", "ROLE", "ADDR", "HTTP", "MATCH", "LAG"
    );
    let addr = |a: Option<SocketAddr>| a.map_or_else(|| "-".to_owned(), |a| a.to_string());
    let num = |n: Option<u64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
    for (role, members) in [("voter", &c.voters), ("learner", &c.learners)] {
        for m in members {
            let role = if Some(m.id) == c.leader_id {
                "leader"
            } else {
                role
            };
            let drained = if m.drained { "  drained" } else { "" };
            let caught = match m.caught_up {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            };
            let _ = writeln!(
                out,
                "{:>4}  {:<8} {:<22} {:<22} {:>10} {:>8}  {caught}{drained}",
                m.id,
                role,
                addr(m.addr),
                addr(m.http),
                num(m.match_index),
                num(m.lag),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ConfigMember;

    #[test]
    fn the_table_shows_voters_learners_and_lag() {
        let member = |id, lag: Option<u64>, caught_up| ConfigMember {
            id,
            addr: Some(format!("127.0.0.1:700{id}").parse().unwrap()),
            http: Some(format!("127.0.0.1:710{id}").parse().unwrap()),
            match_index: lag.map(|l| 10_000 - l),
            lag,
            caught_up,
            drained: false,
        };
        let c = ClusterConfig {
            config_id: 42,
            voters: vec![
                member(NodeId::new(1), None, None),
                member(NodeId::new(2), Some(0), None),
            ],
            learners: vec![member(NodeId::new(4), Some(5000), Some(false))],
            outgoing_voters: vec![],
            change_pending: true,
            leader_id: Some(NodeId::new(1)),
            term: 3,
            commit_index: 40,
            last_index: 10_000,
            promote_max_lag: 1000,
        };
        let t = config_table(&c);
        assert!(
            t.starts_with("configuration 42 (change pending): leader 1, term 3"),
            "{t}"
        );
        assert!(t.contains("   1  leader"), "{t}");
        assert!(t.contains("   2  voter"), "{t}");
        let learner = t.lines().find(|l| l.contains("   4  learner")).unwrap();
        assert!(learner.contains("127.0.0.1:7004"), "{learner}");
        assert!(learner.contains("5000"), "{learner}");
        assert!(learner.ends_with("no"), "{learner}");
    }

    #[test]
    fn only_waiting_errors_are_retried() {
        let api = |status, code: &str| ClientError::Api {
            status,
            code: code.to_owned(),
            message: String::new(),
            retry_after: None,
        };
        assert!(transient(&api(503, "no_leader")));
        assert!(transient(&api(409, "not_caught_up")));
        assert!(!transient(&api(409, "config_changed")));
        assert!(!transient(&api(400, "invalid_change")));
        assert!(!transient(&api(403, "forbidden")));
    }
}
