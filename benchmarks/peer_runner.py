"""Run one peer system draining a JetStream stream into a PostgreSQL table.

Runs in the peers' own virtualenv (``make peers-setup`` makes ``.venv-peers`` with
mq-bridge and Pathway), never in the service's: it imports nothing of this project.
``benchmarks.peers`` starts it, watches the table fill, and stops it.

    .venv-peers/bin/python benchmarks/peer_runner.py mq-bridge \\
        --nats nats://127.0.0.1:4222 --stream S --subject s.events \\
        --dsn postgresql://user@127.0.0.1:5432/db --table peer_rows

Each peer stores each message as it is (no validation, dedupe, chain or index) with the
settings its documentation gives for bulk loads:

- mq-bridge: a route ``nats`` (durable JetStream consumer, deliver all) -> ``sqlx``
  (PostgreSQL, its default multi-row INSERT of the payload into ``payload jsonb``;
  ``bulk_copy`` needs a per-field token query and binds no whole payload), batches of
  5,000, 2 concurrent.
- Pathway: ``pw.io.nats.read`` (JetStream stream, its own durable consumer, text) ->
  ``pw.io.postgres.write`` (stream of changes, batches of 5,000).
"""

from __future__ import annotations

import argparse
from urllib.parse import urlparse


def run_mq_bridge(args: argparse.Namespace) -> None:
    import mq_bridge

    config = {
        "input": {"nats": {"url": args.nats, "stream": args.stream, "subject": args.subject,
                           "deliver_policy": "all", "prefetch_count": 20_000}},
        "output": {"sqlx": {"url": args.dsn, "table": args.table, "max_connections": 4}},
        "batch_size": 5000,
        "concurrency": 2,
    }  # fmt: skip
    mq_bridge.Route.from_config(config, name="peer").run()


def run_pathway(args: argparse.Namespace) -> None:
    import pathway as pw

    url = urlparse(args.dsn)
    settings = {"host": url.hostname, "port": str(url.port or 5432),
                "dbname": url.path.lstrip("/"), "user": url.username or "postgres"}  # fmt: skip
    if url.password:
        settings["password"] = url.password
    rows = pw.io.nats.read(args.nats, topic=args.subject, format="plaintext",
                           jetstream_stream_name=args.stream)  # fmt: skip
    pw.io.postgres.write(rows, settings, args.table, max_batch_size=5000)
    pw.run(monitoring_level=pw.MonitoringLevel.NONE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("peer", choices=["mq-bridge", "pathway"])
    ap.add_argument("--nats", required=True)
    ap.add_argument("--stream", required=True)
    ap.add_argument("--subject", required=True)
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--table", required=True)
    args = ap.parse_args()
    (run_mq_bridge if args.peer == "mq-bridge" else run_pathway)(args)


if __name__ == "__main__":
    main()
