"""Hostile input, generated (hypothesis): OSC datagrams, raw MIDI bytes, mapping and patch YAML, path names a
message or a file can name, and model files. Each contract runs twice: 200 examples always, 10,000 under the
``slow`` marker (CI runs both); the two supplements (every mido message type, /sdga/save names) 2,000.

What each asserts: no exception escapes the code path the live instrument uses; what is refused is counted (or
raised as the module's own error type, with file and line); every event that reaches the queue holds finite
values inside its parameter's range; the engine keeps sounding (finite, inside full scale) after playing them.

Path rules under test (what a name may resolve to):
- ``/sdga/save NAME`` (the only path a message names): NAME must be 1..64 of ``[A-Za-z0-9_-]``, nothing else
  (no '.', '/', NUL, newline); the file is ``<patches folder>/NAME.yaml``, inside the folder. Everything else is
  refused with OscError (counted by the server).
- ``patches:`` in a mapping, ``model:`` and ``mapping:`` in a patch: relative to the file's own folder; ``~``
  and absolute paths are the author's choice and allowed; a path that does not exist, is not a regular file (a
  device, a FIFO), contains NUL or is too long for the system is refused with MappingError / PatchError naming
  the file and line (the model with ModelFileError when it is loaded).
- ``/sdga/patch NAME`` and ``/sdga/learn TARGET`` name patches and targets from tables, never paths; learn
  writes only the mapping file the player was started with.
"""
from __future__ import annotations

import io
import math
import os
import shutil
import socket
import struct
import time
from pathlib import Path

import mido
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pythonosc.osc_bundle_builder import IMMEDIATELY

from instrument.controls.addresses import OSC_ADDRESSES, OscError
from instrument.controls.mapping import parse_mapping
from instrument.controls.patches import PatchError, load_patch
from instrument.controls.router import load_router
from instrument.controls.targets import MappingError
from instrument.engine.events import (PARAMS, ChannelPressure, ChannelTimbre, ControlChange, EventQueue, LatentSet,
                                      NoteOff, NoteOn, Panic, ParamSet, PitchBend)
from instrument.io.midi import MidiInput
from instrument.io.osc import OscServer
from instrument.model.bundle import load_bundle, random_bundle, save_bundle
from instrument.model.modelfile import ModelFileError
from instrument.model.networks import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
SIZES = [pytest.param(200, id="200"), pytest.param(10_000, id="10k", marks=pytest.mark.slow)]
EXTRA_SIZES = [pytest.param(200, id="200"), pytest.param(2_000, id="2k", marks=pytest.mark.slow)]   # supplements


def fuzz_settings(n: int, **kw) -> settings:
    """No example database (nothing written into the repo), no deadline (2 shared cores)."""
    return settings(max_examples=n, deadline=None, database=None, derandomize=False,
                    suppress_health_check=list(HealthCheck), **kw)


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def bundle():
    return random_bundle(seed=0)


@pytest.fixture(scope="module")
def rig(tmp_path_factory, bundle):
    """A copy of the shipped mappings/ and patches/ folders, and a mapping that binds every kind of source
    (14-bit, relative, pressure, bend, velocity, program -> patch, OSC with an input range)."""
    root = tmp_path_factory.mktemp("rig")
    shutil.copytree(ROOT / "mappings", root / "mappings")
    shutil.copytree(ROOT / "patches", root / "patches")
    (root / "mappings" / "everything.yaml").write_text(EVERYTHING)
    return root


