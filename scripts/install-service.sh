#!/bin/sh
# Install (or remove) trapd as a systemd service: unit files, the trapd system
# user and a starter configuration in /etc/trapd. Run it from a trapd source
# tree after `pip install` has put the trapd command on the machine.
#
#   sudo scripts/install-service.sh                 # install; prints the next steps
#   sudo scripts/install-service.sh --enable        # ... and start trapd now and at boot
#   sudo scripts/install-service.sh --uninstall     # remove the units; keep config and journal
#   sudo scripts/install-service.sh --uninstall --purge   # also /etc/trapd, /var/lib/trapd, the user
#
# --destdir DIR installs below DIR instead of / (packaging, tests): no user is
# created, nothing is chowned and systemctl is not called.
# Never overwrites an existing /etc/trapd/trapd.yaml or rules.yaml; the shipped
# starter is refreshed as trapd.yaml.example next to them.
set -eu

usage() {
    cat <<'EOF'
usage: install-service.sh [--destdir DIR] [--trapd PATH] [--unit-dir DIR] [--enable [--socket]]
       install-service.sh --uninstall [--purge] [--destdir DIR] [--unit-dir DIR]

  --destdir DIR    install below DIR (no user, no chown, no systemctl)
  --trapd PATH     the trapd command for ExecStart (default: `command -v trapd`)
  --unit-dir DIR   where unit files go (default /etc/systemd/system)
  --enable         systemctl enable --now trapd.service after installing
  --socket         with --enable: enable trapd.socket (socket activation) instead
  --uninstall      remove the unit files (stops and disables the service first)
  --purge          with --uninstall: also remove /etc/trapd, /var/lib/trapd and the trapd user
EOF
}

SRC=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=""
TRAPD=""
UNIT_DIR=/etc/systemd/system
ACTION=install
PURGE=no
ENABLE=no
SOCKET=no
SERVICE_USER=trapd
CONFIG_DIR=/etc/trapd
STATE_DIR=/var/lib/trapd

while [ $# -gt 0 ]; do
    case "$1" in
        --destdir) DESTDIR=${2:?--destdir needs a directory}; shift 2 ;;
        --destdir=*) DESTDIR=${1#*=}; shift ;;
        --trapd) TRAPD=${2:?--trapd needs a path}; shift 2 ;;
        --trapd=*) TRAPD=${1#*=}; shift ;;
        --unit-dir) UNIT_DIR=${2:?--unit-dir needs a directory}; shift 2 ;;
        --unit-dir=*) UNIT_DIR=${1#*=}; shift ;;
        --enable) ENABLE=yes; shift ;;
        --socket) SOCKET=yes; shift ;;
        --uninstall) ACTION=uninstall; shift ;;
        --purge) PURGE=yes; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install-service.sh: unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done

say() { printf '%s\n' "$*"; }
die() { printf 'install-service.sh: %s\n' "$*" >&2; exit 1; }

if [ -n "$DESTDIR" ]; then
    DESTDIR=$(mkdir -p "$DESTDIR" && cd "$DESTDIR" && pwd)
    REAL_ROOT=no
else
    REAL_ROOT=yes
    [ "$(id -u)" -eq 0 ] || die "run as root (or use --destdir DIR)"
fi
case "$UNIT_DIR" in /*) ;; *) die "--unit-dir must be an absolute path" ;; esac

# systemd is running as PID 1 (what sd_booted(3) checks).
systemd_running() { [ "$REAL_ROOT" = yes ] && [ -d /run/systemd/system ]; }

check_not_home() {
    case "$1" in
        /home/*|/root/*|/run/user/*)
            die "$1 is in a home directory, which the service cannot see (ProtectHome=yes):
  install trapd system-wide, e.g. /usr/bin/python3 -m venv /opt/trapd && /opt/trapd/bin/pip install .
  or PIPX_HOME=/opt/pipx PIPX_BIN_DIR=/usr/local/bin pipx install ." ;;
    esac
}

# resolve_trapd: find and check the trapd command before anything is changed.
resolve_trapd() {
    case "$TRAPD" in
        "") TRAPD=$(command -v trapd || true)
            [ -n "$TRAPD" ] || die "no trapd command on PATH: pip install trapd first, or pass --trapd PATH" ;;
    esac
    case "$TRAPD" in /*) ;; *) die "--trapd must be an absolute path (got $TRAPD)" ;; esac
    case "$TRAPD" in *[![:alnum:]/._+-]*) die "unsupported characters in the trapd path: $TRAPD" ;; esac
    if [ "$REAL_ROOT" = yes ] && [ ! -x "$TRAPD" ]; then
        die "$TRAPD is not an executable file"
    fi
    # ProtectHome=yes hides /home and /root from the service: a pipx or pip --user
    # install lands there, and so does the interpreter of a venv made from pyenv.
    check_not_home "$TRAPD"
    if [ "$REAL_ROOT" = yes ]; then
        check_not_home "$(readlink -m "$TRAPD")"
        interpreter=$(sed -n '1s/^#![[:space:]]*\([^[:space:]]*\).*/\1/p' "$TRAPD")
        if [ -n "$interpreter" ]; then
            check_not_home "$(readlink -m "$interpreter")"
        fi
    fi
}

