"""The ``service:`` section of trapd.yaml: metrics endpoint, logging, stop and status timing.

Example (these are the defaults)::

    service:
      metrics:
        listen: "127.0.0.1:9163"   # /metrics and /healthz; null (or "off") turns the endpoint off
      log:
        level: info                # debug info warning error critical (--log-level overrides)
        format: auto               # auto journal json console (--log-format overrides)
      status_interval: 5           # seconds between STATUS= updates to systemd
      workers: 1                   # receiving processes on the same ports (SO_REUSEPORT); see docs/service.md

How long running actions get to finish on SIGTERM is ``dispatch.shutdown_timeout``
(the dispatcher does the draining); keep the unit's ``TimeoutStopSec=`` above it.
The watchdog is not configured here: systemd's ``WatchdogSec=`` in the unit
decides it and trapd reads it from ``WATCHDOG_USEC``.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trapd.listener.config import ListenAddress
from trapd.yamlsource import ConfigError, Mark, check_keys, expect, where

DEFAULT_METRICS_PORT = 9163
# More processes than this on a trap receiver is a configuration mistake, not a plan: each one
# holds the MIB tables and the rules (about 60 MB) and they all share one SQLite journal.
MAX_WORKERS = 64
# Kept here rather than in trapd.service.logging so that `trapd check` does not import structlog.
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("auto", "journal", "json", "console")
_OFF = ("off", "none", "no", "false", "disabled")


# An address and port, printed as HOST:PORT or [V6]:PORT: the same thing as a listener's.
MetricsListen = ListenAddress
DEFAULT_METRICS_LISTEN = MetricsListen("127.0.0.1", DEFAULT_METRICS_PORT)


def metrics_listen_of(configured: MetricsListen | None, flag: str | None) -> MetricsListen | None:
    """Where the metrics endpoint listens: the ``--metrics`` flag when given, else trapd.yaml's."""
    return parse_metrics_listen(flag) if flag else configured


def parse_metrics_listen(text: str | None, mark: Mark | None = None) -> MetricsListen | None:
    """``HOST:PORT`` / ``[V6]:PORT`` (the port is required), or None for off/none/null.

    Also used for the ``--metrics`` command-line flag.
    """
    if text is None or text.strip().lower() in _OFF:
        return None
    s = text.strip()
    if s.startswith("["):
        host, sep, port = s[1:].partition("]:")
    else:
        host, sep, port = s.rpartition(":")
        if ":" in host:
            raise ConfigError(f"metrics listen {text!r}: write an IPv6 address as [ADDR]:PORT", mark)
    if not sep or not port.isdigit():
        raise ConfigError(f"metrics listen {text!r}: expected HOST:PORT (or null to turn it off)", mark)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"metrics listen {text!r}: {host!r} is not an IP address", mark) from None
    # Port 0: the kernel picks a free one (tests; the "metrics endpoint listening" log line says which).
    if not 0 <= int(port) <= 65535:
        raise ConfigError(f"metrics listen {text!r}: port out of range", mark)
    return MetricsListen(host, int(port))


@dataclass(frozen=True)
class ServiceConfig:
    metrics_listen: MetricsListen | None = DEFAULT_METRICS_LISTEN
    log_level: str = "info"
    log_format: str = "auto"
    status_interval: float = 5.0
    # 1: one process, as always. N > 1: `trapd run` supervises N receiving processes (trapd.service.workers).
    workers: int = 1

    @classmethod
    def from_yaml(cls, node: Any, base_dir: Path) -> ServiceConfig:
        n = check_keys(node, {"metrics", "log", "status_interval", "workers"}, "service")
        metrics = check_keys(n.get("metrics"), {"listen"}, "service.metrics")
        listen: MetricsListen | None = cls.metrics_listen
        if "listen" in metrics:
            raw = metrics["listen"]
            if raw is False:  # YAML 1.1 reads a bare `off` / `no` / `false` as a boolean
                raw = None
            if raw is not None and not isinstance(raw, str):
                raise ConfigError(
                    "service.metrics.listen must be HOST:PORT or null", where(metrics, "listen")
                )
            listen = parse_metrics_listen(raw, where(metrics, "listen"))
        elif "metrics" in n and n["metrics"] is None:
            listen = None  # `metrics:` with nothing under it reads as "no metrics"
        logn = check_keys(n.get("log"), {"level", "format"}, "service.log")
        level = str(expect(logn, "level", str, "service.log", "info")).lower()
        if level not in LOG_LEVELS:
            raise ConfigError(
                f"service.log.level must be one of {', '.join(LOG_LEVELS)}", where(logn, "level")
            )
        fmt = str(expect(logn, "format", str, "service.log", "auto")).lower()
        if fmt not in LOG_FORMATS:
            raise ConfigError(
                f"service.log.format must be one of {', '.join(LOG_FORMATS)}", where(logn, "format")
            )
        return cls(
            metrics_listen=listen,
            log_level=level,
            log_format=fmt,
            status_interval=_positive(n, "status_interval", 5.0),
            workers=parse_workers(n.get("workers", 1), where(n, "workers") if "workers" in n else None),
        )


def parse_workers(value: Any, mark: Mark | None = None) -> int:
    """``service.workers`` / ``--workers``: an integer from 1 to MAX_WORKERS."""
    # bool is an int in Python; `workers: yes` is a mistake, not 1. 2.0 is 2 (as JSON Schema has it).
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"service.workers must be an integer from 1 to {MAX_WORKERS}", mark)
    if not 1 <= value <= MAX_WORKERS:
        raise ConfigError(f"service.workers must be from 1 to {MAX_WORKERS}, not {value}", mark)
    return value


def _positive(node: Any, key: str, default: float) -> float:
    value = float(expect(node, key, (int, float), "service", default))
    # YAML's .nan passes "<= 0" (NaN compares false with everything): refused with .inf.
    if not (0 < value < math.inf):
        raise ConfigError(f"service.{key} must be > 0 and finite", where(node, key))
    return value
