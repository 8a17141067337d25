#!/usr/bin/env bash
# Sustained ingest from N simulated agents (connect, push, then ingest at
# RATE events/s for SECONDS), optionally with perf recording the
# controller for PERF_SECONDS once ingest is under way (PDELAY, default 16 s
# after the simulator starts). perf data: /tmp/perf-ingest.data
# usage: ingest.sh [N=1000] [RATE=25000] [SECONDS=20] [PERF_SECONDS=0]
#
# STORE=postgres runs the controller on a throw-away PostgreSQL 15 cluster
# (initdb under a temporary directory, as the postgres user when run as
# root, on 127.0.0.1:17470) instead of sled, and also prints the CPU the
# database's processes used over the whole simulator run.
#
# RAW_EVENTS=FORMAT adds a file output with events = true (FORMAT json, ecs
# or ocsf): every stored event is also queued for it and written, and the
# lines written by the end are printed.
set -u
n=${1:-1000}; rate=${2:-25000}; secs=${3:-20}; ps=${4:-0}
B=${B:?set B to a directory of release binaries}
w=$(mktemp -d /tmp/ruse-ingest.XXXXXX)
store_args=()
pg=
if [ "${STORE:-sled}" = postgres ]; then
    . "$(dirname "$0")/postgres.sh"
    store_args=(--store-url "postgres://ruse@127.0.0.1:17470/ruse?sslmode=disable")
fi
"$B/ruse-controller" init --data-dir "$w/ctl" "${store_args[@]}" > "$w/init"
pin=$(grep -o 'sha256:[0-9a-f]*' "$w/init" | head -1)
config_args=()
if [ -n "${RAW_EVENTS:-}" ]; then
    printf '[[outputs]]\nname = "siem"\ntype = "file"\npath = "%s"\nformat = "%s"\nevents = true\n' \
        "$w/events.ndjson" "$RAW_EVENTS" > "$w/ctl.toml"
    config_args=(--config "$w/ctl.toml")
fi
RUSE_LOG_LEVEL=warn "$B/ruse-controller" serve "${config_args[@]}" --data-dir "$w/ctl" --listen 127.0.0.1:17460 "${store_args[@]}" > "$w/ctl.log" 2>&1 &
cp=$!
sleep 1.5
pp=
if [ "$ps" != 0 ]; then
    (sleep "${PDELAY:-16}"; perf record -F 199 --call-graph dwarf,32768 -o /tmp/perf-ingest.data -p "$cp" -- sleep "$ps" > "$w/perf.log" 2>&1) &
    pp=$!
fi
[ -n "$pg" ] && before=$(pg_cpu)
timeout 900 "$B/ruse-sim" --controller https://127.0.0.1:17460 --admin https://127.0.0.1:17460 --ca-pin "$pin" \
    --context-file "$w/ctl/admin/rusectl.toml" -n "$n" --lures 10 --rate "$rate" --batch 100 \
    --duration "${secs}s" --hold 5s --sources 16 --concurrency 128 --controller-pid "$cp" \
    --scenarios connect,push,ingest 2>&1 | grep -E '^(connect|push|ingest) '
if [ -n "$pg" ]; then
    used=$(awk -v a="$(pg_cpu)" -v b="$before" 'BEGIN { printf "%.2f", a - b }')
    stored=$(psql -X -q -A -t -h 127.0.0.1 -p 17470 -U ruse -d ruse -c "SELECT count(*) FROM events")
    echo "postgres CPU over the whole run (connect, push, ingest): ${used} s; events stored: ${stored}"
fi
[ -n "$pp" ] && wait "$pp"
if [ -n "${RAW_EVENTS:-}" ]; then
    echo "raw events written to the file output by the end of the hold: $(wc -l < "$w/events.ndjson")"
fi
kill "$cp"; wait "$cp"
if [ -n "$pg" ]; then kill -QUIT "$pg"; wait "$pg"; fi
rm -rf "$w"
