"""sdga-info shows and plays what a model does: the audition (a phrase per offered knob, swept 0 -> 1 -> 0,
through the live engine), the knob descriptor curves, the note expression plot and the card's expression lines.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from evaluation import info as info_cli
from evaluation.audition import knob_sweep, render_phrase, write_audition
from evaluation.knob_curves import CURVE_DESCRIPTORS, knob_curves, offered_knobs
from evaluation.note_contours import expression_summary, played_contours
from instrument.model.bundle import Articulation, random_bundle, save_bundle

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def bundle():
    """A random model whose latents 0 and 2 are offered knobs (0 named brightness), the others inactive."""
    b = random_bundle(seed=3)
    latents = list(b.latents)
    latents[0] = replace(latents[0], name="brightness")
    for i in range(len(latents)):
        if i not in (0, 2):
            latents[i] = replace(latents[i], active=False, name=f"inactive{i}")
    b.latents = latents
    return b


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


# ---------------------------------------------------------------------------------------------- audition
def test_audition_writes_a_phrase_per_offered_knob_and_a_reference(tmp_path, bundle):
    seconds = 2.0
    audition = write_audition(bundle, tmp_path / "aud", seconds=seconds, log=lambda *a: None)
    names = sorted(p.name for p in (tmp_path / "aud").iterdir())
    assert names == ["00-brightness.wav", "02-z2.wav", "index.txt", "reference.wav"]
    sr = bundle.config.sample_rate
    for path, what in audition.files:
        audio, rate = sf.read(path, dtype="float32")
        assert rate == sr and audio.shape == (int(seconds * sr),), path.name
        assert np.isfinite(audio).all() and _rms(audio) > 1e-3, path.name
        assert path.name in audition.index.read_text() and what in audition.index.read_text()
    assert "swept 0 -> 1 -> 0" in audition.index.read_text()


def test_the_sweep_takes_the_knob_to_1_in_the_middle_and_back_to_0(bundle):
    """The swept phrase sounds like the knob held at 0 near its ends and like the knob held at 1 in its middle."""
    knob = offered_knobs(bundle)[0]
    seconds, sr = 3.0, bundle.config.sample_rate
    swept = render_phrase(bundle, knob, seconds)
    at0 = render_phrase(bundle, knob, seconds, fixed_knob=0.0)
    at1 = render_phrase(bundle, knob, seconds, fixed_knob=1.0)
    reference = render_phrase(bundle, None, seconds)
    assert _rms(at0 - at1) > 0.2 * _rms(at1)                 # the knob changes the sound at all

    def window(start_s, stop_s):
        return slice(int(start_s * sr), int(stop_s * sr))

    for where in (window(0.05, 0.3), window(seconds - 0.45, seconds - 0.2)):    # knob near 0
        assert _rms(swept[where] - at0[where]) < 0.35 * _rms(swept[where] - at1[where])
    middle = window(seconds / 2 - 0.1, seconds / 2 + 0.1)                          # knob near 1
    assert _rms(swept[middle] - at1[middle]) < 0.35 * _rms(swept[middle] - at0[middle])
    assert _rms(swept[middle] - reference[middle]) > 0.05 * _rms(reference[middle])  # and from the default
    assert knob_sweep(np.array([0.0, seconds / 2, seconds]), seconds).tolist() == [0.0, 1.0, 0.0]


def test_audition_into_a_file_is_refused_before_anything_is_written(tmp_path, bundle):
    blocker = tmp_path / "taken"
    blocker.write_text("keep me")
    with pytest.raises(OSError, match="cannot write the audition to .*taken"):
        write_audition(bundle, blocker / "aud", log=lambda *a: None)
    with pytest.raises(ValueError, match="at least 1 s"):
        write_audition(bundle, tmp_path / "short", seconds=0.5, log=lambda *a: None)
    assert blocker.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


# ---------------------------------------------------------------------------------------------- knob curves
@pytest.fixture(scope="module")
def curves(bundle):
    return knob_curves(bundle, steps=3, notes=[220.0], seconds=0.6)


def test_knob_curves_are_zero_at_the_centre_and_shaped_knob_step_note_descriptor(bundle, curves):
    assert [l.index for l in curves.latents] == [0, 2]                # the offered knobs only
    assert curves.changes.shape == (2, 3, 1, len(CURVE_DESCRIPTORS))
    assert curves.knobs.tolist() == [0.0, 0.5, 1.0]
    assert np.all(curves.changes[:, 1] == 0.0)                        # knob 0.5 is the centre
    assert np.isfinite(curves.changes).all()
    centroid = curves.column("centroid_octaves")
    assert np.abs(curves.changes[:, [0, 2], :, centroid]).max() > 0.1   # a random decoder's knob moves something (%)
    assert curves.named == ("centroid_octaves", None)                 # "brightness" names the centroid
    assert curves.median().shape == (2, 3, len(CURVE_DESCRIPTORS)) and curves.full_sweep().shape == (2, len(CURVE_DESCRIPTORS))


def test_knob_curves_measure_from_the_centre_even_when_it_is_not_a_step(bundle):
    two = knob_curves(bundle, steps=2, notes=[220.0], seconds=0.6, latents=offered_knobs(bundle)[:1])
    assert two.changes.shape == (1, 2, 1, len(CURVE_DESCRIPTORS)) and np.isfinite(two.changes).all()
    assert np.abs(two.changes).max() > 0.0
    with pytest.raises(ValueError, match="at least 2 steps"):
        knob_curves(bundle, steps=1)


def test_knob_curve_plot_is_written(tmp_path, curves):
    from evaluation.plots import plot_knob_curves

    path = plot_knob_curves(curves, tmp_path / "knobs.png", title="random")
    assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 10_000


# ---------------------------------------------------------------------------------------------- expression
def test_played_notes_follow_the_articulation_through_the_engine(bundle):
    """Vibrato and the note-off as the live voice bank plays them: the pitch wobbles by the learnt depth,
    centred on the note, and the note falls after its note-off."""
    art = Articulation(notes=40, fallback=False, vibrato_cents=20.0, vibrato_hz=5.0, vibrato_delay_ms=100.0,
                       attack_ms=30.0, release_db_per_s=200.0)
    played = played_contours(replace(bundle, expression=art), velocities=(64, 127), held_ms=800.0, tail_ms=600.0)
    assert [c.velocity for c in played] == [64, 127]
    for c in played:
        body = (c.t_ms > 300.0) & (c.t_ms < 790.0)
        assert np.nanmax(c.cents[body]) == pytest.approx(20.0, abs=2.0)
        assert np.nanmin(c.cents[body]) == pytest.approx(-20.0, abs=2.0)
        assert abs(np.nanmean(c.cents[body])) < 3.0
        held = np.median(c.loudness_db[(c.t_ms > 400.0) & (c.t_ms < 790.0)])
        late = np.median(c.loudness_db[c.t_ms > 1200.0])
        assert late < held - 20.0


def test_the_card_says_what_was_learnt_or_that_the_adsr_plays(bundle):
    art = Articulation(notes=40, fallback=False, vibrato_cents=12.5, vibrato_hz=5.5, tremolo_db=0.8, tremolo_hz=4.5)
    text = "\n".join(expression_summary(replace(bundle, expression=art)))
    assert "40 notes" in text and "vibrato 12.5 cents at 5.50 Hz" in text and "tremolo 0.80 dB at 4.50 Hz" in text
    assert "ADSR" in "\n".join(expression_summary(bundle))


def test_expression_plot_without_an_articulation_shows_the_adsr(tmp_path, bundle):
    from evaluation.plots import plot_note_expression

    played = played_contours(bundle, held_ms=400.0, tail_ms=300.0)
    assert len(played) == 4 and all(np.isfinite(c.loudness_db).all() for c in played)
    path = plot_note_expression(played, (), tmp_path / "expr.png", learnt=False)
    assert path.read_bytes()[:8] == PNG_MAGIC


# ---------------------------------------------------------------------------------------------- the CLI
def test_cli_refuses_bad_outputs_before_rendering(tmp_path, bundle, capsys):
    model = save_bundle(tmp_path / "m.sdga", bundle)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases = [(["--plot", str(tmp_path / "missing" / "k.png")], "no folder"),
             (["--expression-plot", str(tmp_path)], "is a folder"),
             (["--corpus", str(tmp_path)], "--corpus is for --expression-plot"),
             (["--expression-plot", str(tmp_path / "e.png"), "--corpus", str(tmp_path / "nope")], "no such"),
             (["--audition", str(blocker / "aud")], "cannot write the audition"),
             (["--plot", str(tmp_path / "k.png"), "--steps", "1"], "--steps"),
             (["--plot", str(tmp_path / "knobs.txt")], "not an image file name")]
    for extra, message in cases:
        assert info_cli.main([str(model), *extra]) == info_cli.EXIT_BAD_INPUT, extra
        assert message in capsys.readouterr().err, extra
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "m.sdga"]


@pytest.mark.slow
def test_cli_on_a_trained_model_writes_everything(tmp_path, trained_model, demo_corpus_dir, capsys):
    out = tmp_path / "out"
    out.mkdir()
    rc = info_cli.main([str(trained_model), "--audition", str(out / "aud"), "--plot", str(out / "knobs.png"),
                        "--steps", "3", "--expression-plot", str(out / "expr.png"), "--corpus", str(demo_corpus_dir),
                        "--cache-dir", str(tmp_path / "cache")])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "expression (" in printed and "vibrato" in printed and "corpus:" in printed
    for png in ("knobs.png", "expr.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    wavs = sorted((out / "aud").glob("*.wav"))
    from instrument.model.bundle import load_bundle
    offered = offered_knobs(load_bundle(trained_model))
    assert len(wavs) == len(offered) + 1
    for wav in wavs:
        audio, sr = sf.read(wav, dtype="float32")
        assert len(audio) == 6 * sr and np.isfinite(audio).all() and _rms(audio) > 1e-4, wav.name


def test_the_corpus_band_is_read_where_the_latent_table_has_it(tmp_path, bundle, curves):
    """Latents that say where the corpus ends on the knob (optional corpus_low / corpus_high) get it in the
    audition's index and a shaded band in the plot; older ones span the whole knob."""
    from evaluation.knob_curves import corpus_band
    from evaluation.plots import plot_knob_curves
    from instrument.model.bundle import LatentInfo

    plain = offered_knobs(bundle)[0]
    assert plain.corpus_low is None and isinstance(plain, LatentInfo)     # an older model's table: no band
    banded = replace(plain, corpus_low=0.2, corpus_high=0.8)
    assert corpus_band(plain) == (0.0, 1.0) and corpus_band(banded) == (0.2, 0.8)
    latents = [banded if l is plain else l for l in bundle.latents]
    audition = write_audition(replace(bundle, latents=latents), tmp_path / "aud", seconds=1.0, log=lambda *a: None)
    assert "the corpus spans knob 0.20..0.80" in audition.index.read_text()
    path = plot_knob_curves(replace(curves, latents=(banded,) + curves.latents[1:]), tmp_path / "banded.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
