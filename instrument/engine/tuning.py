"""Tunings: Scala scale files (``.scl``) and keyboard maps (``.kbm``) as pure functions, to a per-key table.

The voices keep their pitch in MIDI note units of 12-tone equal temperament at A4 = 440 Hz (the synth turns
that into Hz); a tuning is the table ``key_offsets_semitones`` (128,): how far each MIDI key sounds from its
equal-tempered pitch, NaN for a key the keyboard map leaves unmapped (it plays nothing). Concert pitch
(``tuning_a4_hz``, a parameter) moves the whole tuning by 12 * log2(tuning_a4_hz / 440) semitones on top.

Formats (https://www.huygens-fokker.org/scala/scl_format.html, .../help.htm#mappings): ``!`` starts a comment
line; .scl: a description line, the number of notes, then one pitch per line (cents when it has a ``.``, else
a ratio ``a/b`` or a whole number; text after the value is ignored), the last being the period (usually 2/1).
.kbm: map size, first and last key retuned, middle key (scale degree 0), reference key, its frequency in Hz,
the scale degree of the formal octave, then one degree per key of the map (``x``: unmapped). Without a .kbm,
the Scala default: degree 0 on key 60, key 69 at 440 Hz, every degree in order. A bad file raises
:class:`TuningError` naming ``file:line``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["TuningError", "KeyboardMap", "DEFAULT_KEYBOARD_MAP", "parse_scl", "parse_kbm", "read_scl", "read_kbm",
           "key_offsets_semitones", "read_tuning", "a4_offset_semitones"]

N_KEYS = 128
REFERENCE_A4_HZ = 440.0


class TuningError(ValueError):
    """A .scl or .kbm file that does not parse; the message starts with ``file:line:``."""


@dataclass(frozen=True)
class KeyboardMap:
    map_size: int = 0                          # 0: linear, every key the next degree
    first_key: int = 0
    last_key: int = 127
    middle_key: int = 60                       # sounds scale degree 0
    reference_key: int = 69
    reference_hz: float = REFERENCE_A4_HZ
    octave_degree: int = 0                     # degree of the formal octave (0: the scale's period)
    degrees: tuple[int | None, ...] = ()       # per key of the map, None = unmapped


DEFAULT_KEYBOARD_MAP = KeyboardMap()


def _lines(text: str) -> list[tuple[int, str]]:
    """(line number, stripped text) of every non-comment line."""
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1) if not line.lstrip().startswith("!")]


def _pitch_cents(token: str, where: str) -> float:
    try:
        if "." in token:
            return float(token)
        if "/" in token:
            num, den = token.split("/", 1)
            ratio = int(num) / int(den)
        else:
            ratio = float(int(token))
    except (ValueError, ZeroDivisionError):
        raise TuningError(f"{where}: {token!r} is neither cents (with a '.') nor a ratio (a/b or a whole "
                          f"number)") from None
    if not ratio > 0.0:
        raise TuningError(f"{where}: ratio {token!r} must be positive")
    return 1200.0 * math.log2(ratio)


def parse_scl(text: str, source: str = "<scl>") -> tuple[float, ...]:
    """The degrees 1..n of a Scala scale in cents (the last is the period); degree 0 is 0 cents implicitly."""
    lines = _lines(text)
    if len(lines) < 2:
        raise TuningError(f"{source}:{lines[-1][0] if lines else 1}: expected a description line and the number "
                          f"of notes")
    n_line, n_text = lines[1]
    try:
        n = int(n_text.split()[0]) if n_text else -1
    except ValueError:
        n = -1
    if n < 1:
        raise TuningError(f"{source}:{n_line}: the number of notes must be a whole number >= 1, got {n_text!r}")
    pitches = [(i, t) for i, t in lines[2:] if t]
    if len(pitches) < n:
        last = pitches[-1][0] if pitches else n_line
        raise TuningError(f"{source}:{last}: {n} notes announced on line {n_line}, {len(pitches)} found")
    cents = tuple(_pitch_cents(t.split()[0], f"{source}:{i}") for i, t in pitches[:n])
    if not cents[-1] > 0.0:
        raise TuningError(f"{source}:{pitches[n - 1][0]}: the period (last pitch) must be above 0 cents, got "
                          f"{cents[-1]:g}")
    return cents


def parse_kbm(text: str, source: str = "<kbm>") -> KeyboardMap:
    """A Scala keyboard map."""
    lines = [(i, t) for i, t in _lines(text) if t]
    names = ("map size", "first key", "last key", "middle key", "reference key", "reference frequency",
             "octave degree")
    if len(lines) < len(names):
        raise TuningError(f"{source}:{lines[-1][0] if lines else 1}: expected {len(names)} header values "
                          f"({', '.join(names)}), found {len(lines)}")
    values: list[float] = []
    for (i, t), name in zip(lines, names):
        token = t.split()[0]
        try:
            value = float(token) if name == "reference frequency" else int(token)
        except ValueError:
            raise TuningError(f"{source}:{i}: {name} must be a {'number' if 'frequency' in name else 'whole number'}"
                              f", got {token!r}") from None
        if name.endswith("key") and not 0 <= value < N_KEYS:
            raise TuningError(f"{source}:{i}: {name} must be 0..127, got {value}")
        if (name == "map size" or name == "octave degree") and value < 0:
            raise TuningError(f"{source}:{i}: {name} must be >= 0, got {value}")
        if name == "reference frequency" and not (value > 0.0 and math.isfinite(value)):
            raise TuningError(f"{source}:{i}: reference frequency must be above 0 Hz, got {value}")
        values.append(value)
    size = int(values[0])
    entries = lines[len(names):]
    degrees: list[int | None] = []
    for i, t in entries[:size]:
        token = t.split()[0]
        if token.lower() == "x":
            degrees.append(None)
            continue
        try:
            degree = int(token)
        except ValueError:
            degree = -1
        if degree < 0:
            raise TuningError(f"{source}:{i}: a mapping entry is a scale degree >= 0 or x, got {token!r}")
        degrees.append(degree)
    degrees += [None] * (size - len(degrees))       # Scala: missing entries at the end are unmapped
    return KeyboardMap(size, int(values[1]), int(values[2]), int(values[3]), int(values[4]), float(values[5]),
                       int(values[6]), tuple(degrees))


def read_scl(path: str | Path) -> tuple[float, ...]:
    path = Path(path)
    try:
        text = path.read_text(encoding="latin-1")     # Scala files are plain ASCII; never fail on a stray byte
    except OSError as exc:
        raise TuningError(f"{path}:0: cannot read the scale file ({exc.strerror or exc})") from exc
    return parse_scl(text, str(path))


def read_kbm(path: str | Path) -> KeyboardMap:
    path = Path(path)
    try:
        text = path.read_text(encoding="latin-1")
    except OSError as exc:
        raise TuningError(f"{path}:0: cannot read the keyboard map ({exc.strerror or exc})") from exc
    return parse_kbm(text, str(path))


def _degree_cents(scale_cents: tuple[float, ...], degree: int) -> float:
    """Cents of any scale degree (degrees past the period wrap into the next periods; may be negative)."""
    n = len(scale_cents)
    periods, step = divmod(degree, n)
    return periods * scale_cents[-1] + (scale_cents[step - 1] if step else 0.0)


def key_offsets_semitones(scale_cents: tuple[float, ...], kbm: KeyboardMap = DEFAULT_KEYBOARD_MAP
                          ) -> np.ndarray:
    """(128,) float64: how far each MIDI key sounds from 12-TET at A4 = 440 Hz, in semitones; NaN = unmapped.

    Key ``k`` sounds ``reference_hz * 2 ** ((cents(k) - cents(reference_key)) / 1200)``, with cents(k) the
    scale position the keyboard map gives it (see the module docstring).
    """
    if not scale_cents:
        raise ValueError("a scale needs at least one degree")
    octave_cents = _degree_cents(scale_cents, kbm.octave_degree) if kbm.octave_degree else scale_cents[-1]

    def cents_of(key: int) -> float:
        if not kbm.first_key <= key <= kbm.last_key:
            return math.nan
        d = key - kbm.middle_key
        if kbm.map_size == 0:
            return _degree_cents(scale_cents, d)
        octaves, index = divmod(d, kbm.map_size)
        degree = kbm.degrees[index]
        return math.nan if degree is None else octaves * octave_cents + _degree_cents(scale_cents, degree)

    ref = cents_of(kbm.reference_key)
    if not math.isfinite(ref):
        raise ValueError(f"the keyboard map leaves its reference key {kbm.reference_key} unmapped")
    ref_pitch = 69.0 + 12.0 * math.log2(kbm.reference_hz / REFERENCE_A4_HZ)
    out = np.full(N_KEYS, np.nan)
    for key in range(N_KEYS):
        c = cents_of(key)
        if math.isfinite(c):
            out[key] = ref_pitch + (c - ref) / 100.0 - key
    return out


def read_tuning(scl_path: str | Path, kbm_path: str | Path | None = None) -> np.ndarray:
    """The key table of a .scl file (and optional .kbm), read-only (it is handed to the audio thread)."""
    kbm = read_kbm(kbm_path) if kbm_path is not None else DEFAULT_KEYBOARD_MAP
    scale = read_scl(scl_path)
    try:
        table = key_offsets_semitones(scale, kbm)
    except ValueError as exc:
        raise TuningError(f"{kbm_path or scl_path}:0: {exc}") from exc
    table.flags.writeable = False
    return table


def a4_offset_semitones(tuning_a4_hz: float) -> float:
    """Semitones that move A4 from 440 Hz to ``tuning_a4_hz`` (442 -> +0.0785)."""
    return 12.0 * math.log2(tuning_a4_hz / REFERENCE_A4_HZ)