EVERYTHING = ("version: 1\npatches: ../patches\nglide_ms: 50\nmappings:\n"
              "  - {cc: 70, target: latent/0}\n"
              "  - {cc: 1, lsb: 33, target: noise_gain_db, range: [-24, 6]}\n"
              "  - {cc: 16, relative: twos, step: 0.05, target: latent/1}\n"
              "  - {cc: 64, target: sustain}\n"
              "  - {cc: 80, target: panic}\n"
              "  - {aftertouch: true, target: harmonic_gain_db}\n"
              "  - {poly_aftertouch: true, target: latent/2}\n"
              "  - {bend: true, target: pitch_shift_semitones, range: [-2, 2]}\n"
              "  - {velocity: true, target: latent/3}\n"
              "  - {program: true, target: patch/select}\n"
              "  - {cc: 81, target: patch/next}\n"
              "  - {osc: /fader/1, target: latent/4, input: [-100, 100]}\n"
              "  - {osc: /xy, arg: 1, target: attack_ms, curve: exponential, range: [1, 2000]}\n")


def make_router(rig, bundle):
    return load_router(rig / "mappings" / "everything.yaml", bundle)


def check_event(event, bundle) -> None:
    """Every event a transport queues: finite values inside its parameter's range."""
    latent_index = {l.index for l in bundle.latents}
    values = [getattr(event, f) for f in getattr(event, "__slots__", ())]
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in values), event
    if isinstance(event, (NoteOn, NoteOff)):
        assert 0 <= event.note <= 127 and 0 <= event.velocity <= 127 and 0 <= event.channel <= 15, event
    elif isinstance(event, PitchBend):
        assert -1.0 <= event.value <= 1.0 and 0 <= event.channel <= 15, event
    elif isinstance(event, ControlChange):
        assert 0 <= event.control <= 127 and 0 <= event.value <= 127 and 0 <= event.channel <= 15, event
    elif isinstance(event, LatentSet):
        assert event.index in latent_index, event
        if event.knob:
            assert 0.0 <= event.value <= 1.0, event
        else:
            from instrument.controls.addresses import RAW_Z_MAX

            assert abs(event.value) <= RAW_Z_MAX, event
    elif isinstance(event, ParamSet):
        spec = PARAMS[event.param]
        assert min(spec.low, spec.high) <= event.value <= max(spec.low, spec.high), event
    elif isinstance(event, (ChannelPressure, ChannelTimbre)):      # MPE: a member channel's pressure / CC 74
        assert 0.0 <= event.value <= 1.0 and 0 <= event.channel <= 15, event
    else:
        assert isinstance(event, Panic), event


def play(events, bundle) -> None:
    """The sound continues: the engine plays the events (64 per block) and its output stays finite and
    inside full scale."""
    import numpy as np
    import torch

    from instrument.engine.engine import Engine

    torch.set_num_threads(1)
    engine = Engine(bundle)
    engine.prepare(block_size=256, max_voices=4)
    out = np.zeros(256, dtype=np.float32)
    events = list(events)
    for start in range(0, max(len(events), 1) + 64 * 4, 64):
        engine.process(events[start:start + 64], out)
        assert np.isfinite(out).all() and np.abs(out).max() <= 1.0
    assert engine.stats.errors == 0, engine.stats.last_error


# ---------------------------------------------------------------------------------------------- OSC
TEXT = st.characters(blacklist_categories=("Cs",))      # anything UTF-8 can carry


def _addresses(bundle):
    names = [l.name for l in bundle.latents] + [str(i) for i in range(len(bundle.latents))]
    fills = st.one_of(st.sampled_from(names + [p.name for p in PARAMS] + ["latent/0", "panic", "sustain",
                                                                          "patch/next", "99", "²", "1" * 40]),
                      st.text(TEXT, max_size=12))
    rows = st.sampled_from(OSC_ADDRESSES)
    filled = st.builds(lambda row, name: row.stem + name if "<" in row.address else row.address, rows, fills)
    return st.one_of(filled, st.sampled_from(["/fader/1", "/xy"]),
                     st.text(TEXT, max_size=20).map(lambda t: "/sdga/" + t))


