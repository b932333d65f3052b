"""A set list: the songs of the night, each a model with an optional patch and mapping, and the router that
switches between them.

The file (``sdga-play --set SET.yaml``; paths relative to it)::

    version: 1
    crossfade_ms: 50          # optional
    next_cc: 65               # optional: a footswitch CC that goes to the next song (>= 64 pressed)
    songs:
      - {name: opening, model: cello/model.sdga, patch: sounds/dark.yaml}
      - {name: ballad, model: voice/model.sdga, mapping: controls/faders.yaml}

:func:`load_setlist` checks the whole file before anything loads (every model file exists, every patch and its
scale read); a bad entry raises :class:`SetListError` naming the file, the line and the key. The play app then
loads each song's model, router and engine (:mod:`instrument.apps.play`).

:class:`SetRouter` is the :class:`~instrument.controls.routing.Router` the MIDI, OSC and web threads call: it
answers the set's own controls (program change N selects song N, the footswitch CCs, ``/sdga/set/...``) and hands
everything else to the active song's :class:`~instrument.controls.router.MappingRouter`. A switch returns a
:class:`~instrument.engine.events.SongSelect` event followed by the new song's patch recall, so in the queue every
event after the switch is meant for the new song's engine (:class:`~instrument.engine.setlist.SetEngine`).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from instrument.engine.events import Event, SongSelect
from instrument.controls.addresses import OscError, SelectSong, StepSong, decode
from instrument.controls.patches import Patch, PatchError, load_patch
from instrument.controls.targets import KeySpec, MappingError, YamlFile, _did_you_mean

__all__ = ["SetListError", "Song", "SetList", "SET_KEYS", "SONG_KEYS", "load_setlist", "SetRouter",
           "SET_VERSION", "MAX_SONGS"]

SET_VERSION = 1
MAX_SONGS = 128                # program change 0..127 selects a song

SET_KEYS: tuple[KeySpec, ...] = (
    KeySpec("version", "1", "file format version (optional; only 1 exists)", "version: 1"),
    KeySpec("songs", "list of songs", "the songs in order (program change N and `/sdga/set/song N` select the "
            "N-th, 0 = the first); each a mapping with the keys below", "songs: [{model: cello.sdga}]"),
    KeySpec("crossfade_ms", "number 0..10000", "how long a switch crossfades (default 50; `--crossfade-ms` "
            "overrides)", "crossfade_ms: 200"),
    KeySpec("program_channel", "int 0..15", "only program changes on this MIDI channel switch songs (default: "
            "any channel)", "program_channel: 15"),
    KeySpec("next_cc", "int 0..127", "a footswitch CC that goes to the next song when pressed (value >= 64)",
            "next_cc: 65"),
    KeySpec("prev_cc", "int 0..127", "a footswitch CC that goes to the previous song", "prev_cc: 66"),
)
SONG_KEYS: tuple[KeySpec, ...] = (
    KeySpec("name", "text", "the song's name (default: the patch's name, else the model file's name)",
            "name: ballad"),
    KeySpec("model", "path", "model file, relative to the set file (default: the patch's model)",
            "model: voice/model.sdga"),
    KeySpec("patch", "path", "a patch recalled each time the song starts (its effects too), relative to the set "
            "file", "patch: sounds/dark.yaml"),
    KeySpec("mapping", "path", "the song's mapping file (default: the patch's, else the default routing)",
            "mapping: controls/faders.yaml"),
)
_SET_NAMES = tuple(k.name for k in SET_KEYS)
_SONG_NAMES = tuple(k.name for k in SONG_KEYS)


class SetListError(MappingError):
    """A set list that does not load (file, line, key in the message)."""


@dataclass(frozen=True)
class Song:
    name: str
    model: Path
    patch: Patch | None = None
    mapping: Path | None = None
    line: int = 0                   # the song's line in the set file (for later errors: a model that fails to load)


@dataclass(frozen=True)
class SetList:
    path: Path
    songs: tuple[Song, ...]
    crossfade_ms: float = 50.0
    program_channel: int | None = None
    next_cc: int | None = None
    prev_cc: int | None = None

    def index(self, which: str | int) -> int:
        """A song's number from its number or name (ValueError naming the songs when there is none)."""
        names = [s.name for s in self.songs]
        if isinstance(which, str) and which in names:
            return names.index(which)
        if isinstance(which, int) and not isinstance(which, bool) and 0 <= which < len(self.songs):
            return which
        raise ValueError(f"no song {which!r}{_did_you_mean(str(which), names) if isinstance(which, str) else ''}; "
                         f"{len(names)} songs: " + ", ".join(f"{i} {n}" for i, n in enumerate(names)))


