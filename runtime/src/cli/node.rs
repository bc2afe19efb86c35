//! `conclave node`: one node with the built-in key-value machine and its HTTP API, in the
//! foreground until SIGINT or SIGTERM. Starting both lives here, above `node` and `http`, so
//! that neither of them imports the other: the HTTP layer knows the node only through
//! [`crate::api::KvService`], which [`NodeHandle`](crate::node::NodeHandle) implements.

use crate::config::Config;
use crate::http::{HttpOptions, ServerError};
use crate::node::{Node, NodeError};
use crate::state_machine::KvMachine;
use crate::storage::state_store::StoreError;
use conclave_core::ids::GroupId;

/// Why `conclave node` could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The node could not start (storage, transport, gossip, configuration).
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The HTTP API could not start (`[http]` token or TLS files, the listener).
    #[error("HTTP API: {0}")]
    Http(#[from] ServerError),
    /// The data directory holds the other storage engine's files.
    #[error("cannot open the state machine: {0}")]
    Engine(#[source] StoreError),
    /// The signal handlers could not be installed.
    #[error("cannot wait for signals: {0}")]
    Signals(#[source] std::io::Error),
}

/// Runs a node with the built-in key-value machine and serves its HTTP API until SIGINT or
/// SIGTERM, then stops the server (letting requests in flight finish) and the node.
pub fn run_blocking(config: Config) -> Result<(), RunError> {
    let system = actix::System::new();
    system.block_on(async move {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .ok();
        // Token and TLS files first: a node that cannot serve its API securely does not join.
        let http_options = HttpOptions::from_config(&config)?;
        let data_dir = config.node.data_dir.clone();
        let engine = config.storage.engine;
        // A data directory of the other engine: refuse before anything listens.
        crate::storage::state_store::check_engine(engine, &data_dir).map_err(RunError::Engine)?;
        // Group 0's machine in the data directory itself (as before groups could be created);
        // every other group's in `data_dir/groups/<id>`.
        let mut builder = Node::builder()
            .config(config.clone())
            .state_machine_for_groups(move |group| {
                if group == GroupId::FIRST {
                    return KvMachine::open_engine(engine, &data_dir);
                }
                let dir = data_dir.join("groups").join(group.to_string());
                std::fs::create_dir_all(&dir).map_err(|e| StoreError::Open {
                    engine: crate::storage::state_store::engine_name(engine),
                    path: dir.clone(),
                    source: Box::new(e),
                })?;
                KvMachine::open_engine(engine, &dir)
            })
            // Routes keys to shards when `[ring] sharded = true`.
            .sharding();
        if let Some(handle) = recorder {
            builder = builder.metrics(handle);
        }
        let node = builder.start().await?;
        let server = crate::http::serve(node.handle(), &config, http_options)?;
        let server_handle = server.handle();
        actix::spawn(server);
        tracing::info!(
            node = %config.node.id,
            transport = %node.transport_addr(),
            http = %config.node.http,
            "node started"
        );
        let waited = wait_for_signal().await;
        tracing::info!(node = %config.node.id, "shutting down");
        server_handle.stop(true).await;
        node.shutdown().await;
        waited.map_err(RunError::Signals)
    })
}

async fn wait_for_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
