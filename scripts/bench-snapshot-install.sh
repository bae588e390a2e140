#!/usr/bin/env bash
# Snapshot benchmark (docs/benchmarks.md, "Snapshots compressed as they are built"): a fresh local
# 3-node cluster (`dtm demo`, release build) that snapshots every 500 entries, loaded with RECORDS
# records of the disk benchmark; then node 3 is killed, its store deleted and the node started
# again, so that it receives the leader's snapshot. Prints the snapshot files, the time from the
# restart to `installed snapshot`, and peak resident memory (VmHWM) of the three nodes (the
# others' reset just before the restart).
# Usage: scripts/bench-snapshot-install.sh [RECORDS] [BASE_PORT]   (default 1000000 18500)
set -u
cd "$(dirname "$0")/.."
N="${1:-1000000}"
P="${2:-18500}"
BIN="${DTM_BIN:-target/release/dtm}"
[ -x "$BIN" ] || cargo build --locked --release -p dtm-node
D="$(mktemp -d /tmp/dtm-bench-snapshot-XXXXXX)/demo"
export DTM_SNAPSHOT_AFTER_LOGS=500 DTM_LOGS_KEPT_AFTER_SNAPSHOT=100
"$BIN" demo --dir "$D" --base-port "$P" --feed-interval-secs 3600 >"$D.demo.log" 2>&1 &
DEMO=$!
trap 'kill "${NEW:-0}" 2>/dev/null; kill -INT $DEMO 2>/dev/null; wait $DEMO 2>/dev/null; rm -rf "$(dirname "$D")"' EXIT
for _ in $(seq 1 90); do [ -s "$D/demo.json" ] && curl -sk "https://127.0.0.1:$P/ready" >/dev/null 2>&1 && break; sleep 1; done
"$BIN" bench --cluster "$D/demo.json" --payload-bytes 100 --disk-records "$N" >"$D.bench.out" 2>&1
grep -E "^loaded|^node|^target" "$D.bench.out" | tail -5
ls -l "$D"/node-*/store/raft-snapshot.pb
info() {  # node id, field → the field (a command line joined into words)
  python3 -c "import json; n=[x for x in json.load(open('$D/demo.json'))['nodes'] if x['id']==$1][0][ '$2' ]; print(' '.join(n) if isinstance(n, list) else n)"
}
kill -9 "$(info 3 pid)"; sleep 1; rm -rf "$D/node-3/store"
for id in 1 2; do echo 5 >"/proc/$(info "$id" pid)/clear_refs"; done
started=$(date +%s%N)
# shellcheck disable=SC2046 # the node's command line, split into words as the demo wrote it
$(info 3 cmd) >"$D.node3.log" 2>&1 &
NEW=$!
peak=0
while ! grep -q "installed snapshot" "$D.node3.log" 2>/dev/null; do
  h=$(awk '/VmHWM/{print $2}' "/proc/$NEW/status" 2>/dev/null || echo 0)
  [ "${h:-0}" -gt "$peak" ] && peak=$h
  [ $(( ($(date +%s%N) - started) / 1000000000 )) -lt 300 ] || { echo "no snapshot installed within 300 s"; exit 1; }
  sleep 0.2
done
echo "node 3: installed $(( ($(date +%s%N) - started) / 1000000 )) ms after it started; VmHWM ${peak} kB"
for id in 1 2; do echo "node $id: VmHWM since the restart $(awk '/VmHWM/{print $2}' "/proc/$(info "$id" pid)/status") kB"; done
grep "installed snapshot" "$D.node3.log" | tail -1
