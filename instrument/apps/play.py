"""The live instrument: ``sdga-play MODEL`` plays a model file from MIDI and OSC on an audio device.

Threads: rtmidi's thread and the OSC thread hand each message to a router (:mod:`instrument.controls.router`'s
MappingRouter: the ``--mapping`` file, the ``--patch``'s mapping, or without either
:func:`instrument.controls.routing.default_router`) and push its events into the EventQueue; the audio callback
drains the queue, advances the router's ramps (the ``Ramps`` object it was handed), renders, runs the effects
chain, copies the block into the recorder's ring and measures its own load; the main thread prints the status line (~4x/s) and waits for Ctrl-C, SIGTERM or ``--duration``.
Startup order: patch and model (a bad file exits 2 before any device opens), router (the patch is recalled
at once, then --latent / --param on top), engine, MIDI, OSC, recorder, audio stream; from MIDI on each piece is
handed to a :class:`~instrument.apps.session.Session`, which owns the main loop and the one shutdown path.
Exit codes: 0 played; 1 the audio device would not open or --save-patch failed; 2 refused before playing
(arguments, model, patch, mapping, port); 3 the audio server died or hung while playing (the summary,
--stats-json and the --record file up to that moment are still written).
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from instrument.apps.session import (EXIT_ERROR, EXIT_OK, EXIT_SERVER_LOST, EXIT_USAGE, Console, Session,
                                     _rss_mb, print_summary)
from instrument.engine.events import LatentSet, NoteOn, param_event, param_spec
from instrument.io.midi import MIDI_APIS

__all__ = ["main", "build_parser"]

PROG = "sdga-play"
MIDI_API_CHOICES = tuple(MIDI_APIS)     # jack, alsa, coremidi, winmm
NO_MIDI = "no JACK server, no ALSA sequencer, no CoreMIDI or Windows MM in this python-rtmidi"
MAX_LIVE_BLOCK_MS = 50.0        # a longer block plays, with a warning: its latency is felt
RECORD_CHANNELS = 2            # --record holds what the effects put out: the stream opens 1 or 2 channels


class UsageError(Exception):
    """Refused before playing (bad arguments, model, mapping or port): printed, exit code 2."""


# ---------------------------------------------------------------------------------------------- arguments
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Play an sdga model live from MIDI and OSC.",
                                epilog="exit codes: 0 played; 1 the audio device would not open or --save-patch "
                                       "failed; 2 refused before playing; 3 the audio server died or hung while "
                                       "playing (summary, --stats-json and --record kept)")
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
    m.add_argument("--mpe", choices=("lower", "upper"), default=None,
                   help="MPE controller: each note on its own channel with its own bend, pressure (loudness) and "
                   "CC 74 (latent 0, for that note); lower zone: master channel 1, upper: 16. An MPE controller's "
                   "configuration message sets this by itself")
    m.add_argument("--midi-api", choices=("auto", *MIDI_API_CHOICES), default="auto",
                   help="MIDI system (auto: the platform's: JACK when its server runs, else ALSA on Linux; CoreMIDI "
                        "on macOS; Windows MM on Windows)")
    o = p.add_argument_group("OSC")
    o.add_argument("--osc-port", type=int, default=9000, help="UDP port (default 9000; 0 = any free port)")
    o.add_argument("--osc-host", default="127.0.0.1",
                   help="address to listen on (default loopback; 0.0.0.0 lets anyone on the network play it)")
    o.add_argument("--osc-allow", type=_osc_allow, default=None, metavar="NET[,NET...]",
                   help="only these senders (addresses or networks, e.g. 192.168.1.0/24,10.0.0.7) may play; others "
                        "are refused and counted (default: loopback when --osc-host is loopback, else everyone)")
    o.add_argument("--no-osc", action="store_true", help="no OSC server")
    w = p.add_argument_group("web control page")
    w.add_argument("--web", type=int, nargs="?", const=8080, default=None, metavar="PORT",
                   help="serve the control page on http://127.0.0.1:PORT/ (default port 8080; 0 = any free port); "
                        "give it after MODEL")
    w.add_argument("--web-host", default="127.0.0.1",
                   help="address the page listens on (default loopback; another one, e.g. 0.0.0.0 for a phone, "
                        "requires the token printed at start)")
    c = p.add_argument_group("control")
    c.add_argument("--latent", action="append", default=[], metavar="NAME=KNOB",
                   help="start a latent (name or importance rank) at a 0..1 knob value; repeatable")
    c.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="start an engine parameter at a value in its unit (or a choice name); repeatable")
    c.add_argument("--mapping", type=Path, default=None, metavar="FILE",
                   help="YAML mapping file (instrument.controls.mapping; default: the --patch's mapping, else CC 1 the "
                        "vibrato depth, CC 2 the noise, CC 3..8 and 70..77 the latents)")
    c.add_argument("--patch", type=Path, default=None, metavar="FILE",
                   help="start from this patch (latents, parameters, effects; its model when MODEL is not given)")
    c.add_argument("--set", "--setlist", dest="set", type=Path, default=None, metavar="SET.yaml",
                   help="play a set list: songs, each a model with an optional patch and mapping, all loaded before "
                        "the first sound; program change N, OSC /sdga/set/... and the page switch songs")
    c.add_argument("--crossfade-ms", type=float, default=None, metavar="MS",
                   help="how long a song switch crossfades (default: the set file's crossfade_ms, else 50)")
    c.add_argument("--learn", default=None, metavar="TARGET",
                   help="MIDI learn at start: the first control moved is bound to TARGET and written to --mapping")
    c.add_argument("--osc-feedback", default=None, metavar="HOST:PORT",
                   help="send moved targets' values over OSC to HOST:PORT (overrides the mapping's feedback)")
    r = p.add_argument_group("session")
    r.add_argument("--record", type=Path, default=None, metavar="FILE",
                   help="record what is heard: the effects' output, stereo (a mono device: both channels)")
    r.add_argument("--record-format", choices=("float", "24"), default="float",
                   help="the recording's samples: 32-bit float or 24-bit (FLAC: always 24-bit) [float]")
    r.add_argument("--save-patch", type=Path, default=None, metavar="FILE",
                   help="at exit, save the sound playing then as a patch file")
    r.add_argument("--duration", type=float, default=None, metavar="SECONDS", help="stop after this long")
    r.add_argument("--quiet", action="store_true", help="no status line")
    r.add_argument("--diagnose-callbacks", action="store_true",
                   help="record the audio thread's context switches, CPU time and run-queue wait around late "
                        "callbacks, and every garbage collection, in --stats-json (benchmarks: allocates a little "
                        "in the callback)")
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


def _initial_params(args) -> list[tuple[str, float]]:
    """--mpe (as mpe_zone), then every --param, as (name, value) in the parameter's unit."""
    items = ([f"mpe_zone={args.mpe}"] if args.mpe else []) + list(args.param)
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
    return int(text) if text.strip().lstrip("-").isdecimal() else text


