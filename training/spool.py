"""The audio spool: a run's decoded and rendered audio on disk, held in memory only as read-only memmaps.

Training reads a corpus of up to 500 files of up to a minute each, and renders augmented variants of it: held as
arrays that is about 6 GB (15 GB with two variants per file). Instead, each file's audio is written to a float32
``.npy`` file in a per-run spool folder as soon as it is decoded (or rendered), and only ``np.load(path,
mmap_mode="r")`` memmaps are kept: the OS pages in the windows training reads, and can drop them again whenever
it needs the memory (they are clean file pages). Whole-file passes (hashing, features, the corpus check,
augmentation) call :func:`release_pages` after each file, so their resident pages do not add up over the corpus.

A spool is not a cache: its folder (``<cache>/spool/run-<host>-<pid>-<random>``) belongs to one run and is removed
when :func:`audio_spool` exits, however it exits (error, Ctrl-C). A folder left by a killed run (kill -9, power
cut) is removed by the next run on the same host once its process is gone.
"""
from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = ["SPOOL_PREFIX", "AudioSpool", "audio_spool", "remove_stale_spools", "release_pages"]

SPOOL_PREFIX = "run-"


class AudioSpool:
    """A folder of float32 ``.npy`` files, one per audio written, read back as read-only memmaps."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._counter = itertools.count()     # next() is atomic under the GIL: threads may write concurrently

    def write(self, audio: np.ndarray, label: str = "audio") -> np.memmap:
        """``audio`` as float32 in a new file of the spool, returned as a read-only memmap of that file (the same
        values, bit for bit). ``label`` only names the file."""
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)[:40] or "audio"
        path = self.folder / f"{next(self._counter):06d}-{safe}.npy"
        np.save(path, np.ascontiguousarray(audio, dtype=np.float32))
        return np.load(path, mmap_mode="r")


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", socket.gethostname()) or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:                 # someone else's process: alive
        return True
    return True


def remove_stale_spools(parent: Path) -> list[Path]:
    """Remove the spool folders under ``parent`` left by runs on this host whose process is gone (killed with
    -9, or the machine lost power); returns them. Other hosts' folders (a shared cache) are left alone."""
    removed = []
    if not Path(parent).is_dir():
        return removed
    host = _host_tag()
    for folder in Path(parent).glob(f"{SPOOL_PREFIX}*"):
        parts = folder.name[len(SPOOL_PREFIX):].rsplit("-", 2)     # host, pid, mkdtemp's suffix (no '-')
        if len(parts) != 3 or parts[0] != host or not parts[1].isdecimal() or not folder.is_dir():
            continue
        pid = int(parts[1])
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


@contextlib.contextmanager
def audio_spool(parent: Path) -> Iterator[AudioSpool]:
    """A fresh spool in a new folder under ``parent`` (created if missing), removed with everything in it when
    the block exits, also on an exception or KeyboardInterrupt. Memmaps from it stay readable after that on
    POSIX systems (the mapping outlives the unlinked file), but nothing should rely on it."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_spools(parent)
    folder = Path(tempfile.mkdtemp(prefix=f"{SPOOL_PREFIX}{_host_tag()}-{os.getpid()}-", dir=parent))
    try:
        yield AudioSpool(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def release_pages(audio: np.ndarray) -> None:
    """Unmap from this process the resident pages of the memmap behind ``audio`` (a spooled array or a view of
    one): they stay in the OS page cache and are read back on the next access, so a pass over every file of a
    corpus does not leave the whole corpus resident. Does nothing for in-memory arrays."""
    a = audio
    while isinstance(a, np.ndarray):
        mm = getattr(a, "_mmap", None)
        if isinstance(mm, mmap.mmap):
            if hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
                with contextlib.suppress(OSError, ValueError):
                    mm.madvise(mmap.MADV_DONTNEED)
            return
        a = a.base
