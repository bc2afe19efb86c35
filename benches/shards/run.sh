#!/bin/sh
# Sharded vs one shard, side by side in one run (issue 16 point 6): for each cluster size, a
# fresh durable cluster of the release binary per configuration (`conclave bench cluster
# --spawn N --shards S`, replication factor 3, clients spread over every node, followers and
# non-leaders forwarding), 256 clients then 1 client writing 256-byte values for DURATION
# seconds each. Configurations alternate within a round; ROUNDS rounds. Prints the load
# average before each cell. Run it under `flock /work/measure.lock` on a shared machine.
#
#   benches/shards/run.sh                 # 3 and 5 nodes, 64 shards vs 1 shard vs unsharded
#   NODES="3" ROUNDS=2 DURATION=10 benches/shards/run.sh
set -eu
cd "$(dirname "$0")/../.."
NODES="${NODES:-3 5}"
SHARDS="${SHARDS:-64 1 0}"
ROUNDS="${ROUNDS:-1}"
DURATION="${DURATION:-10}"
BIN="${BIN:-./target/release/conclave}"
[ -x "$BIN" ] || cargo build --release -p conclave --bin conclave
round=1
while [ "$round" -le "$ROUNDS" ]; do
  for n in $NODES; do
    for s in $SHARDS; do
      target=all
      # Unsharded, writes sent to followers all came back as bad_response in the generator
      # (seen 2026-12-07, not investigated): the unsharded reference is driven at its leader.
      [ "$s" = 0 ] && target=leader
      for c in 256 1; do
        echo "== round $round: $n nodes, shards $s (0: unsharded), $c clients; load $(cut -d' ' -f1-3 /proc/loadavg)"
        "$BIN" bench cluster --spawn "$n" --shards "$s" --target "$target" --clients "$c" \
          --duration-s "$DURATION" --keyspace 100000 2>&1 | grep -E "^(write|started|[0-9]+ shards|leaders|errors)" || true
      done
    done
  done
  round=$((round + 1))
done
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
