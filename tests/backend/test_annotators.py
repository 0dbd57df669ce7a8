"""Annotator conditions (fresco_backend/annotators.py): the networks have the released files' layout, weights
saved under the real file names load through the real loading path and give a condition; missing weights
name what to download. Networks are randomly initialised (never outside tests)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fresco_backend import annotators as A
from fresco_backend.annotator_nets.hed import HEDNet
from fresco_backend.annotator_nets.lineart import LineArtNet
from fresco_backend.conditions_cache import ConditionsCache
from fresco_backend.conditions import batch_conditions
from fresco_backend.config import JobConfig
from fresco_backend.synthetic import moving_square
from fresco_contract import hubcache

SIZE = 64


def job(*kinds: str) -> JobConfig:
    return JobConfig.of({"prompt": "x", "controls": [{"kind": kind, "scale": 1.0} for kind in kinds]})


@pytest.fixture(autouse=True)
def no_folder(tmp_path, monkeypatch):
    """No annotators folder and an empty hub cache unless a test gives them."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.delenv(A.ENV_FOLDER, raising=False)
    A.set_annotators_folder(None)
    yield
    A.set_annotators_folder(None)


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return moving_square(frames=2, width=SIZE, height=SIZE, square=24).frames


def tiny_dpt():
    """transformers' DPT-hybrid depth model (the architecture of Intel/dpt-hybrid-midas), a few layers wide."""
    from transformers import BitConfig, DPTConfig, DPTForDepthEstimation

    bit = BitConfig(embedding_size=16, hidden_sizes=[16, 32, 64], depths=[1, 1, 1], layer_type="bottleneck",
                    num_groups=8, global_padding="same", embedding_dynamic_padding=True,
                    out_features=["stage1", "stage2", "stage3"])
    config = DPTConfig(is_hybrid=True, backbone_config=bit, image_size=SIZE, patch_size=16, hidden_size=32,
                       num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                       backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[16, 32, 32, 32], fusion_hidden_size=16,
                       readout_type="project", backbone_featmap_shape=[1, 64, 4, 4])
    torch.manual_seed(0)
    return DPTForDepthEstimation(config)


@pytest.fixture(scope="module")
def weights_folder(tmp_path_factory):
    """An annotators folder as a user gives it: random weights under the released names."""
    folder = tmp_path_factory.mktemp("annotators")
    torch.manual_seed(0)
    torch.save(HEDNet().state_dict(), folder / "ControlNetHED.pth")
    torch.save(LineArtNet().state_dict(), folder / "sk_model.pth")
    tiny_dpt().save_pretrained(folder / "dpt-hybrid-midas")
    return folder


def shapes(net: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in net.state_dict().items()}


def test_hed_has_the_layout_of_controlnet_hed_pth():
    layout = shapes(HEDNet())
    assert layout["norm"] == (1, 3, 1, 1)
    assert layout["block1.convs.0.weight"] == (64, 3, 3, 3) and layout["block1.projection.weight"] == (1, 64, 1, 1)
    assert layout["block2.convs.1.weight"] == (128, 128, 3, 3) and layout["block3.convs.2.weight"] == (256, 256, 3, 3)
    assert layout["block5.convs.2.weight"] == (512, 512, 3, 3) and layout["block5.projection.bias"] == (1,)
    assert "block2.convs.2.weight" not in layout  # blocks 1-2 have two convolutions, 3-5 three
    assert len(layout) == 1 + 2 * (2 + 2 + 3 + 3 + 3) + 2 * 5


def test_lineart_has_the_layout_of_sk_model_pth():
    layout = shapes(LineArtNet())
    assert layout["model0.1.weight"] == (64, 3, 7, 7)
    assert layout["model1.0.weight"] == (128, 64, 3, 3) and layout["model1.3.weight"] == (256, 128, 3, 3)
    assert layout["model2.2.conv_block.5.weight"] == (256, 256, 3, 3) and "model2.3.conv_block.1.weight" not in layout
    assert layout["model3.0.weight"] == (256, 128, 3, 3) and layout["model3.3.weight"] == (128, 64, 3, 3)
    assert layout["model4.1.weight"] == (1, 64, 7, 7)
    assert not any("running" in key for key in layout)  # instance norm without statistics or affine parameters


