//! `conclave-transport`: typed messages between nodes as length-prefixed MessagePack frames
//! over TCP (optionally mutual TLS), with one bounded outbound queue per peer and backpressure.
//! Generic over the message type; knows nothing of Raft.
