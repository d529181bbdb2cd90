"""The service's error hierarchy. Every error carries typed fields and a clear message."""

from __future__ import annotations


class AuditLogError(Exception):
    """Base class of the service's own errors."""


class ConfigError(AuditLogError):
    """A setting is missing or invalid.

    Attributes:
        setting: the environment variable or flag at fault.
    """

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


class EmbeddedServerError(AuditLogError):
    """An embedded PostgreSQL or NATS server failed to start or stop.

    Attributes:
        server: ``"postgresql"`` or ``"nats"``.
        log_path: where the server's own log is, for the operator.
    """

    def __init__(self, server: str, message: str, log_path: str = "") -> None:
        hint = f" (see {log_path})" if log_path else ""
        super().__init__(f"embedded {server}: {message}{hint}")
        self.server = server
        self.log_path = log_path


class MigrationError(AuditLogError):
    """A migration failed or the database schema is newer than this code.

    Attributes:
        version: the migration number at fault (0 when not one migration).
    """

    def __init__(self, version: int, message: str) -> None:
        super().__init__(f"migration {version:03d}: {message}" if version else message)
        self.version = version


class StorageUnavailable(AuditLogError):
    """PostgreSQL cannot be reached or refused the connection; retrying may help."""


class ArchiveError(AuditLogError):
    """A retention archive could not be written, read back or verified: nothing is dropped."""


class SchemaNotCurrent(AuditLogError):
    """Migrations are pending and this process may not apply them (it holds the runtime
    login only): it waits until a process with the owner's credentials has.

    Attributes:
        pending: how many migrations are not applied yet.
    """

    def __init__(self, pending: int) -> None:
        super().__init__(
            f"{pending} migration(s) pending; they are applied where the owner's credentials"
            " are (AUDIT_DATABASE_OWNER_URL: `auditlog migrate`, or a service process)"
        )
        self.pending = pending
