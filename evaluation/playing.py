"""Does a trained model play? Render held notes and measure what comes out: invariance of the knobs (pitch and
loudness stay, the named descriptor moves) and MIDI accuracy (pitch, velocity -> loudness).

pYIN f0 refined below its 10-cent grid, A-weighted loudness, the export's timbre descriptors.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np

__all__ = ["INVARIANCE_F0_CENTS", "INVARIANCE_LOUDNESS_DB", "INVARIANCE_DESCRIPTOR_UNITS", "measure_note",
           "invariance_check", "velocity_to_loudness_db", "midi_play_accuracy"]

INVARIANCE_F0_CENTS = 5.0          # |rendered f0 - input f0| must stay below this at every knob value and pitch
INVARIANCE_LOUDNESS_DB = 1.5       # |loudness(knob) - loudness(knob 0.5)| must stay below this
INVARIANCE_DESCRIPTOR_UNITS = 1.0  # the named descriptor must rise by >= this many export.DESCRIPTORS units 0 -> 1


# ---------------------------------------------------------------------------------------------- rendering probes
def _held_note(f0_hz: float, loudness_db: float, seconds: float, hop_size: int, sample_rate: int,
               attack_s: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    n = int(round(seconds * sample_rate / hop_size)) + 1
    f0 = np.full(n, f0_hz, np.float32)
    ld = np.full(n, loudness_db, np.float32)
    attack = max(2, min(n, int(attack_s * sample_rate / hop_size)))
    ld[:attack] = np.linspace(-80.0, loudness_db, attack)
    return f0, ld


def _render_note(bundle, f0_hz: float, loudness_db: float, z: np.ndarray, seconds: float):
    """(audio, harmonic, noise, harmonic distribution (F, H)) of a held note."""
    import torch
    from instrument.model.offline import render_parts

    c = bundle.config
    f0, ld = _held_note(f0_hz, loudness_db, seconds, c.hop_size, c.sample_rate)
    harmonic, noise = render_parts(bundle.decoder, f0, ld, z, seed=7)
    with torch.inference_mode():
        controls, _ = bundle.decoder.controls(torch.as_tensor(f0).view(1, -1), torch.as_tensor(ld).view(1, -1),
                                              torch.as_tensor(np.asarray(z, np.float32)).view(1, 1, -1)
                                              .expand(1, len(f0), -1))
    return harmonic + noise, harmonic, noise, controls.harmonic_distribution[0].numpy()


def _refine_f0(audio: np.ndarray, coarse_hz: float, sample_rate: int, max_harmonic: int = 6) -> float:
    """f0 of a steady tone near `coarse_hz`: the strongest of its first harmonics (each searched within +-50 cents)
    located by parabolic interpolation of a zero-padded Hann spectrum's log magnitude, divided by its number."""
    n = len(audio)
    n_fft = 1 << int(math.ceil(math.log2(n * 8)))
    spec = np.abs(np.fft.rfft(audio * np.hanning(n), n_fft)) + 1e-20
    best = None
    for k in range(1, max_harmonic + 1):
        fk = k * coarse_hz
        if fk * 2 ** (50 / 1200) >= 0.45 * sample_rate:
            break
        i0 = max(1, int(fk * 2 ** (-50 / 1200) * n_fft / sample_rate))
        i1 = min(len(spec) - 1, int(math.ceil(fk * 2 ** (50 / 1200) * n_fft / sample_rate)) + 1)
        i = i0 + int(np.argmax(spec[i0:i1]))
        if best is None or spec[i] > best[0]:
            best = (spec[i], i, k)
    if best is None:
        return coarse_hz
    _, i, k = best
    y0, y1, y2 = np.log(spec[i - 1: i + 2])
    denom = y0 - 2 * y1 + y2
    shift = 0.5 * (y0 - y2) / denom if denom != 0 else 0.0
    return float((i + shift) * sample_rate / n_fft / k)


