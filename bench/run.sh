#!/usr/bin/env bash
# Runs every Ruse benchmark on this machine and writes docs/benchmarks.md.
#
#   bench/run.sh            full run (10k agents, 10-minute idle agent, peer)
#   bench/run.sh --quick    tiny sizes: proves the instruments work (minutes)
#
# Environment:
#   RUSE_BENCH_SIZES       simulated fleet sizes (default "1000 10000")
#   RUSE_BENCH_IDLE        idle-agent measurement in seconds (default 600)
#   RUSE_BENCH_RATE        sustained ingest rate, events/s (default 25000);
#                          a second run at 3x measures saturation
#   RUSE_BENCH_OUT         the report (default docs/benchmarks.md)
#   RUSE_BENCH_PARTS       which parts to run (default "fleet agent peer criterion")
#   RUSE_BENCH_RESULTS     results directory to add to (default: a new one),
#                          so one part can be measured again after a change
#   CARGO_TARGET_DIR       where release binaries are built
#
# Needs root for the real agent's fanotify watcher (touch latency, idle
# agent). Everything listens on 127.0.0.1 and every process it starts is
# stopped by pid when it ends.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
quick=no
[ "${1:-}" = --quick ] && quick=yes
if [ "$quick" = yes ]; then
    sizes=${RUSE_BENCH_SIZES:-"20"}
    idle=${RUSE_BENCH_IDLE:-5}
    rate=${RUSE_BENCH_RATE:-2000}
    ingest_for=3s
    touches=20
    idle_lures=50
    flood_for=3
else
    sizes=${RUSE_BENCH_SIZES:-"1000 10000"}
    idle=${RUSE_BENCH_IDLE:-600}
    rate=${RUSE_BENCH_RATE:-25000}
    ingest_for=20s
    touches=300
    idle_lures=1000
    flood_for=20
fi
out=${RUSE_BENCH_OUT:-$root/docs/benchmarks.md}
target=${CARGO_TARGET_DIR:-$root/target}
bin=$target/release
work=$(mktemp -d /var/tmp/ruse-bench.XXXXXX)
results=${RUSE_BENCH_RESULTS:-$work/results}
mkdir -p "$results"
parts=${RUSE_BENCH_PARTS:-"fleet agent peer criterion"}
want() { case " $parts " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
pids=()
# Which commit measured each part: report.py names it, so a results
# directory that mixes parts from several commits says so.
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$root" diff --quiet HEAD 2>/dev/null || commit="$commit+changes"
for p in $parts size; do echo "$commit" > "$results/commit-$p"; done
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    # The stores hold millions of events (gigabytes): keep only results
    # and logs unless RUSE_BENCH_KEEP is set.
    if [ -z "${RUSE_BENCH_KEEP:-}" ]; then
        find "$work" -mindepth 1 -maxdepth 1 -type d ! -name results -exec rm -rf {} +
    fi
}
trap cleanup EXIT
say() { echo "==> $*" >&2; }

say "building release binaries"
(cd "$root" && cargo build --release --quiet -p ruse-controller -p ruse-agent -p rusectl -p ruse-e2e --bins)

# A fresh controller: init, serve on a free port; sets ctl_pid, ctl_url, pin,
# ctx.
port=17600
start_controller() {
    local name=$1
    port=$((port + 10))
    local data=$work/$name
    ctl_data=$data
    "$bin/ruse-controller" init --data-dir "$data" --controller-url "https://127.0.0.1:$port" > "$work/$name.init"
    pin=$(grep -o 'sha256:[0-9a-f]*' "$work/$name.init" | head -n1)
    ctx=$data/admin/rusectl.toml
    RUSE_LOG_LEVEL=warn RUSE_METRICS_LISTEN=127.0.0.1:$((port + 1)) \
        "$bin/ruse-controller" serve --data-dir "$data" --listen "127.0.0.1:$port" \
        > "$work/$name.log" 2>&1 &
    ctl_pid=$!
    pids+=("$ctl_pid")
    ctl_url=https://127.0.0.1:$port
    for _ in $(seq 100); do
        "$bin/rusectl" --context-file "$ctx" whoami > /dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "controller $name did not start; see $work/$name.log" >&2
    exit 1
}
stop_controller() {
    kill "$ctl_pid" 2>/dev/null || true
    wait "$ctl_pid" 2>/dev/null || true
    [ -n "${RUSE_BENCH_KEEP:-}" ] || rm -rf "$ctl_data"
}

# 1. Simulated fleets: memory per agent, push, ingest, storm.
if want fleet; then
for n in $sizes; do
    say "fleet of $n simulated agents"
    start_controller "fleet-$n"
    "$bin/ruse-sim" --controller "$ctl_url" --ca-pin "$pin" --context-file "$ctx" \
        -n "$n" --lures 10 --rate "$rate" --batch 100 --duration "$ingest_for" --hold 10s \
        --sources 16 --concurrency 128 --controller-pid "$ctl_pid" \
        --scenarios connect,push,ingest,storm --timeout 900s --json "$results/fleet-$n.json" \
        | tee "$results/fleet-$n.txt"
    stop_controller
done

