"""CLI commands that talk to the HTTP API (through the Python client): events, stats, keys.

The API URL is AUDIT_API_URL (default ``http://127.0.0.1:$AUDIT_HTTP_PORT``, ``https://``
with AUDIT_TLS_CERT; an HTTPS server is verified against AUDIT_API_CA, and AUDIT_API_CERT /
AUDIT_API_KEY are the client certificate for mutual TLS); the token is AUDIT_TOKEN (a
tenant key) or AUDIT_ADMIN_TOKEN, or ``--token``.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from auditlog.endpoints import api_ssl, api_token, api_url
from infra.errors import AuditLogError
from infra.settings import Settings
from query_api.client import ApiUnreachable, AuditApiError, AuditClient
from query_api.sql import CSV_COLUMNS


def csv_row(event: dict[str, Any]) -> list[str]:
    """``event`` (as the list API returns it) in the export's CSV columns
    (:data:`query_api.sql.CSV_COLUMNS`, the same names in the same order); JSON values as
    compact JSON as stored, missing ones empty."""
    actor = event.get("actor") or {}
    resource = event.get("primary_resource") or {}
    flat = {
        **event,
        "actor_type": actor.get("type"), "actor_id": actor.get("id"),
        "actor_display_name": actor.get("display_name"),
        "resource_type": resource.get("type", ""), "resource_id": resource.get("id", ""),
        "resource_display_name": resource.get("display_name", ""),
    }  # fmt: skip
    row = []
    for column in CSV_COLUMNS:
        value = flat.get(column)
        if isinstance(value, dict | list):
            value = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        row.append("" if value is None else str(value))
    return row


class Api:
    """The CLI's view of :class:`~query_api.client.AuditClient`: API errors as click errors."""

    def __init__(self, base: str, token: str) -> None:
        self.client = AuditClient(base, token, retries=2, ssl_context=api_ssl(base))

    def call(self, method: str, path: str, params: dict[str, Any] | None = None,
             body: Any = None) -> Any:  # fmt: skip
        """Send a request; return the decoded JSON.

        Raises:
            click.ClickException: with the API's error message, or why it is unreachable.
        """
        try:
            return self.client.call(method, path, params, body)
        except (AuditApiError, ApiUnreachable) as exc:
            raise click.ClickException(str(exc)) from exc


def _api(ctx: click.Context, token: str | None) -> Api:
    settings: Settings = ctx.obj
    try:
        return Api(api_url(settings), token or api_token(settings))
    except AuditLogError as exc:
        raise click.ClickException(str(exc)) from exc


def _filters(f: dict[str, Any]) -> dict[str, Any]:
    return {
        "tenant_id": f.get("tenant_id"), "start_time": f.get("start_time"),
        "end_time": f.get("end_time"), "severities": f.get("severity") or (),
        "categories": f.get("category") or (), "actions": f.get("action") or (),
        "actor_type": f.get("actor_type"), "actor_id": f.get("actor_id"),
        "resource_type": f.get("resource_type"), "resource_id": f.get("resource_id"),
        "q": f.get("q"),
    }  # fmt: skip


def filter_options(fn: Any) -> Any:
    """Every filter of the query API, as options."""
    opts = [
        click.option("--tenant-id", "tenant_id", help="tenant (required with the admin token)"),
        click.option("--start-time", help="RFC 3339, inclusive"),
        click.option("--end-time", help="RFC 3339, exclusive"),
        click.option("--severity", multiple=True, help="SEVERITY_* (repeatable)"),
        click.option("--category", multiple=True, help="CATEGORY_* (repeatable)"),
        click.option("--action", multiple=True, help="exact action or prefix.* (repeatable)"),
        click.option("--actor-type"), click.option("--actor-id"),
        click.option("--resource-type"), click.option("--resource-id"),
        click.option("-q", "--q", "q", help="full-text search"),
        click.option("--token", help="bearer token (default AUDIT_TOKEN / AUDIT_ADMIN_TOKEN)"),
    ]  # fmt: skip
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return f"{value.get('type', '')}:{value.get('id', '')}"
    return "" if value is None else str(value)


def emit(events: list[dict[str, Any]], output: str, console: Console, header: bool) -> None:
    """Print events as a table, JSON lines or CSV."""
    if output == "ndjson":
        for e in events:
            sys.stdout.write(json.dumps(e) + "\n")
    elif output == "csv":
        w = csv.writer(sys.stdout)
        if header:
            w.writerow(CSV_COLUMNS)
        for e in events:
            w.writerow(csv_row(e))
    else:
        table = Table("occurred_at", "tenant", "seq", "action", "severity", "actor", "resource",
                      "description", show_header=header)  # fmt: skip
        for e in events:
            table.add_row(e["occurred_at"], e["tenant_id"], str(e["seq"]), e["action"],
                          e["severity"].removeprefix("SEVERITY_"), _cell(e["actor"]),
                          _cell(e.get("primary_resource")), e["description"][:60])  # fmt: skip
        console.print(table)


