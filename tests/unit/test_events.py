"""schemas.events: the README example, camelCase, and every rejection with its message."""

from __future__ import annotations

import contextlib
import gc
import json
import uuid
import weakref

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings

from schemas import events
from schemas.events import EventValidationError, decode_event
from schemas.generate import SCHEMA_PATH, render
from tests.hostile import HOSTILE
from tests.support.events import README_EVENT

# Every reason the decoder gives (documented in schemas/README.md).
REASONS = {"malformed_json", "invalid_field", "missing_field", "unknown_field", "unknown_enum",
           "too_large", "too_deep"}  # fmt: skip

BASE = json.loads(README_EVENT)


def with_(**changes: object) -> bytes:
    doc = json.loads(README_EVENT)
    for key, value in changes.items():
        if value is ...:
            doc.pop(key, None)
        else:
            doc[key] = value
    return json.dumps(doc).encode()


def test_readme_example_decodes_unchanged() -> None:
    ev = decode_event(README_EVENT)
    assert ev.tenant_id == "7e4e4e93-94ec-45bd-87ce-88ce3f689e3c"
    assert ev.action == "user.login"
    assert ev.category == "CATEGORY_AUTH" and ev.severity == "SEVERITY_INFO"
    assert (ev.actor.type, ev.actor.id, ev.actor.display_name) == (
        "ACTOR_TYPE_USER", "user-123", "Jane Doe",
    )  # fmt: skip
    assert ev.primary_resource is not None and ev.primary_resource.id == "user-123"
    assert ev.metadata == {"ip": "192.0.2.10"}
    assert ev.id is None and ev.occurred_at is None


def test_readme_changeset_and_write_example() -> None:
    changes = {
        "old_value": {"role": "editor", "active": True},
        "new_value": {"role": "admin", "active": True},
        "changed_fields": ["role"],
    }
    ev = decode_event(with_(action="user.updated", changes=changes))
    assert ev.changes is not None and ev.changes.changed_fields == ["role"]
    assert ev.changes.new_value == {"role": "admin", "active": True}
    # The product page's writeEvent call, as proto3 JSON (lowerCamelCase names).
    write = {
        "tenantId": "acme",
        "action": "security.password_reset",
        "severity": "SEVERITY_SECURITY",
        "actor": {"id": "u-1", "type": "ACTOR_TYPE_USER"},
        "primaryResource": {"id": "u-1", "type": "user"},
    }
    ev = decode_event(json.dumps(write).encode())
    assert ev.tenant_id == "acme" and ev.severity == "SEVERITY_SECURITY"
    assert ev.primary_resource is not None and ev.primary_resource.type == "user"


def test_camel_case_names_everywhere_but_metadata() -> None:
    doc = {
        "tenantId": "t1",
        "action": "doc.updated",
        "actor": {"type": "ACTOR_TYPE_SERVICE", "id": "svc", "displayName": "Billing"},
        "relatedResources": [{"type": "folder", "id": "f1", "displayName": "F"}],
        "changes": {
            "oldValue": {"someKey": 1},
            "newValue": {"someKey": 2},
            "changedFields": ["someKey"],
        },
        "metadata": {"someKey": "kept as sent"},
        "occurredAt": "2026-01-02T03:04:05Z",
        "userAgent": "curl/8",
        "requestId": "r-1",
        "traceId": "tr-1",
    }
    ev = decode_event(json.dumps(doc).encode())
    assert ev.actor.display_name == "Billing"
    assert ev.related_resources[0].display_name == "F"
    assert ev.changes is not None and ev.changes.old_value == {"someKey": 1}
    assert ev.metadata == {"someKey": "kept as sent"}
    assert (ev.user_agent, ev.request_id, ev.trace_id) == ("curl/8", "r-1", "tr-1")
    assert ev.occurred_at is not None and ev.occurred_at.year == 2026


REJECTIONS = [
    (b"{", "malformed_json", "", "malformed JSON"),
    (b"[1]", "invalid_field", "", "JSON object"),
    (with_(tenant_id=...), "missing_field", "tenant_id", "missing required field `tenant_id`"),
    (with_(tenant_id="bad tenant!"), "invalid_field", "tenant_id", "matching regex"),
    (with_(tenant_id="x" * 200), "invalid_field", "tenant_id", "matching regex"),
    (with_(action=""), "invalid_field", "action", "length >= 1"),
    (with_(action="a" * 129), "invalid_field", "action", "length <= 128"),
    (with_(action="drop table;"), "invalid_field", "action", "matching regex"),
    (with_(severity="SEVERITY_LOUD"), "unknown_enum", "severity", "Invalid enum value"),
    (with_(category=3), "invalid_field", "category", "Expected `str`"),
    (with_(actor={"type": "ACTOR_TYPE_ROBOT", "id": "x"}), "unknown_enum", "actor.type", "enum"),
    (with_(actor={"type": "ACTOR_TYPE_UNSPECIFIED", "id": "x"}), "invalid_field", "actor.type",
     "actor.type must be one of"),
    (with_(actor={"type": "ACTOR_TYPE_USER"}), "missing_field", "actor.id", "`id`"),
    (with_(actor={"type": "ACTOR_TYPE_USER", "id": 7}), "invalid_field", "actor.id", "`str`"),
    (with_(id="not-a-uuid"), "invalid_field", "id", "uuid"),
    (with_(occurred_at="2026-01-02T03:04:05"), "invalid_field", "occurred_at", "timezone"),
    (with_(occurred_at="yesterday"), "invalid_field", "occurred_at", "datetime"),
    (with_(description="d" * 4097), "invalid_field", "description", "length <= 4096"),
    (with_(metadata=[1, 2]), "invalid_field", "metadata", "Expected `object`"),
    (with_(metadata={"blob": "x" * 17000}), "too_large", "metadata", "limit is 16384"),
    (with_(related_resources=[{"type": "t", "id": str(i)} for i in range(33)]),
     "invalid_field", "related_resources", "length <= 32"),
    (with_(related_resources=[{"type": "t"}]), "missing_field", "related_resources.0.id", "`id`"),
    (with_(changes={"changed_fields": ["f"] * 257}), "invalid_field", "changes.changed_fields",
     "length <= 256"),
    (with_(unexpected=1), "unknown_field", "unexpected", "unknown field `unexpected`"),
    (with_(seq=5), "unknown_field", "seq", "unknown field"),
    (with_(description="x" * 70_000), "too_large", "", "limit is 65536"),
    (with_(user_agent="u" * 1025), "invalid_field", "user_agent", "length <= 1024"),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "reason", "field", "text"), REJECTIONS)
