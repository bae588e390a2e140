#!/usr/bin/env bash
# What monitoring costs ingestion (issue 10: metrics and probes < 3 % of throughput).
#
# Alternates fresh 3-node `dtm demo` clusters with monitoring on (the defaults: recorder, HTTP
# layer, sampler, probes every 30 s) and off (DTM_METRICS=false DTM_PROBES=false), loads each with
# `dtm bench`, and prints per run the throughput and the CPU time the three node processes used per
# acknowledged record (utime + stime from /proc, steadier than throughput on a small machine).
#
#   scripts/bench-monitoring.sh [ROUNDS] [CLIENTS] [SECONDS]      (defaults 4, 64,500, 15)
#
# Needs a release build (`cargo build --release -p dtm-node`); DTM_BIN overrides the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-4}"
CLIENTS="${2:-64,500}"
SECONDS_PER_LEVEL="${3:-15}"
BIN="${DTM_BIN:-target/release/dtm}"
WORK="$(mktemp -d /tmp/dtm-bench-mon.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

cpu_ticks() { # sum of utime+stime of the nodes listed in a demo.json
  python3 - "$1" <<'EOF'
import json, sys
total = 0
for n in json.load(open(sys.argv[1]))["nodes"]:
    with open(f"/proc/{n['pid']}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    total += int(fields[11]) + int(fields[12])
print(total)
EOF
}

run() { # mode round
  local mode="$1" round="$2" dir="$WORK/$1-$2" port=$((17443 + 10 * $2)) pid env=()
  [ "$mode" = off ] && env=(DTM_METRICS=false DTM_PROBES=false)
  env "${env[@]}" "$BIN" demo --dir "$dir" --base-port "$port" --feed-interval-secs 5 >"$dir.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 600); do [ -f "$dir/demo.json" ] && break; sleep 0.1; done
  [ -f "$dir/demo.json" ] || { echo "demo did not start: $(tail -5 "$dir.log")" >&2; kill "$pid"; return 1; }
  local before after
  before=$(cpu_ticks "$dir/demo.json")
  "$BIN" bench --cluster "$dir/demo.json" --clients "$CLIENTS" --duration-secs "$SECONDS_PER_LEVEL" \
    --out "$dir.json" >/dev/null
  after=$(cpu_ticks "$dir/demo.json")
  kill -INT "$pid"; wait "$pid" || true
  python3 - "$dir.json" "$mode" "$round" "$before" "$after" "$(getconf CLK_TCK)" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1])); mode, rnd, before, after, tck = sys.argv[2], sys.argv[3], *map(int, sys.argv[4:])
levels = doc["levels"]
acked = sum(l["ok"] for l in levels)
rates = " ".join(f"{l['clients']}c={l['records_per_s']:.0f}/s p99={l['p99_ms']:.0f}ms" for l in levels)
cpu_ms = (after - before) * 1000 / tck
print(f"{mode:<3} round {rnd}: {rates}  cpu/record {cpu_ms / max(acked, 1):.3f} ms  ({acked} records)")
EOF
}

for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then run on "$round"; run off "$round"; else run off "$round"; run on "$round"; fi
done