def _arg():
    """(OSC type tag, value): every type python-osc writes, with the hostile numbers."""
    big = st.sampled_from([1e38, -1e38, 3.4e38, 1e-45, 0.0, -0.0, 60.0, 127.0, 128.0, -1.0])
    return st.one_of(
        st.tuples(st.just("i"), st.integers(-2**31, 2**31 - 1) | st.sampled_from([0, 1, 60, 127, 128, -1])),
        st.tuples(st.just("h"), st.integers(-2**63, 2**63 - 1)),
        st.tuples(st.just("f"), st.floats(width=32) | big.filter(lambda v: abs(v) < 3.5e38)),
        st.tuples(st.just("d"), st.floats() | big | st.sampled_from([1e308, -1e308, 5e-324])),
        st.tuples(st.just("s"), st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                                        max_size=80) | st.sampled_from(["../../x", "/etc/passwd", "a" * 300, "0"])),
        st.tuples(st.just("b"), st.binary(min_size=1, max_size=64)),
        st.tuples(st.sampled_from(["T", "F", "N"]), st.none()),
        st.tuples(st.just("m"), st.tuples(*[st.integers(0, 255)] * 4)),
    )


def _osc_string(data: bytes) -> bytes:
    return data + b"\x00" * (4 - len(data) % 4)


_PACK = {"i": ">i", "h": ">q", "f": ">f", "d": ">d"}


def _encode(address: str, args) -> bytes:
    """An OSC message, written here (python-osc's builder refuses some of what a hostile sender can write)."""
    tags, body = ",", b""
    for tag, value in args:
        tags += tag
        if tag in _PACK:
            body += struct.pack(_PACK[tag], value)
        elif tag == "s":
            body += _osc_string(value.encode("utf-8"))
        elif tag == "b":
            body += struct.pack(">i", len(value)) + value + b"\x00" * (-len(value) % 4)
        elif tag == "m":
            body += bytes(value)
    return _osc_string(address.encode("utf-8")) + _osc_string(tags.encode()) + body


def _message(bundle):
    return st.builds(_encode, _addresses(bundle), st.lists(_arg(), max_size=4))


def _plausible(bundle):
    """A message of the table with a name it knows and the right number of arguments, all numbers (hostile
    ones among them): what gets past the address and argument-count checks."""
    names = {"<name>": [l.name for l in bundle.latents] + [p.name for p in PARAMS],
             "<index>": [str(i) for i in range(len(bundle.latents))] + ["99"],
             "<target>": ["latent/0", "noise_gain_db", "panic", "patch/next", "patch/select", "sustain"]}
    number = st.one_of(
        st.tuples(st.just("i"), st.integers(-2**31, 2**31 - 1) | st.integers(-2, 130)),
        st.tuples(st.just("h"), st.integers(-2**63, 2**63 - 1)),
        st.tuples(st.just("f"), st.floats(width=32) | st.floats(-200, 200, width=32)),
        st.tuples(st.just("d"), st.floats() | st.sampled_from([1e38, -1e38, 1e308]) | st.floats(-200, 200)))

    @st.composite
    def plausible(draw):
        row = draw(st.sampled_from(OSC_ADDRESSES))
        address = row.address
        for hole, choices in names.items():
            if hole in address:
                address = address.replace(hole, draw(st.sampled_from(choices)))
        args = draw(st.lists(number, min_size=row.n_required, max_size=len(row.args)))
        return _encode(address, args)
    return plausible()


def _bundle_of(messages):
    """An OSC bundle (time tag 'immediately') of generated messages or bundles."""
    return st.lists(messages, max_size=4).map(
        lambda parts: b"#bundle\x00" + IMMEDIATELY.to_bytes(8, "big")
        + b"".join(len(p).to_bytes(4, "big") + p for p in parts))


