"""The supervisor <-> worker link: length-prefixed JSON messages over one socketpair per worker.

Why a socketpair and JSON: the two ends are a forked parent and child, so a
socketpair needs no address, no file and no cleanup, and dies with either
end (the reader sees EOF, which is how the supervisor notices a worker that
stopped answering as well as one that exited). JSON keeps every message
readable in a debugger and needs no schema library; the messages are few
and small (a snapshot is a few KB), so its cost does not matter.

A message is a JSON object with an ``op`` key, framed by a 4-byte big-endian
length. What goes where:

=============  =====================  ===============================================================
op             direction              fields
=============  =====================  ===============================================================
ready          worker -> supervisor   (started: sockets bound, journal open)
snapshot?      supervisor -> worker   ``seq``
snapshot       worker -> supervisor   ``seq``, ``data`` (trapd.service.snapshots wire form)
reload         supervisor -> worker   (re-read trapd.yaml and the rules)
reloaded       worker -> supervisor   ``ok``, ``error`` (None when ok), ``digest`` (RuleSet.digest)
=============  =====================  ===============================================================

SIGTERM is not a message: the supervisor forwards the signal itself, so a
worker stops the same way whether systemd, the supervisor or an operator
sent it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

# A snapshot of a daemon with thousands of rules is tens of KB; anything near this is a bug.
MAX_MESSAGE = 16 * 1024 * 1024
_HEADER = struct.Struct(">I")

Message = dict[str, Any]


class ChannelClosed(ConnectionError):
    """The other end is gone (exited, or closed its socket)."""


class ChannelGarbled(ChannelClosed):
    """The stream stopped making sense (a size out of bounds, a body that is not a message):
    nothing after it can be read, though the other end may still be there."""


def encode(message: Message) -> bytes:
    body = json.dumps(message, separators=(",", ":"), default=str).encode()
    if len(body) > MAX_MESSAGE:
        raise ValueError(f"channel message of {len(body)} bytes is over {MAX_MESSAGE}")
    return _HEADER.pack(len(body)) + body


class Channel:
    """One end of a worker's socketpair, on the running event loop.

    ``send`` queues and never blocks (the socket buffer and asyncio's
    transport buffer take a few messages easily); ``receive`` returns the
    next message or raises :class:`ChannelClosed`.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        sock.setblocking(False)
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_MESSAGE + _HEADER.size)
        return cls(reader, writer)

    def send(self, message: Message) -> None:
        if self._writer.is_closing():
            raise ChannelClosed("channel closed")
        self._writer.write(encode(message))

    async def receive(self) -> Message:
        try:
            header = await self._reader.readexactly(_HEADER.size)
            (size,) = _HEADER.unpack(header)
            if size > MAX_MESSAGE:
                raise ChannelGarbled(f"channel message of {size} bytes announced: stream out of step")
            body = await self._reader.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise ChannelClosed(str(exc) or "end of stream") from None
        try:
            message = json.loads(body)
        except ValueError:  # not JSON, not UTF-8: the stream is out of step, nothing after it is whole
            raise ChannelGarbled(f"not a channel message: {body[:80]!r}") from None
        if not isinstance(message, dict) or not isinstance(message.get("op"), str):
            raise ChannelGarbled(f"not a channel message: {body[:80]!r}")
        return message

    def close(self) -> None:
        self._writer.close()
