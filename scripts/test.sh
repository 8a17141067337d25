#!/usr/bin/env bash
# The whole test suite, as CI runs it: `bash scripts/test.sh`.
#
# Installs what the tests need that cargo does not (scripts/install-test-deps.sh),
# builds the binaries the multi-process tests start (and the Windows agent,
# cross-built), runs every test, then
# builds every fuzz target and runs each briefly (scripts/fuzz.sh).
# Extra arguments go to the test runner (e.g. a test name filter); with
# arguments the fuzz step is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh

echo "==> building binaries"
cargo build --workspace --bins --locked

# The Windows agent and its MSI, cross-built (tests/tests/windows.rs runs
# them under Wine), into the target directory's `windows/`.
target_dir=${CARGO_TARGET_DIR:-target}
echo "==> building the Windows agent"
bash deploy/agent/windows/build.sh "$target_dir/windows"

echo "==> running tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast "$@"
else
    cargo test --workspace --locked --no-fail-fast "$@"
fi

if (($# == 0)); then
    bash scripts/fuzz.sh 5
fi