# Saturation: three times the sustained rate, on the smallest fleet.
n=${sizes%% *}
say "ingest saturation, $n agents at $((rate * 3)) events/s"
start_controller "saturation"
"$bin/ruse-sim" --controller "$ctl_url" --ca-pin "$pin" --context-file "$ctx" \
    -n "$n" --lures 10 --rate "$((rate * 3))" --batch 100 --duration "$ingest_for" \
    --sources 16 --concurrency 128 --controller-pid "$ctl_pid" \
    --scenarios push,ingest --timeout 900s --json "$results/saturation.json" \
    | tee "$results/saturation.txt"
stop_controller
fi

# 2. A real agent with fanotify: touch latency, then idle cost.
if want agent; then
say "real agent: lure read to rusectl watch, then idle for ${idle}s"
start_controller agent
agent_dir=$work/agent-host
mkdir -p "$agent_dir/root/home/clinician" "$agent_dir/root/etc" "$agent_dir/state"
"$bin/rusectl" --context-file "$ctx" token create --ttl 1h --uses 1 --label role=bench --label decoys=bench > "$agent_dir/token" 2>/dev/null
"$bin/ruse-agent" run --controller "$ctl_url" --ca-pin "$pin" --token-file "$agent_dir/token" \
    --state-dir "$agent_dir/state" --root "$agent_dir/root" \
    > "$work/agent.log" 2>&1 &
agent_pid=$!
pids+=("$agent_pid")
{
    echo "kind: Decoy"
    echo "name: bench-decoy"
    echo "selector: {decoys: bench}"
    echo "address: 127.0.0.1"
    echo "listen: 127.0.0.1"
    echo "services: [{protocol: ssh, port: 22222}]"
    echo "---"
    echo "kind: Campaign"
    echo "name: bench-touch"
    echo "selector: {role: bench}"
    echo "lures:"
    echo "  - {template: patient-csv, name: export-a, path: '~/touch'}"
    echo "  - {template: hl7-adt, name: adt-a, path: '~/touch'}"
    echo "  - {template: fhir-bundle, name: fhir-a, path: '~/touch'}"
    echo "  - {template: dicom-study, name: dicom-a, path: '~/touch'}"
} > "$work/touch.yaml"
"$bin/rusectl" --context-file "$ctx" apply -f "$work/touch.yaml" > /dev/null
"$bin/rusectl" --context-file "$ctx" rollout status campaign/bench-touch --timeout 120s > /dev/null
"$bin/ruse-sim" --controller "$ctl_url" --ca-pin "$pin" --context-file "$ctx" \
    --scenarios touch --touch-root "$agent_dir/root/home/clinician/touch" --touches "$touches" \
    --timeout 600s --json "$results/touch.json" | tee "$results/touch.txt"

# Idle: many lures and one decoy service, nothing happening.
"$root/bench/idle-lures.sh" "$idle_lures" > "$work/idle.yaml"
"$bin/rusectl" --context-file "$ctx" apply -f "$work/idle.yaml" > /dev/null
for c in $(seq 0 $(((idle_lures - 1) / 50))); do
    "$bin/rusectl" --context-file "$ctx" rollout status "campaign/bench-idle-$c" --timeout 600s > /dev/null
done
lures=$(find "$agent_dir/root/home/clinician" -type f | wc -l)
sleep 5
ticks=$(getconf CLK_TCK)
cpu_of() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
rss_of() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
hwm_of() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }
cpu0=$(cpu_of "$agent_pid")
max_rss=0
for _ in $(seq "$idle"); do
    r=$(rss_of "$agent_pid")
    [ "$r" -gt "$max_rss" ] && max_rss=$r
    sleep 1
done
cpu1=$(cpu_of "$agent_pid")
rss=$(rss_of "$agent_pid")
hwm=$(hwm_of "$agent_pid")
wakeups=$(awk '/^voluntary_ctxt_switches|^nonvoluntary_ctxt_switches/ { s += $2 } END { print s }' /proc/"$agent_pid"/task/*/status)
cat > "$results/idle.json" <<JSON
{"seconds": $idle, "lures": $lures, "rss_kib": $rss, "max_rss_kib": $max_rss, "hwm_kib": $hwm,
 "cpu_ticks": $((cpu1 - cpu0)), "ticks_per_second": $ticks, "context_switches_total": $wakeups}
JSON
cat "$results/idle.json"
kill "$agent_pid"; wait "$agent_pid" 2>/dev/null || true
stop_controller
fi

# 3. Sizes.
stat -c '{"agent_bytes": %s}' "$bin/ruse-agent" > "$results/size.json"

# 4. The peer: OpenCanary against Ruse's decoys, same flood.
if want peer && { [ "$quick" = no ] || [ -n "${RUSE_BENCH_PEER:-}" ]; }; then
    bash "$root/bench/peer.sh" "$bin" "$work" "$results" "$flood_for"
fi

# 5. Criterion micro-benchmarks.
if want criterion && [ "$quick" = no ]; then
    say "criterion benches"
    (cd "$root" && cargo bench --quiet -p ruse-controller --bench hot_paths -- --noplot 2>/dev/null) \
        | tee "$results/criterion.txt"
fi

say "writing $out"
python3 "$root/bench/report.py" "$results" "$quick" > "$out.new"
mv "$out.new" "$out"
say "done: $out (raw results in $results)"
