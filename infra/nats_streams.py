"""The JetStream streams the service makes, and how many copies of each a cluster keeps.

Three streams: the events (``AUDIT``, :func:`ensure_stream`), the dead letters
(``AUDIT_DLQ``, :func:`ensure_dlq_stream`) and the witness copy of signed checkpoints
(``AUDIT_CHECKPOINTS``, ``ledger.checkpoints``). Each is made with
``AUDIT_STREAM_REPLICAS`` copies (:func:`create_stream`); on a NATS cluster that is what
makes an acknowledged publish survive one node's disk (invariant 1).

Existing streams get their replicas raised in place (:func:`ensure_replicas`: NATS >= 2.10
adds peers to a live stream and catches them up while it keeps serving), and the pipeline's
durable consumer gets its stream's (:func:`_ensure_consumer`). Replicas are never lowered
here: a process started without the setting (default 1) must not drop copies the cluster
was given; ``nats stream edit <name> --replicas N`` lowers them on purpose.

When the server refuses the replicas asked for:

- a server that is not clustered (JetStream error 10074) can never hold more than one
  copy: :class:`~infra.errors.ConfigError` naming ``AUDIT_STREAM_REPLICAS``, which stops
  the start;
- too few servers up for the copies asked (10005 no suitable peers, 10023 insufficient
  resources): a stream that does not exist yet cannot be made, so the error is raised and
  the start waits for NATS, logging why, as for any outage; an existing stream keeps the
  copies it has and a warning names it (at every start, until the cluster can take it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import nats.js.api as jsapi
from nats.aio.client import Client
from nats.js.errors import APIError, BadRequestError, NotFoundError

from infra.errors import ConfigError
from infra.nats_codes import JsErrorCode
from infra.settings import Settings
from schemas.events import MAX_EVENT_BYTES

log = logging.getLogger(__name__)

# Header room a stream allows beyond the largest event (ours plus a producer's own).
HEADER_ROOM = 16 * 1024
EVENT_MAX_MSG_SIZE = MAX_EVENT_BYTES + HEADER_ROOM
REPLICAS_VAR = "AUDIT_STREAM_REPLICAS"
# How long the consumer's replicas are asked again while its stream's are being raised.
CONSUMER_REPLICAS_WAIT_S = 30.0
_TOO_FEW_PEERS = (JsErrorCode.NO_SUITABLE_PEERS, JsErrorCode.INSUFFICIENT_RESOURCES)


def _never_replicated(exc: APIError, settings: Settings, name: str) -> ConfigError | None:
    """The configuration error to raise when ``exc`` says this server can never hold
    the replicas asked for (it is not clustered)."""
    if exc.err_code != JsErrorCode.REPLICAS_NOT_SUPPORTED:
        return None
    return ConfigError(REPLICAS_VAR, f"{settings.stream_replicas} replicas of stream {name} "
                       f"refused: the NATS server is not clustered ({exc.description}); set 1, "
                       "or list the nodes of a cluster in AUDIT_NATS_URL")  # fmt: skip


async def _add_stream(js: Any, **config: Any) -> None:
    """``add_stream``; when the server cannot reserve ``max_bytes`` (a small disk), the
    stream is made without a byte limit and a warning says so (it still works)."""
    try:
        await js.add_stream(**config)
    except APIError as exc:
        if exc.err_code != JsErrorCode.STORAGE_RESOURCES_EXCEEDED or not config.get("max_bytes"):
            raise
        log.warning("stream %s: the server cannot reserve max_bytes=%d (%s); made without a "
                    "byte limit", config["name"], config["max_bytes"], exc.description)  # fmt: skip
        config["max_bytes"] = -1
        await js.add_stream(**config)


async def create_stream(js: Any, settings: Settings, **config: Any) -> bool:
    """Make a stream with ``config`` and ``AUDIT_STREAM_REPLICAS`` copies.

    Returns:
        False when another process made it meanwhile (its replicas are then as that
        process asked; :func:`ensure_replicas` at the next start raises them if needed).

    Raises:
        ConfigError: replicas asked of a server that is not clustered.
        APIError: refused otherwise (too few servers up: the caller waits and retries).
    """
    config["num_replicas"] = settings.stream_replicas
    try:
        await _add_stream(js, **config)
    except APIError as exc:
        if exc.err_code == JsErrorCode.STREAM_NAME_IN_USE:
            return False
        error = _never_replicated(exc, settings, config["name"])
        if error is not None:
            raise error from exc
        if exc.err_code in _TOO_FEW_PEERS:
            log.warning("stream %s cannot be made with %d replicas yet: %s (waiting for enough "
                        "NATS servers)", config["name"], settings.stream_replicas,
                        exc.description)  # fmt: skip
        raise
    return True


async def ensure_replicas(js: Any, settings: Settings, info: jsapi.StreamInfo) -> None:
    """Raise the stream's replicas to ``AUDIT_STREAM_REPLICAS`` in place (never lower).

    Raises:
        ConfigError: replicas asked of a server that is not clustered.
    """
    config = info.config
    have, want = config.num_replicas or 1, settings.stream_replicas
    if have == want:
        return
    if have > want:
        log.warning("stream %s keeps its %d replicas (%s=%d: the service never lowers them; "
                    "`nats stream edit %s --replicas %d` does)", config.name, have, REPLICAS_VAR,
                    want, config.name, want)  # fmt: skip
        return
    config.num_replicas = want
    try:
        await js.update_stream(config)
    except APIError as exc:
        error = _never_replicated(exc, settings, config.name or "")
        if error is not None:
            raise error from exc
        log.warning("stream %s keeps %d replica(s): the server refused %d (%s); acknowledged "
                    "events on it are not safe from one node's loss until it has them (README, "
                    "'NATS cluster')", config.name, have, want, exc.description)  # fmt: skip
        return
    log.info("stream %s: replicas %d -> %d (the new copies catch up while it serves)",
             config.name, have, want)  # fmt: skip


async def ensure_dlq_stream(nc: Client, settings: Settings) -> None:
    """Create the dead-letter stream if it is missing (no size limit beyond max_payload),
    or raise its replicas."""
    js = nc.jetstream()
    try:
        info = await js.stream_info(settings.dlq_stream)
    except NotFoundError:
        made = await create_stream(
            js,
            settings,
            name=settings.dlq_stream,
            subjects=[settings.dlq_subject],
            storage=jsapi.StorageType.FILE,
            retention=jsapi.RetentionPolicy.LIMITS,
            duplicate_window=120.0,
            max_age=settings.dlq_max_age_days * 86400,
            max_bytes=settings.dlq_max_bytes,
            discard=jsapi.DiscardPolicy.NEW,
        )
        if made:
            log.info("created stream %s (%s)", settings.dlq_stream, settings.dlq_subject)
    else:
        await ensure_replicas(js, settings, info)


async def ensure_stream(nc: Client, settings: Settings) -> None:
    """Create or upgrade the event stream, the dead-letter stream and the durable consumer.

    The event stream takes ``<subject>`` and the tenant-bound ``<subject>.*``, refuses
    messages larger than an event at its limit plus header room (``max_msg_size``), and
    never discards a message the pipeline has not acked: interest retention (a message
    goes once acked), no age limit, a byte limit (``AUDIT_STREAM_MAX_BYTES``) beyond which
    JetStream refuses publishers instead of dropping backlog. An existing stream is
    moved to that (NATS >= 2.10 edits these in place; older servers keep it as it is,
    with a warning), and its replicas raised (:func:`ensure_replicas`); operators' other
    settings are left alone.

    Raises:
        ConfigError: replicas asked of a server that is not clustered.
    """
    js = nc.jetstream()
    subjects = [settings.subject, settings.subject + ".*"]
    try:
        info = await js.stream_info(settings.stream)
    except NotFoundError:
        if await create_stream(
            js,
            settings,
            name=settings.stream,
            subjects=subjects,
            storage=jsapi.StorageType.FILE,
            retention=jsapi.RetentionPolicy.INTEREST,
            discard=jsapi.DiscardPolicy.NEW,
            max_bytes=settings.stream_max_bytes,
            duplicate_window=120.0,
            max_msg_size=EVENT_MAX_MSG_SIZE,
        ):
            log.info("created stream %s (%s)", settings.stream, ", ".join(subjects))
    else:
        await _upgrade(js, settings, info, subjects)
        await ensure_replicas(js, settings, await js.stream_info(settings.stream))
    await ensure_dlq_stream(nc, settings)
    await _ensure_consumer(js, settings)


async def _upgrade(js: Any, settings: Settings, info: jsapi.StreamInfo,
                   subjects: list[str]) -> None:  # fmt: skip
    """Move an event stream made by an older release to today's settings (but retention,
    which moves once the durable consumer exists)."""
    config = info.config
    have = list(config.subjects or [])
    size = config.max_msg_size or -1
    old = (any(s not in have for s in subjects) or not 0 < size <= EVENT_MAX_MSG_SIZE
           or config.retention != jsapi.RetentionPolicy.INTEREST
           or (config.max_age or 0) > 0)  # fmt: skip
    if not old:
        return
    config.subjects = have + [s for s in subjects if s not in have]
    config.max_msg_size = EVENT_MAX_MSG_SIZE if not 0 < size <= EVENT_MAX_MSG_SIZE else size
    # Retention moves to interest only once the durable consumer exists (below):
    # a stream without interest would drop its backlog at the switch.
    config.max_age = 0
    if not (config.max_bytes or 0) > 0:
        config.max_bytes = settings.stream_max_bytes
        config.discard = jsapi.DiscardPolicy.NEW
    try:
        await js.update_stream(config)
        log.info("upgraded stream %s: subjects %s, max_msg_size %d, no max_age",
                 settings.stream, config.subjects, config.max_msg_size)  # fmt: skip
    except BadRequestError as exc:
        log.warning("stream %s kept as it is (could not upgrade it: %s); see the "
                    "README, 'Upgrading'", settings.stream, exc)  # fmt: skip


async def _ensure_consumer(js: Any, settings: Settings) -> None:
    """The durable pull consumer, then interest retention.

    The consumer gets the stream's replicas, named (JetStream wants them equal on an
    interest stream; a consumer left to inherit them was seen to stay R1 after its stream
    went R3). Right after the stream's replicas were raised the server refuses that for a
    moment (its new peers are being placed): asked again for up to
    :data:`CONSUMER_REPLICAS_WAIT_S`.
    """
    stream = await js.stream_info(settings.stream)
    consumer = jsapi.ConsumerConfig(
        durable_name=settings.consumer,
        ack_policy=jsapi.AckPolicy.EXPLICIT,
        deliver_policy=jsapi.DeliverPolicy.ALL,
        ack_wait=settings.ack_wait_s,
        max_ack_pending=-1,
        max_deliver=-1,
        max_waiting=4096,
        num_replicas=stream.config.num_replicas or 1,
    )
    deadline = time.monotonic() + CONSUMER_REPLICAS_WAIT_S
    while True:
        try:
            await js.add_consumer(settings.stream, consumer)
        except BadRequestError as exc:
            if (exc.err_code == JsErrorCode.CONSUMER_REPLICAS_EXCEED_STREAM
                    and time.monotonic() < deadline):  # fmt: skip
                await asyncio.sleep(0.25)
                continue
            # NATS < 2.10 cannot edit an existing consumer's filter: it keeps working, but
            # consumes only the subject it was made for (no tenant-bound subjects).
            log.warning("consumer %s kept as it is (could not update it: %s)",
                        settings.consumer, exc)  # fmt: skip
        break
    info = await js.stream_info(settings.stream)
    if info.config.retention != jsapi.RetentionPolicy.INTEREST:
        info.config.retention = jsapi.RetentionPolicy.INTEREST
        try:
            await js.update_stream(info.config)
            log.info("stream %s now keeps each message until the pipeline acked it (interest "
                     "retention)", settings.stream)  # fmt: skip
        except BadRequestError as exc:
            log.warning("stream %s keeps its retention (could not change it: %s); see the "
                        "README, 'Upgrading'", settings.stream, exc)  # fmt: skip