# ---------------------------------------------------------------------------------------------- pieces
def _feedback(text: str | None) -> tuple[str, int] | None:
    if text is None:
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdecimal() or not 1 <= int(port) <= 65535:
        raise UsageError(f"--osc-feedback expects HOST:PORT (port 1..65535), got {text!r}")
    return host, int(port)


SHIPPED_PATCHES = Path(__file__).resolve().parents[2] / "patches"        # the repository's patches/


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
            raise UsageError(f"mapping {mapping_path}: {exc}{_relative_patches_hint(mapping_path)}") from None
    patches = SHIPPED_PATCHES if SHIPPED_PATCHES.is_dir() and any(SHIPPED_PATCHES.glob("*.yaml")) else None
    try:
        return default_router(bundle=bundle, patches=patches, **kwargs)
    except MappingError as exc:      # shipped patches that do not fit this model: play without them
        log(f"patches in {patches} not loaded: {exc}")
        return default_router(bundle=bundle, **kwargs)


def _relative_patches_hint(mapping_path: Path) -> str:
    """Why a mapping's ``patches:`` folder is missing when it is a relative path (a shipped mapping copied
    elsewhere: ``patches: ../patches``), and what to write instead; "" otherwise."""
    import yaml

    try:
        top = yaml.safe_load(mapping_path.read_text())
        entries = top.get("patches") if isinstance(top, dict) else None
    except Exception:
        return ""
    entries = [entries] if isinstance(entries, str) else entries if isinstance(entries, list) else []
    missing = [e for e in entries if isinstance(e, str) and not Path(e).expanduser().is_absolute()
               and not (mapping_path.parent / e).exists()]
    if not missing:
        return ""
    return (f"\n  ('patches: {missing[0]}' is relative to the mapping file's folder {mapping_path.parent.resolve()};"
            f" a copy of a shipped mapping kept elsewhere needs the full path, e.g. 'patches: {SHIPPED_PATCHES}')")


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
    """The rtmidi API for a --midi-api choice; for ``auto`` the first of this platform's that answers, or None."""
    from instrument.io.midi import MIDI_APIS, MidiPortError, auto_midi_apis, midi_input_names

    if choice != "auto":
        return MIDI_APIS[choice][0]
    for api in auto_midi_apis():
        try:
            midi_input_names(api)
            return api
        except MidiPortError:
            continue
    return None


