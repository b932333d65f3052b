"""MIDI input: a virtual port named 'sdga' and connections to existing ports, via python-rtmidi on JACK or ALSA
(Linux), CoreMIDI (macOS) or Windows MM (Windows has no virtual ports: there sdga-play connects to the inputs).

The rtmidi thread only decodes, routes and enqueues: raw bytes -> ``mido.Message`` (bytes that are not one
valid MIDI message are counted as ``malformed``, never raised) -> ``router.midi(message)`` -> EventQueue.
python-rtmidi is used directly (mido's rtmidi ports drop undecodable bytes silently, and opening a port with a
client name makes it virtual, so it cannot connect to a source). Connecting to a source opens one more rtmidi
input: on JACK that is a port connected from the source, on ALSA a subscription.

``MidiInput(..., separate_process=True)`` (what sdga-play uses) opens the ports in a small child process that
imports only rtmidi and forwards the raw bytes through a pipe; a reader thread here decodes, routes and
enqueues as above. Why: rtmidi calls its Python callback from JACK's process thread, which must take the GIL;
in the player's process the GIL is also wanted by the audio callback and the OSC thread, so JACK's MIDI client
waited for it and JACK logged the whole cycle late (the soak benchmark's xruns were mostly blamed on sdga's
rtmidi clients). In the child nothing else wants its GIL, and the pipe read here releases ours while it waits.

A connected source that goes away (its program quit, its cable was pulled) is noticed by polling the source
names every ``poll_s`` (0.5 s) on a thread that is not the audio callback's (the child's main loop, or a
``sdga-midi-poll`` thread in-process): the notes and the sustain pedal it held are released (routed as the
note-off / pedal-up messages the controller would have sent), ``on_status`` is told once, and when a source of
the same name appears again it is connected to afresh (a new rtmidi input: reopening the old one leaves a JACK
connection that delivers nothing). Counted in ``disconnects``, ``reconnects`` and ``released_notes``.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Sequence

from instrument.engine.events import EventQueue

__all__ = ["MidiInput", "MidiPortError", "midi_backend", "midi_input_names", "match_midi_inputs", "JACK_API",
           "ALSA_API", "CORE_API", "WINMM_API", "MIDI_APIS", "PLATFORM_MIDI_APIS", "auto_midi_apis",
           "has_virtual_ports"]

JACK_API = "UNIX_JACK"
ALSA_API = "LINUX_ALSA"
CORE_API = "MACOSX_CORE"
WINMM_API = "WINDOWS_MM"

# The one table of MIDI systems: --midi-api choice -> (rtmidi API name, offers virtual ports).
MIDI_APIS: dict[str, tuple[str, bool]] = {
    "jack": (JACK_API, True),
    "alsa": (ALSA_API, True),
    "coremidi": (CORE_API, True),
    "winmm": (WINMM_API, False),       # Windows MM cannot create a port other programs see
}
# What ``--midi-api auto`` tries, in order, per sys.platform prefix (the first one that answers is used).
PLATFORM_MIDI_APIS: dict[str, tuple[str, ...]] = {
    "linux": (JACK_API, ALSA_API),
    "darwin": (CORE_API, JACK_API),
    "win32": (WINMM_API,),
}


def auto_midi_apis(platform: str | None = None, compiled: Sequence[str] | None = None) -> list[str]:
    """The rtmidi APIs ``--midi-api auto`` tries on ``platform`` (default: this one), in order, keeping those this
    python-rtmidi build has (``compiled``: API names, default: asked of rtmidi)."""
    platform = sys.platform if platform is None else platform
    wanted = next((apis for prefix, apis in PLATFORM_MIDI_APIS.items() if platform.startswith(prefix)),
                  (JACK_API, ALSA_API))
    if compiled is None:
        import rtmidi

        built = set(rtmidi.get_compiled_api())
        compiled = [name for name, _ in MIDI_APIS.values() if getattr(rtmidi, f"API_{name}", None) in built]
    return [api for api in wanted if api in set(compiled)]


def has_virtual_ports(api: str | None) -> bool:
    """Whether ``api`` can create a virtual input port (all but Windows MM; unknown / default: assume yes)."""
    return next((virtual for name, virtual in MIDI_APIS.values() if name == api), True)


class MidiPortError(RuntimeError):
    """A MIDI port could not be opened or found; the message says which and what exists."""


def _rtapi(api: str | None) -> int:
    import rtmidi

    if api is None:
        return rtmidi.API_UNSPECIFIED
    try:
        return getattr(rtmidi, f"API_{api}")
    except AttributeError:
        raise MidiPortError(f"unknown MIDI API {api!r}; use one of "
                            f"{', '.join(name for name, _ in MIDI_APIS.values())}") from None


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
    ``router``: an object with ``midi(message, offset) -> list[Event]`` (default:
    :func:`instrument.controls.routing.default_router` without latents). Counters: ``received`` (events
    queued), ``ignored`` (messages routed to nothing),
    ``malformed`` (bytes that are not a MIDI message, or messages the router refused), ``last_error``.
    ``separate_process``: open the ports in a child process (see the module notes); the counters, routing and
    errors are the same. A connected source that goes away and comes back (module notes) is counted in
    ``disconnects`` / ``reconnects`` (``released_notes``: notes it held, released when it went); ``missing``
    holds the names gone now; ``on_status(text)`` (any thread but the audio callback's) is told each time.
    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, queue: EventQueue, *, virtual_name: str | None = "sdga", api: str | None = JACK_API,
                 connect: str | Sequence[str] | None = None, client_name: str = "sdga", router=None,
                 separate_process: bool = False, poll_s: float = 0.5,
                 on_status: Callable[[str], None] | None = None):
        import mido  # noqa: F401  (imported here, not in the first message's callback: an import there takes
        #              ~0.5 s, and rtmidi in-process then repeats or drops the messages that arrive meanwhile)

        if router is None:
            from instrument.controls.routing import default_router

            router = default_router()
        self.queue = queue
        self.router = router
        self.on_status = on_status
        self.received = 0
        self.ignored = 0
        self.malformed = 0
        self.last_error = ""
        self.disconnects = 0
        self.reconnects = 0
        self.released_notes = 0
        self.ports: _Ports | None = None
        self.port_names: list[str] = []
        sources = [connect] if isinstance(connect, str) else list(connect or ())
        self.sources = sources
        self.missing: frozenset[str] = frozenset()     # replaced whole (other threads read it), never changed
        # per source (0: the virtual port, i: sources[i - 1]): the (channel, note)s it holds and the channels
        # whose sustain pedal it holds down, written only by the thread that routes its messages
        self._held: list[set] = [set() for _ in range(len(sources) + 1)]
        self._pedal: list[set] = [set() for _ in range(len(sources) + 1)]
        self._child: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()
        if separate_process:
            self._start_child(dict(api=api, virtual_name=virtual_name, sources=sources, client_name=client_name,
                                   poll_s=poll_s))
            return
        self.ports = _Ports(api, client_name, virtual_name, sources, self._on_bytes, self._source_changed)
        try:
            self.port_names = self.ports.open()
        except Exception:
            self.close()
            raise
        if sources:
            self._poller = threading.Thread(target=self._poll, args=(poll_s,), name="sdga-midi-poll", daemon=True)
            self._poller.start()

    def _poll(self, poll_s: float) -> None:
        while not self._stop.wait(poll_s):
            try:
                self.ports.poll()
            except Exception as exc:          # never let the poller die silently
                self.last_error = f"MIDI port poll: {exc!r}"

    def _start_child(self, spec: dict) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])     # the folder holding the instrument package
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._child = subprocess.Popen(
            [sys.executable, "-c", "from instrument.io.midi import _bridge_main; _bridge_main()", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        hello = self._child.stdout.readline()
        try:
            reply = json.loads(hello.decode())
        except ValueError:
            reply = {"error": f"MIDI process exited ({self._child.poll()}) before opening its ports"}
        if "error" in reply:
            self.close()
            raise MidiPortError(reply["error"])
        self.port_names = list(reply["ports"])
        self._reader = threading.Thread(target=self._read_child, name="sdga-midi-reader", daemon=True)
        self._reader.start()

    def _read_child(self) -> None:
        """Reader thread: frames (see :func:`_frame`) until the child's pipe closes."""
        stream = self._child.stdout
        while True:
            head = stream.read(2)
            if len(head) < 2:
                return
            length, source = head
            data = stream.read(length or 1)
            if len(data) < (length or 1):
                return
            if length:
                self._on_bytes((list(data), 0.0), source)
            else:
                self._source_changed(source, data[0] == _BACK)

    def _on_bytes(self, event, source=0) -> None:
        import mido

        try:
            message = mido.Message.from_bytes(event[0])
        except (ValueError, TypeError, IndexError, KeyError) as exc:
            self.malformed += 1
            self.last_error = f"bad MIDI bytes {list(event[0])[:8]}: {exc}"
            return
        self.on_message(message, source or 0)

    def on_message(self, message, source: int = 0) -> None:
        """Route one decoded message from ``source`` (0: the virtual port, i: ``sources[i - 1]``; the rtmidi or
        reader thread calls this; tests may too). Never raises."""
        if source < len(self._held):
            self._note_held(message, self._held[source], self._pedal[source])
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

    @staticmethod
    def _note_held(message, held: set, pedal: set) -> None:
        kind = message.type
        if kind == "note_on" and message.velocity > 0:
            held.add((message.channel, message.note))
        elif kind in ("note_on", "note_off"):
            held.discard((message.channel, message.note))
        elif kind == "control_change":
            if message.control == 64:
                (pedal.add if message.value >= 64 else pedal.discard)(message.channel)
            elif message.control in (120, 123):
                held.difference_update({k for k in held if k[0] == message.channel})

    def _source_changed(self, source: int, present: bool) -> None:
        """A connected source went away (release what it held, say so) or is back (say so). Never raises."""
        if not 1 <= source <= len(self.sources):
            return
        name = self.sources[source - 1]
        if present:
            self.missing = self.missing - {name}
            self.reconnects += 1
            self._status(f"MIDI: {name!r} is back: reconnected")
            return
        import mido

        held, pedal = self._held[source], self._pedal[source]
        released = sorted(held)
        messages = [mido.Message("note_off", channel=c, note=n, velocity=0) for c, n in released] + \
                   [mido.Message("control_change", channel=c, control=64, value=0) for c in sorted(pedal)]
        held.clear()
        pedal.clear()
        for message in messages:                 # as if the controller had let go: through the same router
            try:
                for event in self.router.midi(message, 0):
                    self.queue.push(event)
            except Exception as exc:
                self.last_error = f"{message}: {exc}"
        self.missing = self.missing | {name}
        self.disconnects += 1
        self.released_notes += len(released)
        self._status(f"MIDI: {name!r} went away"
                     + (f"; released its {len(released)} held note(s)" if released else "")
                     + (" and sustain pedal" if pedal else "")
                     + "; playing on, it is reconnected when a port of that name is back")

    def _status(self, text: str) -> None:
        if self.on_status is not None:
            try:
                self.on_status(text)
            except Exception:
                pass

    def close(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
            self._poller = None
        if self._child is not None:
            child, self._child = self._child, None
            try:
                child.stdin.close()         # EOF: the child closes its ports and exits
                child.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                child.kill()
                child.wait()
            if self._reader is not None:
                self._reader.join(timeout=5)
            child.stdout.close()
        if self.ports is not None:
            self.ports.close()
            self.ports = None

    def __enter__(self) -> "MidiInput":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_LOST, _BACK = 0, 1


def _frame(source: int, message: bytes) -> bytes:
    """The child's pipe format: (length 1..255, source index, the bytes) for a message; (0, source, _LOST or
    _BACK) when a connected source went away or is back. Source 0 is the virtual port, i is sources[i - 1]."""
    return bytes((len(message), source)) + message


class _Ports:
    """The rtmidi inputs of one :class:`MidiInput`: the virtual port (source 0) and one input connected from
    each source (1..n). ``on_bytes((bytes, delta), source)`` is called from rtmidi's thread;
    :meth:`poll` (a thread of its owner's) notices a source that went away or came back and calls
    ``on_change(source, present)``; it reconnects a source that came back."""

    def __init__(self, api: str | None, client_name: str, virtual_name: str | None, sources: Sequence[str],
                 on_bytes, on_change):
        self.api, self.client_name, self.virtual_name = api, client_name, virtual_name
        self.sources = list(sources)
        self.on_bytes, self.on_change = on_bytes, on_change
        self.inputs: dict[int, object] = {}           # source index -> rtmidi.MidiIn
        self.missing: set[int] = set()

    def _new_input(self, source: int):
        import rtmidi

        try:
            port = rtmidi.MidiIn(_rtapi(self.api), self.client_name, 1024)
        except rtmidi.RtMidiError as exc:
            raise MidiPortError(f"cannot open MIDI: {exc}") from None
        port.ignore_types(sysex=True, timing=True, active_sense=True)
        port.set_callback(self.on_bytes, source)
        return port

    def _connect(self, source: int) -> None:
        """A new input connected from ``sources[source - 1]`` (replacing the old one); raises MidiPortError."""
        import rtmidi

        name = self.sources[source - 1]
        _close_ports([self.inputs.pop(source)] if source in self.inputs else [])
        port = self.inputs[source] = self._new_input(source)
        try:
            names = port.get_ports()
            if name not in names:
                raise MidiPortError(f"no MIDI input {name!r}; inputs: {', '.join(names) or '(none)'}")
            port.open_port(names.index(name), self.virtual_name or "in")
        except rtmidi.RtMidiError as exc:
            raise MidiPortError(f"cannot open MIDI port {name!r}: {exc}") from None

    def open(self) -> list[str]:
        """Open every port; returns their names; raises MidiPortError (close what opened with :meth:`close`)."""
        import rtmidi

        opened: list[str] = []
        if self.virtual_name:
            port = self.inputs[0] = self._new_input(0)
            try:
                port.open_virtual_port(self.virtual_name)
            except rtmidi.RtMidiError as exc:
                raise MidiPortError(f"cannot open MIDI port {self.virtual_name!r}: {exc}") from None
            opened.append(f"{self.client_name}:{self.virtual_name}" if self.api == JACK_API else self.virtual_name)
        for source, name in enumerate(self.sources, 1):
            self._connect(source)
            opened.append(name)
        return opened

    def poll(self) -> None:
        """Compare the source names present now with the connected ones: report each that went away, reconnect
        each that is back (one failed reconnection is tried again at the next poll)."""
        # The names are listed by one of our own inputs (each rtmidi input is a JACK client that runs every
        # cycle: a separate client only to list names put one more real-time wake-up in front of the audio)
        if not self.sources or not self.inputs:
            return
        names = set(next(iter(self.inputs.values())).get_ports())
        for source, name in enumerate(self.sources, 1):
            if source not in self.missing and name not in names:
                self.missing.add(source)
                self.on_change(source, False)
            elif source in self.missing and name in names:
                try:
                    self._connect(source)
                except MidiPortError:
                    continue                          # vanished again, or not ready: the next poll tries
                self.missing.discard(source)
                self.on_change(source, True)

    def close(self) -> None:
        _close_ports(list(self.inputs.values()))
        self.inputs.clear()


def _close_ports(ports) -> None:
    for port in ports:
        try:
            port.cancel_callback()
        except Exception:
            pass
        try:
            port.close_port()
            port.delete()
        except Exception:
            pass


def _bridge_main() -> None:
    """The child process of ``MidiInput(separate_process=True)``: argv[1] is a JSON spec (api, virtual_name,
    sources, client_name, poll_s). Prints one JSON line (``{"ports": [...]}`` or ``{"error": "..."}``) then
    writes frames (:func:`_frame`) to stdout: each received message, from rtmidi's callback; a source gone or
    back, from this main loop, which polls the source names every poll_s; exits when stdin closes."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C is the player's to handle; it closes our stdin
    spec = json.loads(sys.argv[1])
    out = sys.stdout.fileno()

    def write(frame: bytes) -> None:                 # one write of < PIPE_BUF bytes: frames never interleave
        try:
            os.write(out, frame)
        except OSError:
            pass

    def forward(event, source=0) -> None:            # rtmidi's thread: raw bytes into the pipe, nothing else
        message = bytes(event[0][:255])
        if message:
            write(_frame(source, message))

    def changed(source: int, present: bool) -> None:
        write(_frame(source, b"") + bytes((_BACK if present else _LOST,)))

    ports = _Ports(spec["api"], spec["client_name"], spec["virtual_name"], spec["sources"], forward, changed)
    try:
        names = ports.open()
    except Exception as exc:
        ports.close()
        os.write(out, (json.dumps({"error": str(exc)}) + "\n").encode())
        return
    os.write(out, (json.dumps({"ports": names}) + "\n").encode())
    stdin = sys.stdin.buffer.raw
    try:
        while True:
            ready, _, _ = select.select([stdin], [], [], float(spec.get("poll_s", 0.5)))
            if ready and not stdin.read(4096):
                break
            try:
                ports.poll()
            except Exception as exc:                 # never let a poll end the MIDI input
                print(f"sdga MIDI: port poll failed: {exc!r}", file=sys.stderr, flush=True)
    except (OSError, KeyboardInterrupt):
        pass
    ports.close()
