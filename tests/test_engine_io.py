"""Contract of the live I/O around the engine: OSC address space and server, JACK MIDI input, audio stream.

The JACK tests start their own server (`jackd --no-realtime -d dummy`, a private server name); where jackd is
installed (or CI=true) a server that does not start fails them, else they skip (tests/jack_dummy.py).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from instrument.model.bundle import random_bundle
from instrument.engine.engine import Engine
from instrument.engine.events import (ControlChange, EventQueue, LatentSet, NoteOff, NoteOn, Panic, Param, ParamSet,
                               PitchBend)
from instrument.io.osc import DEFAULT_OSC_PORT, OSC_SPECS, OscError, OscServer, osc_event

sys.path.insert(0, os.path.dirname(__file__))
from jack_dummy import jack_unavailable  # noqa: E402

LATENTS = random_bundle().latents

# One example message per address of the table, and the event it must become.
EXAMPLES = {
    "/sdga/note_on": ("/sdga/note_on", [60, 100, 2], NoteOn(60, 100, 2)),
    "/sdga/note_off": ("/sdga/note_off", [60], NoteOff(60, 0, 0)),
    "/sdga/bend": ("/sdga/bend", [-0.25, 1], PitchBend(-0.25, 1)),
    "/sdga/cc": ("/sdga/cc", [123, 0], ControlChange(123, 0, 0)),
    "/sdga/sustain": ("/sdga/sustain", [1.0], ControlChange(64, 127, 0)),
    "/sdga/panic": ("/sdga/panic", [], Panic()),
    "/sdga/latent/<name>": ("/sdga/latent/z3", [0.75], LatentSet(3, 0.75, knob=True)),
    "/sdga/z/<index>": ("/sdga/z/5", [-1.5], LatentSet(5, -1.5)),
    "/sdga/param/<name>": ("/sdga/param/release_ms", [120.0], ParamSet(Param.RELEASE_MS, 120.0)),
    "/sdga/knob/<name>": ("/sdga/knob/output_gain_db", [1.0], ParamSet(Param.OUTPUT_GAIN_DB, 12.0)),
}


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# ---------------------------------------------------------------------------------------------- OSC
def test_every_osc_address_has_an_example():
    assert set(EXAMPLES) == {spec.address for spec in OSC_SPECS}
    assert DEFAULT_OSC_PORT == 9000
    assert all(spec.address.startswith("/sdga/") and spec.doc for spec in OSC_SPECS)


@pytest.mark.parametrize("key", sorted(EXAMPLES))
def test_osc_message_to_event(key):
    address, args, expected = EXAMPLES[key]
    assert osc_event(address, args, LATENTS) == expected


@pytest.mark.parametrize("address, args", [
    ("/sdga/nope", []), ("/other/note_on", [60, 100]), ("/sdga/note_on", [60]), ("/sdga/note_on", [60, 100, 1, 2]),
    ("/sdga/note_on", ["x", 100]), ("/sdga/note_on", [200, 100]), ("/sdga/note_on", [60, 100, 16]),
    ("/sdga/latent/nope", [0.5]), ("/sdga/z/x", [0.5]), ("/sdga/z/99", [0.5]), ("/sdga/param/volume", [1.0]),
    ("/sdga/param/", [1.0]), ("/sdga/latent/a/b", [0.5]),
])
def test_bad_osc_messages_are_refused(address, args):
    with pytest.raises(OscError):
        osc_event(address, args, LATENTS)


def test_osc_server_round_trip_and_oscsend():
    from pythonosc.udp_client import SimpleUDPClient

    queue = EventQueue()
    with OscServer(queue, LATENTS, port=0) as server:
        host, port = server.address
        client = SimpleUDPClient(host, port)
        for key in sorted(EXAMPLES):
            address, args, _ = EXAMPLES[key]
            client.send_message(address, args)
        client.send_message("/sdga/unknown", [1])
        assert wait_for(lambda: server.received == len(EXAMPLES) + 1)
        events = list(queue.drain())
        assert events == [EXAMPLES[key][2] for key in sorted(EXAMPLES)]
        assert server.errors == 1 and "unknown" in server.last_error
        if shutil.which("oscsend"):
            subprocess.run(["oscsend", host, str(port), "/sdga/note_on", "ii", "62", "90"], check=True, timeout=10)
            assert wait_for(lambda: len(queue) == 1)
            assert list(queue.drain()) == [NoteOn(62, 90, 0)]


def _osc(address: str, *args: tuple[str, object]) -> bytes:
    from pythonosc.osc_message_builder import OscMessageBuilder

    builder = OscMessageBuilder(address)
    for tag, value in args:
        builder.add_arg(value, tag)
    return builder.build().dgram


def test_osc_flood_of_bad_numbers_and_junk_is_refused_quietly(caplog):
    """NaN, inf and huge numbers never become events (the engine kernels would cast them); python-osc's
    warnings about type tags it skips (which carry the raw bytes) are counted, not logged."""
    import socket

    bad = [_osc("/sdga/z/0", ("f", float("nan"))), _osc("/sdga/note_off", ("f", 1e38)),
           _osc("/sdga/param/release_ms", ("d", float("inf"))), _osc("/sdga/note_on", ("d", -1e300), ("i", 100)),
           _osc("/sdga/bend", ("h", 2 ** 62)), _osc("/sdga/latent/z0", ("d", float("-inf")))]
    unknown_tag = b"/sdga/z/0\x00\x00\x00,X\x00\x00" + bytes(range(256)) * 40      # 'X': python-osc warns
    queue = EventQueue()
    with caplog.at_level("DEBUG"), OscServer(queue, LATENTS, port=0) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            for data in [*bad, unknown_tag, _osc("/sdga/z/1", ("f", 0.5))]:
                client.sendto(data, server.address)
        assert wait_for(lambda: server.received == len(bad) + 2)
    assert list(queue.drain()) == [LatentSet(1, 0.5)]
    assert server.errors == len(bad) + 1 and server.parser_warnings == 1
    assert not [r for r in caplog.records if "pythonosc" in r.pathname]


def test_osc_counts_datagrams_the_kernel_dropped():
    """A flood faster than the server thread: the socket's buffer overflows and the kernel drops datagrams;
    the server reads the count (SO_RXQ_OVFL) so every datagram sent is either received or counted as dropped."""
    import socket

    if not sys.platform.startswith("linux"):
        pytest.skip("SO_RXQ_OVFL is Linux's")
    queue = EventQueue(capacity=100000)
    server = OscServer(queue, LATENTS, port=0)          # not started: nothing reads while the flood arrives
    sent = 5000
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            for k in range(sent):
                client.sendto(_osc("/sdga/z/0", ("f", (k % 100) / 100.0)), server.address)
            server.start()
            assert wait_for(lambda: server.received > 0)
            time.sleep(0.5)                       # the server drains what the buffer held
            # the kernel tells the count with the next datagram it queues (each carries the drops so far)
            client.sendto(_osc("/sdga/z/0", ("f", 1.0)), server.address)
            sent += 1
            assert wait_for(lambda: server.received + server.kernel_drops == sent, 10.0), \
                (server.received, server.kernel_drops)
    finally:
        server.close()
    assert server.kernel_drops > 0 and server.errors == 0


def test_osc_drives_the_engine():
    queue = EventQueue()
    engine = Engine(random_bundle())
    engine.prepare(48000, 256, 2)
    with OscServer(queue, LATENTS, port=0) as server:
        from pythonosc.udp_client import SimpleUDPClient

        SimpleUDPClient(*server.address).send_message("/sdga/note_on", [60, 100])
        assert wait_for(lambda: len(queue) == 1)
    out = np.zeros(256, np.float32)
    engine.process(queue.drain(), out)
    engine.process(queue.drain(), out)
    assert engine.voices.active_voices == 1 and out.any()


# ---------------------------------------------------------------------------------------------- JACK
# (the jack_server fixture: conftest.py)
@pytest.mark.parametrize("separate_process", [False, True], ids=["in-process", "child-process"])
def test_midi_virtual_port_over_jack(jack_server, separate_process):
    import mido

    from instrument.io.midi import MidiInput, midi_backend

    backend = midi_backend("UNIX_JACK")
    queue = EventQueue()
    with backend.open_output("out", virtual=True, client_name="sdga_test_keys") as keys, \
            MidiInput(queue, virtual_name="sdga", api="UNIX_JACK", client_name="sdga_in",
                      connect="sdga_test_keys:out", separate_process=separate_process) as midi:
        assert midi.port_names == ["sdga_in:sdga", "sdga_test_keys:out"]
        assert "sdga_in:sdga" in backend.get_output_names()
        time.sleep(0.1)
        keys.send(mido.Message("note_on", note=64, velocity=80, channel=3))
        keys.send(mido.Message("pitchwheel", pitch=4096))
        keys.send(mido.Message("program_change", program=1))
        assert wait_for(lambda: midi.received == 2 and midi.ignored == 1)
    assert list(queue.drain()) == [NoteOn(64, 80, 3), PitchBend(0.5, 0)]
    with pytest.raises(RuntimeError, match="no_such:port"):
        MidiInput(EventQueue(), api="UNIX_JACK", client_name="sdga_in2", connect="no_such:port",
                  separate_process=separate_process)


def test_midi_child_process_counts_malformed_bytes_and_stops_with_the_input(jack_server):
    """Bytes that are no MIDI message cross the pipe as they came and are counted here; closing the input
    ends the child process."""
    import rtmidi

    from instrument.io.midi import MidiInput

    keys = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, "sdga_test_raw")
    keys.open_virtual_port("out")
    queue = EventQueue()
    try:
        with MidiInput(queue, virtual_name=None, api="UNIX_JACK", client_name="sdga_in3",
                       connect="sdga_test_raw:out", separate_process=True) as midi:
            child = midi._child
            time.sleep(0.1)
            for message in ([0x90, 0x40], [0xF5, 1], [0x90, 60, 100], [0xB0, 200, 1]):
                keys.send_message(message)
            assert wait_for(lambda: midi.received == 1 and midi.malformed == 3)
            assert "data byte" in midi.last_error
        assert child.poll() is not None
    finally:
        keys.close_port()
        keys.delete()
    assert list(queue.drain()) == [NoteOn(60, 100, 0)]


@pytest.mark.parametrize("separate_process", [False, True], ids=["in-process", "child-process"])
def test_midi_source_that_goes_away_releases_its_notes_and_is_reconnected_by_name(jack_server, separate_process):
    """A connected JACK MIDI source closes while it holds a note and the sustain pedal: both are released (as
    the router routes a note-off and pedal-up), one message names it; a new client of the same name is
    connected to again and its notes arrive. Counted."""
    import rtmidi

    from instrument.io.midi import MidiInput

    def keyboard():
        keys = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, "sdga_test_away")
        keys.open_virtual_port("out")
        return keys

    def close(keys):
        if keys is not None:
            keys.close_port()
            keys.delete()

    queue, said = EventQueue(), []
    keys = keyboard()
    try:
        with MidiInput(queue, virtual_name=None, api="UNIX_JACK", client_name="sdga_in4",
                       connect="sdga_test_away:out", separate_process=separate_process, poll_s=0.1,
                       on_status=said.append) as midi:
            time.sleep(0.1)
            for message in ([0x92, 60, 100], [0x92, 64, 90], [0x92, 64, 0], [0xB2, 64, 127]):
                keys.send_message(message)
                time.sleep(0.03)    # a player's pace: this process's rtmidi JACK output, loaded, repeated a
                #                     message sent in the same cycle as others (and dropped those)
            assert wait_for(lambda: midi.received == 4)
            assert list(queue.drain()) == [NoteOn(60, 100, 2), NoteOn(64, 90, 2), NoteOff(64, 0, 2),
                                           ControlChange(64, 127, 2)]
            close(keys)
            keys = None
            assert wait_for(lambda: midi.disconnects == 1, timeout=10)
            assert list(queue.drain()) == [NoteOff(60, 0, 2), ControlChange(64, 0, 2)]    # no stuck note
            assert midi.released_notes == 1 and midi.missing == {"sdga_test_away:out"}
            assert len(said) == 1 and "'sdga_test_away:out' went away" in said[0] and "1 held note" in said[0]
            time.sleep(0.3)
            assert len(said) == 1                                                 # said once
            keys = keyboard()
            assert wait_for(lambda: midi.reconnects == 1, timeout=10)
            assert midi.missing == set() and "'sdga_test_away:out' is back" in said[-1]
            keys.send_message([0x90, 67, 80])
            assert wait_for(lambda: midi.received == 5)
            assert list(queue.drain()) == [NoteOn(67, 80, 0)]
            assert midi.disconnects == 1 and midi.reconnects == 1 and len(said) == 2
    finally:
        close(keys)


def test_audio_output_renders_in_the_callback(jack_server):
    import sounddevice as sd

    from instrument.io.audio import AudioOutput, rescan_audio_devices

    rescan_audio_devices()
    devices = [i for i, d in enumerate(sd.query_devices())
               if d["max_output_channels"] >= 2 and "JACK" in sd.query_hostapis(d["hostapi"])["name"]]
    if not devices:
        jack_unavailable("PortAudio has no JACK device")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        engine = Engine(random_bundle())
        engine.prepare(48000, 128, 2)
        queue = EventQueue()
        queue.push(NoteOn(60, 100))
        with AudioOutput(engine, queue, device=devices[0], channels=2) as audio:
            assert wait_for(lambda: audio.stats.callbacks > 100, timeout=10.0)
            assert audio.output_latency_s > 0
    finally:
        torch.set_num_threads(previous)
    assert engine.stats.errors == 0 and engine.stats.blocks == audio.stats.callbacks
    assert engine.stats.intervals > 50 and engine.voices.active_voices == 1 and len(queue) == 0


def test_audio_callback_diagnostics_record_context_switches_of_notable_callbacks():
    from types import SimpleNamespace

    from instrument.io.audio import AudioOutput

    engine = Engine(random_bundle())
    engine.prepare(48000, 128, 2)
    audio = AudioOutput(engine, EventQueue(), diagnose=True)
    out = np.zeros((128, 2), np.float32)
    for k in range(400):
        audio._callback(out, 128, None, SimpleNamespace(output_underflow=k == 390))
    time.sleep(0.02)                                          # the next callback begins far more than a block late
    audio._callback(out, 128, None, SimpleNamespace(output_underflow=False))
    rows = audio.callback_diagnostics()
    flagged = [r for r in rows if r["underflow"]]
    late = [r for r in rows if r["start_delay_ms"] > 15.0]
    assert len(flagged) == 1 and len(late) == 1
    assert set(late[0]) == {"perf_counter", "compute_ms", "start_delay_ms", "underflow", "voluntary_before",
                            "involuntary_before", "voluntary_during", "involuntary_during", "cpu_ms",
                            "run_queue_before_ms", "run_queue_during_ms"}
    assert late[0]["voluntary_before"] >= 1                   # the sleep is a voluntary switch of this thread
    for row in rows:                                          # the thread's own run time fits inside the wall time
        assert 0.0 <= row["cpu_ms"] <= row["compute_ms"] + 0.05
        assert row["run_queue_before_ms"] >= 0.0 and row["run_queue_during_ms"] >= 0.0
    assert flagged[0]["cpu_ms"] > 0.0                         # measured (Linux's schedstat), not a zero default
    import gc
    import threading

    gc.collect(1)                                             # in "the callback thread" (this one called it)
    other = threading.Thread(target=gc.collect)               # and in another
    other.start()
    other.join()
    audio.close()                                             # stops logging collections, closes schedstat
    assert audio._schedstat_fd == -1
    count = len(audio.collections())
    gc.collect()
    logged = audio.collections()
    assert len(logged) == count
    assert {(1, True), (2, False)} <= {(c["generation"], c["in_callback_thread"]) for c in logged}
    assert all(c["ms"] >= 0.0 for c in logged)


def test_audio_callback_reads_its_threads_scheduling_at_its_first_callback():
    """The first callback records whether its thread is real-time (sdga-play warns when it is not)."""
    import os
    import threading
    from types import SimpleNamespace

    from instrument.io.audio import AudioOutput, thread_scheduling

    engine = Engine(random_bundle())
    engine.prepare(48000, 128, 2)
    audio = AudioOutput(engine, EventQueue())
    assert audio.thread_scheduling == ""
    audio._callback(np.zeros((128, 2), np.float32), 128, None, SimpleNamespace(output_underflow=False))
    assert audio.thread_scheduling == "normal (not real-time)"          # pytest's main thread
    seen = []

    def realtime() -> None:                       # a SCHED_FIFO thread, where this process may make one
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(20))
        except (AttributeError, OSError):
            seen.append(None)
            return
        seen.append(thread_scheduling())

    worker = threading.Thread(target=realtime)
    worker.start()
    worker.join()
    if seen == [None]:
        pytest.skip("this process may not make a real-time thread")
    assert seen == ["real-time (SCHED_FIFO 20)"]


def test_audio_callback_measures_load_and_feeds_tap_and_hooks():
    """The callback (called directly, no stream): load ring and histogram, startup underflows, the tap sees every
    block, block_events adds events, and a failing hook leaves the queued events playing."""
    from types import SimpleNamespace

    from instrument.io.audio import AudioOutput

    engine = Engine(random_bundle())
    engine.prepare(48000, 128, 2)
    queue = EventQueue()
    seen = []
    added = []

    def hook(events, frames):
        added.append(frames)
        return [*events, PitchBend(0.0)]

    audio = AudioOutput(engine, queue, tap=lambda block: seen.append(float(np.abs(block).max())), block_events=hook,
                        load_history=64)
    out = np.zeros((128, 2), np.float32)
    queue.push(NoteOn(60, 100))
    for k in range(500):
        before = time.perf_counter()
        audio._callback(out, 128, None, SimpleNamespace(output_underflow=k in (3, 400)))
        if k == 400:
            underflow_between = (before, time.perf_counter())
    assert audio.stats.callbacks == 500 and len(seen) == 500 and max(seen) > 0 and added == [128] * 500
    assert (audio.stats.underflows, audio.stats.startup_underflows) == (2, 1)     # 375 callbacks = 1 s
    [when] = audio.underflow_times()                                                  # only the one after start-up
    assert underflow_between[0] <= when <= underflow_between[1]
    assert audio.callback_diagnostics() == []                                        # off unless asked for
    loads = audio.recent_loads(1.0)
    assert loads.shape == (64,) and (loads > 0).all()                                # the ring holds 64
    median, p99 = audio.load_percentiles(50, 99)
    assert 0 < median <= p99 and abs(median - np.median(loads)) < 0.5
    assert engine.stats.events == 1 + 500 and engine.stats.errors == 0

    audio.block_events = lambda events, frames: 1 / 0
    queue.push(NoteOff(60))
    audio._callback(out, 128, None, SimpleNamespace(output_underflow=False))
    assert audio.stats.hook_errors == 1 and engine.stats.events == 502
