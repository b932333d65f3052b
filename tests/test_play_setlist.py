"""Contract of ``sdga-play --set``, run as a real subprocess on a private JACK dummy server: a JACK MIDI program
change and OSC over UDP switch songs (the timbre changes, and comes back with the first song), the crossfade in
the recorded stream is continuous and lasts crossfade_ms, and a broken set file is refused before any sound with
file, line and key."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from instrument.model.bundle import random_bundle, save_bundle

sys.path.insert(0, str(Path(__file__).parent))
from test_play import (ROOT, SR, Keyboard, Player, held_part, jack, notes_in, results,  # noqa: E402,F401
                       rms, spectral_distance_db)
from test_play_patches import oscsend  # noqa: E402

BLOCK = 128
START_S = 180.0          # every song is loaded and warmed before the OSC server opens: slow on a loaded machine


def osc_port(player: Player) -> int:
    return int(player.wait_for("OSC: listening on udp", timeout=START_S).rsplit(":", 1)[1].split()[0])


def sine_bundle(seed: int, level: float = 8.0):
    """A model that plays its fundamental only (a small steady sample-to-sample step: a click stands out)."""
    b = random_bundle(seed=seed)
    H = b.config.n_harmonics
    with torch.no_grad():
        b.decoder.out.weight[1:] = 0.0
        b.decoder.out.bias[1] = level
        b.decoder.out.bias[2:1 + H] = -8.0
        b.decoder.out.bias[1 + H:] = -40.0
    return b


@pytest.fixture(scope="module")
def set_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("set")
    (root / "models").mkdir()
    save_bundle(root / "models" / "a.sdga", random_bundle(seed=0))
    save_bundle(root / "models" / "b.sdga", random_bundle(seed=5))
    save_bundle(root / "models" / "sine.sdga", sine_bundle(0))
    save_bundle(root / "models" / "sine2.sdga", sine_bundle(3))
    (root / "timbres.yaml").write_text("songs:\n  - {name: first, model: models/a.sdga}\n"
                                       "  - {name: second, model: models/b.sdga}\n")
    (root / "sines.yaml").write_text("crossfade_ms: 20\nsongs:\n  - {model: models/sine.sdga}\n"
                                     "  - {model: models/sine2.sdga}\n")
    return root


def set_args(set_file: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["--set", str(set_file), "--device", "JACK", "--block-size", str(BLOCK), "--record",
            str(tmp_path / "take.wav"), "--stats-json", str(tmp_path / "stats.json"), *extra]


def test_program_change_and_osc_switch_songs(jack, set_dir, tmp_path):
    """A note in song 0; a JACK MIDI program change 1; a note; OSC /sdga/set/song 0; a note. The second note's
    timbre differs from the first's, the third's is the first's again."""
    keys = Keyboard("sdga_set_keys")
    try:
        player = Player(set_args(set_dir / "timbres.yaml", tmp_path, "--midi", "sdga_set_keys", "--osc-port", "0",
                                 "--no-virtual-midi"), env=jack)
        port = osc_port(player)
        player.wait_for("sdga-play: playing")

        def note() -> None:              # long notes and gaps: a starved JACK client records less than it plays
            keys.send(0x90, 57, 100)
            time.sleep(2.5)
            keys.send(0x80, 57, 0)
            time.sleep(1.2)

        note()
        keys.send(0xC0, 1)                       # program change 1: the second song
        time.sleep(0.2)
        note()
        oscsend(port, "/sdga/set/song", 0)
        time.sleep(0.2)
        note()
        time.sleep(1.0)
        player.process.terminate()
        code = player.finish()
    finally:
        keys.close()
    assert code == 0, player.output
    audio, stats = results(tmp_path)
    assert np.isfinite(audio).all()
    assert stats["engine_errors"] == 0 and stats["dropped_events"] == 0 and stats["record"]["dropped_blocks"] == 0
    s = stats["set"]
    assert s["switches"] == 2 and [song for _, song in s["switch_log"]] == [1, 0], s
    assert [song["name"] for song in s["songs"]] == ["first", "second"]
    assert all(song["seconds"] > 0.5 for song in s["songs"]) and all(song["load_s"] > 0 for song in s["songs"])
    assert "set: 2 switches; songs played: 0 first" in player.output
    assert stats["osc"]["received"] == 1 and stats["osc"]["errors"] == 0
    notes = notes_in(audio)
    # ~11 s were played: a much shorter recording means JACK skipped the cycles of a starved client (load)
    assert len(notes) == 3, (notes, f"recorded {len(audio) / SR:.1f} s, underflows {stats['underflows']}")
    first, second, third = (held_part(audio, span) for span in notes)
    assert min(len(first), len(second), len(third)) > 0.3 * SR and min(map(rms, (first, second, third))) > 1e-3
    half = len(first) // 2
    within = spectral_distance_db(first[:half], first[half:])
    assert spectral_distance_db(first, second) > max(1.0, 4.0 * within)
    assert spectral_distance_db(first, third) < spectral_distance_db(first, second) / 3.0


