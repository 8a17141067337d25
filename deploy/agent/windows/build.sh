#!/usr/bin/env bash
# Cross-builds the Windows agent, ruse-agent.exe, and its MSI on Linux.
#
#   deploy/agent/windows/build.sh [OUT_DIR]      (default: target/windows)
#   deploy/agent/windows/build.sh --lint         clippy for the Windows target
#                                                (CI runs it; -D warnings)
#
# Needs Debian's Rust toolchain with the standard library's source
# (rustc-web, cargo-web, rust-web-src) and MinGW-w64 (gcc-mingw-w64-x86-64)
# for the exe, and wixl for the MSI; scripts/install-test-deps.sh installs
# them. The standard library is built from source for the
# x86_64-pc-windows-gnu target (-Zbuild-std), which is why Debian's
# compiler is called explicitly: a rustup toolchain elsewhere on PATH has
# no Windows standard library here. The first build takes several
# minutes; later ones reuse RUSE_WIN_TARGET_DIR.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
lint=no
if [[ ${1:-} == --lint ]]; then
    lint=yes
    shift
fi
out=${1:-$repo/target/windows}
target_dir=${RUSE_WIN_TARGET_DIR:-${CARGO_TARGET_DIR:-$repo/target}-windows}
triple=x86_64-pc-windows-gnu

need() {
    if [[ ! -x $1 ]] && ! command -v "$1" >/dev/null 2>&1; then
        echo "build.sh: $1 is missing ($2); scripts/install-test-deps.sh installs it" >&2
        exit 1
    fi
}
need /usr/bin/cargo "Debian package cargo-web"
need /usr/bin/rustc "Debian package rustc-web"
need x86_64-w64-mingw32-gcc "Debian package gcc-mingw-w64-x86-64"
need wixl "Debian package wixl"
if [[ ! -d /usr/lib/rustlib/src/rust/library ]]; then
    echo "build.sh: the standard library's source is missing (Debian package rust-web-src)" >&2
    exit 1
fi

# Debian's cargo SUBCOMMAND for the agent on the Windows target. Only
# Debian's toolchain, whatever the caller's environment says (a cargo or
# rustup parent passes its own compiler and flags down); /usr/bin first so
# that `cargo clippy` finds Debian's clippy, not a rustup one.
debian_cargo() {
    local subcommand=$1
    shift
    env -u RUSTUP_TOOLCHAIN -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS -u CARGO_BUILD_RUSTC \
        -u RUSTC_WRAPPER -u RUSTC_WORKSPACE_WRAPPER -u CARGO_MAKEFLAGS -u MAKEFLAGS \
        PATH="/usr/bin:$PATH" \
        RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 \
        CARGO_TARGET_DIR="$target_dir" \
        CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc \
        CC_x86_64_pc_windows_gnu=x86_64-w64-mingw32-gcc \
        AR_x86_64_pc_windows_gnu=x86_64-w64-mingw32-ar \
        /usr/bin/cargo "$subcommand" --manifest-path "$repo/Cargo.toml" --release --locked \
        --target "$triple" -Zbuild-std=std,panic_unwind -p ruse-agent "$@"
}

if [[ $lint == yes ]]; then
    need /usr/bin/clippy-driver "Debian package rust-web-clippy"
    echo "==> cargo clippy for $triple (target dir $target_dir)"
    # The library and binary only: the unit tests are Linux's.
    # missing_const_for_thread_local is allowed because clippy 1.96 reports
    # ruse-proto's `thread_local!`, whose initializer is already `const`,
    # when std is built for windows-gnu.
    debian_cargo clippy --lib --bins -- -D warnings -A clippy::missing_const_for_thread_local
    exit 0
fi

mkdir -p "$out"
echo "==> building ruse-agent.exe for $triple (target dir $target_dir)"
debian_cargo build --bin ruse-agent
cp "$target_dir/$triple/release/ruse-agent.exe" "$out/ruse-agent.exe"
echo "==> $out/ruse-agent.exe ($(stat -c %s "$out/ruse-agent.exe") bytes)"
# Shipped beside the MSI: the check an administrator runs on a test host.
cp "$here/verify.ps1" "$out/verify.ps1"

if [[ -f $here/ruse-agent.wxs ]]; then
    version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -1)
    echo "==> building ruse-agent.msi (version $version)"
    # wixl finds the exe by its name, relative to the directory it runs in.
    (cd "$out" && wixl -a x64 -D Version="$version" -o ruse-agent.msi "$here/ruse-agent.wxs")
    echo "==> $out/ruse-agent.msi ($(stat -c %s "$out/ruse-agent.msi") bytes)"
fi
