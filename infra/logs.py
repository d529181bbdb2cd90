"""Logging configuration, applied once at the entry point."""

from __future__ import annotations

import logging
import sys
import time

import msgspec

from infra.settings import redact_url

_enc = msgspec.json.Encoder()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message (+ exc)."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact_url(record.getMessage()),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return _enc.encode(doc).decode()


class RedactingFormatter(logging.Formatter):
    """Plain text, with passwords in URLs hidden."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_url(super().format(record))


def configure(fmt: str = "text", level: str = "INFO") -> None:
    """Configure the root logger for ``fmt`` (``text`` or ``json``) on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            RedactingFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # faust-streaming and mode log every service start/stop at INFO (dozens of lines per
    # Kafka worker start); their warnings and errors still show.
    for name in ("faust", "mode"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