def test_rejections_name_the_field(raw: bytes, reason: str, field: str, text: str) -> None:
    with pytest.raises(EventValidationError) as info:
        decode_event(raw)
    err = info.value
    assert err.reason == reason
    assert err.field == field
    assert text.lower() in err.message.lower()


def test_convert_event_validates_python_values() -> None:
    ev = events.convert_event({**BASE, "id": str(uuid.UUID(int=1))})
    assert ev.id == uuid.UUID(int=1)
    with pytest.raises(EventValidationError):
        events.convert_event({**BASE, "severity": "NOPE"})


def test_checked_in_json_schema_is_current() -> None:
    assert SCHEMA_PATH.read_text() == render(), "run: python -m schemas.generate"


def test_json_schema_names_enums_and_limits() -> None:
    schema = json.loads(render())
    props = schema["$defs"]["AuditEvent"]["properties"]
    assert props["description"]["maxLength"] == events.MAX_DESCRIPTION_LEN
    assert "SEVERITY_SECURITY" in props["severity"]["enum"]
    assert schema["$defs"]["AuditEvent"]["additionalProperties"] is False


def test_generated_protobuf_modules_are_current(tmp_path) -> None:
    from schemas.codegen import ROOT, generate

    for name, text in generate(tmp_path).items():
        assert (ROOT / "audit" / "v1" / name).read_text() == text, "run: python -m schemas.codegen"


# -- hostile input: an event or a validation error, nothing else ----------------------------
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=HOSTILE)
def test_any_bytes_decode_to_an_event_or_a_validation_error(raw: bytes) -> None:
    try:
        event = decode_event(raw)
    except EventValidationError as exc:
        assert exc.reason in REASONS and exc.message
        return
    assert isinstance(event, events.AuditEvent)
    # What decodes is storable: valid UTF-8, no NUL, re-encodable.
    text = msgspec.json.encode(event).decode("utf-8")
    assert "\\u0000" not in text


@pytest.mark.parametrize("depth", [events.MAX_DEPTH - 1, events.MAX_DEPTH, events.MAX_DEPTH + 1,
                                   20_000])  # fmt: skip
def test_depth_limit_is_exact_and_checked_before_decoding(depth: int) -> None:
    # The event object is level 1, metadata level 2, then depth - 2 arrays.
    nested = b'{"a":' + b"[" * (depth - 2) + b"1" + b"]" * (depth - 2) + b"}"
    raw = with_(metadata={}).replace(b'"metadata": {}', b'"metadata": ' + nested)
    if depth <= events.MAX_DEPTH:
        assert decode_event(raw).metadata
    else:
        with pytest.raises(EventValidationError) as info:
            decode_event(raw)
        assert info.value.reason == "too_deep"


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    raw = with_(description="[" * 200 + "{" * 200, metadata={"k": ']]]}}}\\"[[[' * 50})
    assert decode_event(raw).description.startswith("[[[")


@pytest.mark.parametrize("raw", [b"[1, 2", b'{"unknown_field": 1,}', b'{"tenantId": 5,}'])
def test_inputs_that_crashed_the_decoder_are_malformed_json(raw: bytes) -> None:
    with pytest.raises(EventValidationError) as info:
        decode_event(raw)
    assert info.value.reason == "malformed_json"


def test_nul_anywhere_is_refused_but_an_escaped_backslash_u0000_is_text() -> None:
    with pytest.raises(EventValidationError, match="NUL"):
        decode_event(with_(metadata={"k": "a\x00b"}))
    assert decode_event(with_(description="\\u0000")).description == "\\u0000"


def test_invalid_utf8_is_malformed_json() -> None:
    raw = with_(description="PLACEHOLDER").replace(b"PLACEHOLDER", b"\xed\xa0\x80")
    with pytest.raises(EventValidationError) as info:
        decode_event(raw)
    assert info.value.reason == "malformed_json" and "UTF-8" in info.value.message


@settings(max_examples=100, deadline=None)
@given(HOSTILE)
def test_an_invalid_event_leaves_nothing_for_the_cyclic_collector(raw: bytes) -> None:
    """Decoding any event, invalid ones of every kind included, creates no reference
    cycle: the worker runs with the cyclic collector tuned to run rarely, and a cycle
    through a saved exception's traceback held every caller's frame, the worker's whole
    chunk of messages with it (~300 KB per invalid event: a drain's RSS grew with each)."""

    class Held:  # stands for what a caller's frame holds
        pass

    def caller() -> weakref.ref[Held]:
        held = Held()
        with contextlib.suppress(EventValidationError):
            decode_event(raw)
        return weakref.ref(held)

    gc.collect()
    gc.disable()
    try:
        assert caller()() is None, "the caller's frame outlived the call (a cycle)"
    finally:
        gc.enable()
