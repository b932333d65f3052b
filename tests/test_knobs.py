"""Knobs found by intervention (training.knobs): the fold is exact, offered knobs pass a real-render check and
are distinct and plainly named, unoffered directions are inactive and never mapped, older files keep their
knob meaning."""
import numpy as np
import pytest
import torch

from instrument.model.bundle import CorpusInfo, LatentInfo, load_bundle, random_bundle, save_bundle
from instrument.model.modelfile import read_metadata, save_model_file
from instrument.model.networks import Decoder, ModelConfig
from instrument.model.offline import encode_means, render_controls
from training import knobs

SMALL = ModelConfig(hidden_size=40, gru_size=16, encoder_gru_size=8, n_harmonics=16, n_noise_bands=17, latent_dim=6)


def random_basis(D: int, seed: int = 1) -> knobs.KnobBasis:
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((D, D)) + 2.0 * np.eye(D)
    return knobs.KnobBasis(rng.standard_normal(D), A)


# ---------------------------------------------------------------------------------------------- the fold
def test_folded_decoder_renders_what_the_unfolded_one_renders_at_the_corresponding_z():
    bundle = random_bundle(SMALL, seed=3)
    basis = random_basis(SMALL.latent_dim)
    folded = knobs.fold_decoder(bundle.decoder, basis)
    n = 200
    f0 = np.full(n, 220.0, np.float32)
    ld = np.linspace(-50, -20, n).astype(np.float32)
    u = np.random.default_rng(2).standard_normal((n, SMALL.latent_dim)).astype(np.float32) * 0.5
    z = basis.to_z(u).astype(np.float32)
    a = render_controls(bundle.decoder, f0, ld, z, seed=1)
    b = render_controls(folded, f0, ld, u, seed=1)
    assert np.abs(a).max() > 1e-3
    np.testing.assert_allclose(b, a, atol=2e-5 * np.abs(a).max())
    assert not torch.equal(folded.z_mlp[0].weight, bundle.decoder.z_mlp[0].weight)   # the copy was folded


def test_folded_encoder_gives_knob_coordinates_and_resynthesis_is_unchanged():
    bundle = random_bundle(SMALL, seed=4)
    basis = random_basis(SMALL.latent_dim, seed=5)
    decoder, encoder = knobs.fold_networks(bundle.decoder, bundle.encoder, basis)
    sr = SMALL.sample_rate
    t = np.arange(sr // 2) / sr
    audio = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 660 * t)).astype(np.float32)
    mean_z, logvar_z = encode_means(bundle.encoder, audio)
    mean_u, logvar_u = encode_means(encoder, audio)
    np.testing.assert_allclose(mean_u, basis.to_u(mean_z), atol=1e-4)
    np.testing.assert_array_equal(logvar_u, logvar_z)          # the log-variance head is left as it was
    n = mean_z.shape[0]
    f0, ld = np.full(n, 220.0, np.float32), np.full(n, -30.0, np.float32)
    a = render_controls(bundle.decoder, f0, ld, mean_z, seed=0)
    b = render_controls(decoder, f0, ld, mean_u, seed=0)
    np.testing.assert_allclose(b, a, atol=2e-5 * np.abs(a).max())


# ---------------------------------------------------------------------------------------------- the analysis
class LinearZDecoder(Decoder):
    """A decoder whose z moves known things, through the first z layer only (the layer the fold rewrites):
    z0 the spectral tilt (brightness), z4 the same tilt, weaker (the same knob twice), z1 the noise, z2 odd
    against even harmonics, z3 the level; z5 nothing."""

    def forward(self, f0_hz, loudness_db, z, gru_state=None):
        c = self.config
        _, ld = self.scale_inputs(f0_hz, loudness_db)
        h = self.z_mlp[0](z)
        H, N = c.n_harmonics, c.n_noise_bands
        raw0 = 1.5 * ld[..., 0] + h[..., 0]
        return torch.cat([raw0.unsqueeze(-1), self.out.bias[1:1 + H] + h[..., 1:1 + H], h[..., 1 + H:1 + H + N]],
                         -1), gru_state