def _open_midi(args, router, queue, log) -> list:
    """MidiInput objects (possibly none); explicit --midi requests that fail are UsageErrors."""
    from instrument.io.midi import MidiInput, MidiPortError, has_virtual_ports, match_midi_inputs, midi_input_names

    wanted = bool(args.midi or args.midi_all)
    if args.no_virtual_midi and not wanted:
        return []
    api = _midi_api(args.midi_api)
    if api is None:
        if wanted:
            raise UsageError(f"no MIDI system available ({NO_MIDI})")
        log(f"MIDI: not available ({NO_MIDI}); OSC only")
        return []
    virtual = not args.no_virtual_midi
    connect_all = args.midi_all
    if virtual and not has_virtual_ports(api):
        virtual = False
        connect_all = connect_all or not args.midi      # nothing else would reach the player
        log(f"MIDI ({api}): this system has no virtual ports; "
            + ("receiving from the inputs asked for" if args.midi else "receiving from every input"))
    try:
        sources: list[str] = []
        if wanted or connect_all:
            names = midi_input_names(api)
            sources = [n for n in names if not n.startswith("sdga:")] if connect_all else \
                match_midi_inputs(args.midi, names, exclude_client="sdga")
        midi = MidiInput(queue, virtual_name="sdga" if virtual else None, api=api, connect=sources,
                         client_name="sdga", router=router, separate_process=True, on_status=log)
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


# ---------------------------------------------------------------------------------------------- main
def _list_devices() -> int:
    import sounddevice as sd

    print(sd.query_devices())
    return 0


def _list_midi(choice: str) -> int:
    from instrument.io.midi import MidiPortError, midi_input_names

    api = _midi_api(choice)
    if api is None:
        print(f"no MIDI system available ({NO_MIDI})")
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
    if args.model is None and args.patch is None and args.set is None:
        parser.error("the model file is required (or a --patch that names one, or a --set)")
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _play(args, stop)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _check_args(args) -> None:
    if args.block_size < 1 or args.voices < 1 or (args.sample_rate is not None and args.sample_rate < 1000):
        raise UsageError("--block-size and --voices must be >= 1, --sample-rate >= 1000")
    if args.duration is not None and not args.duration > 0:
        raise UsageError("--duration must be > 0")
    if args.set is not None:
        given = [name for name, value in (("MODEL", args.model), ("--patch", args.patch), ("--mapping", args.mapping),
                                          ("--latent", args.latent), ("--learn", args.learn)) if value]
        if given:
            raise UsageError(f"--set names each song's model, patch and mapping: {', '.join(given)} cannot be given "
                             f"with it (put them in the set file's songs)")
    if args.crossfade_ms is not None and not (math.isfinite(args.crossfade_ms) and 0 <= args.crossfade_ms <= 10000):
        raise UsageError("--crossfade-ms must be 0..10000")
    if args.learn is not None and args.mapping is None:
        raise UsageError("--learn writes the learned binding into a mapping file: give --mapping FILE (a new "
                         "file may hold just 'version: 1')")


