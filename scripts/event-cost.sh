#!/usr/bin/env bash
# The gateway's own CPU time per delivered event (issue 13): a gateway with
# `--isolation none` runs LIVE clock programs over SOCKETS sockets (`sluice load --live`,
# each printing its clock every 100 ms, one event per line), and once all of them run
# this script reads the gateway's utime+stime (/proc/PID/stat) and its
# `sluice_events_delivered_total` at the start and the end of a steady window. It prints
# microseconds of gateway CPU per delivered event, which unlike the lag hardly depends
# on what else the machine runs (the programs' own CPU is not counted). It exits with
# the harness's status (0: every event verified, none lost, duplicated or reordered).
#
#   scripts/event-cost.sh [SLUICE_BINARY] [extra `sluice serve` flags...]
#
# Environment: LIVE (default 400), SOCKETS (10), DURATION (seconds each program runs,
# 40), WINDOW (seconds measured, 20), SETTLE (seconds after the last program started
# before the window opens, 3), PERF=FILE (also `perf record -g` the gateway during the
# window into FILE) or SYSCALLS=1 (count the gateway's read, sendto, epoll_wait and
# futex calls per event during the window, with `perf stat`).
#
# Build first, e.g. `CARGO_PROFILE_DEV_OPT_LEVEL=2 cargo build -p sluice-cli --target-dir
# target/opt` (an optimised build beside the debug one), and compare builds of the same
# profile only: a plain debug build costs several times an optimised one.
set -euo pipefail
bin=${1:-target/debug/sluice}
shift $(( $# > 1 ? 1 : $# ))
live=${LIVE:-400}
sockets=${SOCKETS:-10}
duration=${DURATION:-40}
window=${WINDOW:-20}
settle=${SETTLE:-3}
per_socket=$(( (live + sockets - 1) / sockets ))
port=$((20000 + RANDOM % 20000))
log=$(mktemp)
result=$(mktemp)
syscalls=$(mktemp)
"$bin" serve --listen 127.0.0.1:$port --log warn --isolation none \
    --max-executions $((live + 200)) --max-executions-per-peer $((live + 200)) \
    --max-executions-per-connection $((per_socket + 50)) --process-budget 100000 \
    --memory-overcommit 100 --budget-share-per-peer 100 "$@" 2>"$log" &
gateway=$!
trap 'kill $gateway 2>/dev/null; rm -f "$log" "$result" "$syscalls"' EXIT
for _ in $(seq 100); do
    curl -sf http://127.0.0.1:$port/readyz >/dev/null && break
    sleep 0.1
done
metric() {
    curl -sf http://127.0.0.1:$port/metrics | awk -v name="$1" '$1 == name {print $2}'
}
# utime + stime of every thread, in clock ticks (fields 14 and 15 after the command).
ticks() { sed 's/.*) //' /proc/$gateway/stat | awk '{print $12 + $13}'; }
"$bin" load --url ws://127.0.0.1:$port/v1/ws --sockets "$sockets" --live "$live" \
    --program clock --duration "${duration}s" --no-progress --json "$result" &
load=$!
# The window opens once every program runs (and SETTLE seconds later).
deadline=$((SECONDS + duration))
until [[ "$(metric sluice_executions_running || echo 0)" -ge "$live" ]]; do
    if (( SECONDS > deadline )); then
        echo "event-cost: the $live programs never ran at once; no window measured" >&2
        break
    fi
    sleep 0.2
done
sleep "$settle"
events0=$(metric sluice_events_delivered_total)
ticks0=$(ticks)
t0=$(date +%s.%N)
if [[ -n "${PERF:-}" ]]; then
    perf record -g -o "$PERF" -p $gateway -- sleep "$window" >/dev/null 2>&1 || true
elif [[ -n "${SYSCALLS:-}" ]]; then
    perf stat -x, -o "$syscalls" -p $gateway -e syscalls:sys_enter_read \
        -e syscalls:sys_enter_sendto -e syscalls:sys_enter_epoll_wait \
        -e syscalls:sys_enter_futex -- sleep "$window" 2>/dev/null || true
else
    sleep "$window"
fi
events1=$(metric sluice_events_delivered_total)
ticks1=$(ticks)
t1=$(date +%s.%N)
running=$(metric sluice_executions_running)
status=0
wait $load || status=$?
python3 - "$events0" "$events1" "$ticks0" "$ticks1" "$t0" "$t1" "$(getconf CLK_TCK)" \
    "$running" "$live" "$syscalls" <<'PY'
import sys
e0, e1, k0, k1 = (int(float(x)) for x in sys.argv[1:5])
t0, t1, hz = float(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7])
running, live = int(sys.argv[8]), int(sys.argv[9])
events, cpu, wall = e1 - e0, (k1 - k0) / hz, t1 - t0
print(f"window {wall:.1f} s: {events} events delivered ({events / wall:.0f}/s), "
      f"gateway CPU {cpu:.2f} s ({cpu / wall * 100:.0f} % of a core)")
if running < live:
    print(f"warning: only {running} of {live} programs still ran at the window's end")
if events:
    print(f"gateway CPU per delivered event: {cpu / events * 1e6:.1f} us")
    for line in open(sys.argv[10]):
        fields = line.strip().split(",")
        if len(fields) > 2 and fields[0].isdigit():
            print(f"  {fields[2].split('_')[-1]}: {int(fields[0]) / events:.2f} per event")
PY
python3 - "$result" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception as err:  # the harness failed before writing it
    print(f"no harness result: {err}")
    sys.exit()
print(f"harness verdict: {r.get('verdict')}, violations: {r['violations']['total']}")
print(f"steady lag (noisy on a shared machine): {json.dumps(r['lag']['steady'])}")
PY
if grep -q . "$log"; then echo "gateway warnings:"; sort "$log" | uniq -c | sort -rn | head -10; fi
exit $status
