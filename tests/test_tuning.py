"""Tuning: concert pitch (tuning_a4_hz) and Scala .scl/.kbm files, parsed and measured in rendered notes."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from instrument.engine.events import NoteOff, NoteOn, TuningSet
from instrument.engine.tuning import (KeyboardMap, TuningError, key_offsets_semitones, parse_kbm, parse_scl,
                                      read_tuning)
from instrument.controls.patches import PatchError, load_patch
from test_engine import SR, make_engine, peak_hz, render, sine_bundle

EDO19 = "! 19edo.scl\n!\n19-tone equal temperament\n 19\n!\n" + "".join(
    f" {1200.0 * k / 19:.5f}\n" for k in range(1, 19)) + " 2/1\n"
# 5-limit just major scale on 7 keys: C D E F G A B (white keys only via the keyboard map below)
JUST = "! just.scl\nJust major\n7\n9/8\n5/4\n4/3\n3/2\n5/3\n15/8\n2/1 octave\n"
# the 12 keys of an octave onto the 7 degrees, black keys unmapped; C4 (60) is 261.6256 Hz
WHITE_KBM = ("! white.kbm\n12\n0\n127\n60\n60\n261.6255653\n7\n"
             "0\nx\n1\nx\n2\n3\nx\n4\nx\n5\nx\n6\n")
GRID = (48, 55, 60, 64, 67, 69, 72, 79)


def cents(a: float, b: float) -> float:
    return 1200.0 * math.log2(a / b)


@pytest.fixture(scope="module")
def sine():
    return sine_bundle()


def play_grid(bundle, keys=GRID, tuning=None, **params) -> dict[int, float]:
    """Each key alone for 0.4 s: the measured frequency of its steady part."""
    engine = make_engine(bundle, voices=1, release_ms=5.0, **params)
    if tuning is not None:
        engine.process([TuningSet(tuning)], np.zeros(engine.block_size, np.float32))
    n = int(0.4 * SR)
    out = {}
    for key in keys:
        audio = render(engine, [(0, NoteOn(key, 100)), (n - 2000, NoteOff(key))], n)
        out[key] = peak_hz(audio[int(0.1 * SR):n - 2000], SR) if np.abs(audio).max() > 1e-4 else math.nan
    return out


def test_concert_pitch_442_moves_every_key(sine):
    measured = play_grid(sine, tuning_a4_hz=442.0)
    for key, f in measured.items():
        assert abs(cents(f, 442.0 * 2 ** ((key - 69) / 12))) < 2.0, (key, f)
    assert abs(cents(play_grid(sine, keys=(69,))[69], 440.0)) < 2.0          # the default is still 440


def test_19_edo_scale_plays_its_steps(sine, tmp_path):
    (tmp_path / "19edo.scl").write_text(EDO19)
    measured = play_grid(sine, tuning=read_tuning(tmp_path / "19edo.scl"))
    for key, f in measured.items():                   # Scala default map: key 60 degree 0, key 69 at 440 Hz
        expected = 440.0 * 2 ** ((key - 69) / 19)
        assert abs(cents(f, expected)) < 2.0, (key, f, expected)
    assert abs(cents(measured[72], measured[60]) - 12 * 1200 / 19) < 2.0      # 12 keys: 758 cents, not an octave


def test_just_intonation_with_a_keyboard_map_and_concert_pitch(sine, tmp_path):
    (tmp_path / "just.scl").write_text(JUST)
    (tmp_path / "white.kbm").write_text(WHITE_KBM)
    tuning = read_tuning(tmp_path / "just.scl", tmp_path / "white.kbm")
    c4 = 261.6255653
    ratios = {60: 1, 62: 9 / 8, 64: 5 / 4, 65: 4 / 3, 67: 3 / 2, 69: 5 / 3, 71: 15 / 8, 72: 2, 48: 0.5}
    measured = play_grid(sine, keys=tuple(ratios), tuning=tuning)
    for key, ratio in ratios.items():
        assert abs(cents(measured[key], c4 * ratio)) < 2.0, (key, measured[key])
    assert abs(cents(measured[64], 440 * 2 ** (-5 / 12)) + 13.7) < 2.0        # the just third: 13.7 cents flat
    # an unmapped (black) key plays nothing; concert pitch moves the just scale too
    assert math.isnan(play_grid(sine, keys=(61,), tuning=tuning)[61])
    moved = play_grid(sine, keys=(60,), tuning=tuning, tuning_a4_hz=442.0)[60]
    assert abs(cents(moved, c4 * 442 / 440)) < 2.0


def test_kbm_and_scl_parse_as_scala_does():
    assert parse_scl(JUST)[-1] == pytest.approx(1200.0)
    assert parse_scl("x\n2\n100.0 cents\n3\n")[1] == pytest.approx(1901.955, abs=1e-3)   # "3" is the ratio 3/1
    kbm = parse_kbm(WHITE_KBM)
    assert kbm.map_size == 12 and kbm.degrees[:4] == (0, None, 1, None) and kbm.reference_key == 60
    table = key_offsets_semitones(parse_scl(EDO19), KeyboardMap())
    assert table[69] == pytest.approx(0.0) and table[60] == pytest.approx(9 - 9 * 12 / 19)


@pytest.mark.parametrize("name, text, line, words", [
    ("no_count.scl", "! c\ndesc\n", 2, "number of notes"),
    ("bad_count.scl", "desc\nseven\n100.0\n", 2, "whole number >= 1"),
    ("short.scl", "desc\n3\n100.0\n200.0\n", 4, "3 notes announced on line 2, 2 found"),
    ("bad_pitch.scl", "desc\n2\n!\n100.0\nabc\n", 5, "neither cents"),
    ("zero_ratio.scl", "desc\n1\n0/1\n", 3, "must be positive"),
])
def test_bad_scl_files_name_file_and_line(tmp_path, name, text, line, words):
    (tmp_path / name).write_text(text)
    with pytest.raises(TuningError) as exc:
        read_tuning(tmp_path / name)
    assert str(exc.value).startswith(f"{tmp_path / name}:{line}:") and words in str(exc.value)


@pytest.mark.parametrize("text, line, words", [
    ("12\n0\n127\n60\n60\n", 5, "expected 7 header values"),
    ("12\n0\n200\n60\n60\n261.6\n12\n", 3, "last key must be 0..127"),
    ("1\n0\n127\n60\n60\n-5\n12\n0\n", 6, "above 0 Hz"),
    ("2\n0\n127\n60\n60\n261.6\n12\n0\n!\nq\n", 10, "scale degree >= 0 or x"),
])
def test_bad_kbm_files_name_file_and_line(tmp_path, text, line, words):
    (tmp_path / "s.scl").write_text(EDO19)
    (tmp_path / "m.kbm").write_text(text)
    with pytest.raises(TuningError) as exc:
        read_tuning(tmp_path / "s.scl", tmp_path / "m.kbm")
    assert str(exc.value).startswith(f"{tmp_path / 'm.kbm'}:{line}:") and words in str(exc.value)


def test_patch_scale_and_concert_pitch(sine, tmp_path):
    (tmp_path / "tunings").mkdir()
    (tmp_path / "tunings" / "19edo.scl").write_text(EDO19)
    (tmp_path / "p.yaml").write_text("scale: tunings/19edo.scl\nparams: {tuning_a4_hz: 442}\n")
    patch = load_patch(tmp_path / "p.yaml")
    assert patch.scale == tmp_path / "tunings" / "19edo.scl" and patch.param("tuning_a4_hz") == 442.0
    events = patch.events()
    tuning = next(e for e in events if isinstance(e, TuningSet)).key_offsets_semitones
    engine = make_engine(sine, voices=1)
    engine.process(events, np.zeros(engine.block_size, np.float32))
    audio = render(engine, [(0, NoteOn(60, 100))], int(0.3 * SR))
    assert abs(cents(peak_hz(audio[int(0.1 * SR):], SR), 442.0 * 2 ** (-9 / 19))) < 2.0
    assert tuning[60] == pytest.approx(9 - 9 * 12 / 19)
    # a bad scale file: the patch error names the patch's line and the scale file's own line
    (tmp_path / "tunings" / "bad.scl").write_text("desc\n2\n100.0\n")
    (tmp_path / "bad.yaml").write_text("name: x\nscale: tunings/bad.scl\n")
    with pytest.raises(PatchError) as exc:
        load_patch(tmp_path / "bad.yaml")
    assert "line 2" in str(exc.value) and "bad.scl:3:" in str(exc.value)
    (tmp_path / "kbm_only.yaml").write_text("keyboard_map: x.kbm\n")
    with pytest.raises(PatchError, match="needs a scale"):
        load_patch(tmp_path / "kbm_only.yaml")


def test_recalling_a_patch_retunes_and_one_without_a_scale_keeps_the_tuning(sine, tmp_path):
    from instrument.controls.router import load_router

    (tmp_path / "19edo.scl").write_text(EDO19)
    (tmp_path / "a_19.yaml").write_text("scale: 19edo.scl\n")
    (tmp_path / "b_plain.yaml").write_text("params: {release_ms: 500}\n")
    router = load_router(None, sine, patches=tmp_path)
    tuned = [e for e in router.recall("a_19", glide_ms=0) if isinstance(e, TuningSet)]
    assert len(tuned) == 1 and tuned[0].key_offsets_semitones[60] == pytest.approx(9 - 9 * 12 / 19)
    assert not [e for e in router.recall("b_plain", glide_ms=0) if isinstance(e, TuningSet)]


def test_mapping_scale_tunes_the_start_and_every_patch_without_its_own(sine, tmp_path):
    from instrument.controls.router import load_router

    (tmp_path / "just.scl").write_text(JUST)
    (tmp_path / "white.kbm").write_text(WHITE_KBM)
    (tmp_path / "19edo.scl").write_text(EDO19)
    (tmp_path / "patches").mkdir()
    (tmp_path / "patches" / "a_19.yaml").write_text("scale: ../19edo.scl\n")
    (tmp_path / "patches" / "b_plain.yaml").write_text("params: {release_ms: 500}\n")
    (tmp_path / "m.yaml").write_text("patches: patches\nscale: just.scl\nkeyboard_map: white.kbm\nmappings: []\n")
    router = load_router(tmp_path / "m.yaml", sine)
    start = router.tuning_events()
    assert len(start) == 1 and math.isnan(start[0].key_offsets_semitones[61])         # the just white keys
    edo = [e for e in router.recall("a_19", glide_ms=0) if isinstance(e, TuningSet)]
    assert edo[0].key_offsets_semitones[60] == pytest.approx(9 - 9 * 12 / 19)
    back = [e for e in router.recall("b_plain", glide_ms=0) if isinstance(e, TuningSet)]
    assert len(back) == 1 and math.isnan(back[0].key_offsets_semitones[61])
    # played: the mapping's just major third above C4
    audio = play_grid(sine, keys=(64,), tuning=start[0].key_offsets_semitones)[64]
    assert abs(cents(audio, 261.6255653 * 5 / 4)) < 2.0
    # a broken scale named by the mapping: the mapping's line and the scale file's own line
    (tmp_path / "bad.scl").write_text("desc\n2\n100.0\n")
    (tmp_path / "bad.yaml").write_text("name: x\nscale: bad.scl\n")
    from instrument.controls.targets import MappingError
    with pytest.raises(MappingError) as exc:
        load_router(tmp_path / "bad.yaml", sine)
    assert "line 2" in str(exc.value) and "bad.scl:3:" in str(exc.value)


def test_sdga_render_plays_a_note_grid_in_a_scale_at_442(tmp_path):
    """sdga-render --scale 19edo.scl --param tuning_a4_hz=442: every note of the MIDI file at its tuned pitch."""
    import soundfile as sf
    from instrument.apps.render import main as render_main
    from instrument.model.bundle import save_bundle
    from test_render import NOTES, pitch_hz, write_midi

    save_bundle(tmp_path / "sine.sdga", sine_bundle())
    write_midi(tmp_path / "notes.mid")
    (tmp_path / "19edo.scl").write_text(EDO19)
    assert render_main([str(tmp_path / "sine.sdga"), "--midi", str(tmp_path / "notes.mid"), "-o",
                        str(tmp_path / "out.wav"), "--scale", str(tmp_path / "19edo.scl"),
                        "--param", "tuning_a4_hz=442"]) == 0
    audio, sr = sf.read(str(tmp_path / "out.wav"), dtype="float32")
    for note, on, off in NOTES:
        measured = pitch_hz(audio[int((on + 0.15) * sr):int((off - 0.02) * sr)], sr)
        assert abs(cents(measured, 442.0 * 2 ** ((note - 69) / 19))) < 3.0, (note, measured)
    assert render_main([str(tmp_path / "sine.sdga"), "--midi", str(tmp_path / "notes.mid"), "-o",
                        str(tmp_path / "x.wav"), "--keyboard-map", str(tmp_path / "m.kbm")]) == 2


def test_saving_the_sound_keeps_the_scale_playing(sine, tmp_path):
    """/sdga/save and --save-patch write the scale (and keyboard map) playing, relative to the new patch."""
    from instrument.controls.router import load_router

    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "just.scl").write_text(JUST)
    (tmp_path / "t" / "white.kbm").write_text(WHITE_KBM)
    (tmp_path / "t" / "19edo.scl").write_text(EDO19)
    (tmp_path / "patches").mkdir()
    (tmp_path / "patches" / "a_19.yaml").write_text("scale: ../t/19edo.scl\n")
    (tmp_path / "patches" / "b_plain.yaml").write_text("params: {release_ms: 500}\n")
    (tmp_path / "m.yaml").write_text("patches: patches\nscale: t/just.scl\nkeyboard_map: t/white.kbm\n")
    router = load_router(tmp_path / "m.yaml", sine)
    router.recall("a_19", glide_ms=0)
    saved = load_patch(router.save_current_patch(tmp_path / "out" / "edo.yaml"))
    assert saved.scale.resolve() == (tmp_path / "t" / "19edo.scl").resolve() and saved.keyboard_map is None
    assert "../t/19edo.scl" in (tmp_path / "out" / "edo.yaml").read_text()
    router.recall("b_plain", glide_ms=0)              # no scale of its own: the mapping's just tuning plays
    saved = load_patch(router.save_current_patch(tmp_path / "out" / "just.yaml"))
    assert saved.scale.resolve() == (tmp_path / "t" / "just.scl").resolve()
    assert saved.keyboard_map.resolve() == (tmp_path / "t" / "white.kbm").resolve()
    np.testing.assert_array_equal(saved.tuning, router.mapping.tuning)
