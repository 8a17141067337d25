#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain.
#
# Safe to run repeatedly. Debian packages are installed only when missing,
# and only when running as root (CI); elsewhere the missing ones are listed.
set -euo pipefail

# Debian packages the tests use, as "command:package": the real clients the
# decoy tests drive (tests/tests/decoys.rs), the syslog receiver the
# output tests deliver to (tests/tests/incidents.rs), the programs of a
# normal workstation day (tests/tests/normal_day.rs), and the real servers
# the decoys are compared with (tests/tests/fidelity.rs).
DEBIAN=(
    ssh:openssh-client
    sshpass:sshpass
    curl:curl
    smbclient:smbclient
    echoscu:dcmtk
    lftp:lftp
    rsyslogd:rsyslog
    systemd-analyze:systemd
    dpkg-deb:dpkg
    # The normal day and the intruder's minute (tests/tests/normal_day.rs):
    # real consumers of the shared files lures go into, a backup tool and a
    # desktop indexer. Debian's AWS CLI by path: a pip-installed `aws`
    # elsewhere on PATH is not the program the test means.
    /usr/bin/aws:awscli
    psql:postgresql-client
    git:git
    recollindex:recollcmd
    unshare:util-linux
    # docs/fleet-rollout.md run as written (tests/tests/fleet_rollout.rs):
    # its endpoint commands start with sudo; systemd boots the machines.
    sudo:sudo
    /lib/systemd/systemd:systemd
    nsenter:util-linux
    # The servers decoys imitate, by path (they live in sbin). The tests
    # start their own on free ports; the packages' services are not started.
    /usr/sbin/nginx:nginx-light
    /usr/sbin/vsftpd:vsftpd
    /usr/sbin/sshd:openssh-server
    /usr/sbin/smbd:samba
    dcmqrscp:dcmtk
    /usr/sbin/mariadbd:mariadb-server
    # Real clients of the database decoys, and nmap's service detection
    # that must take each decoy for the real server (tests/tests/decoys.rs).
    mysql:mariadb-client
    tsql:freetds-bin
    nmap:nmap
    # The Telnet decoy's test types at it as a person would: telnet
    # driven by expect.
    telnet:telnet
    expect:expect
    # FreeRDP's client needs an X display even to authenticate only: it
    # runs on a virtual one (xvfb-run, which needs xauth).
    xfreerdp:freerdp2-x11
    xvfb-run:xvfb
    xauth:xauth
    # The web console's browser tests (tests/tests/console.rs): headless
    # Chromium driven through its WebDriver by selenium (below).
    chromium:chromium
    chromedriver:chromium-driver
    # An endpoint whose clock is years off (tests/tests/faults.rs).
    faketime:faketime
    # The PostgreSQL store's tests make a throw-away cluster each
    # (tests/src/postgres.rs: initdb and postgres as the postgres user,
    # via setpriv). Debian's package would also make and start a default
    # cluster; the policy-rc.d below keeps it stopped.
    /usr/lib/postgresql/15/bin/initdb:postgresql-15
    setpriv:util-linux
)

# The Windows agent (deploy/agent/windows/build.sh, tests/tests/windows.rs):
# Debian's Rust with the standard library's source, to build std for the
# x86_64-pc-windows-gnu target; MinGW-w64 to link it; wixl for the MSI;
# Wine to run the agent and the MSI. Without recommends: Wine's recommends
# are a desktop's worth of fonts and drivers the tests do not use.
WINDOWS=(
    /usr/bin/rustc:rustc-web
    /usr/bin/cargo:cargo-web
    /usr/lib/rustlib/src/rust/library/std/Cargo.toml:rust-web-src
    # clippy for that toolchain: CI lints the agent's Windows code.
    /usr/bin/clippy-driver:rust-web-clippy
    x86_64-w64-mingw32-gcc:gcc-mingw-w64-x86-64
    x86_64-w64-mingw32-ar:binutils-mingw-w64-x86-64
    wine:wine
    /usr/lib/wine/wine64:wine64
    wixl:wixl
)