@st.composite
def _mutated(draw, packets):
    data = bytearray(draw(packets))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "size"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[at:at + draw(st.integers(1, 16))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "size" and len(data) >= 4:
            at = min(at, len(data) - 4)
            data[at:at + 4] = draw(st.integers(-2**31, 2**31 - 1)).to_bytes(4, "big", signed=True)
    return bytes(data)


def datagrams(bundle):
    message = st.one_of(_message(bundle), _plausible(bundle))
    packet = st.one_of(message, _bundle_of(message), _bundle_of(_bundle_of(message)))
    return st.one_of(st.binary(max_size=256), message, packet, _mutated(packet),
                     st.just(b"#bundle\x00" + bytes(8)), st.builds(_deep_bundle, st.integers(1, 40)))


def _deep_bundle(depth: int) -> bytes:
    """A bundle nested ``depth`` deep around one note."""
    dgram = _note(60, 100)
    for _ in range(depth):
        dgram = b"#bundle\x00" + bytes(8) + len(dgram).to_bytes(4, "big") + dgram
    return dgram


def _counted(server) -> int:
    return server.received + server.malformed_packets + server.oversized_packets + server.refused_senders


@pytest.mark.parametrize("n", SIZES)
def test_osc_datagrams_never_escape_and_queue_only_valid_events(n, rig, bundle):
    queue = EventQueue(capacity=1_000_000)
    router = make_router(rig, bundle)
    played = []
    with OscServer(queue, bundle.latents, port=0, router=router) as server:     # handled here, not on its thread
        @fuzz_settings(n)
        @given(datagrams(bundle))
        def run(data):
            before = _counted(server)
            server.handle_packet(data, "127.0.0.1")      # the server thread's path, sender included
            assert _counted(server) > before or data.startswith(b"#bundle\x00")  # an empty bundle: nothing to count
            events = list(queue.drain())
            for event in events:
                check_event(event, bundle)
            if len(played) < 4000:
                played.extend(events)

        run()
    router.close()
    assert server.errors > 0 and server.malformed_packets > 0 and server.received > 0
    assert not any(p.parent == rig / "patches" and p.suffix != ".yaml" for p in (rig / "patches").iterdir())
    play(played, bundle)


def test_osc_udp_server_survives_generated_datagrams(rig, bundle):
    """Real UDP to a running server on 127.0.0.1 (300 datagrams, each followed by a marker): every datagram is
    counted, the thread keeps serving, a note still plays."""
    queue = EventQueue(capacity=100_000)
    router = make_router(rig, bundle)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    marker = _encode("/sdga/panic", [])
    with OscServer(queue, bundle.latents, port=0, router=router) as server:
        @fuzz_settings(300)
        @given(datagrams(bundle))
        def run(data):
            udp.sendto(data, server.address)
            udp.sendto(marker, server.address)
            deadline = time.monotonic() + 5.0
            events = []
            while time.monotonic() < deadline:
                events += queue.drain()
                if events and isinstance(events[-1], Panic):
                    break
                time.sleep(0.001)
            assert events and isinstance(events[-1], Panic), "the server stopped answering"
            for event in events:
                check_event(event, bundle)

        run()
        assert server._thread is not None and server._thread.is_alive()
        udp.sendto(_note(60, 100), server.address)
        deadline = time.monotonic() + 5.0
        while not len(queue) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert list(queue.drain()) == [NoteOn(60.0, 100.0, 0)]
    udp.close()
    router.close()
    assert server.received >= 300 and server.errors > 0


def _note(note: int, velocity: int) -> bytes:
    return _encode("/sdga/note_on", [("i", note), ("i", velocity)])


# ---------------------------------------------------------------------------------------------- MIDI
class _FakeChild:
    def __init__(self, data: bytes):
        self.stdout = io.BytesIO(data)


def _midi_stream():
    """What the MIDI child process writes to its pipe: frames of (length byte, source byte, bytes), a length of
    0 being a source gone / back frame (one code byte); generated frames of random bytes, of real messages, of
    mutated real messages and of source changes (any source, any code), plus raw unframed junk."""
    real = st.builds(lambda kind, a, b, ch: _status(kind, ch) + bytes([a & 0x7F, b & 0x7F])[:_length(kind)],
                     st.sampled_from([0x80, 0x90, 0xA0, 0xB0, 0xC0, 0xD0, 0xE0]), st.integers(0, 255),
                     st.integers(0, 255), st.integers(0, 15))
    body = st.one_of(st.binary(max_size=12), real, real.map(lambda b: b[:-1]), st.sampled_from(
        [b"\xf0\x7e\x00\xf7", b"\xf8", b"\xfe", b"\xff", b"\xf4", b"\xf2\x01\x02", b"\xb0\x06", b""]))
    frame = st.builds(lambda b, source, code: bytes([len(b), source]) + (b or bytes([code])), body,
                      st.integers(0, 255), st.integers(0, 255))
    return st.one_of(st.lists(frame, max_size=8).map(b"".join), st.binary(max_size=64))


def _status(kind: int, channel: int) -> bytes:
    return bytes([kind | channel])


def _length(kind: int) -> int:
    return 1 if kind in (0xC0, 0xD0) else 2


@pytest.mark.parametrize("n", SIZES)
def test_midi_bytes_never_escape_and_queue_only_valid_events(n, rig, bundle):
    queue = EventQueue(capacity=1_000_000)
    router = make_router(rig, bundle)
    played = []
    with MidiInput(queue, virtual_name=None, router=router) as midi:        # no ports: the reader's decoding
        @fuzz_settings(n)
        @given(_midi_stream())
        def run(stream):
            frames = 0
            at = 0
            while at < len(stream) and at + 2 + max(stream[at], 1) <= len(stream):
                frames += stream[at] > 0                 # a message; 0: a source change, not counted
                at += 2 + max(stream[at], 1)
            before = midi.received + midi.ignored + midi.malformed + queue.dropped
            midi._child = _FakeChild(stream)
            try:
                midi._read_child()                   # the reader thread's loop, until the pipe ends
            finally:
                midi._child = None
            assert midi.received + midi.ignored + midi.malformed + queue.dropped >= before + frames
            events = list(queue.drain())
            for event in events:
                check_event(event, bundle)
            if len(played) < 4000:
                played.extend(events)

        run()
    router.close()
    assert midi.malformed > 0 and midi.received > 0 and midi.ignored > 0
    play(played, bundle)


@pytest.mark.parametrize("n", EXTRA_SIZES)
def test_mido_messages_through_the_router(n, rig, bundle):
    """Every well-formed MIDI message mido can make (all types, edge values) through ``router.midi``."""
    router = make_router(rig, bundle)
    queue = EventQueue(capacity=1_000_000)
    midi = MidiInput(queue, virtual_name=None, router=router)
    specs = st.one_of(
        st.builds(lambda t, ch, a, b: mido.Message(t, channel=ch, **{k: v for k, v in
                                                                       (("note", a), ("velocity", b))}),
                  st.sampled_from(["note_on", "note_off"]), st.integers(0, 15), st.integers(0, 127),
                  st.integers(0, 127)),
        st.builds(lambda ch, c, v: mido.Message("control_change", channel=ch, control=c, value=v),
                  st.integers(0, 15), st.integers(0, 127), st.integers(0, 127)),
        st.builds(lambda ch, v: mido.Message("aftertouch", channel=ch, value=v), st.integers(0, 15),
                  st.integers(0, 127)),
        st.builds(lambda ch, nt, v: mido.Message("polytouch", channel=ch, note=nt, value=v), st.integers(0, 15),
                  st.integers(0, 127), st.integers(0, 127)),
        st.builds(lambda ch, p: mido.Message("pitchwheel", channel=ch, pitch=p), st.integers(0, 15),
                  st.integers(-8192, 8191)),
        st.builds(lambda ch, p: mido.Message("program_change", channel=ch, program=p), st.integers(0, 15),
                  st.integers(0, 127)),
        st.sampled_from([mido.Message("clock"), mido.Message("start"), mido.Message("reset"),
                         mido.Message("sysex", data=[1, 2, 3]), mido.Message("songpos", pos=300)]))

    @fuzz_settings(n)
    @given(specs)
    def run(message):
        before = midi.received + midi.ignored + midi.malformed
        midi.on_message(message)
        assert midi.received + midi.ignored + midi.malformed > before
        assert midi.malformed == 0, midi.last_error
        for event in queue.drain():
            check_event(event, bundle)

    run()
    midi.close()
    router.close()


# ---------------------------------------------------------------------------------------------- YAML
MAPPING_KEYS = ["version", "name", "patches", "glide_ms", "passthrough", "feedback", "mappings", "host", "port",
                "cc", "lsb", "relative", "step", "aftertouch", "poly_aftertouch", "bend", "velocity", "program",
                "osc", "arg", "input", "channel", "target", "optional", "range", "curve", "exponent", "invert",
                "smooth_ms", "latent/0", "noise_gain_db", "patch/select", "sustain"]
PATCH_KEYS = ["version", "name", "description", "model", "mapping", "glide_ms", "latents", "params", "effects",
              "type", "cutoff_hz", "room_size", "mix", "voice_mode", "attack_ms", "0", "1", "brightness"] + \
    [p.name for p in PARAMS]
HOSTILE_PATHS = ["..", "../..", "../../../../../../etc", "/", "/dev/zero", "/dev/null", "/proc/self/fd/0", "~",
                 "~/nowhere", "a\x00b", "x" * 300, "x/" * 3000, "../patches", "../patches/1-plain.yaml", "", " ",
                 "/tmp", "C:\\\\x", "\\\\server\\share", "%2e%2e/x", "../mappings/default.yaml", "fifo"]


def _yaml_value(keys):
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
                        st.text(max_size=30), st.sampled_from(keys + HOSTILE_PATHS))
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.sampled_from(keys) | st.text(max_size=8), inner, max_size=5)),
        max_leaves=12)


