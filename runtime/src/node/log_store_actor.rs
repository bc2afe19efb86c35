//! The node's log-store actor: every group's persist requests go through one write-ahead log,
//! with group commit — the requests that queue up while one `fdatasync` runs are written by
//! the next, so many groups and many proposals share each sync.
//!
//! It runs on its own arbiter (thread) because `fdatasync` blocks. It also keeps each group's
//! durable state in memory so that a restarted group actor can rebuild its Raft core from
//! exactly what is durable without re-reading the disk.

use crate::config::PersistenceStrategy;
use crate::storage::log_store::{LogStore, LogStoreError, RecoveredGroup};
use actix::prelude::*;
use conclave_actors::raft::{GroupId, PersistRequest};
use std::collections::BTreeMap;
use tokio::sync::oneshot;

/// Persist one group's request; the reply comes once it is durable (`disk_first`) or buffered
/// (`mem_first`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Persist {
    /// The group.
    pub group: GroupId,
    /// What to write.
    pub req: PersistRequest,
    /// Told the outcome.
    pub done: oneshot::Sender<Result<u64, String>>,
}

/// The durable state of one group (after syncing anything buffered).
#[derive(Message)]
#[rtype(result = "Result<RecoveredGroup, String>")]
pub struct Recover {
    /// The group.
    pub group: GroupId,
}

struct Flush;
impl Message for Flush {
    type Result = ();
}

/// The actor. See the module docs.
pub struct LogStoreActor {
    store: LogStore,
    mirror: BTreeMap<GroupId, RecoveredGroup>,
    strategy: PersistenceStrategy,
    flush_threshold: usize,
    flush_interval: std::time::Duration,
    waiting: Vec<(oneshot::Sender<Result<u64, String>>, u64)>,
    buffered: usize,
    flush_scheduled: bool,
    /// Set once the disk failed: every later request fails (the node must stop, not pretend).
    failed: Option<String>,
}

impl LogStoreActor {
    /// Wraps an opened store and what its recovery found.
    pub fn new(
        store: LogStore,
        recovered: BTreeMap<GroupId, RecoveredGroup>,
        strategy: PersistenceStrategy,
        flush_threshold: usize,
        flush_interval_ms: u64,
    ) -> Self {
        LogStoreActor {
            store,
            mirror: recovered,
            strategy,
            flush_threshold,
            flush_interval: std::time::Duration::from_millis(flush_interval_ms),
            waiting: Vec::new(),
            buffered: 0,
            flush_scheduled: false,
            failed: None,
        }
    }

    fn sync(&mut self) {
        let result = match &self.failed {
            Some(e) => Err(e.clone()),
            None => self.store.sync().map_err(|e| e.to_string()),
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, "write-ahead log sync failed; refusing further writes");
            self.failed = Some(e.clone());
        }
        metrics::counter!("conclave_wal_syncs_total").increment(1);
        metrics::histogram!("conclave_wal_batch_requests").record(self.buffered as f64);
        self.buffered = 0;
        for (tx, seq) in self.waiting.drain(..) {
            let _ = tx.send(result.clone().map(|_| seq));
        }
    }

    fn record(&mut self, group: GroupId, req: &PersistRequest) {
        let g = self.mirror.entry(group).or_default();
        if let Some(hs) = req.hard_state {
            g.hard_state = hs;
        }
        if let Some(from) = req.truncate_from {
            g.entries.retain(|e| e.index < from);
        }
        if let Some(first) = req.entries.first().map(|e| e.index) {
            g.entries.retain(|e| e.index < first);
            g.entries.extend(req.entries.iter().cloned());
        }
    }
}

impl Actor for LogStoreActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(16 * 1024);
        if self.strategy == PersistenceStrategy::MemFirst {
            ctx.run_interval(self.flush_interval, |act, _| {
                if act.buffered > 0 {
                    act.sync();
                }
            });
        }
    }

    fn stopping(&mut self, _: &mut Context<Self>) -> Running {
        if self.buffered > 0 {
            self.sync();
        }
        Running::Stop
    }
}

impl Handler<Persist> for LogStoreActor {
    type Result = ();

    fn handle(&mut self, msg: Persist, ctx: &mut Context<Self>) {
        if let Some(e) = &self.failed {
            let _ = msg.done.send(Err(e.clone()));
            return;
        }
        if let Err(e) = self.store.write(msg.group, &msg.req) {
            let e = match e {
                LogStoreError::Wal(w) => w.to_string(),
                other => other.to_string(),
            };
            tracing::error!(group = msg.group, error = %e, "write-ahead log append failed");
            let _ = msg.done.send(Err(e));
            return;
        }
        self.record(msg.group, &msg.req);
        self.buffered += 1;
        match self.strategy {
            PersistenceStrategy::DiskFirst => {
                self.waiting.push((msg.done, msg.req.seq));
                if !self.flush_scheduled {
                    // Mailbox messages are handled before notified ones, so every request
                    // already queued joins this batch: one fdatasync for all of them.
                    self.flush_scheduled = true;
                    ctx.notify(Flush);
                }
            }
            PersistenceStrategy::MemFirst => {
                // Weaker by design (documented): reported done once buffered; flushed by
                // size or interval.
                let _ = msg.done.send(Ok(msg.req.seq));
                if self.buffered >= self.flush_threshold {
                    self.sync();
                }
            }
        }
    }
}

impl Handler<Flush> for LogStoreActor {
    type Result = ();

    fn handle(&mut self, _: Flush, _: &mut Context<Self>) {
        self.flush_scheduled = false;
        self.sync();
    }
}

impl Handler<Recover> for LogStoreActor {
    type Result = Result<RecoveredGroup, String>;

    fn handle(&mut self, msg: Recover, _: &mut Context<Self>) -> Self::Result {
        // What a restarted core sees must be durable already.
        if self.buffered > 0 {
            self.sync();
        }
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        Ok(self.mirror.get(&msg.group).cloned().unwrap_or_default())
    }
}
