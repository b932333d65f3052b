"""Contract of the control page's server (instrument/io/web.py) without a browser: message decoding, the
security checks, the page layout read from the tables, and a server in this process driven by aiohttp's
WebSocket client (slider -> router -> event queue / ramps; a knob moved elsewhere -> every page)."""
from __future__ import annotations

import asyncio
import json
import time

import mido
import pytest

aiohttp = pytest.importorskip("aiohttp")

from instrument.controls.routing import default_router  # noqa: E402
from instrument.engine.events import PARAMS, LatentSet, NoteOn, ParamSet, Param, EventQueue  # noqa: E402
from instrument.io.web import (MAX_MESSAGE_BYTES, PARAM_GROUPS, STATIC_DIR, WebMessageError, WebServer,  # noqa: E402
                               decode_message, page_layout, refusal)
from instrument.model.bundle import random_bundle  # noqa: E402


# ---------------------------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("text, expected", [
    ('{"a": "/sdga/target/latent/0", "v": [0.25]}', ("/sdga/target/latent/0", (0.25,))),
    ('{"a": "/sdga/note_on", "v": [60, 100]}', ("/sdga/note_on", (60, 100))),
    ('{"a": "/sdga/panic"}', ("/sdga/panic", ())),
    ('{"a": "/sdga/patch", "v": ["glass"]}', ("/sdga/patch", ("glass",))),
])
def test_good_messages_decode_to_osc(text, expected):
    assert decode_message(text) == expected


@pytest.mark.parametrize("text", [
    "not json", "[1, 2]", '"text"', "{}", '{"a": 3}', '{"a": "/other/x", "v": [1]}',
    '{"a": "/sdga/nowhere", "v": [1]}',                     # not in the OSC address table
    '{"a": "/sdga/target/latent/0", "v": 0.5}',             # args not a list
    '{"a": "/sdga/target/latent/0", "v": [true]}',          # a bool is not a number
    '{"a": "/sdga/target/latent/0", "v": [[1]]}',
    '{"a": "/sdga/target/latent/0", "v": [1, 2, 3, 4, 5]}',
    '{"a": "/sdga/target/latent/0", "v": [1], "x": 1}',     # unknown key
    '{"a": "/sdga/target/latent/0", "v": [NaN]}',
    '{"a": "/sdga/save", "v": ["%s"]}' % ("x" * 300),
    '{"a": "/sdga/target/latent/0", "v": [0.5], "pad": "%s"}' % ("x" * MAX_MESSAGE_BYTES),
    b'{"a": "/sdga/panic"}',                                 # binary frames are refused
])
def test_bad_messages_are_refused(text):
    with pytest.raises(WebMessageError):
        decode_message(text)


# ---------------------------------------------------------------------------------------------- security
@pytest.mark.parametrize("host, origin, given, token, loopback, refused", [
    ("127.0.0.1:8080", "http://127.0.0.1:8080", None, None, True, False),
    ("localhost:8080", "http://localhost:8080", None, None, True, False),
    ("127.0.0.1:8080", None, None, None, True, False),                  # not a browser: no Origin
    ("127.0.0.1:8080", "http://evil.example", None, None, True, True),  # another site's page
    ("127.0.0.1:8080", "http://127.0.0.1:9999", None, None, True, True),
    ("127.0.0.1:8080", "null", None, None, True, True),                 # a sandboxed or file:// page
    ("evil.example:8080", "http://evil.example:8080", None, None, True, True),   # DNS rebinding
    ("192.168.1.5:8080", "http://192.168.1.5:8080", "s3cret", "s3cret", False, False),
    ("192.168.1.5:8080", "http://192.168.1.5:8080", None, "s3cret", False, True),
    ("192.168.1.5:8080", "http://192.168.1.5:8080", "wrong", "s3cret", False, True),
    ("192.168.1.5:8080", "http://evil.example", "s3cret", "s3cret", False, True),
    (None, None, None, None, True, True),
])
def test_refusal(host, origin, given, token, loopback, refused):
    assert bool(refusal(host, origin, given, token, loopback)) == refused


