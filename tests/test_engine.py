"""Contract of the live engine (instrument.engine.engine): streaming equals offline, timing, voices, safety, memory."""
from __future__ import annotations

import gc
import math
import tracemalloc
from dataclasses import dataclass
from fractions import Fraction
import warnings

import numpy as np
import pytest
import torch

from instrument.model import dsp
from instrument.model.bundle import random_bundle
from instrument.engine.engine import Engine
from instrument.engine.decoder_kernel import DecoderStep
from instrument.engine.synth_kernel import StreamingSynth
from instrument.engine.events import (CC_ALL_NOTES_OFF, CC_ALL_SOUND_OFF, CC_SUSTAIN, ControlChange, LatentSet, NoteOff,
                               NoteOn, Panic, PARAMS, Param, ParamSet, PitchBend, with_offset)

SR = 48000
HOP = 128


# ---------------------------------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def bundle():
    return random_bundle(seed=0)


def noisy_bundle(seed: int = 1):
    """Untrained model with its noise branch turned up, so the noise path matters in comparisons."""
    b = random_bundle(seed=seed)
    H = b.config.n_harmonics
    with torch.no_grad():
        b.decoder.out.bias[1 + H:] += 4.0
    return b


def sine_bundle(seed: int = 0):
    """Untrained model whose output is the fundamental only (no other harmonics, no noise): easy pitch."""
    b = random_bundle(seed=seed)
    H = b.config.n_harmonics
    with torch.no_grad():
        out = b.decoder.out
        out.weight[1:] = 0.0
        out.bias[1] = 8.0
        out.bias[2:1 + H] = -8.0
        out.bias[1 + H:] = -40.0
    return b


def make_engine(bundle, block: int = 128, voices: int = 4, sample_rate: int = SR, **params) -> Engine:
    engine = Engine(bundle)
    engine.prepare(sample_rate, block, voices)
    for name, value in params.items():
        engine.set_param(name, value)
    return engine


def render(engine: Engine, script, n_samples: int, block: int | None = None, frames: list | None = None) -> np.ndarray:
    """Run ``engine`` over ``script`` [(sample, event), ...] (sorted) in blocks; returns the output. ``frames``:
    a list that gets the voices' (pitch_midi, loudness_db) after every block."""
    block = block or engine.block_size
    out = np.zeros(n_samples, dtype=np.float32)
    k = 0
    for start in range(0, n_samples, block):
        stop = min(n_samples, start + block)
        events = []
        while k < len(script) and script[k][0] < stop:
            events.append(with_offset(script[k][1], script[k][0] - start))
            k += 1
        engine.process(events, out[start:stop])
        if frames is not None:
            frames.append((engine.voices.pitch_midi.copy(), engine.voices.loudness_db.copy()))
    return out


def traced_allocations(run) -> tuple[int, int]:
    """Python allocations while ``run()`` runs (tracemalloc): (bytes still allocated after it, by the callee's
    files; the peak above the start)."""
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    tracemalloc.reset_peak()
    traced_before = tracemalloc.get_traced_memory()[0]
    run()
    peak = tracemalloc.get_traced_memory()[1] - traced_before
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    return sum(stat.size_diff for stat in after.compare_to(before, "filename")), peak


def peak_hz(x: np.ndarray, sr: int, fmin: float = 30.0, fmax: float = 5000.0) -> float:
    """Frequency of the strongest spectral peak (Hann window, zero-padded, parabolic interpolation)."""
    n = 1 << (8 * len(x) - 1).bit_length()
    mag = np.abs(np.fft.rfft(x * np.hanning(len(x)), n))
    lo, hi = int(fmin * n / sr), int(fmax * n / sr)
    k = lo + int(np.argmax(mag[lo:hi]))
    a, b, c = np.log(mag[k - 1:k + 2] + 1e-20)
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * sr / n


def band_level(x: np.ndarray, sr: int, f_hz: float, width: float = 0.03) -> float:
    """Peak spectral magnitude within +-width (relative) of f_hz."""
    n = 1 << (4 * len(x) - 1).bit_length()
    mag = np.abs(np.fft.rfft(x * np.hanning(len(x)), n))
    lo, hi = int(f_hz * (1 - width) * n / sr), int(f_hz * (1 + width) * n / sr) + 1
    return float(mag[lo:hi].max())


def cents(f: float, ref: float) -> float:
    return 1200.0 * math.log2(f / ref)