@click.group()
def events() -> None:
    """List, get and follow events (through the HTTP API)."""


@events.command("list")
@filter_options
@click.option("--order", type=click.Choice(["desc", "asc"]), default="desc")
@click.option("--page-size", type=click.IntRange(1, 1000), default=100)
@click.option("--limit", type=int, default=100, help="stop after this many (0: all)")
@click.option("-o", "--output", type=click.Choice(["table", "json", "ndjson", "csv"]),
              default="table")  # fmt: skip
@click.pass_context
def list_cmd(ctx: click.Context, order: str, page_size: int, limit: int, output: str,
             token: str | None, **f: Any) -> None:  # fmt: skip
    """List events matching the filters, following page tokens."""
    api = _api(ctx, token)
    params = {**_filters(f), "order": order, "page_size": page_size}
    collected: list[dict[str, Any]] = []
    while True:
        page = api.call("GET", "/v1/audit/events", params)
        collected.extend(page["events"])
        if not page["next_page_token"] or (limit and len(collected) >= limit):
            break
        params["page_token"] = page["next_page_token"]
    if limit:
        collected = collected[:limit]
    if output == "json":
        click.echo(json.dumps(collected, indent=2))
    else:
        emit(collected, output, Console(), header=True)


@events.command("get")
@click.argument("event_id")
@click.option("--tenant-id", "tenant_id")
@click.option("--token")
@click.pass_context
def get_cmd(ctx: click.Context, event_id: str, tenant_id: str | None, token: str | None) -> None:
    """Print one event as JSON."""
    body = _api(ctx, token).call("GET", f"/v1/audit/events/{event_id}", {"tenant_id": tenant_id})
    click.echo(json.dumps(body["event"], indent=2))


@events.command("tail")
@filter_options
@click.option("--interval", type=float, default=1.0, help="seconds between polls")
@click.option("--count", type=int, default=0, help="exit after this many events (0: never)")
@click.option("-o", "--output", type=click.Choice(["table", "ndjson", "csv"]), default="ndjson")
@click.pass_context
def tail_cmd(ctx: click.Context, interval: float, count: int, output: str,
             token: str | None, **f: Any) -> None:  # fmt: skip
    """Follow new events live, in the order they were stored (polls the API; Ctrl-C stops).

    Follows the tenant's seq (commit order), so a late event with an old ``occurred_at``
    is shown when it arrives. Starts after the newest stored event; with ``--start-time``,
    first shows the stored events since then (they are a filter on ``occurred_at``).
    """
    api = _api(ctx, token)
    console = Console()
    last = 0
    if not f.get("start_time"):
        newest = api.call("GET", "/v1/audit/events", {"tenant_id": f.get("tenant_id"),
                          "after_seq": 0, "order": "desc", "page_size": 1})  # fmt: skip
        last = max((e["seq"] for e in newest["events"]), default=0)
    shown = 0
    try:
        while True:
            params = {**_filters(f), "after_seq": last, "page_size": 1000}
            page = api.call("GET", "/v1/audit/events", params)
            fresh = page["events"]
            if fresh:
                emit(fresh, output, console, header=False)
                sys.stdout.flush()
                last = fresh[-1]["seq"]
                shown += len(fresh)
                if count and shown >= count:
                    return
            if len(fresh) < 1000:  # caught up: wait; a full page means more is waiting
                time.sleep(interval)
    except KeyboardInterrupt:
        pass


@click.command()
@filter_options
@click.pass_context
def stats(ctx: click.Context, token: str | None, **f: Any) -> None:
    """Counts by severity and category, and a histogram (default: the last 24 h)."""
    params = {k: v for k, v in _filters(f).items() if k not in ("page_size",)}
    body = _api(ctx, token).call("GET", "/v1/audit/stats", params)
    console = Console()
    console.print(f"[bold]{body['total']}[/] events for {body['tenant_id']} "
                  f"from {body['start_time']} to {body['end_time']}")  # fmt: skip
    for title, key in (("severity", "by_severity"), ("category", "by_category")):
        table = Table(title, "events")
        for name, n in sorted(body[key].items(), key=lambda kv: -kv[1]):
            table.add_row(name, str(n))
        console.print(table)


