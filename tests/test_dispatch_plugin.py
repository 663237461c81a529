"""The example third-party plugin: pip-installs, shows up in `trapd actions`, runs from a rule.

It is installed with pip into a scratch directory put on PYTHONPATH (entry
points are found there like in site-packages), so the test neither depends
on nor changes the environment the rest of the suite runs in.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "trapd-example-plugin"

RUN_FROM_RULE = r"""
import asyncio, sys, time
from pathlib import Path
import structlog
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
from trapd.dispatch.config import DispatchConfig
from trapd.dispatch.dispatcher import Dispatcher
from trapd.dispatch.journal import SQLiteJournal
from trapd.mibs import MibResolver
from trapd.plugin import load_actions
from trapd.rules import compile_rules
from trapd.rules.compact import parse_compact

rules, notes, journal_path = map(Path, sys.argv[1:4])

async def main():
    actions, problems = load_actions()
    assert not problems, problems
    resolver = MibResolver.load()
    rs, errors = compile_rules([rules], resolver, actions)
    assert not errors, [str(e) for e in errors]
    async with SQLiteJournal(journal_path) as journal:
        d = Dispatcher(DispatchConfig(), journal, actions, kea=None,
                       settings={"example.note": {"dir": str(notes)}})
        await d.start()
        event = parse_compact("IF-MIB::linkDown from 10.20.1.5 ifIndex=17".split(), resolver)
        ids = await d.submit(event, rs.evaluate(event))
        for _ in range(200):
            entry = await journal.get(int(ids[0]))
            if entry.state not in ("pending", "running", "scheduled"):
                break
            await asyncio.sleep(0.02)
        await d.stop()
        print(entry.state, entry.result)

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("plugin")
    src = work / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = work / "site"
    # --no-build-isolation: build with this environment's setuptools, no index needed.
    # --no-deps: trapd is already here.
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
         str(target), str(src)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return target


def env_with(path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(path), env.get("PYTHONPATH", "")]))
    return env


def test_listed_by_trapd_actions(plugin_path: Path) -> None:
    trapd = [sys.executable, "-m", "trapd.cli"]
    out = subprocess.run([*trapd, "actions"], env=env_with(plugin_path), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "example.note\n    Append a line of text to a file in the notes directory." in out.stdout
    assert "file: string, required" in out.stdout
    doc = subprocess.run(
        [*trapd, "actions", "example.note"], env=env_with(plugin_path), capture_output=True, text=True
    )
    assert "dir: /var/lib/trapd/notes" in doc.stdout
    # Without it on the path, trapd does not know it: the listing above came from the installed package.
    if importlib.util.find_spec("trapd_example_plugin") is None:
        bare = subprocess.run([*trapd, "actions", "example.note"], capture_output=True, text=True)
        assert bare.returncode == 1


def test_runs_from_a_rule(plugin_path: Path, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - name: note-port-down\n"
        "    match: {notification: IF-MIB::linkDown}\n"
        "    actions:\n"
        "      - action: example.note\n"
        "        file: ports.log\n"
        '        text: "{{ source }} ifIndex {{ ifIndex }} down"\n'
    )
    notes = tmp_path / "notes"
    notes.mkdir()
    script = tmp_path / "run.py"
    script.write_text(RUN_FROM_RULE)
    proc = subprocess.run(
        [sys.executable, str(script), str(rules), str(notes), str(tmp_path / "journal.sqlite")],
        env=env_with(plugin_path), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("done ")
    assert (notes / "ports.log").read_text() == "10.20.1.5 ifIndex 17 down\n"


BAD_PARAMS = '''
from trapd.plugin import action

@action("bad.params", params={"x": "string"}, idempotent=True)
async def bad(params, ctx):
    """Declares its parameter as a plain string, not a Param (a mistake)."""
'''


def test_a_plugin_whose_params_are_not_params_is_reported_not_a_crash(tmp_path: Path) -> None:
    # Before, `trapd actions` and `trapd schema rules` died on it with an AttributeError traceback,
    # built-ins and all, instead of listing it as a plugin that failed to load.
    (tmp_path / "bad_plugin.py").write_text(BAD_PARAMS)
    dist = tmp_path / "bad_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bad-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[trapd.actions]\nbad.params = bad_plugin:bad\n")
    trapd = [sys.executable, "-m", "trapd.cli"]
    out = subprocess.run([*trapd, "actions"], env=env_with(tmp_path), capture_output=True, text=True)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert (
        "failed to load bad.params = bad_plugin:bad: TypeError: action bad.params: parameter 'x'"
        in out.stderr
    )
    assert "\nexec\n" in out.stdout  # the others are still listed
    schema = subprocess.run(
        [*trapd, "schema", "rules"], env=env_with(tmp_path), capture_output=True, text=True
    )
    assert schema.returncode == 0 and "Traceback" not in schema.stderr, schema.stderr[-2000:]


EXITS_AT_IMPORT = """
import sys

sys.exit("acme_exits needs /etc/acme.conf")  # a module written as a script too
"""


def test_a_plugin_that_exits_at_import_is_reported_not_the_end_of_trapd(tmp_path: Path) -> None:
    # sys.exit() (SystemExit) and an import-time KeyboardInterrupt are BaseExceptions: load_actions
    # caught Exception only, so `trapd actions`, `trapd check` and `trapd run` ended with the plugin.
    (tmp_path / "acme_exits.py").write_text(EXITS_AT_IMPORT)
    dist = tmp_path / "acme_exits-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-exits\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[trapd.actions]\nacme.exits = acme_exits:run\n")
    trapd = [sys.executable, "-m", "trapd.cli"]
    out = subprocess.run([*trapd, "actions"], env=env_with(tmp_path), capture_output=True, text=True)
    assert out.returncode == 1, out.stderr[-2000:]
    assert (
        "failed to load acme.exits = acme_exits:run: SystemExit: acme_exits needs /etc/acme.conf"
        in out.stderr
    ), out.stderr[-2000:]
    assert "\nexec\n" in out.stdout  # the others are still listed


