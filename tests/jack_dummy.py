"""A private JACK server with the dummy driver (real-time paced, no sound card), for tests and benchmarks.

``with jack_dummy_server("name") as env:`` starts ``jackd --no-realtime -n name -d dummy`` and yields the
environment a client needs (``JACK_DEFAULT_SERVER=name``, ``JACK_NO_START_SERVER=1``; and ``JACKD_PID``, for
tests that kill the server themselves); the server is killed on exit. Raises :class:`JackUnavailable` when jackd
is not installed or does not come up.

Tests decide what that means in one place, :func:`jack_unavailable`: where the JACK binaries are installed
(or ``CI=true``) a server that does not come up is a test failure; only a machine without them skips.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["JackUnavailable", "jack_dummy_server", "jack_env", "jack_installed", "jack_required", "jack_unavailable",
           "private_jack"]


class JackUnavailable(RuntimeError):
    pass


def jack_installed() -> bool:
    return shutil.which("jackd") is not None and shutil.which("jack_lsp") is not None


def jack_required() -> bool:
    """True where the real-I/O tests must run: the JACK binaries are on PATH, or this is CI (``CI=true``)."""
    return jack_installed() or os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def jack_unavailable(reason: str):
    """Called by a test (fixture) that cannot get its JACK server or device: fails the test where JACK is
    required (:func:`jack_required`), skips it on a machine without the binaries. Never returns."""
    import pytest

    if jack_required():
        pytest.fail(f"{reason} (jackd is installed or CI=true, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def jack_env(name: str) -> dict[str, str]:
    env = dict(os.environ)
    env["JACK_DEFAULT_SERVER"] = name
    env["JACK_NO_START_SERVER"] = "1"
    return env


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM it when the process that started it dies, so a test run that
    is killed or aborts leaves no jackd behind (orphans pile up until jackd refuses: "Too many servers")."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)          # PR_SET_PDEATHSIG
    except Exception:
        pass


@contextmanager
def jack_dummy_server(name: str, sample_rate: int = 48000, period: int = 128, log_path: Path | None = None,
                      timeout_s: float = 15.0, realtime: bool = False, priority: int | None = None,
                      stamp_log: bool = False, _release: bool = True) -> Iterator[dict[str, str]]:
    """``realtime``: run jackd (and so its clients' process threads) with SCHED_FIFO, as a live setup would;
    needs the privilege (root or an rtprio limit). ``priority``: jackd's real-time priority (``-P``; its
    clients' process threads run 5 below; jackd's default is 10). ``stamp_log``: each line of ``log_path``
    begins with ``time.perf_counter()`` (CLOCK_MONOTONIC, comparable across processes) when jackd wrote it."""
    if not jack_installed():
        raise JackUnavailable("jackd / jack_lsp not installed")
    env = jack_env(name)
    log = open(log_path, "w") if log_path is not None else subprocess.DEVNULL
    stamped = stamp_log and log_path is not None
    command = ["jackd", "--realtime" if realtime else "--no-realtime", "-n", name]
    if realtime and priority is not None:
        command += ["-P", str(int(priority))]
    process = subprocess.Popen(command + ["-d", "dummy", "-r", str(sample_rate), "-p", str(period)],
                               stdout=subprocess.PIPE if stamped else log, stderr=subprocess.STDOUT, env=env,
                               preexec_fn=_die_with_parent if os.name == "posix" else None)
    if stamped:
        def copy_stamped() -> None:
            for line in process.stdout:
                log.write(f"{time.perf_counter():.6f} {line.decode(errors='replace')}")
                log.flush()

        copier = threading.Thread(target=copy_stamped, name="jackd-log", daemon=True)
        copier.start()
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            result = subprocess.run(["jack_lsp"], capture_output=True, text=True, timeout=10, env=env)
            if "system:playback_1" in result.stdout:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:] if log_path is not None else ""
                raise JackUnavailable(f"jackd did not start (exit code {process.poll()})"
                                      + (f"; its log ends:\n{tail}" if tail else ""))
            time.sleep(0.05)
        yield {**env, "JACKD_PID": str(process.pid)}
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if stamped:
            copier.join(timeout=5)
        if log is not subprocess.DEVNULL:
            log.close()
        if process.returncode != 0 and _release:
            # A jackd killed (or crashed) leaves its entry in JACK's shared registry, which holds 8 servers for the
            # whole machine and frees an entry only when a server of the same name exits cleanly: do that now.
            try:
                with jack_dummy_server(name, sample_rate, period, timeout_s=timeout_s, _release=False):
                    pass
            except JackUnavailable:
                pass
        # the semaphores and sockets that clients of a server gone under them leave in /dev/shm
        for leftover in [*Path("/dev/shm").glob(f"jack_sem.*_{name}_*"), *Path("/dev/shm").glob(f"jack_{name}_*")]:
            try:
                leftover.unlink()
            except OSError:
                pass


@contextmanager
def private_jack(name: str, log_path: Path, before_stop: Callable[[], None] | None = None,
                 after_stop: Callable[[], None] | None = None) -> Iterator[dict[str, str]]:
    """For a test fixture: a private JACK dummy server (48 kHz, 128-frame periods) that this process's own JACK
    clients find too (``os.environ``, restored afterwards); :func:`jack_unavailable` where it cannot start.
    ``before_stop`` runs while the server is still up, ``after_stop`` once it is down (both before the
    environment is restored)."""
    saved = {k: os.environ.get(k) for k in ("JACK_DEFAULT_SERVER", "JACK_NO_START_SERVER")}
    try:
        with jack_dummy_server(name, 48000, 128, log_path) as env:
            os.environ["JACK_DEFAULT_SERVER"] = name
            os.environ["JACK_NO_START_SERVER"] = "1"
            try:
                yield env
            finally:
                if before_stop is not None:
                    before_stop()
        if after_stop is not None:
            after_stop()
    except JackUnavailable as exc:
        jack_unavailable(str(exc))      # a failure where jackd is installed; a skip where it is not
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
