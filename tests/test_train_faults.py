"""Training faults injected for real (issue 12): corrupt caches and checkpoints, kill -9, NaN features.

Each test breaks something the way it breaks for a user (a truncated file, a NaN written into a cache entry,
SIGKILL of the process) and checks what is reported and what is kept.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from training import features as F
from training.features import FeatureSettings, extract_corpus_features_reported, features_cache_path

SETTINGS = FeatureSettings()


def _tone(f_hz: float, seconds: float, sample_rate: int = 48000) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (0.3 * np.sin(2 * np.pi * f_hz * t) + 0.1 * np.sin(4 * np.pi * f_hz * t)).astype(np.float32)


# -------------------------------------------------------------------------------------------- feature cache


def test_nan_loudness_cache_entry_is_rejected_recomputed_and_reported(tmp_path, monkeypatch):
    audio = _tone(220.0, 0.3)
    (expected,), first = extract_corpus_features_reported([audio], SETTINGS, tmp_path, n_jobs=1, progress=False,
                                                          names=["a.wav"])
    assert (first.from_cache, first.computed, first.recomputed) == (0, 1, 0)
    path = features_cache_path(tmp_path, audio, SETTINGS)
    loudness = expected.loudness_db.copy()
    loudness[3] = np.nan                                    # the entry a user found: NaN loudness
    F.save_npz_atomic(path, f0_hz=expected.f0_hz, voiced_prob=expected.voiced_prob, voiced=expected.voiced,
                      loudness_db=loudness)

    calls = []
    real = F.pyin_native
    monkeypatch.setattr(F, "pyin_native", lambda *a, **k: calls.append(1) or real(*a, **k))
    (again,), report = extract_corpus_features_reported([audio], SETTINGS, tmp_path, n_jobs=1, progress=False,
                                                        names=["a.wav"])
    assert calls == [1]                                     # recomputed, not read back
    assert np.isfinite(again.loudness_db).all()
    np.testing.assert_array_equal(again.loudness_db, expected.loudness_db)
    assert (report.from_cache, report.computed, report.recomputed) == (0, 0, 1)
    text = report.describe()
    assert "from cache" not in text and "1 recomputed" in text and "a.wav" in text and "loudness_db" in text
    assert F.load_features(path, expected.n_frames) is not None   # the entry was rewritten, good again
    (_,), third = extract_corpus_features_reported([audio], SETTINGS, tmp_path, n_jobs=1, progress=False)
    assert third.describe() == "1 from cache"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "inf_f0"])
def test_corrupt_cache_entry_is_reported_as_recomputed(tmp_path, damage):
    audio = _tone(330.0, 0.3)
    (expected,), _ = extract_corpus_features_reported([audio], SETTINGS, tmp_path, n_jobs=1, progress=False)
    path = features_cache_path(tmp_path, audio, SETTINGS)
    if damage == "truncate":                                # kill -9 of a writer without the atomic rename
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"\0" * 100)
    else:
        f0 = expected.f0_hz.copy()
        f0[0] = np.inf
        F.save_npz_atomic(path, f0_hz=f0, voiced_prob=expected.voiced_prob, voiced=expected.voiced,
                          loudness_db=expected.loudness_db)
    (again,), report = extract_corpus_features_reported([audio], SETTINGS, tmp_path, n_jobs=1, progress=False)
    assert report.recomputed == 1 and report.from_cache == 0
    np.testing.assert_array_equal(again.f0_hz, expected.f0_hz)


def test_nan_augmentation_cache_entry_is_rerendered(tmp_path):
    from training.augment import (_variant_cache_path, draw_params, make_augmented_variants,
                                  make_augmented_variants_reported, variant_rng)

    audio = _tone(440.0, 0.5)
    (feats,), _ = extract_corpus_features_reported([audio], SETTINGS, None, n_jobs=1, progress=False)
    ((rendered, rfeats, params, _),) = make_augmented_variants([audio], [feats], 1, 0, SETTINGS, tmp_path,
                                                               progress=False, n_jobs=1)
    path = _variant_cache_path(tmp_path, audio, feats, draw_params(variant_rng(0, 0, 0)), SETTINGS)
    assert path.is_file()
    bad = rfeats.loudness_db.copy()
    bad[:5] = np.nan
    F.save_npz_atomic(path, audio=rendered, f0_hz=rfeats.f0_hz, voiced_prob=rfeats.voiced_prob,
                      voiced=rfeats.voiced, loudness_db=bad)
    ((_, again, _, _),), report = make_augmented_variants_reported([audio], [feats], 1, 0, SETTINGS, tmp_path,
                                                                   progress=False, n_jobs=1)
    assert np.isfinite(again.loudness_db).all()
    np.testing.assert_allclose(again.loudness_db, rfeats.loudness_db, atol=1e-4)
    assert report.recomputed == 1 and report.from_cache == 0 and "loudness_db" in report.describe()
    path.write_bytes(path.read_bytes()[:1000])              # truncated, as by a writer killed mid-way
    _, report = make_augmented_variants_reported([audio], [feats], 1, 0, SETTINGS, tmp_path, progress=False,
                                                 n_jobs=2)
    assert report.recomputed == 1 and "unreadable" in report.describe()
    _, report = make_augmented_variants_reported([audio], [feats], 1, 0, SETTINGS, tmp_path, progress=False)
    assert report.describe() == "1 from cache"


# -------------------------------------------------------------------------------------- feature workers


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_during_feature_extraction_leaves_no_worker_behind(tmp_path):
    """kill -9 of the parent while 2 worker processes extract features: the workers die too."""
    script = textwrap.dedent("""
        import numpy as np, sys
        from training.features import FeatureSettings, extract_corpus_features
        rng = np.random.default_rng(0)
        audios = [rng.standard_normal(48000 * 40).astype(np.float32) * 0.1 for _ in range(8)]
        print("start", flush=True)
        extract_corpus_features(audios, FeatureSettings(), None, n_jobs=2, progress=False)
        print("finished", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        assert proc.stdout.readline().strip() == "start"
        deadline = time.time() + 120
        workers: list[int] = []
        while len(workers) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
            workers = _children(proc.pid)
        assert len(workers) == 2, f"no pool workers seen (exit {proc.poll()})"
        time.sleep(1.0)                                     # the workers are busy with pYIN
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.time() + 10
        while any(_alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.1)
        left = [w for w in workers if _alive(w)]
    finally:
        if proc.poll() is None:
            proc.kill()
    for w in left:                                          # clean up after a failure, then report it
        os.kill(w, signal.SIGKILL)
    assert not left, f"orphaned feature workers still alive after kill -9 of their parent: {left}"


# ------------------------------------------------------------------------------------------------- training

# --knob-response 0: these runs test checkpoints, resume and export, which need a validation loss that falls
# within 4 steps; the knob-response term (tests/test_response.py) slows the first steps down.
TINY = ["--batch-size", "2", "--window", "0.5", "--no-augment", "--latents", "2", "--no-progress",
        "--threads", "2", "--knob-response", "0"]


def _train(corpus, out, cache, *extra) -> int:
    from training.cli import train_main
    return train_main([str(corpus), "-o", str(out), "--cache-dir", str(cache), *TINY, *extra])


@pytest.fixture(scope="module")
def base_run(demo_corpus_dir, tmp_path_factory):
    """A finished 4-step run (validated at steps 2 and 4) and its feature cache."""
    out = tmp_path_factory.mktemp("base") / "run"
    cache = tmp_path_factory.mktemp("cache")
    assert _train(demo_corpus_dir, out, cache, "--max-steps", "4", "--val-every", "2") == 0
    return out, cache


@pytest.fixture
def run_copy(base_run, tmp_path):
    import shutil
    out, cache = base_run
    shutil.copytree(out, tmp_path / "run")
    return tmp_path / "run", cache


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "empty"])
def test_corrupt_last_checkpoint_is_refused_and_nothing_is_overwritten(demo_corpus_dir, run_copy, capsys, damage):
    out, cache = run_copy
    last = out / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"")
    kept = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    rc = _train(demo_corpus_dir, out, cache, "--max-steps", "8", "--val-every", "2", "--resume")
    err = capsys.readouterr().err
    assert rc == 2
    assert "cannot resume" in err and "last.ckpt" in err and "Nothing was changed" in err
    assert "Traceback" not in err
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == kept                                    # no step-0 checkpoint, model.sdga untouched