def designed_decoder() -> LinearZDecoder:
    dec = LinearZDecoder(SMALL).eval()
    H, N = SMALL.n_harmonics, SMALL.n_noise_bands
    k = np.arange(1, H + 1)
    W = np.zeros((SMALL.hidden_size, SMALL.latent_dim))
    W[1:1 + H, 0] = 0.1 * np.log2(k)
    W[1:1 + H, 4] = 0.04 * np.log2(k)
    W[1 + H:1 + H + N, 1] = 0.12
    W[1:1 + H, 2] = np.where(k % 2 == 1, 0.08, -0.08)
    W[0, 3] = 0.25
    with torch.no_grad():
        dec.z_mlp[0].weight.copy_(torch.as_tensor(W, dtype=torch.float32))
        dec.z_mlp[0].bias.zero_()
        dec.z_mlp[0].bias[1 + H:1 + H + N] = 1.0
    return dec


CORPUS_INFO = CorpusInfo(f0_range_hz=(110.0, 880.0), f0_median_hz=300.0, loudness_range_db=(-50.0, -15.0),
                         loudness_median_db=-30.0)
GRID = knobs.NoteGrid((300.0,), (-30.0,), 0.5)


@pytest.fixture(scope="module")
def analysed():
    torch.manual_seed(0)
    decoder = designed_decoder()
    rng = np.random.default_rng(0)
    corpus = knobs.CorpusLatents(rng.standard_normal((4000, SMALL.latent_dim)),
                                 np.array([0.5, 0.5, 0.5, 0.5, 0.5, 0.001]))
    analysis = knobs.analyse_knobs(decoder, None, [], CORPUS_INFO, corpus=corpus, grid=GRID, log=lambda s: None)
    return decoder, corpus, analysis


@pytest.mark.slow
def test_offered_knobs_are_distinct_plainly_named_and_pass_a_real_render(analysed):
    decoder, corpus, analysis = analysed
    offered = [l for l in analysis.latents if l.active]
    assert len(offered) >= 2
    names = [l.name for l in analysis.latents]
    assert len(set(names)) == len(names)
    assert not any(ch.isdigit() for l in offered for ch in l.name)             # no brightness2
    assert len({l.descriptor for l in offered}) == len(offered)                # never the same knob twice
    assert [l.index for l in analysis.latents] == list(range(SMALL.latent_dim))
    assert analysis.latents[:len(offered)] == offered                          # offered first, in candidate order
    order = [knobs.KNOB_CANDIDATES.index(l.descriptor) for l in offered]
    assert order == sorted(order)
    # Measured again, independently of the analysis: render the folded decoder at knob 0 and 1.
    folded = knobs.fold_decoder(decoder, analysis.basis)
    units = knobs.descriptor_units()
    figs = {}
    for l in offered:
        u = np.zeros((3, SMALL.latent_dim))
        u[:, l.index] = [l.knob_to_z(0.0), l.knob_to_z(0.5), l.knob_to_z(1.0)]
        figs[l.name] = knobs.sweep_figures(knobs.measure_grid(folded, GRID, u))
        assert figs[l.name]["deltas"][l.descriptor] >= units[l.descriptor]
        assert figs[l.name]["pitch_cents_max"] < 5.0 and figs[l.name]["loudness_db_max"] < 1.5
        assert l.descriptor_deltas[l.descriptor] == pytest.approx(figs[l.name]["deltas"][l.descriptor], abs=1e-3)
        assert 0.0 <= l.corpus_low < l.corpus_high <= 1.0
    for l in offered:
        others = [figs[o.name] for o in offered if o is not l]
        ok, why = knobs.knob_passes(l.descriptor, figs[l.name], others)
        assert ok, (l.name, why)


@pytest.mark.slow
def test_unoffered_directions_are_inactive_and_no_default_mapping_points_at_them(analysed, tmp_path):
    from pathlib import Path

    from instrument.controls.mapping import parse_mapping
    from instrument.controls.routing import default_mapping_text

    decoder, _, analysis = analysed
    bundle = random_bundle(SMALL)
    bundle.latents = analysis.latents
    n_offered = sum(l.active for l in analysis.latents)
    assert n_offered < SMALL.latent_dim
    inactive = {l.index for l in analysis.latents if not l.active}
    for text in (default_mapping_text(len(bundle.latents)),
                 (Path(__file__).parents[1] / "mappings" / "default.yaml").read_text()):
        text = text.replace("patches: ../patches\n", "").replace("  - {program: true, target: patch/select}\n", "")
        mapping = parse_mapping(None, bundle, text=text)
        latent_targets = {b.target.index for b in mapping.bindings if b.target.kind == "latent"}
        assert latent_targets and not latent_targets & inactive


