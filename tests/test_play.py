"""Contract of ``sdga-play``, run as a real subprocess on a private JACK dummy server (real-time paced): MIDI
through JACK ports, OSC from oscsend and from a Pd patch, fuzzing, recording, refusal of a corrupt model.

Each run records what it played (``--record``, 32-bit float WAV) and writes its exit summary as JSON
(``--stats-json``); the tests judge the sound and the counters from those two files. Notes are found in the
recording (:func:`notes_in`), not placed by wall-clock time, so the tests hold on a loaded machine (checked with
both cores busy).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from instrument.model.bundle import random_bundle, save_bundle
from instrument.model.modelfile import ModelFileError

sys.path.insert(0, str(Path(__file__).parent))
from jack_dummy import JackUnavailable, jack_dummy_server, jack_unavailable, private_jack  # noqa: E402

SR = 48000
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def jack(tmp_path_factory):
    """Environment of a private JACK dummy server (48 kHz, 128-frame periods); also set in os.environ so this
    process's own JACK MIDI ports (the test keyboard) find it."""
    with private_jack(f"sdga_play_{os.getpid()}", tmp_path_factory.mktemp("jack") / "jackd.log") as env:
        yield env


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return save_bundle(tmp_path_factory.mktemp("model") / "model.sdga", random_bundle(seed=0))


class Player:
    """sdga-play in a subprocess; its output lines are collected by a thread."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None):
        self.lines: list[str] = []
        self.process = subprocess.Popen([sys.executable, "-m", "instrument.apps.play", *args], cwd=ROOT, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            if self.process.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.01)
        self.kill()
        raise AssertionError(f"sdga-play never printed {text!r}; output:\n{self.output}")

    def finish(self, timeout: float = 30.0) -> int:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"sdga-play did not stop; output:\n{self.output}")
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Keyboard:
    """A JACK MIDI output port of this process (client ``client``, port ``out``)."""

    def __init__(self, client: str):
        import rtmidi

        self.port = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, client)
        self.port.open_virtual_port("out")
        self.name = f"{client}:out"

    def send(self, *data: int) -> None:
        self.port.send_message(list(data))

    def close(self) -> None:
        self.port.close_port()
        self.port.delete()


def f0_autocorrelation(x: np.ndarray, sample_rate: int, fmin: float = 50.0, fmax: float = 2000.0) -> float:
    """Fundamental of a steady periodic segment: the shortest lag whose normalised autocorrelation is within
    10 % of the best, refined by parabolic interpolation."""
    x = x - x.mean()
    n = len(x)
    spectrum = np.fft.rfft(x, 2 * n)
    r = np.fft.irfft(spectrum * np.conj(spectrum))[:n]
    r = r / r[0] / (1.0 - np.arange(n) / n)                   # unbiased, normalised
    lo, hi = int(sample_rate / fmax), int(sample_rate / fmin)
    window = r[lo:hi]
    candidates = np.flatnonzero((window[1:-1] >= window[:-2]) & (window[1:-1] >= window[2:])
                                & (window[1:-1] >= 0.9 * window.max())) + 1
    k = lo + int(candidates[0])
    a, b, c = r[k - 1], r[k], r[k + 1]
    lag = k + 0.5 * (a - c) / (a - 2 * b + c)
    return sample_rate / lag


def cents(f: float, ref: float) -> float:
    return 1200.0 * np.log2(f / ref)


def note_hz(note: float) -> float:
    return 440.0 * 2.0 ** ((note - 69.0) / 12.0)


def segment(audio: np.ndarray, start_s: float, stop_s: float) -> np.ndarray:
    return audio[int(start_s * SR):int(stop_s * SR)]


def log_spectrum(x: np.ndarray, n_fft: int = 4096) -> np.ndarray:
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::n_fft // 2] * np.hanning(n_fft)
    power = (np.abs(np.fft.rfft(frames, axis=1)) ** 2).mean(axis=0)
    return 10.0 * np.log10(power + 1e-12)


def spectral_distance_db(a: np.ndarray, b: np.ndarray) -> float:
    """RMS difference of the average log spectra (dB) over the bins within 60 dB of either's peak."""
    sa, sb = log_spectrum(a), log_spectrum(b)
    keep = (sa > sa.max() - 60.0) | (sb > sb.max() - 60.0)
    return float(np.sqrt(np.mean((sa[keep] - sb[keep]) ** 2)))


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def play_args(model: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [str(model), "--device", "JACK", "--block-size", "128", "--record", str(tmp_path / "take.wav"),
            "--stats-json", str(tmp_path / "stats.json"), *extra]


def results(tmp_path: Path, stereo: bool = False) -> tuple[np.ndarray, dict]:
    """The recording (its left channel, or both with ``stereo``) and the --stats-json summary."""
    audio, rate = sf.read(str(tmp_path / "take.wav"), dtype="float32")
    assert rate == SR and audio.ndim == 2 and audio.shape[1] == 2        # --record: the stereo effects output
    assert sf.info(str(tmp_path / "take.wav")).subtype == "FLOAT"
    return (audio if stereo else audio[:, 0]), json.loads((tmp_path / "stats.json").read_text())


def notes_in(audio: np.ndarray, frame_s: float = 0.02, threshold: float = 0.1, min_gap_s: float = 0.1,
             min_s: float = 0.3) -> list[tuple[float, float]]:
    """(start, stop) seconds of every stretch louder than ``threshold`` x the loudest frame. The tests find the
    notes they played in the recording instead of trusting wall-clock times: a non-real-time JACK skips the
    cycles a starved client misses, so recording time runs behind the wall clock on a loaded machine."""
    n = int(frame_s * SR)
    frames = audio[:len(audio) // n * n].reshape(-1, n)
    loud = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1)) > threshold * np.sqrt(
        np.max(np.mean(np.square(frames, dtype=np.float64), axis=1)))
    spans, k = [], 0
    while k < len(loud):
        if loud[k]:
            j = k
            while j < len(loud) and (loud[j] or loud[j:j + int(min_gap_s / frame_s)].any()):
                j += 1
            spans.append((k * frame_s, j * frame_s))
            k = j
        else:
            k += 1
    return [(a, b) for a, b in spans if b - a >= min_s]


