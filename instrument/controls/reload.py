"""Hot reload: a watcher thread polls the mapping file and its patches and asks for a reload on a change.

The watcher owns only its last-seen signature; loading and swapping the mapping is the router's
(:meth:`instrument.controls.router.MappingRouter.reload`, which keeps the previous mapping on any error).
"""
from __future__ import annotations

import os
import threading
from typing import Callable

from instrument.controls.mapping import Mapping

__all__ = ["signature", "MappingWatcher"]


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
