"""Settings and the migration files."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.errors import ConfigError, MigrationError
from infra.migrate import load_migrations
from infra.settings import load_settings


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
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], var: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert info.value.setting == var and var in str(info.value)


def test_migrations_are_numbered_in_order() -> None:
    ms = load_migrations()
    assert [m.version for m in ms] == sorted(m.version for m in ms)
    assert ms[0].version == 1 and all(m.checksum for m in ms)


def test_duplicate_migration_numbers_are_refused(tmp_path: Path) -> None:
    (tmp_path / "001_a.sql").write_text("SELECT 1")
    (tmp_path / "001_b.sql").write_text("SELECT 2")
    with pytest.raises(MigrationError):
        load_migrations(tmp_path)
