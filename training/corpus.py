"""Load and clean a corpus folder: decode every audio file, mix to mono, resample, trim silence, normalise.

A corpus is whatever a musician drops in a folder (1-500 recordings): any sample rate, bit depth, channel count,
wav/flac/aiff/ogg/mp3, nested folders. Unusable files (not audio, undecodable, empty, silent, too short) are
skipped with a reason rather than stopping the load; :class:`CorpusError` is raised only when nothing usable
remains. Files shorter than a training window are kept: the data set pads or joins them.

Decoding uses soundfile (libsndfile) first and falls back to ffmpeg (through audioread) for anything libsndfile
refuses, such as a misnamed AAC file or an mp3 on an old libsndfile.

Given an :class:`~training.spool.AudioSpool` (training does), each file's cleaned audio is written to the spool as
soon as it is decoded and kept only as a read-only memmap, so the load holds one file's audio at a time.
"""
from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import soundfile as sf

from training.features import hz_to_midi

if TYPE_CHECKING:
    from training.spool import AudioSpool

__all__ = [
    "AUDIO_EXTENSIONS", "SILENCE_DBFS", "CorpusError", "CorpusFile", "SkippedFile", "Corpus", "scan_corpus",
    "load_audio_file", "decode_audio_file", "source_clipped_samples", "load_corpus", "format_summary", "note_name",
]

AUDIO_EXTENSIONS: frozenset[str] = frozenset({".wav", ".flac", ".aif", ".aiff", ".ogg", ".oga", ".mp3"})
SILENCE_DBFS = -70.0          # a file whose peak is below this is "silent"
TRIM_MARGIN_S = 0.005         # kept before the first and after the last non-silent frame
TRIM_FRAME_S = 0.02           # frame and hop of the silence detector
TRIM_HOP_S = 0.005

_NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


class CorpusError(Exception):
    """Nothing usable in the corpus; the message says why and lists skipped files."""


@dataclass
class CorpusFile:
    path: Path
    audio: np.ndarray          # (n_samples,) float32, mono, at sample_rate, silence-trimmed, level-normalised;
                               # a read-only memmap of a spool file when the corpus was loaded with a spool
    sample_rate: int
    source_sample_rate: int
    source_channels: int
    content_hash: str          # sha256 hex of the original file bytes
    clipped_samples: int = 0   # source samples in flat tops at the file's own peak (see source_clipped_samples)
    dc_offset: float = 0.0     # largest per-channel mean of the source, in full-scale units

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate


@dataclass
class SkippedFile:
    path: Path
    reason: str                # human readable, e.g. "not an audio file (.txt)", "silent (peak -inf dBFS)"


@dataclass
class Corpus:
    files: list[CorpusFile]
    skipped: list[SkippedFile]
    sample_rate: int

    @property
    def total_seconds(self) -> float:
        return sum(f.duration_s for f in self.files)


def scan_corpus(folder: Path) -> list[Path]:
    """Every regular file under ``folder`` (recursive, sorted), except hidden files and files in hidden folders.

    A path to a single file gives that file.
    """
    folder = Path(folder)
    if folder.is_file():
        return [folder]
    found = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_file():
            found.append(path)
    return sorted(found)


def _decode_soundfile(path: Path) -> tuple[np.ndarray, int]:
    """(frames, channels) float32 and the sample rate, via libsndfile."""
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return data, int(sr)


def _decode_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    """(frames, channels) float32 and the sample rate, via ffmpeg (audioread's 16-bit pipe)."""
    from audioread.ffdec import FFmpegAudioFile  # only needed for files libsndfile refuses

    with FFmpegAudioFile(str(path)) as f:
        sr, channels = int(f.samplerate), int(f.channels)
        chunks = [np.frombuffer(buf, dtype="<i2") for buf in f]
    if channels < 1 or sr < 1:
        raise ValueError(f"ffmpeg reported {channels} channels at {sr} Hz")
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, dtype="<i2")
    pcm = pcm[: len(pcm) - len(pcm) % channels]
    return (pcm.astype(np.float32) / 32768.0).reshape(-1, channels), sr


CLIP_RUN_SAMPLES = 4          # this many equal samples in a row at the file's peak count as a clipped flat top


def source_clipped_samples(data: np.ndarray) -> int:
    """Samples of ``data`` (frames, channels) in flat tops: runs of >= CLIP_RUN_SAMPLES equal values at the
    file's own peak magnitude, so material clipped and then turned down is found too (a 50 Hz sine in 16 bits
    holds its peak for 1-3 samples)."""
    data = np.asarray(data)
    if data.size == 0:
        return 0
    peak = float(np.max(np.abs(data)))
    if peak <= 0.0:
        return 0
    total = 0
    for ch in data.T:
        at_peak = (np.abs(ch) >= peak).astype(np.int8)
        edges = np.diff(np.concatenate(([0], at_peak, [0])))
        runs = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
        total += int(runs[runs >= CLIP_RUN_SAMPLES].sum())
    return total


