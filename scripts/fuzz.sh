#!/usr/bin/env bash
# Builds every fuzz target in fuzz/ and runs each one for SECONDS (default
# 5; the test command uses the default, hardening runs use hours).
#
#   scripts/fuzz.sh            # all targets, 5 s each
#   scripts/fuzz.sh 600        # all targets, 10 min each
#   scripts/fuzz.sh 60 decoy_smb
#
# Uses the installed stable toolchain (RUSTC_BOOTSTRAP=1) and no sanitizer
# (the code under test forbids `unsafe`). A crash leaves its input in
# fuzz/artifacts/TARGET/ and fails this script.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-5}
shift || true
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is not installed; run scripts/install-test-deps.sh" >&2
    exit 1
fi

targets=("$@")
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(cargo fuzz list)
fi

echo "==> building fuzz targets"
cargo fuzz build -s none
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in "${targets[@]}"; do
    echo "==> fuzzing $t for ${seconds}s"
    if ! cargo fuzz run -s none "$t" -- -max_total_time="$seconds" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "fuzz target $t failed; the input is in fuzz/artifacts/$t/" >&2
        exit 1
    fi
    grep -E "^Done" "$log" || true
done
echo "==> fuzz targets ok"
