"""The live instrument: ``sdga-play MODEL`` plays a model file from MIDI and OSC on an audio device.

Threads: rtmidi's thread and the OSC thread hand each message to a router (:mod:`instrument.controls.router`'s
MappingRouter: the ``--mapping`` file, the ``--patch``'s mapping, or without either
:func:`instrument.controls.routing.default_router`) and push its events into the EventQueue; the audio callback
drains the queue, advances the router's ramps (the ``Ramps`` object it was handed), renders, runs the effects chain, copies the block into the recorder's ring and measures its
own load; the main thread prints the status line (~4x/s) and waits for Ctrl-C, SIGTERM or ``--duration``.
Startup order: patch and model (a bad file exits 2 before any device opens), router (the patch is recalled
at once, then --latent / --param on top), engine, MIDI, OSC, recorder, audio stream.
"""
from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import math
import signal
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Sequence

import numpy as np

from instrument.engine.events import LatentSet, NoteOn, param_event, param_spec

__all__ = ["main", "build_parser"]

PROG = "sdga-play"


class UsageError(Exception):
    """Refused before playing (bad arguments, model, mapping or port): printed, exit code 2."""


# ---------------------------------------------------------------------------------------------- arguments
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Play an sdga model live from MIDI and OSC.")
    p.add_argument("model", type=Path, nargs="?", help="model file (.sdga); optional with a --patch that names one")
    a = p.add_argument_group("audio")
    a.add_argument("--device", default=None, help="output device: index or part of its name (see --list-devices)")
    a.add_argument("--block-size", type=int, default=128, help="frames per callback (default 128)")
    a.add_argument("--sample-rate", type=int, default=None, help="device rate (default: the model's)")
    a.add_argument("--voices", type=int, default=8, help="polyphony (default 8)")
    a.add_argument("--list-devices", action="store_true", help="list audio devices and exit")
    m = p.add_argument_group("MIDI")
    m.add_argument("--list-midi", action="store_true", help="list MIDI inputs and exit")
    m.add_argument("--midi", nargs="+", action="extend", default=[], metavar="NAME",
                   help="also receive from the MIDI inputs whose name contains NAME (repeatable)")
    m.add_argument("--midi-all", action="store_true", help="receive from every MIDI input")
    m.add_argument("--no-virtual-midi", action="store_true", help="do not create the virtual input port 'sdga'")
    m.add_argument("--midi-api", choices=("auto", "jack", "alsa"), default="auto",
                   help="MIDI system (auto: JACK when its server runs, else ALSA)")
    o = p.add_argument_group("OSC")
    o.add_argument("--osc-port", type=int, default=9000, help="UDP port (default 9000; 0 = any free port)")
    o.add_argument("--osc-host", default="127.0.0.1",
                   help="address to listen on (default loopback; 0.0.0.0 lets anyone on the network play it)")
    o.add_argument("--osc-allow", type=_osc_allow, default=None, metavar="NET[,NET...]",
                   help="only these senders (addresses or networks, e.g. 192.168.1.0/24,10.0.0.7) may play; others "
                        "are refused and counted (default: loopback when --osc-host is loopback, else everyone)")
    o.add_argument("--no-osc", action="store_true", help="no OSC server")
    c = p.add_argument_group("control")
    c.add_argument("--latent", action="append", default=[], metavar="NAME=KNOB",
                   help="start a latent (name or importance rank) at a 0..1 knob value; repeatable")
    c.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="start an engine parameter at a value in its unit (or a choice name); repeatable")
    c.add_argument("--mapping", type=Path, default=None, metavar="FILE",
                   help="YAML mapping file (instrument.controls.mapping; default: the --patch's mapping, else CC 1..8 and "
                        "70..77 to the latents)")
    c.add_argument("--patch", type=Path, default=None, metavar="FILE",
                   help="start from this patch (latents, parameters, effects; its model when MODEL is not given)")
    c.add_argument("--learn", default=None, metavar="TARGET",
                   help="MIDI learn at start: the first control moved is bound to TARGET and written to --mapping")
    c.add_argument("--osc-feedback", default=None, metavar="HOST:PORT",
                   help="send moved targets' values over OSC to HOST:PORT (overrides the mapping's feedback)")
    r = p.add_argument_group("session")
    r.add_argument("--record", type=Path, default=None, metavar="FILE", help="record what is played (WAV: float)")
    r.add_argument("--save-patch", type=Path, default=None, metavar="FILE",
                   help="at exit, save the sound playing then as a patch file")
    r.add_argument("--duration", type=float, default=None, metavar="SECONDS", help="stop after this long")
    r.add_argument("--quiet", action="store_true", help="no status line")
    r.add_argument("--diagnose-callbacks", action="store_true",
                   help="record the audio thread's context switches around late callbacks in --stats-json "
                        "(benchmarks: allocates a little in the callback)")
    r.add_argument("--stats-json", type=Path, default=None, metavar="FILE", help="write the exit summary as JSON")
    return p


