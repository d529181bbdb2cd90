"""Where inspection commands find PostgreSQL, NATS and the HTTP API.

Inspection never starts servers: with ``AUDIT_DATABASE_URL`` / ``AUDIT_NATS_URL`` unset it
reads the embedded servers' ports (and PostgreSQL's generated password) from the state
dir of a running ``auditlog run``, and says so clearly when nothing is running there.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from infra.admin_tokens import admin_tokens
from infra.errors import ConfigError
from infra.settings import Settings
from infra.tls import client_context


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def database_url(settings: Settings) -> str:
    """The DSN inspection commands read with: AUDIT_DATABASE_URL (the runtime login, or a
    single URL), else AUDIT_DATABASE_OWNER_URL, else the embedded server's.

    Raises:
        ConfigError: when none is available.
    """
    if settings.database_url or settings.database_owner_url:
        return settings.database_url or settings.database_owner_url
    pg = Path(settings.state_dir) / "pg"
    port, password = _read(pg / "port"), _read(pg / "password")
    if not port or not password or not (pg / "data" / "postmaster.pid").exists():
        raise ConfigError(
            "AUDIT_DATABASE_URL",
            f"not set, and no embedded PostgreSQL runs under {pg} (start `auditlog run`)",
        )
    return f"postgresql://postgres:{password}@127.0.0.1:{port}/auditlog"


def owner_url(settings: Settings) -> str:
    """The owner's DSN (retention): AUDIT_DATABASE_OWNER_URL, else :func:`database_url`.

    Raises:
        ConfigError: when none is available.
    """
    return settings.database_owner_url or database_url(settings)


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
    """AUDIT_API_URL, else the local service on AUDIT_HTTP_PORT (``https://`` when
    AUDIT_TLS_CERT is set)."""
    scheme = "https" if settings.tls_cert else "http"
    return os.environ.get("AUDIT_API_URL") or f"{scheme}://127.0.0.1:{settings.http_port}"


def api_ssl(url: str) -> ssl.SSLContext | None:
    """The TLS context for an ``https://`` API URL (None for ``http://``): the server is
    verified against AUDIT_API_CA (else the system's CAs); AUDIT_API_CERT and
    AUDIT_API_KEY, when set, are presented to a service that wants client certificates.

    Raises:
        ConfigError: naming the variable whose file cannot be used.
    """
    if not url.lower().startswith("https:"):
        return None
    env = os.environ
    return client_context(env.get("AUDIT_API_CA", ""), env.get("AUDIT_API_CERT", ""),
                          env.get("AUDIT_API_KEY", ""))  # fmt: skip


def api_token(settings: Settings) -> str:
    """AUDIT_TOKEN (a tenant key), else the first admin token (AUDIT_ADMIN_TOKEN, or the
    state dir's ``admin-tokens`` file when it is readable here).

    Raises:
        ConfigError: when none is available.
    """
    token = os.environ.get("AUDIT_TOKEN")
    if token:
        return token
    admins = admin_tokens(settings)
    if not admins:
        raise ConfigError(
            "AUDIT_TOKEN",
            "set AUDIT_TOKEN (a tenant key) or AUDIT_ADMIN_TOKEN, or run this beside the "
            "service's state dir (AUDIT_STATE_DIR)",
        )
    return admins[-1]
