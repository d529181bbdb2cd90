"""The JetStream :class:`~pipeline.sinks.DeadLetters`: each dead letter (``pipeline.dlq``'s
format) is published to the dead-letter stream, trimmed to what that stream accepts."""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from nats.js.errors import NoStreamResponseError

from infra.nats_streams import ensure_dlq_stream
from infra.settings import Settings
from pipeline.dlq import dead_letter
from pipeline.stages import Dead

PUBLISH_TIMEOUT_S = 2.0


class NatsDeadLetters:
    """Publishes dead letters with a connected nats-py client.

    Args:
        nc: the client.
        settings: the source stream (named in each letter) and the dead-letter stream.
    """

    def __init__(self, nc: Any, settings: Settings) -> None:
        self.nc = nc
        self.settings = settings
        self._max_bytes: int | None = None

    async def publish(self, dead: Dead, now: datetime) -> None:
        """One attempt. A missing stream is recreated before the error is raised (so the
        caller's next attempt can succeed).

        Raises:
            Exception: not published (timeout, no stream, connection).
        """
        headers, payload = dead_letter(dead, self.settings.stream, now, await self._limit())
        js = self.nc.jetstream()
        try:
            await js.publish(self.settings.dlq_subject, payload, headers=headers,
                             timeout=PUBLISH_TIMEOUT_S)  # fmt: skip
        except NoStreamResponseError:  # nobody listens: the stream is missing
            with contextlib.suppress(Exception):
                await ensure_dlq_stream(self.nc, self.settings)
            raise

    async def _limit(self) -> int:
        """The largest message the dead-letter stream takes (max_payload, max_msg_size)."""
        if self._max_bytes is None:
            limit = int(getattr(self.nc, "max_payload", 0) or 1024 * 1024)
            try:
                info = await self.nc.jetstream().stream_info(self.settings.dlq_stream)
                size = info.config.max_msg_size or -1
                if size > 0:
                    limit = min(limit, size)
            except Exception:
                return limit  # ask again next time
            self._max_bytes = limit
        return self._max_bytes
