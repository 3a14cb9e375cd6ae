#!/usr/bin/env bash
# Rebuilds the playground page (playground/) into gateway/assets/playground/, the files
# the gateway embeds: index.html, playground.js, playground.css. The build is
# deterministic (the versions in playground/package-lock.json, fixed esbuild options), so
# commit what it writes; playground/test.sh fails when the committed files differ from a
# fresh build.
set -euo pipefail
cd "$(dirname "$0")/../playground"
npm ci --no-audit --no-fund
node build.mjs
