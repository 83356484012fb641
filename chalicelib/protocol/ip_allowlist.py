"""Optional source-IP allowlist for the routes Zeyi calls (empty list: everyone may call)."""
from __future__ import annotations

import ipaddress
from functools import lru_cache

from chalicelib.errors import ConfigError, IpNotAllowedError


@lru_cache(maxsize=8)
def _networks(entries: tuple[str, ...]) -> tuple:
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ConfigError(f"setting ALLOWED_SOURCE_IPS: {entry!r} is not an IP or CIDR") \
                from None
    return tuple(networks)


def check_source_ip(source_ip: str | None, allowed: tuple[str, ...]) -> None:
    """Raises IpNotAllowedError when ``allowed`` is set and ``source_ip`` is in none of it."""
    if not allowed:
        return
    networks = _networks(allowed)
    try:
        address = ipaddress.ip_address(source_ip)  # ValueError for None too
    except ValueError:
        raise IpNotAllowedError("source IP is unknown") from None
    if not any(address in network for network in networks):
        raise IpNotAllowedError(f"source IP {address} is not allowed")