@click.group()
def keys() -> None:
    """Create, list and revoke tenant API keys (admin token)."""


@keys.command("create")
@click.argument("tenant_id")
@click.option("--scope", "scopes", multiple=True, type=click.Choice(["read", "write"]),
              default=("read",), show_default=True)  # fmt: skip
@click.option("--expires-at", help="RFC 3339 time the key stops working (default: never)")
@click.option("--token")
@click.pass_context
def keys_create(ctx: click.Context, tenant_id: str, scopes: tuple[str, ...],
                expires_at: str | None, token: str | None) -> None:  # fmt: skip
    """Create a key for TENANT_ID; prints the token once."""
    request: dict[str, Any] = {"tenant_id": tenant_id, "scopes": list(scopes)}
    if expires_at:
        request["expires_at"] = expires_at
    body = _api(ctx, token).call("POST", "/v1/admin/keys", body=request)
    click.echo(json.dumps(body, indent=2))


@keys.command("list")
@click.option("--tenant-id", "tenant_id")
@click.option("--token")
@click.pass_context
def keys_list(ctx: click.Context, tenant_id: str | None, token: str | None) -> None:
    """List keys (never their tokens)."""
    body = _api(ctx, token).call("GET", "/v1/admin/keys", {"tenant_id": tenant_id})
    table = Table("key_id", "tenant", "scopes", "created_at", "expires_at", "revoked_at",
                  "last_used_at")  # fmt: skip
    for k in body["keys"]:
        table.add_row(k["key_id"], k["tenant_id"], ",".join(k["scopes"]), k["created_at"],
                      k["expires_at"] or "", k["revoked_at"] or "",
                      k["last_used_at"] or "")  # fmt: skip
    Console().print(table)


@keys.command("revoke")
@click.argument("key_id")
@click.option("--token")
@click.pass_context
def keys_revoke(ctx: click.Context, key_id: str, token: str | None) -> None:
    """Revoke KEY_ID."""
    body = _api(ctx, token).call("DELETE", f"/v1/admin/keys/{key_id}")
    click.echo(f"revoked {body['key_id']} at {body['revoked_at']}")


@click.group()
def tenants() -> None:
    """A tenant's retention and legal hold (admin token)."""


def _policy_out(body: dict[str, Any]) -> None:
    click.echo(json.dumps(body, indent=2))


@tenants.command("policy")
@click.argument("tenant_id")
@click.option("--token")
@click.pass_context
def tenants_policy(ctx: click.Context, tenant_id: str, token: str | None) -> None:
    """Show TENANT_ID's retention and legal hold as they apply now."""
    _policy_out(_api(ctx, token).call("GET", f"/v1/admin/tenants/{tenant_id}/retention"))


@tenants.command("retention")
@click.argument("tenant_id")
@click.argument("days")
@click.option("--archive", type=click.Choice(["yes", "no", "default"]),
              help="archive its months before they are dropped (default: unchanged)")  # fmt: skip
@click.option("--token")
@click.pass_context
def tenants_retention(ctx: click.Context, tenant_id: str, days: str, archive: str | None,
                      token: str | None) -> None:  # fmt: skip
    """Set TENANT_ID's retention to DAYS, or 'default' for AUDIT_RETENTION_DAYS."""
    if days != "default" and not days.isdigit():
        raise click.BadParameter("a whole number of days, or 'default'", param_hint="DAYS")
    value = None if days == "default" else int(days)
    api, path = _api(ctx, token), f"/v1/admin/tenants/{tenant_id}/retention"
    keep = {"yes": True, "no": False, "default": None}
    flag = keep[archive] if archive else api.call("GET", path)["archive"]
    _policy_out(api.call("PUT", path, body={"retention_days": value, "archive": flag}))


@tenants.command("hold")
@click.argument("tenant_id")
@click.option("--reason", required=True, help="why (a case number, a request)")
@click.option("--token")
@click.pass_context
def tenants_hold(ctx: click.Context, tenant_id: str, reason: str, token: str | None) -> None:
    """Place a legal hold on TENANT_ID: nothing of it is hidden or dropped."""
    _policy_out(_api(ctx, token).call("PUT", f"/v1/admin/tenants/{tenant_id}/legal-hold",
                                      body={"reason": reason}))  # fmt: skip


@tenants.command("release")
@click.argument("tenant_id")
@click.option("--token")
@click.pass_context
def tenants_release(ctx: click.Context, tenant_id: str, token: str | None) -> None:
    """Release TENANT_ID's legal hold."""
    _policy_out(_api(ctx, token).call("DELETE", f"/v1/admin/tenants/{tenant_id}/legal-hold"))
