"""Windows, joining/padding of short examples, the validation split: nothing is dropped."""
import numpy as np
import pytest
import torch

from training.data import (Example, RandomWindows, TiledWindows, join_short_examples, pad_example,
                           split_examples)
from training.features import Features

HOP = 128


def example(name, n_frames, f0=220.0, loud=-20.0):
    return Example(name, np.random.default_rng(len(name)).standard_normal(n_frames * HOP).astype(np.float32) * 0.1,
                   Features(np.full(n_frames, f0, np.float32), np.ones(n_frames, np.float32),
                            np.ones(n_frames, bool), np.full(n_frames, loud, np.float32)))


def test_short_examples_are_joined_then_padded_never_dropped():
    short = [example(f"s{i}", 10) for i in range(5)]
    long_ = example("long", 200)
    out = join_short_examples(short + [long_], min_frames=31, hop_size=HOP)
    total_in = sum(e.n_frames for e in short)
    assert sum(e.n_frames for e in out if e.name != "long") >= total_in
    assert all(e.n_frames >= 31 for e in out)
    assert any(e.name == "long" for e in out)
    assert all(len(e.audio) == e.n_frames * HOP for e in out)


def test_pad_marks_silence():
    ex = pad_example(example("a", 5), 12, HOP)
    assert ex.n_frames == 12 and len(ex.audio) == 12 * HOP
    assert (ex.features.loudness_db[5:] == -100).all() and not ex.features.voiced[5:].any()
    assert (ex.audio[5 * HOP:] == 0).all()


def test_split_by_file_when_enough_files_and_seeded():
    exs = [example(f"f{i}", 50) for i in range(10)]
    train, val, how = split_examples(exs, 0.2, seed=1, hop_size=HOP)
    assert len(val) == 2 and len(train) == 8 and "by file" in how
    train2, val2, _ = split_examples(exs, 0.2, seed=1, hop_size=HOP)
    assert [e.name for e in val] == [e.name for e in val2]


def test_split_by_segment_for_one_file():
    train, val, how = split_examples([example("only", 100)], 0.2, seed=0, hop_size=HOP)
    assert "segment" in how and len(train) == 1 and len(val) == 1
    assert train[0].n_frames == 80 and val[0].n_frames == 20
    assert len(train[0].audio) == 80 * HOP and len(val[0].audio) == 20 * HOP


@pytest.mark.parametrize("n_frames", [3, 40, 41, 500])
def test_random_windows_shapes_and_reproducible(n_frames):
    ds = RandomWindows([example("x", n_frames)], window_frames=40, hop_size=HOP, windows_per_epoch=6, seed=3,
                       gain_db_range=6.0)
    item = ds[2]
    assert item["audio"].shape == (40 * HOP,) and item["f0_hz"].shape == (41,) and item["loudness_db"].shape == (41,)
    assert torch.equal(ds[2]["audio"], item["audio"])
    ds.set_epoch(1)
    assert n_frames <= 41 or not torch.equal(ds[2]["audio"], item["audio"])


def test_tiled_windows_cover_validation_audio():
    ds = TiledWindows([example("v", 95), example("w", 10)], window_frames=40, hop_size=HOP)
    assert len(ds) == 3 + 1
    assert all(ds[i]["audio"].shape == (40 * HOP,) for i in range(len(ds)))