install_units() {
    install -d -m 0755 "$DESTDIR$UNIT_DIR"
    tmp=$(mktemp)
    trap 'rm -f "$tmp"' EXIT
    sed "s|/usr/local/bin/trapd|$TRAPD|g" "$SRC/systemd/trapd.service" >"$tmp"
    install -m 0644 "$tmp" "$DESTDIR$UNIT_DIR/trapd.service"
    install -m 0644 "$SRC/systemd/trapd.socket" "$DESTDIR$UNIT_DIR/trapd.socket"
    say "units:  $DESTDIR$UNIT_DIR/trapd.service, trapd.socket (ExecStart=$TRAPD)"
}

create_user() {
    if [ "$REAL_ROOT" = no ]; then
        say "user:   skipped (--destdir): create a system user '$SERVICE_USER' on the target"
        return
    fi
    if ! getent passwd "$SERVICE_USER" >/dev/null; then
        useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
            --shell /usr/sbin/nologin --comment "trapd SNMP trap hooks" "$SERVICE_USER"
        say "user:   created system user $SERVICE_USER"
    else
        say "user:   $SERVICE_USER exists"
    fi
    # Debian's Kea keeps its control sockets in /run/kea, group _kea.
    if getent group _kea >/dev/null; then
        usermod -a -G _kea "$SERVICE_USER"
        say "user:   $SERVICE_USER is in group _kea (Kea's unix control sockets; see docs/service.md)"
    fi
}

# install_config NAME MODE: copy the starter unless the admin already has one.
install_config() {
    name=$1
    target="$DESTDIR$CONFIG_DIR/$name"
    if [ -e "$target" ]; then
        say "config: $target exists, left as it is"
    else
        install -m "$2" "$SRC/etc/trapd/$name" "$target"
        [ "$REAL_ROOT" = yes ] && chgrp "$SERVICE_USER" "$target"
        say "config: $target (starter)"
    fi
}

install_configs() {
    install -d -m 0750 "$DESTDIR$CONFIG_DIR" "$DESTDIR$CONFIG_DIR/rules.d"
    if [ "$REAL_ROOT" = yes ]; then
        # root owns the configuration; the service user may only read it.
        chgrp "$SERVICE_USER" "$DESTDIR$CONFIG_DIR" "$DESTDIR$CONFIG_DIR/rules.d"
    fi
    install_config trapd.yaml 0640
    install_config rules.yaml 0640
    install -m 0640 "$SRC/etc/trapd/trapd.yaml" "$DESTDIR$CONFIG_DIR/trapd.yaml.example"
    [ "$REAL_ROOT" = yes ] && chgrp "$SERVICE_USER" "$DESTDIR$CONFIG_DIR/trapd.yaml.example"
    return 0
}

do_install() {
    [ -f "$SRC/systemd/trapd.service" ] || die "run from a trapd source tree ($SRC/systemd/trapd.service missing)"
    resolve_trapd
    create_user
    install_units
    install_configs
    if systemd_running; then
        systemctl daemon-reload
        if [ "$ENABLE" = yes ]; then
            if [ "$SOCKET" = yes ]; then
                systemctl enable --now trapd.socket
                systemctl start trapd.service
            else
                systemctl enable --now trapd.service
            fi
        fi
    elif [ "$ENABLE" = yes ]; then
        say "note:   systemd is not running here; nothing enabled"
    fi
    cat <<EOF

Next:
  edit $CONFIG_DIR/trapd.yaml and $CONFIG_DIR/rules.yaml, then: trapd check
  systemctl enable --now trapd            (or trapd.socket for socket activation)
  journalctl -u trapd -f                  (JSON lines; -o cat for just the events)
  curl -s http://127.0.0.1:9163/healthz   (metrics at /metrics)
EOF
}

do_uninstall() {
    if systemd_running; then
        systemctl disable --now trapd.socket trapd.service 2>/dev/null || true
    fi
    for unit in trapd.service trapd.socket; do
        if [ -e "$DESTDIR$UNIT_DIR/$unit" ]; then
            rm -f "$DESTDIR$UNIT_DIR/$unit"
            say "removed $DESTDIR$UNIT_DIR/$unit"
        fi
    done
    if systemd_running; then
        systemctl daemon-reload
    fi
    if [ "$PURGE" = yes ]; then
        rm -rf "$DESTDIR$CONFIG_DIR" "$DESTDIR$STATE_DIR" "$DESTDIR$UNIT_DIR/trapd.service.d" \
            "$DESTDIR$UNIT_DIR/trapd.socket.d"
        say "purged $DESTDIR$CONFIG_DIR, $DESTDIR$STATE_DIR and unit drop-ins"
        if [ "$REAL_ROOT" = yes ] && getent passwd "$SERVICE_USER" >/dev/null; then
            userdel "$SERVICE_USER"
            say "removed user $SERVICE_USER"
        fi
    else
        say "kept $DESTDIR$CONFIG_DIR (configuration) and $DESTDIR$STATE_DIR (journal); --purge removes them"
    fi
}

if [ "$ACTION" = install ]; then
    do_install
else
    do_uninstall
fi
