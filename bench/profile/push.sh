#!/usr/bin/env bash
# A 10-lure campaign applied to N simulated agents with `rusectl apply`:
# time to rollout complete, the CPU controller and simulator used, and the
# controller's pass log, optionally under perf.
# usage: push.sh [N=10000] [PERF_SECONDS=0]   (perf data: /tmp/perf-push.data;
# PERF_FREQ sets the sampling rate, default 499 Hz)
set -u
n=${1:-10000}; ps=${2:-0}
B=${B:?set B to a directory of release binaries}
port=17490
. "$(dirname "$0")/push-controller.sh"
timeout 600 "$B/ruse-sim" --controller https://127.0.0.1:17490 --admin https://127.0.0.1:17490 --ca-pin "$pin" \
    --context-file "$ctx" -n "$n" --lures 10 --hold 240s --sources 16 --concurrency 128 \
    --controller-pid "$cp" --scenarios connect > "$w/sim.txt" 2>&1 &
sp=$!
t0=$(date +%s)
while [ "$(ss -tnH state established '( sport = :17490 )' | wc -l)" -lt "$n" ]; do
    sleep 1; [ $(($(date +%s) - t0)) -gt 300 ] && { echo "ramp too slow"; break; }
done
sleep 5
pp=
if [ "$ps" != 0 ]; then
    perf record -F "${PERF_FREQ:-499}" --call-graph dwarf,16384 -o /tmp/perf-push.data -p "$cp" -- sleep "$ps" > "$w/perf.log" 2>&1 &
    pp=$!; sleep 0.5
fi
printf 'kind: Campaign\nname: push-a\nselector: {}\nrollout: {waves: ["100%%"], max_failure_ratio: 1}\nlures:\n' > "$w/c.yaml"
for i in $(seq 0 9); do echo "  - {template: pgpass, name: pg-$i, params: {database: db$i}}" >> "$w/c.yaml"; done
# CPU seconds (user + system) a process has used so far.
cpu() { awk -v t="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$1/stat"; }
sim=$(pgrep -P "$sp" -x ruse-sim)
c0=$(cpu "$cp"); s0=$(cpu "$sim")
s=$(date +%s.%N)
"$B/rusectl" --context-file "$ctx" apply -f "$w/c.yaml" > /dev/null
"$B/rusectl" --context-file "$ctx" rollout status campaign/push-a --timeout 120s | tail -1
echo "apply -> rollout complete: $(python3 -c "print(round($(date +%s.%N) - $s, 2))") s (rusectl polls)"
echo "CPU during the push: controller $(python3 -c "print(round($(cpu "$cp") - $c0, 2))") s, simulator $(python3 -c "print(round($(cpu "$sim") - $s0, 2))") s"
grep "lure registry updated" "$w/ctl.log" | tail -1
[ -n "$pp" ] && wait "$pp"
kill "$sp"; wait "$sp" 2>/dev/null
kill "$cp"; wait "$cp"
rm -rf "$w"
