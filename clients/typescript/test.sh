#!/usr/bin/env bash
# Builds and tests the TypeScript client (sluice-client) against a real gateway.
#
#   SLUICE_BIN=/path/to/sluice clients/typescript/test.sh
#
# Installs what the tests need (Debian's chromium if /usr/bin/chromium is missing; the
# npm dependencies, biome included, with `npm ci`, whose `prepare` builds dist/), lints
# and format-checks with biome (biome.json), builds with tsc, type-checks the tests, and
# runs every test with Node's test runner (the client scenarios of
# protocol/fixtures/scenarios included). Exits non-zero on any failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [[ -z "${SLUICE_BIN:-}" ]]; then
  echo "test.sh: SLUICE_BIN is not set; point it at a built gateway (e.g. SLUICE_BIN=target/release/sluice)" >&2
  exit 2
fi
if [[ ! -f "$SLUICE_BIN" || ! -x "$SLUICE_BIN" ]]; then
  echo "test.sh: SLUICE_BIN=$SLUICE_BIN is not an executable file" >&2
  exit 2
fi
# A relative path means relative to where the script was called from.
SLUICE_BIN="$(cd "$(dirname "$SLUICE_BIN")" && pwd)/$(basename "$SLUICE_BIN")"
if [[ ! -x "$SLUICE_BIN" ]]; then
  echo "test.sh: SLUICE_BIN=$SLUICE_BIN is not an executable file" >&2
  exit 2
fi
export SLUICE_BIN

if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)'; then
  echo "test.sh: Node.js 20 or later is needed (found $(node --version))" >&2
  exit 2
fi

if [[ ! -x /usr/bin/chromium ]]; then
  echo "test.sh: installing Debian's chromium for the browser test"
  sudo=""
  if [[ "$(id -u)" != 0 ]]; then sudo="sudo"; fi
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y chromium
fi

cd "$here"
echo "test.sh: npm ci"
npm ci --no-audit --no-fund
echo "test.sh: lint and format check (biome)"
npx biome check
echo "test.sh: build (tsc)"
npx tsc -p tsconfig.json
echo "test.sh: type-check and compile the tests"
npx tsc -p tsconfig.test.json
echo "test.sh: run the tests (gateway: $SLUICE_BIN)"
# --test-force-exit: each test file's process exits once its tests are done. Node 20
# was seen, rarely, spinning forever in its exit-time handle cleanup after every test
# of a file had passed; the bound below makes any hang a failure instead of a stuck run.
# Known cost (nodejs/node#64833): a forced exit can drop the last passing verdicts of a
# file from the summary, so "tests N" is sometimes a few short; a failing test still
# fails its file (its exit status), so the run's result is not affected.
timeout --kill-after=10 900 \
  node --test --test-force-exit --test-reporter=spec --test-concurrency=1 build/test/*.test.js
