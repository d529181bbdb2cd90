"""Run one peer system draining a JetStream stream into a PostgreSQL table.

Runs in the peers' own virtualenv (``make peers-setup`` makes ``.venv-peers`` with
mq-bridge and Pathway), never in the service's: it imports nothing of this project.
``benchmarks.peers`` starts it, watches the table fill, and stops it.

    .venv-peers/bin/python benchmarks/peer_runner.py mq-bridge \\
        --nats nats://127.0.0.1:4222 --stream S --subject s.events \\
        --dsn postgresql://user@127.0.0.1:5432/db --table peer_rows

``--mode raw`` (default): each peer stores each message as it is (no validation, dedupe,
chain or index) with the settings its documentation gives for bulk loads:

- mq-bridge: a route ``nats`` (durable JetStream consumer, deliver all) -> ``sqlx``
  (PostgreSQL, its default multi-row INSERT of the payload into ``payload jsonb``;
  ``bulk_copy`` needs a per-field token query and binds no whole payload), batches of
  ``--batch`` (default 20,000, the service's flush size), 2 concurrent.
- Pathway: ``pw.io.nats.read`` (JetStream stream, its own durable consumer, text) ->
  ``pw.io.postgres.write`` (stream of changes, batches of ``--batch``).

``--mode like``: each peer writes the event's columns (those of ``audit.events`` but
``seq`` and ``hash``, which only a chain gives) into the table ``benchmarks.peers`` makes
like ours: mq-bridge by its ``insert_query`` reading the whole payload once (its
``${payload:...}`` tokens bind top-level scalars only: no ``actor.id``, no ``metadata``);
Pathway by parsing JSON in its reader (``json_field_paths`` for the nested fields).
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
        "batch_size": args.batch,
        "concurrency": 2,
    }  # fmt: skip
    mq_bridge.Route.from_config(config, name="peer").run()


# The columns a like-for-like peer writes, from the event JSON (ours stores the same).
LIKE_INSERT = """
INSERT INTO {table} (tenant_id, id, action, category, severity, actor_type, actor_id,
    actor_display_name, resource_type, resource_id, resource_display_name, related_resources,
    description, metadata, changes, ip, user_agent, request_id, trace_id)
SELECT p->>'tenant_id', (p->>'id')::uuid, lower(p->>'action'),
    coalesce(p->>'category', 'CATEGORY_UNSPECIFIED'),
    coalesce(p->>'severity', 'SEVERITY_UNSPECIFIED'), p->'actor'->>'type', p->'actor'->>'id',
    coalesce(p->'actor'->>'display_name', ''), coalesce(p->'primary_resource'->>'type', ''),
    coalesce(p->'primary_resource'->>'id', ''),
    coalesce(p->'primary_resource'->>'display_name', ''),
    coalesce(p->'related_resources', '[]'), coalesce(p->>'description', ''),
    coalesce(p->'metadata', '{{}}')::json, (p->'changes')::json, coalesce(p->>'ip', ''),
    coalesce(p->>'user_agent', ''), coalesce(p->>'request_id', ''),
    coalesce(p->>'trace_id', '')
FROM (SELECT convert_from($1, 'UTF8')::jsonb AS p) AS m
"""


def run_mq_bridge_like(args: argparse.Namespace) -> None:
    import mq_bridge

    config = {
        "input": {"nats": {"url": args.nats, "stream": args.stream, "subject": args.subject,
                           "deliver_policy": "all", "prefetch_count": 20_000}},
        "output": {"sqlx": {"url": args.dsn, "table": args.table, "max_connections": 4,
                            "insert_query": LIKE_INSERT.format(table=args.table)}},
        "batch_size": args.batch,
        "concurrency": 2,
    }  # fmt: skip
    mq_bridge.Route.from_config(config, name="peer").run()


def run_pathway_like(args: argparse.Namespace) -> None:
    import pathway as pw

    def col(dtype: object, default: object = None) -> object:
        if default is None:
            return pw.column_definition(dtype=dtype)
        return pw.column_definition(dtype=dtype, default_value=default)

    # Pathway keeps ``id`` for its own row keys: the event id is ``event_id`` here.
    required = ("tenant_id", "event_id", "action", "actor_type", "actor_id")
    optional = {"category": "CATEGORY_UNSPECIFIED", "severity": "SEVERITY_UNSPECIFIED",
                "actor_display_name": "", "resource_type": "", "resource_id": "",
                "resource_display_name": "", "description": "", "ip": "", "user_agent": "",
                "request_id": "", "trace_id": ""}  # fmt: skip
    columns = {name: col(str) for name in required}
    columns.update({name: col(str, default) for name, default in optional.items()})
    columns["related_resources"] = col(pw.Json, pw.Json([]))
    columns["metadata"] = col(pw.Json, pw.Json({}))
    event = pw.schema_builder(columns, name="Event")
    nested = {"event_id": "/id", "actor_type": "/actor/type", "actor_id": "/actor/id",
              "actor_display_name": "/actor/display_name",
              "resource_type": "/primary_resource/type", "resource_id": "/primary_resource/id",
              "resource_display_name": "/primary_resource/display_name"}  # fmt: skip
    url = urlparse(args.dsn)
    settings = {"host": url.hostname, "port": str(url.port or 5432),
                "dbname": url.path.lstrip("/"), "user": url.username or "postgres"}  # fmt: skip
    if url.password:
        settings["password"] = url.password
    rows = pw.io.nats.read(args.nats, topic=args.subject, format="json", schema=event,
                           json_field_paths=nested, jetstream_stream_name=args.stream)  # fmt: skip
    rows = rows.with_columns(action=pw.this.action.str.lower())
    pw.io.postgres.write(rows, settings, args.table, max_batch_size=args.batch)
    pw.run(monitoring_level=pw.MonitoringLevel.NONE)


def run_pathway(args: argparse.Namespace) -> None:
    import pathway as pw

    url = urlparse(args.dsn)
    settings = {"host": url.hostname, "port": str(url.port or 5432),
                "dbname": url.path.lstrip("/"), "user": url.username or "postgres"}  # fmt: skip
    if url.password:
        settings["password"] = url.password
    rows = pw.io.nats.read(args.nats, topic=args.subject, format="plaintext",
                           jetstream_stream_name=args.stream)  # fmt: skip
    pw.io.postgres.write(rows, settings, args.table, max_batch_size=args.batch)
    pw.run(monitoring_level=pw.MonitoringLevel.NONE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("peer", choices=["mq-bridge", "pathway"])
    ap.add_argument("--nats", required=True)
    ap.add_argument("--stream", required=True)
    ap.add_argument("--subject", required=True)
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--table", required=True)
    ap.add_argument("--mode", choices=["raw", "like"], default="raw")
    ap.add_argument(
        "--batch",
        type=int,
        default=20_000,
        help="rows per batch write (mq-bridge batch_size, Pathway max_batch_size)",
    )
    args = ap.parse_args()
    runners = {
        ("mq-bridge", "raw"): run_mq_bridge,
        ("pathway", "raw"): run_pathway,
        ("mq-bridge", "like"): run_mq_bridge_like,
        ("pathway", "like"): run_pathway_like,
    }
    runners[args.peer, args.mode](args)


if __name__ == "__main__":
    main()
