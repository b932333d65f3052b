"""OSC transport: a UDP server that hands every message to a router and enqueues the events it returns.

The server thread only converts and enqueues (:class:`~instrument.engine.events.EventQueue`); malformed messages are
counted, never raised. The address space is one table, :data:`instrument.controls.addresses.OSC_ADDRESSES`
(re-exported here: :data:`OSC_SPECS` its engine rows, :func:`osc_event`, :class:`OscError`).
"""
from __future__ import annotations

import logging
import math
import socket
import sys
import threading
from typing import Sequence

from instrument.model.bundle import LatentInfo
from instrument.engine.events import EventQueue
from instrument.controls.addresses import OSC_SPECS, OscAddress, OscError, osc_event
from instrument.io.netfilter import MAX_PACKET_BYTES, MalformedBundle, Network, packet_problem, sender_allowed

__all__ = ["OscSpec", "OSC_SPECS", "OscError", "osc_event", "OscServer", "DEFAULT_OSC_PORT"]

DEFAULT_OSC_PORT = 9000
OscSpec = OscAddress          # the table's row type (instrument.controls.addresses), under its old name


SO_RXQ_OVFL = 40                 # Linux: recvmsg reports how many datagrams the kernel dropped (socket full)
OSC_MAX_ABS = 1e6                # larger numbers (and NaN, inf) are refused before any router sees them


class _PythonOscLog(logging.Filter):
    """python-osc warns through the root logger with the raw bytes of what it could not parse (megabytes in a
    flood of junk): count those records instead of printing them."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if "pythonosc" in record.pathname:
            self.count += 1
            return False
        return True


_PYTHONOSC_LOG = _PythonOscLog()


def _bad_number(args: Sequence) -> str:
    """Why a message's arguments may not reach a router ("" when they may): NaN, inf or a huge magnitude."""
    for value in args:
        if isinstance(value, (list, tuple)):
            why = _bad_number(value)
            if why:
                return why
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if not (math.isfinite(value) and abs(value) <= OSC_MAX_ABS):
                return f"number out of range (not finite or beyond +-{OSC_MAX_ABS:g}): {value!r}"
    return ""


class OscServer:
    """UDP OSC server on ``host:port`` (port 0: any free port, see :attr:`address`), pushing events to a queue
    from its own thread. Use as a context manager or call :meth:`start` / :meth:`close`.

    Every message goes to ``router.osc(address, args)`` (default: :func:`instrument.controls.routing.default_router`
    over ``latents``).
    Counters (read by the UI): ``received`` (messages), ``errors`` (messages the router refused, plus datagrams
    that are not OSC at all: ``malformed_packets``), ``last_error``, ``kernel_drops`` (datagrams the kernel
    dropped because the socket's buffer was full: a flood faster than this thread; Linux's SO_RXQ_OVFL),
    ``parser_warnings`` (python-osc's warnings about parts it skipped: counted, not printed). Messages with a
    non-finite or huge number (beyond ``OSC_MAX_ABS``) are refused here, so no router, event or engine kernel
    ever sees one. Bundles are applied at once (time tags are ignored). Nothing a client sends can stop the
    thread.

    ``allow``: the networks whose datagrams are handled (None: every sender); others are dropped unparsed and
    counted in ``refused_senders``. Datagrams over ``max_packet_bytes`` or with bundles nested or filled beyond
    :mod:`instrument.io.netfilter`'s limits are dropped unparsed and counted in ``oversized_packets``. Both
    count in ``errors`` too.
    """

    def __init__(self, queue: EventQueue, latents: Sequence[LatentInfo] = (), host: str = "127.0.0.1",
                 port: int = DEFAULT_OSC_PORT, router=None, allow: Sequence[Network] | None = None,
                 max_packet_bytes: int = MAX_PACKET_BYTES):
        if router is None:
            from instrument.controls.routing import default_router

            router = default_router(latents)
        self.queue = queue
        self.router = router
        self.received = 0
        self.errors = 0
        self.malformed_packets = 0
        self.kernel_drops = 0
        self.parser_warnings = 0
        self.refused_senders = 0
        self.oversized_packets = 0
        self.allow = None if allow is None else tuple(allow)
        self.max_packet_bytes = int(max_packet_bytes)
        self.last_error = ""
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, _, _, _, sockaddr = infos[0]
        self._socket = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self._socket.bind(sockaddr)
        except OSError:
            self._socket.close()
            raise
        self._socket.settimeout(0.05)
        try:
            if not hasattr(self._socket, "recvmsg"):
                raise AttributeError("recvmsg")       # Windows
            self._socket.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
            self._ancillary = socket.CMSG_SPACE(4)
        except (OSError, AttributeError):             # not Linux: drops are not counted
            self._ancillary = 0
        self.address: tuple[str, int] = self._socket.getsockname()[:2]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _refuse(self, why: str) -> None:
        self.errors += 1
        self.last_error = why

    def handle_packet(self, data: bytes, sender: str) -> None:
        """One datagram as the server thread receives it from ``sender`` (address text): the sender and size
        checks, then :meth:`handle_datagram`."""
        if not sender_allowed(sender, self.allow):
            self.refused_senders += 1
            self._refuse(f"sender {sender} is not in the OSC allow-list")
            return
        try:
            why = packet_problem(data, self.max_packet_bytes)
        except MalformedBundle as exc:
            self.malformed_packets += 1
            self._refuse(f"not an OSC packet ({len(data)} bytes): {exc}")
            return
        if why:
            self.oversized_packets += 1
            self._refuse(why)
            return
        self.handle_datagram(data)

    def handle_datagram(self, data: bytes) -> None:
        """Parse one UDP datagram and route every message in it (the server thread calls this)."""
        from pythonosc.osc_packet import OscPacket

        try:
            messages = [timed.message for timed in OscPacket(data).messages]
        except Exception as exc:                       # ParseError, and whatever odd bytes make the parser raise
            self.malformed_packets += 1
            self._refuse(f"not an OSC packet ({len(data)} bytes): {exc}")
            return
        for message in messages:
            self.received += 1
            why = _bad_number(message.params)
            if why:
                self._refuse(f"{message.address}: {why}")
                continue
            try:
                for event in self.router.osc(message.address, tuple(message.params)):
                    self.queue.push(event)
            except (TypeError, ValueError, KeyError, IndexError, OverflowError) as exc:
                self._refuse(str(exc) or type(exc).__name__)

    def _serve(self) -> None:
        sock = self._socket
        logging.getLogger().addFilter(_PYTHONOSC_LOG)
        while not self._stop.is_set():
            try:
                if self._ancillary:
                    data, ancillary, _, sender = sock.recvmsg(65536, self._ancillary)
                    for level, kind, value in ancillary:
                        if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(value) >= 4:
                            self.kernel_drops = int.from_bytes(value[:4], sys.byteorder)   # since the socket opened
                else:                                       # no SO_RXQ_OVFL (macOS) or no recvmsg (Windows)
                    data, sender = sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            warned = _PYTHONOSC_LOG.count
            try:
                self.handle_packet(data, sender[0])
            except Exception as exc:                   # a broken router must not end the server
                self._refuse(f"router failed: {exc!r}")
            if _PYTHONOSC_LOG.count != warned:
                self.parser_warnings += 1

    def start(self) -> "OscServer":
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._serve, name="sdga-osc", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        self._socket.close()

    def __enter__(self) -> "OscServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
