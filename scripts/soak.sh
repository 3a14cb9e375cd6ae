#!/usr/bin/env bash
# The soak of issue 13: a gateway with its default isolation under a mixed load with
# watchers and dropped sockets (bench/scenarios/soak.toml, 30 minutes), checked event by
# event by `sluice load`, while this script samples the gateway's resident memory every
# 30 s. It prints the samples, the first and last five minutes' medians, and the
# harness's summary; it exits with the harness's status (0: no event lost, duplicated,
# reordered or wrong).
#
#   scripts/soak.sh [SLUICE_BINARY] [SCENARIO] [extra `sluice load` flags...]
#
# Build first: `cargo build --release -p sluice-cli -p sluice-gateway` (the jail the
# default isolation uses comes from the gateway package). Run by hand, not in CI.
set -euo pipefail
bin=${1:-target/release/sluice}
scenario=${2:-bench/scenarios/soak.toml}
shift $(( $# > 2 ? 2 : $# ))
port=$((20000 + RANDOM % 20000))
log=$(mktemp)
"$bin" serve --listen 127.0.0.1:$port --log warn ${SLUICE_EXTRA_FLAGS:-} 2>"$log" &
gateway=$!
trap 'kill $gateway 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 100); do
    curl -sf http://127.0.0.1:$port/readyz >/dev/null && break
    sleep 0.1
done
rss() { awk '/^VmRSS:/ {print $2}' /proc/$gateway/status; }
samples=$(mktemp)
( while kill -0 $gateway 2>/dev/null; do echo "$(date +%s) $(rss)" >>"$samples"; sleep 30; done ) &
sampler=$!
status=0
"$bin" load --url ws://127.0.0.1:$port/v1/ws --scenario "$scenario" --no-progress "$@" || status=$?
kill $sampler 2>/dev/null || true
echo
echo "gateway VmRSS (kB) every 30 s:"
awk '{printf "%s ", $2} END {print ""}' "$samples"
python3 - "$samples" <<'PY'
import statistics, sys
rows = [tuple(map(int, l.split())) for l in open(sys.argv[1]) if len(l.split()) == 2]
if len(rows) >= 20:
    t0 = rows[0][0]
    first = [r for t, r in rows if t - t0 >= 60 and t - t0 < 360]
    last = [r for t, r in rows if t >= rows[-1][0] - 300]
    a, b = statistics.median(first), statistics.median(last)
    print(f"median VmRSS, minutes 1-6: {a:.0f} kB; last 5 minutes: {b:.0f} kB; ratio {b / a:.2f}")
PY
rm -f "$samples"
if grep -q . "$log"; then echo "gateway warnings:"; sort "$log" | uniq -c | sort -rn | head -20; fi
exit $status
