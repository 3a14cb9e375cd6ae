#!/usr/bin/env bash
# Installs what the tests need and runs every suite: formatting and lints, the Rust
# workspace (protocol fixtures, gateway units, Rust client, end-to-end tests), the
# suite again with isolation forced off, the Python and TypeScript clients against a
# real gateway, and the black-box protocol conformance checks when
# ../shared/conformance is present.
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

step "isolation forced off: tests needing a layer skip with the reason, rlimits still hold"
SLUICE_TEST_ISOLATION=none cargo test --locked -p sluice-tests \
  --test sandbox --test isolation --test limits -- --nocapture 2>&1 \
  | grep -E '^(test |skipped|test result)'

# The clients' own suites run against the gateway binary `cargo test` just built (with
# its jail next to it).
export SLUICE_BIN="$PWD/target/debug/sluice"

step "Python client (clients/python)"
bash clients/python/test.sh

step "TypeScript client (clients/typescript: Node and headless Chromium)"
bash clients/typescript/test.sh

if [ -d ../shared/conformance ]; then
  step "protocol conformance (../shared/conformance)"
  cargo build --release --locked -p sluice-gateway  # sluice and its jail
  SLUICE_NO_BUILD=1 python3 ../shared/conformance/run_all.py
fi
