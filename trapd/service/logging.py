"""Logging: structlog, one event per line, secrets masked, switchable at runtime.

Formats (``service.log.format`` in trapd.yaml, ``--log-format`` on the command line):

``json``
    One JSON object per line: ``{"ts": ..., "level": ..., "logger": ..., "event": ..., <fields>}``.
``journal``
    The same JSON line behind a ``<N>`` syslog-priority prefix. journald strips
    the prefix and stores it as PRIORITY (``SyslogLevelPrefix=yes`` is its
    default), so ``journalctl -u trapd -p warning`` works and ``-o cat`` still
    gives clean JSON lines.
``console``
    ``2026-01-01T10:00:00Z [info     ] action done   action_id=... rule=...``:
    key=value without colours, for a terminal.
``auto`` (default)
    ``console`` on a terminal, ``journal`` when stdout is the journal stream
    (systemd sets ``JOURNAL_STREAM`` to its device:inode), ``json`` otherwise.

To follow one trap through the log, components bind its identifiers::

    log = get_logger(__name__).bind(event_id=event.id, rule=rule.name)
    log.info("action scheduled", action_id=planned.id, plugin="kea.lease-del")

or, for everything a task logs, ``structlog.contextvars.bound_contextvars(event_id=...)``.

Secrets: every value loaded through :class:`trapd.secrets.Secret` is
registered with ``REDACTOR``; the renderer masks those values in the rendered
line, in every form a renderer or a repr writes them (trapd.secrets.encodings:
as is, JSON-escaped, repr-escaped, ...), and :func:`redact_secrets` masks them
inside containers and masks fields whose key names a secret (password,
community, auth_key, ...).

Speed: loggers are cached on first use, and the level check reads one module
global, so a suppressed ``log.debug(...)`` on the receive path costs about a
microsecond. :func:`configure_logging` may be called again (on reload): the
level, format and stream change for every logger, cached or not.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import functools
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Hashable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import IO, Any

import structlog
from structlog.typing import EventDict, WrappedLogger

from trapd.secrets import REDACTOR
from trapd.service.config import LOG_FORMATS

LEVELS: Mapping[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
FORMATS = LOG_FORMATS
_LEVELS_DESCENDING = tuple(sorted(LEVELS.items(), key=lambda item: -item[1]))

# syslog priorities for the journal's <N> prefix (sd-daemon(3)).
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2, "exception": 3}

# Field names whose value is always masked, whatever it is (compared lower-case).
SENSITIVE_KEYS = frozenset(
    {
        "password",
        "passwd",
        "community",
        "communities",
        "auth_key",
        "priv_key",
        "secret",
        "token",
        "authorization",
        "api_key",
        "proxy-authorization",
    }
)
_SENSITIVE_SUFFIXES = ("_password", "_secret", "_token", "_community", "_auth_key", "_priv_key")

# Third-party libraries whose own logging is only interesting from WARNING up.
NOISY_LIBRARIES = ("pysnmp", "pyasn1", "pysmi", "apscheduler", "httpx", "httpcore", "asyncio")


@functools.lru_cache(maxsize=4096)
def _is_sensitive(key: str) -> bool:
    # Cached: a log line asks this for every field, and the keys are mostly the same few dozen
    # (bounded, so that keys taken from trap data cannot grow memory).
    k = key.lower()
    return k in SENSITIVE_KEYS or k.endswith(_SENSITIVE_SUFFIXES)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return REDACTOR.redact(value) if REDACTOR else value
    if isinstance(value, bytes | bytearray):
        if REDACTOR:
            text = bytes(value).decode("utf-8", "replace")
            if REDACTOR.redact(text) != text:
                return REDACTOR.MASK
        return value
    if isinstance(value, Mapping):
        return {k: _mask_field(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v) for v in value]
    return value


def _mask_field(key: str, value: Any) -> Any:
    if _is_sensitive(key) and value not in (None, ""):
        return REDACTOR.MASK
    return _redact_value(value)


def redact(value: Any) -> Any:
    """``value`` as a log line would show it: loaded secrets and secret-named fields masked,
    recursively. For what is kept outside the log, such as a Kea answer a result holds."""
    return _redact_value(value)


# Values with nothing inside to mask: only their field's name can make them secret.
_INERT: frozenset[type] = frozenset({int, float, bool, type(None)})
# A field's text is masked where the line is rendered (_render): every secret, in each of the forms
# a renderer writes text (as is, as JSON escapes it, a control character as \\x1b: see
# trapd.secrets.encodings), is searched for once in the line, not once more in each field.
_INERT_FIELDS: frozenset[type] = _INERT | {str}


def redact_secrets(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask secret-named fields, and secret values inside containers (whose
    repr a renderer may write otherwise than JSON does), recursively."""
    # Numbers and strings skip the recursive walk: most fields of most lines are such. A line of
    # the dispatcher's (bench: "action done" and the lease-del line, 5-7 fields) went from 19 to
    # 11 us with the _is_sensitive cache.
    for key, value in list(event_dict.items()):
        if value.__class__ in _INERT_FIELDS:
            if value not in (None, "") and _is_sensitive(key):
                event_dict[key] = REDACTOR.MASK
        else:
            event_dict[key] = _mask_field(key, value)
    return event_dict


