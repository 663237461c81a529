"""trapd.yaml: the daemon's configuration, one section per part of the flow.

Each section is parsed by the module that uses it, so the keys and their
documentation live next to the code:

=============  ===========================================
listener:      trapd.listener.config.ListenerConfig
mibs:          trapd.mibs.MibConfig
rules:         files and directory of rule files (here)
kea:           trapd.kea.config.KeaConfig
dispatch:      trapd.dispatch.config.DispatchConfig
service:       trapd.service.config.ServiceConfig (metrics, logging)
actions:       per-plugin settings, handed to the plugin as ctx.settings
state_dir:     where the journal and caches live
mode:          enforce | dry-run (dry-run renders and logs, runs nothing)
=============  ===========================================

Relative paths are relative to the config file's directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from trapd.dispatch.config import DispatchConfig
from trapd.kea.config import KeaConfig
from trapd.listener.config import ListenerConfig
from trapd.mibs import MibConfig
from trapd.secrets import Secret, source_reference
from trapd.service.config import ServiceConfig
from trapd.yamlsource import (
    ConfigError,
    Mark,
    check_keys,
    expect,
    load_yaml_file,
    unreadable_hint,
    where,
    yaml_files_in,
)

DEFAULT_CONFIG = Path("/etc/trapd/trapd.yaml")


def default_config_present() -> bool:
    """Is there a trapd.yaml at ``DEFAULT_CONFIG`` for a command given no ``--config``?

    Also True when its directory cannot be searched (install-service.sh makes /etc/trapd
    root:trapd 0750): loading it then says "cannot read: Permission denied" and who runs trapd,
    where ``Path.exists()`` raised a PermissionError traceback.
    """
    try:
        DEFAULT_CONFIG.stat()
    except PermissionError:
        return True
    except OSError:
        return False
    return True


MODES = ("enforce", "dry-run")


@dataclass(frozen=True)
class Config:
    path: Path | None = None
    listener: ListenerConfig = field(default_factory=ListenerConfig)
    mibs: MibConfig = field(default_factory=MibConfig)
    rules_files: tuple[Path, ...] = ()
    rules_dir: Path | None = None
    rules_mark: Mark | None = field(default=None, compare=False)  # rules.dir's place in trapd.yaml
    kea: KeaConfig = field(default_factory=KeaConfig)
    dispatch: DispatchConfig = field(default_factory=DispatchConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    actions: dict[str, dict[str, Any]] = field(default_factory=dict)
    state_dir: Path = Path("/var/lib/trapd")
    mode: str = "enforce"
    # Where each ``actions:`` section is written, for a check against the installed plugins.
    action_marks: dict[str, Mark | None] = field(default_factory=dict, compare=False)
    # Where each key of each ``actions:`` section is written, for the plugins' declared settings.
    setting_marks: dict[str, dict[str, Mark | None]] = field(default_factory=dict, compare=False)

    def rules_dir_warning(self) -> ConfigError | None:
        """A warning, at ``rules:`` in trapd.yaml, when ``rules.dir`` is not a directory (misspelt:
        its rules never load, and nothing else says so) or, with no ``rules.files``, holds no rule
        file (nothing runs)."""
        d = self.rules_dir
        if d is None:
            return None
        if not d.is_dir():
            what = f"rules.dir {d} is not a directory: no rules are loaded from it"
            if not self.rules_files:
                what += ", and rules.files names none: notifications are received and counted, nothing runs"
            return ConfigError(what, self.rules_mark, severity="warning")
        if not self.rules_files and not self._rule_files_in(d):
            return ConfigError(
                f"rules.dir {d} holds no rule files (*.yaml) and rules.files names none: "
                "notifications are received and counted, nothing runs",
                self.rules_mark,
                severity="warning",
            )
        return None

    def rule_paths(self) -> list[Path]:
        """Rule files in load order: the listed files, then rules.d/*.yaml by name.

        Each with its symlinks followed now, when listed: the files are read one after another
        (seconds for a big set), and a deploy that swaps a symlink meanwhile (``current ->
        releases/N``) made one load read rules.yaml of one release and rules.d of the next, or
        part of rules.d from each. The paths stay in the release they were listed in (an error
        names the file there); the next reload reads the new one.
        """
        paths = [f.resolve() for f in self.rules_files]
        if self.rules_dir is not None:
            rules_dir = self.rules_dir.resolve()
            if rules_dir.is_dir():
                paths += [p.resolve() for p in self._rule_files_in(rules_dir)]
        return paths

    def _rule_files_in(self, rules_dir: Path) -> list[Path]:
        """``rules.dir``'s rule files; ConfigError at rules.dir in trapd.yaml when it cannot be listed."""
        try:
            return yaml_files_in(rules_dir)
        except OSError as exc:
            raise ConfigError(
                f"rules.dir {rules_dir}: cannot list it: {exc.strerror or exc}{unreadable_hint(exc)}",
                self.rules_mark,
            ) from exc

    def with_overrides(self, **changes: Any) -> Config:
        return replace(self, **changes)


def load_config(path: str | Path) -> Config:
    """Load and check trapd.yaml; ConfigError (with file:line:col) on any problem."""
    p = Path(path).resolve()
    node = load_yaml_file(p)
    return config_from_yaml(node, p)


def config_from_yaml(node: Any, path: Path | None) -> Config:
    base = path.parent if path else Path.cwd()
    n = check_keys(
        node,
        {"listener", "mibs", "rules", "kea", "dispatch", "service", "actions", "state_dir", "mode"},
        "trapd.yaml",
    )
    rules = check_keys(n.get("rules"), {"files", "dir"}, "rules")
    files = expect(rules, "files", (list, str), "rules", [])
    files = [files] if isinstance(files, str) else files
    rules_dir = expect(rules, "dir", str, "rules")
    mode = expect(n, "mode", str, "trapd.yaml", "enforce")
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}", where(n, "mode"))
    actions = expect(n, "actions", dict, "trapd.yaml", {})
    for name, settings in actions.items():
        if not isinstance(settings, dict):
            raise ConfigError(f"actions.{name} must be a mapping", where(actions, name))
    state_dir = base / expect(n, "state_dir", str, "trapd.yaml", "/var/lib/trapd")
    return Config(
        path=path,
        listener=ListenerConfig.from_yaml(n.get("listener"), base),
        mibs=MibConfig.from_yaml(n.get("mibs"), base),
        rules_files=tuple(base / str(f) for f in files),
        rules_dir=base / rules_dir if rules_dir else None,
        rules_mark=where(rules, "dir") if rules_dir else None,
        kea=KeaConfig.from_yaml(n.get("kea"), base),
        dispatch=DispatchConfig.from_yaml(n.get("dispatch"), base),
        service=ServiceConfig.from_yaml(n.get("service"), base),
        actions={str(k): load_action_settings(str(k), v, base) for k, v in actions.items()},
        state_dir=state_dir,
        mode=mode,
        action_marks={str(k): where(actions, k, of_key=True) for k in actions},
        setting_marks={
            str(k): {str(key): where(v, key, of_key=True) for key in v} for k, v in actions.items()
        },
    )


def load_action_settings(name: str, node: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """A plugin's settings: ``{env: NAME}`` / ``{file: PATH}`` values and all of ``exec.env`` are secrets.

    They are loaded as :class:`~trapd.secrets.Secret` (masked in every log line; a plugin calls
    ``reveal()``), so ``actions: {exec: {env: {TOKEN: {file: /etc/trapd/token}}}}`` keeps the token
    out of trapd.yaml, and an inline ``exec.env`` value is masked too. ``node``: the plugin's
    section of trapd.yaml (or, in trapd.testing, a test's plain mapping).
    """
    out: dict[str, Any] = {}
    for key, value in node.items():
        mark = where(node, key)
        if name == "exec" and key == "env" and isinstance(value, dict):
            out[key] = {
                str(k): Secret.from_config(
                    v if isinstance(v, (dict, str)) else str(v), where(value, k), base_dir=base
                )
                for k, v in value.items()
            }
        elif source_reference(value) is not None:
            out[key] = Secret.from_config(value, mark, base_dir=base)
        else:
            out[key] = value
    return out


def _text(value: Any) -> Any:
    """An environment value written as a number or boolean is its text; a mapping is a secret source."""
    return value if isinstance(value, (dict, str)) else "" if value is None else str(value)
