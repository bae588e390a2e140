#!/usr/bin/env bash
# Runs the whole test suite: unit tests, the openraft storage suite, and the process-level cluster
# tests (real `dtm serve` processes over TLS on loopback). This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-tools.sh
# The cluster tests start the `dtm` binary as separate processes: build it first.
cargo build --locked -p dtm-node
cargo nextest run --locked --workspace --profile ci "$@"
