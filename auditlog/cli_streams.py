"""``auditlog streams``: a tenant's streams out (webhooks, Splunk HEC, S3) through the admin
API: create, list, show, delete, resume, rotate-secret. Admin token (AUDIT_ADMIN_TOKEN or
``--token``)."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from auditlog.cli_api import _api


def _path(tenant_id: str, stream_id: str = "", action: str = "") -> str:
    base = f"/v1/admin/tenants/{tenant_id}/streams"
    return f"{base}/{stream_id}{action}" if stream_id else base


def _out(body: Any) -> None:
    click.echo(json.dumps(body, indent=2))


@click.group()
def streams() -> None:
    """Stream a tenant's events out to webhooks, Splunk HEC or S3 (admin token)."""


@streams.command("create")
@click.argument("tenant_id")
@click.option("--webhook", "webhook", metavar="URL", help="POST signed JSON batches to URL")
@click.option("--splunk-hec", "hec", metavar="URL", help="a Splunk HTTP Event Collector")
@click.option("--hec-token", help="the HEC token (with --splunk-hec)")
@click.option("--hec-index", help="Splunk index (with --splunk-hec; default: the token's)")
@click.option("--s3-bucket", help="an S3 bucket: one gzipped NDJSON object per batch")
@click.option("--s3-prefix", default="", help="key prefix (with --s3-bucket)")
@click.option("--s3-region", default="us-east-1", show_default=True)
@click.option("--s3-endpoint", help="an S3-compatible server's https:// URL (default: AWS)")
@click.option("--s3-access-key-id", envvar="AWS_ACCESS_KEY_ID", show_envvar=True)
@click.option("--s3-secret-access-key", envvar="AWS_SECRET_ACCESS_KEY", show_envvar=True)
@click.option("--severity", multiple=True, help="only these severities (repeatable)")
@click.option("--category", multiple=True, help="only these categories (repeatable)")
@click.option("--action", multiple=True, help="only these actions, or prefix.* (repeatable)")
@click.option("--from-beginning", is_flag=True, help="send the tenant's whole log first")
@click.option("--description", default="")
@click.option("--token")
@click.pass_context
def create(ctx: click.Context, tenant_id: str, webhook: str | None, hec: str | None,
           hec_token: str | None, hec_index: str | None, s3_bucket: str | None,
           s3_prefix: str, s3_region: str, s3_endpoint: str | None,
           s3_access_key_id: str | None, s3_secret_access_key: str | None,
           severity: tuple[str, ...], category: tuple[str, ...], action: tuple[str, ...],
           from_beginning: bool, description: str, token: str | None) -> None:  # fmt: skip
    """Create a stream for TENANT_ID (one of --webhook, --splunk-hec, --s3-bucket). Prints
    the stream; a webhook's signing secret is printed this once."""
    if sum(x is not None for x in (webhook, hec, s3_bucket)) != 1:
        raise click.UsageError("give exactly one of --webhook, --splunk-hec, --s3-bucket")
    dest: dict[str, Any]
    if webhook:
        dest = {"kind": "webhook", "url": webhook}
    elif hec:
        if not hec_token:
            raise click.UsageError("--splunk-hec needs --hec-token")
        dest = {"kind": "splunk_hec", "url": hec, "token": hec_token, "index": hec_index}
    else:
        if not (s3_access_key_id and s3_secret_access_key):
            raise click.UsageError("--s3-bucket needs --s3-access-key-id and "
                                   "--s3-secret-access-key (or AWS_* variables)")  # fmt: skip
        dest = {"kind": "s3", "bucket": s3_bucket, "prefix": s3_prefix, "region": s3_region,
                "endpoint": s3_endpoint, "access_key_id": s3_access_key_id,
                "secret_access_key": s3_secret_access_key}  # fmt: skip
    filters = {k: list(v) for k, v in (("severities", severity), ("categories", category),
                                       ("actions", action)) if v}  # fmt: skip
    body = {"destination": dest, "filters": filters or None, "description": description,
            "start": "beginning" if from_beginning else "now"}  # fmt: skip
    _out(_api(ctx, token).call("POST", _path(tenant_id), body=body))


def _where(d: dict[str, Any]) -> str:
    if d["kind"] == "s3":
        where = f" @ {d['endpoint']}" if d["endpoint"] else ""
        return f"s3://{d['bucket']}/{d['prefix']}{where}"
    return d["url"]


@streams.command("list")
@click.argument("tenant_id")
@click.option("--json", "as_json", is_flag=True)
@click.option("--token")
@click.pass_context
def list_cmd(ctx: click.Context, tenant_id: str, as_json: bool, token: str | None) -> None:
    """TENANT_ID's streams: where to, state, cursor, lag and the last error."""
    body = _api(ctx, token).call("GET", _path(tenant_id))
    if as_json:
        _out(body)
        return
    table = Table("stream", "kind", "destination", "state", "cursor", "lag", "delivered",
                  "last error")  # fmt: skip
    for s in body["streams"]:
        state = s["state"] + (f": {s['paused_reason']}" if s["paused_reason"] else "")
        table.add_row(s["stream_id"], s["destination"]["kind"], _where(s["destination"]), state,
                      str(s["cursor"]), str(s["lag_events"]), s["last_delivered_at"] or "",
                      (s["last_error"] or "")[:80])  # fmt: skip
    Console().print(table)


@streams.command("show")
@click.argument("tenant_id")
@click.argument("stream_id")
@click.option("--token")
@click.pass_context
def show(ctx: click.Context, tenant_id: str, stream_id: str, token: str | None) -> None:
    """One stream with its latest delivery attempts, as JSON."""
    _out(_api(ctx, token).call("GET", _path(tenant_id, stream_id)))


@streams.command("delete")
@click.argument("tenant_id")
@click.argument("stream_id")
@click.option("--token")
@click.pass_context
def delete(ctx: click.Context, tenant_id: str, stream_id: str, token: str | None) -> None:
    """Delete STREAM_ID (delivery stops within a second)."""
    body = _api(ctx, token).call("DELETE", _path(tenant_id, stream_id))
    click.echo(f"deleted {body['stream_id']} (cursor was {body['cursor']})")


@streams.command("resume")
@click.argument("tenant_id")
@click.argument("stream_id")
@click.option("--token")
@click.pass_context
def resume(ctx: click.Context, tenant_id: str, stream_id: str, token: str | None) -> None:
    """Resume a paused STREAM_ID now."""
    body = _api(ctx, token).call("POST", _path(tenant_id, stream_id, ":resume"))
    click.echo(f"{body['stream_id']} is {body['state']} from seq {body['cursor'] + 1}")


@streams.command("rotate-secret")
@click.argument("tenant_id")
@click.argument("stream_id")
@click.option("--secret", help="the new HEC token or S3 secret key (required for those)")
@click.option("--overlap-s", type=click.IntRange(0, 604800), default=86400, show_default=True,
              help="webhook: how long the previous signing secret stays valid")  # fmt: skip
@click.option("--token")
@click.pass_context
def rotate_secret(ctx: click.Context, tenant_id: str, stream_id: str, secret: str | None,
                  overlap_s: int, token: str | None) -> None:  # fmt: skip
    """New secret for STREAM_ID; a webhook's new signing secret is printed this once."""
    body = {"secret": secret, "overlap_s": overlap_s}
    _out(_api(ctx, token).call("POST", _path(tenant_id, stream_id, ":rotate-secret"), body=body))
