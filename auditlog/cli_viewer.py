"""``auditlog viewer-token``: mint a short-lived viewer token and print a ready ``/ui/`` URL
(the token, and the verifier key to pin when one is given, in the URL's fragment)."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import click

from auditlog.cli_api import _api
from auditlog.endpoints import api_url
from schemas import tlog


def viewer_url(base: str, token: str, key: str | None = None) -> str:
    """The viewer page's URL for ``token`` (and ``key`` pinned), all in the fragment: a
    fragment is never sent to a server, so neither ends up in access logs."""
    parts = {"token": token, **({"key": key} if key else {})}
    fragment = "&".join(f"{k}={urllib.parse.quote(v, safe='')}" for k, v in parts.items())
    return f"{base.rstrip('/')}/ui/#{fragment}"


@click.command("viewer-token")
@click.argument("tenant_id")
@click.option("--ttl", "ttl_s", type=click.IntRange(10, 86400), default=900, show_default=True,
              help="seconds (cut to the service's AUDIT_VIEWER_TOKEN_MAX_TTL_S)")  # fmt: skip
@click.option("--actor-id", help="only this actor's events")
@click.option("--actor-type", help="only this actor type (ACTOR_TYPE_*)")
@click.option("--resource-type", help="only this resource type (primary or related)")
@click.option("--resource-id", help="only this resource (primary or related)")
@click.option("--severity", multiple=True, help="only these severities (repeatable)")
@click.option("--category", multiple=True, help="only these categories (repeatable)")
@click.option("--action", multiple=True, help="only these actions or prefix.* (repeatable)")
@click.option("--pin-key", help="verifier key to pin in the URL (`auditlog signing-key` on the "
              "service's host); without it the page shows events unverified")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="print the API's answer and the URL")
@click.option("--token", help="bearer token (default AUDIT_TOKEN / AUDIT_ADMIN_TOKEN)")
@click.pass_context
def viewer_token(ctx: click.Context, tenant_id: str, ttl_s: int, pin_key: str | None,
                 as_json: bool, token: str | None, **f: Any) -> None:  # fmt: skip
    """Mint a read-only viewer token for TENANT_ID and print it with a /ui/ URL.

    The token reads that tenant only, until it expires (or the key that minted it is
    revoked); the filters given here are fixed: its holder can narrow them, never widen.
    """
    if pin_key:
        try:
            tlog.Verifier.parse(pin_key)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--pin-key") from exc
    filters = {"actor_id": f["actor_id"], "actor_type": f["actor_type"],
               "resource_type": f["resource_type"], "resource_id": f["resource_id"],
               "severities": list(f["severity"]), "categories": list(f["category"]),
               "actions": list(f["action"])}  # fmt: skip
    filters = {k: v for k, v in filters.items() if v}
    body: dict[str, Any] = {"tenant_id": tenant_id, "ttl_s": ttl_s}
    if filters:
        body["filters"] = filters
    answer = _api(ctx, token).call("POST", "/v1/viewer-tokens", None, body)
    url = viewer_url(api_url(ctx.obj), answer["token"], pin_key)
    if as_json:
        click.echo(json.dumps({**answer, "url": url}))
        return
    click.echo(answer["token"])
    click.echo(url)
    click.echo(f"expires at {answer['expires_at']}", err=True)
    if not pin_key:
        click.echo("no key pinned: the page will show events unverified (add --pin-key with "
                   "the verifier key from `auditlog signing-key`)", err=True)  # fmt: skip
