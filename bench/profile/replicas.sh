#!/usr/bin/env bash
# N simulated agents spread over 3 controller replicas on one throw-away
# PostgreSQL 15 database: memory per agent per replica, a 10-lure campaign
# applied through one replica until every agent acked it, then failover —
# events at RATE/s while the first replica (holding a third of the fleet)
# is killed with SIGKILL, until its agents are online at the others; then
# the events the database holds against those the simulator sent.
# usage: replicas.sh [N=30000] [RATE=2000] [SECONDS=30]
#
# The database runs as the postgres user when run as root (initdb refuses
# root), on 127.0.0.1:17470; replicas r0, r1, r2 listen on 17461–17463
# (admin on r1). Past ~19,000 agents the simulator needs more file
# descriptors than the hard limit here allows: run as root (it raises its
# own). Prints the simulator's rows and the database's CPU over the run.
# CTL_LOG sets the replicas' log filter (default warn); KEEP=1 keeps the
# work directory with their logs.
set -u
n=${1:-30000}; rate=${2:-2000}; secs=${3:-30}
B=${B:?set B to a directory of release binaries}
w=$(mktemp -d /tmp/ruse-replicas.XXXXXX)
P=/usr/lib/postgresql/15/bin
as_pg=()
if [ "$(id -u)" = 0 ]; then
    chown postgres "$w"
    as_pg=(setpriv --reuid postgres --regid postgres --init-groups --)
fi
"${as_pg[@]}" "$P/initdb" -D "$w/pg" -A trust -U ruse --no-sync -E UTF8 --locale=C > "$w/initdb.log"
"${as_pg[@]}" "$P/postgres" -D "$w/pg" -p 17470 -k "$w" -c listen_addresses=127.0.0.1 \
    -c max_connections=200 > "$w/pg.log" 2>&1 &
pg=$!
for _ in $(seq 100); do "$P/pg_isready" -q -h 127.0.0.1 -p 17470 && break; sleep 0.1; done
psql -X -q -h 127.0.0.1 -p 17470 -U ruse -d postgres -c "CREATE DATABASE ruse"
export RUSE_STORE_URL="postgres://ruse@127.0.0.1:17470/ruse?sslmode=disable"
# CPU seconds used so far by the database server and its backends.
pg_cpu() {
    local hz total=0 pid
    hz=$(getconf CLK_TCK)
    for pid in "$pg" $(pgrep -P "$pg"); do
        [ -r "/proc/$pid/stat" ] || continue
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    awk -v t="$total" -v hz="$hz" 'BEGIN { printf "%.2f", t / hz }'
}
"$B/ruse-controller" init --data-dir "$w/ctl" > "$w/init"
pin=$(grep -o 'sha256:[0-9a-f]*' "$w/init" | head -1)
pids=(); urls=()
for i in 0 1 2; do
    RUSE_NAME=r$i RUSE_LOG_LEVEL="${CTL_LOG:-warn}" "$B/ruse-controller" serve --data-dir "$w/ctl" \
        --listen "127.0.0.1:1746$((i + 1))" > "$w/r$i.log" 2>&1 &
    pids+=($!); urls+=("https://127.0.0.1:1746$((i + 1))")
done
sleep 2
before=$(pg_cpu)
timeout 1800 "$B/ruse-sim" --controller "$(IFS=,; echo "${urls[*]}")" --admin "${urls[1]}" \
    --ca-pin "$pin" --context-file "$w/ctl/admin/rusectl.toml" -n "$n" --lures 10 \
    --rate "$rate" --batch 20 --duration "${secs}s" --hold 10s --sources 16 --concurrency 128 \
    --controller-pid "$(IFS=,; echo "${pids[*]}")" --kill-replica 0 --timeout 600s \
    --scenarios "${SCENARIOS:-connect,push,failover}" 2>&1 | tee "$w/sim.txt" | grep -E '^(ruse-sim|connect|push|failover) |rror'
used=$(awk -v a="$(pg_cpu)" -v b="$before" 'BEGIN { printf "%.2f", a - b }')
stored=$(psql -X -q -A -t -h 127.0.0.1 -p 17470 -U ruse -d ruse -c "SELECT count(*) || ' rows, ' || count(DISTINCT id) || ' distinct ids' FROM events")
echo "events stored: $stored; postgres CPU over the run: ${used} s"
# The replicas still running (failover killed r0).
for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
kill -QUIT "$pg"; wait "$pg"
if [ -n "${KEEP:-}" ]; then echo "kept $w (replica logs r0-r2.log)"; else rm -rf "$w"; fi
