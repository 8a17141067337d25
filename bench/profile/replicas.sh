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
# (admin on r1). Prints the fleet's figures (simulators' latencies merged)
# and the database's CPU over the run.
# HOLD sets how long the fleet is held before memory is read (10s);
# CTL_LOG sets the replicas' log filter (default warn); KEEP=1 keeps the
# work directory with their logs.
set -u
n=${1:-30000}; rate=${2:-2000}; secs=${3:-30}
B=${B:?set B to a directory of release binaries}
w=$(mktemp -d /tmp/ruse-replicas.XXXXXX)
PG_ARGS="-c max_connections=200 ${PG_EXTRA:-}" . "$(dirname "$0")/postgres.sh"
export RUSE_STORE_URL="postgres://ruse@127.0.0.1:17470/ruse?sslmode=disable"
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
# One simulator holds at most ~19,000 connections here (the hard file
# limit); past 15,000 agents the fleet is split over simulators that meet
# in $w/fleet (ruse-sim --peers) and share one campaign.
sims=$(( (n + 14999) / 15000 ))
simpids=()
for k in $(seq 0 $((sims - 1))); do
    timeout 1800 "$B/ruse-sim" --controller "$(IFS=,; echo "${urls[*]}")" --admin "${urls[1]}" \
        --ca-pin "$pin" --context-file "$w/ctl/admin/rusectl.toml" -n $((n / sims)) --lures 10 \
        --rate $((rate / sims)) --batch 20 --duration "${secs}s" --hold "${HOLD:-10s}" --sources 16 \
        --concurrency $((128 / sims)) --controller-pid "$(IFS=,; echo "${pids[*]}")" --kill-replica 0 \
        --timeout 600s --peers "$w/fleet" --peer-count "$sims" --json "$w/sim-$k.json" \
        --scenarios "${SCENARIOS:-connect,push,failover}" > "$w/sim-$k.txt" 2>&1 &
    simpids+=($!)
done
for p in "${simpids[@]}"; do wait "$p" || echo "a simulator failed: $(tail -3 "$w"/sim-*.txt)"; done
grep -hE '^ruse-sim' "$w"/sim-*.txt
# The fleet's figures: each simulator's rows, latencies merged over all.
python3 - "$w"/sim-*.json <<'PY'
import json, math, sys
runs = [json.load(open(f)) for f in sys.argv[1:]]
def pct(xs, p):
    xs = sorted(xs)
    return xs[max(1, math.ceil(p / 100 * len(xs))) - 1] if xs else 0
def rows(scenario):
    out = {}
    for r in runs:
        for row in r["rows"]:
            if row["scenario"] == scenario:
                out.setdefault(row["metric"], []).append(row["value"])
    return out
print(f"simulators: {len(runs)}, agents: {sum(r['agents'] for r in runs)}")
for metric, values in rows("connect").items():
    if "replica" in metric or metric.startswith("controller"):
        print(f"connect  {metric:<40} {values[-1]:>12.2f}  (as the last simulator measured)")
for name, scenario in (("push acked", "push"), ("failover session back", "failover")):
    xs = [x for r in runs for x in r.get("samples", {}).get(name, [])]
    if xs:
        print(f"{scenario:<8} {name + ' p50/p99/max (ms)':<40} {pct(xs, 50):>10.1f} {pct(xs, 99):>10.1f} {max(xs):>10.1f}  ({len(xs)} agents)")
f = rows("failover")
for metric in ("agents at the killed replica", "sessions lost", "reconnect failures", "events sent", "events acked"):
    if metric in f:
        print(f"failover {metric:<40} {sum(f[metric]):>12.0f}")
for metric in ("all online elsewhere (get agents)", "batch ack max"):
    if metric in f:
        print(f"failover {metric + ' (slowest simulator)':<40} {max(f[metric]):>12.2f}")
PY
used=$(awk -v a="$(pg_cpu)" -v b="$before" 'BEGIN { printf "%.2f", a - b }')
stored=$(psql -X -q -A -t -h 127.0.0.1 -p 17470 -U ruse -d ruse -c "SELECT count(*) || ' rows, ' || count(DISTINCT id) || ' distinct ids' FROM events")
echo "events stored: $stored; postgres CPU over the run: ${used} s"
# The replicas still running (failover killed r0).
for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
kill -QUIT "$pg"; wait "$pg"
if [ -n "${KEEP:-}" ]; then echo "kept $w (replica logs r0-r2.log)"; else rm -rf "$w"; fi
