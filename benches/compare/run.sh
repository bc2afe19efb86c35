#!/usr/bin/env bash
# conclave vs etcd on this machine, same load shape, both durable.
#
#   benches/compare/run.sh            # DURATION=10 CONCURRENCY="1 64 256" by default
#   CONCLAVE_BIN=/path/to/conclave benches/compare/run.sh   # a prebuilt binary (A/B runs)
#
# Installs etcd-server/etcd-client (and wrk, jq) from Debian's packages when missing,
# builds conclave in release mode, starts a 3-member etcd cluster and a 3-node conclave
# cluster on loopback (data on disk in a temporary directory, fsync on commit in both), and
# drives each with wrk + kv.lua: writes (PUT of 256-byte values to random 8-byte keys) and
# linearizable reads, at each concurrency, against the leader. Prints a markdown table and
# writes it to $OUT. Everything it started is stopped on exit (trap).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/benches/compare"
DURATION=${DURATION:-10}
CONCURRENCY=${CONCURRENCY:-"1 64 256"}
KEYSPACE=${KEYSPACE:-10000}
READ_KEYS=${READ_KEYS:-1000}
OUT=${OUT:-$HERE/results.md}
ETCD_BASE=${ETCD_BASE:-23790}
CONCLAVE_BASE=${CONCLAVE_BASE:-27000}
# Data on the same disk as the repository (not tmpfs): fsync must cost what it costs.
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/conclave-compare.XXXXXX")
PIDS=()

log() { echo "[compare] $*" >&2; }

cleanup() {
  local rc=$?
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
  done
  if [ "$rc" -ne 0 ]; then
    log "failed (exit $rc); logs kept in $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

need_packages=()
command -v etcd >/dev/null || need_packages+=(etcd-server)
command -v etcdctl >/dev/null || need_packages+=(etcd-client)
command -v wrk >/dev/null || need_packages+=(wrk)
command -v jq >/dev/null || need_packages+=(jq)
command -v curl >/dev/null || need_packages+=(curl)
if [ "${#need_packages[@]}" -gt 0 ]; then
  log "installing ${need_packages[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_packages[@]}" >&2
fi

if [ -n "${CONCLAVE_BIN:-}" ]; then
  CONCLAVE=$CONCLAVE_BIN
else
  log "building conclave (release)"
  (cd "$ROOT" && cargo build --release -p conclave --bin conclave >&2)
  CONCLAVE="$ROOT/target/release/conclave"
fi

# --- etcd: 3 members, client ports ETCD_BASE+i, peer ports ETCD_BASE+10+i -------------------
cluster=""
for i in 1 2 3; do
  cluster+="${cluster:+,}e$i=http://127.0.0.1:$((ETCD_BASE + 10 + i))"
done
for i in 1 2 3; do
  mkdir -p "$WORK/etcd"
  etcd --name "e$i" --data-dir "$WORK/etcd/e$i" \
    --listen-client-urls "http://127.0.0.1:$((ETCD_BASE + i))" \
    --advertise-client-urls "http://127.0.0.1:$((ETCD_BASE + i))" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_BASE + 10 + i))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_BASE + 10 + i))" \
    --initial-cluster "$cluster" --initial-cluster-state new \
    --initial-cluster-token conclave-compare \
    --logger zap --log-level warn >"$WORK/etcd/e$i.log" 2>&1 &
  PIDS+=($!)
done

# --- conclave: 3 nodes, transport CONCLAVE_BASE+i, HTTP CONCLAVE_BASE+100+i ------------------
"$CONCLAVE" init --nodes 3 --dir "$WORK/conclave" --base-port "$CONCLAVE_BASE" >&2
for i in 1 2 3; do
  RUST_LOG=warn "$CONCLAVE" node --config "$WORK/conclave/n$i.toml" \
    >"$WORK/conclave/n$i.log" 2>&1 &
  PIDS+=($!)
done

etcd_endpoints="http://127.0.0.1:$((ETCD_BASE + 1)),http://127.0.0.1:$((ETCD_BASE + 2)),http://127.0.0.1:$((ETCD_BASE + 3))"