class _State:
    """What configure_logging set; read by the (cached) loggers on every call."""

    level = logging.INFO
    fmt = "console"
    stream: IO[str] = sys.stderr
    renderer: Callable[[WrappedLogger, str, EventDict], str] = structlog.dev.ConsoleRenderer(colors=False)
    lock = threading.Lock()
    # Fields every line of this process carries, whatever thread or task logs it: ``worker=1`` in
    # a worker of `trapd run` with service.workers > 1 (one unit in journald, several processes).
    process_fields: dict[str, Any] = {}
    # With several workers: a memfd the supervisor made before forking, and this process's own
    # open description of it, flock()ed around each line's write (see share_output_lock).
    lock_source: int | None = None
    output_lock: int | None = None


# Control characters a log line must never carry raw (issue 14 item 7): C0 (CR and LF forge
# lines, ESC drives a terminal), DEL, C1 (U+0085 is a line break to some readers) and the
# Unicode line and paragraph separators. JSON output escapes them already (ensure_ascii).
_CONTROL_ESCAPES: dict[int, str] = {
    c: {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}.get(c, f"\\x{c:02x}")
    for c in (*range(0x20), *range(0x7F, 0xA0))
}
_CONTROL_ESCAPES.update({0x2028: "\\u2028", 0x2029: "\\u2029"})
# And the bidirectional formatting characters (marks, embeddings, overrides, isolates): a terminal
# that does bidi showed the rest of a line reversed, so a trap value could make a log line or a
# `trapd journal list` row read otherwise than it is ("Trojan Source").
_CONTROL_ESCAPES.update(
    {c: f"\\u{c:04x}" for c in (0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))}
)


def escape_controls(text: str) -> str:
    """``text`` with every control character written as a Python-style escape (``\\n``, ``\\x1b``)."""
    return text.translate(_CONTROL_ESCAPES)


def _indented_escaped(text: str) -> str:
    """A traceback or stack for the console: its line breaks are its structure, but its text (an
    exception message) may carry a trap value. Everything else is escaped and every line indented,
    so that no line of it can pass for a log line of its own."""
    return "".join("\n  " + escape_controls(line) for line in text.split("\n"))


