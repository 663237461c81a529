"""`trapd check` and `trapd mibs compile` as programs: which stream says what, and broken system MIBs.

A broken MIB in the MIB directories (one of a system's, as Debian's NET-SNMP-PASS-MIB.txt in
/usr/share/snmp/mibs was before trapd took base types it does not import) must not fail
`trapd check --strict`, nor add a warning to every check or start; `trapd mibs compile` reports
it with file:line, and a rule that needs a name from it is told where it broke. The tests break
a copy of NET-SNMP-PASS-MIB on purpose: netSnmpPassCounter64 under a parent nobody defines.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import TrapdDaemon

REPO = Path(__file__).resolve().parent.parent
SYSTEM_MIBS = Path("/usr/share/snmp/mibs")
PASS_MIB = SYSTEM_MIBS / "NET-SNMP-PASS-MIB.txt"
# NET-SNMP-PASS-MIB imports from these two; with them it fails for its own reason only.
PASS_MIB_SET = ("NET-SNMP-PASS-MIB.txt", "NET-SNMP-MIB.txt", "NET-SNMP-TC.txt")
needs_pass_mib = pytest.mark.skipif(not PASS_MIB.is_file(), reason="Debian's net-snmp MIBs are not installed")

GOOD = """\
rules:
  - name: port-down-note
    match: {notification: IF-MIB::linkDown}
    actions:
      - action: log
        message: "down {{ ifIndex }}"
"""
BAD = GOOD.replace("IF-MIB::linkDown", "IF-MIB::linkDwn")


def trapd(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "XDG_CACHE_HOME": str(cwd / "xdg-cache"), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "trapd", *args], cwd=cwd, env=environ, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip


def config(tmp_path: Path, mib_dirs: list[Path]) -> Path:
    path = tmp_path / "trapd.yaml"
    dirs = ", ".join(f'"{d}"' for d in mib_dirs)
    path.write_text(f"state_dir: {tmp_path / 'state'}\nmibs: {{dirs: [{dirs}]}}\nrules: {{files: []}}\n")
    (tmp_path / "state").mkdir(exist_ok=True)
    return path


def pass_mib_dir(tmp_path: Path) -> Path:
    """Debian's NET-SNMP-PASS-MIB and what it imports from, the first broken on purpose."""
    d = tmp_path / "mibs"
    d.mkdir()
    for name in PASS_MIB_SET:
        shutil.copy(SYSTEM_MIBS / name, d / name)
    text = PASS_MIB.read_text(encoding="utf-8")
    broken = text.replace("::= { netSnmpPassExamples 7 }", "::= { netSnmpPassNowhere 7 }")
    assert broken != text
    (d / PASS_MIB.name).write_text(broken, encoding="utf-8")
    return d


def test_report_and_verdict_share_stdout_and_stderr_stays_empty(tmp_path: Path) -> None:
    cfg = str(config(tmp_path, []))
    (tmp_path / "good.yaml").write_text(GOOD)
    (tmp_path / "bad.yaml").write_text(BAD)

    ok = trapd("check", "--config", cfg, "good.yaml", cwd=tmp_path)
    assert (ok.returncode, ok.stderr) == (0, "")
    assert ok.stdout.splitlines()[-1] == "OK: good.yaml"

    bad = trapd("check", "--config", cfg, "bad.yaml", cwd=tmp_path)
    assert (bad.returncode, bad.stderr) == (1, "")
    lines = bad.stdout.splitlines()
    assert lines[0].startswith("bad.yaml:3:") and "IF-MIB::linkDwn" in lines[0], bad.stdout
    assert lines[-1] == "1 error(s), 0 warning(s) in bad.yaml"

    # Only trapd check's own failure (nothing to check) goes to stderr.
    nothing = trapd("check", "--config", cfg, cwd=tmp_path)
    assert (nothing.returncode, nothing.stdout) == (2, "")
    assert "no rule files given" in nothing.stderr


@needs_pass_mib
def test_a_broken_mib_no_rule_uses_neither_fails_strict_nor_warns(tmp_path: Path) -> None:
    cfg = str(config(tmp_path, [pass_mib_dir(tmp_path)]))
    (tmp_path / "rules.yaml").write_text(GOOD)

    text = trapd("check", "--strict", "--config", cfg, "rules.yaml", cwd=tmp_path)
    assert (text.returncode, text.stderr) == (0, ""), text.stdout + text.stderr
    assert text.stdout == "OK: rules.yaml\n"

    doc = json.loads(
        trapd("check", "--strict", "--format", "json", "--config", cfg, "rules.yaml", cwd=tmp_path).stdout
    )
    assert doc["valid"] is True and doc["problems"] == []

    # `trapd mibs compile` is where it is said, at its file and line.
    mibs = trapd("mibs", "compile", "--config", cfg, cwd=tmp_path)
    assert mibs.returncode == 0 and mibs.stderr == "", mibs.stderr
    broken = tmp_path / "mibs" / "NET-SNMP-PASS-MIB.txt"
    # At the line that names the parent nobody defines.
    line = next(n for n, t in enumerate(broken.read_text().splitlines(), 1) if "netSnmpPassNowhere" in t)
    expected = f"{broken}:{line}: NET-SNMP-PASS-MIB: Unknown parent symbol: netSnmpPassNowhere"
    assert expected in mibs.stdout, mibs.stdout
    assert trapd("mibs", "compile", "--strict", "--config", cfg, cwd=tmp_path).returncode == 1


