"""Contract of the voice bank (instrument.engine.voices): allocation, envelopes, modes, pedal, filters. No audio."""
from __future__ import annotations

import pytest

from instrument.engine.voices import ATTACK, DECAY, IDLE, LEGATO, MONO, RELEASE, SUSTAIN, VoiceBank, VoiceSettings

SR, HOP = 48000, 128


def bank(n_voices: int = 4, **settings) -> VoiceBank:
    return VoiceBank(n_voices, SR, HOP, loudness_range_db=(-60.0, -10.0), f0_range_hz=(65.4, 1046.5),
                     settings=VoiceSettings(**settings))


def frames(vb: VoiceBank, n: int) -> None:
    for _ in range(n):
        vb.end_interval()


def test_envelope_velocity_maps_onto_the_corpus_loudness_range():
    vb = bank(velocity_sensitivity=1.0)
    assert vb._peak_db(127) == pytest.approx(-10.0)
    assert vb._peak_db(0) == pytest.approx(-10.0 - 0.75 * 50.0)        # the top 3/4 of the range
    vb.set("velocity_sensitivity", 0.0)
    assert vb._peak_db(1) == pytest.approx(-10.0)


def test_envelope_is_sample_accurate_in_db():
    vb = bank(attack_ms=10.0, floor_db=-60.0)
    vb.note_on(60, 127, 0, pos=37)
    vb.end_interval()
    v = vb.voices[0]
    rate = 60.0 / (10.0 * SR / 1000.0)                        # dB per sample
    assert v.env_db == pytest.approx(-60.0 + rate * (HOP - 37))
    assert vb.onset[0] == 37 and vb.gain[0] == 1.0
    assert vb.loudness_db[0] == pytest.approx(v.peak_db + v.env_db)
    frames(vb, 4)                                             # 4 * 128 samples > 480: attack done
    assert v.stage in (DECAY, SUSTAIN) and vb.onset[0] == -1


def test_adsr_stages_and_release_frees_the_voice():
    vb = bank(attack_ms=1.0, decay_ms=10.0, sustain_db=-6.0, release_ms=20.0)
    vb.note_on(60, 100, 0, 0)
    frames(vb, 10)                                            # 26 ms
    v = vb.voices[0]
    assert v.stage == SUSTAIN and v.env_db == -6.0
    vb.note_off(60, 0, 0)
    vb.end_interval()
    assert v.stage == RELEASE
    frames(vb, 8)                                             # 54 dB at 3 dB/ms: 18 ms
    assert v.stage == IDLE and vb.gain[0] == 0.0 and vb.loudness_db[0] == vb.silence_db


def test_stealing_prefers_the_oldest_released_voice():
    vb = bank(2)
    vb.note_on(60, 100, 0, 0)       # voice 0, oldest
    vb.note_on(62, 100, 0, 1)       # voice 1
    vb.note_off(62, 0, 2)           # voice 1 released
    vb.note_on(64, 100, 0, 3)
    assert [v.note for v in vb.voices] == [60, 64] and vb.steals == 1
    vb.note_on(65, 100, 0, 4)       # nothing released: the oldest (60)
    assert [v.note for v in vb.voices] == [65, 64] and vb.steals == 2


def test_same_key_reuses_its_voice_without_a_new_onset():
    vb = bank(4)
    vb.note_on(60, 100, 0, 0)
    vb.end_interval()
    vb.note_on(60, 50, 0, 10)
    vb.end_interval()
    assert vb.active_voices == 1 and vb.onset[0] == -1 and vb.voices[0].stage == ATTACK


def test_sustain_pedal():
    vb = bank(2)
    vb.note_on(60, 100, 0, 0)
    vb.sustain(True, 0)
    vb.note_off(60, 0, 5)
    frames(vb, 3)
    v = vb.voices[0]
    assert v.sustained and v.stage != RELEASE
    vb.sustain(False, 7)
    assert v.stage == RELEASE and not v.sustained


def test_mono_mode_uses_one_voice_and_falls_back_to_held_keys():
    vb = bank(4, mode=MONO)
    vb.note_on(60, 100, 0, 0)
    vb.note_on(64, 100, 0, 10)
    vb.end_interval()
    assert vb.active_voices == 1 and vb.voices[0].note == 64 and vb.voices[0].stage == ATTACK
    vb.note_off(64, 0, 0)
    vb.end_interval()
    assert vb.voices[0].note == 60 and vb.voices[0].key_down and vb.pitch_midi[0] == 60
    vb.note_off(60, 0, 0)
    vb.end_interval()
    assert vb.voices[0].stage == RELEASE


def test_legato_does_not_retrigger_and_glides():
    vb = bank(4, mode=LEGATO, glide_ms=100.0, attack_ms=1.0, decay_ms=1.0)
    vb.note_on(60, 100, 0, 0)
    frames(vb, 10)
    assert vb.voices[0].stage == SUSTAIN
    vb.note_on(72, 100, 0, 0)                                 # overlapping: same envelope
    frames(vb, 1)
    assert vb.voices[0].stage == SUSTAIN
    frames(vb, round(0.05 * SR / HOP) - 1)                    # half the glide time
    assert 64 < vb.pitch_midi[0] < 68
    frames(vb, 40)
    assert vb.pitch_midi[0] == 72


def test_mono_retriggers_the_envelope():
    vb = bank(4, mode=MONO, attack_ms=10.0, decay_ms=10.0, sustain_db=-6.0)
    vb.note_on(60, 100, 0, 0)
    frames(vb, 20)
    assert vb.voices[0].stage == SUSTAIN
    vb.note_on(62, 100, 0, 0)
    vb.end_interval()
    v = vb.voices[0]
    assert v.stage in (ATTACK, DECAY) and v.env_db > -6.0   # attack resumed from the sustain level
    assert vb.onset[0] == -1                                 # no fresh onset: no phase reset, no click


def test_bend_shift_and_channel_filter():
    vb = bank(2, bend_range_semitones=2.0, pitch_shift_semitones=-12.0, midi_channel=3)
    vb.note_on(60, 100, 2, 0)
    assert vb.active_voices == 0 and vb.ignored_events == 1
    vb.note_on(60, 100, 3, 0)
    vb.pitch_bend(-0.5, 3)
    vb.end_interval()
    assert vb.pitch_midi[0] == pytest.approx(60 - 1 - 12)


def test_out_of_range_notes_are_flagged_once_and_played():
    vb = bank(2)
    vb.note_on(100, 100, 0, 0)                                # 2637 Hz > 1046.5
    vb.note_on(60, 100, 0, 0)
    assert vb.out_of_range_notes == 1 and vb.last_out_of_range_note == 100 and vb.active_voices == 2


def test_all_notes_off_and_all_sound_off():
    vb = bank(4)
    for n in (60, 64, 67):
        vb.note_on(n, 100, 0, 0)
    vb.all_notes_off(0)
    assert all(v.stage in (RELEASE, IDLE) for v in vb.voices)
    vb.all_sound_off()
    vb.end_interval()
    assert vb.active_voices == 0 and not vb.gain.any()


def test_note_on_with_zero_velocity_is_a_note_off():
    vb = bank(2)
    vb.note_on(60, 100, 0, 0)
    vb.note_on(60, 0, 0, 5)
    assert vb.voices[0].stage == RELEASE
