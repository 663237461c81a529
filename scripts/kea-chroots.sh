#!/bin/sh
# Build Debian chroots holding newer Kea for the opt-in test tier (tests/test_kea_chroot.py):
#   BASE/trixie  Kea 2.6.3 (Debian trixie)     BASE/sid  Kea 3.0.4 (Debian sid)
# They do not install on Debian 12 (libc), but run fine from a chroot: the
# tests start the daemons with `chroot DIR /usr/sbin/kea-...` and the KEA_*_DIR
# variables that Kea >= 2.6.3's path restrictions need. About a minute and
# 300 MB per chroot; a second run with both present returns at once.
#
#   scripts/kea-chroots.sh [BASE]        BASE default: $TRAPD_KEA_CHROOT_BASE or /var/cache/trapd-kea-chroots
#   scripts/kea-chroots.sh --remove [BASE]
#
# Needs root and the debootstrap package (installed here when missing). Uses the
# mirror the host's apt uses; the host's apt sources are not changed.
set -eu

remove=no
if [ "${1:-}" = "--remove" ]; then remove=yes; shift; fi
BASE=${1:-${TRAPD_KEA_CHROOT_BASE:-/var/cache/trapd-kea-chroots}}
SUITES=${TRAPD_KEA_SUITES:-"trixie sid"}
PACKAGES="systemd-standalone-sysusers systemd-standalone-tmpfiles kea-dhcp4-server kea-dhcp6-server kea-ctrl-agent kea-dhcp-ddns-server"
# What a ready chroot must have; one built before a package joined the list is built again.
BINARIES="kea-dhcp4 kea-dhcp6 kea-ctrl-agent kea-dhcp-ddns"

if [ "$(id -u)" != 0 ]; then echo "kea-chroots: needs root" >&2; exit 1; fi

unmount_proc() {
    if mountpoint -q "$1/proc" 2>/dev/null; then umount "$1/proc"; fi
}

mkdir -p "$BASE"
# One run at a time (two pytest-xdist workers can both reach the tier): a second run
# would take the first's chroot, not yet marked ready, for an unfinished earlier build
# and remove it under the running debootstrap. It waits here, then finds it ready.
exec 9>"$BASE/.lock"
flock 9

if [ "$remove" = yes ]; then
    for suite in $SUITES; do
        dir=$BASE/$suite
        [ -d "$dir" ] || continue
        unmount_proc "$dir"
        # Only what this script made: it leaves a marker in each chroot.
        if [ -e "$dir/.trapd-chroot" ]; then rm -rf --one-file-system "$dir"; echo "removed $dir"; fi
    done
    exit 0
fi

mirror=$(awk '/^URIs:/ && /debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
if [ -z "$mirror" ]; then
    mirror=$(awk '/^deb / && $2 ~ /debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}

if ! command -v debootstrap >/dev/null 2>&1; then
    apt-get install -y --no-install-recommends debootstrap >/dev/null
fi

for suite in $SUITES; do
    dir=$BASE/$suite
    if [ -e "$dir/.trapd-ready" ]; then
        complete=yes
        for b in $BINARIES; do [ -x "$dir/usr/sbin/$b" ] || complete=no; done
        if [ "$complete" = yes ]; then
            echo "ready: $dir $(cat "$dir/.trapd-ready")"
            continue
        fi
        echo "kea-chroots: $dir lacks one of $BINARIES: building it again"
    fi
    if [ -d "$dir" ]; then
        unmount_proc "$dir"
        if [ -e "$dir/.trapd-chroot" ]; then
            rm -rf --one-file-system "$dir"   # an earlier build that did not finish, or lacks a package
        else
            echo "kea-chroots: $dir exists and was not made by this script; leaving it" >&2
            exit 1
        fi
    fi
    start=$(date +%s)
    mkdir -p "$dir"
    touch "$dir/.trapd-chroot"
    # A second try for a mirror's passing failure (a fresh CI machine once failed here at its
    # first build, and a later build went through); the log's end goes into the error, since the
    # error is often all a CI run keeps.
    if ! debootstrap --variant=minbase "$suite" "$dir" "$mirror" >"$BASE/$suite.log" 2>&1; then
        echo "kea-chroots: debootstrap $suite failed; trying once more" >&2
        tail -n 15 "$BASE/$suite.log" >&2
        rm -rf --one-file-system "$dir"
        mkdir -p "$dir"
        touch "$dir/.trapd-chroot"
        sleep 5
        debootstrap --variant=minbase "$suite" "$dir" "$mirror" >"$BASE/$suite.log" 2>&1 || {
            echo "kea-chroots: debootstrap $suite failed, see $BASE/$suite.log; its end:" >&2
            tail -n 15 "$BASE/$suite.log" >&2
            exit 1; }
    fi
    cp /etc/hosts "$dir/etc/hosts"
    cp /etc/resolv.conf "$dir/etc/resolv.conf" 2>/dev/null || true
    for f in /etc/apt/apt.conf.d/99artifact-registry; do
        [ -e "$f" ] && cp "$f" "$dir/etc/apt/apt.conf.d/"
    done
    # Package scripts must not start daemons.
    printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
    chmod 755 "$dir/usr/sbin/policy-rc.d"
    mount -t proc proc "$dir/proc"
    trap 'unmount_proc "$dir"' EXIT
    chroot "$dir" apt-get install -y --no-install-recommends $PACKAGES >>"$BASE/$suite.log" 2>&1 || {
        echo "kea-chroots: installing Kea in $suite failed, see $BASE/$suite.log; its end:" >&2
        tail -n 15 "$BASE/$suite.log" >&2
        exit 1; }
    unmount_proc "$dir"
    trap - EXIT
    version=$(chroot "$dir" /usr/sbin/kea-dhcp4 -v)
    echo "$version" >"$dir/.trapd-ready"
    echo "ready: $dir $version ($(( $(date +%s) - start )) s, $(du -sh --one-file-system "$dir" | cut -f1))"
done
