"""Contract: the model bundle. The corpus record is typed and round-trips; files of every supported format
version load and play; ``--latent NAME=KNOB`` means the same in every program."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from instrument.engine.engine import Engine
from instrument.engine.events import NoteOn
from instrument.model import modelfile
from instrument.model.bundle import (CorpusInfo, ModelBundle, load_bundle, parse_latent_knobs, random_bundle,
                                     save_bundle)
from instrument.model.modelfile import ModelFileError, load_model_file, save_model_file

SR = 48000


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    return random_bundle(seed=0)


def _play_one_note(bundle: ModelBundle, n_samples: int = 9600) -> np.ndarray:
    torch.set_num_threads(1)
    engine = Engine(bundle)
    engine.prepare(SR, 128, 2)
    out = np.zeros(n_samples, np.float32)
    for start in range(0, n_samples, 128):
        engine.process([NoteOn(60, 100)] if start == 0 else [], out[start:start + 128])
    return out


def _write_as_version_1(path, bundle: ModelBundle, corpus: dict) -> None:
    """A model file as format version 1 wrote it: the corpus record a loose dict, whatever keys it had."""
    tensors = {f"decoder.{k}": v for k, v in bundle.decoder.state_dict().items()}
    metadata = {"model_config": bundle.config.to_dict(), "latents": [l.to_dict() for l in bundle.latents],
                "corpus": corpus, "training": {"untrained": True}}
    saved_version = modelfile.FORMAT_VERSION
    modelfile.FORMAT_VERSION = 1
    try:
        save_model_file(path, tensors, metadata)
    finally:
        modelfile.FORMAT_VERSION = saved_version


# ---------------------------------------------------------------------------------------------- corpus record
def test_corpus_record_round_trips_through_the_file_in_full(tmp_path, bundle):
    corpus = CorpusInfo(files=3, minutes=1.5, f0_range_hz=(110.0, 880.0), f0_median_hz=330.0,
                        loudness_range_db=(-50.0, -12.0), loudness_median_db=-24.0,
                        skipped=(("a.wav", "too short"),))
    b = ModelBundle(bundle.config, bundle.decoder, None, bundle.latents, {"training": {"x": 1}}, corpus)
    path = save_bundle(tmp_path / "m.sdga", b)
    stored = load_model_file(path)[1]["corpus"]
    assert set(stored) == set(CorpusInfo.__dataclass_fields__)          # every field written, none dropped
    loaded = load_bundle(path)
    assert loaded.corpus == corpus and loaded.metadata == {"training": {"x": 1}}
    assert loaded.f0_range_hz() == (110.0, 880.0)
    assert (loaded.corpus.reference_f0_hz, loaded.corpus.reference_loudness_db) == (330.0, -24.0)
    unmeasured = load_bundle(save_bundle(tmp_path / "r.sdga", bundle))      # no medians, no files: nulls kept
    assert unmeasured.corpus == bundle.corpus and unmeasured.corpus.f0_median_hz is None


def test_unmeasured_figures_fall_back_to_the_one_set_of_defaults():
    corpus = CorpusInfo(loudness_range_db=(-50.0, -10.0))
    assert corpus.f0_range_hz is None and corpus.f0_range_or_default_hz == CorpusInfo.DEFAULT_F0_RANGE_HZ
    assert corpus.reference_f0_hz == CorpusInfo.DEFAULT_F0_HZ
    assert corpus.reference_loudness_db == -30.0                          # the middle of the loudness range


@pytest.mark.parametrize("corpus", [
    {"f0_range_hz": [65.4, 1046.5], "loudness_range_db": [-60.0, -10.0]},          # random_bundle's, before
    {"files": 2, "minutes": 0.5, "f0_range_hz": None, "f0_median_hz": None,         # training's, no voiced frames
     "loudness_range_db": [-55.0, -20.0], "loudness_median_db": -30.0,
     "skipped": [{"path": "x.wav", "reason": "silent"}]},
    {},
])
def test_a_version_1_file_still_loads_and_plays(tmp_path, bundle, corpus):
    path = tmp_path / "old.sdga"
    _write_as_version_1(path, bundle, corpus)
    header = json.loads(path.read_bytes()[8:8 + int.from_bytes(path.read_bytes()[:8], "little")])
    assert header["__metadata__"]["format_version"] == "1"
    loaded = load_bundle(path)
    expected = CorpusInfo(**{**{k: (tuple(v) if isinstance(v, list) and k != "skipped" else v)
                                for k, v in corpus.items() if v is not None and k != "skipped"},
                             "skipped": tuple((s["path"], s["reason"]) for s in corpus.get("skipped", []))})
    assert loaded.corpus == expected
    assert "corpus" not in loaded.metadata
    out = _play_one_note(loaded)
    assert np.isfinite(out).all() and np.abs(out).max() > 1e-3
    np.testing.assert_array_equal(out, _play_one_note(ModelBundle(bundle.config, bundle.decoder, None,
                                                                  bundle.latents, {}, expected)))


@pytest.mark.parametrize("corpus", [
    {"f0_range_hz": [65.4, 1046.5], "loudness_range_db": [-60.0, -10.0]},       # incomplete: not what v2 writes
    dict(CorpusInfo().to_dict(), loudness_range_db="loud"),
    dict(CorpusInfo().to_dict(), minutes="long"),
    dict(CorpusInfo().to_dict(), colour="red"),
])
def test_a_version_2_file_with_a_bad_corpus_record_is_refused(tmp_path, bundle, corpus):
    tensors = {f"decoder.{k}": v for k, v in bundle.decoder.state_dict().items()}
    path = save_model_file(tmp_path / "bad.sdga", tensors, {
        "model_config": bundle.config.to_dict(), "latents": [l.to_dict() for l in bundle.latents],
        "corpus": corpus, "training": {}})
    with pytest.raises(ModelFileError, match="bad metadata"):
        load_bundle(path)


def test_upgrades_run_only_on_files_an_older_version_wrote(tmp_path, bundle):
    calls = []

    def upgrade(metadata):
        calls.append(metadata["corpus"])
        return dict(metadata, corpus="upgraded")

    upgrades = {1: upgrade, **{v: (lambda m: m) for v in range(2, modelfile.FORMAT_VERSION)}}
    new = save_bundle(tmp_path / "new.sdga", bundle)
    assert load_model_file(new, upgrades=upgrades)[1]["corpus"] != "upgraded" and not calls
    old = tmp_path / "old.sdga"
    _write_as_version_1(old, bundle, {"files": 1})
    assert load_model_file(old, upgrades=upgrades)[1]["corpus"] == "upgraded" and calls == [{"files": 1}]


# ---------------------------------------------------------------------------------------------- --latent
def test_latent_arguments_by_name_or_rank(bundle):
    parsed = parse_latent_knobs(bundle, ["z1=0.25", " 2 = 1", "z0=0"])
    assert [(info.index, knob) for info, knob in parsed] == [(1, 0.25), (bundle.latents[2].index, 1.0), (0, 0.0)]
    assert parse_latent_knobs(bundle, []) == []


@pytest.mark.parametrize("item, message", [
    ("z0", "NAME=KNOB"), ("=0.5", "NAME=KNOB"), ("z0=", "NAME=KNOB"),
    ("z0=loud", "not a number"), ("nope=0.5", "no latent named 'nope'"),
    ("99=0.5", "no latent at rank 99"), ("z0=1.5", "0..1"), ("z0=-0.1", "0..1"),
])
def test_bad_latent_arguments_say_what_is_wrong(bundle, item, message):
    with pytest.raises(ValueError, match=message) as error:
        parse_latent_knobs(bundle, [item])
    assert repr(item) in str(error.value) or "NAME=KNOB" in str(error.value)
