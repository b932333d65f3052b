"""Training examples, the validation split and windowed datasets.

An example is one piece of audio with its features (frame k at sample k * hop). A training window of F frames
uses F * hop samples and F + 1 feature frames (the synth renders interval k from frame k to frame k + 1).
Examples shorter than a window are joined with other short examples, then padded: never dropped.

An example's audio may be a read-only memmap of a spool file (training.spool): nothing here copies a whole
example (trimming and splitting take views, validation padding is added per window, windows are copied out one
at a time), so memory holds the windows being read, not the corpus. Only short examples (under a window) are
joined or padded in memory. The datasets are read in the training process (``num_workers=0``): a worker process
started by pickling would copy every memmap's audio into the pickle.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from training.features import Features

SILENCE_DB = -100.0


AUGMENTED_MARK = "~aug"     # an augmented variant of a recording is named <source>~aug<i> (training.train)


@dataclass
class Example:
    name: str
    audio: np.ndarray      # float32 (n_samples,)
    features: Features     # n_frames = n_samples // hop

    @property
    def n_frames(self) -> int:
        return self.features.n_frames

    @property
    def recorded(self) -> bool:
        """A recording of the corpus, not an augmented variant of one."""
        return AUGMENTED_MARK not in self.name

    @staticmethod
    def variant_name(source: str, i: int) -> str:
        return f"{source}{AUGMENTED_MARK}{i}"


def _concat_features(items: list[Features]) -> Features:
    return Features(
        f0_hz=np.concatenate([f.f0_hz for f in items]).astype(np.float32),
        voiced_prob=np.concatenate([f.voiced_prob for f in items]).astype(np.float32),
        voiced=np.concatenate([f.voiced for f in items]).astype(bool),
        loudness_db=np.concatenate([f.loudness_db for f in items]).astype(np.float32),
    )


def trim_to_frames(example: Example, hop_size: int) -> Example:
    """Make len(audio) == n_frames * hop exactly (features define the frame count).

    A view of the audio (no copy) unless it is short of that and has to be padded."""
    n = example.n_frames
    audio = example.audio[: n * hop_size]
    if len(audio) < n * hop_size:
        audio = np.pad(audio, (0, n * hop_size - len(audio)))
    return Example(example.name, audio.astype(np.float32, copy=False), example.features)


def pad_features(features: Features, n_frames: int) -> Features:
    """Features padded with silence (f0 held, loudness at the floor, unvoiced) to at least n_frames frames."""
    extra = n_frames - features.n_frames
    if extra <= 0:
        return features
    last_f0 = features.f0_hz[-1] if features.n_frames else np.float32(220.0)
    pad = Features(
        f0_hz=np.full(extra, last_f0, np.float32), voiced_prob=np.zeros(extra, np.float32),
        voiced=np.zeros(extra, bool), loudness_db=np.full(extra, SILENCE_DB, np.float32))
    return _concat_features([features, pad])


def pad_example(example: Example, n_frames: int, hop_size: int) -> Example:
    """Pad with silence (f0 held, loudness at the floor, unvoiced) to at least n_frames frames."""
    ex = trim_to_frames(example, hop_size)
    extra = n_frames - ex.n_frames
    if extra <= 0:
        return ex
    return Example(ex.name, np.pad(ex.audio, (0, extra * hop_size)), pad_features(ex.features, n_frames))


def join_short_examples(examples: list[Example], min_frames: int, hop_size: int) -> list[Example]:
    """Examples with fewer than min_frames frames are concatenated in order until long enough; a final
    short group is padded. Longer examples pass through untouched."""
    out: list[Example] = []
    group: list[Example] = []
    for ex in examples:
        ex = trim_to_frames(ex, hop_size)
        if ex.n_frames >= min_frames:
            out.append(ex)
            continue
        group.append(ex)
        if sum(e.n_frames for e in group) >= min_frames:
            out.append(_join(group))
            group = []
    if group:
        out.append(pad_example(_join(group), min_frames, hop_size))
    return out


def _join(group: list[Example]) -> Example:
    if len(group) == 1:
        return group[0]
    return Example("+".join(e.name for e in group), np.concatenate([e.audio for e in group]),
                   _concat_features([e.features for e in group]))


def split_examples(examples: list[Example], val_fraction: float, seed: int, hop_size: int,
                   min_files_for_file_split: int = 5) -> tuple[list[Example], list[Example], str]:
    """Validation split: by file (val_fraction of the files, at least one) when there are enough files,
    otherwise by segment (the last val_fraction of every file). Returns (train, val, how)."""
    if len(examples) >= min_files_for_file_split:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(examples))
        n_val = max(1, int(round(val_fraction * len(examples))))
        val_idx = set(order[:n_val].tolist())
        train = [e for i, e in enumerate(examples) if i not in val_idx]
        val = [e for i, e in enumerate(examples) if i in val_idx]
        return train, val, f"by file: {len(train)} train / {len(val)} validation files"
    train, val = [], []
    for e in examples:
        e = trim_to_frames(e, hop_size)
        cut = int(round(e.n_frames * (1.0 - val_fraction)))
        cut = min(max(cut, 1), max(e.n_frames - 1, 1))
        train.append(Example(e.name, e.audio[: cut * hop_size], e.features.slice(0, cut)))
        val.append(Example(e.name + "#val", e.audio[cut * hop_size:], e.features.slice(cut, e.n_frames)))
    val = [v for v in val if v.n_frames > 0]
    return train, val, f"by segment: last {val_fraction:.0%} of each of {len(examples)} file(s) held out"


def _window(ex: Example, start: int, n_frames: int, hop_size: int) -> dict[str, torch.Tensor]:
    """One window, copied out of the example; audio past the example's end (a padded validation example) is
    silence. A spooled example's pages are read here and let go of again (training.spool.release_pages), so
    however long a run reads, the spooled audio resident in this process is about one window."""
    from training.spool import release_pages

    f = ex.features
    audio = np.zeros(n_frames * hop_size, np.float32)
    chunk = ex.audio[start * hop_size:(start + n_frames) * hop_size]
    audio[:len(chunk)] = chunk
    release_pages(chunk)
    return {
        "audio": torch.from_numpy(audio),
        "f0_hz": torch.from_numpy(np.ascontiguousarray(f.f0_hz[start:start + n_frames + 1])),
        "loudness_db": torch.from_numpy(np.ascontiguousarray(f.loudness_db[start:start + n_frames + 1])),
    }


class RandomWindows(Dataset):
    """Random crops, drawn from (seed, epoch, index) so a run is reproducible; long examples are picked in
    proportion to their length. Optional random gain (the cheap per-step augmentation)."""

    def __init__(self, examples: list[Example], window_frames: int, hop_size: int, windows_per_epoch: int,
                 seed: int, gain_db_range: float = 0.0):
        self.examples = join_short_examples(examples, window_frames + 1, hop_size)
        self.window_frames = window_frames
        self.hop_size = hop_size
        self.windows_per_epoch = windows_per_epoch
        self.seed = seed
        self.gain_db_range = gain_db_range
        self.epoch = 0
        spans = np.array([e.n_frames - window_frames for e in self.examples], dtype=np.float64)
        self.weights = spans / spans.sum()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.windows_per_epoch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        ex = self.examples[rng.choice(len(self.examples), p=self.weights)]
        start = int(rng.integers(0, ex.n_frames - self.window_frames))
        if self.gain_db_range > 0:
            from training.augment import random_gain
            from training.spool import release_pages
            gain_db = float(rng.uniform(-self.gain_db_range, self.gain_db_range))
            window = ex.audio[start * self.hop_size:(start + self.window_frames) * self.hop_size]
            audio, feats = random_gain(window, ex.features.slice(start, start + self.window_frames + 1), gain_db)
            release_pages(window)
            return _window(Example(ex.name, audio, feats), 0, self.window_frames, self.hop_size)
        return _window(ex, start, self.window_frames, self.hop_size)


class TiledWindows(Dataset):
    """Every validation example cut into consecutive windows (the last one padded): fixed, deterministic.
    Only the features are padded up front; the last window's audio is padded as it is read."""

    def __init__(self, examples: list[Example], window_frames: int, hop_size: int):
        self.window_frames = window_frames
        self.hop_size = hop_size
        self.items: list[tuple[Example, int]] = []
        for ex in examples:
            n_windows = max(1, int(np.ceil((ex.n_frames - 1) / window_frames)))
            ex = trim_to_frames(ex, hop_size)
            ex = Example(ex.name, ex.audio, pad_features(ex.features, n_windows * window_frames + 1))
            self.items += [(ex, i * window_frames) for i in range(n_windows)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ex, start = self.items[index]
        return _window(ex, start, self.window_frames, self.hop_size)
