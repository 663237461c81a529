"""`python -m build` makes an sdist and a wheel that install and work anywhere.

The sdist and the wheel (built once per session, the wheel from the sdist) and
a venv with the wheel installed come from tests/wheel_harness.py. The
installed ``trapd`` must run from it, with nothing of the work tree.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
from pathlib import Path

from wheel_harness import InstalledTrapd, run

REPO = Path(__file__).resolve().parent.parent
SHIPPED_ACTIONS = {
    "exec", "kea.command", "kea.ddns-resend", "kea.dhcp-disable", "kea.dhcp-enable", "kea.lease-del", "log",
    "webhook",
}  # fmt: skip


def package_dirs(root: Path, top: str) -> set[str]:
    return {
        str(p.parent.relative_to(root)).replace(os.sep, "/")
        for p in (root / top).rglob("__init__.py")
        if "__pycache__" not in p.parts
    }


def test_the_wheel_has_every_package_and_data_file(trapd_dist: tuple[Path, Path]) -> None:
    _, wheel = trapd_dist
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


def test_the_sdist_has_what_a_packager_needs(trapd_dist: tuple[Path, Path]) -> None:
    sdist, _ = trapd_dist
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in (
        "pyproject.toml", "README.md", "rules.yaml", "etc/trapd/trapd.yaml", "systemd/trapd.service",
        "docs/rules.md", "contrib/grafana/trapd-dashboard.json", "contrib/prometheus/trapd-alerts.yml",
        "scripts/install-service.sh", "trapd/data/mib-index.json", "actions/kea/example.yaml",
    ):  # fmt: skip
        assert needed in names, needed


def test_the_installed_wheel_runs(trapd_venv: InstalledTrapd, tmp_path: Path) -> None:
    py, site, env = trapd_venv.python, trapd_venv.site, trapd_venv.env
    # The venv's environment (no PYTHONPATH): with the caller's, a run with PYTHONPATH set to a
    # checkout (as the helpers run the tests) imported that checkout's trapd and failed here.
    where = run(
        py, "-c", "import trapd, trapd_actions; print(trapd.__file__, trapd_actions.__file__)", cwd=tmp_path,
        env=env,
    )  # fmt: skip
    assert all(Path(f).is_relative_to(site) for f in where.stdout.split()), (
        where.stdout
    )  # the wheel's, not the tree's

    trapd = trapd_venv.trapd
    from trapd import __version__

    assert run(trapd, "--version", cwd=tmp_path, env=env).stdout.strip().endswith(__version__)
    (tmp_path / "rules.yaml").write_bytes((REPO / "rules.yaml").read_bytes())
    check = run(trapd, "check", "rules.yaml", cwd=tmp_path, env=env)
    assert check.stdout.splitlines()[-1] == "OK: rules.yaml"
    listed = run(trapd, "actions", cwd=tmp_path, env=env).stdout
    assert all(name in listed for name in SHIPPED_ACTIONS), listed
    # --shipped: the venv is shared with test_plugin_walk, whose plugin (installed there when that
    # test ran first in this process) declares settings that the plain schema lists too.
    schema = run(trapd, "schema", "config", "--shipped", cwd=tmp_path, env=env).stdout
    assert schema == (REPO / "trapd" / "data" / "trapd.schema.json").read_text()


def test_the_service_installs_from_the_unpacked_sdist(trapd_dist: tuple[Path, Path], tmp_path: Path) -> None:
    """A host without the source tree: the wheel brings trapd, the sdist the unit files, the
    starter configuration and install-service.sh (docs/service.md, "Install")."""
    sdist, _ = trapd_dist
    (tmp_path / "src").mkdir()
    run("tar", "xzf", sdist, cwd=tmp_path / "src")  # as the doc says
    (tree,) = (tmp_path / "src").iterdir()
    root = tmp_path / "root"
    run(
        tree / "scripts" / "install-service.sh",
        "--destdir",
        root,
        "--trapd",
        "/opt/trapd/bin/trapd",
        cwd=tmp_path,
    )
    service = (root / "etc/systemd/system/trapd.service").read_text()
    assert "ExecStart=/opt/trapd/bin/trapd run --config /etc/trapd/trapd.yaml" in service
    assert (root / "etc/trapd/trapd.yaml").read_text() == (REPO / "etc/trapd/trapd.yaml").read_text()
    assert (root / "etc/trapd/rules.yaml").is_file()
