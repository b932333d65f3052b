"""Any laptop: what differs on macOS and Windows, with the platform faked where it matters.

We cannot run macOS or Windows here. These tests pin down the code paths that differ: which MIDI system
``--midi-api auto`` picks, that sdga-play connects to the inputs where virtual ports do not exist (Windows MM),
that the OSC server receives without ``recvmsg`` / SO_RXQ_OVFL, that the audio callback's per-thread diagnosis
turns itself off without ``resource.RUSAGE_THREAD``, and that nothing the live instrument imports at module level
is Linux-only.
"""
from __future__ import annotations

import ast
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from instrument.apps import play
from instrument.engine.events import EventQueue
from instrument.io import midi as midi_io

ROOT = Path(__file__).resolve().parents[1]
LINUX_ONLY_MODULES = {"resource", "fcntl", "termios", "pty", "grp", "pwd", "posix", "crypt", "spwd"}


@pytest.mark.parametrize("platform, compiled, expected", [
    ("linux", ["LINUX_ALSA", "UNIX_JACK"], ["UNIX_JACK", "LINUX_ALSA"]),
    ("linux", ["LINUX_ALSA"], ["LINUX_ALSA"]),
    ("darwin", ["MACOSX_CORE", "UNIX_JACK"], ["MACOSX_CORE", "UNIX_JACK"]),
    ("darwin", ["MACOSX_CORE"], ["MACOSX_CORE"]),
    ("win32", ["WINDOWS_MM"], ["WINDOWS_MM"]),
    ("freebsd13", ["UNIX_JACK"], ["UNIX_JACK"]),
])
def test_auto_midi_api_is_the_platforms(platform, compiled, expected):
    assert midi_io.auto_midi_apis(platform, compiled) == expected


def test_only_windows_mm_lacks_virtual_ports():
    assert not midi_io.has_virtual_ports(midi_io.WINMM_API)
    assert all(midi_io.has_virtual_ports(api) for api in (midi_io.JACK_API, midi_io.ALSA_API, midi_io.CORE_API))
    # every --midi-api choice names an API python-rtmidi knows
    import rtmidi

    for choice, (api, _) in midi_io.MIDI_APIS.items():
        assert hasattr(rtmidi, f"API_{api}"), choice


class FakeMidiInput:
    opened: list[dict] = []

    def __init__(self, queue, **kwargs):
        FakeMidiInput.opened.append(kwargs)
        self.port_names = list(kwargs["connect"]) + (["sdga"] if kwargs["virtual_name"] else [])


@pytest.fixture
def fake_windows(monkeypatch):
    FakeMidiInput.opened = []
    monkeypatch.setattr(play, "_midi_api", lambda choice: midi_io.WINMM_API)
    monkeypatch.setattr(midi_io, "midi_input_names", lambda api=None, client_name="": ["USB Keyboard 0", "Pads 1"])
    monkeypatch.setattr(midi_io, "MidiInput", FakeMidiInput)


def open_midi(argv):
    args = play.build_parser().parse_args(["model.sdga", *argv])
    lines: list[str] = []
    ports = play._open_midi(args, router=None, queue=EventQueue(), log=lines.append)
    return ports, lines


def test_windows_without_midi_flags_receives_from_every_input(fake_windows):
    ports, lines = open_midi([])
    assert len(ports) == 1
    opened = FakeMidiInput.opened[0]
    assert opened["virtual_name"] is None                       # Windows MM cannot offer one
    assert opened["connect"] == ["USB Keyboard 0", "Pads 1"]
    assert any("no virtual ports" in line and "every input" in line for line in lines)


def test_windows_with_midi_name_receives_from_that_input_only(fake_windows):
    open_midi(["--midi", "keyboard"])
    opened = FakeMidiInput.opened[0]
    assert opened["virtual_name"] is None and opened["connect"] == ["USB Keyboard 0"]


def test_linux_keeps_the_virtual_port(monkeypatch):
    FakeMidiInput.opened = []
    monkeypatch.setattr(play, "_midi_api", lambda choice: midi_io.JACK_API)
    monkeypatch.setattr(midi_io, "midi_input_names", lambda api=None, client_name="": ["a2j:keys"])
    monkeypatch.setattr(midi_io, "MidiInput", FakeMidiInput)
    open_midi([])
    assert FakeMidiInput.opened[0]["virtual_name"] == "sdga" and FakeMidiInput.opened[0]["connect"] == []


def test_osc_server_receives_without_recvmsg():
    """Windows sockets have no recvmsg and macOS has no SO_RXQ_OVFL: the server falls back to recvfrom."""
    from instrument.io.osc import OscServer
    from pythonosc.udp_client import SimpleUDPClient

    class NoRecvmsg:                                            # a Windows socket, as far as the server sees
        def __init__(self, sock):
            self._sock = sock

        def __getattr__(self, name):
            if name == "recvmsg":
                raise AttributeError(name)
            return getattr(self._sock, name)

    queue = EventQueue()
    server = OscServer(queue, port=0)
    server._socket = NoRecvmsg(server._socket)
    server._ancillary = 0                                       # what __init__ leaves for such a socket
    server.start()
    try:
        SimpleUDPClient(*server.address).send_message("/sdga/note_on", [60, 100])
        deadline = time.monotonic() + 5.0
        while server.received == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        server.close()
    assert server.received == 1 and server.errors == 0


def test_audio_diagnosis_off_without_thread_usage(monkeypatch):
    from instrument.engine.engine import Engine
    from instrument.io import audio
    from instrument.model.bundle import random_bundle

    engine = Engine(random_bundle())
    engine.prepare(48000, 128, 2)
    monkeypatch.setattr(audio, "RUSAGE_THREAD", None)            # macOS (no per-thread usage), Windows (no module)
    out = audio.AudioOutput(engine, EventQueue(), diagnose=True)
    assert out.diagnose is False
    block = np.zeros((128, 2), np.float32)

    class Status:
        output_underflow = False

    out._callback(block, 128, None, Status())                   # the callback runs without resource
    assert np.isfinite(block).all()


def _top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in tree.body:                                      # module level, outside try/except and functions
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_nothing_linux_only_is_imported_unguarded():
    offenders = {}
    for path in sorted((ROOT / "instrument").rglob("*.py")) + sorted((ROOT / "training").rglob("*.py")):
        bad = _top_level_imports(path) & LINUX_ONLY_MODULES
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}