@needs_pass_mib
def test_a_rule_that_needs_the_broken_mib_is_told_where_it_broke(tmp_path: Path) -> None:
    cfg = str(config(tmp_path, [pass_mib_dir(tmp_path)]))
    (tmp_path / "rules.yaml").write_text(
        GOOD.replace(
            "{notification: IF-MIB::linkDown}", "{varbinds: {NET-SNMP-PASS-MIB::netSnmpPassOIDValue: x}}"
        )
    )
    doc = json.loads(trapd("check", "--format", "json", "--config", cfg, "rules.yaml", cwd=tmp_path).stdout)
    (problem,) = doc["problems"]
    assert (problem["file"], problem["line"], problem["severity"]) == ("rules.yaml", 3, "error")
    assert "NET-SNMP-PASS-MIB::netSnmpPassOIDValue" in problem["message"]
    assert (
        f"NET-SNMP-PASS-MIB did not load: {tmp_path / 'mibs' / 'NET-SNMP-PASS-MIB.txt'}:"
        in problem["message"]
    )


@needs_pass_mib
@pytest.mark.skipif(
    Path("/etc/trapd/trapd.yaml").exists(), reason="a real /etc/trapd/trapd.yaml would be used"
)
def test_strict_check_on_a_stock_debian_host(tmp_path: Path) -> None:
    """The issue as reported: no trapd.yaml, so the MIB directories are the defaults (Debian's)."""
    shutil.copy(REPO / "rules.yaml", tmp_path / "rules.yaml")
    run = trapd("check", "--strict", "rules.yaml", cwd=tmp_path)
    assert (run.returncode, run.stderr) == (0, ""), run.stdout + run.stderr
    assert "MIB" not in run.stdout and run.stdout.splitlines()[-1] == "OK: rules.yaml"


@needs_pass_mib
def test_the_daemon_warns_about_a_broken_mib_once_not_at_every_start(tmp_path: Path) -> None:
    mibs = pass_mib_dir(tmp_path)
    settings = {"mibs": {"dirs": [str(mibs)]}}
    broken = str(mibs / "NET-SNMP-PASS-MIB.txt")

    def mib_warnings(d: TrapdDaemon) -> list[dict[str, object]]:
        return [e for e in d.logs() if e.get("file") == broken and e.get("level") == "warning"]

    for start, said in ((1, 1), (2, 0)):  # the first start compiles; the second loads the cache
        d = TrapdDaemon.start(tmp_path / "daemon", rules=GOOD, config=settings)
        try:
            warnings = mib_warnings(d)
            assert len(warnings) == said, (start, d.logs())
            if warnings:
                assert warnings[0]["module"] == "NET-SNMP-PASS-MIB" and isinstance(warnings[0]["line"], int)
            assert d.stop() == 0
        finally:
            d.close()


@pytest.mark.parametrize("fifo", ["rules file", "file in the rules directory", "config file"])
def test_a_fifo_is_refused_by_name_not_waited_on(tmp_path: Path, fifo: str) -> None:
    """A FIFO (or any file that is not a regular one) where a YAML file is read: an error naming it.

    Opening a FIFO for reading waits for a writer: before, `trapd check` (and the daemon's reload
    thread) waited for ever. A FIFO named *.yaml in the rules directory was skipped in silence.
    """
    (tmp_path / "state").mkdir()
    (tmp_path / "rules.d").mkdir()
    (tmp_path / "rules.d" / "a.yaml").write_text(GOOD)
    (tmp_path / "rules.yaml").write_text(GOOD)
    settings = f"state_dir: {tmp_path / 'state'}\nmibs: {{dirs: []}}\n"
    settings += "rules: {files: [rules.yaml], dir: rules.d}\n"
    (tmp_path / "trapd.yaml").write_text(settings)
    named = {
        "rules file": tmp_path / "rules.yaml",
        "file in the rules directory": tmp_path / "rules.d" / "b.yaml",
        "config file": tmp_path / "trapd.yaml",
    }[fifo]
    named.unlink(missing_ok=True)
    os.mkfifo(named)
    environ = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg-cache")}
    try:
        run = subprocess.run(
            [sys.executable, "-m", "trapd", "check", "--config", "trapd.yaml"], cwd=tmp_path, env=environ,
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"trapd check waited on the FIFO {named}")
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"{named}:1:1: error: cannot read: not a regular file (a FIFO)" in run.stdout, run.stdout


