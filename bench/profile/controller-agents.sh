#!/usr/bin/env bash
# A controller holding N idle simulated agents; prints its memory.
# usage: controller-agents.sh [N=1000] [HOLD_SECONDS=40]
# env: B, WRAP (e.g. "heaptrack -o /tmp/ht-ctl"), KILLSIG, KILLAT (seconds
# after the simulator starts; default: after the simulator's hold)
set -u
n=${1:-1000}; hold=${2:-40}
B=${B:?set B to a directory of release binaries}
w=$(mktemp -d /tmp/ruse-ctl.XXXXXX)
"$B/ruse-controller" init --data-dir "$w/ctl" > "$w/init"
pin=$(grep -o 'sha256:[0-9a-f]*' "$w/init" | head -1)
RUSE_LOG_LEVEL=warn ${WRAP:-} "$B/ruse-controller" serve --data-dir "$w/ctl" --listen 127.0.0.1:17480 > "$w/ctl.log" 2>&1 &
cp=$!
sleep 3
rp=$(pgrep -P "$cp" ruse-controller || echo "$cp")
timeout 900 "$B/ruse-sim" --controller https://127.0.0.1:17480 --admin https://127.0.0.1:17480 --ca-pin "$pin" \
    --context-file "$w/ctl/admin/rusectl.toml" -n "$n" --lures 10 --hold "${hold}s" --sources 16 \
    --concurrency 128 --controller-pid "$rp" --scenarios connect > "$w/sim.txt" 2>&1 &
sp=$!
if [ -n "${KILLAT:-}" ]; then
    sleep "$KILLAT"
    grep -E 'VmRSS|RssAnon|RssFile|Threads' "/proc/$rp/status"
    kill "-${KILLSIG:-TERM}" "$rp"
fi
wait "$sp"
kill "$rp" 2>/dev/null; wait "$cp" 2>/dev/null
grep -E 'per agent|RSS|ramp' "$w/sim.txt"
rm -rf "$w"
