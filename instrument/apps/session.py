"""A playing session of ``sdga-play``: what is open while playing, in what order it opens and closes, the main
loop (status line, stop conditions, the audio-server watchdog) and the exit summary.

:mod:`instrument.apps.play` loads the model, patch and router and builds the engine; it then hands each piece to
a :class:`Session` as it opens it (MIDI inputs, OSC server, recorder, audio stream). :meth:`Session.close` is the
one shutdown path, whatever ended the session (Ctrl-C, SIGTERM, ``--duration``, a refusal half-way through the
start-up, or the audio server dying): the audio stream first (never waiting more than a few seconds for a dead
server), then the control page (--web), MIDI, OSC and the router, the recorder last so it writes every block
the stream gave it.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import threading
import time

import numpy as np

__all__ = ["Console", "Session", "print_summary", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_SERVER_LOST"]

PROG = "sdga-play"

# Exit codes (documented in the README's fault table).
EXIT_OK = 0
EXIT_ERROR = 1              # the audio device would not open; --save-patch failed
EXIT_USAGE = 2              # refused before playing: bad arguments, model, patch, mapping or port
EXIT_SERVER_LOST = 3        # the audio server died or hung while playing; summary, --stats-json, --record kept


class Console:
    """stdout for any thread: :meth:`log` clears the status line first; :meth:`status` rewrites it in place."""

    def __init__(self, out=None):
        self.out = out
        self.width = 0

    def log(self, text: str) -> None:
        out = self.out or sys.stdout
        print("\r" + " " * self.width + "\r" + text if self.width else text, file=out, flush=True)

    def status(self, line: str) -> None:
        print("\r" + line.ljust(self.width), end="", file=self.out or sys.stdout, flush=True)
        self.width = len(line)

    def end_status(self) -> None:
        if self.width:
            print(file=self.out or sys.stdout)
            self.width = 0


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return math.nan


class Session:
    """What is open while playing, and the numbers the status line and the summary read. Pieces are handed in as
    they open; :meth:`close` closes the opened ones once, in the fixed order of the module docstring."""

    def __init__(self, bundle, engine, queue, effects, router, console: Console):
        self.bundle, self.engine, self.queue, self.effects, self.router = bundle, engine, queue, effects, router
        self.console = console
        self.midi: list = []
        self.osc = None
        self.web = None                   # the control page's server (instrument.io.web), with --web
        self.recorder = None
        self.audio = None
        self.started = math.nan
        self.stopped = math.nan
        self.lost = ""                    # why the audio server stopped the session ("" when it did not)
        self._closed = False

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self, audio) -> None:
        """Start the audio stream (PortAudioError propagates; nothing of it is then open)."""
        audio.start()
        self.audio = audio
        self.started = time.monotonic()

    def run(self, stop: threading.Event, duration: float | None, tty: bool) -> str:
        """The main loop: until ``stop`` is set, ``duration`` passed or the audio server is lost (then returns why;
        else "")."""
        deadline = self.started + duration if duration else math.inf
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            stop.wait(min(0.25, remaining))
            self.lost = self.audio.server_lost()
            if self.lost:
                break
            if tty:
                self.console.status(self.status_line())
        if tty:
            self.console.end_status()
        return self.lost

    def close(self) -> None:
        """Close what is open: the stream (bounded wait), the web page, MIDI, OSC, the router, then the recorder.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.stopped = time.monotonic()
        try:
            if self.audio is not None and not self.audio.close():
                self.lost = self.audio.lost
        finally:
            for close in [*([self.web.close] if self.web is not None else []), *(m.close for m in self.midi),
                          *([self.osc.close] if self.osc is not None else []),
                          self.router.close, *([self.recorder.close] if self.recorder is not None else [])]:
                try:
                    close()
                except Exception as exc:        # one piece failing to close must not keep the rest open
                    self.console.log(f"{PROG}: while closing: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------------------------------ numbers
    def midi_counts(self) -> tuple[int, int, int]:
        return (sum(m.received for m in self.midi), sum(m.ignored for m in self.midi),
                sum(m.malformed for m in self.midi))

    def midi_missing(self) -> list[str]:
        """The connected MIDI sources that are gone now (reconnected when they are back)."""
        return sorted(n for m in self.midi for n in m.missing)

    def status_line(self) -> str:
        loads = self.audio.recent_loads(1.0)
        load = f"{100.0 * float(np.median(loads)):4.0f}%" if loads.size else "   -"
        voices = self.engine.voices
        _, _, bad_midi = self.midi_counts()
        bad_osc = self.osc.errors if self.osc is not None else 0
        line = (f"load {load} | underflows {self.audio.stats.underflows} | voices {voices.active_voices}/"
                f"{self.engine.max_voices} | dropped {self.queue.dropped} | bad midi {bad_midi} osc {bad_osc}")
        missing = self.midi_missing()
        if missing:
            line += f" | MIDI GONE: {', '.join(missing)}"
        if voices.out_of_range_notes:
            line += f" | OUT OF RANGE x{voices.out_of_range_notes}"
        if self.engine.stats.errors:
            line += f" | ENGINE ERRORS {self.engine.stats.errors}"
        return line

    def summary(self) -> dict:
        engine, audio = self.engine, self.audio
        z = engine.state.z.detach().numpy()
        bundle = engine.bundle              # a set list: the song playing now
        received, ignored, malformed = self.midi_counts()
        end = self.stopped if math.isfinite(self.stopped) else time.monotonic()
        return {
            "seconds": end - self.started,
            "audio_lost": self.lost,
            "sample_rate": engine.sample_rate, "block_size": engine.block_size,
            **audio.summary(),
            "engine_errors": engine.stats.errors, "engine_last_error": engine.stats.last_error,
            "voice_resets": engine.stats.voice_resets, "events": engine.stats.events,
            "dropped_events": self.queue.dropped, "ignored_events": engine.voices.ignored_events,
            "out_of_range_notes": engine.voices.out_of_range_notes,
            "midi": {"ports": [n for m in self.midi for n in m.port_names], "received": received, "ignored": ignored,
                     "malformed": malformed, "last_error": next((m.last_error for m in self.midi if m.last_error), ""),
                     "disconnects": sum(m.disconnects for m in self.midi),
                     "reconnects": sum(m.reconnects for m in self.midi),
                     "released_notes": sum(m.released_notes for m in self.midi), "missing": self.midi_missing()},
            "osc": None if self.osc is None else self.osc_summary(),
            "web": None if self.web is None else {"address": [self.web.host, self.web.port],
                                                  **dataclasses.asdict(self.web.stats)},
            "hook_errors": audio.stats.hook_errors,
            "effects": {"chain": [e.type for e in self.effects.effects], "swaps": self.effects.swaps},
            "latents": {l.name: round(float(l.z_to_knob(z[l.index])), 4) for l in bundle.latents},
            "record": None if self.recorder is None else {
                "path": str(self.recorder.path), "seconds": self.recorder.seconds, "blocks": self.recorder.blocks,
                "dropped_blocks": self.recorder.dropped_blocks, "error": self.recorder.error},
            "rss_mb": _rss_mb(),
        }

    def osc_summary(self) -> dict:
        osc = self.osc
        return {"address": list(osc.address), "received": osc.received, "errors": osc.errors,
                "malformed_packets": osc.malformed_packets, "last_error": osc.last_error,
                "kernel_drops": osc.kernel_drops, "parser_warnings": osc.parser_warnings,
                "refused_senders": osc.refused_senders, "oversized_packets": osc.oversized_packets}


def print_summary(s: dict, out) -> None:
    block_ms = 1000.0 * s["block_size"] / s["sample_rate"]
    pct = lambda x: "-" if not math.isfinite(x) else f"{100.0 * x:.1f}%"   # noqa: E731
    print(f"{PROG} summary: played {s['seconds']:.1f} s, {s['callbacks']} callbacks", file=out)
    if s.get("audio_lost"):
        print(f"  AUDIO LOST: {s['audio_lost']}", file=out)
    print(f"  callback load: median {pct(s['load_median'])}, p99 {pct(s['load_p99'])}, max "
          f"{s['max_callback_ms']:.2f} ms of {block_ms:.2f} ms", file=out)
    print(f"  underflows: {s['underflows']} ({s['startup_underflows']} in the first second); late callbacks: "
          f"{s['late_callbacks']}", file=out)
    print(f"  engine errors: {s['engine_errors']}; voice resets: {s['voice_resets']}"
          + (f"; last error: {s['engine_last_error']}" if s["engine_last_error"] else ""), file=out)
    midi, osc = s["midi"], s["osc"]
    print(f"  events: {s['events']} applied, {s['dropped_events']} dropped (queue full), {s['ignored_events']} ignored "
          f"by the engine", file=out)
    print(f"  MIDI: {midi['received']} events, {midi['ignored']} ignored, {midi['malformed']} malformed"
          + (f" (last: {midi['last_error']})" if midi["last_error"] else ""), file=out)
    if midi.get("disconnects"):
        print(f"  MIDI sources gone: {midi['disconnects']} times ({midi['released_notes']} held notes released), "
              f"reconnected {midi['reconnects']} times"
              + (f"; still gone at the end: {', '.join(midi['missing'])}" if midi["missing"] else ""), file=out)
    if osc is not None:
        print(f"  OSC: {osc['received']} messages, {osc['errors']} refused ({osc['malformed_packets']} not OSC, "
              f"{osc['oversized_packets']} over the size limits, {osc['refused_senders']} from senders not allowed)"
              + (f", {osc['kernel_drops']} dropped by the kernel (socket buffer full)" if osc["kernel_drops"] else "")
              + (f" (last: {osc['last_error']})" if osc["last_error"] else ""), file=out)
    web = s.get("web")
    if web is not None:
        print(f"  web: {web['connections']} page connections, {web['received']} messages, {web['errors']} refused by "
              f"the router, {web['malformed']} malformed, {web['refused']} connections refused (origin, host, token)"
              + (f" (last: {web['last_error']})" if web["last_error"] else ""), file=out)
    if s["hook_errors"]:
        print(f"  hook errors: {s['hook_errors']} (ramps or effects failed; those blocks played dry)", file=out)
    print("  effects: " + (" > ".join(s["effects"]["chain"]) or "none"), file=out)
    if s["out_of_range_notes"]:
        print(f"  out-of-range notes: {s['out_of_range_notes']} (outside the model's pitch range; played anyway)",
              file=out)
    print("  latents: " + " ".join(f"{k}={v:.3f}" for k, v in s["latents"].items()), file=out)
    songs = s.get("set")
    if songs is not None:
        print(f"  set: {songs['switches']} switches; songs played: "
              + (", ".join(f"{i} {song['name']} {song['seconds']:.1f} s" for i, song in enumerate(songs["songs"])
                           if song["seconds"] > 0) or "none"), file=out)
    rec = s["record"]
    if rec is not None:
        print(f"  recording: {rec['path']}: {rec['seconds']:.2f} s, {rec['dropped_blocks']} dropped blocks"
              + (f", ERROR: {rec['error']}" if rec["error"] else ""), file=out)