def _yaml_document(keys):
    top = st.dictionaries(st.sampled_from(keys), _yaml_value(keys), max_size=8)
    as_yaml = st.one_of(top, _yaml_value(keys)).map(lambda d: yaml.safe_dump(d, allow_unicode=True))
    return st.one_of(as_yaml, st.text(max_size=200))


@st.composite
def _mutated_text(draw, texts):
    text = draw(st.sampled_from(texts))
    lines = text.splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["char", "cut", "insert", "line", "swap", "path", "value"]))
        at = draw(st.integers(0, max(len(text) - 1, 0)))
        if kind == "char":
            text = text[:at] + draw(st.characters(blacklist_categories=("Cs",))) + text[at + 1:]
        elif kind == "cut":
            text = text[:at] + text[at + draw(st.integers(1, 40)):]
        elif kind == "insert":
            text = text[:at] + draw(st.sampled_from(["{", "}", "[", "]", ":", "- ", "\n", "  ", "&a ", "*a", "!!",
                                                     "'", '"', "#", ",", "\t", "\x00", "-1e400", ".nan", "9" * 30]))\
                + text[at:]
        elif lines and kind in ("line", "swap"):
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            if kind == "line":
                lines.insert(i, lines[j])
            else:
                lines[i], lines[j] = lines[j], lines[i]
            text = "".join(lines)
        elif kind == "path":
            for key in ("patches: ", "model: ", "mapping: "):
                if key in text:
                    start = text.index(key) + len(key)
                    end = text.index("\n", start) if "\n" in text[start:] else len(text)
                    text = text[:start] + yaml.safe_dump(draw(st.sampled_from(HOSTILE_PATHS)),
                                                         default_flow_style=True).strip().split("\n")[0] + text[end:]
                    break
        elif kind == "value":
            for token in draw(st.permutations(["0.15", "300", "true", "70", "poly", "chorus", "-18", "1"]))[:1]:
                if token in text:
                    text = text.replace(token, draw(st.sampled_from(["-1", "1e999", ".inf", "null", "[]", "{}", "x",
                                                                     "99999999999999999999", "-0", "0x10"])), 1)
        lines = text.splitlines(keepends=True)
    return text


