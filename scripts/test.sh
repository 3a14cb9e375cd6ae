#!/usr/bin/env bash
# Installs what the tests need and runs every suite: formatting and lints, the Rust
# workspace (protocol fixtures, gateway units, Rust client, end-to-end tests), and the
# black-box protocol conformance checks when ../shared/conformance is present.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "dependencies"
if ! python3 -c 'import websockets' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check 'websockets>=12'
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings denied)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (workspace)"
cargo test --workspace --locked

if [ -d ../shared/conformance ]; then
  step "protocol conformance (../shared/conformance)"
  cargo build --release --locked --bin sluice
  SLUICE_NO_BUILD=1 python3 ../shared/conformance/run_all.py
fi
