"""sdga-train --check: the corpus report and its warnings, on real fluidsynth renders (a monophonic violin
phrase, a chord progression, drums) and on noise, clipping, DC and a 2 s corpus."""
from __future__ import annotations

import shutil
from pathlib import Path

import mido
import numpy as np
import pytest
import soundfile as sf

from training.check import check_corpus, format_check
from training.corpus import load_corpus, source_clipped_samples
from training.features import FeatureSettings, extract_corpus_features

needs_fluidsynth = pytest.mark.skipif(shutil.which("fluidsynth") is None
                                      or not Path("/usr/share/sounds/sf2/FluidR3_GM.sf2").is_file(),
                                      reason="fluidsynth / fluid-soundfont-gm not installed (scripts/setup.sh)")

HOP = 128


def _check(folder: Path, cache: Path):
    corpus = load_corpus(folder, log=None)
    features = extract_corpus_features([f.audio for f in corpus.files], FeatureSettings(hop_size=HOP), cache,
                                       n_jobs=1, progress=False)
    return check_corpus(corpus, features, HOP)


def _names(check) -> set[str]:
    return {w.split(":")[0] for w in check.warnings}


def _render(path: Path, notes: list[tuple[float, float, tuple[int, ...]]], program: int = 0, channel: int = 0):
    """A MIDI file of (start s, end s, notes) rendered by fluidsynth to ``path`` (120 bpm: 960 ticks a second)."""
    from evaluation.demo_corpus import render_midi

    events = []
    for start, end, chord in notes:
        for n in chord:
            events.append((int(start * 960), 1, mido.Message("note_on", channel=channel, note=n, velocity=90)))
            events.append((int(end * 960), 0, mido.Message("note_off", channel=channel, note=n, velocity=64)))
    track = mido.MidiTrack()
    track.append(mido.MetaMessage("set_tempo", tempo=500_000, time=0))
    if channel != 9:
        track.append(mido.Message("program_change", channel=channel, program=program, time=0))
    now = 0
    for tick, _, msg in sorted(events, key=lambda e: (e[0], e[1])):
        track.append(msg.copy(time=tick - now))
        now = tick
    midi = mido.MidiFile(type=0, ticks_per_beat=480)
    midi.tracks.append(track)
    midi_path = path.with_suffix(".mid")
    midi.save(str(midi_path))
    render_midi(midi_path, path)
    midi_path.unlink()


@pytest.mark.slow
@needs_fluidsynth
def test_monophonic_minute_of_violin_has_no_warning(tmp_path, capsys):
    from evaluation.demo_corpus import make_demo_corpus
    from training.cli import train_main

    make_demo_corpus(tmp_path / "violin", instrument="violin", n_files=5, seconds_per_file=14.0, seed=1)
    check = _check(tmp_path / "violin", tmp_path / "cache")
    assert check.total_s >= 60.0
    assert check.warnings == (), format_check(check)
    assert check.pitched_fraction > 0.75 and check.polyphonic_fraction < 0.25
    assert check.f0_range_hz is not None and 180.0 < check.f0_range_hz[0] < check.f0_range_hz[1] < 1400.0
    # the command line prints the same report and exits 0 (the features come from the cache now)
    assert train_main([str(tmp_path / "violin"), "--check", "--cache-dir", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "corpus check: 5 files" in out and "no warnings" in out and "pitch range" in out


@needs_fluidsynth
def test_chord_progression_is_polyphonic(tmp_path):
    chords = [(60, 64, 67), (57, 60, 64), (53, 57, 60), (55, 59, 62)]
    (tmp_path / "c").mkdir()
    _render(tmp_path / "c" / "piano.wav", [(i, i + 0.95, chords[i % 4]) for i in range(8)], program=0)
    _render(tmp_path / "c" / "strings.wav", [(i, i + 0.95, chords[i % 4]) for i in range(8)], program=48)
    check = _check(tmp_path / "c", tmp_path / "cache")
    assert "polyphonic" in _names(check), format_check(check)
    assert check.polyphonic_fraction > 0.8
    assert not {"unpitched", "percussive"} & _names(check)
    warning = next(w for w in check.warnings if w.startswith("polyphonic"))
    assert "%" in warning and "one line at a time" in warning


@needs_fluidsynth
def test_drums_are_percussive(tmp_path):
    (tmp_path / "d").mkdir()
    kit = (36, 38, 42, 42)
    _render(tmp_path / "d" / "drums.wav", [(i * 0.25, i * 0.25 + 0.1, (kit[i % 4],)) for i in range(32)],
            channel=9)
    check = _check(tmp_path / "d", tmp_path / "cache")
    assert "percussive" in _names(check), format_check(check)
    assert "polyphonic" not in _names(check)
    assert check.percussive_fraction > 0.9


def test_noise_is_unpitched_and_two_seconds_are_too_short(tmp_path):
    (tmp_path / "n").mkdir()
    noise = np.random.default_rng(0).standard_normal(48000 * 2).astype(np.float32) * 0.2
    sf.write(tmp_path / "n" / "noise.wav", noise, 48000)
    check = _check(tmp_path / "n", tmp_path / "cache")
    assert {"unpitched", "too short"} <= _names(check), format_check(check)
    assert "polyphonic" not in _names(check)
    assert check.noisy_fraction > 0.9 and check.f0_range_hz is None
    assert "2.0 s of sound" in next(w for w in check.warnings if w.startswith("too short"))


def test_clipping_dc_and_low_sample_rate_are_reported(tmp_path):
    (tmp_path / "c").mkdir()
    t = np.arange(22050 * 3) / 22050
    tone = np.sin(2 * np.pi * 220.0 * t)
    sf.write(tmp_path / "c" / "clipped.wav", np.clip(1.5 * tone, -1, 1) * 0.5, 22050, subtype="PCM_16")
    sf.write(tmp_path / "c" / "dc.wav", 0.5 * tone + 0.05, 22050, subtype="PCM_16")
    check = _check(tmp_path / "c", tmp_path / "cache")
    names = _names(check)
    assert {"clipping", "DC offset", "sample rates"} <= names, format_check(check)
    clipped = {f.name: f.clipped_samples for f in check.files}
    assert clipped["dc.wav"] == 0 and clipped["clipped.wav"] > 1000
    assert "+0.050" in next(w for w in check.warnings if w.startswith("DC offset"))
    assert "22050 Hz x2" in next(w for w in check.warnings if w.startswith("sample rates"))


def test_clipped_samples_counts_flat_tops_only():
    t = np.arange(48000) / 48000
    sine = np.round(np.sin(2 * np.pi * 50.0 * t) * 32767) / 32767   # 16-bit, slow: the peak holds 1-3 samples
    assert source_clipped_samples(sine[:, None]) == 0
    clipped = np.clip(sine * 2, -1, 1) * 0.3                          # clipped, then turned down
    assert source_clipped_samples(clipped[:, None]) > 10000
    assert source_clipped_samples(np.zeros((100, 2))) == 0


def test_every_training_run_prints_the_check(tmp_path):
    from training.train import TrainConfig, prepare_data

    (tmp_path / "n").mkdir()
    t = np.arange(48000 * 2) / 48000
    sf.write(tmp_path / "n" / "tone.wav", 0.5 * np.sin(2 * np.pi * 330.0 * t), 48000)
    lines: list[str] = []
    prepare_data(TrainConfig(corpus_dir=tmp_path / "n", cache_dir=tmp_path / "cache", augment=False,
                             progress=False), log=lines.append)
    text = "\n".join(lines)
    assert "corpus check: 1 file" in text and "WARNING too short: 2.0 s" in text
