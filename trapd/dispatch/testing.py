"""Moved to :mod:`trapd.testing` (the public kit for plugin authors); these names stay for old imports."""

from trapd.testing import make_context, make_event, make_outcome, plan, rule_file_problems

__all__ = ["make_context", "make_event", "make_outcome", "plan", "rule_file_problems"]
