#!/usr/bin/env bash
# Page-load benchmark of the web pages (issue 9; P1–P4): starts a 3-node `dtm demo` cluster (release
# build) in a temporary directory, runs tests/web/bench.cjs against node 1 (headless Chromium timings
# and Lighthouse 12 scores per page) and prints a Markdown table for docs/benchmarks.md.
# Usage: scripts/bench-web.sh [RUNS]   (needs scripts/ensure-tools.sh; DTM_BIN to use another binary)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-10}"
BIN="${DTM_BIN:-target/release/dtm}"
[ -n "${DTM_BIN:-}" ] || cargo build --release -p dtm-node
WEB_TOOLS="${DTM_WEB_TOOLS:-target/web-tools}"
DIR="$(mktemp -d /tmp/dtm-bench-web.XXXXXX)"
PORT="${BENCH_PORT:-18443}"
"$BIN" demo --nodes 3 --dir "$DIR" --base-port "$PORT" --feed-interval-secs 1 > "$DIR/demo.log" 2>&1 &
DEMO=$!
cleanup() { kill "$DEMO" 2>/dev/null || true; wait "$DEMO" 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
for _ in $(seq 1 120); do
  [ -f "$DIR/demo.json" ] && break
  kill -0 "$DEMO" 2>/dev/null || { cat "$DIR/demo.log"; exit 1; }
  sleep 0.5
done
[ -f "$DIR/demo.json" ] || { echo "the demo cluster did not start" >&2; cat "$DIR/demo.log"; exit 1; }
# Some seconds of demo traffic, so the dashboard, analysis and audit pages have data to show.
sleep 10
NODE_EXTRA_CA_CERTS="$DIR/tls/ca.pem" NODE_PATH="$WEB_TOOLS/node_modules" CHROMIUM="${CHROMIUM:-/usr/bin/chromium}" \
  DTM_DEMO_JSON="$DIR/demo.json" RUNS="$RUNS" node tests/web/bench.cjs
