"""pipeline.nats_fast: the nats-py internals it relies on are still there, as checked.

Fails loudly on a nats-py upgrade that moves them: read the new release's
``nats/aio/client.py`` and ``subscription.py``, adapt ``pipeline/nats_fast.py``, then widen
``CHECKED_VERSIONS`` and the pin in ``pyproject.toml`` together.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import nats.errors
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.protocol.parser import Parser

from pipeline import nats_fast


def test_the_installed_nats_py_has_the_internals_the_fast_path_uses() -> None:
    assert nats_fast.internals_problems() == []


@pytest.mark.parametrize("name", ["_process_msg", "_process_headers", "_send_command"])
def test_a_changed_internal_is_reported(monkeypatch, name: str) -> None:
    async def changed(self, something_else) -> None:
        pass

    monkeypatch.setattr(Client, name, changed)
    assert any(f"Client.{name}" in p for p in nats_fast.internals_problems())


def test_a_nats_py_outside_the_checked_range_is_reported(monkeypatch) -> None:
    monkeypatch.setattr(nats_fast, "version", lambda _: "2.99.0")
    assert any("outside the checked" in p for p in nats_fast.internals_problems())


# ---- the compiled frame scanner against nats-py's own parser -----------------------------
ACK_SUBJECTS = st.one_of(
    st.builds("$JS.ACK.AUDIT.pipeline.{}.{}.{}.{}.{}".format, st.integers(1, 9),
              st.integers(1, 2**64), st.integers(1, 2**63), st.integers(0, 2**64),
              st.integers(0, 99)),
    st.builds("$JS.ACK.dom.acc.AUDIT.pipeline.{}.{}.{}.{}.{}.tok".format, st.integers(1, 9),
              st.integers(1, 2**40), st.integers(1, 2**40), st.integers(1, 2**63),
              st.integers(0, 9)),
    st.sampled_from(["$JS.ACK.a.b.1.+2.3.4.5", "$JS.ACK.a.b.1.2_0.3.4.5", "x.y",
                     "$JS.ACK.é.b.1.2.3.4.5"]),
)  # fmt: skip
PAYLOADS = st.binary(max_size=40) | st.sampled_from([b"", b"\r\n", b"MSG x 1 2\r\n", b"\xff\xfe"])
# Header lines as producers write them, and the odd ones (tabs, spaces inside names,
# no colon, empty names, non-ASCII, lone CR or LF, repeated names, empty values).
_HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12)
_HEADER_LINE = st.one_of(
    st.builds(
        "{}: {}".format,
        st.sampled_from(["Nats-Msg-Id", "Audit-Idempotency-Key", "X"]),
        _HEADER_TEXT,
    ),
    st.builds(
        "{}{}:{}{}".format,
        _HEADER_TEXT,
        st.sampled_from(["", " ", "  "]),
        st.sampled_from(["", " ", "\t"]),
        _HEADER_TEXT,
    ),
    st.sampled_from(
        [
            "no colon",
            ": empty name",
            "A B: inner space",
            "\tTab: x",
            "K: \t v \t",
            "Ünï: côdé",
            "K: \udcff",
            "K: a\rb",
            "K: a\nb",
            "",
            "K:",
            "K: a:b",
            "K:  v  ",
            "  K  :v",
            "Nats-Msg-Id:   id-1 ",
            "K: v w",
        ]
    ),
).map(lambda line: line.encode("utf-8", "surrogateescape"))
_PLAIN_HEADERS = st.lists(_HEADER_LINE, min_size=0, max_size=5).map(
    lambda lines: b"NATS/1.0\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"
)
HEADERS = st.one_of(
    _PLAIN_HEADERS,
    st.sampled_from([
        b"NATS/1.0\r\nNats-Msg-Id: k1\r\nAudit-Idempotency-Key: k2\r\n\r\n",
        b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 3\r\n\r\n",
        b"NATS/1.0 100 Idle Heartbeat\r\n\r\n", b"NATS/1.0 409 Leadership Change\r\n\r\n",
        b"NATS/1.0\r\nK: v\r\n", b"NATS/1.0\r\n\r\n", b"NATS/1.0  \r\nK: v\r\n\r\n",
    ]),
)  # fmt: skip
OURS, OTHER = 7, 9


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["msg", "msg", "msg", "hmsg", "status", "other", "line"]))
    sid = OTHER if kind == "other" else OURS
    subject = draw(st.sampled_from(["audit.events", "audit.events.acme", "a"]))
    data = draw(PAYLOADS)
    if kind == "line":
        return draw(st.sampled_from([b"PING\r\n", b"PONG\r\n", b"+OK\r\n", b"INFO {}\r\n"]))
    if kind in ("msg", "other"):
        reply = draw(ACK_SUBJECTS)
        sep = draw(st.sampled_from([" ", "  ", "\t"]))
        return f"MSG{sep}{subject} {sid} {reply} {len(data)}\r\n".encode() + data + b"\r\n"
    headers = draw(HEADERS)
    reply = "" if kind == "status" else " " + draw(ACK_SUBJECTS)
    head = f"HMSG {subject} {sid}{reply} {len(headers)} {len(headers) + len(data)}\r\n"
    return head.encode() + headers + data + b"\r\n"


def _run(stream: bytes, cuts: list[int], batch: bool) -> tuple[list[Any], list[Any]]:
    """What a JetStream source delivers from ``stream`` read in pieces, and every other
    thing the client saw, with (``batch``) or without the compiled scanner."""
    from infra.settings import load_settings
    from pipeline.source_nats import JetStreamSource

    seen: list[Any] = []

    class Client(nats_fast.FastClient):
        async def _process_msg(self, sid, subject, reply, data, headers) -> None:  # type: ignore[no-untyped-def]
            if sid != OURS:
                seen.append(("msg", sid, subject, reply, data, headers))
            await super()._process_msg(sid, subject, reply, data, headers)

        async def _process_ping(self) -> None:
            seen.append("ping")

        async def _process_pong(self) -> None:
            seen.append("pong")

        async def _process_info(self, info, initial_connection=False) -> None:  # type: ignore[no-untyped-def]
            seen.append(("info", info))

    async def go() -> list[Any]:
        nc = Client()
        source = JetStreamSource(nc, load_settings({}), max_inflight=10**9)

        class Sub:
            _id = OURS

        nc.register_sink(Sub, source._on_raw, source._on_batch if batch else None)  # type: ignore[arg-type]
        parser = nc._ps if batch else Parser(nc)
        at = 0
        try:
            for cut in [*cuts, len(stream)]:
                await parser.parse(stream[at : at + cut])
                at += cut
            await parser.parse(stream[at:])
        except Exception as exc:  # an odd reply subject: nats-py's read loop ends on it
            seen.append(type(exc).__name__)
        return list(source._deliveries._buffer)

    delivered = asyncio.run(go())
    return delivered, seen


@pytest.mark.skipif(nats_fast.scan_msgs is None and os.environ.get("CI") != "true",
                    reason="the C extension pipeline._fastpath is not built")  # fmt: skip
@settings(max_examples=600, deadline=None)
@given(st.lists(frames(), max_size=12), st.lists(st.integers(1, 300), max_size=8))
def test_scanned_frames_deliver_exactly_what_nats_py_parses(stream: list[bytes],
                                                            cuts: list[int]) -> None:  # fmt: skip
    """Any mix of the source's frames (with or without headers, statuses, odd reply
    subjects), other subscriptions' frames and protocol lines, cut anywhere: the same
    messages, in the same order, and everything else seen the same."""
    data = b"".join(stream)
    assert _run(data, cuts, batch=True) == _run(data, cuts, batch=False)


@pytest.mark.skipif(nats_fast.scan_msgs is None and os.environ.get("CI") != "true",
                    reason="the C extension pipeline._fastpath is not built")  # fmt: skip
def test_plain_jetstream_messages_never_reach_the_per_message_path(monkeypatch) -> None:
    from pipeline.source_nats import JetStreamSource

    async def refuse(*args: object) -> None:
        raise AssertionError("a plain JetStream message took the per-message path")

    monkeypatch.setattr(JetStreamSource, "_on_raw", refuse)
    reply = "$JS.ACK.AUDIT.pipeline.1.{}.{}.1795701600123456789.0"
    stream = b"".join(f"MSG audit.events {OURS} {reply.format(i, i)} 2\r\nhi\r\n".encode()
                      for i in range(1, 4))  # fmt: skip
    delivered, seen = _run(stream, [10, 7], batch=True)
    assert [m.stream_seq for m in delivered] == [1, 2, 3] and seen == []
    assert delivered[0].timestamp_ns == 1795701600123456789


# any size, and the edge of INT64_MAX
_SIZES = st.one_of(st.integers(0, 2**64), st.integers(2**63 - 80, 2**63 + 8))


@pytest.mark.skipif(nats_fast.scan_msgs is None and os.environ.get("CI") != "true",
                    reason="the C extension pipeline._fastpath is not built")  # fmt: skip
@settings(max_examples=300, deadline=None)
@given(st.booleans(), _SIZES, _SIZES, st.binary(max_size=64))
def test_frame_sizes_of_any_magnitude_never_read_past_the_buffer(
    headers: bool, hlen: int, total: int, rest: bytes
) -> None:
    """A MSG/HMSG line from a corrupt or hostile peer may claim any size (up to and past
    2**63): the scanner never reads outside the bytes it has (a size near INT64_MAX once
    overflowed its frame length and read far past the buffer). It takes only frames whose
    bytes are all there, or leaves the line to nats-py's parser."""
    assert nats_fast.scan_msgs is not None
    line = (b"HMSG s 1 %d %d\r\n" % (hlen, total)) if headers else (b"MSG s 1 %d\r\n" % total)
    buf = bytearray(line + rest)
    consumed, frames, other = nats_fast.scan_msgs(buf, {1: None})
    # other: -1 waits for more bytes, else how many bytes of line nats-py reads next
    assert 0 <= consumed <= len(buf) and (other == -1 or 0 <= other <= len(buf) - consumed)
    if frames:  # a whole frame: its declared size fits in what was there
        assert total <= len(rest) and consumed >= len(line) + total


