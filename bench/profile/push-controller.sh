# Sourced by push.sh and sim-push.sh: starts a fresh controller on
# 127.0.0.1:$port with the deployer's pass log at debug level. Sets w (its
# work directory), pin (the CA pin), ctx (the admin context file) and cp
# (its pid). Needs B and port; CTL_ENV adds environment variables to the
# controller (for example MIMALLOC_SHOW_STATS=1).
w=$(mktemp -d /tmp/ruse-push.XXXXXX)
"$B/ruse-controller" init --data-dir "$w/ctl" --controller-url "https://127.0.0.1:$port" > "$w/init"
pin=$(grep -o 'sha256:[0-9a-f]*' "$w/init" | head -1); ctx=$w/ctl/admin/rusectl.toml
env ${CTL_ENV:-} RUSE_LOG_LEVEL="warn,ruse_controller::deploy=debug" "$B/ruse-controller" serve --data-dir "$w/ctl" \
    --listen "127.0.0.1:$port" > "$w/ctl.log" 2>&1 &
cp=$!
sleep 2
