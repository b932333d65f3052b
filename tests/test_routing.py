"""Contract of the router seam (MIDI/OSC message -> events) and of the malformed-input counters of the MIDI and
OSC front ends. No ports or devices: MidiInput without ports, OscServer on a free loopback port."""
from __future__ import annotations

import time

import mido
import pytest

from instrument.model.bundle import random_bundle
from instrument.engine.events import ControlChange, EventQueue, LatentSet, NoteOff, NoteOn, PitchBend
from instrument.io.midi import MidiInput, MidiPortError, match_midi_inputs
from instrument.io.osc import OscError, OscServer
from instrument.controls.routing import (EXPRESSION_BINDINGS, LATENT_CCS, LATENT_CCS_ALT, Router, default_mapping_text,
                                         default_router)

LATENTS = random_bundle().latents
EXPRESSION_CCS = tuple(row[0] for row in EXPRESSION_BINDINGS)


def test_default_router_midi():
    router = default_router(LATENTS)
    assert isinstance(router, Router)
    assert router.midi(mido.Message("note_on", note=60, velocity=90, channel=2), 5) == [NoteOn(60, 90, 2, 5)]
    assert router.midi(mido.Message("note_on", note=60, velocity=0)) == [NoteOff(60, 0, 0)]
    assert router.midi(mido.Message("pitchwheel", pitch=-8192)) == [PitchBend(-1.0, 0)]
    for cc in (64, 120, 121, 123):
        assert router.midi(mido.Message("control_change", control=cc, value=127)) == [ControlChange(cc, 127, 0)]
    assert router.midi(mido.Message("program_change", program=3)) == []
    for ccs in (LATENT_CCS, LATENT_CCS_ALT):
        for rank, cc in enumerate(ccs):
            if cc in EXPRESSION_CCS:
                continue
            events = router.midi(mido.Message("control_change", control=cc, value=127))
            assert events == [LatentSet(LATENTS[rank].index, 1.0, knob=True)]
    assert router.midi(mido.Message("control_change", control=70, value=0))[0].value == 0.0


def test_latent_ccs_follow_the_importance_order_and_the_latent_count():
    reordered = list(reversed(LATENTS[:3]))
    router = default_router(reordered)
    assert router.midi(mido.Message("control_change", control=70, value=64)) == \
        [LatentSet(reordered[0].index, 64 / 127, knob=True)]
    assert router.midi(mido.Message("control_change", control=3, value=64)) == \
        [LatentSet(reordered[2].index, 64 / 127, knob=True)]
    assert router.midi(mido.Message("control_change", control=4, value=64)) == [ControlChange(4, 64, 0)]
    # CC 1, 2: the two expression bindings; CC 3 and CC 70..72: the three latents
    assert "default routing" in router.describe() and "6 bindings" in router.describe()


def test_default_router_osc():
    router = default_router(LATENTS)
    assert router.osc("/sdga/note_on", (60.0, 100.0)) == [NoteOn(60.0, 100.0, 0)]       # Pd sends floats
    assert router.osc("/sdga/latent/z2", (0.25,)) == [LatentSet(2, 0.25, knob=True)]
    with pytest.raises(ValueError):
        router.osc("/sdga/nope", ())
    with pytest.raises(OscError):
        router.osc("/sdga/note_on", ("x", 1))


def test_midi_input_counts_malformed_bytes_and_routes_through_the_router():
    calls = []

    class Recorder:
        def midi(self, message, offset=0):
            calls.append(message)
            if message.type == "control_change":
                raise ValueError("refused")
            return [NoteOn(1)] if message.type == "note_on" else []

        def osc(self, address, args):
            return []

    queue = EventQueue()
    with MidiInput(queue, virtual_name=None, router=Recorder()) as midi:    # no ports: only the decoding
        for data in ([0x90, 60, 100], [0x90, 200, 1], [0x3C], [0x90, 60], [0xF4], [0xC0, 1], [0xB0, 1, 2]):
            midi._on_bytes((data, 0.0))
    assert [m.type for m in calls] == ["note_on", "program_change", "control_change"]
    assert (midi.received, midi.ignored, midi.malformed) == (1, 1, 5)
    assert "refused" in midi.last_error and list(queue.drain()) == [NoteOn(1)]


