"""The sdga model file: one safetensors file holding the weights and the model's I/O contract.

Layout (a plain safetensors file, so weights load without executing code):

- tensors: the model's weights, CPU and contiguous, names as given to `save_model_file`.
- ``__metadata__`` (safetensors' string-to-string header map):
    - ``"format"``: ``FORMAT_NAME``
    - ``"format_version"``: ``str(FORMAT_VERSION)``
    - ``"sdga"``: the caller's metadata dict as one JSON string (architecture arguments, sample rate,
      control ranges, latent names/stats, training summary, ...)
    - ``"tensors_sha256"``: sha256 over the tensor data (see `tensors_sha256`) and
      ``"sdga_sha256"``: sha256 of the ``"sdga"`` JSON string, so a tampered or bit-flipped file is refused.

A reader refuses, with `ModelFileError`, anything it cannot fully trust: a missing, truncated or foreign
file, a mangled header, an unknown format version, a digest mismatch, missing required metadata keys.
Nothing is ever unpickled.

Version rules: a writer always writes ``FORMAT_VERSION``; a reader reads every version in
``SUPPORTED_FORMAT_VERSIONS`` and refuses any other (a newer writer's file). The container is the same in
every version; what changes is the layout of the ``"sdga"`` metadata, and a reader given ``upgrades``
(version v -> a function turning metadata as version v wrote it into metadata as version v + 1 writes it)
hands back metadata in the current layout, whatever version wrote the file.
Version 1: the first layout. Version 2: the ``corpus`` record is complete (see
:class:`instrument.model.bundle.CorpusInfo`). Version 3: an ``expression`` record (the note articulation learnt
from the corpus, :class:`instrument.model.bundle.Articulation`, or null).

Metadata is JSON: tuples come back as lists, and dict keys must be strings to come back unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

FORMAT_NAME = "sdga-model"
FORMAT_VERSION = 5
SUPPORTED_FORMAT_VERSIONS: tuple[int, ...] = (1, 2, 3, 4, 5)
MODEL_FILE_SUFFIX = ".sdga"

METADATA_KEY_FORMAT = "format"
METADATA_KEY_FORMAT_VERSION = "format_version"
METADATA_KEY_SDGA = "sdga"
METADATA_KEY_TENSORS_SHA256 = "tensors_sha256"
METADATA_KEY_SDGA_SHA256 = "sdga_sha256"

# safetensors itself refuses headers over 100 MB; a model header is a few kB.
_MAX_HEADER_N_BYTES = 100_000_000
_HEADER_LENGTH_N_BYTES = 8


class ModelFileError(Exception):
    """A model file could not be written, or was refused on reading; the message names the file."""


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """Hex sha256 over the tensors, names sorted; per tensor a JSON line [name, dtype, shape] then raw bytes.

    The raw byte count follows from dtype and shape, so the encoding is unambiguous.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        header_line = json.dumps([name, str(tensor.dtype), list(tensor.shape)]) + "\n"
        digest.update(header_line.encode("utf-8"))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_model_file(path: Path | str, tensors: dict[str, torch.Tensor], metadata: dict) -> Path:
    """Write `tensors` and `metadata` to `path` atomically; return the path.

    The file is written to a temporary file in the same directory, flushed, fsynced and moved over
    `path` with os.replace, so a crash mid-write leaves whatever was at `path` before untouched.
    """
    path = Path(path)
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{path}: metadata must be a dict, got {type(metadata).__name__}")
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise ModelFileError(f"{path}: tensors must map str names to torch.Tensor; bad entry {name!r}")
    try:
        metadata_json = json.dumps(metadata)
    except (TypeError, ValueError) as error:
        raise ModelFileError(f"{path}: metadata is not JSON-serialisable: {error}") from error

    # clone: safetensors refuses tensors sharing storage (tied weights, views of one buffer).
    cpu_tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    header_metadata = {
        METADATA_KEY_FORMAT: FORMAT_NAME,
        METADATA_KEY_FORMAT_VERSION: str(FORMAT_VERSION),
        METADATA_KEY_SDGA: metadata_json,
        METADATA_KEY_TENSORS_SHA256: tensors_sha256(cpu_tensors),
        METADATA_KEY_SDGA_SHA256: hashlib.sha256(metadata_json.encode("utf-8")).hexdigest(),
    }
    data = safetensors_save(cpu_tensors, metadata=header_metadata)
    write_atomically(path, data)
    return path