@pytest.mark.slow
def test_resume_without_last_checkpoint_keeps_best_and_says_how_to_use_it(demo_corpus_dir, run_copy, capsys):
    out, cache = run_copy
    (out / "checkpoints" / "last.ckpt").unlink()
    kept = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    rc = _train(demo_corpus_dir, out, cache, "--max-steps", "8", "--val-every", "2", "--resume")
    err = capsys.readouterr().err
    assert rc == 2 and "no " in err and "best.ckpt (step 4" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == kept


@pytest.mark.slow
def test_resume_appends_metrics_gets_a_fresh_time_budget_and_exports_what_it_reports(demo_corpus_dir, run_copy):
    import csv
    import json

    import torch

    from instrument.model.modelfile import read_metadata

    out, cache = run_copy
    metrics = out / "logs" / "metrics.csv"
    before = list(csv.DictReader(metrics.open()))
    assert before and max(int(r["step"]) for r in before) < 4
    # The run this checkpoint came from had used 10 h of a long --max-time budget.
    last = out / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    timers = [s for s in ckpt["callbacks"].values() if "time_elapsed" in s]
    assert timers
    for state in timers:
        state["time_elapsed"] = {k: 36000.0 for k in state["time_elapsed"]}
    # ...and validation gets worse after resuming: the best weights stay those of step 4.
    (state,) = [s for k, s in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint")]
    best_path = str(out / "checkpoints" / "best.ckpt")
    state.update(dirpath=str(out / "checkpoints"), best_model_path=best_path, kth_best_model_path=best_path,
                 best_model_score=torch.tensor(-1e9), kth_value=torch.tensor(-1e9),
                 best_k_models={best_path: torch.tensor(-1e9)}, last_model_path=str(last))
    best = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    (best_state,) = [s for k, s in best["callbacks"].items() if k.startswith("ModelCheckpoint")]
    best_state["best_model_score"] = torch.tensor(-1e9)
    torch.save(best, out / "checkpoints" / "best.ckpt")
    torch.save(ckpt, last)

    stale = out / "checkpoints" / ".last.ckpt.k9x2_a1.tmp"                  # a save cut short by kill -9
    stale.write_bytes(b"PK\3\4")
    assert _train(demo_corpus_dir, out, cache, "--max-steps", "8", "--val-every", "2", "--resume",
                  "--max-time", "10m") == 0
    assert not stale.exists()
    summary = json.loads((out / "summary.json").read_text())
    t = summary["training"]
    assert t["steps"] == 8 and t["resumed_from_step"] == 4   # --max-time on resume: 10 more minutes
    after = list(csv.DictReader(metrics.open()))
    steps = [int(r["step"]) for r in after]
    assert after[: len(before)] == before                   # appended, not wiped
    assert max(steps) >= 7
    # The model file holds the weights the summary describes: step 4's, not step 8's.
    meta = read_metadata(out / "model.sdga")["training"]
    assert t["model_step"] == 4 and t["best_val_loss"] == -1e9
    assert meta["model_step"] == t["model_step"] and meta["best_val_loss"] == t["best_val_loss"]
    from instrument.model.bundle import load_bundle
    exported = load_bundle(out / "model.sdga").decoder.state_dict()
    expected = {name: best["state_dict"][f"decoder.{name}"] for name in exported}
    basis = (read_metadata(out / "model.sdga").get("knob_basis") or {}).get("basis")
    if basis:   # knobs by intervention: the first z layer is folded, W z + b -> (W A) u + (W c + b)
        W, b = expected["z_mlp.0.weight"].double(), expected["z_mlp.0.bias"].double()
        A = torch.tensor(basis["matrix"], dtype=torch.float64)
        c = torch.tensor(basis["centre"], dtype=torch.float64)
        expected["z_mlp.0.weight"], expected["z_mlp.0.bias"] = (W @ A).float(), (W @ c + b).float()
    for name, value in exported.items():
        torch.testing.assert_close(value, expected[name], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_corrupt_best_checkpoint_is_reported_and_the_last_weights_exported(demo_corpus_dir, run_copy, capsys):
    import json

    out, cache = run_copy
    best = out / "checkpoints" / "best.ckpt"
    best.write_bytes(best.read_bytes()[:5000])
    assert _train(demo_corpus_dir, out, cache, "--max-steps", "4", "--val-every", "2", "--resume") == 0
    text = capsys.readouterr().out
    assert "not exporting the best validated weights" in text and "best.ckpt is unreadable" in text
    t = json.loads((out / "summary.json").read_text())["training"]
    assert t["model_step"] == t["steps"] == 4


@pytest.mark.slow
def test_a_shorter_fresh_run_keeps_the_further_trained_model(demo_corpus_dir, run_copy, capsys):
    from instrument.model.bundle import load_bundle

    out, cache = run_copy
    old = (out / "model.sdga").read_bytes()
    assert _train(demo_corpus_dir, out, cache, "--max-steps", "1", "--val-every", "1") == 0
    assert "kept it as" in capsys.readouterr().out
    assert (out / "model.prev.sdga").read_bytes() == old
    load_bundle(out / "model.prev.sdga")
    load_bundle(out / "model.sdga")


@pytest.mark.slow
def test_nan_loss_stops_with_a_message_and_keeps_the_checkpoint(demo_corpus_dir, run_copy, capsys, monkeypatch):
    import torch

    from training.module import SdgaModule

    out, cache = run_copy
    kept = {p: p.read_bytes() for p in (out / "checkpoints").iterdir()}
    model = (out / "model.sdga").read_bytes()
    real = SdgaModule.training_step

    def nan_step(self, batch, batch_idx):
        return real(self, batch, batch_idx) * torch.tensor(float("nan"))

    monkeypatch.setattr(SdgaModule, "training_step", nan_step)
    rc = _train(demo_corpus_dir, out, cache, "--max-steps", "8", "--val-every", "2", "--resume")
    err = capsys.readouterr().err
    assert rc == 1 and "loss became nan" in err
    assert {p: p.read_bytes() for p in (out / "checkpoints").iterdir()} == kept
    assert (out / "model.sdga").read_bytes() == model


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGKILL")
def test_kill_9_during_training_resumes_from_the_wall_clock_checkpoint(demo_corpus_dir, base_run, tmp_path):
    from training.train import check_checkpoint

    _, cache = base_run
    out = tmp_path / "run"
    cmd = [sys.executable, "-c", "import sys; from training.cli import train_main; sys.exit(train_main())",
           str(demo_corpus_dir), "-o", str(out), "--cache-dir", str(cache), *TINY, "--val-every", "1000",
           "--max-time", "5m", "--checkpoint-every", "2s"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    last = out / "checkpoints" / "last.ckpt"
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("training:"):
                break
        deadline = time.time() + 120
        while not last.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert last.exists(), "".join(lines)                # no validation yet: only the wall-clock save
        time.sleep(3.0)                                     # likely mid-way through the next save
    finally:
        proc.kill()
        proc.wait(timeout=30)
    step = check_checkpoint(last)
    assert step > 0
    assert not list(out.glob("model.sdga"))
    spools = cache / "spool"
    assert any(f"-{proc.pid}-" in p.name for p in spools.iterdir())      # the killed run's spooled audio ...
    assert _train(demo_corpus_dir, out, cache, "--max-steps", str(step + 2), "--val-every", "1000",
                  "--resume") == 0
    assert list(spools.iterdir()) == []                                  # ... is removed by the next run
    import json
    t = json.loads((out / "summary.json").read_text())["training"]
    assert t["resumed_from_step"] == step and t["steps"] == step + 2


# ------------------------------------------------------------------------------------------------ disk full


@pytest.fixture
def small_disk(tmp_path):
    """A mounted tmpfs of a chosen size (Linux, root: CI runs as root); unmounted afterwards."""
    mounts = []

    def mount(size_mb: float) -> Path:
        where = tmp_path / f"disk{len(mounts)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size_mb * 1024)}k", "tmpfs", str(where)],
                              capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
        mounts.append(where)
        return where

    yield mount
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(disk: Path, leave_bytes: int) -> None:
    """Fill the file system at `disk` until only about leave_bytes are free."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave_bytes))


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tmpfs")
def test_disk_full_during_export_keeps_the_previous_model(demo_corpus_dir, run_copy, small_disk, capsys):
    import shutil

    from instrument.model.bundle import load_bundle

    out, cache = run_copy
    disk = small_disk(8)
    model = disk / "model.sdga"
    shutil.copy(out / "model.sdga", model)
    old = model.read_bytes()
    _fill(disk, 500_000)                                    # less than a model file
    rc = _train(demo_corpus_dir, out, cache, "--max-steps", "4", "--val-every", "2", "--resume",
                "--model-file", str(model))
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "export failed" in err and "No space left on device" in err and "unchanged" in err
    assert model.read_bytes() == old
    load_bundle(model)
    assert sorted(p.name for p in disk.iterdir()) == ["filler", "model.sdga"]   # no temp file left behind


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tmpfs")
def test_disk_full_during_checkpointing_keeps_the_last_checkpoint(demo_corpus_dir, run_copy, small_disk, capsys):
    import shutil

    from training.train import check_checkpoint

    src, cache = run_copy
    disk = small_disk(40)
    out = disk / "run"
    shutil.copytree(src, out)
    last = out / "checkpoints" / "last.ckpt"
    old = last.read_bytes()
    model = (out / "model.sdga").read_bytes()
    _fill(disk, 2_000_000)                                  # room for logs, not for an 11 MB checkpoint
    rc = _train(demo_corpus_dir, out, cache, "--max-steps", "6", "--val-every", "2", "--resume")
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "could not write" in err and "No space left on device" in err and "--resume" in err
    assert last.read_bytes() == old and check_checkpoint(last) == 4
    assert (out / "model.sdga").read_bytes() == model
    (disk / "filler").unlink()                              # space again: the advice works
    assert _train(demo_corpus_dir, out, cache, "--max-steps", "6", "--val-every", "2", "--resume") == 0
    assert check_checkpoint(last) == 6


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGKILL")
@pytest.mark.parametrize("phase, marker, delay_s", [
    ("augmentation", "validation split", 0.2),
    ("export", "held-out resynthesis", 0.5),
])
def test_kill_9_at_a_phase_then_resume_finishes_with_valid_files(demo_corpus_dir, base_run, tmp_path, phase,
                                                                  marker, delay_s):
    """kill -9 while augmenting or exporting; whatever is on disk is either absent or valid, and --resume ends
    the run."""
    import json

    from instrument.model.bundle import load_bundle
    from training.train import check_checkpoint

    _, features_cache = base_run
    cache = tmp_path / "cache"
    import shutil
    shutil.copytree(features_cache / "features", cache / "features")   # augmentation renders cold
    out = tmp_path / "run"
    args = ["--batch-size", "2", "--window", "0.5", "--latents", "2", "--no-progress", "--threads", "2",
            "--augment-variants", "2", "--max-steps", "2", "--val-every", "2"]
    cmd = [sys.executable, "-c", "import sys; from training.cli import train_main; sys.exit(train_main())",
           str(demo_corpus_dir), "-o", str(out), "--cache-dir", str(cache), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(marker):
                break
        time.sleep(delay_s)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert any(line.startswith(marker) for line in lines), "".join(lines)
    if (out / "model.sdga").exists():
        load_bundle(out / "model.sdga")                     # never half-written
    for ckpt in (out / "checkpoints").glob("*.ckpt"):
        check_checkpoint(ckpt)
    for entry in cache.rglob("*.npz"):
        np.load(entry)["f0_hz"]                             # cache entries are whole
    from training.cli import train_main
    assert train_main([str(demo_corpus_dir), "-o", str(out), "--cache-dir", str(cache), *args, "--resume"]) == 0
    load_bundle(out / "model.sdga")
    assert json.loads((out / "summary.json").read_text())["training"]["model_step"] == 2
