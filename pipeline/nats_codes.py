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

__all__ = ["PULL_ENDED", "Header", "JsErrorCode", "StatusCode", "status_of"]


class JsErrorCode(enum.IntEnum):
    """JetStream API error codes (nats-server ``server/errors.json``)."""

    # JSNoMessageFoundErr: a direct get found no message (e.g. none yet on the subject).
    NO_MESSAGE_FOUND = 10037
    # JSStorageResourcesExceededErr: the server cannot reserve the stream's max_bytes.
    STORAGE_RESOURCES_EXCEEDED = 10047


# Statuses that end a pull request: nothing to deliver (404, no-wait requests), expired
# (408), or refused / cut short (409: max_bytes reached, too many waiting requests, the
# consumer deleted or its leader moved). 100 (idle heartbeat) ends nothing.
PULL_ENDED: Final = frozenset(
    {StatusCode.NO_MESSAGES, StatusCode.REQUEST_TIMEOUT, StatusCode.CONFLICT}
)


def status_of(headers: dict[str, str] | None) -> StatusCode | None:
    """The status a message carries (None for a plain message or an unknown status)."""
    raw = headers.get(Header.STATUS) if headers else None
    if not raw:
        return None
    try:
        return StatusCode(raw)
    except ValueError:
        return None
