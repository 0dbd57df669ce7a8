"""Optical flow helper: warping, occlusion, multi-scale BatchFlow, DIS accuracy against synthetic ground truth."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from fresco_backend.flow import (BatchFlow, BilinearWarp, FarnebackFlow, OpenCVFlow, estimate_batch_flow,
                                 load_estimator, occlusion, warp)
from fresco_backend.synthetic import SyntheticClip, appearing_square, moving_square

# Measured with the default OpenCVFlow (DIS) on these clips (128 x 96, square 32), per direction:
# mean EPE background 0.008-0.030 px, square 0.08-0.27 px; occlusion IoU 0.43-0.69, recall 0.80-0.98;
# false occlusions at most 5 px from the square. Bounds below leave a 2-4x margin.
MAX_EPE_BACKGROUND, MAX_EPE_SQUARE = 0.1, 0.6
MIN_IOU, MIN_RECALL, MAX_FALSE_DISTANCE = 0.33, 0.65, 8.0

CLIPS = {
    "v(3,2)": lambda: moving_square(frames=5, velocity=(3, 2)),
    "v(6,-4)": lambda: moving_square(frames=5, velocity=(6, -4), start=(40, 50)),
    "v(6,3) leaving": lambda: moving_square(frames=5, velocity=(6, 3), start=(90, 40), seed=3),
    "appearing": lambda: appearing_square(frames=6),
}


def _gt(clip: SyntheticClip) -> BatchFlow:
    return BatchFlow.from_numpy(*zip(*(clip.gt_flow(i) for i in range(len(clip.frames) - 1))))


def _rgb01(frames: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module", params=list(CLIPS))
def estimated(request) -> tuple[str, SyntheticClip, BatchFlow, BatchFlow]:
    clip = CLIPS[request.param]()
    return request.param, clip, estimate_batch_flow(clip.frames), _gt(clip)


# --- warp ---------------------------------------------------------------------------------------

def test_warp_integer_shift_is_exact_in_interior():
    src = torch.rand(2, 5, 20, 24)
    flow = torch.zeros(2, 2, 20, 24)
    flow[0, 0], flow[0, 1] = 3, -2   # out(x, y) = src(x + 3, y - 2)
    flow[1, 0], flow[1, 1] = -1, 4
    out = warp(src, flow)
    torch.testing.assert_close(out[0, :, 2:, :-3], src[0, :, :-2, 3:], rtol=0, atol=1e-5)
    torch.testing.assert_close(out[1, :, :-4, 1:], src[1, :, 4:, :-1], rtol=0, atol=1e-5)


def test_warp_half_pixel_is_bilinear_and_zero_flow_is_identity():
    src = torch.rand(1, 3, 10, 12)
    flow = torch.zeros(1, 2, 10, 12)
    torch.testing.assert_close(warp(src, flow), src, rtol=0, atol=1e-6)
    flow[:, 0] = 0.5
    torch.testing.assert_close(warp(src, flow)[..., :-1], (src[..., :-1] + src[..., 1:]) / 2, rtol=0, atol=1e-5)


def test_warp_pads_with_border_values():
    src = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 1, 4, 8).contiguous()
    flow = torch.zeros(1, 2, 4, 8)
    flow[:, 0] = 20  # every target beyond the right edge
    assert torch.all(warp(src, flow) == 7)


def test_warp_gradient_flows_to_src():
    src = torch.rand(1, 4, 16, 16, requires_grad=True)
    flow = torch.zeros(1, 2, 16, 16)
    flow[:, 0] = 2
    warp(src, flow).sum().backward()
    # each output pixel reads one source pixel with weight 1: columns 0-1 are never read, column 15 is read 3x
    expected = torch.ones(16, 16)
    expected[:, :2], expected[:, 15] = 0, 3
    torch.testing.assert_close(src.grad, expected.expand(1, 4, 16, 16), rtol=0, atol=1e-5)


@pytest.mark.parametrize("sparse", [True, False])
def test_bilinear_warp_operator_is_warp_and_its_adjoint_is_warps_gradient(sparse):
    """Fractional flow reaching past every border (the clamped corners): the operator (CSR, and the
    row gathers used off the CPU and CUDA) gives warp's values, and its adjoint autograd's gradient."""
    gen = torch.Generator().manual_seed(5)
    flow = torch.randn(3, 2, 7, 9, generator=gen) * 4
    src = torch.randn(3, 5, 7, 9, generator=gen, requires_grad=True)
    upstream = torch.randn(3, 5, 7, 9, generator=gen)
    operator = BilinearWarp(flow, sparse=sparse)
    rows = lambda t: t.flatten(2).transpose(1, 2).reshape(-1, 5)  # noqa: E731 - (N*H*W, C) tokens
    expected = warp(src, flow)
    expected.backward(upstream)
    torch.testing.assert_close(operator(rows(src.detach())), rows(expected.detach()), rtol=1e-5, atol=1e-5)
    adjoint = operator.adjoint_add(rows(upstream), torch.zeros_like(rows(upstream)))
    torch.testing.assert_close(adjoint, rows(src.grad), rtol=1e-5, atol=1e-5)
    assert (flow.abs() > 3).any() and src.grad.abs().max() > 1


# --- synthetic ground truth -----------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CLIPS))
def test_ground_truth_flow_warps_frames_exactly_where_visible(name):
    clip = CLIPS[name]()
    gt = _gt(clip)
    images = _rgb01(clip.frames)
    for flow, occ, target, other in ((gt.fwd, gt.occ_fwd, images[:-1], images[1:]),
                                     (gt.bwd, gt.occ_bwd, images[1:], images[:-1])):
        visible = (occ == 0).expand_as(target)
        error = (warp(other, flow) - target).abs()
        assert error[visible].max() < 1e-5
        assert occ.sum() > 0


def test_ground_truth_occlusion_counts():
    clip = moving_square(frames=3, velocity=(3, 2), square=32)
    _, _, occ_fwd, occ_bwd = clip.gt_flow(0)
    assert occ_fwd.sum() == occ_bwd.sum() == 3 * 32 + 2 * 32 - 3 * 2  # L-shaped strip covered / revealed
    entering = appearing_square(frames=3, velocity=(6, 1), square=32)
    fwd, bwd, occ_fwd, occ_bwd = entering.gt_flow(0)       # frame 0 has no square, frame 1 its first 6 columns
    assert not entering.square_mask(0).any() and not fwd.any()
    assert occ_fwd.sum() == occ_bwd.sum() == 6 * 32 and occ_bwd[:, :6].sum() == 6 * 32


def test_ground_truth_flows_pass_the_occlusion_check_exactly():
    for make in CLIPS.values():
        clip = make()
        gt = _gt(clip)
        images = _rgb01(clip.frames)
        occ_fwd, occ_bwd = occlusion(gt.fwd, gt.bwd, images[:-1], images[1:])
        assert torch.equal(occ_fwd, gt.occ_fwd) and torch.equal(occ_bwd, gt.occ_bwd)


def test_photometric_check_flags_colour_changes_above_threshold():
    frame_a = torch.rand(1, 3, 16, 16) * 0.4 + 0.3
    frame_b = frame_a.clone()
    frame_b[..., 2:6, 3:9] += 0.3     # mean abs RGB difference 0.3 > 0.25: occluded
    frame_b[..., 10:14, 3:9] -= 0.2   # 0.2: kept
    zero = torch.zeros(1, 2, 16, 16)  # consistent flows: only the photometric check can fire
    expected = torch.zeros(1, 1, 16, 16)
    expected[..., 2:6, 3:9] = 1
    occ_fwd, occ_bwd = occlusion(zero, zero, frame_a, frame_b)
    assert torch.equal(occ_fwd, expected) and torch.equal(occ_bwd, expected)


def test_moving_square_leaving_the_frame_renders():
    clip = moving_square(frames=20, velocity=(-6, 0))
    assert clip.positions[-1][0] < -clip.square and not clip.square_mask(19).any()


# --- DIS against ground truth ----------------------------------------------------------------------

def test_dis_end_point_error(estimated):
    name, _, est, gt = estimated
    for direction in ("fwd", "bwd"):
        flow, true = getattr(est, direction), getattr(gt, direction)
        visible = getattr(gt, "occ_" + direction)[:, 0] == 0
        on_square = true.abs().sum(1) > 0
        epe = (flow - true).norm(dim=1)
        background, square = epe[visible & ~on_square].mean().item(), epe[visible & on_square].mean().item()
        print(f"{name} {direction}: EPE background {background:.3f} px, square {square:.3f} px")
        assert background < MAX_EPE_BACKGROUND and square < MAX_EPE_SQUARE


def test_dis_occlusion_matches_ground_truth(estimated):
    name, clip, est, gt = estimated
    for direction in ("fwd", "bwd"):
        pred, true = getattr(est, "occ_" + direction) > 0, getattr(gt, "occ_" + direction) > 0
        iou = ((pred & true).sum() / (pred | true).sum()).item()
        recall = ((pred & true).sum() / true.sum()).item()
        print(f"{name} {direction}: occlusion IoU {iou:.3f}, recall {recall:.3f}")
        assert iou > MIN_IOU and recall > MIN_RECALL
        for i in range(len(clip.frames) - 1):  # false occlusions hug the moving square
            near = (clip.square_mask(i) | clip.square_mask(i + 1)).astype(np.uint8)
            distance = cv2.distanceTransform(1 - near, cv2.DIST_L2, 5)
            false = (pred & ~true)[i, 0].numpy()
            assert not false.any() or distance[false].max() <= MAX_FALSE_DISTANCE


def test_identical_frames_give_zero_flow_and_no_occlusion():
    frame = moving_square(frames=1).frames[0]
    result = estimate_batch_flow([frame, frame.copy(), frame])
    assert result.fwd.abs().max() < 0.05 and result.bwd.abs().max() < 0.05
    assert result.occ_fwd.sum() == 0 and result.occ_bwd.sum() == 0


def test_estimate_batch_flow_uses_the_given_estimator_in_both_directions():
    frames = [np.full((8, 10, 3), value, np.uint8) for value in (0, 1, 2)]
    calls = []

    def estimator(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        calls.append((int(a[0, 0, 0]), int(b[0, 0, 0])))
        return np.full((8, 10, 2), 10 * a[0, 0, 0] + b[0, 0, 0], np.float32)

    result = estimate_batch_flow(frames, estimator)
    assert sorted(calls) == [(0, 1), (1, 0), (1, 2), (2, 1)]
    assert result.fwd.shape == result.bwd.shape == (2, 2, 8, 10)
    assert result.occ_fwd.shape == result.occ_bwd.shape == (2, 1, 8, 10)
    assert result.fwd[:, 0, 0, 0].tolist() == [1, 12] and result.bwd[:, 0, 0, 0].tolist() == [10, 21]


def test_load_estimator():
    assert isinstance(load_estimator("dis"), OpenCVFlow)
    assert isinstance(load_estimator("DIS", weights="/ignored.pth"), OpenCVFlow)
    with pytest.raises(ValueError, match="'gmflow'.*available: dis, raft"):
        load_estimator("gmflow")
    with pytest.raises(ValueError, match="RAFT weights file not found: '/no/such/raft.pth'"):
        load_estimator("raft", weights="/no/such/raft.pth")
    with pytest.raises(ValueError, match="RAFT weights file not found"):
        load_estimator("raft")


def test_farneback_recovers_the_moving_square():
    clip = moving_square()
    fwd, _, occ_fwd, _ = clip.gt_flow(0)
    est = FarnebackFlow()(clip.frames[0], clip.frames[1])
    square = (clip.square_mask(0) & (occ_fwd < 0.5))
    error = np.linalg.norm(est - fwd, axis=-1)
    assert error[occ_fwd < 0.5].mean() < 1.0 and error[square].mean() < 2.0


# --- multi-scale --------------------------------------------------------------------------------

def _batch(fwd: torch.Tensor, occ: torch.Tensor) -> BatchFlow:
    return BatchFlow(fwd, -fwd, occ, occ.flip(-1))


@pytest.mark.parametrize("size", [(8, 12), (16, 16), (10, 30), (128, 192)])
def test_at_size_scales_constant_flow_exactly(size):
    fwd = torch.zeros(2, 2, 64, 96)
    fwd[:, 0], fwd[:, 1] = 4.0, -2.0
    small = _batch(fwd, torch.zeros(2, 1, 64, 96)).at_size(*size)
    height, width = size
    assert small.fwd.shape == (2, 2, height, width) and small.occ_fwd.shape == (2, 1, height, width)
    torch.testing.assert_close(small.fwd[:, 0], torch.full((2, height, width), 4.0 * width / 96))
    torch.testing.assert_close(small.fwd[:, 1], torch.full((2, height, width), -2.0 * height / 64))
    torch.testing.assert_close(small.bwd, -small.fwd)


def test_at_size_max_pools_masks_and_caches():
    generator = torch.Generator().manual_seed(0)
    occ = (torch.rand(3, 1, 64, 96, generator=generator) > 0.995).float()  # sparse single pixels
    flows = _batch(torch.zeros(3, 2, 64, 96), occ)
    small = flows.at_size(8, 12)
    cells = occ.view(3, 1, 8, 8, 12, 8).amax(dim=(3, 5))  # any occluded pixel in each 8 x 8 cell
    assert 0 < cells.sum() < cells.numel()
    assert torch.equal(small.occ_fwd, cells) and torch.equal(small.occ_bwd, cells.flip(-1))
    odd = flows.at_size(10, 30)  # overlapping windows: still every occluded pixel lands in an occluded cell
    ys, xs = torch.nonzero(occ[0, 0], as_tuple=True)
    assert torch.all(odd.occ_fwd[0, 0, ys * 10 // 64, xs * 30 // 96] == 1)
    assert flows.at_size(8, 12) is small and flows.at_size(64, 96) is flows
