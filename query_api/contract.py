"""The HTTP API's contract as msgspec types: query parameters, request and response bodies.

The handlers decode and encode with these types, and ``openapi`` generates the OpenAPI
document from them, so the document cannot drift from what the code accepts and answers.
Constants that bound parameters (page sizes, list lengths) live here too, and the
parameter parser (``filters``) reads them from here.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from schemas.events import (
    TENANT_ID_PATTERN,
    ActorType,
    Category,
    Severity,
)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_LIST_ITEMS = 20
MAX_VALUE_LEN = 256
MAX_Q_LEN = 200
MAX_BATCH_EVENTS = 1000
MAX_KEY_LEN = 256
MAX_SIZE = 2**63 - 1  # a tree size (PostgreSQL bigint)
TENANT_RE = re.compile(TENANT_ID_PATTERN)

Scope = Literal["read", "write"]
_EVENT_INPUT = {"$ref": "#/components/schemas/EventInput"}


def _d(text: str, **kw: Any) -> msgspec.Meta:
    return msgspec.Meta(description=text, **kw)


# -- query parameters (one Struct per operation; field order is the document's) ----------
TenantId = Annotated[str, _d("The tenant to read. Required with the admin token; a tenant "
                             "key may leave it out (its own tenant) and may name no other "
                             "(403).", pattern=TENANT_ID_PATTERN)]  # fmt: skip
NO_NUL = "^[^\\x00]+$"  # every text parameter: PostgreSQL text cannot hold NUL
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_VALUE_LEN, pattern=NO_NUL)]
Time = Annotated[datetime, msgspec.Meta(tz=True)]  # RFC 3339 with an offset (or Z)


class EventParams(msgspec.Struct, kw_only=True):
    """``GET /v1/audit/events/{id}``."""

    tenant_id: TenantId


class VerifyParams(msgspec.Struct, kw_only=True):
    """``GET /v1/audit/verify``."""

    tenant_id: TenantId


class ConsistencyParams(msgspec.Struct, kw_only=True):
    """``GET /v1/audit/consistency``: two checkpoint sizes of the tenant's log."""

    tenant_id: TenantId
    from_: Annotated[int, _d("The older checkpoint's size.", ge=1, le=MAX_SIZE)] = msgspec.field(
        name="from"
    )
    to: Annotated[int, _d("The newer checkpoint's size (>= from).", ge=1, le=MAX_SIZE)]


class KeyListParams(msgspec.Struct, kw_only=True):
    """``GET /v1/admin/keys``."""

    tenant_id: Annotated[str, _d("Only this tenant's keys (all when left out).",
                                 pattern=TENANT_ID_PATTERN)] | None = None  # fmt: skip


