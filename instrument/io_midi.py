"""MIDI input: a virtual port named 'sdga' and connections to existing ports, via python-rtmidi on JACK or ALSA.

The rtmidi thread only decodes, routes and enqueues: raw bytes -> ``mido.Message`` (bytes that are not one
valid MIDI message are counted as ``malformed``, never raised) -> ``router.midi(message)`` -> EventQueue.
python-rtmidi is used directly (mido's rtmidi ports drop undecodable bytes silently, and opening a port with a
client name makes it virtual, so it cannot connect to a source). Connecting to a source opens one more rtmidi
input: on JACK that is a port connected from the source, on ALSA a subscription.
"""
from __future__ import annotations

from typing import Sequence

from .events import EventQueue

__all__ = ["MidiInput", "MidiPortError", "midi_backend", "midi_input_names", "match_midi_inputs", "JACK_API",
           "ALSA_API"]

JACK_API = "UNIX_JACK"
ALSA_API = "LINUX_ALSA"


class MidiPortError(RuntimeError):
    """A MIDI port could not be opened or found; the message says which and what exists."""


def _rtapi(api: str | None) -> int:
    import rtmidi

    if api is None:
        return rtmidi.API_UNSPECIFIED
    try:
        return getattr(rtmidi, f"API_{api}")
    except AttributeError:
        raise MidiPortError(f"unknown MIDI API {api!r}; use {JACK_API} or {ALSA_API}") from None


def midi_backend(api: str | None = None):
    """mido's rtmidi backend, optionally for one rtmidi API ('UNIX_JACK', 'LINUX_ALSA')."""
    import mido

    return mido.Backend("mido.backends.rtmidi" + (f"/{api}" if api else ""), load=True)


def midi_input_names(api: str | None = None, client_name: str = "sdga-list") -> list[str]:
    """Names of the MIDI sources that can be connected to (other programs' outputs, hardware inputs)."""
    import rtmidi

    try:
        probe = rtmidi.MidiIn(_rtapi(api), client_name)
    except rtmidi.RtMidiError as exc:
        raise MidiPortError(f"MIDI ({api or 'default API'}) is not available: {exc}") from None
    try:
        return list(probe.get_ports())
    finally:
        probe.delete()


def match_midi_inputs(patterns: Sequence[str], names: Sequence[str], exclude_client: str | None = None) -> list[str]:
    """The source names matching any pattern (exact name, else case-insensitive substring), in ``names``'
    order, without our own client's ports; raises MidiPortError naming what exists when a pattern matches none."""
    own = f"{exclude_client}:" if exclude_client else None
    names = [n for n in names if own is None or not n.startswith(own)]
    chosen: list[str] = []
    for pattern in patterns:
        hits = [n for n in names if n == pattern] or [n for n in names if pattern.lower() in n.lower()]
        if not hits:
            raise MidiPortError(f"no MIDI input matches {pattern!r}; inputs: {', '.join(names) or '(none)'}")
        chosen += [n for n in hits if n not in chosen]
    return chosen


class MidiInput:
    """Receives MIDI and pushes the router's events to ``queue``.

    ``virtual_name``: create a virtual input port with this name (None: none); ``connect``: also receive from
    these existing sources (names as :func:`midi_input_names` lists them, e.g. ``a2j:keyboard`` on JACK).
    ``router``: an object with ``midi(message, offset) -> list[Event]`` (default: :class:`DefaultRouter`
    without latents). Counters: ``received`` (events queued), ``ignored`` (messages routed to nothing),
    ``malformed`` (bytes that are not a MIDI message, or messages the router refused), ``last_error``.
    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, queue: EventQueue, *, virtual_name: str | None = "sdga", api: str | None = JACK_API,
                 connect: str | Sequence[str] | None = None, client_name: str = "sdga", router=None):
        import rtmidi

        if router is None:
            from .routing import DefaultRouter

            router = DefaultRouter()
        self.queue = queue
        self.router = router
        self.received = 0
        self.ignored = 0
        self.malformed = 0
        self.last_error = ""
        self.ports: list = []
        self.port_names: list[str] = []
        sources = [connect] if isinstance(connect, str) else list(connect or ())
        rtapi = _rtapi(api)
        try:
            if virtual_name:
                self._open(rtmidi, rtapi, client_name, virtual_name, None)
                self.port_names.append(f"{client_name}:{virtual_name}" if api == JACK_API else virtual_name)
            for source in sources:
                self._open(rtmidi, rtapi, client_name, virtual_name or "in", source)
                self.port_names.append(source)
        except Exception:
            self.close()
            raise

    def _open(self, rtmidi, rtapi: int, client_name: str, port_name: str, source: str | None) -> None:
        try:
            port = rtmidi.MidiIn(rtapi, client_name, 1024)
        except rtmidi.RtMidiError as exc:
            raise MidiPortError(f"cannot open MIDI: {exc}") from None
        self.ports.append(port)
        port.ignore_types(sysex=True, timing=True, active_sense=True)
        port.set_callback(self._on_bytes)
        try:
            if source is None:
                port.open_virtual_port(port_name)
            else:
                names = port.get_ports()
                if source not in names:
                    raise MidiPortError(f"no MIDI input {source!r}; inputs: {', '.join(names) or '(none)'}")
                port.open_port(names.index(source), port_name)
        except rtmidi.RtMidiError as exc:
            raise MidiPortError(f"cannot open MIDI port {source or port_name!r}: {exc}") from None

    def _on_bytes(self, event, data=None) -> None:
        import mido

        try:
            message = mido.Message.from_bytes(event[0])
        except (ValueError, TypeError, IndexError, KeyError) as exc:
            self.malformed += 1
            self.last_error = f"bad MIDI bytes {list(event[0])[:8]}: {exc}"
            return
        self.on_message(message)

    def on_message(self, message) -> None:
        """Route one decoded message (the rtmidi thread calls this; tests may too). Never raises."""
        try:
            events = self.router.midi(message, 0)
        except Exception as exc:
            self.malformed += 1
            self.last_error = f"{message}: {exc}"
            return
        if not events:
            self.ignored += 1
        for event in events:
            if self.queue.push(event):
                self.received += 1

    def close(self) -> None:
        for port in self.ports:
            try:
                port.cancel_callback()
                port.close_port()
                port.delete()
            except Exception:
                pass
        self.ports = []

    def __enter__(self) -> "MidiInput":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
