"""The ``match:`` and ``foreach:`` parts of a rule: conditions and value operators.

Turns a rule's conditions into the :mod:`trapd.rules.conditions` tree:
notification names and ``under:`` subtrees resolved to OIDs, ``source:``
lists to address sets, varbind names to OIDs with their enumerations, and
every value operator (``equals``, ``one-of``, ``regex``, ``range``,
``cidr``, ``index``...) to a ValueTest. Everything that can be decided from
the rule alone is decided here, so matching an event is comparisons.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

import regex

from trapd import decoders
from trapd.event import Event
from trapd.instance import decode_suffix
from trapd.listener.raw import Oid
from trapd.mibs import IndexObject, MibResolver
from trapd.rules import conditions as c
from trapd.rules.compile_context import CompileContext, RuleScope, plain
from trapd.rules.context import EVENT_VARIABLES
from trapd.rules.ruleset import ForEach
from trapd.rules.templates import JINJA_GLOBALS
from trapd.yamlsource import Mark, YDict, YList, where

MATCH_KEYS = frozenset(
    {
        "notification",
        "source",
        "version",
        "kind",
        "community",
        "user",
        "context",
        "varbinds",
        "all",
        "any",
        "not",
    }
)
FOREACH_KEYS = frozenset({"items", "where"})
VALUE_OPS = frozenset(
    {
        "equals",
        "eq",
        "not-equals",
        "ne",
        "one-of",
        "in",
        "regex",
        "gt",
        "ge",
        "lt",
        "le",
        "range",
        "cidr",
        "exists",
        "absent",
        "index",
        "not",
    }
)
_VARBIND_MEMO = 4096  # distinct (varbind, plain value) pairs remembered per compile (~1 MB)
VERSIONS = {"v1": "v1", "1": "v1", "v2c": "v2c", "2c": "v2c", "2": "v2c", "v3": "v3", "3": "v3"}


class MatchCompiler:
    """Compiles ``match:`` mappings into condition lists and ``foreach:`` into a :class:`ForEach`."""

    def __init__(self, ctx: CompileContext) -> None:
        self.ctx = ctx
        self.problems = ctx.problems
        self._enums_by_name: dict[str, dict[str, int]] = {}  # per varbind name: asked once per rule
        # Regexes with named groups compiled so far: an any: or not: that holds one saves and
        # restores the groups around its branches (see conditions.AnyOf), the others need not.
        self._named_regexes = 0
        # A varbind compared with one plain value (`ifIndex: 17`) compiles to the same tests
        # (they hold no position) in every rule: per-port files repeat ~50 such pairs 100,000
        # times. (name, type, value) -> (tests, exists, key); the first _VARBIND_MEMO pairs only.
        self._plain_varbinds: dict[
            tuple[str, type, Any], tuple[tuple[c.ValueTest, ...], bool | None, Any]
        ] = {}

    def match(self, node: Any, mark: Mark | None, scope: RuleScope) -> list[c.Cond]:
        if node is None:
            return []
        if not isinstance(node, YDict):
            self.problems.error("match must be a mapping of conditions (all of them must hold)", mark)
            return []
        self.ctx.keys(node, MATCH_KEYS, "match")
        out: list[c.Cond] = []
        for key, value in node.items():
            m = where(node, key)
            cond: c.Cond | None = None
            if key == "notification":
                cond = self._notification(value, m)
            elif key == "source":
                cond = self._source(value, m)
            elif key == "version":
                cond = self._version(value, m)
            elif key == "kind":
                cond = self._field("kind", lambda e: e.kind, value, m, scope, choices=("trap", "inform"))
            elif key == "community":
                cond = self._field("community", lambda e: e.security.community, value, m, scope)
            elif key == "user":
                cond = self._field("user", lambda e: e.security.user, value, m, scope)
            elif key == "context":
                cond = self._field("context", lambda e: e.security.context_name, value, m, scope)
            elif key == "varbinds":
                out.extend(self._varbinds(value, m, scope))
                continue
            elif key in ("all", "any"):
                if not isinstance(value, YList) or not value:
                    self.problems.error(f"{key} takes a non-empty list of condition mappings", m)
                    continue
                named = self._named_regexes
                subs = [
                    c.All(self.match(v, where(value, i), scope), where(value, i)) for i, v in enumerate(value)
                ]
                ckey = ("any", tuple(plain(v) for v in value))
                km = where(node, key, of_key=True)
                captures = self._named_regexes != named
                cond = c.All(subs, km, "all") if key == "all" else c.AnyOf(subs, km, ckey, captures)
            elif key == "not":
                km = where(node, key, of_key=True)
                named = self._named_regexes
                inner = c.All(self.match(value, m, scope), m)
                cond = c.Not(inner, km, ("not", plain(value)), self._named_regexes != named)
            if cond is not None:
                out.append(cond)
        return out

    def _notification(self, node: Any, mark: Mark | None) -> c.Cond | None:
        entries = node if isinstance(node, YList) else [node]
        marks = node.item_marks if isinstance(node, YList) else [mark]
        exact: set[Oid] = set()
        prefixes: list[Oid] = []
        labels: list[str] = []
        for e, m in zip(entries, marks, strict=False):
            if isinstance(e, YDict):
                if set(e) != {"under"}:
                    self.problems.error(
                        "a notification entry is a name, an OID, or {under: MODULE-OR-OID}", m
                    )
                    continue
                target = e["under"]
                if not isinstance(target, str):
                    self.problems.error(
                        "under: takes a MIB module name, a MIB node name or an OID", where(e, "under")
                    )
                    continue
                oid = self._subtree(target)
                # A module name also covers the notifications it defines outside its own
                # subtree (IF-MIB's linkDown sits under SNMPv2-MIB's snmpTraps).
                own = self.ctx.resolver.notifications_of(target) if not target[:1].isdigit() else frozenset()
                if oid is None and not own:
                    self.ctx.unknown_symbol(target, where(e, "under"), "notification under:")
                    continue
                if oid is not None:
                    prefixes.append(oid)
                exact |= own
                labels.append(f"under {target}")
            elif isinstance(e, str):
                oid = self.ctx.symbol(e)
                if oid is None:
                    self.ctx.unknown_symbol(e, m, "notification")
                    continue
                self.ctx.warn_homonym(e, oid, m, "notification")
                exact.add(oid)
                labels.append(e)
            else:
                self.problems.error(f"notification: {e!r} is not a name or OID (quote numeric OIDs)", m)
        if not exact and not prefixes:
            return None
        return c.Notification(frozenset(exact), tuple(prefixes), " or ".join(labels), mark)

    def _subtree(self, name: str) -> Oid | None:
        text = name.strip()
        oid = self.ctx.resolver.subtree(text) if not text[:1].isdigit() else None
        if oid is None:
            oid = self.ctx.symbol(text)
        return oid

    def _source(self, node: Any, mark: Mark | None) -> c.Cond | None:
        if isinstance(node, YDict):
            if set(node) != {"not"}:
                self.problems.error(
                    "source takes a group name, an address/network, a list of them, or {not: ...}", mark
                )
                return None
            inner = self._source(node["not"], where(node, "not"))
            return c.Not(c.All([inner], mark), mark, ("not", plain(node))) if inner is not None else None
        nets = self.ctx.address_set(node, mark, "source")
        if nets is None:
            return None
        label = node if isinstance(node, str) else "[" + ", ".join(map(str, node)) + "]"
        return c.Source(nets, label, mark)

    def _version(self, node: Any, mark: Mark | None) -> c.Cond | None:
        entries = node if isinstance(node, YList) else [node]
        got: list[str] = []
        for e in entries:
            v = VERSIONS.get(str(e).strip().lower()) if not isinstance(e, bool) else None
            if v is None:
                self.problems.error(f"version: {e!r} is not v1, v2c or v3", mark)
                return None
            got.append(v)
        opts = [c.Equals(None, v, v, {}) for v in got]
        test: c.ValueTest = opts[0] if len(opts) == 1 else c.OneOf(opts, ", ".join(got), {})
        cond = c.EventField("version", lambda e: e.version, [test], "version " + "|".join(got), mark)
        cond.key = ("version", frozenset(got))
        return cond

    def _field(
        self,
        field_name: str,
        getter: Callable[[Event], Any],
        node: Any,
        mark: Mark | None,
        scope: RuleScope,
        choices: tuple[str, ...] = (),
    ) -> c.Cond | None:
        # Every event field is text: community: 0123 is the community "0123", not the number 123.
        tests, exists = self.value_tests(node, mark, field_name, {}, scope, values="text")
        if tests is None:
            return None
        if exists is not None:
            self.problems.error(f"{field_name}: exists/absent do not apply here", mark)
            return None
        if choices:
            for t in tests:
                opts = t.options if isinstance(t, c.OneOf) else (t,) if isinstance(t, c.Equals) else ()
                for o in opts:
                    if isinstance(o, c.Equals) and o.text not in choices:
                        self.problems.error(
                            f"{field_name}: {o.label!r} is not one of {', '.join(choices)}", mark
                        )
                        return None
        cond = c.EventField(field_name, getter, tests, f"{field_name} {plain(node)}", mark)
        cond.key = (field_name, plain(node))
        return cond

    def _varbinds(self, node: Any, mark: Mark | None, scope: RuleScope) -> list[c.Cond]:
        if not isinstance(node, YDict):
            self.problems.error("varbinds maps varbind names (or OIDs) to conditions", mark)
            return []
        out: list[c.Cond] = []
        for name, spec in node.items():
            km = where(node, name, of_key=True)
            if not isinstance(name, str):
                self.problems.error(f"varbind name {name!r} must be text (quote numeric OIDs)", km)
                continue
            oid = self.ctx.symbol(name)
            if oid is None:
                self.ctx.unknown_symbol(name, km, "varbinds")
                continue
            self.ctx.warn_homonym(name, oid, km, "varbinds")
            kind = type(spec)
            memo = (name, kind, spec) if kind is int or kind is str else None
            hit = self._plain_varbinds.get(memo) if memo is not None else None
            if hit is None:
                problems_before = len(self.problems.items)
                tests, exists = self.value_tests(
                    spec,
                    where(node, name),
                    name,
                    self._enums(name),
                    scope,
                    varbind=True,
                    values=self._value_kind(oid),
                    row=self._row_of(oid),
                )
                if tests is None:
                    continue
                hit = (tuple(tests), exists, ("varbind", oid, plain(spec)))
                if (
                    memo is not None
                    and len(self.problems.items) == problems_before
                    and len(self._plain_varbinds) < _VARBIND_MEMO
                ):
                    self._plain_varbinds[memo] = hit
            out.append(c.Varbind(oid, hit[0], hit[1], name, km, hit[2]))
        return out

    def _row_of(self, oid: Oid) -> tuple[IndexObject, ...] | None:
        """The INDEX objects of the table a column belongs to (``ifName`` -> ifIndex); None otherwise."""
        resolver = self.ctx.resolver
        if not isinstance(resolver, MibResolver) or resolver.kind(oid) != "column":
            return None
        return resolver.row_index(oid[:-1])

    def _index_objects(
        self, arg: YDict, mark: Mark | None, what: str, row: tuple[IndexObject, ...], scope: RuleScope
    ) -> list[c.ValueTest] | None:
        """``index: {ifIndex: COND, ...}``: conditions on the row's INDEX objects, by name."""
        resolver = self.ctx.resolver
        assert isinstance(resolver, MibResolver)  # only _row_of gives a row
        decode = functools.partial(decode_suffix, resolver, row)
        names = [obj[1] for obj in row]
        tests: list[c.ValueTest] = []
        ok = True
        for key, spec in arg.items():
            km = where(arg, key, of_key=True)
            position = (
                next((i for i, n in enumerate(names) if key in (n, n.rpartition("::")[2])), None)
                if isinstance(key, str)
                else None
            )
            if position is None:
                listed = ", ".join(n.rpartition("::")[2] for n in names)
                self.problems.error(
                    f"{what} index: {key!r} is neither an operator nor an INDEX object of its table "
                    f"({listed})",
                    km,
                )
                ok = False
                continue
            symbol = names[position].rpartition("::")[2]
            sub, sub_exists = self.value_tests(
                spec,
                where(arg, key),
                f"{what} index {symbol}",
                self._enums(names[position]),
                scope,
                values="oid" if row[position][2] == "oid" else "",
            )
            if sub is None or sub_exists is not None:
                ok = False
                continue
            tests.append(c.IndexObjectTest(position, symbol, sub, decode, f"index {symbol} {plain(spec)}"))
        return tests if ok else None

    def _value_kind(self, oid: Oid) -> str:
        """``"oid"`` for an OBJECT IDENTIFIER object (its values compare with MIB names, as they are
        shown), ``"text"`` for an OCTET STRING, else "" (see value_tests)."""
        try:
            base = self.ctx.resolver.value_type(oid)
        except Exception:  # a resolver that cannot answer for this OID: as an unknown type
            return ""
        return {"ObjectIdentifier": "oid", "OctetString": "text"}.get(base, "")

    def _enums(self, name: str) -> dict[str, int]:
        """Enumeration of a varbind's syntax; ``ifOperStatus.17`` asks for ``ifOperStatus``."""
        known = self._enums_by_name.get(name)
        if known is None:
            known = self._enums_by_name[name] = self._enums_uncached(name)
        return dict(known)

    def _enums_uncached(self, name: str) -> dict[str, int]:
        candidates = [name]
        if not name[:1].isdigit():
            base = name
            while re.search(r"\.\d+$", base):
                base = re.sub(r"\.\d+$", "", base)
                candidates.append(base)
        for n in candidates:
            try:
                enums = self.ctx.resolver.enum_values(n)
            except Exception:  # a resolver that cannot answer for this name: no enums
                enums = {}
            if enums:
                return dict(enums)
        return {}

    # -- value operators --------------------------------------------------------

    def value_tests(
        self,
        node: Any,
        mark: Mark | None,
        what: str,
        enums: dict[str, int],
        scope: RuleScope,
        *,
        varbind: bool = False,
        values: str = "",
        row: tuple[IndexObject, ...] | None = None,
    ) -> tuple[list[c.ValueTest] | None, bool | None]:
        """Operators for one value; (None, None) when invalid (already reported).

        ``values``: what the value is, when known: ``"oid"`` (an OBJECT IDENTIFIER: a MIB name given
        to compare with means its OID), ``"text"`` (an OCTET STRING, a community: compared as text,
        also when the rule gives a number); else a number in the rule compares as a number.
        """
        names = {v: k for k, v in enums.items()}
        if node is None:
            self.problems.error(
                f"{what}: no condition given (use a value, a list, or {{exists: true}})", mark
            )
            return None, None
        if isinstance(node, YList):
            eq = [self._equals(v, where(node, i), what, enums, values) for i, v in enumerate(node)]
            if not node or any(e is None for e in eq):
                if not node:
                    self.problems.error(f"{what}: an empty list matches nothing", mark)
                return None, None
            opts = [e for e in eq if e is not None]
            return [c.OneOf(opts, ", ".join(o.label for o in opts), names)], None
        if not isinstance(node, YDict):
            e = self._equals(node, mark, what, enums, values)
            return ([e], None) if e is not None else (None, None)
        tests: list[c.ValueTest] = []
        exists: bool | None = None
        ok = True
        for op, arg in node.items():
            m = where(node, op)
            km = where(node, op, of_key=True)
            if op not in VALUE_OPS:
                hint = difflib.get_close_matches(str(op), sorted(VALUE_OPS), n=1, cutoff=0.6)
                self.problems.error(
                    f"{what}: unknown operator {op!r}"
                    + (f" (did you mean {hint[0]!r}?)" if hint else "")
                    + f"; operators: {', '.join(sorted(VALUE_OPS))}",
                    km,
                )
                ok = False
                continue
            if op in ("equals", "eq"):
                e = self._equals(arg, m, what, enums, values)
                ok = ok and e is not None
                if e is not None:
                    tests.append(e)
            elif op in ("not-equals", "ne"):
                e = self._equals(arg, m, what, enums, values)
                ok = ok and e is not None
                if e is not None:
                    tests.append(c.Negated(e, f"not {e.label}", names))
            elif op in ("one-of", "in"):
                if not isinstance(arg, YList) or not arg:
                    self.problems.error(f"{what}: one-of takes a non-empty list", m)
                    ok = False
                    continue
                eq = [self._equals(v, where(arg, i), what, enums, values) for i, v in enumerate(arg)]
                if any(e is None for e in eq):
                    ok = False
                    continue
                opts = [e for e in eq if e is not None]
                tests.append(c.OneOf(opts, ", ".join(o.label for o in opts), names))
            elif op == "regex":
                r = self._regex(arg, m, what, scope)
                ok = ok and r is not None
                if r is not None:
                    tests.append(r)
            elif op in ("gt", "ge", "lt", "le"):
                n = self._number(arg, m, what, enums)
                ok = ok and n is not None
                if n is not None:
                    tests.append(c.Compare(op, n, f"{c._COMPARE_WORD[op]} {arg}", names))
            elif op == "range":
                if not isinstance(arg, YList) or len(arg) != 2:
                    self.problems.error(f"{what}: range takes [LOW, HIGH] (both included)", m)
                    ok = False
                    continue
                lo = self._number(arg[0], where(arg, 0), what, enums)
                hi = self._number(arg[1], where(arg, 1), what, enums)
                if lo is None or hi is None:
                    ok = False
                    continue
                if lo > hi:
                    self.problems.error(f"{what}: range [{lo}, {hi}] is empty (low above high)", m)
                    ok = False
                    continue
                tests.append(c.Compare("ge", lo, f"in range [{arg[0]}, {arg[1]}]", names))
                tests.append(c.Compare("le", hi, f"in range [{arg[0]}, {arg[1]}]", names))
            elif op == "cidr":
                nets = self.ctx.address_set(arg, m, f"{what} cidr")
                ok = ok and nets is not None
                if nets is not None:
                    tests.append(c.InNetworks(nets, str(plain(arg))))
            elif op in ("exists", "absent"):
                if not isinstance(arg, bool):
                    self.problems.error(f"{what}: {op} takes true or false", m)
                    ok = False
                    continue
                if not varbind:
                    self.problems.error(f"{what}: {op} applies to varbinds only", km)
                    ok = False
                    continue
                exists = arg if op == "exists" else not arg
            elif op == "index":
                if not varbind:
                    self.problems.error(f"{what}: index applies to varbinds only", km)
                    ok = False
                    continue
                if row is not None and isinstance(arg, YDict) and arg and not (set(arg) & VALUE_OPS):
                    by_object = self._index_objects(arg, m, what, row, scope)
                    ok = ok and by_object is not None
                    tests += by_object or ()
                    continue
                sub, sub_exists = self.value_tests(arg, m, f"{what} index", {}, scope)
                if sub is None or sub_exists is not None:
                    ok = False
                    continue
                tests.append(c.IndexTest(sub, f"index {plain(arg)}"))
            elif op == "not":
                sub, sub_exists = self.value_tests(arg, m, f"{what} not", enums, scope, values=values)
                if sub is None or sub_exists is not None:
                    if sub_exists is not None:
                        self.problems.error(f"{what}: use absent: instead of not: {{exists: ...}}", m)
                    ok = False
                    continue
                inner: c.ValueTest = sub[0] if len(sub) == 1 else _AllTests(sub)
                tests.append(c.Negated(inner, f"not {inner.label}", names))
        if exists is False and tests:
            self.problems.error(f"{what}: a varbind that must be absent has no value to test", mark)
            ok = False
        if not tests and exists is None and ok:
            self.problems.error(f"{what}: no condition given", mark)
            ok = False
        return (tests if ok else None), exists

    def _equals(
        self, value: Any, mark: Mark | None, what: str, enums: dict[str, int], values: str = ""
    ) -> c.Equals | None:
        names = {v: k for k, v in enums.items()}
        if values == "oid" and isinstance(value, str):
            oid = self.ctx.symbol(value)
            if oid is None:
                self.ctx.unknown_symbol(value, mark, f"varbind {what} value")
                return None
            return c.Equals(None, ".".join(map(str, oid)), value, names)
        if isinstance(value, bool):
            self.problems.error(
                f"{what}: {value!r} is a YAML boolean (yes/no/on/off/true/false); "
                "quote it if you mean the text",
                mark,
            )
            return None
        if values == "text" and isinstance(value, (str, int, float)):
            # Exactly this text: '0123' is not 123 (as a number it matched "123" and " +123").
            return c.Equals(None, str(value), repr(str(value)), names)
        if isinstance(value, (int, float)):
            label = f"{names[int(value)]}({value})" if value in names else str(value)
            return c.Equals(value, None, label, names)
        if isinstance(value, str):
            if value in enums:
                return c.Equals(enums[value], None, f"{value}({enums[value]})", names)
            if re.fullmatch(r"[-+]?\d+", value.strip()):
                n = int(value)
                return c.Equals(n, None, f"{names[n]}({n})" if n in names else str(n), names)
            if enums:
                hint = difflib.get_close_matches(value, list(enums), n=1, cutoff=0.6)
                self.problems.error(
                    f"{what}: {value!r} is not a value of this enumeration"
                    + (f" (did you mean {hint[0]!r}?)" if hint else "")
                    + f"; values: {', '.join(f'{k}({v})' for k, v in enums.items())}",
                    mark,
                )
                return None
            return c.Equals(None, value, repr(value), names)
        self.problems.error(f"{what}: {value!r} is not a value to compare with (a number or text)", mark)
        return None

    def _number(self, value: Any, mark: Mark | None, what: str, enums: dict[str, int]) -> float | None:
        if isinstance(value, bool):
            self.problems.error(f"{what}: a comparison needs a number, got {value!r}", mark)
            return None
        if isinstance(value, (int, float)):
            return value
        if isinstance(value, str) and value in enums:
            return enums[value]
        self.problems.error(f"{what}: a comparison needs a number, got {value!r}", mark)
        return None

    def _regex(self, value: Any, mark: Mark | None, what: str, scope: RuleScope) -> c.Regex | None:
        if not isinstance(value, str):
            self.problems.error(f"{what}: regex takes a pattern (text; single-quote it in YAML)", mark)
            return None
        try:
            # The syntax is re's (and so are the error messages, which point at the open group
            # rather than the pattern's end); the match is the regex module's, in its re-compatible
            # VERSION0, for the timeout re lacks (conditions.REGEX_TIME_PER_EVENT).
            re.compile(value)
            pattern = regex.compile(value, regex.VERSION0)
        except re.error as exc:
            self.problems.error(f"{what}: bad regex: {exc.msg} at position {exc.pos} of the pattern", mark)
            return None
        except regex.error as exc:  # re took it, regex not: not expected, but said clearly
            self.problems.error(f"{what}: bad regex: {exc}", mark)
            return None
        except RecursionError:  # both parse groups recursively
            self.problems.error(f"{what}: bad regex: nested too deep (groups inside one another)", mark)
            return None
        reserved = [g for g in pattern.groupindex if g in EVENT_VARIABLES or g in JINJA_GLOBALS]
        # The other groups still count, so templates using them are not reported as well.
        scope.captures.update(g for g in pattern.groupindex if g not in reserved)
        for g in reserved:
            self.problems.error(
                f"{what}: the regex group name {g!r} is a reserved template variable; rename the group", mark
            )
        if reserved:
            return None
        if pattern.groupindex:
            self._named_regexes += 1
        return c.Regex(pattern, f"regex {value!r}")

    # -- foreach ----------------------------------------------------------------

    def foreach(self, node: Any, mark: Mark | None, scope: RuleScope) -> ForEach | None:
        kinds = decoders.kinds()
        if isinstance(node, str):
            node_map: YDict | None = None
            kind = node
        elif isinstance(node, YDict):
            self.ctx.keys(node, FOREACH_KEYS, "foreach")
            node_map = node
            items = node.get("items")
            if not isinstance(items, str):
                self.problems.error(
                    f"foreach.items names the decoded items: {', '.join(sorted(kinds))}", mark
                )
                return None
            kind = items
        else:
            self.problems.error(
                f"foreach takes an item kind ({', '.join(sorted(kinds))}) or {{items:, where:}}", mark
            )
            return None
        if kind not in kinds:
            self.problems.error(
                f"foreach: unknown item kind {kind!r}; known: {', '.join(sorted(kinds))}", mark
            )
            return None
        scope.foreach_kind = kind
        where_tests: list[tuple[str, tuple[c.ValueTest, ...]]] = []
        if node_map is not None and "where" in node_map:
            w = node_map["where"]
            if not isinstance(w, YDict):
                self.problems.error("foreach.where maps item fields to conditions", where(node_map, "where"))
                return None
            for fname, spec in w.items():
                if fname not in kinds[kind]:
                    self.problems.error(
                        f"foreach.where: {kind} items have no field {fname!r}; "
                        f"fields: {', '.join(kinds[kind])}",
                        where(w, fname, of_key=True),
                    )
                    continue
                tests, _exists = self.value_tests(spec, where(w, fname), f"where {fname}", {}, scope)
                if tests is not None:
                    where_tests.append((str(fname), tuple(tests)))
        return ForEach(kind, decoders.decoders_for(kind), tuple(where_tests), mark)


class _AllTests(c.ValueTest):
    def __init__(self, tests: Sequence[c.ValueTest]) -> None:
        self.tests = tuple(tests)
        self.label = " and ".join(t.label for t in tests)

    def test(self, s: c.Subject, st: c.EvalState) -> bool:
        return all(t.test(s, st) for t in self.tests)