def test_the_crossfade_in_the_stream_is_continuous_and_lasts_crossfade_ms(jack, set_dir, tmp_path):
    """A note held in song 0 while OSC /sdga/set/next switches to song 1 (silent): from the switch's block the
    recording falls smoothly to exactly 0 in --crossfade-ms (here 60 ms, over the file's 20), without a step
    larger than the held note's own."""
    crossfade_ms = 60.0
    player = Player(set_args(set_dir / "sines.yaml", tmp_path, "--osc-port", "0", "--no-virtual-midi",
                             "--crossfade-ms", str(crossfade_ms)), env=jack)
    port = osc_port(player)
    player.wait_for("sdga-play: playing")
    oscsend(port, "/sdga/note_on", 57, 110)
    time.sleep(2.5)
    oscsend(port, "/sdga/set/next")
    time.sleep(0.8)
    oscsend(port, "/sdga/note_off", 57)
    oscsend(port, "/sdga/note_on", 64, 110)      # song 1 plays after the fade
    time.sleep(1.0)
    oscsend(port, "/sdga/note_off", 64)
    time.sleep(0.5)
    player.process.terminate()
    assert player.finish() == 0, player.output
    audio, stats = results(tmp_path)
    assert stats["record"]["dropped_blocks"] == 0 and stats["engine_errors"] == 0
    s = stats["set"]
    assert s["crossfade_ms"] == crossfade_ms and s["switches"] == 1
    switch = int(round(s["switch_log"][0][0] * SR))          # the switch's block, in recorded samples
    assert switch % BLOCK == 0
    F = int(round(crossfade_ms * SR / 1000))
    held = audio[switch - SR // 4:switch]
    assert len(held) == SR // 4 and rms(held) > 0.01
    steady_step = float(np.abs(np.diff(held)).max())
    fade = audio[switch - BLOCK:switch + F + BLOCK]
    assert float(np.abs(np.diff(fade)).max()) <= 1.1 * steady_step
    assert np.abs(audio[switch + F - 4 * BLOCK:switch + F]).max() > 0.0      # heard to the fade's end ...
    after = audio[switch + F:]
    silent = after[:int(np.argmax(np.abs(after) > 0))]
    assert len(silent) > 0.1 * SR and not silent.any()                       # ... then nothing until song 1 plays
    assert rms(audio[switch + F + len(silent):]) > 1e-3


@pytest.mark.parametrize("text, where", [
    ("songs:\n  - {model: models/a.sdga}\n  - {model: models/gone.sdga}\n", "line 3: key 'songs[1].model'"),
    ("songs:\n  - {model: models/a.sdga, pach: x.yaml}\n", "line 2: key 'songs[0].pach'"),
    ("songs:\n  - {model: models/a.sdga}\n  - {model: models/corrupt.sdga}\n", "line 3: key 'songs[1].model'"),
])
def test_a_broken_set_is_refused_before_any_sound(set_dir, tmp_path, text, where):
    """Refused with exit code 2, file, line and key, before any device opens (no audio server is running here)."""
    (set_dir / "models" / "corrupt.sdga").write_bytes(b"not a model")
    path = tmp_path / "broken.yaml"
    path.write_text(text.replace("models/", f"{set_dir}/models/"))
    run = subprocess.run([sys.executable, "-m", "instrument.apps.play", "--set", str(path), "--device", "JACK",
                          "--record", str(tmp_path / "take.wav")], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"{path}, {where}" in run.stderr, run.stderr
    assert "playing" not in run.stdout and not (tmp_path / "take.wav").exists()
