#!/usr/bin/env bash
# The Windows agent under Wine, idle with LURES lures; prints its memory and
# the sizes of the exe and the MSI. Under Wine, so the figures include
# Wine's own libraries in the process (a bare `cmd.exe` is measured beside
# it for that reason); a real Windows host gives different numbers.
# usage: windows-idle.sh [LURES=1000] [IDLE_SECONDS=60]
# env: B (Linux binaries: ruse-controller, rusectl), W (the Windows build:
#      ruse-agent.exe, ruse-agent.msi), SHIM (tests/windows/bcryptprimitives.c)
set -u
lures=${1:-1000}; idle=${2:-60}
B=${B:?set B to a directory with ruse-controller and rusectl}
W=${W:?set W to the directory deploy/agent/windows/build.sh wrote}
here=$(cd "$(dirname "$0")" && pwd)
shim=${SHIM:-$here/../../tests/windows/bcryptprimitives.c}
w=$(mktemp -d /var/tmp/ruse-winidle.XXXXXX)
export WINEPREFIX=$w/prefix WINEDEBUG=-all HOME=$w/home WINEDLLOVERRIDES="mscoree,mshtml=;winemenubuilder.exe=d"
unset DISPLAY
mkdir -p "$HOME"
wineboot -i > /dev/null 2>&1; wineserver --wait
x86_64-w64-mingw32-gcc -shared -O2 -o "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll" "$shim" -ladvapi32
# Profiles' shell folders are links into HOME; make them folders.
for l in "$WINEPREFIX"/drive_c/users/*/*; do [ -L "$l" ] && rm "$l" && mkdir "$l"; done
wine cmd.exe < <(sleep $((idle + 600))) > /dev/null 2>&1 &
keeper=$!

"$B/ruse-controller" init --data-dir "$w/ctl" --controller-url https://127.0.0.1:17480 > "$w/init"
pin=$(grep -o 'sha256:[0-9a-f]*' "$w/init" | head -1); ctx=$w/ctl/admin/rusectl.toml
RUSE_LOG_LEVEL=warn "$B/ruse-controller" serve --data-dir "$w/ctl" --listen 127.0.0.1:17480 > "$w/ctl.log" 2>&1 &
cp=$!
sleep 1.5
"$B/rusectl" --context-file "$ctx" token create --ttl 1h --uses 1 --label role=bench > "$w/token" 2>/dev/null
wine "$W/ruse-agent.exe" run --controller https://127.0.0.1:17480 --ca-pin "$pin" \
    --token-file "Z:$(echo "$w/token" | tr / '\\')" > "$w/agent.log" 2>&1 &
for _ in $(seq 300); do grep -q 'session open' "$w/agent.log" && break; sleep 0.2; done
"$here/../idle-lures.sh" "$lures" > "$w/idle.yaml"
"$B/rusectl" --context-file "$ctx" apply -f "$w/idle.yaml" > /dev/null
for c in $(seq 0 $(((lures - 1) / 50))); do
    "$B/rusectl" --context-file "$ctx" rollout status "campaign/bench-idle-$c" --timeout 600s > /dev/null
done
echo "lure files: $(find "$WINEPREFIX"/drive_c/users/*/idle -type f | wc -l)"
sleep "$idle"
ap=$(pgrep -f 'ruse-agent.exe run' | head -1)
cmdp=$(pgrep -f 'cmd.exe' | head -1)
echo "ruse-agent.exe (under Wine):"; grep -E 'VmRSS|VmHWM|RssAnon|RssFile|Threads' "/proc/$ap/status"
echo "cmd.exe idle (Wine's own floor):"; grep -E 'VmRSS|RssAnon|RssFile' "/proc/$cmdp/status"
echo "sizes: ruse-agent.exe $(stat -c %s "$W/ruse-agent.exe") bytes, ruse-agent.msi $(stat -c %s "$W/ruse-agent.msi") bytes"
wineserver -k; kill "$keeper" 2>/dev/null
kill "$cp"; wait "$cp"
rm -rf "$w"
