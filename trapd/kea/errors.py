"""What can go wrong talking to Kea, sorted the way the dispatcher needs it.

Every error is either a :class:`~trapd.errors.RetryableError` (Kea may answer
later: refused connection, timeout, "the server is likely to be offline",
HTTP 5xx, 408, 429) or a :class:`~trapd.errors.PermanentError` (retrying cannot help:
bad credentials, HTTP 400, a hook that is not loaded, bad arguments, a
conflict). Actions let them propagate; the dispatcher retries or gives up.
"""

from __future__ import annotations

from trapd.errors import PermanentError, RetryableError

# Result codes of the Kea control API.
RESULT_SUCCESS = 0
RESULT_ERROR = 1
RESULT_UNSUPPORTED = 2
RESULT_EMPTY = 3
RESULT_CONFLICT = 4  # Kea >= 2.6 (lease_cmds conflicts; 2.2 says 1)

# Which hook library provides a command, for an error that says what to load.
# Kea's own text for a missing hook is only "'lease4-del' command not supported."
_HOOK_BY_PREFIX = (
    ("stat-lease", "libdhcp_stat_cmds.so"),
    ("lease", "libdhcp_lease_cmds.so"),
    ("reservation-", "libdhcp_host_cmds.so"),
    ("subnet", "libdhcp_subnet_cmds.so"),
    ("network", "libdhcp_subnet_cmds.so"),
    ("class-", "libdhcp_class_cmds.so"),
    ("ha-", "libdhcp_ha.so"),
)


def hook_for(command: str) -> str | None:
    """The hook library that provides ``command``, if it is a hook command."""
    if command == "leases-reclaim":  # built in, despite the prefix
        return None
    for prefix, lib in _HOOK_BY_PREFIX:
        if command.startswith(prefix):
            return lib
    return None


class KeaError(Exception):
    """Mixin base: every Kea error has the endpoint and (when known) the command.

    ``breaker_key`` names the circuit breaker the failure counts against: the endpoint, except
    behind a Control Agent, where the client sets ``ENDPOINT/SERVICE`` (one agent forwards to
    kea-dhcp4 and kea-dhcp6, which go down separately; see KeaClient.breaker_for).
    """

    endpoint: str
    command: str | None
    breaker_key: str

    def _init(self, message: str, endpoint: str, command: str | None) -> None:
        self.endpoint = endpoint
        self.command = command
        self.breaker_key = endpoint
        where = f"kea {endpoint}" + (f" {command}" if command else "")
        Exception.__init__(self, f"{where}: {message}")


class KeaRetryableError(KeaError, RetryableError):
    def __init__(self, message: str, endpoint: str, command: str | None = None) -> None:
        self._init(message, endpoint, command)


class KeaPermanentError(KeaError, PermanentError):
    def __init__(self, message: str, endpoint: str, command: str | None = None) -> None:
        self._init(message, endpoint, command)


class KeaUnavailableError(KeaRetryableError):
    """No answer: socket missing or refused, connection reset, or the CA says the server is offline."""


class KeaTimeoutError(KeaRetryableError):
    """No complete answer within the endpoint's timeout."""


class KeaHTTPError(KeaPermanentError):
    """HTTP 400 and other statuses that mean the request itself is wrong."""

    def __init__(self, message: str, endpoint: str, command: str | None = None, status: int = 0) -> None:
        super().__init__(message, endpoint, command)
        self.status = status


class KeaServerError(KeaRetryableError):
    """HTTP 5xx from a proxy in front of Kea, 408 / 429 (not run), or a garbled answer: may pass."""


class KeaAuthError(KeaHTTPError):
    """HTTP 401/403 or a TLS handshake refused: credentials or certificates are wrong."""


class KeaCommandError(KeaPermanentError):
    """Kea answered result 1: bad arguments or a state the command cannot handle."""

    def __init__(self, message: str, endpoint: str, command: str | None = None, result: int = 1) -> None:
        super().__init__(message, endpoint, command)
        self.result = result


class KeaUnsupportedError(KeaCommandError):
    """Result 2: the command does not exist here (unknown, or its hook library is not loaded)."""


class KeaConflictError(KeaCommandError):
    """Result 4 (Kea >= 2.6): e.g. the lease already exists."""