def test_match_midi_inputs():
    names = ["sdga:sdga", "a2j:Keystation [20] (capture): Keystation MIDI 1", "fluid:out", "sdga_test_keys:out"]
    assert match_midi_inputs(["keystation"], names, exclude_client="sdga") == [names[1]]
    assert match_midi_inputs(["fluid:out", "out"], names, exclude_client="sdga") == [names[2], names[3]]
    assert match_midi_inputs(["sdga"], names, exclude_client="sdga") == ["sdga_test_keys:out"]
    with pytest.raises(MidiPortError, match="inputs: a2j"):
        match_midi_inputs(["nothing"], names, exclude_client="sdga")


def test_osc_server_counts_garbage_and_keeps_serving():
    import socket

    from pythonosc.udp_client import SimpleUDPClient

    queue = EventQueue()
    with OscServer(queue, LATENTS, port=0) as server:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for garbage in (b"", b"\x00", b"/sdga/note_on", b"/sdga/note_on\x00\x00\x00,ii\x00\x00\x00\x01", b"#bundle\x00x"):
            udp.sendto(garbage, server.address)
        udp.close()
        SimpleUDPClient(*server.address).send_message("/sdga/note_on", [60, 100])
        deadline = time.monotonic() + 5
        while len(queue) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert list(queue.drain()) == [NoteOn(60, 100, 0)]
    assert server.malformed_packets >= 4 and server.errors == server.malformed_packets


def test_osc_server_uses_the_router():
    class Everything:
        def midi(self, message, offset=0):
            return []

        def osc(self, address, args):
            if address == "/bad":
                raise ValueError("bad")
            return [NoteOn(len(args)), NoteOff(len(args))]

    queue = EventQueue()
    server = OscServer(queue, port=0, router=Everything())
    from pythonosc.osc_message_builder import OscMessageBuilder

    for address in ("/anything", "/bad"):
        server.handle_datagram(OscMessageBuilder(address).build().dgram)
    server.close()
    assert list(queue.drain()) == [NoteOn(0), NoteOff(0)]
    assert (server.received, server.errors, server.last_error) == (2, 1, "bad")


def test_default_routing_smooths_latent_ccs_and_recalls_patches():
    """sdga-play without --mapping plays through default_router: once prepared, the latent CCs glide (the ramp
    ends on the CC's knob value), notes pass through, and program change recalls patch N when there are
    patches."""
    from pathlib import Path

    bundle = random_bundle()
    router = default_router(bundle=bundle)
    router.prepare(48000, 128)
    for i, cc in enumerate((*LATENT_CCS, *LATENT_CCS_ALT)):
        if cc in EXPRESSION_CCS:
            continue
        message = mido.Message("control_change", control=cc, value=20 + 5 * i)
        assert router.midi(message) == []                         # the ramp comes per block
        last = [e for e in router.tick(48000) if isinstance(e, LatentSet)][-1]
        rank = (LATENT_CCS + LATENT_CCS_ALT).index(cc) % len(LATENT_CCS)
        assert (last.index, last.value, last.knob) == (bundle.latents[rank].index, pytest.approx(message.value / 127),
                                                       True)
    note = mido.Message("note_on", note=60, velocity=90)
    assert router.midi(note) == [NoteOn(60, 90, 0)]
    assert "program" not in default_mapping_text(8) and "patch/select" in default_mapping_text(8, patches=True)
    assert default_mapping_text(2).count("latent/") == 2          # CC 1, 2 are expression: CC 70, 71 only
    patches = Path(__file__).resolve().parents[1] / "patches"
    with_patches = default_router(bundle=bundle, patches=patches)
    with_patches.midi(mido.Message("program_change", program=1))
    assert with_patches.current_patch == 1