def decode_audio_file(path: Path) -> tuple[np.ndarray, int]:
    """Decode ``path`` as it is: ((frames, channels) float32, sample rate). ValueError if it cannot be decoded."""
    path = Path(path)
    try:
        data, source_sr = _decode_soundfile(path)
    except Exception as sf_error:  # libsndfile refuses: try ffmpeg before giving up
        try:
            data, source_sr = _decode_ffmpeg(path)
        except Exception as ff_error:
            sf_msg = str(sf_error).replace(f"'{path}'", "file").strip() or type(sf_error).__name__
            ff_msg = str(ff_error).strip() or type(ff_error).__name__
            raise ValueError(f"{sf_msg} (ffmpeg: {ff_msg})") from sf_error
    return data, source_sr


def load_audio_file(path: Path, sample_rate: int) -> tuple[np.ndarray, int, int]:
    """Decode ``path`` to mono float32 at ``sample_rate``.

    Returns ``(audio, source_sample_rate, source_channels)``. Channels are averaged; resampling uses soxr.
    Raises ValueError with the decoders' reasons if the file cannot be decoded.
    """
    data, source_sr = decode_audio_file(path)
    return _to_mono(data, source_sr, sample_rate)


def _to_mono(data: np.ndarray, source_sr: int, sample_rate: int) -> tuple[np.ndarray, int, int]:
    source_channels = int(data.shape[1])
    mono = data.mean(axis=1, dtype=np.float32) if source_channels > 1 else data[:, 0]
    if not np.all(np.isfinite(mono)):
        raise ValueError("contains NaN or infinite samples")
    if len(mono) > 0 and source_sr != sample_rate:
        import librosa  # heavy import, only for resampling

        mono = librosa.resample(mono, orig_sr=source_sr, target_sr=sample_rate, res_type="soxr_hq")
    return np.ascontiguousarray(mono, dtype=np.float32), source_sr, source_channels


def _trim_silence(audio: np.ndarray, sample_rate: int, top_db: float) -> np.ndarray:
    """Cut leading/trailing parts more than ``top_db`` below the file's peak, keeping a small margin.

    Frames (RMS) find the sound, so a lone noise spike in the silence does not count; the edges are then moved
    to the first and last sample above the threshold inside that region.
    """
    import librosa

    frame_length = max(16, int(round(TRIM_FRAME_S * sample_rate)))
    hop_length = max(4, int(round(TRIM_HOP_S * sample_rate)))
    _, (start, end) = librosa.effects.trim(audio, top_db=top_db, ref=np.max, frame_length=frame_length,
                                           hop_length=hop_length)
    # refine the frame edges to the first/last sample above the threshold, then add the margin back
    threshold = float(np.max(np.abs(audio))) * 10.0 ** (-top_db / 20.0)
    loud = np.flatnonzero(np.abs(audio[start:end]) >= threshold)
    if len(loud):
        start, end = int(start) + int(loud[0]), int(start) + int(loud[-1]) + 1
    margin = int(round(TRIM_MARGIN_S * sample_rate))
    start, end = max(0, int(start) - margin), min(len(audio), int(end) + margin)
    return audio[start:end]


def _peak_dbfs(audio: np.ndarray) -> float:
    peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
    return 20.0 * math.log10(peak) if peak > 0.0 else -math.inf


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_one(path: Path, sample_rate: int, trim_top_db: float, peak_dbfs: float, min_seconds: float,
              normalise: bool) -> CorpusFile | SkippedFile:
    ext = path.suffix.lower()
    if ext not in AUDIO_EXTENSIONS:
        return SkippedFile(path, f"not an audio file ({ext or 'no extension'})")
    try:
        if path.stat().st_size == 0:
            return SkippedFile(path, "empty file (0 bytes)")
        content_hash = _sha256(path)
        data, source_sr = decode_audio_file(path)
        clipped = source_clipped_samples(data)
        dc_offset = float(np.max(np.abs(data.mean(axis=0, dtype=np.float64)))) if len(data) else 0.0
        audio, source_sr, source_channels = _to_mono(data, source_sr, sample_rate)
    except Exception as e:  # any decoder failure skips the file, never the load
        return SkippedFile(path, f"unreadable: {str(e) or type(e).__name__}")
    if len(audio) == 0:
        return SkippedFile(path, "empty (0 samples)")
    peak_db = _peak_dbfs(audio)
    if peak_db < SILENCE_DBFS:
        return SkippedFile(path, f"silent (peak {peak_db:.1f} dBFS)")
    audio = _trim_silence(audio, sample_rate, trim_top_db)
    if len(audio) / sample_rate < min_seconds:
        return SkippedFile(path, f"too short after trimming silence ({len(audio) / sample_rate:.2f} s)")
    if normalise:
        audio = audio * np.float32(10.0 ** (peak_dbfs / 20.0) / np.max(np.abs(audio)))
    return CorpusFile(path=path, audio=np.ascontiguousarray(audio, dtype=np.float32), sample_rate=sample_rate,
                      source_sample_rate=source_sr, source_channels=source_channels, content_hash=content_hash,
                      clipped_samples=clipped, dc_offset=dc_offset)


