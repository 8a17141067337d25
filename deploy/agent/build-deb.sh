#!/bin/sh
# Builds the ruse-agent Debian package with dpkg-deb.
#
#   deploy/agent/build-deb.sh BINARY OUTDIR [VERSION]
#
# BINARY is a release build of ruse-agent; the package lands in OUTDIR.
set -eu
binary=${1:?usage: build-deb.sh BINARY OUTDIR [VERSION]}
out=${2:?usage: build-deb.sh BINARY OUTDIR [VERSION]}
here=$(cd "$(dirname "$0")" && pwd)
version=${3:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/../../Cargo.toml" | head -n1)}
arch=$(dpkg --print-architecture)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg="$stage/ruse-agent"
install -d -m 0755 "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/lib/systemd/system" \
    "$pkg/etc/ruse" "$pkg/usr/share/doc/ruse-agent"
install -m 0755 "$binary" "$pkg/usr/bin/ruse-agent"
sed 's|/usr/local/bin/ruse-agent|/usr/bin/ruse-agent|' "$here/ruse-agent.service" \
    > "$pkg/lib/systemd/system/ruse-agent.service"
chmod 0644 "$pkg/lib/systemd/system/ruse-agent.service"
install -m 0640 "$here/debian/agent.toml" "$pkg/etc/ruse/agent.toml"
chmod 0750 "$pkg/etc/ruse"
for script in postinst prerm postrm; do
    install -m 0755 "$here/debian/$script" "$pkg/DEBIAN/$script"
done
echo "/etc/ruse/agent.toml" > "$pkg/DEBIAN/conffiles"
cat > "$pkg/usr/share/doc/ruse-agent/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: ruse
License: Apache-2.0
COPYRIGHT
size=$(du -sk "$pkg" | cut -f1)
cat > "$pkg/DEBIAN/control" <<CONTROL
Package: ruse-agent
Version: $version
Architecture: $arch
Maintainer: Ruse developers <security@ruse.invalid>
Installed-Size: $size
Depends: libc6 (>= 2.34)
Section: admin
Priority: optional
Homepage: https://github.com/ruse-dev/ruse
Description: Ruse deception agent
 Plants decoy credentials and files ("lures") on this host, watches them
 with fanotify, runs decoy network services, and reports every use to the
 Ruse controller over mutually authenticated TLS. Removing the package
 removes every lure it planted.
CONTROL
mkdir -p "$out"
dpkg-deb --root-owner-group -Z"${DEB_COMPRESSION:-xz}" --build "$pkg" "$out/ruse-agent_${version}_${arch}.deb" >/dev/null
echo "$out/ruse-agent_${version}_${arch}.deb"
