"""Contract of the set list file and its router (instrument.controls.setlist): the file is checked whole with file,
line and key; program change, footswitch CCs and /sdga/set/... switch songs (a SongSelect, then the new song's
patch); everything else goes to the active song's router."""
from __future__ import annotations

from pathlib import Path

import mido
import pytest

from instrument.controls.addresses import OscError
from instrument.controls.routing import default_router
from instrument.controls.setlist import SET_KEYS, SONG_KEYS, SetListError, SetRouter, load_setlist
from instrument.engine.events import NoteOn, ParamSet, Param, SongSelect
from instrument.model.bundle import random_bundle, save_bundle


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("set")
    (root / "models").mkdir()
    save_bundle(root / "models" / "a.sdga", random_bundle(seed=0))
    save_bundle(root / "models" / "b.sdga", random_bundle(seed=5))
    (root / "presets").mkdir()
    (root / "presets" / "long.yaml").write_text("name: long\nmodel: ../models/b.sdga\nparams: {release_ms: 900}\n")
    return root


def write(root: Path, text: str, name: str = "set.yaml") -> Path:
    path = root / name
    path.write_text(text)
    return path


GOOD = """version: 1
crossfade_ms: 120
next_cc: 65
prev_cc: 66
songs:
  - {name: opening, model: models/a.sdga}
  - patch: presets/long.yaml
  - {name: coda, model: models/a.sdga}
"""


def test_a_set_list_reads_paths_relative_to_its_file(models):
    s = load_setlist(write(models, GOOD))
    assert [song.name for song in s.songs] == ["opening", "long", "coda"]
    assert s.songs[0].model == models / "models" / "a.sdga" and s.songs[0].patch is None
    assert s.songs[1].model == (models / "presets" / "../models/b.sdga") and s.songs[1].patch.name == "long"
    assert (s.crossfade_ms, s.next_cc, s.prev_cc, s.program_channel) == (120.0, 65, 66, None)
    assert s.songs[1].line == 7
    assert s.index("long") == 1 and s.index(0) == 0
    with pytest.raises(ValueError, match="no song 'lnog' \\(did you mean 'long'\\?\\); 3 songs: 0 opening, 1 long, 2 coda"):
        s.index("lnog")


@pytest.mark.parametrize("text, line, key, words", [
    ("songs:\n  - {model: models/a.sdga}\n  - {model: models/missing.sdga}\n", 3, "songs[1].model",
     "missing.sdga does not exist"),
    ("songs:\n  - {model: models/a.sdga, modle: x}\n", 2, "songs[0].modle", "did you mean 'model'"),
    ("songs:\n  - {name: x}\n", 2, "songs[0].model", "a song needs a model"),
    ("songs: []\n", 1, "songs", "no songs"),
    ("crossfade_ms: slow\nsongs:\n  - {model: models/a.sdga}\n", 1, "crossfade_ms", "must be a number"),
    ("songs:\n  - {model: models/a.sdga}\n  - {model: models/b.sdga, name: a}\n", 3, "songs[1].name", "two songs"),
    ("songs:\n  - {model: models/a.sdga, patch: presets/nope.yaml}\n", 2, "songs[0].patch", "does not exist"),
    ("next_cc: 65\nprev_cc: 65\nsongs:\n  - {model: models/a.sdga}\n", 2, "prev_cc", "the same CC"),
    ("sogns: []\n", 1, "sogns", "did you mean 'songs'"),
])
def test_a_broken_set_list_names_file_line_and_key(models, text, line, key, words):
    path = write(models, text, "broken.yaml")
    with pytest.raises(SetListError) as caught:
        load_setlist(path)
    error = caught.value
    assert (error.file, error.line, error.key) == (str(path), line, key), str(error)
    assert words in str(error) and f"{path}, line {line}: key '{key}'" in str(error)


def test_a_broken_patch_names_the_set_file_and_the_patch_file(models):
    write(models, "model: ../models/a.sdga\nparams: {release_ms: lots}\n", "presets/bad.yaml")
    path = write(models, "songs:\n  - {name: ok, model: models/a.sdga}\n  - {patch: presets/bad.yaml}\n", "bp.yaml")
    with pytest.raises(SetListError) as caught:
        load_setlist(path)
    text = str(caught.value)
    assert f"{path}, line 3: key 'songs[1].patch'" in text
    assert "bad.yaml, line 2: key 'params.release_ms'" in text


def test_the_schema_tables_cover_the_parser(models):
    assert [k.name for k in SET_KEYS] == ["version", "songs", "crossfade_ms", "program_channel", "next_cc", "prev_cc"]
    assert [k.name for k in SONG_KEYS] == ["name", "model", "patch", "mapping"]


@pytest.fixture
def router(models):
    s = load_setlist(write(models, GOOD))
    bundles = [random_bundle(seed=0), random_bundle(seed=5), random_bundle(seed=0)]
    routers = [default_router(bundle=b) for b in bundles]
    for r in routers:
        r.prepare(48000, 128)
    return SetRouter(s, routers)


