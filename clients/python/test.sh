#!/usr/bin/env bash
# Tests of the Python client: installs it with its test extra (pytest, mypy,
# ruff), runs ruff (lint and format check, config in pyproject.toml), mypy
# --strict, then pytest against a real gateway ($SLUICE_BIN) and the client
# scenarios of protocol/fixtures/scenarios against a scripted peer.
# Run from anywhere; exits non-zero on any failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"

if [[ -z "${SLUICE_BIN:-}" ]]; then
    echo "clients/python/test.sh: set SLUICE_BIN to a built gateway binary (e.g. target/release/sluice)" >&2
    exit 2
fi
# The tests start the gateway from their own directory: make the path absolute.
SLUICE_BIN="$(cd "$(dirname "$SLUICE_BIN")" && pwd)/$(basename "$SLUICE_BIN")"
export SLUICE_BIN

echo "== installing sluice-client[test]"
"$python" -m pip install --quiet --disable-pip-version-check -e "$here[test]"

echo "== ruff"
(cd "$here" && "$python" -m ruff check src tests examples && "$python" -m ruff format --check src tests examples)

echo "== mypy --strict"
(cd "$here" && "$python" -m mypy --strict src/sluice tests)

echo "== pytest"
cd "$here"
"$python" -m pytest -p no:cacheprovider -q tests "$@"
