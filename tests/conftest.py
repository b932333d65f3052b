"""Shared fixtures. Keep them small and generic; everything writes under pytest's tmp folders."""
from __future__ import annotations

import os

# Sleeping OpenMP waiters: the suite stays fast when another process shares the 2 cores (see training/cli.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import shutil
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, os.path.dirname(__file__))
from jack_dummy import private_jack  # noqa: E402


@pytest.fixture(scope="session")
def demo_corpus_dir(tmp_path_factory) -> Path:
    """A tiny real corpus: 2 violin phrases of 4 s (FluidR3_GM rendered by fluidsynth), seed 0."""
    from evaluation.demo_corpus import FLUIDR3, make_demo_corpus

    if shutil.which("fluidsynth") is None or not FLUIDR3.is_file():
        pytest.skip("fluidsynth / fluid-soundfont-gm not installed (run scripts/setup.sh)")
    out_dir = tmp_path_factory.mktemp("demo_corpus")
    make_demo_corpus(out_dir, instrument="violin", n_files=2, seconds_per_file=4.0, seed=0)
    return out_dir


@pytest.fixture(scope="session")
def trained_model(demo_corpus_dir, tmp_path_factory) -> Path:
    """A tiny trained model file (6 steps on the demo corpus, 4 latents): what a real run exports, for tests
    that play a trained model rather than random weights. Trained once per session."""
    from training.cli import train_main

    out = tmp_path_factory.mktemp("trained_model")
    rc = train_main([str(demo_corpus_dir), "-o", str(out), "--max-steps", "6", "--max-time", "5m",
                     "--batch-size", "2", "--window", "0.5", "--val-every", "3",
                     "--cache-dir", str(tmp_path_factory.mktemp("trained_model_cache")),
                     "--augment-variants", "1", "--latents", "4", "--no-progress", "--threads", "2"])
    assert rc == 0
    return out / "model.sdga"


@pytest.fixture
def sine_wav(tmp_path) -> Callable[..., Path]:
    """Factory: ``sine_wav("sub/a.flac", f_hz=440, seconds=1, sample_rate=48000, channels=1, amplitude=0.5,
    subtype=None)`` writes a sine (same in every channel) under tmp_path and returns its path."""

    def make(name: str = "sine.wav", f_hz: float = 440.0, seconds: float = 1.0, sample_rate: int = 48000,
             channels: int = 1, amplitude: float = 0.5, subtype: str | None = None) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(int(round(seconds * sample_rate))) / sample_rate
        mono = amplitude * np.sin(2 * np.pi * f_hz * t)
        sf.write(str(path), np.repeat(mono[:, None], channels, axis=1), sample_rate, subtype=subtype)
        return path

    return make


@pytest.fixture(scope="module")
def jack_server(tmp_path_factory):
    """A private JACK server with the dummy driver (48 kHz, 128-frame periods), one per test module that asks;
    fails where jackd is installed and does not come up (tests/jack_dummy.py), skips where it is not."""
    def leave() -> None:         # leave JACK while the server is up (PortAudio asserts otherwise)
        if "sounddevice" in sys.modules:
            sys.modules["sounddevice"]._terminate()

    def come_back() -> None:     # no server now and autostart still off: PortAudio comes back without JACK
        if "sounddevice" in sys.modules:
            sys.modules["sounddevice"]._initialize()

    name = f"sdga_test_{os.getpid()}"
    with private_jack(name, tmp_path_factory.mktemp("jack") / "jackd.log", before_stop=leave, after_stop=come_back):
        yield name
