"""Test databases on the session's PostgreSQL server."""

from __future__ import annotations

import itertools
import os
import uuid

import asyncpg

from infra.db import with_database

_counter = itertools.count(1)


async def create_database(pg_server_url: str, template: str | None) -> str:
    """Create a fresh database (from ``template`` when given); return its DSN."""
    name = f"auditlog_t{os.getpid()}_{next(_counter)}_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(pg_server_url)
    try:
        tpl = f' TEMPLATE "{template}"' if template else ""
        await admin.execute(f'CREATE DATABASE "{name}"{tpl}')
    finally:
        await admin.close()
    return with_database(pg_server_url, name)
