"""The variables a template sees, built from one event.

Decisions (documented in docs/rules.md):

* each varbind by its bare symbol: numbers as ``int`` (``{{ ifIndex }}`` is
  17), OCTET STRING as its text (``{{ ifDescr }}`` is ``Gi1/0/17``; an
  :class:`~trapd.rules.templates.OctetText` that still holds the octets for
  ``| mac`` / ``| hex``), IpAddress as dotted text, OBJECT IDENTIFIER as
  dotted text; a varbind whose value is empty (Null, noSuchObject) is left
  out, so using it is an error rather than the text "None";
* ``index.<symbol>``: the instance index after the symbol; an ``int`` when it
  is one number (``index.ifIndex`` is 17), dotted text when longer;
* ``varbinds.<symbol>`` / ``varbinds["1.3.6..."]``: the whole binding
  (``.value``, ``.display``, ``.index``, ``.parts`` (index components),
  ``.indexes`` (the INDEX objects decoded from the suffix, by symbol: see
  trapd.instance), ``.oid``, ``.type``, ``.name``);
* the event: ``source``, ``source_port``, ``source_group``, ``version``,
  ``kind``, ``community``, ``user``, ``context_name``, ``uptime``,
  ``trap_oid``, ``trap_name``, ``event_id``, ``received_at``; plus ``rule``;
* regex named groups from the rule's conditions, and ``item`` in a foreach.

Fields the event does not have (``community`` on v3, ``user`` on v2c) are
absent, so a template that uses them is rejected instead of rendering
"None" into an action parameter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from trapd.event import Event, VarBind, oid_str
from trapd.instance import UndecodableIndex
from trapd.rules.templates import OctetText

# A binding's INDEX objects decoded from its suffix (trapd.instance.index_objects, bound to the
# loaded MIBs); UndecodableIndex when the suffix does not fit.
IndexObjects = Callable[[VarBind], tuple[VarBind, ...]]

EVENT_VARIABLES = frozenset(
    {
        "source",
        "source_port",
        "source_group",
        "version",
        "kind",
        "community",
        "user",
        "context_name",
        "engine_id",
        "uptime",
        "trap_oid",
        "trap_name",
        "event_id",
        "received_at",
        "rule",
        "index",
        "varbinds",
        "item",
        "groups",
    }
)

_NUMERIC = frozenset({"Integer32", "Counter32", "Gauge32", "TimeTicks", "Counter64"})


def octet_text(raw: bytes, display: str | None) -> str:
    """Text of an OCTET STRING: UTF-8 when it is printable text, else the listener's display form
    (without one, hex).

    A display other than that text comes from the MIB's DISPLAY-HINT (a MAC, an InetAddress, a
    DateAndTime) or BITS: such octets are not text, whatever they spell (42:61:72:31:32:33 is
    "Bar123"), so their display is what a rule compares and a template renders.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return display if display is not None else raw.hex()
    if text.isprintable() and (not display or display == text):
        return text
    return display if display is not None else raw.hex()


def template_value(vb: VarBind) -> Any:
    v = vb.value
    if vb.type in _NUMERIC and isinstance(v, int):
        return v
    if isinstance(v, bytes):
        return OctetText(octet_text(v, vb.display), v)
    if isinstance(v, tuple):
        return oid_str(v)
    if v is None:
        return None
    return v


def index_value(vb: VarBind) -> Any:
    if len(vb.index) == 1:
        return vb.index[0]
    return oid_str(vb.index)


class Undecodable(Mapping[str, Any]):
    """``.indexes`` of a binding whose suffix the INDEX clause does not describe: no index objects.

    It prints as the reason (``undecodable index: ...``); naming an index object in it is a
    template error, so the action is rejected (logged and counted) rather than given a guess.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __str__(self) -> str:
        return self.reason


def index_mapping(vb: VarBind, objects: IndexObjects | None) -> Mapping[str, Any]:
    """``{symbol: value}`` of ``vb``'s INDEX objects as templates see values, or :class:`Undecodable`."""
    if objects is None or not vb.index:
        return {}
    try:
        parts = objects(vb)
    except UndecodableIndex as why:
        return Undecodable(str(why))
    return {part.symbol: template_value(part) for part in parts}


