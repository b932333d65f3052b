"""Contract of offline rendering (instrument.apps.render, the `sdga-render` entry point)."""
from __future__ import annotations

import math
import time

import mido
import numpy as np
import pytest
import soundfile as sf
import torch

from instrument.model.bundle import random_bundle, save_bundle
from instrument.apps.render import main, midi_file_events, render_midi
from test_engine import sine_bundle

SR = 48000
NOTES = [(57, 0.10, 0.50), (64, 0.60, 1.00), (69, 1.10, 1.50), (45, 1.60, 2.00)]   # (note, on s, off s)


@pytest.fixture(autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)




def write_midi(path, notes=NOTES, bpm: float = 120.0) -> None:
    """A one-track MIDI file of (note, on_s, off_s); ticks at 480 per beat."""
    ticks_per_beat = 480
    ticks_per_second = ticks_per_beat * bpm / 60.0
    timed = sorted([(on, "note_on", n) for n, on, _ in notes] + [(off, "note_off", n) for n, _, off in notes])
    midi = mido.MidiFile(ticks_per_beat=ticks_per_beat)
    track = mido.MidiTrack()
    track.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm), time=0))
    now = 0
    for seconds, kind, note in timed:
        tick = int(round(seconds * ticks_per_second))
        track.append(mido.Message(kind, note=note, velocity=100 if kind == "note_on" else 0, time=tick - now))
        now = tick
    midi.tracks.append(track)
    midi.save(str(path))


def pitch_hz(x: np.ndarray, sr: int) -> float:
    """Strongest spectral peak, Hann window, zero-padded x8, parabolic interpolation of the log magnitude."""
    n = 1 << (8 * len(x) - 1).bit_length()
    mag = np.abs(np.fft.rfft(x * np.hanning(len(x)), n))
    lo, hi = int(30 * n / sr), int(5000 * n / sr)
    k = lo + int(np.argmax(mag[lo:hi]))
    a, b, c = np.log(mag[k - 1:k + 2] + 1e-20)
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * sr / n


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("render")
    model, midi = root / "sine.sdga", root / "notes.mid"
    save_bundle(model, sine_bundle())
    write_midi(midi)
    return root, model, midi


@pytest.mark.parametrize("sample_rate", [None, 44100])
def test_rendered_notes_have_the_right_pitch(files, sample_rate):
    root, model, midi = files
    wav = root / f"out_{sample_rate}.wav"
    argv = [str(model), "--midi", str(midi), "-o", str(wav), "--block-size", "333", "--voices", "2"]
    if sample_rate:
        argv += ["--sample-rate", str(sample_rate)]
    assert main(argv) == 0
    audio, sr = sf.read(str(wav), dtype="float32")
    assert sr == (sample_rate or SR)
    assert audio.ndim == 1 and np.isfinite(audio).all()
    for note, on, off in NOTES:
        segment = audio[int((on + 0.15) * sr):int((off - 0.02) * sr)]
        expected = 440.0 * 2.0 ** ((note - 69) / 12)
        error_cents = 1200.0 * math.log2(pitch_hz(segment, sr) / expected)
        assert abs(error_cents) < 10.0, (note, error_cents)


def test_output_is_aligned_with_the_midi_and_block_independent(files):
    _, model_path, midi = files
    bundle = sine_bundle()
    a, engine = render_midi(bundle, midi, block_size=64, max_voices=2)
    b, _ = render_midi(bundle, midi, block_size=1000, max_voices=2)
    np.testing.assert_array_equal(a, b)
    assert int(np.flatnonzero(a)[0]) == round(NOTES[0][1] * SR)    # the control delay is trimmed
    release_s = 0.3
    assert len(a) == pytest.approx((NOTES[-1][2] + release_s + 0.25) * SR, abs=2)
    assert engine.stats.errors == 0


def test_render_is_faster_than_real_time(files):
    _, _, midi = files
    started = time.process_time()            # CPU time: other jobs on the machine do not count
    audio, _ = render_midi(random_bundle(), midi, block_size=512, max_voices=4)
    elapsed = time.process_time() - started
    assert len(audio) / SR > elapsed


