"""RAFT (fresco_backend/raft.py) with randomly initialised weights: checkpoint layout and loading, the
correlation lookup's window order, convex upsampling, and the estimator's output shape."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fresco_backend.flow import load_estimator
from fresco_backend.raft import RADIUS, RAFT, RAFTFlow, convex_upsample, correlation_pyramid, load_raft, lookup

# A few parameters of the authors' raft-things.pth, as saved from DataParallel, and their shapes.
KNOWN = {
    "module.fnet.conv1.weight": (64, 3, 7, 7),
    "module.fnet.layer2.0.downsample.0.weight": (96, 64, 1, 1),
    "module.cnet.norm1.running_mean": (64,),
    "module.cnet.layer3.0.norm3.weight": (128,),
    "module.cnet.conv2.weight": (256, 128, 1, 1),
    "module.update_block.encoder.convc1.weight": (256, 324, 1, 1),
    "module.update_block.encoder.conv.weight": (126, 256, 3, 3),
    "module.update_block.gru.convz1.weight": (128, 384, 1, 5),
    "module.update_block.gru.convq2.weight": (128, 384, 5, 1),
    "module.update_block.flow_head.conv2.weight": (2, 256, 3, 3),
    "module.update_block.mask.2.weight": (576, 256, 1, 1),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = RAFT()
    for module in model.modules():  # non-trivial batch-norm statistics, so that loading them is observable
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("raft") / "raft-random.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    return path, model


def test_checkpoint_layout_matches_the_released_names(checkpoint):
    state = torch.load(checkpoint[0], weights_only=True)
    for key, shape in KNOWN.items():
        assert tuple(state[key].shape) == shape, key
    assert not [k for k in state if k.startswith("module.fnet.norm")]  # instance norm: no parameters
    assert "module.cnet.layer2.0.downsample.1.running_var" in state  # norm3, stored twice as in the release
    assert sum(p.numel() for p in checkpoint[1].parameters()) == 5_257_536  # the paper's 5.3M


def test_load_round_trip(checkpoint):
    path, model = checkpoint
    loaded = load_raft(path)
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_bad_files_are_named(tmp_path, checkpoint):
    with pytest.raises(ValueError, match="not found.*raft-things.pth"):
        load_raft(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth is not a readable PyTorch checkpoint"):
        load_raft(tmp_path / "junk.pth")
    state = torch.load(checkpoint[0], weights_only=True)
    del state["module.update_block.mask.2.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="missing update_block.mask.2.weight"):
        load_raft(tmp_path / "partial.pth")
    state["module.update_block.mask.2.weight"] = torch.zeros(9, 256, 1, 1)  # e.g. a different variant
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"wrong shape for update_block.mask.2.weight \(9, 256, 1, 1\)"):
        load_raft(tmp_path / "other.pth")


def test_lookup_window_centre_and_order():
    # Image 2 is image 1 shifted by (+2, -1): the correlation peaks 2 steps along x and 1 back along y.
    torch.manual_seed(1)
    fmap1 = torch.randn(1, 32, 16, 16)
    fmap2 = torch.roll(fmap1, shifts=(-1, 2), dims=(2, 3))
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    features = lookup(correlation_pyramid(fmap1, fmap2), torch.stack((xs, ys)).unsqueeze(0))
    side = 2 * RADIUS + 1
    assert features.shape == (1, 4 * side * side, 16, 16)
    best = features[0, :side * side, 4:12, 4:12].argmax(0)  # finest level, away from the borders
    assert (best == (RADIUS + 2) * side + (RADIUS - 1)).all()


def test_convex_upsampling_of_a_constant_flow_is_8x_the_flow():
    flow = torch.tensor([1.5, -0.5]).view(1, 2, 1, 1).expand(1, 2, 4, 5)
    up = convex_upsample(flow, torch.randn(1, 64 * 9, 4, 5))
    assert up.shape == (1, 2, 32, 40)
    assert torch.allclose(up[:, :, 8:24, 8:32], torch.tensor([12.0, -4.0]).view(1, 2, 1, 1), atol=1e-5)


def test_estimator_from_the_flow_setting(checkpoint):
    estimator = load_estimator("raft", weights=str(checkpoint[0]), device="cpu")
    assert isinstance(estimator, RAFTFlow)
    estimator.iterations = 2
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (2, 62, 69, 3), dtype=np.uint8)
    flow = estimator(a, b)
    assert flow.shape == (62, 69, 2) and flow.dtype == np.float32 and np.isfinite(flow).all() and flow.std() > 0
    # frames are padded to multiples of 8 (edge replication) and the flow cropped back into place
    pad = lambda x: F.pad(torch.from_numpy(x).permute(2, 0, 1)[None].float(), (1, 2, 1, 1), mode="replicate")[0]  # noqa: E731
    full = estimator(*(pad(x).permute(1, 2, 0).numpy().astype(np.uint8) for x in (a, b)))
    assert full.shape == (64, 72, 2)
    assert np.allclose(flow, full[1:63, 1:70], atol=1e-4)
    assert estimator(a[:20, :30], b[:20, :30]).shape == (20, 30, 2)  # padded up to 64 x 64


def test_a_job_with_flow_raft_propagates_with_raft(pipe, checkpoint, monkeypatch):
    """flow=raft reaches the propagation of the frames between keys, not only the keyframe batches, and
    the weights are read from disk once for the whole job."""
    from fresco_backend import raft
    from fresco_backend.config import JobConfig
    from fresco_backend.synthetic import moving_square
    from fresco_backend.translate import translate_frames

    reads, read = [], raft.read_weights
    monkeypatch.setattr(raft, "read_weights", lambda weights: reads.append(weights) or read(weights))
    monkeypatch.setattr(raft, "_SHARED", {})
    pairs = []
    real = RAFTFlow.__call__

    def counted(self, a, b):
        pairs.append(1)
        self.iterations = 1  # what is counted is the calls; one refinement keeps them quick
        return real(self, a, b)
    monkeypatch.setattr(RAFTFlow, "__call__", counted)
    config = JobConfig.of({"prompt": "x", "steps": 2, "size": 64, "strength": 0.5, "keyframes": "interval",
                           "key_interval": 4, "feature_optimization": False, "flow": "raft",
                           "flow_weights": str(checkpoint[0])})
    frames = dict(translate_frames(pipe, moving_square(frames=5, width=96, height=64).frames, config))
    assert sorted(frames) == list(range(5))
    # the key batch (keys 0 and 4): one pair, both directions; the span 0..4: four pairs, both directions
    assert len(pairs) == 2 + 8
    assert reads == [str(checkpoint[0])]  # not once for the key batch and again for the span


def test_the_estimator_is_read_once_per_file_and_again_when_the_file_changes(checkpoint, tmp_path, monkeypatch):
    import os
    import shutil

    from fresco_backend import raft

    monkeypatch.setattr(raft, "_SHARED", {})
    copy = shutil.copy(checkpoint[0], tmp_path / "raft.pth")
    first = load_estimator("raft", str(copy), "cpu")
    assert load_estimator("raft", str(copy), "cpu") is first
    assert load_estimator("raft", str(tmp_path / "." / "raft.pth"), "cpu") is first  # the same file, spelt otherwise
    stat = os.stat(copy)
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # replaced on disk: read again
    second = load_estimator("raft", str(copy), "cpu")
    assert second is not first and load_estimator("raft", str(copy), "cpu") is second
    assert len(raft._SHARED) == 1  # only the newest is kept
    os.remove(copy)
    with pytest.raises(ValueError, match="not found"):  # a file gone is refused, not served from memory
        load_estimator("raft", str(copy), "cpu")


def raft_small_like(path):
    """A checkpoint with the layout of the authors' raft-small.pth (a smaller encoder and update block)."""
    shapes = {"fnet.conv1.weight": (32, 3, 7, 7), "fnet.conv2.weight": (128, 96, 1, 1),
              "cnet.conv2.weight": (160, 96, 1, 1), "update_block.encoder.convc1.weight": (96, 324, 1, 1),
              "update_block.gru.convz.weight": (96, 242, 3, 3), "update_block.flow_head.conv1.weight": (128, 96, 3, 3)}
    torch.save({f"module.{k}": torch.zeros(shape) for k, shape in shapes.items()}, path)
    return path


