"""The synth against a NumPy reference, and streaming (chunked) rendering against one offline render."""
import numpy as np
import pytest
import torch

from instrument.model import dsp

SR, HOP = 48000, 128


def random_controls(batch=2, frames=30, harmonics=12, bands=17, seed=0, f0_lo=100.0, f0_hi=3000.0):
    g = torch.Generator().manual_seed(seed)
    f0 = f0_lo + (f0_hi - f0_lo) * torch.rand(batch, frames, generator=g)
    dist = torch.softmax(torch.randn(batch, frames, harmonics, generator=g), -1)
    return dsp.SynthControls(f0, torch.rand(batch, frames, generator=g), dist,
                             torch.rand(batch, frames, bands, generator=g))


def numpy_harmonic(f0, amp, dist, hop, sr):
    """Straightforward per-sample reference: linear control ramps, phase accumulation, Nyquist mask."""
    batch, frames = f0.shape
    n_h = dist.shape[-1]
    out = np.zeros((batch, (frames - 1) * hop))
    for b in range(batch):
        phase = 0.0
        for k in range(1, frames):
            top = max(f0[b, k - 1], f0[b, k])
            for i in range(hop):
                r = i / hop
                f = f0[b, k - 1] + (f0[b, k] - f0[b, k - 1]) * r
                phase = (phase + f / sr) % 1.0
                s = 0.0
                for h in range(1, n_h + 1):
                    if h * top >= sr / 2:
                        continue
                    a0 = amp[b, k - 1] * dist[b, k - 1, h - 1]
                    a1 = amp[b, k] * dist[b, k, h - 1]
                    s += (a0 + (a1 - a0) * r) * np.sin(2 * np.pi * h * phase)
                out[b, (k - 1) * hop + i] = s
    return out


def numpy_noise(mags, noise, hop):
    """Frame-wise FIR (frequency sampling, Hann window, centred) by direct convolution and overlap-add."""
    batch, frames, bands = mags.shape
    ir_size = 2 * (bands - 1)
    out = np.zeros((batch, (frames - 1) * hop + ir_size - 1))
    for b in range(batch):
        for k in range(1, frames):
            ir = np.fft.irfft(mags[b, k], n=ir_size)
            ir = np.roll(ir, bands - 1) * np.hanning(ir_size)
            seg = noise[b, (k - 1) * hop:k * hop]
            out[b, (k - 1) * hop:(k - 1) * hop + hop + ir_size - 1] += np.convolve(seg, ir)
    return out[:, :(frames - 1) * hop]


def test_harmonic_matches_numpy_reference():
    c = random_controls(frames=6, harmonics=40, f0_lo=200, f0_hi=900)
    state = dsp.initial_state(c.frame(0))
    harmonic, _ = dsp.render_harmonic(c.frames(1), state, HOP, SR)
    ref = numpy_harmonic(c.f0_hz.double().numpy(), c.amplitude.double().numpy(),
                         c.harmonic_distribution.double().numpy(), HOP, SR)
    np.testing.assert_allclose(harmonic.numpy(), ref, atol=2e-4)


def test_nyquist_mask_removes_harmonics_above_nyquist():
    f0 = torch.tensor([[1000.0, 5000.0]])
    mask = dsp.harmonic_mask(f0, 10, SR)
    assert mask[0, 0].sum() == 10 and mask[0, 1].sum() == 4   # 5 kHz * 5 = 25 kHz > 24 kHz
    raw = torch.zeros(1, 2, 1 + 10 + 5)
    controls = dsp.raw_to_controls(raw, f0, 10, 5, SR)
    assert torch.allclose(controls.harmonic_distribution.sum(-1), torch.ones(1, 2))
    assert controls.harmonic_distribution[0, 1, 4:].abs().max() == 0


def test_noise_matches_numpy_reference():
    c = random_controls(frames=8, bands=33)
    noise = torch.rand(2, 7 * HOP, generator=torch.Generator().manual_seed(1)) * 2 - 1
    state = dsp.initial_state(c.frame(0))
    filtered, _ = dsp.render_noise(c.frames(1), noise, state, HOP)
    ref = numpy_noise(c.noise_magnitudes.double().numpy(), noise.double().numpy(), HOP)
    np.testing.assert_allclose(filtered.numpy(), ref, atol=1e-5)


