"""The service: section of trapd.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from trapd.config import config_from_yaml
from trapd.service.config import MetricsListen, ServiceConfig, parse_metrics_listen
from trapd.yamlsource import ConfigError, load_yaml


def section(text: str) -> ServiceConfig:
    return ServiceConfig.from_yaml(load_yaml(text, "trapd.yaml")["service"], Path("/etc/trapd"))


def test_defaults() -> None:
    cfg = ServiceConfig.from_yaml(None, Path("."))
    assert cfg == ServiceConfig()
    assert cfg.metrics_listen == MetricsListen("127.0.0.1", 9163)
    assert (cfg.log_level, cfg.log_format, cfg.status_interval) == ("info", "auto", 5.0)


def test_every_key() -> None:
    cfg = section(
        "service:\n"
        "  metrics: {listen: '[::1]:9200'}\n"
        "  log: {level: DEBUG, format: journal}\n"
        "  status_interval: 2.5\n"
    )
    assert cfg == ServiceConfig(MetricsListen("::1", 9200), "debug", "journal", 2.5)
    assert str(cfg.metrics_listen) == "[::1]:9200"


@pytest.mark.parametrize("value", ["null", "off", "~", "false", "'off'"])
def test_metrics_can_be_turned_off(value: str) -> None:
    assert section(f"service:\n  metrics:\n    listen: {value}\n").metrics_listen is None


def test_empty_metrics_mapping_means_off() -> None:
    assert section("service:\n  metrics:\n").metrics_listen is None


@pytest.mark.parametrize(
    ("text", "message", "where"),
    [
        ("service:\n  metrics: {listen: 'localhost:9163'}\n", "not an IP address", "trapd.yaml:2:21"),
        ("service:\n  metrics: {listen: '127.0.0.1'}\n", "expected HOST:PORT", "trapd.yaml:2:21"),
        ("service:\n  metrics: {listen: '::1:9163'}\n", "[ADDR]:PORT", "trapd.yaml:2:21"),
        ("service:\n  metrics: {listen: '127.0.0.1:99999'}\n", "port out of range", "trapd.yaml:2:21"),
        ("service:\n  metrics: {listen: 9163}\n", "HOST:PORT or null", "trapd.yaml:2:21"),
        ("service:\n  log: {level: verbose}\n", "service.log.level must be one of", "trapd.yaml:2:16"),
        ("service:\n  log: {format: xml}\n", "service.log.format must be one of", "trapd.yaml:2:17"),
        ("service:\n  shutdown_timeout: 10\n", "unknown key 'shutdown_timeout'", "trapd.yaml:2:3"),
        ("service:\n  status_interval: 0\n", "status_interval must be > 0", "trapd.yaml:2:20"),
        # NaN passed "> 0" (it compares false with everything) and slept for ever; .inf likewise.
        ("service:\n  status_interval: .nan\n", "status_interval must be > 0", "trapd.yaml:2:20"),
        ("service:\n  status_interval: .inf\n", "status_interval must be > 0", "trapd.yaml:2:20"),
        ("service:\n  metric: {}\n", "did you mean 'metrics'", "trapd.yaml:2:3"),
        ("service:\n  log: {levle: info}\n", "unknown key 'levle'", "trapd.yaml:2:9"),
    ],
)
def test_errors_point_at_the_value(text: str, message: str, where: str) -> None:
    with pytest.raises(ConfigError) as err:
        section(text)
    assert message in err.value.message
    assert str(err.value.mark) == where


def test_flag_parser_for_the_command_line() -> None:
    assert parse_metrics_listen("0.0.0.0:9100") == MetricsListen("0.0.0.0", 9100)
    assert parse_metrics_listen("off") is None
    assert parse_metrics_listen(None) is None
    with pytest.raises(ConfigError):
        parse_metrics_listen("9100")


def test_whole_config_carries_the_section() -> None:
    cfg = config_from_yaml(load_yaml("service:\n  log: {level: warning}\n", "trapd.yaml"), None)
    assert cfg.service.log_level == "warning"
