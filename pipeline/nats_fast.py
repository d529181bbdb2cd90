"""The one place that uses nats-py internals: a raw delivery path and batched protocol
writes for the JetStream source's hot loop.

nats-py's public path costs a ``Msg`` object, a pending-queue entry, a task switch and a
callback per delivered message, and per-message framing on ``publish()``; on the ack and
delivery paths that is about half of the client's CPU per event. This module reaches
into these internals instead, checked against the nats-py releases in
:data:`CHECKED_VERSIONS` (``pyproject.toml`` pins the same range):

- ``Client._process_msg(sid, subject, reply, data, headers)``: the parser's per-message
  call, overridden by :class:`FastClient` to hand chosen subscriptions' frames to a sink;
- ``Client._process_headers(raw)``: parses a raw ``NATS/1.0`` header block;
- ``Client._send_command(bytes)``: queues protocol bytes for the next flush (and, for
  :func:`publish_many`, ``_flush_pending()`` and the connection's ``_max_payload``,
  ``_max_pending_size``, ``_pending_data_size`` and ``_flush_queue``, as ``publish()``
  uses them);
- ``Subscription._id``: a subscription's sid;
- ``Client._ps``, the client's ``Parser`` (``buf``, ``state``, ``parse()``): replaced by
  :class:`FastParser`, which gives runs of complete ``MSG``/``HMSG`` frames of chosen
  subscriptions to the compiled scanner (``pipeline.fastpath.scan_msgs``) and every other
  frame or line, exactly as it is, to nats-py's parser.

:func:`internals_problems` says what changed when an upgrade moves any of them, and
``tests/unit/test_nats_fast.py`` fails loudly on it (without these the source still works:
:func:`send_commands` falls back to public ``publish``).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from typing import Any, Final

from nats import errors
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.protocol.parser import AWAITING_CONTROL_LINE, Parser

from pipeline.fastpath import scan_msgs

# nats-py releases whose internals were read and found as used here (2.13.0 - 2.16.0).
CHECKED_VERSIONS: Final = ((2, 13), (2, 16))
RawSink = Callable[[bytes, bytes, bytes, bytes], Awaitable[None]]
# Frames scanned in C: each a ``pipeline.stages.Message`` (a JetStream message without
# headers) or the frame as (subject, reply, payload, raw headers or None) for the RawSink.
BatchSink = Callable[[list[Any]], Awaitable[None]]


class FastParser(Parser):
    """nats-py's parser, with runs of complete frames for batch sinks scanned in C.

    At a control line, the compiled scanner takes every complete ``MSG``/``HMSG`` frame of a
    subscription with a batch sink (:meth:`FastClient.register_sink`) in one call; it stops
    at an incomplete frame (the next read completes it) or at the first frame or line that
    is not one of those, which nats-py's own ``parse`` then reads, alone. Without the
    compiled extension this is nats-py's parser.
    """

    nc: FastClient

    async def parse(self, data: bytes = b"") -> None:
        self.buf.extend(data)
        sinks = self.nc._batch_sinks
        while scan_msgs is not None and sinks and self.buf and self.state == AWAITING_CONTROL_LINE:
            used, groups, other = scan_msgs(self.buf, sinks)
            if used:
                del self.buf[:used]
                for sid, items, nbytes in groups:
                    self.nc.stats["in_msgs"] += len(items)
                    self.nc.stats["in_bytes"] += nbytes
                    sink = sinks.get(sid)
                    if sink is not None:  # else unsubscribed meanwhile: nats-py drops those too
                        await sink(items)
            if other <= 0:
                return  # all read, or the rest waits for the next read
            buf = self.buf
            rest = buf[other:]
            del buf[other:]
            await super().parse()  # that one frame or line, as nats-py reads it
            if self.buf is not buf:  # the connection was reset meanwhile: drop the rest
                return
            buf.extend(rest)
        await super().parse()


class FastClient(Client):
    """nats-py's client with a raw delivery path for chosen subscriptions.

    For a registered subscription id, ``MSG``/``HMSG`` frames go straight to a sink as
    (subject, reply, payload, raw headers); everything else is nats-py unchanged.
    """

    def __init__(self) -> None:
        super().__init__()
        self._raw_sinks: dict[int, RawSink] = {}
        self._batch_sinks: dict[int, BatchSink] = {}
        self._ps = FastParser(self)

    def register_sink(self, sub: Subscription, sink: RawSink,
                      batch: BatchSink | None = None) -> None:  # fmt: skip
        """Deliver messages of ``sub`` to ``sink``; with ``batch``, runs of them scanned in C
        (when the extension runs) to ``batch``."""
        self._raw_sinks[sub._id] = sink
        if batch is not None:
            self._batch_sinks[sub._id] = batch

    def unregister_sink(self, sub: Subscription) -> None:
        """Stop raw delivery for ``sub``."""
        self._raw_sinks.pop(sub._id, None)
        self._batch_sinks.pop(sub._id, None)

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:
        sink = self._raw_sinks.get(sid)
        if sink is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        await sink(subject, reply, data, headers)


async def parse_headers(nc: Client, raw: bytes) -> dict[str, str] | None:
    """A raw header block (``NATS/1.0 ...``) as nats-py would parse it (None when empty)."""
    return await nc._process_headers(raw) if raw else None


async def send_commands(nc: Client, subjects: list[str], payload: bytes) -> None:
    """Publish ``payload`` to each subject in one protocol write (acks, NAKs), then flush.

    nats-py's ``publish()`` validates and frames each message in Python (~10 us each), the
    ack path's main cost; this frames them all at once.
    """
    send = getattr(nc, "_send_command", None)
    if send is None:  # pragma: no cover - a nats-py without the internal: public path
        for subject in subjects:
            await nc.publish(subject, payload)
    elif subjects and payload.isascii():
        # One str join of every frame (acks, NAKs and progress are ASCII), encoded once.
        tail = f" {len(payload)}\r\n{payload.decode()}\r\n"
        await send(("PUB " + (tail + "PUB ").join(subjects) + tail).encode())
    elif subjects:
        frame_tail = b" %d\r\n%s\r\n" % (len(payload), payload)
        await send(b"".join(b"PUB " + s.encode() + frame_tail for s in subjects))
    await nc.flush()


# As nats-py checks them on publish: no whitespace in a subject; header names are tokens.
_SUBJECT_INVALID = re.compile(r"[ \t\r\n]")
_HEADER_KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE_NEWLINES = str.maketrans({"\r": " ", "\n": " "})


_GOOD_KEYS: set[str] = set()  # header names seen valid as they are (a few: bounded below)


def _hpub(subject: str, reply: str, payload: bytes, headers: dict[str, str]) -> bytes:
    """One ``HPUB`` frame, its header block written as nats-py writes it (names stripped,
    empty ones skipped, invalid ones refused; values stripped, CR/LF made spaces)."""
    parts = ["NATS/1.0\r\n"]
    for k, v in headers.items():
        if k not in _GOOD_KEYS:
            key = k.strip()
            if not key:
                continue
            if not _HEADER_KEY.fullmatch(key):
                raise errors.BadHeaderError(key)
            if key == k and len(_GOOD_KEYS) < 64:
                _GOOD_KEYS.add(k)
            k = key
        value = v.strip()
        if "\r" in value or "\n" in value:
            value = value.translate(_VALUE_NEWLINES)
        parts += (k, ": ", value, "\r\n")
    parts.append("\r\n")
    hdr = "".join(parts).encode()
    return b"HPUB %s %s %d %d\r\n%s%s\r\n" % (
        subject.encode(),
        reply.encode(),
        len(hdr),
        len(hdr) + len(payload),
        hdr,
        payload,
    )


async def publish_many(nc: Client, msgs: list[tuple[str, str, bytes, dict[str, str]]]
                       ) -> list[BaseException | None]:  # fmt: skip
    """Publish ``msgs`` (subject, reply, payload, headers) in one protocol write, each
    checked as ``Client.publish`` checks it; per message None (queued) or the error that
    refused it (a closed or draining connection refuses them all).

    nats-py's ``publish()`` frames each message in Python and may flush after each: about
    a twentieth of the write API's CPU per event in a batch.
    """
    send = getattr(nc, "_send_command", None)
    out: list[BaseException | None] = []
    if send is None:  # pragma: no cover - a nats-py without the internal: public path
        for subject, reply, payload, headers in msgs:
            try:
                await nc.publish(subject, payload, reply=reply, headers=headers)
                out.append(None)
            except Exception as exc:
                out.append(exc)
        return out
    if nc.is_closed:
        return [errors.ConnectionClosedError()] * len(msgs)
    if nc.is_draining_pubs:
        return [errors.ConnectionDrainingError()] * len(msgs)
    frames: list[bytes] = []
    size = 0
    max_payload = nc._max_payload
    for subject, reply, payload, headers in msgs:
        try:
            if (
                not subject
                or _SUBJECT_INVALID.search(subject)
                or (reply and _SUBJECT_INVALID.search(reply))
            ):
                raise errors.BadSubjectError
            if len(payload) > max_payload:
                raise errors.MaxPayloadError
            frames.append(_hpub(subject, reply, payload, headers))
            size += len(payload)
            out.append(None)
        except errors.Error as exc:
            out.append(exc)
    if not frames:
        return out
    limit = nc._max_pending_size
    if not nc.is_connected and (limit <= 0 or size + nc._pending_data_size > limit):
        # reconnecting, and the buffer would overflow: as publish() refuses
        return [x or errors.OutboundBufferLimitError() for x in out]
    nc.stats["out_msgs"] += len(frames)
    nc.stats["out_bytes"] += size
    await send(b"".join(frames))
    if nc._flush_queue is not None and nc._flush_queue.empty():
        await nc._flush_pending()
    return out


def _params(fn: Any) -> list[str]:
    return list(inspect.signature(fn).parameters)


def internals_problems() -> list[str]:
    """What differs from the internals this module was checked against (empty: none)."""
    problems = []
    installed = tuple(int(p) for p in version("nats-py").split(".")[:2])
    low, high = CHECKED_VERSIONS
    if not low <= installed <= high:
        problems.append(f"nats-py {version('nats-py')} is outside the checked "
                        f"{low[0]}.{low[1]}-{high[0]}.{high[1]}")  # fmt: skip
    expected = {
        "_process_msg": ["self", "sid", "subject", "reply", "data", "headers"],
        "_process_headers": ["self", "headers"],
        "_send_command": ["self", "cmd", "priority"],
        "_flush_pending": ["self", "force_flush"],
    }
    for name, params in expected.items():
        fn = getattr(Client, name, None)
        if fn is None:
            problems.append(f"Client.{name} is gone")
        elif not inspect.iscoroutinefunction(fn):
            problems.append(f"Client.{name} is no longer a coroutine function")
        elif _params(fn) != params:
            problems.append(f"Client.{name}{tuple(_params(fn))} was {tuple(params)}")
    if "id" not in _params(Subscription.__init__) or "self._id = id" not in inspect.getsource(
        Subscription.__init__
    ):
        problems.append("Subscription no longer keeps its sid in _id")
    if _params(Parser.parse) != ["self", "data"] or "self._ps" not in inspect.getsource(
        Client.__init__
    ):
        problems.append("Client._ps / Parser.parse(data) changed (FastParser replaces them)")
    return problems
