"""Admin tokens: the first one made once (0600), rotation, reload, the setting's rules."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infra.admin_tokens import (
    AdminTokenSource,
    add_admin_token,
    admin_tokens,
    ensure_admin_token,
    parse_tokens,
    remove_admin_token,
    token_file,
)
from infra.errors import ConfigError
from infra.settings import load_settings

token_text = (
    st.text(
        # No line breaks of any kind (str.splitlines knows many), no separators.
        alphabet=st.characters(
            blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters=",#"
        ),
        min_size=1,
        max_size=40,
    )
    .map(str.strip)
    .filter(bool)
)


@given(st.lists(token_text, max_size=6))
def test_parse_keeps_each_token_once_in_order(tokens: list[str]) -> None:
    text = "# comment\n" + "\n".join(f"{t}  # note" for t in tokens) + "\n\n"
    parsed = parse_tokens(text)
    assert parsed == list(dict.fromkeys(tokens))
    assert parse_tokens(",".join(tokens)) == parsed


def test_first_token_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    settings = load_settings({}, state_dir=str(tmp_path))
    assert admin_tokens(settings) == []
    first = ensure_admin_token(settings)
    assert first is not None and first.startswith("adm_") and len(first) > 40
    assert stat.S_IMODE(token_file(settings).stat().st_mode) == 0o600
    assert ensure_admin_token(settings) is None  # a second start makes no new token
    assert admin_tokens(settings) == [first]


def test_rotation_add_then_remove_old(tmp_path: Path) -> None:
    settings = load_settings({}, state_dir=str(tmp_path))
    old = ensure_admin_token(settings)
    assert old is not None
    new = add_admin_token(settings)
    assert admin_tokens(settings) == [old, new]  # both valid during the move
    assert stat.S_IMODE(token_file(settings).stat().st_mode) == 0o600
    with pytest.raises(ConfigError, match="at least the first 8"):
        remove_admin_token(settings, old[:4])
    assert remove_admin_token(settings, old[:12]) == old
    assert admin_tokens(settings) == [new]
    with pytest.raises(ConfigError, match="only admin token"):
        remove_admin_token(settings, new[:12])


def test_tokens_from_the_setting_are_exactly_those(tmp_path: Path) -> None:
    a, b = "a" * 20, "b" * 24
    settings = load_settings({"AUDIT_ADMIN_TOKEN": f"{a}, {b}"}, state_dir=str(tmp_path))
    assert admin_tokens(settings) == [a, b]
    assert ensure_admin_token(settings) is None
    assert not token_file(settings).exists()  # nothing written when configured
    with pytest.raises(ConfigError, match="AUDIT_ADMIN_TOKEN"):
        add_admin_token(settings)
    short = load_settings({"AUDIT_ADMIN_TOKEN": "short"}, state_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="16"):
        admin_tokens(short)


def test_a_running_service_sees_rotations_within_its_ttl(tmp_path: Path) -> None:
    settings = load_settings({}, state_dir=str(tmp_path))
    first = ensure_admin_token(settings)
    assert first is not None
    now = [0.0]
    source = AdminTokenSource(settings, ttl=1.0, clock=lambda: now[0])
    assert source.tokens() == (first.encode(),)
    second = add_admin_token(settings)
    now[0] = 0.5
    assert source.tokens() == (first.encode(),)  # not re-read before the ttl
    now[0] = 1.5
    assert source.tokens() == (first.encode(), second.encode())
    remove_admin_token(settings, first[:12])
    now[0] = 3.0
    assert source.tokens() == (second.encode(),)
