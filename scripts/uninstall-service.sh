#!/bin/sh
# Remove trapd's systemd units; keeps /etc/trapd and /var/lib/trapd unless --purge.
# Same options as `install-service.sh --uninstall` (--purge, --destdir DIR, --unit-dir DIR).
exec "$(dirname "$0")/install-service.sh" --uninstall "$@"
