"""trapd's commands print no secret: what a server answered is printed through the redactor too.

`trapd kea status` prints each endpoint's error. An endpoint that answers with something that
is not Kea's JSON (a proxy's or a debugging server's page that quotes the request) has that
answer quoted in the error, the request's ``Authorization: Basic`` header with it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from test_secret_healthz import PASSWORD, TOKEN, echo_kea  # noqa: F401  (the fixture)


def test_kea_status_masks_an_error_quoting_the_basic_header(tmp_path: Path, echo_kea: str) -> None:  # noqa: F811
    endpoint = {"transport": "control-agent", "url": echo_kea, "user": "trapd", "family": "v4"}
    (tmp_path / "kea.pw").write_text(PASSWORD + "\n")
    (tmp_path / "kea.pw").chmod(0o600)
    config = {"kea": {"endpoints": {"echo": {**endpoint, "password": {"file": str(tmp_path / "kea.pw")}}}}}
    (tmp_path / "trapd.yaml").write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-m", "trapd", "kea", "status", "-c", str(tmp_path / "trapd.yaml")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 1 and "not JSON" in out, out
    assert TOKEN[8:-4] not in out and PASSWORD not in out, out