def test_default_routing_puts_vibrato_on_the_mod_wheel_as_the_shipped_mapping_does():
    """Without a mapping file the mod wheel (CC 1) moves the learnt vibrato depth 1x..4x and CC 2 the noise, with
    the same entries (range, curve, smoothing) as mappings/default.yaml: one set of expression bindings."""
    from pathlib import Path

    from instrument.controls.mapping import parse_mapping
    from instrument.engine.events import Param, ParamSet

    bundle = random_bundle()
    router = default_router(bundle=bundle)
    router.prepare(48000, 128)
    assert router.midi(mido.Message("control_change", control=1, value=127)) == []      # a ramp, per block
    moves = [e for _ in range(40) for e in router.tick(48000) if isinstance(e, ParamSet)]
    assert moves and {e.param for e in moves} == {Param.VIBRATO_DEPTH}
    assert moves[-1].value == pytest.approx(4.0)
    assert not any(isinstance(e, LatentSet) for e in router.tick(48000))

    def entries(mapping):
        return {b.source.number: (b.source, b.target.name, b.low, b.high, b.curve, b.exponent, b.invert, b.smooth_ms)
                for b in mapping.bindings if b.source.kind == "cc" and b.source.number in EXPRESSION_CCS}

    shipped = parse_mapping(Path(__file__).resolve().parents[1] / "mappings" / "default.yaml", bundle)
    built_in = parse_mapping(None, bundle, text=default_mapping_text(len(bundle.latents)))
    assert entries(built_in) == entries(shipped)
    assert set(entries(built_in)) == set(EXPRESSION_CCS) and entries(built_in)[1][1] == "vibrato_depth"