def test_latent_option_changes_the_sound(files, tmp_path):
    _, _, midi = files
    model = tmp_path / "random.sdga"
    save_bundle(model, random_bundle(seed=3))
    outputs = []
    for knob in ("0", "1"):
        wav = tmp_path / f"z{knob}.wav"
        assert main([str(model), "--midi", str(midi), "-o", str(wav), "--latent", f"z0={knob}",
                     "--param", "release_ms=100", "--voices", "2"]) == 0
        outputs.append(sf.read(str(wav), dtype="float32")[0])
    assert len(outputs[0]) == len(outputs[1])
    assert np.abs(outputs[0] - outputs[1]).max() > 0.01


def test_bad_arguments_exit_with_a_message(files, tmp_path, capsys):
    _, model, midi = files
    out = str(tmp_path / "x.wav")
    assert main([str(model), "--midi", str(midi), "-o", out, "--latent", "nope=0.5"]) == 2
    assert "no latent named 'nope'" in capsys.readouterr().err
    assert main([str(model), "--midi", str(midi), "-o", out, "--latent", "z0=2"]) == 2
    assert main([str(model), "--midi", str(midi), "-o", out, "--param", "release_ms"]) == 2
    assert main([str(model), "--midi", str(tmp_path / "missing.mid"), "-o", out]) == 2
    assert main([str(tmp_path / "missing.sdga"), "--midi", str(midi), "-o", out]) == 2
    assert "sdga-render" in capsys.readouterr().err


def test_unreadable_or_empty_midi_files_say_why(files, tmp_path, capsys):
    """An empty or truncated file is refused with the reason (mido's EOFError has no message); a file with no
    notes renders silence with a warning."""
    _, model, midi = files
    out = tmp_path / "x.wav"
    data = midi.read_bytes()
    for name, content, why in [("empty.mid", b"", "is empty (0 bytes)"), ("cut.mid", data[:len(data) - 6], "ends early"),
                               ("header.mid", data[:10], "ends early")]:
        (tmp_path / name).write_bytes(content)
        assert main([str(model), "--midi", str(tmp_path / name), "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"cannot read {tmp_path / name}: " in err and why in err, err
    silent = tmp_path / "silent.mid"
    write_midi(silent, notes=[])
    assert main([str(model), "--midi", str(silent), "-o", str(out)]) == 0
    assert "has no notes" in capsys.readouterr().err
    assert out.exists()


def test_midi_file_events_honour_tempo(tmp_path):
    path = tmp_path / "slow.mid"
    write_midi(path, [(60, 1.0, 2.0)], bpm=60.0)
    events, length = midi_file_events(path, SR)
    assert [s for s, _ in events] == [SR, 2 * SR]
    assert length == 2 * SR


def test_offline_render_is_the_sum_of_its_parts_in_any_chunking():
    from instrument.model.offline import RenderedParts, render_controls, render_parts

    torch.set_num_threads(1)
    bundle = random_bundle(seed=5)
    n = 40
    f0, ld = np.full(n, 220.0, np.float32), np.linspace(-60.0, -20.0, n).astype(np.float32)
    z = bundle.default_z().numpy()
    parts = render_parts(bundle.decoder, f0, ld, z, seed=2)
    assert isinstance(parts, RenderedParts) and parts.harmonic.shape == parts.noise.shape == ((n - 1) * bundle.config.hop_size,)
    assert np.abs(parts.noise).max() > 0 and np.abs(parts.harmonic).max() > 0
    out = render_controls(bundle.decoder, f0, ld, z, seed=2)
    np.testing.assert_array_equal(out, parts.harmonic + parts.noise)
    np.testing.assert_allclose(render_controls(bundle.decoder, f0, ld, z, seed=2, chunk_frames=7), out, atol=1e-5)
    empty = render_parts(bundle.decoder, f0[:1], ld[:1], z)
    assert empty.harmonic.shape == empty.noise.shape == (0,) and render_controls(bundle.decoder, f0[:1], ld[:1], z).shape == (0,)
