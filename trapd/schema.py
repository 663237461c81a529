"""JSON Schemas for rule files and trapd.yaml, for editors (the YAML language server).

A schema lets an editor complete keys and flag a typo as people type::

    # yaml-language-server: $schema=/usr/lib/python3/dist-packages/trapd/data/rules.schema.json

It is a convenience, not the check: ``trapd check`` stays the authority
(MIB names, templates, regexes, parameter values, caps on destructive
actions... are beyond a schema).

Where each schema comes from:

* rules: built from the same key sets the rules compiler checks
  (``trapd.rules.compiler.RULE_KEYS``, ``MATCH_KEYS``, ...) and from the
  installed plugins' parameter declarations (:class:`trapd.plugin.ActionSpec`).
  An action the schema does not know (a site's plugin) is allowed with any
  parameters; ``trapd schema rules`` writes one that knows the plugins
  installed here.
* trapd.yaml: written out below, section by section. Its loaders check keys
  inline, so tests/test_schema.py holds the two together: every key the
  schema lists is one the loader knows and every other key is refused, in
  every section.

The shipped files (``trapd/data/rules.schema.json``, ``trapd.schema.json``)
are what :func:`rules_schema` and :func:`config_schema` return for the
shipped plugins; a test keeps them equal.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trapd.params import Param

DATA = Path(__file__).with_name("data")
RULES_SCHEMA = DATA / "rules.schema.json"
CONFIG_SCHEMA = DATA / "trapd.schema.json"
DRAFT = "http://json-schema.org/draft-07/schema#"

Schema = dict[str, Any]

# A template ("{{ ifDescr }}") may stand for any value: rendered and checked per trap.
# A template or text; a number is taken as its text (``key: 5``), as the compiler takes it.
_TEXT: Schema = {"type": ["string", "number"]}
_DURATION: Schema = {"type": ["string", "number"], "description": "a duration: 30s, 2m, 1h, or seconds"}
_STRINGS: Schema = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
_KIND: Schema = {"type": "string", "enum": ["trap", "inform"]}


def _object(properties: Mapping[str, Schema], description: str = "", **more: Any) -> Schema:
    out: Schema = {
        "type": "object",
        "properties": dict(sorted(properties.items())),
        "additionalProperties": False,
    }
    if description:
        out["description"] = description
    out.update(more)
    return out


def _param(p: Param) -> Schema:
    """A plugin parameter's value: its declared type, or a template text (checked per trap)."""
    json_type = {
        "integer": ["integer", "string"],
        "boolean": ["boolean", "string"],
        "duration": ["string", "number"],
        "list": ["array", "string"],
        "mapping": ["object", "string"],
    }.get(p.type)
    out: Schema = {"description": f"{p.description} ({p.describe()})".strip()}
    if p.type == "any":
        return out
    # A number given for text is its text (trapd.params.validate): ``message: 5`` is valid.
    out["type"] = json_type or (["string", "number"] if p.type == "string" else "string")
    if p.secret_ref:  # or {env: NAME} / {file: PATH}
        out["type"] = [*(json_type or ["string"]), "object"]
    return out


