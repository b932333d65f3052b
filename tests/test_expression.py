"""Contract: note expression learnt from the corpus. The fit recovers a known articulation from frames alone
(no MIDI) and says when there are too few notes; the model file stores it (format 3) and older files play
with the ADSR; the engine plays it causally (any block size gives the same output), velocity stays monotonic,
held notes stay centred on their pitch, and the expression parameters and the mod wheel do what they say."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from instrument.engine.engine import Engine
from instrument.engine.events import ControlChange, NoteOff, NoteOn, param_spec
from instrument.engine.expression import (LOUDEST_NOTE_VELOCITY, VELOCITY_DB_PER_DECADE, held_level_db, note_curve,
                                          output_input_db, velocity_level_db, velocity_output_db)
from instrument.model import modelfile
from instrument.model.bundle import Articulation, ModelBundle, load_bundle, random_bundle, save_bundle
from instrument.model.modelfile import save_model_file
from training.expression import MIN_NOTES, attack_curves, fit_articulation, segment_notes

from test_engine import render  # noqa: E402  (the engine tests' block-by-block player)

SR = 48000
HOP = 128
FRAME_MS = 1000.0 * HOP / SR

TRUE = Articulation(notes=40, fallback=False, attack_start_db=-30.0, attack_peak_db=3.0, attack_ms=150.0,
                    attack_shape=2.0, decay_ms=100.0, sustain_slope_db_per_s=-2.0, release_db_per_s=80.0,
                    vibrato_hz=5.5, vibrato_cents=20.0, vibrato_delay_ms=300.0, tremolo_hz=5.5, tremolo_db=1.0,
                    level_quantiles=(0.0, 0.5, 1.0), level_db=(-40.0, -30.0, -20.0))


@pytest.fixture(autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def synthetic_file(art: Articulation, velocities, rng, held_ms: float = 1200.0, note0: int = 55,
                   register_db_per_semitone: float = 0.0):
    """Frames of a phrase played by ``art`` (f0 Hz, voiced, loudness dB): notes separated by silences; each note
    ``register_db_per_semitone`` louder per semitone above MIDI 60."""
    f0, voiced, loudness = [], [], []
    silence = int(400.0 / FRAME_MS)
    for k, velocity in enumerate(velocities):
        ld, cents = note_curve(art, velocity, held_ms, FRAME_MS, tail_ms=500.0)
        note = note0 + (3 * k) % 12
        ld = ld + register_db_per_semitone * (note - 60)
        level = velocity_level_db(art, velocity)
        f0 += [np.full(silence, 100.0), 440.0 * 2.0 ** ((note - 69.0 + cents / 100.0) / 12.0)]
        loudness += [np.full(silence, -90.0) + rng.normal(0, 0.3, silence), ld]
        voiced += [np.zeros(silence, bool), ld > level - 35.0]
    return np.concatenate(f0), np.concatenate(voiced), np.concatenate(loudness)


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(0)
    return [synthetic_file(TRUE, rng.integers(20, 128, 8), rng) for _ in range(5)]


# ---------------------------------------------------------------------------------------------- fitting
def test_segmentation_finds_fresh_notes_and_legato_transitions():
    n = int(3000.0 / FRAME_MS)
    t = np.arange(n)
    midi = np.where(t < n // 2, 60.0, 62.0)                 # a legato step in the middle of one voiced run
    loudness = np.full(n, -20.0)
    loudness[:5], loudness[-5:] = -90.0, -90.0
    voiced = loudness > -50.0
    notes = segment_notes(440.0 * 2.0 ** ((midi - 69.0) / 12.0), voiced, loudness, FRAME_MS)
    assert [(round(x.midi), x.fresh) for x in notes] == [(60, True), (62, False)]
    assert notes[1].previous_midi == pytest.approx(60.0) and abs(notes[1].start - n // 2) <= 2


def test_fit_recovers_a_known_articulation(corpus):
    art = fit_articulation(corpus, FRAME_MS, log=lambda *a: None)
    assert art.notes == 40 and not art.fallback
    assert art.attack_ms == pytest.approx(TRUE.attack_ms, rel=0.35)
    assert art.attack_peak_db == pytest.approx(TRUE.attack_peak_db, abs=1.0)
    assert art.release_db_per_s == pytest.approx(TRUE.release_db_per_s, rel=0.3)
    assert art.vibrato_hz == pytest.approx(TRUE.vibrato_hz, abs=0.3)
    assert art.vibrato_cents == pytest.approx(TRUE.vibrato_cents, rel=0.3)
    assert art.tremolo_db == pytest.approx(TRUE.tremolo_db, rel=0.4)
    assert art.vibrato_delay_ms == pytest.approx(TRUE.vibrato_delay_ms, abs=200.0)
    # (velocities under ~50 play below TRUE's softest level, at a quarter of the slope: down to -43 dB)
    assert art.level_db[0] >= -45.0 and art.level_db[-1] <= -19.0 and art.level_db[-1] - art.level_db[0] > 10.0
    assert list(art.level_db) == sorted(art.level_db)


def test_the_attack_is_fitted_from_notes_that_begin_in_silence():
    """Notes 150 ms after the previous one's note-off (unvoiced in between) start on its release tail, about
    12 dB under their level, not where the instrument's attack starts: the attack comes from the notes after
    silence (the first of each file)."""
    rng = np.random.default_rng(1)
    files = []
    held, gap = int(700.0 / FRAME_MS), int(150.0 / FRAME_MS)
    for _ in range(6):
        at = int(400.0 / FRAME_MS)
        power = np.full(at + 5 * (held + gap) + int(1000.0 / FRAME_MS), 1e-9)
        voiced = np.zeros(len(power), bool)
        for velocity in rng.integers(60, 120, 5):
            ld, _ = note_curve(TRUE, velocity, 700.0, FRAME_MS, tail_ms=1000.0)
            power[at:at + len(ld)] += 10.0 ** (ld / 10.0)
            voiced[at:at + held] = True
            at += held + gap
        loudness = 10.0 * np.log10(power) + rng.normal(0, 0.2, len(power))
        files.append((np.full(len(power), 220.0), voiced, loudness))
    notes = [n for f0, v, ld in files for n in segment_notes(f0, v, ld, FRAME_MS)]
    assert len(notes) == 30 and all(n.fresh for n in notes)
    assert np.median([files[0][2][n.start] - n.level_db for n in notes[1:5]]) > -16.0     # on the tail
    art = fit_articulation(files, FRAME_MS, log=lambda *a: None)
    assert art.attack_start_db == pytest.approx(TRUE.attack_start_db, abs=4.0)
    assert art.attack_ms == pytest.approx(TRUE.attack_ms, rel=0.35)


# An attack that jumps most of the way in its first ~20 ms, then settles over ~300 ms (a bowed or blown note
# after silence: the cello, violin and trumpet corpora); one shape alone misses its first 10-30 ms by 4-7 dB.
JUMP = replace(TRUE, attack_peak_db=0.0, attack_ms=400.0, attack_shape=3.0, attack_fast_fraction=0.6,
               attack_fast_shape=60.0, sustain_slope_db_per_s=0.0)


def test_the_fit_searches_the_engine_s_own_attack_curve():
    t_ms = np.arange(0.0, 800.0, FRAME_MS)
    for art in (TRUE, JUMP, replace(JUMP, attack_ms=30.0, decay_ms=50.0, attack_peak_db=4.0)):
        engine = [held_level_db(replace(art, sustain_slope_db_per_s=0.0), t, art.attack_start_db) for t in t_ms]
        fitted = attack_curves(t_ms, art.attack_start_db, art.attack_peak_db, art.decay_ms, art.attack_ms,
                               art.attack_shape, art.attack_fast_fraction, art.attack_fast_shape)
        np.testing.assert_allclose(fitted, engine, atol=1e-9)


def test_fit_recovers_an_attack_that_jumps_then_settles():
    rng = np.random.default_rng(2)
    files = [synthetic_file(JUMP, rng.integers(60, 120, 6), rng) for _ in range(3)]
    art = fit_articulation(files, FRAME_MS, log=lambda *a: None)
    assert art.attack_fast_fraction > 0.0
    t_ms = np.arange(0.0, 600.0, FRAME_MS)
    # (note_curve's first frame is one frame after the note-on, where the fit's curve starts)
    true = np.array([held_level_db(JUMP, t + FRAME_MS, JUMP.attack_start_db) for t in t_ms])
    fitted = np.array([held_level_db(art, t, art.attack_start_db) for t in t_ms])
    one_part = replace(art, attack_fast_fraction=0.0)
    assert np.abs(fitted - true).max() < 2.0 and np.abs(fitted - true).mean() < 1.0
    assert np.abs(np.array([held_level_db(one_part, t, art.attack_start_db) for t in t_ms]) - true).max() > 4.0
    # the level only rises to the peak (both parts fall from 1 to 0 over the attack)
    assert np.all(np.diff(fitted[t_ms < art.attack_ms]) >= -1e-9)


def test_fit_reads_the_legato_glide_time():
    """Legato steps of 2-7 semitones, each a straight line in pitch over 60 ms (what the engine plays over
    legato_ms), in one voiced run: the fit reads 60 ms, whatever the interval."""
    glide_ms, held_ms = 60.0, 400.0
    midi = [np.full(int(held_ms / FRAME_MS), 57.0)]
    for step in (2, 5, -3, 7, -4, 3):
        start = midi[-1][-1]
        midi.append(np.linspace(start, start + step, int(glide_ms / FRAME_MS) + 1)[1:])
        midi.append(np.full(int(held_ms / FRAME_MS), start + step))
    midi = np.concatenate(midi)
    loudness = np.full(len(midi), -20.0)
    loudness[:5] = loudness[-5:] = -90.0
    f0 = 440.0 * 2.0 ** ((midi - 69.0) / 12.0)
    notes = segment_notes(f0, loudness > -50.0, loudness, FRAME_MS)
    assert sum(not n.fresh for n in notes) == 6
    art = fit_articulation([(f0, loudness > -50.0, loudness)], FRAME_MS, log=lambda *a: None)
    assert art.legato_ms == pytest.approx(glide_ms, abs=3 * FRAME_MS)


def test_too_few_notes_is_said_and_falls_back(corpus):
    messages = []
    few = [(f0[:3000], v[:3000], ld[:3000]) for f0, v, ld in corpus[:1]]
    art = fit_articulation(few, FRAME_MS, log=messages.append)
    assert 0 < art.notes < MIN_NOTES and art.fallback
    assert any("fewer than" in m for m in messages)
    assert fit_articulation([(np.full(100, 100.0), np.zeros(100, bool), np.full(100, -90.0))], FRAME_MS,
                            log=messages.append).notes == 0


# ---------------------------------------------------------------------------------------------- storage
def test_articulation_round_trips_in_a_version_5_file(tmp_path):
    b = random_bundle(seed=0)
    b.expression = TRUE
    loaded = load_bundle(save_bundle(tmp_path / "m.sdga", b))
    assert loaded.expression == TRUE and "expression" not in loaded.metadata
    b.expression = PITCHED
    assert load_bundle(save_bundle(tmp_path / "p.sdga", b)).expression == PITCHED
    with pytest.raises(ValueError):
        Articulation(level_quantiles=(0.0, 1.0), level_db=(-10.0, -20.0))
    with pytest.raises(ValueError, match="one row"):            # a table that does not match its axes
        replace(PITCHED, level_input_by_pitch_db=PITCHED.level_input_by_pitch_db[:-1])
    with pytest.raises(ValueError, match="must not fall"):
        replace(PITCHED, level_input_by_pitch_db=(0.0, -1.0) + PITCHED.level_input_by_pitch_db[2:])
    # a version-4 record (a one-part attack) still reads, and plays as it did
    record = {k: v for k, v in JUMP.to_dict().items() if k not in ("attack_fast_fraction", "attack_fast_shape")}
    assert Articulation.from_dict(record) == replace(JUMP, attack_fast_fraction=0.0, attack_fast_shape=1.0)
    b.expression = JUMP
    assert load_bundle(save_bundle(tmp_path / "j.sdga", b)).expression == JUMP
    with pytest.raises(ValueError, match="attack_fast_fraction"):
        replace(JUMP, attack_fast_fraction=1.5)
    # a version-3 record (no per-pitch calibration) still reads
    record = {k: v for k, v in PITCHED.to_dict().items()
              if k not in ("calibration_midi", "calibration_level_db", "level_input_by_pitch_db")}
    assert Articulation.from_dict(record) == replace(PITCHED, calibration_midi=(), calibration_level_db=(),
                                                    level_input_by_pitch_db=())


# A calibration that asks the decoder for 6 dB more at MIDI 48 than at MIDI 72 (and 2 dB more at every level
# below -40 dB, as a decoder that falls faster than its input in a tail would): rows over output levels.
PITCHED = replace(TRUE, calibration_midi=(48.0, 72.0), calibration_level_db=(-60.0, -40.0, -20.0),
                  level_input_by_pitch_db=(-52.0, -34.0, -14.0, -58.0, -40.0, -20.0))


def test_fit_finds_the_register_and_takes_it_out_of_the_velocity_levels(corpus):
    """Notes played at 90-110 (a narrow dynamic), 0.4 dB louder per semitone: the line is found; at random
    velocities 20-127 over a flat register the chance correlation (0.38 dB per semitone over 40 notes) is not
    taken for one."""
    rng = np.random.default_rng(0)
    sloped = [synthetic_file(TRUE, rng.integers(90, 111, 8), rng, register_db_per_semitone=0.4) for _ in range(8)]
    flat, art = fit_articulation(corpus, FRAME_MS, log=lambda *a: None), fit_articulation(sloped, FRAME_MS,
                                                                                           log=lambda *a: None)
    assert art.level_db_per_semitone == pytest.approx(0.4, abs=0.1)
    assert flat.level_db_per_semitone == 0.0
    # the velocity levels with the register out: velocities 90-110 span 3.5 dB, not 3.5 + 0.4 x 9 semitones
    assert art.level_db[-1] - art.level_db[0] < 5.0
    # played: a note 6 semitones up is 0.4 * 6 dB louder at the same velocity
    up = velocity_output_db(art, 100, pitch_midi=art.level_reference_midi + 6.0)
    assert up - velocity_output_db(art, 100, pitch_midi=art.level_reference_midi) == pytest.approx(
        6.0 * art.level_db_per_semitone)
    assert velocity_output_db(art, 100) == velocity_output_db(art, 100, pitch_midi=art.level_reference_midi)


def test_velocity_follows_the_midi_curve_from_the_corpus_loudest_notes_at_ff():
    top, floor = TRUE.level_db[-1], TRUE.level_db[0]
    # the corpus's loudest notes at ff (velocity 112); fff (127) on the same curve past them
    assert velocity_output_db(TRUE, LOUDEST_NOTE_VELOCITY) == pytest.approx(top)
    assert velocity_output_db(TRUE, 127) == pytest.approx(top + 40.0 * np.log10(127 / 112))
    # 40 dB per decade of velocity (GM2: gain ~ velocity squared), then a quarter of that under the softest
    assert velocity_output_db(TRUE, 112 / 10 ** 0.25) == pytest.approx(top - 10.0)
    v_floor = 112 * 10 ** ((floor - top) / VELOCITY_DB_PER_DECADE)
    assert velocity_output_db(TRUE, v_floor / 10) == pytest.approx(floor - 0.25 * VELOCITY_DB_PER_DECADE)
    levels = [velocity_output_db(TRUE, v) for v in range(1, 128)]
    assert all(b > a for a, b in zip(levels, levels[1:]))
    assert velocity_output_db(TRUE, 30, sensitivity=0.0) == pytest.approx(top)
    assert velocity_output_db(TRUE, 0) == velocity_output_db(TRUE, 1)


def test_the_per_pitch_calibration_interpolates_over_pitch_and_level():
    assert output_input_db(PITCHED, -40.0, 48.0) == pytest.approx(-34.0)
    assert output_input_db(PITCHED, -40.0, 72.0) == pytest.approx(-40.0)
    assert output_input_db(PITCHED, -40.0, 60.0) == pytest.approx(-37.0)
    assert output_input_db(PITCHED, -30.0, 60.0) == pytest.approx(-27.0)
    assert output_input_db(PITCHED, -50.0, 30.0) == pytest.approx(-43.0)      # below the lowest pitch: its row
    assert output_input_db(PITCHED, -70.0, 72.0) == pytest.approx(-68.0)      # 1:1 past the table's ends
    assert output_input_db(PITCHED, -10.0, 72.0) == pytest.approx(-10.0)
    assert output_input_db(PITCHED, -30.0) == output_input_db(replace(PITCHED, calibration_midi=(),
                                                                      calibration_level_db=(),
                                                                      level_input_by_pitch_db=()), -30.0)


def test_the_voice_bank_maps_every_frame_through_the_calibration():
    """Learned: the decoder's loudness each frame is the note's output level plus its envelope, through the
    calibration at the voice's pitch (not the note level's input plus the envelope: a decoder's gain differs
    over its levels, most in a release tail)."""
    plain, pitched = random_bundle(seed=0), random_bundle(seed=0)
    plain.expression, pitched.expression = TRUE, PITCHED
    script = [(0, NoteOn(60, 100)), (20000, NoteOff(60))]
    frames = {}
    for name, b in (("plain", plain), ("pitched", pitched)):
        engine = make_engine(b, block=HOP, voices=1, vibrato_depth=0.0)
        out = []
        render(engine, script, 40000, frames=out)
        frames[name] = np.array([f[1][0] for f in out])
    sounding = frames["plain"] > -100.0
    expected = np.array([output_input_db(PITCHED, x, 60.0) for x in frames["plain"][sounding]])
    assert np.allclose(frames["pitched"][sounding], expected, atol=1e-4)
    assert (frames["pitched"][sounding] - frames["plain"][sounding]).max() > 4.0     # the tail gets its +5 dB


def _as_version_2(path, bundle: ModelBundle) -> None:
    tensors = {f"decoder.{k}": v for k, v in bundle.decoder.state_dict().items()}
    metadata = {"model_config": bundle.config.to_dict(), "latents": [l.to_dict() for l in bundle.latents],
                "corpus": bundle.corpus.to_dict(), "training": {}}
    saved = modelfile.FORMAT_VERSION
    modelfile.FORMAT_VERSION = 2
    try:
        save_model_file(path, tensors, metadata)
    finally:
        modelfile.FORMAT_VERSION = saved


def test_a_version_2_file_loads_and_plays_with_the_envelope(tmp_path):
    b = random_bundle(seed=0)
    _as_version_2(tmp_path / "v2.sdga", b)
    old = load_bundle(tmp_path / "v2.sdga")
    assert old.expression is None
    script = [(0, NoteOn(60, 100)), (9000, NoteOff(60))]
    out = render(make_engine(old), script, 24000)
    assert np.isfinite(out).all() and np.abs(out).max() > 1e-3
    envelope = b
    envelope.expression = TRUE
    np.testing.assert_array_equal(out, render(make_engine(envelope, expression="envelope"), script, 24000))


# ---------------------------------------------------------------------------------------------- playing
def make_engine(bundle, block: int = 128, voices: int = 3, **params) -> Engine:
    engine = Engine(bundle)
    engine.prepare(SR, block, voices)
    for name, value in params.items():
        engine.set_param(name, param_spec(name).choices.index(value) if isinstance(value, str) else value)
    return engine


@pytest.fixture(scope="module")
def learned_bundle():
    b = random_bundle(seed=0)
    b.expression = TRUE
    return b


SCRIPT = [(100, NoteOn(60, 90)), (3000, ControlChange(1, 100)), (7001, NoteOn(64, 40)), (15000, NoteOff(60)),
          (16333, NoteOn(60, 120)), (22000, NoteOff(64)), (26000, NoteOff(60))]


@pytest.mark.parametrize("block", [1, 37, 129, 500])
def test_learned_expression_streaming_equals_one_block(learned_bundle, block):
    reference = render(make_engine(learned_bundle, block=32000), SCRIPT, 32000)
    engine = make_engine(learned_bundle, block=block)
    out = render(engine, SCRIPT, 32000)
    assert engine.stats.errors == 0 and np.abs(reference).max() > 1e-3
    np.testing.assert_allclose(out, reference, atol=1e-5)


def held_frames(bundle, velocity: int, seconds: float = 1.5, **params):
    engine = make_engine(bundle, block=HOP, voices=1, **params)
    frames = []
    render(engine, [(0, NoteOn(60, velocity))], int(seconds * SR), frames=frames)
    pitch = np.array([f[0][0] for f in frames])
    loudness = np.array([f[1][0] for f in frames])
    return pitch, loudness


def test_velocity_stays_monotonic_in_loudness(learned_bundle):
    levels = [held_frames(learned_bundle, v, 0.8)[1][-100:].mean() for v in (1, 16, 32, 48, 64, 80, 96, 112, 127)]
    assert all(b > a for a, b in zip(levels, levels[1:]))
    assert levels[-1] - levels[0] > 5.0


def test_held_note_is_centred_on_its_pitch_and_vibrato_follows_its_amounts(learned_bundle):
    pitch, _ = held_frames(learned_bundle, 100, 2.0)
    late = pitch[len(pitch) // 2:]
    assert abs(100.0 * (late.mean() - 60.0)) < 5.0                       # vibrato centred
    depth = 100.0 * (late.max() - late.min()) / 2.0
    assert depth == pytest.approx(TRUE.vibrato_cents, rel=0.1)
    off, _ = held_frames(learned_bundle, 100, 2.0, vibrato_depth=0.0)
    assert np.abs(off[len(off) // 2:] - 60.0).max() < 1e-9
    engine = make_engine(learned_bundle, block=HOP, voices=1)
    frames = []
    render(engine, [(0, NoteOn(60, 100)), (0, ControlChange(1, 127))], 2 * SR, frames=frames)
    wheel = np.array([f[0][0] for f in frames])[len(frames) // 2:]
    assert 100.0 * (wheel.max() - wheel.min()) / 2.0 == pytest.approx(4 * TRUE.vibrato_cents, rel=0.1)


def test_time_scales_and_level_offset(learned_bundle):
    _, base = held_frames(learned_bundle, 100, 1.0, vibrato_depth=0.0)
    _, slow = held_frames(learned_bundle, 100, 1.0, vibrato_depth=0.0, attack_time_scale=2.0)
    _, louder = held_frames(learned_bundle, 100, 1.0, vibrato_depth=0.0, level_offset_db=6.0)
    t_base = np.argmax(base >= base.max() - 0.5)
    t_slow = np.argmax(slow >= slow.max() - 0.5)
    assert t_slow == pytest.approx(2 * t_base, rel=0.15)
    np.testing.assert_allclose(louder, base + 6.0)

    def release_frames(scale):
        engine = make_engine(learned_bundle, block=HOP, voices=1, release_time_scale=scale)
        frames = []
        render(engine, [(0, NoteOn(60, 100)), (SR // 2, NoteOff(60))], 2 * SR, frames=frames)
        active = np.array([f[1][0] > engine.silence_db for f in frames])
        return int(active.sum()) - SR // 2 // HOP
    assert release_frames(2.0) == pytest.approx(2 * release_frames(1.0), rel=0.1)


def test_learned_differs_from_the_envelope_and_switches_back(learned_bundle):
    _, learned = held_frames(learned_bundle, 100, 0.5)
    _, envelope = held_frames(learned_bundle, 100, 0.5, expression="envelope")
    plain = random_bundle(seed=0)
    _, adsr = held_frames(plain, 100, 0.5)
    np.testing.assert_array_equal(envelope, adsr)
    assert np.abs(learned - envelope).max() > 3.0


def test_levels_are_calibrated_to_what_the_model_sounds_at():
    """Velocity's note levels are output levels: the decoder inputs found make the model sound there (the
    untrained model only spans about -34..-26 dB, and at -33 dB in for -40 dB out: the input is not the output)."""
    from dataclasses import replace

    from instrument.model.offline import render_controls
    from training.expression import calibrate_levels
    from training.features import a_weighted_loudness_db

    b = random_bundle(seed=0)
    art = calibrate_levels(replace(TRUE, level_db=(-32.0, -29.0, -27.0)), b.decoder, 220.0, b.default_z().numpy())
    assert len(art.level_input_db) == len(TRUE.level_db) and list(art.level_input_db) == sorted(art.level_input_db)
    c = b.config
    n = int(0.6 * c.sample_rate / c.hop_size) + 1
    for target, given in zip(art.level_db, art.level_input_db):
        audio = render_controls(b.decoder, np.full(n, 220.0, np.float32), np.full(n, given, np.float32),
                                b.default_z().numpy(), seed=0)
        ld = a_weighted_loudness_db(audio, c.sample_rate, c.hop_size, 2048)
        assert float(np.median(ld[len(ld) // 2:])) == pytest.approx(target, abs=1.0)
    assert velocity_level_db(art, LOUDEST_NOTE_VELOCITY) == pytest.approx(art.level_input_db[-1])


def test_levels_are_calibrated_at_every_pitch_of_the_corpus_range():
    """The per-pitch rows: at a pitch of the range, the inputs found make the model sound at the table's levels
    over the corpus's note levels, and they differ from another pitch's (this untrained model is monotonic in
    its input only around 220 Hz, MIDI 57: it spans about -30..-25 dB at MIDI 45)."""
    from instrument.model.offline import render_controls
    from training.expression import calibrate_levels
    from training.features import a_weighted_loudness_db

    b = random_bundle(seed=0)
    art = calibrate_levels(replace(TRUE, level_db=(-32.0, -29.0, -27.0)), b.decoder, 220.0, b.default_z().numpy(),
                           f0_range_hz=(110.0, 220.0))
    assert art.calibration_midi[0] == pytest.approx(45.0) and art.calibration_midi[-1] == pytest.approx(57.0)
    assert len(art.level_input_by_pitch_db) == len(art.calibration_midi) * len(art.calibration_level_db)
    c = b.config
    n = int(0.6 * c.sample_rate / c.hop_size) + 1
    rows = [level for level in art.calibration_level_db if art.level_db[0] - 3.0 <= level <= art.level_db[-1]]
    assert len(rows) >= 2 and art.level_db[-1] in rows      # a row at the loudest note level, 3 dB apart
    for target in rows:
        given = output_input_db(art, target, 57.0)
        audio = render_controls(b.decoder, np.full(n, 220.0, np.float32), np.full(n, given, np.float32),
                                b.default_z().numpy(), seed=0)
        ld = a_weighted_loudness_db(audio, c.sample_rate, c.hop_size, 2048)
        assert float(np.median(ld[len(ld) // 2:])) == pytest.approx(target, abs=1.0)
    assert abs(output_input_db(art, -27.0, 45.0) - output_input_db(art, -27.0, 57.0)) > 3.0


def test_sdga_render_plays_the_learnt_expression_by_default(learned_bundle):
    import mido
    from instrument.apps.render import render_midi
    from instrument.engine.events import param_event

    track = mido.MidiTrack([mido.Message("note_on", note=60, velocity=90, time=0),
                            mido.Message("note_off", note=60, velocity=0, time=480)])
    midi = mido.MidiFile(ticks_per_beat=480)
    midi.tracks.append(track)
    default, engine = render_midi(learned_bundle, midi, SR, block_size=256)
    learned, _ = render_midi(learned_bundle, midi, SR, block_size=256,
                             initial_events=[param_event("expression", "learned")])
    envelope, _ = render_midi(learned_bundle, midi, SR, block_size=256,
                              initial_events=[param_event("expression", "envelope")])
    np.testing.assert_array_equal(default, learned)
    assert np.abs(default[:len(envelope)] - envelope[:len(default)]).max() > 1e-3
    assert len(default) >= SR // 2 + int(engine.voices.release_seconds * SR)      # the learnt release's tail


def test_legato_transitions_glide_over_the_learnt_time(learned_bundle):
    """Legato mode, no glide set: the pitch moves to the new note over the articulation's legato_ms, with no
    new attack; with glide_ms set, that time wins."""
    def glide_frames(**params):
        engine = make_engine(learned_bundle, block=HOP, voices=1, voice_mode=2.0, vibrato_depth=0.0, **params)
        frames = []
        render(engine, [(0, NoteOn(60, 100)), (SR // 2, NoteOn(67, 100))], SR, frames=frames)
        pitch = np.array([f[0][0] for f in frames])
        loudness = np.array([f[1][0] for f in frames])
        moving = np.flatnonzero((pitch > 60.01) & (pitch < 66.99))
        return len(moving) * FRAME_MS, loudness
    learnt_ms, loudness = glide_frames()
    assert learnt_ms == pytest.approx(TRUE.legato_ms, abs=2 * FRAME_MS)
    start = SR // 2 // HOP
    assert np.abs(np.diff(loudness[start - 2:start + 20])).max() < 0.5            # no new attack
    assert glide_frames(glide_ms=200.0)[0] == pytest.approx(200.0, abs=2 * FRAME_MS)