def test_conditions_from_weights_in_the_annotators_folder(weights_folder, frames):
    A.set_annotators_folder(weights_folder)
    controls, _ = batch_conditions(frames, job("softedge", "tile", "lineart", "depth"), ConditionsCache(None), with_flow=False,
                                   device="cpu")
    assert len(controls) == 4
    for control in controls:
        assert control.shape == (2, 3, SIZE, SIZE) and control.dtype == torch.float32
        assert 0.0 <= control.min() and control.max() <= 1.0 and control.std() > 1e-3
    for control in (controls[0], controls[2], controls[3]):  # annotator maps: grey
        assert torch.equal(control[:, 0], control[:, 1]) and torch.equal(control[:, 0], control[:, 2])
    tile = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255.0
    assert torch.allclose(controls[1], tile)
    depth = controls[3]
    assert depth.amin(dim=(1, 2, 3)).eq(0).all() and depth.amax(dim=(1, 2, 3)).eq(1).all()  # per frame 0..255
    first = A.load_annotator("softedge", weights_folder / "ControlNetHED.pth", torch.device("cpu"))
    assert A.load_annotator("softedge", weights_folder / "ControlNetHED.pth", torch.device("cpu")) is first


def test_the_conditions_follow_controlnet_preprocessing(weights_folder, frames):
    """softedge = sigmoid(mean of the projections); lineart = 1 - generator output."""
    hed = A.load_annotator("softedge", weights_folder / "ControlNetHED.pth", torch.device("cpu"))
    lineart = A.load_annotator("lineart", weights_folder / "sk_model.pth", torch.device("cpu"))
    rgb = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        x, maps = rgb - hed.norm, []
        for index in range(1, 6):
            x, projection = getattr(hed, f"block{index}")(x if index == 1 else torch.nn.functional.max_pool2d(x, 2))
            maps.append(torch.nn.functional.interpolate(projection, size=(SIZE, SIZE), mode="bilinear"))
        edges = torch.sigmoid(torch.cat(maps, dim=1).mean(dim=1))
        lines = 1 - lineart(rgb / 255)[:, 0]
    got = A.annotate("softedge", frames, weights_folder / "ControlNetHED.pth", "cpu")
    assert np.abs(np.stack(got)[..., 0] - (edges * 255).numpy()).max() <= 1
    got = A.annotate("lineart", frames, weights_folder / "sk_model.pth", "cpu")
    assert np.abs(np.stack(got)[..., 0] - (lines * 255).numpy()).max() <= 1


def test_weights_from_the_hub_cache_record(weights_folder, tmp_path, frames):
    cache = tmp_path / "hub-cache"
    commit = "a" * 40
    snapshot = hubcache.repo_folder(cache, "lllyasviel/Annotators") / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "sk_model.pth").write_bytes((weights_folder / "sk_model.pth").read_bytes())
    size = (snapshot / "sk_model.pth").stat().st_size
    hubcache.write_record(cache, "lllyasviel/Annotators", commit, {"sk_model.pth": size})
    assert A.weights_path("lineart") == snapshot / "sk_model.pth"
    assert A.annotator_downloads(job("canny", "lineart", "softedge", "depth")) == [
        ("lllyasviel/Annotators", "ControlNetHED.pth"), ("Intel/dpt-hybrid-midas", "")]
    # a job carrying the render's depth pass needs no depth estimator
    assert A.annotator_downloads(job("canny", "lineart", "softedge", "depth"), rendered=("depth", "flow_next")) == [
        ("lllyasviel/Annotators", "ControlNetHED.pth")]
    A.set_annotators_folder(weights_folder)  # the folder comes first, then the cache
    assert A.weights_path("lineart") == weights_folder / "sk_model.pth"
    assert A.annotator_downloads(job("lineart", "softedge", "depth", "tile")) == []


COMMAND = "python -m fresco_backend.download "


