"""Hypothesis strategies for hostile input: everything a producer could put on the wire.

Shared by the decoder's and the pipeline stage's property tests (and usable against the
write APIs). Each strategy yields bytes meant to be one event.
"""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import strategies as st

from tests.support.events import README_EVENT

BASE: dict[str, Any] = json.loads(README_EVENT)
FULL: dict[str, Any] = {
    **BASE,
    "id": "0192f1c4-6a5e-7c3b-9d2e-1f0a2b3c4d5e",
    "occurred_at": "2026-11-26T04:57:36.123456Z",
    "related_resources": [{"type": "team", "id": "t-1", "display_name": "Team"}],
    "changes": {
        "old_value": {"role": "editor", "active": True},
        "new_value": {"role": "admin", "active": True},
        "changed_fields": ["role"],
    },
    "ip": "192.0.2.10",
    "user_agent": "curl/8",
    "request_id": "r-1",
    "trace_id": "t-1",
}
_CAMEL = re.compile(r"_([a-z])")


def camel(name: str) -> str:
    return _CAMEL.sub(lambda m: m.group(1).upper(), name)


def camel_doc(doc: Any, depth: int = 0) -> Any:
    """lowerCamelCase keys at the Struct levels (as proto3 JSON writers send)."""
    if isinstance(doc, dict) and depth < 2:
        return {camel(k): (v if k in ("metadata",) else camel_doc(v, depth + 1))
                for k, v in doc.items()}  # fmt: skip
    if isinstance(doc, list) and depth < 2:
        return [camel_doc(v, depth + 1) for v in doc]
    return doc


VALID_DOCS = st.sampled_from([BASE, FULL, camel_doc(BASE), camel_doc(FULL)])
VALID_BYTES = VALID_DOCS.map(lambda d: json.dumps(d).encode())

_text = st.text(max_size=40) | st.sampled_from(
    ["\ud800", "\udfff", "\x00", "a\x00b", "ACTOR_TYPE_ROBOT", "SEVERITY_INFO", "", " " * 300,
     "x" * 5000, "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "1900-01-01T00:00:00Z",
     "2026-02-30T00:00:00Z", "not-a-uuid", "A" * 129]
)  # fmt: skip
_numbers = st.integers() | st.floats(allow_nan=False) | st.sampled_from(
    [10**40, -(10**40), 2**63, 2**64, 1e308]
)  # fmt: skip
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | _numbers | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)


def _dumps(doc: Any) -> bytes:
    # Lone surrogates and huge ints are valid to write as JSON text (escaped / digits).
    return json.dumps(doc, ensure_ascii=True).encode()


@st.composite
def wrong_shapes(draw: st.DrawFn) -> bytes:
    """A valid event with fields replaced, added or removed; either naming style."""
    doc = dict(draw(st.sampled_from([BASE, FULL])))
    for _ in range(draw(st.integers(1, 4))):
        key = draw(st.sampled_from([*FULL, "seq", "hash", "unknown", "actor.type"]))
        action = draw(st.sampled_from(["set", "drop", "nest"]))
        if action == "drop":
            doc.pop(key, None)
        elif action == "nest" and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], draw(_text): draw(JSON_VALUES)}
        else:
            doc[key] = draw(JSON_VALUES)
    if draw(st.booleans()):
        doc = camel_doc(doc)
    return _dumps(doc)


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    """Truncations and byte flips of a valid event."""
    raw = bytearray(draw(VALID_BYTES))
    if draw(st.booleans()):
        raw = raw[: draw(st.integers(0, len(raw)))]
    for _ in range(draw(st.integers(0, 4))):
        if raw:
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    return bytes(raw)


@st.composite
def deep(draw: st.DrawFn) -> bytes:
    """metadata (or the whole document) nested up to tens of thousands of levels."""
    n = draw(st.integers(1, 30_000) | st.sampled_from([31, 32, 33, 64]))
    opener, closer = draw(st.sampled_from([(b'{"a":', b"}"), (b"[", b"]")]))
    inner = opener * n + b"1" + closer * n
    if draw(st.booleans()):
        return inner
    head = _dumps({**BASE, "metadata": {}})[:-2]  # ... "metadata": {
    return head[: head.rindex(b"{")] + (b'{"x":' + inner + b"}" if opener == b"[" else inner) + b"}"


@st.composite
def bad_unicode(draw: st.DrawFn) -> bytes:
    """Invalid UTF-8 and escaped lone surrogates in any string field."""
    raw = draw(VALID_BYTES)
    bad = draw(st.sampled_from([b"\xed\xa0\x80", b"\xff", b"\xc3", b"\\ud800", b"\\udc00x",
                                b"\\u0000", b"\x00", b"\\uZZZZ"]))  # fmt: skip
    quotes = [i for i, c in enumerate(raw) if c == 0x22]
    at = draw(st.sampled_from(quotes)) + 1
    return raw[:at] + bad + raw[at:]


HOSTILE = st.one_of(
    st.binary(max_size=300),
    mangled(),
    wrong_shapes(),
    deep(),
    bad_unicode(),
    JSON_VALUES.map(_dumps),
    VALID_BYTES,
)
