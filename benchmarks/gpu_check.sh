#!/usr/bin/env bash
# FRESCO vs the per-frame baseline on one batch of the real-size random SD 1.5 model (512 px, 8 frames,
# fp16 on CUDA by default): time per batch, peak CUDA memory, FRESCO / baseline. Options: see
# benchmarks/gpu_check.py (--model DIR --controlnet DIR, --device, --size, --frames, --steps, --out, --tiny).
# Exits non-zero on any failure.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
python="$repo/.venv/bin/python"
[ -x "$python" ] || python="$(command -v python3)"
cd "$repo"
exec "$python" "$here/gpu_check.py" "$@"