def _check_error(exc: MappingError, path: Path) -> None:
    """The module's own error, naming the file, and a line when the problem is at one."""
    assert exc.file == str(path), exc
    assert str(exc).startswith(str(path)), exc
    if exc.line is None:
        assert any(s in exc.problem for s in ("empty file", "is also used by", "not valid YAML", "cannot read",
                                              "not UTF-8", "must be a mapping")), exc


@pytest.fixture(scope="module")
def yaml_rig(tmp_path_factory):
    """mappings/ as shipped, patches/ with one of the shipped patches (each mapping load reads them all), and
    a FIFO beside the mappings."""
    root = tmp_path_factory.mktemp("yaml_rig")
    shutil.copytree(ROOT / "mappings", root / "mappings")
    (root / "patches").mkdir()
    shutil.copy(ROOT / "patches" / "1-plain.yaml", root / "patches")
    os.mkfifo(root / "mappings" / "fifo")          # reading it would block: must be refused, not opened
    return root


@pytest.mark.parametrize("n", SIZES)
def test_mapping_loader_loads_or_raises_mapping_error(n, yaml_rig, bundle):
    path = yaml_rig / "mappings" / "fuzzed.yaml"
    shipped = [(ROOT / "mappings" / f).read_text() for f in ("default.yaml", "touchosc.yaml")]
    shipped.append(EVERYTHING.replace("patch/select}", "patch/select}\n  - {cc: 81, target: patch/plain}"))

    @fuzz_settings(n)
    @given(st.one_of(_yaml_document(MAPPING_KEYS), _mutated_text(shipped)))
    def run(text):
        try:
            parse_mapping(path, bundle, text=text)
        except MappingError as exc:
            _check_error(exc, path if not isinstance(exc, PatchError) else Path(exc.file))

    run()


