"""scripts/install-service.sh and uninstall-service.sh, in a temp root (DESTDIR) and in a private /etc."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from trapd.config import load_config

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "scripts" / "install-service.sh"
UNINSTALL = REPO / "scripts" / "uninstall-service.sh"
TRAPD = Path(sys.executable).with_name("trapd")


def run(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_into_destdir(tmp_path: Path) -> None:
    out = run(INSTALL, "--destdir", tmp_path, "--trapd", "/opt/trapd/bin/trapd").stdout
    units = tmp_path / "etc/systemd/system"
    service = (units / "trapd.service").read_text()
    assert "ExecStart=/opt/trapd/bin/trapd run --config /etc/trapd/trapd.yaml" in service
    assert "/usr/local/bin/trapd" not in service
    assert (units / "trapd.socket").read_text() == (REPO / "systemd/trapd.socket").read_text()
    assert mode(units / "trapd.service") == 0o644
    etc = tmp_path / "etc/trapd"
    assert mode(etc) == 0o750 and (etc / "rules.d").is_dir()
    assert (etc / "trapd.yaml").read_text() == (REPO / "etc/trapd/trapd.yaml").read_text()
    assert (etc / "rules.yaml").read_text() == (REPO / "etc/trapd/rules.yaml").read_text()
    assert (etc / "trapd.yaml.example").is_file()
    assert mode(etc / "trapd.yaml") == 0o640
    assert "skipped (--destdir)" in out  # no user created in a temp root
    # The starter configuration is valid as installed.
    cfg = load_config(etc / "trapd.yaml")
    assert cfg.rule_paths() == [etc / "rules.yaml"]
    assert str(cfg.service.metrics_listen) == "127.0.0.1:9163"


def test_reinstall_keeps_the_admins_config_and_refreshes_units(tmp_path: Path) -> None:
    run(INSTALL, "--destdir", tmp_path, "--trapd", "/opt/a/trapd")
    etc = tmp_path / "etc/trapd"
    (etc / "trapd.yaml").write_text("# mine\n")
    (etc / "rules.yaml").write_text("rules: []\n")
    (etc / "trapd.yaml.example").write_text("stale\n")
    out = run(INSTALL, "--destdir", tmp_path, "--trapd", "/opt/b/trapd").stdout
    assert (etc / "trapd.yaml").read_text() == "# mine\n"
    assert (etc / "rules.yaml").read_text() == "rules: []\n"
    assert "exists, left as it is" in out
    assert (etc / "trapd.yaml.example").read_text() == (REPO / "etc/trapd/trapd.yaml").read_text()
    assert "ExecStart=/opt/b/trapd run" in (tmp_path / "etc/systemd/system/trapd.service").read_text()


def test_uninstall_keeps_config_and_journal_unless_purged(tmp_path: Path) -> None:
    run(INSTALL, "--destdir", tmp_path, "--trapd", "/opt/trapd/bin/trapd")
    state = tmp_path / "var/lib/trapd"
    state.mkdir(parents=True)
    (state / "journal.sqlite").write_text("x")
    dropin = tmp_path / "etc/systemd/system/trapd.service.d"
    dropin.mkdir()
    (dropin / "local.conf").write_text("[Service]\n")
    out = run(UNINSTALL, "--destdir", tmp_path).stdout
    assert not (tmp_path / "etc/systemd/system/trapd.service").exists()
    assert not (tmp_path / "etc/systemd/system/trapd.socket").exists()
    assert (tmp_path / "etc/trapd/trapd.yaml").exists()
    assert (state / "journal.sqlite").exists()
    assert (dropin / "local.conf").exists()
    assert "--purge removes them" in out
    run(INSTALL, "--uninstall", "--purge", "--destdir", tmp_path)
    assert not (tmp_path / "etc/trapd").exists()
    assert not state.exists()
    assert not dropin.exists()


def test_unit_dir_option(tmp_path: Path) -> None:
    run(INSTALL, "--destdir", tmp_path, "--trapd", "/usr/bin/trapd", "--unit-dir", "/lib/systemd/system")
    assert (tmp_path / "lib/systemd/system/trapd.service").is_file()


@pytest.mark.parametrize(
    ("args", "rc", "message"),
    [
        (["--bogus"], 2, "unknown option"),
        (["--trapd", "relative/trapd"], 1, "absolute path"),
        (["--trapd", "/opt/my trapd/bin/trapd"], 1, "unsupported characters"),
        (["--unit-dir", "etc/systemd"], 1, "absolute path"),
        (["--trapd", "/root/.local/bin/trapd"], 1, "ProtectHome=yes"),
        (["--trapd", "/home/ops/venv/bin/trapd"], 1, "in a home directory"),
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, args: list[str], rc: int, message: str) -> None:
    proc = run(INSTALL, "--destdir", tmp_path, *args, check=False)
    assert proc.returncode == rc
    assert message in proc.stderr
    assert not (tmp_path / "etc/systemd/system/trapd.service").exists()


def test_trapd_is_found_on_path(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{TRAPD.parent}:/usr/bin:/bin"}
    subprocess.run([INSTALL, "--destdir", tmp_path], env=env, check=True, capture_output=True, timeout=60)
    assert f"ExecStart={TRAPD} run" in (tmp_path / "etc/systemd/system/trapd.service").read_text()
    empty = {**os.environ, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([INSTALL, "--destdir", tmp_path / "b"], env=empty, capture_output=True, text=True)
    assert proc.returncode == 1 and "no trapd command on PATH" in proc.stderr


def test_needs_root_without_destdir() -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root")
    proc = run(INSTALL, check=False)
    assert proc.returncode == 1 and "run as root" in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_real_install_creates_the_user_in_a_private_etc(tmp_path: Path) -> None:
    """The / install path (user, groups, ownership), in a mount namespace over copies of /etc and /var/lib."""

    def host_state() -> tuple[int, bool, bool]:
        user = subprocess.run(["getent", "passwd", "trapd"], capture_output=True).returncode
        return user, Path("/etc/trapd").exists(), Path("/etc/systemd/system/trapd.service").exists()

    before = host_state()
    etc, varlib = tmp_path / "etc", tmp_path / "varlib"
    # A trapd whose interpreter is outside any home directory (this venv's python may live in /root/.pyenv).
    trapd = tmp_path / "opt/bin/trapd"
    trapd.parent.mkdir(parents=True)
    trapd.write_text("#!/usr/bin/python3\n")
    trapd.chmod(0o755)
    home_python = tmp_path / "opt/bin/trapd-pyenv"
    home_python.write_text("#!/root/.pyenv/versions/3.11.7/bin/python3.11\n")
    home_python.chmod(0o755)
    shutil.copytree("/etc", etc, symlinks=True)
    (varlib / "trapd").mkdir(parents=True)
    (varlib / "trapd" / "journal.sqlite").write_text("x")
    script = f"""
        set -e
        mount --bind {etc} /etc
        mount --bind {varlib} /var/lib
        mount -t tmpfs tmpfs /run          # no /run/systemd/system: systemctl is never called
        if {INSTALL} --trapd {home_python} 2>&1; then exit 3; fi
        echo "== refused"; getent passwd trapd || echo "no user yet"; ls /etc/systemd/system | grep trapd ||:
        {INSTALL} --trapd {trapd}
        echo "== user"; id trapd
        echo "== owner"; stat -c '%U:%G %a %n' /etc/trapd /etc/trapd/trapd.yaml /etc/trapd/rules.d
        {INSTALL} --trapd {trapd} >/dev/null     # a second run is harmless
        {UNINSTALL}
        echo "== after uninstall"; id trapd; ls /var/lib/trapd /etc/trapd
        {UNINSTALL} --purge
        echo "== after purge"; id trapd 2>&1 || true; ls /var/lib
    """
    proc = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    refused = out.split("== refused\n")[1].split("user:")[0]
    assert refused.strip() == "no user yet"  # checked before anything was changed
    assert "/root/.pyenv/versions/3.11.7/bin/python3.11 is in a home directory" in out
    user = out.split("== user\n")[1].split("\n")[0]
    assert user.startswith("uid=") and "(trapd)" in user
    if subprocess.run(["getent", "group", "_kea"], capture_output=True).returncode == 0:
        assert "(_kea)" in user
    owners = out.split("== owner\n")[1].split("\n")[:3]
    assert owners == [
        "root:trapd 750 /etc/trapd",
        "root:trapd 640 /etc/trapd/trapd.yaml",
        "root:trapd 750 /etc/trapd/rules.d",
    ]
    after = out.split("== after uninstall\n")[1].split("== after purge")[0]
    assert "(trapd)" in after and "journal.sqlite" in after and "trapd.yaml" in after
    purged = out.split("== after purge\n")[1]
    assert "no such user" in purged
    assert "trapd" not in purged.split("\n", 1)[1]  # /var/lib/trapd is gone
    # The host was not touched.
    assert host_state() == before


def _sh_blocks(text: str) -> list[str]:
    import re

    return re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M)


def test_the_documented_installs_work_on_debian_12() -> None:
    """README's and docs/service.md's install commands, as an admin types them on Debian 12.

    Debian 12's python3 is "externally managed" (PEP 668): `pip install .` as root is refused, and
    as a user it lands in ~/.local, which install-service.sh refuses (ProtectHome=yes). So trapd
    goes into a venv outside any home, whose trapd is put on PATH for install-service.sh and for
    the `trapd ...` commands the docs use next. (The docs said `pip install .`, and README ran
    install-service.sh after scripts/setup.sh, whose .venv is neither on PATH nor outside a home.)
    """
    import re

    service = (REPO / "docs" / "service.md").read_text(encoding="utf-8")
    install = service.split("## Install\n", 1)[1].split("\n## ", 1)[0]
    commands = [
        line.split("#", 1)[0].strip()
        for block in _sh_blocks(install)
        for line in block.splitlines()
        if line.split("#", 1)[0].strip()
    ]
    for cmd in commands:
        assert not re.match(r"(sudo )?(pip3?|pipx|python3? -m pip) install", cmd), cmd
    first_pip = next(i for i, c in enumerate(commands) if " install " in c and "pip" in c)
    assert re.fullmatch(r"sudo /usr/bin/python3 -m venv /opt/trapd", commands[first_pip - 1]), commands
    assert commands[first_pip].startswith("sudo /opt/trapd/bin/pip install ")
    linked = commands.index("sudo ln -s /opt/trapd/bin/trapd /usr/local/bin/trapd")
    assert linked < commands.index("sudo scripts/install-service.sh")
    for doc in ("docs/plugins.md", "examples/trapd-example-plugin/README.md"):
        for block in _sh_blocks((REPO / doc).read_text(encoding="utf-8")):
            for line in block.splitlines():
                cmd = line.split("#", 1)[0].strip()
                assert not re.match(r"(sudo )?(pip3?|python3? -m pip) install", cmd), f"{doc}: {line}"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for block in _sh_blocks(readme):
        for line in block.splitlines():
            cmd = line.split("#", 1)[0].strip()
            assert not (cmd.startswith("scripts/install-service.sh") and "--trapd" not in cmd), (
                f"README: {line!r} finds no trapd on PATH after scripts/setup.sh"
            )
