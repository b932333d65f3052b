"""Disentanglement metrics (known answers), the synthetic corpus (its factors are measurable in its audio), the
probes of a trained model (invariance, MIDI accuracy), the resumable drivers and sdga-report."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf

from evaluation.disentanglement import dci_linear, latent_codes_for_corpus, mutual_information_gap
from evaluation.experiments import beta_table
from evaluation.playing import (INVARIANCE_F0_CENTS, invariance_check, measure_note, midi_play_accuracy,
                                velocity_to_loudness_db)
from evaluation.synthetic_corpus import (FACTOR_NAMES, FACTORS_CSV, factor_to_physical, harmonic_amplitudes,
                                         load_factors, make_synthetic_corpus, measure_timbre)
from training.module import LossConfig


# ---------------------------------------------------------------------------------------------- MIG and DCI
@pytest.fixture(scope="module")
def factors():
    return np.random.default_rng(0).uniform(size=(5000, 3))


def test_mig_identity_is_near_one(factors):
    mig, per = mutual_information_gap(factors, factors)
    assert mig > 0.95 and per.shape == (3,) and np.all(per > 0.95)


def test_mig_random_latents_is_near_zero(factors):
    latents = np.random.default_rng(1).normal(size=(len(factors), 4))
    mig, per = mutual_information_gap(latents, factors)
    assert mig < 0.02 and np.all(per < 0.03)


def test_mig_mixed_latents_is_near_zero(factors):
    rotation = np.array([[1.0, -1.0], [1.0, 1.0]]) / math.sqrt(2)      # every latent half of each factor
    mig, _ = mutual_information_gap(factors[:, :2] @ rotation.T, factors[:, :2])
    assert mig < 0.05


def test_mig_permuted_affine_latents_plus_nuisance_match_identity(factors):
    rng = np.random.default_rng(2)
    latents = np.c_[3.0 * factors[:, 2] - 1.0, rng.normal(size=len(factors)), -5.0 * factors[:, 0], factors[:, 1]]
    mig, per = mutual_information_gap(latents, factors)
    ref, _ = mutual_information_gap(factors, factors)
    assert abs(mig - ref) < 1e-9 and np.all(per > 0.95)


def test_mig_factor_split_over_two_latents_scores_zero_for_that_factor(factors):
    noise = 1e-4 * np.random.default_rng(3).normal(size=len(factors))
    latents = np.c_[factors[:, 0], factors[:, 0] + noise, factors[:, 1], factors[:, 2]]
    _, per = mutual_information_gap(latents, factors)
    assert per[0] < 0.1 and per[1] > 0.95 and per[2] > 0.95


def test_mig_discrete_factors_and_constant_factor():
    rng = np.random.default_rng(4)
    v = np.c_[rng.integers(0, 4, 2000), np.zeros(2000)]
    mig, per = mutual_information_gap(v[:, :1].astype(float), v)
    assert per[0] == pytest.approx(1.0) and np.isnan(per[1]) and mig == pytest.approx(1.0)


def test_dci_linear_identity_rotation_random(factors):
    ident = dci_linear(factors, factors)
    assert ident["disentanglement"] > 0.99 and ident["completeness"] > 0.99 and ident["informativeness"] > 0.99
    rotation = np.array([[1.0, -1.0], [1.0, 1.0]]) / math.sqrt(2)
    mixed = dci_linear(factors[:, :2] @ rotation.T, factors[:, :2])
    assert mixed["disentanglement"] < 0.05 and mixed["informativeness"] > 0.99
    random = dci_linear(np.random.default_rng(5).normal(size=(len(factors), 3)), factors)
    assert random["informativeness"] < 0.02


# ---------------------------------------------------------------------------------------------- synthetic corpus
def test_harmonic_amplitudes_follow_tilt_and_even_gain():
    a = harmonic_amplitudes(-6.0, -20.0, n_harmonics=8)
    assert (a ** 2).sum() == pytest.approx(1.0)
    assert 20 * np.log10(a[3] / a[0]) == pytest.approx(-6.0 * 2 - 20.0)       # harmonic 4: two octaves, even
    assert 20 * np.log10(a[2] / a[0]) == pytest.approx(-6.0 * np.log2(3))     # harmonic 3: odd
    p = factor_to_physical(0.0, 1.0, 0.5)
    assert p == {"tilt_db_per_octave": -18.0, "noise_ratio_db": -6.0, "even_gain_db": -15.0}


def _rank_correlation(x, y) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    paths = make_synthetic_corpus(out, n_files=6, seconds=4.0, seed=0, segments_per_file=3)
    return out, paths


def test_synthetic_corpus_files_and_tables(synthetic):
    out, paths = synthetic
    assert [p.name for p in paths] == [f"synth_{i:03d}.wav" for i in range(6)]
    audio, sr = sf.read(paths[0])
    assert sr == 48000 and len(audio) == 4 * 48000 and np.isfinite(audio).all()
    assert np.max(np.abs(audio)) == pytest.approx(10 ** (-1 / 20), abs=1e-3)
    rows = load_factors(out)
    assert len(rows) == 18 and (out / FACTORS_CSV).is_file()
    values = np.array([[r[k] for k in FACTOR_NAMES] for r in rows])
    assert values.min() >= 0 and values.max() <= 1
    # Latin hypercube: one value per 1/18 stratum in every factor
    assert all(sorted(np.floor(values[:, k] * 18).astype(int)) == list(range(18)) for k in range(3))
    for r in rows:
        assert 0 <= r["start_s"] < r["end_s"] <= 4.0
        assert r["tilt_db_per_octave"] == pytest.approx(factor_to_physical(r["brightness"], r["breath"],
                                                                           r["hollowness"])["tilt_db_per_octave"], abs=1e-3)
        assert 190 < r["f0_min_hz"] <= r["f0_max_hz"] < 800


def test_synthetic_corpus_is_reused_and_deterministic(synthetic, tmp_path):
    out, paths = synthetic
    mtimes = [p.stat().st_mtime_ns for p in paths]
    assert make_synthetic_corpus(out, n_files=6, seconds=4.0, seed=0, segments_per_file=3) == paths
    assert [p.stat().st_mtime_ns for p in paths] == mtimes
    a = make_synthetic_corpus(tmp_path / "a", n_files=2, seconds=1.0, seed=3, segments_per_file=1)
    b = make_synthetic_corpus(tmp_path / "b", n_files=2, seconds=1.0, seed=3, segments_per_file=1)
    c = make_synthetic_corpus(tmp_path / "c", n_files=2, seconds=1.0, seed=4, segments_per_file=1)
    assert np.array_equal(sf.read(a[1])[0], sf.read(b[1])[0]) and not np.array_equal(sf.read(a[1])[0], sf.read(c[1])[0])
    assert load_factors(tmp_path / "a") == load_factors(tmp_path / "b")


def test_synthetic_factors_are_measurable_in_the_audio(synthetic):
    out, _ = synthetic
    rows = load_factors(out)
    measured = []
    for r in rows:
        audio, sr = sf.read(out / r["file"])
        measured.append(measure_timbre(audio, sr, r["start_s"], r["end_s"]))
    for factor, key in (("brightness", "harmonic_centroid"), ("breath", "noise_ratio_db"),
                        ("hollowness", "odd_even_db")):
        rho = _rank_correlation([r[factor] for r in rows], [m[key] for m in measured])
        assert rho > 0.7, (factor, key, rho)


# ---------------------------------------------------------------------------------------------- probes
def test_measure_note_resolves_below_the_pyin_grid():
    sr, f_ref = 48000, 440.0
    t = np.arange(sr) / sr
    for cents in (0.0, 3.0, -2.0):
        f = f_ref * 2 ** (cents / 1200)
        tone = sum(0.3 / k * np.sin(2 * np.pi * k * f * t) for k in range(1, 8)).astype(np.float32)
        m = measure_note(tone, f_ref, sr, 128)
        assert m["f0_cents"] == pytest.approx(cents, abs=0.2) and m["voiced_fraction"] > 0.9
    silent = measure_note(np.zeros(sr, np.float32), f_ref, sr, 128)
    assert math.isnan(silent["f0_cents"])


def test_measure_note_can_read_a_breathy_note_by_its_harmonics():
    """pYIN calls a tone buried in noise unvoiced; the invariance check still needs its pitch."""
    sr = 48000
    t = np.arange(int(0.8 * sr)) / sr
    audio = (0.05 * np.sin(2 * np.pi * 300.0 * t)
             + 0.3 * np.random.default_rng(0).standard_normal(len(t))).astype(np.float32)
    assert math.isnan(measure_note(audio, 300.0, sr, 128)["f0_cents"])
    m = measure_note(audio, 300.0, sr, 128, unvoiced_by_peaks=True)
    assert abs(m["f0_cents"]) < INVARIANCE_F0_CENTS and m["f0_from"] == "harmonic peaks"
    shifted = measure_note(audio, 300.0 * 2 ** (30 / 1200), sr, 128, unvoiced_by_peaks=True)
    assert abs(shifted["f0_cents"] + 30) < INVARIANCE_F0_CENTS


def test_velocity_mapping():
    assert velocity_to_loudness_db(0, (-40, -10)) == -40
    assert velocity_to_loudness_db(127, (-40, -10)) == -10
    assert velocity_to_loudness_db(200, (-40, -10)) == -10


@pytest.fixture(scope="module")
def trained(synthetic, tmp_path_factory):
    """A tiny model trained (3 steps) on the synthetic corpus through the beta_table driver, and its bundle."""
    from instrument.model.bundle import load_bundle
    from training.train import TrainConfig

    corpus, _ = synthetic
    out = tmp_path_factory.mktemp("beta")
    base = TrainConfig(corpus_dir=corpus, cache_dir=tmp_path_factory.mktemp("cache"), latent_dim=3, beta=1.0,
                       window_seconds=0.5, batch_size=2, max_steps=3, max_time_s=60, val_every_steps=3,
                       augment=False, num_threads=1, progress=False, heldout_seconds=2.0)
    data = beta_table(base, [1.0], out, eval_dir=corpus, invariance=True, midi=True, quick=True, log=lambda *a: None)
    return base, out, data, load_bundle(out / "beta_1" / "model.sdga")


def test_beta_table_writes_results_and_resumes(trained, synthetic, monkeypatch):
    base, out, data, _ = trained
    saved = json.loads((out / "beta_table.json").read_text())
    assert saved["kind"] == "beta_table" and len(saved["rows"]) == 1
    row = saved["rows"][0]
    assert row["beta"] == 1.0 and row["steps"] == 3 and 0 <= row["mig"] <= 1
    assert row["attribute_weight"] == LossConfig().attribute_weight          # what the run was trained with
    assert row["invariance_weight"] == LossConfig().invariance_weight
    assert row["invariance_checked"] == row["active_latents"] and "midi_f0_cents_median_abs" in row
    import training.train
    monkeypatch.setattr(training.train, "run_training", lambda *a, **k: pytest.fail("trained again"))
    again = beta_table(base, [1.0], out, eval_dir=synthetic[0], invariance=True, midi=True, quick=True,
                       log=lambda *a: None)
    assert again["rows"][0]["mig"] == row["mig"]


def test_latent_codes_for_corpus(trained, synthetic):
    bundle = trained[3]
    corpus, paths = synthetic
    rows = load_factors(corpus)
    z, v = latent_codes_for_corpus(bundle, paths[:2], rows)
    assert z.shape == (6, 3) and v.shape == (6, 3) and np.isfinite(z).all()
    assert np.allclose(v, [[r[k] for k in FACTOR_NAMES] for r in rows if r["file"] in ("synth_000.wav", "synth_001.wav")])


def test_invariance_check_is_well_formed(trained):
    bundle = trained[3]
    result = invariance_check(bundle, n_steps=3, n_pitches=1, seconds=0.6)
    assert len(result) == sum(l.active for l in bundle.latents)
    for r in result:
        assert r["knobs"] == [0.0, 0.5, 1.0] and len(r["rows"]) == 3
        assert {"f0_pass", "loudness_pass", "descriptor_pass", "pass", "descriptor", "descriptor_delta_units"} <= set(r)
        assert r["pass"] == (r["f0_pass"] and r["loudness_pass"] and r["descriptor_pass"])
        assert [row["loudness_change_db"] for row in r["rows"] if row["knob"] == 0.5] == [0.0]


def test_midi_play_accuracy_is_well_formed(trained):
    bundle = trained[3]
    result = midi_play_accuracy(bundle, notes=[60, 67], velocities=(40, 120), seconds=0.5)
    assert result["renders"] == 4 and len(result["rows"]) == 4
    assert isinstance(result["loudness_rises"], bool) and 0 <= result["loudness_rises_fraction"] <= 1
    lo, hi = bundle.corpus.loudness_range_db
    assert [r["loudness_in_db"] for r in result["rows"][:2]] == pytest.approx([lo + (hi - lo) * 40 / 127, lo + (hi - lo) * 120 / 127])
    voiced = [r for r in result["rows"] if not math.isnan(r["f0_cents"])]
    assert voiced                                                  # (all 4 are, measured: within 1e-4 cents)
    # the harmonic synth plays the f0 it is given: what pYIN calls voiced is in tune or an octave error
    assert all(abs(r["f0_cents"]) < INVARIANCE_F0_CENTS or abs(r["f0_cents"]) > 600 for r in voiced)


def test_random_bundle_probes_run():
    from instrument.model.bundle import random_bundle
    from instrument.model.networks import ModelConfig
    bundle = random_bundle(ModelConfig(latent_dim=2))
    assert len(invariance_check(bundle, n_steps=2, n_pitches=1, seconds=0.5)) == 2


# ---------------------------------------------------------------------------------------------- report
def test_sdga_report_writes_markdown_and_figures(trained, tmp_path, capsys):
    from evaluation.report import main
    _, out, data, _ = trained
    run = out / "beta_1"
    ttq = {"kind": "time_to_quality", "settings": {}, "rows": [dict(data["rows"][0], budget_s=60.0)]}
    (tmp_path / "ttq.json").write_text(json.dumps(ttq))
    report = tmp_path / "report"
    assert main([str(run), "-o", str(report), "--quick", "--results", str(out / "beta_table.json"),
                 str(tmp_path / "ttq.json")]) == 0
    text = (report / "report.md").read_text()
    for heading in ("## Training curves", "## Latent traversals", "## Disentanglement", "## Invariance",
                    "## Playing from MIDI", "## Beta table", "## Time to quality"):
        assert heading in text
    for png in ("loss_curves.png", "latents.png", "f0_accuracy.png", "beta_table.png", "time_to_quality.png"):
        assert (report / png).stat().st_size > 5000 and f"({png})" in text
    assert "report written" in capsys.readouterr().out
    assert main([str(tmp_path / "nothing")]) == 2


def test_beta_table_figure_and_table_tell_regularisations_apart(tmp_path):
    """Rows differ in attribute and invariance weights; two rows with the same ones and beta: the newest is drawn."""
    from evaluation.report import _results_section

    def row(beta, attributes, invariance, mig, **extra):
        return {"beta": beta, "attribute_weight": attributes, "mig": mig, "spectral_distance": 1.2,
                "active_latents": 3, "latent_dim": 8, **({"invariance_weight": invariance} if invariance is not None else {}),
                **extra}

    data = {"kind": "beta_table", "settings": {}, "rows": [
        row(1.0, 0.3, None, 0.18), row(4.0, 0.3, None, 0.19), row(4.0, 0.3, 0.0, 0.21), row(4.0, 0.3, 0.1, 0.19),
        row(4.0, 0.0, None, 0.01)]}
    lines = _results_section(data, tmp_path)
    text = "\n".join(lines)
    assert "attributes 0.3 + invariance 0.1" in text and "no attributes" in text
    assert text.count("\n| 4 |") == 4                      # the table keeps every row; only the figure picks
    assert (tmp_path / "beta_table.png").stat().st_size > 5000
