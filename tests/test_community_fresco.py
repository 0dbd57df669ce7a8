"""benchmarks/community_fresco.py: when the community pipeline can run, and the OpenCV flow it is given in
place of GMFlow (the pipeline itself is not in this repo or the diffusers wheel, so it is not run here)."""
from __future__ import annotations

import sys

import numpy as np
import torch
import torch.utils.model_zoo

from benchmarks import community_fresco
from fresco_backend.synthetic import moving_square


def test_unavailable_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.delenv(community_fresco.ENV, raising=False)
    assert "examples/community/fresco_v2v.py" in community_fresco.unavailable()
    monkeypatch.setenv(community_fresco.ENV, str(tmp_path / "absent.py"))
    assert "is not a file" in community_fresco.unavailable()
    (tmp_path / "fresco_v2v.py").write_text("")
    monkeypatch.setenv(community_fresco.ENV, str(tmp_path / "fresco_v2v.py"))
    monkeypatch.setattr(community_fresco.importlib.util, "find_spec", lambda name: None)
    assert "einops" in community_fresco.unavailable()


def test_the_gmflow_stand_in_gives_forward_then_backward_flows_in_pixels():
    """GMFlow's results as the pipeline reads them: (2B, 2, H, W), the flows first -> second, then second ->
    first, (dx, dy) in pixels; on a square moving by (4, 2) a frame."""
    clip = moving_square(frames=3, width=96, height=96, square=32, velocity=(4, 2))
    images = torch.stack([torch.from_numpy(f).permute(2, 0, 1).float() for f in clip.frames])
    flows = community_fresco._DISFlowAsGMFlow(feature_channels=128)(images[:2], images[1:], pred_bidir_flow=True)
    (stacked,) = flows["flow_preds"]
    assert stacked.shape == (4, 2, 96, 96) and stacked.dtype == torch.float32
    square = (slice(40, 44), slice(40, 44))  # inside the square in frames 0 to 2 (it starts at (12, 12))
    forward, backward = stacked[:2, :, square[0], square[1]], stacked[2:, :, square[0], square[1]]
    np.testing.assert_allclose(forward.mean((2, 3)).numpy(), [[4, 2], [4, 2]], atol=0.3)
    np.testing.assert_allclose(backward.mean((2, 3)).numpy(), [[-4, -2], [-4, -2]], atol=0.3)


def test_loading_patches_only_the_flow(tmp_path, monkeypatch):
    """A stand-in for the community file that imports what fresco_v2v.py imports from GMFlow and diffusers'
    controlnet package, and downloads GMFlow's weights: it loads offline, with the stand-in flow."""
    (tmp_path / "fresco_v2v.py").write_text(
        "import torch.utils.model_zoo\n"
        "from gmflow.gmflow import GMFlow\n"
        "from diffusers.pipelines.controlnet.multicontrolnet import MultiControlNetModel\n"
        "WEIGHTS = torch.utils.model_zoo.load_url('https://huggingface.co/x/gmflow.pth')\n"
        "ON_DEVICE = torch.zeros(1).cuda().device.type\n")
    monkeypatch.setenv(community_fresco.ENV, str(tmp_path / "fresco_v2v.py"))
    monkeypatch.setattr(torch.Tensor, "cuda", torch.Tensor.cuda)  # restored after the test
    monkeypatch.setattr(torch.utils.model_zoo, "load_url", torch.utils.model_zoo.load_url)
    for name in ("gmflow", "gmflow.gmflow", "diffusers.pipelines.controlnet.multicontrolnet"):
        monkeypatch.setitem(sys.modules, name, sys.modules.get(name))  # what load_module adds goes afterwards
    module = community_fresco.load_module("cpu")
    assert module.GMFlow is community_fresco._DISFlowAsGMFlow
    assert module.WEIGHTS == {} and module.ON_DEVICE == "cpu"
    assert module.MultiControlNetModel.__name__ == "MultiControlNetModel"