def test_weights_that_are_no_usable_file_are_named_before_loading(tmp_path):
    import os

    from fresco_backend.flow import check_estimator

    fifo = tmp_path / "raft.pth"
    os.mkfifo(fifo)  # never opened: reading it would block
    (tmp_path / "folder.pth").mkdir()
    cases = [(f"{tmp_path}/a\0b.pth", "holds a NUL character"), (fifo, "not a regular file"),
             (tmp_path / "folder.pth", "not a regular file"),
             (raft_small_like(tmp_path / "raft-small.pth"), "raft-small checkpoint, which is not supported")]
    for path, message in cases:
        with pytest.raises(ValueError, match=message):
            check_estimator("raft", str(path))
        with pytest.raises(ValueError, match=message):
            load_raft(path)
    check_estimator("dis", str(fifo))  # DIS needs no weights
    with pytest.raises(ValueError, match="'gmflow'"):
        check_estimator("gmflow")


def test_a_legacy_format_checkpoint_is_read(tmp_path, checkpoint):
    """Checkpoints saved before torch 1.6 (no zip: no memory map) are read all the same."""
    path = tmp_path / "old.pth"
    torch.save(torch.load(checkpoint[0], weights_only=True), path, _use_new_zipfile_serialization=False)
    loaded = load_raft(path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in checkpoint[1].state_dict().items())


