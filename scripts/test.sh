#!/usr/bin/env bash
# The whole test suite, as CI runs it: `bash scripts/test.sh`.
#
# Installs what the tests need that cargo does not (scripts/install-test-deps.sh),
# builds the binaries the multi-process tests start, then runs every test.
# Extra arguments go to the test runner (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh

echo "==> building binaries"
cargo build --workspace --bins --locked

echo "==> running tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast "$@"
else
    cargo test --workspace --locked --no-fail-fast "$@"
fi