def test_noise_filter_shapes_spectrum():
    """A low-pass band profile leaves little energy above the cut-off."""
    bands = 65
    mags = torch.zeros(1, 200, bands)
    mags[..., :16] = 1.0    # up to ~5.6 kHz
    c = dsp.SynthControls(torch.full((1, 200), 220.0), torch.zeros(1, 200), torch.zeros(1, 200, 4), mags)
    noise = torch.rand(1, 199 * HOP, generator=torch.Generator().manual_seed(0)) * 2 - 1
    filtered, _ = dsp.render_noise(c.frames(1), noise, dsp.initial_state(c.frame(0)), HOP)
    spec = np.abs(np.fft.rfft(filtered[0].numpy())) ** 2
    freqs = np.fft.rfftfreq(filtered.shape[1], 1 / SR)
    assert spec[freqs > 9000].sum() < 0.01 * spec[freqs < 5000].sum()


@pytest.mark.parametrize("chunks", [[1] * 29, [3, 7, 2, 5, 1, 11], [29], [2, 27]])
def test_streaming_equals_offline(chunks):
    c = random_controls(frames=30, harmonics=24, bands=65)
    noise = torch.rand(2, 29 * HOP, generator=torch.Generator().manual_seed(3)) * 2 - 1
    h, n, _ = dsp.synthesize(c.frames(1), noise, dsp.initial_state(c.frame(0)), HOP, SR)
    offline = h + n
    state = dsp.initial_state(c.frame(0))
    parts, frame, sample = [], 1, 0
    for size in chunks:
        h, n, state = dsp.synthesize(c.frames(frame, frame + size), noise[:, sample:sample + size * HOP], state, HOP, SR)
        parts.append(h + n)
        frame += size
        sample += size * HOP
    torch.testing.assert_close(torch.cat(parts, 1), offline, atol=1e-5, rtol=0)


def test_sine_has_expected_pitch_and_level():
    frames = 200
    f0 = torch.full((1, frames), 440.0)
    dist = torch.zeros(1, frames, 8)
    dist[..., 0] = 1.0
    c = dsp.SynthControls(f0, torch.full((1, frames), 0.5), dist, torch.zeros(1, frames, 17))
    h, _, _ = dsp.synthesize(c.frames(1), torch.zeros(1, (frames - 1) * HOP), dsp.initial_state(c.frame(0)), HOP, SR)
    x = h[0].numpy()
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    peak_hz = np.argmax(spec) * SR / len(x)
    assert abs(peak_hz - 440.0) < SR / len(x)
    assert abs(np.max(np.abs(x)) - 0.5) < 1e-3


def test_pitch_and_input_scalings_agree_for_tensors_and_in_place_arrays():
    """The engine computes the decoder's inputs with the model's own functions on preallocated arrays (``out=``);
    they must give what the decoder computes from tensors."""
    from instrument.model.networks import Decoder, ModelConfig

    config = ModelConfig()
    midi = np.array([21.0, 57.5, 69.0, 100.25])
    f0_out = np.zeros(4)
    assert dsp.midi_to_hz(midi, out=f0_out) is f0_out
    np.testing.assert_allclose(f0_out, dsp.midi_to_hz(torch.from_numpy(midi)).numpy(), rtol=1e-12)
    np.testing.assert_allclose(f0_out[2], 440.0)
    np.testing.assert_allclose(dsp.hz_to_midi(torch.from_numpy(f0_out)).numpy(), midi, atol=1e-9)
    loudness_db = np.array([-80.0, -40.0, -12.0, 0.0])
    f0_in, ld_in = np.zeros(4, np.float32), np.zeros(4, np.float32)
    assert config.f0_input(midi, out=f0_in) is f0_in and config.loudness_input(loudness_db, out=ld_in) is ld_in
    want_f0, want_ld = Decoder(config).scale_inputs(torch.from_numpy(f0_out).float(), torch.from_numpy(loudness_db).float())
    np.testing.assert_allclose(f0_in, want_f0[:, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(ld_in, want_ld[:, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(ld_in, (loudness_db - config.loudness_center_db) / config.loudness_scale_db, atol=1e-6)
