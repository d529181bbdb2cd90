"""Settings and the migration files."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.errors import ConfigError, MigrationError
from infra.migrate import load_migrations
from infra.settings import load_settings, nats_servers


def test_settings_from_env_with_secrets_hidden() -> None:
    s = load_settings(
        {
            "AUDIT_DATABASE_URL": "postgresql://u:s3cret@db/audit",
            "AUDIT_ADMIN_TOKEN": "tok-123",
            "AUDIT_HTTP_PORT": "9090",
        }
    )
    assert s.http_port == 9090 and s.grpc_port == 50051 and s.state_dir == ".auditlog"
    assert "s3cret" not in repr(s) and "tok-123" not in repr(s)
    assert s.replace(http_port=1).http_port == 1
    assert s.embedded  # NATS URL unset


@pytest.mark.parametrize(
    ("env", "var"),
    [
        ({"AUDIT_HTTP_PORT": "eighty"}, "AUDIT_HTTP_PORT"),
        ({"AUDIT_LOG_FORMAT": "xml"}, "AUDIT_LOG_FORMAT"),
        ({"AUDIT_BATCH_MAX_EVENTS": "0"}, "AUDIT_BATCH_MAX_EVENTS"),
        ({"AUDIT_KAFKA_BOOTSTRAP": "kafka://broker:9092"}, "AUDIT_KAFKA_BOOTSTRAP"),
        ({"AUDIT_KAFKA_BOOTSTRAP": "a:1,b"}, "AUDIT_KAFKA_BOOTSTRAP"),
        ({"AUDIT_KAFKA_TOPIC": "audit events"}, "AUDIT_KAFKA_TOPIC"),
        ({"AUDIT_KAFKA_DLQ_TOPIC": "audit.events"}, "AUDIT_KAFKA_DLQ_TOPIC"),
        ({"AUDIT_KAFKA_SESSION_TIMEOUT_S": "0"}, "AUDIT_KAFKA_SESSION_TIMEOUT_S"),
        ({"AUDIT_NATS_INGEST": "false"}, "AUDIT_NATS_INGEST"),
        ({"AUDIT_NATS_INGEST": "maybe"}, "AUDIT_NATS_INGEST"),
        ({"AUDIT_NATS_URL": "nats://n1:4222 nats://n2:4222"}, "AUDIT_NATS_URL"),
        ({"AUDIT_NATS_URL": "nats://n1:4222,"}, "AUDIT_NATS_URL"),
        ({"AUDIT_NATS_URL": "nats://n1:4222,http://n2"}, "AUDIT_NATS_URL"),
        ({"AUDIT_NATS_URL": "nats://n1:99999"}, "AUDIT_NATS_URL"),
        ({"AUDIT_NATS_URL": "n1:4222"}, "AUDIT_NATS_URL"),
        (
            {"AUDIT_NATS_URL": "nats://n1:4222", "AUDIT_STREAM_REPLICAS": "0"},
            "AUDIT_STREAM_REPLICAS",
        ),
        (
            {"AUDIT_NATS_URL": "nats://n1:4222", "AUDIT_STREAM_REPLICAS": "6"},
            "AUDIT_STREAM_REPLICAS",
        ),
        ({"AUDIT_STREAM_REPLICAS": "3"}, "AUDIT_STREAM_REPLICAS"),  # embedded: one node
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], var: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert info.value.setting == var and var in str(info.value)


def test_nats_url_takes_a_list_of_nodes() -> None:
    url = "nats://n1:4222, tls://svc:s3cret@n2,nats://[::1]:4223"
    s = load_settings({"AUDIT_NATS_URL": url, "AUDIT_STREAM_REPLICAS": "3"})
    assert s.stream_replicas == 3 and s.nats_url == url
    assert nats_servers(url) == ["nats://n1:4222", "tls://svc:s3cret@n2", "nats://[::1]:4223"]
    with pytest.raises(ConfigError) as info:
        load_settings({"AUDIT_NATS_URL": "nats://n1,nats://svc:s3cret@n2:port"})
    assert "item 2 of 2" in str(info.value) and "s3cret" not in str(info.value)
    assert load_settings().stream_replicas == 1


def test_kafka_settings() -> None:
    s = load_settings({"AUDIT_KAFKA_BOOTSTRAP": "k1:9092,k2:9093", "AUDIT_NATS_INGEST": "false"})
    assert s.kafka_bootstrap == "k1:9092,k2:9093" and not s.nats_ingest
    assert (s.kafka_topic, s.kafka_group, s.kafka_dlq_topic) == (
        "audit.events", "auditlog", "audit.dlq")  # fmt: skip


def test_migrations_load_in_version_order_whatever_the_file_order(tmp_path: Path) -> None:
    # Written in an order that is neither numeric nor what a directory listing gives.
    for name, sql in (("010_late.sql", "SELECT 10"), ("002_b.sql", "SELECT 2"),
                      ("001_a.sql", "SELECT 1"), ("notes.txt", "x")):  # fmt: skip
        (tmp_path / name).write_text(sql)
    ms = load_migrations(tmp_path)
    assert [m.version for m in ms] == [1, 2, 10]
    assert len({m.checksum for m in ms}) == 3  # the checksum follows the content


def test_the_shipped_migrations_are_numbered_from_1_without_gaps() -> None:
    ms = load_migrations()
    assert [m.version for m in ms] == list(range(1, len(ms) + 1))


def test_duplicate_migration_numbers_are_refused(tmp_path: Path) -> None:
    (tmp_path / "001_a.sql").write_text("SELECT 1")
    (tmp_path / "001_b.sql").write_text("SELECT 2")
    with pytest.raises(MigrationError):
        load_migrations(tmp_path)
