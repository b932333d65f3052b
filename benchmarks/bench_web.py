"""Latency of the control page (``sdga-play --web``), and what its traffic costs the sound.

    .venv/bin/python benchmarks/bench_web.py [--moves 200] [--soak SECONDS]

Latency (in this process, on the page's own protocol: an aiohttp WebSocket client sends what the page's slider
sends): a :class:`~instrument.io.web.WebServer` over the default router, prepared as sdga-play prepares it
(smoothing on), and a stand-in audio callback, a thread that every block (128 frames at 48 kHz, 2.67 ms) takes
``router.ramps.block_events(queue.drain(), 128)`` as the real callback does. Measured:

- slider -> engine event: from the client's send of ``/sdga/target/latent/0`` to the first ``LatentSet`` of
  that move in a block handed to the engine (includes the wait for the next block; the ramp then glides over
  the smoothing time, as for any controller);
- knob moved elsewhere -> page: from ``router.midi`` (a CC, on its thread) to the page's ``values`` message.

A browser adds at most one animation frame (the page sends a slider's value once per frame) and its own
event loop; those are not in these figures.

``--soak S [--rounds N]``: sdga-play on a private JACK dummy server for S seconds, with its web server on and
(``SOAK_KINDS``) nothing moving, OSC moving latent/0 30 times a second, a page moving it 30 times a second;
alternated N times. Prints each run's underflows (after the first second), callback load, sdga-play's CPU and
its web thread's.
"""
from __future__ import annotations

import argparse
import asyncio
import json
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

BLOCK, SR = 128, 48000


def percentiles(xs_s: list[float]) -> str:
    ms = np.asarray(xs_s) * 1000.0
    return (f"median {np.median(ms):.2f} ms, p99 {np.percentile(ms, 99):.2f} ms, max {ms.max():.2f} ms "
            f"(n={len(ms)})")


def latency(moves: int) -> None:
    import aiohttp
    import mido

    from instrument.controls.mapping import DEFAULT_SMOOTH_MS
    from instrument.controls.routing import default_router
    from instrument.engine.engine import Engine
    from instrument.engine.events import EventQueue, LatentSet
    from instrument.io.web import WebServer
    from instrument.model.bundle import random_bundle

    bundle = random_bundle(seed=0)
    engine = Engine(bundle)
    engine.prepare(SR, BLOCK, 8)
    router = default_router(bundle=bundle)
    router.prepare(SR, engine.hop_size)
    queue = EventQueue(4096)
    z0 = bundle.latents[0].index
    seen = threading.Event()
    seen_at = [0.0]
    stop = threading.Event()

    def callback() -> None:                 # the audio thread's part: paced blocks, events to the engine
        period = BLOCK / SR
        next_t = time.perf_counter()
        while not stop.is_set():
            events = list(router.ramps.block_events(queue.drain(), BLOCK))
            if not seen.is_set() and any(isinstance(e, LatentSet) and e.index == z0 for e in events):
                seen_at[0] = time.perf_counter()
                seen.set()
            next_t += period
            time.sleep(max(0.0, next_t - time.perf_counter()))

    audio = threading.Thread(target=callback, daemon=True)
    audio.start()
    settle_s = DEFAULT_SMOOTH_MS / 1000.0 + 0.03     # let each ramp finish before the next move
    to_engine, to_page = [], []
    with WebServer(router, queue, bundle, port=0) as server:
        url = f"http://127.0.0.1:{server.port}/ws"

        async def run() -> None:
            async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
                await ws.receive_json()
                rng = np.random.default_rng(0)
                for i in range(moves):
                    knob = round(float(rng.uniform(0.05, 0.95)), 3)
                    seen.clear()
                    sent = time.perf_counter()
                    await ws.send_str(json.dumps({"a": "/sdga/target/latent/0", "v": [knob]}))
                    while not seen.is_set():
                        await asyncio.sleep(0.0002)
                    to_engine.append(seen_at[0] - sent)
                    await asyncio.sleep(settle_s)
                    while True:                       # drain the echoes of this move
                        try:
                            await asyncio.wait_for(ws.receive_json(), 0.005)
                        except asyncio.TimeoutError:
                            break
                    value = 127 if i % 2 else 0       # CC 71 -> latent/1, from "another thread" (here: a thread)
                    moved = time.perf_counter()
                    threading.Thread(target=router.midi,
                                     args=(mido.Message("control_change", control=71, value=value),)).start()
                    while True:
                        m = await ws.receive_json()
                        if m["t"] == "values" and m["values"].get("latent/1", [None])[0] == value / 127:
                            to_page.append(time.perf_counter() - moved)
                            break
                    await asyncio.sleep(settle_s)

        asyncio.run(run())
    stop.set()
    audio.join()
    router.close()
    print(f"slider -> engine event: {percentiles(to_engine)}")
    print(f"CC elsewhere -> page:   {percentiles(to_page)}")
    print(f"(block {1000 * BLOCK / SR:.2f} ms, value poll {1000 * server.poll_s:.0f} ms, smoothing "
          f"{DEFAULT_SMOOTH_MS:g} ms after the first event)")


