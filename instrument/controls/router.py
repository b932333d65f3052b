"""The router: MIDI and OSC messages in, engine events and target values out, through a mapping
(:mod:`instrument.controls.mapping`). Patch recall and MIDI learn are router commands; the pieces with a
thread of their own live beside it: ramps (:mod:`~instrument.controls.ramps`, the audio thread's), the
active mapping with its reload and file watcher (:mod:`~instrument.controls.reload`), learn's file edit
(:mod:`~instrument.controls.learn`), and the UDP feedback sender (:mod:`instrument.io.feedback`, injected as ``send``: nothing here opens a socket).

Who owns what (one writer per piece of state; the others hand it data as shown):

| thread | state it owns (writes) | how the others hand it data |
|---|---|---|
| audio callback | `Ramps` (running ramps, ramp positions, frame phase); the engine; the effects chain | ramp moves through `Ramps.inbox` (a `RampInbox`: deque append / popleft, no lock); events through the `EventQueue`; effects swaps through `EffectsChain.set_effects` |
| MIDI input | `values` for MIDI-driven targets, 14-bit CC pairs, trigger edges; firing MIDI learn | `router.midi(message)` is called on it; it reads the active `Mapping` reference once per message |
| OSC server | `values` for OSC-driven targets; patch recall (`current_patch`, `current_effects`); saving patches; arming learn | `router.osc(address, args)` is called on it; table commands run on it |
| mapping watcher | its last-seen file signature (`reload.MappingWatcher`) | none: it calls `router.reload()` |
| whoever reloads or learns (`reload.LiveMapping`, under its lock) | the active `Mapping` reference and the mapping file on disk | a new immutable `Mapping` swapped in with one assignment |
| feedback (on the moving thread) | nothing in controls; the UDP client is `io.feedback.OscFeedback`'s | `send(dest, address, args)`, injected |
| main (play app) | construction, `prepare`, `watch`, `close` | runs before the other threads start / after they stop |

MIDI and OSC both write ``values`` (a dict; each write is one assignment, atomic in CPython): a target moved
from both at once ends at whichever came last, as it did with one object. Feedback is sent on the thread that
moved the target.
"""
from __future__ import annotations

import math
import re
from collections import deque
from pathlib import Path
from typing import Callable, Iterable, Sequence

from instrument.engine.events import PARAMS, Event, LatentSet, ParamSet, TuningSet, from_mido, with_offset
from instrument.controls.addresses import (CancelLearn, Learn, OscError, RecallPatch, SavePatch, SelectSong, SetTarget,
                                           StepPatch, StepSong, decode, match_address)
from instrument.controls.learn import LEARNABLE, entry_source, learned_entry
from instrument.controls.mapping import DEFAULT_SMOOTH_MS, Binding, Mapping, parse_mapping, relative_delta
from instrument.controls.mpe import MpeInput
from instrument.controls.patches import Patch, save_sound
from instrument.controls.ramps import Ramps
from instrument.controls.reload import LiveMapping
from instrument.controls.targets import MappingError, Target, _did_you_mean

__all__ = ["MappingRouter", "load_router", "FeedbackSend"]

