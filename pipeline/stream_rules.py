"""Streams out, the pure rules: which destinations are allowed, which events a stream's
filters pass, how long to wait after a failure and when a failing stream pauses.

Outbound safety, in two places:

- when a stream is made (the admin API), :func:`check_url` refuses anything but
  ``https://``, credentials in the URL, and hosts that are non-public addresses written
  as numbers (``10.0.0.5``, ``2130706433``, ``[::1]``) or ``localhost`` names. Names are
  not resolved then: making a stream never waits on the network;
- when delivering (``pipeline.outbound``), every address a name resolves to is checked
  with :class:`AddressPolicy` before the connection is made, so a name that later
  resolves somewhere private (DNS rebinding) is refused too.

Non-public means anything that is not globally routable (loopback, RFC 1918 and unique
local, link-local, CGNAT, multicast, reserved, unspecified, IPv4-mapped forms of them) and
the cloud metadata endpoints. ``AUDIT_STREAMS_ALLOW_PRIVATE`` lists networks that are
allowed anyway; a metadata address must be listed exactly (a /32 or /128): no wider
network unlocks it.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from infra.errors import AuditLogError

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
METADATA = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean... instance metadata
    "169.254.170.2",  # AWS ECS task metadata
    "100.100.100.200",  # Alibaba Cloud
    "168.63.129.16",  # Azure wire server (a public address, still the platform's)
    "fd00:ec2::254",  # AWS over IPv6
))  # fmt: skip


class DestinationError(AuditLogError):
    """A destination is not acceptable (bad URL, a refused address).

    Attributes:
        field: the request field at fault (``destination.url``...).
    """

    def __init__(self, message: str, field: str = "destination.url") -> None:
        super().__init__(message)
        self.field = field


def describe(ip: IP) -> str | None:
    """What kind of non-public address ``ip`` is, or None for a public one."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return describe(ip.ipv4_mapped)
    if ip in METADATA:
        return "a cloud metadata address"
    for test, what in ((ip.is_loopback, "a loopback address"),
                       (ip.is_link_local, "a link-local address"),
                       (ip.is_unspecified, "an unspecified address"),
                       (ip.is_multicast, "a multicast address"),
                       (ip.is_private, "a private address"),
                       (ip.is_reserved, "a reserved address"),
                       (not ip.is_global, "not a public address")):  # fmt: skip
        if test:
            return what
    return None


class AddressPolicy:
    """Which resolved addresses a stream may connect to.

    Args:
        allow: ``AUDIT_STREAMS_ALLOW_PRIVATE``: comma-separated networks allowed although
            not public (metadata addresses only when listed exactly).
    """

    def __init__(self, allow: str = "") -> None:
        nets = [n.strip() for n in allow.split(",") if n.strip()]
        self.allowed = [ipaddress.ip_network(n, strict=False) for n in nets]

    def refusal(self, ip: IP) -> str | None:
        """None when ``ip`` may be connected to, else why not (for the error message)."""
        plain = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
        what = describe(plain)
        if what is None:
            return None
        exact = plain in METADATA
        for net in self.allowed:
            if plain in net and (not exact or net.num_addresses == 1):
                return None
        return f"{plain} is {what} (refused unless AUDIT_STREAMS_ALLOW_PRIVATE allows it)"

    def check_host(self, host: str, addresses: Iterable[str]) -> None:
        """Every address ``host`` resolved to must be allowed.

        Raises:
            DestinationError: naming the first refused address.
        """
        for text in addresses:
            why = self.refusal(ipaddress.ip_address(text.split("%", 1)[0]))
            if why is not None:
                raise DestinationError(f"{host} resolves to {why}")


def numeric_host(host: str) -> IP | None:
    """The address a host written as numbers stands for (``[::1]``, ``127.1``,
    ``0x7f.0.0.1``, ``2130706433``, as resolvers read them), or None for a name.

    Uses ``inet_aton``'s parsing, which never touches the network.
    """
    bare = host.strip("[]")
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    if ":" in bare:
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(bare))
    except OSError:
        return None


@dataclass(frozen=True)
class Target:
    """A checked destination URL."""

    url: str
    host: str
    port: int


def check_url(url: str, policy: AddressPolicy, field: str = "destination.url") -> Target:
    """An ``https://`` URL that may be delivered to, as far as can be told without the
    network (see the module docstring).

    Raises:
        DestinationError: why not, in words an operator can act on.
    """
    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError as exc:
        raise DestinationError(f"not a valid URL: {exc}", field) from exc
    if parts.scheme == "http":
        raise DestinationError("plain http:// is refused: events and their signatures would "
                               "cross the network in clear; use https://", field)  # fmt: skip
    if parts.scheme != "https":
        raise DestinationError(f"the URL must start with https:// (got {parts.scheme or 'no'}"
                               " scheme)", field)  # fmt: skip
    if parts.username is not None or parts.password is not None:
        raise DestinationError("credentials in the URL are refused: give the receiver's "
                               "token in its own field", field)  # fmt: skip
    if parts.fragment:
        raise DestinationError("a URL fragment is never sent: leave it out", field)
    host = (parts.hostname or "").lower()
    if not host:
        raise DestinationError("the URL has no host", field)
    ip = numeric_host(host)
    if ip is None and (host == "localhost" or host.endswith(".localhost")):
        ip = ipaddress.ip_address("127.0.0.1")
    if ip is not None:
        why = policy.refusal(ip)
        if why is not None:
            raise DestinationError(f"{host}: {why}", field)
    return Target(url, host, port)


# -- filters ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Filters:
    """A stream's filters; an empty one passes everything. ``actions`` are exact names or
    prefixes written ``user.*``."""

    severities: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()
    actions: tuple[str, ...] = ()

    @classmethod
    def of(cls, doc: dict[str, list[str]] | None) -> Filters:
        """From the stored (or requested) ``{"severities": [...], ...}``."""
        doc = doc or {}
        return cls(frozenset(doc.get("severities") or ()), frozenset(doc.get("categories") or ()),
                   tuple(doc.get("actions") or ()))  # fmt: skip

    def passes(self, severity: str, category: str, action: str) -> bool:
        """Does an event with these fields go to the stream?"""
        if self.severities and severity not in self.severities:
            return False
        if self.categories and category not in self.categories:
            return False
        if self.actions:
            return any(action == a or (a.endswith(".*") and action.startswith(a[:-1]))
                       for a in self.actions)  # fmt: skip
        return True


# -- failures --------------------------------------------------------------------------------
def backoff(failures: int, cap: float, rng: random.Random | None = None) -> float:
    """Seconds before retrying after ``failures`` consecutive failures (>= 1): 0.5 s
    doubling up to ``cap``, with jitter (half to all of it) so that streams failing
    together do not retry together."""
    base = min(cap, 0.5 * 2 ** min(max(failures, 1) - 1, 30))
    return base * (rng or random).uniform(0.5, 1.0)


def should_pause(failing_for_s: float, pause_after_s: float, refused: bool) -> bool:
    """A failing stream pauses when the receiver refused in a way retrying cannot fix (a
    redirect, a refused address), or once it has failed continuously for
    ``AUDIT_STREAMS_PAUSE_AFTER_S``."""
    return refused or failing_for_s >= pause_after_s
