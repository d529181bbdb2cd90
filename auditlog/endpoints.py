"""Where inspection commands find PostgreSQL, NATS and the HTTP API.

Inspection never starts servers: with ``AUDIT_DATABASE_URL`` / ``AUDIT_NATS_URL`` unset it
reads the embedded servers' ports (and PostgreSQL's generated password) from the state
dir of a running ``auditlog run``, and says so clearly when nothing is running there.
"""

from __future__ import annotations

import os
from pathlib import Path

from infra.errors import ConfigError
from infra.settings import Settings


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def database_url(settings: Settings) -> str:
    """The owner DSN: AUDIT_DATABASE_URL, else the embedded server's.

    Raises:
        ConfigError: when neither is available.
    """
    if settings.database_url:
        return settings.database_url
    pg = Path(settings.state_dir) / "pg"
    port, password = _read(pg / "port"), _read(pg / "password")
    if not port or not password or not (pg / "data" / "postmaster.pid").exists():
        raise ConfigError(
            "AUDIT_DATABASE_URL",
            f"not set, and no embedded PostgreSQL runs under {pg} (start `auditlog run`)",
        )
    return f"postgresql://postgres:{password}@127.0.0.1:{port}/auditlog"


def nats_url(settings: Settings) -> str:
    """AUDIT_NATS_URL, else the embedded server's.

    Raises:
        ConfigError: when neither is available.
    """
    if settings.nats_url:
        return settings.nats_url
    port = _read(Path(settings.state_dir) / "nats" / "port")
    if not port:
        raise ConfigError(
            "AUDIT_NATS_URL",
            f"not set, and no embedded NATS under {settings.state_dir} (start `auditlog run`)",
        )
    return f"nats://127.0.0.1:{port}"


def api_url(settings: Settings) -> str:
    """AUDIT_API_URL, else the local service on AUDIT_HTTP_PORT."""
    return os.environ.get("AUDIT_API_URL") or f"http://127.0.0.1:{settings.http_port}"


def api_token(settings: Settings) -> str:
    """AUDIT_TOKEN (a tenant key), else AUDIT_ADMIN_TOKEN.

    Raises:
        ConfigError: when neither is set.
    """
    token = os.environ.get("AUDIT_TOKEN") or settings.admin_token
    if not token:
        raise ConfigError("AUDIT_TOKEN", "set AUDIT_TOKEN (a tenant key) or AUDIT_ADMIN_TOKEN")
    return token
