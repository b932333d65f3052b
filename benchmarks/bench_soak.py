"""Soak test of the live instrument: sdga-play on a JACK dummy device for N seconds under continuous MIDI and OSC.

    .venv/bin/python benchmarks/bench_soak.py [MODEL.sdga] [--seconds 60] [--block-size 128] [--voices 8]

Starts a private ``jackd --no-realtime -d dummy`` (48 kHz, real-time paced, no sound card), runs
``python -m instrument.apps.play`` on it with ``--record`` and ``--stats-json``, plays overlapping notes from a JACK
MIDI port (4 note-ons a second, each held 0.6 s, plus pitch bend) and sends OSC latent changes (20 a second,
every latent in turn). Prints: underflows after the first second, non-finite samples in the recording, RSS of
the sdga-play process at start and end (after 2 s, then every 5 s: memory must stay flat), callback load
median / p99 (compute time per block / block duration), late callbacks and dropped events.

Without a model file an untrained model of the default architecture is used (same cost as a trained one).
Timings depend on what else the machine runs: the load average is printed.

``--set`` plays a set list of two songs (MODEL and an untrained model of another seed) with ``sdga-play --set``;
``--switch-every S`` then sends a program change every S seconds on the same MIDI port (0, 1, 0, ...): a soak
that switches models with crossfades, to compare with ``--set`` alone (no switches).

``--null`` measures the machine's floor instead: the same JACK server, MIDI and OSC traffic and I/O threads
(MidiInput in its child process, OscServer, the EventQueue drained by the callback) and the same AudioOutput
with the same diagnostics, classified the same way, but an engine that only writes zeros. Underflows that
happen there are the machine's (scheduling of JACK's threads and of a Python callback), not the engine's.
``--null-busy-ms X`` makes that callback spin X ms holding the GIL: the engine's compute time without the
engine (sdga-play's median at block 128 with 8 voices is about 0.4-0.5 ms).

Alongside every run a stall probe per CPU (a SCHED_FIFO ``--probe-priority`` 80 thread pinned to it, in its own
process, above JACK's threads) wakes every ``--probe-period-ms`` (2.67 ms) and logs wake-ups more than 1 ms late:
stalls of the machine itself (on this VM, a vCPU not running). The summary says how many of the run's underflows
fell in such a stall. A denser period (0.5 ms) sees every stall over 1.5 ms, but its wake-ups preempt a callback
3-10 times, which made sdga's callbacks sit runnable 0.7-2.5 ms inside themselves (2026-12-08): the period stays at
a block.

sdga-play runs with ``--diagnose-callbacks``: each late callback's context switches, its thread's CPU time and
run-queue wait, and every garbage collection; jackd's log is stamped line by line (its driver's late wake-ups).
:func:`classify_underflows` puts every underflow in one class from those; ``stall``, ``driver late`` and ``stolen``
are the machine's, and ``preempted`` where the audio thread is real-time (:func:`machine_classes`). With
``--realtime`` jackd runs at ``--jack-priority`` 70 (its clients at 65, above the kernel's interrupt threads, as on
stage), still below the probes: a probe that outranks the audio thread and wakes late saw a CPU that not even the
top priority got, so a long callback inside such a stall is the machine's (this VM's steal-time accounting misses
some stalls: they land on the thread's CPU clock).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from jack_dummy import jack_dummy_server  # noqa: E402


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def driver_late_times(log: Path) -> list[tuple[float, float]]:
    """(perf_counter, ms late) of each time jackd's dummy driver woke late, from a stamped log (stamp_log)."""
    found = []
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        if "JackTimedDriver::Process XRun" in line:
            try:
                found.append((float(line.split(" ", 1)[0]), int(line.rsplit("=", 1)[1].split()[0]) / 1000.0))
            except (ValueError, IndexError):
                pass
    return found


