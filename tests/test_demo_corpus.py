"""evaluation.demo_corpus: real fluidsynth renderings, deterministic phrases, reuse of existing files."""
from __future__ import annotations

import shutil

import mido
import numpy as np
import pytest
import soundfile as sf

from evaluation import demo_corpus
from training.corpus import load_corpus
from evaluation.demo_corpus import INSTRUMENTS, MANIFEST_NAME, main, make_demo_corpus, render_midi, write_phrase_midi

needs_fluidsynth = pytest.mark.skipif(shutil.which("fluidsynth") is None or not demo_corpus.FLUIDR3.is_file(),
                                      reason="fluidsynth / fluid-soundfont-gm not installed (scripts/setup.sh)")


def _notes(path):
    """(start_s, end_s, note, velocity) of every note in a MIDI file, plus the file length in seconds."""
    midi = mido.MidiFile(str(path))
    now, on, notes = 0.0, {}, []
    for msg in midi:  # iterating a MidiFile yields messages with time in seconds
        now += msg.time
        if msg.type == "note_on" and msg.velocity > 0:
            on[msg.note] = (now, msg.velocity)
        elif msg.type in ("note_off", "note_on"):
            start, velocity = on.pop(msg.note)
            notes.append((start, now, msg.note, velocity))
    return notes, midi.length


def test_instruments_table():
    for name, rng in {"violin": (40, 55, 88), "flute": (73, 60, 96), "cello": (42, 36, 72),
                      "clarinet": (71, 50, 89), "trumpet": (56, 55, 82)}.items():
        assert INSTRUMENTS[name] == rng
    for program, low, high in INSTRUMENTS.values():
        assert 0 <= program <= 127 and 0 <= low < high <= 127


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_phrase_is_monophonic_in_range(tmp_path, seed):
    program, low, high = INSTRUMENTS["cello"]
    path = tmp_path / "p.mid"
    write_phrase_midi(path, program, low, high, 10.0, np.random.default_rng(seed))
    notes, length_s = _notes(path)
    assert length_s == pytest.approx(10.0, abs=0.01)
    assert len(notes) >= 8
    for (s0, e0, *_), (s1, *_) in zip(notes, notes[1:]):
        assert e0 <= s1 + 1e-9  # never two notes at once
    for start, end, note, velocity in notes:
        assert low <= note <= high and 50 <= velocity <= 120 and end <= 10.0 + 1e-9
    lengths = [end - start for start, end, *_ in notes[:-1]]  # the last one may be cut at the phrase end
    assert min(lengths) >= 0.2 - 1e-3 and max(lengths) <= 1.2 + 1e-3
    assert len({n for *_, n, _ in notes}) >= 3
    programs = [m.program for m in mido.MidiFile(str(path)) if m.type == "program_change"]
    assert programs == [program]


def test_phrase_is_deterministic(tmp_path):
    a, b, c = tmp_path / "a.mid", tmp_path / "b.mid", tmp_path / "c.mid"
    write_phrase_midi(a, 40, 55, 88, 5.0, np.random.default_rng(7))
    write_phrase_midi(b, 40, 55, 88, 5.0, np.random.default_rng(7))
    write_phrase_midi(c, 40, 55, 88, 5.0, np.random.default_rng(8))
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


@needs_fluidsynth
def test_demo_corpus_files_are_real_audio(demo_corpus_dir):
    import librosa

    paths = sorted(demo_corpus_dir.glob("*.wav"))
    assert [p.name for p in paths] == ["violin_000.wav", "violin_001.wav"]
    _, low, high = INSTRUMENTS["violin"]
    for path in paths:
        audio, sr = sf.read(str(path), dtype="float32")
        assert sr == 48000 and audio.ndim == 1
        assert 4.0 <= len(audio) / sr <= 5.5
        assert 20 * np.log10(np.max(np.abs(audio))) == pytest.approx(-1.0, abs=0.1)
        assert 20 * np.log10(np.sqrt(np.mean(audio**2))) > -30.0  # busy phrase, not mostly silence
        y = librosa.resample(audio, orig_sr=sr, target_sr=16000)
        f0_hz = librosa.yin(y, fmin=60, fmax=2000, sr=16000, frame_length=1024, hop_length=256)
        rms = librosa.feature.rms(y=y, frame_length=1024, hop_length=256)[0]
        n = min(len(f0_hz), len(rms))
        midi = librosa.hz_to_midi(f0_hz[:n][rms[:n] > 0.1 * rms.max()])
        assert len(midi) > 50
        assert low - 1 <= np.median(midi) <= high + 1
        assert np.mean((midi >= low - 1) & (midi <= high + 1)) > 0.8


@needs_fluidsynth
def test_demo_corpus_loads_without_skips(demo_corpus_dir):
    corpus = load_corpus(demo_corpus_dir, log=None)
    assert len(corpus.files) == 2 and corpus.skipped == []  # the manifest is hidden
    assert corpus.total_seconds > 8.0


@needs_fluidsynth
def test_second_call_reuses_files(demo_corpus_dir):
    before = {p: p.stat().st_mtime_ns for p in demo_corpus_dir.glob("*.wav")}
    paths = make_demo_corpus(demo_corpus_dir, instrument="violin", n_files=2, seconds_per_file=4.0, seed=0)
    assert sorted(paths) == sorted(before)
    assert {p: p.stat().st_mtime_ns for p in paths} == before
    assert (demo_corpus_dir / MANIFEST_NAME).is_file()


@needs_fluidsynth
def test_other_settings_replace_old_files(tmp_path):
    first = make_demo_corpus(tmp_path, instrument="flute", n_files=2, seconds_per_file=1.0, seed=3)
    assert all(p.is_file() for p in first)
    second = make_demo_corpus(tmp_path, instrument="flute", n_files=1, seconds_per_file=1.0, seed=3)
    assert sorted(p.name for p in tmp_path.glob("*.wav")) == [second[0].name] == ["flute_000.wav"]
    third = make_demo_corpus(tmp_path, instrument="cello", n_files=1, seconds_per_file=1.0, seed=3)
    assert sorted(p.name for p in tmp_path.glob("*.wav")) == [third[0].name] == ["cello_000.wav"]


def test_unknown_instrument():
    with pytest.raises(ValueError, match="violin"):
        make_demo_corpus("unused", instrument="kazoo")


def test_render_errors_are_clear(tmp_path, monkeypatch):
    midi = tmp_path / "p.mid"
    write_phrase_midi(midi, 40, 55, 88, 1.0, np.random.default_rng(0))
    with pytest.raises(RuntimeError, match="apt-get install fluidsynth fluid-soundfont-gm"):
        render_midi(midi, tmp_path / "x.wav", soundfont=tmp_path / "missing.sf2")
    monkeypatch.setattr(demo_corpus.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="scripts/setup.sh"):
        render_midi(midi, tmp_path / "x.wav")


@needs_fluidsynth
def test_render_failure_reports_stderr(tmp_path):
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"not midi")
    with pytest.raises(RuntimeError, match="fluidsynth"):
        render_midi(bad, tmp_path / "x.wav")


@needs_fluidsynth
def test_cli(tmp_path, capsys):
    assert main([str(tmp_path / "out"), "--instrument", "clarinet", "--files", "1", "--seconds", "1"]) == 0
    out = capsys.readouterr().out
    assert "clarinet_000.wav" in out and (tmp_path / "out" / "clarinet_000.wav").is_file()