def rules_schema(actions: Mapping[str, Any]) -> Schema:
    """The schema of a rules file, for these installed actions (name -> ActionSpec)."""
    from trapd.rules.compile_context import NAME_RE
    from trapd.rules.compiler import (
        ACTION_CONTROL_KEYS,
        CAP_KEYS,
        DEFAULT_KEYS,
        FILE_KEYS,
        FOREACH_KEYS,
        MATCH_KEYS,
        MODES,
        RETRY_KEYS,
        RULE_KEYS,
    )

    control: dict[str, Schema] = {
        "action": {"type": "string", "description": "the action plugin (`trapd actions` lists them)"},
        "params": {"type": "object", "description": "parameters as a mapping, instead of beside action:"},
        "delay": {**_DURATION, "description": "wait this long; a cancel for cancel-key meanwhile cancels it"},
        "cancel-key": {**_TEXT, "description": "template: the key a cancel: rule names to cancel this delay"},
        "once-within": {**_DURATION, "description": "run at most once per window for once-key"},
        "once-key": {**_TEXT, "description": "template: what once-within counts (default: the parameters)"},
        "key": {**_TEXT, "description": "template: actions with the same key run in order, one at a time"},
        "cap": {"$ref": "#/definitions/caps"},
        "retry": {"$ref": "#/definitions/retry"},
    }
    assert set(control) == ACTION_CONTROL_KEYS, "a control key without its schema"
    known = sorted(actions)
    per_action: list[Schema] = []
    for name in known:
        spec = actions[name]
        props = {**control, **{p: _param(spec.params[p]) for p in spec.params}}
        props["action"] = {"const": name, "description": (spec.doc or spec.summary or name).strip()}
        per_action.append({"if": {"properties": {"action": {"const": name}}}, "then": _object(props)})
    action: Schema = {
        "type": "object",
        "required": ["action"],
        "properties": {
            "action": {
                "type": "string",
                "description": "the action plugin",
                # Completion offers the installed ones; a site's own plugin is not refused here.
                "examples": known,
            }
        },
        "allOf": per_action,
    }
    match_props: dict[str, Schema] = {
        "notification": {"description": "name, OID, list of them, or {under: SUBTREE}"},
        "source": {
            "anyOf": [*_STRINGS["anyOf"], _object({"not": _STRINGS}, required=["not"])],
            "description": "source group(s), address(es) or network(s); !X excludes; {not: ...}",
        },
        "version": {
            "anyOf": [
                {"type": ["string", "integer"]},
                {"type": "array", "items": {"type": ["string", "integer"]}},
            ],
            "description": "v1, v2c, v3",
        },
        "kind": {
            "anyOf": [_KIND, {"type": "array", "items": _KIND}, {"type": "object"}],
            "description": "trap or inform, or a condition",
        },
        "community": {"description": "text or a condition"},
        "user": {"description": "text or a condition"},
        "context": {"description": "text or a condition"},
        "varbinds": {"type": "object", "description": "varbind name (or OID) -> value or condition"},
        "all": {"type": "array", "items": {"$ref": "#/definitions/match"}, "minItems": 1},
        "any": {"type": "array", "items": {"$ref": "#/definitions/match"}, "minItems": 1},
        "not": {"$ref": "#/definitions/match"},
    }
    assert set(match_props) == MATCH_KEYS
    rule_props: dict[str, Schema] = {
        "name": {
            "type": "string",
            "pattern": f"^{NAME_RE.pattern}$",
            "description": "unique across all rule files: letters, digits and . _ - : / @ +",
        },
        "description": {"type": "string"},
        "enabled": {"type": "boolean"},
        "match": {"$ref": "#/definitions/match"},
        "foreach": _object(
            {"items": {"type": "string"}, "where": {"type": "object"}}, "one action set per decoded item"
        ),
        "actions": {"type": ["array", "null"], "items": {"$ref": "#/definitions/action"}},
        "cancel": {**_STRINGS, "description": "template(s): cancel pending delayed actions with these keys"},
        "continue": {"type": "boolean", "description": "evaluate the next rules too"},
        "mode": {"type": "string", "enum": list(MODES)},
        "cap": {"$ref": "#/definitions/caps"},
        "retry": {"$ref": "#/definitions/retry"},
    }
    assert set(rule_props) == RULE_KEYS
    assert set(rule_props["foreach"]["properties"]) == FOREACH_KEYS
    cap_props: dict[str, Schema] = {
        "limit": {"type": "integer", "minimum": 0},  # 0: every action held for an operator
        "per": _DURATION,
        "key": _TEXT,
        "hold-for": _DURATION,
        "name": {"type": "string"},
    }
    assert set(cap_props) == CAP_KEYS
    retry_props: dict[str, Schema] = {
        "max-attempts": {"type": "integer", "minimum": 1},
        "max-age": _DURATION,
        "backoff": _DURATION,
    }
    assert set(retry_props) == RETRY_KEYS
    cap = _object(
        cap_props, "at most limit actions per duration for each rendered key", required=["limit", "per"]
    )
    defaults_props = {"mode": rule_props["mode"], "cap": rule_props["cap"], "retry": rule_props["retry"]}
    assert set(defaults_props) == DEFAULT_KEYS
    file_props: dict[str, Schema] = {
        "sources": {
            "type": "object",
            "additionalProperties": {
                "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]
            },
            "description": "named source groups",
        },
        "defaults": _object(defaults_props),
        "rules": {"type": ["array", "null"], "items": {"$ref": "#/definitions/rule"}},
    }
    assert set(file_props) == FILE_KEYS
    return {
        "$schema": DRAFT,
        "title": "trapd rules file",
        "description": "Checked for real by `trapd check`; see docs/rules.md.",
        **_object(file_props),
        "definitions": {
            "rule": _object(rule_props, required=["name"]),
            # match: with nothing under it is a rule without conditions, as {} is.
            "match": _object(match_props, "every condition must hold", type=["object", "null"]),
            "action": action,
            "caps": {"anyOf": [cap, {"type": "array", "items": cap}]},
            "retry": _object(retry_props),
        },
    }


