"""The live mapping: the active :class:`~instrument.controls.mapping.Mapping` of a router and its file.

:class:`LiveMapping` holds the one reference that message threads read (once per message), and is the only
writer of it and of the file: :meth:`~LiveMapping.reload` (keeps the previous mapping on any error),
:meth:`~LiveMapping.add_entry` (MIDI learn: the file edited by :func:`~instrument.controls.learn.add_entry_text`,
loaded back, written, swapped in) and :meth:`~LiveMapping.watch`, which starts a :class:`MappingWatcher`: a
thread that polls the file and its patches and calls reload on a change (it owns only its last-seen signature).
"""
from __future__ import annotations

import os
import threading
from typing import Callable

from instrument.controls.learn import add_entry_text
from instrument.controls.mapping import Mapping, MappingError, parse_mapping
from instrument.controls.patches import _atomic_write

__all__ = ["signature", "MappingWatcher", "LiveMapping"]


def signature(m: Mapping) -> tuple:
    """What changes when the mapping's files change: (path, mtime, size) of the file and each patch, and the
    file names in each patch folder."""
    paths = ([m.path] if m.path else []) + [p.path for p in m.patches if p.path]
    sig = []
    for p in paths:
        try:
            st = os.stat(p)
            sig.append((str(p), st.st_mtime_ns, st.st_size))
        except OSError:
            sig.append((str(p), None, None))
    for folder in m.patch_source:
        if folder.is_dir():
            sig.append((str(folder), tuple(sorted(f.name for f in folder.glob("*.yaml")))))
    return tuple(sig)


class MappingWatcher:
    """Polls ``current()``'s files every ``interval_s`` on its own thread and calls ``reload()`` on a change.
    Errors are reported through ``log`` and never end the thread."""

    def __init__(self, current: Callable[[], Mapping], reload: Callable[[], bool], interval_s: float = 0.25,
                 log: Callable[[str], None] = lambda text: None):
        self.current, self.reload, self.interval_s, self.log = current, reload, float(interval_s), log
        self._seen = signature(current())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def seen(self, mapping: Mapping) -> None:
        """The router wrote these files itself (MIDI learn): do not reload them again."""
        self._seen = signature(mapping)

    def start(self) -> "MappingWatcher":
        if self._thread is None:
            self._stop.clear()
            self._seen = signature(self.current())
            self._thread = threading.Thread(target=self._watch, name="sdga-mapping-watch", daemon=True)
            self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                sig = signature(self.current())
                if sig != self._seen:
                    self._seen = sig
                    self.reload()
                    self._seen = signature(self.current())
            except Exception as exc:               # never let the watcher die silently
                self.log(f"mapping watcher: {exc!r}")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None


class LiveMapping:
    """The active mapping (``current``, swapped whole with one assignment under a lock) and its file."""

    def __init__(self, mapping: Mapping, bundle, *, patches_override=None,
                 log: Callable[[str], None] = lambda text: None):
        self.current = mapping
        self.bundle = bundle
        self.patches_override = patches_override
        self.log = log
        self.reloads = 0
        self.refused = 0
        self.last_error = ""
        self._lock = threading.RLock()             # serialises reload / learn (file work), not messages
        self._watcher: MappingWatcher | None = None

    def reload(self) -> bool:
        """Load the mapping file again; on any error keep the current mapping (message in ``last_error``). A
        patch file of the current mapping that is gone (deleted or moved while playing) is such an error too:
        its patch stays, and the patch numbers with it, until the file is back (or sdga-play restarts)."""
        with self._lock:
            m = self.current
            if m.path is None:
                return False
            try:
                gone = [str(p.path) for p in m.patches if p.path is not None and not os.path.lexists(p.path)]
                if gone:
                    raise OSError(f"patch file {', '.join(gone)} is gone (deleted or moved); its patch stays "
                                  f"loaded until the file is back (restart sdga-play to drop it)")
                new = parse_mapping(m.path, self.bundle, patches=self.patches_override)
            except (MappingError, OSError) as exc:
                self.refused += 1
                self.last_error = str(exc)
                self.log(f"mapping not reloaded, the previous one stays active: {exc}")
                return False
            self.current = new                     # the swap: one reference assignment
            self.reloads += 1
            self.last_error = ""
            self.log(f"mapping reloaded: {m.path} ({len(new.bindings)} bindings, {len(new.patches)} patches)")
            return True

    def add_entry(self, entry: dict) -> Mapping:
        """Add one mapping entry (replacing entries for the same control), write the file (keeping its
        comments and layout) and switch to the result loaded back through the loader (so a bad result raises
        MappingError and nothing changes)."""
        with self._lock:
            m = self.current
            text = add_entry_text(m.text, entry)
            new = parse_mapping(m.path, self.bundle, text=text, patches=self.patches_override)
            if m.path is not None:
                _atomic_write(m.path, text)
                if self._watcher is not None:
                    self._watcher.seen(new)
            self.current = new
            return new

    def watch(self, interval_s: float = 0.25) -> None:
        """Reload when the files change (a :class:`MappingWatcher`); nothing to watch without a file."""
        if self._watcher is None and self.current.path is not None:
            self._watcher = MappingWatcher(lambda: self.current, self.reload, interval_s, self.log).start()

    def close(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.close()
