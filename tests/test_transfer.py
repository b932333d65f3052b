"""sdga-transfer: octave shift only when the input does not fit the model's range (and why); 24-bit output."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf

from instrument.model.bundle import CorpusInfo, random_bundle
from training.transfer import choose_octave_shift, timbre_transfer

CELLO_HZ = (65.4, 523.0)            # C2-C5


def test_input_inside_the_range_is_not_shifted_even_far_from_the_median():
    # a phrase in the cello's upper register: its median is 1.4 octaves above the corpus median, which the old
    # rule (round the octave distance between medians) moved down an octave
    f0 = np.geomspace(250.0, 480.0, 500)
    shift, why = choose_octave_shift(f0, CELLO_HZ)
    assert shift == 0.0 and why.startswith("no shift") and "100% of its voiced frames inside" in why


@pytest.mark.parametrize("f0_lo, f0_hi, expected", [(700.0, 1000.0, -12.0), (40.0, 60.0, 12.0),
                                                    (2100.0, 4000.0, -36.0)])
def test_input_outside_the_range_moves_by_whole_octaves_and_says_why(f0_lo, f0_hi, expected):
    shift, why = choose_octave_shift(np.geomspace(f0_lo, f0_hi, 400), CELLO_HZ)
    assert shift == expected, why
    assert why.startswith("shifted") and ("up" if expected > 0 else "down") in why and "inside" in why


def test_no_pitch_or_no_range_means_no_shift():
    assert choose_octave_shift(np.zeros(0), CELLO_HZ)[0] == 0.0
    shift, why = choose_octave_shift(np.full(10, 1000.0), None)
    assert shift == 0.0 and "no measured pitch range" in why


@pytest.mark.parametrize("tone_hz, expected_st", [(330.0, 0.0), (660.0, -12.0)])
def test_transfer_writes_24_bit_and_reports_the_shift(tmp_path, tone_hz, expected_st):
    bundle = random_bundle(seed=0)
    bundle = replace(bundle, corpus=replace(CorpusInfo(), f0_range_hz=CELLO_HZ, f0_median_hz=130.0))
    sr = bundle.config.sample_rate
    t = np.arange(int(1.0 * sr)) / sr
    sf.write(tmp_path / "in.wav", 0.5 * np.sin(2 * np.pi * tone_hz * t), sr)
    report = timbre_transfer(bundle, tmp_path / "in.wav", tmp_path / "out.wav", cache_dir=tmp_path / "cache")
    assert f"pitch shift {expected_st:+.1f} st" in report
    assert ("no shift" if expected_st == 0 else "shifted 1 octave down") in report
    info = sf.info(str(tmp_path / "out.wav"))
    assert info.subtype == "PCM_24" and info.samplerate == sr


def test_transfer_maps_each_frame_through_the_models_level_calibration():
    """A calibrated model gets, per frame, the decoder input that sounds at the input's loudness at that
    frame's pitch; an uncalibrated one (or a file without expression) its loudness unchanged."""
    from instrument.model.bundle import Articulation
    from training.transfer import calibrated_loudness_db

    bundle = random_bundle(seed=0)
    ld = np.array([-50.0, -40.0, -30.0], np.float32)
    f0 = np.array([130.81, 261.63, 523.25], np.float32)             # MIDI 48, 60, 72
    assert calibrated_loudness_db(bundle, ld, f0) is ld                 # no expression: as it is
    art = Articulation(level_quantiles=(0.0, 1.0), level_db=(-40.0, -20.0), calibration_midi=(48.0, 72.0),
                       calibration_level_db=(-60.0, -20.0), level_input_by_pitch_db=(-54.0, -14.0, -60.0, -20.0))
    bundle.expression = art
    out = calibrated_loudness_db(bundle, ld, f0)
    assert out.dtype == ld.dtype
    assert np.allclose(out, [-44.0, -37.0, -30.0], atol=1e-3)         # +6 dB at 48, +3 at 60, 0 at 72
    bundle.expression = replace(art, calibration_midi=(), calibration_level_db=(), level_input_by_pitch_db=())
    assert calibrated_loudness_db(bundle, ld, f0) is ld                 # uncalibrated