def write_atomically(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename: a crash never leaves a half-written ``path``."""
    directory = path.parent if str(path.parent) else Path(".")
    file_descriptor, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(file_descriptor, "wb") as temp_file:
            temp_file.write(data)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable where the platform allows it (not on Windows)."""
    try:
        directory_descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(directory_descriptor)
    except OSError:
        pass
    finally:
        os.close(directory_descriptor)


MetadataUpgrades = Mapping[int, Callable[[dict], dict]]


def read_metadata(path: Path | str, required_metadata_keys: Sequence[str] = (),
                  upgrades: MetadataUpgrades | None = None) -> dict:
    """Return the caller's metadata dict (in the current layout, given ``upgrades``), reading only the header.

    Verified like `load_model_file` (structure, sizes, format, version, required keys) except the
    tensor digest, which needs the tensor data.
    """
    path = Path(path)
    with _open_for_reading(path) as model_file:
        file_n_bytes = os.fstat(model_file.fileno()).st_size
        header_n_bytes = _read_header_length(path, model_file, file_n_bytes)
        header_bytes = model_file.read(header_n_bytes)
    header = _parse_header(path, header_bytes, file_n_bytes - _HEADER_LENGTH_N_BYTES - header_n_bytes)
    metadata, _, version = _check_sdga_metadata(path, header)
    metadata = _upgrade(path, metadata, version, upgrades)
    _check_required_keys(path, metadata, required_metadata_keys)
    return metadata


def load_model_file(
    path: Path | str, required_metadata_keys: Sequence[str] = (), upgrades: MetadataUpgrades | None = None
) -> tuple[dict[str, torch.Tensor], dict]:
    """Return (tensors, metadata) from a model file, or raise ModelFileError saying what is wrong.

    With ``upgrades``, metadata an older version wrote comes back in the current layout (module docstring)."""
    path = Path(path)
    with _open_for_reading(path) as model_file:
        file_bytes = model_file.read()
    file_n_bytes = len(file_bytes)
    header_n_bytes = _header_length_from_bytes(path, file_bytes[:_HEADER_LENGTH_N_BYTES], file_n_bytes)
    header_end = _HEADER_LENGTH_N_BYTES + header_n_bytes
    header = _parse_header(path, file_bytes[_HEADER_LENGTH_N_BYTES:header_end], file_n_bytes - header_end)
    metadata, expected_sha256, version = _check_sdga_metadata(path, header)
    metadata = _upgrade(path, metadata, version, upgrades)
    _check_required_keys(path, metadata, required_metadata_keys)

    try:
        tensors = safetensors_load(file_bytes)
    except Exception as error:  # safetensors raises its own error types for malformed files
        raise ModelFileError(f"{path}: tensor data is malformed: {error}") from error
    actual_sha256 = tensors_sha256(tensors)
    if actual_sha256 != expected_sha256:
        raise ModelFileError(
            f"{path}: tensor data does not match its sha256 digest (file corrupted or modified); "
            f"expected {expected_sha256}, got {actual_sha256}"
        )
    return tensors, metadata


def _open_for_reading(path: Path):
    try:
        found, regular = path.exists(), path.is_file()
    except OSError as error:                          # e.g. a name too long for the file system
        raise ModelFileError(f"{path}: cannot open model file: {error.strerror or error}") from error
    if not found:
        raise ModelFileError(f"{path}: model file not found")
    if not regular:
        raise ModelFileError(f"{path}: not a regular file")
    try:
        return open(path, "rb")
    except OSError as error:
        raise ModelFileError(f"{path}: cannot open model file: {error}") from error


def _read_header_length(path: Path, model_file, file_n_bytes: int) -> int:
    return _header_length_from_bytes(path, model_file.read(_HEADER_LENGTH_N_BYTES), file_n_bytes)


def _header_length_from_bytes(path: Path, length_bytes: bytes, file_n_bytes: int) -> int:
    if len(length_bytes) < _HEADER_LENGTH_N_BYTES:
        raise ModelFileError(f"{path}: not an sdga model file (only {file_n_bytes} bytes; truncated or empty)")
    (header_n_bytes,) = struct.unpack("<Q", length_bytes)
    if header_n_bytes > _MAX_HEADER_N_BYTES or header_n_bytes < 2:
        raise ModelFileError(
            f"{path}: not an sdga model file (not a safetensors file: implausible header length {header_n_bytes})"
        )
    if _HEADER_LENGTH_N_BYTES + header_n_bytes > file_n_bytes:
        raise ModelFileError(
            f"{path}: truncated or not a safetensors file (header claims {header_n_bytes} bytes, "
            f"file has {file_n_bytes})"
        )
    return header_n_bytes


def _parse_header(path: Path, header_bytes: bytes, data_n_bytes: int) -> dict:
    """Parse the safetensors JSON header and check the tensor offsets cover the data region exactly."""
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(f"{path}: not a safetensors file or header corrupted (bad header JSON: {error})") from error
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: header corrupted (header JSON is not an object)")

    data_end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(offset, int) for offset in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise ModelFileError(f"{path}: header corrupted (bad entry for tensor {name!r})")
        data_end = max(data_end, offsets[1])
    if data_end != data_n_bytes:
        raise ModelFileError(
            f"{path}: truncated or corrupted (header describes {data_end} bytes of tensor data, "
            f"file holds {data_n_bytes})"
        )
    return header


def _check_sdga_metadata(path: Path, header: dict) -> tuple[dict, str, int]:
    """Return (caller metadata, expected tensor sha256, format version) after checking format and version."""
    header_metadata = header.get("__metadata__")
    if not isinstance(header_metadata, dict) or header_metadata.get(METADATA_KEY_FORMAT) != FORMAT_NAME:
        raise ModelFileError(
            f"{path}: a safetensors file but not an sdga model file (no '{METADATA_KEY_FORMAT}': "
            f"'{FORMAT_NAME}' in its metadata)"
        )
    version_text = header_metadata.get(METADATA_KEY_FORMAT_VERSION)
    supported_text = ", ".join(str(version) for version in SUPPORTED_FORMAT_VERSIONS)
    try:
        version = int(version_text)
    except (TypeError, ValueError):
        version = None
    if version not in SUPPORTED_FORMAT_VERSIONS or str(version) != version_text:
        raise ModelFileError(
            f"{path}: unknown sdga model format_version {version_text!r}; this build reads version(s) "
            f"{supported_text} (a newer sdga may have written it)"
        )
    expected_sha256 = header_metadata.get(METADATA_KEY_TENSORS_SHA256)
    if not isinstance(expected_sha256, str):
        raise ModelFileError(f"{path}: header corrupted (no '{METADATA_KEY_TENSORS_SHA256}')")
    metadata_json = header_metadata.get(METADATA_KEY_SDGA)
    if not isinstance(metadata_json, str):
        raise ModelFileError(f"{path}: header corrupted (no '{METADATA_KEY_SDGA}' metadata)")
    if hashlib.sha256(metadata_json.encode("utf-8")).hexdigest() != header_metadata.get(METADATA_KEY_SDGA_SHA256):
        raise ModelFileError(
            f"{path}: sdga metadata does not match its sha256 digest (file corrupted or modified)"
        )
    try:
        metadata = json.loads(metadata_json)
    except json.JSONDecodeError as error:
        raise ModelFileError(f"{path}: header corrupted (sdga metadata is not valid JSON: {error})") from error
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{path}: header corrupted (sdga metadata is not a JSON object)")
    return metadata, expected_sha256, version


def _upgrade(path: Path, metadata: dict, version: int, upgrades: MetadataUpgrades | None) -> dict:
    """Metadata written by ``version``, brought up to ``FORMAT_VERSION`` one version at a time."""
    if upgrades is None:
        return metadata
    for from_version in range(version, FORMAT_VERSION):
        try:
            metadata = upgrades[from_version](metadata)
        except (TypeError, ValueError, KeyError, AttributeError) as error:
            raise ModelFileError(
                f"{path}: bad metadata for format_version {from_version}: {error!r}"
            ) from error
    return metadata


def _check_required_keys(path: Path, metadata: dict, required_metadata_keys: Sequence[str]) -> None:
    missing = [key for key in required_metadata_keys if key not in metadata]
    if missing:
        raise ModelFileError(
            f"{path}: model file metadata lacks required key(s) {missing}; it has {sorted(metadata)}"
        )
