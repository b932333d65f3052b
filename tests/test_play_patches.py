"""Contract of patches, effects and learn in ``sdga-play``, run as a real subprocess on a private JACK dummy server
(the harness of tests/test_play.py): ``--patch`` sets the sound and its effects before the first block, OSC
``/sdga/patch/next`` glides to the next patch without a click, ``--save-patch`` writes what plays, ``--learn``
writes a binding into the ``--mapping`` file. The sound is judged from the recordings (``--record`` taps the
output after the effects)."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from instrument.model.bundle import load_bundle
from instrument.controls.mapping import parse_mapping
from instrument.controls.patches import load_patch

sys.path.insert(0, str(Path(__file__).parent))
from test_play import (ROOT, SR, Keyboard, Player, held_part, jack, model_path, notes_in,  # noqa: E402,F401
                       play_args, results, rms, segment, spectral_distance_db)

pytest.importorskip("pedalboard")

PLAIN, BREATH = ROOT / "patches" / "1-plain.yaml", ROOT / "patches" / "2-breath.yaml"
FRAME_S = 0.02


def flatness(x: np.ndarray, n_fft: int = 2048) -> float:
    """Spectral flatness (geometric / arithmetic mean of the average power spectrum, 100 Hz..12 kHz): near 0 for
    a harmonic tone, towards 1 for noise."""
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::n_fft // 2] * np.hanning(n_fft)
    power = (np.abs(np.fft.rfft(frames, axis=1)) ** 2).mean(axis=0)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / SR)
    band = power[(freqs >= 100) & (freqs <= 12000)] + 1e-20
    return float(np.exp(np.mean(np.log(band))) / np.mean(band))


def envelope(x: np.ndarray) -> np.ndarray:
    n = int(FRAME_S * SR)
    frames = x[:len(x) // n * n].reshape(-1, n)
    return np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))


def tail_s(audio: np.ndarray, span: tuple[float, float], held: np.ndarray, stop_s: float) -> float:
    """How long the sound stays above -40 dB of its held level after it has fallen below -6 dB (the release)."""
    level = rms(held)
    env = envelope(segment(audio, span[0], stop_s))
    release = np.flatnonzero(env >= 0.5 * level)[-1]
    return float((np.flatnonzero(env >= 0.01 * level)[-1] - release) * FRAME_S)


def osc_port(player: Player) -> int:
    return int(player.wait_for("OSC: listening on udp").rsplit(":", 1)[1].split()[0])


def oscsend(port: int, address: str, *args) -> None:
    from pythonosc.udp_client import SimpleUDPClient

    SimpleUDPClient("127.0.0.1", port).send_message(address, list(args))


# ---------------------------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def plain_then_breath(jack, model_path, tmp_path_factory):
    """``--patch 1-plain``: a note released (release 20 ms via --param), then a held note during which OSC
    ``/sdga/patch/next`` recalls 2-breath (500 ms glide); SIGINT ends it with ``--save-patch``."""
    tmp = tmp_path_factory.mktemp("plain_then_breath")
    player = Player(play_args(model_path, tmp, "--patch", str(PLAIN), "--param", "release_ms=20", "--osc-port", "0",
                              "--no-virtual-midi", "--save-patch", str(tmp / "saved.yaml")), env=jack)
    port = osc_port(player)
    player.wait_for("sdga-play: playing")
    oscsend(port, "/sdga/note_on", 57, 100)
    time.sleep(1.2)
    oscsend(port, "/sdga/note_off", 57)
    time.sleep(0.8)
    oscsend(port, "/sdga/note_on", 57, 100)
    time.sleep(1.2)
    oscsend(port, "/sdga/patch/next")
    player.wait_for("patch breath (1), glide 500 ms")
    time.sleep(2.0)
    player.process.send_signal(signal.SIGINT)
    assert player.finish() == 0, player.output
    audio, stats = results(tmp)
    return audio, stats, tmp, player.output


@pytest.fixture(scope="module")
def breath_at_start(jack, model_path, tmp_path_factory):
    """``--patch 2-breath`` (its model overridden by MODEL), release 20 ms via --param: a note, then 1.5 s of
    whatever the effects leave."""
    tmp = tmp_path_factory.mktemp("breath")
    player = Player(play_args(model_path, tmp, "--patch", str(BREATH), "--param", "release_ms=20", "--osc-port", "0",
                              "--no-virtual-midi"), env=jack)
    port = osc_port(player)
    player.wait_for("sdga-play: playing")
    oscsend(port, "/sdga/note_on", 57, 100)
    time.sleep(1.6)
    oscsend(port, "/sdga/note_off", 57)
    time.sleep(1.5)
    player.process.send_signal(signal.SIGINT)
    assert player.finish() == 0, player.output
    audio, stats = results(tmp)
    return audio, stats, player.output


def _plain_parts(audio: np.ndarray):
    notes = notes_in(audio, threshold=0.02)
    assert len(notes) == 2, notes
    first, second = notes
    plain = held_part(audio, first)
    after = segment(audio, len(audio) / SR - 1.0, len(audio) / SR - 0.05)    # the last second: breath, glided
    return notes, plain, after


# ---------------------------------------------------------------------------------------------- tests
def test_patch_at_start_sets_the_sound(plain_then_breath, breath_at_start):
    """``--patch 2-breath`` plays from the first note with the patch's latents, parameters and effects (--param on
    top), and sounds measurably noisier than ``--patch 1-plain``; the same patch recalled later over OSC lands on
    the same sound."""
    audio, stats, output = breath_at_start
    assert np.isfinite(audio).all() and stats["engine_errors"] == 0 and stats["hook_errors"] == 0
    assert stats["latents"]["z0"] == pytest.approx(0.15, abs=1e-3) and stats["latents"]["z3"] == pytest.approx(0.7, abs=1e-3)
    assert stats["effects"]["chain"] == ["highpass", "chorus", "reverb"]
    assert "patch breath (1), glide 0 ms" in output and "mappings/default.yaml" in output
    notes = notes_in(audio, threshold=0.02)
    assert len(notes) == 1, notes
    breath = segment(audio, notes[0][0] + 0.5, notes[0][0] + 1.4)            # after the 400 ms attack
    _, plain, after = _plain_parts(plain_then_breath[0])
    assert min(rms(breath), rms(plain), rms(after)) > 1e-3
    f_breath, f_plain, f_after = (np.log(flatness(x)) for x in (breath, plain, after))
    assert abs(f_breath - f_plain) > np.log(2.0), (f_breath, f_plain)
    assert abs(f_breath - f_after) < 0.5 * abs(f_breath - f_plain), (f_breath, f_after, f_plain)


def test_patch_effects_are_in_the_recording(plain_then_breath, breath_at_start):
    """With the same 20 ms release, the plain note (no effects) is gone within 0.15 s of its release while the
    breath note rings on in its reverb for more than 0.5 s: the effects run in the audio path, before the
    recording tap."""
    audio, _, _ = breath_at_start
    notes = notes_in(audio, threshold=0.02)
    breath_tail = tail_s(audio, notes[0], segment(audio, notes[0][0] + 0.5, notes[0][0] + 1.4), len(audio) / SR)
    plain_audio = plain_then_breath[0]
    (first, second), plain, _ = _plain_parts(plain_audio)
    plain_tail = tail_s(plain_audio, first, plain, second[0] - 0.05)
    assert plain_tail < 0.15 and breath_tail > 0.5, (plain_tail, breath_tail)
    # --record holds both channels of what is heard: the plain note's two channels are the same signal, the
    # breath patch's chorus and reverb make them differ
    stereo, _ = results(plain_then_breath[2], stereo=True)
    left, right = segment(stereo, first[0], first[1]).T
    np.testing.assert_array_equal(left, right)
    left, right = segment(stereo, len(stereo) / SR - 1.0, len(stereo) / SR - 0.05).T
    assert rms(left - right) > 0.05 * rms(left), (rms(left - right), rms(left))


def test_osc_patch_next_glides_without_a_click(plain_then_breath):
    """``/sdga/patch/next`` during a held note moves to 2-breath: the sound changes (timbre, effects), and the
    change neither steps from one sample to the next by more than 1.5x the largest step of the steady sounds on
    either side, nor jumps in level between 5 ms frames by more than theirs + 1.3 dB (an effects swap without
    its crossfade: -4.4 dB in one frame)."""
    audio, stats, _, output = plain_then_breath
    assert np.isfinite(audio).all() and stats["engine_errors"] == 0 and stats["hook_errors"] == 0
    assert stats["osc"]["errors"] == 0 and stats["effects"]["chain"] == ["highpass", "chorus", "reverb"]
    notes, plain, after = _plain_parts(audio)
    held = segment(audio, notes[1][0] + 0.3, len(audio) / SR - 0.05)          # the second note: change inside
    before = segment(audio, notes[1][0] + 0.3, notes[1][0] + 0.9)
    assert spectral_distance_db(before, after) > 3.0

    def steps(x: np.ndarray) -> float:
        return float(np.abs(np.diff(x)).max())

    def level_jumps(x: np.ndarray, n: int = int(0.005 * SR)) -> float:
        frames = x[:len(x) // n * n].reshape(-1, n)
        return float(np.abs(np.diff(np.log(np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))))).max())

    assert steps(held) <= 1.5 * max(steps(before), steps(after)), (steps(held), steps(before), steps(after))
    assert level_jumps(held) <= max(level_jumps(before), level_jumps(after)) + 0.15, \
        (level_jumps(held), level_jumps(before), level_jumps(after))


def test_save_patch_writes_the_sound_playing_at_exit(plain_then_breath, model_path):
    """``--save-patch`` writes a patch that loads back with the sound recalled last (breath's latents, parameters
    and effects) and the model it played."""
    _, _, tmp, output = plain_then_breath
    saved = tmp / "saved.yaml"
    assert f"saved the sound as {saved}" in output
    bundle = load_bundle(model_path, with_encoder=False)
    patch = load_patch(saved, bundle, require_model=True)
    breath = load_patch(BREATH, bundle)
    assert patch.model.resolve() == model_path.resolve()
    assert patch.effects == breath.effects
    for name in ("harmonic_gain_db", "noise_gain_db", "output_gain_db", "attack_ms", "release_ms"):
        assert patch.param(name) == pytest.approx(breath.param(name), abs=1e-3), name
    assert dict(patch.latents) == pytest.approx({**{i: 0.5 for i in range(8)}, **dict(breath.latents)}, abs=1e-3)


def test_learn_writes_a_binding_into_the_mapping_file(jack, model_path, tmp_path):
    """``--learn latent/1`` with ``--mapping FILE``: the first CC from a JACK MIDI port is bound (with its channel)
    and written into FILE, comments kept; the file loads back, and the CC already moves the latent, whose value
    goes out to ``--osc-feedback``."""
    import socket

    from pythonosc.osc_message import OscMessage

    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(5.0)
    mapping = tmp_path / "mine.yaml"
    mapping.write_text("version: 1\n# my knobs\nmappings:\n  - {cc: 20, target: latent/0}\n")
    keys = Keyboard("sdga_test_learn")
    try:
        player = Player(play_args(model_path, tmp_path, "--duration", "2", "--midi", "sdga_test_learn", "--no-osc",
                                  "--mapping", str(mapping), "--learn", "latent/1",
                                  "--osc-feedback", f"127.0.0.1:{listener.getsockname()[1]}"), env=jack)
        player.wait_for("learn latent/1: move")
        player.wait_for("sdga-play: playing")
        keys.send(0xB2, 21, 100)                   # CC 21 on channel 3 (2 from 0)
        player.wait_for("learned")
        code = player.finish()
    finally:
        keys.close()
    assert code == 0, player.output
    text = mapping.read_text()
    assert "# my knobs" in text and "{cc: 21, channel: 2, target: latent/1}" in text, text
    loaded = parse_mapping(mapping, load_bundle(model_path, with_encoder=False))
    assert [(b.source.number, b.source.channel, b.target.name) for b in loaded.bindings] == \
        [(20, None, "latent/0"), (21, 2, "latent/1")]
    _, stats = results(tmp_path)
    assert stats["latents"]["z1"] == pytest.approx(100 / 127, abs=1e-3)
    feedback = OscMessage(listener.recv(1024))
    listener.close()
    assert feedback.address == "/sdga/value/latent/1" and feedback.params == [pytest.approx(100 / 127, abs=1e-6)]


def test_learn_and_patch_refusals(model_path, tmp_path):
    """``--learn`` without ``--mapping``, and a ``--patch`` without MODEL that names no model, exit 2 before any
    device opens, saying what to give."""
    run = lambda *args: subprocess.run([sys.executable, "-m", "instrument.apps.play", *args], cwd=ROOT,  # noqa: E731
                                       capture_output=True, text=True, timeout=60)
    learn = run(str(model_path), "--learn", "latent/0", "--device", "no such device")
    assert learn.returncode == 2 and "give --mapping FILE" in learn.stderr, learn.stderr
    bare = tmp_path / "bare.yaml"
    bare.write_text("version: 1\nlatents: {0: 0.2}\n")
    patch = run("--patch", str(bare), "--device", "no such device")
    assert patch.returncode == 2 and "names no model" in patch.stderr, patch.stderr


def test_audio_callback_runs_effects_before_the_tap_and_plays_dry_when_they_fail():
    """The callback (called directly, no stream) runs the effects chain after the engine and before the tap (the
    tap sees a gain chain's -12 dB); a chain that raises is counted in hook_errors and the dry block plays."""
    from types import SimpleNamespace

    from instrument.model.bundle import random_bundle
    from instrument.engine.effects import EffectConfig, EffectsChain
    from instrument.engine.engine import Engine
    from instrument.engine.events import EventQueue, NoteOn
    from instrument.io.audio import AudioOutput

    class Broken:
        def process(self, block):
            block *= 0.5                      # half-done work must not reach the output
            raise RuntimeError("effect failed")

    def play(effects) -> tuple[np.ndarray, np.ndarray, AudioOutput]:
        engine = Engine(random_bundle(seed=0))
        engine.prepare(SR, 128, 2)
        queue = EventQueue()
        queue.push(NoteOn(57, 100))
        out, tapped = np.zeros((40 * 128, 2), np.float32), []
        audio = AudioOutput(engine, queue, channels=2, effects=effects, tap=lambda b: tapped.append(b[:, 0].copy()))
        for k in range(40):
            audio._callback(out[k * 128:(k + 1) * 128], 128, None, SimpleNamespace(output_underflow=False))
        return out, np.concatenate(tapped), audio

    dry, dry_tap, _ = play(None)
    chain = EffectsChain([EffectConfig.make("gain", {"gain_db": -12.0})])
    chain.prepare(SR, 128, 2)
    wet, wet_tap, _ = play(chain)
    assert rms(dry[:, 0]) > 1e-3 and np.array_equal(dry_tap, dry[:, 0])
    assert np.allclose(wet, dry * 10 ** (-12 / 20), atol=1e-6) and np.array_equal(wet_tap, wet[:, 0])
    broken, _, audio = play(Broken())
    assert audio.stats.hook_errors == 40 and np.array_equal(broken, dry)
