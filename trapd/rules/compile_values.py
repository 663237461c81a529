"""Parameter values of a rule: constants, and templates compiled and checked once at load.

A template is parsed when the rules load (a syntax error is reported with
its file:line), its variables are checked against what the event, the rule's
regex groups, ``item`` and the MIBs provide, and the compiled template is
shared by every rule that writes the same text (a rule set repeats
``{{ source }}`` thousands of times). Rendering happens in
:mod:`trapd.rules.ruleset`; the sandboxed environment is
:mod:`trapd.rules.templates`.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

import jinja2

from trapd import decoders
from trapd.rules.compile_context import CompileContext, RuleScope
from trapd.rules.context import EVENT_VARIABLES
from trapd.rules.ruleset import Const, ListOf, MapOf, Template, Value
from trapd.rules.templates import ENV, JINJA_GLOBALS, TemplateInfo, TemplateRefused, analyse, is_template
from trapd.secrets import REFS, reference, source_reference
from trapd.yamlsource import Mark, YDict, YList, where


class ValueCompiler:
    """Compiles parameter values (``message: "{{ ifDescr }} down"``) into :class:`Value` trees."""

    def __init__(self, ctx: CompileContext) -> None:
        self.ctx = ctx
        self.problems = ctx.problems
        # The same template text is compiled once per file set (a rule set repeats "{{ source }}").
        self._templates: dict[tuple[str, bool], tuple[Template, TemplateInfo]] = {}
        # Templates (their TemplateInfo, kept alive by _templates) whose variables were all found
        # in a rule with no regex captures and no foreach: in another such rule they are again.
        self._variables_ok: set[int] = set()

    def value(
        self,
        node: Any,
        mark: Mark | None,
        scope: RuleScope | None,
        what: str,
        *,
        url: bool = False,
        secret: bool = False,
        secret_ref: bool = False,
    ) -> Value:
        """A parameter value: templates compiled (and checked) now; lists and mappings recursively.

        ``url``: a ``url`` parameter, whose expressions are percent-encoded when rendered.
        ``secret``: a parameter the plugin declares secret. Its constants and ``{env: NAME}`` /
        ``{file: PATH}`` become references (``{"$secret": "rules.yaml:12:9"}``), which the
        journal stores instead of the value; the dispatcher resolves them when the action runs.
        ``secret_ref``: only ``{env: NAME}`` / ``{file: PATH}`` become references; text stays text.
        """
        if isinstance(node, str) and is_template(node):
            if secret:
                self.problems.warning(
                    f"{what} is secret; a template in it is journaled as rendered: write the secret "
                    "as a constant or {env: NAME} / {file: PATH} and the trap's values elsewhere",
                    mark,
                )
            return self._template(node, mark, scope, what, url=url)
        if secret_ref and (source := source_reference(node)) is not None:
            return Const(reference(source))
        if secret:
            source = source_reference(node)
            if source is not None:
                return Const(reference(source))
            if isinstance(node, str) and mark is not None:
                ref = f"{mark.file}:{mark.line}:{mark.column}"
                REFS.register(ref, node)
                return Const(reference(ref))
        if isinstance(node, YList):
            return ListOf(
                [
                    self.value(v, where(node, i), scope, f"{what}[{i}]", secret=secret)
                    for i, v in enumerate(node)
                ]
            )
        if isinstance(node, YDict):
            return MapOf(
                {
                    str(k): self.value(v, where(node, k), scope, f"{what}.{k}", secret=secret)
                    for k, v in node.items()
                }
            )
        return Const(node)

    def _template(
        self, source: str, mark: Mark | None, scope: RuleScope | None, what: str, *, url: bool = False
    ) -> Value:
        try:
            hit = self._templates.get((source, url))
            if hit is None:
                tmpl, info = analyse(source, url=url)
                # One immutable Template value per text: 100,000 rules writing "{{ source }}" share it.
                hit = self._templates[(source, url)] = (Template(tmpl, source, info), info)
            shared, info = hit
        except jinja2.TemplateSyntaxError as exc:
            at = Mark(mark.file, mark.line + max((exc.lineno or 1) - 1, 0), mark.column) if mark else None
            kind = "template refused" if isinstance(exc, TemplateRefused) else "template syntax error"
            self.problems.error(f"{what}: {kind}: {exc.message}{_close_filter(exc.message)}", at)
            return Const(source)
        except RecursionError:
            # Jinja parses, and trapd analyses, recursively: a dozen frames a parenthesis.
            self.problems.error(
                f"{what}: template nested too deep (parentheses, filters or calls inside one another): "
                "split it, or set parts with {% set %}",
                mark,
            )
            return Const(source)
        self._check_variables(info, mark, scope, what)
        return shared

    def _check_variables(
        self, info: TemplateInfo, mark: Mark | None, scope: RuleScope | None, what: str
    ) -> None:
        # Asked for every rule's every template (100,000 per-port rules: 1.5 % of compiling them).
        plain_scope = scope is None or (not scope.captures and scope.foreach_kind is None)
        if plain_scope and id(info) in self._variables_ok:
            return
        problems_before = len(self.problems.items)
        self._check_variables_in(info, mark, scope, what)
        if plain_scope and len(self.problems.items) == problems_before:
            self._variables_ok.add(id(info))

    def _check_variables_in(
        self, info: TemplateInfo, mark: Mark | None, scope: RuleScope | None, what: str
    ) -> None:
        for var in sorted(info.variables):
            if var == "item":
                if scope is None or scope.foreach_kind is None:
                    self.problems.error(f"{what}: 'item' is only defined in a rule with foreach:", mark)
                continue
            if var in EVENT_VARIABLES or var in JINJA_GLOBALS:
                continue
            if scope is not None and var in scope.captures:
                continue
            if self.ctx.is_symbol(var):
                continue
            hint = difflib.get_close_matches(
                var, [*EVENT_VARIABLES, *(scope.captures if scope else ())], n=1, cutoff=0.7
            )
            self.problems.error(
                f"{what}: undefined template variable {var!r}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + ": not an event field, a regex group of this rule, or a MIB symbol",
                mark,
            )
        if scope is not None and scope.foreach_kind is not None and info.item_fields:
            fields = decoders.kinds().get(scope.foreach_kind, {})
            for f in sorted(info.item_fields - set(fields)):
                self.problems.error(
                    f"{what}: {scope.foreach_kind} items have no field {f!r}; fields: {', '.join(fields)}",
                    mark,
                )


_NO_SUCH = re.compile(r"No (filter|test) named '([^']*)'")


def _close_filter(message: str | None) -> str:
    """`` (did you mean 'length'?)`` for Jinja's "No filter named 'lenght'" (and tests), else ""."""
    m = _NO_SUCH.match(message or "")
    if m is None:
        return ""
    names = ENV.filters if m.group(1) == "filter" else ENV.tests
    hint = difflib.get_close_matches(m.group(2), list(names), n=1, cutoff=0.6)
    return f" (did you mean {hint[0]!r}?)" if hint else ""
