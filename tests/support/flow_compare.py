"""How well two flows explain a clip: the photometric error of the render's flow_next (``fresco_contract/passes.py``)
and of OpenCV DIS (``fresco_backend.flow.OpenCVFlow``) on the same PNG frames.

    python tests/support/flow_compare.py FRAMES_DIR PASSES_DIR

For each pair of frames t, t+1, frame t+1 is warped back onto frame t by each flow (backward warp: frame_t(x) ~
frame_{t+1}(x + flow(x))) and the mean absolute RGB difference (0..1) is taken on the pixels both flows mark visible
(forward-backward consistent and inside the frame, ``fresco_backend.flow.inconsistent``/``outside``). Prints one
JSON line: {"render": error, "dis": error, "pixels": counted pixels}.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from fresco_backend.flow import OpenCVFlow, inconsistent, outside, warp
from fresco_contract import passes


def load_pass(folder: Path, name: str, index: int) -> torch.Tensor:
    return torch.from_numpy(np.load(passes.pass_file(folder, name, index)).astype(np.float32))[None]


def main(frames_dir: Path, passes_dir: Path) -> dict:
    frames = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(frames_dir.glob("*.png"))]
    dis = OpenCVFlow()
    errors = {"render": 0.0, "dis": 0.0}
    counted = 0
    for t in range(len(frames) - 1):
        a, b = (torch.from_numpy(f).permute(2, 0, 1)[None].float() / 255 for f in frames[t:t + 2])
        render_fwd, render_bwd = load_pass(passes_dir, "flow_next", t), load_pass(passes_dir, "flow_prev", t + 1)
        dis_fwd, dis_bwd = (torch.from_numpy(dis(x, y)).permute(2, 0, 1)[None] for x, y in
                            ((frames[t], frames[t + 1]), (frames[t + 1], frames[t])))
        visible = ~(inconsistent(render_fwd, render_bwd) | outside(render_fwd)
                    | inconsistent(dis_fwd, dis_bwd) | outside(dis_fwd))
        for name, flow in (("render", render_fwd), ("dis", dis_fwd)):
            difference = (warp(b, flow) - a).abs().mean(1, keepdim=True)
            errors[name] += float(difference[visible].sum())
        counted += int(visible.sum())
    return {name: error / max(counted, 1) for name, error in errors.items()} | {"pixels": counted}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2]))))
