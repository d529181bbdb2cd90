"""msgspec Structs mirroring ``schemas/audit/v1/audit.proto`` and the one decoder for events.

Every Python boundary (NATS messages, REST bodies, Connect JSON) decodes events with
:func:`decode_event`. It accepts the README's snake_case JSON unchanged and, like proto3
JSON parsers, lowerCamelCase names too. Invalid input raises :class:`EventValidationError`
whose ``field`` is the dotted path of the offending field and whose message says what is
wrong. Limits are module constants, documented in ``schemas/README.md``.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Final, Literal, get_args

import msgspec

# ---- limits (documented in schemas/README.md; tests cover each) -----------------------
MAX_EVENT_BYTES: Final = 64 * 1024
MAX_METADATA_BYTES: Final = 16 * 1024
MAX_CHANGES_BYTES: Final = 32 * 1024
MAX_RELATED_RESOURCES: Final = 32
MAX_CHANGED_FIELDS: Final = 256
MAX_ID_LEN: Final = 256
MAX_TYPE_LEN: Final = 64
MAX_NAME_LEN: Final = 256
MAX_ACTION_LEN: Final = 128
MAX_DESCRIPTION_LEN: Final = 4096
MAX_USER_AGENT_LEN: Final = 1024
MAX_CONTEXT_LEN: Final = 128
# Deepest nesting of objects and arrays in one event (the event object itself is level 1;
# ``metadata`` is level 2). Checked on the raw bytes before decoding, so no input can make
# a decoder recurse deeply.
MAX_DEPTH: Final = 32
TENANT_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
ACTION_PATTERN: Final = r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$"


CATEGORIES: Final = (
    "CATEGORY_UNSPECIFIED",
    "CATEGORY_AUTH",  # logins, logouts, MFA, sessions
    "CATEGORY_ACCESS_CONTROL",  # roles, permissions, grants
    "CATEGORY_DATA",  # reads and changes of customer data
    "CATEGORY_CONFIGURATION",  # settings and configuration changes
    "CATEGORY_ADMIN",  # administrative actions
    "CATEGORY_BILLING",
    "CATEGORY_SECURITY",  # security-relevant findings and changes
    "CATEGORY_SYSTEM",  # system and background jobs
    "CATEGORY_INTEGRATION",  # API keys, webhooks, third parties
    "CATEGORY_COMPLIANCE",  # exports, retention, legal holds
)
SEVERITIES: Final = (
    "SEVERITY_UNSPECIFIED",
    "SEVERITY_DEBUG",
    "SEVERITY_INFO",
    "SEVERITY_NOTICE",
    "SEVERITY_WARNING",
    "SEVERITY_ERROR",
    "SEVERITY_CRITICAL",
    "SEVERITY_SECURITY",
)
ACTOR_TYPES: Final = (
    "ACTOR_TYPE_UNSPECIFIED",
    "ACTOR_TYPE_USER",  # interactive human actions
    "ACTOR_TYPE_SYSTEM",  # the product itself
    "ACTOR_TYPE_SERVICE",  # machine-to-machine calls
    "ACTOR_TYPE_API_KEY",
)

# Enums are their proto names (strings): msgspec validates Literal values in C, and the
# names are what JSON carries, what is stored and what is hashed.
Category = Literal[
    "CATEGORY_UNSPECIFIED", "CATEGORY_AUTH", "CATEGORY_ACCESS_CONTROL", "CATEGORY_DATA",
    "CATEGORY_CONFIGURATION", "CATEGORY_ADMIN", "CATEGORY_BILLING", "CATEGORY_SECURITY",
    "CATEGORY_SYSTEM", "CATEGORY_INTEGRATION", "CATEGORY_COMPLIANCE",
]  # fmt: skip
Severity = Literal[
    "SEVERITY_UNSPECIFIED", "SEVERITY_DEBUG", "SEVERITY_INFO", "SEVERITY_NOTICE",
    "SEVERITY_WARNING", "SEVERITY_ERROR", "SEVERITY_CRITICAL", "SEVERITY_SECURITY",
]  # fmt: skip
ActorType = Literal[
    "ACTOR_TYPE_UNSPECIFIED", "ACTOR_TYPE_USER", "ACTOR_TYPE_SYSTEM", "ACTOR_TYPE_SERVICE",
    "ACTOR_TYPE_API_KEY",
]  # fmt: skip


NonEmptyId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LEN)]
TypeName = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TYPE_LEN)]
DisplayName = Annotated[str, msgspec.Meta(max_length=MAX_NAME_LEN)]
ContextStr = Annotated[str, msgspec.Meta(max_length=MAX_CONTEXT_LEN)]
TenantId = Annotated[
    str,
    msgspec.Meta(
        pattern=TENANT_ID_PATTERN,
        description="1-128 characters: letters, digits and . _ : @ - (a UUID fits)",
    ),
]
Action = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=MAX_ACTION_LEN,
        pattern=ACTION_PATTERN,
        description="dotted verb such as user.login; stored lower-cased",
    ),
]
Timestamp = Annotated[datetime, msgspec.Meta(tz=True)]

# gc=False: these never form reference cycles, and untracked objects keep the
# collector off the ingest hot path.
_STRUCT = {"frozen": True, "kw_only": True, "forbid_unknown_fields": True, "gc": False}


class Actor(msgspec.Struct, **_STRUCT):
    """The entity that triggered the action."""

    type: ActorType
    id: NonEmptyId
    display_name: DisplayName = ""


class ResourceRef(msgspec.Struct, **_STRUCT):
    """A polymorphic reference to an object the action touched."""

    type: TypeName
    id: NonEmptyId
    display_name: DisplayName = ""


class ChangeSet(msgspec.Struct, **_STRUCT):
    """The state before and after an update."""

    old_value: dict[str, Any] | None = None
    new_value: dict[str, Any] | None = None
    changed_fields: Annotated[
        list[Annotated[str, msgspec.Meta(max_length=MAX_NAME_LEN)]],
        msgspec.Meta(max_length=MAX_CHANGED_FIELDS),
    ] = []


class AuditEvent(msgspec.Struct, **_STRUCT):
    """One audit event as producers send it (input side of proto ``AuditEvent``).

    ``id``, ``occurred_at`` and ``received_at`` may be absent; the pipeline's enrich stage
    fills them in. ``seq`` and ``hash`` are output-only and refused on input.
    """

    tenant_id: TenantId
    action: Action
    actor: Actor
    id: uuid.UUID | None = None
    category: Category = "CATEGORY_UNSPECIFIED"
    severity: Severity = "SEVERITY_UNSPECIFIED"
    primary_resource: ResourceRef | None = None
    related_resources: Annotated[
        list[ResourceRef], msgspec.Meta(max_length=MAX_RELATED_RESOURCES)
    ] = []
    description: Annotated[str, msgspec.Meta(max_length=MAX_DESCRIPTION_LEN)] = ""
    metadata: dict[str, Any] = {}
    changes: ChangeSet | None = None
    occurred_at: Timestamp | None = None
    received_at: Timestamp | None = None
    ip: ContextStr = ""
    user_agent: Annotated[str, msgspec.Meta(max_length=MAX_USER_AGENT_LEN)] = ""
    request_id: ContextStr = ""
    trace_id: ContextStr = ""


class EventValidationError(ValueError):
    """An event failed decoding or validation.

    Attributes:
        field: dotted path of the offending field (``""`` for the whole event).
        reason: short machine-readable code (``malformed_json``, ``invalid_field``, ...).
    """

    def __init__(self, message: str, *, field: str = "", reason: str = "invalid_field") -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.reason = reason


_event_decoder: Final = msgspec.json.Decoder(AuditEvent)
_any_decoder: Final = msgspec.json.Decoder()
_encoder: Final = msgspec.json.Encoder(order="sorted")
_PATH_RE: Final = re.compile(r" - at `\$\.?(.*)`$")
_FIELD_RE: Final = re.compile(r"field `([^`]+)`")
_CAMEL_RE: Final = re.compile(r"(?<!^)(?=[A-Z])")

# Which nested keys hold Structs (whose keys get snake_cased) in the camelCase path.
_NESTED: Final[dict[str, str]] = {
    "actor": "obj",
    "primary_resource": "obj",
    "related_resources": "list",
    "changes": "changes",
}


def _snake(name: str) -> str:
    return _CAMEL_RE.sub("_", name).lower()


def _snake_keys(obj: Any, nested: bool = True) -> Any:
    """Rename lowerCamelCase keys to snake_case at Struct levels only (never in metadata)."""
    if not isinstance(obj, dict):
        return obj
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = _snake(key) if isinstance(key, str) else key
        kind = _NESTED.get(name) if nested else None
        if kind == "obj":
            value = _snake_keys(value, nested=False)
        elif kind == "list" and isinstance(value, list):
            value = [_snake_keys(v, nested=False) for v in value]
        elif kind == "changes" and isinstance(value, dict):
            value = {_snake(k): v for k, v in value.items()}
        out[name] = value
    return out


def _field_from(msg: str) -> str:
    path = ""
    m = _PATH_RE.search(msg)
    if m:
        path = re.sub(r"\[(\d+)\]", r".\1", m.group(1))
    f = _FIELD_RE.search(msg)
    if f and ("missing required field" in msg or "unknown field" in msg):
        path = f"{path}.{f.group(1)}" if path else f.group(1)
    return path


def _validation_error(exc: msgspec.ValidationError) -> EventValidationError:
    msg = str(exc)
    reason = "missing_field" if "missing required field" in msg else "invalid_field"
    if "unknown field" in msg:
        reason = "unknown_field"
    elif "Invalid enum value" in msg:
        reason = "unknown_enum"
    return EventValidationError(msg, field=_field_from(msg), reason=reason)


# A JSON string (possessive: no backtracking) or a bracket; used only by the depth scan.
_DEPTH_TOKEN: Final = re.compile(rb'"(?:[^"\\]++|\\.)*+"|[\[\]{}]')
_OPENERS: Final = frozenset(b"[{")


def check_depth(raw: bytes) -> None:
    """Refuse JSON nested deeper than :data:`MAX_DEPTH` (brackets inside strings ignored).

    Linear in the input and never recursive. Events with few brackets (nearly all) are
    passed after two C-speed counts.

    Raises:
        EventValidationError: reason ``too_deep``.
    """
    if raw.count(b"{") + raw.count(b"[") <= MAX_DEPTH:
        return
    depth = 0
    for m in _DEPTH_TOKEN.finditer(raw):
        c = m.group()[0]
        if c in _OPENERS:
            depth += 1
            if depth > MAX_DEPTH:
                raise EventValidationError(
                    f"JSON is nested more than {MAX_DEPTH} levels deep", reason="too_deep"
                )
        elif c != 0x22:  # a closing bracket (0x22 is a string)
            depth -= 1


def _decode_struct(raw: bytes) -> AuditEvent:
    try:
        return _event_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        # Kept without its traceback: that holds this frame (whose ``first`` would point
        # back: a reference cycle only the cyclic GC frees) and, through ``f_back``, every
        # caller's, e.g. the worker's whole chunk of messages in ``prepare_batch``.
        first = exc.with_traceback(None)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise _malformed(exc) from exc
    # Slow path: maybe lowerCamelCase (proto3 JSON) names. Only tried when the fast one
    # failed, and every way it can fail is named: the typed decoder may stop at a bad field
    # before reaching malformed bytes further on.
    try:
        generic = _any_decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise _malformed(exc) from exc
    except msgspec.ValidationError:
        raise _validation_error(first) from first
    if not isinstance(generic, dict):
        raise EventValidationError("an event must be a JSON object", reason="invalid_field")
    renamed = _snake_keys(generic)
    if renamed == generic:
        raise _validation_error(first) from first
    try:
        return msgspec.convert(renamed, AuditEvent)
    except msgspec.ValidationError as exc:
        raise _validation_error(exc) from exc


def _malformed(exc: Exception) -> EventValidationError:
    if isinstance(exc, UnicodeDecodeError):
        return EventValidationError(f"malformed JSON: invalid UTF-8 ({exc.reason} at byte "
                                    f"{exc.start})", reason="malformed_json")  # fmt: skip
    return EventValidationError(f"malformed JSON: {exc}", reason="malformed_json")


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def check_limits(event: AuditEvent) -> None:
    """Enforce the rules msgspec's type constraints cannot express.

    Raises:
        EventValidationError: naming the field.
    """
    if event.actor.type == "ACTOR_TYPE_UNSPECIFIED":
        raise EventValidationError(
            "actor.type must be one of ACTOR_TYPE_USER, ACTOR_TYPE_SYSTEM, "
            "ACTOR_TYPE_SERVICE, ACTOR_TYPE_API_KEY",
            field="actor.type",
        )
    if event.metadata:
        size = len(_encoder.encode(event.metadata))
        if size > MAX_METADATA_BYTES:
            raise EventValidationError(
                f"metadata is {size} bytes encoded; the limit is {MAX_METADATA_BYTES}",
                field="metadata",
                reason="too_large",
            )
    if event.changes is not None:
        size = len(_encoder.encode(event.changes))
        if size > MAX_CHANGES_BYTES:
            raise EventValidationError(
                f"changes is {size} bytes encoded; the limit is {MAX_CHANGES_BYTES}",
                field="changes",
                reason="too_large",
            )


def decode_event(raw: bytes | memoryview) -> AuditEvent:
    """Decode and validate one event from JSON bytes.

    Args:
        raw: the JSON object of one event, as published to ``audit.events``.

    Returns:
        The validated :class:`AuditEvent` (not yet enriched).

    Raises:
        EventValidationError: with the field path and a message saying what is wrong.
    """
    if len(raw) > MAX_EVENT_BYTES:
        raise EventValidationError(
            f"event is {len(raw)} bytes; the limit is {MAX_EVENT_BYTES}",
            reason="too_large",
        )
    if not isinstance(raw, bytes):
        raw = bytes(raw)
    check_depth(raw)
    event = _decode_struct(raw)
    # PostgreSQL cannot store U+0000 in text or jsonb; the escape is rare, so the exact
    # (slower) check runs only when the bytes hold one.
    if b"\\u0000" in raw and _has_nul(msgspec.to_builtins(event)):
        raise EventValidationError(
            "strings may not contain U+0000 (NUL): PostgreSQL cannot store it",
            reason="invalid_field",
        )
    check_limits(event)
    return event


class _KnownNamesEvent(AuditEvent):
    """:class:`AuditEvent` without the ``tenant_id``/``action`` patterns: decoded only for
    values a full decode already accepted (:func:`decode_parts`), where the patterns (two
    regular expressions run by Python's ``re``, half of the decoding time) hold already."""

    tenant_id: str
    action: str


_known_decoder: Final = msgspec.json.Decoder(_KnownNamesEvent)
# For pipeline._fastpath, which decodes and encodes exactly as decode_parts does.
KNOWN_NAMES_DECODER: Final = _known_decoder
SORTED_ENCODER: Final = _encoder
# Tenant ids and actions a full decode accepted; bounded (cleared when full).
KNOWN_LIMIT: Final = 65_536
KNOWN_TENANTS: Final[set[str]] = set()
KNOWN_ACTIONS: Final[set[str]] = set()
_UNSPECIFIED_ACTOR: Final = "ACTOR_TYPE_UNSPECIFIED"


def _remember_names(event: AuditEvent) -> None:
    for known, name in ((KNOWN_TENANTS, event.tenant_id), (KNOWN_ACTIONS, event.action)):
        if name not in known:
            if len(known) >= KNOWN_LIMIT:
                known.clear()
            known.add(name)


def decode_parts(raw: bytes | memoryview) -> tuple[AuditEvent, bytes, bytes | None]:
    """:func:`decode_event`, and the event's ``metadata`` and ``changes`` as the sorted-key
    compact JSON their size limits were checked on (``changes`` None when absent): the
    pipeline stores and hashes these very bytes, so each is encoded once.

    Same outcome and the same errors as :func:`decode_event` for every input: an event whose
    tenant id and action a full decode accepted before is decoded without the two patterns
    (:data:`KNOWN_TENANTS`, :data:`KNOWN_ACTIONS`; every other rule is checked the same);
    anything else, and anything that fails, goes through :func:`decode_event` itself.

    Raises:
        EventValidationError: as :func:`decode_event`.
    """
    if not isinstance(raw, bytes):
        raw = bytes(raw)
    if len(raw) <= MAX_EVENT_BYTES and b"\\u0000" not in raw:
        check_depth(raw)  # the first check decode_event makes after the size
        try:
            event: AuditEvent | None = _known_decoder.decode(raw)
        except Exception:  # the full decode below names it
            event = None
        known = (event is not None and event.tenant_id in KNOWN_TENANTS
                 and event.action in KNOWN_ACTIONS)  # fmt: skip
        if known and event is not None and event.actor.type != _UNSPECIFIED_ACTOR:
            metadata = _encoder.encode(event.metadata)
            changes = None if event.changes is None else _encoder.encode(event.changes)
            if len(metadata) <= MAX_METADATA_BYTES and (
                changes is None or len(changes) <= MAX_CHANGES_BYTES
            ):
                return event, metadata, changes
    event = decode_event(raw)
    _remember_names(event)
    changes = None if event.changes is None else _encoder.encode(event.changes)
    return event, _encoder.encode(event.metadata), changes


def convert_event(obj: Any) -> AuditEvent:
    """Validate an already-decoded JSON value (e.g. one element of a batch body).

    Raises:
        EventValidationError: as :func:`decode_event`.
    """
    return decode_event(_encoder.encode(obj))


_NO_NUL: Final = "^[^\\x00]*$"
_JSON_VALUE: Final = {"$ref": "#/$defs/JsonValue"}


def _no_nul(node: Any) -> None:
    """Every free-form string of the schema: no NUL (PostgreSQL cannot store it)."""
    if isinstance(node, dict):
        if node.get("type") == "string" and "pattern" not in node and "enum" not in node \
                and "format" not in node:  # fmt: skip
            node["pattern"] = _NO_NUL
        for value in node.values():
            _no_nul(value)
    elif isinstance(node, list):
        for value in node:
            _no_nul(value)


def _add_rules(schema: dict[str, Any]) -> None:
    """The rules of :func:`check_limits` a JSON Schema can state, added to the generated one
    (byte-size limits and nesting depth are stated in descriptions)."""
    defs = schema["$defs"]
    actor_type = defs["Actor"]["properties"]["type"]
    actor_type["enum"] = [t for t in actor_type["enum"] if t != "ACTOR_TYPE_UNSPECIFIED"]
    _no_nul(schema)
    free = {"propertyNames": {"pattern": _NO_NUL}, "additionalProperties": _JSON_VALUE}
    kinds = [{"type": "string", "pattern": _NO_NUL}, {"type": "number"}, {"type": "boolean"},
             {"type": "null"}, {"type": "array", "items": _JSON_VALUE},
             {"type": "object", **free}]  # fmt: skip
    defs["JsonValue"] = {"description": "Any JSON value without NUL in its strings, nested at "
                         f"most {MAX_DEPTH} levels in the event.", "anyOf": kinds}  # fmt: skip
    event = defs["AuditEvent"]["properties"]
    event["metadata"].update(free, description=f"At most {MAX_METADATA_BYTES} bytes encoded.")
    changes = defs["ChangeSet"]["properties"]
    for name in ("old_value", "new_value"):
        changes[name]["anyOf"][0].update(free)
    limit = f" At most {MAX_CHANGES_BYTES} bytes encoded."
    defs["ChangeSet"]["description"] = (defs["ChangeSet"].get("description", "") + limit).strip()


def json_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of :class:`AuditEvent`, as checked in beside this module."""
    schema = msgspec.json.schema(AuditEvent)
    _add_rules(schema)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "AuditEvent"
    return schema


assert get_args(Category) == CATEGORIES
assert get_args(Severity) == SEVERITIES
assert get_args(ActorType) == ACTOR_TYPES