@dataclass
class _Instrument:
    """What the files and arguments give before anything opens: model, patch, router, the first events."""
    model_path: Path
    patch: object
    bundle: object
    effects: object
    router: object
    given: list             # --latent and --param events (after the patch's)
    songs: tuple = ()       # with --set: (bundle, router) per song (router above is then the SetRouter)
    song_stats: list = field(default_factory=list)     # with --set: per song, load and prepare time and memory


def _load_set(args, log) -> _Instrument:
    """--set: the set file checked whole, then every song's model and router (UsageError naming the set file, the
    song's line and key for any that does not load)."""
    from instrument.controls.patches import PatchError
    from instrument.controls.setlist import SetRouter, load_setlist
    from instrument.controls.targets import MappingError
    from instrument.engine.effects import EffectsChain
    from instrument.model.bundle import load_bundle
    from instrument.model.modelfile import ModelFileError

    feedback = _feedback(args.osc_feedback)
    params = _initial_params(args)
    try:
        setlist = load_setlist(args.set)
    except MappingError as exc:
        raise UsageError(f"set list {exc}") from None
    if args.crossfade_ms is not None:
        setlist = replace(setlist, crossfade_ms=float(args.crossfade_ms))
    effects = EffectsChain()
    songs, stats = [], []
    try:
        for i, song in enumerate(setlist.songs):
            where = f"{setlist.path}, line {song.line}: key 'songs[{i}]"
            started, rss = time.perf_counter(), _rss_mb()
            try:
                bundle = load_bundle(song.model, with_encoder=False)
            except (ModelFileError, OSError) as exc:
                raise UsageError(f"set list {where}.model': {exc}") from None
            if song.patch is not None:
                try:
                    song.patch.resolve(bundle.latents)
                except PatchError as exc:
                    raise UsageError(f"set list {where}.patch': {exc}") from None
            try:
                router = _load_router(bundle, log, mapping_path=song.mapping, model_path=song.model, effects=effects,
                                      feedback=feedback)
            except UsageError as exc:
                raise UsageError(f"set list {where}.mapping': {exc}") from None
            songs.append((bundle, router))
            stats.append({"name": song.name, "model": str(song.model), "load_s": time.perf_counter() - started,
                          "load_mb": _rss_mb() - rss})
    except BaseException:
        for _, router in songs:
            router.close()
        raise
    router = SetRouter(setlist, [r for _, r in songs], on_message=log, effects=effects)
    given = [param_event(name, value) for name, value in params]
    return _Instrument(setlist.songs[0].model, None, songs[0][0], effects, router, given, tuple(songs), stats)


def _load_instrument(args, log) -> _Instrument:
    """Patch, model, --latent / --param, the router (UsageError for any bad file or value)."""
    feedback = _feedback(args.osc_feedback)
    patch = _load_patch(args)
    model_path = args.model if args.model is not None else patch.model

    from instrument.model.bundle import load_bundle
    from instrument.model.modelfile import ModelFileError

    try:
        bundle = load_bundle(model_path, with_encoder=False)
    except (ModelFileError, OSError) as exc:
        raise UsageError(str(exc)) from None
    latents = _initial_latents(bundle, args.latent)
    params = _initial_params(args)
    from instrument.engine.effects import EffectsChain

    effects = EffectsChain()            # empty: a no-op; patch recall swaps effects in
    mapping_path = args.mapping if args.mapping is not None else (patch.mapping if patch is not None else None)
    router = _load_router(bundle, log, mapping_path=mapping_path, model_path=model_path, effects=effects,
                          feedback=feedback)
    if args.learn is not None:
        try:
            router.learn(args.learn)
        except ValueError as exc:
            router.close()
            raise UsageError(f"--learn: {exc}") from None
    given = [*latents, *(param_event(name, value) for name, value in params)]
    return _Instrument(model_path, patch, bundle, effects, router, given)


