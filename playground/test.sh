#!/usr/bin/env bash
# Checks and tests the playground page against a real gateway.
#
#   SLUICE_BIN=/path/to/sluice playground/test.sh
#
# Installs what the tests need (Debian's chromium if /usr/bin/chromium is missing; the npm
# dependencies with `npm ci`), lints and format-checks with biome, type-checks the page and
# its tests, checks that the assets committed in gateway/assets/playground/ are what a
# fresh build of these sources makes (the gateway embeds those files: a change here that
# was not rebuilt and committed fails), then drives the page in headless Chromium with
# Node's test runner. Screenshots are kept in playground/artifacts/. Exits non-zero on any
# failure.
#
# The page is the one the gateway embeds, from the tree $SLUICE_BIN was built from. To
# test the committed assets against a gateway built before them, set PLAYGROUND_FROM_DISK=1:
# a front server then answers the page's three files from gateway/assets/playground/ and
# passes the rest to the gateway (test/gateway.ts).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [[ -z "${SLUICE_BIN:-}" ]]; then
  echo "test.sh: SLUICE_BIN is not set; point it at a built gateway (e.g. SLUICE_BIN=target/debug/sluice)" >&2
  exit 2
fi
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
  echo "test.sh: installing Debian's chromium for the browser tests"
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
echo "test.sh: type-check the page and its tests (tsc)"
npx tsc -p tsconfig.json
npx tsc -p tsconfig.test.json
echo "test.sh: the committed assets match a fresh build"
node build.mjs --check
echo "test.sh: run the browser tests (gateway: $SLUICE_BIN)"
# --test-force-exit and the bound: a stuck browser or gateway fails the run instead of
# hanging it.
timeout --kill-after=10 900 \
  node --test --test-force-exit --test-reporter=spec --test-concurrency=1 build/test/*.test.js
