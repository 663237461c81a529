"""log: the rendered message at the asked level, tagged with the event."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs
from trapd_actions.log import log

from trapd.params import validate
from trapd.testing import make_context, rule_file_problems


async def test_logs_message_at_level() -> None:
    ctx = make_context(action_id="42")
    with capture_logs() as logs:
        params = validate(log.params, {"message": "port 17 down; $(reboot)", "level": "warning"})
        result = await log.run(params, ctx)
    assert result == {"logged": True}
    assert logs == [
        {
            "event": "port 17 down; $(reboot)",
            "log_level": "warning",
            "source": ctx.event.source,
            "trap": "IF-MIB::linkDown",
            "event_id": ctx.event.id,
            "rule": "test-rule",
            "action_id": "42",
        }
    ]


async def test_default_level_is_info() -> None:
    with capture_logs() as logs:
        await log.run(validate(log.params, {"message": "hello"}), make_context())
    assert logs[0]["log_level"] == "info"


def test_example_yaml_is_a_valid_rule_file() -> None:
    assert rule_file_problems(Path(__file__).with_name("example.yaml")) == []
