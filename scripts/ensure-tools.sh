#!/usr/bin/env bash
# Checks for what building and testing DTM needs, and installs what is missing. Everything comes from
# the package registries (crates.io; Debian packages once a later feature needs them). Safe to re-run.
set -euo pipefail

need_cmd() { command -v "$1" >/dev/null 2>&1; }

if ! need_cmd cargo; then
  echo "cargo is not installed: install the Rust toolchain (rustup) first." >&2
  exit 1
fi
# A C compiler and make build jemalloc (tikv-jemalloc-sys).
if ! need_cmd cc || ! need_cmd make; then
  echo "installing a C compiler (build-essential)…"
  apt-get update -qq && apt-get install -y -qq build-essential >/dev/null
fi
# libxml2 (with pkg-config, and libclang for the bindings' generator) validates XML input against each
# dataset's XSD (A3.2; the `libxml` crate links the system library).
if ! pkg-config --exists libxml-2.0 2>/dev/null || ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1; then
  echo "installing libxml2-dev, libclang-dev and pkg-config…"
  apt-get update -qq && apt-get install -y -qq libxml2-dev libclang-dev pkg-config >/dev/null
fi
# openssl: the TLS tests check protocol versions and certificate renewal with an independent client.
if ! need_cmd openssl; then
  echo "installing openssl…"
  apt-get update -qq && apt-get install -y -qq openssl >/dev/null
fi
# The chaos suite: partitions (network namespaces, iptables) and clock skew (libfaketime).
if ! need_cmd ip || ! need_cmd iptables || ! need_cmd faketime; then
  echo "installing iproute2, iptables and faketime…"
  apt-get update -qq && apt-get install -y -qq iproute2 iptables faketime >/dev/null
fi
# promtool (Debian `prometheus`): tests/tests/metrics.rs checks every node's /metrics with
# `promtool check metrics` (F5-metrics).
if ! need_cmd promtool; then
  echo "installing prometheus (promtool)…"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
# etcd (Debian `etcd-server`): the reference system of `dtm bench --reference etcd`; a dtm-node unit
# test (bench_etcd) starts a 3-member cluster (issue 4).
if ! need_cmd etcd; then
  echo "installing etcd-server…"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest from crates.io…"
  cargo install --locked cargo-nextest
fi
# cargo-deny checks the licences, bans and sources of every dependency (deny.toml).
if ! cargo deny --version >/dev/null 2>&1; then
  echo "installing cargo-deny from crates.io…"
  cargo install --locked cargo-deny
fi
# Python clients for the protocol interop tests (tests/interop/, run by tests/tests/protocols.rs):
# zeep (SOAP), grpcio-tools (gRPC), openapi-spec-validator and schemathesis (OpenAPI), openpyxl and
# python-docx (exports), in a virtual environment under target/ so the system Python is untouched.
INTEROP_VENV="${DTM_INTEROP_VENV:-target/interop-venv}"
INTEROP_PACKAGES=(zeep==4.3.3 grpcio-tools==1.85.1 openapi-spec-validator==0.9.0 schemathesis==4.32.5 openpyxl==3.1.5 python-docx==1.2.0)
if ! "$INTEROP_VENV/bin/python" -c "import zeep, grpc_tools, openapi_spec_validator, schemathesis, openpyxl, docx" >/dev/null 2>&1; then
  if ! need_cmd python3; then
    echo "installing python3 (venv, pip)…"
    apt-get update -qq && apt-get install -y -qq python3 python3-venv python3-pip >/dev/null
  fi
  echo "installing the interop test clients into $INTEROP_VENV from PyPI…"
  python3 -m venv "$INTEROP_VENV" || { apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && python3 -m venv "$INTEROP_VENV"; }
  "$INTEROP_VENV/bin/pip" install -q --disable-pip-version-check "${INTEROP_PACKAGES[@]}"
fi
# Independent writers of batch files (pyarrow, openpyxl; tests/tests/batches.rs) and an independent XSD
# validator (xmlschema, pure Python; tests/tests/xsd.rs), in their own virtual
# environment under target/, installed only when missing.
BATCH_VENV="${DTM_BATCH_VENV:-target/batch-venv}"
if ! "$BATCH_VENV/bin/python" -c "import pyarrow, openpyxl, xmlschema" >/dev/null 2>&1; then
  if ! need_cmd python3; then
    echo "installing python3 (venv, pip)…"
    apt-get update -qq && apt-get install -y -qq python3 python3-venv python3-pip >/dev/null
  fi
  echo "installing the batch file writers into $BATCH_VENV from PyPI…"
  python3 -m venv "$BATCH_VENV" || { apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && python3 -m venv "$BATCH_VENV"; }
  "$BATCH_VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/batch-requirements.txt
fi
# Browser tests of the web pages (tests/tests/web.rs runs tests/web/run.cjs) and the page-load
# benchmark (scripts/bench-web.sh): Debian's Chromium, Node, and playwright-core, axe-core and
# Lighthouse 12 (pinned in tests/web/package-lock.json) under target/web-tools. --ignore-scripts:
# no package may download a browser of its own; the tests drive /usr/bin/chromium.
if [ ! -x /usr/bin/chromium ]; then
  echo "installing chromium…"
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
if ! need_cmd node || ! need_cmd npm; then
  echo "installing nodejs and npm…"
  apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
fi
WEB_TOOLS="${DTM_WEB_TOOLS:-target/web-tools}"
if ! cmp -s tests/web/package-lock.json "$WEB_TOOLS/package-lock.json" || [ ! -d "$WEB_TOOLS/node_modules/playwright-core" ]; then
  echo "installing the browser test packages into $WEB_TOOLS from npm…"
  mkdir -p "$WEB_TOOLS"
  cp tests/web/package.json tests/web/package-lock.json "$WEB_TOOLS/"
  (cd "$WEB_TOOLS" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi
