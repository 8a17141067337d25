#!/usr/bin/env bash
# The web console's incident queue with N open incidents, end to end: a
# controller (console on) and a real agent running an FTP decoy; N
# connections to the decoy, each from its own loopback address (127.1.x.y),
# each opening an incident of its own; then `GET /incidents` over TLS with
# curl, signed in through `rusectl console`. Prints each request's time and
# size, and the median and the slowest.
#
#   B=DIR_OF_RELEASE_BINARIES bench/profile/console-queue.sh [N] [REQUESTS]
set -euo pipefail
B=${B:?set B to a directory of release binaries (ruse-controller, ruse-agent, rusectl)}
n=${1:-10000}
requests=${2:-20}
(( n >= 1 && n <= 60000 )) || { echo "N is 1 to 60000 (one loopback address each)" >&2; exit 2; }
ctl_port=17611; console_port=17612; ftp_port=17621
w=$(mktemp -d /tmp/ruse-console-queue.XXXXXX)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$w"' EXIT

"$B/ruse-controller" init --data-dir "$w/ctl" --controller-url "https://127.0.0.1:$ctl_port" > "$w/init"
pin=$(grep -o 'sha256:[0-9a-f]*' "$w/init" | head -1)
ctx=$w/ctl/admin/rusectl.toml
RUSE_CONSOLE_LISTEN=127.0.0.1:$console_port RUSE_LOG_LEVEL=warn \
    "$B/ruse-controller" serve --data-dir "$w/ctl" --listen "127.0.0.1:$ctl_port" > "$w/ctl.log" 2>&1 &
pids+=($!)
sleep 1.5
"$B/rusectl" --context-file "$ctx" token create --ttl 1h --uses 1 --label decoys=queue > "$w/token" 2>/dev/null
mkdir -p "$w/root"
RUSE_LOG_LEVEL=warn "$B/ruse-agent" run --controller "https://127.0.0.1:$ctl_port" --ca-pin "$pin" \
    --token-file "$w/token" --state-dir "$w/state" --root "$w/root" > "$w/agent.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do "$B/rusectl" --context-file "$ctx" get agents -o json 2>/dev/null | grep -q '"online"' && break; sleep 0.2; done
printf 'kind: Decoy\nname: queue\nselector: {decoys: queue}\naddress: 127.0.0.1\nlisten: 127.0.0.1\nservices:\n  - {protocol: ftp, port: %s}\n' "$ftp_port" > "$w/d.yaml"
"$B/rusectl" --context-file "$ctx" apply -f "$w/d.yaml" > /dev/null
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$ftp_port) 2>/dev/null && break; sleep 0.2; done

echo "==> $n connections, one per source address" >&2
python3 - "$n" "$ftp_port" <<'EOF'
import socket, sys
n, port = int(sys.argv[1]), int(sys.argv[2])
for i in range(n):
    s = socket.socket()
    s.settimeout(10)
    s.bind((f"127.1.{i // 250}.{i % 250 + 1}", 0))
    s.connect(("127.0.0.1", port))
    s.recv(256)  # the banner
    s.close()
EOF

echo "==> waiting for $n open incidents" >&2
open=0
for _ in $(seq 600); do
    open=$("$B/rusectl" --context-file "$ctx" get metrics 2>/dev/null \
        | awk '/^ruse_incidents_open/ { s += $2 } END { print s + 0 }')
    (( open >= n )) && break
    sleep 0.5
done
echo "==> $open open incidents" >&2

link=$("$B/rusectl" --context-file "$ctx" console --no-browser 2>/dev/null)
curl -sS --cacert "$w/ctl/pki/ca.pem" -c "$w/jar" -o /dev/null "$link"
base=${link%%/signin*}
times=()
for i in $(seq "$requests"); do
    line=$(curl -sS --cacert "$w/ctl/pki/ca.pem" -b "$w/jar" -o /dev/null \
        -w '%{http_code} %{time_total} %{size_download}' "$base/incidents")
    echo "request $i: $line (status, seconds, bytes)"
    times+=("$(echo "$line" | awk '{ print $2 }')")
done
printf '%s\n' "${times[@]}" | sort -n | awk -v open="$open" '
    { t[NR] = $1 } END { printf "GET /incidents with %d open incidents: median %.1f ms, slowest %.1f ms over %d requests\n", open, 1000 * t[int((NR + 1) / 2)], 1000 * t[NR], NR }'
