"""Contract of the set list's engines (instrument.engine.setlist.SetEngine): a switch is an event in the block's
events, the outgoing song's held notes release, the crossfade is equal-power, continuous and lasts crossfade_ms,
and the callback allocates nothing that grows during a switch."""
from __future__ import annotations

import gc
import math
import tracemalloc

import numpy as np
import pytest
import torch

from instrument.engine.engine import Engine
from instrument.engine.events import LatentSet, NoteOff, NoteOn, SongSelect
from instrument.engine.setlist import SetEngine
from instrument.model.bundle import random_bundle

SR = 48000
BLOCK = 128


@pytest.fixture(autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def bundles():
    return random_bundle(seed=0), random_bundle(seed=3)


@pytest.fixture(scope="module")
def sines():
    """Two models that play their fundamental only: the steady sample-to-sample step is small (2 pi f A / sr),
    so a cut or a jump in gain stands out."""
    out = []
    for seed in (0, 3):
        b = random_bundle(seed=seed)
        H = b.config.n_harmonics
        with torch.no_grad():
            b.decoder.out.weight[1:] = 0.0
            b.decoder.out.bias[1] = 8.0
            b.decoder.out.bias[2:1 + H] = -8.0
            b.decoder.out.bias[1 + H:] = -40.0
        out.append(b)
    return tuple(out)


def make_set(bundles, crossfade_ms: float = 20.0, voices: int = 4, block_events=None) -> SetEngine:
    engines = [Engine(b) for b in bundles]
    s = SetEngine(engines, crossfade_ms=crossfade_ms, block_events=block_events)
    s.prepare(SR, BLOCK, voices)
    return s


def play(s: SetEngine, script: dict[int, list], n_blocks: int, block: int = BLOCK) -> np.ndarray:
    """Blocks of ``block`` frames; ``script`` maps a block number to its events."""
    out = np.zeros(n_blocks * block, dtype=np.float32)
    for k in range(n_blocks):
        s.process(list(script.get(k, ())), out[k * block:(k + 1) * block])
    return out


def test_switch_sends_later_events_to_the_new_song(bundles):
    s = make_set(bundles)
    play(s, {0: [NoteOn(60, 100)]}, 20)
    assert s.engines[0].voices.active_voices == 1
    play(s, {0: [NoteOn(64, 100), SongSelect(1), NoteOn(67, 100)]}, 1)
    assert s.active == 1 and s.switches == 1
    first, second = s.engines
    assert [v.note for v in first.voices.voices if v.stage != 0] and not any(v.key_down for v in first.voices.voices)
    assert [v.note for v in second.voices.voices if v.key_down] == [67]
    # a note-off for a key held across the switch reaches the new song (which never had it): harmless
    play(s, {0: [NoteOff(60)]}, 1)
    assert s.errors == 0 and first.stats.errors == 0 and second.stats.errors == 0


def test_crossfade_lasts_crossfade_ms_and_the_old_song_is_reset(bundles):
    """Song 0 holds a note, song 1 stays silent: after the switch the output is song 0 times the falling half of the
    equal-power curve; it reaches exactly 0 after crossfade_ms and song 0's engine is then reset."""
    crossfade_ms = 20.0
    s, reference = make_set(bundles, crossfade_ms), make_set(bundles, crossfade_ms)
    F = s.fade_samples
    assert F == round(crossfade_ms * SR / 1000)
    before = play(s, {0: [NoteOn(60, 110)]}, 60)
    np.testing.assert_array_equal(before, play(reference, {0: [NoteOn(60, 110)]}, 60))
    assert np.abs(before[-2000:]).max() > 0.01
    after = play(s, {0: [SongSelect(1)]}, 20)
    # the switch's block: song 0 exactly as without the switch, times cos (its keys release at the block's end)
    gain = np.cos(np.arange(1, BLOCK + 1) / F * math.pi / 2)
    np.testing.assert_allclose(after[:BLOCK], play(reference, {}, 1) * gain, atol=1e-6)
    tail = np.abs(after[F:])
    assert tail.max() == 0.0, "song 0 still heard after the crossfade"
    assert np.abs(after[F - 200:F]).max() > 0.0, "song 0 was cut before the crossfade's end"
    assert not s.fading and s.engines[0].voices.active_voices == 0


def steps(x: np.ndarray) -> float:
    return float(np.abs(np.diff(x)).max())


@pytest.mark.parametrize("crossfade_ms", [5.0, 50.0])
def test_crossfade_has_no_discontinuity(sines, crossfade_ms):
    """Both songs hold notes; the largest sample-to-sample step during the switch stays within the steady states'."""
    s = make_set(sines, crossfade_ms)
    play(s, {0: [NoteOn(57, 110)]}, 80)
    steady_a = play(s, {}, 40)
    out = play(s, {0: [SongSelect(1), NoteOn(57, 110)]}, 80 + int(crossfade_ms * SR / 1000 / BLOCK))
    steady_b = out[-40 * BLOCK:]
    reference = max(steps(steady_a), steps(steady_b))
    assert np.isfinite(out).all()
    assert steps(np.concatenate([steady_a[-1:], out])) <= 1.1 * reference


def test_switch_during_a_crossfade_turns_round_without_a_jump(sines):
    s = make_set(sines, 50.0)
    play(s, {0: [NoteOn(57, 110)]}, 80)
    steady = play(s, {}, 40)
    script = {0: [SongSelect(1), NoteOn(60, 110)], 3: [SongSelect(0)], 5: [SongSelect(1)], 6: [SongSelect(0)]}
    out = play(s, script, 100)
    assert s.switches == 4
    assert steps(np.concatenate([steady[-1:], out])) <= 1.1 * max(steps(steady), steps(out[-30 * BLOCK:]))
    assert not s.fading and s.active == 0


def test_equal_power(bundles):
    """The gain at presence p is sin(p / F * pi / 2): an engine coming in at p and one going out at F - p sum at
    constant power; the falling table is the rising one backwards."""
    s = make_set(bundles, 20.0)
    F = s.fade_samples
    rise = s._rise[:F + 1].astype(np.float64)
    np.testing.assert_allclose(rise, np.sin(np.arange(F + 1) / F * math.pi / 2), atol=1e-6)
    np.testing.assert_allclose(rise ** 2 + rise[::-1] ** 2, 1.0, atol=1e-6)
    np.testing.assert_array_equal(s._fall[:F + 1], s._rise[:F + 1][::-1])


def test_unknown_song_and_same_song_change_nothing(bundles):
    s = make_set(bundles)
    play(s, {0: [NoteOn(60, 100), SongSelect(7), SongSelect(0), NoteOn(62, 100)]}, 4)
    assert s.active == 0 and s.switches == 0 and s.refused == 1 and not s.fading
    assert sorted(v.note for v in s.engines[0].voices.voices if v.key_down) == [60, 62]


def test_each_song_gets_its_own_ramps(bundles):
    calls = {0: 0, 1: 0}

    def hook(i):
        def block_events(events, n):
            calls[i] += 1
            return [*events, LatentSet(0, 0.25, knob=True)] if i == 1 else events
        return block_events

    s = make_set(bundles, block_events=[hook(0), hook(1)])
    play(s, {}, 3)
    play(s, {0: [SongSelect(1)]}, 3)
    assert calls == {0: 3, 1: 3}


def test_stereo_output_gets_the_mix_in_every_channel(bundles):
    s = make_set(bundles, 10.0)
    out = np.zeros((BLOCK, 2), dtype=np.float32)
    s.process([NoteOn(60, 100)], out)
    for k in range(20):
        s.process([SongSelect(1)] if k == 10 else [], out)
        np.testing.assert_array_equal(out[:, 0], out[:, 1])


def test_switching_allocates_nothing_that_grows(bundles):
    """After warm-up, blocks with switches every few blocks leave no allocations behind, keep the transient peak
    within a few Python objects, and make no tensors."""
    s = make_set(bundles, 5.0)
    out = np.zeros(BLOCK, dtype=np.float32)
    for k in range(60):                                  # warm both engines through a fade each way
        s.process([NoteOn(60, 100)] if k in (0, 20) else [SongSelect(1)] if k == 10 else
                  [SongSelect(0)] if k == 30 else [], out)

    def live_tensors() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if type(o) is torch.Tensor)

    tensors_before = live_tensors()
    script = [[SongSelect(k // 8 % 2), NoteOn(60 + k % 5, 100)] if k % 8 == 0 else [] for k in range(300)]
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    tracemalloc.reset_peak()
    traced_before = tracemalloc.get_traced_memory()[0]
    for events in script:
        s.process(events, out)
    peak = tracemalloc.get_traced_memory()[1] - traced_before
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert s.switches >= 30 and s.errors == 0
    assert grown < 16 * 1024
    assert peak < 8192, peak
    assert live_tensors() == tensors_before