@pytest.mark.parametrize("n", SIZES)
def test_patch_loader_loads_or_raises_patch_error(n, yaml_rig, bundle):
    path = yaml_rig / "patches" / "fuzzed.yaml"
    shipped = [p.read_text() for p in sorted((ROOT / "patches").glob("*.yaml"))]

    @fuzz_settings(n)
    @given(st.one_of(_yaml_document(PATCH_KEYS), _mutated_text(shipped)), st.booleans())
    def run(text, require_model):
        try:
            patch = load_patch(path, bundle, text=text, require_model=require_model)
        except PatchError as exc:
            _check_error(exc, path)
            return
        for other in (patch.model, patch.mapping):       # named paths resolve against the patch's folder
            if other is not None and not Path(os.path.expanduser(str(other))).is_absolute():
                assert other.parent.parts[:len(path.parent.parts)] == path.parent.parts

    run()


@pytest.mark.parametrize("name", HOSTILE_PATHS)
def test_named_files_refused_cleanly(name, yaml_rig, bundle):
    """Every path a mapping or patch names: loads, or the module's own error with file and line."""
    mapping = yaml_rig / "mappings" / "named.yaml"
    text = "version: 1\npatches: " + yaml.safe_dump(name, default_flow_style=True).split("\n")[0] + "\n"
    try:
        parse_mapping(mapping, bundle, text=text)
    except MappingError as exc:
        _check_error(exc, mapping if not isinstance(exc, PatchError) else Path(exc.file))
    with pytest.raises(ModelFileError):              # a model named by a patch or on the command line
        load_bundle(yaml_rig / "mappings" / name)
    patch = yaml_rig / "patches" / "named.yaml"
    for key in ("model", "mapping"):
        text = f"{key}: " + yaml.safe_dump(name, default_flow_style=True).split("\n")[0] + "\n"
        try:
            loaded = load_patch(patch, bundle, text=text, require_model=True)
        except PatchError as exc:
            _check_error(exc, patch)
            continue
        named = getattr(loaded, key)
        if key == "mapping":                          # the app reads it as a mapping file
            try:
                parse_mapping(named, bundle)
            except MappingError as exc:
                assert exc.file == str(named)
        else:
            with pytest.raises(ModelFileError):
                load_bundle(named)


