"""trapd: SNMP notifications in, Kea actions out.

One trap travels through the package in this order:

    listener/  (UDP sockets; fast v1/v2c decoder; pysnmp for v3)
      -> listener.raw.RawNotification
    normalize  (MIB names, RFC 3584 v1 translation)
      -> event.Event
    rules/     (match, render templates, validate typed parameters)
      -> dispatch/ (journal first, then run with retries, delays, caps)
      -> plugin API (trapd.plugin) -> actions/ (kea.*, webhook, exec, log)
      -> kea/    (Kea control API client: Control Agent, HTTP socket, unix socket)

service/ glues it into a systemd daemon (sd_notify, metrics, logging, reload).
"""

__version__ = "0.1.0"
