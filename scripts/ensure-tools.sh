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
# openssl: the TLS tests check protocol versions and certificate renewal with an independent client.
if ! need_cmd openssl; then
  echo "installing openssl…"
  apt-get update -qq && apt-get install -y -qq openssl >/dev/null
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
