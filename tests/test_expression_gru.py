"""Contract of the learnt sequence model of note expression (training/expression_gru.py): the NumPy step equals
torch's GRU, the training sequences come from the segmented notes with the right targets, and training learns
the note shape inside its time limit."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from training.expression_gru import (FEATURES, GruWeights, NumpyGru, frame_features, note_sequences,
                                     train_gru)

from test_expression import FRAME_MS, TRUE, corpus, one_torch_thread, synthetic_file  # noqa: E402,F401


def _weights(gru: torch.nn.GRU, head: torch.nn.Linear, stride: int = 1) -> GruWeights:
    g = lambda t: t.detach().numpy().astype(np.float64)      # noqa: E731
    return GruWeights(g(gru.weight_ih_l0), g(gru.weight_hh_l0), g(gru.bias_ih_l0), g(gru.bias_hh_l0),
                      g(head.weight), g(head.bias), stride=stride)


def test_numpy_step_equals_torch_per_voice():
    """Two voices stepped interleaved, one reset midway, each equal to torch's GRU over its own sequence."""
    torch.manual_seed(0)
    gru, head = torch.nn.GRU(len(FEATURES), 8, batch_first=True), torch.nn.Linear(8, 2)
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (2, 30, len(FEATURES)))
    with torch.no_grad():
        expected = head(gru(torch.from_numpy(x).float())[0]).numpy()
        restarted = head(gru(torch.from_numpy(x[1:, 10:]).float())[0]).numpy()[0]
    step = NumpyGru(_weights(gru, head), n_voices=2)
    got = np.zeros((2, 30, 2))
    for t in range(30):
        if t == 10:
            step.reset(1)
        for v in (0, 1):
            loud, cents = step.step(v, x[v, t])
            got[v, t] = loud / 10.0, cents / 50.0               # the step returns dB and cents (scaled)
    np.testing.assert_allclose(got[0], expected[0], atol=1e-5)
    np.testing.assert_allclose(got[1, :10], expected[1, :10], atol=1e-5)
    np.testing.assert_allclose(got[1, 10:], restarted, atol=1e-5)


def test_frame_features_tell_held_from_released():
    out = np.zeros(len(FEATURES))
    held = frame_features(out, 100.0, -1.0, 60.0, 2.0, True).copy()
    released = frame_features(out, 100.0, 50.0, 60.0, 2.0, True).copy()
    assert held[FEATURES.index("held")] == 1.0 and released[FEATURES.index("held")] == 0.0
    assert held[FEATURES.index("off_fast")] == 0.0 < released[FEATURES.index("off_fast")]
    assert held[FEATURES.index("legato")] == 1.0 and held[FEATURES.index("interval")] == pytest.approx(2.0 / 12.0)


def test_sequences_hold_each_segmented_note_with_its_level_shape_and_release(corpus):  # noqa: F811
    """One sequence per note of the synthetic corpus (notes of a known articulation separated by silences):
    the held part sits at the note level after the attack, starts under it, the release falls, and the
    pitch targets stay near the note (the vibrato averages out)."""
    seqs = note_sequences(corpus, FRAME_MS, stride=4)
    assert seqs.stride == 4 and seqs.features.shape[0] == 5 * 8
    valid = seqs.masks[..., 0] > 0
    held = (seqs.features[..., FEATURES.index("held")] == 1.0) & valid
    released = (seqs.features[..., FEATURES.index("held")] == 0.0) & valid
    assert released.any(axis=1).sum() >= 30                    # notes ending in silence have their release
    loud = seqs.targets[..., 0]
    assert np.median(loud[:, 0]) < -15.0                        # the attack starts well under the note level
    body = held & (seqs.features[..., FEATURES.index("on_mid")] > 1.0 - np.exp(-500.0 / 300.0))
    assert abs(np.median(loud[body])) < 1.5
    late = released & (seqs.features[..., FEATURES.index("off_mid")] > 0.5)
    early = released & (seqs.features[..., FEATURES.index("off_mid")] < 0.3)
    assert np.median(loud[late]) < np.median(loud[early]) - 10.0
    cents = seqs.targets[..., 1][seqs.masks[..., 1] > 0]
    assert abs(np.median(cents)) < 5.0
    assert 300.0 <= seqs.release_horizon_ms <= 1000.0 + 4 * FRAME_MS


