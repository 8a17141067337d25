#!/usr/bin/env bash
# OpenCanary and the Ruse agent's decoys under the same login floods, and
# the floor (`ruse-sim --scenarios floor`: a one-thread server that answers
# each login and records nothing) under the same floods, for the most this
# machine and generator allow.
#
#   bench/peer.sh BIN_DIR WORK_DIR RESULTS_DIR SECONDS
#
# Called by bench/run.sh. Installs OpenCanary into a virtualenv
# (RUSE_BENCH_VENV, default /var/tmp/ruse-bench-venv) on first use. Each
# system runs alone while flooded; the flood is `ruse-sim --scenarios flood`.
set -euo pipefail
bin=$1
work=$2
results=$3
seconds=$4
connections=${RUSE_BENCH_FLOOD_CONNECTIONS:-64}
venv=${RUSE_BENCH_VENV:-/var/tmp/ruse-bench-venv}
say() { echo "==> $*" >&2; }
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done' EXIT

if ! [ -x "$venv/bin/twistd" ] || ! [ -x "$venv/bin/opencanary.tac" ]; then
    say "installing OpenCanary into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check opencanary
fi
oc_version=$("$venv/bin/pip" show opencanary | awk '/^Version/ { print $2 }')
py_version=$("$venv/bin/python" -c 'import platform; print(platform.python_version())')
ticks=$(getconf CLK_TCK)
cpu_of() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
rss_of() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# Floods `url` for the configured time while sampling `pid`; prints
# "rate cpu_ticks max_rss_kib elapsed".
flood() {
    local pid=$1 url=$2 name=$3
    local cpu0 max=0 r
    cpu0=$(cpu_of "$pid")
    local t0
    t0=$(date +%s.%N)
    "$bin/ruse-sim" --scenarios flood --flood "$url" \
        --flood-connections "$connections" --sources 16 --duration "${seconds}s" \
        --json "$work/flood-$name.json" > "$work/flood-$name.txt" &
    local sim=$!
    while kill -0 "$sim" 2>/dev/null; do
        r=$(rss_of "$pid")
        [ "$r" -gt "$max" ] && max=$r
        sleep 0.5
    done
    wait "$sim"
    local t1 cpu1
    t1=$(date +%s.%N)
    cpu1=$(cpu_of "$pid")
    local rate answered
    rate=$(python3 -c "import json; d=json.load(open('$work/flood-$name.json')); print(next(r['value'] for r in d['rows'] if r['metric']=='answered rate'))")
    answered=$(python3 -c "import json; d=json.load(open('$work/flood-$name.json')); print(int(next(r['value'] for r in d['rows'] if r['metric']=='attempts answered')))")
    echo "$rate $((cpu1 - cpu0)) $max $(python3 -c "print($t1 - $t0)") $answered"
}

runs=()
# system protocol "rate ticks rss elapsed answered" recorded [cpu_ticks]
# recorded is "null" for the floor (it keeps nothing); cpu_ticks is the CPU
# the attempts cost in all, when more than the flooded process's during the
# flood (Ruse: agent and controller, until every event is stored).
record() {
    local system=$1 protocol=$2 recorded=$4
    read -r rate cpu rss elapsed answered <<< "$3"
    local total=${5:-$cpu} lost=null
    [ "$recorded" != null ] && lost=$((answered > recorded ? answered - recorded : 0))
    runs+=("{\"system\": \"$system\", \"protocol\": \"$protocol\", \"rate\": $rate, \"answered\": $answered, \"recorded\": $recorded, \"lost\": $lost, \"max_rss_kib\": $rss, \"cpu_pct\": $(python3 -c "print(100 * $cpu / $ticks / $elapsed)"), \"cpu_s\": $(python3 -c "print($total / $ticks)")}")
    say "$system $protocol: $rate attempts/s answered, $recorded of $answered recorded, RSS max ${rss} KiB"
}

# The floor, one protocol at a time.
for proto in ftp http; do
    case $proto in ftp) url=ftp://127.0.0.1:20321 ;; http) url=http://127.0.0.1:20380/login ;; esac
    "$bin/ruse-sim" --scenarios floor --flood "$url" --duration "$((seconds + 30))s" \
        --json "$work/floor-$proto.json" > "$work/floor-$proto.txt" 2>&1 &
    floor_pid=$!
    pids+=("$floor_pid")
    port=${url#*127.0.0.1:}; port=${port%%/*}
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    say "floor: $proto flood"
    m=$(flood "$floor_pid" "$url" "floor-$proto")
    record floor "$proto" "$m" null
    kill "$floor_pid"; wait "$floor_pid" 2>/dev/null || true
done

# OpenCanary: FTP and the HTTP login page, logging to a file.
oc=$work/opencanary
mkdir -p "$oc"
"$venv/bin/python" - "$oc" <<'PY'
import json, sys, glob, os
oc = sys.argv[1]
src = glob.glob(os.path.join(sys.prefix, "lib/python3*/site-packages/opencanary/data/settings.json"))[0]
conf = json.load(open(src))
conf["device.listen_addr"] = "127.0.0.1"
conf["ftp.enabled"] = True
conf["ftp.port"] = 20021
conf["http.enabled"] = True
conf["http.port"] = 20080
conf["logger"]["kwargs"]["handlers"] = {
    "file": {"class": "logging.FileHandler", "filename": os.path.join(oc, "opencanary.log")}
}
json.dump(conf, open(os.path.join(oc, "opencanary.conf"), "w"), indent=1)
PY
(cd "$oc" && exec "$venv/bin/twistd" -noy "$venv/bin/opencanary.tac" --pidfile "$oc/twistd.pid" > "$oc/twistd.out" 2>&1) &
oc_pid=$!
pids+=("$oc_pid")
for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/20021) 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/20080) 2>/dev/null && break
    sleep 0.2
