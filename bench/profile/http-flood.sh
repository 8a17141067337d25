#!/usr/bin/env bash
# The agent's HTTP (or, with PROTO=ftp, FTP) decoy under a login flood
# (ruse-sim, 64 connections);
# prints the agent's peak RSS, and the CPU the agent and the controller
# used over 8 s from the flood's fifth second, per attempt answered in
# the whole flood. The agent is stopped before the flood ends.
# With STAT=1, `perf stat` counts the agent's system calls and task
# switches over those 8 s; with PERF=FILE, `perf record -g` samples the
# agent into FILE.agent and the controller into FILE.controller.
# env: B, WRAP, KILLSIG, CONN (64), SECS (15), STAT, PERF, and any MALLOC_*
# to compare
set -u
B=${B:?set B to a directory of release binaries}
conn=${CONN:-64}; secs=${SECS:-15}; proto=${PROTO:-http}
[ "$secs" -ge 14 ] || { echo "SECS is at least 14 (the CPU window is seconds 5 to 13)" >&2; exit 2; }
case $proto in http) port=20280; url=http://127.0.0.1:20280/login ;; ftp) port=20221; url=ftp://127.0.0.1:20221 ;; *) echo "PROTO is http or ftp" >&2; exit 2 ;; esac
w=$(mktemp -d /tmp/ruse-flood.XXXXXX); mkdir -p "$w/root"
"$B/ruse-controller" init --data-dir "$w/ctl" --controller-url https://127.0.0.1:17595 > "$w/init"
pin=$(grep -o 'sha256:[0-9a-f]*' "$w/init" | head -1); ctx=$w/ctl/admin/rusectl.toml
RUSE_AGENT_EVENTS_PER_SECOND=10000000 RUSE_AGENT_EVENT_BURST=10000000 \
RUSE_LOG_LEVEL=warn "$B/ruse-controller" serve --data-dir "$w/ctl" --listen 127.0.0.1:17595 > "$w/ctl.log" 2>&1 &
cp=$!; sleep 1.5
"$B/rusectl" --context-file "$ctx" token create --ttl 1h --uses 1 --label decoys=peer > "$w/token" 2>/dev/null
RUSE_LOG_LEVEL=warn ${WRAP:-} "$B/ruse-agent" run --controller https://127.0.0.1:17595 --ca-pin "$pin" \
    --token-file "$w/token" --state-dir "$w/state" --root "$w/root" > "$w/agent.log" 2>&1 &
ap=$!
printf 'kind: Decoy\nname: peer\nselector: {decoys: peer}\naddress: 127.0.0.1\nlisten: 127.0.0.1\nservices:\n  - {protocol: %s, port: %s, refusal_delay: 0s}\n' "$proto" "$port" > "$w/d.yaml"
for _ in $(seq 100); do "$B/rusectl" --context-file "$ctx" get agents -o json 2>/dev/null | grep -q '"online"' && break; sleep 0.2; done
"$B/rusectl" --context-file "$ctx" apply -f "$w/d.yaml" > /dev/null
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.2; done
rp=$(pgrep -P "$ap" ruse-agent || echo "$ap")
"$B/ruse-sim" --scenarios flood --flood "$url" --flood-connections "$conn" \
    --sources 16 --duration "${secs}s" > "$w/flood.txt" 2>&1 &
sp=$!
max=0
rss() { r=$(awk '/^VmRSS/ { print $2 }' "/proc/$rp/status"); [ "$r" -gt "$max" ] && max=$r; }
cpu() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
for _ in $(seq 10); do rss; sleep 0.5; done
a0=$(cpu "$rp"); c0=$(cpu "$cp")
watchers=()
if [ -n "${STAT:-}" ]; then
    calls=fdatasync,fsync,futex,accept4,writev,sendto,recvfrom,read,pread64,epoll_wait,epoll_ctl,shutdown,close,rename,openat
    perf stat -e "$(echo "$calls" | sed 's/\([a-z0-9_]*\)/syscalls:sys_enter_\1/g'),context-switches" \
        -p "$rp" -o "$w/stat" -- sleep 8 &
    watchers+=($!)
fi
if [ -n "${PERF:-}" ]; then
    perf record -F 999 -g -p "$rp" -o "$PERF.agent" -- sleep 8 > /dev/null 2>&1 &
    watchers+=($!)
    perf record -F 999 -g -p "$cp" -o "$PERF.controller" -- sleep 8 > /dev/null 2>&1 &
    watchers+=($!)
fi
for _ in $(seq 16); do rss; sleep 0.5; done
a1=$(cpu "$rp"); c1=$(cpu "$cp")
for p in "${watchers[@]}"; do wait "$p"; done
for _ in $(seq $((secs * 2 - 32))); do rss; sleep 0.5; done
echo "agent peak RSS during the flood: $max KiB"
tck=$(getconf CLK_TCK)
echo "CPU over 8 s mid-flood: agent $(( (a1 - a0) * 100 / (8 * tck) )) %, controller $(( (c1 - c0) * 100 / (8 * tck) )) % of a core"
[ -n "${STAT:-}" ] && grep -E 'syscalls|context' "$w/stat"
grep -E 'VmRSS|RssAnon|RssFile|Threads' "/proc/$rp/status"
kill "-${KILLSIG:-TERM}" "$rp"; wait "$sp"; sleep 2; kill "$ap" 2>/dev/null; wait "$ap"
kill "$cp"; wait "$cp"
grep -E 'answered' "$w/flood.txt"
rate=$(awk '/answered rate/ { print $4 }' "$w/flood.txt")
python3 -c "r = $rate; print(f'CPU per attempt: agent {($a1 - $a0) / $tck / 8 / r * 1e6:.0f} us, controller {($c1 - $c0) / $tck / 8 / r * 1e6:.0f} us')"
rm -rf "$w"