# ---------------------------------------------------------------------------------------------- layout
def test_param_groups_hold_every_engine_parameter_once():
    names = [name for _, group in PARAM_GROUPS for name in group]
    assert sorted(names) == sorted(p.name for p in PARAMS) and len(names) == len(set(names))


def test_page_layout_follows_the_model_and_the_target_table():
    bundle = random_bundle(seed=0)
    router = default_router(bundle=bundle)
    layout = page_layout(bundle, router.mapping.targets, "m.sdga")
    assert [l["name"] for l in layout["latents"]] == bundle.latent_names
    assert [l["active"] for l in layout["latents"]] == [l.active for l in bundle.latents]
    assert all(0 <= l["corpus"][0] <= l["mean"] <= l["corpus"][1] <= 1 for l in layout["latents"])
    rows = {p["target"]: p for g in layout["groups"] for p in g["params"]}
    assert rows["release_ms"]["unit"] == "ms" and rows["voice_mode"]["choices"] == ["poly", "mono", "legato"]
    assert layout["card"]["model"] == "m.sdga" and layout["card"]["latent_dim"] == bundle.config.latent_dim
    json.dumps(layout)                         # all of it goes to the page


def test_static_page_is_self_contained():
    """No build step and nothing fetched from elsewhere: every file the page loads is in web_static/."""
    html = (STATIC_DIR / "index.html").read_text()
    for name in ("app.js", "style.css"):
        assert f"/static/{name}" in html and (STATIC_DIR / name).is_file()
    for f in STATIC_DIR.iterdir():
        assert "http://" not in f.read_text() and "https://" not in f.read_text(), f


# ---------------------------------------------------------------------------------------------- a server
@pytest.fixture
def served():
    bundle = random_bundle(seed=0)
    router = default_router(bundle=bundle)
    queue = EventQueue()
    server = WebServer(router, queue, bundle, port=0, state=lambda: {"underflows": 0}, poll_s=0.01).start()
    try:
        yield server, router, queue
    finally:
        server.close()
        router.close()