FeedbackSend = Callable[[tuple, str, "float | list[float]"], None]    # (host, port), address, args
_PATCH_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class MappingRouter:
    """Turns MIDI / OSC messages into engine events through a :class:`Mapping` (see the module docstring).

    For the play app: ``prepare(sample_rate, hop)`` after ``Engine.prepare``; hand :attr:`ramps` to the audio
    callback (``engine.process(ramps.block_events(queue.drain(), n), out)``: the callback never calls the
    router); ``watch()`` for hot reload; ``recall`` for patches; ``learn`` for MIDI learn; ``messages`` /
    ``on_message`` for what to print; ``close()``. ``send``: the feedback transport (e.g.
    :class:`instrument.io.feedback.OscFeedback`; None: no feedback), closed with the router.
    """

    def __init__(self, mapping: Mapping, bundle, *, effects=None, feedback: tuple[str, int] | None = None,
                 send: FeedbackSend | None = None, on_message: Callable[[str], None] | None = None,
                 on_patch: Callable[[Patch], None] | None = None, patches_override=None,
                 model_path: str | Path | None = None):
        self.bundle = bundle
        self.live = LiveMapping(mapping, bundle, patches_override=patches_override, log=self._log)
        self.ramps = Ramps()                       # handed to the audio thread; the router keeps only the inbox
        self._inbox = self.ramps.inbox
        self.values: dict[tuple, float] = {}       # the value each target was last sent towards
        self.effects = effects                     # an EffectsChain, swapped on patch recall
        self.current_effects: tuple = ()
        self.current_patch = -1
        self.current_scale: tuple = ()             # (.scl, .kbm or None) of the tuning it set, for saving
        self.model_path = Path(model_path) if model_path else None
        self.on_message = on_message
        self.on_patch = on_patch
        self.messages: deque[str] = deque(maxlen=100)
        self.send = send
        self._feedback_override = feedback
        self._learning: str | None = None
        self._hires: dict[tuple[int, int], list[int]] = {}
        self._last_x: dict[Binding, float] = {}
        # MPE ahead of the mapping; it follows the zone through every ParamSet the router sends or syncs
        # (--mpe / --param, patches, OSC, the controller's configuration message)
        self.mpe = MpeInput()

    # ------------------------------------------------------------------------------------------ state
    @property
    def mapping(self) -> Mapping:
        """The active mapping (read it once per message: reload and learn swap it whole)."""
        return self.live.current

    _mapping = mapping

    @property
    def reloads(self) -> int:
        return self.live.reloads

    @property
    def refused(self) -> int:
        return self.live.refused

    @property
    def last_error(self) -> str:
        return self.live.last_error

    @last_error.setter
    def last_error(self, text: str) -> None:
        self.live.last_error = text

    @property
    def learning(self) -> str | None:
        return self._learning

    def prepare(self, sample_rate: int, hop: int) -> None:
        """Enable smoothing and glides at the engine's rate and control hop (``engine.hop_size``)."""
        self.ramps.prepare(sample_rate, hop)

    def tick(self, n_samples: int) -> list[Event]:
        """``ramps.tick``: for tests and offline use; the audio callback holds :attr:`ramps` itself."""
        return self.ramps.tick(n_samples)

    def block_events(self, queued: Iterable[Event], n_samples: int) -> Iterable[Event]:
        """``ramps.block_events``: for tests and offline use; the audio callback holds :attr:`ramps` itself."""
        return self.ramps.block_events(queued, n_samples)

    def value(self, target: str) -> float:
        """The value a target was last sent towards (its default if never moved)."""
        t = self._mapping.targets[target]
        return self.values.get(t.key, t.default)

    def _log(self, text: str) -> None:
        self.messages.append(text)
        if self.on_message is not None:
            try:
                self.on_message(text)
            except Exception:
                pass

    # ------------------------------------------------------------------------------------------ MIDI
    def midi(self, message, offset: int = 0) -> list[Event]:
        """Events for one mido message ([] when it was consumed by nothing and passthrough is off)."""
        kind = message.type
        if self._learning is not None and kind in LEARNABLE:
            self._learn_from(message)
        channel = getattr(message, "channel", 0)
        mpe = self.mpe.message(message, offset)
        if mpe is not None:
            for event in mpe:
                if type(event) is ParamSet:
                    self._note(event)
            return mpe
        m = self._mapping
        out: list[Event] = []
        consumed = False
        if kind == "control_change":
            cc, value = message.control, message.value
            for b in m.midi.get(("cc", cc), ()):
                if b.source.channel is not None and b.source.channel != channel:
                    continue
                consumed = True
                s = b.source
                if s.relative:
                    x = b.unshape(self.values.get(b.target.key, b.target.default))
                    self._drive(b, x + relative_delta(s.relative, value) * s.step, channel, offset, out)
                elif s.lsb is not None:
                    pair = self._hires.setdefault((channel, cc), [0, 0])
                    pair[0], pair[1] = value, 0
                    self._drive(b, (value * 128) / 16383.0, channel, offset, out)
                else:
                    self._drive(b, value / 127.0, channel, offset, out)
            for b in m.midi.get(("lsb", cc), ()):
                if b.source.channel is not None and b.source.channel != channel:
                    continue
                consumed = True
                pair = self._hires.setdefault((channel, b.source.number), [0, 0])
                pair[1] = value
                self._drive(b, (pair[0] * 128 + pair[1]) / 16383.0, channel, offset, out)
        elif kind == "aftertouch":
            consumed = self._each(m.midi.get(("aftertouch", None), ()), channel, message.value / 127.0, offset, out)
        elif kind == "polytouch":
            bindings = m.midi.get(("poly_aftertouch", None), ()) + m.midi.get(("poly_aftertouch", message.note), ())
            consumed = self._each(bindings, channel, message.value / 127.0, offset, out)
        elif kind == "pitchwheel":
            consumed = self._each(m.midi.get(("bend", None), ()), channel, (message.pitch + 8192) / 16383.0,
                                  offset, out)
        elif kind == "note_on" and message.velocity > 0:
            self._each(m.midi.get(("velocity", None), ()), channel, message.velocity / 127.0, offset, out)
        elif kind == "program_change":
            bindings = m.midi.get(("program", None), ()) + m.midi.get(("program", message.program), ())
            for b in bindings:
                if b.source.channel is not None and b.source.channel != channel:
                    continue
                consumed = True
                if b.target.name == "patch/select" and b.source.number is None:
                    out += self._recall_index(message.program, offset)
                else:
                    self._drive(b, 1.0 if b.source.number is not None else message.program / 127.0, channel,
                                offset, out)
        if not consumed and m.passthrough:
            event = from_mido(message, offset)
            if event is not None:
                out.append(event)
        return out

    # ------------------------------------------------------------------------------------------ MPE
    @property
    def mpe_zone(self) -> int:
        """The MPE zone the engine plays (0 off, 1 lower, 2 upper)."""
        return self.mpe.zone

    def mpe_member(self, channel: int) -> bool:
        return self.mpe.member(channel)

    def _each(self, bindings, channel: int, x: float, offset: int, out: list) -> bool:
        used = False
        for b in bindings:
            if b.source.channel is None or b.source.channel == channel:
                used = True
                self._drive(b, x, channel, offset, out)
        return used

    def _drive(self, b: Binding, x: float, channel: int, offset: int, out: list, address: str = "") -> None:
        x = min(max(x, 0.0), 1.0)
        t = b.target
        if t.trigger:
            last = self._last_x.get(b, 0.0)
            self._last_x[b] = x
            momentary = b.source.kind in ("program", "velocity")
            if x >= 0.5 and (momentary or last < 0.5):
                out += self._fire(t, channel, offset)
            return
        if t.name == "patch/select":
            out += self._recall_index(int(round(b.shape(x))), offset)
            return
        self._set(t, b.shape(x), b.smooth_ms, channel, offset, out, address)

    def _set(self, t: Target, value: float, ms: float, channel: int, offset: int, out: list, address: str = "") -> None:
        value = t.clamp(value)
        self.values[t.key] = value
        event = self._inbox.move(t, value, ms, channel)
        if event is not None:
            self.mpe.track((event,))
            out.append(with_offset(event, offset) if offset else event)
        self._send_feedback(t, value, address)

    def _fire(self, t: Target, channel: int, offset: int) -> list[Event]:
        n = len(self._mapping.patches)
        if t.name == "patch/next":
            return self._recall_index((self.current_patch + 1) % n if n else 0, offset)
        if t.name == "patch/prev":
            return self._recall_index((self.current_patch - 1) % n if n else 0, offset)
        if t.kind == "patch":
            return self._recall_index(t.index, offset)
        event = t.event(1.0, channel, offset)
        return [event] if event is not None else []

    # ------------------------------------------------------------------------------------------ OSC
    def osc(self, address: str, args: Sequence) -> list[Event]:
        """Events for one OSC message; raises OscError (a ValueError) for a message that does not fit.
        Mapped addresses first, then the address table (:mod:`instrument.controls.addresses`): controller
        commands always, engine messages when the mapping passes them through."""
        m = self._mapping
        bindings = m.osc.get(address)
        out: list[Event] = []
        if bindings:
            for b in bindings:
                s = b.source
                if s.arg >= len(args):
                    raise OscError(f"{address}: the mapping on line {b.line} reads argument {s.arg}; the message "
                                   f"has {len(args)}")
                value = args[s.arg]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise OscError(f"{address}: argument {s.arg} must be a number, got {value!r}")
                lo, hi = s.input
                self._drive(b, (float(value) - lo) / (hi - lo), 0, 0, out, address)
            return out
        try:
            row, _ = match_address(address)
        except OscError:
            row = None
        if row is None or (row.engine and not m.passthrough):
            if row is None and m.passthrough and address.startswith("/sdga/"):
                raise OscError(f"unknown OSC address {address!r}")
            raise OscError(f"unmapped OSC address {address!r} (not in the mapping"
                           f"{'' if m.passthrough else ', and passthrough is off'})")
        row, what = decode(address, args, self.bundle.latents)
        if row.engine:
            self.sync([what])
            return [what]
        return self._command(what, address)

    def _command(self, command, address: str) -> list[Event]:
        """Carry out one controller command from the address table."""
        m = self._mapping
        if isinstance(command, SetTarget):
            return self._osc_target(command.target, command.knob)
        if isinstance(command, Learn):
            self.learn(command.target)
            return []
        if isinstance(command, CancelLearn):
            self.cancel_learn()
            return []
        if isinstance(command, RecallPatch):
            if isinstance(command.which, str):
                return self.recall(command.which)
            return self._recall_index(command.which, 0, strict=True)
        if isinstance(command, StepPatch):
            if not m.patches:
                raise OscError(f"{address}: no patches (add 'patches:' to the mapping file)")
            return self._fire(m.targets["patch/next" if command.step > 0 else "patch/prev"], 0, 0)
        if isinstance(command, SavePatch):
            self.save_patch_named(command.name)
            return []
        if isinstance(command, (SelectSong, StepSong)):
            raise OscError(f"{address}: no set list (start sdga-play with --set SET.yaml)")
        raise OscError(f"unhandled OSC command {command!r}")  # pragma: no cover (table and router disagree)

    def _osc_target(self, name: str, knob: float) -> list[Event]:
        m = self._mapping
        t = m.targets.get(name)
        if t is None:
            raise OscError(f"no target {name!r}{_did_you_mean(name, list(m.targets))}; targets: "
                           f"{', '.join(m.targets)}")
        out: list[Event] = []
        if t.trigger:
            return self._fire(t, 0, 0) if knob >= 0.5 else []
        if t.name == "patch/select":
            return self._recall_index(int(round(t.from_knob(knob))), 0)
        self._set(t, t.from_knob(knob), DEFAULT_SMOOTH_MS if t.smoothable else 0.0, 0, 0, out,
                  f"/sdga/target/{name}")
        return out

    def sync(self, events: Iterable[Event]) -> None:
        """Note latent and parameter values sent around the router (passthrough messages, start-up settings
        such as --latent / --param), so encoders, feedback and saved patches start from them."""
        for event in events:
            self._note(event)

    def describe(self) -> str:
        """One line for the app's start-up log."""
        m = self._mapping
        return (f"mapping {m.path or '(none)'}{f' ({m.name})' if m.name else ''}: {len(m.bindings)} bindings, "
                f"{len(m.patches)} patches, passthrough {'on' if m.passthrough else 'off'}"
                f"{', feedback to %s:%d' % (self._feedback_override or m.feedback) if (self._feedback_override or m.feedback) else ''}")

    def _note(self, event: Event) -> None:
        m = self._mapping
        if isinstance(event, LatentSet):
            t = m.target_for(("latent", event.index))
            info = next((l for l in self.bundle.latents if l.index == event.index), None)
            if t is not None and info is not None:
                value = event.value if event.knob else info.z_to_knob(event.value)
                self._inbox.stop(t, value)
                self.values[t.key] = t.clamp(value)
        elif isinstance(event, ParamSet):
            self.mpe.track((event,))
            t = m.target_for(("param", event.param))
            if t is not None:
                self._inbox.stop(t, event.value)
                self.values[t.key] = t.clamp(event.value)

    # ------------------------------------------------------------------------------------------ patches
    def recall(self, patch: Patch | str | int, glide_ms: float | None = None, offset: int = 0) -> list[Event]:
        """Recall a patch (object, name or index in the mapping's patch list): continuous values glide over
        ``glide_ms`` (default: the patch's, else the mapping's) through :meth:`tick`; discrete ones (voice
        mode) change now and come back as events; the effects chain crossfades. Returns the events to send."""
        m = self._mapping
        index = -1
        if isinstance(patch, bool):
            raise TypeError("patch must be a Patch, a name or an index")
        if isinstance(patch, int):
            if not 0 <= patch < len(m.patches):
                raise ValueError(f"no patch number {patch}; {len(m.patches)} patches: "
                                 f"{', '.join(p.name for p in m.patches) or 'none'}")
            index, patch = patch, m.patches[patch]
        elif isinstance(patch, str):
            names = [p.name for p in m.patches]
            if patch not in names:
                raise ValueError(f"no patch {patch!r}{_did_you_mean(patch, names)}; patches: "
                                 f"{', '.join(names) or 'none'}")
            index = names.index(patch)
            patch = m.patches[index]
        else:
            index = next((i for i, p in enumerate(m.patches) if p.path == patch.path and p.name == patch.name), -1)
        if not patch.resolved:
            patch = patch.resolve(self.bundle.latents)
        glide = float(glide_ms if glide_ms is not None else patch.glide_ms if patch.glide_ms is not None
                      else m.glide_ms)
        out: list[Event] = []
        for z, knob in patch.latents:
            t = m.target_for(("latent", z))
            if t is not None:
                self._set(t, knob, glide, 0, offset, out)
        for param, value in patch.params:
            t = m.target_for(("param", param))
            if t is None:
                continue
            if not t.smoothable and self.values.get(t.key, t.default) == t.clamp(value):
                continue                          # e.g. the same voice mode: do not release held notes
            self._set(t, value, glide, 0, offset, out)
        tuning = patch.tuning if patch.tuning is not None else m.tuning   # the patch's scale, else the mapping's
        if tuning is not None:                      # neither: the tuning stays as it is
            out.append(TuningSet(tuning, offset))
            self.current_scale = (patch.scale, patch.keyboard_map) if patch.tuning is not None else m.scale_files
        if self.effects is not None:
            try:
                self.effects.set_effects(patch.effects, fade_ms=max(glide, 20.0))
            except Exception as exc:             # pedalboard missing: play on without effects
                self._log(f"effects of patch {patch.name!r} not loaded: {exc}")
        self.current_effects = patch.effects
        self.current_patch = index
        self._log(f"patch {patch.name}" + (f" ({index})" if index >= 0 else "") + f", glide {glide:g} ms")
        if self.on_patch is not None:
            try:
                self.on_patch(patch)
            except Exception:
                pass
        return out

    def _recall_index(self, index: int, offset: int, strict: bool = False) -> list[Event]:
        n = len(self._mapping.patches)
        if not 0 <= index < n:
            if strict:
                raise OscError(f"no patch number {index}; {n} patches")
            self._log(f"no patch number {index} ({n} patches)")
            return []
        return self.recall(index, offset=offset)

    def sound(self) -> tuple[dict[int, float], list[float]]:
        """What the controls have set, for :func:`~instrument.controls.patches.save_sound`: latent knobs by z
        index and every parameter value (defaults for what was never moved)."""
        m = self._mapping
        knobs = {}
        for info in self.bundle.latents:
            t = m.target_for(("latent", info.index))
            knobs[info.index] = self.values.get(t.key, t.default) if t is not None else 0.5
        return knobs, [self.values.get(("param", i), spec.default) for i, spec in enumerate(PARAMS)]

    def save_current_patch(self, path: str | Path, name: str | None = None, description: str = "") -> Path:
        """Save the sound the router has set (latents by name, parameters, effects) as a patch file."""
        return save_sound(path, self.bundle, *self.sound(), name=name, model=self.model_path,
                          effects=self.current_effects, description=description, scale_files=self.current_scale)

    def save_patch_named(self, name: str) -> Path:
        """``/sdga/save NAME``: write NAME.yaml into the mapping's patch folder (the watcher then reloads)."""
        if not _PATCH_NAME.fullmatch(name):         # fullmatch: "$" would accept a final newline
            raise OscError(f"patch name {name!r}: use 1..64 letters, digits, '-' or '_'")
        folders = [p for p in self._mapping.patch_source if p.is_dir()]
        if not folders:
            raise OscError("no patch folder: add 'patches: <folder>' to the mapping file")
        path = self.save_current_patch(folders[0] / f"{name}.yaml", name)
        self._log(f"saved patch {path}")
        return path

    # ------------------------------------------------------------------------------------------ learn
    def learn(self, target: str) -> None:
        """Arm MIDI learn: the next CC, aftertouch or pitch bend moved is bound to ``target``."""
        m = self._mapping
        if target not in m.targets:
            raise MappingError(f"unknown target '{target}'{_did_you_mean(target, list(m.targets))}", m.path, None,
                               "target", tuple(m.targets))
        self._learning = target
        self._log(f"learn {target}: move a knob, fader, pressure or the bend wheel")

    def cancel_learn(self) -> None:
        if self._learning is not None:
            self._log(f"learn {self._learning}: cancelled")
        self._learning = None

    def _learn_from(self, message) -> None:
        target, self._learning = self._learning, None
        if target is None:
            return
        entry = learned_entry(message, target)
        try:
            mapping = self.add_entry(entry)
        except (MappingError, OSError, ValueError) as exc:
            self.last_error = str(exc)
            self._log(f"learn {target} failed: {exc}")
            return
        where = f", saved in {mapping.path}" if mapping.path else ""
        self._log(f"learned {entry_source(entry).describe()} -> {target}{where}")

    def add_entry(self, entry: dict) -> Mapping:
        """:meth:`LiveMapping.add_entry <instrument.controls.reload.LiveMapping.add_entry>`."""
        return self.live.add_entry(entry)

    def tuning_events(self, offset: int = 0) -> list[Event]:
        """The mapping's tuning (its scale), for the start of a session without a patch; none for 12-TET."""
        tuning = self._mapping.tuning
        if tuning is None:
            return []
        self.current_scale = self._mapping.scale_files
        return [TuningSet(tuning, offset)]

    def reload(self) -> bool:
        """Load the mapping file again; on any error keep the current mapping (message in ``last_error``)."""
        return self.live.reload()

    def watch(self, interval_s: float = 0.25) -> "MappingRouter":
        """Reload when the mapping file or its patches change (a watcher thread)."""
        self.live.watch(interval_s)
        return self

    def close(self) -> None:
        self.live.close()
        close = getattr(self.send, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "MappingRouter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ feedback
    def _send_feedback(self, t: Target, value: float, exclude: str = "") -> None:
        """Compose the feedback for a moved target and hand it to ``send`` (the transport)."""
        m = self._mapping
        dest = self._feedback_override or m.feedback
        if dest is None or self.send is None:
            return
        self.send(dest, f"/sdga/value/{t.name}", float(value))
        for address, bindings in m.osc.items():
            if address == exclude or not any(b.target.key == t.key for b in bindings):
                continue
            args = [0.0] * (max(b.source.arg for b in bindings) + 1)
            for b in bindings:
                lo, hi = b.source.input
                x = b.unshape(self.values.get(b.target.key, b.target.default))
                args[b.source.arg] = lo + (hi - lo) * x
            self.send(dest, address, args)


def load_router(path: str | Path | None, bundle, *, patches=None, effects=None,
                feedback: tuple[str, int] | None = None, send: FeedbackSend | None = None,
                on_message: Callable[[str], None] | None = None, on_patch: Callable[[Patch], None] | None = None,
                model_path: str | Path | None = None) -> MappingRouter:
    """The play app's entry point: a router for the mapping file at ``path`` (None: no bindings, everything
    passes through) checked against ``bundle``. Raises MappingError (a ValueError) naming file, line, key
    and the valid choices. ``patches`` overrides the file's patch list; ``effects`` is the EffectsChain that
    patch recall swaps; ``feedback`` (host, port) overrides the file's and ``send`` carries it
    (:class:`instrument.io.feedback.OscFeedback`); ``model_path`` goes into saved patches."""
    mapping = parse_mapping(path, bundle, patches=patches)
    return MappingRouter(mapping, bundle, effects=effects, feedback=feedback, send=send, on_message=on_message,
                         on_patch=on_patch, patches_override=patches, model_path=model_path)
