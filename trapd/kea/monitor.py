"""Keep watching the Kea servers: reachability and HA state, for the metrics, /healthz and the log.

The start-up probe (:mod:`trapd.kea.probe`) says once what is wrong; a daemon
runs for months, so this asks every server ``status-get`` every
``kea.poll_interval`` (default 10 s). Each exchange also updates the client's
``up`` / ``last_ok`` (as every action's exchange does), so
``trapd_kea_endpoint_up`` follows what trapd actually sees.

Warnings (a log line when one starts and when it ends, and the list in
/healthz): a server unreachable for longer than ``kea.warn_after``; an HA
peer in state ``terminated`` (Kea's HA gave up, e.g. on a clock skew over
60 s: each server goes on serving its default scopes but sends its partner
neither heartbeats nor lease updates, and does not recover by itself: the
ARM's "terminated" state needs an operator). Once per HA
relationship trapd also compares its ``peers`` list with the servers' own HA
configuration (``config-get``: this-server-name and the peers) and warns
when they disagree: a Kea peer trapd does not know keeps every lease trapd
deletes elsewhere. So does the partner of a server that trapd.yaml lists as a
plain endpoint while Kea runs it in an HA relationship: that is checked once
per plain endpoint too, and stays in /healthz (a standing warning, status
``warning``) for as long as trapd runs with that configuration: it is no
passing state of Kea but trapd.yaml missing servers, so every deletion misses
the partner until an operator lists the peers. A warning, not a refusal: it
is only seen once the server answers ``config-get``, and the deletions on the
one server trapd knows are still worth doing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from trapd.kea.client import KeaClient, KeaClients, ha_status
from trapd.kea.config import SERVICE_BY_FAMILY
from trapd.kea.errors import KeaError
from trapd.kea.hastatus import HaStatus

# Kea's HA states (ARM, "Server states"), for the state gauge; "unknown" when a peer does not answer.
HA_STATES = (
    "backup", "communication-recovery", "hot-standby", "load-balancing", "in-maintenance",
    "partner-down", "partner-in-maintenance", "passive-backup", "ready", "syncing", "terminated",
    "waiting", "unknown",
)  # fmt: skip


def label(client: KeaClient) -> str:
    """How metrics and /healthz name one server and family: ``pair4/server1/v4``, ``local4/v4``."""
    return f"{client.name}/{client.family}"


class KeaMonitor:
    def __init__(self, clients: KeaClients, log: Any, *, interval: float, warn_after: float) -> None:
        self.clients = clients
        self.log = log
        self.interval = interval
        self.warn_after = warn_after
        self.ha: dict[str, HaStatus] = {}  # label -> last HA status of a server with the HA hook
        self._warned: dict[str, str] = {}  # label -> the warning now standing
        # label -> what config-get showed wrong with trapd.yaml: stands until trapd restarts
        self._misconfigured: dict[str, str] = {}
        self._peers_checked: set[tuple[str, str]] = set()

    async def run(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception:  # never let the monitor die: it is what says Kea is gone
                self.log.exception("Kea status poll failed")
            await asyncio.sleep(self.interval)

    async def poll(self) -> None:
        """One round: status-get on every server, then the warnings and the peer-list check."""
        clients = list(self.clients)
        statuses = await asyncio.gather(*(ha_status(c) for c in clients))
        for client, st in zip(clients, statuses, strict=True):
            if st is not None:
                self.ha[label(client)] = st
        self._update_warnings(clients, time.time())
        for name, ep in self.clients.config.endpoints.items():
            for fam in ep.families:
                if (name, fam) not in self._peers_checked:
                    await self._check_peers(name, fam)

    def ha_state(self, client: KeaClient) -> str | None:
        """The server's HA state; "unknown" when it is down; None for a server without HA."""
        st = self.ha.get(label(client))
        if st is None:
            return None
        return st.state if client.up else "unknown"

    def warnings(self) -> list[str]:
        standing = {**self._misconfigured, **self._warned}
        return [standing[k] for k in sorted(standing)]

    def _update_warnings(self, clients: Iterable[KeaClient], now: float) -> None:
        for client in clients:
            key = label(client)
            warning = None
            if (
                client.up is False
                and client.down_since is not None
                and now - client.down_since >= self.warn_after
            ):
                warning = f"Kea {key} unreachable for {now - client.down_since:.0f}s: {client.last_error}"
            elif client.up and self.ha_state(client) == "terminated":
                warning = (
                    f"Kea {key} is in HA state terminated: it serves its own scopes but exchanges no "
                    "heartbeats or lease updates with its partner until an operator acts (clock skew?)"
                )
            before = self._warned.get(key)
            if warning is not None and before is None:
                self.log.warning("Kea server needs attention", endpoint=key, problem=warning)
            elif warning is None and before is not None:
                self.log.info("Kea server fine again", endpoint=key, was=before)
            if warning is None:
                self._warned.pop(key, None)
            else:
                self._warned[key] = warning

    async def _check_peers(self, endpoint: str, family: str) -> None:
        """Compare trapd's peers with each server's own HA configuration, once all of them answer."""
        peers = self.clients.peers(endpoint, family)
        found: list[tuple[KeaClient, dict[str, Any]]] = []
        for client in peers:
            try:
                r = await client.command("config-get", accept=(0,))
            except KeaError:
                return  # try again next round
            ha = _ha_config(r.arguments, SERVICE_BY_FAMILY[family], client.peer)
            if client.peer is None:  # a plain endpoint: one server, which should have no partner
                self._peers_checked.add((endpoint, family))
                self._check_plain(client, family, ha)
                return
            if ha is None:
                self.log.warning("Kea HA peer has no HA hook configured", endpoint=client.name, family=family)
                self._peers_checked.add((endpoint, family))
                return
            found.append((client, ha))
        self._peers_checked.add((endpoint, family))
        ours = {str(c.peer) for c in peers}
        for client, ha in found:
            theirs = {str(p.get("name")) for p in ha.get("peers", []) if isinstance(p, dict)}
            me = ha.get("this-server-name")
            if me != client.peer:
                self.log.warning(
                    "trapd's peer name differs from Kea's this-server-name",
                    endpoint=client.name,
                    family=family,
                    kea_name=me,
                )
            if theirs != ours:
                self.log.warning(
                    "trapd's HA peers differ from the Kea server's: "
                    "deletions miss the peers trapd does not know",
                    endpoint=client.name,
                    family=family,
                    trapd_peers=sorted(ours),
                    kea_peers=sorted(theirs),
                )

    def _check_plain(self, client: KeaClient, family: str, ha: dict[str, Any] | None) -> None:
        """A server trapd.yaml lists as a plain endpoint that Kea runs in an HA relationship: Kea
        HA does not copy control-API changes (lease-del, dhcp-disable; kea-ha-facts.md), so its
        partners would keep every lease trapd deletes here."""
        if ha is None:
            return
        theirs = sorted(str(p.get("name")) for p in ha.get("peers", []) if isinstance(p, dict))
        if [name for name in theirs if name != ha.get("this-server-name")]:
            self._misconfigured[f"{label(client)}:plain"] = (
                f"Kea {label(client)} is in an HA relationship (peers {', '.join(theirs)}) that trapd.yaml "
                "lists as a plain endpoint: deletions and dhcp-disable reach this server only, not its "
                "partners; list the endpoint's peers (docs/kea-ha.md)"
            )
            self.log.warning(
                "Kea server is in an HA relationship that trapd.yaml lists as a plain endpoint: "
                "deletions and dhcp-disable reach this server only, not its partners",
                endpoint=client.name,
                family=family,
                kea_peers=theirs,
                hint="list the endpoint's peers (docs/kea-ha.md)",
            )


def _ha_config(arguments: Any, service: str, server: str | None) -> dict[str, Any] | None:
    """The ``high-availability`` entry of the HA hook in config-get's answer, if any.

    A hub (Kea >= 2.6) has one entry per relationship: the one where it is ``server``
    (trapd's peer name), else the first, which the caller then finds misnamed.
    """
    if not isinstance(arguments, dict):
        return None
    top = arguments.get("Dhcp4" if service == "dhcp4" else "Dhcp6")
    if not isinstance(top, dict):
        return None
    for hook in top.get("hooks-libraries", []):
        if not isinstance(hook, dict) or "libdhcp_ha" not in str(hook.get("library", "")):
            continue
        params = hook.get("parameters")
        rels = params.get("high-availability") if isinstance(params, dict) else None
        entries = [r for r in rels if isinstance(r, dict)] if isinstance(rels, list) else []
        named = [r for r in entries if server is not None and r.get("this-server-name") == server]
        if named or entries:
            return (named or entries)[0]
    return None