def test_program_change_selects_a_song_and_recalls_its_patch(router):
    events = router.midi(mido.Message("program_change", program=1))
    assert events[0] == SongSelect(1) and router.active == 1
    assert ParamSet(int(Param.RELEASE_MS), 900.0) in events          # the song's patch, glide 0: at once
    assert router.midi(mido.Message("program_change", program=1)) == []          # already playing
    assert router.midi(mido.Message("program_change", program=9)) == [] and router.active == 1
    assert "no song 9" in router.messages[-1]


def test_footswitch_goes_next_and_previous_on_the_press_only(router):
    cc = lambda n, v: mido.Message("control_change", control=n, value=v)     # noqa: E731
    assert router.midi(cc(65, 127))[0] == SongSelect(1)
    assert router.midi(cc(65, 127)) == [] and router.active == 1     # still held: no second step
    assert router.midi(cc(65, 0)) == []
    assert router.midi(cc(65, 127))[0] == SongSelect(2)
    assert router.midi(cc(65, 0)) == [] and router.midi(cc(65, 127)) == [] and router.active == 2   # the last: stays
    assert router.midi(cc(66, 127))[0] == SongSelect(1) and router.active == 1


def test_osc_set_addresses(router):
    assert router.osc("/sdga/set/song", ("long",))[0] == SongSelect(1)
    assert router.osc("/sdga/set/song", (0,))[0] == SongSelect(0)
    assert router.osc("/sdga/set/next", ())[0] == SongSelect(1)
    assert router.osc("/sdga/set/prev", ())[0] == SongSelect(0)
    with pytest.raises(OscError, match="no song 'closing'"):
        router.osc("/sdga/set/song", ("closing",))
    with pytest.raises(OscError, match="takes name_or_index"):
        router.osc("/sdga/set/song", ())


def test_everything_else_goes_to_the_active_song(router):
    assert router.midi(mido.Message("note_on", note=60, velocity=90)) == [NoteOn(60, 90, 0)]
    assert router.osc("/sdga/note_on", (62, 80)) == [NoteOn(62, 80, 0)]
    router.osc("/sdga/set/song", (1,))
    router.osc("/sdga/target/release_ms", (0.5,))
    assert router.values is router.routers[1].values and router.routers[0].values.get(("param", Param.RELEASE_MS)) \
        is None


def test_without_a_set_list_the_set_addresses_are_refused():
    with pytest.raises(OscError, match="no set list"):
        default_router(bundle=random_bundle(seed=0)).osc("/sdga/set/next", ())


def test_the_page_lists_the_songs_and_switches_through_the_set_router(router):
    """The control page's state carries the songs and the current one; a song button's message (/sdga/set/song i,
    as app.js sends it) reaches the queue as a SongSelect through the same router as OSC."""
    import asyncio
    import json

    aiohttp = pytest.importorskip("aiohttp")
    from instrument.engine.events import EventQueue
    from instrument.io.web import STATIC_DIR, WebServer

    assert 'id="songs"' in (STATIC_DIR / "index.html").read_text()
    assert 'send("/sdga/set/song", i)' in (STATIC_DIR / "app.js").read_text()
    queue = EventQueue()
    state = lambda: {"set": {"songs": router.song_names(), "current": router.active}}     # noqa: E731
    server = WebServer(router, queue, router.routers[0].bundle, port=0, state=state, poll_s=0.01).start()

    async def session():
        async with aiohttp.ClientSession() as s, s.ws_connect(f"http://127.0.0.1:{server.port}/ws") as ws:
            hello = await ws.receive_json()
            await ws.send_str(json.dumps({"a": "/sdga/set/song", "v": [2]}))
            while True:
                m = await ws.receive_json()
                if m["t"] == "state" and m["state"]["set"]["current"] == 2:
                    return hello, m

    try:
        hello, later = asyncio.run(asyncio.wait_for(session(), 20.0))
    finally:
        server.close()
    assert hello["state"]["set"] == {"songs": ["opening", "long", "coda"], "current": 0}
    assert list(queue.drain())[0] == SongSelect(2) and server.stats.errors == 0


def test_an_mpe_zone_set_by_the_controller_carries_over_to_the_next_song(router):
    """An MPE controller sends its configuration message once, when it connects: every song plays in its zone."""
    cc = lambda n, v: mido.Message("control_change", channel=15, control=n, value=v)     # noqa: E731
    for n, v in ((101, 0), (100, 6), (6, 5)):                      # upper zone, 5 members
        router.midi(cc(n, v))
    events = router.midi(mido.Message("program_change", program=1))
    assert events[0] == SongSelect(1)
    assert ParamSet(int(Param.MPE_ZONE), 2.0) in events and ParamSet(int(Param.MPE_MEMBERS), 5.0) in events
    assert router.routers[1].mpe_zone == 2 and router.routers[1].mpe_member(10)
    (pressure,) = router.midi(mido.Message("aftertouch", channel=12, value=127))
    assert type(pressure).__name__ == "ChannelPressure"
    again = router.midi(mido.Message("program_change", program=2))        # the next song: carried on
    assert ParamSet(int(Param.MPE_ZONE), 2.0) in again
    assert not any(isinstance(e, ParamSet) and e.param == Param.MPE_ZONE
                   for e in router.midi(mido.Message("program_change", program=1)))   # already in that zone
