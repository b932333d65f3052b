"""OSC feedback transport: sends the messages a router composes (``/sdga/value/<target>``, mapped addresses)
over UDP. The router (:mod:`instrument.controls.router`) gets an :class:`OscFeedback` as its injected
``send`` and never opens a socket itself."""
from __future__ import annotations

from typing import Sequence

__all__ = ["OscFeedback"]


class OscFeedback:
    """``send(dest, address, args)``: one OSC message to ``dest`` = (host, port), from a controller thread.
    One UDP client per destination (made again when the destination changes, e.g. after a mapping reload);
    socket errors are counted in ``errors``, never raised."""

    def __init__(self) -> None:
        self.errors = 0
        self.sent = 0
        self._client = None
        self._dest: tuple[str, int] | None = None

    def __call__(self, dest: tuple[str, int], address: str, args: float | Sequence[float]) -> None:
        try:
            if self._client is None or self._dest != dest:
                from pythonosc.udp_client import SimpleUDPClient

                self.close()
                self._client, self._dest = SimpleUDPClient(dest[0], int(dest[1])), dest
            self._client.send_message(address, args)
            self.sent += 1
        except OSError:
            self.errors += 1

    def close(self) -> None:
        client, self._client, self._dest = self._client, None, None
        if client is not None:
            try:
                client._sock.close()
            except Exception:
                pass