def _render(logger: WrappedLogger, method: str, event_dict: EventDict) -> str:
    # Put the fields a reader looks for first in a stable order.
    ordered: dict[str, Any] = {}
    for key in ("ts", "level", "logger", "event"):
        if key in event_dict:
            ordered[key] = event_dict.pop(key)
    ordered.update(event_dict)
    if _State.fmt == "console":
        # The renderer writes str values raw; escape the line it makes, then add the traceback.
        tail = "".join(_indented_escaped(str(ordered.pop(k))) for k in ("stack", "exception") if k in ordered)
        line = escape_controls(_State.renderer(logger, method, ordered)) + tail
    else:
        line = _State.renderer(logger, method, ordered)
    if REDACTOR:
        line = REDACTOR.redact(line)  # values hidden inside a repr() or an exception text
    if len(line) > LINE_LIMIT:
        line = _cut_line(logger, method, ordered, line)
    if _State.fmt == "journal":
        line = f"<{_PRIORITY.get(method, 6)}>{line}"
    return line


# A line longer than this (a plugin's field holding a whole answer, a list of 20,000 addresses)
# is written as its short fields, its length and its start. journald splits a line past its
# LineMax (48 KiB) into entries of their own, none of them JSON a reader can parse, and its
# stream socket keeps a write whole only to about 32 KiB; with several workers, such a line holds
# the others' lines while it is written.
LINE_LIMIT = 32 * 1024
LINE_START = 16 * 1024
_SHORT = 200  # characters of a field kept as it is in a cut line


def _cut_line(logger: WrappedLogger, method: str, ordered: dict[str, Any], line: str) -> str:
    """The line, too long, as its short scalar fields (ts, level, event, rule, action, ...), its
    length (``line_cut``) and its first LINE_START characters (``line_start``), masked and cut
    by the redactor (a cut through a secret keeps no start of it)."""
    kept: dict[str, Any] = {}
    for key, value in ordered.items():
        if len(kept) >= 40:
            break
        scalar = isinstance(value, (int, float, bool)) or value is None
        if len(key) <= _SHORT and (scalar or (isinstance(value, str) and len(value) <= _SHORT)):
            kept[key] = value
    kept["line_cut"] = len(line)
    kept["line_start"] = REDACTOR.bounded(line, LINE_START)
    text = _State.renderer(logger, method, kept)
    return escape_controls(text) if _State.fmt == "console" else text


# One encoder for every line: json.dumps builds one per call when given ``default`` (~0.7 us
# of a line; timeit).
_JSON_ENCODER = json.JSONEncoder(default=repr)


def _json_renderer(logger: WrappedLogger, method: str, event_dict: EventDict) -> str:
    return _JSON_ENCODER.encode(event_dict)


# The last whole second's ISO text: (second, "YYYY-MM-DDTHH:MM:SS"). One tuple, so that a thread
# logging at the same moment reads a consistent pair.
_second: tuple[int, str] = (-1, "")