def test_a_rule_using_a_plugin_that_failed_to_load_says_so(tmp_path: Path) -> None:
    # After an upgrade broke a plugin's import, its rules were refused as "unknown action
    # 'acme.broken'; installed: ...": the operator looked for a typo in a name that is installed.
    (tmp_path / "acme_broken.py").write_text('raise ImportError("acme_broken needs acme_sdk")\n')
    dist = tmp_path / "acme_broken-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-broken\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[trapd.actions]\nacme.broken = acme_broken:run\n")
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - name: r\n    match: {notification: IF-MIB::linkDown}\n"
        "    actions:\n      - action: acme.broken\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "trapd.cli", "check", str(rules)],
        env=env_with(tmp_path), capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 1, out.stdout + out.stderr
    assert (
        f"{rules}:5:17: error: action plugin 'acme.broken' is installed but failed to load: "
        "ImportError: acme_broken needs acme_sdk"
    ) in out.stdout, out.stdout
    # Its author asks for its documentation: "no plugin named 'acme.broken'; installed: ..." said
    # nothing of why, where trapd check says it.
    shown = subprocess.run(
        [sys.executable, "-m", "trapd.cli", "actions", "acme.broken"],
        env=env_with(tmp_path), capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert shown.returncode == 1
    assert shown.stderr == (
        "trapd actions: action plugin 'acme.broken' is installed but failed to load:"
        " ImportError: acme_broken needs acme_sdk\n"
    )


def _fake_dist(path: Path, name: str, module: str, code: str, entry_points: dict[str, str]) -> None:
    """An installed package as pip leaves it: the module, and a .dist-info with its entry points."""
    (path / f"{module}.py").write_text(code)
    dist = path / f"{module}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "".join(f"{ep} = {module}:{obj}\n" for ep, obj in entry_points.items())
    (dist / "entry_points.txt").write_text(f"[trapd.actions]\n{lines}")


TWIN = '''
from trapd.params import Param
from trapd.plugin import action

@action("{name}", params={{}}, idempotent=True)
async def run(params, ctx):
    """{who}'s {name}."""
'''


def test_two_plugins_of_one_name_are_refused_not_one_picked(tmp_path: Path) -> None:
    # Two packages registering one action name (a fork installed next to the original; a site
    # package calling its action "webhook"): the one found last silently replaced the other, the
    # built-in too, so a rule's `action: webhook` ran the site's code, `trapd actions` said nothing.
    for who in ("twin_a", "twin_b"):
        code = TWIN.format(name="acme.twin", who=who) + TWIN.format(name="webhook", who=who).replace(
            "def run", "def hook"
        )
        _fake_dist(tmp_path, who.replace("_", "-"), who, code, {"acme.twin": "run", "webhook": "hook"})
    trapd = [sys.executable, "-m", "trapd.cli"]
    out = subprocess.run([*trapd, "actions"], env=env_with(tmp_path), capture_output=True, text=True)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "\nacme.twin\n" not in out.stdout  # neither of the two
    for who in ("twin_a", "twin_b"):
        assert (
            f"failed to load acme.twin = {who}:run: the action name 'acme.twin' is registered by 2"
            " installed packages, twin-a (acme.twin = twin_a:run), twin-b (acme.twin = twin_b:run):"
            " uninstall all but one" in out.stderr
        ), out.stderr
        assert (
            f"failed to load webhook = {who}:hook: 'webhook' is the name of trapd's own action:"
            f" {who.replace('_', '-')} must give its action a name of its own (a dotted prefix:"
            " 'twin.webhook')" in out.stderr
        ), out.stderr
    shown = subprocess.run(
        [*trapd, "actions", "webhook"], env=env_with(tmp_path), capture_output=True, text=True
    )
    assert "POST" in shown.stdout and "twin" not in shown.stdout  # the built-in, not a site's
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - name: r\n    match: {notification: IF-MIB::linkDown}\n"
        "    actions:\n      - action: acme.twin\n"
    )
    check = subprocess.run(
        [*trapd, "check", str(rules)], env=env_with(tmp_path), capture_output=True, text=True, cwd=tmp_path
    )
    assert check.returncode == 1, check.stdout + check.stderr
    assert (
        f"{rules}:5:17: error: action plugin 'acme.twin' is installed but failed to load: the action"
        " name 'acme.twin' is registered by 2 installed packages"
    ) in check.stdout, check.stdout


