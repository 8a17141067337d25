#!/usr/bin/env bash
# An idle real agent with LURES lures and one SSH decoy; prints its memory.
# usage: idle-agent.sh [LURES=1000] [IDLE_SECONDS=30]   (root: fanotify)
# env: B (binaries), WRAP (e.g. "heaptrack -o /tmp/ht-agent"), KILLSIG
set -u
lures=${1:-1000}; idle=${2:-30}
B=${B:?set B to a directory of release binaries}
w=$(mktemp -d /tmp/ruse-idle.XXXXXX)
mkdir -p "$w/root/home/clinician" "$w/root/etc" "$w/state"
"$B/ruse-controller" init --data-dir "$w/ctl" --controller-url https://127.0.0.1:17470 > "$w/init"
pin=$(grep -o 'sha256:[0-9a-f]*' "$w/init" | head -1); ctx=$w/ctl/admin/rusectl.toml
RUSE_LOG_LEVEL=warn "$B/ruse-controller" serve --data-dir "$w/ctl" --listen 127.0.0.1:17470 > "$w/ctl.log" 2>&1 &
cp=$!
sleep 1.5
"$B/rusectl" --context-file "$ctx" token create --ttl 1h --uses 1 --label role=bench --label decoys=bench > "$w/token" 2>/dev/null
${WRAP:-} "$B/ruse-agent" run --controller https://127.0.0.1:17470 --ca-pin "$pin" --token-file "$w/token" \
    --state-dir "$w/state" --root "$w/root" > "$w/agent.log" 2>&1 &
ap=$!
for _ in $(seq 300); do grep -q 'session open' "$w/agent.log" && break; sleep 0.2; done
printf 'kind: Decoy\nname: bench-decoy\nselector: {decoys: bench}\naddress: 127.0.0.1\nlisten: 127.0.0.1\nservices: [{protocol: ssh, port: 22232}]\n' > "$w/d.yaml"
"$B/rusectl" --context-file "$ctx" apply -f "$w/d.yaml" > /dev/null
"$(dirname "$0")/../idle-lures.sh" "$lures" > "$w/idle.yaml"
"$B/rusectl" --context-file "$ctx" apply -f "$w/idle.yaml" > /dev/null
for c in $(seq 0 $(((lures - 1) / 50))); do
    "$B/rusectl" --context-file "$ctx" rollout status "campaign/bench-idle-$c" --timeout 600s > /dev/null
done
echo "lure files: $(find "$w/root/home/clinician" -type f | wc -l)"
sleep "$idle"
rp=$(pgrep -P "$ap" ruse-agent || echo "$ap")
grep -E 'VmRSS|VmHWM|RssAnon|RssFile|Threads' "/proc/$rp/status"
kill "-${KILLSIG:-INT}" "$rp"; sleep 3; kill "$ap" 2>/dev/null; wait "$ap"
kill "$cp"; wait "$cp"
rm -rf "$w"
