#!/usr/bin/env bash
# Issue 4's benchmarks on one demo cluster, release build (docs/benchmarks.md, "Reference system,
# connections and disk"):
#   reference    DTM and a 3-member etcd (Debian etcd-server) in the same run, level by level
#   connections  N open TLS connections over the three nodes, posting over all of them
#   disk         bytes on disk per record and node RSS after N records
# Every table is printed with the machine, the build and the exact command. Results (text and
# JSON) go to $OUT. A benchmark, not a CI test: it takes ~10 minutes after the build.
#
#   scripts/bench-reference.sh                       # all three
#   STEPS="reference" CLIENTS=1,64,500 scripts/bench-reference.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${DIR:-/tmp/dtm-bench-reference}
PORT=${PORT:-17843}
OUT=${OUT:-target/bench-reference}
STEPS=${STEPS:-reference connections disk}
CLIENTS=${CLIENTS:-1,64,500}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-1}
PAYLOAD=${PAYLOAD:-100}          # padding bytes; the records are ~250 bytes of JSON
CONNECTIONS=${CONNECTIONS:-10000}
CONNECTION_SECS=${CONNECTION_SECS:-60}
CONNECTION_INTERVAL=${CONNECTION_INTERVAL:-10}
DISK_RECORDS=${DISK_RECORDS:-1000000}

# etcd from Debian's etcd-server: check, then install.
if ! command -v etcd >/dev/null 2>&1; then
    echo "installing etcd-server (Debian)"
    if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq etcd-server
fi
etcd --version | head -1

cargo build --release --locked -p dtm-node
DTM=target/release/dtm

rm -rf "$DIR"
mkdir -p "$OUT"
"$DTM" demo --dir "$DIR" --base-port "$PORT" --feed-interval-secs 5 >"$OUT/demo.log" 2>&1 &
DEMO=$!
cleanup() {
    kill -INT "$DEMO" 2>/dev/null || true
    wait "$DEMO" 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT
for _ in $(seq 1 240); do
    [ -f "$DIR/demo.json" ] && break
    kill -0 "$DEMO" 2>/dev/null || { cat "$OUT/demo.log"; exit 1; }
    sleep 0.5
done
[ -f "$DIR/demo.json" ] || { echo "demo did not start"; exit 1; }

for step in $STEPS; do
    case "$step" in
    reference)
        "$DTM" bench --cluster "$DIR/demo.json" --clients "$CLIENTS" --duration-secs "$DURATION" \
            --payload-bytes "$PAYLOAD" --reference etcd --reference-rounds "$ROUNDS" \
            --out "$OUT/reference.json" | tee "$OUT/reference.txt" ;;
    connections)
        "$DTM" bench --cluster "$DIR/demo.json" --payload-bytes "$PAYLOAD" --connections "$CONNECTIONS" \
            --connection-secs "$CONNECTION_SECS" --connection-interval-secs "$CONNECTION_INTERVAL" \
            --out "$OUT/connections.json" | tee "$OUT/connections.txt" ;;
    disk)
        df -h / | tail -1
        "$DTM" bench --cluster "$DIR/demo.json" --payload-bytes "$PAYLOAD" --disk-records "$DISK_RECORDS" \
            --out "$OUT/disk.json" | tee "$OUT/disk.txt" ;;
    *) echo "unknown step $step (reference, connections, disk)"; exit 2 ;;
    esac
done
