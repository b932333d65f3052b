"""What the OSC server checks on every datagram before it parses it: who sent it (an allow-list of networks,
``sdga-play --osc-allow``) and how big it is (a size limit, and limits on bundle nesting and element count, so a
crafted packet cannot make the parser recurse deeply or the router run a thousand messages at once).

Pure functions over bytes and address text; the socket and the counters are :class:`instrument.io.osc.OscServer`'s.
"""
from __future__ import annotations

import ipaddress
import struct
from typing import Sequence, Union

__all__ = ["Network", "LOOPBACK", "MAX_PACKET_BYTES", "MAX_BUNDLE_DEPTH", "MAX_BUNDLE_ELEMENTS", "parse_allow",
           "sender_allowed", "packet_problem", "MalformedBundle"]

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
MAX_PACKET_BYTES = 16384       # every sdga message fits in a few hundred bytes; larger datagrams are dropped unparsed
MAX_BUNDLE_DEPTH = 4           # a bundle inside a bundle inside ... (1: a plain bundle)
MAX_BUNDLE_ELEMENTS = 128      # messages and bundles in one datagram, all levels together

_BUNDLE = b"#bundle\x00"


def parse_allow(text: str) -> tuple[Network, ...]:
    """``"192.168.1.0/24,10.0.0.7"`` -> networks (a bare address is a /32 or /128; ``localhost``: loopback).
    Raises ValueError naming the bad item."""
    networks: list[Network] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item.lower() == "localhost":
            networks += LOOPBACK
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise ValueError(f"{item!r} is not an address or network (e.g. 192.168.1.0/24): {exc}") from None
    if not networks:
        raise ValueError(f"no networks in {text!r} (e.g. 192.168.1.0/24,10.0.0.7)")
    return tuple(networks)


def sender_allowed(host: str, networks: Sequence[Network] | None) -> bool:
    """Whether a datagram from ``host`` (the address text ``recvfrom`` gives) may be handled; ``networks``
    None: everyone. An IPv4 sender seen through an IPv6 socket (``::ffff:a.b.c.d``) matches IPv4 networks."""
    if networks is None:
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    candidates = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)
    return any(a in n for a in candidates for n in networks)       # False across IP versions


class MalformedBundle(ValueError):
    """A bundle element of size <= 0: python-osc's bundle parser steps back (or stays) on it and loops forever,
    so it is refused here, before any parsing."""


def packet_problem(data: bytes, max_bytes: int = MAX_PACKET_BYTES, max_depth: int = MAX_BUNDLE_DEPTH,
                   max_elements: int = MAX_BUNDLE_ELEMENTS) -> str:
    """Why a datagram is dropped before parsing ("" when it may be parsed): over ``max_bytes``, or a bundle
    nested deeper than ``max_depth`` or holding more than ``max_elements`` elements (all levels). Walks the
    bundle framing without recursion; a truncated element is left to the OSC parser to report. Raises
    :class:`MalformedBundle` for an element of size <= 0 (the parser would loop on it forever)."""
    if len(data) > max_bytes:
        return f"oversized datagram ({len(data)} bytes; the limit is {max_bytes})"
    if not data.startswith(_BUNDLE):
        return ""
    elements = 0
    pending = [(0, len(data), 1)]                  # (start, end, depth) of each bundle still to walk
    while pending:
        start, end, depth = pending.pop()
        if depth > max_depth:
            return f"bundle nested {depth} deep (the limit is {max_depth})"
        at = start + 16                            # '#bundle\0' and the 8-byte time tag
        while at + 4 <= end:
            (size,) = struct.unpack_from(">i", data, at)
            at += 4
            if size <= 0:
                raise MalformedBundle(f"bundle element of size {size} at byte {at - 4}")
            if at + size > end:
                return ""                          # truncated framing: the parser refuses it and counts it
            elements += 1
            if elements > max_elements:
                return f"bundle with more than {max_elements} elements"
            if data.startswith(_BUNDLE, at):
                pending.append((at, at + size, depth + 1))
            at += size
    return ""