etcd_leader() {
  ETCDCTL_API=3 etcdctl --endpoints="$etcd_endpoints" endpoint status -w json 2>/dev/null |
    jq -r '.[] | select(.Status.leader == .Status.header.member_id) | .Endpoint' | head -n1
}

conclave_leader() {
  local i doc
  for i in 1 2 3; do
    doc=$(curl -fsS "http://127.0.0.1:$((CONCLAVE_BASE + 100 + i))/v1/cluster" 2>/dev/null) || continue
    echo "$doc" | jq -r 'if .leader_id == null then empty else . as $d
      | ($d.members[] | select(.id == $d.leader_id) | "http://" + .http) end' && return 0
  done
}

wait_for() {
  local what=$1 fn=$2 deadline=$((SECONDS + 60)) url=""
  while [ $SECONDS -lt $deadline ]; do
    url=$($fn || true)
    if [ -n "$url" ]; then echo "$url"; return 0; fi
    sleep 0.5
  done
  log "$what has no leader after 60 s; see $WORK"
  return 1
}

ETCD_URL=$(wait_for etcd etcd_leader)
CONCLAVE_URL=$(wait_for conclave conclave_leader)
log "etcd leader $ETCD_URL, conclave leader $CONCLAVE_URL"

# run TARGET URL OP CONNECTIONS KEYSPACE
#   -> "rps p50 p99 errors requests non2xx connect read write timeout"
run() {
  local target=$1 url=$2 op=$3 c=$4 keys=$5 threads=2
  [ "$c" -lt 2 ] && threads=1
  wrk -t"$threads" -c"$c" -d"${DURATION}s" --timeout 10s -s "$HERE/kv.lua" "$url" \
    -- "$target" "$op" "$keys" "$threads" | awk '/^RESULT/ { print $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 }'
}

# Reads must find values: write every key of the read keyspace first, on both.
for t in etcd conclave; do
  url=$ETCD_URL; [ "$t" = conclave ] && url=$CONCLAVE_URL
  log "filling $READ_KEYS keys on $t"
  DURATION=5 run "$t" "$url" fill 16 "$READ_KEYS" >/dev/null
done

declare -A R
for op in put get; do
  keys=$KEYSPACE; [ "$op" = get ] && keys=$READ_KEYS
  for c in $CONCURRENCY; do
    for t in conclave etcd; do
      url=$ETCD_URL; [ "$t" = conclave ] && url=$CONCLAVE_URL
      log "$t $op c=$c ${DURATION}s"
      R[$t.$op.$c]=$(run "$t" "$url" "$op" "$c" "$keys")
      log "  -> ${R[$t.$op.$c]} (req/s p50µs p99µs errors requests; errors: non-2xx connect read write timeout)"
    done
  done
done

{
  echo "| op | clients | conclave ops/s | etcd ops/s | conclave/etcd | conclave p50 | etcd p50 | conclave p99 | etcd p99 | errors (conclave/etcd) |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  for op in put get; do
    name=write; [ "$op" = get ] && name="linearizable read"
    for c in $CONCURRENCY; do
      read -r crps cp50 cp99 cerr _ <<<"${R[conclave.$op.$c]}"
      read -r erps ep50 ep99 eerr _ <<<"${R[etcd.$op.$c]}"
      awk -v n="$name" -v c="$c" -v cr="$crps" -v er="$erps" -v c50="$cp50" -v e50="$ep50" \
        -v c99="$cp99" -v e99="$ep99" -v ce="$cerr" -v ee="$eerr" 'BEGIN {
          ratio = (er > 0) ? sprintf("%.2fx", cr / er) : "-"
          printf "| %s | %d | %.0f | %.0f | %s | %.2f ms | %.2f ms | %.2f ms | %.2f ms | %d / %d |\n",
            n, c, cr, er, ratio, c50 / 1000, e50 / 1000, c99 / 1000, e99 / 1000, ce, ee }'
    done
  done
} | tee "$OUT"
log "table written to $OUT (load average at the end: $(cat /proc/loadavg))"