def _print_xruns(log: Path) -> None:
    """The xruns jackd logged: clients it found unfinished at the end of a cycle (PortAudio: the audio
    callback's client; "Triggered": woken but not yet run, "Running": still in its process callback), and the
    dummy driver's own late wake-ups (the machine's scheduling), with how late."""
    counts: dict[str, int] = {}
    driver = driver_late_times(log)
    for line in log.read_text(errors="replace").splitlines():
        if "was not finished" in line:
            client = line.split(" was not finished")[0].split("client = ")[-1]
            state = line.split("state = ")[-1].strip() if "state = " in line else "?"
            key = f"{client} ({state})"
            counts[key] = counts.get(key, 0) + 1
    print("  jackd xruns: " + (", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "none")
          + "; driver woke late: " + (", ".join(f"{ms:.2f}" for _, ms in driver) + " ms" if driver else "never"))


STALL_MS = 1.0


def stall_probe(seconds: float, out_path: Path, cpu: int | None = None, period_ms: float = 1000.0 * 128 / 48000,
                priority: int = 80) -> int:
    """A SCHED_FIFO ``priority`` thread (above JACK's), pinned to ``cpu``, that sleeps to a deadline every ``period_ms`` and
    appends "perf_counter lateness_ms" to out_path for every wake-up more than STALL_MS late: stalls of that
    CPU (on a VM: its vCPU not running), which no priority or GIL handling inside sdga-play can avoid."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        policy = f"SCHED_FIFO {priority}"
    except (AttributeError, OSError):
        policy = "normal priority"
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {cpu})
            policy += f" on CPU {cpu}"
        except (AttributeError, OSError):
            pass
    period = period_ms / 1000.0      # a stall of L ms is seen when a deadline falls in its first L - STALL_MS ms:
    #                                  always for L >= STALL_MS + period (at 2.67 ms, a 2 ms stall was seen 1 in 3)
    with open(out_path, "w") as out:
        out.write(f"# {policy}, every {period_ms:.2f} ms\n")
        out.flush()
        start = time.perf_counter()
        deadline = start + period
        while deadline - start < seconds:
            delay = deadline - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            woke = time.perf_counter()
            if (woke - deadline) * 1000.0 > STALL_MS:
                out.write(f"{woke:.6f} {(woke - deadline) * 1000.0:.3f}\n")
                out.flush()
            deadline += period
            if woke > deadline:
                deadline = woke + period
    return 0


def _read_stalls(path: Path) -> tuple[str, list[tuple[float, float]]]:
    lines = path.read_text().splitlines() if path.exists() else []
    policy = lines[0].lstrip("# ") if lines else "?"
    return policy, [(float(a), float(b)) for a, b in (l.split() for l in lines[1:] if l.strip())]


def _print_stalls(probes: list[tuple[str, list[tuple[float, float]]]], underflows: list[float]) -> None:
    """Each CPU's probe stalls (``probes``: what _read_stalls gave for each), and how many underflows fell in a
    stall of any CPU (from its start to 20 ms after its end: the callback that reports an underflow runs after
    the gap)."""
    every = [stall for _, stalls in probes for stall in stalls]
    parts = [f"{policy.split(' on ')[-1]}: {len(stalls)} (longest {max((ms for _, ms in stalls), default=0.0):.2f} ms)"
             for policy, stalls in probes]
    matched = sum(1 for u in underflows if any(w - ms / 1000.0 - 0.005 <= u <= w + 0.02 for w, ms in every))
    policy = probes[0][0].split(" on ")[0] if probes else "?"
    print(f"  machine stalls (a {policy} probe per CPU woken > {STALL_MS:g} ms late): {'; '.join(parts)}; "
          f"underflows during or just after one: {matched} of {len(underflows)}")


def _print_diagnostics(probes: list[tuple[str, list[tuple[float, float]]]], rows: list[dict], budget_ms: float) -> None:
    """sdga-play --diagnose-callbacks: for the callbacks that overran or began > half a block late, whether the
    audio thread was taken off the CPU (involuntary switches), waited (voluntary switches beyond the one per
    cycle: the GIL or a lock), and whether a probe saw a machine stall within the callback's span (from 5 ms
    before it began to its end)."""
    stalls = [stall for _, found in probes for stall in found]

    def stalled(start: float, end: float) -> bool:
        return any(w - ms / 1000.0 <= end and w >= start - 0.005 for w, ms in stalls)

    for kind, picked in (("overran", [r for r in rows if r["compute_ms"] > budget_ms]),
                         ("began > half a block late", [r for r in rows if r["start_delay_ms"] > 0.5 * budget_ms])):
        if not picked:
            continue
        preempted = sum(1 for r in picked if r["involuntary_during"] + r["involuntary_before"] > 0)
        waited = sum(1 for r in picked if r["voluntary_during"] > 0 or r["voluntary_before"] > 1)
        seen = sum(1 for r in picked if stalled(r["perf_counter"] - r["start_delay_ms"] / 1000.0,
                                                 r["perf_counter"] + r["compute_ms"] / 1000.0))
        clocked = [r for r in picked if "cpu_ms" in r]
        own = sum(1 for r in clocked if r["cpu_ms"] > budget_ms)
        off_ms = [r["compute_ms"] - r["cpu_ms"] for r in clocked]
        queued_ms = [r["run_queue_during_ms"] + (r["run_queue_before_ms"] if kind != "overran" else 0.0)
                     for r in clocked]
        clock = (f"; longer than the block on the CPU itself: {own}; wall time not on the CPU: median "
                 f"{np.median(off_ms):.2f} ms, max {max(off_ms):.2f} ms, of it runnable on a run queue: median "
                 f"{np.median(queued_ms):.2f} ms" if clocked else "")
        print(f"  callbacks that {kind}: {len(picked)}; taken off the CPU (involuntary switch): {preempted}; waited "
              f"(GIL or a lock: extra voluntary switch): {waited}; during a machine stall a probe saw: {seen}{clock}")


OFF_CPU_MS = 0.5            # time a callback lost that counts as taken from it (a fifth of a block at 128)
MACHINE_CLASSES = ("stall", "driver late", "stolen")
# and, where the audio thread runs real-time, above every thread of sdga's own (JACK runs its clients' threads,
# the MIDI child's too, at one priority, and SCHED_FIFO does not preempt at equal priority): time it sat
# runnable *inside* a callback, which only jackd, the probes, kernel threads or a vCPU stolen while one of them
# ran can take
REALTIME_MACHINE_CLASSES = MACHINE_CLASSES + ("preempted",)


def machine_classes(audio_thread: str) -> tuple[str, ...]:
    """The classes that are the machine's for an audio thread of this scheduling (sdga-play's ``audio_thread``,
    e.g. "real-time (SCHED_FIFO 65)"; "" where unknown: the narrow set)."""
    return REALTIME_MACHINE_CLASSES if audio_thread.startswith("real-time") else MACHINE_CLASSES


def probe_outranks(probes: list[tuple[str, list[tuple[float, float]]]], audio_thread: str) -> bool:
    """Whether the probes ran at a real-time priority above the audio thread's (sdga-play's ``audio_thread``,
    e.g. "real-time (SCHED_FIFO 65)"; a normal-priority audio thread is outranked by any real-time probe)."""
    def priority(text: str) -> int | None:
        for policy in ("SCHED_FIFO ", "SCHED_RR "):
            if policy in text:
                digits = text.split(policy, 1)[1].split()[0].strip("),")
                return int(digits) if digits.isdigit() else None
        return None

    probe = priority(probes[0][0]) if probes else None
    if probe is None:
        return False
    audio = priority(audio_thread)
    return audio_thread.startswith("normal") or (audio is not None and probe > audio)


def classify_underflows(probes: list[tuple[str, list[tuple[float, float]]]], rows: list[dict], underflows: list[float],
                        budget_ms: float, collections: list[dict] = (),
                        driver_late: list[tuple[float, float]] = (), probe_outranks_audio: bool = False
                        ) -> dict[str, int]:
    """Every underflow after the first second, in one class, by the diagnosed callbacks of the 20 ms before the
    one that reported it, first match wins. ``overran`` comes before ``stall`` unless ``probe_outranks_audio``
    (the probes' real-time priority is above the audio thread's): a long callback of sdga's own also keeps a
    probe *below* it from running, so there a probe's stall does not clear it; a probe *above* it that woke
    late was kept off a CPU that even the top priority did not get: the machine's, whatever the callback's CPU
    clock says (this VM's steal-time accounting does not catch every stall: some land on the thread's clock).

    - ``collected`` — Python's garbage collector ran in the audio thread within those 20 ms (``collections``:
      sdga-play's log of them): sdga's own;
    - ``overran`` — one ran longer than the block on the CPU (its thread's CPU clock): sdga's own compute;
    - ``stall`` — a probe saw the machine stall (as in _print_stalls);
    - ``driver late`` — jackd's driver thread (the top real-time priority, sleeping to each cycle's deadline on
      a timer) logged that it woke >= OFF_CPU_MS late in those 20 ms (``driver_late``: from the stamped jackd log): the
      kernel did not run the highest-priority thread on time, i.e. the vCPU was not running;
    - ``stolen`` — one lost >= OFF_CPU_MS of its wall time neither running, nor runnable on a run queue, nor
      asleep (no voluntary switch): the vCPU itself was not running (the guest's steal-time accounting keeps it
      off the thread's CPU clock). The probes miss stalls shorter than 1 ms plus their period;
    - ``waited`` — one slept inside (a voluntary switch: the GIL or a lock) for >= OFF_CPU_MS, or began over
      half a block late after sleeping more than once since the previous callback (it is woken once a cycle;
      more is the GIL at its entry, which sounddevice's C callback takes before any of ours runs);
    - ``preempted`` — one sat runnable >= OFF_CPU_MS while another thread of higher priority ran (the kernel's
      run-queue wait; on the audio thread's real-time priority only jackd, the probes and kernel threads can);
    - ``queued`` — one began over half a block late after waiting >= OFF_CPU_MS runnable (woken on time; the
      CPU was busy or stolen);
    - ``woken late`` — one began over half a block late without that wait: the server woke it late;
    - ``finished late`` — one began under half a block late but, with its compute time, ended past its cycle;
    - ``unexplained`` — every callback near it began and ended in time: the server's side, or PortAudio's.

    Rows from before the CPU clock was recorded (no ``cpu_ms``) fall back on the wall time and the switch counts.
    ``stall``, ``driver late`` and ``stolen`` are the machine's (MACHINE_CLASSES), and ``preempted`` too where
    the audio thread is real-time (:func:`machine_classes`); the rest count against sdga."""
    stalls = [stall for _, found in probes for stall in found]
    counts = {name: 0 for name in ("collected", "overran", "stall", "driver late", "stolen", "waited", "preempted", "queued", "woken late",
                                   "finished late", "unexplained")}

    def lost(r: dict) -> float:                    # wall time neither running nor runnable
        return r["compute_ms"] - r.get("cpu_ms", r["compute_ms"]) - r.get("run_queue_during_ms", 0.0)

    for u in underflows:
        before = [r for r in rows if u - 0.02 <= r["perf_counter"] <= u]
        overran = any(r.get("cpu_ms", r["compute_ms"]) > budget_ms for r in before)
        stalled = any(w - ms / 1000.0 - 0.005 <= u <= w + 0.02 for w, ms in stalls)
        if any(c["in_callback_thread"] and u - 0.025 <= c["perf_counter"] <= u for c in collections):
            counts["collected"] += 1
        elif overran and not (stalled and probe_outranks_audio):
            counts["overran"] += 1
        elif stalled:
            counts["stall"] += 1
        elif any(u - 0.02 <= t <= u + 0.005 and ms >= OFF_CPU_MS for t, ms in driver_late):
            counts["driver late"] += 1
        elif any(lost(r) >= OFF_CPU_MS and r["voluntary_during"] == 0 for r in before):
            counts["stolen"] += 1
        elif any(lost(r) >= OFF_CPU_MS or (r["start_delay_ms"] > 0.5 * budget_ms and r["voluntary_before"] > 1)
                 for r in before):
            counts["waited"] += 1
        elif any(r.get("run_queue_during_ms", 0.0) >= OFF_CPU_MS
                 or ("cpu_ms" not in r and r["involuntary_before"] + r["involuntary_during"] > 0) for r in before):
            counts["preempted"] += 1
        elif any(r["start_delay_ms"] > 0.5 * budget_ms and r.get("run_queue_before_ms", 0.0) >= OFF_CPU_MS
                 for r in before):
            counts["queued"] += 1
        elif any(r["start_delay_ms"] > 0.5 * budget_ms for r in before):
            counts["woken late"] += 1
        elif any(r["start_delay_ms"] + r["compute_ms"] > budget_ms for r in before):
            counts["finished late"] += 1
        else:
            counts["unexplained"] += 1
    return counts


class _NullEngine:
    """What AudioOutput needs of an engine, without one: drains the events, writes zeros, and with ``busy_s``
    spins that long holding the GIL (the engine's compute time, without the engine)."""

    def __init__(self, block_size: int, busy_ms: float = 0.0):
        self.block_size, self.sample_rate = int(block_size), 48000
        self.state = ()                               # "prepared"
        self.busy_s = busy_ms / 1000.0
        self.events = 0

    def process(self, events, out) -> None:
        started = time.perf_counter()
        for _ in events:
            self.events += 1
        out.fill(0.0)
        while time.perf_counter() - started < self.busy_s:
            pass


def null_player(seconds: float, block_size: int, stats_path: Path, busy_ms: float = 0.0) -> int:
    """What sdga-play's I/O does, without the engine: the same AudioOutput (with --diagnose-callbacks' clocks), MIDI
    child process, OSC server and collector freeze; prints the two lines the soak waits for, writes the stats the
    classification reads."""
    import gc

    from instrument.engine.events import EventQueue
    from instrument.io.audio import AudioOutput
    from instrument.io.midi import MidiInput
    from instrument.io.osc import OscServer

    queue = EventQueue()
    engine = _NullEngine(block_size, busy_ms)
    with MidiInput(queue, virtual_name="sdga", api="UNIX_JACK", connect="soak_keys:out", client_name="sdga",
                   separate_process=True) as midi, OscServer(queue, port=0) as osc:
        print(f"OSC: listening on udp 127.0.0.1:{osc.address[1]}", flush=True)
        audio = AudioOutput(engine, queue, device="JACK", channels=2, diagnose=True)
        gc.collect()
        gc.freeze()
        audio.start()
        print("sdga-play: playing (null player)", flush=True)
        time.sleep(seconds)
        audio.close()
        counts = {**audio.summary(), "events": engine.events,
                  "midi": {"received": midi.received, "malformed": midi.malformed},
                  "osc": {"received": osc.received, "errors": osc.errors}}
    stats_path.write_text(json.dumps(counts))
    return 0


def _print_callbacks(stats: dict, block_size: int) -> None:
    """The callbacks' own figures (from AudioOutput.summary), the same lines for the player and the null player."""
    print(f"  callbacks that began > half a block late (CPU or GIL wait): {stats['late_starts']}; max start "
          f"delay {stats['max_start_delay_ms']:.2f} ms; audio thread: {stats['audio_thread']}")
    if stats["late_callback_log"]:
        print("  late callbacks (s into the stream, ms): " + ", ".join(f"{t:.2f}s {ms:.1f}" for t, ms in stats["late_callback_log"]))
    print(f"  callback load: median {100 * stats['load_median']:.1f}%, p99 {100 * stats['load_p99']:.1f}%, max "
          f"{stats['max_callback_ms']:.2f} ms of {1000 * block_size / 48000:.2f} ms")


def _print_accounting(work: Path, args, stats: dict, probe_stalls, code: int, lines: list[str]) -> int:
    """The part of the summary the player and the null player share: jackd's xruns, the probes' stalls, the
    diagnosed callbacks, the collections and every underflow's class; removes the work folder unless --keep."""
    _print_xruns(work / "jackd.log")
    _print_stalls(probe_stalls, stats.get("underflow_times", []))
    budget_ms = 1000.0 * args.block_size / 48000
    _print_diagnostics(probe_stalls, stats.get("callback_diagnostics", []), budget_ms)
    collections = stats.get("collections", [])
    if collections:
        mine = [c for c in collections if c["in_callback_thread"]]
        print(f"  garbage collections while playing: {len(collections)} (generations 0/1/2: "
              + "/".join(str(sum(1 for c in collections if c["generation"] == g)) for g in range(3))
              + f"), longest {max(c['ms'] for c in collections):.2f} ms; in the audio thread: {len(mine)}"
              + (f", longest {max(c['ms'] for c in mine):.2f} ms" if mine else ""))
    classes = classify_underflows(probe_stalls, stats.get("callback_diagnostics", []), stats.get("underflow_times", []),
                                  budget_ms, collections, driver_late_times(work / "jackd.log"),
                                  probe_outranks(probe_stalls, stats.get("audio_thread", "")))
    machine = machine_classes(stats.get("audio_thread", ""))
    print("  underflows by class: " + ", ".join(f"{name} {n}" for name, n in classes.items())
          + f" (outside a probe-seen stall: {sum(classes.values()) - classes['stall']}; outside the machine's "
          f"({', '.join(machine)}): {sum(n for k, n in classes.items() if k not in machine)})")
    if code != 0:
        print("\n".join(lines))
    if args.keep:
        print(f"  work folder: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return code


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", nargs="?", type=Path)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--voices", type=int, default=8)
    p.add_argument("--no-virtual-midi", action="store_true", help="sdga-play without its virtual MIDI port (one JACK client fewer)")
    p.add_argument("--set", action="store_true", help="play a 2-song set list (MODEL and another untrained model)")
    p.add_argument("--switch-every", type=float, default=0.0, metavar="S",
                   help="with --set: a program change every S seconds switches songs (0: never)")
    p.add_argument("--null", action="store_true", help="the machine's floor: same I/O and traffic, a callback that writes zeros")
    p.add_argument("--null-busy-ms", type=float, default=0.0,
                   help="the null player's callback spins this long holding the GIL (the engine's compute, without the engine)")
    p.add_argument("--probe-period-ms", type=float, default=1000.0 * 128 / 48000,
                   help="how often each stall probe wakes (the probes see every stall longer than 1 ms + this)")
    p.add_argument("--probe-priority", type=int, default=80,
                   help="the stall probes' SCHED_FIFO priority (above the audio threads, so a late probe means the machine)")
    p.add_argument("--as-stall-probe", nargs=5, metavar=("SECONDS", "OUT", "CPU", "PERIOD_MS", "PRIORITY"),
                   help=argparse.SUPPRESS)
    p.add_argument("--as-null-player", nargs=4, metavar=("SECONDS", "BLOCK", "STATS", "BUSY"), help=argparse.SUPPRESS)
    p.add_argument("--keep", action="store_true", help="keep the work folder (recording, stats, jackd log)")
    p.add_argument("--realtime", action="store_true",
                   help="run jackd with real-time scheduling (as on stage; needs root or an rtprio limit)")
    p.add_argument("--jack-priority", type=int, default=70,
                   help="with --realtime: jackd's priority (-P; clients run 5 below): 70 puts the audio threads above "
                        "the kernel's interrupt threads (SCHED_FIFO 50), as on stage; jackd's default is 10")
    args = p.parse_args(argv)
    if args.as_stall_probe:
        return stall_probe(float(args.as_stall_probe[0]), Path(args.as_stall_probe[1]), int(args.as_stall_probe[2]),
                           float(args.as_stall_probe[3]), int(args.as_stall_probe[4]))
    if args.as_null_player:
        return null_player(float(args.as_null_player[0]), int(args.as_null_player[1]), Path(args.as_null_player[2]),
                           float(args.as_null_player[3]))

    work = Path(tempfile.mkdtemp(prefix="sdga_soak_"))
    model = args.model
    if model is None:
        from instrument.model.bundle import random_bundle, save_bundle

        model = save_bundle(work / "random.sdga", random_bundle())
    name = f"sdga_soak_{os.getpid()}"
    with jack_dummy_server(name, 48000, args.block_size, work / "jackd.log", realtime=args.realtime,
                           priority=args.jack_priority, stamp_log=True) as env:
        os.environ.update({k: env[k] for k in ("JACK_DEFAULT_SERVER", "JACK_NO_START_SERVER")})
        import rtmidi
        from pythonosc.udp_client import SimpleUDPClient

        keys = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, "soak_keys")
        keys.open_virtual_port("out")
        played = [str(model)]
        if args.set:
            from instrument.model.bundle import random_bundle, save_bundle

            other = save_bundle(work / "other.sdga", random_bundle(seed=1))
            (work / "set.yaml").write_text(f"songs:\n  - {{name: one, model: {Path(model).resolve()}}}\n"
                                           f"  - {{name: two, model: {other}}}\n")
            played = ["--set", str(work / "set.yaml")]
        command = [sys.executable, "-m", "instrument.apps.play", *played, "--device", "JACK", "--block-size",
                   str(args.block_size), "--voices", str(args.voices), "--midi", "soak_keys", "--osc-port", "0",
                   "--duration", str(args.seconds), "--record", str(work / "take.wav"),
                   "--stats-json", str(work / "stats.json"), "--quiet", "--diagnose-callbacks"] + (["--no-virtual-midi"] if args.no_virtual_midi else [])
        if args.null:
            command = [sys.executable, str(Path(__file__).resolve()), "--as-null-player", str(args.seconds),
                       str(args.block_size), str(work / "stats.json"), str(args.null_busy_ms)]
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
        stall_files = [work / f"stalls_cpu{cpu}.txt" for cpu in cpus]
        probes = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--as-stall-probe",
                                    str(args.seconds + 60.0), str(path), str(cpu), str(args.probe_period_ms),
                                    str(args.probe_priority)])
                  for cpu, path in zip(cpus, stall_files)]
        player = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, bufsize=1)
        lines: list[str] = []
        port = None
        for line in player.stdout:
            lines.append(line.rstrip())
            if "OSC: listening on udp" in line:
                port = int(line.rsplit(":", 1)[1].split()[0])
            if "sdga-play: playing" in line:
                break
        if port is None:
            print("\n".join(lines))
            for probe in probes:
                probe.terminate()
            raise SystemExit("sdga-play did not start")
        reader = threading.Thread(target=lambda: lines.extend(l.rstrip() for l in player.stdout), daemon=True)
        reader.start()
        started = time.monotonic()
        osc = SimpleUDPClient("127.0.0.1", port)
        info = next((l for l in lines if "latents:" in l), "")
        latent_names = info.split("latents: ", 1)[1].split(")")[0].split(", ") if info else ["0"]
        rng = np.random.default_rng(0)
        rss: list[tuple[float, float]] = []
        held: list[tuple[float, int]] = []
        next_note = next_osc = 0.0
        next_rss = 2.0
        notes = osc_sent = switches = 0
        every = args.switch_every if args.set and args.switch_every > 0 else float("inf")
        next_switch = every
        while player.poll() is None:
            now = time.monotonic() - started
            if now >= args.seconds - 0.3:
                break
            if now >= next_note:
                note = int(rng.integers(45, 76))
                keys.send_message([0x90, note, int(rng.integers(40, 127))])
                keys.send_message([0xE0, 0, int(rng.integers(48, 80))])
                held.append((now + 0.6, note))
                notes += 1
                next_note += 0.25
            for t_off, note in [h for h in held if h[0] <= now]:
                keys.send_message([0x80, note, 0])
                held.remove((t_off, note))
            if now >= next_osc:
                osc.send_message(f"/sdga/latent/{latent_names[osc_sent % len(latent_names)]}", float(rng.random()))
                osc_sent += 1
                next_osc += 0.05
            if now >= next_rss:
                rss.append((now, rss_mb(player.pid)))
                next_rss += 5.0
            if now >= next_switch:
                switches += 1
                keys.send_message([0xC0, switches % 2])         # program change: the other song
                next_switch += every
            wake = min([next_note, next_osc, next_rss, next_switch] + [t for t, _ in held])
            time.sleep(max(0.001, wake - (time.monotonic() - started)))
        for _, note in held:
            keys.send_message([0x80, note, 0])
        code = player.wait(timeout=60)
        for probe in probes:
            probe.terminate()
            probe.wait()
        reader.join(timeout=5)
        keys.close_port()
        keys.delete()
    stats = json.loads((work / "stats.json").read_text())
    probe_stalls = [_read_stalls(path) for path in stall_files]
    if args.null:
        print(f"null player (no engine{f', callback busy {args.null_busy_ms:g} ms' if args.null_busy_ms else ''}) soak: {args.seconds:g} s, block {args.block_size}, JACK dummy 48 kHz; "
              f"{'real-time' if args.realtime else 'no real-time'} scheduling; exit code {code}; load average "
              f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
        print(f"  sent: {notes} notes (+bends), {osc_sent} OSC latent changes; events drained {stats['events']}")
        print(f"  underflows after the first second: {stats['underflows'] - stats['startup_underflows']} "
              f"(first second: {stats['startup_underflows']}); late callbacks: {stats['late_callbacks']} of "
              f"{stats['callbacks']}")
        _print_callbacks(stats, args.block_size)
        return _print_accounting(work, args, stats, probe_stalls, code, lines)
    import soundfile as sf

    audio, _ = sf.read(str(work / "take.wav"), dtype="float32")
    nonfinite = int((~np.isfinite(audio)).sum())
    print(f"sdga-play soak: {args.seconds:g} s, block {args.block_size}, {args.voices} voices, JACK dummy 48 kHz; "
          f"{f'real-time scheduling (jackd -P {args.jack_priority})' if args.realtime else 'no real-time scheduling'}; "
          f"exit code {code}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"  sent: {notes} notes (+bends), {osc_sent} OSC latent changes"
          + (f"; set list of 2 songs, {switches} program changes sent, {stats['set']['switches']} switches applied"
             if args.set else ""))
    print(f"  underflows after the first second: {stats['underflows'] - stats['startup_underflows']} "
          f"(first second: {stats['startup_underflows']}); late callbacks: {stats['late_callbacks']} of "
          f"{stats['callbacks']}")
    _print_callbacks(stats, args.block_size)
    print(f"  non-finite samples: {nonfinite} of {audio.size}; peak {float(np.abs(audio).max(initial=0)):.3f}; "
          f"recording dropped blocks: {stats['record']['dropped_blocks']}")
    print(f"  events applied {stats['events']}, dropped {stats['dropped_events']}; engine errors "
          f"{stats['engine_errors']}; MIDI malformed {stats['midi']['malformed']}; OSC refused {stats['osc']['errors']}")
    if rss:
        trace = ", ".join(f"{t:.0f}s {m:.1f}" for t, m in rss)
        print(f"  RSS (MB): start {rss[0][1]:.1f}, end {rss[-1][1]:.1f} (change {rss[-1][1] - rss[0][1]:+.1f}); "
              f"trace: {trace}; at exit, stream closed: {stats['rss_mb']:.1f}")
    return _print_accounting(work, args, stats, probe_stalls, code, lines)


if __name__ == "__main__":
    sys.exit(main())