def held_part(audio: np.ndarray, span: tuple[float, float]) -> np.ndarray:
    """The steady middle of a note: after the attack and decay (200 ms), before the release (the stretch ends
    ~0.3 s into the 300 ms release; loudness, and with it the timbre, changes from its start)."""
    start, stop = span
    return segment(audio, start + 0.3, stop - 0.45)


# ---------------------------------------------------------------------------------------------- tests
def test_midi_notes_play_at_their_pitch(jack, model_path, tmp_path):
    """A note from a JACK MIDI port (connected by ``--midi``) is recorded at its pitch, within 10 cents."""
    keys = Keyboard("sdga_test_keys")
    try:
        player = Player(play_args(model_path, tmp_path, "--duration", "3", "--midi", "sdga_test_keys", "--no-osc"),
                        env=jack)
        player.wait_for("sdga-play: playing")
        keys.send(0x90, 57, 100)                # A3, 220 Hz
        time.sleep(2.0)
        keys.send(0x80, 57, 0)
        code = player.finish()
    finally:
        keys.close()
    assert code == 0, player.output
    audio, stats = results(tmp_path)
    assert np.isfinite(audio).all()
    # Every callback's block was recorded (a cycle a starved client misses is skipped by JACK, not recorded: on a
    # loaded machine the file is shorter than the wall-clock duration).
    assert len(audio) == 128 * stats["callbacks"] and 1.0 * SR <= len(audio) <= 3.6 * SR, len(audio) / SR
    assert any("latency added: block 2.67 ms + control frame" in line for line in player.lines), player.output
    # the test server runs jackd --no-realtime: the player says its audio thread is not real-time, and how to fix it
    assert stats["audio_thread"] == "normal (not real-time)"
    assert any("audio thread is not real-time" in line and "jackd -R" in line for line in player.lines), player.output
    assert "sdga_test_keys:out" in stats["midi"]["ports"] and "sdga:sdga" in stats["midi"]["ports"]
    assert stats["midi"]["received"] == 2 and stats["midi"]["malformed"] == 0
    assert stats["engine_errors"] == 0 and stats["dropped_events"] == 0 and stats["record"]["dropped_blocks"] == 0
    assert "engine errors: 0" in player.output
    notes = notes_in(audio)
    assert len(notes) == 1 and notes[0][1] < len(audio) / SR - 0.2, notes     # one note, released before the end
    steady = held_part(audio, notes[0])
    assert len(steady) > 0.5 * SR and rms(steady) > 1e-3, (notes, rms(steady))
    f0 = f0_autocorrelation(steady, SR)
    assert abs(cents(f0, note_hz(57))) < 10.0, f0