class VarbindView:
    """Read-only view of one binding for ``varbinds.x`` in templates."""

    __slots__ = (
        "_index_objects",
        "_indexes",
        "_vb",
        "display",
        "index",
        "name",
        "oid",
        "parts",
        "type",
        "value",
    )

    def __init__(self, vb: VarBind, index_objects: IndexObjects | None = None) -> None:
        self.value = template_value(vb)
        self.display = vb.display
        self.index = index_value(vb) if vb.index else ""
        self.parts = list(vb.index)  # index components: [10, 0, 17, ...] for an FDB id + MAC index
        self.oid = oid_str(vb.oid)
        self.type = vb.type
        self.name = vb.name
        self._vb = vb
        self._index_objects = index_objects
        self._indexes: Mapping[str, Any] | None = None

    @property
    def indexes(self) -> Mapping[str, Any]:
        """The INDEX objects decoded from the suffix, by symbol (decoded on first use)."""
        if self._indexes is None:
            self._indexes = index_mapping(self._vb, self._index_objects)
        return self._indexes

    def __str__(self) -> str:
        return str(self.value)


class VarbindMap(Mapping[str, VarbindView]):
    """``varbinds.x`` / ``varbinds["IF-MIB::x"]`` / ``varbinds["1.3..."]``, views built on first use."""

    def __init__(self, event: Event, index_objects: IndexObjects | None = None) -> None:
        self._event = event
        self._index_objects = index_objects
        self._views: dict[str, VarbindView] | None = None
        self._built: dict[int, VarbindView] = {}  # position -> view: one view per binding
        self._found: dict[str, VarbindView] = {}  # key -> view, for lookups before _all

    def _view(self, i: int) -> VarbindView:
        view = self._built.get(i)
        if view is None:
            view = self._built[i] = VarbindView(self._event.varbinds[i], self._index_objects)
        return view

    def _all(self) -> dict[str, VarbindView]:
        if self._views is None:
            views: dict[str, VarbindView] = {}
            for i, vb in enumerate(self._event.varbinds):
                view = self._view(i)
                for key in (vb.symbol, vb.name, oid_str(vb.oid)):
                    views.setdefault(key, view)
            self._views = views
        return self._views

    def __getitem__(self, key: str) -> VarbindView:
        # A template usually names one or two bindings: find the first binding that has
        # the key (as _all would) and build only its view, not one for every binding.
        if self._views is not None:
            return self._views[key]
        view = self._found.get(key)
        if view is not None:  # the rule's other templates ask again
            return view
        numeric = key[:1].isdigit()  # only a numeric key can be a binding's dotted OID
        for i, vb in enumerate(self._event.varbinds):
            name = vb.name
            if name == key or name.rpartition("::")[2] == key or (numeric and oid_str(vb.oid) == key):
                view = self._found[key] = self._view(i)
                return view
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


def event_context(
    event: Event, *, rule: str, source_group: str | None, index_objects: IndexObjects | None = None
) -> dict[str, Any]:
    """Everything but captures and item (the rule adds those)."""
    sec = event.security
    ctx: dict[str, Any] = {}
    index: dict[str, Any] = {}
    for vb in event.varbinds:
        sym = vb.symbol
        # Unnamed bindings (symbol = numeric OID) are reachable through varbinds["1.3..."] only.
        if sym not in ctx and vb.value is not None and sym.isidentifier():
            ctx[sym] = template_value(vb)
        if vb.index and sym not in index:
            index[sym] = index_value(vb)
    views = VarbindMap(event, index_objects)
    # Event fields win over varbind symbols of the same name.
    ctx.update(
        source=event.source,
        source_port=event.source_port,
        version=event.version,
        kind=event.kind,
        trap_oid=oid_str(event.trap_oid),
        trap_name=event.trap_name,
        event_id=event.id,
        received_at=event.received_at,
        rule=rule,
        index=index,
        varbinds=views,
    )
    if source_group is not None:
        ctx["source_group"] = source_group
    for name, value in (
        ("community", sec.community),
        ("user", sec.user),
        ("context_name", sec.context_name),
        ("engine_id", sec.engine_id),
        ("uptime", event.uptime),
    ):
        if value is not None:
            ctx[name] = value
    return ctx