@pytest.mark.parametrize("case", ["missing", "raft-small"])
def test_cli_checks_the_flow_weights_before_anything_is_loaded(case, tiny_models, tmp_path, capsys, monkeypatch):
    from fresco_backend import cli
    from fresco_backend.synthetic import moving_square, write_video
    from fresco_backend.warm import WarmPipeline

    loads = []
    monkeypatch.setattr(WarmPipeline, "get", lambda self, *a, **k: loads.append(a))
    weights = tmp_path / "missing.pth" if case == "missing" else raft_small_like(tmp_path / "raft-small.pth")
    clip = write_video(tmp_path / "clip.mp4", moving_square(frames=3, width=64, height=64).frames)
    out = tmp_path / "out"
    code = cli.main(["translate", str(clip), "--out", str(out), "--prompt", "x", "--model", str(tiny_models[0]),
                     "--controlnet", str(tiny_models[1]), "--device", "cpu", "--flow", "raft",
                     "--flow-weights", str(weights)])
    err = capsys.readouterr().err
    assert code == 2 and str(weights) in err and "Traceback" not in err
    assert ("not found" if case == "missing" else "raft-small") in err
    assert not loads and not (out / cli.JOB_DIR).exists()


def test_server_fails_the_job_before_downloads_and_loads(tmp_path):
    from server.jobs import JobManager, LocalTranslator
    from server_support import error_messages, fake_models, run_job

    from fresco_contract import settings as S, wire

    cache = fake_models()
    manager = JobManager(tmp_path / "work", LocalTranslator(cache.use, lambda *a, **k: iter(())),
                         prepare=cache.prepare)
    weights = raft_small_like(tmp_path / "raft-small.pth")
    try:
        answer = run_job(manager, S.validate({"prompt": "x", "flow": "raft", "flow_weights": str(weights)}), [cv2_png()])
    finally:
        manager.shutdown()
    assert answer["state"] == wire.FAILED
    errors = error_messages(answer)
    assert len(errors) == 1 and "raft-small checkpoint" in errors[0] and str(weights) in errors[0]
    assert cache.warm.calls == []  # nothing loaded


def cv2_png() -> bytes:
    import cv2

    return cv2.imencode(".png", np.zeros((16, 16, 3), np.uint8))[1].tobytes()
