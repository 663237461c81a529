"""`trapd run`'s command line resolved into the Config the daemon runs with (trapd.service.options)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from trapd.commands import run
from trapd.listener.config import ListenAddress
from trapd.service.options import RunOptions
from trapd.yamlsource import ConfigError

CONFIG = """\
state_dir: state
listener: {listen: ["127.0.0.1:1162"], communities: [public]}
service:
  metrics: {listen: "127.0.0.1:9999"}
  log: {level: warning, format: json}
"""


def parse(*argv: str) -> RunOptions:
    parser = argparse.ArgumentParser()
    run.configure(parser)
    return RunOptions.from_args(parser.parse_args(argv))


def test_flags_override_trapd_yaml_and_are_resolved_into_the_config(tmp_path: Path) -> None:
    path = tmp_path / "trapd.yaml"
    path.write_text(CONFIG)
    plain = parse("--config", str(path)).load()
    assert (plain.service.log_level, plain.service.log_format) == ("warning", "json")
    assert plain.service.metrics_listen == ListenAddress("127.0.0.1", 9999)
    assert plain.mode == "enforce" and plain.state_dir == tmp_path / "state"

    options = parse(
        "--config", str(path), "--log-level", "DEBUG", "--log-format", "console", "--metrics", "off",
        "--listen", "[::1]:2162", "--dry-run", "--state-dir", str(tmp_path / "other"), "--workers", "2",
    )  # fmt: skip
    config = options.load()
    assert (config.service.log_level, config.service.log_format) == ("debug", "console")
    assert config.service.metrics_listen is None
    assert config.listener.listen == (ListenAddress("::1", 2162),)
    assert options.binds_listen
    assert config.mode == "dry-run" and config.service.workers == 2
    assert config.state_dir == (tmp_path / "other").resolve()
    # A reload loads again with the same options: the flags keep overriding the file.
    path.write_text(CONFIG.replace("warning", "error"))
    assert options.load().service.log_level == "debug"
    assert (
        plain.service.log_level == "warning"
        and parse("--config", str(path)).load().service.log_level == "error"
    )


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        (["--log-level", "loud"], "--log-level 'loud'"),
        (["--metrics", "nowhere"], "metrics listen 'nowhere'"),
        (["--workers", "0"], "service.workers"),
    ],
)
def test_a_bad_flag_is_one_line_and_status_2(tmp_path: Path, flag: list[str], message: str) -> None:
    path = tmp_path / "trapd.yaml"
    path.write_text(CONFIG)
    with pytest.raises(ConfigError, match=message.replace("'", ".").replace("-", ".")):
        parse("--config", str(path), *flag).load()
    proc = subprocess.run(
        [sys.executable, "-m", "trapd", "run", "--config", str(path), *flag],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("trapd: ") and message in proc.stderr and "Traceback" not in proc.stderr
