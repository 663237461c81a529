"""trapd as a packager and an admin get it: an sdist and a wheel, and a venv with the wheel installed.

Session fixtures, built once for every test that needs them (tests/test_wheel.py, the plugin
author's walk in tests/test_plugin_walk.py):

* ``trapd_dist``: ``(sdist, wheel)`` from ``python -m build --no-isolation`` of a copy of the
  tracked files (the work tree stays clean), the wheel built from the sdist, as a packager's
  build does, so a file missing from either shows.
* ``trapd_venv``: a fresh venv with that wheel ``pip install``-ed (``--no-deps --no-index``).
  The dependencies come from this test venv's site-packages through a plain path in a .pth
  file (no .pth in it is processed, so the editable trapd of the work tree is not found),
  which keeps it offline and cheap.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run(
    *cmd: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run a command; fail the test with its output if it fails."""
    r = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert r.returncode == 0, f"{cmd}: {r.stdout[-3000:]}{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="session")
def trapd_dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(sdist, wheel) built from the tracked files."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout (an unpacked sdist): nothing tells the tracked files apart")
    src = tmp_path_factory.mktemp("src")
    files = run("git", "ls-files", "-z", cwd=REPO).stdout.split("\0")
    for name in filter(None, files):
        if not (REPO / name).is_file():
            continue  # deleted in the work tree, not yet committed
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, src / name)  # with its mode: the scripts stay executable in the sdist
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: this venv's setuptools and wheel, no download (CI may be offline).
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, src, cwd=src)
    (sdist,) = out.glob("trapd-*.tar.gz")
    (wheel,) = out.glob("trapd-*.whl")
    yield sdist, wheel


@dataclass(frozen=True)
class InstalledTrapd:
    """A venv with the built wheel installed: its interpreter, its site-packages, an environment."""

    root: Path
    python: Path
    site: Path
    env: dict[str, str]

    @property
    def trapd(self) -> Path:
        return self.root / "bin" / "trapd"

    def pip_install(self, *args: str | Path, cwd: Path) -> None:
        """``pip install`` into this venv, offline (this test venv's pip, its setuptools for a build)."""
        run(sys.executable, "-m", "pip", "--python", self.python, "install", "-q", "--no-deps",
            "--no-index", "--disable-pip-version-check", *args, cwd=cwd, env=self.env)  # fmt: skip


@pytest.fixture(scope="session")
def trapd_venv(trapd_dist: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> InstalledTrapd:
    _, wheel = trapd_dist
    work = tmp_path_factory.mktemp("venv")
    root = work / "venv"
    venv.EnvBuilder(with_pip=False).create(root)
    python = root / "bin" / "python"
    site = Path(
        run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=work).stdout.strip()
    )
    # The dependencies: this test venv's packages, linked into a directory named by a .pth file,
    # without trapd and the example plugin (editable installs of the work tree here).
    deps = work / "deps"
    deps.mkdir()
    for entry in Path(sysconfig.get_path("purelib")).iterdir():
        if not entry.name.lower().startswith(("trapd", "__editable__", "_trapd")):
            (deps / entry.name).symlink_to(entry)
    (site / "test-venv-deps.pth").write_text(f"{deps}\n")
    env = {
        **os.environ,
        "XDG_CACHE_HOME": str(work / "cache"),
        "PATH": f"{root / 'bin'}:{os.environ['PATH']}",
    }
    env.pop("PYTHONPATH", None)
    installed = InstalledTrapd(root, python, site, env)
    installed.pip_install(wheel, cwd=work)
    return installed