def _run(coro, timeout=20.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def _until(ws, kind: str, predicate=lambda m: True):
    while True:
        m = await ws.receive_json()
        if m["t"] == kind and predicate(m):
            return m


def test_a_slider_goes_through_the_router_and_reaches_every_page(served):
    server, router, queue = served
    url = f"http://127.0.0.1:{server.port}/ws"

    async def session():
        async with aiohttp.ClientSession() as s, s.ws_connect(url) as a, s.ws_connect(url) as b:
            hello = await a.receive_json()
            await b.receive_json()
            assert hello["t"] == "hello" and "latent/0" in hello["values"] and "release_ms" in hello["values"]
            await a.send_str(json.dumps({"a": "/sdga/target/latent/1", "v": [0.8]}))
            await a.send_str(json.dumps({"a": "/sdga/target/release_ms", "v": [1.0]}))
            m = await _until(b, "values", lambda m: "release_ms" in m["values"])
            return m

    m = _run(session())
    assert m["values"]["release_ms"] == [1.0, PARAMS[Param.RELEASE_MS].high]
    events = list(queue.drain())
    assert LatentSet(1, 0.8, knob=True) in events      # the router is not prepared here: no ramp, at once
    assert ParamSet(int(Param.RELEASE_MS), PARAMS[Param.RELEASE_MS].high) in events
    assert server.stats.received == 2 and server.stats.malformed == 0


def test_a_slider_is_smoothed_like_any_controller(served):
    """With the router prepared (as in sdga-play) a slider move posts a ramp: no event at once, then one event
    per control frame gliding to the value, as a MIDI CC does."""
    server, router, queue = served
    router.prepare(48000, 128)
    server.handle_text(json.dumps({"a": "/sdga/target/latent/0", "v": [1.0]}))
    assert list(queue.drain()) == []
    values = [e.value for _ in range(40) for e in router.block_events((), 128) if isinstance(e, LatentSet)]
    assert len(values) > 3 and values == sorted(values) and values[-1] == pytest.approx(1.0)


def test_a_midi_cc_moves_the_slider_on_the_page_within_50_ms(served):
    server, router, queue = served
    url = f"http://127.0.0.1:{server.port}/ws"

    async def session():
        async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
            await ws.receive_json()
            sent = time.perf_counter()
            router.midi(mido.Message("control_change", control=70, value=127))    # CC 70 -> latent/0 by default
            await _until(ws, "values", lambda m: m["values"].get("latent/0", [0])[0] == 1.0)
            return time.perf_counter() - sent

    assert _run(session()) < 0.05


def test_bad_messages_are_counted_and_dropped(served):
    server, router, queue = served
    url = f"http://127.0.0.1:{server.port}/ws"

    async def session():
        async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
            await ws.receive_json()
            await ws.send_str("{broken")
            await ws.send_str("x" * (MAX_MESSAGE_BYTES + 1))
            await ws.send_bytes(b"\x00\x01")
            await ws.send_str(json.dumps({"a": "/sdga/target/no_such_target", "v": [0.5]}))   # router refuses
            await ws.send_str(json.dumps({"a": "/sdga/note_on", "v": [60, 100]}))
            await asyncio.sleep(0.2)
            return ws.closed

    assert _run(session()) is False             # the page stays connected
    assert server.stats.malformed == 3 and server.stats.errors == 1 and server.stats.received == 2
    assert list(queue.drain()) == [NoteOn(60, 100)]


def test_foreign_origin_and_wrong_token_are_refused():
    bundle = random_bundle(seed=0)
    router = default_router(bundle=bundle)
    with WebServer(router, EventQueue(), bundle, port=0, token="tok") as server:
        base = f"http://127.0.0.1:{server.port}/ws"

        async def status(url, headers=None):
            async with aiohttp.ClientSession() as s:
                try:
                    async with s.ws_connect(url, headers=headers or {}) as ws:
                        return (await ws.receive_json())["t"]
                except aiohttp.WSServerHandshakeError as exc:
                    return exc.status

        assert _run(status(base)) == 403
        assert _run(status(base + "?token=nope")) == 403
        assert _run(status(base + "?token=tok", {"Origin": "http://evil.example"})) == 403
        assert _run(status(base + "?token=tok", {"Origin": f"http://127.0.0.1:{server.port}"})) == "hello"
        assert server.stats.refused == 3
    router.close()


def test_a_port_in_use_is_an_oserror(served):
    server, router, queue = served
    with pytest.raises(OSError):
        WebServer(router, queue, server.bundle, port=server.port).start()


def test_learn_from_the_page_arms_the_router(served):
    server, router, queue = served
    server.handle_text(json.dumps({"a": "/sdga/learn", "v": ["latent/2"]}))
    assert router.learning == "latent/2" and server.hello()["state"]["learning"] == "latent/2"
    server.handle_text(json.dumps({"a": "/sdga/learn/cancel"}))
    assert router.learning is None


def test_sdga_play_off_loopback_wants_the_printed_token(capsys):
    """``--web-host 0.0.0.0``: a random token, printed as a URL at start; the WebSocket refuses a page without
    it. On loopback: no token."""
    from types import SimpleNamespace

    from instrument.apps.play import _open_web

    bundle = random_bundle(seed=0)
    router = default_router(bundle=bundle)
    session = SimpleNamespace(router=router, queue=EventQueue(), bundle=bundle, audio=None, engine=None)
    logged: list[str] = []                                 # (no audio: the state callback fails, the page says so)
    for host in ("127.0.0.1", "0.0.0.0"):
        web = _open_web(SimpleNamespace(web=0, web_host=host), session, "m.sdga", logged.append)
        try:
            url = f"http://127.0.0.1:{web.port}/ws"

            async def status(query: str):
                async with aiohttp.ClientSession() as s:
                    try:
                        async with s.ws_connect(url + query) as ws:
                            return (await ws.receive_json())["t"]
                    except aiohttp.WSServerHandshakeError as exc:
                        return exc.status

            if host == "127.0.0.1":
                assert web.token is None and _run(status("")) == "hello"
            else:
                err = capsys.readouterr().err
                assert web.token and len(web.token) >= 16 and f"?token={web.token}" in err
                assert _run(status("")) == 403 and _run(status("?token=x")) == 403
                assert _run(status(f"?token={web.token}")) == "hello"
        finally:
            web.close()
    assert any("web: control page at http://127.0.0.1:" in line for line in logged)
    router.close()
