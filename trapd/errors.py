"""The errors an action raises on purpose, and what the dispatcher does with each.

At the bottom of the layers, so that the Kea client (:mod:`trapd.kea.errors`)
can classify its failures the dispatcher's way without importing the plugin
API; :mod:`trapd.plugin` re-exports them for plugin authors.
"""

from __future__ import annotations


class ActionError(Exception):
    """Base of the errors an action raises on purpose."""


class RetryableError(ActionError):
    """Worth trying again later: the dispatcher backs off and retries.

    ``retry_after``: seconds the other side asked us to wait (an HTTP Retry-After); the
    retry is then not earlier than that, and the action dead if that is past its max_age.
    """

    retry_after: float | None = None

    def __init__(self, *args: object, retry_after: float | None = None) -> None:
        super().__init__(*args)
        if retry_after is not None:
            self.retry_after = retry_after


class PermanentError(ActionError):
    """Will not get better by retrying: the action goes straight to dead."""


class RecordTooLarge(PermanentError):
    """Raised by ``ctx.record``: the partial result is more than the journal keeps whole.

    A record is what a retry, a takeover and ``trapd kea restore`` read back; one the journal
    would cut short is refused instead, before the step it was to secure. An action that
    catches it should say, in its own terms, that it did nothing (kea.lease-del: "N leases
    match ..."); uncaught, the action is dead with this message.
    """
