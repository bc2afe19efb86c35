#!/usr/bin/env bash
# CPU per write of a 3-node conclave cluster under the compare load (issue 15 point 3): a fresh
# durable cluster of BIN on loopback (`conclave init --nodes 3`), `wrk` PUTs of 256-byte values
# on 10,000 keys to the leader (benches/compare/kv.lua) with CLIENTS connections for SECS
# seconds; from 3 s into the load, for 8 s, each node's CPU time (/proc/PID/stat), the
# machine's idle share (/proc/stat) and, with PERF set, a `perf record -g` of the leader
# (written to $PERF). Prints wrk's result, each node's cores and µs of CPU per write, the idle
# share, and the leader's apply-run summary (`conclave_apply_batch_seconds`).
#
#   benches/compare/cpu.sh target/release/conclave 64 14
#   PERF=/tmp/leader.data benches/compare/cpu.sh target/release/conclave 64 14
#
# Needs wrk, jq and curl (benches/compare/run.sh installs them). On a shared machine run it
# under `flock /work/measure.lock`.
set -euo pipefail
BIN=$1
C=${2:-64}
S=${3:-14}
[ "$S" -ge 12 ] || { echo "SECS must be at least 12 (the sample is seconds 3-11)" >&2; exit 2; }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BASE=${CONCLAVE_BASE:-28000}
W=$(mktemp -d "${TMPDIR:-/var/tmp}/conclave-cpu.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
"$BIN" init --nodes 3 --dir "$W" --base-port "$BASE" >/dev/null 2>&1
# SNAPSHOT_ENTRIES=N: `[snapshot] threshold_entries` for the run (default: init's).
if [ -n "${SNAPSHOT_ENTRIES:-}" ]; then
  sed -i "s/^threshold_entries = .*/threshold_entries = $SNAPSHOT_ENTRIES/" "$W"/n[123].toml
fi
for i in 1 2 3; do
  RUST_LOG=warn "$BIN" node --config "$W/n$i.toml" >"$W/n$i.log" 2>&1 &
  PIDS+=($!)
done
L=""
for _ in $(seq 1 120); do
  for i in 1 2 3; do
    d=$(curl -fsS "http://127.0.0.1:$((BASE + 100 + i))/v1/cluster" 2>/dev/null) || continue
    L=$(echo "$d" | jq -r 'if .leader_id == null then empty else . as $d
      | ($d.members[] | select(.id == $d.leader_id) | .http) end')
    [ -n "$L" ] && break
  done
  [ -n "$L" ] && break
  sleep 0.5
done
[ -n "$L" ] || { echo "no leader after 60 s" >&2; exit 1; }
LP=""
for i in 1 2 3; do [ "127.0.0.1:$((BASE + 100 + i))" = "$L" ] && LP=${PIDS[$((i - 1))]}; done
echo "leader $L (pid $LP)"
# A short warm-up so that connections and the first snapshot are behind the sample.
wrk -t2 -c16 -d3s -s "$HERE/kv.lua" "http://$L" -- conclave put 10000 2 >/dev/null
cpu() { for p in "${PIDS[@]}"; do awk '{printf "%d ", $14 + $15}' "/proc/$p/stat"; done; }
idle() { awk '/^cpu / {print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
th=2
[ "$C" -lt 2 ] && th=1
wrk -t"$th" -c"$C" -d"${S}s" --timeout 10s -s "$HERE/kv.lua" "http://$L" -- conclave put 10000 "$th" >"$W/wrk.out" &
WP=$!
sleep 3
A=$(cpu)
I1=$(idle)
if [ -n "${PERF:-}" ]; then
  perf record -F 499 -g -p "$LP" -o "$PERF" -- sleep 8 >/dev/null 2>&1
else
  sleep 8
fi
B=$(cpu)
I2=$(idle)
wait "$WP"
curl -fsS "http://$L/metrics" | grep -E '^conclave_apply_batch_seconds\{.*quantile="(0.5|0.99|1)"' || true
R=$(awk '/^RESULT/ {print $2}' "$W/wrk.out")
echo "wrk (req/s p50µs p99µs errors requests ...): $(awk '/^RESULT/ {$1 = ""; print}' "$W/wrk.out")"
read -r -a CA <<<"$A"
read -r -a CB <<<"$B"
for k in "${!PIDS[@]}"; do
  tag=""
  [ "${PIDS[$k]}" = "$LP" ] && tag=" (leader)"
  awk -v a="${CA[$k]}" -v b="${CB[$k]}" -v r="$R" -v p="${PIDS[$k]}" -v t="$tag" 'BEGIN {
    c = (b - a) / 100 / 8; printf "node pid %s%s: %.2f cores, %.1f µs/write\n", p, t, c, c * 1e6 / r }'
done
read -r i1 t1 <<<"$I1"
read -r i2 t2 <<<"$I2"
awk -v a="$i1" -v b="$i2" -v c="$t1" -v d="$t2" -v r="$R" 'BEGIN {
  printf "machine idle %.1f%%, %.0f writes/s\n", (b - a) * 100 / (d - c), r }'
