#!/usr/bin/env bash
# The main job on a fresh machine: set up, make the demo corpus (FluidR3_GM violin via fluidsynth), train on it
# with a wall-clock budget, print the model card, and render the model (timbre transfer of a held-out phrase).
# Usage: bash scripts/demo.sh            (SDGA_DEMO_TIME=3m bash scripts/demo.sh for a shorter run)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
OUT=${SDGA_DEMO_OUT:-demo}
mkdir -p "$OUT"
sdga-demo-corpus "$OUT/corpus" --instrument violin --files 8 --seconds 12
sdga-demo-corpus "$OUT/input" --instrument flute --files 1 --seconds 10 --seed 99
sdga-train "$OUT/corpus" -o "$OUT/run" --max-time "${SDGA_DEMO_TIME:-10m}"
sdga-info "$OUT/run/model.sdga" --plot "$OUT/latents.png"
sdga-transfer "$OUT/run/model.sdga" "$OUT/input/flute_000.wav" -o "$OUT/flute_as_violin.wav"
# Play it: the live engine rendering a generated MIDI phrase offline (same code as sdga-play).
python -c "import sys, numpy as np; from pathlib import Path; from evaluation.demo_corpus import write_phrase_midi; \
write_phrase_midi(Path(sys.argv[1]), 40, 55, 84, 8.0, np.random.default_rng(7))" "$OUT/phrase.mid"
sdga-render "$OUT/run/model.sdga" --midi "$OUT/phrase.mid" -o "$OUT/phrase.wav"
echo
echo "Listen: $OUT/phrase.wav (a MIDI phrase played by the model), $OUT/flute_as_violin.wav (a flute"
echo "        phrase played by the trained violin model),"
echo "        $OUT/run/heldout/*.resynth.wav next to *.original.wav; look: $OUT/latents.png"