PD_PATCH = """#N canvas 0 50 450 300 12;
#X obj 20 20 loadbang;
#X obj 20 50 t b b b;
#X msg 200 80 connect 127.0.0.1 {port};
#X msg 20 110 {value};
#X obj 20 140 oscformat sdga latent {latent};
#X obj 20 170 list prepend send;
#X obj 20 200 list trim;
#X obj 20 230 netsend -u -b;
#X msg 120 110 \\; pd quit;
#X connect 0 0 1 0;
#X connect 1 2 2 0;
#X connect 1 1 3 0;
#X connect 1 0 8 0;
#X connect 2 0 7 0;
#X connect 3 0 4 0;
#X connect 4 0 5 0;
#X connect 5 0 6 0;
#X connect 6 0 7 0;
"""


@pytest.mark.skipif(shutil.which("oscsend") is None or shutil.which("pd") is None, reason="oscsend / pd missing")
def test_osc_from_oscsend_and_pd_changes_latents(jack, model_path, tmp_path):
    """oscsend and a Pd patch (floats) each move a latent between two notes: the three notes differ in timbre,
    and the final knob values are the ones sent. Ctrl-C (SIGINT) ends the run cleanly."""
    player = Player(play_args(model_path, tmp_path, "--osc-port", "0", "--no-virtual-midi",
                              "--latent", "z0=0", "--latent", "z1=1"), env=jack)
    port = int(player.wait_for("OSC: listening on udp").rsplit(":", 1)[1].split()[0])
    player.wait_for("sdga-play: playing")

    def oscsend(address: str, types: str, *values) -> None:
        subprocess.run(["oscsend", "localhost", str(port), address, types, *map(str, values)], check=True, timeout=10)

    def note(seconds: float) -> None:                   # a held note, then a silent gap
        oscsend("/sdga/note_on", "ii", 57, 100)
        time.sleep(seconds)
        oscsend("/sdga/note_off", "i", 57)
        time.sleep(0.6)

    note(1.5)
    oscsend("/sdga/latent/z0", "f", 1.0)
    note(1.5)
    patch = tmp_path / "latent.pd"
    patch.write_text(PD_PATCH.format(port=port, value=0.05, latent="z1"))
    subprocess.run(["pd", "-nogui", "-noaudio", "-nomidi", "-batch", "-open", str(patch)], check=True, timeout=20,
                   capture_output=True)
    note(1.5)
    player.process.send_signal(signal.SIGINT)
    code = player.finish()
    assert code == 0, player.output
    audio, stats = results(tmp_path)
    assert np.isfinite(audio).all()
    assert stats["latents"]["z0"] == pytest.approx(1.0, abs=1e-3)
    assert stats["latents"]["z1"] == pytest.approx(0.05, abs=1e-3)
    assert stats["osc"]["received"] == 8 and stats["osc"]["errors"] == 0 and stats["engine_errors"] == 0
    notes = notes_in(audio)
    assert len(notes) == 3, notes
    start, after_z0, after_pd = (held_part(audio, span) for span in notes)
    assert min(len(start), len(after_z0), len(after_pd)) > 0.3 * SR, notes
    assert min(rms(start), rms(after_z0), rms(after_pd)) > 1e-3
    half = len(start) // 2
    within = spectral_distance_db(start[:half], start[half:])
    assert spectral_distance_db(start, after_z0) > max(0.5, 4.0 * within)
    assert spectral_distance_db(after_z0, after_pd) > max(0.5, 4.0 * within)