def _path(base: Path, text: str) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else base.parent / p


def _existing(doc: YamlFile, node, key: str, path: Path, what: str) -> Path:
    try:
        found = path.is_file()
    except OSError as exc:
        raise doc.error(node, key, f"{what} {path}: {exc.strerror or exc}") from None
    if not found:
        raise doc.error(node, key, f"{what} {path} does not exist")
    return path


def load_setlist(path: str | Path, text: str | None = None) -> SetList:
    """Read and check a set list file (see the module docstring). Raises :class:`SetListError` (file, line,
    key), or a :class:`~instrument.controls.patches.PatchError` for a patch file that does not load (its own
    file and line, with the set file's line and key in front)."""
    doc = YamlFile(path, text, error=SetListError)
    top = doc.mapping(doc.root, "", _SET_NAMES, required=("songs",))
    where = doc.path
    kwargs: dict = {}
    if "version" in top:
        doc.number(top["version"][1], "version", SET_VERSION, SET_VERSION, integer=True)
    if "crossfade_ms" in top:
        kwargs["crossfade_ms"] = doc.number(top["crossfade_ms"][1], "crossfade_ms", 0.0, 10000.0)
    if "program_channel" in top:
        kwargs["program_channel"] = doc.number(top["program_channel"][1], "program_channel", 0, 15, integer=True)
    for key in ("next_cc", "prev_cc"):
        if key in top:
            kwargs[key] = doc.number(top[key][1], key, 0, 127, integer=True)
    if kwargs.get("next_cc") is not None and kwargs.get("next_cc") == kwargs.get("prev_cc"):
        raise doc.error(top["prev_cc"][1], "prev_cc", f"the same CC as next_cc ({kwargs['next_cc']})")
    nodes = doc.sequence(top["songs"][1], "songs")
    if not nodes:
        raise doc.error(top["songs"][1], "songs", "the set list has no songs")
    if len(nodes) > MAX_SONGS:
        raise doc.error(top["songs"][1], "songs", f"{len(nodes)} songs: at most {MAX_SONGS} (program change 0..127)")
    songs: list[Song] = []
    names: dict[str, int] = {}
    for i, node in enumerate(nodes):
        key = f"songs[{i}]"
        entry = doc.mapping(node, key, _SONG_NAMES)
        line = node.start_mark.line + 1
        patch = None
        if "patch" in entry:
            pnode = entry["patch"][1]
            ppath = _existing(doc, pnode, f"{key}.patch", _path(where, doc.string(pnode, f"{key}.patch")), "patch file")
            try:
                patch = load_patch(ppath, require_model="model" not in entry)
            except PatchError as exc:
                raise SetListError(f"patch {exc}", where, pnode.start_mark.line + 1, f"{key}.patch") from None
        if "model" in entry:
            mnode = entry["model"][1]
            model = _existing(doc, mnode, f"{key}.model", _path(where, doc.string(mnode, f"{key}.model")),
                              "model file")
        elif patch is not None and patch.model is not None:
            model = patch.model
        else:
            raise doc.error(node, f"{key}.model", "missing (a song needs a model, or a patch that names one)",
                            _SONG_NAMES)
        mapping = None
        if "mapping" in entry:
            anode = entry["mapping"][1]
            mapping = _existing(doc, anode, f"{key}.mapping", _path(where, doc.string(anode, f"{key}.mapping")),
                                "mapping file")
        elif patch is not None and patch.mapping is not None:
            mapping = patch.mapping
        if "name" in entry:
            name = doc.string(entry["name"][1], f"{key}.name")
        else:
            name = patch.name if patch is not None else model.stem if model.stem != "model" else model.parent.name
        if name in names:
            raise doc.error(entry["name"][1] if "name" in entry else node, f"{key}.name",
                            f"two songs named {name!r} (the first is songs[{names[name]}])")
        names[name] = i
        songs.append(Song(name, model, patch, mapping, line))
    return SetList(where, tuple(songs), **kwargs)