def test_fixed_candidate_order_and_flatness_excludes_the_noise_ratio():
    sets = knobs.candidate_sets(5)
    assert sets[0] == ("centroid_octaves", "noise_ratio_db", "odd_even_db", "spread_octaves")
    assert all(not {"noise_ratio_db", "flatness_log10"} <= set(s) for s in sets)
    assert all(len(a) >= len(b) for a, b in zip(sets, sets[1:]))


def test_a_knob_that_moves_another_knobs_descriptor_too_much_is_refused():
    own = {"deltas": {"centroid_octaves": 0.5}, "pitch_cents_max": 0.0, "loudness_db_max": 0.1}
    other = {"deltas": {"centroid_octaves": 0.2}, "pitch_cents_max": 0.0, "loudness_db_max": 0.1}
    assert knobs.knob_passes("centroid_octaves", own, [])[0]
    assert not knobs.knob_passes("centroid_octaves", own, [other])[0]                    # 0.5 < 3 x 0.2
    assert not knobs.knob_passes("centroid_octaves", dict(own, loudness_db_max=1.6), [])[0]
    assert not knobs.knob_passes("centroid_octaves", dict(own, pitch_cents_max=5.0), [])[0]
    assert not knobs.knob_passes("centroid_octaves", dict(own, deltas={"centroid_octaves": 0.2}), [])[0]


def test_knob_range_puts_the_corpus_in_the_middle_and_extrapolates_an_eighth_each_side():
    u = np.random.default_rng(0).standard_normal(10000)
    r = knobs.knob_range(knobs.corpus_band(u, np.array([0.1])))
    p5, p95 = np.percentile(u, [5, 95])
    assert (r.corpus_low, r.corpus_high) == pytest.approx((0.125, 0.875))
    assert r.knob_to_u(0.125) == pytest.approx(p5) and r.knob_to_u(0.875) == pytest.approx(p95)
    clipped = knobs.knob_range(knobs.corpus_band(u, np.array([2.0])))     # latent would leave the corpus
    assert clipped.high - clipped.low < r.high - r.low and clipped.corpus_low == 0.0


def test_the_knob_reaches_over_the_variants_and_shows_where_the_recordings_lie():
    """The band (what the knob reaches) is over every training frame, the corpus marks and the centre are the
    recordings' own: augmented variants that reach past the recordings widen the knob, not its default."""
    rng = np.random.default_rng(0)
    recorded_u = rng.normal(0.0, 0.5, 4000)
    variant_u = rng.normal(1.5, 1.0, 4000)
    u = np.concatenate([recorded_u, variant_u])
    recorded = np.arange(len(u)) < len(recorded_u)
    lo, hi, r_lo, r_hi = knobs.corpus_band(u, np.array([0.1]), recorded)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(u, [5, 95])))
    assert (r_lo, r_hi) == pytest.approx(tuple(np.percentile(recorded_u, [5, 95])))
    r = knobs.knob_range((lo, hi, r_lo, r_hi))
    assert 0.0 < r.corpus_low < r.corpus_high < 0.6                  # the variants reach past the recordings
    corpus = knobs.CorpusLatents(np.stack([u, u], 1), np.array([0.5, 0.5]), recorded)
    assert corpus.centre == pytest.approx([recorded_u.mean()] * 2)
    assert corpus.span == pytest.approx([hi - lo] * 2)


