#!/usr/bin/env bash
# Builds `dtm` (release) and runs the demo: a local 3-node cluster with sample data, until Ctrl-C.
# Extra arguments go to `dtm demo` (e.g. --dir DIR --base-port P).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-tools.sh
cargo build --locked --release -p dtm-node
exec target/release/dtm demo "$@"