def _fuzz_datagrams(rng: random.Random, count: int) -> list[bytes]:
    from pythonosc.osc_message_builder import OscMessageBuilder

    def message(address: str, *args) -> bytes:
        builder = OscMessageBuilder(address)
        for arg in args:
            builder.add_arg(arg)
        return builder.build().dgram

    # Harmless valid messages to mutate (notes, bend, latents): a mutation must not turn the sound off for good.
    seeds = [message("/sdga/note_on", 60, 90), message("/sdga/bend", 0.3), message("/sdga/latent/z0", 0.5),
             message("/sdga/note_on", "x", 1.0), message("/sdga/latent/nope", 0.5), message("/sdga/z/99", 1.0),
             message("/sdga/note_on", float("nan"), float("inf")), message("/nowhere", b"\x00\x01"),
             message("/sdga/note_off", 1e38), message("/sdga/z/0", float("inf")), message("/sdga/bend", float("nan")),
             message("/sdga/param/release_ms", -1e38), message("/sdga/latent/z1", float("-inf")),
             # python-osc logs these with their raw bytes: a type tag it does not know, a bundle of junk
             b"/sdga/z/0\x00\x00\x00,Xf\x00" + bytes(4) + bytes(range(200)),
             b"#bundle\x00" + bytes(8) + (204).to_bytes(4, "big") + b"junk" + bytes(range(200))]
    datagrams = []
    for i in range(count):
        kind = i % 4
        if kind == 0:                                      # random bytes
            datagrams.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 96))))
        elif kind == 1:                                    # OSC-looking garbage: passes a first glance
            datagrams.append(b"/sdga/" + bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40))))
        elif kind == 2:                                    # a valid message with flipped bytes or cut short
            data = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.getrandbits(8)
            datagrams.append(bytes(data[:rng.randint(1, len(data))]))
        else:                                              # well-formed but wrong address or arguments
            datagrams.append(seeds[3 + i % (len(seeds) - 3)])
    return datagrams


def _fuzz_midi(rng: random.Random, count: int) -> list[list[int]]:
    messages = []
    for i in range(count):
        kind = i % 4
        if kind == 0:                                      # random 1..3 bytes (no sysex start)
            data = [rng.randrange(256) for _ in range(rng.randint(1, 3))]
            data[0] = 0xF7 if data[0] == 0xF0 else data[0]
        elif kind == 1:                                    # status + a data byte > 127
            data = [rng.choice([0x80, 0x90, 0xB0, 0xE0]) | rng.randrange(16), rng.randrange(128, 256), 64]
        elif kind == 2:                                    # truncated channel message
            data = [rng.choice([0x90, 0xB0, 0xE0]) | rng.randrange(16), 60]
        else:                                              # stray data byte / undefined status
            data = [rng.choice([0x3C, 0x7F, 0xF4, 0xF5, 0xFD])]
        messages.append(data)
    return messages