def test_corpus_latents_spread_over_recordings_and_variants():
    from types import SimpleNamespace

    from training.features import Features

    bundle = random_bundle(SMALL, seed=2)
    sr, hop = SMALL.sample_rate, SMALL.hop_size
    examples = []
    for i, name in enumerate(["a", "b", "a~aug0", "a~aug1", "b~aug2", "b~aug3"]):
        n = (3 + i) * sr // 2 // hop * hop
        t = np.arange(n) / sr
        f0 = np.full(n // hop + 1, 110.0 * (i + 1), np.float32)
        feats = Features(f0, np.ones_like(f0), np.ones_like(f0, dtype=bool), np.full_like(f0, -20.0))
        examples.append(SimpleNamespace(name=name, audio=(0.2 * np.sin(2 * np.pi * 110.0 * (i + 1) * t)).astype(
            np.float32), features=feats))
    corpus = knobs.corpus_latents(bundle.encoder, examples, max_seconds=12.0)
    assert corpus.recorded is not None and corpus.recorded.any() and not corpus.recorded.all()
    block = hop * SMALL.encoder_stride                                 # 2 s (or all) of each of the 6 examples
    lengths = [min(len(e.audio), 2 * sr // block * block) for e in examples]
    assert len(corpus.means) == sum(n // hop + 1 for n in lengths)
    assert corpus.recorded.sum() == sum(n // hop + 1 for n in lengths[:2])


# ---------------------------------------------------------------------------------------------- the file
def test_latent_info_round_trips_the_new_fields_and_older_entries_load_unchanged(tmp_path):
    info = LatentInfo(0, "brightness", True, 0.4, -1.5, 2.5, 0.1, 0.7, {"centroid_octaves": 0.5},
                      corpus_low=0.125, corpus_high=0.875, descriptor="centroid_octaves")
    assert LatentInfo.from_dict(info.to_dict()) == info
    old = {k: v for k, v in info.to_dict().items() if k not in ("corpus_low", "corpus_high", "descriptor")}
    loaded = LatentInfo.from_dict(old)
    assert (loaded.corpus_low, loaded.corpus_high, loaded.descriptor) == (None, None, None)
    assert loaded.knob_to_z(0.3) == info.knob_to_z(0.3)
    # a format-3 file written before the fields existed loads with its knob meaning
    bundle = random_bundle(SMALL)
    path = save_bundle(tmp_path / "new.sdga", bundle)
    meta = read_metadata(path)
    for entry in meta["latents"]:
        for key in ("corpus_low", "corpus_high", "descriptor"):
            del entry[key]
    from safetensors.torch import load_file
    old_path = save_model_file(tmp_path / "old.sdga", load_file(str(path)), meta)
    again = load_bundle(old_path)
    assert [l.knob_to_z(0.7) for l in again.latents] == [l.knob_to_z(0.7) for l in bundle.latents]
    assert all(l.corpus_low is None for l in again.latents)


@pytest.mark.slow                       # numba compiles the engine's kernels (~30 s on 2 busy cores)
def test_the_live_engine_plays_a_folded_model_as_it_played_the_unfolded_one():
    """The numba decoder kernel reads the folded weights: the same note at corresponding z sounds the same."""
    import dataclasses

    import mido

    from instrument.apps.render import render_midi

    bundle = random_bundle(SMALL, seed=6)
    basis = random_basis(SMALL.latent_dim, seed=7)
    u0 = basis.to_u(np.zeros(SMALL.latent_dim))             # the unfolded model's default z (0) in knob coordinates
    folded = dataclasses.replace(
        bundle, decoder=knobs.fold_decoder(bundle.decoder, basis), encoder=None,
        latents=[dataclasses.replace(l, mean=float(u0[l.index]), low=float(u0[l.index]) - 1.0,
                                     high=float(u0[l.index]) + 1.0) for l in bundle.latents])
    track = mido.MidiTrack()
    track.append(mido.Message("note_on", note=60, velocity=100, time=0))
    track.append(mido.Message("note_off", note=60, velocity=0, time=480))
    midi = mido.MidiFile(ticks_per_beat=480)
    midi.tracks.append(track)
    a, _ = render_midi(bundle, midi, block_size=256)
    b, _ = render_midi(folded, midi, block_size=256)
    assert np.abs(a).max() > 1e-3
    np.testing.assert_allclose(b, a, atol=1e-4 * np.abs(a).max())


def test_a_narrowed_knob_lies_inside_the_corpus_band():
    u = np.random.default_rng(1).standard_normal(10000)
    band = knobs.corpus_band(u, np.array([0.1]))
    full = knobs.knob_range(band, 0.0)
    half = knobs.knob_range(band, knobs.EXTRAPOLATION, narrow=0.5)      # narrowing drops the extrapolation
    assert half.high - half.low == pytest.approx(0.5 * (full.high - full.low))
    assert 0.5 * (half.low + half.high) == pytest.approx(0.5 * (full.low + full.high))
    assert (half.corpus_low, half.corpus_high) == (0.0, 1.0)
    assert knobs.SHRINK_STEPS[0] == (knobs.EXTRAPOLATION, 1.0) and knobs.SHRINK_STEPS[-1][1] < 1.0