def _timestamp(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """``ts``: UTC, ISO 8601 with microseconds and ``Z`` (what structlog's TimeStamper(fmt="iso",
    utc=True) writes, but always with the fraction): the date and time of day are formatted once
    a second. 5.4 -> 1.9 us a line (cProfile, 90,000 lines)."""
    global _second
    now = time.time()
    sec = int(now)
    cached = _second
    if cached[0] != sec:
        cached = _second = (
            sec,
            datetime.datetime.fromtimestamp(sec, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        )
    event_dict["ts"] = f"{cached[1]}.{int((now - sec) * 1e6):06d}Z"
    return event_dict


def _add_process_fields(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    # Not structlog's contextvars: those do not reach threads (the journal's writer) or tasks
    # created from a context copied before binding; a process-wide field must be on every line.
    for key, value in _State.process_fields.items():
        event_dict.setdefault(key, value)
    return event_dict


def set_process_fields(**fields: Any) -> None:
    """Add ``fields`` to every log line this process writes from now on (``worker=2``)."""
    with _State.lock:
        _State.process_fields = {**_State.process_fields, **fields}


# Characters of a traceback (or stack) a line keeps. A plugin's exception whose text is a whole
# answer (megabytes), or a chain of thousands raised while handling one another, made one line
# that size: past journald's LineMax (48 KiB) it is split into lines of their own, and in a pipe
# it holds the other workers' lines (the output lock) while it is written. The start is kept
# (the frames, where it was raised); the error's own text is in the line's ``error`` field.
TRACEBACK_LIMIT = 16_384


def _bound_traceback(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    for key in ("exception", "stack"):
        text = event_dict.get(key)
        if isinstance(text, str) and len(text) > TRACEBACK_LIMIT:
            event_dict[key] = REDACTOR.bounded(text, TRACEBACK_LIMIT)
    return event_dict


def _add_level(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    event_dict["level"] = "error" if method == "exception" else method
    return event_dict


def share_output_lock() -> bool:
    """Make each line's write exclusive among this process and those it forks afterwards (each
    calls this again once forked); False when the system does not allow it (no memfd, no /proc).

    A line is one write(), but a pipe (`trapd run | ...`, a container's log) keeps a write whole
    only up to PIPE_BUF (4 KiB), and journald's stream socket up to about 32 KiB: a longer line
    (a traceback, a log action's long message) is written in pieces when the reader lags, and a
    line of another worker got in between. The lock is flock() on an open description of a
    memfd that the supervisor makes before forking: each process opens its own description
    (through /proc/self/fd), so that the locks exclude each other, and the kernel releases a
    process's lock when it dies, even mid-line (SIGKILL).
    """
    with _State.lock:
        try:
            if _State.lock_source is None:
                _State.lock_source = os.memfd_create("trapd-log-lock", os.MFD_CLOEXEC)
            own = os.open(f"/proc/self/fd/{_State.lock_source}", os.O_RDWR | os.O_CLOEXEC)
        except (AttributeError, OSError):
            return False
        if _State.output_lock is not None:
            # The parent's description, inherited by fork: closing this copy does not unlock it.
            os.close(_State.output_lock)
        _State.output_lock = own
    return True


def _flock(fd: int, operation: int) -> None:
    with contextlib.suppress(OSError):  # a lock refused (ENOLCK) must not lose the line
        fcntl.flock(fd, operation)


class _Writer:
    """Writes each rendered event as one line to the configured stream, then flushes."""

    def msg(self, message: str) -> None:
        with _State.lock:
            stream = _State.stream
            lock = _State.output_lock
            if lock is not None:
                _flock(lock, fcntl.LOCK_EX)
            try:
                try:
                    stream.write(message + "\n")
                except UnicodeEncodeError:
                    stream.write(message.encode("ascii", "backslashreplace").decode("ascii") + "\n")
                except ValueError:
                    return  # the stream was closed (interpreter shutdown, a finished test)
                stream.flush()
            finally:
                if lock is not None:
                    _flock(lock, fcntl.LOCK_UN)

    # structlog calls the method named like the level on the wrapped logger.
    debug = info = warning = error = critical = exception = log = msg


_WRITER = _Writer()


class TrapdLogger(structlog.BoundLoggerBase):
    """A bound logger whose level is the current :func:`configure_logging` level."""

    def debug(self, event: str, **kw: Any) -> None:
        if _State.level <= logging.DEBUG:
            self._proxy_to_logger("debug", event, **kw)

    def info(self, event: str, **kw: Any) -> None:
        if _State.level <= logging.INFO:
            self._proxy_to_logger("info", event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        if _State.level <= logging.WARNING:
            self._proxy_to_logger("warning", event, **kw)

    warn = warning

    def error(self, event: str, **kw: Any) -> None:
        if _State.level <= logging.ERROR:
            self._proxy_to_logger("error", event, **kw)

    def critical(self, event: str, **kw: Any) -> None:
        self._proxy_to_logger("critical", event, **kw)

    def exception(self, event: str, **kw: Any) -> None:
        """error() with the current exception's traceback."""
        if _State.level <= logging.ERROR:
            kw.setdefault("exc_info", True)
            self._proxy_to_logger("exception", event, **kw)

    def log(self, level: int | str, event: str, **kw: Any) -> None:
        """Log at a numeric (stdlib) or named level."""
        levelno = LEVELS.get(level, logging.INFO) if isinstance(level, str) else level
        if levelno < _State.level:
            return
        name = next((n for n, v in _LEVELS_DESCENDING if levelno >= v), "debug")
        self._proxy_to_logger(name, event, **kw)

    def is_enabled_for(self, level: str) -> bool:
        """True when ``level`` would be written (to skip building costly fields)."""
        return LEVELS.get(level, logging.INFO) >= _State.level

    def bind(self, **new_values: Any) -> TrapdLogger:
        return super().bind(**new_values)


_structlog_configured = False


def _configure_structlog_once(*, force: bool = False) -> None:
    global _structlog_configured
    if _structlog_configured and not force:
        return
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_process_fields,
            _add_level,
            _timestamp,
            structlog.processors.format_exc_info,
            _bound_traceback,
            redact_secrets,
            _render,
        ],
        wrapper_class=TrapdLogger,
        logger_factory=lambda *args: _WRITER,
        cache_logger_on_first_use=True,
    )
    _structlog_configured = True


def resolve_format(fmt: str, stream: IO[str], environ: Mapping[str, str] | None = None) -> str:
    """The concrete format ``auto`` stands for on this stream."""
    if fmt != "auto":
        return fmt
    try:
        if stream.isatty():
            return "console"
    except (AttributeError, ValueError):
        pass
    env = os.environ if environ is None else environ
    if _is_journal_stream(stream, env.get("JOURNAL_STREAM", "")):
        return "journal"
    return "json"


def _is_journal_stream(stream: IO[str], journal_stream: str) -> bool:
    dev, _, ino = journal_stream.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


def configure_logging(level: str = "info", fmt: str = "auto", stream: IO[str] | None = None) -> str:
    """Set level, format and output stream for every trapd logger; returns the concrete format.

    ``level``: debug, info, warning, error, critical. ``fmt``: auto, journal,
    json, console. ``stream`` defaults to stdout (journald captures it under
    systemd). Raises ValueError on an unknown level or format. Also routes the
    standard library's logging (pysnmp, apscheduler, httpx, asyncio) through
    the same output, at WARNING and above for those libraries.
    """
    if level.lower() not in LEVELS:
        raise ValueError(f"unknown log level {level!r} (one of {', '.join(LEVELS)})")
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r} (one of {', '.join(FORMATS)})")
    out = sys.stdout if stream is None else stream
    concrete = resolve_format(fmt, out)
    # Again each time: a library or test may have called structlog.configure() since.
    _configure_structlog_once(force=True)
    with _State.lock:
        _State.level = LEVELS[level.lower()]
        _State.fmt = concrete
        _State.stream = out
        if concrete == "console":
            _State.renderer = structlog.dev.ConsoleRenderer(colors=False, pad_event_to=25, timestamp_key="ts")
        else:
            _State.renderer = _json_renderer
    _route_stdlib_logging(_State.level)
    return concrete


def get_logger(name: str) -> TrapdLogger:
    """A logger that carries ``logger=name``; bind event_id / rule / action_id on it."""
    _configure_structlog_once()
    logger: TrapdLogger = structlog.get_logger(name).bind(logger=name)
    return logger


class _ToStructlog(logging.Handler):
    """Hands stdlib log records to structlog, so there is one output and one format."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        kw: dict[str, Any] = {}
        if record.exc_info and record.exc_info[0] is not None:
            kw["exc_info"] = record.exc_info
        get_logger(record.name).log(record.levelno, message, **kw)


def _route_stdlib_logging(level: int) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _ToStructlog):
            root.removeHandler(handler)
    root.addHandler(_ToStructlog())
    root.setLevel(level)
    for name in NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


@dataclass(frozen=True)
class LoggingSetup:
    """What :func:`logging_setup` saw: structlog's configuration and the root logger's."""

    structlog_config: tuple[tuple[str, Any], ...]
    root_handlers: tuple[logging.Handler, ...]
    root_level: int


def logging_setup() -> LoggingSetup:
    """The logging configuration now, for :func:`restore_logging` after code that may change it."""
    config = structlog.get_config()
    config["processors"] = tuple(config["processors"])  # a change in place shows too
    root = logging.getLogger()
    return LoggingSetup(tuple(sorted(config.items())), tuple(root.handlers), root.level)


def restore_logging(setup: LoggingSetup) -> bool:
    """Put back the logging configuration ``setup`` saw; whether anything had changed.

    Action plugins are imported after trapd configured its logging, and a plugin module made
    from a script may call ``structlog.configure()`` or ``logging.basicConfig()`` as it is
    imported: every logger made afterwards would write with its processors (without the one
    that masks secrets), to its stream, and the standard library's records twice.
    """
    now = logging_setup()
    if now == setup:
        return False
    if now.structlog_config != setup.structlog_config:
        config = dict(setup.structlog_config)
        structlog.configure(**{**config, "processors": list(config["processors"])})
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler not in setup.root_handlers:
            root.removeHandler(handler)
    for handler in setup.root_handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(setup.root_level)
    return True


class RateLimitedLog:
    """At most one line per key per ``interval`` seconds, with the count of lines held back.

    For events that can repeat thousands of times a second (a Kea endpoint
    down during a storm, an action failing for every trap): the first
    occurrence of a key is written at once; later ones within the interval
    are counted; the next line written for that key carries
    ``suppressed=N``. Call :meth:`flush` periodically (and at shutdown) so
    that held-back counts are written even if the key never comes back.
    Listener drops have their own, drop-specific limiter
    (``trapd.listener.stats.DropLog``).

    At most ``max_keys`` keys are tracked; the oldest is flushed and forgotten
    when a new one arrives, so a storm of distinct keys cannot grow memory.
    """

    def __init__(
        self,
        # Any logger with a method per level name (TrapdLogger, a structlog logger, a test's).
        logger: Any,
        interval: float = 10.0,
        *,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._max_keys = max_keys
        self._clock = clock
        # key -> [next time a line may be written, suppressed count, last (level, event, fields)]
        self._keys: MutableMapping[Hashable, list[Any]] = {}

    def log(self, level: str, key: Hashable, event: str, **fields: Any) -> bool:
        """Write or count one occurrence; True when a line was written."""
        now = self._clock()
        entry = self._keys.get(key)
        if entry is None:
            if len(self._keys) >= self._max_keys:
                oldest = next(iter(self._keys))
                self._write_pending(oldest, self._keys.pop(oldest))
            self._keys[key] = [now + self._interval, 0, None]
            getattr(self._logger, level)(event, **fields)
            return True
        if now < entry[0]:
            entry[1] += 1
            entry[2] = (level, event, fields)
            return False
        suppressed, entry[0], entry[1], entry[2] = entry[1], now + self._interval, 0, None
        if suppressed:
            fields = {**fields, "suppressed": suppressed}
        getattr(self._logger, level)(event, **fields)
        return True

    def info(self, key: Hashable, event: str, **fields: Any) -> bool:
        return self.log("info", key, event, **fields)

    def warning(self, key: Hashable, event: str, **fields: Any) -> bool:
        return self.log("warning", key, event, **fields)

    def error(self, key: Hashable, event: str, **fields: Any) -> bool:
        return self.log("error", key, event, **fields)

    def flush(self, *, force: bool = False) -> None:
        """Write held-back counts whose interval has passed (all of them with ``force``)."""
        now = self._clock()
        for key, entry in list(self._keys.items()):
            if entry[1] and (force or now >= entry[0]):
                self._write_pending(key, entry)
                entry[0], entry[1], entry[2] = now + self._interval, 0, None

    def _write_pending(self, key: Hashable, entry: list[Any]) -> None:
        if entry[1] and entry[2] is not None:
            level, event, fields = entry[2]
            getattr(self._logger, level)(event, **{**fields, "suppressed": entry[1]})
