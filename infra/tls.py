"""TLS of the service's own listeners (HTTP, metrics, gRPC) and of its API client.

With ``AUDIT_TLS_CERT`` and ``AUDIT_TLS_KEY`` set, every listener speaks TLS ≥ 1.2 only;
with ``AUDIT_TLS_CLIENT_CA`` too, a client must present a certificate that CA signed.
Files are read and checked at start, so a bad one fails with the variable's name.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from infra.errors import ConfigError
from infra.settings import Settings


@dataclass(frozen=True)
class ServerPem:
    """The PEM bytes gRPC takes (it does not use Python's ``ssl``)."""

    cert: bytes
    key: bytes
    client_ca: bytes | None


def _read(var: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(var, f"cannot read {path}: {exc.strerror or exc}") from exc


def _no_password() -> bytes:
    return b""  # an encrypted key fails to load instead of prompting on the terminal


def _load_chain(ctx: ssl.SSLContext, cert_var: str, cert: str, key_var: str, key: str) -> None:
    """Load a certificate and its key into ``ctx``, naming the variable at fault."""
    for var, path in ((cert_var, cert), (key_var, key)):
        _read(var, path)
    try:  # the certificate alone first, so its errors are not blamed on the key
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert)
    except ssl.SSLError as exc:
        raise ConfigError(cert_var, f"{cert} holds no PEM certificate ({exc.reason})") from exc
    try:
        ctx.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:
        if "MISMATCH" in str(exc):
            raise ConfigError(key_var, f"{key} is not the key of {cert_var} ({cert})") from exc
        why = f" ({exc.reason})" if exc.reason else ""
        raise ConfigError(key_var, f"{key} holds no unencrypted PEM private key{why}") from exc


def _load_ca(ctx: ssl.SSLContext, var: str, path: str) -> None:
    _read(var, path)
    try:
        ctx.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise ConfigError(var, f"{path} holds no PEM certificate ({exc.reason})") from exc


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The HTTP listeners' TLS context, or None when TLS is off (no ``AUDIT_TLS_CERT``).

    Raises:
        ConfigError: naming ``AUDIT_TLS_CERT``, ``AUDIT_TLS_KEY`` or
            ``AUDIT_TLS_CLIENT_CA`` when its file cannot be read or used, or when the key
            is not the certificate's.
    """
    if not settings.tls_cert:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, "AUDIT_TLS_CERT", settings.tls_cert, "AUDIT_TLS_KEY", settings.tls_key)
    if settings.tls_client_ca:
        _load_ca(ctx, "AUDIT_TLS_CLIENT_CA", settings.tls_client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def server_pem(settings: Settings) -> ServerPem | None:
    """The same files as PEM bytes (for gRPC), or None when TLS is off.

    Call after :func:`server_context`, which checks them.

    Raises:
        ConfigError: a file cannot be read.
    """
    if not settings.tls_cert:
        return None
    ca = settings.tls_client_ca
    return ServerPem(
        cert=_read("AUDIT_TLS_CERT", settings.tls_cert),
        key=_read("AUDIT_TLS_KEY", settings.tls_key),
        client_ca=_read("AUDIT_TLS_CLIENT_CA", ca) if ca else None,
    )


def client_context(ca: str = "", cert: str = "", key: str = "") -> ssl.SSLContext:
    """The API client's context (``AUDIT_API_CA``, ``AUDIT_API_CERT``, ``AUDIT_API_KEY``):
    it verifies the server's certificate and name against ``ca`` (else the system's CAs)
    and, with ``cert`` and ``key``, presents that certificate (mutual TLS).

    Raises:
        ConfigError: naming the variable whose file cannot be read or used.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca:
        _load_ca(ctx, "AUDIT_API_CA", ca)
    else:
        ctx.load_default_certs()
    if bool(cert) != bool(key):
        raise ConfigError("AUDIT_API_CERT", "a client certificate needs its key (AUDIT_API_KEY)")
    if cert:
        _load_chain(ctx, "AUDIT_API_CERT", cert, "AUDIT_API_KEY", key)
    return ctx
