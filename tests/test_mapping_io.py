"""Mappings over real transports: JACK MIDI through the dummy server, OSC over UDP from liblo's oscsend, and
the shipped Pd patch (mappings/sdga.pd) run headless by real Pd, each feeding a router (through OscServer, as
sdga-play wires it) whose events drive the engine. Skips when oscsend / pd are not installed; the JACK test
fails where jackd is installed but does not start (tests/jack_dummy.py) and skips only where it is not."""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from instrument.engine.engine import Engine
from instrument.engine.events import EventQueue, LatentSet, NoteOff, NoteOn, Param, ParamSet, PitchBend
from instrument.controls.router import load_router
from instrument.io.osc import OscServer
from test_mapping import named_bundle, wait_for

ROOT = Path(__file__).resolve().parents[1]
MAPPING = """\
version: 1
mappings:
  - {cc: 70, target: latent/0}
  - {aftertouch: true, target: noise_gain_db, range: [-24, 0]}
  - {bend: true, channel: 1, target: latent/hollowness}
  - {osc: /1/fader1, target: latent/brightness}
  - {osc: /3/xy, arg: 1, target: release_ms, range: [100, 1100], curve: linear}
  - {osc: /pd/knob, input: [0, 127], target: latent/2}
"""


@pytest.fixture(scope="module")
def bundle():
    return named_bundle()


@pytest.fixture
def router(tmp_path, bundle):
    path = tmp_path / "io.yaml"
    path.write_text(MAPPING)
    router = load_router(path, bundle)
    yield router
    router.close()


def play(bundle, events) -> np.ndarray:
    engine = Engine(bundle)
    engine.prepare(48000, 256, 2)
    out = np.zeros(256 * 40, np.float32)
    engine.process(events, out[:256])
    for start in range(256, len(out), 256):
        engine.process([], out[start:start + 256])
    assert engine.stats.errors == 0
    return out


def test_jack_midi_through_the_router(jack_server, router, bundle):  # noqa: F811
    import mido

    from instrument.io.midi import midi_backend

    backend = midi_backend("UNIX_JACK")
    queue = EventQueue()

    def on_message(message):
        for event in router.midi(message):
            queue.push(event)

    with backend.open_output("out", virtual=True, client_name="sdga_map_keys") as keys, \
            backend.open_input("in", virtual=True, client_name="sdga_map", callback=on_message):
        result = subprocess.run(["jack_connect", "sdga_map_keys:out", "sdga_map:in"], capture_output=True, text=True,
                                timeout=10)
        assert result.returncode == 0, result.stderr
        time.sleep(0.1)
        keys.send(mido.Message("control_change", control=70, value=127))
        keys.send(mido.Message("aftertouch", value=0))
        keys.send(mido.Message("pitchwheel", pitch=-8192, channel=1))
        keys.send(mido.Message("pitchwheel", pitch=4096, channel=0))        # not mapped on channel 0: bends
        keys.send(mido.Message("note_on", note=62, velocity=100))
        assert wait_for(lambda: len(queue) == 5)
    events = list(queue.drain())
    assert events == [LatentSet(0, 1.0, knob=True), ParamSet(Param.NOISE_GAIN_DB, -24.0), LatentSet(3, 0.0, knob=True),
                      PitchBend(0.5, 0), NoteOn(62, 100, 0)]
    assert np.abs(play(bundle, events)).max() > 0


@pytest.mark.skipif(shutil.which("oscsend") is None, reason="liblo-tools (oscsend) not installed")
def test_oscsend_over_udp_through_the_router(router, bundle):
    queue = EventQueue()
    with OscServer(queue, bundle.latents, port=0, router=router) as server:     # the server sdga-play runs
        for args in (["/1/fader1", "f", "0.75"], ["/3/xy", "ff", "0.1", "0.5"], ["/sdga/note_on", "ii", "60", "90"],
                     ["/nowhere", "f", "1"]):
            subprocess.run(["oscsend", "127.0.0.1", str(server.address[1]), *args], check=True, timeout=10)
        assert wait_for(lambda: server.received == 4)
    events = list(queue.drain())
    assert events == [LatentSet(0, 0.75, knob=True), ParamSet(Param.RELEASE_MS, 600.0), NoteOn(60, 90, 0)]
    assert server.errors == 1 and "/nowhere" in server.last_error
    assert np.abs(play(bundle, events)).max() > 0


@pytest.mark.skipif(shutil.which("pd") is None, reason="puredata not installed")
def test_shipped_pd_patch_plays_through_the_router(router, bundle):
    queue = EventQueue()
    with OscServer(queue, bundle.latents, port=0, router=router) as server:     # the server sdga-play runs
        # The patch connects to 9000 on load; the first -send points it at this test's port, the second plays
        # its scripted sequence, which ends with "pd quit".
        result = subprocess.run(["pd", "-nogui", "-nosound", "-nomidi", "-batch",
                                 "-open", str(ROOT / "mappings" / "sdga.pd"),
                                 "-send", f"sdga-connect {server.address[1]}", "-send", "sdga-script bang"],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert "error" not in (result.stdout + result.stderr).lower(), result.stderr
        assert wait_for(lambda: server.received == 7)
    events = list(queue.drain())
    assert server.errors == 0, server.last_error
    assert [type(e) for e in events] == [NoteOn, LatentSet, LatentSet, LatentSet, NoteOn, NoteOff, NoteOff]
    assert (events[0].note, events[0].velocity) == (60.0, 100.0) and events[4].note == 64.0     # Pd sends floats
    latents = [(e.index, round(e.value, 6), e.knob) for e in events[1:4]]
    assert latents == [(0, 0.2, True), (0, 0.8, True), (1, 0.5, True)]
    assert np.abs(play(bundle, events[:5])).max() > 0
