"""NATS status codes and JetStream API error codes the service acts on, by name.

Status codes arrive in a message's ``Status`` header; nats.py names them in
:class:`nats.js.api.StatusCode` (re-exported here). JetStream API error codes are the
``err_code`` of a :class:`nats.js.errors.APIError`, listed in nats-server's
``server/errors.json``; nats.py names none of them, so the ones used are named here.
Compare against these, never against literals.
"""

from __future__ import annotations

import enum
from typing import Final

from nats.js.api import Header, StatusCode

__all__ = ["PULL_ENDED", "PULL_UNANSWERED", "Header", "JsErrorCode", "StatusCode", "status_of"]


class JsErrorCode(enum.IntEnum):
    """JetStream API error codes (nats-server ``server/errors.json``)."""

    # JSNoMessageFoundErr: a direct get found no message (e.g. none yet on the subject).
    NO_MESSAGE_FOUND = 10037
    # JSStorageResourcesExceededErr: the server cannot reserve the stream's max_bytes.
    STORAGE_RESOURCES_EXCEEDED = 10047
    # JSClusterNoPeersErrF: no suitable peers for placement (fewer servers than replicas).
    NO_SUITABLE_PEERS = 10005
    # JSInsufficientResourcesErr: the cluster lacks the resources (servers up) asked for.
    INSUFFICIENT_RESOURCES = 10023
    # JSStreamNameExistErr: stream name already in use with a different configuration.
    STREAM_NAME_IN_USE = 10058
    # JSStreamReplicasNotSupportedErr: replicas > 1 not supported in non-clustered mode.
    REPLICAS_NOT_SUPPORTED = 10074
    # JSConsumerReplicasExceedsStream: consumer config replica count exceeds parent stream
    # (also while a stream's replicas are being raised: its new peers are not placed yet).
    CONSUMER_REPLICAS_EXCEED_STREAM = 10126


# Statuses that end a pull request: nothing to deliver (404, no-wait requests), expired
# (408), or refused / cut short (409: max_bytes reached, too many waiting requests, the
# consumer deleted or its leader moved). 100 (idle heartbeat) ends nothing.
PULL_ENDED: Final = frozenset(
    {StatusCode.NO_MESSAGES, StatusCode.REQUEST_TIMEOUT, StatusCode.CONFLICT}
)
# A request that reached no one (503 No Responders): on a cluster, the consumer has no
# leader (an election after its leader's node died). It ended, but asking again at once
# would spin until a leader is elected: the source waits a little first.
PULL_UNANSWERED: Final = StatusCode.SERVICE_UNAVAILABLE


def status_of(headers: dict[str, str] | None) -> StatusCode | None:
    """The status a message carries (None for a plain message or an unknown status)."""
    raw = headers.get(Header.STATUS) if headers else None
    if not raw:
        return None
    try:
        return StatusCode(raw)
    except ValueError:
        return None
