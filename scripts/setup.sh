#!/usr/bin/env bash
# Prepare a Debian 12 machine for trapd, as root: the apt packages that trapd,
# its tests and its demo use, and a virtualenv in .venv with trapd installed.
# Idempotent: a second run installs nothing and takes a few seconds.
#
#   scripts/setup.sh          # runtime + demo
#   scripts/setup.sh --test   # also the test tools and the example plugin
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

# What each package is for:
#   snmp, snmptrapd            net-snmp's snmptrap/snmpinform (real senders) and snmptrapd (bench baseline)
#   kea-*                      a real Kea 2.2 for the demo and the integration tests
#   bind9, bind9-dnsutils      a real DNS server and dig, for the DDNS tests
#   python3, python3-venv      trapd itself (Debian 12's Python is 3.11)
#   openssl                    test CA for the Kea TLS tests
#   systemd                    systemd-analyze, to check the unit files
#   iproute2, procps, strace   ip / ss / ps for tests and the benchmark; strace for the unit's syscall filter test
#   postgresql                 (--test) PostgreSQL 15's initdb/pg_ctl: the tests start a private server
#                              for the shared journal (tests/pg_harness.py); trapd itself needs none
#   prometheus                 (--test) its promtool checks the shipped alerting rules (contrib/prometheus)
#   faketime                   (--test) libfaketime: a trapd whose clock is a few seconds off (tests/test_pair_ha.py)
APT_PACKAGES=(
    snmp snmptrapd
    kea-dhcp4-server kea-dhcp6-server kea-ctrl-agent kea-dhcp-ddns-server
    bind9 bind9-dnsutils
    python3 python3-venv python3-pip
    openssl systemd iproute2 procps strace ca-certificates
)
((want_test)) && APT_PACKAGES+=(postgresql prometheus faketime)

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Installing Kea or BIND on a host with systemd starts their default services; trapd's demo
    # and tests never use those: they start private instances on other ports and sockets.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's own interpreter by default: a venv on a Python under /root or /home
# would be hidden from the service by ProtectHome=yes.
py=${PYTHON:-$(command -v /usr/bin/python3 || command -v python3)}
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: trapd needs Python 3.11 or newer; $py is $("$py" --version 2>&1)" >&2
    exit 1
fi
if [[ ! -x .venv/bin/python ]]; then
    "$py" -m venv .venv
fi
extras=""
((want_test)) && extras="[test]"
.venv/bin/pip install -q --disable-pip-version-check -e ".${extras}"
if ((want_test)) && [[ -d examples/trapd-example-plugin ]]; then
    # The third-party plugin example, installed the way a site installs its own plugin.
    .venv/bin/pip install -q --disable-pip-version-check -e examples/trapd-example-plugin
fi
echo "setup: ready ($(.venv/bin/trapd --version))" >&2
