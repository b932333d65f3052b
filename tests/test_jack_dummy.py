"""Contract of the one skip-or-fail decision of the real-I/O tests (tests/jack_dummy.py): where the JACK
binaries are installed, or on CI, a JACK server or device that does not come up fails the test; a machine
without the binaries skips it."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from jack_dummy import JackUnavailable, jack_dummy_server, jack_required, jack_unavailable  # noqa: E402


def fake_binaries(folder: Path, names: dict[str, str]) -> str:
    """A PATH holding only shell scripts named like the JACK binaries (name -> script body)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in names.items():
        path = folder / name
        path.write_text("#!/bin/sh\n" + body + "\n")
        path.chmod(0o755)
    return str(folder)


@pytest.mark.parametrize("installed, ci, outcome", [
    (True, "", "fail"), (True, "true", "fail"), (False, "true", "fail"), (False, "", "skip")])
def test_unavailable_jack_fails_where_installed_or_ci(tmp_path, monkeypatch, installed, ci, outcome):
    names = {"jackd": "exit 1", "jack_lsp": "exit 0"} if installed else {}
    monkeypatch.setenv("PATH", fake_binaries(tmp_path / "bin", names))
    monkeypatch.setenv("CI", ci)
    assert jack_required() == (outcome == "fail")
    with pytest.raises((pytest.fail.Exception, pytest.skip.Exception), match="jackd did not start") as caught:
        jack_unavailable("jackd did not start")
    assert caught.type is (pytest.fail.Exception if outcome == "fail" else pytest.skip.Exception)


def test_a_jackd_that_exits_is_reported_with_its_log(tmp_path, monkeypatch):
    """An installed jackd that dies at once: JackUnavailable quickly, with the end of its log (the reason)."""
    monkeypatch.setenv("PATH", fake_binaries(tmp_path / "bin", {"jackd": "echo 'cannot open dummy driver'; exit 3",
                                                                "jack_lsp": "exit 0"}))
    with pytest.raises(JackUnavailable, match="(?s)exit code 3.*cannot open dummy driver"):
        with jack_dummy_server("sdga_fake", log_path=tmp_path / "jackd.log", timeout_s=5.0):
            pass
    assert os.environ.get("JACK_DEFAULT_SERVER") != "sdga_fake"
