"""Which peers are our own reverse proxies, and what the client's address and scheme are when one forwards.

`X-Forwarded-For` and `X-Forwarded-Proto` are believed only when the TCP peer is in `ARTIFACT_PROXY_TRUSTED_PROXIES`
(addresses or CIDRs; none by default). Anybody can send those headers, so believing them from any peer would let a
client choose the address the audit log records, and the scheme of the URLs we sign. The peer as connected stays in
the scope under `PEER_KEY`: identity headers (app/auth.py) are trusted by that, never by a forwarded address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import Scope

PEER_KEY = "artifact_proxy.peer"  # the TCP peer's address, before any forwarded header was applied

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    def __init__(self, entries: Iterable[str]) -> None:
        self.networks: list[IPNetwork] = []
        for entry in entries:
            try:
                self.networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError as exc:
                raise ValueError(
                    f"ARTIFACT_PROXY_TRUSTED_PROXIES: {entry!r} is not an IP address or CIDR (e.g. 10.0.0.0/8)"
                ) from exc

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, host: object) -> bool:
        if not isinstance(host, str) or not self.networks:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False  # a unix socket path or a name: never a proxy we know
        return any(address in network for network in self.networks)


def peer_of(scope: Scope) -> str | None:
    """The address of the connection's other end, as connected."""
    if PEER_KEY in scope:
        peer: str | None = scope[PEER_KEY]
        return peer
    client = scope.get("client")
    return client[0] if client else None


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _header(scope: Scope, name: bytes) -> str | None:
    values = [value for key, value in scope.get("headers", []) if key == name]
    return b",".join(values).decode("latin-1") if values else None


def resolve_client(scope: Scope, proxies: TrustedProxies) -> None:
    """From a trusted proxy, the client is the nearest untrusted hop of `X-Forwarded-For` and the scheme that of
    `X-Forwarded-Proto`; from anybody else both headers are ignored. The peer as connected is kept under PEER_KEY."""
    client = scope.get("client")
    scope[PEER_KEY] = client[0] if client else None
    if client and client[0] in proxies:
        _apply_forwarded(scope, proxies)


def _apply_forwarded(scope: Scope, proxies: TrustedProxies) -> None:
    forwarded_for = _header(scope, b"x-forwarded-for")
    if forwarded_for:
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        # Each proxy appends the address it saw: walk back from the nearest and stop at the first hop that
        # is not one of ours; anything before it was written by the client.
        for hop in reversed(hops):
            if not _is_address(hop):
                break  # garbage, or a port or name we cannot vouch for: the last proxy is all we know
            scope["client"] = (hop, 0)
            if hop not in proxies:
                break
    proto = (_header(scope, b"x-forwarded-proto") or "").split(",")[-1].strip().lower()
    if proto in ("http", "https"):
        scope["scheme"] = proto
