"""From planned actions to done ones: the journal, the dispatcher, and what they guarantee.

journal/       the durable queue and audit trail (the Journal interface; SQLite backend)
dispatcher.py  retries, delays and cancels, once-within, per-key order, caps, breaker, back-pressure
breaker.py     circuit breaker per Kea endpoint
config.py      the ``dispatch:`` section of trapd.yaml
plugins.py     loading the installed action plugins; building the dispatcher for the daemon
stats.py       counters for the metrics
testing.py     builders for tests of the dispatcher and of plugins

docs/dispatch.md explains the guarantees; docs/plugins.md how to write an action.
"""
