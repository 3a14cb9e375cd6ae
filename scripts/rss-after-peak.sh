#!/usr/bin/env bash
# Measures the gateway's resident memory at a peak of buffered replay and after every
# session has ended (issue 10, section 3: memory must come back after a peak).
#
#   scripts/rss-after-peak.sh [SLUICE_BINARY] [CLIENTS] [BYTES_EACH]
#
# CLIENTS clients each run a program that prints BYTES_EACH bytes in a named session,
# and stop reading for a while (their stdout pipe is not drained for 8 s), so the
# sessions' replay buffers fill; then they read everything, the sessions end (grace
# 1 s), and the script prints the gateway's VmRSS/VmHWM at the peak and 20 s later.
set -euo pipefail
bin=${1:-target/debug/sluice}
clients=${2:-60}
bytes=${3:-12000000}
port=$((20000 + RANDOM % 20000))
url=ws://127.0.0.1:$port/v1/ws
"$bin" serve --listen 127.0.0.1:$port --isolation none --session-grace-ms 1000 \
    ${SLUICE_EXTRA_FLAGS:-} 2>/dev/null &
gateway=$!
trap 'kill $gateway 2>/dev/null' EXIT
for _ in $(seq 50); do
    curl -sf http://127.0.0.1:$port/healthz >/dev/null && break
    sleep 0.1
done
rss() { grep -E "^$1:" /proc/$gateway/status | awk '{print $2}'; }
echo "idle: VmRSS $(rss VmRSS) kB"
for i in $(seq "$clients"); do
    ( "$bin" run --url "$url" --session "peak-$i" -l python \
        -c "import sys; sys.stdout.write('z' * $bytes)" | (sleep 8; cat >/dev/null) ) &
done
peak=0
for _ in $(seq 40); do
    now=$(rss VmRSS)
    [ "$now" -gt "$peak" ] && peak=$now
    jobs -r | grep -q . || break
    sleep 0.5
done
wait $(jobs -p | grep -v "^$gateway$") 2>/dev/null || true
echo "peak: VmRSS $peak kB (VmHWM $(rss VmHWM) kB)"
sleep 20
echo "20 s after every session ended: VmRSS $(rss VmRSS) kB"
