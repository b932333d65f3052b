"""Contract of the sdga model file: round-trip, atomic writes, and every refusal."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as safetensors_save

from instrument.model import modelfile
from instrument.model.modelfile import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MODEL_FILE_SUFFIX,
    ModelFileError,
    load_model_file,
    read_metadata,
    save_model_file,
    tensors_sha256,
)


def example_tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "decoder.gru.weight": torch.randn(12, 5, generator=generator),
        "decoder.out.bias": torch.randn(7, dtype=torch.float64, generator=generator),
        "encoder.conv.weight": torch.randn(3, 2, 4, generator=generator).to(torch.bfloat16),
        "latent.count": torch.tensor(42, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "table": torch.arange(6, dtype=torch.int16).reshape(2, 3).t(),  # non-contiguous
        "empty": torch.zeros(0, 4),
    }


def example_metadata() -> dict:
    return {
        "sample_rate": 48000,
        "hop_size": 128,
        "architecture": {"n_harmonics": 60, "latent_size": 4, "gru_units": [256, 128]},
        "latents": [{"name": "z0", "mean": 0.1, "std": 1.5}, {"name": "z1", "mean": -0.2, "std": 0.5}],
        "ranges": {"f0_hz": [32.7, 2093.0], "loudness_db": [-80.0, 0.0]},
        "training": {"epochs": 3, "note": "naïve ünïcode ✓", "ok": True, "missing": None},
    }


def model_path(tmp_path: Path) -> Path:
    return tmp_path / f"model{MODEL_FILE_SUFFIX}"


def saved_model(tmp_path: Path) -> Path:
    return save_model_file(model_path(tmp_path), example_tensors(), example_metadata())


def data_region_start(path: Path) -> int:
    (header_n_bytes,) = struct.unpack("<Q", path.read_bytes()[:8])
    return 8 + header_n_bytes


def write_with_header_metadata(path: Path, header_metadata: dict[str, str]) -> Path:
    path.write_bytes(safetensors_save({"w": torch.ones(3)}, metadata=header_metadata))
    return path


def valid_header_metadata(**overrides: str) -> dict[str, str]:
    metadata_json = json.dumps({"sample_rate": 48000})
    header_metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "sdga": metadata_json,
        "tensors_sha256": tensors_sha256({"w": torch.ones(3)}),
        "sdga_sha256": hashlib.sha256(metadata_json.encode()).hexdigest(),
    }
    header_metadata.update(overrides)
    return header_metadata


# --- round trip -------------------------------------------------------------------------------------------


def test_round_trip_keeps_values_dtypes_shapes_and_nested_metadata(tmp_path: Path) -> None:
    tensors = example_tensors()
    path = save_model_file(str(model_path(tmp_path)), tensors, example_metadata())
    assert path == model_path(tmp_path)

    loaded, metadata = load_model_file(path, required_metadata_keys=("sample_rate", "architecture"))

    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype, name
        assert loaded[name].shape == tensor.shape, name
        assert torch.equal(loaded[name], tensor), name
        assert loaded[name].device.type == "cpu"
    assert metadata == example_metadata()
    assert read_metadata(path) == example_metadata()


def test_save_accepts_shared_storage_and_grad_tensors(tmp_path: Path) -> None:
    base = torch.randn(4, 4, requires_grad=True)
    tensors = {"a": base, "a_tied": base, "row": base.detach()[1]}
    loaded, _ = load_model_file(save_model_file(model_path(tmp_path), tensors, {}))
    assert torch.equal(loaded["a_tied"], base.detach())
    assert torch.equal(loaded["row"], base.detach()[1])


def test_tuples_come_back_as_lists(tmp_path: Path) -> None:
    path = save_model_file(model_path(tmp_path), {"w": torch.ones(1)}, {"range": (0.0, 1.0)})
    assert read_metadata(path) == {"range": [0.0, 1.0]}


def test_file_is_a_plain_safetensors_file(tmp_path: Path) -> None:
    from safetensors import safe_open

    path = saved_model(tmp_path)
    with safe_open(str(path), framework="pt") as handle:
        header_metadata = handle.metadata()
        assert torch.equal(handle.get_tensor("decoder.gru.weight"), example_tensors()["decoder.gru.weight"])
    assert header_metadata["format"] == FORMAT_NAME
    assert header_metadata["format_version"] == str(FORMAT_VERSION) == "5"
    assert json.loads(header_metadata["sdga"]) == example_metadata()


def test_save_overwrites_existing_file(tmp_path: Path) -> None:
    path = saved_model(tmp_path)
    save_model_file(path, {"w": torch.zeros(2)}, {"version": "second"})
    loaded, metadata = load_model_file(path)
    assert metadata == {"version": "second"}
    assert list(loaded) == ["w"]
    assert list(tmp_path.iterdir()) == [path]


def test_save_refuses_metadata_that_is_not_json(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="JSON"):
        save_model_file(model_path(tmp_path), {"w": torch.ones(1)}, {"bad": object()})
    with pytest.raises(ModelFileError, match="dict"):
        save_model_file(model_path(tmp_path), {"w": torch.ones(1)}, ["not", "a", "dict"])  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


# --- atomic writes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("failing_call", ["fsync", "replace"])
def test_failed_write_leaves_old_file_intact_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_call: str
) -> None:
    path = saved_model(tmp_path)
    old_bytes = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError(f"simulated crash in {failing_call}")

    monkeypatch.setattr(modelfile.os, failing_call, fail)
    with pytest.raises(OSError, match="simulated crash"):
        save_model_file(path, {"w": torch.zeros(1000)}, {"new": True})
    monkeypatch.undo()

    assert path.read_bytes() == old_bytes
    assert list(tmp_path.iterdir()) == [path]
    assert load_model_file(path)[1] == example_metadata()


def test_write_failing_partway_leaves_no_half_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = model_path(tmp_path)
    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, file_object):
            self.file_object = file_object

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            self.file_object.close()
            return False

        def write(self, data: bytes) -> int:
            self.file_object.write(data[: len(data) // 2])
            self.file_object.flush()
            raise OSError("simulated disk full")

    monkeypatch.setattr(modelfile.os, "fdopen", lambda *args, **kwargs: HalfWriter(real_fdopen(*args, **kwargs)))
    with pytest.raises(OSError, match="disk full"):
        save_model_file(path, example_tensors(), example_metadata())
    assert list(tmp_path.iterdir()) == []


# --- refusals ---------------------------------------------------------------------------------------------


def test_missing_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nope.sdga"
    for reader in (load_model_file, read_metadata):
        with pytest.raises(ModelFileError, match="not found") as error:
            reader(path)
        assert str(path) in str(error.value)


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="not a regular file"):
        load_model_file(tmp_path)


def wav_bytes() -> bytes:
    n_samples = 4800
    data = (np.sin(np.arange(n_samples) * 0.1) * 3000).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, 48000, 96000, 2, 16)
    return (
        b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
        + b"fmt " + struct.pack("<I", 16) + fmt
        + b"data" + struct.pack("<I", len(data)) + data
    )


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x01\x02", id="tiny"),
        pytest.param(np.random.default_rng(1).bytes(5000), id="random"),
        pytest.param(b"# a text file\nsample_rate: 48000\n" * 20, id="text"),
        pytest.param(wav_bytes(), id="wav"),
        pytest.param(pickle.dumps({"state_dict": [1, 2, 3]}), id="pickle"),
        pytest.param(struct.pack("<Q", 10) + b"[1,2,3,4,5]", id="header-not-object"),
    ],
)
def test_non_safetensors_files_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "not_a_model.sdga"
    path.write_bytes(content)
    for reader in (load_model_file, read_metadata):
        with pytest.raises(ModelFileError) as error:
            reader(path)
        assert str(path) in str(error.value)


def test_truncated_files_are_refused(tmp_path: Path) -> None:
    path = saved_model(tmp_path)
    full = path.read_bytes()
    data_start = data_region_start(path)
    cut_points = [1, 7, 8, 20, data_start // 2, data_start - 1, data_start, data_start + 1,
                  (data_start + len(full)) // 2, len(full) - 1]
    for cut in cut_points:
        truncated = tmp_path / f"cut_{cut}.sdga"
        truncated.write_bytes(full[:cut])
        with pytest.raises(ModelFileError) as error:
            load_model_file(truncated)
        assert str(truncated) in str(error.value)
        with pytest.raises(ModelFileError):
            read_metadata(truncated)


def test_mangled_header_json_is_refused(tmp_path: Path) -> None:
    path = saved_model(tmp_path)
    full = bytearray(path.read_bytes())
    full[8] = ord("[")  # the header's opening "{"
    path.write_bytes(bytes(full))
    with pytest.raises(ModelFileError, match="header"):
        load_model_file(path)


def test_mangled_header_bytes_anywhere_are_refused(tmp_path: Path) -> None:
    original = saved_model(tmp_path).read_bytes()
    data_start = data_region_start(model_path(tmp_path))
    rng = np.random.default_rng(2)
    for position in rng.choice(np.arange(8, data_start), size=40, replace=False):
        mangled = bytearray(original)
        mangled[position] ^= 0x04
        path = tmp_path / "mangled.sdga"
        path.write_bytes(bytes(mangled))
        with pytest.raises(ModelFileError):
            load_model_file(path)


def test_foreign_safetensors_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "foreign.safetensors"
    path.write_bytes(safetensors_save({"w": torch.ones(3)}))
    with pytest.raises(ModelFileError, match="not an sdga model file"):
        load_model_file(path)
    path.write_bytes(safetensors_save({"w": torch.ones(3)}, metadata={"format": "pt"}))
    with pytest.raises(ModelFileError, match="not an sdga model file"):
        read_metadata(path)


@pytest.mark.parametrize("version", [str(FORMAT_VERSION + 1), "abc", "0", "", "1.0", " 1"])
def test_unknown_format_version_is_refused_naming_supported_versions(tmp_path: Path, version: str) -> None:
    path = write_with_header_metadata(tmp_path / "future.sdga", valid_header_metadata(format_version=version))
    for reader in (load_model_file, read_metadata):
        with pytest.raises(ModelFileError, match="format_version") as error:
            reader(path)
        assert "reads version(s) 1, 2" in str(error.value)
        assert repr(version) in str(error.value)


def test_crafted_valid_file_loads(tmp_path: Path) -> None:
    """The helper above writes a file this build accepts, so the refusals test only what they change."""
    path = write_with_header_metadata(tmp_path / "ok.sdga", valid_header_metadata())
    assert load_model_file(path)[1] == {"sample_rate": 48000}


def test_flipped_byte_in_tensor_data_is_refused(tmp_path: Path) -> None:
    path = saved_model(tmp_path)
    full = bytearray(path.read_bytes())
    data_start = data_region_start(path)
    for position in (data_start, (data_start + len(full)) // 2, len(full) - 1):
        flipped = bytearray(full)
        flipped[position] ^= 0x01
        path.write_bytes(bytes(flipped))
        with pytest.raises(ModelFileError, match="sha256") as error:
            load_model_file(path)
        assert str(path) in str(error.value)
        read_metadata(path)  # header-only read does not check tensor data


def test_tampered_metadata_is_refused(tmp_path: Path) -> None:
    path = write_with_header_metadata(
        tmp_path / "tampered.sdga", valid_header_metadata(sdga=json.dumps({"sample_rate": 44100}))
    )
    for reader in (load_model_file, read_metadata):
        with pytest.raises(ModelFileError, match="sha256"):
            reader(path)


@pytest.mark.parametrize("sdga_json", ["{not json", "[1, 2]"])
def test_mangled_sdga_metadata_is_refused(tmp_path: Path, sdga_json: str) -> None:
    header_metadata = valid_header_metadata(
        sdga=sdga_json, sdga_sha256=hashlib.sha256(sdga_json.encode()).hexdigest()
    )
    path = write_with_header_metadata(tmp_path / "bad_sdga.sdga", header_metadata)
    with pytest.raises(ModelFileError, match="sdga metadata"):
        load_model_file(path)


def test_missing_digest_is_refused(tmp_path: Path) -> None:
    header_metadata = valid_header_metadata()
    del header_metadata["tensors_sha256"]
    path = write_with_header_metadata(tmp_path / "no_digest.sdga", header_metadata)
    with pytest.raises(ModelFileError, match="tensors_sha256"):
        load_model_file(path)


def test_missing_required_metadata_keys_are_refused(tmp_path: Path) -> None:
    path = saved_model(tmp_path)
    for reader in (load_model_file, read_metadata):
        with pytest.raises(ModelFileError, match="latent_names") as error:
            reader(path, required_metadata_keys=("sample_rate", "latent_names"))
        assert "sample_rate" not in str(error.value).split("it has")[0]


def test_loading_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = saved_model(tmp_path)

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    loaded, _ = load_model_file(path)
    assert set(loaded) == set(example_tensors())


def test_instrument_module_imports_no_training_dependencies() -> None:
    import subprocess

    code = (
        "import sys; import instrument.model.modelfile; "
        "bad = [m for m in ('pytorch_lightning', 'lightning', 'librosa', 'pedalboard', 'auraloss') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stdout + result.stderr