def midi_hz(note: float) -> float:
    return 440.0 * 2.0 ** ((note - 69.0) / 12.0)


# ---------------------------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("V", [1, 3, 6])
def test_decoder_step_equals_decoder(bundle, V):
    """The fused per-frame decoder equals Decoder.forward, on changing and on held inputs (cached path), for
    voice counts that use the kernels' 4-row blocks, their one-row remainder, and both."""
    dec, c = bundle.decoder, bundle.config
    F = 16
    g = torch.Generator().manual_seed(0)
    f0 = torch.rand(V, F, generator=g) * 400 + 60
    loudness = torch.rand(V, F, generator=g) * -60
    f0[:, 6:11] = f0[:, 6:7]
    loudness[:, 6:11] = loudness[:, 6:7]
    z = torch.randn(c.latent_dim, generator=g)
    with torch.no_grad():
        expected, h_expected = dec(f0, loudness, z.expand(V, F, -1))
        step = DecoderStep(dec, V)
        assert step.fused
        step.set_z_all(z)
        f0_in, loudness_in = dec.scale_inputs(f0, loudness)
        h = torch.zeros(V, c.gru_size)
        got = []
        for k in range(F):
            step.inputs[:, 0] = f0_in[:, k, 0]
            step.inputs[:, 1] = loudness_in[:, k, 0]
            got.append(step.run(h).clone())
    assert torch.allclose(torch.stack(got, 1), expected, atol=2e-5, rtol=1e-5)
    assert torch.allclose(h, h_expected[0], atol=2e-5)


@pytest.mark.parametrize("V", [1, 5])
def test_decoder_step_follows_z_changes_on_held_notes(bundle, V):
    """A latent ramp changes z every frame while the notes are held: the cached input projections are moved by
    the bias change (not recomputed) and still equal Decoder.forward, past the periodic full recompute."""
    dec, c = bundle.decoder, bundle.config
    F = 300
    g = torch.Generator().manual_seed(1)
    f0 = (torch.rand(V, 1, generator=g) * 400 + 60).expand(V, F).contiguous()
    loudness = (torch.rand(V, 1, generator=g) * -60).expand(V, F).contiguous()
    z = torch.cumsum(torch.randn(F, c.latent_dim, generator=g) * 0.05, 0)
    z[:3] = z[3]                                          # a few frames with z unchanged first
    with torch.no_grad():
        expected, _ = dec(f0, loudness, z.expand(V, F, -1))
        step = DecoderStep(dec, V)
        f0_in, loudness_in = dec.scale_inputs(f0, loudness)
        h = torch.zeros(V, c.gru_size)
        got = []
        for k in range(F):
            step.inputs[:, 0] = f0_in[:, k, 0]
            step.inputs[:, 1] = loudness_in[:, k, 0]
            if k == 0 or not torch.equal(z[k], z[k - 1]):
                step.set_z_all(z[k])
            got.append(step.run(h).clone())
    assert torch.allclose(torch.stack(got, 1), expected, atol=5e-5, rtol=1e-5)


@pytest.mark.parametrize("sample_rate", [SR, 44100])
def test_streaming_synth_equals_dsp_synthesize(sample_rate):
    """One interval at a time on preallocated buffers == dsp.synthesize over all frames (at the model rate;
    at another rate the same holds on the device band grid, with the harmonic Nyquist of the device rate)."""
    V, H, N, F = 3, 32, 65, 12
    g = torch.Generator().manual_seed(1)
    hop = round(HOP * sample_rate / SR)
    synth = StreamingSynth(V, H, N, SR, sample_rate, hop, noise_bias=0.0, noise_frames=64)
    raw = torch.randn(V, F, 1 + H + N, generator=g) * 2
    f0 = torch.rand(V, F, generator=g) * 800 + 50
    controls = dsp.raw_to_controls(raw, f0, H, N, SR, noise_bias=0.0)
    audio, noise = [], []
    out = torch.zeros(V, hop)
    for k in range(F):
        synth.cur.f0[:] = f0[:, k].numpy()
        synth.set_controls(raw[:, k].clone(), np.ones(V, np.float32), np.ones(V, np.float32))
        noise.append(synth.current_noise())
        synth.render(out)
        audio.append(out.clone())
    zero = dsp.SynthControls(torch.full((V, 1), 440.0), torch.zeros(V, 1), torch.zeros(V, 1, H), torch.zeros(V, 1, N))
    band_map = synth.band_map.float()
    device_controls = dsp.SynthControls(controls.f0_hz, controls.amplitude, controls.harmonic_distribution,
                                        controls.noise_magnitudes @ band_map)
    zero_device = dsp.SynthControls(zero.f0_hz, zero.amplitude, zero.harmonic_distribution,
                                    torch.zeros(V, 1, band_map.shape[1]))
    harmonic, filtered, state = dsp.synthesize(device_controls, torch.cat(noise, 1), dsp.initial_state(zero_device),
                                               hop, sample_rate)
    expected = harmonic + filtered
    assert filtered.abs().max() > 0.05                       # the noise path is exercised
    assert torch.allclose(torch.cat(audio, 1), expected, atol=1e-4)
    assert torch.allclose(synth.state.phase_cycles, state.phase_cycles, atol=1e-9)


