"""A plugin declares what its section of trapd.yaml holds; `trapd check`, start-up and reload hold it to that.

Before, ``ctx.settings`` was the section as written: a misspelt key (``inherit_evn: true``) or a
value of the wrong type was found only when a trap ran the action, if at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from trapd.config import load_config
from trapd.dispatch.plugins import plugin_settings, refuse_bad_settings, settings_problems
from trapd.params import Param, ParamError
from trapd.plugin import ActionContext, action, as_spec, check_settings, load_actions
from trapd.secrets import Secret
from trapd.testing import run_action
from trapd.yamlsource import ConfigError


@action(
    "acme.ticket",
    params={},
    settings={
        "url": Param("url", "the tracker's API", required=True),
        "token": Param("string", "its API token"),
        "timeout": Param("duration", "per call", default=10.0, max=60),
        "queues": Param("list", "where tickets may go", item="string", default=["netops"]),
    },
)
async def ticket(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """Open a ticket."""
    return {"settings": {k: v.reveal() if isinstance(v, Secret) else v for k, v in ctx.settings.items()}}


def test_settings_are_converted_with_their_defaults() -> None:
    values, problems = check_settings(ticket, {"url": "https://t.example/api", "timeout": "30s"})
    assert problems == []
    assert values == {"url": "https://t.example/api", "timeout": 30.0, "queues": ["netops"]}


def test_each_problem_is_named_with_its_key() -> None:
    _, problems = check_settings(
        ticket, {"ulr": "https://t.example/api", "timeout": "2h", "queues": "netops"}
    )
    assert problems == [
        (
            "ulr",
            "unknown setting 'ulr' (did you mean 'url'?); acme.ticket takes: url, token, timeout, queues",
        ),
        (None, "url: required"),
        ("timeout", "timeout: 7200s is above the maximum 60s"),
        ("queues", "queues: expected a list, got 'netops'"),
    ]


def test_a_secret_fits_a_string_setting_only() -> None:
    token = Secret("s3cret-token-value")
    values, problems = check_settings(ticket, {"url": "https://t.example/api", "token": token})
    assert problems == [] and values["token"] is token  # handed over as the Secret: reveal() where used
    _, problems = check_settings(ticket, {"url": "https://t.example/api", "timeout": Secret("5")})
    assert problems == [("timeout", "timeout: a duration cannot be read from {env: ...} or {file: ...}")]


def test_a_plugin_that_declares_nothing_gets_its_section_as_written() -> None:
    @action("acme.free", params={})
    async def free(params: dict[str, Any], ctx: ActionContext) -> None:
        """Anything goes."""

    assert check_settings(free, {"anything": 1}) == ({"anything": 1}, [])


def test_a_declaration_that_is_not_params_is_a_broken_plugin() -> None:
    async def run(params: dict[str, Any], ctx: ActionContext) -> None:
        pass

    with pytest.raises(TypeError, match="setting 'url' is declared as str, not a Param"):
        action("acme.bad", params={}, settings={"url": "string"})(run)  # type: ignore[dict-item]

    class Bad:
        name = "acme.bad"
        params: dict[str, Param] = {}
        settings = ["url"]

        async def run(self, params: dict[str, Any], ctx: ActionContext) -> None:
            pass

    with pytest.raises(TypeError, match="settings must be a mapping"):
        as_spec(Bad)


async def test_run_action_gives_the_settings_trapd_would(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACME_TOKEN", "from-the-environment")
    run = await run_action(
        ticket, {}, settings={"url": "https://t.example/api", "token": {"env": "ACME_TOKEN"}}
    )
    assert run.result == {
        "settings": {
            "url": "https://t.example/api",
            "token": "from-the-environment",
            "timeout": 10.0,
            "queues": ["netops"],
        }
    }
    with pytest.raises(ParamError, match=r"settings: unknown setting 'tiemout'"):
        await run_action(ticket, {}, settings={"url": "https://t.example/api", "tiemout": 5})
    # No settings at all is trapd.yaml without a section for the plugin: defaults, no error.
    assert (await run_action(ticket, {})).result == {"settings": {"timeout": 10.0, "queues": ["netops"]}}


TRAPD_YAML = """\
state_dir: {state}
mibs: {{dirs: []}}
rules: {{files: [rules.yaml]}}
actions:
  exec:
    path: /usr/local/lib/trapd/bin:/usr/bin
    inherit_evn: true
    env: {{SITE: north}}
  example.note:
    dir: [/var/lib/trapd/notes]