@pytest.mark.parametrize("kind, names", [
    ("softedge", ["ControlNetHED.pth", COMMAND + "lllyasviel/Annotators --file ControlNetHED.pth"]),
    ("lineart", ["sk_model.pth", COMMAND + "lllyasviel/Annotators --file sk_model.pth"]),
    ("depth", ["Intel/dpt-hybrid-midas", COMMAND + "Intel/dpt-hybrid-midas`", "dpt-hybrid-midas"]),
])
def test_missing_weights_name_what_to_download(kind, names, frames, tmp_path):
    A.set_annotators_folder(tmp_path / "empty")
    cache = ConditionsCache(tmp_path / "cache")
    with pytest.raises(A.AnnotatorMissing) as info:
        batch_conditions(frames, job("canny", kind), cache, with_flow=True, device="cpu")
    message = str(info.value)
    assert f"the {kind} control" in message and "Models" in message and "FRESCO_ANNOTATORS" in message
    assert all(name in message for name in names), message
    assert not (tmp_path / "cache").exists()  # nothing computed before the error
    assert A.annotator_downloads(job("canny", kind)) == [hubcache.ANNOTATORS[kind]]


def test_a_file_of_another_network_is_refused(tmp_path, frames):
    torch.save(LineArtNet().state_dict(), tmp_path / "ControlNetHED.pth")
    (tmp_path / "sk_model.pth").write_bytes(b"not a torch file")
    A.set_annotators_folder(tmp_path)
    with pytest.raises(A.AnnotatorMissing, match="not the weights of this annotator"):
        A.annotate("softedge", frames, tmp_path / "ControlNetHED.pth", "cpu")
    with pytest.raises(A.AnnotatorMissing, match="not a readable PyTorch weights file"):
        A.annotate("lineart", frames, tmp_path / "sk_model.pth", "cpu")


def test_the_folder_comes_from_the_environment_when_it_is_used(tmp_path, monkeypatch):
    """FRESCO_ANNOTATORS is read when weights are looked for, not at import; --annotators comes first."""
    monkeypatch.setenv(A.ENV_FOLDER, str(tmp_path))  # after the import
    assert A.annotators_folder() == tmp_path
    with pytest.raises(A.AnnotatorMissing, match=f"annotators folder \\(now {tmp_path}\\)"):
        A.weights_path("softedge")
    A.set_annotators_folder(tmp_path / "given")
    assert A.annotators_folder() == tmp_path / "given"
    monkeypatch.delenv(A.ENV_FOLDER)
    A.set_annotators_folder(None)
    assert A.annotators_folder() is None


def test_tiny_jobs_with_tile_and_softedge_controls_run(tiny_models, tiny_controlnets, weights_folder, tmp_path):
    """The conditions reach the ControlNet: the same net and seed give another result for another control."""
    from diffusers import ControlNetModel

    from fresco_backend.models import load_pipeline
    from fresco_backend.translate import translate_frames

    net = ControlNetModel.from_pretrained(tiny_controlnets["tile"])
    torch.manual_seed(4)
    with torch.no_grad():  # diffusers zero-initialises the condition's embedding: make the condition count
        net.controlnet_cond_embedding.conv_out.weight.normal_(0.0, 0.2)
    net.save_pretrained(tmp_path / "controlnet")
    pipe = load_pipeline(str(tiny_models[0]), str(tmp_path / "controlnet"), device="cpu")
    clip = moving_square(frames=2, width=SIZE, height=SIZE, velocity=(4, 2), square=24).frames
    A.set_annotators_folder(weights_folder)

    def run(kind: str) -> list[np.ndarray]:
        settings = {"prompt": "a mosaic", "steps": 2, "size": SIZE, "opt_iterations": 1, "keyframes": "all",
                    "controls": [{"kind": kind, "scale": 1.0}]}
        return [rgb for _, rgb in translate_frames(pipe, clip, JobConfig.of(settings))]

    tile, canny, softedge = run("tile"), run("canny"), run("softedge")
    assert len(tile) == len(softedge) == 2 and tile[0].shape == clip[0].shape
    assert np.abs(tile[0].astype(int) - canny[0]).mean() > 0.05  # 0 when the condition is ignored
    assert np.abs(softedge[0].astype(int) - canny[0]).mean() > 0.05
