"""A clip's render passes as guidance (``render_passes.py``): the renderer's motion chained between keys with
its occlusion, depth and normals as ControlNet conditions, a ``flow: render`` job end to end on the tiny model
with every flow user counted, and bad pass files refused."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pass_files import encoded, write_passes

from fresco_backend import annotators, feature_opt, flow as flow_module, fresco_attention, translate
from fresco_backend.config import JobConfig
from fresco_backend.pass_files import read_pass
from fresco_backend.render_passes import PassMissing, RenderPasses, depth_image, normal_image
from fresco_backend.synthetic import moving_square
from fresco_backend.translate import finish_frames, translate_frames
from fresco_contract import passes
from fresco_contract.settings import SettingsError

SETTINGS = {"prompt": "a mosaic", "steps": 3, "size": 64, "opt_iterations": 2, "keyframes": "interval",
            "key_interval": 4, "flow": "render"}


@pytest.fixture(scope="module")
def clip():
    return moving_square(frames=9, width=64, height=64, velocity=(3, 1), square=24)


@pytest.fixture(scope="module")
def rendered(clip, tmp_path_factory):
    folder = write_passes(tmp_path_factory.mktemp("passes"), clip.render_passes())
    return RenderPasses(folder, tuple(passes.PASSES), len(clip.frames), (64, 64))


def test_the_motion_is_chained_between_keys_and_occlusion_comes_from_depth(clip, rendered):
    batch = rendered.batch_flow([0, 4, 8])
    inside = clip.square_mask(0) & np.roll(clip.square_mask(0), (-4, -4), (0, 1))  # well inside the square
    assert np.allclose(batch.fwd[0, :, inside].T.numpy(), [12, 4], atol=1e-3)  # 4 frames of (3, 1)
    x4, y4 = clip.positions[4]
    assert np.allclose(batch.bwd[0, :, y4 + 10, x4 + 10].numpy(), [-12, -4], atol=1e-3)
    ever = np.logical_or.reduce([clip.square_mask(i) for i in range(5)])
    background = ~ever  # never under the square: still
    assert np.abs(batch.fwd[0, :, background].numpy()).max() < 1e-3 and batch.occ_fwd[0, 0, background].max() == 0
    covered = ~clip.square_mask(0) & clip.square_mask(4)  # background of frame 0 under the square at frame 4
    assert batch.occ_fwd[0, 0, covered].mean() > 0.95
    passed = ~clip.square_mask(0) & ~clip.square_mask(4) & ever  # hidden on the way only: its chain is broken
    assert batch.occ_fwd[0, 0, passed].mean() > 0.95
    assert batch.occ_fwd[0, 0, inside].max() == 0  # the square itself is seen in both
    backwards = rendered.batch_flow([4, 0])  # the same pair the other way: flow_prev chained
    assert torch.allclose(backwards.fwd, batch.bwd[:1]) and torch.allclose(backwards.bwd, batch.fwd[:1])
    assert rendered.batch_flow([0, 4], size=(32, 32)).size == (32, 32)


def test_the_depth_test_marks_a_surface_in_front_where_the_motion_agrees(tmp_path):
    still = np.zeros((2, 16, 16), np.float32)
    far, near = np.full((1, 16, 16), 10.0, np.float32), np.full((1, 16, 16), 10.0, np.float32)
    near[:, 4:8, 4:8] = 2.0  # at frame 1 a surface in front of frame 0's, the motion does not tell
    write_passes(tmp_path, {"flow_next": [still, still], "flow_prev": [still, still], "depth": [far, near]})
    with_depth = RenderPasses(tmp_path, ("flow_next", "flow_prev", "depth"), 2, (16, 16)).batch_flow([0, 1])
    without = RenderPasses(tmp_path, passes.FLOW, 2, (16, 16)).batch_flow([0, 1])
    assert without.occ_fwd.sum() == 0
    assert with_depth.occ_fwd[0, 0, 4:8, 4:8].min() == 1 and with_depth.occ_fwd.sum() == 16
    assert with_depth.occ_bwd.sum() == 0  # frame 1's near surface is not behind anything of frame 0


def test_depth_and_normal_passes_become_the_conditions_their_controlnets_expect():
    depth = np.full((1, 8, 8), 10.0, np.float32)
    depth[:, 2:6, 2:6] = 2.0
    image = depth_image(depth)
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8
    assert image[3, 3, 0] == 255 and image[0, 0, 0] == 0  # near is white, far black (inverse depth)
    normal = np.zeros((3, 4, 4), np.float32)
    normal[2, :2] = 1.0   # facing the camera
    normal[0, 2:3] = 2.0  # to the right, not normalised
    colours = normal_image(normal)
    assert tuple(colours[0, 0]) == (128, 128, 255) and tuple(colours[2, 0]) == (255, 128, 128)
    assert tuple(colours[3, 0]) == (128, 128, 255)  # no surface: as if facing the camera


def count_flows(monkeypatch, rendered):
    """Every flow given to FRESCO's attention, its optimisation and propagation, and those of the render."""
    seen = {"render": [], "attention": [], "optimisation": [], "propagation": []}

    def spy(name, owner, attribute, pick):
        original = getattr(owner, attribute)

        def wrapped(*args, **kwargs):
            seen[name].append(pick(args, kwargs))
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, attribute, wrapped)

    original_flow = RenderPasses.batch_flow

    def render_flow(self, frames, size=None):
        out = original_flow(self, frames, size)
        seen["render"].append(out)
        return out

    monkeypatch.setattr(RenderPasses, "batch_flow", render_flow)
    spy("attention", fresco_attention.FrescoAttention, "new_batch", lambda a, k: a[2])
    spy("optimisation", feature_opt, "optimise_features", lambda a, k: a[1])
    spy("propagation", translate, "propagate_span", lambda a, k: k["flows"])

    def no_estimate(*_args, **_kwargs):
        raise AssertionError("a flow job of the render estimated a flow")

    monkeypatch.setattr(flow_module.OpenCVFlow, "__call__", no_estimate)
    monkeypatch.setattr(flow_module, "load_estimator", no_estimate)
    return seen


