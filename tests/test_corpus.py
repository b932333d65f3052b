"""training.corpus: decoding any format to mono 48 kHz, trimming, normalising, skipping bad files with reasons."""
from __future__ import annotations

import hashlib
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from training.corpus import (
    AUDIO_EXTENSIONS, Corpus, CorpusError, format_summary, load_audio_file, load_corpus, note_name, scan_corpus,
)

SR = 48000


def _peak_hz(audio: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.argmax(spectrum) * sample_rate / len(audio))


def _write(path, audio, sample_rate=SR, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, sample_rate, **kwargs)
    return path


def test_extensions():
    assert AUDIO_EXTENSIONS == {".wav", ".flac", ".aif", ".aiff", ".ogg", ".oga", ".mp3"}


def test_single_file_corpus(sine_wav, tmp_path):
    path = sine_wav("corpus/a.wav", seconds=1.0, amplitude=0.3)
    corpus = load_corpus(tmp_path / "corpus", log=None)
    assert isinstance(corpus, Corpus) and corpus.sample_rate == SR and corpus.skipped == []
    (f,) = corpus.files
    assert f.path == path and f.sample_rate == SR and f.source_sample_rate == SR and f.source_channels == 1
    assert f.audio.dtype == np.float32 and f.audio.ndim == 1
    assert f.duration_s == pytest.approx(1.0, abs=0.01)
    assert corpus.total_seconds == pytest.approx(f.duration_s)
    assert f.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    assert np.max(np.abs(f.audio)) == pytest.approx(10 ** (-1 / 20), abs=1e-4)


def test_single_file_path_is_a_corpus(sine_wav):
    path = sine_wav("one.flac")
    assert [f.path for f in load_corpus(path, log=None).files] == [path]


def test_short_file_kept(sine_wav, tmp_path):
    sine_wav("c/short.wav", seconds=0.1)
    (f,) = load_corpus(tmp_path / "c", log=None).files
    assert f.duration_s == pytest.approx(0.1, abs=0.005)


@pytest.mark.parametrize("name, sample_rate, channels, subtype, tol_s", [
    ("i16_8k_stereo.wav", 8000, 2, "PCM_16", 0.005),
    ("i24_44k.wav", 44100, 1, "PCM_24", 0.005),
    ("i32_11k.wav", 11025, 1, "PCM_32", 0.005),
    ("f32_96k_6ch.wav", 96000, 6, "FLOAT", 0.005),
    ("f64_22k.wav", 22050, 2, "DOUBLE", 0.005),
    ("i16_22k.flac", 22050, 1, "PCM_16", 0.005),
    ("i24_32k.aiff", 32000, 2, "PCM_24", 0.005),
    ("vorbis_44k.ogg", 44100, 2, "VORBIS", 0.03),
    ("mp3_44k.mp3", 44100, 2, "MPEG_LAYER_III", 0.06),
])
def test_formats_come_out_mono_float32_48k(sine_wav, name, sample_rate, channels, subtype, tol_s):
    path = sine_wav(name, f_hz=330.0, seconds=1.5, sample_rate=sample_rate, channels=channels, subtype=subtype)
    audio, source_sr, source_channels = load_audio_file(path, SR)
    assert (source_sr, source_channels) == (sample_rate, channels)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) / SR == pytest.approx(1.5, abs=tol_s)
    assert _peak_hz(audio, SR) == pytest.approx(330.0, abs=2.0)
    (f,) = load_corpus(path, log=None).files
    assert f.audio.dtype == np.float32 and f.sample_rate == SR and f.source_channels == channels
    assert f.duration_s == pytest.approx(1.5, abs=tol_s + 0.01)


@pytest.mark.parametrize("ext, fmt", [(".aif", "AIFF"), (".oga", "OGG")])
def test_alternative_extensions(tmp_path, ext, fmt):
    t = np.arange(SR) / SR
    path = _write(tmp_path / f"x{ext}", 0.5 * np.sin(2 * np.pi * 440 * t), format=fmt,
                  subtype="VORBIS" if fmt == "OGG" else "PCM_16")
    (f,) = load_corpus(path, log=None).files
    assert f.duration_s == pytest.approx(1.0, abs=0.03)


