"""Admin bearer tokens: from ``AUDIT_ADMIN_TOKEN`` or kept in the state dir.

Contract:
- ``AUDIT_ADMIN_TOKEN`` set (comma-separated for several): exactly those tokens are valid;
  the state dir's file is ignored.
- Unset: the tokens listed in ``<state dir>/admin-tokens`` (one per line, ``#`` comments,
  mode 0600) are valid. The first start of a serving process makes the file with one
  token (:func:`ensure_admin_token`); ``auditlog admin-token add|remove`` rotate them and a
  running service notices within a second (:class:`AdminTokenSource`).

Several tokens at once allow rotation without downtime: add the new one, move clients
over, remove the old one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from infra.errors import ConfigError
from infra.settings import Settings

FILE_NAME = "admin-tokens"
PREFIX = "adm_"
MIN_LENGTH = 16  # shorter admin tokens are refused: they could be guessed


def token_file(settings: Settings) -> Path:
    """Where the state dir keeps admin tokens."""
    return Path(settings.state_dir) / FILE_NAME


def new_admin_token() -> str:
    """A fresh admin token (256 random bits)."""
    return PREFIX + secrets.token_urlsafe(32)


def parse_tokens(text: str) -> list[str]:
    """Tokens of a file's ``text`` or a comma-separated setting: blanks and ``#`` comments
    dropped, duplicates removed, order kept."""
    found: list[str] = []
    for line in text.splitlines():
        for part in line.split("#", 1)[0].split(","):
            token = part.strip()
            if token and token not in found:
                found.append(token)
    return found


def _check(tokens: list[str], where: str) -> list[str]:
    for token in tokens:
        if len(token) < MIN_LENGTH or any(c.isspace() for c in token):
            raise ConfigError(where, f"admin tokens need {MIN_LENGTH}+ characters, no spaces")
    return tokens


def admin_tokens(settings: Settings) -> list[str]:
    """The valid admin tokens now (see the module docstring); [] when none exist yet.

    Raises:
        ConfigError: a token shorter than 16 characters or holding spaces.
    """
    if settings.admin_token:
        return _check(parse_tokens(settings.admin_token), "AUDIT_ADMIN_TOKEN")
    try:
        text = token_file(settings).read_text()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError("AUDIT_STATE_DIR", f"cannot read {token_file(settings)}: {exc}") from exc
    return _check(parse_tokens(text), str(token_file(settings)))


def _write(path: Path, tokens: list[str]) -> None:
    """Replace the file atomically, 0600 from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# admin bearer tokens, one per line (auditlog admin-token add|remove)\n")
        f.writelines(t + "\n" for t in tokens)
    os.replace(tmp, path)


def ensure_admin_token(settings: Settings) -> str | None:
    """Make the first admin token when none is configured and none is kept.

    Returns:
        The new token (to be shown once), or None when tokens already exist.
    """
    if admin_tokens(settings):
        return None
    token = new_admin_token()
    path = token_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # O_EXCL: two processes starting at once make one file, not two tokens
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return None if admin_tokens(settings) else _replace_empty(settings, token)
    with os.fdopen(fd, "w") as f:
        f.write("# admin bearer tokens, one per line (auditlog admin-token add|remove)\n")
        f.write(token + "\n")
    return token


def _replace_empty(settings: Settings, token: str) -> str:
    _write(token_file(settings), [token])
    return token


def _require_file_mode(settings: Settings) -> None:
    if settings.admin_token:
        raise ConfigError(
            "AUDIT_ADMIN_TOKEN",
            "admin tokens come from this variable: rotate them there (new,old then new)",
        )


def add_admin_token(settings: Settings) -> str:
    """Add a new token beside the existing ones and return it.

    Raises:
        ConfigError: tokens come from ``AUDIT_ADMIN_TOKEN`` (rotate them there).
    """
    _require_file_mode(settings)
    token = new_admin_token()
    _write(token_file(settings), [*admin_tokens(settings), token])
    return token


def remove_admin_token(settings: Settings, prefix: str) -> str:
    """Remove the one token starting with ``prefix`` (8+ characters) and return it.

    Raises:
        ConfigError: no single token matches, it is the last one, or tokens come from
            ``AUDIT_ADMIN_TOKEN``.
    """
    _require_file_mode(settings)
    if len(prefix) < 8:
        raise ConfigError("TOKEN", "give at least the first 8 characters of the token")
    tokens = admin_tokens(settings)
    matches = [t for t in tokens if t.startswith(prefix)]
    if len(matches) != 1:
        raise ConfigError("TOKEN", f"{len(matches)} admin tokens start with {prefix!r}, not 1")
    if len(tokens) == 1:
        raise ConfigError("TOKEN", "that is the only admin token: add a new one first")
    _write(token_file(settings), [t for t in tokens if t != matches[0]])
    return matches[0]


class AdminTokenSource:
    """The valid admin tokens for a running service, re-read at most once a ``ttl``.

    A rotation with ``auditlog admin-token add|remove`` applies without a restart. A file
    that cannot be read keeps the last tokens known (logged by the caller's next start).
    """

    def __init__(self, settings: Settings, ttl: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self._settings = settings
        self._ttl = ttl
        self._clock = clock
        self._tokens = tuple(t.encode() for t in admin_tokens(settings))
        self._checked = clock()

    def tokens(self) -> tuple[bytes, ...]:
        """The tokens valid now, as bytes for constant-time comparison."""
        now = self._clock()
        if not self._settings.admin_token and now - self._checked >= self._ttl:
            self._checked = now
            with contextlib.suppress(ConfigError):
                self._tokens = tuple(t.encode() for t in admin_tokens(self._settings))
        return self._tokens
