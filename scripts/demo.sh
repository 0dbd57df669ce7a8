#!/usr/bin/env bash
# The README's main job, offline: translate a clip headlessly into a new strip of a saved .blend.
#   scripts/demo.sh [CLIP]     CLIP: a video file or image folder (default: a synthetic clip)
# Uses the tiny UNTRAINED model (random weights), so the frames show plumbing, not art.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

CACHE=.cache/demo
mkdir -p "$CACHE"
{ read -r MODEL; read -r CONTROLNET; } < <(.venv/bin/python -m fresco_backend make-tiny .cache/tiny 2>/dev/null)
CLIP=${1:-}
if [[ -z "$CLIP" ]]; then
    CLIP=$CACHE/clip.mp4
    [[ -f "$CLIP" ]] || .venv/bin/python -m fresco_backend make-clip "$CLIP" --frames 24 --width 256 --height 192 >/dev/null
fi
ZIP=$(.venv/bin/python build_addon.py --out "$CACHE")

export FRESCO_BACKEND_PYTHON=$PWD/.venv/bin/python FRESCO_BACKEND_DIR=$PWD \
       FRESCO_MODEL=$PWD/$MODEL FRESCO_CONTROLNET=$PWD/$CONTROLNET
time .venv-bpy53/bin/python scripts/demo_blend.py --addon "$ZIP" --clip "$CLIP" --out demo_output
