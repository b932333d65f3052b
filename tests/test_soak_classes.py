"""The soak benchmark's accounting (benchmarks/bench_soak.py): each underflow lands in exactly one class, sdga's
own causes (a garbage collection in the audio thread, a callback longer than the block on the CPU) before the
machine's, and the machine's (a probe-seen stall, jackd's driver waking late, time stolen from a callback) apart
from the rest; jackd's log lines carry the time they were written, on the clock the callbacks use."""
from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from test_jack_dummy import fake_binaries  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_soak", ROOT / "benchmarks" / "bench_soak.py")
bench_soak = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_soak)

BUDGET_MS = 1000.0 * 128 / 48000


def row(t: float, **fields) -> dict:
    base = {"perf_counter": t, "compute_ms": 0.5, "start_delay_ms": 0.0, "underflow": False, "voluntary_before": 1,
            "involuntary_before": 0, "voluntary_during": 0, "involuntary_during": 0, "cpu_ms": 0.5,
            "run_queue_before_ms": 0.0, "run_queue_during_ms": 0.0}
    return {**base, **fields}


def test_each_underflow_gets_the_first_class_that_explains_it():
    cases = {   # underflow at t + 0.01; its callback (and the evidence) at t
        "collected": ([row(1.0, compute_ms=3.0, cpu_ms=3.0)], [], [], [{"perf_counter": 1.0, "ms": 2.5,
                                                                         "generation": 1, "in_callback_thread": True}]),
        "overran": ([row(2.0, compute_ms=3.0, cpu_ms=2.9)], [(2.005, 2.0)], [], []),      # ours, though a probe saw it
        "stall": ([row(3.0, compute_ms=3.0, cpu_ms=0.5)], [(3.005, 2.0)], [], []),
        "driver late": ([row(4.0, start_delay_ms=2.0)], [], [(4.0, 2.0)], []),
        "stolen": ([row(5.0, compute_ms=2.9, cpu_ms=0.6)], [], [], []),
        "waited": ([row(6.0, compute_ms=2.9, cpu_ms=0.6, voluntary_during=1)], [], [(6.0, 0.04)], []),
        "waited ": ([row(6.5, start_delay_ms=2.4, voluntary_before=4)], [], [], []),   # the GIL at its entry
        "preempted": ([row(7.0, compute_ms=2.9, cpu_ms=0.6, run_queue_during_ms=2.2, involuntary_during=3)], [], [], []),
        "queued": ([row(8.0, start_delay_ms=2.0, run_queue_before_ms=1.9)], [], [], []),
        "woken late": ([row(9.0, start_delay_ms=2.0)], [], [], []),
        "finished late": ([row(10.0, start_delay_ms=1.0, compute_ms=2.0, cpu_ms=2.0)], [], [], []),
        "unexplained": ([row(11.0)], [], [], []),
    }
    for expected, (rows, stalls, driver, collections) in cases.items():
        underflow = rows[0]["perf_counter"] + 0.01
        counts = bench_soak.classify_underflows([("SCHED_FIFO 50 on CPU 0", stalls)], rows, [underflow], BUDGET_MS,
                                                collections, driver)
        assert counts[expected.strip()] == 1 and sum(counts.values()) == 1, (expected, counts)
    assert set(bench_soak.MACHINE_CLASSES) == {"stall", "driver late", "stolen"}
    # a real-time audio thread sits above every thread of sdga's own: what took its CPU inside a callback is not sdga
    assert set(bench_soak.machine_classes("real-time (SCHED_FIFO 65)")) == {"stall", "driver late", "stolen", "preempted"}
    assert bench_soak.machine_classes("normal (not real-time)") == bench_soak.machine_classes("") == bench_soak.MACHINE_CLASSES


def test_a_long_callback_in_a_stall_is_the_machines_only_where_the_probe_outranks_the_audio_thread():
    rows = [row(1.0, compute_ms=8.7, cpu_ms=8.7)]             # charged to the thread's clock, but the probe above
    stalls = [("SCHED_FIFO 50 on CPU 1, every 2.67 ms", [(1.008, 6.0)])]      # it was kept off the CPU too
    below = bench_soak.classify_underflows(stalls, rows, [1.01], BUDGET_MS, probe_outranks_audio=False)
    above = bench_soak.classify_underflows(stalls, rows, [1.01], BUDGET_MS, probe_outranks_audio=True)
    assert below["overran"] == 1 and above["stall"] == 1
    assert bench_soak.probe_outranks(stalls, "real-time (SCHED_FIFO 5)")
    assert not bench_soak.probe_outranks(stalls, "real-time (SCHED_FIFO 65)")
    assert bench_soak.probe_outranks(stalls, "normal (not real-time)")
    assert not bench_soak.probe_outranks([("normal priority on CPU 0", [])], "normal (not real-time)")
    assert not bench_soak.probe_outranks(stalls, "")


def test_old_rows_without_the_cpu_clock_still_classify():
    old = {k: v for k, v in row(1.0, involuntary_during=2).items()
           if k not in ("cpu_ms", "run_queue_before_ms", "run_queue_during_ms")}
    counts = bench_soak.classify_underflows([], [old], [1.01], BUDGET_MS)
    assert counts["preempted"] == 1


def test_jackd_log_lines_are_stamped_with_the_time_they_were_written(tmp_path, monkeypatch):
    """A stand-in jackd that logs a driver xrun, then runs until stopped: the stamped line parses back with a
    time between the server's start and its end."""
    from jack_dummy import jack_dummy_server

    script = ("echo 'JackTimedDriver::Process XRun = 2480 usec'\n"
              "trap 'exit 0' TERM\nwhile true; do sleep 0.05; done")
    monkeypatch.setenv("PATH", fake_binaries(tmp_path / "bin", {"jackd": script, "jack_lsp": "echo system:playback_1"}))
    log = tmp_path / "jackd.log"
    began = time.perf_counter()
    with jack_dummy_server("sdga_fake_stamp", log_path=log, timeout_s=5.0, stamp_log=True, _release=False):
        time.sleep(0.3)
    ended = time.perf_counter()
    [(when, late_ms)] = bench_soak.driver_late_times(log)
    assert began <= when <= ended and late_ms == 2.48


def test_the_null_player_is_the_players_audio_output_without_an_engine():
    """The floor the soak compares against runs through the same AudioOutput (and its diagnostics) as sdga-play:
    its engine drains the events, writes zeros and spends the time it is told to."""
    from types import SimpleNamespace

    import numpy as np

    from instrument.engine.events import EventQueue, NoteOn
    from instrument.io.audio import AudioOutput

    queue = EventQueue()
    engine = bench_soak._NullEngine(128, busy_ms=0.3)
    audio = AudioOutput(engine, queue, diagnose=True)
    out = np.ones((128, 2), np.float32)
    for k in range(400):                       # past the first second's start-up underflows (375 blocks)
        queue.push(NoteOn(60, 100))
        audio._callback(out, 128, None, SimpleNamespace(output_underflow=k == 390))
    assert engine.events == 400 and not out.any()
    assert audio.stats.callbacks == 400 and audio.stats.underflows == 1
    assert min(audio.recent_loads()) >= 0.3 / BUDGET_MS
    rows = audio.callback_diagnostics()
    assert any(r["underflow"] for r in rows) and all("cpu_ms" in r for r in rows)
    summary = audio.summary()                  # what sdga-play's --stats-json and the null player's stats both carry
    assert summary["underflows"] == 1 and summary["callback_diagnostics"] == rows and len(summary["underflow_times"]) == 1
