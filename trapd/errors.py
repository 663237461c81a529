"""The errors an action raises on purpose, and what the dispatcher does with each.

At the bottom of the layers, so that the Kea client (:mod:`trapd.kea.errors`)
can classify its failures the dispatcher's way without importing the plugin
API; :mod:`trapd.plugin` re-exports them for plugin authors.
"""

from __future__ import annotations


class ActionError(Exception):
    """Base of the errors an action raises on purpose."""


class RetryableError(ActionError):
    """Worth trying again later: the dispatcher backs off and retries."""


class PermanentError(ActionError):
    """Will not get better by retrying: the action goes straight to dead."""