def _device_rate(args, bundle) -> int:
    import torch

    torch.set_num_threads(1)
    sys.setswitchinterval(0.001)      # the callback waits at most ~1 ms for the GIL held by another thread
    sample_rate = int(args.sample_rate or bundle.config.sample_rate)
    block_ms = 1000.0 * args.block_size / sample_rate
    if block_ms > MAX_LIVE_BLOCK_MS:
        print(f"{PROG}: WARNING: --block-size {args.block_size} at {sample_rate} Hz is {block_ms:.0f} ms per block: "
              f"each note sounds that much after its key (live play wants <= {MAX_LIVE_BLOCK_MS:g} ms; 64..512 "
              f"frames)", file=sys.stderr, flush=True)
    return sample_rate


def _build_set_engine(args, inst: _Instrument, log):
    """--set: every song's engine warmed up (kernels compiled) and prepared, in one SetEngine; the queue holds
    the first song's patch."""
    from instrument.engine.engine import Engine
    from instrument.engine.events import EventQueue
    from instrument.engine.setlist import SetEngine

    sample_rate = _device_rate(args, inst.bundle)
    set_router = inst.router
    engines = []
    for (bundle, router), stats in zip(inst.songs, inst.song_stats):
        started, rss = time.perf_counter(), _rss_mb()
        _warm_up(bundle, sample_rate, args.block_size, args.voices)
        engine = Engine(bundle)
        engine.prepare(sample_rate, args.block_size, args.voices)
        for event in inst.given:                              # --param: every song's engine, before its patch
            engine.set_param(event.param, event.value)
        router.prepare(sample_rate, engine.hop_size)
        router.sync(inst.given)
        engines.append(engine)
        stats.update(prepare_s=time.perf_counter() - started, prepare_mb=_rss_mb() - rss)
        log(f"{PROG}: song {len(engines) - 1} {stats['name']}: {stats['model']} ({len(bundle.latents)} latents); "
            f"loaded in {stats['load_s']:.2f} s (+{stats['load_mb']:.0f} MB), prepared in {stats['prepare_s']:.2f} s "
            f"(+{stats['prepare_mb']:.0f} MB)")
    engine = SetEngine(engines, crossfade_ms=set_router.setlist.crossfade_ms,
                       block_events=[router.ramps.block_events for _, router in inst.songs])
    engine.prepare(sample_rate, args.block_size, args.voices)
    inst.effects.prepare(sample_rate, args.block_size)
    queue = EventQueue(capacity=4096)
    log(set_router.describe())
    log(engine.describe())
    for event in set_router.start_events(0):
        queue.push(event)
    return engine, queue


def _build_engine(args, inst: _Instrument, log):
    """The prepared engine and its event queue, holding the patch's events then --latent / --param's."""
    from instrument.engine.engine import Engine
    from instrument.engine.events import EventQueue

    bundle, router = inst.bundle, inst.router
    sample_rate = _device_rate(args, bundle)
    _warm_up(bundle, sample_rate, args.block_size, args.voices)
    engine = Engine(bundle)
    engine.prepare(sample_rate, args.block_size, args.voices)
    inst.effects.prepare(sample_rate, args.block_size)
    queue = EventQueue(capacity=4096)
    router.prepare(sample_rate, engine.hop_size)
    log(f"{PROG}: {inst.model_path} ({len(bundle.latents)} latents: {', '.join(bundle.latent_names)}); "
        f"{engine.describe()}")
    log(router.describe())
    # The patch first, then --latent / --param on top; the first callback applies them in this order.
    for event in [*(_recall(router, inst.patch, bundle) if inst.patch is not None else router.tuning_events()),
                  *inst.given]:
        queue.push(event)
    router.sync(inst.given)
    return engine, queue


