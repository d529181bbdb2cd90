"""libpq URIs (infra/dsn.py): multi-host lists, IPv6, percent-encoding, options kept."""

from __future__ import annotations

import os
from unittest import mock

import pytest
from asyncpg import connect_utils
from hypothesis import given
from hypothesis import strategies as st

from infra import dsn as dsns
from infra.db import runtime_role, with_database
from infra.dsn import Dsn, Host

# Any text at all (percent-encoding must carry it), and names that look like real hosts.
texts = st.text(max_size=12)
hostnames = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9]{1,8}){0,2}",
                          fullmatch=True)  # fmt: skip
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.none() | st.integers(1, 65535)
hosts = st.builds(Host, hostnames | ipv6 | texts.filter(bool), ports)
queries = st.sampled_from(["", "target_session_attrs=read-write", "sslmode=disable",
                           "target_session_attrs=any&application_name=x%20y"])  # fmt: skip
dsn_values = st.builds(
    Dsn,
    scheme=st.sampled_from(dsns.SCHEMES),
    user=texts,
    password=st.none() | texts,
    hosts=st.lists(hosts, max_size=4).map(tuple),
    database=texts,
    query=queries,
)


@given(dsn_values)
def test_parse_reverses_url(d: Dsn) -> None:
    assert dsns.parse(d.url()) == d


@given(dsn_values, texts, st.none() | texts, texts)
def test_replacing_credentials_or_database_keeps_hosts_ports_and_options(
    d: Dsn, user: str, password: str | None, database: str
) -> None:
    out = dsns.parse(dsns.replace(d.url(), user=user, password=password, database=database))
    assert (out.user, out.password, out.database) == (user, password, database)
    assert (out.scheme, out.hosts, out.query) == (d.scheme, d.hosts, d.query)


@given(
    st.lists(st.builds(Host, hostnames | ipv6, ports), min_size=1, max_size=4).map(tuple),
    texts.filter(bool),
    texts.filter(bool),
    texts.filter(bool),
    queries,
)
def test_asyncpg_reads_what_is_built(hosts: tuple[Host, ...], user: str, password: str,
                                     database: str, query: str) -> None:  # fmt: skip
    url = Dsn(user=user, password=password, hosts=hosts, database=database, query=query).url()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    with mock.patch.dict(os.environ, clean, clear=True):
        addrs, params = connect_utils._parse_connect_dsn_and_args(
            dsn=url, host=None, port=None, user=None, password=None, passfile=None,
            database=None, ssl=None, service=None, servicefile=None, direct_tls=None,
            server_settings=None, target_session_attrs=None, krbsrvname=None, gsslib=None,
        )  # fmt: skip
    assert addrs == [(h.name, h.port or 5432) for h in hosts]
    assert (params.user, params.password, params.database) == (user, password, database)


def test_the_multi_host_form_as_written() -> None:
    url = "postgresql://own%40er:p%3Aw%2F@h1:5432,[2001:db8::1]:5433,h3/audit?target_session_attrs=read-write"
    d = dsns.parse(url)
    assert (d.user, d.password, d.database) == ("own@er", "p:w/", "audit")
    assert d.hosts == (Host("h1", 5432), Host("2001:db8::1", 5433), Host("h3"))
    assert d.query == "target_session_attrs=read-write"
    assert d.url() == url
    assert "p:w" not in repr(d)
    # What infra/db.py derives from such a URL keeps every host.
    other = with_database(url, "postgres")
    assert other == url.replace("/audit?", "/postgres?")
    assert runtime_role(url) == "audit_runtime"
    runtime = dsns.replace(url, user=runtime_role(url), password="s3 cret")
    assert runtime == url.replace("own%40er:p%3Aw%2F", "audit_runtime:s3%20cret")


@pytest.mark.parametrize("bad", ["mysql://h/db", "h:5432/db", "postgresql://[::1/db",
                                 "postgresql://h:54x/db", "postgresql://[::1]x/db"])  # fmt: skip
def test_what_is_not_a_libpq_uri_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        dsns.parse(bad)


def test_forms_libpq_accepts_without_a_host_or_credentials() -> None:
    assert dsns.parse("postgresql:///audit") == Dsn(database="audit")
    assert dsns.parse("postgres://") == Dsn(scheme="postgres")
    assert dsns.parse("postgresql://u@:5433/d").hosts == (Host("", 5433),)
    assert dsns.parse("postgresql://u:@h").password == ""
    assert dsns.parse("postgresql://%2Frun%2Fpostgresql/d").hosts == (Host("/run/postgresql"),)
