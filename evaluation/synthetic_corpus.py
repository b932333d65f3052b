"""A synthetic corpus with known generative factors, for measuring whether the latents are musical controls.

Harmonic tones and short phrases (held notes with vibrato, glides, legato note groups) over two octaves
(G3-G5), each with its own loudness envelope, whose timbre is set by three independent factors in [0, 1], held
constant per segment (one segment = one note, glide or phrase; ``segments_per_file`` of them per file):

- ``brightness``: spectral tilt of the harmonics, TILT_DB_PER_OCTAVE[0] (dark) .. [1] (bright) dB per octave;
- ``breath``: power of band-passed breath noise relative to the harmonic power, NOISE_RATIO_DB dB;
- ``hollowness``: gain of the even harmonics, EVEN_GAIN_DB dB (0 dB: all harmonics; -30 dB: clarinet-like).

Pitch and loudness vary freely (they are the decoder's inputs, not timbre). Factor values are drawn by Latin
hypercube sampling over all segments of the corpus (each factor's marginal is even, the factors independent).

Everything is NumPy, deterministic for a seed. The folder gets the WAVs plus ``.sdga-synthetic-factors.json``
(settings and every segment) and ``.sdga-synthetic-factors.csv`` (one row per segment); both are hidden so the
corpus loader does not list them as skipped files. A folder that already holds the same settings is reused.

    python -m evaluation.synthetic_corpus data/synthetic --files 24 --seconds 6
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

__all__ = ["FACTOR_NAMES", "FACTORS_JSON", "FACTORS_CSV", "TILT_DB_PER_OCTAVE", "NOISE_RATIO_DB", "EVEN_GAIN_DB",
           "PITCH_RANGE_MIDI", "factor_to_physical", "harmonic_amplitudes", "synthesize_segment",
           "make_synthetic_corpus", "load_factors", "measure_timbre", "main"]

FACTOR_NAMES: tuple[str, ...] = ("brightness", "breath", "hollowness")
FACTORS_JSON = ".sdga-synthetic-factors.json"
FACTORS_CSV = ".sdga-synthetic-factors.csv"
VERSION = 1

TILT_DB_PER_OCTAVE = (-18.0, -3.0)    # brightness 0 -> 1
NOISE_RATIO_DB = (-40.0, -6.0)        # breath 0 -> 1 (noise power / harmonic power)
EVEN_GAIN_DB = (0.0, -30.0)           # hollowness 0 -> 1
PITCH_RANGE_MIDI = (55.0, 79.0)       # G3 (196 Hz) .. G5 (784 Hz)
N_HARMONICS = 48
MAX_HARMONIC_HZ = 20000.0
NOISE_BAND_HZ = (700.0, 7000.0)
PEAK_DBFS = -1.0
SEGMENT_KINDS = ("held", "glide", "phrase")


def factor_to_physical(brightness: float, breath: float, hollowness: float) -> dict:
    """Factor values in [0, 1] -> the synthesis parameters they set."""
    lerp = lambda r, x: float(r[0] + (r[1] - r[0]) * float(x))  # noqa: E731
    return {"tilt_db_per_octave": lerp(TILT_DB_PER_OCTAVE, brightness),
            "noise_ratio_db": lerp(NOISE_RATIO_DB, breath),
            "even_gain_db": lerp(EVEN_GAIN_DB, hollowness)}


def harmonic_amplitudes(tilt_db_per_octave: float, even_gain_db: float, n_harmonics: int = N_HARMONICS) -> np.ndarray:
    """Amplitudes of harmonics 1..n (n,), with sum of squares 1: tilt per octave, plus a gain on even harmonics."""
    k = np.arange(1, n_harmonics + 1, dtype=np.float64)
    db = tilt_db_per_octave * np.log2(k) + np.where(k % 2 == 0, even_gain_db, 0.0)
    a = 10.0 ** (db / 20.0)
    return a / np.sqrt((a ** 2).sum())


def _bandpass_noise(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    from scipy.signal import butter, sosfilt
    lo, hi = NOISE_BAND_HZ
    sos = butter(2, [lo, min(hi, 0.45 * sample_rate)], btype="bandpass", fs=sample_rate, output="sos")
    pad = int(0.05 * sample_rate)                       # let the filter settle before the segment starts
    noise = sosfilt(sos, rng.standard_normal(n + pad))[pad:]
    return noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12)


def synthesize_segment(f0_hz: np.ndarray, envelope: np.ndarray, brightness: float, breath: float, hollowness: float,
                       sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """One segment: per-sample f0_hz (n,) and amplitude envelope (n,) -> audio (n,) float64.

    Harmonic part: sum of harmonics with `harmonic_amplitudes` (mean square 0.5 before the envelope), each faded
    out as it nears MAX_HARMONIC_HZ; breath part: band-passed Gaussian noise with mean square
    0.5 * 10^(noise_ratio_db / 10), under the same envelope.
    """
    p = factor_to_physical(brightness, breath, hollowness)
    amps = harmonic_amplitudes(p["tilt_db_per_octave"], p["even_gain_db"])
    phase = 2.0 * np.pi * np.cumsum(f0_hz) / sample_rate
    phase += rng.uniform(0, 2 * np.pi)
    top = min(MAX_HARMONIC_HZ, 0.45 * sample_rate)
    harmonic = np.zeros_like(phase)
    for k, a in enumerate(amps, start=1):
        fade = np.clip((top - k * f0_hz) / 1000.0, 0.0, 1.0)
        if not fade.any():
            break
        harmonic += a * fade * np.sin(k * phase)
    noise = _bandpass_noise(len(f0_hz), sample_rate, rng) * np.sqrt(0.5 * 10.0 ** (p["noise_ratio_db"] / 10.0))
    return (harmonic + noise) * envelope


def _midi_to_hz(m):
    return 440.0 * 2.0 ** ((np.asarray(m, np.float64) - 69.0) / 12.0)


def _segment_f0(kind: str, n: int, sample_rate: int, rng: np.random.Generator) -> tuple[np.ndarray, list[float]]:
    """Per-sample f0 for a segment of n samples and the MIDI notes it visits."""
    lo, hi = PITCH_RANGE_MIDI
    t = np.arange(n) / sample_rate
    if kind == "held":
        notes = [float(rng.integers(int(lo), int(hi) + 1))]
        midi = np.full(n, notes[0])
    elif kind == "glide":
        a = float(rng.uniform(lo, hi))
        b = float(np.clip(a + rng.choice([-1, 1]) * rng.uniform(3, 12), lo, hi))
        notes = [a, b]
        s0, s1 = int(n * rng.uniform(0.1, 0.3)), int(n * rng.uniform(0.6, 0.9))
        midi = np.interp(np.arange(n), [0, s0, s1, n - 1], [a, a, b, b])
    else:                                               # a short legato phrase of 2-4 notes
        count = int(rng.integers(2, 5))
        start = int(rng.integers(int(lo) + 2, int(hi) - 1))
        notes = [float(start)]
        for _ in range(count - 1):
            notes.append(float(np.clip(notes[-1] + rng.choice([-4, -3, -2, -1, 1, 2, 3, 4, 5, 7]), lo, hi)))
        bounds = np.linspace(0, n, count + 1).astype(int)
        midi = np.concatenate([np.full(bounds[i + 1] - bounds[i], notes[i]) for i in range(count)])
        glide = max(1, int(0.03 * sample_rate))         # 30 ms portamento between notes
        midi = np.convolve(np.pad(midi, (glide, glide), mode="edge"), np.ones(glide) / glide, mode="same")[glide:-glide]
    rate, depth = rng.uniform(4.5, 6.0), rng.uniform(5.0, 20.0)      # vibrato, cents
    onset = np.clip((t - 0.25) / 0.3, 0.0, 1.0)
    midi = midi + onset * depth / 100.0 * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))
    return _midi_to_hz(midi), notes


def _segment_envelope(kind: str, n: int, n_notes: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / sample_rate
    peak_db = rng.uniform(-18.0, 0.0)
    swell_db = rng.uniform(-6.0, 6.0) * (t / max(t[-1], 1e-9)) + 2.0 * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t)
    db = peak_db + swell_db
    if kind == "phrase" and n_notes > 1:                # articulate note changes with short dips
        for b in np.linspace(0, n, n_notes + 1)[1:-1]:
            db -= 6.0 * np.exp(-0.5 * ((np.arange(n) - b) / (0.02 * sample_rate)) ** 2)
    amp = 10.0 ** (db / 20.0)
    attack, release = int(rng.uniform(0.02, 0.12) * sample_rate), int(rng.uniform(0.05, 0.2) * sample_rate)
    attack, release = max(1, min(attack, n // 3)), max(1, min(release, n // 3))
    amp[:attack] *= 0.5 - 0.5 * np.cos(np.pi * np.arange(attack) / attack)
    amp[n - release:] *= 0.5 + 0.5 * np.cos(np.pi * np.arange(release) / release)
    return amp


def _latin_hypercube(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """(n, k) values in [0, 1]: each column one draw per stratum of width 1/n, columns independently permuted."""
    return np.stack([(rng.permutation(n) + rng.uniform(0, 1, n)) / n for _ in range(k)], axis=1)


def _settings(n_files: int, seconds: float, seed: int, sample_rate: int, segments_per_file: int) -> dict:
    return {"version": VERSION, "n_files": int(n_files), "seconds": float(seconds), "seed": int(seed),
            "sample_rate": int(sample_rate), "segments_per_file": int(segments_per_file),
            "factor_names": list(FACTOR_NAMES), "tilt_db_per_octave": list(TILT_DB_PER_OCTAVE),
            "noise_ratio_db": list(NOISE_RATIO_DB), "even_gain_db": list(EVEN_GAIN_DB),
            "pitch_range_midi": list(PITCH_RANGE_MIDI), "noise_band_hz": list(NOISE_BAND_HZ)}


def make_synthetic_corpus(out_dir: Path | str, n_files: int = 24, seconds: float = 6.0, seed: int = 0,
                          sample_rate: int = 48000, segments_per_file: int = 3) -> list[Path]:
    """Write ``n_files`` WAVs of ``seconds`` each (``segments_per_file`` segments with their own factor values)
    and the factor table; returns the WAV paths (sorted). Deterministic for a seed; reused if already there."""
    if n_files < 1 or seconds <= 0 or segments_per_file < 1:
        raise ValueError(f"need n_files >= 1, seconds > 0, segments_per_file >= 1; got {n_files}, {seconds}, "
                         f"{segments_per_file}")
    slot = seconds / segments_per_file
    if slot < 0.4:
        raise ValueError(f"segments of {slot:.2f} s are too short (need >= 0.4 s): fewer segments or longer files")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = _settings(n_files, seconds, seed, sample_rate, segments_per_file)
    names = [f"synth_{i:03d}.wav" for i in range(n_files)]
    paths = [out_dir / name for name in names]
    old = _read_json(out_dir / FACTORS_JSON)
    if old and old.get("settings") == settings and all(p.is_file() for p in paths):
        return paths
    if old:                                             # remove only what an earlier call wrote
        for entry in old.get("files", []):
            stale = out_dir / Path(str(entry.get("file", ""))).name
            if stale.suffix == ".wav" and stale.is_file():
                stale.unlink()

    factor_values = _latin_hypercube(n_files * segments_per_file, len(FACTOR_NAMES),
                                     np.random.default_rng([seed, 0xFAC7]))
    files, rows = [], []
    n_total = int(round(seconds * sample_rate))
    for i, path in enumerate(paths):
        rng = np.random.default_rng([seed, i])
        audio = np.zeros(n_total)
        segments = []
        for s in range(segments_per_file):
            slot_start, slot_end = int(s * slot * sample_rate), int((s + 1) * slot * sample_rate)
            start = slot_start + int(rng.uniform(0.04, 0.12) * sample_rate)
            end = slot_end - int(rng.uniform(0.04, 0.10) * sample_rate)
            n = end - start
            kind = SEGMENT_KINDS[int(rng.integers(len(SEGMENT_KINDS)))] if slot >= 0.8 else "held"
            f0, notes = _segment_f0(kind, n, sample_rate, rng)
            env = _segment_envelope(kind, n, len(notes), sample_rate, rng)
            values = dict(zip(FACTOR_NAMES, (float(v) for v in factor_values[i * segments_per_file + s])))
            audio[start:end] += synthesize_segment(f0, env, **values, sample_rate=sample_rate, rng=rng)
            seg = {"segment": s, "start_s": round(start / sample_rate, 6), "end_s": round(end / sample_rate, 6),
                   "kind": kind, **{k: round(v, 6) for k, v in values.items()},
                   **{k: round(v, 4) for k, v in factor_to_physical(**values).items()},
                   "f0_min_hz": round(float(f0.min()), 2), "f0_max_hz": round(float(f0.max()), 2),
                   "notes_midi": [round(m, 2) for m in notes]}
            segments.append(seg)
            rows.append({"file": path.name, **{k: v for k, v in seg.items() if k != "notes_midi"}})
        audio *= 10.0 ** (PEAK_DBFS / 20.0) / (np.max(np.abs(audio)) + 1e-12)
        sf.write(str(path), audio.astype(np.float32), sample_rate, subtype="PCM_24")
        files.append({"file": path.name, "segments": segments})

    tmp = out_dir / (FACTORS_CSV + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out_dir / FACTORS_CSV)
    tmp = out_dir / (FACTORS_JSON + ".tmp")             # written last: its presence means the corpus is complete
    tmp.write_text(json.dumps({"settings": settings, "files": files}, indent=1))
    tmp.replace(out_dir / FACTORS_JSON)
    return paths


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_factors(corpus_dir: Path | str) -> list[dict]:
    """The factor table of a synthetic corpus: one dict per segment with ``file`` (name), ``segment``,
    ``start_s``, ``end_s``, ``kind``, every factor in FACTOR_NAMES and its physical value."""
    data = _read_json(Path(corpus_dir) / FACTORS_JSON)
    if data is None:
        raise FileNotFoundError(f"{corpus_dir}: no {FACTORS_JSON} (not a synthetic corpus?)")
    return [{"file": f["file"], **seg} for f in data["files"] for seg in f["segments"]]


# ---------------------------------------------------------------------------------------------- measurement
def measure_timbre(audio: np.ndarray, sample_rate: int, start_s: float = 0.0, end_s: float | None = None,
                   n_fft: int = 4096) -> dict:
    """Timbre of a segment measured from the audio alone (to check the factor table), medians over frames:

    - ``harmonic_centroid``: centroid of the harmonic peak energies in harmonic numbers (pitch-independent);
    - ``odd_even_db``: energy of odd harmonics 3..9 over even harmonics 2..8;
    - ``noise_ratio_db``: 10 log10((1 - r) / r), r the normalised autocorrelation at the pitch period.

    f0 per frame comes from the autocorrelation (lags for 150-1000 Hz)."""
    x = np.asarray(audio, np.float64)
    end_s = len(x) / sample_rate if end_s is None else end_s
    a, b = int((start_s + 0.1) * sample_rate), int((end_s - 0.1) * sample_rate)
    x = x[a:b]
    hop = n_fft // 2
    if len(x) < n_fft:
        raise ValueError("segment too short to measure")
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    rms = np.sqrt((frames ** 2).mean(1))
    frames = frames[rms > rms.max() * 10 ** (-20 / 20)]
    window = np.hanning(n_fft)
    win_acf = np.correlate(window ** 2, window ** 2, "full")[n_fft - 1:]
    freqs = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    lag_lo, lag_hi = int(sample_rate / 1000), int(sample_rate / 150)
    out = {"harmonic_centroid": [], "odd_even_db": [], "noise_ratio_db": []}
    for fr in frames:
        w = fr * window
        spec = np.fft.rfft(w, 2 * n_fft)
        acf = np.fft.irfft(np.abs(spec) ** 2)[:lag_hi + 2] / win_acf[:lag_hi + 2]
        acf = acf / acf[0]
        seg = acf[lag_lo:lag_hi]
        lag = lag_lo + int(np.flatnonzero(seg >= 0.9 * seg.max())[0])
        while lag + 1 < lag_hi and acf[lag + 1] > acf[lag]:
            lag += 1
        r = float(np.clip(acf[lag], 1e-6, 1 - 1e-9))
        y0, y1, y2 = acf[lag - 1], acf[lag], acf[lag + 1]
        shift = 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2) if (y0 - 2 * y1 + y2) != 0 else 0.0
        f0 = sample_rate / (lag + shift)
        power = np.abs(np.fft.rfft(w)) ** 2
        energies = []
        for k in range(1, 21):
            if k * f0 > 0.45 * sample_rate:
                break
            band = (freqs > k * f0 * 0.97) & (freqs < k * f0 * 1.03)
            energies.append(power[band].max() if band.any() else 0.0)
        e = np.asarray(energies) + 1e-20
        ks = np.arange(1, len(e) + 1)
        out["harmonic_centroid"].append(float((ks * e).sum() / e.sum()))
        odd = e[2:9:2].sum() if len(e) >= 9 else e[2::2].sum()
        even = e[1:8:2].sum() if len(e) >= 8 else e[1::2].sum()
        out["odd_even_db"].append(float(10 * np.log10(odd / even)))
        out["noise_ratio_db"].append(float(10 * np.log10((1 - r) / r)))
    return {k: float(np.median(v)) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evaluation.synthetic_corpus",
                                description="Write a synthetic corpus with known timbre factors (brightness, breath, "
                                            "hollowness) and their table.")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--files", type=int, default=24)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--segments", type=int, default=3, help="segments per file, each with its own factor values [3]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-rate", type=int, default=48000)
    args = p.parse_args(argv)
    try:
        paths = make_synthetic_corpus(args.out_dir, args.files, args.seconds, args.seed, args.sample_rate,
                                      args.segments)
    except ValueError as exc:
        print(f"synthetic_corpus: error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(paths)} files, {len(paths) * args.segments} segments, {len(paths) * args.seconds:.0f} s in "
          f"{args.out_dir} (factors: {args.out_dir / FACTORS_JSON}, {args.out_dir / FACTORS_CSV})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