class FilterParams(msgspec.Struct, kw_only=True):
    """The filters every event query shares (stats)."""

    tenant_id: TenantId
    start_time: Annotated[Time, _d("Inclusive lower bound on occurred_at "
                                       "(RFC 3339).")] | None = None  # fmt: skip
    end_time: Annotated[Time, _d("Exclusive upper bound on occurred_at (RFC 3339); at or "
                                 "before start_time nothing matches.")] | None = None  # fmt: skip
    severities: Annotated[list[Severity], _d("Any of these severities.",
                                             max_length=MAX_LIST_ITEMS)] | None = None  # fmt: skip
    categories: Annotated[list[Category], _d("Any of these categories.",
                                             max_length=MAX_LIST_ITEMS)] | None = None  # fmt: skip
    actions: Annotated[list[Annotated[str, msgspec.Meta(
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}(\.\*)?$")]],
        _d("Exact action names, or prefixes written as `user.*`.",
           max_length=MAX_LIST_ITEMS)] | None = None  # fmt: skip
    actor_type: Annotated[ActorType, _d("Actor type.")] | None = None
    actor_id: Annotated[Text, _d("Actor id.")] | None = None
    resource_type: Annotated[Text, _d("Primary or related resource type.")] | None = None
    resource_id: Annotated[Text, _d("Primary or related resource id.")] | None = None
    q: Annotated[str, _d("Full-text search over action, description and display names "
                         "(web search syntax).", min_length=1, pattern=NO_NUL,
                         max_length=MAX_Q_LEN)] | None = None  # fmt: skip


Order = Annotated[Literal["desc", "asc"], _d("desc: newest first (occurred_at, then id).")]


class ListParams(FilterParams, kw_only=True):
    """``GET /v1/audit/events``."""

    page_size: Annotated[int, _d("Events per page.", ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE
    page_token: Annotated[str, _d(
        "next_page_token of the previous page (opaque, signed; bound to the same tenant and "
        "filters); empty for the first page. Any other value is refused (400).",
        max_length=200)] | None = None  # fmt: skip
    order: Annotated[Literal["desc", "asc"], _d(
        "desc: newest first (occurred_at, then id); with after_seq: by seq, and asc is the "
        "default.")] | None = None  # fmt: skip
    after_seq: Annotated[int, _d(
        "Commit order: only events whose seq (their position in the tenant's chain) is "
        "greater, ordered by seq. Follows a log as it is written, late events with an old "
        "occurred_at included; page by passing the last seq seen (no page_token, "
        "next_page_token stays empty).", ge=0, le=2**63 - 1)] | None = None  # fmt: skip


class ExportParams(FilterParams, kw_only=True):
    """``GET /v1/audit/export``."""

    order: Order = "desc"
    format: Annotated[Literal["ndjson", "csv"], _d("Output format.")] = "ndjson"


class WriteParams(msgspec.Struct, kw_only=True):
    """``POST /v1/audit/events`` and ``:batch``."""

    wait: Annotated[bool, _d("true: answer after commit; false: after JetStream's "
                             "acknowledgement.")] = True  # fmt: skip


def param_names(params: type[msgspec.Struct]) -> frozenset[str]:
    """The query parameter names an operation accepts."""
    return frozenset(params.__struct_fields__)


# -- request bodies --------------------------------------------------------------------------
EventInput = Annotated[msgspec.Raw, msgspec.Meta(extra_json_schema=_EVENT_INPUT)]
# A batch item is only required to be an object: each is then checked as an EventInput on
# its own and, when it breaks a rule, answered in ``errors`` by index while the rest of the
# batch is stored. Saying EventInput here would make such a batch schema-invalid as a whole.
BatchItem = Annotated[msgspec.Raw, msgspec.Meta(extra_json_schema={
    "type": "object", "description": "One event, as EventInput describes it; an event that "
    "breaks its rules is answered in errors (by index) and the others are stored."})]  # fmt: skip


class WriteEventBody(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /v1/audit/events``."""

    event: EventInput


class WriteEventsBody(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /v1/audit/events:batch`` (at most 4 MiB)."""

    events: Annotated[list[BatchItem], msgspec.Meta(max_length=MAX_BATCH_EVENTS)]


class KeyRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /v1/admin/keys``."""

    tenant_id: Annotated[str, msgspec.Meta(pattern=TENANT_ID_PATTERN)]
    scopes: Annotated[list[Scope], msgspec.Meta(min_length=1, max_length=2)] = msgspec.field(
        default_factory=lambda: ["read"]
    )
    expires_at: Annotated[Time, _d("When the key stops working (RFC 3339 with an offset, "
                                   "in the future: an expiry already past is refused); "
                                   "none: until revoked.")] | None = None  # fmt: skip


class ViewerFilters(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True,
                    omit_defaults=True):  # fmt: skip
    """A viewer token's fixed filters: every read it makes is narrowed to them. A request
    may narrow further (a subset of the lists, the same scalar values), never widen: asking
    for more is a 403 naming the parameter; an event outside them is a 404."""

    severities: Annotated[list[Severity], _d("Only these severities.",
                                             max_length=MAX_LIST_ITEMS)] | None = None  # fmt: skip
    categories: Annotated[list[Category], _d("Only these categories.",
                                             max_length=MAX_LIST_ITEMS)] | None = None  # fmt: skip
    actions: Annotated[list[Annotated[str, msgspec.Meta(
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}(\.\*)?$")]],
        _d("Only these actions (exact names, or prefixes written as `user.*`).",
           max_length=MAX_LIST_ITEMS)] | None = None  # fmt: skip
    actor_type: Annotated[ActorType, _d("Only this actor type.")] | None = None
    actor_id: Annotated[Text, _d("Only this actor (e.g. a customer's own user).")] | None = None
    resource_type: Annotated[Text, _d("Only this resource type (primary or related).")] | None = (
        None
    )
    resource_id: Annotated[Text, _d("Only this primary or related resource id.")] | None = None


class ViewerTokenRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /v1/viewer-tokens``."""

    tenant_id: Annotated[str, _d("The tenant the token reads (a tenant key: its own).",
                                 pattern=TENANT_ID_PATTERN)]  # fmt: skip
    ttl_s: Annotated[int, _d("Lifetime in seconds; cut to AUDIT_VIEWER_TOKEN_MAX_TTL_S "
                             "(default 3600): expires_at says when it ends.", ge=10,
                             le=86400)] = 900  # fmt: skip
    filters: ViewerFilters | None = None


class RetentionBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``PUT /v1/admin/tenants/{tenant_id}/retention``."""

    retention_days: Annotated[int, _d("Days the tenant's events stay readable; null: the "
                                      "global AUDIT_RETENTION_DAYS.", ge=1,
                                      le=36500)] | None  # fmt: skip
    archive: Annotated[bool, _d("Archive the tenant's months before retention drops them: "
                                "true: always (no drop without a verified archive); false: "
                                "never; null or absent: when AUDIT_RETENTION_ARCHIVE is "
                                "set.")] | None = None  # fmt: skip


class HoldBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``PUT /v1/admin/tenants/{tenant_id}/legal-hold``."""

    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=1000, pattern=NO_NUL)]


# -- responses ---------------------------------------------------------------------------------
class ErrorDetail(msgspec.Struct):
    code: str
    message: str
    field: str


class Error(msgspec.Struct):
    """Every failure: ``{"error": {"code", "message", "field"}}``."""

    error: ErrorDetail


ErrorBody = Error


class WriteResult(msgspec.Struct, omit_defaults=True):
    """One write's answer (``committed`` appears, false, on 202)."""

    event_id: Annotated[str, msgspec.Meta(extra_json_schema={"format": "uuid"})]
    committed: bool = True


class BatchError(msgspec.Struct):
    index: int
    code: str
    message: str
    field: str


class BatchResult(msgspec.Struct, omit_defaults=True):
    """A batch's per-event answer; ``uncommitted_event_ids`` on 202 (durable, not yet
    committed)."""

    event_ids: list[uuid.UUID]
    errors: list[BatchError]
    uncommitted_event_ids: list[uuid.UUID] = []


class Actor(msgspec.Struct):
    type: ActorType
    id: str
    display_name: str


class Resource(msgspec.Struct):
    type: str
    id: str
    display_name: str


Timestamp = Annotated[Time, _d("RFC 3339 UTC with microseconds.")]


class AuditEvent(msgspec.Struct):
    """A stored event, as every read answers it."""

    id: uuid.UUID
    tenant_id: str
    seq: Annotated[int, msgspec.Meta(ge=1)]
    action: str
    category: Category
    severity: Severity
    actor: Actor
    primary_resource: Resource | None
    related_resources: list[Resource]
    description: str
    metadata: dict[str, Any]
    changes: dict[str, Any] | None
    occurred_at: Timestamp
    received_at: Timestamp
    ip: str
    user_agent: str
    request_id: str
    trace_id: str
    hash: Annotated[str, _d("hex SHA-256(previous hash || canonical bytes)",
                            pattern="^[0-9a-f]{64}$")]  # fmt: skip


class EventPage(msgspec.Struct):
    events: list[AuditEvent]
    next_page_token: Annotated[str, _d("Empty on the last page.")]


class OneEvent(msgspec.Struct):
    event: AuditEvent


class HistogramPoint(msgspec.Struct):
    start: Time
    count: int


class Histogram(msgspec.Struct):
    bucket_seconds: int
    points: list[HistogramPoint]


class Stats(msgspec.Struct):
    tenant_id: str
    start_time: Time
    end_time: Time
    total: int
    by_severity: dict[str, int]
    by_category: dict[str, int]
    histogram: Histogram


class Key(msgspec.Struct):
    """An API key as listed (never its token)."""

    key_id: str
    tenant_id: str
    scopes: list[Scope]
    created_at: Time
    revoked_at: Time | None
    expires_at: Time | None
    last_used_at: Annotated[Time, _d("Within a minute.")] | None


class NewKey(Key):
    """A created key; the token is shown only in this answer."""

    token: str


class ViewerToken(msgspec.Struct):
    """A minted viewer token: read-only, one tenant, until ``expires_at``. Listed nowhere;
    it ends at expiry or when the key that minted it is revoked."""

    token: Annotated[str, _d("Bearer token for the viewer page (`/ui/#token=...`) or any "
                             "read.")]  # fmt: skip
    tenant_id: str
    expires_at: Time
    filters: ViewerFilters
    key_id: Annotated[str, _d("What the access trail names its reads: the minting key's id "
                              "and `:viewer`.")]  # fmt: skip


class KeyList(msgspec.Struct):
    keys: list[Key]


class Health(msgspec.Struct):
    status: Literal["ok"]
    uptime_seconds: float


class Readiness(msgspec.Struct):
    status: Literal["ready", "degraded", "unready"]
    checks: dict[str, str]


class SigningKey(msgspec.Struct):
    """A key that has signed checkpoints (retired ones stay valid for what they signed)."""

    key_id: str
    name: str
    verifier_key: Annotated[str, _d("C2SP signed-note verifier key: <name>+<hash>+<base64>")]
    created_at: Time
    retired_at: Time | None


class PublicKeys(msgspec.Struct):
    """The signing key in use and every key that has signed, to pin once, out of band."""

    verifier_key: str
    keys: list[SigningKey]


class LegalHold(msgspec.Struct):
    reason: str
    set_by: str
    set_at: Time


class TenantPolicy(msgspec.Struct, kw_only=True):
    """A tenant's retention and legal hold, as they apply now."""

    tenant_id: str
    retention_days: Annotated[int, _d("The tenant's override; null: the global one.")] | None
    effective_retention_days: int
    visible_from: Annotated[Time, _d("Reads show events that occurred from here on; null "
                                     "under a legal hold.")] | None  # fmt: skip
    legal_hold: LegalHold | None
    archive: Annotated[bool, _d("The tenant's archive override; null: the global one.")] | None
    archive_before_drop: Annotated[bool, _d("Whether a month of this tenant is archived (and "
                                            "verified) before it is dropped.")]  # fmt: skip


# -- streams out (admin token; pipeline/streams.py delivers them) ----------------------------
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PORT = (r"(?::(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]"
         r"|6553[0-5]))?")  # fmt: skip
_URL_CHARS = r"(?:[A-Za-z0-9._~!$&'()*+,;=:@/-]|%[0-9A-Fa-f]{2})"
HTTPS_URL_PATTERN = (rf"^https://{_LABEL}(?:\.{_LABEL})*{_PORT}(?:/{_URL_CHARS}*)?"
                     rf"(?:\?(?:{_URL_CHARS}|\?)*)?$")  # fmt: skip
STREAM_ID_PATTERN = "^st_[0-9a-f]{16}$"
HttpsUrl = Annotated[str, _d(
    "An https:// URL (plain http is refused). A host written as a non-public address "
    "(loopback, private, link-local, metadata) or `localhost` is refused unless "
    "AUDIT_STREAMS_ALLOW_PRIVATE allows it; names are checked when delivering, against every "
    "address they resolve to.", pattern=HTTPS_URL_PATTERN, max_length=2048)]  # fmt: skip
StreamSecret = Annotated[str, msgspec.Meta(pattern="^[!-~]{16,256}$")]


class StreamFilters(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True,
                    omit_defaults=True):  # fmt: skip
    """Which of the tenant's events a stream delivers (all when empty)."""

    severities: Annotated[list[Severity], _d("Only these severities.",
                                             max_length=MAX_LIST_ITEMS)] | None = None  # fmt: skip
    categories: Annotated[list[Category], _d("Only these categories.",
                                             max_length=MAX_LIST_ITEMS)] | None = None  # fmt: skip
    actions: Annotated[list[Annotated[str, msgspec.Meta(
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}(\.\*)?$")]],
        _d("Only these actions (exact names, or prefixes written as `user.*`).",
           max_length=MAX_LIST_ITEMS)] | None = None  # fmt: skip


class WebhookDestination(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
                         tag="webhook", tag_field="kind"):  # fmt: skip
    """JSON batches POSTed to ``url``, signed (``Audit-Signature``) with a secret the server
    makes and shows once."""

    url: HttpsUrl


class SplunkHecDestination(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
                           tag="splunk_hec", tag_field="kind"):  # fmt: skip
    """A Splunk HTTP Event Collector (``/services/collector/event`` unless ``url`` names a
    path), authenticated with ``Authorization: Splunk <token>``."""

    url: HttpsUrl
    token: Annotated[StreamSecret, _d("The HEC token; never returned.")]
    index: Annotated[str, _d("Splunk index (the token's default when left out).",
                             pattern="^[a-z0-9_][a-z0-9_-]{0,79}$")] | None = None  # fmt: skip
    source_type: Annotated[str, _d("sourcetype of every event (default auditlog).",
                                   pattern="^[A-Za-z0-9_:.-]{1,100}$")] | None = None  # fmt: skip


class S3Destination(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
                    tag="s3", tag_field="kind"):  # fmt: skip
    """One gzipped NDJSON object per batch in an S3 bucket (or an S3-compatible server at
    ``endpoint``), keys sorting by time."""

    bucket: Annotated[str, msgspec.Meta(pattern="^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")]
    access_key_id: Annotated[str, msgspec.Meta(pattern="^[A-Za-z0-9]{4,128}$")]
    secret_access_key: Annotated[StreamSecret, _d("Never returned.")]
    prefix: Annotated[str, _d("Key prefix.", pattern="^[A-Za-z0-9._/-]{0,256}$")] = ""
    region: Annotated[str, msgspec.Meta(pattern="^[a-z0-9-]{1,32}$")] = "us-east-1"
    endpoint: Annotated[HttpsUrl, _d("An S3-compatible server (AWS: none).")] | None = None


class StreamRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /v1/admin/tenants/{tenant_id}/streams``. Answers at once: the destination is
    not contacted (deliveries report failures)."""

    destination: WebhookDestination | SplunkHecDestination | S3Destination
    filters: StreamFilters | None = None
    description: Annotated[str, msgspec.Meta(max_length=200, pattern="^[^\\x00]*$")] = ""
    start: Annotated[Literal["now", "beginning"], _d(
        "now: events committed from now on; beginning: the tenant's whole log "
        "first.")] = "now"  # fmt: skip


class RotateSecretRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST .../streams/{stream_id}:rotate-secret``."""

    secret: Annotated[StreamSecret, _d(
        "The new HEC token or S3 secret access key (required for those); for a webhook, the "
        "new signing secret (the server makes one when left out).")] | None = None  # fmt: skip
    overlap_s: Annotated[int, _d(
        "Webhook: how long the previous signing secret stays valid beside the new one "
        "(deliveries carry a v1= signature for each).", ge=0, le=604800)] = 86400  # fmt: skip


class WebhookTarget(msgspec.Struct, tag="webhook", tag_field="kind"):
    url: str


class SplunkHecTarget(msgspec.Struct, tag="splunk_hec", tag_field="kind"):
    url: str
    index: str | None
    source_type: str | None


class S3Target(msgspec.Struct, tag="s3", tag_field="kind"):
    bucket: str
    prefix: str
    region: str
    endpoint: str | None
    access_key_id: str


class Stream(msgspec.Struct, kw_only=True):
    """A stream as listed: where it delivers and how far it got (never its secrets)."""

    stream_id: Annotated[str, msgspec.Meta(pattern=STREAM_ID_PATTERN)]
    tenant_id: str
    description: str
    destination: WebhookTarget | SplunkHecTarget | S3Target
    filters: StreamFilters
    state: Literal["active", "paused"]
    paused_reason: str | None
    paused_until: Annotated[Time, _d("When it is tried again by itself; null while paused: "
                                     "until resumed.")] | None  # fmt: skip
    cursor: Annotated[int, _d("Every event of the tenant up to this seq is delivered.", ge=0)]
    lag_events: Annotated[int, _d("The tenant's events committed after the cursor.", ge=0)]
    last_delivered_at: Time | None
    failures: Annotated[int, _d("Consecutive failed attempts.", ge=0)]
    last_error: str | None
    last_error_at: Time | None
    secret_rotated_at: Time | None
    created_at: Time


class NewStream(Stream, kw_only=True):
    """A created stream; a webhook's signing secret is shown only here."""

    signing_secret: Annotated[str, _d("Webhook: verify each delivery's Audit-Signature with "
                                      "it (shown once).")] | None  # fmt: skip


class StreamAttempt(msgspec.Struct):
    attempted_at: Time
    first_seq: int
    last_seq: int
    records: int
    ok: bool
    status: int | None
    error: str | None
    duration_ms: int


class StreamDetail(Stream, kw_only=True):
    """A stream with its latest delivery attempts, newest first."""

    attempts: list[StreamAttempt]


class StreamList(msgspec.Struct):
    streams: list[Stream]


class RotatedSecret(msgspec.Struct):
    """A rotation's answer: a webhook's new signing secret is shown only here."""

    stream: Stream
    signing_secret: str | None
    previous_valid_until: Annotated[Time, _d("Webhook: the previous secret stays valid (and "
                                             "signed with) until then.")] | None  # fmt: skip
