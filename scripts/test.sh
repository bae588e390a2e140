#!/usr/bin/env bash
# Runs the whole test suite: unit tests, the openraft storage suite, and the process-level cluster
# tests (real `dtm serve` processes over TLS on loopback). This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-tools.sh
# Style and lints are part of the suite: the code stays formatted and clippy-clean. (rustfmt and
# clippy come with the toolchain; rustup's own server is not reachable from CI, so a toolchain
# without them skips these two checks with a warning instead of failing the run.)
if cargo fmt --version >/dev/null 2>&1; then cargo fmt --all -- --check; else echo "warning: rustfmt missing; format check skipped" >&2; fi
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --locked --workspace --all-targets --features dtm-node/fault-injection -- -D warnings
else
  echo "warning: clippy missing; lint check skipped" >&2
fi
# Dependencies: permissive licences only, crates.io only, no banned crates (deny.toml).
cargo deny check licenses bans sources
# The cluster tests start the `dtm` binary as separate processes: build it first.
cargo build --locked -p dtm-node --features fault-injection
cargo nextest run --locked --workspace --profile ci "$@"
