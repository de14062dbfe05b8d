#!/usr/bin/env bash
# Start virtlogd and libvirtd when they are not answering.
# Through systemd when systemd is PID 1; otherwise directly as daemons (containers, our CI).
# Idempotent: a daemon that already answers is left alone.
set -euo pipefail

URI="qemu:///system"

answers() { virsh -c "$URI" version >/dev/null 2>&1; }

pid_alive() { # pidfile
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

# Without udev (containers, our CI) /dev/kvm stays root:root 0600, and libvirt then probes
# QEMU again on every capabilities call (seconds each). Give it the kvm group udev would.
if [ -c /dev/kvm ] && getent group kvm >/dev/null && [ "$(stat -c %G /dev/kvm)" != kvm ]; then
    chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
fi

if answers; then
    echo "libvirtd: already answering on $URI"
    exit 0
fi

if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ] && [ -d /run/systemd/system ]; then
    # Modular daemons where the distribution ships them, the monolithic one otherwise.
    if systemctl list-unit-files virtqemud.socket >/dev/null 2>&1 && systemctl cat virtqemud.socket >/dev/null 2>&1; then
        systemctl enable --now virtlogd.socket virtqemud.socket virtnetworkd.socket virtstoraged.socket
    else
        systemctl enable --now virtlogd.socket libvirtd.socket libvirtd.service
    fi
else
    mkdir -p /run/libvirt
    pid_alive /run/virtlogd.pid || virtlogd -d -p /run/virtlogd.pid
    pid_alive /run/libvirtd.pid || libvirtd -d -p /run/libvirtd.pid
fi

for _ in $(seq 1 60); do
    if answers; then
        echo "libvirtd: answering on $URI"
        exit 0
    fi
    sleep 0.5
done
echo "libvirtd: did not answer on $URI within 30 s" >&2
exit 1