def test_fuzzing_osc_and_midi_does_not_stop_the_sound(jack, model_path, tmp_path):
    """Random UDP datagrams (with NaN, inf and 1e38 arguments) and invalid MIDI bytes (through the virtual 'sdga'
    port, connected with jack_connect when installed) are counted as malformed; the instrument keeps playing,
    finite, no voice reset, nothing logged per packet; SIGTERM ends it cleanly."""
    rng = random.Random(1234)
    keys = Keyboard("sdga_test_fuzz")
    connect = shutil.which("jack_connect") is not None
    extra = () if connect else ("--midi", "sdga_test_fuzz")
    try:
        player = Player(play_args(model_path, tmp_path, "--osc-port", "0", *extra), env=jack)
        port = int(player.wait_for("OSC: listening on udp").rsplit(":", 1)[1].split()[0])
        player.wait_for("sdga-play: playing")
        if connect:
            subprocess.run(["jack_connect", keys.name, "sdga:sdga"], check=True, timeout=10, env=jack)
            time.sleep(0.1)
        keys.send(0x90, 57, 100)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sent_midi = 0
        for datagram, data in zip(_fuzz_datagrams(rng, 400), _fuzz_midi(rng, 400)):
            udp.sendto(datagram, ("127.0.0.1", port))
            try:
                keys.send(*data)
                sent_midi += 1
            except (ValueError, TypeError):
                pass
            time.sleep(0.002)
        udp.close()
        keys.send(0xB0, 120, 0)             # all sound off, reset controllers, a silent gap, then play again
        keys.send(0xB0, 121, 0)
        keys.send(0xE0, 0, 64)
        time.sleep(0.6)
        keys.send(0x90, 57, 100)
        time.sleep(1.6)
        player.process.send_signal(signal.SIGTERM)
        code = player.finish()
    finally:
        keys.close()
    assert code == 0, player.output
    assert sent_midi > 300
    audio, stats = results(tmp_path)
    assert np.isfinite(audio).all()
    assert stats["engine_errors"] == 0 and stats["voice_resets"] == 0, stats
    assert stats["record"]["dropped_blocks"] == 0, stats
    for noise in ("Unhandled parameter type", "Could not identify", "RuntimeWarning", "overflow"):
        assert noise not in player.output, player.output[-3000:]
    assert len(player.output) < 20000 and stats["osc"]["parser_warnings"] > 10
    assert stats["osc"]["malformed_packets"] > 50 and stats["osc"]["errors"] > stats["osc"]["malformed_packets"]
    assert stats["midi"]["malformed"] > 100, stats["midi"]
    assert "malformed" in player.output and "not OSC" in player.output
    last = notes_in(audio, threshold=0.02)[-1]         # the note after the gap, held until SIGTERM
    after = segment(audio, last[0] + 0.3, len(audio) / SR - 0.05)
    assert len(after) > 0.4 * SR and rms(after) > 1e-3
    assert abs(cents(f0_autocorrelation(after, SR), note_hz(57))) < 10.0


