"""example.note: append one line of text to a file in a directory trapd may write.

This is a complete, minimal third-party plugin: one async function, its
typed parameters, a docstring that ``trapd actions example.note`` shows.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from trapd.params import Param
from trapd.plugin import ActionContext, PermanentError, RetryableError, action


@action(
    "example.note",
    params={
        "file": Param("string", "file name inside the notes directory", required=True, max_length=100),
        "text": Param("string", "the line to append (rendered by the rule)", required=True),
    },
    idempotent=False,  # appending twice leaves two lines
    # Its section of trapd.yaml: `trapd check` reports a key not declared here (a typo) or a
    # value that does not fit, with its line; ctx.settings holds the converted values.
    settings={"dir": Param("string", "the notes directory", required=True, max_length=4096)},
)
async def note(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """Append a line of text to a file in the notes directory.

    The directory comes from trapd.yaml, not from the rule, so a rule (or a
    trap value rendered into it) cannot write elsewhere::

        actions:
          example.note:
            dir: /var/lib/trapd/notes

    Example rule action::

        - action: example.note
          file: ports.log
          text: "{{ source }} ifIndex {{ ifIndex }} down"
    """
    directory = ctx.settings.get("dir")
    if not directory:
        raise PermanentError("example.note needs actions: {example.note: {dir: ...}} in trapd.yaml")
    name = params["file"]
    if "/" in name or name in ("", ".", ".."):
        raise PermanentError(f"file must be a plain file name, got {name!r}")
    path = Path(directory) / name
    # Every line boundary (CR, VT, U+2028... not only LF): a trap value must not add lines.
    line = " ".join(params["text"].splitlines()) + "\n"
    try:
        # File I/O blocks; a thread keeps the event loop (and the trap receiver) free.
        await asyncio.to_thread(_append, path, line)
    except FileNotFoundError:
        raise PermanentError(f"notes directory {directory} does not exist") from None
    except OSError as exc:
        raise RetryableError(f"cannot write {path}: {exc.strerror}") from None
    ctx.log.info("note written", file=str(path))
    return {"file": str(path), "bytes": len(line.encode())}


def _append(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(line)