def test_streaming_synth_does_not_drift_over_a_minute():
    """60 s of a held note, one interval at a time, stays equal to dsp.synthesize (run in chunks of frames
    with its state carried, which the test above shows equals one call): the sines are computed from the
    exact phase of every sample, so nothing accumulates."""
    H, N, hop = 64, 65, HOP
    F = 60 * SR // hop
    g = torch.Generator().manual_seed(2)
    synth = StreamingSynth(1, H, N, SR, SR, hop, noise_bias=0.0, noise_frames=64)
    raw = torch.randn(1, 1 + H + N, generator=g)
    f0 = torch.tensor([midi_hz(61.3)])
    controls = dsp.raw_to_controls(raw[:, None], f0[:, None], H, N, SR, noise_bias=0.0)
    synth.last.f0[:] = f0.numpy()                            # no glide from the initial frame: exact phase known
    state = dsp.initial_state(dsp.SynthControls(f0[:, None].clone(), torch.zeros(1, 1), torch.zeros(1, 1, H),
                                                torch.zeros(1, 1, N)))
    out = torch.zeros(1, hop)
    worst, chunk = 0.0, 500
    for start in range(0, F, chunk):
        n = min(chunk, F - start)
        got, noise = [], []
        for _ in range(n):
            synth.cur.f0[:] = f0.numpy()
            synth.set_controls(raw.clone(), np.ones(1, np.float32), np.ones(1, np.float32))
            noise.append(synth.current_noise())
            synth.render(out)
            got.append(out.clone())
        frames = dsp.SynthControls(f0.expand(1, n), controls.amplitude.expand(1, n),
                                   controls.harmonic_distribution.expand(1, n, H), controls.noise_magnitudes.expand(1, n, N))
        harmonic, filtered, state = dsp.synthesize(frames, torch.cat(noise, 1), state, hop, SR)
        worst = max(worst, float((torch.cat(got, 1) - (harmonic + filtered)).abs().max()))
    assert worst < 1e-4
    exact = Fraction(F * hop) * Fraction(float(f0[0])) / SR % 1
    assert abs(float(synth.state.phase_cycles[0]) - float(exact)) < 1e-9


# ---------------------------------------------------------------------------------------------- streaming
SCRIPT = [
    (0, ParamSet(Param.RELEASE_MS, 40.0)),
    (0, ParamSet(Param.ATTACK_MS, 5.0)),
    (100, NoteOn(60, 90)),
    (1037, NoteOn(67, 70)),
    (2000, ParamSet(Param.HARMONIC_GAIN_DB, -3.0)),
    (3001, PitchBend(0.5)),
    (3900, NoteOff(60)),
    (5000, LatentSet(0, 1.5)),
    (6123, NoteOn(72, 80)),            # voice 0 (free again after the 40 ms release): a fresh onset
    (6500, NoteOn(67, 100)),           # the same key again: retriggers its sounding voice
    (7000, ParamSet(Param.OUTPUT_GAIN_DB, -2.0)),
    (7777, ParamSet(Param.NOISE_GAIN_DB, -6.0)),
    (8200, NoteOff(67)),
    (9001, NoteOn(55, 60)),
    (10400, NoteOff(72)),
]
N_SAMPLES = 12000


@dataclass
class PlayerFrame:
    """What the voice bank (the player) handed the engine for one control frame: unscaled pitch and loudness,
    the voice gate, fresh onsets and the voices computed; plus the frame's white noise (the random input)."""

    pitch_midi: np.ndarray      # (V,)
    loudness_db: np.ndarray     # (V,)
    gate: np.ndarray            # (V,) 1 while a voice sounds, 0 once idle
    onset: np.ndarray           # (V,) sample of a fresh onset in the interval, or -1
    rows: int                   # voices 0 .. rows-1 were computed
    noise: torch.Tensor         # (V, hop)


