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
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Sequence

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
    errors are the same. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, queue: EventQueue, *, virtual_name: str | None = "sdga", api: str | None = JACK_API,
                 connect: str | Sequence[str] | None = None, client_name: str = "sdga", router=None,
                 separate_process: bool = False):
        if router is None:
            from instrument.controls.routing import default_router

            router = default_router()
        self.queue = queue
        self.router = router
        self.received = 0
        self.ignored = 0
        self.malformed = 0
        self.last_error = ""
        self.ports: list = []
        self.port_names: list[str] = []
        self._child: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        sources = [connect] if isinstance(connect, str) else list(connect or ())
        if separate_process:
            self._start_child(dict(api=api, virtual_name=virtual_name, sources=sources, client_name=client_name))
            return
        try:
            self.port_names = _open_ports(api, client_name, virtual_name, sources, self._on_bytes, self.ports)
        except Exception:
            self.close()
            raise

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
        """Reader thread: frames of (1 byte length, the bytes) until the child's pipe closes."""
        stream = self._child.stdout
        while True:
            head = stream.read(1)
            if not head:
                return
            data = stream.read(head[0])
            if len(data) < head[0]:
                return
            self._on_bytes((list(data), 0.0))

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
        _close_ports(self.ports)
        self.ports = []

    def __enter__(self) -> "MidiInput":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open_ports(api: str | None, client_name: str, virtual_name: str | None, sources: Sequence[str], callback,
                ports: list) -> list[str]:
    """Open the virtual input (if ``virtual_name``) and one input connected from each source, each calling
    ``callback(event, data)`` from rtmidi's thread; every port opened is appended to ``ports`` at once (so the
    caller can close them if a later one fails). Returns the port names; raises MidiPortError."""
    import rtmidi

    rtapi = _rtapi(api)

    def open_one(port_name: str, source: str | None) -> None:
        try:
            port = rtmidi.MidiIn(rtapi, client_name, 1024)
        except rtmidi.RtMidiError as exc:
            raise MidiPortError(f"cannot open MIDI: {exc}") from None
        ports.append(port)
        port.ignore_types(sysex=True, timing=True, active_sense=True)
        port.set_callback(callback)
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

    opened: list[str] = []
    if virtual_name:
        open_one(virtual_name, None)
        opened.append(f"{client_name}:{virtual_name}" if api == JACK_API else virtual_name)
    for source in sources:
        open_one(virtual_name or "in", source)
        opened.append(source)
    return opened


def _close_ports(ports) -> None:
    for port in ports:
        try:
            port.cancel_callback()
            port.close_port()
            port.delete()
        except Exception:
            pass


def _bridge_main() -> None:
    """The child process of ``MidiInput(separate_process=True)``: argv[1] is a JSON spec (api, virtual_name,
    sources, client_name). Prints one JSON line (``{"ports": [...]}`` or ``{"error": "..."}``) then writes each
    received message to stdout as (length byte, bytes), from rtmidi's callback; exits when stdin closes."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C is the player's to handle; it closes our stdin
    spec = json.loads(sys.argv[1])
    out = sys.stdout.fileno()

    def forward(event, data=None) -> None:          # rtmidi's thread: raw bytes into the pipe, nothing else
        message = bytes(event[0][:255])
        try:
            os.write(out, bytes((len(message),)) + message)
        except OSError:
            pass

    ports: list = []
    try:
        names = _open_ports(spec["api"], spec["client_name"], spec["virtual_name"], spec["sources"], forward, ports)
    except Exception as exc:
        _close_ports(ports)
        os.write(out, (json.dumps({"error": str(exc)}) + "\n").encode())
        return
    os.write(out, (json.dumps({"ports": names}) + "\n").encode())
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except (OSError, KeyboardInterrupt):
        pass
    _close_ports(ports)
