#!/usr/bin/env bash
# Installs what the tests need and runs every suite: formatting, lints and the API
# docs, the Rust workspace (protocol fixtures, gateway units, Rust client, end-to-end tests), the
# suite again with isolation forced off, the Python and TypeScript clients and the
# playground page against a real gateway, and the black-box protocol conformance checks when
# ../shared/conformance is present.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "dependencies"
if ! python3 -c 'import websockets' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check 'websockets>=12'
fi
# The notebook tests draw a matplotlib figure in a cell when matplotlib is there.
if ! python3 -c 'import matplotlib' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check matplotlib \
    || echo "test.sh: could not install matplotlib; its notebook test will say it is skipped"
fi

# A rootless jail maps its sandbox user to a subordinate id where the host grants one
# (newuidmap/newgidmap from uidmap, a range in /etc/subuid and /etc/subgid), as rootless
# container hosts do. As root, set that up for uid 1000, the ordinary user the jail's
# rootless tests become; without it those tests say they are skipped.
if [[ "$(id -u)" == 0 ]]; then
  if [[ ! -x /usr/bin/newuidmap || ! -x /usr/bin/newgidmap ]]; then
    echo "test.sh: installing uidmap (newuidmap, newgidmap) for the rootless jail tests"
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y uidmap; } \
      || echo "test.sh: could not install uidmap; the subordinate-id jail test will be skipped"
  fi
  owner="$(getent passwd 1000 | cut -d: -f1 || true)"
  if [[ -n "$owner" ]]; then
    for table in /etc/subuid /etc/subgid; do
      if ! grep -qE "^($owner|1000):" "$table" 2>/dev/null; then
        echo "test.sh: granting $owner (uid 1000) subordinate ids 200000-265535 in $table"
        echo "$owner:200000:65536" >> "$table"
      fi
    done
  fi
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings denied)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo doc (every crate, warnings denied: broken links, bare URLs, ...)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace --locked

step "cargo test (workspace)"
cargo test --workspace --locked

# The end-to-end tests are one binary, `e2e`, whose modules are named after the files
# they were (tests/tests/e2e/): the name filters `sandbox::` etc. pick those modules.
step "isolation forced off: tests needing a layer skip with the reason, rlimits still hold"
SLUICE_TEST_ISOLATION=none cargo test --locked -p sluice-tests --test e2e -- \
  --nocapture sandbox:: isolation:: limits:: files:: terminal:: workspace:: 2>&1 \
  | grep -E '^(test |skipped|test result)'

step "cgroups without the jail: the tree limits hold with unjailed programs"
SLUICE_TEST_ISOLATION=cgroups cargo test --locked -p sluice-tests --test e2e -- \
  --nocapture sandbox:: isolation:: limits:: persistent:: 2>&1 \
  | grep -E '^(test |skipped|test result)'

# The clients' own suites run against the gateway binary `cargo test` just built (with
# its jail next to it).
export SLUICE_BIN="$PWD/target/debug/sluice"

step "Python client (clients/python)"
bash clients/python/test.sh

step "TypeScript client (clients/typescript: Node and headless Chromium)"
bash clients/typescript/test.sh

step "playground page (playground: the committed assets, and the page in headless Chromium)"
bash playground/test.sh

if [ -d ../shared/conformance ]; then
  step "protocol conformance (../shared/conformance)"
  cargo build --release --locked -p sluice-cli -p sluice-gateway  # sluice and its jail
  SLUICE_NO_BUILD=1 python3 ../shared/conformance/run_all.py
fi