_SECRET: Schema = {
    "description": "inline, or {file: PATH} (first line of the file), or {env: NAME}",
    "anyOf": [
        {"type": "string"},
        _object({"file": {"type": "string"}}, required=["file"]),
        _object({"env": {"type": "string"}}, required=["env"]),
    ],
}


def _setting(p: Param) -> Schema:
    """A plugin setting's value in trapd.yaml: its declared type; text may be {env:} / {file:}."""
    out = _param(p)
    if p.type == "string":
        out["type"] = ["string", "number", "object"]
    return out


def config_schema(actions: Mapping[str, Any] | None = None) -> Schema:
    """The schema of trapd.yaml (tests/test_schema.py keeps it in step with the loaders).

    ``actions`` (name -> ActionSpec): the section of each that declares its settings is checked
    against them; other names under ``actions:`` take any mapping.
    """
    from trapd.config import MODES
    from trapd.dispatch.config import INTERRUPTED, SYNCHRONOUS
    from trapd.kea.config import TRANSPORTS
    from trapd.listener.config import KEY_TYPES
    from trapd.service.config import LOG_FORMATS, LOG_LEVELS

    v3_user = _object(
        {
            "user": {"type": "string"},
            "auth_protocol": {"type": "string"},
            "auth_key": _SECRET,
            "auth_key_type": {"type": "string", "enum": list(KEY_TYPES)},
            "priv_protocol": {"type": "string"},
            "priv_key": _SECRET,
            "priv_key_type": {"type": "string", "enum": list(KEY_TYPES)},
            "engine_ids": {"type": "array", "items": {"type": "string"}},
        },
        required=["user"],
    )
    listener = _object(
        {
            "listen": {"type": "array", "items": {"type": "string"}, "description": "HOST:PORT or [V6]:PORT"},
            "communities": {"type": "array", "items": _SECRET},
            "v3_users": {"type": "array", "items": v3_user},
            "receive_buffer": {"type": ["integer", "string"]},
            "allowed_sources": {"type": "array", "items": {"type": "string"}},
            "rate_limit": _object(
                {
                    "per_source": {"type": "number"},
                    "global": {"type": "number"},
                    "burst": {"type": "number"},
                    "v3_slow_per_source": {"type": "number"},
                    "v3_slow_global": {"type": "number"},
                },
                "traps/s token buckets (0: off)",
            ),
            "engine_id": {"type": "string"},
        }
    )
    server: dict[str, Schema] = {
        "transport": {"type": "string", "enum": list(TRANSPORTS)},
        "timeout": _DURATION,
        "socket": {"type": "string"},
        "max_in_flight": {"type": "integer"},
        "url": {"type": "string"},
        "user": {"type": "string"},
        "password": _SECRET,
        "ca_file": {"type": "string"},
        "cert_file": {"type": "string"},
        "key_file": {"type": "string"},
        "pool_size": {"type": "integer"},
        "idle_timeout": _DURATION,
        "verify_hostname": {"type": "boolean"},
    }
    peer = _object(
        {**server, "name": {"type": "string", "description": "Kea's name for the server (this-server-name)"}},
        "one server of the HA relationship: an endpoint definition with a name (the family is the pair's)",
        required=["name", "transport"],
    )
    endpoint = _object(
        {
            **server,
            "family": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
            "peers": {"type": "array", "items": peer, "minItems": 2, "description": "an HA relationship"},
        },
        "a Kea control socket, Control Agent or HTTP endpoint, or an HA relationship (family + peers:)",
    )
    kea = _object(
        {
            "default": {"description": "the endpoint actions use when they name none"},
            "endpoints": {"type": "object", "additionalProperties": endpoint},
            "poll_interval": _DURATION,
            "warn_after": _DURATION,
        }
    )
    journal = _object(
        {
            "path": {"type": "string"},
            "synchronous": {"type": "string", "enum": list(SYNCHRONOUS)},
            "max_batch": {"type": "integer"},
            "commit_delay": _DURATION,
            "max_queued": {"type": "integer"},
            "retention": _DURATION,
            "poll_interval": _DURATION,
            "integrity_check": _DURATION,
            "copy_window": _DURATION,
            "url": {"type": "string", "description": "postgresql://... (a journal shared by two hosts)"},
            "password": _SECRET,
            "instance": {"type": "string"},
            "lease": _DURATION,
        }
    )
    global_cap = _object(
        {
            "name": {"type": "string"},
            "limit": {"type": "integer"},
            "per": _DURATION,
            "by": {"type": "string"},
            "actions": {"type": "array", "items": {"type": "string"}},
            "hold_for": _DURATION,
        },
        required=["name"],
    )
    dispatch = _object(
        {
            "workers": {"type": "integer", "minimum": 1},
            "queue_size": {"type": "integer", "minimum": 1},
            "action_timeout": _DURATION,
            "shutdown_timeout": _DURATION,
            "interrupted": {"type": "string", "enum": list(INTERRUPTED)},
            "journal": journal,
            "retry": _object(
                {
                    "max_attempts": {"type": "integer"},
                    "max_age": _DURATION,
                    "backoff": _DURATION,
                    "max_backoff": _DURATION,
                    "jitter": {"type": "number", "minimum": 0, "maximum": 1},
                }
            ),
            "caps": {"type": "array", "items": global_cap},
            "breaker": _object(
                {"failures": {"type": "integer"}, "cool_down": _DURATION, "max_cool_down": _DURATION}
            ),
        }
    )
    service = _object(
        {
            "metrics": _object({"listen": {"type": ["string", "null", "boolean"]}}),
            "log": _object(
                {
                    "level": {"type": "string", "enum": list(LOG_LEVELS)},
                    "format": {"type": "string", "enum": list(LOG_FORMATS)},
                }
            ),
            "status_interval": {"type": "number"},
            "workers": {"type": ["integer", "string"]},
        }
    )
    top = {
        "listener": listener,
        "mibs": _object(
            {
                "dirs": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                "cache_dir": {"type": "string"},
            }
        ),
        "rules": _object({"files": _STRINGS, "dir": {"type": "string"}}),
        "kea": kea,
        "dispatch": dispatch,
        "service": service,
        "actions": {
            "type": "object",
            "description": "settings for action plugins, by plugin name",
            "properties": {
                name: _object(
                    {k: _setting(p) for k, p in spec.settings.items()},
                    f"settings of {name}",
                    **(
                        {"required": req}
                        if (req := [k for k, p in spec.settings.items() if p.required])
                        else {}
                    ),
                )
                for name, spec in sorted((actions or {}).items())
                if getattr(spec, "settings", None) is not None
            },
            "additionalProperties": {"type": "object"},
        },
        "state_dir": {"type": "string"},
        "mode": {"type": "string", "enum": list(MODES)},
    }
    return {
        "$schema": DRAFT,
        "title": "trapd.yaml",
        "description": "Checked for real by `trapd check`; see docs/service.md.",
        **_object(top),
    }


def shipped_actions() -> dict[str, Any]:
    """The actions trapd itself ships (not a site's plugins): what the shipped rules schema knows."""
    from trapd.plugin import load_actions

    actions, _ = load_actions()
    return {
        n: a for n, a in actions.items() if str(getattr(a.run, "__module__", "")).startswith("trapd_actions.")
    }


def dumps(schema: Schema) -> str:
    return json.dumps(schema, indent=2, sort_keys=False) + "\n"