def test_channels_are_averaged(tmp_path):
    t = np.arange(SR) / SR
    s = np.sin(2 * np.pi * 220 * t)
    path = _write(tmp_path / "lr.wav", np.stack([0.8 * s, 0.2 * s], axis=1), subtype="FLOAT")
    audio, _, channels = load_audio_file(path, SR)
    assert channels == 2
    np.testing.assert_allclose(audio, 0.5 * s, atol=1e-6)


needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


def _ffmpeg(*args):
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *map(str, args)], check=True)


@needs_ffmpeg
def test_mp3_made_by_ffmpeg(tmp_path):
    path = tmp_path / "lame.mp3"
    _ffmpeg("-f", "lavfi", "-i", "sine=f=440:d=1:sample_rate=44100", "-ac", "2", "-c:a", "libmp3lame", path)
    audio, source_sr, channels = load_audio_file(path, SR)
    assert (source_sr, channels) == (44100, 2)
    assert len(audio) / SR == pytest.approx(1.0, abs=0.06)
    assert _peak_hz(audio, SR) == pytest.approx(440.0, abs=2.0)


@needs_ffmpeg
def test_ffmpeg_fallback_for_what_libsndfile_refuses(tmp_path):
    path = tmp_path / "actually_aac.mp3"  # AAC in an mp4 container, misnamed: libsndfile refuses it
    _ffmpeg("-f", "lavfi", "-i", "sine=f=440:d=1:sample_rate=44100", "-c:a", "aac", "-f", "mp4", path)
    with pytest.raises(Exception):
        sf.info(str(path))
    audio, source_sr, channels = load_audio_file(path, SR)
    assert (source_sr, channels) == (44100, 1)
    assert len(audio) / SR == pytest.approx(1.0, abs=0.06)
    assert _peak_hz(audio, SR) == pytest.approx(440.0, abs=2.0)


def test_bad_files_skipped_with_reasons(sine_wav, tmp_path):
    good = sine_wav("c/good.wav")
    (tmp_path / "c" / "notes.txt").write_text("not audio")
    (tmp_path / "c" / "garbage.wav").write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp_path / "c" / "zero_bytes.flac").write_bytes(b"")
    _write(tmp_path / "c" / "no_samples.wav", np.zeros(0))
    _write(tmp_path / "c" / "nan.wav", np.full(1000, np.nan), subtype="FLOAT")
    messages = []
    corpus = load_corpus(tmp_path / "c", log=messages.append)
    assert [f.path for f in corpus.files] == [good]
    reasons = {s.path.name: s.reason for s in corpus.skipped}
    assert reasons["notes.txt"] == "not an audio file (.txt)"
    assert reasons["garbage.wav"].startswith("unreadable: ")
    assert reasons["zero_bytes.flac"] == "empty file (0 bytes)"         # said as such, not "unreadable: ..."
    assert reasons["no_samples.wav"] == "empty (0 samples)"
    assert reasons["nan.wav"].startswith("unreadable: ") and "NaN" in reasons["nan.wav"]
    assert len(messages) == 5 and all(m.startswith("skipped ") for m in messages)
    assert any(m == f"skipped {tmp_path / 'c' / 'notes.txt'}: not an audio file (.txt)" for m in messages)


def test_all_silent_corpus_raises_naming_files(tmp_path):
    _write(tmp_path / "c" / "zeros.wav", np.zeros(SR))
    _write(tmp_path / "c" / "hiss.wav", 2e-5 * np.random.default_rng(0).standard_normal(SR), subtype="FLOAT")
    with pytest.raises(CorpusError) as info:
        load_corpus(tmp_path / "c", log=None)
    message = str(info.value)
    assert "zeros.wav" in message and "hiss.wav" in message
    assert "silent (peak -inf dBFS)" in message and "silent (peak -" in message.split("hiss.wav")[1]


def test_missing_or_empty_folder_raises(tmp_path):
    with pytest.raises(CorpusError, match="not found"):
        load_corpus(tmp_path / "nope", log=None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="empty"):
        load_corpus(tmp_path / "empty", log=None)
    (tmp_path / "hidden_only").mkdir()
    (tmp_path / "hidden_only" / ".DS_Store").write_bytes(b"x")
    with pytest.raises(CorpusError, match="empty"):
        load_corpus(tmp_path / "hidden_only", log=None)


