"""A job that runs out of device memory in its first batch starts again at half the batch size
(``translate_frames``): its frames are a run's at that size, it says so, and a resume cuts alike.

The device is the CPU; running out of memory is a U-Net that raises torch's OutOfMemoryError for more
than ``LIMIT`` samples at once (a CFG batch of B frames is 2B samples).
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fresco_backend.checkpoint import Checkpoint
from fresco_backend.config import JobConfig
from fresco_backend.job import CheckpointStore
from fresco_backend.synthetic import moving_square
from fresco_backend.translate import translate_frames
from fresco_backend.video_io import write_png_atomic

SETTINGS = {"prompt": "a mosaic", "steps": 4, "strength": 0.5, "size": 64, "opt_iterations": 1,
            "keyframes": "interval", "key_interval": 2, "batch_size": 4}
LIMIT = 4  # samples: a batch of 2 frames under CFG fits, one of 4 does not


pytestmark = pytest.mark.usefixtures("one_thread")  # runs compared byte for byte (conftest.py)


@pytest.fixture
def small_device(pipe, monkeypatch):
    """``pipe`` on a device that holds at most ``limit`` samples; ``refused``: the U-Net calls it refused."""
    device = SimpleNamespace(limit=LIMIT, refused=[])
    original = pipe.unet.forward

    def forward(sample, *args, **kwargs):
        if sample.shape[0] > device.limit:
            device.refused.append(sample.shape[0])
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(sample, *args, **kwargs)

    monkeypatch.setattr(pipe.unet, "forward", forward)
    return device


def clip() -> list[np.ndarray]:
    return moving_square(frames=9, width=96, height=64, velocity=(3, 1), square=24).frames


def run(pipe, settings: dict, **kwargs) -> dict[int, np.ndarray]:
    return dict(translate_frames(pipe, clip(), JobConfig.of(settings), **kwargs))


def test_a_batch_that_does_not_fit_is_halved_and_gives_the_frames_of_that_batch_size(pipe, small_device):
    expected = run(pipe, {**SETTINGS, "batch_size": 2})
    assert not small_device.refused
    stages, checkpoint = [], Checkpoint()
    out = run(pipe, SETTINGS, on_progress=lambda p: stages.append(p.stage), checkpoint=checkpoint)
    assert small_device.refused == [8]  # the first U-Net call of batch 4 (CFG: 8 samples), then none
    assert sorted(out) == list(range(9)) and all(np.array_equal(out[i], expected[i]) for i in expected)
    assert "out of memory: batch 4 -> 2" in stages and checkpoint.batch_size == 2


def test_out_of_memory_after_a_finished_batch_is_raised_not_retried(pipe, small_device):
    out = {}
    with pytest.raises(torch.OutOfMemoryError):
        for index, rgb in translate_frames(pipe, clip(), JobConfig.of({**SETTINGS, "batch_size": 2})):
            out[index] = rgb
            small_device.limit = 0  # a batch is done: from now on the device is full
    assert out and len(small_device.refused) == 1  # frames came, then one refused call: not retried


def test_a_resumed_job_cuts_its_batches_as_the_lowered_run_did(pipe, small_device, tmp_path):
    expected = run(pipe, {**SETTINGS, "batch_size": 2})
    outputs = tmp_path / "output"
    outputs.mkdir()
    store = CheckpointStore(tmp_path / "state", lambda i: outputs / f"{i:04d}.png")
    (tmp_path / "state").mkdir()
    written = []
    checkpoint = store.load()
    for index, rgb in translate_frames(pipe, clip(), JobConfig.of(SETTINGS), checkpoint=checkpoint):
        write_png_atomic(outputs / f"{index:04d}.png", rgb)
        written.append(index)
        if store.batches_done():  # interrupted after its first batch
            break
    resumed = store.load()
    assert (resumed.batches_done, resumed.batch_size) == (1, 2)
    small_device.refused.clear()
    rest = dict(translate_frames(pipe, clip(), JobConfig.of(SETTINGS), checkpoint=resumed))
    assert not small_device.refused  # it never tried batch 4 again
    assert set(rest) | set(written) == set(range(9))
    assert all(np.array_equal(rgb, expected[i]) for i, rgb in rest.items())