def test_controls_import_no_transport_and_no_cycle():
    """Nothing under instrument/controls imports instrument.io (a transport), the apps, training or evaluation,
    not even inside a function; io may import controls, so the two can no longer import each other."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for path in sorted((root / "instrument" / "controls").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not name.startswith(("instrument.io", "instrument.apps", "training", "evaluation")), \
                    f"{path.name} imports {name}"


# ---------------------------------------------------------------------------------------------- the address table
COMMAND_EXAMPLES = {        # every controller row: a message and the command it decodes to
    "/sdga/target/<target>": ("/sdga/target/latent/brightness", (0.25,), "SetTarget('latent/brightness', 0.25)"),
    "/sdga/learn": ("/sdga/learn", ("latent/1",), "Learn('latent/1')"),
    "/sdga/learn/cancel": ("/sdga/learn/cancel", (), "CancelLearn()"),
    "/sdga/patch": ("/sdga/patch", ("glass",), "RecallPatch('glass')"),
    "/sdga/patch/next": ("/sdga/patch/next", (), "StepPatch(1)"),
    "/sdga/patch/prev": ("/sdga/patch/prev", (), "StepPatch(-1)"),
    "/sdga/save": ("/sdga/save", ("mine",), "SavePatch('mine')"),
    "/sdga/set/song": ("/sdga/set/song", ("ballad",), "SelectSong('ballad')"),
    "/sdga/set/next": ("/sdga/set/next", (), "StepSong(1)"),
    "/sdga/set/prev": ("/sdga/set/prev", (), "StepSong(-1)"),
}


def test_every_address_row_decodes_its_example_and_only_its_own():
    """Round trip over the one table: each controller row decodes its example to its command; every example
    (these and the engine rows' in test_engine_io) matches exactly one row."""
    from instrument.controls import addresses as a
    from test_engine_io import EXAMPLES

    commands = {row.address for row in a.OSC_ADDRESSES if not row.engine}
    assert set(COMMAND_EXAMPLES) == commands and set(EXAMPLES) == {r.address for r in a.OSC_SPECS}
    for key, (address, args, expected) in COMMAND_EXAMPLES.items():
        row, command = a.decode(address, args, LATENTS)
        assert row.address == key and command == eval(expected, vars(a))
    for address, args, _ in [*COMMAND_EXAMPLES.values(), *EXAMPLES.values()]:
        assert sum(row.match(address) is not None for row in a.OSC_ADDRESSES) == 1, address
    assert a.decode("/sdga/patch", (2.0,))[1] == a.RecallPatch(2) == a.decode("/sdga/patch", ("2",))[1]
    assert a.decode("/sdga/set/song", (1.0,))[1] == a.SelectSong(1) == a.decode("/sdga/set/song", ("1",))[1]
    for address, args in (("/sdga/learn", (3.0,)), ("/sdga/save", ()), ("/sdga/target/x", ("a",)),
                          ("/sdga/patch/next", (1,)), ("/sdga/target/", (0.5,))):
        with pytest.raises(OscError):
            a.decode(address, args, LATENTS)
    with pytest.raises(OscError, match="controller command"):
        a.osc_event("/sdga/learn", ("latent/0",))


def test_readme_osc_table_is_the_generated_one():
    """The README's OSC table (between the osc-table markers) is osc_table_markdown() as it is now."""
    from pathlib import Path

    from instrument.controls.addresses import README_BEGIN, README_END, osc_table_markdown

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    if README_BEGIN not in text:
        pytest.skip("README has no osc-table markers yet: paste osc_table_markdown() between them")
    section = text[text.index(README_BEGIN) + len(README_BEGIN):text.index(README_END)]
    assert section.strip() == osc_table_markdown()


# ---------------------------------------------------------------------------------------------- ramps hand-over
def test_router_only_posts_ramp_moves_and_the_audio_side_applies_them():
    """The router writes nothing the audio thread reads but the inbox: ramp state changes only in tick()."""
    bundle = random_bundle()
    router = default_router(bundle=bundle)
    router.prepare(48000, 128)
    ramps = router.ramps
    assert router.midi(mido.Message("control_change", control=70, value=127)) == []
    assert ramps.values == {} and ramps.moving == 0 and len(ramps.inbox._moves) == 1   # posted, not applied
    events = ramps.tick(128)
    assert ramps.moving == 1 and len(ramps.inbox._moves) == 0 and isinstance(events[0], LatentSet)
    router.midi(mido.Message("control_change", control=70, value=0))           # reverses from where it is
    ramps.tick(128)
    assert events[0].value > [e for e in ramps.tick(128)][-1].value
    ramps.inbox.capacity = 1                                                       # a full inbox drops, counted
    router.midi(mido.Message("control_change", control=71, value=127))
    router.midi(mido.Message("control_change", control=3, value=127))
    assert ramps.inbox.dropped == 1


def test_ramps_fed_from_a_controller_thread_while_the_audio_thread_ticks():
    import threading

    bundle = random_bundle()
    router = default_router(bundle=bundle)
    router.prepare(48000, 64)
    stop, errors, seen = threading.Event(), [], []

    def audio():
        try:
            while not stop.is_set():
                seen.extend(e.value for e in router.ramps.tick(64) if isinstance(e, LatentSet))
        except Exception as exc:               # pragma: no cover (the failure this test looks for)
            errors.append(exc)

    thread = threading.Thread(target=audio)
    thread.start()
    for i in range(2000):
        router.midi(mido.Message("control_change", control=70 + i % 8, value=i % 128))
    for cc in LATENT_CCS_ALT:
        router.midi(mido.Message("control_change", control=cc, value=64))
    time.sleep(0.2)
    stop.set()
    thread.join()
    assert not errors and seen and all(0.0 <= v <= 1.0 for v in seen)
    for _ in range(100):
        router.ramps.tick(64)
    assert router.ramps.moving == 0
    assert {router.ramps.values[("latent", l.index)] for l in bundle.latents} == {64 / 127}
