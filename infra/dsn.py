"""libpq connection URIs, parsed and rebuilt without losing anything.

``postgresql://[user[:password]@][host[:port][,host[:port]...]][/database][?query]``:
libpq's multi-host form (hosts tried in order; ``target_session_attrs`` in the query picks
the one wanted), IPv6 addresses in brackets, user, password, hosts and database
percent-encoded, the query passed through verbatim. ``urllib.parse.urlsplit`` reads all
the hosts as one netloc, so its ``.hostname`` and ``.port`` are wrong (or raise) on such a
URL; code that takes a database URL apart uses this module instead.

Pure: no I/O, no asyncpg (asyncpg reads what :meth:`Dsn.url` writes, multi-host included).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

SCHEMES = ("postgresql", "postgres")
_PORT = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True)
class Host:
    """One host of the list: a name, an IP address (IPv6 without brackets) or a socket
    directory (``/run/postgresql``), and its port (``None``: libpq's default)."""

    name: str
    port: int | None = None


@dataclass(frozen=True, repr=False)
class Dsn:
    """A connection URI taken apart; every text field is decoded (no percent escapes).

    ``password`` is ``None`` when the URI has none (``user@host``), ``""`` when it is
    empty (``user:@host``). ``query`` is kept as written, without the ``?``.
    """

    scheme: str = "postgresql"
    user: str = ""
    password: str | None = None
    hosts: tuple[Host, ...] = ()
    database: str = ""
    query: str = ""

    def replace(self, **changes: Any) -> Dsn:
        """A copy with ``changes`` (e.g. ``user=``, ``password=``, ``database=``)."""
        return dataclasses.replace(self, **changes)

    def url(self) -> str:
        """The URI: ``parse(d.url()) == d``, except for a host with neither name nor port
        (libpq's default host), which only a list of several can hold."""
        auth = ""
        if self.user or self.password is not None:
            auth = _q(self.user)
            if self.password is not None:
                auth += ":" + _q(self.password)
            auth += "@"
        hosts = ",".join(_host_text(h) for h in self.hosts)
        path = "/" + _q(self.database) if self.database else ""
        query = "?" + self.query if self.query else ""
        return f"{self.scheme}://{auth}{hosts}{path}{query}"

    def __repr__(self) -> str:
        shown = "***" if self.password else self.password
        return (
            f"Dsn(scheme={self.scheme!r}, user={self.user!r}, password={shown!r}, "
            f"hosts={self.hosts!r}, database={self.database!r}, query={self.query!r})"
        )


def _q(text: str) -> str:
    return quote(text, safe="")


def _host_text(host: Host) -> str:
    # A name with ':' can only be an IPv6 address (a zone id's '%' is escaped as %25).
    name = f"[{quote(host.name, safe=':')}]" if ":" in host.name else _q(host.name)
    return name if host.port is None else f"{name}:{host.port}"


def parse(url: str) -> Dsn:
    """Take a ``postgresql://`` (or ``postgres://``) URI apart.

    Raises:
        ValueError: not such a URI, an unclosed ``[``, or a port that is not a number.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise ValueError("not a postgresql:// URI")
    # The hosts end at the first '/' (the database) or '?' (the options).
    end = min((i for i in (rest.find("/"), rest.find("?")) if i != -1), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    path, _, query = tail.partition("?")
    # libpq ends the credentials at the first '@' (an '@' inside them is escaped).
    userinfo, sign, hostlist = authority.partition("@")
    if not sign:
        userinfo, hostlist = "", authority
    user, colon, password = userinfo.partition(":")
    return Dsn(
        scheme=scheme,
        user=unquote(user),
        password=unquote(password) if colon else None,
        hosts=_hosts(hostlist),
        database=unquote(path[1:]),
        query=query,
    )


def _hosts(hostlist: str) -> tuple[Host, ...]:
    if not hostlist:
        return ()
    hosts = []
    for item in hostlist.split(","):  # ',' never occurs inside a host, bracketed or not
        if item.startswith("["):
            close = item.find("]")
            if close == -1:
                raise ValueError("an IPv6 address without its closing ']'")
            name, after = item[1:close], item[close + 1 :]
            if after and not after.startswith(":"):
                raise ValueError("text after an IPv6 address's ']' that is not ':port'")
            port = after[1:] if after else None
        else:
            name, colon, port_text = item.partition(":")
            port = port_text if colon else None
        if port and not _PORT.fullmatch(port):
            raise ValueError("a port must be a number")
        hosts.append(Host(unquote(name), int(port) if port else None))
    return tuple(hosts)


def replace(url: str, **changes: Any) -> str:
    """``url`` with ``changes`` applied (hosts, ports and query kept as they are)."""
    return parse(url).replace(**changes).url()
