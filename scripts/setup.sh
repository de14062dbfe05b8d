#!/usr/bin/env bash
# Prepare a Debian 12 machine (run as root) to run and test virtops.kvm. Idempotent:
#   1. Debian packages (only the missing ones are installed),
#   2. the Python virtualenvs from pinned requirements (rebuilt when they change): .venv, and
#      .venv-2.16 with the oldest ansible-core requires_ansible allows (unit tests, sanity),
#   3. the collection linked into .venv/collections so that virtops.kvm.* resolves,
#   4. virtlogd and libvirtd started when they are not running.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
PYTHON=${PYTHON:-python3}

DEB_PACKAGES=(
    # hypervisor and daemons
    libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils qemu-block-extra
    ovmf seabios ipxe-qemu dnsmasq-base iptables iproute2 bridge-utils
    # build dependencies of libvirt-python
    libvirt-dev pkg-config gcc python3-dev
    # libvirt's RBD storage backend: Ceph pools can be defined (the secret tests define one)
    libvirt-daemon-driver-storage-rbd
    # XML schema validation (virt-xml-validate uses xmllint)
    libxml2-utils
    # test lab: guest images, cloud-init seeds, SSH into guests
    debootstrap genisoimage busybox-static cpio e2fsprogs dosfstools openssh-client
    ca-certificates git rsync
    # the host role's certificates (its TLS tests make a CA with openssl)
    openssl
    # storage tests: logical (LVM) pools on loop devices
    lvm2
    # role host molecule scenarios: package cache for the guests
    apt-cacher-ng
    # role cluster and its lab tests: Corosync, Pacemaker, their tools, agents (VirtualDomain,
    # fence_*); the lab's cluster nodes run them in namespaces
    pacemaker corosync pacemaker-cli-utils resource-agents fence-agents crmsh
    # the backup benchmark's peer (make bench, series backup)
    virtnbdbackup
    # domain's emulated TPM (tpm option): libvirt offers the emulator backend only with swtpm
    swtpm swtpm-tools
    # oversight (issue 18): non-root libvirt access over SSH (the lab runs sshd in a host's
    # namespaces), Cockpit with cockpit-machines and libvirt-dbus on a system D-Bus, checked in
    # Debian's headless chromium through chromium-driver (Selenium from PyPI)
    openssh-server cockpit cockpit-machines libvirt-dbus dbus
    chromium chromium-driver
    # make test-install: Debian's netboot installer (kernel, initrd) and xorriso for its ISO
    debian-installer-12-netboot-amd64 xorriso
)

log() { printf '\n==> %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh must run as root (it installs Debian packages and starts libvirtd)" >&2
    exit 1
fi

log "Debian packages"
missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get update -q
    # Packages do not start daemons here (sshd, dbus, cockpit): the lab and the roles start what
    # they need, in the namespaces they need it. Debian's invoke-rc.d asks policy-rc.d.
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 0755 "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    [ "$(trap -p EXIT)" = "" ] || { rm -f "$policy"; trap - EXIT; }
    if [ -s /run/libvirtd.pid ] && kill -0 "$(cat /run/libvirtd.pid)" 2>/dev/null; then
        echo "note: the running libvirtd loads new drivers (the RBD backend) only when restarted"
    fi
else
    echo "all present"
fi

log "Python virtualenv $VENV"
if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv
    PYTHON=/usr/bin/python3
fi
# make_venv DIR REQUIREMENTS [CONSTRAINTS]: (re)build DIR when the pinned files it is made from
# change.
make_venv() {
    local venv=$1 stamp want
    shift
    stamp="$venv/.requirements.sha256"
    want=$(cat "$@" | sha256sum | cut -d' ' -f1)
    if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        "$PYTHON" -m venv --clear "$venv"
        "$venv/bin/pip" install -q --upgrade pip
        "$venv/bin/pip" install -q -r "$1" ${2:+-c "$2"}
        echo "$want" > "$stamp"
    else
        echo "$venv up to date"
    fi
    # ansible-test (sanity) bootstraps pip in its virtualenvs with a script it downloads from
    # a host we cannot reach; give it an equivalent built on ensurepip
    # (scripts/ansible_test_get_pip.py), under the pip version this ansible-test asks for.
    local pip_version
    pip_version=$("$venv/bin/python" -c 'from ansible_test._internal.python_requirements import get_venv_packages as g; from types import SimpleNamespace as S; print(g(S(version="3"))["pip"])' 2>/dev/null || echo 24.2)
    mkdir -p "$HOME/.ansible/test/cache"
    install -m 0644 "$ROOT/scripts/ansible_test_get_pip.py" "$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
}
make_venv "$VENV" "$ROOT/requirements.txt" "$ROOT/constraints.txt"
# the oldest ansible-core requires_ansible allows, for the unit tests and sanity (scripts/test.sh)
make_venv "$ROOT/.venv-2.16" "$ROOT/requirements-ansible-2.16.txt"

log "Collection virtops.kvm"
coll="$VENV/collections/ansible_collections/virtops"
mkdir -p "$coll"
ln -sfn "$ROOT" "$coll/kvm"
echo "$coll/kvm -> $ROOT"

log "libvirt daemons"
"$ROOT/scripts/daemons.sh"