def _open_inputs(args, session: Session, log) -> None:
    """MIDI inputs, the OSC server and the recorder, each handed to the session as it opens."""
    session.midi = _open_midi(args, session.router, session.queue, log)
    if not args.no_osc:
        from instrument.io.netfilter import LOOPBACK
        from instrument.io.osc import OscServer

        allow = args.osc_allow if args.osc_allow else (LOOPBACK if _is_loopback(args.osc_host) else None)
        try:
            session.osc = OscServer(session.queue, session.bundle.latents, host=args.osc_host, port=args.osc_port,
                                    router=session.router, allow=allow)
        except OSError as exc:
            from instrument.io.port_owner import port_in_use_message

            raise UsageError(f"OSC: cannot listen on {args.osc_host}:{args.osc_port}: "
                             + port_in_use_message(exc, args.osc_host, args.osc_port, "--osc-port")) from None
        session.osc.start()
        host, port = session.osc.address
        log(f"OSC: listening on udp {host}:{port} (/sdga/...)")
        if args.osc_allow:
            log("OSC: only senders in " + ", ".join(map(str, args.osc_allow)) + " (others refused, counted)")
        elif not _is_loopback(args.osc_host):
            print(f"{PROG}: WARNING: OSC listens on {args.osc_host}, not loopback: ANYONE on the network can "
                  f"play this instrument and change its settings. Use --osc-host 127.0.0.1 unless you mean it.",
                  file=sys.stderr, flush=True)
    if args.record is not None:
        from instrument.io.recording import RingRecorder

        try:
            session.recorder = RingRecorder(args.record, session.engine.sample_rate, channels=RECORD_CHANNELS,
                                            sample_format=args.record_format).start()
        except Exception as exc:       # unwritable path, unknown format
            raise UsageError(f"cannot record to {args.record}: {exc}") from None


def _start_audio(args, session: Session, log) -> bool:
    """Open and start the output stream; False (message printed) when the device refuses."""
    import sounddevice as sd

    from instrument.io.audio import AudioOutput

    engine, effects, recorder = session.engine, session.effects, session.recorder
    device = _device(args.device)
    try:
        info = sd.query_devices(device, "output")
    except (ValueError, sd.PortAudioError) as exc:
        raise UsageError(f"audio device {args.device!r}: {exc}") from None
    channels = max(1, min(2, int(info["max_output_channels"])))
    effects.prepare(engine.sample_rate, args.block_size, channels)      # keeps a patch's effects waiting to start
    is_set = args.set is not None                  # a SetEngine advances each song's ramps itself
    audio = AudioOutput(engine, session.queue, device=device, channels=channels, effects=effects,
                        tap=recorder.push if recorder is not None else None,
                        block_events=None if is_set else session.router.ramps.block_events,
                        diagnose=args.diagnose_callbacks)
    gc.collect()
    gc.freeze()        # everything allocated so far (torch, the model) leaves the collector's view, so a
    #                    collection triggered in the callback scans only what is new: no 50-100 ms pauses
    try:
        session.start(audio)
    except sd.PortAudioError as exc:
        print(f"{PROG}: cannot open audio device {info['name']!r} at {engine.sample_rate} Hz, block "
              f"{args.block_size}: {exc}", file=sys.stderr)
        return False
    session.router.watch()                         # hot reload of the mapping file
    block_ms = 1000.0 * args.block_size / engine.sample_rate
    frame_ms = 1000.0 * engine.control_delay_samples / engine.sample_rate
    log(f"audio: {info['name']} ({channels} ch, {engine.sample_rate} Hz)")
    log(f"latency added: block {block_ms:.2f} ms + control frame {frame_ms:.2f} ms = {block_ms + frame_ms:.2f} ms; "
        f"PortAudio reports {1000.0 * audio.device_latency_s:.2f} ms output latency")
    waited = time.monotonic() + 1.0                # the first callback reads its thread's scheduling
    while not audio.thread_scheduling and time.monotonic() < waited:
        time.sleep(0.01)
    if audio.thread_scheduling.startswith("normal"):
        print(f"{PROG}: the audio thread is not real-time (normal scheduling): other programs can delay it and "
              f"the sound drops out under load; give the audio server real-time scheduling (JACK: jackd -R "
              f"-P 70, or an rtprio limit for your user)", file=sys.stderr)
    elif audio.thread_scheduling:
        log(f"audio thread: {audio.thread_scheduling}")
    if recorder is not None:
        log(f"recording to {args.record}")
    return True


