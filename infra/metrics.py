"""The service's Prometheus metrics, on one explicit registry per process.

Stages never import prometheus: adapters and the worker call these methods. Tests build
their own :class:`Metrics` (a fresh registry) and read values back.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000, 20000)


class Metrics:
    """All metrics of one process.

    Args:
        registry: where to register (a fresh one by default).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter(
            "auditlog_events_received",
            "Events read from the source",
            ["agent", "source"],
            registry=r,
        )
        self.stored = Counter(
            "auditlog_events_stored", "Events committed to PostgreSQL", ["source"], registry=r
        )
        self.duplicates = Counter(
            "auditlog_events_duplicate", "Events dropped as already stored", ["source"], registry=r
        )
        self.dead_lettered = Counter(
            "auditlog_events_dead_lettered",
            "Events sent to the dead-letter stream (NATS) or topic (Kafka)",
            ["reason", "stage", "source"],
            registry=r,
        )
        self.internal_errors = Counter(
            "auditlog_internal_errors",
            "Unexpected exceptions caught in the pipeline (the message was dead-lettered as "
            "internal_error, or the batch left for redelivery)",
            ["stage"],
            registry=r,
        )
        self.dead_letter_failures = Counter(
            "auditlog_dead_letter_publish_failures",
            "Dead letters the dead-letter stream/topic did not take after bounded retries (the"
            " message is held: NAKed on NATS, its partition paused on Kafka)",
            ["source"],
            registry=r,
        )
        self.dead_letters_unpublished = Gauge(
            "auditlog_dead_letters_unpublished",
            "Messages held in the source because their dead letter could not be published",
            ["source"],
            registry=r,
        )
        self.redeliveries = Counter(
            "auditlog_redeliveries",
            "Messages delivered again (not acked in time, NAKed, or after a restart/rebalance)",
            ["source"],
            registry=r,
        )
        self.oldest_unacked = Gauge(
            "auditlog_oldest_unacked_age_seconds",
            "Age (since the source stored it) of the oldest message a worker holds unacked",
            ["source"],
            registry=r,
        )
        # One quantity, one name: Worker.last_progress_age_s() -> last_progress_age ->
        # auditlog_pipeline_last_progress_age_seconds (the metric name is what dashboards
        # and alerts use: keep it).
        self.last_progress_age = Gauge(
            "auditlog_pipeline_last_progress_age_seconds",
            "Seconds since the worker last settled a batch (0 when it holds nothing)",
            ["source"],
            registry=r,
        )
        self.batch_size = Histogram(
            "auditlog_flush_batch_size",
            "Events per flushed batch",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.flush_seconds = Histogram(
            "auditlog_flush_duration_seconds",
            "Time to flush one batch (transaction)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.flush_retries = Counter(
            "auditlog_flush_retries",
            "Flush attempts that failed and were retried",
            ["kind"],
            registry=r,
        )
        self.lag = Histogram(
            "auditlog_ingest_lag_seconds",
            "Received (the source's timestamp) to committed",
            ["source"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.consumer_pending = Gauge(
            "auditlog_consumer_pending_messages",
            "JetStream messages not yet delivered",
            registry=r,
        )
        self.consumer_ack_pending = Gauge(
            "auditlog_consumer_ack_pending_messages",
            "JetStream messages delivered, not acked",
            registry=r,
        )
        self.kafka_lag = Gauge(
            "auditlog_kafka_consumer_lag_messages",
            "Kafka records not yet committed by the consumer group, per assigned partition",
            ["topic", "partition"],
            registry=r,
        )
        self.kafka_paused = Gauge(
            "auditlog_kafka_paused_partitions",
            "Kafka partitions paused because a record's dead letter could not be published",
            registry=r,
        )
        self.source_up = Gauge(
            "auditlog_source_up",
            "1 when the worker's source (broker) is reachable, else 0",
            ["source"],
            registry=r,
        )
        self.pool_in_use = Gauge(
            "auditlog_db_pool_connections_in_use",
            "PostgreSQL pool connections in use",
            ["pool"],
            registry=r,
        )
        self.retention_dropped = Counter(
            "auditlog_retention_partitions_dropped", "Monthly partitions dropped by retention",
            registry=r,
        )  # fmt: skip
        self.retention_freed = Counter(
            "auditlog_retention_freed_bytes", "Bytes freed by retention drops", registry=r
        )
        self.access_log_events = Counter(
            "auditlog_access_log_events", "Access-log events published into tenants' logs",
            registry=r,
        )  # fmt: skip
        self.access_log_dropped = Counter(
            "auditlog_access_log_dropped", "Access-log events dropped (the event log was"
            " unavailable for longer than the backlog holds)", registry=r,
        )  # fmt: skip
        self.retention_archive_failures = Counter(
            "auditlog_retention_archive_failures", "Months not dropped because their archive"
            " could not be written or did not verify", registry=r,
        )  # fmt: skip
        self.retention_next = Gauge(
            "auditlog_retention_next_drop_timestamp_seconds",
            "When the next partition becomes due to drop (0: none known)", registry=r,
        )  # fmt: skip
        self.flush_skipped_tenants = Counter(
            "auditlog_flush_skipped_tenants",
            "Tenants a flush left for a later one because another flush held their chain"
            " head (their events are offered again in order; nothing waits on the lock)",
            registry=r,
        )  # fmt: skip
        self.flush_busy_buckets = Counter(
            "auditlog_flush_busy_buckets",
            "Tenant buckets a worker wanted to flush but another worker had claimed (it"
            " flushed other buckets and tries these again after a short backoff)",
            registry=r,
        )  # fmt: skip
        self.checkpoint_completed = Gauge(
            "auditlog_checkpoint_completed_timestamp_seconds",
            "Start of this process's last checkpoint round that left no tenant unsigned: every"
            " event committed before it is under a signed checkpoint (0: this process never"
            " held the checkpointer lease; take the max over processes)", registry=r,
        )  # fmt: skip
        self.search_indexed = Counter(
            "auditlog_search_indexed_events", "Events added to the search index by this"
            " process (pipeline/indexer.py)", registry=r,
        )  # fmt: skip
        self.search_lag_events = Gauge(
            "auditlog_search_lag_events",
            "Events committed and not yet in the search index (exported by the process"
            " holding the indexer lease, 0 elsewhere: take the max over processes)", registry=r,
        )  # fmt: skip
        self.search_lag_seconds = Gauge(
            "auditlog_search_lag_seconds",
            "The oldest event not yet in the search index is younger than this (0: none;"
            " the indexer lease holder exports it, 0 elsewhere: take the max)", registry=r,
        )  # fmt: skip
        # Streams out (pipeline/streams.py): per stream, exported by the process holding its
        # lease (no series elsewhere: take the max over processes).
        self.stream_lag_events = Gauge(
            "auditlog_stream_lag_events", "Events of the stream's tenant committed after the"
            " stream's cursor (not yet delivered or skipped by its filters)", ["stream"],
            registry=r,
        )  # fmt: skip
        self.stream_lag_seconds = Gauge(
            "auditlog_stream_lag_seconds", "Age (since committed) of the oldest event read and"
            " not yet delivered (0: caught up)", ["stream"], registry=r,
        )  # fmt: skip
        self.stream_delivered = Counter(
            "auditlog_stream_delivered_events", "Records a stream's receiver took (2xx)",
            ["stream"], registry=r,
        )  # fmt: skip
        self.stream_failures = Counter(
            "auditlog_stream_delivery_failures", "Delivery attempts that failed (retried after"
            " a backoff, or the stream paused)", ["stream"], registry=r,
        )  # fmt: skip
        self.stream_pauses = Counter(
            "auditlog_stream_pauses", "Times a stream was paused for failing", ["stream"],
            registry=r,
        )  # fmt: skip
        self.stream_gaps = Counter(
            "auditlog_stream_gap_records", "Gap records delivered for seqs retention dropped"
            " before the stream got to them", ["stream"], registry=r,
        )  # fmt: skip
        self.streams_paused = Gauge(
            "auditlog_streams_paused", "Streams paused now (every delivering process exports"
            " the same count: take the max)", registry=r,
        )  # fmt: skip
        self.http_seconds = Histogram(
            "auditlog_http_request_duration_seconds",
            "HTTP request duration",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.grpc_seconds = Histogram(
            "auditlog_grpc_request_duration_seconds",
            "gRPC request duration",
            ["method", "code"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.query_rows = Counter(
            "auditlog_query_rows_returned", "Rows returned by queries", ["endpoint"], registry=r
        )

    def exposition(self) -> bytes:
        """The text exposition format of this registry."""
        return generate_latest(self.registry)