"""


def _files(tmp_path: Path, text: str = TRAPD_YAML) -> Path:
    (tmp_path / "state").mkdir(exist_ok=True)
    (tmp_path / "rules.yaml").write_text(
        "rules:\n  - name: r\n    match: {notification: IF-MIB::linkDown}\n"
        "    actions:\n      - action: log\n        message: down\n"
    )
    path = tmp_path / "trapd.yaml"
    path.write_text(text.format(state=tmp_path / "state"))
    return path


def test_check_reports_each_bad_setting_at_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trapd.cli import main

    path = _files(tmp_path)
    assert main(["check", "--config", str(path)]) == 1
    out = capsys.readouterr().out
    assert (
        f"{path}:7:5: error: actions.exec: unknown setting 'inherit_evn' (did you mean 'inherit_env'?);"
        " exec takes: path, env, inherit_env"
    ) in out, out
    assert f"{path}:10:5: error: actions.example.note: dir: expected text, got list" in out, out
    assert "2 error(s)" in out
    fixed = TRAPD_YAML.replace("inherit_evn", "inherit_env").replace(
        "[/var/lib/trapd/notes]", "/var/lib/trapd/notes"
    )
    assert main(["check", "--config", str(_files(tmp_path, fixed))]) == 0, capsys.readouterr().out


def test_start_and_reload_refuse_bad_settings(tmp_path: Path) -> None:
    # build_rules (start-up, and each reload before anything is swapped) refuses them: a plugin
    # run with a misspelt setting fails on every trap it handles.
    specs, _ = load_actions()
    config = load_config(_files(tmp_path))
    assert len(settings_problems(specs, config)) == 2
    with pytest.raises(
        ConfigError, match=r"unknown setting 'inherit_evn'.*\(and 1 more; `trapd check` lists them\)"
    ) as caught:
        refuse_bad_settings(specs, config)
    assert caught.value.mark is not None and caught.value.mark.line == 7


def test_the_dispatcher_hands_plugins_their_converted_settings(tmp_path: Path) -> None:
    specs, _ = load_actions()
    text = TRAPD_YAML.replace("    inherit_evn: true\n", "").replace(
        "[/var/lib/trapd/notes]", "/var/lib/trapd/notes"
    )
    settings = plugin_settings(specs, load_config(_files(tmp_path, text)).actions)
    assert settings["exec"]["inherit_env"] is False  # the declared default
    assert settings["exec"]["path"] == "/usr/local/lib/trapd/bin:/usr/bin"
    assert isinstance(settings["exec"]["env"]["SITE"], Secret)
    assert settings["example.note"] == {"dir": "/var/lib/trapd/notes"}
    assert "webhook" not in settings  # installed, declares none, no section: ctx.settings is {}


def test_trapd_actions_lists_the_settings(capsys: pytest.CaptureFixture[str]) -> None:
    from trapd.cli import main

    assert main(["actions", "exec"]) == 0
    shown = capsys.readouterr().out
    assert "Settings (trapd.yaml: actions: {exec: ...}):\n  path: string, optional" in shown, shown
    assert "  inherit_env: boolean, default False" in shown


LOG_RULES = (
    "rules:\n  - name: r\n    match: {notification: IF-MIB::linkDown}\n"
    "    actions:\n      - action: log\n        message: down\n"
)


def test_a_daemon_refuses_to_start_with_a_misspelt_setting(tmp_path: Path) -> None:
    from daemon_harness import TrapdDaemon

    d = TrapdDaemon.start(
        tmp_path, rules=LOG_RULES, config={"actions": {"exec": {"inherit_evn": True}}}, wait_ready=False
    )
    try:
        assert d.wait_exit(30) != 0
        (failed,) = d.logs("start-up failed")
        assert f"{d.config_path}:" in failed["error"] and "unknown setting 'inherit_evn'" in failed["error"]
    finally:
        d.close()


def test_a_reload_with_a_misspelt_setting_keeps_the_running_configuration(tmp_path: Path) -> None:
    import signal

    from daemon_harness import TrapdDaemon

    d = TrapdDaemon.start(tmp_path, rules=LOG_RULES, config={"actions": {"exec": {"inherit_env": False}}})
    try:
        assert d.notify is not None
        d.write_config({"actions": {"exec": {"inhert_env": True}}})
        d.notify.pending()
        d.signal(signal.SIGHUP)
        d.notify.wait_for("RELOADING", timeout=10)
        ready = d.notify.wait_for("READY", timeout=10)
        assert "reload failed" in ready["STATUS"] and "unknown setting 'inhert_env'" in ready["STATUS"], ready
        assert d.stop() == 0
    finally:
        d.close()


NOTE_RULES = (
    "rules:\n  - name: r\n    match: {notification: IF-MIB::linkDown}\n"
    "    actions:\n      - action: example.note\n        file: ports.log\n        text: down\n"
)


def test_check_reports_a_used_plugin_whose_required_settings_are_not_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No actions: {example.note: ...} in trapd.yaml: every action of the rule would die with
    # "needs actions: {example.note: {dir: ...}}", one trap at a time.
    from trapd.cli import main

    (tmp_path / "state").mkdir()
    (tmp_path / "rules.yaml").write_text(NOTE_RULES)
    path = tmp_path / "trapd.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\nmibs: {{dirs: []}}\nrules: {{files: [rules.yaml]}}\n")
    assert main(["check", "--config", str(path)]) == 1
    out = capsys.readouterr().out
    assert (
        f"{tmp_path / 'rules.yaml'}:5:9: error: example.note needs its settings in trapd.yaml"
        " (actions: {example.note: {dir: ...}}); required: dir"
    ) in out, out
    path.write_text(path.read_text() + f"actions:\n  example.note: {{dir: {tmp_path}}}\n")
    assert main(["check", "--config", str(path)]) == 0, capsys.readouterr().out
