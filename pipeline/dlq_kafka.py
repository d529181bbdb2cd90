"""The Kafka :class:`~pipeline.sinks.DeadLetters`: each dead letter (``pipeline.dlq``'s
format: the original bytes, ``Audit-Dlq-*`` headers) is produced to AUDIT_KAFKA_DLQ_TOPIC
through the source's faust producer, keyed ``dlq:<topic>/<partition>:<offset>``, trimmed
to AUDIT_KAFKA_MAX_MESSAGE_BYTES."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from infra.settings import Settings
from pipeline.dlq import dead_letter
from pipeline.stages import Dead, position

PUBLISH_TIMEOUT_S = 5.0


class KafkaDeadLetters:
    """Produces dead letters with a faust App's producer.

    Args:
        app: the faust App of the Kafka source (its producer is started on first use).
        settings: the dead-letter topic and the largest record the broker takes.
    """

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def publish(self, dead: Dead, now: datetime) -> None:
        """One attempt, waiting for the broker's acknowledgement.

        Raises:
            Exception: not published (timeout, refused, broker away).
        """
        s = self.settings
        headers, payload = dead_letter(dead, s.kafka_topic, now, s.kafka_max_message_bytes)
        key = f"dlq:{position(dead.msg, s.kafka_topic)}".encode()
        producer = self.app.producer
        await asyncio.wait_for(producer.maybe_start(), PUBLISH_TIMEOUT_S)
        await asyncio.wait_for(
            producer.send_and_wait(s.kafka_dlq_topic, key, payload, partition=None,
                                   timestamp=None,
                                   headers=[(k, v.encode()) for k, v in headers.items()]),
            PUBLISH_TIMEOUT_S,
        )  # fmt: skip
