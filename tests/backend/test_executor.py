"""The one plan and executor give the frames of main before them, byte for byte (issue 19).

``tests/data/executor_reference.json`` holds the sha256 (first 16 hex digits) of every frame each case
yielded, in order, and of every anchor latent handed to the checkpoint, recorded on the tiny model
with one torch thread by the three executors the plan replaced: ``translate_frames`` (FRESCO with
interval, all and adaptive keys; per-frame; each also resumed after its first batch) and
``segments.translate_segmented`` with 2 and 3 segments (the Ray pool's passes, its skeleton anchors
being the pool's checkpoint). The FRESCO cases were re-recorded once since, when the feature
optimisation took its gradients in closed form (the same maths rounded otherwise; tests/backend/
test_feature_opt.py holds it to autograd's): ``python tests/backend/test_executor.py`` re-records them
as the tests run them. The per-frame cases are the first recording.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fresco_backend.checkpoint import Checkpoint
from fresco_backend.config import JobConfig
from fresco_backend.synthetic import moving_square
from fresco_backend.translate import translate_frames
from plan_walk import segmented

PATH = Path(__file__).parents[1] / "data" / "executor_reference.json"
REFERENCE = json.loads(PATH.read_text())
FAST = {"prompt": "a mosaic", "steps": 4, "strength": 0.5, "size": 64, "opt_iterations": 1}
CASES = {
    "fresco-interval": dict(keyframes="interval", key_interval=2, batch_size=3),
    "fresco-all": dict(keyframes="all", batch_size=2),
    "fresco-adaptive": dict(keyframes="adaptive", key_min_gap=2, key_max_gap=3, batch_size=3),
    "per-frame": dict(mode="per_frame", batch_size=2),
}


def digest(array) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def latents(anchors) -> list:
    return [[key, [digest(t.detach().cpu().float().contiguous().numpy()) for t in steps]]
            for key, steps in anchors.items()]


def frames(pairs) -> list:
    return [[index, digest(rgb)] for index, rgb in pairs]


def clip() -> list[np.ndarray]:
    return moving_square(frames=9, width=96, height=64, velocity=(3, 1), square=24).frames


pytestmark = pytest.mark.usefixtures("one_thread")  # as when the reference was recorded (conftest.py)


def record_case(pipe, name: str) -> dict:
    """What ``translate_frames`` gives for case ``name``, run whole and resumed after its first batch."""
    config = JobConfig.of({**FAST, **CASES[name]})
    order, done = [], []
    record = Checkpoint(on_batch_done=lambda n, anchors: (order.append(("done", n)),
                                                          done.append([n, latents(anchors)])))
    outputs = {}
    for index, rgb in translate_frames(pipe, clip(), config, checkpoint=record):
        order.append(("frame", index))
        outputs[index] = rgb
    written = {i for kind, i in order[:order.index(("done", 0))] if kind == "frame"}
    anchors = {}
    record_first = Checkpoint(on_batch_done=lambda n, a: n or anchors.update({k: list(v) for k, v in a.items()}))
    list(translate_frames(pipe, clip(), config, checkpoint=record_first))
    first_anchors, again = latents(anchors), []
    resume = Checkpoint(1, anchors, has_output=written.__contains__, output=outputs.__getitem__,
                        on_batch_done=lambda n, a: again.append([n, latents(a)]))
    resumed = frames(translate_frames(pipe, clip(), config, checkpoint=resume))
    return {"frames": frames(outputs.items()), "batches": done, "first_anchors": first_anchors,  # in yield order
            "resumed_written": sorted(written), "resumed": resumed, "resumed_batches": again}


def record_segments(pipe, name: str, count: int) -> dict:
    """The frames and skeleton anchors of case ``name``'s plan in ``count`` segments (the Ray pool's passes)."""
    out, skeleton = segmented(pipe, clip(), JobConfig.of({**FAST, **CASES[name]}), count)
    return {"frames": frames(out), "skeleton": latents(dict(sorted(skeleton.items())))}


@pytest.mark.parametrize("name", list(CASES))
def test_translate_frames_and_its_resume_give_the_recorded_frames_and_checkpoints(pipe, name):
    assert record_case(pipe, name) == REFERENCE[name]


@pytest.mark.parametrize("name", ["fresco-interval", "fresco-all", "per-frame"])
@pytest.mark.parametrize("count", [2, 3])
def test_segments_give_the_recorded_frames_and_skeleton(pipe, name, count):
    assert record_segments(pipe, name, count) == REFERENCE[f"{name}-S{count}"]
    if name == "per-frame":  # any split is the plain run
        assert REFERENCE[f"{name}-S{count}"]["frames"] == REFERENCE[name]["frames"]


def main() -> None:
    """Re-record the FRESCO cases (after a deliberate change of their numbers), as the tests run them."""
    import tempfile

    from fresco_backend.models import load_pipeline
    from fresco_backend.tiny import save_tiny_models

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        pipe = load_pipeline(*map(str, save_tiny_models(Path(folder))), device="cpu")
        for name in CASES:
            if name != "per-frame":
                REFERENCE[name] = record_case(pipe, name)
                for count in (2, 3):
                    if f"{name}-S{count}" in REFERENCE:
                        REFERENCE[f"{name}-S{count}"] = record_segments(pipe, name, count)
    PATH.write_text(json.dumps(REFERENCE, indent=1))


if __name__ == "__main__":
    main()