def test_an_entry_point_whose_name_is_not_the_actions_says_to_make_them_equal(tmp_path: Path) -> None:
    # `acme.ticket = acme_trapd:run` on @action("acme.tickets"): "failed to load acme.ticket = ...:
    # declares the name 'acme.tickets'" did not say which of the two names is wrong or what to do.
    _fake_dist(
        tmp_path,
        "acme",
        "acme_mismatch",
        TWIN.format(name="acme.tickets", who="acme"),
        {"acme.ticket": "run"},
    )
    out = subprocess.run(
        [sys.executable, "-m", "trapd.cli", "actions"], env=env_with(tmp_path), capture_output=True, text=True
    )
    assert out.returncode == 1
    assert (
        "failed to load acme.ticket = acme_mismatch:run: the entry point is named 'acme.ticket' and the"
        " action 'acme.tickets': the two names must be equal (the one rules write after action:)"
    ) in out.stderr, out.stderr


def test_a_rule_using_a_plugin_installed_after_trapd_started_says_to_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Plugins are loaded at start-up. An operator installs acme-trapd, adds its rule, `trapd check`
    # says OK (a new process loads it) and `systemctl reload trapd` is refused with "unknown action
    # 'acme.late' ...; installed: exec, ... (see `trapd actions`)", while `trapd actions` lists it.
    from trapd.mibs import MibResolver
    from trapd.plugin import load_actions
    from trapd.rules import compile_rules

    loaded, _ = load_actions()  # what trapd loaded when it started
    _fake_dist(
        tmp_path, "acme-late", "acme_late", TWIN.format(name="acme.late", who="acme"), {"acme.late": "run"}
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # installed since
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - name: r\n    match: {notification: IF-MIB::linkDown}\n"
        "    actions:\n      - action: acme.late\n"
    )
    _, problems = compile_rules([rules], MibResolver.load(), loaded)
    assert [str(p) for p in problems] == [
        f"{rules}:5:17: action plugin 'acme.late' was installed after trapd loaded its plugins:"
        " restart trapd to use it (plugins are loaded when it starts)"
    ]


def test_a_package_registering_a_builtin_under_its_own_name_is_reported(tmp_path: Path) -> None:
    # A second package whose entry point names the very object of a built-in (a fork, an old
    # copy of trapd under another distribution name) was not reported: the check compared entry
    # point texts, which are equal.
    dist = tmp_path / "trapd_fork-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: trapd-fork\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[trapd.actions]\nlog = trapd_actions.log:log\n")
    out = subprocess.run(
        [sys.executable, "-m", "trapd.cli", "actions"], env=env_with(tmp_path), capture_output=True, text=True
    )
    assert out.returncode == 1
    assert (
        "failed to load log = trapd_actions.log:log: 'log' is the name of trapd's own action: trapd-fork"
        in (out.stderr)
    ), out.stderr


async def test_an_action_of_a_plugin_that_failed_to_load_goes_dead_saying_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An action journaled for a plugin that then failed to load (an upgrade broke its import; two
    # packages now register its name) went dead with "no action plugin named 'acme.broken' is
    # installed": the operator saw the package installed and looked no further.
    import asyncio
    import time

    from trapd.dispatch.config import DispatchConfig
    from trapd.dispatch.dispatcher import Dispatcher
    from trapd.dispatch.journal import SQLiteJournal
    from trapd.plugin import load_actions
    from trapd.testing import make_event, make_outcome, plan

    (tmp_path / "acme_broken.py").write_text('raise ImportError("acme_broken needs acme_sdk")\n')
    dist = tmp_path / "acme_broken-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-broken\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[trapd.actions]\nacme.broken = acme_broken:run\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    actions, _ = load_actions()
    async with SQLiteJournal(tmp_path / "journal.sqlite") as journal:
        d = Dispatcher(DispatchConfig(), journal, actions, kea=None)
        await d.start()
        try:
            (action_id,) = await d.submit(make_event(), make_outcome(plan("acme.broken", {})))
            deadline = time.monotonic() + 20
            while (entry := await journal.get(int(action_id))) is None or entry.state != "dead":
                assert time.monotonic() < deadline, entry
                await asyncio.sleep(0.02)
        finally:
            await d.stop(1.0)
    assert entry.last_error == (
        "action plugin 'acme.broken' is installed but failed to load: ImportError: acme_broken needs acme_sdk"
    )
