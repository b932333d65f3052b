"""A private JACK server with the dummy driver (real-time paced, no sound card), for tests and benchmarks.

``with jack_dummy_server("name") as env:`` starts ``jackd --no-realtime -n name -d dummy`` and yields the
environment a client needs (``JACK_DEFAULT_SERVER=name``, ``JACK_NO_START_SERVER=1``; and ``JACKD_PID``, for
tests that kill the server themselves); the server is killed on exit. Raises :class:`JackUnavailable` when jackd is not installed or does not come up.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["JackUnavailable", "jack_dummy_server", "jack_env"]


class JackUnavailable(RuntimeError):
    pass


def jack_env(name: str) -> dict[str, str]:
    env = dict(os.environ)
    env["JACK_DEFAULT_SERVER"] = name
    env["JACK_NO_START_SERVER"] = "1"
    return env


@contextmanager
def jack_dummy_server(name: str, sample_rate: int = 48000, period: int = 128, log_path: Path | None = None,
                      timeout_s: float = 15.0, realtime: bool = False,
                      _release: bool = True) -> Iterator[dict[str, str]]:
    """``realtime``: run jackd (and so its clients' process threads) with SCHED_FIFO, as a live setup would;
    needs the privilege (root or an rtprio limit)."""
    if shutil.which("jackd") is None or shutil.which("jack_lsp") is None:
        raise JackUnavailable("jackd / jack_lsp not installed")
    env = jack_env(name)
    log = open(log_path, "w") if log_path is not None else subprocess.DEVNULL
    process = subprocess.Popen(["jackd", "--realtime" if realtime else "--no-realtime", "-n", name, "-d", "dummy", "-r", str(sample_rate),
                                "-p", str(period)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            result = subprocess.run(["jack_lsp"], capture_output=True, text=True, timeout=10, env=env)
            if "system:playback_1" in result.stdout:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise JackUnavailable(f"jackd did not start (exit code {process.poll()})")
            time.sleep(0.05)
        yield {**env, "JACKD_PID": str(process.pid)}
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
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