def thread_cpu_s(pid: int, name: str) -> float:
    """CPU seconds (user + system) the threads called ``name`` of process ``pid`` have used."""
    import os

    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "comm").read_text().strip() == name:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
    return total


def process_cpu_s(pid: int) -> float:
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SOAK_KINDS = ("idle", "osc", "page")     # nothing moves; OSC moves the slider's target 30/s; a page does


def soak(seconds: float, rounds: int = 1) -> None:
    import aiohttp
    from pythonosc.udp_client import SimpleUDPClient

    from jack_dummy import jack_dummy_server
    from instrument.model.bundle import random_bundle, save_bundle

    def knob_at(t: float) -> float:
        return round(0.5 + 0.45 * float(np.sin(2 * np.pi * 0.5 * t)), 4)

    with tempfile.TemporaryDirectory() as tmp, jack_dummy_server("sdga_bench_web", SR, BLOCK) as env:
        model = save_bundle(Path(tmp) / "model.sdga", random_bundle(seed=0))
        for kind in SOAK_KINDS * rounds:          # alternated: the machine's load drifts
            stats = Path(tmp) / f"stats_{kind}.json"
            process = subprocess.Popen([sys.executable, "-m", "instrument.apps.play", str(model), "--device", "JACK",
                                        "--osc-port", "0", "--web", "0", "--duration", str(seconds), "--quiet",
                                        "--stats-json", str(stats)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
            url, osc_port = None, None
            for line in process.stdout:
                if "web: control page at" in line:
                    url = line.split()[-1]
                if "OSC: listening on udp" in line:
                    osc_port = int(line.split()[4].rsplit(":", 1)[1])
                if "playing" in line:
                    break
            cpu0, t0 = process_cpu_s(process.pid), time.monotonic()
            moves = 0
            if kind == "page":
                async def drive() -> int:
                    n = 0
                    async with aiohttp.ClientSession() as s, s.ws_connect(url.replace("http", "ws") + "ws") as ws:
                        while process.poll() is None and time.monotonic() - t0 < seconds - 1:
                            await ws.send_str(json.dumps({"a": "/sdga/target/latent/0",
                                                          "v": [knob_at(time.monotonic() - t0)]}))
                            n += 1
                            await asyncio.sleep(1 / 30)
                    return n
                moves = asyncio.run(drive())
            elif kind == "osc":
                client = SimpleUDPClient("127.0.0.1", osc_port)
                while process.poll() is None and time.monotonic() - t0 < seconds - 1:
                    client.send_message("/sdga/target/latent/0", knob_at(time.monotonic() - t0))
                    moves += 1
                    time.sleep(1 / 30)
            else:
                time.sleep(max(0.0, seconds - 1))
            cpu = (process_cpu_s(process.pid) - cpu0) / (time.monotonic() - t0)
            web_cpu = thread_cpu_s(process.pid, "sdga-web")
            process.stdout.read()
            process.wait()
            s = json.loads(stats.read_text())
            print(f"{kind:5s}: {s['seconds']:.1f} s, underflows {s['underflows'] - s['startup_underflows']} (after "
                  f"the first second), callback load median {100 * s['load_median']:.1f} % p99 "
                  f"{100 * s['load_p99']:.1f} %, late {s['late_callbacks']}, moves {moves}, sdga-play CPU "
                  f"{100 * cpu:.0f} % of a core, its web thread {web_cpu:.2f} s ({100 * web_cpu / s['seconds']:.1f} %)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--moves", type=int, default=200)
    p.add_argument("--soak", type=float, default=0.0, metavar="SECONDS")
    p.add_argument("--rounds", type=int, default=1, help="soak runs of each kind, alternated (default 1)")
    p.add_argument("--no-latency", action="store_true")
    args = p.parse_args()
    with open("/proc/loadavg") as f:
        print(f"load average: {f.read().split()[0]} on {__import__('os').cpu_count()} CPUs")
    if not args.no_latency:
        latency(args.moves)
    if args.soak > 0:
        soak(args.soak, args.rounds)


if __name__ == "__main__":
    main()