@pytest.mark.slow
def test_training_learns_the_note_shape_and_stops_at_its_time_limit(corpus):  # noqa: F811
    seqs = note_sequences(corpus, FRAME_MS, stride=4)
    quick = train_gru(seqs, hidden=12, max_seconds=0.2, log=lambda *a: None)
    assert quick.epochs >= 1 and quick.train_seconds < 0.2 + 10.0           # stops after the epoch running then
    weights = train_gru(seqs, hidden=12, max_seconds=600.0, max_epochs=60, log=lambda *a: None)
    assert weights.epochs == 60 and weights.notes == seqs.features.shape[0]
    held_out = np.arange(seqs.features.shape[0]) % 5 == 4
    mask = seqs.masks[held_out][..., 0] > 0
    baseline = np.abs(seqs.targets[held_out][..., 0][mask]).mean()       # predicting the note level throughout
    assert weights.held_out_l1_db < 0.6 * baseline
    # the NumPy step plays the trained weights: a note's first frame sits under its level, its body near it
    step = NumpyGru(weights, 1)
    x = np.zeros(len(FEATURES))
    levels = [step.step(0, frame_features(x, (k * 4 + 1) * FRAME_MS, -1.0, 60.0, 0.0, False))[0]
              for k in range(int(1000.0 / (4 * FRAME_MS)))]
    assert levels[0] < np.median(levels[-20:]) - 4.0 and abs(np.median(levels[-20:])) < 3.0


def test_articulation_drift_and_release_are_the_least_error_lines_as_played(corpus):  # noqa: F811
    """The fitted sustain drift and release rate are those the engine should play: against the corpus's own
    notes (levels relative to each note's median level, the reference the velocity map uses), the fitted
    values give no more error than no drift, than the generating articulation's, or than half / twice the
    fitted release rate."""
    from dataclasses import replace

    from instrument.engine.expression import held_level_db, release_level_db
    from training.expression import fit_articulation

    art = fit_articulation(corpus, FRAME_MS, log=lambda *a: None)
    seqs = note_sequences(corpus, FRAME_MS, stride=4)
    on_slow, held_i, off_slow = FEATURES.index("on_slow"), FEATURES.index("held"), FEATURES.index("off_slow")

    def errors(a):
        held_err, release_err = [], []
        for i in range(seqs.features.shape[0]):
            n = int((seqs.masks[i, :, 0] > 0).sum())
            x, y = seqs.features[i, :n].astype(float), seqs.targets[i, :n, 0]
            off = 0.0
            for j in range(n):
                t_on = -1500.0 * np.log(max(1.0 - x[j, on_slow], 1e-12))
                if x[j, held_i] == 1.0:
                    off = held_level_db(a, t_on, a.attack_start_db)
                    if t_on > 300.0:
                        held_err.append(abs(off - y[j]))
                else:
                    t_off = -1000.0 * np.log(max(1.0 - x[j, off_slow], 1e-12))
                    if y[j] > -20.0 - 1e-9 or t_off < 200.0:      # the fall the fit sees (to 20 dB down)
                        release_err.append(abs(max(release_level_db(a, t_off, off), -60.0) - y[j]))
        return np.mean(held_err), np.mean(release_err)

    held, release = errors(art)
    for other in (replace(art, sustain_slope_db_per_s=0.0), replace(art, sustain_slope_db_per_s=TRUE.sustain_slope_db_per_s)):
        assert held <= errors(other)[0] + 1e-6
    for scale in (0.5, 2.0):
        assert release <= errors(replace(art, release_db_per_s=art.release_db_per_s * scale))[1] + 0.05