def measure_note(audio: np.ndarray, f0_ref_hz: float, sample_rate: int, hop_size: int,
                 steady_from_s: float = 0.15, unvoiced_by_peaks: bool = False) -> dict:
    """What a rendered held note measures as, from `steady_from_s` on: pYIN f0 (median over confidently voiced
    frames; its 10-cent grid refined by `_refine_f0`), its error in cents vs `f0_ref_hz`, the voiced fraction,
    and the A-weighted loudness in dB (power mean over frames). With ``unvoiced_by_peaks``, a note pYIN calls
    unvoiced (a breathy one) is measured by its harmonic peaks near `f0_ref_hz` (``f0_from``: "harmonic
    peaks"); otherwise its f0 fields stay NaN."""
    from training.features import FeatureSettings, extract_features

    feats = extract_features(np.asarray(audio, np.float32), FeatureSettings(sample_rate=sample_rate, hop_size=hop_size))
    start = int(steady_from_s * sample_rate / hop_size)
    voiced = feats.voiced[start:] & (feats.voiced_prob[start:] >= 0.5)
    ld = feats.loudness_db[start:].astype(np.float64)
    loudness = float(10 * np.log10(np.mean(10 ** (ld / 10)))) if ld.size else math.nan
    frac = float(voiced.mean()) if voiced.size else 0.0
    out = {"f0_hz": math.nan, "f0_cents": math.nan, "f0_cents_pyin": math.nan, "voiced_fraction": frac,
           "loudness_db": loudness}
    if voiced.sum() < 3 or frac < 0.25:
        if not unvoiced_by_peaks:
            return out
        # pYIN calls a breathy note unvoiced: read the pitch of its harmonics near the reference instead (a
        # shift of more than the +-50-cent search lands on its edge and still fails a 5-cent check)
        if not np.isfinite(audio).all() or not np.any(audio):
            return out
        coarse = float(f0_ref_hz)
        fine = _refine_f0(np.asarray(audio[start * hop_size:], np.float64), coarse, sample_rate)
        out.update(f0_hz=fine, f0_cents=float(1200 * np.log2(fine / f0_ref_hz)), f0_from="harmonic peaks")
        return out
    coarse = float(np.median(feats.f0_hz[start:][voiced]))
    fine = _refine_f0(np.asarray(audio[start * hop_size:], np.float64), coarse, sample_rate)
    out.update(f0_hz=fine, f0_cents=float(1200 * np.log2(fine / f0_ref_hz)),
               f0_cents_pyin=float(1200 * np.log2(coarse / f0_ref_hz)))
    return out


def _descriptor_key(name: str) -> str | None:
    from training.export import DESCRIPTORS
    base = re.sub(r"\d+$", "", name)
    for key, (label, _unit) in DESCRIPTORS.items():
        if label == base:
            return key
    return None


def _test_pitches(bundle, n_pitches: int) -> list[float]:
    lo, hi = bundle.f0_range_hz()
    if n_pitches == 1:
        return [float(math.sqrt(lo * hi))]
    fractions = np.linspace(0.15, 0.85, n_pitches)
    return [float(lo * (hi / lo) ** f) for f in fractions]


def _corpus_loudness(bundle) -> float:
    return bundle.corpus.reference_loudness_db


