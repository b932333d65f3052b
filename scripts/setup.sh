#!/usr/bin/env bash
# Set up everything sdga needs on a fresh Debian machine: system packages, a venv, Python packages.
# Idempotent: a second run only checks. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS=(libportaudio2 libsndfile1 jackd2 liblo-tools puredata-core fluidsynth fluid-soundfont-gm ffmpeg
          chromium chromium-driver   # the control page's tests in a real browser
          timidity freepats)         # bench_expression's second sample set

need_apt=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "[setup] apt: installing ${need_apt[*]}"
  # jackd2 asks whether to enable real-time limits; answer no (we run jackd --no-realtime).
  echo "jackd2 jackd/tweak_rt_limits boolean false" | $SUDO debconf-set-selections
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.sdga-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] pip: installing torch 2.13.0 (CPU) and sdga[train,dev]"
  .venv/bin/python -m pip install -q --upgrade pip
  # The CPU wheel first, pinned, so nothing pulls a CUDA build.
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".[train,dev]"
  touch "$stamp"
fi
echo "[setup] ready: $(.venv/bin/python -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__)')"
