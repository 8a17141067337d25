#!/bin/sh
# Installs, enrolls and starts the Ruse agent; or removes it, lures first.
#
#   install.sh --controller https://ruse.example.org:7443 --ca-pin sha256:... \
#              --token-file /path/to/token [--labels role=workstation,site=icu]
#   install.sh --uninstall
#
# Idempotent: run it again to update the binary, unit or configuration; an
# agent already enrolled keeps its identity (no token needed). Meant for
# Ansible, SCCM/MDM-style tools and golden images.
#
# Options:
#   --controller URL     the controller agents dial
#   --ca-pin PIN         the CA pin `ruse-controller init` printed
#   --token-file FILE    a bootstrap token (read, used to enroll, then the
#                        installed copy is deleted; never printed)
#   --labels k=v,...     labels this agent reports about itself (shown, never
#                        matched by selectors: the token's and admins' are)
#   --binary FILE        the ruse-agent binary (default: next to this script,
#                        else ruse-agent on PATH)
#   --root DIR           install into DIR instead of / (images, tests):
#                        systemd is not touched and lures go under DIR
#   --no-start           install and enroll, but do not start the service
#   --no-enroll          golden images: install and keep the token for the
#                        first start, without enrolling now (each clone
#                        then enrolls itself, with its own identity)
#   --uninstall          stop the agent, remove every lure it planted, then
#                        remove the agent, its state and its configuration
set -eu

controller=""
ca_pin=""
token_file=""
labels=""
binary=""
root=""
start=yes
enroll=yes
action=install

die() {
    echo "install.sh: $*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case "$1" in
        --controller) controller=${2:?--controller needs a URL}; shift 2 ;;
        --ca-pin) ca_pin=${2:?--ca-pin needs a pin}; shift 2 ;;
        --token-file) token_file=${2:?--token-file needs a file}; shift 2 ;;
        --labels) labels=${2:?--labels needs k=v,...}; shift 2 ;;
        --binary) binary=${2:?--binary needs a file}; shift 2 ;;
        --root) root=${2:?--root needs a directory}; shift 2 ;;
        --no-start) start=no; shift ;;
        --no-enroll) enroll=no; start=no; shift ;;
        --uninstall) action=uninstall; shift ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

if [ -n "$root" ]; then
    [ -d "$root" ] || die "--root $root is not a directory"
    root=$(cd "$root" && pwd)
    start=no
fi
use_systemd=no
if [ -z "$root" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    use_systemd=yes
fi

bin_path="$root/usr/local/bin/ruse-agent"
unit_path="$root/etc/systemd/system/ruse-agent.service"
conf_dir="$root/etc/ruse"
conf_path="$conf_dir/agent.toml"
state_dir="$root/var/lib/ruse-agent"
here=$(cd "$(dirname "$0")" && pwd)

if [ "$action" = uninstall ]; then
    if [ "$use_systemd" = yes ]; then
        systemctl disable --now ruse-agent.service >/dev/null 2>&1 || true
    fi
    if [ -x "$bin_path" ] && [ -d "$state_dir" ]; then
        # Lures first, while the agent still knows what it planted; the
        # controller named in the config is told the agent is gone.
        set -- uninstall --state-dir "$state_dir" --root "${root:-/}"
        [ -f "$conf_path" ] && set -- "$@" --config "$conf_path"
        "$bin_path" "$@" \
            || die "some lures could not be removed; fix the errors above and run --uninstall again"
    fi
    rm -f "$bin_path" "$unit_path"
    rm -rf "$conf_dir" "$state_dir"
    [ "$use_systemd" = yes ] && systemctl daemon-reload || true
    echo "ruse-agent removed${root:+ from $root}"
    exit 0
fi

[ -n "$controller" ] || die "--controller is required"
[ -n "$ca_pin" ] || die "--ca-pin is required"
case "$ca_pin" in sha256:*) ;; *) die "--ca-pin must look like sha256:..." ;; esac
if [ -z "$binary" ]; then
    if [ -x "$here/ruse-agent" ]; then
        binary="$here/ruse-agent"
    else
        binary=$(command -v ruse-agent || true)
    fi
fi
[ -n "$binary" ] && [ -x "$binary" ] || die "no ruse-agent binary (pass --binary FILE)"

# Labels are checked before anything is written.
old_ifs=$IFS
IFS=,
for pair in $labels; do
    case "$pair" in
        *=*) ;;
        *) die "label $pair: expected key=value" ;;
    esac
    case "$pair" in
        *[!A-Za-z0-9._/=-]* | *=*=*) die "label $pair: letters, digits, . _ / - only" ;;
    esac
done
IFS=$old_ifs

mkdir -p "$root/usr/local/bin" "$root/etc/systemd/system" "$root/var/lib"
mkdir -p "$conf_dir" "$state_dir"
chmod 0750 "$conf_dir"
chmod 0700 "$state_dir"

# Binary and unit: replaced only if changed.
if ! cmp -s "$binary" "$bin_path" 2>/dev/null; then
    install -m 0755 "$binary" "$bin_path.new"
    mv -f "$bin_path.new" "$bin_path"
fi
install -m 0644 "$here/ruse-agent.service" "$unit_path.new"
mv -f "$unit_path.new" "$unit_path"

# Configuration: the agent reads it at every start.
{
    echo "# Written by deploy/agent/install.sh; rerun it to change."
    echo "controller = \"$controller\""
    echo "ca_pin = \"$ca_pin\""
    echo "token_file = \"/etc/ruse/token\""
    echo "state_dir = \"/var/lib/ruse-agent\""
    echo "root = \"/\""
    echo ""
    echo "[labels]"
    if [ -n "$labels" ]; then
        echo "$labels" | tr ',' '\n' | while IFS='=' read -r key value; do
            if [ -n "$key" ]; then echo "\"$key\" = \"$value\""; fi
        done
    fi
} > "$conf_path.new"
chmod 0640 "$conf_path.new"
mv -f "$conf_path.new" "$conf_path"

if [ -n "$token_file" ]; then
    [ -r "$token_file" ] || die "cannot read --token-file $token_file"
    install -m 0600 "$token_file" "$conf_dir/token"
fi
if [ "$enroll" = no ]; then
    [ -f "$conf_dir/token" ] || die "--no-enroll needs --token-file (the agent enrolls with it at first start)"
    if [ "$use_systemd" = yes ]; then
        systemctl daemon-reload
        systemctl enable ruse-agent.service >/dev/null
    fi
    echo "ruse-agent installed${root:+ in $root}; it enrolls with the token at its first start (do not start it in the image itself)"
    exit 0
fi
# Enroll now, so a wrong token or pin fails the install with the reason.
"$bin_path" enroll --config "$conf_path" --state-dir "$state_dir" --token-file "$conf_dir/token" \
    --root "${root:-/}" || die "enrollment failed (see above); nothing was started"
# The token is not needed again (an expired identity needs a new token).
rm -f "$conf_dir/token"

if [ "$use_systemd" = yes ]; then
    systemctl daemon-reload
    systemctl enable ruse-agent.service >/dev/null
    if [ "$start" = yes ]; then
        systemctl restart ruse-agent.service
        echo "ruse-agent installed, enrolled and started"
        exit 0
    fi
fi
echo "ruse-agent installed and enrolled${root:+ in $root}; start it with: systemctl enable --now ruse-agent"
