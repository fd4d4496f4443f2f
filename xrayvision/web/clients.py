"""Who is asking: the client's address, believing X-Forwarded-For only when a trusted reverse proxy relays it."""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from aiohttp import web

from ..keys import SETTINGS

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

CLIENT_ADDRESS = web.RequestKey("client_address", str)


def parse_address(text: str | None) -> IPAddress | None:
    """An address as a peer or an X-Forwarded-For entry gives it: bare, "[v6]", "[v6]:port" or "v4:port";
    IPv4-mapped IPv6 becomes plain IPv4. None when it is not an address ("unknown", obfuscated names...)."""
    if not text:
        return None
    text = text.strip().strip('"')
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (text[end + 1:] and not text[end + 1:].startswith(":")):
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted(address: IPAddress | None, trusted: Sequence[Network]) -> bool:
    # `in` is simply False across IP versions.
    return address is not None and any(address in network for network in trusted)


def forwarded_entries(headers: Iterable[str]) -> list[str]:
    """The X-Forwarded-For entries, left (client side) to right (our side), over repeated header lines."""
    return [entry.strip() for header in headers for entry in header.split(",") if entry.strip()]


def resolve_client(peer: str | None, forwarded_for: Iterable[str], trusted: Sequence[Network]) -> str:
    """The client's address. The peer, unless it is a trusted proxy: then walk X-Forwarded-For from the right
    (each hop appends the address it saw) past every trusted proxy and take the first address that is not one.
    Entries that are not addresses are skipped. Everything left of the first untrusted hop may be forged by the
    client, so it is never looked at; an untrusted peer's header is never looked at at all."""
    peer_address = parse_address(peer)
    if not is_trusted(peer_address, trusted):
        return str(peer_address) if peer_address is not None else (peer or "")
    client = peer_address
    for entry in reversed(forwarded_entries(forwarded_for)):
        address = parse_address(entry)
        if address is None:
            continue
        client = address
        if not is_trusted(address, trusted):
            break
    # Every hop trusted: the request comes from inside the proxies' own network, so the left-most one it is.
    return str(client)


def peer_is_trusted(request: web.Request) -> bool:
    """Whether the direct peer is one of [dashboard] TRUSTED_PROXIES, whose X-Forwarded-* headers are believed."""
    return is_trusted(parse_address(request.remote), request.config_dict[SETTINGS].dashboard.trusted_proxies)


def client_address(request: web.Request) -> str:
    """resolve_client() for this request, worked out once per request."""
    try:
        return request[CLIENT_ADDRESS]
    except KeyError:
        pass
    address = resolve_client(
        request.remote,
        request.headers.getall("X-Forwarded-For", ()),
        request.config_dict[SETTINGS].dashboard.trusted_proxies,
    )
    request[CLIENT_ADDRESS] = address
    return address
