#!/usr/bin/env bash
# The benchmark's own push scenario (`ruse-sim --scenarios connect,push`,
# N agents × 10 lures): ruse-sim's ack p50/p99, the RSS figures of its
# connect phase, and the controller's pass
# log (compute, time spent waiting to run again, first and last chunk
# durable). With PERF=1, perf records the controller across the push and
# `breakdown.py` prints where the push window's samples went.
# usage: sim-push.sh [N=10000]   (perf data: /tmp/perf-sim-push.data)
set -u
n=${1:-10000}
B=${B:?set B to a directory of release binaries}
here=$(cd "$(dirname "$0")" && pwd)
port=17491
. "$here/push-controller.sh"
timeout 600 "$B/ruse-sim" --controller https://127.0.0.1:17491 --ca-pin "$pin" --context-file "$ctx" \
    -n "$n" --lures 10 --hold 3s --sources 16 --concurrency 128 --controller-pid "$cp" \
    --scenarios connect,push --timeout 600s > "$w/sim.txt" 2>&1 &
sp=$!
if [ "${PERF:-0}" = 1 ]; then
    t0=$(date +%s)
    while [ "$(ss -tnH state established '( sport = :17491 )' | wc -l)" -lt "$n" ]; do
        sleep 0.5; [ $(($(date +%s) - t0)) -gt 300 ] && break
    done
    # The hold is 3 s; record from the end of the ramp to past the push
    # (breakdown.py cuts the push window out). A fixed delay before
    # recording missed the push on a faster machine.
    perf record -F "${PERF_FREQ:-999}" --call-graph dwarf,16384 -o /tmp/perf-sim-push.data \
        -p "$cp" -- sleep 5 > "$w/perf.log" 2>&1
fi
wait "$sp"
grep -E "^push|rss|RSS" "$w/sim.txt"
grep "lure registry updated" "$w/ctl.log" | tail -1 | grep -o "created=.*"
# The simulated agents have disconnected; the registry stays.
echo "controller $(grep VmRSS /proc/$cp/status | tr -s ' \t' ' ') after the push"
kill "$cp"; wait "$cp"
rm -rf "$w"
if [ "${PERF:-0}" = 1 ]; then
    python3 "$here/breakdown.py" /tmp/perf-sim-push.data
fi
