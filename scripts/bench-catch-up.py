#!/usr/bin/env python3
"""Catch-up of a wiped node under write load (docs/reliability.md, session 14): a fresh local
3-node cluster (`dtm demo`, release build), RECORDS records preloaded with `dtm ingest`, then
`dtm bench --clients 64` writing while node 3 is killed (-9), its store deleted and the node
started again with its own command line. Prints, once a second, the leader's and node 3's applied
index, when node 3 installed the leader's snapshot and when it caught up (within 50 entries).
The work directory (logs included) is kept under /tmp/dtm-catch-up-PORT.

Usage: scripts/bench-catch-up.py [RECORDS] [BASE_PORT]   (default 500000 26600; DTM_BIN=… for the binary)
"""
import json, os, random, signal, ssl, subprocess, sys, time, urllib.request, shutil
BIN = os.environ.get("DTM_BIN", "target/release/dtm")
N = int(sys.argv[1]) if len(sys.argv) > 1 else 500000
PORT = int(sys.argv[2]) if len(sys.argv) > 2 else 26600
if not os.path.exists(BIN):
    subprocess.run(["cargo", "build", "--locked", "--release", "-p", "dtm-node"], check=True)
W = f"/tmp/dtm-catch-up-{PORT}"; shutil.rmtree(W, ignore_errors=True); os.makedirs(W)
demo = subprocess.Popen([BIN, "demo", "--dir", f"{W}/demo", "--base-port", str(PORT), "--feed-interval-secs", "3600"],
                        stdout=open(f"{W}/demo.log", "w"), stderr=subprocess.STDOUT)
try:
    for _ in range(120):
        if os.path.exists(f"{W}/demo/demo.json") and "Feeding" in open(f"{W}/demo.log").read(): break
        time.sleep(0.5)
    d = json.load(open(f"{W}/demo/demo.json"))
    ctx = ssl.create_default_context(cafile=d['ca_cert'])
    def call(node, path, body=None, method=None):
        req = urllib.request.Request(d['nodes'][node-1]['http'] + path, data=json.dumps(body).encode() if body is not None else None,
            method=method or ('POST' if body is not None else 'GET'),
            headers={'content-type': 'application/json', 'authorization': 'Bearer ' + d['admin_token']})
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r: return json.load(r)
    ds = "cu"
    call(1, '/api/v1/datasets', {"id": ds, "title": "catch-up", "schema": {"type": "object",
        "required": ["client", "seq", "agency", "period", "transactions"],
        "properties": {"client": {"type": "integer"}, "seq": {"type": "integer"}, "agency": {"type": "string"},
            "period": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"}, "transactions": {"type": "integer"}, "pad": {"type": "string"}}},
        "key": ["client", "seq"], "time_field": "period", "dimensions": ["agency"], "measures": {"transactions": "sum"}})
    key = call(1, '/api/v1/sources', {"id": "cu-src", "name": "cu", "agency": "bench", "datasets": [ds]})['api_key']
    random.seed(1)
    with open(f"{W}/b.ndjson", "w") as f:
        for i in range(N):
            f.write(json.dumps({"client": 7, "seq": i, "agency": random.choice("abcde"), "period": "2026-%02d" % random.randint(1, 12),
                                "transactions": random.randint(0, 1000), "pad": "x" * 180}) + "\n")
    t = time.time()
    subprocess.run([BIN, "ingest", f"{W}/b.ndjson", "--dataset", ds, "--api-key", key, "--cluster", f"{W}/demo/demo.json", "--quiet"],
                   check=True, stdout=subprocess.DEVNULL)
    print(f"preloaded {N} records in {time.time()-t:.1f} s", flush=True)
    store = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(f"{W}/demo/node-3/store") for f in fs)
    print(f"node 3 store {store/1e6:.0f} MB", flush=True)
    bench = subprocess.Popen([BIN, "bench", "--cluster", f"{W}/demo/demo.json", "--clients", "64", "--duration-secs", "150"],
                             stdout=open(f"{W}/bench.out", "w"), stderr=subprocess.STDOUT)
    time.sleep(10)
    n3 = [n for n in d['nodes'] if n['id'] == 3][0]
    pid = json.load(open(os.path.join(n3['data_dir'], 'node.json')))['pid']
    os.kill(pid, signal.SIGKILL); time.sleep(0.5)
    shutil.rmtree(os.path.join(n3['data_dir'], 'store'))
    t0 = time.time()
    log = open(f"{W}/node3.log", "w")
    p3 = subprocess.Popen(n3['cmd'], stdout=log, stderr=subprocess.STDOUT)
    installed = None
    while time.time() - t0 < 140:
        time.sleep(1)
        try:
            s1 = call(1, '/api/v1/cluster'); s3 = call(3, '/api/v1/cluster')
        except Exception as e:
            print(f"t={time.time()-t0:5.1f} node 3 not answering ({e.__class__.__name__})", flush=True); continue
        a1, a3 = s1.get('applied_index', 0), s3.get('applied_index', 0)
        if installed is None and 'installed snapshot' in open(f"{W}/node3.log").read():
            installed = time.time() - t0
            print(f"t={installed:5.1f} node 3 installed the snapshot", flush=True)
        print(f"t={time.time()-t0:5.1f} leader applied {a1}, node 3 applied {a3}, behind {a1-a3}", flush=True)
        if a3 and a1 - a3 < 50:
            print(f"CAUGHT UP after {time.time()-t0:.1f} s (snapshot installed at {installed})", flush=True); break
    bench.send_signal(signal.SIGINT); bench.wait()
    p3.kill()
finally:
    demo.send_signal(signal.SIGINT); demo.wait(timeout=60)
