"""Contract of the engine's events, parameter table and queue (instrument.engine.events)."""
from __future__ import annotations

import threading

import mido
import numpy as np
import pytest

from instrument.model.bundle import random_bundle
from instrument.engine.engine import Engine
from instrument.engine.events import (PARAMS, ControlChange, EventQueue, LatentSet, NoteOff, NoteOn, Param, ParamSet,
                               PitchBend, from_mido, param_event, param_spec, with_offset)


def test_param_table_and_enum_agree():
    assert [p.name for p in PARAMS] == [p.name.lower() for p in Param]
    assert len({p.name for p in PARAMS}) == len(PARAMS)


@pytest.mark.parametrize("spec", PARAMS, ids=[p.name for p in PARAMS])
def test_every_param_round_trips_and_reaches_the_engine(spec):
    assert spec.low <= spec.default <= spec.high
    for knob in (0.0, 0.25, 0.5, 1.0):
        value = spec.from_knob(knob)
        assert spec.low <= value <= spec.high
        if not spec.choices and spec.unit != "channel":
            assert spec.to_knob(value) == pytest.approx(knob, abs=1e-9)
    assert spec.clamp(spec.high + 100) == spec.high and spec.clamp(spec.low - 100) == spec.low
    engine = Engine(random_bundle())
    engine.prepare(48000, 128, 2)
    index = int(Param[spec.name.upper()])
    assert engine.params[index] == spec.default
    target = spec.from_knob(0.75)
    engine.process([ParamSet(index, target)], np.zeros(16, np.float32))
    assert engine.params[index] == target and engine.stats.errors == 0
    assert param_spec(spec.name) is spec and param_spec(index) is spec


def test_param_event_by_name_knob_and_choice():
    assert param_event("release_ms", 20000.0).value == 10000.0
    assert param_event("voice_mode", "legato") == ParamSet(Param.VOICE_MODE, 2.0)
    assert param_event("output_gain_db", 1.0, knob=True).value == 12.0
    with pytest.raises(KeyError):
        param_event("volume", 1.0)


def test_queue_is_bounded_counts_drops_and_keeps_order():
    q = EventQueue(capacity=3)
    assert all(q.push(NoteOn(60 + k)) for k in range(3))
    assert not q.push(NoteOn(99)) and q.dropped == 1
    assert [e.note for e in q.drain()] == [60, 61, 62]
    assert len(q) == 0


def test_queue_with_concurrent_producers():
    q = EventQueue(capacity=100_000)

    def produce(channel):
        for k in range(2000):
            q.push(NoteOn(k % 128, 100, channel))

    threads = [threading.Thread(target=produce, args=(c,)) for c in range(4)]
    for t in threads:
        t.start()
    drained = []
    while any(t.is_alive() for t in threads) or len(q):
        drained.extend(q.drain())
    for t in threads:
        t.join()
    drained.extend(q.drain())
    assert len(drained) == 8000 and q.dropped == 0
    for c in range(4):
        assert [e.note for e in drained if e.channel == c] == [k % 128 for k in range(2000)]


def test_from_mido():
    assert from_mido(mido.Message("note_on", note=60, velocity=90, channel=2), 5) == NoteOn(60, 90, 2, 5)
    assert from_mido(mido.Message("note_on", note=60, velocity=0)) == NoteOff(60, 0, 0, 0)
    assert from_mido(mido.Message("note_off", note=61, velocity=10)) == NoteOff(61, 10, 0, 0)
    assert from_mido(mido.Message("pitchwheel", pitch=8191)).value == pytest.approx(1.0, abs=1e-3)
    assert from_mido(mido.Message("pitchwheel", pitch=-8192)) == PitchBend(-1.0)
    assert from_mido(mido.Message("control_change", control=64, value=127)) == ControlChange(64, 127)
    assert from_mido(mido.Message("program_change", program=3)) is None


def test_with_offset_and_latent_knobs():
    assert with_offset(NoteOn(60), 17).offset == 17
    bundle = random_bundle()
    engine = Engine(bundle)
    engine.prepare(48000, 64, 1)
    engine.process([LatentSet(2, 1.0, knob=True), LatentSet(99, 0.0), LatentSet(1, float("nan"))],
                   np.zeros(64, np.float32))
    assert float(engine.state.z[2]) == pytest.approx(bundle.latents[0].knob_to_z(1.0))
    assert engine.voices.ignored_events == 2 and engine.stats.errors == 0
