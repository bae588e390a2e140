#!/usr/bin/env bash
# Batch ingestion benchmark (issue 6): a fresh local 3-node cluster (`dtm demo`, release build),
# a dataset with the "full" definition (JSON Schema, business rule, natural key, masking, time
# field, dimensions, measures), RECORDS NDJSON records of ~290 bytes written by Python, uploaded
# RUNS times with `dtm ingest` (manifest on, fsync on a quorum), each run into a new dataset.
# Prints records/s per run and each node's peak resident memory (VmHWM). Usage: scripts/bench-batch.sh [RECORDS] [RUNS]   (default 300000 2)
# FORMATS="ndjson csv parquet xlsx xml json" runs each format in turn (default: ndjson), the same
# records written by Python's json and csv modules, pyarrow, openpyxl and xml.etree (pyarrow and
# openpyxl from target/batch-venv, which scripts/ensure-tools.sh installs).
set -euo pipefail
cd "$(dirname "$0")/.."
RECORDS="${1:-300000}"
RUNS="${2:-2}"
DTM="${DTM_BIN:-target/release/dtm}"
WORK="$(mktemp -d /tmp/dtm-bench-batch-XXXXXX)"
PORT="${DTM_BENCH_PORT:-8143}"
[ -x "$DTM" ] || cargo build --locked --release -p dtm-node
"$DTM" demo --dir "$WORK/demo" --base-port "$PORT" --feed-interval-secs 5 >"$WORK/demo.log" 2>&1 &
DEMO=$!
OK=0
# The work directory (the nodes' logs under demo/) is kept when a run fails.
trap 'kill -INT $DEMO 2>/dev/null; wait $DEMO 2>/dev/null; if [ $OK = 1 ]; then rm -rf "$WORK"; else echo "kept $WORK" >&2; fi' EXIT
for _ in $(seq 1 100); do [ -s "$WORK/demo/demo.json" ] && break; sleep 0.3; done
FORMATS="${FORMATS:-ndjson}"
PYTHON=python3
case " $FORMATS " in *" parquet "*|*" xlsx "*) PYTHON=target/batch-venv/bin/python; [ -x "$PYTHON" ] || scripts/ensure-tools.sh >/dev/null ;; esac
"$PYTHON" - "$WORK" "$RECORDS" "$FORMATS" <<'PY'
import json, random, sys
work, n, formats = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
random.seed(1)
agencies = ['bo-tai-chinh', 'bo-y-te', 'ubnd-da-nang', 'ubnd-ha-noi', 'bo-cong-an']
with open(f'{work}/batch.ndjson', 'w') as f:
    for i in range(n):
        t = random.randint(0, 1000)
        f.write(json.dumps({"client": 7, "seq": i, "agency": random.choice(agencies),
            "period": "2026-%02d" % random.randint(1, 12), "channel": random.choice(['web', 'mobile', 'api', 'kiosk']),
            "transactions": t, "failed": random.randint(0, t), "citizen_id": "0%011d" % random.randint(0, 10**11),
            "pad": "x" * 120}) + "\n")
rows = [json.loads(line) for line in open(f'{work}/batch.ndjson')] if set(formats) - {'ndjson'} else []
fields = ["client", "seq", "agency", "period", "channel", "transactions", "failed", "citizen_id", "pad"]
if 'json' in formats:
    json.dump(rows, open(f'{work}/batch.json', 'w'))
if 'csv' in formats:
    import csv
    with open(f'{work}/batch.csv', 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
if 'xml' in formats:
    import xml.etree.ElementTree as ET
    root = ET.Element('records')
    for r in rows:
        rec = ET.SubElement(root, 'record')
        for k in fields:
            ET.SubElement(rec, k).text = str(r[k])
    ET.ElementTree(root).write(f'{work}/batch.xml', encoding='utf-8', xml_declaration=True)
if 'parquet' in formats:
    import pyarrow as pa, pyarrow.parquet as pq
    ints = {"client", "seq", "transactions", "failed"}
    pq.write_table(pa.table({k: pa.array([r[k] for r in rows], pa.int64() if k in ints else pa.string()) for k in fields}),
                   f'{work}/batch.parquet', compression='zstd')
if 'xlsx' in formats:
    import openpyxl
    wb = openpyxl.Workbook(write_only=True)
    ws = wb.create_sheet('records')
    ws.append(fields)
    for r in rows:
        ws.append([r[k] for k in fields])
    wb.save(f'{work}/batch.xlsx')
PY
define() {  # dataset id → prints the new source's API key
  python3 - "$WORK/demo/demo.json" "$1" <<'PY'
import json, ssl, sys, urllib.request
d = json.load(open(sys.argv[1])); ds = sys.argv[2]
ctx = ssl.create_default_context(cafile=d['ca_cert'])
def call(path, body):
    req = urllib.request.Request(d['nodes'][0]['http'] + path, data=json.dumps(body).encode(), method='POST',
        headers={'content-type': 'application/json', 'authorization': 'Bearer ' + d['admin_token']})
    with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
        return json.load(r)
call('/api/v1/datasets', {"id": ds, "title": "batch benchmark", "schema": {"type": "object",
    "required": ["client", "seq", "agency", "period", "channel", "transactions"],
    "properties": {"client": {"type": "integer"}, "seq": {"type": "integer"}, "agency": {"type": "string", "minLength": 2},
        "period": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"}, "channel": {"enum": ["web", "mobile", "api", "kiosk"]},
        "transactions": {"type": "integer", "minimum": 0}, "failed": {"type": "integer", "minimum": 0},
        "citizen_id": {"type": "string"}, "pad": {"type": "string"}}},
    "key": ["client", "seq"], "time_field": "period", "dimensions": ["agency", "channel"],
    "measures": {"transactions": "sum", "failed": "max"}, "masking": {"citizen_id": "partial"},
    "rules": [{"field": "failed", "op": "<=", "other": "transactions"}]})
print(call('/api/v1/sources', {"id": ds + "-src", "name": "batch benchmark", "agency": "bench", "datasets": [ds]})['api_key'])
PY
}
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; dtm $(git rev-parse --short HEAD); $RECORDS records of $(( $(stat -c %s "$WORK/batch.ndjson") / RECORDS )) bytes (NDJSON)"
for format in $FORMATS; do
for run in $(seq 1 "$RUNS"); do
  KEY=$(define "batchbench${format}$run")
  start=$(date +%s.%N)
  "$DTM" ingest "$WORK/batch.$format" --dataset "batchbench${format}$run" --api-key "$KEY" --cluster "$WORK/demo/demo.json" --quiet >"$WORK/receipt$run.json"
  end=$(date +%s.%N)
  python3 - "$WORK/receipt$run.json" "$start" "$end" "$run" "$format" "$(stat -c %s "$WORK/batch.$format")" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); secs = float(sys.argv[3]) - float(sys.argv[2])
print(f"{sys.argv[5]} ({int(sys.argv[6]) / 1e6:.1f} MB) run {sys.argv[4]}: {r['stored']} stored, {r['rejected']} rejected in {secs:.1f} s: {r['stored'] / secs:,.0f} records/s")
PY
done
done
# Peak resident memory of each node over the whole run (the receiving node is node 1).
for pid in $(pgrep -f "serve.*$WORK/demo" || true); do
  echo "node pid $pid ($(tr '\0' ' ' </proc/$pid/cmdline | grep -o 'node-[0-9][0-9]*' | head -1)): $(grep VmHWM /proc/$pid/status)"
done
OK=1