def _assignments(items: Sequence[str], what: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise UsageError(f"--{what} expects NAME=VALUE, got {item!r}")
        out.append((name.strip(), value.strip()))
    return out


def _initial_latents(bundle, items: Sequence[str]) -> list[LatentSet]:
    from instrument.model.bundle import parse_latent_knobs

    try:
        return [LatentSet(info.index, knob, knob=True) for info, knob in parse_latent_knobs(bundle, items)]
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _initial_params(items: Sequence[str]) -> list[tuple[str, float]]:
    out = []
    for name, text in _assignments(items, "param"):
        try:
            spec = param_spec(name)
        except KeyError as exc:
            raise UsageError(str(exc).strip('"')) from None
        if text in spec.choices:
            value = float(spec.choices.index(text))
        else:
            try:
                value = float(text)
            except ValueError:
                raise UsageError(f"--param {name}={text}: not a number"
                                 + (f" or one of {', '.join(spec.choices)}" if spec.choices else "")) from None
        if not math.isfinite(value):
            raise UsageError(f"--param {name}={text}: not a finite number")
        out.append((name, value))
    return out


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _osc_allow(text: str):
    from instrument.io.netfilter import parse_allow

    try:
        return parse_allow(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _device(text: str | None):
    if text is None:
        return None
    return int(text) if text.strip().lstrip("-").isdigit() else text


# ---------------------------------------------------------------------------------------------- pieces
def _feedback(text: str | None) -> tuple[str, int] | None:
    if text is None:
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UsageError(f"--osc-feedback expects HOST:PORT (port 1..65535), got {text!r}")
    return host, int(port)


SHIPPED_PATCHES = Path(__file__).resolve().parents[1] / "patches"


def _load_router(bundle, log, *, mapping_path: Path | None, model_path: Path, effects,
                 feedback: tuple[str, int] | None):
    """A MappingRouter: the mapping file, or without one the default routing plus the shipped patches."""
    from instrument.controls.router import load_router
    from instrument.controls.routing import default_router
    from instrument.controls.targets import MappingError
    from instrument.io.feedback import OscFeedback

    kwargs = dict(effects=effects, feedback=feedback, send=OscFeedback(), on_message=log, model_path=model_path)
    if mapping_path is not None:
        try:
            return load_router(mapping_path, bundle, **kwargs)
        except Exception as exc:       # YAML, schema, file errors: all refused before playing
            raise UsageError(f"mapping {mapping_path}: {exc}") from None
    patches = SHIPPED_PATCHES if SHIPPED_PATCHES.is_dir() and any(SHIPPED_PATCHES.glob("*.yaml")) else None
    try:
        return default_router(bundle=bundle, patches=patches, **kwargs)
    except MappingError as exc:      # shipped patches that do not fit this model: play without them
        log(f"patches in {patches} not loaded: {exc}")
        return default_router(bundle=bundle, **kwargs)


def _load_patch(args):
    """The --patch file (None without one); its model must exist when MODEL is not given."""
    if args.patch is None:
        return None
    from instrument.controls.patches import load_patch

    try:
        patch = load_patch(args.patch, model=args.model, require_model=args.model is None)
    except Exception as exc:          # PatchError names file, line and key
        raise UsageError(str(exc)) from None
    if patch.model is None:
        raise UsageError(f"patch {args.patch} names no model file: give MODEL")
    return patch


def _recall(router, patch, bundle) -> list:
    """Events that set the patch's sound at once (the router also swaps in its effects)."""
    from instrument.controls.patches import PatchError

    try:
        patch = patch.resolve(bundle.latents)
    except PatchError as exc:
        raise UsageError(str(exc)) from None
    where = patch.path.resolve() if patch.path is not None else None
    index = next((i for i, q in enumerate(router.mapping.patches)
                  if where is not None and q.path is not None and q.path.resolve() == where), None)
    return router.recall(patch if index is None else index, glide_ms=0)


def _midi_api(choice: str) -> str | None:
    from instrument.io.midi import ALSA_API, JACK_API, MidiPortError, midi_input_names

    if choice != "auto":
        return {"jack": JACK_API, "alsa": ALSA_API}[choice]
    for api in (JACK_API, ALSA_API):
        try:
            midi_input_names(api)
            return api
        except MidiPortError:
            continue
    return None


def _open_midi(args, router, queue, log) -> list:
    """MidiInput objects (possibly none); explicit --midi requests that fail are UsageErrors."""
    from instrument.io.midi import MidiInput, MidiPortError, match_midi_inputs, midi_input_names

    wanted = bool(args.midi or args.midi_all)
    if args.no_virtual_midi and not wanted:
        return []
    api = _midi_api(args.midi_api)
    if api is None:
        if wanted:
            raise UsageError("no MIDI system available (no JACK server, no ALSA sequencer)")
        log("MIDI: not available (no JACK server, no ALSA sequencer); OSC only")
        return []
    try:
        sources: list[str] = []
        if wanted:
            names = midi_input_names(api)
            sources = [n for n in names if not n.startswith("sdga:")] if args.midi_all else \
                match_midi_inputs(args.midi, names, exclude_client="sdga")
        midi = MidiInput(queue, virtual_name=None if args.no_virtual_midi else "sdga", api=api, connect=sources,
                         client_name="sdga", router=router, separate_process=True)
    except MidiPortError as exc:
        if wanted:
            raise UsageError(str(exc)) from None
        log(f"MIDI: {exc}; OSC only")
        return []
    log(f"MIDI ({api}): {', '.join(midi.port_names) or '(no ports)'}")
    return [midi]


def _warm_up(bundle, sample_rate: int, block_size: int, voices: int) -> None:
    """Render a little on a throwaway engine so the first callbacks do not pay for lazy initialisation."""
    from instrument.engine.engine import Engine

    engine = Engine(bundle)
    engine.prepare(sample_rate, block_size, voices)
    out = np.zeros(block_size, dtype=np.float32)
    engine.process([NoteOn(60, 100)], out)
    for _ in range(max(8, 4096 // block_size)):
        engine.process((), out)


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return math.nan


class _Session:
    """What is open while playing, and the numbers the status line and the summary read."""

    def __init__(self, bundle, engine, queue, audio, midi: list, osc, recorder, started: float, effects):
        self.bundle, self.engine, self.queue, self.audio = bundle, engine, queue, audio
        self.midi, self.osc, self.recorder, self.started = midi, osc, recorder, started
        self.effects = effects

    def midi_counts(self) -> tuple[int, int, int]:
        return (sum(m.received for m in self.midi), sum(m.ignored for m in self.midi),
                sum(m.malformed for m in self.midi))

    def status_line(self) -> str:
        loads = self.audio.recent_loads(1.0)
        load = f"{100.0 * float(np.median(loads)):4.0f}%" if loads.size else "   -"
        voices = self.engine.voices
        _, _, bad_midi = self.midi_counts()
        bad_osc = self.osc.errors if self.osc is not None else 0
        line = (f"load {load} | underflows {self.audio.stats.underflows} | voices {voices.active_voices}/"
                f"{self.engine.max_voices} | dropped {self.queue.dropped} | bad midi {bad_midi} osc {bad_osc}")
        if voices.out_of_range_notes:
            line += f" | OUT OF RANGE x{voices.out_of_range_notes}"
        if self.engine.stats.errors:
            line += f" | ENGINE ERRORS {self.engine.stats.errors}"
        return line

    def summary(self) -> dict:
        engine, audio = self.engine, self.audio
        median, p99 = audio.load_percentiles(50, 99)
        z = engine.state.z.detach().numpy()
        received, ignored, malformed = self.midi_counts()
        return {
            "seconds": time.monotonic() - self.started,
            "sample_rate": engine.sample_rate, "block_size": engine.block_size,
            "callbacks": audio.stats.callbacks, "underflows": audio.stats.underflows,
            "startup_underflows": audio.stats.startup_underflows, "late_callbacks": audio.stats.late,
            "late_callback_log": audio.late_callbacks(), "underflow_times": audio.underflow_times(),
            "callback_diagnostics": audio.callback_diagnostics(),
            "late_starts": audio.stats.late_starts, "max_start_delay_ms": audio.stats.max_start_delay_ms,
            "load_median": median, "load_p99": p99, "max_callback_ms": audio.stats.max_callback_ms,
            "engine_errors": engine.stats.errors, "engine_last_error": engine.stats.last_error,
            "voice_resets": engine.stats.voice_resets, "events": engine.stats.events,
            "dropped_events": self.queue.dropped, "ignored_events": engine.voices.ignored_events,
            "out_of_range_notes": engine.voices.out_of_range_notes,
            "midi": {"ports": [n for m in self.midi for n in m.port_names], "received": received, "ignored": ignored,
                     "malformed": malformed, "last_error": next((m.last_error for m in self.midi if m.last_error), "")},
            "osc": None if self.osc is None else {
                "address": list(self.osc.address), "received": self.osc.received, "errors": self.osc.errors,
                "malformed_packets": self.osc.malformed_packets, "refused_senders": self.osc.refused_senders,
                "oversized_packets": self.osc.oversized_packets, "last_error": self.osc.last_error},
            "hook_errors": audio.stats.hook_errors,
            "effects": {"chain": [e.type for e in self.effects.effects], "swaps": self.effects.swaps},
            "latents": {l.name: round(float(l.z_to_knob(z[l.index])), 4) for l in self.bundle.latents},
            "record": None if self.recorder is None else {
                "path": str(self.recorder.path), "seconds": self.recorder.seconds, "blocks": self.recorder.blocks,
                "dropped_blocks": self.recorder.dropped_blocks, "error": self.recorder.error},
            "rss_mb": _rss_mb(),
        }


def _print_summary(s: dict, out) -> None:
    block_ms = 1000.0 * s["block_size"] / s["sample_rate"]
    pct = lambda x: "-" if not math.isfinite(x) else f"{100.0 * x:.1f}%"   # noqa: E731
    print(f"{PROG} summary: played {s['seconds']:.1f} s, {s['callbacks']} callbacks", file=out)
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
    if osc is not None:
        print(f"  OSC: {osc['received']} messages, {osc['errors']} refused ({osc['malformed_packets']} not OSC, "
              f"{osc['oversized_packets']} over the size limits, {osc['refused_senders']} from senders not allowed)"
              + (f" (last: {osc['last_error']})" if osc["last_error"] else ""), file=out)
    if s["hook_errors"]:
        print(f"  hook errors: {s['hook_errors']} (ramps or effects failed; those blocks played dry)", file=out)
    print("  effects: " + (" > ".join(s["effects"]["chain"]) or "none"), file=out)
    if s["out_of_range_notes"]:
        print(f"  out-of-range notes: {s['out_of_range_notes']} (outside the model's pitch range; played anyway)",
              file=out)
    print("  latents: " + " ".join(f"{k}={v:.3f}" for k, v in s["latents"].items()), file=out)
    rec = s["record"]
    if rec is not None:
        print(f"  recording: {rec['path']}: {rec['seconds']:.2f} s, {rec['dropped_blocks']} dropped blocks"
              + (f", ERROR: {rec['error']}" if rec["error"] else ""), file=out)


# ---------------------------------------------------------------------------------------------- main
def _list_devices() -> int:
    import sounddevice as sd

    print(sd.query_devices())
    return 0


def _list_midi(choice: str) -> int:
    from instrument.io.midi import MidiPortError, midi_input_names

    api = _midi_api(choice)
    if api is None:
        print("no MIDI system available (no JACK server, no ALSA sequencer)")
        return 1
    try:
        names = midi_input_names(api)
    except MidiPortError as exc:
        print(exc)
        return 1
    print(f"MIDI inputs ({api}):")
    for name in names:
        print(f"  {name}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_devices:
        return _list_devices()
    if args.list_midi:
        return _list_midi(args.midi_api)
    if args.model is None and args.patch is None:
        parser.error("the model file is required (or a --patch that names one)")
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _play(args, stop)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _play(args, stop: threading.Event) -> int:
    status_width = [0]

    def log(text: str) -> None:               # any thread; clears the status line first
        print("\r" + " " * status_width[0] + "\r" + text if status_width[0] else text, flush=True)

    if args.block_size < 1 or args.voices < 1 or (args.sample_rate is not None and args.sample_rate < 1000):
        raise UsageError("--block-size and --voices must be >= 1, --sample-rate >= 1000")
    if args.duration is not None and not args.duration > 0:
        raise UsageError("--duration must be > 0")
    if args.learn is not None and args.mapping is None:
        raise UsageError("--learn writes the learned binding into a mapping file: give --mapping FILE (a new "
                         "file may hold just 'version: 1')")
    feedback = _feedback(args.osc_feedback)
    patch = _load_patch(args)
    model_path = args.model if args.model is not None else patch.model

    import torch                     # after the checks above: a refusal is quick

    from instrument.model.bundle import load_bundle
    from instrument.engine.engine import Engine
    from instrument.engine.events import EventQueue
    from instrument.model.modelfile import ModelFileError

    try:
        bundle = load_bundle(model_path, with_encoder=False)
    except (ModelFileError, OSError) as exc:
        raise UsageError(str(exc)) from None
    latents = _initial_latents(bundle, args.latent)
    params = _initial_params(args.param)
    from instrument.engine.effects import EffectsChain

    effects = EffectsChain()            # empty: a no-op; patch recall swaps effects in
    mapping_path = args.mapping if args.mapping is not None else (patch.mapping if patch is not None else None)
    router = _load_router(bundle, log, mapping_path=mapping_path, model_path=model_path, effects=effects,
                          feedback=feedback)
    if args.learn is not None:
        try:
            router.learn(args.learn)
        except ValueError as exc:
            raise UsageError(f"--learn: {exc}") from None

    torch.set_num_threads(1)
    sys.setswitchinterval(0.001)      # the callback waits at most ~1 ms for the GIL held by another thread
    sample_rate = int(args.sample_rate or bundle.config.sample_rate)
    _warm_up(bundle, sample_rate, args.block_size, args.voices)
    engine = Engine(bundle)
    engine.prepare(sample_rate, args.block_size, args.voices)
    effects.prepare(sample_rate, args.block_size)
    queue = EventQueue(capacity=4096)
    router.prepare(sample_rate, engine.hop_size)
    log(f"{PROG}: {model_path} ({len(bundle.latents)} latents: {', '.join(bundle.latent_names)}); "
        f"{engine.describe()}")
    log(router.describe())
    # The patch first, then --latent / --param on top; the first callback applies them in this order.
    given = [*latents, *(param_event(name, value) for name, value in params)]
    for event in [*(_recall(router, patch, bundle) if patch is not None else []), *given]:
        queue.push(event)
    router.sync(given)

    with ExitStack() as stack:
        stack.callback(router.close)
        midi = _open_midi(args, router, queue, log)
        for m in midi:
            stack.callback(m.close)
        osc = None
        if not args.no_osc:
            from instrument.io.osc import OscServer

            try:
                from instrument.io.netfilter import LOOPBACK

                allow = args.osc_allow if args.osc_allow else (LOOPBACK if _is_loopback(args.osc_host) else None)
                osc = OscServer(queue, bundle.latents, host=args.osc_host, port=args.osc_port, router=router,
                                allow=allow)
            except OSError as exc:
                raise UsageError(f"OSC: cannot listen on {args.osc_host}:{args.osc_port}: {exc}") from None
            stack.callback(osc.close)
            osc.start()
            host, port = osc.address
            log(f"OSC: listening on udp {host}:{port} (/sdga/...)")
            if args.osc_allow:
                log("OSC: only senders in " + ", ".join(map(str, args.osc_allow)) + " (others refused, counted)")
            elif not _is_loopback(args.osc_host):
                print(f"{PROG}: WARNING: OSC listens on {args.osc_host}, not loopback: ANYONE on the network can "
                      f"play this instrument and change its settings. Use --osc-host 127.0.0.1 unless you mean it.",
                      file=sys.stderr, flush=True)
        recorder = None
        if args.record is not None:
            from instrument.io.recording import RingRecorder

            try:
                recorder = RingRecorder(args.record, sample_rate, channels=1).start()
            except Exception as exc:       # unwritable path, unknown format
                raise UsageError(f"cannot record to {args.record}: {exc}") from None
            stack.callback(recorder.close)   # runs after the stream closed (ExitStack unwinds in reverse)

        import sounddevice as sd

        from instrument.io.audio import AudioOutput

        device = _device(args.device)
        try:
            info = sd.query_devices(device, "output")
        except (ValueError, sd.PortAudioError) as exc:
            raise UsageError(f"audio device {args.device!r}: {exc}") from None
        channels = max(1, min(2, int(info["max_output_channels"])))
        effects.prepare(sample_rate, args.block_size, channels)      # keeps a patch's effects waiting to start
        audio = AudioOutput(engine, queue, device=device, channels=channels, effects=effects,
                            tap=recorder.push if recorder is not None else None, block_events=router.ramps.block_events,
                            diagnose=args.diagnose_callbacks)
        gc.collect()
        gc.freeze()        # everything allocated so far (torch, the model) leaves the collector's view, so a
        #                    collection triggered in the callback scans only what is new: no 50-100 ms pauses
        try:
            audio.start()
        except sd.PortAudioError as exc:
            print(f"{PROG}: cannot open audio device {info['name']!r} at {sample_rate} Hz, block "
                  f"{args.block_size}: {exc}", file=sys.stderr)
            return 1
        stack.callback(audio.close)
        router.watch()                         # hot reload of the mapping file
        started = time.monotonic()
        session = _Session(bundle, engine, queue, audio, midi, osc, recorder, started, effects)
        block_ms = 1000.0 * args.block_size / sample_rate
        frame_ms = 1000.0 * engine.control_delay_samples / sample_rate
        log(f"audio: {info['name']} ({channels} ch, {sample_rate} Hz)")
        log(f"latency added: block {block_ms:.2f} ms + control frame {frame_ms:.2f} ms = {block_ms + frame_ms:.2f} ms; "
            f"PortAudio reports {1000.0 * audio.device_latency_s:.2f} ms output latency")
        if recorder is not None:
            log(f"recording to {args.record}")
        log(f"{PROG}: playing" + (f" for {args.duration:g} s" if args.duration else "") + " (Ctrl-C to stop)")
        tty = sys.stdout.isatty() and not args.quiet
        deadline = started + args.duration if args.duration else math.inf
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            stop.wait(min(0.25, remaining))
            if tty:
                line = session.status_line()
                print("\r" + line.ljust(status_width[0]), end="", flush=True)
                status_width[0] = len(line)
        signal.signal(signal.SIGINT, signal.default_int_handler)    # a second Ctrl-C interrupts the shutdown
        if tty:
            print()
            status_width[0] = 0
        audio.close()          # stop the stream first, then ports and the recording (the stack)
    summary = session.summary()
    _print_summary(summary, sys.stdout)
    if args.stats_json is not None:
        args.stats_json.parent.mkdir(parents=True, exist_ok=True)
        args.stats_json.write_text(json.dumps(summary, indent=1))
    code = 0
    if args.save_patch is not None:
        from instrument.controls.patches import engine_sound, save_sound

        try:
            saved = save_sound(args.save_patch, bundle, *engine_sound(engine), model=model_path,
                               effects=effects.effects, mapping=args.mapping, description=f"saved by {PROG}")
            print(f"{PROG}: saved the sound as {saved}")
        except Exception as exc:
            print(f"{PROG}: cannot save the patch {args.save_patch}: {exc}", file=sys.stderr)
            code = 1
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
