"""`trapd run`'s start-up options: trapd.yaml plus the command line, resolved once into a Config.

The command line is read in one place (:meth:`RunOptions.from_args`) into a
typed, frozen object; nothing past it sees argparse. :meth:`RunOptions.load`
applies the overrides to trapd.yaml and returns the one :class:`Config` the
daemon (or the supervisor) runs with: after it, ``config.service.log_level``,
``config.service.log_format`` and ``config.service.metrics_listen`` are the
values in force, whichever side they came from. A reload calls ``load`` again
with the same options, so a flag keeps overriding the file across SIGHUPs.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from trapd.config import DEFAULT_CONFIG, Config, default_config_present, load_config
from trapd.listener.config import check_community, parse_listen
from trapd.secrets import Secret
from trapd.service.config import LOG_LEVELS, metrics_listen_of, parse_workers
from trapd.yamlsource import ConfigError

# `trapd run`'s exit status for a configuration error: trapd.yaml, a flag, the rules, a plugin's
# settings. A restart cannot mend those, and the unit says RestartPreventExitStatus=2: the unit
# is left failed at once. Anything that may pass (a port in use, a journal that cannot be opened
# yet) exits 1, and Restart=on-failure tries again (systemd's start limit never stops that with
# RestartSec=2s: docs/service.md, Start). argparse's usage errors are 2 as well.
EXIT_CONFIG = 2


@dataclass(frozen=True)
class RunOptions:
    """The overrides given on `trapd run`'s command line (None / empty: trapd.yaml decides)."""

    config: Path | None = None
    listen: tuple[str, ...] = ()
    community: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    state_dir: Path | None = None
    dry_run: bool = False
    log_level: str | None = None
    log_format: str | None = None
    metrics: str | None = None
    workers: int | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunOptions:
        """From `trapd run`'s parsed arguments (trapd.commands.run.configure declares them all)."""
        return cls(
            config=Path(args.config) if args.config else None,
            listen=tuple(args.listen or ()),
            community=tuple(args.community or ()),
            rules=tuple(args.rules or ()),
            state_dir=Path(args.state_dir) if args.state_dir else None,
            dry_run=bool(args.dry_run),
            log_level=args.log_level or None,
            log_format=args.log_format or None,
            metrics=args.metrics or None,
            workers=args.workers,
        )

    @property
    def binds_listen(self) -> bool:
        """True when --listen was given: bind those addresses even under socket activation."""
        return bool(self.listen)

    def load(self) -> Config:
        """trapd.yaml (``--config``, else /etc/trapd/trapd.yaml if it exists) with these overrides.

        Raises ConfigError (with file:line:col for the file) on any problem.
        """
        path = self.config
        if path is None and default_config_present():
            path = DEFAULT_CONFIG
        config = load_config(path) if path else Config(state_dir=Path("/var/lib/trapd"))
        listener = config.listener
        if self.listen:
            listener = replace(listener, listen=tuple(parse_listen(a) for a in self.listen))
        if self.community:
            communities = tuple(check_community(Secret.from_argument(c)) for c in self.community)
            listener = replace(listener, communities=communities)
        if self.log_level is not None and self.log_level.lower() not in LOG_LEVELS:
            raise ConfigError(f"--log-level {self.log_level!r}: one of {', '.join(LOG_LEVELS)}")
        service = replace(
            config.service,
            log_level=(self.log_level or config.service.log_level).lower(),
            log_format=self.log_format or config.service.log_format,
            metrics_listen=metrics_listen_of(config.service.metrics_listen, self.metrics),
        )
        if self.workers is not None:
            service = replace(service, workers=parse_workers(self.workers))
        changes: dict[str, Any] = {"listener": listener, "service": service}
        if self.rules:
            changes["rules_files"] = tuple(Path(r).resolve() for r in self.rules)
            changes["rules_dir"] = None
        if self.state_dir is not None:
            changes["state_dir"] = self.state_dir.resolve()
        if self.dry_run:
            changes["mode"] = "dry-run"
        return config.with_overrides(**changes)

    def load_or_exit(self) -> Config:
        """:meth:`load` for start-up: a bad file is one line on stderr and exit status EXIT_CONFIG."""
        try:
            return self.load()
        except ConfigError as exc:
            print(f"trapd: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_CONFIG) from None
