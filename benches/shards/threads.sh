#!/bin/bash
# Where a sharded cluster's CPU goes, per thread (issue 16 point 6): a 3-node release cluster
# with SHARDS shards (`conclave bench cluster --spawn 3 --shards SHARDS --target all`, C clients,
# default 256); 6 s into the load, every node's threads' CPU time (/proc/PID/task/TID/stat) and
# context switches (/proc/PID/task/TID/status), and node 1's WAL syncs, persist requests, apply
# batches, Raft frames sent and forwards (/metrics), are sampled twice, 8 s apart, and printed
# per write (node 1's applied entries: at replication factor 3 of 3 every node applies every
# write). Threads are listed by creation order (node.rank). Run under `flock /work/measure.lock`.
#
#   benches/shards/threads.sh 64; benches/shards/threads.sh 1   # BIN=path for another binary
set -u
cd "$(dirname "$0")/../.."
S="${1:-64}"
C="${C:-256}"
BIN="${BIN:-./target/release/conclave}"
OUT="$(mktemp)"
"$BIN" bench cluster --spawn 3 --shards "$S" --target all --clients "$C" --duration-s 22 > "$OUT" 2>&1 &
B=$!
for _ in $(seq 1 120); do grep -q "started a" "$OUT" && break; sleep 0.5; done
D=$(grep -o "/tmp/conclave-bench-[0-9-]*" "$OUT" | head -1)
HTTP=$(grep -E '^http *=' "$D"/*1.toml | head -1 | sed 's/.*"\(.*\)"/\1/')
PS=$(pgrep -P "$B" | head -3)
sleep 6
m() { curl -s "http://$HTTP/metrics" | awk '
/^conclave_raft_applied_index/ {a+=$2}
/^conclave_wal_syncs_total/ {w+=$2}
/^conclave_wal_batch_requests_sum/ {p+=$2}
/^conclave_apply_batch_seconds_count/ {ab+=$2}
/^conclave_raft_frames_sent_total/ {f+=$2}
/^conclave_shard_forwards_total/ {fw+=$2}
END {printf "%d %d %d %d %d %d", a, w, p, ab, f, fw}'; }
snap() {
  k=0
  for P in $PS; do
    k=$((k+1)); r=0
    for t in $(ls "/proc/$P/task" | sort -n); do
      r=$((r+1))
      echo "$k.$r $(awk '{print $14+$15}' "/proc/$P/task/$t/stat") $(awk '/^voluntary_ctxt/ {v=$2} /^nonvoluntary_ctxt/ {n=$2} END {print v, n}' "/proc/$P/task/$t/status")"
    done
  done
}
read -r a0 w0 p0 ab0 f0 fw0 <<<"$(m)"; s0=$(snap)
sleep 8
read -r a1 w1 p1 ab1 f1 fw1 <<<"$(m)"; s1=$(snap)
n=$((a1-a0))
echo "shards $S, $C clients, load $(cut -d' ' -f1-3 /proc/loadavg): node 1 applied $n entries in 8 s"
awk -v n=$n -v w=$((w1-w0)) -v p=$((p1-p0)) -v ab=$((ab1-ab0)) -v f=$((f1-f0)) -v fw=$((fw1-fw0)) 'BEGIN {printf "node 1 per write: WAL syncs %.3f, persist requests %.3f, apply batches %.3f, Raft frames sent %.3f, forwards %.3f\n", w/n, p/n, ab/n, f/n, fw/n}'
join <(echo "$s0" | sort) <(echo "$s1" | sort) | sort -V | awk -v n=$n '
{c=$5-$2; v=$6-$3; x=$7-$4; split($1,a,"."); tot[a[1]]+=c; cs[a[1]]+=v+x;
 if (c>0) printf "  thread %s: CPU %5.1f us/write, context switches %.3f/write\n", $1, c*10000/n, (v+x)/n}
END {for (k in tot) printf "  node %s: CPU %.1f us/write, context switches %.3f/write\n", k, tot[k]*10000/n, cs[k]/n}'
wait "$B"
grep -E "^write|errors" "$OUT"
rm -f "$OUT"