done
say "OpenCanary $oc_version: FTP flood"
m=$(flood "$oc_pid" ftp://127.0.0.1:20021 oc-ftp)
sleep 2
record opencanary ftp "$m" "$(grep -c '"logtype": 2000' "$oc/opencanary.log" || true)"
say "OpenCanary: HTTP login flood"
m=$(flood "$oc_pid" http://127.0.0.1:20080/index.html oc-http)
sleep 2
record opencanary http "$m" "$(grep -c '"logtype": 3001' "$oc/opencanary.log" || true)"
kill "$oc_pid"; wait "$oc_pid" 2>/dev/null || true

# Ruse: a controller and an agent running the same two services.
data=$work/peer-controller
"$bin/ruse-controller" init --data-dir "$data" --controller-url https://127.0.0.1:17590 > "$work/peer.init"
pin=$(grep -o 'sha256:[0-9a-f]*' "$work/peer.init" | head -n1)
ctx=$data/admin/rusectl.toml
# Every login attempt is recorded: no per-agent event quota in this race.
RUSE_AGENT_EVENTS_PER_SECOND=10000000 RUSE_AGENT_EVENT_BURST=10000000 \
RUSE_LOG_LEVEL=warn "$bin/ruse-controller" serve --data-dir "$data" --listen 127.0.0.1:17590 > "$work/peer-controller.log" 2>&1 &
ctl_pid=$!
pids+=("$ctl_pid")
for _ in $(seq 100); do "$bin/rusectl" --context-file "$ctx" whoami > /dev/null 2>&1 && break; sleep 0.1; done
"$bin/rusectl" --context-file "$ctx" token create --ttl 1h --uses 1 --label decoys=peer > "$work/peer.token" 2>/dev/null
mkdir -p "$work/peer-agent/root"
RUSE_LOG_LEVEL=warn "$bin/ruse-agent" run --controller https://127.0.0.1:17590 --ca-pin "$pin" \
    --token-file "$work/peer.token" --state-dir "$work/peer-agent/state" --root "$work/peer-agent/root" \
    > "$work/peer-agent.log" 2>&1 &
agent_pid=$!
pids+=("$agent_pid")
cat > "$work/peer.yaml" <<YAML
kind: Decoy
name: peer
selector: {decoys: peer}
address: 127.0.0.1
listen: 127.0.0.1
# OpenCanary refuses at once; so does this decoy (the default waits as
# vsftpd and a web login do, 300 ms, which bounds a flood by concurrency).
services:
  - {protocol: ftp, port: 20121, refusal_delay: 0s}
  - {protocol: http, port: 20180, refusal_delay: 0s}
YAML
for _ in $(seq 100); do
    "$bin/rusectl" --context-file "$ctx" get agents -o json 2>/dev/null | grep -q '"online"' && break
    sleep 0.2
done
"$bin/rusectl" --context-file "$ctx" apply -f "$work/peer.yaml" > /dev/null
for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/20121) 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/20180) 2>/dev/null && break
    sleep 0.2
done
logins() {
    "$bin/rusectl" --context-file "$ctx" get metrics 2>/dev/null \
        | awk '/^ruse_events_by_kind_total\{kind="decoy-login"\}/ { print $2 }' | head -n1
}
# Waits until the controller's count stops moving (the agent batches).
settled() {
    local last=-1 now
    for _ in $(seq 120); do
        now=$(logins); now=${now:-0}
        [ "$now" = "$last" ] && { echo "$now"; return; }
        last=$now
        sleep 1
    done
    echo "$last"
}
# Ruse's cost of a flood: the agent's and the controller's CPU from its
# start until the controller has stored every event.
ruse_flood() {
    local proto=$1 url=$2 before=$3
    local a0 c0 m stored
    a0=$(cpu_of "$agent_pid"); c0=$(cpu_of "$ctl_pid")
    say "Ruse: $proto flood"
    m=$(flood "$agent_pid" "$url" "ruse-$proto")
    stored=$(settled)
    record ruse "$proto" "$m" "$((stored - before))" \
        "$(($(cpu_of "$agent_pid") - a0 + $(cpu_of "$ctl_pid") - c0))"
    last_stored=$stored
}
ctl_cpu0=$(cpu_of "$ctl_pid")
t0=$(date +%s.%N)
ruse_flood ftp ftp://127.0.0.1:20121 0
ruse_flood http http://127.0.0.1:20180/login "$last_stored"
ctl_cpu_pct=$(python3 -c "import time; print(100 * ($(cpu_of "$ctl_pid") - $ctl_cpu0) / $ticks / ($(date +%s.%N) - $t0))")

{
    echo "{\"opencanary_version\": \"$oc_version\", \"python\": \"$py_version\", \"connections\": $connections,"
    echo " \"seconds\": $seconds, \"controller_cpu_pct\": $ctl_cpu_pct, \"runs\": ["
    (IFS=,; echo "${runs[*]}")
    echo "]}"
} > "$results/peer.json"
for f in "$work"/flood-*.txt "$work"/floor-*.txt; do
    { echo "# $(basename "$f")"; cat "$f"; } >> "$results/peer.txt"
done
