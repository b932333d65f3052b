"""MPE through ``sdga-play`` on a private JACK dummy server: an MPE message stream from a JACK MIDI port (the
zone configured by the controller's own MPE configuration message, RPN 6), two held notes on two member
channels with two different bends and two different CC 74 values; both are measured in the recording."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import test_play  # noqa: E402
from test_play import SR, Keyboard, Player, cents, note_hz, notes_in, play_args, results  # noqa: E402

jack, model_path = test_play.jack, test_play.model_path          # its fixtures: the JACK dummy server, a model


def _bend(channel: int, semitones: float, bend_range: float = 48.0) -> list[int]:
    value = int(round(8192 + semitones / bend_range * 8192))
    return [0xE0 | channel, value & 0x7F, value >> 7]


def _spectrum(x: np.ndarray) -> tuple[np.ndarray, float]:
    n = 1 << (4 * len(x) - 1).bit_length()
    return np.abs(np.fft.rfft(x * np.hanning(len(x)), n)), SR / n


def _peak(mag: np.ndarray, bin_hz: float, f_hz: float, width: float = 0.03) -> tuple[float, float]:
    """(frequency, level dB) of the strongest bin within +-width of f_hz (parabolic interpolation)."""
    lo, hi = int(f_hz * (1 - width) / bin_hz), int(f_hz * (1 + width) / bin_hz) + 1
    k = lo + int(np.argmax(mag[lo:hi]))
    a, b, c = np.log(mag[k - 1:k + 2] + 1e-20)
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * bin_hz, float(20 * np.log10(mag[k] + 1e-20))


@pytest.mark.slow
def test_two_mpe_notes_keep_their_own_bend_and_timbre(jack, model_path, tmp_path):
    keys = Keyboard("sdga_test_mpe")
    try:
        player = Player(play_args(model_path, tmp_path, "--duration", "60", "--midi", "sdga_test_mpe", "--no-osc",
                                  "--param", "attack_ms=0", "--param", "decay_ms=0"), env=jack)
        player.wait_for("sdga-play: playing", timeout=120)
        for cc, value in ((101, 0), (100, 6), (6, 15)):     # MPE configuration: lower zone, 15 member channels
            keys.send(0xB0, cc, value)
        for take, timbre_b in enumerate((0, 127)):
            keys.send(0xB1, 74, 0)                      # note A, channel 2: CC 74 at 0, +2 semitones
            keys.send(*_bend(1, 2.0))
            keys.send(0x91, 57, 100)
            keys.send(0xB2, 74, timbre_b)               # note B, channel 3: CC 74 at 0, then 127; -3 semitones
            keys.send(*_bend(2, -3.0))
            keys.send(0x92, 64, 100)
            time.sleep(2.0)
            keys.send(0x81, 57, 0)
            keys.send(0x82, 64, 0)
            time.sleep(1.2)
        player.process.send_signal(2)
        code = player.finish()
    finally:
        keys.close()
    assert code == 0, player.output
    audio, stats = results(tmp_path)
    assert np.isfinite(audio).all() and stats["engine_errors"] == 0 and stats["midi"]["malformed"] == 0
    takes = notes_in(audio)
    assert len(takes) == 2, (takes, player.output)
    f_a, f_b = note_hz(59), note_hz(61)                 # 57 + 2 and 64 - 3: the bends, each note its own
    levels = []
    for start, stop in takes:
        held = audio[int((start + 0.3) * SR):int((stop - 0.5) * SR)]
        assert len(held) > 0.8 * SR, takes
        mag, bin_hz = _spectrum(held)
        take = {}
        for name, f0 in (("a", f_a), ("b", f_b)):
            found = [_peak(mag, bin_hz, k * f0, 0.02) for k in (1, 2, 3, 4)]
            # each note at its bent pitch: the harmonics where the bend puts them, within 10 cents
            assert max(abs(cents(f, k * f0)) for k, (f, _) in zip((1, 2, 3, 4), found)) < 10.0, (name, found)
            take[name] = np.array([level for _, level in found])
        levels.append(take)
    change_a = np.abs(levels[1]["a"] - levels[0]["a"]).max()
    change_b = np.abs(levels[1]["b"] - levels[0]["b"]).max()
    assert change_b > 3.0 and change_a < 1.0, (levels, change_a, change_b)   # only note B's timbre moved