def test_corrupt_model_is_refused_before_any_device(model_path, tmp_path):
    """Exit code 2 with the model file's own error message; the device, MIDI and OSC are never touched (an
    impossible device and port are named, and nothing else is printed)."""
    corrupt = tmp_path / "corrupt.sdga"
    data = bytearray(model_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    from instrument.model.bundle import load_bundle

    with pytest.raises(ModelFileError) as refused:
        load_bundle(corrupt, with_encoder=False)
    player = Player([str(corrupt), "--device", "no such device", "--midi", "no such port", "--osc-port", "1",
                     "--record", str(tmp_path / "take.wav")], env={**os.environ, "JACK_NO_START_SERVER": "1"})
    code = player.finish()
    assert code == 2, player.output
    assert player.lines == [f"sdga-play: {refused.value}"]
    assert not (tmp_path / "take.wav").exists()


def test_osc_port_taken_names_the_process_holding_it(model_path, tmp_path):
    """Another process holds the UDP port: exit 2 before any device, naming its pid and command and the option
    that chooses another port."""
    hold = ("# sdga_osc_squatter\nimport socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.bind(('127.0.0.1', 0))\nprint(s.getsockname()[1], flush=True)\ntime.sleep(120)\n")
    squatter = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        port = int(squatter.stdout.readline())
        player = Player([str(model_path), "--osc-port", str(port), "--device", "no such device",
                         "--no-virtual-midi"], env={**os.environ, "JACK_NO_START_SERVER": "1"})
        code = player.finish(timeout=120)
    finally:
        squatter.kill()
        squatter.wait()
        squatter.stdout.close()
    assert code == 2, player.output
    line = player.wait_for(f"OSC: cannot listen on 127.0.0.1:{port}")
    assert f"UDP port {port} is held by pid {squatter.pid} (" in line and "sdga_osc_squatter" in line, line
    assert "choose another port: --osc-port " in line, line


def test_huge_block_size_is_warned_about(model_path, tmp_path):
    """``--block-size 100000`` (2 s of latency at 48 kHz) plays, but says what it costs."""
    player = Player([str(model_path), "--block-size", "100000", "--device", "no such device", "--no-osc",
                     "--no-virtual-midi"], env={**os.environ, "JACK_NO_START_SERVER": "1"})
    code = player.finish(timeout=120)
    assert code == 2, player.output             # the device does not exist: refused after the warning
    assert "WARNING: --block-size 100000 at 48000 Hz is 2083 ms per block" in player.output


def test_copied_default_mapping_says_why_its_patches_are_missing(model_path, tmp_path):
    """A copy of the shipped mappings/default.yaml elsewhere: its relative 'patches: ../patches' is missing; the
    refusal says it is relative to the copy's folder and names the shipped folder to write instead."""
    mine = tmp_path / "mine.yaml"
    shutil.copy(ROOT / "mappings" / "default.yaml", mine)
    player = Player([str(model_path), "--mapping", str(mine), "--device", "no such device", "--no-osc",
                     "--no-virtual-midi"], env={**os.environ, "JACK_NO_START_SERVER": "1"})
    code = player.finish(timeout=120)
    assert code == 2, player.output
    assert f"relative to the mapping file's folder {tmp_path.resolve()}" in player.output, player.output
    assert f"patches: {ROOT / 'instrument' / 'patches'}" in player.output or "patches: /" in player.output


def test_without_a_mapping_the_shipped_patches_are_loaded(model_path, tmp_path):
    """No --mapping: the default routing with the repository's patches/ on program change (the folder is found
    from instrument/apps/, two levels below the repository)."""
    shipped = sorted((ROOT / "patches").glob("*.yaml"))
    assert shipped
    player = Player([str(model_path), "--device", "no such device", "--no-osc", "--no-virtual-midi"],
                    env={**os.environ, "JACK_NO_START_SERVER": "1"})
    code = player.finish(timeout=120)
    assert code == 2, player.output
    assert f"default routing): 17 bindings, {len(shipped)} patches" in player.output, player.output


def test_mapping_file_routes_midi(jack, model_path, tmp_path):
    """``--mapping`` loads instrument.controls.mapping's router: a CC bound in the YAML file moves its latent (through the
    router's smoothing ramps, which the callback merges into each block)."""
    pytest.importorskip("instrument.controls.mapping")
    mapping = tmp_path / "mine.yaml"
    mapping.write_text("version: 1\nmappings:\n  - {cc: 20, target: latent/0}\n")
    keys = Keyboard("sdga_test_map")
    try:
        player = Player(play_args(model_path, tmp_path, "--duration", "2", "--midi", "sdga_test_map", "--no-osc",
                                  "--mapping", str(mapping), "--latent", "z0=0.2"), env=jack)
        player.wait_for("sdga-play: playing")
        keys.send(0xB0, 20, 127)
        code = player.finish()
    finally:
        keys.close()
    assert code == 0, player.output
    _, stats = results(tmp_path)
    assert stats["latents"]["z0"] == pytest.approx(1.0, abs=1e-3)
    midi = stats["midi"]          # a smoothed binding returns no event at once (its ramp comes per block)
    assert midi["received"] + midi["ignored"] == 1 and midi["malformed"] == 0 and stats["engine_errors"] == 0
    assert "mine.yaml" in player.output


def test_midi_controller_going_away_releases_its_note_and_is_reconnected_by_name(jack, model_path, tmp_path):
    """The JACK MIDI client sdga-play was connected to (``--midi NAME``) closes while it holds a note: sdga-play
    says so once, naming it, releases the note (no stuck note: it ends in the recording though no note-off came)
    and plays on; a client of the same name started again is reconnected by name, and its note plays at its
    pitch. Counted in the summary and --stats-json."""
    keys = Keyboard("sdga_test_gone")
    try:
        player = Player(play_args(model_path, tmp_path, "--duration", "60", "--midi", "sdga_test_gone", "--no-osc"),
                        env=jack)
        player.wait_for("sdga-play: playing")
        keys.send(0x90, 57, 100)                    # held ...
        time.sleep(1.5)
        keys.close()                                # ... when the controller goes away
        keys = None
        player.wait_for("'sdga_test_gone:out' went away")
        time.sleep(1.0)
        keys = Keyboard("sdga_test_gone")
        player.wait_for("'sdga_test_gone:out' is back: reconnected")
        time.sleep(0.5)
        keys.send(0x90, 57, 100)
        time.sleep(1.5)
        keys.send(0x80, 57, 0)
        time.sleep(0.8)
        player.process.send_signal(signal.SIGINT)
        code = player.finish()
    finally:
        if keys is not None:
            keys.close()
        if player.process.poll() is None:
            player.kill()
    assert code == 0, player.output
    gone = [line for line in player.lines if "went away" in line]
    assert len(gone) == 1 and "released its 1 held note(s)" in gone[0], player.output
    assert sum("is back: reconnected" in line for line in player.lines) == 1, player.output
    assert "MIDI sources gone: 1 times (1 held notes released), reconnected 1 times" in player.output
    audio, stats = results(tmp_path)
    midi = stats["midi"]
    assert (midi["disconnects"], midi["reconnects"], midi["released_notes"], midi["missing"]) == (1, 1, 1, [])
    assert midi["received"] == 3 and stats["engine_errors"] == 0 and np.isfinite(audio).all()
    notes = notes_in(audio)
    assert len(notes) == 2, notes                  # the held note ended when its controller went: two notes
    assert notes[1][0] - notes[0][1] > 0.3, notes  # with silence between them
    f0 = f0_autocorrelation(held_part(audio, notes[1]), SR)
    assert abs(cents(f0, note_hz(57))) < 10.0, f0  # the reconnected controller's note, at its pitch


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP], ids=["SIGKILL", "SIGTERM", "SIGSTOP"])
def test_audio_server_dying_mid_set_stops_with_summary_and_recording(model_path, tmp_path, sig):
    """jackd killed (or frozen: SIGSTOP, no callback for 3 s) while sdga-play plays (a private server, so the
    other tests keep theirs): sdga-play notices (PortAudio's stop would wait forever), says so, exits 3 well
    before --duration with its summary and --stats-json, and the --record WAV is valid and holds every block the
    callbacks rendered."""
    name = f"sdga_play_dies_{os.getpid()}_{int(sig)}"
    try:
        server = jack_dummy_server(name, SR, 128, tmp_path / "jackd.log")
        env = server.__enter__()
    except JackUnavailable as exc:
        jack_unavailable(str(exc))
    try:
        player = Player(play_args(model_path, tmp_path, "--duration", "60", "--no-osc", "--midi-api", "jack"),
                        env=env)
        player.wait_for("sdga-play: playing", timeout=60)
        time.sleep(1.5)
        os.kill(int(env["JACKD_PID"]), sig)
        killed = time.monotonic()
        code = player.finish(timeout=30)
        took_s = time.monotonic() - killed
    finally:
        if sig == signal.SIGSTOP:
            os.kill(int(env["JACKD_PID"]), signal.SIGCONT)
        server.__exit__(None, None, None)
    assert code == 3, player.output
    assert took_s < 15.0, took_s
    assert "AUDIO LOST" in player.output and "sdga-play summary" in player.output
    audio, stats = results(tmp_path)
    assert stats["audio_lost"] and stats["callbacks"] * 128 / SR > 1.0
    assert len(audio) == stats["callbacks"] * 128 == round(stats["record"]["seconds"] * SR)
    data = (tmp_path / "take.wav").read_bytes()         # the header's sizes, which other readers trust
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8