_PLAIN_LINE = st.builds(
    "{}{}:{}{}{}".format, st.sampled_from(["", " ", "  "]),
    st.text(st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters=":"),
            min_size=1, max_size=8),
    st.sampled_from(["", " ", "   "]), _HEADER_TEXT, st.sampled_from(["", " ", "  "]),
).map(str.encode)  # fmt: skip


@pytest.mark.skipif(nats_fast.scan_msgs is None and os.environ.get("CI") != "true",
                    reason="the C extension pipeline._fastpath is not built")  # fmt: skip
@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(_PLAIN_LINE, _PLAIN_LINE, _PLAIN_LINE, _HEADER_LINE), max_size=6),
       st.booleans())  # fmt: skip
def test_header_blocks_are_read_as_nats_py_reads_them(lines: list[bytes], final: bool) -> None:
    """A JetStream message's header block, plain (the compiled scanner reads it: spaces
    around names and values, repeated names, empty values) or not (tabs, no colon,
    non-ASCII, a missing final line: left to nats-py): the same Message either way."""
    block = (
        b"NATS/1.0\r\n" + b"".join(line + b"\r\n" for line in lines) + (b"\r\n" if final else b"")
    )
    reply = "$JS.ACK.AUDIT.pipeline.1.7.3.1795701600123456789.0"
    frame = (f"HMSG audit.events {OURS} {reply} {len(block)} {len(block) + 2}\r\n".encode()
             + block + b"hi\r\n")  # fmt: skip
    assert _run(frame, [], batch=True) == _run(frame, [], batch=False)