# ---------------------------------------------------------------------------------------------- /sdga/save
SAVE_RULE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


@pytest.mark.parametrize("n", EXTRA_SIZES)
def test_save_names_stay_inside_the_patch_folder(n, tmp_path, bundle):
    folder = tmp_path / "box" / "patches"
    folder.mkdir(parents=True)
    (tmp_path / "box" / "m.yaml").write_text("version: 1\npatches: patches\n")
    router = load_router(tmp_path / "box" / "m.yaml", bundle)
    names = st.one_of(st.text(max_size=70), st.sampled_from(HOSTILE_PATHS + ["ok\n", "a/b", ".hidden", "x" * 64,
                                                                          "x" * 65, "CON", "-", "\u0661"]),
                      st.text(alphabet=sorted(SAVE_RULE) + [".", "/", "\n", "\x00", "\\"], min_size=1, max_size=66))
    saved = set()

    @fuzz_settings(n)
    @given(names)
    def run(name):
        accepted = 1 <= len(name) <= 64 and set(name) <= SAVE_RULE
        if accepted and name in saved:
            return                                        # already written once: keep the run short
        try:
            router.osc("/sdga/save", (name,))
        except OscError:
            assert not accepted, name
            return
        assert accepted, name
        saved.add(name)
        assert (folder / f"{name}.yaml").is_file()

    run()
    router.close()
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and p.parent != folder and p.name != "m.yaml"]
    assert outside == []
    assert {p.name for p in folder.iterdir()} == {f"{name}.yaml" for name in saved}


# ---------------------------------------------------------------------------------------------- model file
TINY = ModelConfig(n_harmonics=4, n_noise_bands=5, latent_dim=2, hidden_size=8, gru_size=8, encoder_n_mels=8,
                   encoder_gru_size=8, encoder_n_fft=64)


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("model") / "tiny.sdga"
    save_bundle(path, random_bundle(TINY, seed=0))
    return path.read_bytes()


@st.composite
def _model_mutation(draw, original: bytes):
    data = bytearray(original)
    header_end = 8 + int.from_bytes(original[:8], "little")
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["truncate", "flip", "flip_header", "length", "insert", "cut", "append"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "truncate":
            del data[at:]
        elif kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "flip_header" and len(data) > 8:
            at = draw(st.integers(0, min(header_end, len(data)) - 1))
            data[at] = draw(st.integers(0, 255))
        elif kind == "length":
            data[:8] = draw(st.integers(0, 2**64 - 1) | st.integers(0, len(original) + 16)).to_bytes(8, "little")
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "cut":
            del data[at:at + draw(st.integers(1, 64))]
        elif kind == "append":
            data += draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@pytest.mark.parametrize("n", SIZES)
def test_model_file_random_and_mutated_bytes_never_load(n, tmp_path, model_bytes):
    import torch

    path = tmp_path / "fuzzed.sdga"
    original = tmp_path / "original.sdga"
    original.write_bytes(model_bytes)
    reference = load_bundle(original)

    @fuzz_settings(n)
    @given(st.one_of(st.binary(max_size=256), _model_mutation(model_bytes),
                     st.binary(max_size=64).map(lambda b: b"\x10\x00\x00\x00\x00\x00\x00\x00{\"__metadata__\":" + b)))
    def run(data):
        assume(data != model_bytes)
        path.write_bytes(data)
        try:
            loaded = load_bundle(path)
        except ModelFileError:
            return
        # a mutation JSON cannot see (whitespace in the header) loads the same model, nothing else does
        assert loaded.metadata == reference.metadata and loaded.config == reference.config
        for a, b in zip(loaded.decoder.state_dict().values(), reference.decoder.state_dict().values()):
            assert torch.equal(a, b)

    run()
