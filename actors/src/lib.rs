//! `conclave-actors`: the actix pieces that host conclave's protocol cores — supervision
//! ([`supervisor`]: restart strategies, backoff and budgets on top of actix) and bounded,
//! batched mailboxes ([`mailbox`]: `BatchSender`).
//!
//! The protocol cores themselves are sans-IO and live in `conclave-core`; their simulator and
//! the linearizability checker in `conclave-sim`.

pub mod mailbox;
pub mod supervisor;
