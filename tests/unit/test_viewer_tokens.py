"""Viewer tokens, offline: the codec, narrowing a request to fixed filters, matching one
event, and the settings that bound them (query_api/viewer.py)."""

from __future__ import annotations

import time

import msgspec
import pytest
from multidict import MultiDict

from infra.errors import ConfigError
from infra.settings import load_settings
from query_api.contract import ViewerFilters
from query_api.errors import ApiError
from query_api.filters import LIST_PARAMS, parse_query
from query_api.viewer import (
    TokenError,
    decode,
    derive_key,
    encode,
    matches,
    narrow,
    new_claims,
    parse_fixed,
    public_filters,
)

KEY = derive_key(b"page-token-secret")


def fixed(**filters) -> object:
    return parse_fixed(filters)


def query(**params) -> object:
    md: MultiDict[str] = MultiDict()
    for k, v in params.items():
        for item in v if isinstance(v, list) else [v]:
            md.add(k, item)
    return parse_query(md, LIST_PARAMS)


def test_a_token_round_trips_and_any_change_is_refused() -> None:
    claims = new_claims("acme", ViewerFilters(actor_id="u-1"), int(time.time()) + 900, "k1")
    token = encode(claims, KEY)
    assert token.startswith("alv_") and decode(token, KEY) == claims
    body, mac = token[4:].split(".")
    with pytest.raises(TokenError, match="altered"):
        decode(token, derive_key(b"another secret"))
    # A payload edited to drop the filter (or name another tenant) no longer matches its mac.
    forged = msgspec.json.encode(msgspec.structs.replace(claims, f={}, t="globex"))
    from base64 import urlsafe_b64encode

    forged_body = urlsafe_b64encode(forged).rstrip(b"=").decode()
    with pytest.raises(TokenError, match="altered"):
        decode(f"alv_{forged_body}.{mac}", KEY)
    for bad in ("alv_", "alv_x", "alv_.", f"alv_{body}", f"alv_{body}.!!", "alk_x.y",
                "alv_" + "a" * 9000 + ".b"):  # fmt: skip
        with pytest.raises(TokenError):
            decode(bad, KEY)


def test_the_viewer_key_is_not_the_page_token_secret() -> None:
    assert derive_key(b"s") != b"s" and len(derive_key(b"s")) == 32
    assert derive_key(b"s") != derive_key(b"t")


def test_fixed_filters_are_validated_and_normalised() -> None:
    assert parse_fixed({}) is None and parse_fixed({"actor_id": None}) is None
    q = fixed(actions=["User.Login", "doc.*"], severities=["SEVERITY_INFO"])
    assert q.actions == ("user.login",) and q.action_prefixes == ("doc.",)
    assert public_filters(q) == ViewerFilters(actions=["user.login", "doc.*"],
                                              severities=["SEVERITY_INFO"])  # fmt: skip
    assert public_filters(None) == ViewerFilters()
    with pytest.raises(ApiError) as exc:
        parse_fixed({"severities": ["SEVERITY_NOPE"]})
    assert exc.value.status == 400 and exc.value.field == "filters.severities"


def test_a_request_may_narrow_fixed_filters_never_widen_them() -> None:
    f = fixed(actor_id="u-1", severities=["SEVERITY_INFO", "SEVERITY_ERROR"], actions=["user.*"])
    q = narrow(query(), f)  # nothing asked: the fixed filters apply
    assert (q.actor_id, q.severities, q.action_prefixes) == ("u-1", f.severities, ("user.",))
    assert narrow(query(actor_id="u-1"), f).actor_id == "u-1"
    assert narrow(query(severities="SEVERITY_ERROR"), f).severities == ("SEVERITY_ERROR",)
    assert narrow(query(actions="user.login"), f).actions == ("user.login",)
    assert narrow(query(actions="user.admin.*"), f).action_prefixes == ("user.admin.",)
    assert narrow(query(q="login", page_size="5"), f).q == "login"
    for widened, field in ((query(actor_id="u-2"), "actor_id"),
                           (query(severities="SEVERITY_INFO,SEVERITY_DEBUG"), "severities"),
                           (query(actions="document.read"), "actions"),
                           (query(actions="use.*"), "actions")):  # fmt: skip
        with pytest.raises(ApiError) as exc:
            narrow(widened, f)
        assert (exc.value.status, exc.value.field) == (403, field)
    assert narrow(query(actor_id="anyone"), None).actor_id == "anyone"


EVENT = {
    "action": "user.login", "severity": "SEVERITY_INFO", "category": "CATEGORY_AUTH",
    "actor": {"type": "ACTOR_TYPE_USER", "id": "u-1", "display_name": ""},
    "primary_resource": {"type": "user", "id": "u-1", "display_name": ""},
    "related_resources": [{"type": "document", "id": "d-9", "display_name": ""}],
}  # fmt: skip


@pytest.mark.parametrize(("filters", "expected"), [
    ({"actor_id": "u-1"}, True), ({"actor_id": "u-2"}, False),
    ({"actor_type": "ACTOR_TYPE_USER"}, True), ({"actor_type": "ACTOR_TYPE_SYSTEM"}, False),
    ({"severities": ["SEVERITY_ERROR", "SEVERITY_INFO"]}, True),
    ({"severities": ["SEVERITY_ERROR"]}, False),
    ({"categories": ["CATEGORY_AUTH"]}, True), ({"categories": ["CATEGORY_DATA"]}, False),
    ({"actions": ["user.*"]}, True), ({"actions": ["user.logout", "doc.*"]}, False),
    ({"actions": ["USER.LOGIN"]}, True),
    ({"resource_type": "user", "resource_id": "u-1"}, True),  # the primary resource
    ({"resource_type": "document", "resource_id": "d-9"}, True),  # a related one
    ({"resource_id": "d-9"}, True), ({"resource_type": "document", "resource_id": "u-1"}, False),
    ({"resource_type": "folder"}, False),
])  # fmt: skip
def test_one_event_matches_as_the_sql_filters_do(filters, expected) -> None:
    assert matches(EVENT, fixed(**filters)) is expected
    assert matches(EVENT, None)


def test_settings_bound_viewer_tokens_and_framing() -> None:
    s = load_settings({})
    assert (s.viewer_token_max_ttl_s, s.ui_frame_ancestors) == (3600, "'none'")
    ok = load_settings({"AUDIT_UI_FRAME_ANCESTORS": "'self' https://app.example.com"})
    assert ok.ui_frame_ancestors == "'self' https://app.example.com"
    for env in ({"AUDIT_VIEWER_TOKEN_MAX_TTL_S": "5"}, {"AUDIT_VIEWER_TOKEN_MAX_TTL_S": "90000"},
                {"AUDIT_UI_FRAME_ANCESTORS": "'self'; script-src *"},
                {"AUDIT_UI_FRAME_ANCESTORS": "a.com,b.com"}):  # fmt: skip
        with pytest.raises(ConfigError):
            load_settings(env)
