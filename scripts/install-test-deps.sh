#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain.
#
# Safe to run repeatedly. Debian packages are installed only when missing,
# and only when running as root (CI); elsewhere the missing ones are listed.
set -euo pipefail

# Debian packages the tests use, as "command:package". Empty until a test
# drives an external tool.
DEBIAN=()

missing=()
for entry in "${DEBIAN[@]}"; do
    cmd=${entry%%:*}
    pkg=${entry#*:}
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done

if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        echo "==> installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    else
        echo "==> missing Debian packages (tests that need them will fail under CI=true): ${missing[*]}"
    fi
fi

command -v cargo >/dev/null || { echo "cargo is required" >&2; exit 1; }
echo "==> test dependencies ready"
