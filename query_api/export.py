"""Streaming exports, transport-neutral: COPY's output paced into any async writer, with an
idle watchdog, and a failure that no client can take for a complete file."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import msgspec

Write = Callable[[bytes], Awaitable[None]]
_NO_TOTAL_LIMIT_S = 7 * 24 * 3600.0  # asyncpg's command_timeout must not cut a long export


def copy_options(fmt: str) -> dict[str, Any]:
    """asyncpg ``copy_from_query`` options for ``fmt`` (``csv`` or ``ndjson``)."""
    if fmt == "csv":
        return {"format": "csv", "header": True}
    # CSV framing with a quote and delimiter that never occur in JSON text: each row is
    # the event's JSON, verbatim, on its own line.
    return {"format": "csv", "delimiter": "\x02", "quote": "\x01"}


def error_line(rows: int) -> bytes:
    """The NDJSON line that ends a failed export (after ``rows`` rows)."""
    doc = {"error": {"code": "export_failed", "message": f"the export failed after {rows} "
                     "rows; this file is incomplete", "rows": rows}}  # fmt: skip
    return b"\n" + msgspec.json.encode(doc) + b"\n"


class ExportSink:
    """Where COPY's chunks go: written out, paced, and watched for idleness.

    Args:
        write: the transport's writer (e.g. an HTTP streaming response's ``write``).
        rows_per_s: pace (0 = as fast as the client reads).
    """

    def __init__(self, write: Write, rows_per_s: int) -> None:
        self._write = write
        self.rows_per_s = rows_per_s
        self.rows = 0
        self._started = time.monotonic()
        self._idle_since: float | None = time.monotonic()  # None while writing

    async def write(self, chunk: bytes) -> None:
        """COPY's output callback (PostgreSQL waits while it runs: back-pressure)."""
        self._idle_since = None
        try:
            await self._write(chunk)
            self.rows += chunk.count(b"\n")
            if self.rows_per_s:
                ahead = self.rows / self.rows_per_s - (time.monotonic() - self._started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        finally:
            self._idle_since = time.monotonic()

    async def watch(self, copy: asyncio.Future[Any], idle_timeout: float) -> None:
        """Wait for ``copy``; cancel it when PostgreSQL sends nothing for ``idle_timeout``
        (time spent writing to a slow client does not count), and whenever this wait ends
        otherwise (the request cancelled, as a stop does after AUDIT_SHUTDOWN_TIMEOUT_S):
        the COPY never outlives the request, so its connection goes back to the pool idle.

        Raises:
            TimeoutError: PostgreSQL was idle too long; or what the COPY raised.
        """
        try:
            while True:
                done, _ = await asyncio.wait({copy}, timeout=min(1.0, idle_timeout))
                if done:
                    copy.result()
                    return
                idle = self._idle_since
                if idle is not None and time.monotonic() - idle > idle_timeout:
                    raise TimeoutError(f"PostgreSQL sent nothing for {idle_timeout:g} s")
        finally:
            if not copy.done():
                copy.cancel()
                with contextlib.suppress(BaseException):
                    await copy


async def run_copy(conn: asyncpg.Connection, query: str, params: list[Any], fmt: str,
                   sink: ExportSink, idle_timeout: float) -> None:  # fmt: skip
    """COPY ``query`` out through ``sink`` until done.

    Raises:
        Exception: whatever stopped it (the rows already written are ``sink.rows``).
    """
    options = copy_options(fmt)
    copy = asyncio.ensure_future(conn.copy_from_query(
        query, *params, output=sink.write, timeout=_NO_TOTAL_LIMIT_S, **options))  # fmt: skip
    await sink.watch(copy, idle_timeout)
