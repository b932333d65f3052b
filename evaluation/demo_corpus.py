"""A real demo corpus: recorded instrument samples (FluidR3_GM, MIT licence) played by ``fluidsynth``.

Random monophonic phrases are written as MIDI with mido and rendered offline, dry (reverb and chorus off), then
mixed to mono and peak-normalised to -1 dBFS. The result is deterministic for a seed and reused when the folder
already holds the same settings (a hidden manifest, ignored by the corpus loader).

    sdga-demo-corpus data/violin --instrument violin --files 8 --seconds 12
    sdga-demo-corpus data/clarinet-fp --instrument clarinet --sample-set freepats   # timidity + freepats

``--sample-set freepats`` renders the same phrases with timidity and the freepats patches instead: another,
independent set of recorded samples (Debian packages ``timidity`` and ``freepats``).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import mido
import numpy as np
import soundfile as sf

__all__ = ["FLUIDR3", "FREEPATS_CFG", "INSTRUMENTS", "MANIFEST_NAME", "SAMPLE_SETS", "write_phrase_midi",
           "render_midi", "timidity_has", "timidity_render", "make_demo_corpus", "main"]

FLUIDR3 = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
FREEPATS_CFG = Path("/etc/timidity/freepats.cfg")
SAMPLE_SETS = ("fluidr3", "freepats")
MANIFEST_NAME = ".sdga-demo-corpus.json"
MANIFEST_VERSION = 1
INSTALL_HINT = "install it with `sudo apt-get install fluidsynth fluid-soundfont-gm` or run scripts/setup.sh"

# name -> (General MIDI program, 0-based; lowest MIDI note; highest MIDI note)
INSTRUMENTS: dict[str, tuple[int, int, int]] = {
    "violin": (40, 55, 88),
    "viola": (41, 48, 81),
    "cello": (42, 36, 72),
    "trumpet": (56, 55, 82),
    "oboe": (68, 58, 91),
    "clarinet": (71, 50, 89),
    "flute": (73, 60, 96),
}

TICKS_PER_BEAT = 480
TEMPO_US_PER_BEAT = 500_000          # 120 bpm: one second is 960 ticks
_MAJOR = (0, 2, 4, 5, 7, 9, 11)
_MINOR = (0, 2, 3, 5, 7, 8, 10)
_PEAK_DBFS = -1.0


def _seconds_to_ticks(seconds: float) -> int:
    return int(round(seconds * 1e6 / TEMPO_US_PER_BEAT * TICKS_PER_BEAT))


def write_phrase_midi(path: Path, program: int, low_note: int, high_note: int, seconds: float,
                      rng: np.random.Generator) -> None:
    """Write a monophonic legato-ish phrase of ``seconds`` to a type-0 MIDI file.

    A random walk (mostly steps, sometimes leaps) over a random major or minor scale inside
    [low_note, high_note]; notes last 0.2-1.2 s with velocities 50-120, with occasional short rests. Each note
    ends exactly where the next starts (no overlap), so the phrase stays monophonic.
    """
    if not 0 <= program <= 127 or not 0 <= low_note < high_note <= 127:
        raise ValueError(f"bad program/range: program={program}, notes {low_note}..{high_note}")
    tonic = int(rng.integers(12))
    intervals = _MAJOR if rng.random() < 0.5 else _MINOR
    scale = [n for n in range(low_note, high_note + 1) if (n - tonic) % 12 in intervals]
    steps = np.array([-4, -3, -2, -1, 1, 2, 3, 4])
    step_p = np.array([0.03, 0.07, 0.15, 0.25, 0.25, 0.15, 0.07, 0.03])
    index = int(rng.integers(len(scale) // 4, max(len(scale) // 4 + 1, 3 * len(scale) // 4)))

    track = mido.MidiTrack()
    track.append(mido.MetaMessage("track_name", name=f"sdga demo program {program}", time=0))
    track.append(mido.MetaMessage("set_tempo", tempo=TEMPO_US_PER_BEAT, time=0))
    track.append(mido.Message("program_change", channel=0, program=program, time=0))
    track.append(mido.Message("control_change", channel=0, control=7, value=110, time=0))

    total_ticks = _seconds_to_ticks(seconds)
    now = 0          # absolute tick of the last event written
    t = 0            # absolute tick where the next note (or rest) starts
    while t < total_ticks:
        if t > 0 and rng.random() < 0.12:      # a short rest
            t = min(total_ticks, t + _seconds_to_ticks(rng.uniform(0.1, 0.4)))
            continue
        length = _seconds_to_ticks(rng.uniform(0.2, 1.2))
        end = min(total_ticks, t + length)
        if end - t < _seconds_to_ticks(0.1):
            break
        note = scale[index]
        velocity = int(rng.integers(50, 121))
        track.append(mido.Message("note_on", channel=0, note=note, velocity=velocity, time=t - now))
        track.append(mido.Message("note_off", channel=0, note=note, velocity=64, time=end - t))
        now = t = end
        index = int(np.clip(index + rng.choice(steps, p=step_p), 0, len(scale) - 1))
    track.append(mido.MetaMessage("end_of_track", time=max(0, total_ticks - now)))

    midi = mido.MidiFile(type=0, ticks_per_beat=TICKS_PER_BEAT)
    midi.tracks.append(track)
    midi.save(str(path))


def render_midi(midi_path: Path, wav_path: Path, sample_rate: int = 48000, soundfont: Path = FLUIDR3) -> None:
    """Render ``midi_path`` with the fluidsynth program to a dry, mono, -1 dBFS, 16-bit wav at ``wav_path``.

    Raises RuntimeError (with fluidsynth's output) if fluidsynth or the soundfont is missing, fluidsynth fails,
    or the rendering is silent.
    """
    midi_path, wav_path, soundfont = Path(midi_path), Path(wav_path), Path(soundfont)
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise RuntimeError(f"the fluidsynth program is not installed: {INSTALL_HINT}")
    if not soundfont.is_file():  # fluidsynth itself renders silence and exits 0 for a missing soundfont
        raise RuntimeError(f"soundfont not found: {soundfont}: {INSTALL_HINT}")
    wav_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sdga-render-") as tmp:
        raw_path = Path(tmp) / "raw.wav"
        cmd = [exe, "-n", "-i", "-q", "-g", "1.0", "-R", "0", "-C", "0", "-r", str(sample_rate),
               "-T", "wav", "-O", "float", "-F", str(raw_path), str(soundfont), str(midi_path)]
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        output = (proc.stderr + proc.stdout).strip()
        if proc.returncode != 0 or not raw_path.is_file():
            raise RuntimeError(f"fluidsynth failed (exit {proc.returncode}) rendering {midi_path}:\n{output}")
        audio, sr = sf.read(str(raw_path), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    peak = float(np.max(np.abs(mono))) if len(mono) else 0.0
    if peak < 1e-4:
        raise RuntimeError(f"fluidsynth rendered silence for {midi_path} with {soundfont}:\n{output}")
    # fluidsynth renders a couple of seconds of digital silence after the last release: cut it (keep 10 ms)
    last = int(np.flatnonzero(np.abs(mono) > peak * 1e-4)[-1]) + 1
    mono = mono[: min(len(mono), last + sr // 100)]
    mono = mono * (10.0 ** (_PEAK_DBFS / 20.0) / peak)
    sf.write(str(wav_path), mono, sr, subtype="PCM_16")


def timidity_has(program: int) -> bool:
    """Whether timidity and the freepats configuration are installed and freepats has this GM program."""
    if shutil.which("timidity") is None or not FREEPATS_CFG.is_file():
        return False
    text = FREEPATS_CFG.read_text()
    tone = text.split("bank 0", 1)[-1] if "bank 0" in text else text
    return any(line.split()[:1] == [str(program)] for line in tone.splitlines())


def timidity_render(midi_path: Path, wav_path: Path, sample_rate: int = 48000) -> None:
    """timidity + freepats, mono, no reverb/chorus, cut and peak-normalised to -1 dBFS like the fluidsynth
    renders. RuntimeError if timidity is missing, fails or renders silence."""
    if shutil.which("timidity") is None or not FREEPATS_CFG.is_file():
        raise RuntimeError("timidity or freepats is not installed: install them with "
                           "`sudo apt-get install timidity freepats` or run scripts/setup.sh")
    wav_path = Path(wav_path)
    wav_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sdga-timidity-") as tmp:
        raw = Path(tmp) / "raw.wav"
        proc = subprocess.run(["timidity", "-c", str(FREEPATS_CFG), "-Ow", "-s", str(sample_rate), "-EFreverb=0",
                               "-EFchorus=0", "-o", str(raw), str(midi_path)], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
        if proc.returncode != 0 or not raw.is_file():
            raise RuntimeError(f"timidity failed (exit {proc.returncode}) rendering {midi_path}:\n"
                               f"{(proc.stderr + proc.stdout).strip()}")
        audio, sr = sf.read(str(raw), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    peak = float(np.abs(mono).max()) if len(mono) else 0.0
    if peak < 1e-4:
        raise RuntimeError(f"timidity rendered silence for {midi_path}")
    last = int(np.flatnonzero(np.abs(mono) > peak * 1e-4)[-1]) + 1
    mono = mono[: last + sr // 100] * (10 ** (_PEAK_DBFS / 20) / peak)
    sf.write(str(wav_path), mono, sr, subtype="PCM_16")


def _settings(instrument: str, n_files: int, seconds_per_file: float, seed: int, sample_rate: int,
              soundfont: Path) -> dict:
    program, low, high = INSTRUMENTS[instrument]
    return {"version": MANIFEST_VERSION, "instrument": instrument, "program": program, "low_note": low,
            "high_note": high, "n_files": n_files, "seconds_per_file": float(seconds_per_file), "seed": seed,
            "sample_rate": sample_rate, "soundfont": str(soundfont)}


def make_demo_corpus(out_dir: Path, instrument: str = "violin", n_files: int = 8, seconds_per_file: float = 12.0,
                     seed: int = 0, sample_rate: int = 48000, sample_set: str = "fluidr3") -> list[Path]:
    """Render ``n_files`` phrases of ``instrument`` into ``out_dir`` with ``sample_set`` (FluidR3 via fluidsynth,
    or freepats via timidity); returns the wav paths (sorted).

    Deterministic for a seed (file i draws from ``default_rng([seed, i])``). If ``out_dir`` already holds the
    files for the same settings they are reused; files from a previous run with other settings are replaced.
    """
    if instrument not in INSTRUMENTS:
        raise ValueError(f"unknown instrument {instrument!r}; choose from {', '.join(sorted(INSTRUMENTS))}")
    if n_files < 1 or seconds_per_file <= 0:
        raise ValueError(f"need n_files >= 1 and seconds_per_file > 0, got {n_files}, {seconds_per_file}")
    if sample_set not in SAMPLE_SETS:
        raise ValueError(f"unknown sample set {sample_set!r}; choose from {', '.join(SAMPLE_SETS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = _settings(instrument, n_files, seconds_per_file, seed, sample_rate,
                         FLUIDR3 if sample_set == "fluidr3" else FREEPATS_CFG)
    names = [f"{instrument}_{i:03d}.wav" for i in range(n_files)]
    paths = [out_dir / name for name in names]
    manifest_path = out_dir / MANIFEST_NAME

    old = _read_manifest(manifest_path)
    if old is not None and old.get("settings") == settings and old.get("files") == names \
            and all(p.is_file() for p in paths):
        return paths
    if old is not None:  # remove what an earlier run (other settings) wrote, and only that
        manifest_path.unlink()
        for name in old.get("files", []):
            stale = out_dir / Path(str(name)).name
            if stale.is_file():
                stale.unlink()

    program, low, high = INSTRUMENTS[instrument]
    with tempfile.TemporaryDirectory(prefix="sdga-demo-midi-") as tmp:
        for i, path in enumerate(paths):
            midi_path = Path(tmp) / f"{path.stem}.mid"
            write_phrase_midi(midi_path, program, low, high, seconds_per_file, np.random.default_rng([seed, i]))
            if sample_set == "fluidr3":
                render_midi(midi_path, path, sample_rate=sample_rate, soundfont=FLUIDR3)
            else:
                timidity_render(midi_path, path, sample_rate=sample_rate)
    tmp_manifest = manifest_path.with_suffix(".tmp")
    tmp_manifest.write_text(json.dumps({"settings": settings, "files": names}, indent=2))
    tmp_manifest.replace(manifest_path)
    return paths


def _read_manifest(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sdga-demo-corpus",
                                     description="Render a small demo corpus of recorded instrument samples "
                                                 "(FluidR3_GM via fluidsynth, or freepats via timidity) to try sdga without "
                                                 "recordings.")
    parser.add_argument("out_dir", type=Path, help="folder to write the wav files to")
    parser.add_argument("--instrument", default="violin", choices=sorted(INSTRUMENTS))
    parser.add_argument("--files", type=int, default=8, help="number of phrases (default 8)")
    parser.add_argument("--seconds", type=float, default=12.0, help="length of each phrase (default 12)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample-rate", type=int, default=48000)
    parser.add_argument("--sample-set", default="fluidr3", choices=SAMPLE_SETS,
                        help="fluidr3 (fluidsynth + FluidR3_GM, default) or freepats (timidity + freepats)")
    args = parser.parse_args(argv)
    try:
        paths = make_demo_corpus(args.out_dir, instrument=args.instrument, n_files=args.files,
                                 seconds_per_file=args.seconds, seed=args.seed, sample_rate=args.sample_rate,
                                 sample_set=args.sample_set)
    except (RuntimeError, ValueError) as e:
        print(f"sdga-demo-corpus: error: {e}", file=sys.stderr)
        return 1
    total_s = sum(sf.info(str(p)).duration for p in paths)
    for p in paths:
        print(p)
    print(f"{len(paths)} {args.instrument} files, {total_s:.1f} s in {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
