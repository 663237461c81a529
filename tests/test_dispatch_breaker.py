"""The circuit breaker's states: closed -> open -> half-open (one probe) -> closed or open again."""

from __future__ import annotations

from trapd.dispatch.breaker import Breaker
from trapd.dispatch.config import BreakerConfig


def test_opens_after_consecutive_failures_and_probes_once() -> None:
    b = Breaker(BreakerConfig(failures=3, cool_down=10.0, max_cool_down=25.0))
    assert b.allow(0.0) is None
    assert not b.failure(1.0) and not b.failure(2.0)
    assert b.failure(3.0) and b.state == "open"
    assert b.allow(4.0) == 13.0  # wait for the cool-down
    assert b.allow(13.0) is None and b.state == "half-open"  # the probe
    assert b.allow(13.5) == 23.5  # only one probe at a time
    assert b.failure(14.0) and b.open_until == 34.0  # probe failed: cool-down doubled
    assert b.allow(34.0) is None
    assert b.failure(35.0) and b.open_until == 35.0 + 25.0  # capped at max_cool_down
    assert b.allow(60.0) is None
    assert b.success() and b.state == "closed" and b.failures == 0
    assert b.allow(61.0) is None


def test_success_resets_the_count() -> None:
    b = Breaker(BreakerConfig(failures=2, cool_down=1.0))
    b.failure(0.0)
    assert not b.success()  # it was not open
    assert not b.failure(1.0)  # the count started again
    assert b.failure(2.0)


def test_late_failures_of_actions_started_before_it_opened_do_not_extend_it() -> None:
    b = Breaker(BreakerConfig(failures=1, cool_down=10.0))
    assert b.failure(0.0)
    assert not b.failure(1.0)  # an action that was already running fails too
    assert b.open_until == 10.0


def test_state_at_says_half_open_once_the_cool_down_is_over_and_holds_only_until_then() -> None:
    """What the metrics read: an open breaker whose cool-down ended with no action to probe it is
    half-open (the next action probes), not open for ever; ``holds`` is what keeps actions waiting."""
    b = Breaker(BreakerConfig(failures=1, cool_down=10.0, max_cool_down=60.0))
    assert b.state_at(0.0) == "closed" and not b.holds(0.0)
    assert b.failure(3.0)
    assert b.state_at(5.0) == "open" and b.holds(5.0)
    assert b.state_at(13.0) == "half-open" and not b.holds(13.0)
    assert b.allow(13.0) is None  # the probe
    assert b.state_at(14.0) == "half-open" and b.holds(14.0)
    assert b.success() and b.state_at(14.0) == "closed" and not b.holds(14.0)
