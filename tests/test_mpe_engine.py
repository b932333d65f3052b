"""MPE (MIDI Polyphonic Expression) in the engine and the router: each note on its own member channel gets its own
pitch bend, pressure (loudness or a latent) and CC 74 (a latent, for that note only), batched with the other voices
in one decoder step; the MPE configuration message (RPN 6) and bend sensitivity (RPN 0) set the zone.

The per-voice latents are exact: a voice with its own latents equals Decoder.forward run with that voice's z."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import mido
import numpy as np
import pytest
import torch

from instrument.engine.decoder_kernel import DecoderStep
from instrument.engine.events import (ChannelPressure, ChannelTimbre, LatentSet, NoteOff, NoteOn, Param, ParamSet,
                                      PitchBend)
from instrument.model.bundle import random_bundle

SR = 48000


sys.path.insert(0, str(Path(__file__).parent))
from test_engine import make_engine, one_torch_thread, render, traced_allocations  # noqa: E402,F401  (its helpers; the fixture is autouse)


@pytest.fixture(scope="module")
def bundle():
    return random_bundle(seed=0)


# ---------------------------------------------------------------------------------------------- decoder step
@pytest.mark.parametrize("V", [3, 6])
def test_per_voice_latents_equal_the_decoder_run_with_each_voices_z(bundle, V):
    """Voices with their own values of some latents (set, changed, cleared while held), under a shared z that
    keeps moving: every voice equals Decoder.forward on its own z, frame by frame, past the periodic recompute."""
    dec, c = bundle.decoder, bundle.config
    F, D = 300, c.latent_dim
    g = torch.Generator().manual_seed(3)
    f0 = (torch.rand(V, 1, generator=g) * 400 + 60).expand(V, F).contiguous()
    loudness = (torch.rand(V, 1, generator=g) * -60).expand(V, F).contiguous()
    shared = torch.cumsum(torch.randn(F, D, generator=g) * 0.03, 0)
    shared[:40] = shared[40]                             # held z first: only the per-voice part moves
    own = torch.full((V, F, D), float("nan"))
    own[0, 10:200, 0] = torch.linspace(-2.0, 2.0, 190)   # a slide on voice 0 (CC 74 -> latent 0), then released
    own[1, 50:, 2] = 1.5                                 # voice 1: its own latent 2 from frame 50
    own[V - 1, 100:250, 0] = -1.0
    own[V - 1, 120:250, 1] = torch.linspace(0.0, 1.0, 130)
    z_voice = torch.where(torch.isnan(own), shared.expand(V, F, D), own)
    with torch.no_grad():
        expected, _ = dec(f0, loudness, z_voice)
        step = DecoderStep(dec, V)
        assert step.fused
        f0_in, loudness_in = dec.scale_inputs(f0, loudness)
        h = torch.zeros(V, c.gru_size)
        got = []
        for k in range(F):
            step.inputs[:, 0] = f0_in[:, k, 0]
            step.inputs[:, 1] = loudness_in[:, k, 0]
            if k == 0 or not torch.equal(shared[k], shared[k - 1]):
                step.set_z_all(shared[k])
            for v in range(V):
                for d in range(D):
                    step.set_voice_z(v, d, float(own[v, k, d]))
            got.append(step.run(h).clone())
    assert torch.allclose(torch.stack(got, 1), expected, atol=5e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- engine
def test_each_member_note_bends_by_its_own_channel_and_the_master_bends_all(bundle):
    engine = make_engine(bundle, mpe_zone=1)                  # lower zone: master channel 0, members 1..15
    frames = []
    script = [(0, PitchBend(2.0 / 48.0, 1)), (0, NoteOn(60, 100, 1)),
              (0, PitchBend(-3.0 / 48.0, 2)), (0, NoteOn(64, 100, 2)),
              (0, NoteOn(67, 100, 0)),                        # on the master channel: an ordinary note
              (4800, PitchBend(0.5, 0))]                      # master bend: +1 semitone on every note of the zone
    render(engine, script, 9600, frames=frames)
    pitch = {round(p): p for p in frames[10][0][:3]}
    assert pitch[62] == pytest.approx(62.0) and pitch[61] == pytest.approx(61.0) and pitch[67] == pytest.approx(67.0)
    late = sorted(frames[-1][0][:3])
    assert late == pytest.approx([62.0, 63.0, 68.0])
    engine.set_param("mpe_zone", 0)                           # MPE off: channels are channels again (range 2)
    render(engine, [], 1280, frames=frames)
    assert sorted(frames[-1][0][:3]) == pytest.approx([60.0 + 2.0 * 2 / 48, 64.0 - 2.0 * 3 / 48, 68.0])


def test_upper_zone_members_count_down_from_channel_15(bundle):
    engine = make_engine(bundle, mpe_zone=2, mpe_members=3)   # master 15, members 14, 13, 12
    frames = []
    render(engine, [(0, PitchBend(0.25, 14)), (0, NoteOn(60, 100, 14)), (0, PitchBend(0.25, 11)),
                    (0, NoteOn(64, 100, 11))], 2560, frames=frames)
    assert sorted(frames[-1][0][:2]) == pytest.approx([64.0 + 0.5, 60.0 + 12.0])   # channel 11 is no member


def test_pressure_raises_only_its_notes_loudness(bundle):
    engine = make_engine(bundle, mpe_zone=1, mpe_pressure_db=12.0, expression=0, attack_ms=0, decay_ms=0)
    frames = []
    script = [(0, NoteOn(60, 100, 1)), (0, NoteOn(64, 100, 2)), (2400, ChannelPressure(0.5, 2))]
    render(engine, script, 4800, frames=frames)
    before, after = frames[15][1], frames[-1][1]
    assert after[0] == pytest.approx(before[0])
    assert after[1] - before[1] == pytest.approx(6.0)


def _harmonics(engine, script, n, voice):
    dist = []
    engine.set_recorder(lambda frame: dist.append(frame.harmonic_distribution[voice].numpy().copy()))
    render(engine, script, n)
    engine.set_recorder(None)
    return np.array(dist)


def test_cc74_sets_its_notes_latent_as_the_global_knob_would(bundle):
    """Two held notes, CC 74 at 0 on one channel and 127 on the other: each note sounds as the same note would
    with the shared latent 0 knob at 0 and at 1 (exactly, per voice), and the two differ."""
    n = 4800
    mpe = make_engine(bundle, mpe_zone=1)
    script = [(0, ChannelTimbre(0.0, 1)), (0, NoteOn(57, 100, 1)), (0, ChannelTimbre(1.0, 2)), (0, NoteOn(62, 100, 2))]
    a0, a1 = _harmonics(mpe, script, n, 0), None
    mpe = make_engine(bundle, mpe_zone=1)
    a1 = _harmonics(mpe, script, n, 1)
    refs = []
    for knob, note in ((0.0, 57), (1.0, 62)):
        plain = make_engine(bundle)
        rank0 = bundle.latents[0].index
        refs.append(_harmonics(plain, [(0, LatentSet(rank0, knob, knob=True)), (0, NoteOn(note, 100, 1))], n, 0))
    np.testing.assert_allclose(a0, refs[0], atol=2e-5)
    np.testing.assert_allclose(a1, refs[1], atol=2e-5)
    assert np.abs(a0[-1] - a1[-1]).max() > 1e-3


def test_a_note_without_cc74_follows_the_shared_knob(bundle):
    mpe = make_engine(bundle, mpe_zone=1)
    rank0 = bundle.latents[0].index
    got = _harmonics(mpe, [(0, LatentSet(rank0, 0.9, knob=True)), (0, NoteOn(57, 100, 3))], 2400, 0)
    plain = make_engine(bundle)
    ref = _harmonics(plain, [(0, LatentSet(rank0, 0.9, knob=True)), (0, NoteOn(57, 100, 3))], 2400, 0)
    np.testing.assert_allclose(got, ref, atol=2e-5)


def test_pressure_to_a_latent_pushes_it_from_the_shared_knob_to_the_top(bundle):
    n = 4800
    mpe = make_engine(bundle, mpe_zone=1, mpe_pressure_db=0.0, mpe_pressure_latent=1, mpe_timbre_latent=-1)
    rank1 = bundle.latents[1].index
    script = [(0, LatentSet(rank1, 0.2, knob=True)), (0, ChannelPressure(0.5, 4)), (0, NoteOn(57, 100, 4))]
    got = _harmonics(mpe, script, n, 0)
    plain = make_engine(bundle)
    ref = _harmonics(plain, [(0, LatentSet(rank1, 0.6, knob=True)), (0, NoteOn(57, 100, 4))], n, 0)
    np.testing.assert_allclose(got, ref, atol=2e-5)


@pytest.mark.parametrize("block", [1, 37, 128, 1000])
def test_mpe_output_does_not_depend_on_the_block_size(bundle, block):
    rng = np.random.default_rng(5)
    script = [(0, ParamSet(Param.MPE_ZONE, 1.0)), (10, NoteOn(60, 90, 1)), (333, NoteOn(67, 110, 2))]
    for t in range(500, 9000, 97):
        ch = 1 + int(rng.integers(2))
        kind = int(rng.integers(3))
        value = float(rng.uniform(0, 1))
        script.append((t, (PitchBend(value - 0.5, ch), ChannelPressure(value, ch), ChannelTimbre(value, ch))[kind]))
    script += [(9100, NoteOff(60, 0, 1)), (9500, NoteOff(67, 0, 2))]
    reference = render(make_engine(bundle, block=128), script, 12000, block=128)
    out = render(make_engine(bundle, block=block), script, 12000, block=block)
    assert np.abs(reference).max() > 1e-3
    np.testing.assert_array_equal(out, reference)


def test_bad_mpe_values_are_counted_not_played(bundle):
    engine = make_engine(bundle, mpe_zone=1)
    out = render(engine, [(0, NoteOn(60, 100, 1)), (100, ChannelPressure(math.nan, 1)),
                          (200, ChannelTimbre(math.inf, 1))], 2400)
    assert np.isfinite(out).all() and engine.voices.ignored_events == 2 and engine.stats.errors == 0


# ---------------------------------------------------------------------------------------------- router
@pytest.fixture
def router(bundle):
    from instrument.controls.routing import default_router
    return default_router(bundle=bundle)


def _params(events):
    return {Param(e.param).name.lower(): e.value for e in events if isinstance(e, ParamSet)}


def test_the_configuration_message_sets_the_zone_and_member_messages_become_per_note(router):
    msg = lambda **kw: mido.Message("control_change", **kw)   # noqa: E731
    router.midi(msg(channel=0, control=101, value=0))         # RPN select: passed on (the mapping may use it)
    router.midi(msg(channel=0, control=100, value=6))
    got = _params(router.midi(msg(channel=0, control=6, value=7)))
    assert got == {"mpe_zone": 1.0, "mpe_members": 7.0, "mpe_bend_range_semitones": 48.0, "bend_range_semitones": 2.0}
    assert router.mpe_zone == 1 and router.mpe_member(7) and not router.mpe_member(8) and not router.mpe_member(0)
    (bend,) = router.midi(mido.Message("pitchwheel", channel=3, pitch=4096))
    assert isinstance(bend, PitchBend) and bend.channel == 3 and bend.value == 0.5
    (press,) = router.midi(mido.Message("aftertouch", channel=3, value=127))
    assert isinstance(press, ChannelPressure) and press.value == 1.0 and press.channel == 3
    (timbre,) = router.midi(msg(channel=3, control=74, value=0))
    assert isinstance(timbre, ChannelTimbre) and timbre.value == 0.0
    # the master channel's CC 74 is the mapping's (the default: latent 4); a non-member's too
    assert [type(e).__name__ for e in router.midi(msg(channel=0, control=74, value=64))] == ["LatentSet"]
    assert [type(e).__name__ for e in router.midi(msg(channel=9, control=74, value=64))] == ["LatentSet"]
    # bend sensitivity (RPN 0) on a member channel: the notes' range; on the master: the zone's
    for cc, value in ((101, 0), (100, 0), (6, 24)):
        out = router.midi(msg(channel=2, control=cc, value=value))
    assert _params(out) == {"mpe_bend_range_semitones": 24.0}
    for cc, value in ((101, 0), (100, 0), (6, 3), (38, 50)):
        out = router.midi(msg(channel=0, control=cc, value=value))
    assert _params(out) == {"bend_range_semitones": 3.5}
    # zone off by its configuration message with 0 members
    for cc, value in ((101, 0), (100, 6), (6, 0)):
        out = router.midi(msg(channel=0, control=cc, value=value))
    assert _params(out) == {"mpe_zone": 0.0} and router.mpe_zone == 0
    assert isinstance(router.midi(mido.Message("aftertouch", channel=3, value=127)), list)


def test_without_mpe_the_router_is_unchanged(router):
    (bend,) = router.midi(mido.Message("pitchwheel", channel=3, pitch=4096))
    assert isinstance(bend, PitchBend)
    assert [type(e).__name__ for e in router.midi(mido.Message("control_change", channel=3, control=74, value=1))] \
        == ["LatentSet"]
    assert not any(isinstance(e, ChannelPressure) for e in router.midi(mido.Message("aftertouch", channel=3, value=9)))


def test_the_zone_set_by_param_or_osc_reaches_the_router(router):
    router.sync([ParamSet(Param.MPE_ZONE, 2.0), ParamSet(Param.MPE_MEMBERS, 4.0)])
    assert router.mpe_zone == 2 and router.mpe_member(11) and not router.mpe_member(10)
    router.osc("/sdga/target/mpe_zone", [0.0])
    assert router.mpe_zone == 0


def test_mpe_playing_allocates_nothing_that_grows(bundle):
    """Bends, pressure and CC 74 on four member channels every few blocks (per-voice latents changing all the
    time): no Python allocation left behind, and no large transient one."""
    engine = make_engine(bundle, voices=4, mpe_zone=1, mpe_pressure_latent=1)
    out = np.zeros(128, dtype=np.float32)
    engine.process([NoteOn(48 + 7 * k, 100, 1 + k) for k in range(4)], out)
    script = []
    for k in range(300):
        ch, x = 1 + k % 4, 0.5 + 0.5 * math.sin(k / 7)
        script.append([PitchBend(x - 0.5, ch), ChannelPressure(x, ch), ChannelTimbre(1 - x, ch)] if k % 2 else [])
    for events in script[:60]:                       # warm-up: every path taken once
        engine.process(events, out)

    def play() -> None:
        for events in script:
            engine.process(events, out)

    grown, peak = traced_allocations(play)
    assert grown < 16 * 1024
    assert peak < 4096, peak
    assert engine.stats.errors == 0 and np.isfinite(out).all()


def test_sdga_render_plays_an_mpe_file_as_sdga_play_does(bundle, tmp_path):
    """A MIDI file holding the configuration message and two notes on member channels with their own bend,
    pressure and CC 74 is decoded as sdga-play decodes it (the router's MpeInput), and the render plays it."""
    from instrument.apps.render import midi_file_events, render_midi

    mid = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    mid.tracks.append(track)
    for cc, value in ((101, 0), (100, 6), (6, 15)):
        track.append(mido.Message("control_change", channel=0, control=cc, value=value))
    track.append(mido.Message("pitchwheel", channel=1, pitch=int(4 / 48 * 8192)))
    track.append(mido.Message("control_change", channel=1, control=74, value=127))
    track.append(mido.Message("note_on", channel=1, note=60, velocity=100))
    track.append(mido.Message("aftertouch", channel=2, value=64))
    track.append(mido.Message("note_on", channel=2, note=67, velocity=100))
    track.append(mido.Message("note_off", channel=1, note=60, velocity=0, time=960))
    track.append(mido.Message("note_off", channel=2, note=67, velocity=0))
    events = [e for _, e in midi_file_events(mid, SR)[0]]
    kinds = [type(e).__name__ for e in events]
    assert kinds.count("ParamSet") == 4 and "ChannelTimbre" in kinds and "ChannelPressure" in kinds
    path = tmp_path / "mpe.mid"
    mid.save(str(path))
    audio, engine = render_midi(bundle, path)
    assert np.isfinite(audio).all() and engine.stats.errors == 0
    assert engine.voices.settings.mpe_zone == 1 and engine.voices.bend[1] == pytest.approx(4 / 48, abs=1e-4)