def invariance_check(bundle, n_steps: int = 5, pitches_hz: Sequence[float] | None = None, n_pitches: int = 3,
                     seconds: float = 1.0, loudness_db: float | None = None) -> list[dict]:
    """For every active latent: sweep its knob 0..1 (n_steps values, plus 0.5) on held notes at a few pitches in
    the corpus's f0 range (others at their means) and measure f0 error (cents), loudness change vs knob 0.5 (dB)
    and the named descriptor (export.DESCRIPTORS; for a name without one, the descriptor that moves most).

    Pass: |f0| < INVARIANCE_F0_CENTS everywhere, |loudness change| < INVARIANCE_LOUDNESS_DB everywhere, and the
    descriptor rising by >= INVARIANCE_DESCRIPTOR_UNITS units from knob 0 to 1 (median over pitches; for an
    unnamed latent, whose knob has no orientation, changing by that much either way)."""
    from training.export import DESCRIPTORS, describe

    c = bundle.config
    pitches = [float(p) for p in (pitches_hz if pitches_hz is not None else _test_pitches(bundle, n_pitches))]
    loud = _corpus_loudness(bundle) if loudness_db is None else float(loudness_db)
    knobs = sorted(set(np.round(np.linspace(0.0, 1.0, max(2, n_steps)), 6).tolist()) | {0.5})
    steady = slice(int(0.25 * c.sample_rate), None)
    results = []
    for info in bundle.latents:
        if not info.active:
            continue
        rows, descs = [], {}
        for pitch in pitches:
            for knob in knobs:
                z = bundle.default_z().numpy().copy()
                z[info.index] = info.knob_to_z(knob)
                audio, harmonic, noise, dist = _render_note(bundle, pitch, loud, z, seconds)
                m = measure_note(audio, pitch, c.sample_rate, c.hop_size, unvoiced_by_peaks=True)
                d = describe(audio[steady], harmonic[steady], noise[steady], dist[len(dist) // 3:], c.sample_rate)
                descs[(pitch, knob)] = d
                rows.append({"pitch_hz": pitch, "knob": knob, **m})
        mid = {p: next(r["loudness_db"] for r in rows if r["pitch_hz"] == p and r["knob"] == 0.5) for p in pitches}
        for r in rows:
            r["loudness_change_db"] = r["loudness_db"] - mid[r["pitch_hz"]]
        key = getattr(info, "descriptor", None) or _descriptor_key(info.name)
        deltas = {k: float(np.median([descs[(p, 1.0)][k] - descs[(p, 0.0)][k] for p in pitches])) for k in DESCRIPTORS}
        measured = key is None
        if measured:
            key = max(DESCRIPTORS, key=lambda k: abs(deltas[k]) / DESCRIPTORS[k][1])
        unit = DESCRIPTORS[key][1]
        for r in rows:
            r["descriptor"] = descs[(r["pitch_hz"], r["knob"])][key]
        f0_abs = [abs(r["f0_cents"]) for r in rows]
        f0_max = max(f0_abs) if all(np.isfinite(f0_abs)) else math.inf
        ld_max = max(abs(r["loudness_change_db"]) for r in rows)
        delta_units = deltas[key] / unit
        result = {"latent": info.name, "index": info.index, "kl_nats": info.kl_nats, "descriptor": key,
                  "descriptor_from": "measured" if measured else "name", "descriptor_unit": unit,
                  "pitches_hz": pitches, "knobs": knobs, "loudness_db": loud,
                  "f0_cents_max_abs": f0_max, "loudness_db_max_abs": ld_max,
                  "descriptor_delta": deltas[key], "descriptor_delta_units": delta_units,
                  "descriptor_deltas": deltas,
                  "f0_pass": bool(f0_max < INVARIANCE_F0_CENTS), "loudness_pass": bool(ld_max < INVARIANCE_LOUDNESS_DB),
                  # a named knob is oriented so that up = more of its descriptor; an unnamed one is not
                  "descriptor_pass": bool((abs(delta_units) if measured else delta_units) >= INVARIANCE_DESCRIPTOR_UNITS),
                  "rows": rows}
        result["pass"] = result["f0_pass"] and result["loudness_pass"] and result["descriptor_pass"]
        results.append(result)
    return results


def velocity_to_loudness_db(velocity: float, loudness_range_db: Sequence[float]) -> float:
    """Velocity 0..127 linearly onto the corpus loudness range (the voice bank's mapping at sensitivity 1)."""
    lo, hi = float(loudness_range_db[0]), float(loudness_range_db[1])
    return lo + (hi - lo) * min(max(float(velocity) / 127.0, 0.0), 1.0)


def midi_play_accuracy(bundle, notes: Sequence[int] | None = None, velocities: Sequence[int] = (32, 64, 96, 127),
                       seconds: float = 0.5) -> dict:
    """Play every note (default: each MIDI note inside the corpus's f0 range) at every velocity as a held note of
    `seconds` (latents at their means), and measure its pitch error (cents) and loudness.

    Summary: median / 95th percentile / max |cents|, the fraction of renders within INVARIANCE_F0_CENTS, octave
    errors (|cents| > 600) and unvoiced renders; whether measured loudness rises with velocity at every note
    (`loudness_rises`, and the fraction of notes where it does) and the mean slope dB out per dB in."""
    c = bundle.config
    ld_range = bundle.corpus.loudness_range_db
    if notes is None:
        lo, hi = bundle.f0_range_hz()
        notes = list(range(int(math.ceil(69 + 12 * math.log2(lo / 440))), int(math.floor(69 + 12 * math.log2(hi / 440))) + 1))
    velocities = sorted(int(v) for v in velocities)
    z = bundle.default_z().numpy()
    rows = []
    for note in notes:
        f0 = 440.0 * 2 ** ((note - 69) / 12)
        for v in velocities:
            ld_in = velocity_to_loudness_db(v, ld_range)
            audio, *_ = _render_note(bundle, f0, ld_in, z, seconds)
            m = measure_note(audio, f0, c.sample_rate, c.hop_size)
            rows.append({"note": int(note), "velocity": v, "f0_ref_hz": f0, "loudness_in_db": ld_in, **m})
    cents = np.array([r["f0_cents"] for r in rows], np.float64)
    finite = np.abs(cents[np.isfinite(cents)])
    rises, slopes = [], []
    for note in notes:
        r = [x for x in rows if x["note"] == note]
        out = np.array([x["loudness_db"] for x in r])
        rises.append(bool(np.all(np.diff(out) > 0)))
        ins = np.array([x["loudness_in_db"] for x in r])
        if len(r) > 1 and np.ptp(ins) > 0:
            slopes.append(float(np.polyfit(ins, out, 1)[0]))
    return {"notes": [int(n) for n in notes], "velocities": velocities, "seconds": seconds, "rows": rows,
            "renders": len(rows), "unvoiced": int((~np.isfinite(cents)).sum()),
            "f0_cents_median_abs": float(np.median(finite)) if finite.size else math.nan,
            "f0_cents_p95_abs": float(np.percentile(finite, 95)) if finite.size else math.nan,
            "f0_cents_max_abs": float(finite.max()) if finite.size else math.nan,
            "within_tolerance_fraction": float((finite < INVARIANCE_F0_CENTS).sum() / max(1, len(rows))),
            "octave_errors": int((finite > 600).sum()),
            "loudness_rises": bool(all(rises)) if rises else False,
            "loudness_rises_fraction": float(np.mean(rises)) if rises else 0.0,
            "loudness_slope_db_per_db": float(np.mean(slopes)) if slopes else math.nan}