def load_corpus(folder: Path | str, sample_rate: int = 48000, trim_top_db: float = 50.0, peak_dbfs: float = -1.0,
                min_seconds: float = 0.05, normalise: bool = True,
                log: Callable[[str], None] | None = print, spool: AudioSpool | None = None) -> Corpus:
    """Load every usable audio file under ``folder`` (or the single file ``folder``), sequentially.

    Skipped files are reported through ``log`` as they happen and kept in ``Corpus.skipped``. With a ``spool``,
    each file's audio goes to the spool as soon as it is loaded and ``CorpusFile.audio`` is a read-only memmap of
    it (the same values), so memory does not grow with the corpus; without one the audio is held in memory.
    Raises CorpusError if the folder is missing or empty, or if no file is usable.
    """
    folder = Path(folder)
    if not folder.exists():
        raise CorpusError(f"corpus folder not found: {folder}")
    paths = scan_corpus(folder)
    if not paths:
        raise CorpusError(f"corpus folder is empty: {folder} (expected audio files: "
                          f"{', '.join(sorted(AUDIO_EXTENSIONS))})")
    files: list[CorpusFile] = []
    skipped: list[SkippedFile] = []
    for path in paths:
        result = _load_one(path, sample_rate, trim_top_db, peak_dbfs, min_seconds, normalise)
        if isinstance(result, SkippedFile):
            skipped.append(result)
            if log is not None:
                log(f"skipped {result.path}: {result.reason}")
        else:
            if spool is not None:
                result.audio = spool.write(result.audio, result.path.stem)
            files.append(result)
    if not files:
        listing = "\n".join(f"  {s.path}: {s.reason}" for s in skipped)
        raise CorpusError(f"no usable audio in {folder}: all {len(skipped)} files were skipped:\n{listing}")
    return Corpus(files=files, skipped=skipped, sample_rate=sample_rate)


def note_name(f_hz: float) -> str:
    """Nearest equal-tempered note name for a frequency, e.g. 440.0 -> "A4", 261.6 -> "C4"."""
    if not (f_hz > 0.0 and math.isfinite(f_hz)):
        return "?"
    midi = int(round(float(hz_to_midi(f_hz))))
    return f"{_NOTE_NAMES[midi % 12]}{midi // 12 - 1}"


def _count_list(counter: Counter, fmt: Callable[[int], str]) -> str:
    return ", ".join(f"{fmt(k)} x{n}" for k, n in sorted(counter.items()))


def _channels_word(n: int) -> str:
    return {1: "mono", 2: "stereo"}.get(n, f"{n}-channel")


def format_summary(corpus: Corpus, f0_range_hz: tuple[float, float] | None = None) -> str:
    """A few human-readable lines: files, minutes, source formats, pitch range (if given), skipped files."""
    n = len(corpus.files)
    lines = [f"corpus: {n} file{'s' if n != 1 else ''}, {corpus.total_seconds / 60.0:.1f} min "
             f"({corpus.total_seconds:.1f} s) at {corpus.sample_rate} Hz"]
    if corpus.files:
        durations = [f.duration_s for f in corpus.files]
        lines.append(f"  durations: {min(durations):.2f} s to {max(durations):.2f} s")
        lines.append("  source rates: " + _count_list(Counter(f.source_sample_rate for f in corpus.files),
                                                      lambda r: f"{r} Hz"))
        lines.append("  source channels: " + _count_list(Counter(f.source_channels for f in corpus.files),
                                                         _channels_word))
    if f0_range_hz is not None:
        lo, hi = f0_range_hz
        lines.append(f"  pitch range: {lo:.1f}-{hi:.1f} Hz ({note_name(lo)}-{note_name(hi)})")
    if corpus.skipped:
        lines.append(f"  skipped {len(corpus.skipped)} file{'s' if len(corpus.skipped) != 1 else ''}:")
        lines.extend(f"    {s.path}: {s.reason}" for s in corpus.skipped)
    else:
        lines.append("  skipped: none")
    return "\n".join(lines)