@pytest.mark.skipif(nats_fast.scan_msgs is None and os.environ.get("CI") != "true",
                    reason="the C extension pipeline._fastpath is not built")  # fmt: skip
def test_messages_with_plain_headers_never_reach_the_per_message_path(monkeypatch) -> None:
    """The README's producers set Nats-Msg-Id or Audit-Idempotency-Key, the write API
    both: such messages are scanned in C too, headers and all."""
    from pipeline.source_nats import JetStreamSource

    async def refuse(*args: object) -> None:
        raise AssertionError("a message with plain headers took the per-message path")

    monkeypatch.setattr(JetStreamSource, "_on_raw", refuse)
    block = b"NATS/1.0\r\nNats-Msg-Id: acme:e1\r\nAudit-Idempotency-Key: k-1\r\n\r\n"
    reply = "$JS.ACK.AUDIT.pipeline.1.{}.{}.1795701600123456789.0"
    stream = b"".join(f"HMSG audit.events.acme {OURS} {reply.format(i, i)} {len(block)} "
                      f"{len(block) + 2}\r\n".encode() + block + b"hi\r\n"
                      for i in range(1, 4))  # fmt: skip
    delivered, seen = _run(stream, [9], batch=True)
    assert [m.stream_seq for m in delivered] == [1, 2, 3] and seen == []
    assert delivered[0].headers == {"Nats-Msg-Id": "acme:e1", "Audit-Idempotency-Key": "k-1"}
    assert delivered[0].size == len(block) + 2


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=8) | st.sampled_from(["Nats-Msg-Id", " K ", "K", ""]),
                       st.text(max_size=10)),
       st.binary(max_size=20))  # fmt: skip
def test_publish_frames_are_what_nats_py_sends(headers: dict[str, str], payload: bytes) -> None:
    """publish_many frames a message exactly as nats-py's publish() would (header names
    stripped, empty ones skipped, invalid ones refused; values stripped, CR/LF to spaces)."""
    sent: list[bytes] = []

    async def capture(cmd: bytes, priority: bool = False) -> None:
        sent.append(cmd)

    nc = Client()
    nc._send_command = capture  # type: ignore[method-assign]
    try:
        asyncio.run(nc._send_publish("a.b", "_INBOX.x.1", payload, len(payload), headers))
        theirs: bytes | str = sent[-1]
    except nats.errors.BadHeaderError:
        theirs = "refused"
    try:
        ours: bytes | str = nats_fast._hpub("a.b", "_INBOX.x.1", payload, headers)
    except nats.errors.BadHeaderError:
        ours = "refused"
    assert ours == theirs
