"""`python -m build` makes an sdist and a wheel that install and work anywhere.

Built once per session from a copy of the tracked files (the work tree stays
clean), sdist first and the wheel from the sdist, as a packager's build does,
so a file missing from either shows here. The wheel goes into a fresh venv
with ``--no-deps``: the dependencies come from this test venv's site-packages
(a plain path in a .pth file, so its editable trapd is not activated), which
keeps the test offline and cheap. Then the installed ``trapd`` must run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHIPPED_ACTIONS = {
    "exec", "kea.command", "kea.ddns-resend", "kea.dhcp-disable", "kea.dhcp-enable", "kea.lease-del", "log",
    "webhook",
}  # fmt: skip


def run(*cmd: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert r.returncode == 0, f"{cmd}: {r.stdout[-3000:]}{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(sdist, wheel) built from the tracked files."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout (an unpacked sdist): nothing tells the tracked files apart")
    src = tmp_path_factory.mktemp("src")
    files = run("git", "ls-files", "-z", cwd=REPO).stdout.split("\0")
    for name in filter(None, files):
        if not (REPO / name).is_file():
            continue  # deleted in the work tree, not yet committed
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes((REPO / name).read_bytes())
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: this venv's setuptools and wheel, no download (CI may be offline).
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, src, cwd=src)
    (sdist,) = out.glob("trapd-*.tar.gz")
    (wheel,) = out.glob("trapd-*.whl")
    yield sdist, wheel


def package_dirs(root: Path, top: str) -> set[str]:
    return {
        str(p.parent.relative_to(root)).replace(os.sep, "/")
        for p in (root / top).rglob("__init__.py")
        if "__pycache__" not in p.parts
    }


def test_the_wheel_has_every_package_and_data_file(built: tuple[Path, Path]) -> None:
    _, wheel = built
    names = set(zipfile.ZipFile(wheel).namelist())
    dirs = {n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py")}
    expected = package_dirs(REPO, "trapd") | {
        d.replace("actions", "trapd_actions", 1) for d in package_dirs(REPO, "actions")
    }
    assert expected - dirs == set(), "packages missing from the wheel (pyproject.toml's packages list)"
    for data in (
        "trapd/data/mib-index.json",
        "trapd/data/rules.schema.json",
        "trapd/data/trapd.schema.json",
        "trapd/py.typed",
        *(f"trapd_actions/{d.parent.name}/example.yaml" for d in (REPO / "actions").glob("*/example.yaml")),
    ):
        assert data in names, data


def test_the_sdist_has_what_a_packager_needs(built: tuple[Path, Path]) -> None:
    sdist, _ = built
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in (
        "pyproject.toml", "README.md", "rules.yaml", "etc/trapd/trapd.yaml", "systemd/trapd.service",
        "docs/rules.md", "contrib/grafana/trapd-dashboard.json", "contrib/prometheus/trapd-alerts.yml",
        "scripts/install-service.sh", "trapd/data/mib-index.json", "actions/kea/example.yaml",
    ):  # fmt: skip
        assert needed in names, needed


def test_the_installed_wheel_runs(built: tuple[Path, Path], tmp_path: Path) -> None:
    _, wheel = built
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(
        run(py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=tmp_path).stdout.strip()
    )
    # The dependencies: this test venv's packages, linked into a directory named by a .pth file
    # (a plain path: no .pth in it is processed), without trapd and the example plugin (editable
    # installs of the work tree here, which must not be found).
    deps = tmp_path / "deps"
    deps.mkdir()
    for entry in Path(sysconfig.get_path("purelib")).iterdir():
        if not entry.name.lower().startswith(("trapd", "__editable__", "_trapd")):
            (deps / entry.name).symlink_to(entry)
    (site / "test-venv-deps.pth").write_text(f"{deps}\n")
    run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        py,
        "install",
        "--no-deps",
        "--no-index",
        "-q",
        wheel,
        cwd=tmp_path,
    )

    env = {
        **os.environ,
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "PATH": f"{env_dir / 'bin'}:{os.environ['PATH']}",
    }
    env.pop("PYTHONPATH", None)
    where = run(
        py, "-c", "import trapd, trapd_actions; print(trapd.__file__, trapd_actions.__file__)", cwd=tmp_path
    )
    assert all(Path(f).is_relative_to(site) for f in where.stdout.split()), (
        where.stdout
    )  # the wheel's, not the tree's

    trapd = env_dir / "bin" / "trapd"
    from trapd import __version__

    assert run(trapd, "--version", cwd=tmp_path, env=env).stdout.strip().endswith(__version__)
    (tmp_path / "rules.yaml").write_bytes((REPO / "rules.yaml").read_bytes())
    check = run(trapd, "check", "rules.yaml", cwd=tmp_path, env=env)
    assert check.stdout.splitlines()[-1] == "OK: rules.yaml"
    listed = run(trapd, "actions", cwd=tmp_path, env=env).stdout
    assert all(name in listed for name in SHIPPED_ACTIONS), listed
    schema = run(trapd, "schema", "config", cwd=tmp_path, env=env).stdout
    assert schema == (REPO / "trapd" / "data" / "trapd.schema.json").read_text()