def test_a_render_flow_job_guides_attention_optimisation_and_propagation_with_the_render(
        pipe, clip, rendered, monkeypatch):
    seen = count_flows(monkeypatch, rendered)
    out = dict(translate_frames(pipe, clip.frames, JobConfig.of(SETTINGS), rendered=rendered))
    assert sorted(out) == list(range(9))
    batches = [f for f in seen["render"] if f.fwd.shape[0] == 2]  # the keys batch 0, 4, 8 at the work size
    spans = [f for f in seen["render"] if f.fwd.shape[0] == 4]    # two spans of 5 frames at the input size
    assert len(batches) == 1 and len(spans) == 2
    assert seen["attention"] == batches
    sizes = {tuple(f.size) for f in seen["optimisation"]}
    assert seen["optimisation"] and all(any(f is b.at_size(*f.size) for b in batches) for f in seen["optimisation"])
    assert len(sizes) >= 1 and seen["propagation"] == spans
    # finishing the keys follows the same motion and gives the same frames
    keys = {k: out[k] for k in (0, 4, 8)}
    finished = dict(finish_frames(clip.frames, keys, JobConfig.of(SETTINGS), rendered=rendered))
    assert all(np.array_equal(finished[i], out[i]) for i in range(9))


def test_the_render_flow_differs_from_the_estimate_and_needs_its_passes(pipe, clip, rendered):
    config = JobConfig.of({**SETTINGS, "steps": 2})
    with pytest.raises(PassMissing, match="flow 'render' needs the renderer's motion"):
        list(translate_frames(pipe, clip.frames, config))
    estimated = dict(translate_frames(pipe, clip.frames, JobConfig.of({**SETTINGS, "steps": 2, "flow": "dis"})))
    render = dict(translate_frames(pipe, clip.frames, config, rendered=rendered))
    assert any(not np.array_equal(estimated[i], render[i]) for i in range(9))


def test_the_depth_pass_replaces_the_estimator_and_normals_reach_their_controlnet(pipe, clip, rendered, monkeypatch):
    def no_annotator(*_args, **_kwargs):
        raise AssertionError("an annotator network ran although the render gave the condition")

    monkeypatch.setattr(annotators, "annotate", no_annotator)
    monkeypatch.setattr(annotators, "weights_path", no_annotator)
    conditions = []
    original = translate.denoise_batch

    def spy(pipe_, images, controls, *args, **kwargs):
        conditions.append(controls)
        return original(pipe_, images, controls, *args, **kwargs)

    monkeypatch.setattr(translate, "denoise_batch", spy)
    per_frame = {"prompt": "a mosaic", "steps": 2, "size": 64, "mode": "per_frame", "batch_size": 9}
    for kind, image in (("depth", depth_image), ("normal", normal_image)):
        conditions.clear()
        config = JobConfig.of({**per_frame, "controls": [{"kind": kind, "scale": 1.0}]})
        list(translate_frames(pipe, clip.frames[:3], config, rendered=rendered))
        expected = torch.from_numpy(np.stack([image(rendered.read(kind, i)) for i in range(3)])).permute(0, 3, 1, 2)
        assert torch.allclose(conditions[0][0], expected.float() / 255, atol=1e-6), kind
    config = JobConfig.of({**per_frame, "controls": [{"kind": "normal", "scale": 1.0}]})
    with pytest.raises(PassMissing, match="normal ControlNet needs the renderer's normals"):
        list(translate_frames(pipe, clip.frames[:3], config))


@pytest.mark.parametrize("values, dtype, problem", [
    (np.full((1, 64, 64), np.nan), "<f2", "not finite"),
    (np.full((1, 64, 64), 1.0), "<f4", "float16"),
    (np.full((1, 32, 64), 1.0), "<f2", "64x32; the input frames are 64x64"),
    (np.full((3, 64, 64), 1.0), "<f2", "expected 1 channel"),
    (np.full((1, 64, 64), -1.0), "<f2", "not positive"),
])
def test_bad_pass_files_are_refused_with_the_reason(values, dtype, problem):
    import io

    buffer = io.BytesIO()
    np.save(buffer, values.astype(dtype))
    with pytest.raises(passes.PassError, match=problem):
        read_pass("depth", buffer.getvalue(), (64, 64))
    with pytest.raises(passes.PassError, match="unknown pass"):
        read_pass("albedo", encoded("depth", np.ones((1, 64, 64))), (64, 64))
    with pytest.raises(passes.PassError, match="bytes of values"):
        read_pass("depth", encoded("depth", np.ones((1, 64, 64)))[:-2], (64, 64))


def test_settings_take_the_render_flow_and_the_normal_controlnet():
    assert JobConfig.of(SETTINGS).flow == "render"
    with pytest.raises(SettingsError, match="flow"):
        JobConfig.of({**SETTINGS, "flow": "renderer"})
    values = {"prompt": "x", "controls": [{"kind": "normal", "scale": 1.0}], "flow": "render"}
    from fresco_contract.settings import validate

    assert passes.required(validate(values)) == ("flow_prev", "flow_next", "normal")
    assert passes.useful(validate({"prompt": "x", "controls": [{"kind": "depth", "scale": 1.0}]})) == ("depth",)
