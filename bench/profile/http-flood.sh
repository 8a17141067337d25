#!/usr/bin/env bash
# The agent's HTTP (or, with PROTO=ftp, FTP) decoy under a login flood
# (ruse-sim, 64 connections);
# prints the agent's peak RSS. The agent is stopped before the flood ends.
# env: B, WRAP, KILLSIG, CONN (64), SECS (15), and any MALLOC_* to compare
set -u
B=${B:?set B to a directory of release binaries}
conn=${CONN:-64}; secs=${SECS:-15}; proto=${PROTO:-http}
case $proto in http) port=20280; url=http://127.0.0.1:20280/login ;; ftp) port=20221; url=ftp://127.0.0.1:20221 ;; *) echo "PROTO is http or ftp" >&2; exit 2 ;; esac
w=$(mktemp -d /tmp/ruse-flood.XXXXXX); mkdir -p "$w/root"
"$B/ruse-controller" init --data-dir "$w/ctl" --controller-url https://127.0.0.1:17595 > "$w/init"
pin=$(grep -o 'sha256:[0-9a-f]*' "$w/init" | head -1); ctx=$w/ctl/admin/rusectl.toml
RUSE_LOG_LEVEL=warn "$B/ruse-controller" serve --data-dir "$w/ctl" --listen 127.0.0.1:17595 > "$w/ctl.log" 2>&1 &
cp=$!; sleep 1.5
"$B/rusectl" --context-file "$ctx" token create --ttl 1h --uses 1 > "$w/token" 2>/dev/null
RUSE_LOG_LEVEL=warn ${WRAP:-} "$B/ruse-agent" run --controller https://127.0.0.1:17595 --ca-pin "$pin" \
    --token-file "$w/token" --state-dir "$w/state" --root "$w/root" --label decoys=peer > "$w/agent.log" 2>&1 &
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
for _ in $(seq $((secs * 2 - 6))); do
    r=$(awk '/^VmRSS/ { print $2 }' "/proc/$rp/status"); [ "$r" -gt "$max" ] && max=$r; sleep 0.5
done
echo "agent peak RSS during the flood: $max KiB"
grep -E 'VmRSS|RssAnon|RssFile|Threads' "/proc/$rp/status"
kill "-${KILLSIG:-TERM}" "$rp"; wait "$sp"; sleep 2; kill "$ap" 2>/dev/null; wait "$ap"
kill "$cp"; wait "$cp"
grep -E 'answered' "$w/flood.txt"
rm -rf "$w"