def test_settings_for_an_action_that_is_not_installed_are_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A misspelt plugin name under trapd.yaml's actions: used to be dropped without a word: the
    # plugin ran with empty settings ("needs a url") and nothing said why.
    from trapd.cli import main

    (tmp_path / "rules.yaml").write_text(GOOD)
    (tmp_path / "trapd.yaml").write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        "rules: {files: [rules.yaml]}\n"
        "mibs: {dirs: []}\n"  # the shipped MIBs only: no compile of the system's
        "actions:\n"
        "  webhook: {}\n"
        "  webhok: {timeout: 5}\n"
    )
    assert main(["check", "--config", str(tmp_path / "trapd.yaml")]) == 0
    out = capsys.readouterr().out
    assert (
        f"{tmp_path / 'trapd.yaml'}:6:3: warning: actions.webhok: no action plugin named 'webhok' is "
        "installed; these settings are not used (did you mean 'webhook'?)"
    ) in out, out
    assert main(["check", "--strict", "--config", str(tmp_path / "trapd.yaml")]) == 1


# -- files trapd may not read -----------------------------------------------------------------
# As root every file is readable: the checks run as nobody (setpriv), as the service's user.
needs_setpriv = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv to run as nobody"
)


def as_nobody(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(cwd / "xdg")}
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "trapd", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory nobody can enter (pytest's tmp_path is root's alone)."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="trapd-perm-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        for p in sorted(d.rglob("*"), reverse=True):
            p.chmod(0o700)
        shutil.rmtree(d)


@needs_setpriv
def test_an_unreadable_rules_dir_or_file_is_an_error_at_its_place_saying_what_to_do(shared_dir: Path) -> None:
    rules_d = shared_dir / "rules.d"
    rules_d.mkdir()
    (rules_d / "10.yaml").write_text(GOOD)
    cfg = shared_dir / "trapd.yaml"
    cfg.write_text(f"state_dir: {shared_dir / 'state'}\nmibs: {{dirs: []}}\nrules:\n  dir: rules.d\n")
    cfg.chmod(0o644)
    rules_d.chmod(0o700)  # root's: nobody cannot list it
    r = as_nobody("check", "--config", str(cfg), cwd=shared_dir)
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    assert f"{cfg}:4:8: error: rules.dir {rules_d}: cannot list it: Permission denied" in r.stdout, r.stdout
    assert "user 'nobody'" in r.stdout, r.stdout

    rules_d.chmod(0o755)
    (rules_d / "10.yaml").chmod(0o600)
    r = as_nobody("check", "--config", str(cfg), cwd=shared_dir)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{rules_d / '10.yaml'}:1:1: error: cannot read: Permission denied" in r.stdout, r.stdout
    assert "user 'nobody'" in r.stdout, r.stdout


@needs_setpriv
@pytest.mark.parametrize(
    "command",
    [
        ["check"],
        ["test", "IF-MIB::linkDown", "ifIndex=1"],
        ["journal", "list"],
        ["mibs", "lookup", "IF-MIB::linkDown"],
    ],
    ids=lambda c: c[0],
)
def test_the_default_trapd_yaml_in_a_directory_the_user_cannot_enter_says_so(
    shared_dir: Path, command: list[str]
) -> None:
    # docs/service.md, "Install": install-service.sh makes /etc/trapd root:trapd 0750, then the admin
    # runs `trapd check`. Not root and not in group trapd, that was a PermissionError traceback
    # (Path.exists() raises EACCES); now it is the file's own "cannot read" error, saying who runs it.
    etc = shared_dir / "etc-trapd"
    etc.mkdir()
    (etc / "trapd.yaml").write_text("mibs: {dirs: []}\n")
    etc.chmod(0o750)  # root:root here: nobody cannot enter it
    default = etc / "trapd.yaml"
    script = (
        "import sys, pathlib, trapd.config as c; c.DEFAULT_CONFIG = pathlib.Path(sys.argv[1]); "
        "from trapd.cli import main; sys.exit(main(sys.argv[2:]))"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(shared_dir / "xdg")}
    r = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", script,
         str(default), *command],
        cwd=shared_dir, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert "Traceback" not in out, out
    assert r.returncode != 0, out
    assert f"{default}" in out and "Permission denied" in out and "user 'nobody'" in out, out