# Whether `cmd` (a command, or a path to a file) is there.
present() {
    if [[ $1 == /* ]]; then
        [[ -e $1 ]]
    else
        command -v "$1" >/dev/null 2>&1
    fi
}

missing=()
for entry in "${DEBIAN[@]}"; do
    cmd=${entry%%:*}
    pkg=${entry#*:}
    present "$cmd" || missing+=("$pkg")
done
missing_lean=()
for entry in "${WINDOWS[@]}"; do
    cmd=${entry%%:*}
    pkg=${entry#*:}
    present "$cmd" || missing_lean+=("$pkg")
done
# The deployment checks' Python tools live in a virtualenv (below).
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)

if ((${#missing[@]} + ${#missing_lean[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        echo "==> installing Debian packages: ${missing[*]} ${missing_lean[*]}"
        # Daemons installed for the fidelity tests must not start as
        # services on this machine: a policy-rc.d refusing every start
        # (Debian's documented hook) while apt runs, unless one is there.
        policy=/usr/sbin/policy-rc.d
        ours=false
        if ! [ -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy"
            chmod 0755 "$policy"
            ours=true
            trap 'rm -f "$policy"' EXIT
        fi
        apt-get update -qq
        if ((${#missing[@]})); then
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
        fi
        if ((${#missing_lean[@]})); then
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                "${missing_lean[@]}"
        fi
        if $ours; then
            rm -f "$policy"
            trap - EXIT
        fi
    else
        echo "==> missing Debian packages (tests that need them will fail under CI=true): ${missing[*]} ${missing_lean[*]}"
    fi
fi

command -v cargo >/dev/null || { echo "cargo is required" >&2; exit 1; }

# Python tools that check the deployment manifests (tests/tests/deploy.rs),
# in a virtualenv the tests know: RUSE_TEST_VENV, default /var/tmp.
venv=${RUSE_TEST_VENV:-/var/tmp/ruse-test-venv}
if ! [ -x "$venv/bin/checkov" ] || ! [ -x "$venv/bin/kubernetes-validate" ]; then
    echo "==> installing checkov and kubernetes-validate into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "checkov==3.3.30" "kubernetes-validate==1.37.0"
fi
# OCSF documents are validated against the OCSF 1.5.0 schema as ocsf-emitter
# models it (tests/clients/ocsf_validate.py).
if ! "$venv/bin/python" -c 'import ocsf_emitter' >/dev/null 2>&1; then
    echo "==> installing ocsf-emitter into $venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "ocsf-emitter==0.3.0"
fi
# The console's browser tests drive Chromium with selenium
# (tests/clients/console_browser.py).
if ! "$venv/bin/python" -c 'import selenium' >/dev/null 2>&1; then
    echo "==> installing selenium into $venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "selenium==4.27.1"
fi
# The e-mail output's tests run a real SMTP server, aiosmtpd, with STARTTLS
# and authentication (tests/clients/smtp_server.py).
if ! "$venv/bin/python" -c 'import aiosmtpd' >/dev/null 2>&1; then
    echo "==> installing aiosmtpd into $venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "aiosmtpd==1.4.6"
fi
# docs/fleet-rollout.md's Ansible playbook is run as written
# (tests/tests/fleet_rollout.rs), with ansible-core in a virtualenv of its
# own (its pins are not checkov's): RUSE_ANSIBLE_VENV, default /var/tmp.
ansible_venv=${RUSE_ANSIBLE_VENV:-/var/tmp/ruse-ansible-venv}
if ! [ -x "$ansible_venv/bin/ansible-playbook" ]; then
    echo "==> installing ansible-core into $ansible_venv"
    python3 -m venv "$ansible_venv"
    "$ansible_venv/bin/pip" install --quiet --disable-pip-version-check "ansible-core==2.17.7"
fi
# ECS documents are checked against Elastic's published field definitions
# (tests/clients/ecs_check.js, with Node.js): the @elastic/ecs package for
# the ECS version the outputs write.
node_prefix=${RUSE_TEST_NODE:-/var/tmp/ruse-test-node}
if ! [ -f "$node_prefix/node_modules/@elastic/ecs/build/commonjs/ecs_flat.js" ]; then
    if command -v npm >/dev/null 2>&1; then
        echo "==> installing @elastic/ecs into $node_prefix"
        mkdir -p "$node_prefix"
        npm install --silent --no-audit --no-fund --prefix "$node_prefix" "@elastic/ecs@8.11.5"
    else
        echo "==> npm is missing: the ECS checks need Node.js and npm"
    fi
fi
# kubectl (with Kustomize) is expected on the machine: Debian's own
# kubernetes-client is too old for the manifests' Kustomize features.
command -v kubectl >/dev/null 2>&1 \
    || echo "==> kubectl is missing: the deployment tests need it (install kubectl 1.27 or later)"

# cargo-fuzz builds the fuzz targets in fuzz/ (CI runs each one briefly).
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi
echo "==> test dependencies ready"