def script_values(script, n_frames: int, hop: int, param: Param) -> np.ndarray:
    """(n_frames,) the value of ``param`` each frame renders with: an event at sample s is heard from the
    frame that ends the interval holding s."""
    values = np.full(n_frames, PARAMS[param].default)
    for sample, event in script:
        if isinstance(event, ParamSet) and event.param == param:
            values[sample // hop:] = event.value
    return values


def script_latents(script, n_frames: int, hop: int, z0: torch.Tensor) -> torch.Tensor:
    """(n_frames, D) the latent vector of every frame (LatentSet in raw z units)."""
    z = z0.expand(n_frames, -1).clone()
    for sample, event in script:
        if isinstance(event, LatentSet):
            assert not event.knob
            z[sample // hop:, event.index] = event.value
    return z


def offline_reference(bundle, player: list[PlayerFrame], script, hop: int, sr: int) -> np.ndarray:
    """The scripted performance rendered by the model's own offline code: ``Decoder.forward`` on the player's
    unscaled pitch and loudness (over the frames each voice was computed), ``dsp.raw_to_controls``, the gains
    of the script applied here, one ``dsp.synthesize`` call per note, the output gain ramped per interval."""
    c = bundle.config
    J, V = len(player), len(player[0].pitch_midi)
    pitch_midi = torch.tensor(np.stack([p.pitch_midi for p in player], 1))                            # (V, J)
    f0_hz = dsp.midi_to_hz(pitch_midi).float()        # in float64 first, as the engine: no phase drift
    loudness_db = torch.tensor(np.stack([p.loudness_db for p in player], 1), dtype=torch.float32)
    gate = torch.tensor(np.stack([p.gate for p in player], 1), dtype=torch.float32)
    z = script_latents(script, J, hop, bundle.default_z())
    db = lambda param: torch.tensor(10.0 ** (script_values(script, J, hop, param) / 20.0), dtype=torch.float32)  # noqa: E731
    harmonic_gain, noise_gain = db(Param.HARMONIC_GAIN_DB), db(Param.NOISE_GAIN_DB)
    out = np.zeros(J * hop)
    for v in range(V):
        computed = [j for j in range(J) if v < player[j].rows]
        raw = torch.zeros(J, c.n_outputs)        # frames not computed: the voice is idle (gate 0), silent
        with torch.no_grad():
            raw[computed] = bundle.decoder(f0_hz[v, computed][None], loudness_db[v, computed][None],
                                           z[computed][None])[0][0]
        controls = dsp.raw_to_controls(raw[None], f0_hz[v][None], c.n_harmonics, c.n_noise_bands, c.sample_rate,
                                       c.noise_bias)
        controls.amplitude = controls.amplitude * gate[v] * harmonic_gain
        controls.noise_magnitudes = controls.noise_magnitudes * (gate[v] * noise_gain)[:, None]
        starts = [j for j in range(J) if player[j].onset[v] >= 0]
        for s, j0 in enumerate(starts):
            j1 = starts[s + 1] if s + 1 < len(starts) else J
            frames = controls.frames(j0, j1)
            state = dsp.initial_state(frames.frame(0))
            q = int(player[j0].onset[v])
            state.phase_cycles[0] = (-q * float(frames.f0_hz[0, 0]) / sr) % 1.0
            noise = torch.cat([p.noise[v] for p in player[j0:j1]])[None]
            harmonic, filtered, _ = dsp.synthesize(frames, noise, state, hop, sr)
            audio = (harmonic + filtered)[0].double().numpy()
            audio[:q] = 0.0
            out[j0 * hop:j1 * hop] += audio
    gain = 10.0 ** (script_values(script, J, hop, Param.OUTPUT_GAIN_DB) / 20.0)
    gain_before = np.concatenate([[10.0 ** (PARAMS[Param.OUTPUT_GAIN_DB].default / 20.0)], gain[:-1]])
    ramp = np.arange(hop) / hop
    for j in range(J):
        out[j * hop:(j + 1) * hop] *= gain_before[j] + (gain[j] - gain_before[j]) * ramp
    return out


@pytest.fixture(scope="module")
def streamed():
    """The scripted sequence rendered with 128-sample blocks, and what the player handed the engine."""
    torch.set_num_threads(1)
    bundle = noisy_bundle()
    engine = make_engine(bundle, block=128, voices=3)
    player = []

    def record(frame):
        v = engine.voices
        player.append(PlayerFrame(v.pitch_midi.copy(), v.loudness_db.copy(), v.gain.copy(), v.onset.copy(),
                                  v.active_rows, frame.noise))

    engine.set_recorder(record)
    out = render(engine, SCRIPT, N_SAMPLES)
    assert engine.stats.errors == 0 and engine.stats.limited_intervals == 0
    return out, player, engine


def test_streaming_equals_offline_render(streamed):
    """The live engine plays what the model's offline path (Decoder.forward + dsp.synthesize, gains applied
    by the test) renders from the same player inputs, one control frame later."""
    out, player, engine = streamed
    assert len(player) == N_SAMPLES // HOP
    assert sum(int((p.onset >= 0).sum()) for p in player) == 4     # 60, 67, 72 (fresh), 55 (fresh)
    expected = offline_reference(engine.bundle, player, SCRIPT, HOP, SR)
    delay = engine.control_delay_samples
    got = out[delay:delay + len(expected)]
    expected = expected[:len(got)]
    assert np.abs(expected).max() > 0.05
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("block", [1, 33, 64, 65, 500, 2048])
def test_block_size_does_not_change_output(streamed, block):
    reference, _, _ = streamed
    engine = make_engine(noisy_bundle(), block=block, voices=3)
    out = render(engine, SCRIPT, N_SAMPLES)
    assert engine.stats.errors == 0
    np.testing.assert_allclose(out, reference, atol=1e-5)


# ---------------------------------------------------------------------------------------------- timing
@pytest.mark.parametrize("offset", [0, 1, 37, 127, 200, 255])
def test_note_on_is_sample_accurate(offset):
    """A note-on at sample o of a block opens the voice at exactly o + the control delay, phase from zero."""
    engine = make_engine(sine_bundle(), block=256, voices=2)
    out = np.zeros(4 * 256, dtype=np.float32)
    engine.process([], out[:256])
    engine.process([NoteOn(69, 100, offset=offset)], out[256:512])
    engine.process([], out[512:768])
    engine.process([], out[768:])
    first = int(np.flatnonzero(out)[0])
    assert first == 256 + offset + engine.control_delay_samples
    # A sine starting at phase 0: the first samples rise from 0 like sin(2 pi f t).
    assert 0.0 < out[first] < out[first + 1] < out[first + 2]
    assert engine.latency_samples == 256 + engine.control_delay_samples


def test_latency_and_describe(bundle):
    engine = make_engine(bundle, block=512, voices=2)
    assert engine.control_delay_samples == HOP
    assert engine.latency_samples == 512 + HOP
    assert "latency=640" in engine.describe()


# ---------------------------------------------------------------------------------------------- voices
def test_polyphony_two_notes_two_pitches():
    engine = make_engine(sine_bundle(), voices=4)
    out = render(engine, [(0, NoteOn(57, 100)), (0, NoteOn(64, 100))], SR // 2)
    sustained = out[SR // 8:]
    f_a, f_e = midi_hz(57), midi_hz(64)
    top = max(band_level(sustained, SR, f_a), band_level(sustained, SR, f_e))
    assert band_level(sustained, SR, f_a) > 0.2 * top
    assert band_level(sustained, SR, f_e) > 0.2 * top
    assert band_level(sustained, SR, midi_hz(60)) < 0.05 * top
    assert engine.voices.active_voices == 2


def test_voice_stealing_takes_the_oldest():
    engine = make_engine(sine_bundle(), voices=2)
    script = [(0, NoteOn(57, 100)), (2400, NoteOn(64, 100)), (4800, NoteOn(69, 100))]
    out = render(engine, script, SR // 2)
    assert engine.voices.steals == 1
    tail = out[SR // 4:]
    top = max(band_level(tail, SR, midi_hz(64)), band_level(tail, SR, midi_hz(69)))
    assert band_level(tail, SR, midi_hz(64)) > 0.2 * top
    assert band_level(tail, SR, midi_hz(69)) > 0.2 * top
    assert band_level(tail, SR, midi_hz(57)) < 0.05 * top      # the oldest note was stolen


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def test_sustain_pedal_holds_then_releases():
    engine = make_engine(sine_bundle(), voices=2, release_ms=50.0)
    script = [(0, NoteOn(60, 100)), (100, ControlChange(CC_SUSTAIN, 127)), (4800, NoteOff(60)),
              (14400, ControlChange(CC_SUSTAIN, 0))]
    out = render(engine, script, 24000)
    held = rms(out[9600:14400])              # note released, pedal down: still sounding
    assert held > 0.5 * rms(out[2400:4800])
    assert rms(out[14400 + 50 * 48 + 2 * HOP:]) == 0.0   # pedal up: released and silent after 50 ms


def test_panic_silences_immediately(bundle):
    for event in (Panic(), ControlChange(CC_ALL_SOUND_OFF, 0)):
        engine = make_engine(noisy_bundle(), voices=4)
        script = [(0, NoteOn(60, 100)), (0, NoteOn(64, 100)), (0, NoteOn(67, 100)), (6000, event)]
        out = render(engine, script, 12000)
        assert rms(out[3000:6000]) > 0.01
        assert not out[6000:].any()
        assert engine.voices.active_voices == 0


def test_all_notes_off_releases(bundle):
    engine = make_engine(bundle, voices=4, release_ms=20.0)
    script = [(0, NoteOn(60, 100)), (0, NoteOn(67, 100)), (4800, ControlChange(CC_ALL_NOTES_OFF, 0))]
    out = render(engine, script, 12000)
    assert rms(out[2400:4800]) > 0.01
    assert not out[4800 + 20 * 48 + 2 * HOP:].any()
    assert engine.voices.active_voices == 0


def test_channel_filter_and_out_of_range_flag():
    engine = make_engine(sine_bundle(), voices=2, midi_channel=1)
    out = render(engine, [(0, NoteOn(60, 100, channel=0))], 4800)
    assert not out.any()
    assert engine.voices.ignored_events == 1
    out = render(engine, [(0, NoteOn(20, 100, channel=1))], 9600)     # 26 Hz: below the corpus range
    assert out.any()                                                  # played anyway
    assert engine.voices.out_of_range_notes == 1
    assert engine.voices.last_out_of_range_note == 20


def test_pitch_bend_shift_and_gains():
    engine = make_engine(sine_bundle(), voices=1)
    base = render(engine, [(0, NoteOn(57, 100))], SR // 2)[SR // 4:]
    assert abs(cents(peak_hz(base, SR), 220.0)) < 5
    bent = render(engine, [(0, PitchBend(1.0))], SR // 4)[SR // 8:]             # +2 semitones (default)
    assert abs(cents(peak_hz(bent, SR), midi_hz(59))) < 5
    shifted = render(engine, [(0, PitchBend(0.0)), (0, ParamSet(Param.PITCH_SHIFT_SEMITONES, 12.0))], SR // 4)
    assert abs(cents(peak_hz(shifted[SR // 8:], SR), 440.0)) < 5
    level = rms(render(engine, [(0, ParamSet(Param.PITCH_SHIFT_SEMITONES, 0.0))], SR // 4)[SR // 8:])
    quieter = rms(render(engine, [(0, ParamSet(Param.OUTPUT_GAIN_DB, -6.0))], SR // 4)[SR // 8:])
    assert quieter / level == pytest.approx(10 ** (-6 / 20), rel=0.02)


def test_latent_event_changes_the_sound(bundle):
    def take(events):
        engine = make_engine(bundle, voices=1)
        return render(engine, [(0, e) for e in events] + [(0, NoteOn(60, 100))], SR // 4)

    plain = take([])
    low = take([LatentSet(0, 0.0, knob=True)])
    high = take([LatentSet(0, 1.0, knob=True)])
    assert rms(low - high) > 0.05 * rms(plain)
    assert rms(take([LatentSet(0, float(bundle.default_z()[0]))]) - plain) == 0.0


def test_soft_limiter_bounds_the_output(bundle):
    """However loud the mix, the output stays below the ceiling (-0.1 dBFS), never at full scale: here the
    limiter's tanh saturates (32 voices at +12 dB)."""
    from instrument.engine.engine import LIMITER_CEILING_DBFS

    engine = make_engine(bundle, voices=32, output_gain_db=12.0)
    out = render(engine, [(0, NoteOn(30 + 2 * k, 127)) for k in range(32)], SR // 4)
    assert engine.stats.limited_intervals > 0
    ceiling = 10.0 ** (LIMITER_CEILING_DBFS / 20.0)
    assert engine.limiter_threshold < np.abs(out).max() <= ceiling < 1.0


def test_output_meter_reads_the_peak_of_the_last_frames(bundle):
    """output_peak_db (the control page's level meter): the peak of what was played over the last
    METER_INTERVALS control frames, in dBFS; silence reads the floor; reset clears it."""
    from instrument.engine.engine import METER_FLOOR_DB, METER_INTERVALS

    engine = make_engine(bundle, voices=4)
    assert engine.output_peak_db() == METER_FLOOR_DB
    out = render(engine, [(0, NoteOn(60, 100)), (0, NoteOn(67, 90))], SR // 2)
    window = out[-METER_INTERVALS * engine.hop_size:]
    assert engine.output_peak_db() == pytest.approx(20 * np.log10(np.abs(window).max()), abs=0.5)
    engine.process([ControlChange(120, 127)], np.zeros(128, np.float32))          # all sound off
    render(engine, [], (METER_INTERVALS + 2) * engine.hop_size)
    assert engine.output_peak_db() < -90.0
    loud = make_engine(bundle, voices=32, output_gain_db=12.0)
    render(loud, [(0, NoteOn(30 + 2 * k, 127)) for k in range(32)], SR // 4)
    assert -0.2 < loud.output_peak_db() <= -0.1 + 1e-9                              # the limiter's ceiling
    loud.reset()
    assert loud.output_peak_db() == METER_FLOOR_DB


@pytest.mark.parametrize("sample_rate", [44100, 96000])
def test_other_device_rates_keep_pitch_and_level(sample_rate):
    """Controls are rate-independent: same pitch, same harmonic level and same noise level at other rates."""
    def take(b, sr):
        engine = make_engine(b, voices=1, sample_rate=sr)
        out = render(engine, [(0, NoteOn(57, 100))], sr // 2)
        return out[sr // 4:]

    sine = sine_bundle()
    at_model, at_device = take(sine, SR), take(sine, sample_rate)
    assert abs(cents(peak_hz(at_device, sample_rate), 220.0)) < 5
    assert rms(at_device) == pytest.approx(rms(at_model), rel=0.05)
    noise_only = sine_bundle()
    with torch.no_grad():
        noise_only.decoder.out.bias[0] = -40.0                       # harmonic amplitude ~ 0
        noise_only.decoder.out.bias[1 + noise_only.config.n_harmonics:] = 8.0
    at_model, at_device = take(noise_only, SR), take(noise_only, sample_rate)
    assert rms(at_model) > 0.01
    assert rms(at_device) == pytest.approx(rms(at_model), rel=0.1)


# ---------------------------------------------------------------------------------------------- safety
def test_non_finite_voice_is_reset_and_output_stays_finite(bundle):
    engine = make_engine(bundle, voices=2)
    out = np.zeros(128, dtype=np.float32)
    engine.process([NoteOn(60, 100), NoteOn(67, 100)], out)
    for _ in range(20):
        engine.process([], out)
    with torch.no_grad():
        engine.state.gru[0, 1] = float("nan")
    blocks = np.zeros((20, 128), dtype=np.float32)
    for k in range(20):
        engine.process([], blocks[k])
    assert np.isfinite(blocks).all()
    assert engine.stats.voice_resets == 1
    assert engine.voices.active_voices == 1                 # the other voice plays on
    assert np.abs(blocks[5:]).max() > 0.01
    assert torch.isfinite(engine.state.gru).all()
    assert engine.stats.errors == 0


def test_process_never_raises(bundle):
    engine = make_engine(bundle, voices=2)
    out = np.ones(128, dtype=np.float32)
    engine.process([NoteOn(None, 100)], out)                    # a malformed event
    assert engine.stats.errors == 1 and "TypeError" in engine.stats.last_error
    assert not out.any()
    engine.process([NoteOn(60, 100)], out)                      # and it plays on
    for _ in range(5):
        engine.process([], out)
    assert out.any()
    unprepared = Engine(bundle)
    unprepared.process([], out)
    assert unprepared.stats.errors == 1 and not out.any()


def test_process_accepts_tensors_and_channels(bundle):
    engine = make_engine(bundle, voices=2)
    stereo = torch.zeros(256, 2)
    engine.process([NoteOn(60, 100)], stereo)
    engine.process([], stereo)
    assert stereo.abs().max() > 0
    assert torch.equal(stereo[:, 0], stereo[:, 1])


def test_reset_silences(bundle):
    engine = make_engine(bundle, voices=2)
    out = np.zeros(512, dtype=np.float32)
    engine.process([NoteOn(60, 100)], out)
    engine.process([], out)
    assert out.any()
    engine.reset()
    engine.process([], out)
    engine.process([], out)
    assert not out.any()


def test_process_allocates_nothing_that_grows(bundle):
    """After warm-up, many blocks leave no Python allocations behind and the tensors alive do not grow."""
    engine = make_engine(bundle, block=128, voices=4)
    out = np.zeros(128, dtype=np.float32)
    engine.process([NoteOn(48 + 7 * k, 100) for k in range(4)], out)
    for _ in range(50):
        engine.process([], out)

    def is_tensor(o) -> bool:
        try:
            return isinstance(o, torch.Tensor)
        except ReferenceError:          # a dead weakref.proxy left by another test
            return False

    def live_tensors() -> int:
        gc.collect()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return sum(1 for o in gc.get_objects() if is_tensor(o))

    tensors_before = live_tensors()
    script = [[PitchBend(math.sin(k / 10))] if k % 3 == 0 else [] for k in range(300)]

    def play() -> None:
        for events in script:
            engine.process(events, out)

    grown, peak = traced_allocations(play)
    assert grown < 16 * 1024
    # Nothing big transient either: the peak stays within a few Python objects (measured 2.3-2.7 KB over 300
    # blocks, most of it inside the interval render); a 4 KB scratch buffer per block, freed at once, fails.
    assert peak < 4096, peak
    assert live_tensors() == tensors_before


def test_state_is_one_printable_dataclass(bundle):
    engine = make_engine(bundle, voices=2)
    text = repr(engine.state)
    for name in ("voices", "gru", "synth", "decoder_inputs", "params", "interval_audio", "position"):
        assert name in text
    assert tuple(engine.state.gru.shape) == (1, 2, bundle.config.gru_size)


def test_idle_voices_are_skipped_and_do_not_change_the_sound(bundle):
    """Only voices that sound (or fade) are computed; a note sounds the same in a 1- or an 8-voice engine."""
    one, many = make_engine(bundle, voices=1), make_engine(bundle, voices=8)
    script = [(0, NoteOn(60, 100)), (3000, NoteOff(60))]
    a, b = render(one, script, 20000), render(many, script, 20000)
    assert many.voices.active_rows == 0 and many._synth.interval == 20000 // HOP    # silence: nothing computed
    script = [(100, NoteOn(64, 90))]
    a2, b2 = render(one, script, 6000), render(many, script, 6000)
    assert many.voices.active_rows == 1
    np.testing.assert_allclose(np.concatenate([a, a2]), np.concatenate([b, b2]), atol=1e-5)
    assert np.abs(a2).max() > 0.01


def test_engine_feeds_the_decoder_what_the_model_computes_from_pitch_and_loudness(bundle):
    """From each frame's voice pitch (MIDI) and loudness (dB), the engine's controls are the decoder module's
    (Decoder.controls on f0 in Hz, loudness in dB): its input scaling and MIDI -> Hz are the model's."""
    engine = make_engine(bundle, voices=1, attack_ms=30.0)
    frames = []

    def record(r):
        voices = engine.voices
        frames.append((float(voices.pitch_midi[0]), float(voices.loudness_db[0]), r))

    engine.set_recorder(record)
    script = [(0, NoteOn(57, 100)), (1500, PitchBend(0.7)), (3000, PitchBend(-0.4))]
    render(engine, script, 40 * HOP)
    midi = torch.tensor([m for m, _, _ in frames], dtype=torch.float64)
    loudness = torch.tensor([ld for _, ld, _ in frames], dtype=torch.float32)
    assert loudness.max() - loudness.min() > 10 and midi.max() - midi.min() > 1      # inputs move every frame
    f0_hz = dsp.midi_to_hz(midi).float()
    with torch.no_grad():
        controls, _ = bundle.decoder.controls(f0_hz[None], loudness[None], bundle.default_z().expand(1, len(frames), -1))
    got_f0 = torch.stack([r.f0_hz[0] for _, _, r in frames])
    got_dist = torch.stack([r.harmonic_distribution[0] for _, _, r in frames])
    np.testing.assert_allclose(got_f0.numpy(), f0_hz.numpy(), rtol=1e-6)
    np.testing.assert_allclose(got_dist.numpy(), controls.harmonic_distribution[0].numpy(), atol=2e-6)
