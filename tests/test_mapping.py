"""Contract of controller mappings (instrument.controls.mapping / instrument.controls.targets): shipped files load, every source
kind moves its target, shaping and smoothing, error messages (file, line, key, choices), hot reload that
keeps the previous mapping on a broken edit, MIDI learn that writes a file the loader reads back, OSC
feedback, the OSC additions, and the README section covering every schema table."""
from __future__ import annotations

import math
import os
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import mido
import pytest

from instrument.model.bundle import random_bundle
from instrument.engine.events import (ControlChange, LatentSet, NoteOn, Panic, Param, ParamSet, PitchBend)
from instrument.controls.addresses import OSC_ADDRESSES, OscError
from instrument.controls.mapping import ENTRY_KEYS, MAPPING_FILE_KEYS, RELATIVE_MODES, SOURCE_KINDS, MappingError, relative_delta
from instrument.controls.router import MappingRouter, load_router
from instrument.io.feedback import OscFeedback
from instrument.model.networks import ModelConfig
from instrument.controls.targets import target_table

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["brightness", "noisiness", "breath", "hollowness", "richness", "level", "level2", "inactive7"]


def named_bundle(latent_dim: int = 8):
    """random_bundle with measured-looking latent names (rank r = z index r)."""
    bundle = random_bundle(ModelConfig(latent_dim=latent_dim)) if latent_dim != 8 else random_bundle()
    bundle.latents = [replace(l, name=n) for l, n in zip(bundle.latents, NAMES)]
    return bundle


@pytest.fixture(scope="module")
def bundle():
    return named_bundle()


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def router_with(tmp_path: Path, bundle, entries: str, header: str = "", **kwargs) -> MappingRouter:
    text = f"version: 1\n{header}mappings:\n" + textwrap.indent(textwrap.dedent(entries).strip("\n"), "  ") + "\n"
    return load_router(write(tmp_path / "map.yaml", text), bundle, **kwargs)