def test_trimming_removes_leading_and_trailing_silence(tmp_path):
    rng = np.random.default_rng(0)
    t = np.arange(SR) / SR
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    audio = np.concatenate([np.zeros(SR // 2), tone, np.zeros(int(0.7 * SR))])
    audio = audio + 1e-4 * rng.standard_normal(len(audio))  # a -80 dBFS noise floor
    path = _write(tmp_path / "padded.wav", audio, subtype="FLOAT")
    (f,) = load_corpus(path, log=None).files
    assert 0.999 <= f.duration_s <= 1.0 + 2 * 0.005 + 0.001  # the tone plus the 5 ms margins
    # the tone starts and ends within the 5 ms margin (+1 ms) of the edges
    assert np.max(np.abs(f.audio[: int(0.006 * SR)])) > 0.1 and np.max(np.abs(f.audio[-int(0.006 * SR):])) > 0.1


def test_click_is_too_short_after_trimming(tmp_path, sine_wav):
    sine_wav("c/ok.wav")
    click = np.zeros(SR)
    click[SR // 2] = 0.9
    _write(tmp_path / "c" / "click.wav", click)
    corpus = load_corpus(tmp_path / "c", log=None)
    (skipped,) = corpus.skipped
    assert skipped.path.name == "click.wav" and skipped.reason.startswith("too short after trimming silence (0.")


@pytest.mark.parametrize("peak_dbfs", [-1.0, -6.0, 0.0])
def test_normalisation_hits_peak_target(sine_wav, peak_dbfs):
    path = sine_wav(amplitude=0.05)
    (f,) = load_corpus(path, peak_dbfs=peak_dbfs, log=None).files
    assert 20 * np.log10(np.max(np.abs(f.audio))) == pytest.approx(peak_dbfs, abs=0.01)


def test_normalise_off_keeps_level(sine_wav):
    (f,) = load_corpus(sine_wav(amplitude=0.25), normalise=False, log=None).files
    assert np.max(np.abs(f.audio)) == pytest.approx(0.25, abs=1e-3)


def test_nested_folders_scanned_sorted_hidden_ignored(sine_wav, tmp_path):
    root = tmp_path / "c"
    expected = [sine_wav("c/b.wav"), sine_wav("c/a/z.wav"), sine_wav("c/a/deep/er/y.flac")]
    sine_wav("c/.hidden.wav")
    sine_wav("c/.git/x.wav")
    assert scan_corpus(root) == sorted(expected)
    assert sorted(f.path for f in load_corpus(root, log=None).files) == sorted(expected)


def test_many_short_files(tmp_path):
    t = np.arange(SR // 20) / SR
    for i in range(500):
        _write(tmp_path / "c" / f"{i:03d}.wav", 0.5 * np.sin(2 * np.pi * (200 + i) * t), subtype="PCM_16")
    corpus = load_corpus(tmp_path / "c", log=None)
    assert len(corpus.files) == 500 and corpus.total_seconds == pytest.approx(25.0, abs=0.5)


def test_note_name():
    assert note_name(440.0) == "A4"
    assert note_name(261.63) == "C4"
    assert note_name(27.5) == "A0"
    assert note_name(466.16) == "A#4"
    assert note_name(0.0) == "?"


def test_format_summary_mentions_everything(sine_wav, tmp_path):
    sine_wav("c/a.wav", sample_rate=44100, channels=2)
    sine_wav("c/b.wav")
    (tmp_path / "c" / "readme.txt").write_text("hi")
    corpus = load_corpus(tmp_path / "c", log=None)
    text = format_summary(corpus, f0_range_hz=(196.0, 1318.5))
    assert "2 files" in text and "min" in text
    assert "44100 Hz" in text and "48000 Hz" in text and "stereo" in text and "mono" in text
    assert "G3" in text and "E6" in text and "196.0" in text
    assert "readme.txt" in text and "not an audio file (.txt)" in text
    assert "pitch range" not in format_summary(corpus)