def _open_web(args, session: Session, model_path, log):
    """The control page (instrument.io.web) when --web is given: loopback by default, a token off loopback."""
    if args.web is None:
        return None
    from instrument.io.web import WebServer, is_loopback, new_token

    audio, engine, queue = session.audio, session.engine, session.queue

    def state() -> dict:                      # the web thread reads counters only
        loads = audio.recent_loads(1.0)
        state = {"load": float(np.median(loads)) if loads.size else None, "underflows": audio.stats.underflows,
                 "voices": engine.voices.active_voices, "max_voices": engine.max_voices, "dropped": queue.dropped,
                 "level_db": engine.output_peak_db()}
        if args.set is not None:
            state["set"] = {"songs": session.router.song_names(), "current": int(engine.active)}
        return state

    token = None if is_loopback(args.web_host) else new_token()
    web = WebServer(session.router, queue, session.bundle, host=args.web_host, port=args.web, token=token,
                    state=state, model_name=Path(model_path).name)
    try:
        web.start()
    except OSError as exc:
        from instrument.io.port_owner import port_in_use_message

        raise UsageError(f"web: cannot listen on {args.web_host}:{args.web}: "
                         + port_in_use_message(exc, args.web_host, args.web, "--web", proto="tcp")) from None
    log(f"web: control page at {web.url()}")
    if token is not None:
        print(f"{PROG}: the control page listens on {args.web_host}: open it with its token, "
              f"{web.url()} (a phone: this machine's address on the same network)", file=sys.stderr, flush=True)
    return web


def _finish(args, session: Session, inst: _Instrument) -> int:
    """After the session closed: the summary, --stats-json, --save-patch; the exit code."""
    summary = session.summary()
    if session.lost:
        rec = session.recorder
        print(f"{PROG}: AUDIO LOST after {summary['seconds']:.1f} s: {session.lost}; stopped"
              + (f" (the recording {rec.path} is complete up to then: {rec.seconds:.2f} s)" if rec is not None
                 else ""), file=sys.stderr, flush=True)
    if args.set is not None:
        engine = session.engine
        summary["set"] = {"file": str(args.set), "crossfade_ms": engine.crossfade_ms, "switches": engine.switches,
                          "current": engine.active, "switch_log": engine.switch_log(),
                          "songs": [{**stats, "seconds": round(seconds, 3)}
                                    for stats, seconds in zip(inst.song_stats, engine.seconds_played())]}
    print_summary(summary, sys.stdout)
    if args.stats_json is not None:
        args.stats_json.parent.mkdir(parents=True, exist_ok=True)
        args.stats_json.write_text(json.dumps(summary, indent=1))
    code = EXIT_SERVER_LOST if session.lost else EXIT_OK
    if args.save_patch is not None:
        from instrument.controls.patches import engine_sound, save_sound

        engine = getattr(session.engine, "engine", session.engine)         # a set: the song playing at the end
        model_path = inst.router.setlist.songs[session.engine.active].model if args.set is not None else inst.model_path
        try:
            saved = save_sound(args.save_patch, engine.bundle, *engine_sound(engine), model=model_path,
                               effects=session.effects.effects, mapping=args.mapping, description=f"saved by {PROG}",
                               scale_files=session.router.current_scale)
            print(f"{PROG}: saved the sound as {saved}")
        except Exception as exc:
            print(f"{PROG}: cannot save the patch {args.save_patch}: {exc}", file=sys.stderr)
            code = code or EXIT_ERROR
    sys.stdout.flush()
    return code


def _play(args, stop: threading.Event) -> int:
    console = Console()
    log = console.log                 # any thread; clears the status line first
    _check_args(args)
    inst = _load_set(args, log) if args.set is not None else _load_instrument(args, log)
    try:
        engine, queue = (_build_set_engine if args.set is not None else _build_engine)(args, inst, log)
    except BaseException:
        inst.router.close()
        raise
    session = Session(inst.bundle, engine, queue, inst.effects, inst.router, console)
    try:
        _open_inputs(args, session, log)
        if not _start_audio(args, session, log):
            return EXIT_ERROR
        session.web = _open_web(args, session, inst.model_path, log)
        log(f"{PROG}: playing" + (f" for {args.duration:g} s" if args.duration else "") + " (Ctrl-C to stop)")
        session.run(stop, args.duration, tty=sys.stdout.isatty() and not args.quiet)
        signal.signal(signal.SIGINT, signal.default_int_handler)    # a second Ctrl-C interrupts the shutdown
    finally:
        session.close()
    return _finish(args, session, inst)


if __name__ == "__main__":
    sys.exit(main())
