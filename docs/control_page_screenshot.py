"""Make docs/control-page.png: sdga-play --web on a private JACK dummy server, the page in headless Chromium.

    .venv/bin/python docs/control_page_screenshot.py MODEL.sdga [OUT.png]

Plays through mappings/default.yaml (its patches listed); holds a chord from a JACK MIDI port and moves two
knobs by CC so the live state and the sliders show something.
"""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from jack_dummy import jack_dummy_server  # noqa: E402


def main() -> None:
    model = Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "docs" / "control-page.png"
    import rtmidi
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with jack_dummy_server("sdga_screenshot") as env:
        import os
        os.environ.update({k: env[k] for k in ("JACK_DEFAULT_SERVER", "JACK_NO_START_SERVER")})
        keys = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, "sdga_shot")
        keys.open_virtual_port("out")
        play = subprocess.Popen([sys.executable, "-m", "instrument.apps.play", str(model), "--device", "JACK",
                                 "--no-osc", "--web", "0", "--midi", "sdga_shot", "--quiet",
                                 "--mapping", str(ROOT / "mappings" / "default.yaml")], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        url = None
        for line in play.stdout:
            url = url or (re.search(r"http://\S+", line).group(0) if "web: control page" in line else None)
            if "playing" in line:
                break
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1300,1000",
                    "--hide-scrollbars", "--force-device-scale-factor=1"):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            driver.get(url)
            time.sleep(1.0)
            for note in (48, 55, 64):
                keys.send_message([0x90, note, 90])
            keys.send_message([0xB0, 70, 100])         # CC 70 -> latent/0 (mappings/default.yaml)
            keys.send_message([0xB0, 71, 30])          # CC 71 -> latent/1
            time.sleep(1.5)
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(1300, min(max(height, 700), 1600))
            time.sleep(0.5)
            driver.save_screenshot(str(out))
        finally:
            driver.quit()
            play.send_signal(signal.SIGTERM)
            play.communicate(timeout=30)
            keys.close_port()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
