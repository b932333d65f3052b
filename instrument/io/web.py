"""Web transport: the control page (``sdga-play MODEL --web``) and its WebSocket, on aiohttp.

One thread (``sdga-web``) runs its own asyncio loop with an aiohttp server: ``GET /`` is the static page
shipped in ``instrument/io/web_static/`` (plain HTML/JS/CSS, nothing fetched from elsewhere), ``GET /ws`` the
WebSocket. What a page sends is an OSC message written as JSON, ``{"a": "/sdga/target/latent/0", "v": [0.4]}``:
the same router call as the OSC server (``router.osc``), so a slider gets the same target table, smoothing and
patch recall as any controller; the events it returns go to the :class:`~instrument.engine.events.EventQueue`.
The web thread only enqueues and reads counters: it never touches the audio callback's state.

Two-way: every ``POLL_S`` the thread compares the router's ``values`` (the value each target was last sent
towards, written by MIDI, OSC, patch recall and the pages alike) with what the pages were last told, and sends
the changes to every open page; the live state (callback load, underflows, voices) goes out ``STATE_S``.

Security (:func:`refusal`): the server listens on loopback unless told otherwise; a WebSocket whose ``Origin``
is not the page's own host is refused (a page of another site open in the same browser cannot drive the
instrument), on loopback so is a ``Host`` that is not a loopback name (DNS rebinding); with a ``token`` (required
off loopback: :func:`new_token`) ``/ws`` wants ``?token=``. Malformed, oversized or binary messages are counted
(``malformed``) and dropped.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import math
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from instrument.controls.addresses import OscError, match_address
from instrument.engine.events import EventQueue

__all__ = ["WebServer", "WebMessageError", "decode_message", "refusal", "page_layout", "PARAM_GROUPS",
           "STATIC_DIR", "DEFAULT_WEB_PORT", "MAX_MESSAGE_BYTES", "new_token", "is_loopback"]

STATIC_DIR = Path(__file__).resolve().parent / "web_static"
DEFAULT_WEB_PORT = 8080
MAX_MESSAGE_BYTES = 1024          # one JSON message; longer ones are counted and dropped
MAX_ARGS = 4
POLL_S = 0.02                     # values -> pages: a knob moved elsewhere shows within ~20 ms + network
STATE_S = 0.25                    # live state -> pages

# The engine parameters grouped as a player thinks of them; every PARAMS name appears once (tests hold it).
PARAM_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("envelope", ("attack_ms", "decay_ms", "sustain_db", "release_ms", "velocity_sensitivity")),
    ("expression", ("expression", "vibrato_depth", "attack_time_scale", "release_time_scale", "level_offset_db")),
    ("gains", ("harmonic_gain_db", "noise_gain_db", "output_gain_db")),
    ("voices", ("voice_mode", "glide_ms", "midi_channel")),
    ("pitch", ("bend_range_semitones", "pitch_shift_semitones", "tuning_a4_hz")),
    ("MPE", ("mpe_zone", "mpe_members", "mpe_bend_range_semitones", "mpe_pressure_db", "mpe_timbre_latent",
             "mpe_pressure_latent")),
)


class WebMessageError(ValueError):
    """A page message that does not decode (counted as malformed and dropped)."""


# ---------------------------------------------------------------------------------------------- decoding
def decode_message(text: str | bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> tuple[str, tuple]:
    """One page message -> (OSC address, args) for ``router.osc``. The address must be in the OSC address
    table (:mod:`instrument.controls.addresses`); args are at most ``MAX_ARGS`` finite numbers or short texts.
    Raises :class:`WebMessageError`."""
    if isinstance(text, (bytes, bytearray)):
        raise WebMessageError("binary message")
    if len(text) > max_bytes:
        raise WebMessageError(f"message of {len(text)} characters (at most {max_bytes})")
    try:
        message = json.loads(text)
    except ValueError as exc:
        raise WebMessageError(f"not JSON: {exc}") from None
    if not isinstance(message, dict) or set(message) - {"a", "v"}:
        raise WebMessageError("a message is an object {\"a\": address, \"v\": [args]}")
    address, args = message.get("a"), message.get("v", [])
    if not isinstance(address, str) or not address.startswith("/sdga/"):
        raise WebMessageError(f"bad address {address!r}")
    if not isinstance(args, list) or len(args) > MAX_ARGS:
        raise WebMessageError(f"args must be a list of at most {MAX_ARGS}")
    for arg in args:
        if isinstance(arg, bool) or not isinstance(arg, (int, float, str)):
            raise WebMessageError(f"bad argument {arg!r}")
        if isinstance(arg, float) and not math.isfinite(arg):
            raise WebMessageError("arguments must be finite")
        if isinstance(arg, str) and len(arg) > 200:
            raise WebMessageError("text argument too long")
    try:
        match_address(address)
    except OscError as exc:
        raise WebMessageError(str(exc)) from None
    return address, tuple(args)


# ---------------------------------------------------------------------------------------------- security
def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(16)


def _hostname(netloc: str) -> str:
    return (urlsplit(f"//{netloc}").hostname or "").lower()


def refusal(host: str | None, origin: str | None, token_given: str | None, token: str | None,
            loopback_only: bool) -> str:
    """Why a WebSocket request is refused ('' when it is let in). ``host``: its Host header; ``origin``: its
    Origin header (browsers always send one; a client without one is not a web page and is judged by the token
    alone); ``token``: the one the server wants (None: none); ``loopback_only``: the server listens on loopback."""
    if not host:
        return "no Host header"
    if loopback_only and not is_loopback(_hostname(host)):
        return f"Host {host!r} is not a loopback name"
    if origin is not None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or parts.netloc.lower() != host.lower():
            return f"foreign Origin {origin!r}"
    if token is not None and not hmac.compare_digest((token_given or "").encode(), token.encode()):
        return "missing or wrong token"
    return ""


# ---------------------------------------------------------------------------------------------- page data
# What of the model file's training record the card shows (``heldout`` is the held-out metrics, all of them).
CARD_TRAINING_KEYS = ("steps", "fit_seconds", "best_val_loss", "beta", "split", "date", "untrained", "heldout")


def _scalar_items(d: dict, depth: int = 0) -> dict:
    out = {}
    for key, value in (d or {}).items():
        if isinstance(value, float) and math.isfinite(value):
            out[str(key)] = float(f"{value:.4g}")
        elif isinstance(value, (bool, int, str)):
            out[str(key)] = value
        elif isinstance(value, dict) and depth == 0:
            out.update({f"{key}.{k}": v for k, v in _scalar_items(value, 1).items()})
    return out


def page_layout(bundle, targets: dict, model_name: str = "") -> dict:
    """What the page draws, from the model's latent table and the router's target table: one knob per latent
    (importance order; inactive ones flagged, the page hides them) with its corpus band as knob positions (where
    the corpus's 5th..95th percentile lies on the knob, for a model whose knobs were found by intervention;
    else its corpus mean +-2 std), the engine parameters in :data:`PARAM_GROUPS` with unit, range, curve and choices, the model card."""
    latents = []
    for rank, info in enumerate(bundle.latents):
        span = info.high - info.low
        knob = (lambda z: min(max((z - info.low) / span, 0.0), 1.0)) if span else (lambda z: 0.5)
        latents.append({"target": f"latent/{rank}", "name": info.name, "index": info.index, "active": info.active,
                        "kl_nats": round(float(info.kl_nats), 4), "mean": knob(info.mean),
                        "corpus": ([knob(info.mean - 2 * info.std), knob(info.mean + 2 * info.std)]
                                   if getattr(info, "corpus_low", None) is None
                                   else [float(info.corpus_low), float(info.corpus_high)]),
                        "low_z": info.low, "high_z": info.high})
    groups = []
    for group, names in PARAM_GROUPS:
        rows = []
        for name in names:
            t = targets[name]
            rows.append({"target": name, "unit": t.unit, "low": t.low, "high": t.high, "curve": t.curve,
                         "default": t.default, "choices": list(t.choices), "doc": t.doc})
        groups.append({"name": group, "params": rows})
    corpus = bundle.corpus
    card = {"model": model_name, "latent_dim": bundle.config.latent_dim, "sample_rate": bundle.config.sample_rate,
            "corpus files": corpus.files, "corpus minutes": round(corpus.minutes, 2),
            "f0 range hz": None if corpus.f0_range_hz is None else [round(x, 1) for x in corpus.f0_range_hz],
            "loudness range db": [round(x, 1) for x in corpus.loudness_range_db],
            **{f"training {k}": v for k, v in _scalar_items(bundle.metadata.get("training", {})).items()
               if k.split(".")[0] in CARD_TRAINING_KEYS}}
    return {"latents": latents, "groups": groups, "card": card}


@dataclass
class WebStats:
    connections: int = 0           # pages that connected (ever)
    refused: int = 0               # WebSocket requests refused (origin, host, token)
    received: int = 0              # messages routed
    malformed: int = 0             # messages dropped: bad JSON, unknown address, oversized, binary
    errors: int = 0                # messages the router refused
    sent: int = 0                  # messages sent to pages
    last_error: str = ""


# ---------------------------------------------------------------------------------------------- server
def _name_os_thread(name: bytes) -> None:
    """Give the calling thread its name in the OS too (top -H, /proc/PID/task/*/comm; Linux), best effort."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, ctypes.c_char_p(name[:15]), 0, 0, 0)     # PR_SET_NAME
    except Exception:
        pass


class WebServer:
    """The control page's server on ``host:port`` (port 0: any free port, see :attr:`port`) in its own thread.

    ``router``: a :class:`~instrument.controls.router.MappingRouter` (``osc``, ``values``, ``mapping``);
    ``queue``: where its events go; ``state``: a callable returning a JSON-able dict of live figures (called on
    the web thread, must only read); ``token``: required on ``/ws`` when not None. ``start()`` raises OSError
    when the port cannot be bound."""

    def __init__(self, router, queue: EventQueue, bundle, *, host: str = "127.0.0.1", port: int = DEFAULT_WEB_PORT,
                 token: str | None = None, state: Callable[[], dict] | None = None, model_name: str = "",
                 poll_s: float = POLL_S, state_s: float = STATE_S):
        self.router, self.queue, self.bundle = router, queue, bundle
        self.host, self.port = host, int(port)
        self.token = token
        self.state = state
        self.model_name = model_name
        self.poll_s, self.state_s = float(poll_s), float(state_s)
        self.stats = WebStats()
        self.loopback_only = is_loopback(host)
        self._clients: set = set()
        self._told: dict[str, list[float]] = {}      # target name -> [knob, value] the pages were last sent
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None

    # -------------------------------------------------------------------------------------- lifecycle
    def url(self, host: str | None = None) -> str:
        shown = host or self.host
        if shown in ("0.0.0.0", "::", ""):
            shown = "<this-machine's-address>"
        if ":" in shown and not shown.startswith("["):
            shown = f"[{shown}]"
        return f"http://{shown}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    def start(self) -> "WebServer":
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="sdga-web", daemon=True)
        self._thread.start()
        self._ready.wait(30.0)
        if self._error is not None:
            self._thread.join(5.0)
            self._thread = None
            raise self._error if isinstance(self._error, OSError) else OSError(str(self._error))
        return self

    def close(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and self._thread is not None:
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:        # loop already closed
                pass
            self._thread.join(5.0)
        self._thread = None

    def __enter__(self) -> "WebServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self) -> None:
        _name_os_thread(b"sdga-web")
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:     # bind errors end up in start()
            self._error = exc
        finally:
            self._ready.set()
            loop.close()

    async def _main(self) -> None:
        from aiohttp import web

        self._stop = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/", self._index)
        app.router.add_get("/ws", self._ws)
        app.router.add_static("/static/", STATIC_DIR, show_index=False)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
            await site.start()
            self.port = int(runner.addresses[0][1])
            self._ready.set()
            tasks = [asyncio.create_task(self._poll_values()), asyncio.create_task(self._poll_state())]
            await self._stop.wait()
            for task in tasks:
                task.cancel()
            for ws in list(self._clients):
                await ws.close()
        finally:
            await runner.cleanup()

    # -------------------------------------------------------------------------------------- handlers
    async def _index(self, request):
        from aiohttp import web

        return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def _ws(self, request):
        from aiohttp import WSMsgType, web

        why = refusal(request.headers.get("Host"), request.headers.get("Origin"), request.query.get("token"),
                      self.token, self.loopback_only)
        if why:
            self.stats.refused += 1
            self.stats.last_error = why
            return web.Response(status=403, text=f"refused: {why}\n")
        # aiohttp's own limit (the connection closes) only past 64x ours: a long message is counted and dropped
        ws = web.WebSocketResponse(max_msg_size=64 * MAX_MESSAGE_BYTES, heartbeat=10.0, compress=False)
        await ws.prepare(request)
        self.stats.connections += 1
        self._clients.add(ws)
        try:
            await self._send(ws, self.hello())
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self.handle_text(msg.data)
                elif msg.type in (WSMsgType.BINARY, WSMsgType.ERROR):
                    self._malformed("binary message" if msg.type == WSMsgType.BINARY else f"{ws.exception()}")
        finally:
            self._clients.discard(ws)
        return ws

    def _malformed(self, why: str) -> None:
        self.stats.malformed += 1
        self.stats.last_error = why

    def handle_text(self, text: str) -> None:
        """Decode one page message and route it (the web thread calls this); never raises."""
        try:
            address, args = decode_message(text)
        except WebMessageError as exc:
            self._malformed(str(exc))
            return
        self.stats.received += 1
        try:
            for event in self.router.osc(address, args):
                self.queue.push(event)
        except Exception as exc:                  # OscError, MappingError, a failed recall: refused, counted
            self.stats.errors += 1
            self.stats.last_error = str(exc) or type(exc).__name__

    # -------------------------------------------------------------------------------------- outgoing
    def hello(self) -> dict:
        """The first message to a page: its layout, every value, the patches and the live state."""
        mapping = self.router.mapping
        self._told.update(self.values())
        return {"t": "hello", "layout": page_layout(self.bundle, mapping.targets, self.model_name),
                "values": self.values(), "patches": self._patches(), "state": self._state()}

    def values(self) -> dict[str, list[float]]:
        """{target name: [knob 0..1, value in its unit]} for every latent and parameter target."""
        mapping = self.router.mapping
        values = self.router.values
        for _ in range(3):
            try:
                values = dict(values)           # another thread may insert meanwhile
                break
            except RuntimeError:
                continue
        out = {}
        for key, t in mapping.by_key.items():
            if t.kind not in ("latent", "param"):
                continue
            value = values.get(key, t.default)
            out[t.name] = [round(t.to_knob(value), 5), round(float(value), 5)]
        return out

    def _patches(self) -> dict:
        mapping = self.router.mapping
        return {"names": [p.name for p in mapping.patches], "current": int(self.router.current_patch)}

    def _state(self) -> dict:
        state = {}
        if self.state is not None:
            try:
                state = dict(self.state())
            except Exception as exc:          # a counter not there yet: show nothing rather than fail
                state = {"error": str(exc)}
        state["web"] = {"pages": len(self._clients), "malformed": self.stats.malformed,
                        "refused": self.stats.refused, "errors": self.stats.errors}
        state["learning"] = self.router.learning
        state["messages"] = list(self.router.messages)[-4:]
        return state

    async def _send(self, ws, message: dict) -> None:
        try:
            await ws.send_str(json.dumps(message))
            self.stats.sent += 1
        except Exception:                     # the page went away: its handler ends by itself
            pass

    async def _broadcast(self, message: dict) -> None:
        if self._clients:
            await asyncio.gather(*(self._send(ws, message) for ws in list(self._clients)))

    async def _poll_values(self) -> None:
        patches = None
        while True:
            await asyncio.sleep(self.poll_s)
            if not self._clients:
                continue
            try:
                now = self.values()
                changed = {k: v for k, v in now.items() if self._told.get(k) != v}
                if changed:
                    self._told.update(changed)
                    await self._broadcast({"t": "values", "values": changed, "time": time.time()})
                current = self._patches()
                if current != patches:
                    patches = current
                    await self._broadcast({"t": "patches", "patches": current})
            except Exception as exc:          # never end the loop (a mapping swapped mid-read)
                self.stats.last_error = f"poll: {exc!r}"

    async def _poll_state(self) -> None:
        while True:
            await asyncio.sleep(self.state_s)
            if self._clients:
                await self._broadcast({"t": "state", "state": self._state()})