class SetRouter:
    """The set's :class:`~instrument.controls.routing.Router`: song switches here, the rest to the active song's
    router (``routers[i]`` for ``setlist.songs[i]``, each a MappingRouter for its song's model).

    Threads: MIDI, OSC and the page call :meth:`midi` / :meth:`osc`; a switch is serialised by a lock (it recalls
    the new song's patch, which swaps the shared effects chain); :attr:`active` is the controller side's song
    (the engine's follows when it reaches the SongSelect event)."""

    def __init__(self, setlist: SetList, routers: Sequence, *, on_message: Callable[[str], None] | None = None,
                 effects=None):
        if len(routers) != len(setlist.songs):
            raise ValueError("one router per song")
        self.setlist = setlist
        self.routers = tuple(routers)
        self.effects = effects
        self.on_message = on_message
        self.active = 0
        self.switches = 0
        self._lock = threading.Lock()
        self._pressed: dict[int, bool] = {}

    # ------------------------------------------------------------------------------------------ the active song
    @property
    def router(self):
        return self.routers[self.active]

    @property
    def mapping(self):
        return self.router.mapping

    @property
    def values(self):
        return self.router.values

    @property
    def current_patch(self):
        return self.router.current_patch

    @property
    def learning(self):
        return self.router.learning

    @property
    def messages(self):
        return self.router.messages

    @property
    def current_scale(self):
        return self.router.current_scale

    @property
    def ramps(self):
        return self.router.ramps

    def song_names(self) -> list[str]:
        return [s.name for s in self.setlist.songs]

    def _log(self, text: str) -> None:
        self.router.messages.append(text)
        if self.on_message is not None:
            try:
                self.on_message(text)
            except Exception:
                pass

    # ------------------------------------------------------------------------------------------ switching
    def start_events(self, index: int = 0) -> list[Event]:
        """What sets song ``index``'s sound before the first block: its patch (or its mapping's tuning)."""
        router, song = self.routers[index], self.setlist.songs[index]
        if song.patch is None:
            if self.effects is not None:
                self.effects.set_effects((), fade_ms=self.setlist.crossfade_ms)
            return router.tuning_events()
        return router.recall(song.patch.resolve(router.bundle.latents), glide_ms=0)

    def select(self, which: str | int) -> list[Event]:
        """Switch to a song (number or name): a SongSelect, the MPE zone carried over from the song before,
        then the song's patch recall. ValueError for a song that does not exist; [] for the song already playing."""
        index = self.setlist.index(which)
        with self._lock:
            if index == self.active:
                return []
            was, now = getattr(self.routers[self.active], "mpe", None), getattr(self.routers[index], "mpe", None)
            self.active = index
            self.switches += 1
            # an MPE controller configures its zone once: the next song plays in the same zone (its patch may
            # still set its own, after this)
            carried = was.carry_to(now) if was is not None and now is not None else []
            events = [SongSelect(index), *carried, *self.start_events(index)]
        self._log(f"song {index}: {self.setlist.songs[index].name}")
        return events

    def step(self, step: int) -> list[Event]:
        """The next (+1) or previous (-1) song; at either end of the set nothing happens."""
        index = self.active + step
        if not 0 <= index < len(self.routers):
            self._log(f"no song {'after' if step > 0 else 'before'} {self.active} ({len(self.routers)} songs)")
            return []
        return self.select(index)

    # ------------------------------------------------------------------------------------------ Router
    def midi(self, message, offset: int = 0) -> list[Event]:
        s = self.setlist
        kind = message.type
        if kind == "program_change" and (s.program_channel is None or message.channel == s.program_channel):
            if message.program >= len(self.routers):
                self._log(f"no song {message.program} ({len(self.routers)} songs)")
                return []
            return self.select(message.program)
        if kind == "control_change" and message.control in (s.next_cc, s.prev_cc):
            pressed = message.value >= 64
            was = self._pressed.get(message.control, False)
            self._pressed[message.control] = pressed
            if pressed and not was:
                return self.step(1 if message.control == s.next_cc else -1)
            return []
        return self.router.midi(message, offset)

    def osc(self, address: str, args: Sequence) -> list[Event]:
        if address.startswith("/sdga/set/"):
            _, command = decode(address, args)
            if isinstance(command, StepSong):
                return self.step(command.step)
            if isinstance(command, SelectSong):
                try:
                    return self.select(command.which)
                except ValueError as exc:
                    raise OscError(f"{address}: {exc}") from None
        return self.router.osc(address, args)

    # ------------------------------------------------------------------------------------------ lifecycle
    def describe(self) -> str:
        return (f"set list {self.setlist.path}: {len(self.routers)} songs, crossfade {self.setlist.crossfade_ms:g} ms"
                + "".join(f"\n  {i}: {song.name} ({song.model.name}" + (f", patch {song.patch.name}" if song.patch
                                                                          else "") + ")"
                          for i, song in enumerate(self.setlist.songs)))

    def sync(self, events) -> None:
        self.router.sync(events)

    def learn(self, target: str) -> None:
        self.router.learn(target)

    def watch(self) -> "SetRouter":
        for router in self.routers:
            router.watch()
        return self

    def close(self) -> None:
        for router in self.routers:
            router.close()
