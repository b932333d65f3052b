"""What the README claims of sdga-train's run control, each checked by a short run through the CLI:
the --max-time budget stops a run, early stopping stops one, --seed makes a whole run reproducible, and under
DDP only rank 0 exports. (Ctrl-C / SIGTERM: tests/test_train_e2e.py.)"""
import csv
import json

import pytest
import pytorch_lightning as pl
import torch

from instrument.model.bundle import load_bundle
from training.cli import train_main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(demo_corpus_dir, tmp_path_factory):
    """run(name, *extra_args) -> (exit code, run folder): a small sdga-train run sharing one feature cache.
    Tests pass --no-augment unless they need augmentation: each variant costs a pedalboard render."""
    cache = tmp_path_factory.mktemp("claims_cache")
    root = tmp_path_factory.mktemp("claims")

    def train(name, *extra):
        out = root / name
        rc = train_main([str(demo_corpus_dir), "-o", str(out), "--batch-size", "2", "--window", "0.5",
                         "--cache-dir", str(cache), "--latents", "2", "--no-progress", "--threads", "2", *extra])
        return rc, out

    return train


def summary_of(out):
    return json.loads((out / "summary.json").read_text())


def val_losses(out):
    rows = csv.DictReader((out / "logs" / "metrics.csv").open())
    return [float(r["val/loss"]) for r in rows if r.get("val/loss")]


def test_max_time_stops_the_run(run):
    rc, out = run("max_time", "--no-augment", "--max-time", "3s", "--max-steps", "300", "--val-every", "5",
                  "--patience", "1000")
    assert rc == 0
    t = summary_of(out)["training"]
    assert 0 < t["steps"] < 300 and not t["interrupted"], t     # the budget stopped it, not the step count
    assert t["fit_seconds"] >= 3.0, t
    load_bundle(out / "model.sdga")


def test_early_stopping_stops_after_patience_validations_without_improvement(run):
    # --lr 0: the weights never change, so every validation loss equals the first and none improves on it.
    rc, out = run("early_stop", "--no-augment", "--lr", "0", "--patience", "2", "--val-every", "1",
                  "--max-steps", "50", "--max-time", "0")
    assert rc == 0
    assert summary_of(out)["training"]["steps"] == 3       # validations at steps 1 (best), 2 and 3 (patience 2)
    losses = val_losses(out)
    assert len(losses) == 3 and len(set(losses)) == 1


def test_seed_reproduces_the_whole_run(run):
    """README: --seed gives reproducible runs (split, augmentation, windows, initialisation): two runs with one
    seed and step budget end with identical weights, validation losses and held-out metrics; another seed not."""
    args = ("--max-steps", "4", "--val-every", "2", "--max-time", "0", "--augment-variants", "1")
    runs = [run(name, *args, "--seed", seed) for name, seed in (("seed0_a", "0"), ("seed0_b", "0"), ("seed1", "1"))]
    assert [rc for rc, _ in runs] == [0, 0, 0]
    (_, a), (_, b), (_, c) = runs
    weights = [load_bundle(out / "model.sdga").decoder.state_dict() for out in (a, b, c)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
    assert val_losses(a) == val_losses(b) and len(val_losses(a)) == 2
    assert val_losses(a) != val_losses(c)
    assert summary_of(a)["heldout"] == summary_of(b)["heldout"]
    assert summary_of(a)["latents"] == summary_of(b)["latents"]
    ckpts = [torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
             for out in (a, b)]                           # the encoder too, which the model file leaves out
    assert all(torch.equal(ckpts[0][k], ckpts[1][k]) for k in ckpts[0])


def test_only_rank_0_exports(run, monkeypatch, capsys):
    """Under DDP (--devices N) Lightning starts one process per device; only global rank 0 may write the model
    file, summary and held-out audio. Simulated in one process: the trainer reports global rank 1."""
    monkeypatch.setattr(pl.Trainer, "global_rank", property(lambda self: 1))
    rc, out = run("rank1", "--no-augment", "--max-steps", "2", "--val-every", "2", "--max-time", "0")
    assert rc == 0
    assert not (out / "model.sdga").exists() and not (out / "summary.json").exists()
    assert not (out / "heldout").exists()
    assert "done in" not in capsys.readouterr().out
