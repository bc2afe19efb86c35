#!/bin/bash
# Where a sharded cluster's writes go on disk (issue 16 point 6): a 3-node release cluster
# with SHARDS shards (`conclave bench cluster --spawn 3 --shards SHARDS --target all`,
# 256 clients, 30 s); 15 s into the load, node 1's WAL counters (/metrics), write syscalls and
# bytes (/proc/PID/io) and CPU ticks (/proc/PID/stat) are sampled twice, 6 s apart, and
# printed side by side. Run under `flock /work/measure.lock` on a shared machine.
#
#   benches/shards/profile.sh 64; benches/shards/profile.sh 1   # BIN=path for another binary
set -u
cd "$(dirname "$0")/../.."
S="${1:-64}"
BIN="${BIN:-./target/release/conclave}"
OUT="$(mktemp)"
"$BIN" bench cluster --spawn 3 --shards "$S" --target all --clients 256 --duration-s 30 > "$OUT" 2>&1 &
B=$!
for _ in $(seq 1 120); do grep -q "started a" "$OUT" && break; sleep 0.5; done
D=$(grep -o "/tmp/conclave-bench-[0-9-]*" "$OUT" | head -1)
HTTP=$(grep -E '^http *=' "$D"/*1.toml | head -1 | sed 's/.*"\(.*\)"/\1/')
P=$(pgrep -P "$B" | head -1)
sleep 15
snap() {
  curl -s "http://$HTTP/metrics" | grep -E "^conclave_wal_(syncs_total|batch_requests_(sum|count))"
  grep -E "syscw|write_bytes" "/proc/$P/io"
  awk '{print "cpu_ticks", $14+$15}' "/proc/$P/stat"
}
A=$(snap); sleep 6; Z=$(snap)
echo "shards $S, node 1 pid $P, load $(cut -d' ' -f1-3 /proc/loadavg)"
paste <(echo "$A") <(echo "$Z")
wait "$B"
grep -E "^write|errors" "$OUT"
rm -f "$OUT"
