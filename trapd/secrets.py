"""Secrets (communities, v3 keys, Kea passwords) that never reach a log.

A secret in a config file can be written three ways::

    password: s3cret                         # inline (fine for a lab)
    password: {file: /etc/trapd/kea.pw}      # first line of a file (mode 0600/0640)
    password: {env: TRAPD_KEA_PASSWORD}      # an environment variable

Every loaded secret is registered with :data:`REDACTOR`, which the logging
setup uses to mask the value wherever it would otherwise be printed.

At rest (the journal) a secret is never stored: what is stored is a
*reference* to where it came from, ``{"$secret": "env:NAME"}``,
``{"$secret": "file:/etc/trapd/token"}`` or, for a value written in a rules
or config file, ``{"$secret": "rules.yaml:12:9"}``. :func:`resolve` turns
references back into values when the action runs: the environment and files
are read then, values written in a file come from :data:`REFS`, which the
loaders fill (so a rule edited since may no longer hold the value: the
action then fails, permanently and saying why).
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import json
import os
import re
import threading
import urllib.parse
import weakref
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from trapd.regularfile import read_regular_text
from trapd.yamlsource import ConfigError, Mark


class Redactor:
    """Knows the secret values loaded in this process and masks them in text.

    A secret from a file is read again at every reload and by every action that uses it (see
    :func:`resolve`): a token rotated every hour would add a value per rotation for as long as
    the process runs, and every log line is searched for each. So values are kept per *source*
    (``file:PATH``, ``env:NAME``, a place in a rules file): the one read last, which everything
    reads now, and the one before it, which an action or a reload that read it just before the
    rotation may still be writing into a log line. Older ones are forgotten, unless still held:
    by a live :class:`Secret` (the Kea password a client keeps until a restart, however often
    the file rotated since) or by a running action (:meth:`hold`, :meth:`release`). A value
    with no source (typed on a command line) is kept for good: it is never read again.
    """

    MASK = "***"
    KEEP_PER_SOURCE = 2

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the reload thread loads secrets while the loop resolves them
        # Values of Secrets freed since (weakref.finalize), released at the next change: the cyclic
        # collector frees them wherever it runs, inside this class's locked code too, where
        # taking the lock again would deadlock. deque.append needs no lock.
        self._freed: deque[str] = deque()
        self._uses: Counter[str] = Counter()  # value -> the windows, holds and the for-good that keep it
        self._recent: dict[str, list[str]] = {}  # source -> its last KEEP_PER_SOURCE values, newest last
        self._forever: set[str] = set()
        self._forms: Counter[str] = Counter()  # text masked -> how many kept values have it
        # What redact() searches, longest first, and minus their lengths (ascending, for bisect):
        # one new tuple on every change (rare), read without the lock.
        self._search = _Search(())

    def add(self, value: str, source: str | None = None) -> None:
        """Mask ``value``; ``source``: where it was read, so that a newer value read there supersedes it."""
        if not self._maskable(value):
            return
        with self._lock:
            if source is None:
                if value not in self._forever:
                    self._forever.add(value)
                    self._use(value)
                return
            recent = self._recent.setdefault(source, [])
            known = value in recent
            dropped = _read_again(recent, value)
            if not known:
                self._use(value)
            if dropped is not None:
                self._unuse(dropped)

    def hold(self, value: str) -> None:
        """Keep ``value`` masked until as many :meth:`release` calls, whatever its source reads since."""
        if self._maskable(value):
            with self._lock:
                self._use(value)

    def release(self, value: str) -> None:
        if self._maskable(value):
            with self._lock:
                self._unuse(value)

    def release_freed(self, value: str) -> None:
        """:meth:`release` for a finalizer: the value stays masked until the next change."""
        if self._maskable(value):
            self._freed.append(value)

    @staticmethod
    def _maskable(value: str) -> bool:
        return len(value) >= 4  # very short values would mask innocent text everywhere ("1", "a")

    def _use(self, value: str) -> None:
        while self._freed:  # under the lock, as every change
            self._unuse(self._freed.popleft())
        self._uses[value] += 1
        if self._uses[value] == 1:
            for form in _forms(value):
                self._forms[form] += 1
            self._search = _Search(self._forms)

    def _unuse(self, value: str) -> None:
        while self._freed:
            self._unuse(self._freed.popleft())
        self._uses[value] -= 1
        if self._uses[value] > 0:
            return
        del self._uses[value]
        for form in _forms(value):
            self._forms[form] -= 1
            if self._forms[form] <= 0:
                del self._forms[form]
        self._search = _Search(self._forms)

    def redact(self, text: str) -> str:
        if self._freed and self._lock.acquire(blocking=False):  # never waits: redact is hot
            try:
                if self._freed:
                    self._unuse(self._freed.popleft())  # drains the others too
            finally:
                self._lock.release()
        search = self._search
        # Each secret is searched for in some dozen forms (:func:`encodings`): only those that fit
        # in the text (most fields of a line are short), and one pass in C while none is in it.
        # A form of word characters alone (most: base64, a secret as written) only fits in a run
        # of them as long: with many secrets, the text's longest run leaves most of them out.
        size = len(text)
        others = search.others[bisect.bisect_left(search.other_lengths, -size) :]
        if len(search.words) > _WORD_RUNS_FROM:
            size = max(map(len, text.encode("utf-8", "replace").translate(_WORD_BYTES).split()), default=0)
        words = search.words[bisect.bisect_left(search.word_lengths, -size) :]
        if not any(map(text.__contains__, others)) and not any(map(text.__contains__, words)):
            return text
        for v in search.forms[bisect.bisect_left(search.lengths, -len(text)) :]:
            if v in text:
                text = text.replace(v, self.MASK)
        return text

    def cut(self, text: str, length: int | None = None, *, complete: bool = True) -> str:
        """``text`` masked, then cut to ``length`` characters (None: not cut). A text cut here, or
        before (not ``complete``: the start of an answer, of a program's output) loses an end that
        could be the start of a secret's form (masked whole first: a cut through one left it)."""
        text = self.redact(text)
        if length is not None and len(text) > length:
            text, complete = text[:length], False
        return text if complete else self.mask_end(text)

    def bounded(self, text: str, limit: int) -> str:
        """``text`` masked and, past ``limit`` characters, cut there and marked ``… (N characters)``
        with its whole length; only its start is masked (a text of 50 MB costs ``2 * limit``).

        What trapd keeps of a plugin's text (an error, a traceback, a result's JSON) goes through
        here. The start is taken twice as long as kept: masking shortens it, and the end of the
        part taken, a cut through a secret's form maybe, is masked as any cut end is (:meth:`cut`).
        """
        if len(text) <= limit:
            return self.redact(text)
        return f"{self.cut(text[: 2 * limit], limit, complete=False)}… ({len(text)} characters)"

    def mask_end(self, text: str) -> str:
        """``text`` (masked already) with an end that could be the start of a secret's form masked."""
        cut = len(text)
        for form in self._search.forms:
            # Where the text's end could be a start of ``form``: at an occurrence of its first
            # character, no farther back than the form is long (a few places, not every length).
            at = text.find(form[0], max(0, len(text) - len(form) + 1))
            while at != -1 and len(text) - at >= 4:
                if form.startswith(text[at:]):
                    cut = min(cut, at)
                    break
                at = text.find(form[0], at + 1)
        return text if cut == len(text) else text[:cut] + self.MASK

    def redact_data(self, value: Any) -> Any:
        """JSON-like data (an action's result) with the secrets masked in its strings, keys too; a
        tuple becomes a list, as JSON writes it; anything else is kept as it is."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, Mapping):
            return {
                (self.redact(k) if isinstance(k, str) else k): self.redact_data(v) for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.redact_data(v) for v in value]
        return value

    def __len__(self) -> int:
        """How many values are masked (each in its forms: see :func:`encodings`)."""
        return len(self._uses)

    def __bool__(self) -> bool:
        return bool(self._search.forms)


# Word characters: base64's (both alphabets), and so most secrets' letters and digits.
_WORD = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-"
_WORD_BYTES = bytes(c if c in _WORD else 0x20 for c in range(256))  # the others: a space
# From this many forms of word characters on, redact() reads the text's longest run of them
# first (1.6 us for a log line of 300 characters, about 25 searches' worth).
_WORD_RUNS_FROM = 48


class _Search:
    """What :meth:`Redactor.redact` searches for, longest first (a URL masked whole before its path
    is, a text before its part), and minus the lengths (ascending, for bisect); split into the
    forms of word characters alone and the others. Made anew at every change, read unlocked."""

    __slots__ = ("forms", "lengths", "other_lengths", "others", "word_lengths", "words")

    def __init__(self, forms: Iterable[str]) -> None:
        self.forms = tuple(sorted(forms, key=len, reverse=True))
        self.lengths = [-len(form) for form in self.forms]
        self.words = tuple(
            f for f in self.forms if not f.encode("utf-8", "replace").translate(_WORD_BYTES).count(b" ")
        )
        self.word_lengths = [-len(form) for form in self.words]
        words = set(self.words)
        self.others = tuple(f for f in self.forms if f not in words)
        self.other_lengths = [-len(form) for form in self.others]


def _read_again(recent: list[str], value: str) -> str | None:
    """``value`` read at a source whose last values are ``recent`` (newest last): it becomes the
    newest; returns the oldest value it pushed out of the last :attr:`Redactor.KEEP_PER_SOURCE`."""
    if recent and recent[-1] == value:
        return None  # read again, unchanged: the common case
    if value in recent:
        recent.remove(value)
    recent.append(value)
    return recent.pop(0) if len(recent) > Redactor.KEEP_PER_SOURCE else None


def _forms(value: str) -> set[str]:
    """Every text that masks ``value``: the value and the secrets inside it (:func:`_parts`), each in
    each encoding (:func:`encodings`); none shorter than a maskable value. Longest first in
    :attr:`Redactor._search`, so that a URL is masked whole before its path is."""
    forms: set[str] = set()
    for text in {value, *_parts(value)}:
        forms |= encodings(text)
    return {form for form in forms if Redactor._maskable(form)}


# An Authorization header's value: its scheme, then the credential (RFC 9110 section 11.4).
_AUTH_SCHEME = re.compile(r"(?i:basic|bearer|token|digest|negotiate|apikey|api-key)[ \t]+(\S.*)")


def _parts(value: str) -> set[str]:
    """What inside a secret is a secret alone, and may be quoted alone: the credential of an
    Authorization header's value (``Bearer <token>``; ``Basic <base64>``: also the user:password
    it encodes, and the password), and of a URL its path and query (where Slack's, Teams' and
    the like's token is) and its password (``user:password@``)."""
    parts: set[str] = set()
    scheme = _AUTH_SCHEME.fullmatch(value)
    if scheme is not None:
        credential = scheme.group(1).strip()
        parts.add(credential)
        if value[:5].lower() == "basic":
            with contextlib.suppress(ValueError):
                decoded = base64.b64decode(credential, validate=True).decode()
                parts |= {decoded, decoded.partition(":")[2]}
        return parts
    if "://" in value:
        with contextlib.suppress(ValueError):
            url = urllib.parse.urlsplit(value)
            if url.scheme and url.netloc:
                parts.add(value[value.index(url.netloc) + len(url.netloc) :])
                if url.password:
                    parts |= {url.password, urllib.parse.unquote(url.password)}
    return parts


def encodings(text: str) -> set[str]:
    """``text`` as a program, a server or a library may write it: as is; as JSON writes it (the
    journal stores results as JSON: a quote, a backslash, a control or non-ASCII character is
    escaped), also with ``\\/`` for / (PHP); percent-encoded whole, or but for / (a path), or
    as an HTTP client does a URL (only what a URL cannot hold), with either case of hex, and with
    + for a space (a form); its bytes in hex, either case; and in base64, standard or URL-safe, at
    each of its three alignments:
    the characters that only ``text`` decides, so that it is found inside a longer base64 text
    too, such as an ``Authorization: Basic`` header's ``user:password``.

    The one place that knows these forms: the redactor masks every secret in each (log lines,
    results, errors, ``trapd journal show``), the webhook action its URL's parts."""
    as_json = json.dumps(text)[1:-1]
    # A text from the environment or argv that is not UTF-8 holds its bytes as lone surrogates
    # (surrogateescape): encoded back to those bytes, not refused.
    quoted = {
        urllib.parse.quote(text, safe="", errors=_BYTES),
        urllib.parse.quote(text, safe="/", errors=_BYTES),
        urllib.parse.quote(text, safe=_URL_SAFE, errors=_BYTES),
        urllib.parse.quote_plus(text, safe="", errors=_BYTES),
    }
    quoted |= {_LOWER_HEX.sub(lambda m: m.group().lower(), q) for q in quoted}
    out = {text, as_json, as_json.replace("/", "\\/"), *quoted}
    if _CONTROL.search(text):  # a log line's console format writes a control character \x1b, as repr
        out.add(text.encode("unicode_escape").decode("ascii"))
    if "'" in text or "\\" in text or '"' in text:
        # As Python's repr writes it (the console format, a field's text that needs quoting):
        # in the quotes the text itself picks, and in '...' with \' when the rest has both.
        out |= {repr(text)[1:-1], repr(text + "'\"")[1:-4]}
    data = text.encode("utf-8", _BYTES)
    out |= {data.hex(), data.hex().upper()}  # a program that dumps the bytes it sent (xxd -p)
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + data).decode()
        core = encoded[-(-pad * 8 // 6) : (pad + len(data)) * 8 // 6]
        out |= {core, core.translate(_URLSAFE)}
    return out


_BYTES = "surrogateescape"
_URL_SAFE = "!#$%&'()*+,/:;=?@[]~"  # RFC 3986's reserved characters, and % (what is encoded already)
_LOWER_HEX = re.compile("%[0-9A-F]{2}")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_URLSAFE = str.maketrans("+/", "-_")


REDACTOR = Redactor()

REF_KEY = "$secret"


class SecretError(Exception):
    """A secret reference that cannot be resolved (the message says which and why; never the value)."""


class SecretRefs:
    """Values written in rules or config files, by their reference (``FILE:LINE:COL``), and the reverse."""

    def __init__(self) -> None:
        self._values: dict[str, str] = {}
        self._refs: dict[str, str] = {}
        # ref -> its last values, newest last: the reverse map keeps as many as the redactor
        # masks (an event received with the community of before a reload is journaled after it).
        self._recent: dict[str, list[str]] = {}

    def register(self, ref: str, value: str) -> None:
        self._values[ref] = value
        dropped = _read_again(self._recent.setdefault(ref, []), value)
        if dropped is not None:
            self._forget(dropped, ref)
        self._refs.setdefault(value, ref)
        REDACTOR.add(value, ref)

    def _forget(self, value: str, ref: str) -> None:
        """``value`` was superseded at ``ref``: map it to another place that still has it, or to none."""
        if self._refs.get(value) != ref:
            return
        del self._refs[value]
        other = next((r for r, values in self._recent.items() if value in values), None)
        if other is not None:
            self._refs[value] = other

    def value(self, ref: str) -> str | None:
        return self._values.get(ref)

    def reference(self, value: str) -> str | None:
        """Where a loaded secret came from (the first place registered), or None if it is not one."""
        return self._refs.get(value)

    def saved(self) -> tuple[dict[str, str], dict[str, str], dict[str, list[str]]]:
        """What is registered now, for :meth:`restore` (tests that load configurations in one process)."""
        return dict(self._values), dict(self._refs), {r: list(v) for r, v in self._recent.items()}

    def restore(self, saved: tuple[dict[str, str], dict[str, str], dict[str, list[str]]]) -> None:
        self._values, self._refs = dict(saved[0]), dict(saved[1])
        self._recent = {r: list(v) for r, v in saved[2].items()}


REFS = SecretRefs()


def reference(ref: str) -> dict[str, str]:
    return {REF_KEY: ref}


def is_reference(value: Any) -> bool:
    return isinstance(value, Mapping) and len(value) == 1 and isinstance(value.get(REF_KEY), str)


def source_reference(node: Any) -> str | None:
    """``{env: NAME}`` -> ``env:NAME``, ``{file: PATH}`` -> ``file:PATH``; None for anything else."""
    if isinstance(node, Mapping) and len(node) == 1:
        ((kind, ref),) = node.items()
        if kind in ("env", "file") and isinstance(ref, str) and ref:
            return f"{kind}:{ref}"
    return None


def resolve(value: Any, read: list[str] | None = None) -> Any:
    """``value`` with every secret reference (at any depth) replaced by the secret; else SecretError.

    ``read``, when given, gets each secret value put in: a caller that uses them for a while
    holds them masked meanwhile (:meth:`Redactor.hold`), whatever their files read since.
    """
    if is_reference(value):
        secret = _resolve_one(value[REF_KEY])
        if read is not None:
            read.append(secret)
        return secret
    if isinstance(value, Mapping):
        return {k: resolve(v, read) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, read) for v in value]
    return value


def _resolve_one(ref: str) -> str:
    kind, _, name = ref.partition(":")
    if kind == "env":
        if name not in os.environ:
            raise SecretError(f"secret {ref}: the environment variable is not set")
        REDACTOR.add(os.environ[name], ref)  # read only now: masked from now on, as loaded ones are
        return os.environ[name]
    if kind == "file":
        try:
            lines = read_regular_text(name).splitlines()
        except OSError as exc:
            raise SecretError(f"secret {ref}: cannot read the file: {exc.strerror or exc}") from None
        REDACTOR.add(lines[0] if lines else "", ref)
        return lines[0] if lines else ""
    value = REFS.value(ref)
    if value is None:
        raise SecretError(f"secret {ref}: no longer written there (the file changed since it was planned)")
    return value


class Secret:
    """A secret value whose ``repr``/``str`` never shows it. Call :meth:`reveal`."""

    __slots__ = ("__weakref__", "_value", "origin")

    def __init__(self, value: str, origin: str = "inline", ref: str | None = None) -> None:
        self._value = value
        self.origin = origin
        if ref is None:
            REDACTOR.add(value)
        else:
            REFS.register(ref, value)
            # In use as long as this object lives, however often its file is read again since.
            REDACTOR.hold(value)
            weakref.finalize(self, REDACTOR.release_freed, value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(<{self.origin}>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    @classmethod
    def from_argument(cls, text: str) -> Secret:
        """A command-line secret: ``env:NAME`` or ``file:PATH`` (read like trapd.yaml's), else the text.

        The text itself is in the process's argv, which every local user can read (ps); the two
        references keep it out. ConfigError for an unset variable or an unreadable file.
        """
        kind, sep, ref = text.partition(":")
        if sep and kind in ("env", "file"):
            if not ref:  # a typo, not the four or five characters as the secret
                raise ConfigError(
                    f"{text}: {kind}: needs a {'name' if kind == 'env' else 'path'} after the colon"
                )
            return cls.from_config({kind: ref}, None, base_dir=Path.cwd())
        return cls(text, "command line")

    @property
    def on_command_line(self) -> bool:
        """Given as plain text on a command line (see :meth:`from_argument`)."""
        return self.origin == "command line"

    @classmethod
    def from_config(cls, value: Any, mark: Mark | None = None, *, base_dir: Path | None = None) -> Secret:
        """Build from ``"inline"``, ``{file: PATH}`` or ``{env: NAME}``; ConfigError otherwise."""
        if isinstance(value, str):
            return cls(value, "inline", str(mark) if mark is not None else None)
        if isinstance(value, Mapping) and len(value) == 1:
            ((kind, ref),) = value.items()
            if kind == "env" and isinstance(ref, str):
                if ref not in os.environ:
                    raise ConfigError(f"environment variable {ref} is not set", mark)
                return cls(os.environ[ref], f"env {ref}", f"env:{ref}")
            if kind == "file" and isinstance(ref, str):
                path = Path(ref)
                if base_dir is not None and not path.is_absolute():
                    path = base_dir / path
                try:
                    text = read_regular_text(path)
                except OSError as exc:
                    raise ConfigError(f"cannot read secret file {path}: {exc.strerror or exc}", mark) from exc
                lines = text.splitlines()
                return cls(lines[0] if lines else "", f"file {path}", f"file:{path}")
        raise ConfigError("a secret is a string, {file: PATH} or {env: NAME}", mark)
