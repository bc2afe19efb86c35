//! `conclave-ring`: virtual-node consistent hashing that maps keys to shards and shards to
//! ordered replica sets of nodes. Pure: no I/O, no async.