def cc(number: int, value: int, channel: int = 0) -> mido.Message:
    return mido.Message("control_change", control=number, value=value, channel=channel)


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# ---------------------------------------------------------------------------------------------- shipped files
@pytest.mark.parametrize("path", sorted((ROOT / "mappings").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_mappings_load(path, bundle):
    router = load_router(path, bundle)
    m = router.mapping
    assert m.bindings and len(m.patches) >= 3
    assert all(b.target.name in m.targets for b in m.bindings)
    # A model with fewer latents still loads them (the latent entries are optional).
    small = load_router(path, named_bundle(4))
    assert len(small.mapping.bindings) < len(m.bindings) or path.name == "touchosc.yaml"


def test_default_mapping_layout(bundle):
    router = load_router(ROOT / "mappings" / "default.yaml", bundle)
    for rank in range(8):
        assert router.midi(cc(70 + rank, 127)) == [LatentSet(rank, 1.0, knob=True)]
    assert router.midi(cc(1, 127)) == [ParamSet(Param.VIBRATO_DEPTH, 4.0)]      # the mod wheel: vibrato depth
    assert router.midi(cc(2, 127)) == [ParamSet(Param.NOISE_GAIN_DB, 6.0)]      # breath controller: noise
    assert router.midi(cc(11, 0)) == [ParamSet(Param.OUTPUT_GAIN_DB, -40.0)]
    assert router.midi(cc(64, 127)) == [ControlChange(64, 127, 0)]
    assert router.midi(mido.Message("note_on", note=60, velocity=90)) == [NoteOn(60, 90, 0)]
    events = router.midi(mido.Message("program_change", program=2))
    assert router.current_patch == 2 and any(isinstance(e, ParamSet) for e in events)


def test_touchosc_layout(bundle):
    router = load_router(ROOT / "mappings" / "touchosc.yaml", bundle)
    assert router.osc("/1/fader1", (0.25,)) == [LatentSet(0, 0.25, knob=True)]
    assert router.osc("/1/toggle2", (1.0,)) == [ParamSet(Param.VOICE_MODE, 1.0)]
    assert router.osc("/1/toggle3", (1.0,)) == [Panic()]
    assert router.osc("/3/xy", (1.0, 0.0)) == [ParamSet(Param.NOISE_GAIN_DB, 6.0),
                                               ParamSet(Param.HARMONIC_GAIN_DB, -30.0)]
    router.osc("/2/push2", (1.0,))
    assert router.current_patch == 0
    router.osc("/2/push2", (0.0,))                    # release: nothing
    router.osc("/2/push2", (1.0,))
    assert router.current_patch == 1


def test_target_table(bundle):
    table = target_table(bundle.latents, ["a", "b"])
    assert table["latent/0"].key == table["latent/brightness"].key == ("latent", 0)
    assert table["latent/7"].index == 7 and table["release_ms"].kind == "param"
    assert {"bend", "sustain", "panic", "patch/next", "patch/prev", "patch/select", "patch/a", "patch/b"} <= set(table)
    for t in table.values():                       # every target converts to its event (patch ones: None)
        assert (t.event(t.default) is None) == (t.kind == "patch")
        assert math.isclose(t.from_knob(t.to_knob(t.default)), t.clamp(t.default), abs_tol=1e-9)


# ---------------------------------------------------------------------------------------------- sources
SOURCE_CASES = {
    "cc": ("{cc: 70, target: latent/0}", [cc(70, 127)], [LatentSet(0, 1.0, knob=True)]),
    "cc channel": ("{cc: 70, channel: 2, target: latent/0}", [cc(70, 64, channel=1)], [ControlChange(70, 64, 1)]),
    "cc 14-bit": ("{cc: 1, lsb: 33, target: latent/1}", [cc(1, 64), cc(33, 64)],
                  [LatentSet(1, (64 * 128 + 64) / 16383, knob=True)]),
    "relative twos": ("{cc: 16, relative: twos, step: 0.1, target: latent/2}", [cc(16, 1), cc(16, 2), cc(16, 127)],
                      [LatentSet(2, 0.7, knob=True)]),
    "relative offset": ("{cc: 16, relative: offset, step: 0.1, target: latent/2}", [cc(16, 65), cc(16, 66), cc(16, 63)],
                        [LatentSet(2, 0.7, knob=True)]),
    "relative sign": ("{cc: 16, relative: sign, step: 0.1, target: latent/2}", [cc(16, 1), cc(16, 2), cc(16, 65)],
                      [LatentSet(2, 0.7, knob=True)]),
    "aftertouch": ("{aftertouch: true, target: latent/3}", [mido.Message("aftertouch", value=127)],
                   [LatentSet(3, 1.0, knob=True)]),
    "poly aftertouch": ("{poly_aftertouch: 61, target: latent/3}",
                        [mido.Message("polytouch", note=61, value=0)], [LatentSet(3, 0.0, knob=True)]),
    "bend": ("{bend: true, target: latent/4, invert: true}", [mido.Message("pitchwheel", pitch=8191)],
             [LatentSet(4, 0.0, knob=True)]),
    "velocity": ("{velocity: true, target: attack_ms, range: [0, 100], curve: linear}",
                 [mido.Message("note_on", note=60, velocity=127)],
                 [ParamSet(Param.ATTACK_MS, 100.0), NoteOn(60, 127, 0)]),
    "program": ("{program: 5, target: panic}", [mido.Message("program_change", program=5)], [Panic()]),
    "osc arg": ("{osc: /pd/knob, arg: 1, input: [0, 127], target: latent/brightness}", [("/pd/knob", (0.0, 127.0))],
                [LatentSet(0, 1.0, knob=True)]),
    "osc curve": ("{osc: /f, target: release_ms, curve: exponential, range: [10, 1000]}", [("/f", (0.5,))],
                  [ParamSet(Param.RELEASE_MS, 100.0)]),
    "osc power": ("{osc: /f, target: latent/5, curve: power, exponent: 2}", [("/f", (0.5,))],
                  [LatentSet(5, 0.25, knob=True)]),
}


@pytest.mark.parametrize("case", sorted(SOURCE_CASES))
def test_each_source_kind_moves_its_target(case, tmp_path, bundle):
    entry, messages, expected = SOURCE_CASES[case]
    router = router_with(tmp_path, bundle, f"- {entry}")
    for message in messages:
        events = router.osc(*message) if isinstance(message, tuple) else router.midi(message)
    assert len(events) == len(expected)
    for got, want in zip(events, expected):
        assert type(got) is type(want)
        for field in want.__dataclass_fields__:
            a, b = getattr(got, field), getattr(want, field)
            assert (math.isclose(a, b, abs_tol=1e-9) if isinstance(b, float) else a == b), (field, got, want)


def test_several_sources_drive_one_target_and_relative_follows(tmp_path, bundle):
    router = router_with(tmp_path, bundle, """
        - {cc: 70, target: latent/0}
        - {osc: /fader, target: latent/0}
        - {cc: 16, relative: twos, step: 0.25, target: latent/0}
    """)
    assert router.midi(cc(70, 0)) == [LatentSet(0, 0.0, knob=True)]
    assert router.osc("/fader", (0.5,)) == [LatentSet(0, 0.5, knob=True)]
    assert router.midi(cc(16, 1)) == [LatentSet(0, 0.75, knob=True)]       # the encoder starts where the fader left
    assert router.value("latent/brightness") == 0.75


def test_passthrough_and_osc_errors(tmp_path, bundle):
    router = router_with(tmp_path, bundle, "- {cc: 70, target: latent/0}")
    assert router.midi(mido.Message("pitchwheel", pitch=4096)) == [PitchBend(0.5, 0)]
    assert router.midi(mido.Message("note_on", note=60, velocity=100), offset=7) == [NoteOn(60, 100, 0, 7)]
    assert router.osc("/sdga/note_on", (62.0, 90.0)) == [NoteOn(62.0, 90.0, 0)]
    with pytest.raises(OscError):
        router.osc("/nowhere", (1.0,))
    off = router_with(tmp_path, bundle, "- {osc: /a, arg: 1, target: latent/0}", header="passthrough: false\n")
    assert off.midi(mido.Message("note_on", note=60)) == []
    for args in [(1.0,), (1.0, "x")]:
        with pytest.raises(ValueError):              # counted and dropped by the app
            off.osc("/a", args)
    with pytest.raises(ValueError):
        off.osc("/sdga/note_on", (60, 100))


def test_relative_modes_table():
    assert set(RELATIVE_MODES) == {"twos", "offset", "sign"}
    assert [relative_delta("twos", v) for v in (1, 63, 127, 65)] == [1, 63, -1, -63]
    assert [relative_delta("offset", v) for v in (65, 64, 63)] == [1, 0, -1]
    assert [relative_delta("sign", v) for v in (1, 65, 127)] == [1, -1, -63]


# ---------------------------------------------------------------------------------------------- smoothing
def test_smoothing_ramps_per_control_frame(tmp_path, bundle):
    router = router_with(tmp_path, bundle, "- {cc: 70, target: latent/0, smooth_ms: 20}")
    router.prepare(48000, 128)
    assert router.midi(cc(70, 0)) == []                 # goes to the ramp, not straight to the engine
    values, offsets = [], []
    for _ in range(20):                                 # 20 blocks of 100 samples (not a multiple of the hop)
        events = router.tick(100)
        offsets.append([e.offset for e in events])
        values += [e.value for e in events]
        if _ == 0:
            router.midi(cc(70, 127))
    assert all(o == sorted(o) and all(0 <= x < 100 for x in o) for o in offsets)
    up = values[values.index(min(values)):]
    assert up[-1] == 1.0 and all(b >= a for a, b in zip(up, up[1:]))
    steps = [b - a for a, b in zip(up, up[1:])]
    assert max(steps) <= 128 / (0.020 * 48000) + 1e-9          # a straight line: hop / smooth samples per frame
    assert len(up) - 1 <= math.ceil(0.020 * 48000 / 128) + 1    # arrives in smooth_ms
    assert router.tick(1000) == []                              # nothing while nothing moves
    # Merged with queued events in offset order.
    router.midi(cc(70, 0))
    merged = list(router.block_events(iter([NoteOn(60, 100)]), 512))
    assert merged[0] == NoteOn(60, 100) and [e.offset for e in merged] == sorted(e.offset for e in merged)


# ---------------------------------------------------------------------------------------------- errors
ERROR_CASES = {
    "unknown target": ("- {cc: 70, target: latent/brigthness}", 3, "mappings[0].target",
                       ["did you mean 'latent/brightness'", "valid choices:", "release_ms"]),
    "cc 200": ("- {cc: 200, target: latent/0}", 3, "mappings[0].cc", ["200", "0..127"]),
    "wrong type": ("- {cc: seventy, target: latent/0}", 3, "mappings[0].cc", ["must be an integer", "'seventy'"]),
    "unknown key": ("- {cc: 70, target: latent/0, smoth_ms: 5}", 3, "mappings[0].smoth_ms",
                    ["unknown key", "did you mean 'smooth_ms'", "valid choices:", "relative"]),
    "two sources": ("- {cc: 1, osc: /a, target: latent/0}", 3, "mappings[0].osc", ["cc and osc"]),
    "no source": ("- {target: latent/0}", 3, "mappings[0]", ["needs a source", "valid choices:", "poly_aftertouch"]),
    "no target": ("- {cc: 1}", 3, "mappings[0].target", ["missing", "valid choices:", "latent/brightness"]),
    "channel 16": ("- {cc: 1, channel: 16, target: latent/0}", 3, "mappings[0].channel", ["0..15"]),
    "relative mode": ("- {cc: 1, relative: twoscomplement, target: latent/0}", 3, "mappings[0].relative",
                      ["twoscomplement", "valid choices: twos, offset, sign"]),
    "exponential range": ("- {cc: 1, target: noise_gain_db, curve: exponential}", 3, "mappings[0].curve",
                          ["one sign", "valid choices: linear, power"]),
    "range outside": ("- {cc: 1, target: latent/0, range: [0, 2]}", 3, "mappings[0].range", ["0..1"]),
    "lsb on osc": ("- {osc: /a, lsb: 3, target: latent/0}", 3, "mappings[0].lsb", ["applies to: cc"]),
    "duplicate key": ("- {cc: 1, cc: 2, target: latent/0}", 3, "mappings[0].cc", ["duplicate"]),
    "patch without patches": ("- {cc: 1, target: patch/next}", 3, "mappings[0].target", ["patches:"]),
    "bad osc address": ("- {osc: fader1, target: latent/0}", 3, "mappings[0].osc", ["not an OSC address"]),
    "bad curve": ("- {cc: 1, target: latent/0}\n- {cc: 2, target: latent/1, curve: log}", 4, "mappings[1].curve",
                  ["'log'", "valid choices: linear, exponential, power"]),
    "block style": ("- cc: 1\n  target: latent/0\n- cc: 2\n  target: release_ms\n  smooth_ms: fast", 7,
                    "mappings[1].smooth_ms", ["must be a number"]),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_broken_files_name_file_line_key_and_choices(case, tmp_path, bundle):
    entries, line, key, fragments = ERROR_CASES[case]
    with pytest.raises(MappingError) as info:
        router_with(tmp_path, bundle, entries)
    error, message = info.value, str(info.value)
    assert isinstance(error, ValueError)
    assert str(tmp_path / "map.yaml") in message and f"line {line}" in message and f"key '{key}'" in message, message
    assert (error.line, error.key) == (line, key)
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("text, line, key, fragment", [
    ("version: 1\nmapings: []\n", 2, "mapings", "did you mean 'mappings'"),
    ("version: 2\nmappings: []\n", 1, "version", "out of range"),
    ("mappings:\n  - {cc: 70, target: latent/0\n", 3, "", "not valid YAML"),
    ("mappings: {cc: 70}\n", 1, "mappings", "must be a list"),
    ("patches: nowhere\nmappings: []\n", 1, "patches", "does not exist"),
    ("feedback: {host: x}\n", 1, "feedback.port", "missing"),
    ("- just a list\n", 1, "", "must be a mapping"),
])
def test_broken_file_structure(text, line, key, fragment, tmp_path, bundle):
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(MappingError) as info:
        load_router(path, bundle)
    message = str(info.value)
    assert str(path) in message and f"line {line}" in message and fragment in message, message
    assert info.value.key == key


# ---------------------------------------------------------------------------------------------- hot reload
def test_hot_reload_keeps_the_previous_mapping_on_a_broken_edit(tmp_path, bundle):
    path = write(tmp_path / "live.yaml", "mappings:\n  - {cc: 70, target: latent/0}\n")
    messages = []
    router = load_router(path, bundle, on_message=messages.append).watch(0.05)
    try:
        assert router.midi(cc(70, 127)) == [LatentSet(0, 1.0, knob=True)]

        def edit(text: str, bump: int) -> None:
            fresh = path.with_suffix(".new")          # replaced whole: the poller never sees a half-written file
            fresh.write_text(text)
            os.replace(fresh, path)
            st = path.stat()                           # make sure the poller sees it even on coarse clocks
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump * 1_000_000_000))

        first = router.mapping
        edit("mappings:\n  - {cc: 70, target: latent/1}\n", 1)
        assert wait_for(lambda: router.reloads == 1)
        assert router.mapping is not first
        assert router.midi(cc(70, 127)) == [LatentSet(1, 1.0, knob=True)]
        good = router.mapping
        edit("mappings:\n  - {cc: 700, target: latent/2}\n", 2)
        assert wait_for(lambda: router.refused == 1)
        assert router.mapping is good                                      # still the last good one
        assert router.midi(cc(70, 127)) == [LatentSet(1, 1.0, knob=True)]
        assert "line 2" in router.last_error and "mappings[0].cc" in router.last_error
        assert any("previous one stays active" in m for m in messages)
        edit("mappings:\n  - {cc: 70, target: latent/2}\n", 3)
        assert wait_for(lambda: router.reloads == 2)
        assert router.last_error == "" and router.midi(cc(70, 0)) == [LatentSet(2, 0.0, knob=True)]
    finally:
        router.close()


@pytest.mark.parametrize("fault", ["deleted", "folder"], ids=["deleted", "unreadable-a-folder-in-its-place"])
@pytest.mark.parametrize("which", ["mapping", "patch"])
def test_mapping_or_patch_file_gone_while_playing_keeps_the_last_good_one(tmp_path, bundle, which, fault):
    """The mapping file or one of its patch files is deleted, or made unreadable, while playing: the mapping in
    use stays (bindings, patches and their numbers), one message names the file however often the watcher
    polls, and the file's return is picked up. Unreadable is a folder in the file's place: the suite runs as
    root, whom chmod 000 does not stop (open() raises OSError for both, and both take the same path)."""
    patches = tmp_path / "patches"
    patches.mkdir()
    for name in ("1-plain.yaml", "3-glass.yaml"):
        (patches / name).write_bytes((ROOT / "patches" / name).read_bytes())
    path = write(tmp_path / "live.yaml", f"patches: {patches}\nmappings:\n  - {{cc: 70, target: latent/0}}\n")
    messages: list[str] = []
    router = load_router(path, bundle, on_message=messages.append).watch(0.05)
    try:
        good = router.mapping
        assert [p.name for p in good.patches] == ["plain", "glass"]
        victim = path if which == "mapping" else patches / "3-glass.yaml"
        saved = victim.read_bytes()
        victim.unlink()
        if fault == "folder":
            victim.mkdir()
        assert wait_for(lambda: router.refused >= 1)
        time.sleep(0.4)
        refused = router.refused          # 1; 2 when a poll fell between the unlink and the mkdir (two changes)
        time.sleep(0.4)                   # ~8 more polls of an unchanged file: no more refusals, no more messages
        said = [m for m in messages if "previous one stays active" in m]
        assert router.refused == refused == len(said) and refused <= (1 if fault == "deleted" else 2), messages
        assert all(str(victim) in m for m in said), messages
        assert router.mapping is good and router.reloads == 0
        assert router.midi(cc(70, 127)) == [LatentSet(0, 1.0, knob=True)]
        router.osc("/sdga/patch", ("glass",))             # the patch whose file is gone still plays, as number 1
        assert router.current_patch == 1
        if fault == "folder":
            victim.rmdir()
        victim.write_bytes(saved)
        assert wait_for(lambda: router.reloads == 1)
        assert router.mapping is not good and router.last_error == ""
        assert [p.name for p in router.mapping.patches] == ["plain", "glass"]
        assert messages[-1].startswith("mapping reloaded")
    finally:
        router.close()


def test_reload_while_messages_flow(tmp_path, bundle):
    """Messages on one thread while the file is swapped on another: every result comes from one mapping."""
    path = write(tmp_path / "live.yaml", "mappings:\n  - {cc: 70, target: latent/0}\n")
    router = load_router(path, bundle)
    seen, stop, results = set(), threading.Event(), [0]

    def play():
        while not stop.is_set():
            for event in router.midi(cc(70, 127)):
                seen.add(event.index)
                results[0] += 1

    thread = threading.Thread(target=play)
    thread.start()
    try:
        for i in range(20):
            path.write_text(f"mappings:\n  - {{cc: 70, target: latent/{i % 2}}}\n")
            assert router.reload()
    finally:
        stop.set()
        thread.join()
    assert results[0] > 0 and seen == {0, 1}          # messages flowed through both mappings, no other


# ---------------------------------------------------------------------------------------------- learn
LEARN_FILES = {
    "flow items": "# my controller\nversion: 1   # keep me\nmappings:\n  - {cc: 70, target: latent/0}  # knob 1\n"
                  "  # end of list\n",
    "block items": "mappings:\n- cc: 70\n  target: latent/0\n  smooth_ms: 10\npassthrough: true\n",
    "empty flow": "version: 1\nmappings: []\n",
    "no mappings": "# nothing yet\nversion: 1\n",
    "null mappings": "mappings:\nversion: 1\n",
}


@pytest.mark.parametrize("case", sorted(LEARN_FILES))
def test_midi_learn_writes_a_file_that_loads_back(case, tmp_path, bundle):
    path = write(tmp_path / "learn.yaml", LEARN_FILES[case])
    router = load_router(path, bundle)
    router.learn("latent/brightness")
    assert router.learning == "latent/brightness"
    assert router.midi(cc(21, 127, channel=3)) == [LatentSet(0, 1.0, knob=True)]   # applied at once too
    assert router.learning is None
    text = path.read_text()
    assert "{cc: 21, channel: 3, target: latent/brightness}" in text
    for line in LEARN_FILES[case].splitlines():
        if "#" in line:
            assert line in text                                                     # comments kept
    again = load_router(path, bundle)
    assert again.midi(cc(21, 0, channel=3)) == [LatentSet(0, 0.0, knob=True)]
    assert again.midi(cc(21, 0, channel=4)) == [ControlChange(21, 0, 4)]          # learned on channel 3 only
    if "cc: 70" in LEARN_FILES[case]:
        assert again.midi(cc(70, 127)) == [LatentSet(0, 1.0, knob=True)]
    # Learning the same control again replaces its binding.
    router.learn("release_ms")
    router.midi(cc(21, 0, channel=3))
    assert path.read_text().count("cc: 21") == 1
    assert load_router(path, bundle).midi(cc(21, 0, channel=3)) == [ParamSet(Param.RELEASE_MS, 1.0)]


def test_learn_bend_and_aftertouch_via_osc(tmp_path, bundle):
    path = write(tmp_path / "learn.yaml", "mappings: []\n")
    router = load_router(path, bundle)
    assert router.osc("/sdga/learn", ("latent/1",)) == []
    router.midi(mido.Message("note_on", note=60))                 # notes do not get learned
    assert router.learning == "latent/1"
    router.midi(mido.Message("pitchwheel", pitch=0))
    router.osc("/sdga/learn", ("noise_gain_db",))
    router.midi(mido.Message("aftertouch", value=127, channel=1))
    again = load_router(path, bundle)
    assert again.midi(mido.Message("pitchwheel", pitch=8191)) == [LatentSet(1, 1.0, knob=True)]
    assert again.midi(mido.Message("aftertouch", value=127, channel=1)) == [ParamSet(Param.NOISE_GAIN_DB, 12.0)]
    router.osc("/sdga/learn", ("latent/2",))
    router.osc("/sdga/learn/cancel", ())
    assert router.learning is None
    with pytest.raises(MappingError) as info:
        router.learn("latent/brigthness")
    assert "did you mean 'latent/brightness'" in str(info.value) and "valid choices:" in str(info.value)
    with pytest.raises(ValueError):
        router.osc("/sdga/learn", (3.0,))


def test_learn_without_a_file_stays_in_memory(bundle):
    router = load_router(None, bundle)
    router.learn("latent/3")
    router.midi(cc(30, 0))
    assert router.midi(cc(30, 127)) == [LatentSet(3, 1.0, knob=True)] and router.mapping.path is None


# ---------------------------------------------------------------------------------------------- OSC extras
def test_osc_feedback_over_udp(tmp_path, bundle):
    from pythonosc.dispatcher import Dispatcher
    from pythonosc.osc_server import ThreadingOSCUDPServer

    received, lock = [], threading.Lock()
    dispatcher = Dispatcher()
    dispatcher.set_default_handler(lambda address, *args: received.append((address, args)))
    server = ThreadingOSCUDPServer(("127.0.0.1", 0), dispatcher)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        router = router_with(tmp_path, bundle, """
            - {cc: 70, target: latent/0}
            - {osc: /1/fader1, target: latent/0}
            - {osc: /pad, arg: 1, input: [0, 127], target: latent/0}
        """, feedback=server.server_address, send=OscFeedback())
        router.midi(cc(70, 127))
        assert wait_for(lambda: len(received) >= 3)
        got = dict(received)
        assert got["/sdga/value/latent/0"] == (1.0,) and got["/1/fader1"] == (1.0,)
        assert got["/pad"] == (0.0, 127.0)
        received.clear()
        router.osc("/1/fader1", (0.5,))                              # no echo to the control that moved
        assert wait_for(lambda: len(received) >= 2)
        time.sleep(0.1)
        assert "/1/fader1" not in dict(received)
        router.close()
    finally:
        server.shutdown()
        server.server_close()


def test_osc_additions(tmp_path, bundle):
    patches = tmp_path / "patches"
    patches.mkdir()
    for source in sorted((ROOT / "patches").glob("*.yaml")):
        (patches / source.name).write_text(source.read_text())
    router = router_with(tmp_path, bundle, "- {cc: 70, target: latent/0}", header=f"patches: {patches}\n")
    assert router.osc("/sdga/target/latent/hollowness", (0.25,)) == [LatentSet(3, 0.25, knob=True)]
    assert router.osc("/sdga/target/release_ms", (1.0,)) == [ParamSet(Param.RELEASE_MS, 10000.0)]
    assert router.osc("/sdga/target/panic", (1.0,)) == [Panic()]
    router.osc("/sdga/patch", ("glass",))
    assert router.current_patch == 2
    router.osc("/sdga/patch/next", ())
    assert router.current_patch == 3
    router.osc("/sdga/patch", (0,))
    assert router.current_patch == 0
    with pytest.raises(ValueError):
        router.osc("/sdga/patch", ("nope",))
    with pytest.raises(ValueError):
        router.osc("/sdga/target/latent/nope", (0.5,))
    router.osc("/sdga/target/latent/brightness", (0.8,))
    router.osc("/sdga/save", ("mine",))
    saved = router.mapping.patch_source[0] / "mine.yaml"
    assert saved.is_file()
    assert router.reload() and "mine" in [p.name for p in router.mapping.patches]
    mine = next(p for p in router.mapping.patches if p.name == "mine")
    assert dict(mine.latents)[0] == pytest.approx(0.8)
    with pytest.raises(ValueError):
        router.osc("/sdga/save", ("../escape",))
    assert {s.address for s in OSC_ADDRESSES} >= {"/sdga/learn", "/sdga/patch", "/sdga/save"}


# ---------------------------------------------------------------------------------------------- docs
def readme_section() -> str:
    """The README's controllers section (mapping and patch schemas, OSC additions, guides)."""
    text = (ROOT / "README.md").read_text()
    return text[text.index("## Controllers: mappings"):text.index("## Dependencies and why")]


def test_readme_section_covers_every_table():
    from instrument.engine.effects import EFFECTS
    from instrument.controls.patches import PATCH_KEYS

    text = readme_section()
    for key in [*MAPPING_FILE_KEYS, *ENTRY_KEYS, *PATCH_KEYS]:
        assert f"`{key.name}`" in text, key.name
    for spec in OSC_ADDRESSES:
        if not spec.engine:                              # the controller commands; the engine's are above it
            assert spec.address in text, spec.address
    for kind in [*SOURCE_KINDS, *RELATIVE_MODES, *EFFECTS]:
        assert kind in text, kind


def test_readme_examples_load(tmp_path, bundle):
    """The mapping and patch examples in the README section are real files."""
    from instrument.controls.patches import load_patch

    text = readme_section()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    mapping, patch = blocks[0], blocks[1]
    path = write(tmp_path / "readme.yaml", mapping.replace("../patches", str(ROOT / "patches")))
    router = load_router(path, bundle)
    assert len(router.mapping.bindings) == mapping.count("- {")
    assert router.midi(cc(80, 127)) and router.current_patch == 0
    loaded = load_patch(write(tmp_path / "p.yaml", patch), bundle)
    assert dict(loaded.latents) == {0: 0.15, 2: 0.85} and loaded.effects and loaded.glide_ms == 500


def test_sync_and_describe(tmp_path, bundle):
    router = router_with(tmp_path, bundle, "- {cc: 16, relative: offset, step: 0.5, target: latent/1}")
    router.sync([LatentSet(1, 0.0, knob=True), ParamSet(Param.RELEASE_MS, 50.0)])   # e.g. --latent at start-up
    assert router.value("release_ms") == 50.0
    assert router.midi(cc(16, 65)) == [LatentSet(1, 0.5, knob=True)]                  # the encoder starts there
    assert "1 bindings" in router.describe() and "map.yaml" in router.describe()


@pytest.mark.parametrize("path", sorted((ROOT / "mappings").glob("*.yaml")), ids=lambda p: p.name)
def test_learn_changes_only_the_learned_line_of_the_shipped_mappings(path, tmp_path, bundle):
    """ruamel.yaml's round trip keeps every comment, blank line and layout: learning a new control adds one
    line, learning a bound one changes only that line."""
    import difflib

    original = path.read_text()
    copy = tmp_path / path.name
    copy.write_text(original.replace("../patches", str(ROOT / "patches")))
    before = copy.read_text()
    router = load_router(copy, bundle)
    learns = [(cc(21, 127, channel=3), "release_ms")]
    bound = [b.source for b in router.mapping.bindings if b.source.kind == "cc"]     # touchosc.yaml: OSC only
    if bound:
        learns.append((cc(bound[0].number, 5, channel=bound[0].channel or 0), "latent/3"))
    for message, target in learns:
        router.learn(target)
        router.midi(message)
        after = copy.read_text()
        changed = [line for line in difflib.ndiff(before.splitlines(), after.splitlines()) if line[:1] in "+-"]
        assert len([c for c in changed if c[0] == "+"]) == 1 and len(changed) <= 2, changed
        assert target in changed[-1]
        before = after
    assert load_router(copy, bundle).midi(cc(21, 127, channel=3)) == [ParamSet(Param.RELEASE_MS, 10000.0)]


def test_feedback_goes_through_the_injected_sender(tmp_path, bundle):
    """The router composes feedback and hands it to ``send``; without one it sends nothing (and opens no
    socket: the transport is instrument.io.feedback)."""
    sent = []
    router = router_with(tmp_path, bundle, "- {cc: 70, target: latent/0}\n- {osc: /f, target: latent/0}",
                         header="feedback: {host: 127.0.0.1, port: 9}\n",
                         send=lambda dest, address, args: sent.append((dest, address, args)))
    router.midi(cc(70, 127))
    assert sent == [(("127.0.0.1", 9), "/sdga/value/latent/0", 1.0), (("127.0.0.1", 9), "/f", [1.0])]
    silent = router_with(tmp_path, bundle, "- {cc: 70, target: latent/0}", header="feedback: {port: 9}\n")
    assert silent.midi(cc(70, 127)) == [LatentSet(0, 1.0, knob=True)] and silent.send is None
