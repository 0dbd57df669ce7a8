"""Guided propagation of translated keys (fresco_backend.propagate) on synthetic clips with known answers.

The "translation" is a known invertible per-channel colour map (LUT), so the right output for every
in-between frame is the map applied to its input frame. Errors are mean absolute differences in uint8
levels (averaged over RGB). Measured with the default DIS flow on these clips (128 x 96, square 32):
two-sided spans, per frame, background <= 0.30 and square <= 2.3 (the error sits on the square's
1-px outline, where DIS blurs the motion boundary); revealed background <= 0.38 against >= 31 when
warped from the key that cannot see it; one-sided, 3 frames from the key: background <= 0.30, square
<= 2.5; ground-truth flow: <= 0.025 on average. Bounds leave a 2-4x margin.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from fresco_backend.flow import BatchFlow
from fresco_backend.keyframes import fixed_keys
from fresco_backend.metrics import pixel_mse
from fresco_backend.propagate import DEFAULT, Options, propagate_span
from fresco_backend.synthetic import SyntheticClip, moving_square

MAX_BACKGROUND, MAX_SQUARE, MAX_REVEALED, MAX_FRAME = 0.8, 5.0, 1.5, 0.8
MAX_EXACT_FLOW = 0.1

_LEVELS = np.arange(256, dtype=np.float64)
LUT = np.stack([255 - _LEVELS, 255 * (_LEVELS / 255) ** 0.6, 60 + 0.7 * _LEVELS], 1).round().astype(np.uint8)

CLIPS = {
    "v(3,2) span 8": lambda: moving_square(frames=9, velocity=(3, 2)),
    "v(8,0) span 4": lambda: moving_square(frames=5, velocity=(8, 0), start=(20, 30)),
    "v(-4,3) span 6": lambda: moving_square(frames=7, velocity=(-4, 3), start=(80, 10), seed=2),
}


def translate(frame: np.ndarray) -> np.ndarray:
    """The known "translation": LUT per channel."""
    return np.stack([LUT[frame[..., c], c] for c in range(3)], -1)


def error_map(out: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """Per-pixel mean absolute RGB error of ``out`` against the translation of input ``frame``."""
    return np.abs(out.astype(np.float64) - translate(frame)).mean(-1)


class ExactFlow:
    """Estimator returning the clip's ground-truth flow between any two of its frames."""

    def __init__(self, clip: SyntheticClip) -> None:
        self.clip = clip
        self.index = {frame.tobytes(): i for i, frame in enumerate(clip.frames)}

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        i, j = self.index[a.tobytes()], self.index[b.tobytes()]
        motion = np.asarray(self.clip.velocity, dtype=np.float32) * (j - i)
        return np.where(self.clip.square_mask(i)[..., None], motion, np.float32(0)).astype(np.float32)


def span_errors(clip: SyntheticClip, estimator=None) -> list[tuple[float, float, float]]:
    """(background, square, max) error of each in-between frame of the whole-clip span."""
    frames, last = clip.frames, len(clip.frames) - 1
    out = propagate_span(frames, translate(frames[0]), translate(frames[last]), estimator)
    assert len(out) == last - 1
    errors = []
    for t, result in enumerate(out, start=1):
        error, square = error_map(result, frames[t]), clip.square_mask(t)
        errors.append((error[~square].mean(), error[square].mean(), error.max()))
    return errors


@pytest.mark.parametrize("name", list(CLIPS))
def test_reproduces_known_translation_with_estimated_flow(name):
    errors = np.array(span_errors(CLIPS[name]()))
    print(name, "background", errors[:, 0].round(2), "square", errors[:, 1].round(2))
    assert errors[:, 0].max() <= MAX_BACKGROUND
    assert errors[:, 1].max() <= MAX_SQUARE


@pytest.mark.parametrize("name", list(CLIPS))
def test_exact_flow_reproduces_translation_almost_exactly(name):
    clip = CLIPS[name]()
    errors = np.array(span_errors(clip, ExactFlow(clip)))
    print(name, "exact flow: mean", errors[:, :2].max().round(3), "max", errors[:, 2].max())
    assert errors[:, :2].max() <= MAX_EXACT_FLOW


def test_revealed_background_comes_from_the_key_that_sees_it():
    # The square jumps 32 px (its own size) from k0 to k1: each key hides background the other shows.
    clip = CLIPS["v(8,0) span 4"]()
    frames = clip.frames
    out = propagate_span(frames, translate(frames[0]), translate(frames[-1]))
    plain = Options(residual=False)  # warped keys alone: what the hidden background would get from one key
    only_first = propagate_span(frames, translate(frames[0]), None, options=plain)
    only_last = propagate_span(frames[::-1], translate(frames[-1]), None, options=plain)[::-1]
    for t in range(1, 4):
        background = ~clip.square_mask(t)
        hidden_in_first, hidden_in_last = background & clip.square_mask(0), background & clip.square_mask(4)
        error = error_map(out[t - 1], frames[t])
        naive_first = error_map(only_first[t - 1], frames[t])[hidden_in_first].mean()
        naive_last = error_map(only_last[t - 1], frames[t])[hidden_in_last].mean()
        print(f"t={t}: hidden in k0 {error[hidden_in_first].mean():.2f} (from k0 alone {naive_first:.1f}), "
              f"hidden in k1 {error[hidden_in_last].mean():.2f} (from k1 alone {naive_last:.1f})")
        assert error[hidden_in_first].mean() <= MAX_REVEALED < 10 * MAX_REVEALED <= naive_first
        assert error[hidden_in_last].mean() <= MAX_REVEALED < 10 * MAX_REVEALED <= naive_last


def test_one_sided_spans_after_last_and_before_first_key():
    # Background the square covers in the only key cannot be recovered: it is reported, not bounded.
    clip = moving_square(frames=9, velocity=(3, 2))
    frames = clip.frames
    after = propagate_span(frames[5:], translate(frames[5]), None)
    before = propagate_span(frames[3::-1], translate(frames[3]), None)
    assert len(after) == 3 and len(before) == 3
    for key, t, result in [*((5, t, r) for t, r in zip(range(6, 9), after)),
                           *((3, t, r) for t, r in zip(range(2, -1, -1), before))]:
        error, square = error_map(result, frames[t]), clip.square_mask(t)
        hidden = ~square & clip.square_mask(key)
        print(f"one-sided k={key} t={t}: background seen by the key {error[~square & ~hidden].mean():.2f}, "
              f"square {error[square].mean():.2f}, background hidden in the key {error[hidden].mean():.1f}")
        assert error[~square & ~hidden].mean() <= MAX_BACKGROUND and error[square].mean() <= MAX_SQUARE


def test_streaming_a_clip_span_by_span_loses_no_frame():
    clip = moving_square(frames=11, velocity=(3, 2))
    frames, keys = clip.frames, fixed_keys(11, 4)  # 0, 4, 8, 10
    output = {k: translate(frames[k]) for k in keys}
    for k0, k1 in zip(keys[:-1], keys[1:]):
        output.update(zip(range(k0 + 1, k1), propagate_span(frames[k0:k1 + 1], output[k0], output[k1])))
    assert sorted(output) == list(range(11))
    worst = max(error_map(output[t], frames[t]).mean() for t in range(11))
    print(f"whole clip: worst frame mean error {worst:.2f}")
    assert worst <= MAX_FRAME


def test_identical_keys_on_a_static_clip_are_reproduced():
    frames = moving_square(frames=6, velocity=(0, 0)).frames
    key = translate(frames[0])
    out = propagate_span(frames, key, key)
    worst = max(int(np.abs(o.astype(int) - key).max()) for o in out)
    print("static clip: max difference to the key", worst)
    assert len(out) == 4 and worst <= 1


def _lab(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image.astype(np.float32) / 255, cv2.COLOR_RGB2Lab).reshape(-1, 3)


def test_brightness_offset_blends_to_intermediate_mean_without_contrast_loss():
    frames = moving_square(frames=6, velocity=(0, 0)).frames
    first = (frames[0] // 2 + 40).astype(np.uint8)  # levels 40..167: the +40 offset never clips
    last = first + np.uint8(40)
    out = propagate_span(frames, first, last)
    (mean0, mean1), (std0, std1) = zip(*((_lab(k).mean(0), _lab(k).std(0)) for k in (first, last)))
    for t, result in enumerate(out, start=1):
        lab = _lab(result)
        print(f"t={t}: L mean {lab[:, 0].mean():.2f} in [{mean0[0]:.2f}, {mean1[0]:.2f}], "
              f"std / min key std {(lab.std(0) / np.minimum(std0, std1)).round(3)}")
        assert np.all(lab.mean(0) >= np.minimum(mean0, mean1) - 0.5)
        assert np.all(lab.mean(0) <= np.maximum(mean0, mean1) + 0.5)
        assert np.all(lab.std(0) >= 0.97 * np.minimum(std0, std1))
        assert np.all(lab.std(0) <= 1.03 * np.maximum(std0, std1))


def test_blending_unrelated_textures_keeps_contrast():
    # Keys that disagree everywhere (different noise): a plain average loses ~30% of the spread midway.
    frames = moving_square(frames=5, velocity=(0, 0)).frames
    first, last = translate(frames[0]), translate(moving_square(frames=1, seed=7).frames[0])
    middle = propagate_span(frames, first, last)[1]
    key_std = np.minimum(_lab(first).std(0), _lab(last).std(0))
    plain = _lab(((first.astype(np.float64) + last) / 2).round().astype(np.uint8)).std(0) / key_std
    ours = _lab(middle).std(0) / key_std
    print(f"std / min key std, midway: plain average {plain.round(3)}, propagate {ours.round(3)}")
    assert np.all(plain < 0.85)
    assert np.all(ours >= 0.95)


def test_short_and_invalid_spans():
    frames = moving_square(frames=2).frames
    assert propagate_span(frames, frames[0], frames[1]) == []
    assert propagate_span(frames[:1], frames[0], None) == []
    with pytest.raises(ValueError):
        propagate_span(frames, frames[0], frames[1][:, :-1])
    with pytest.raises(ValueError):
        propagate_span(frames, frames[0].astype(np.float32), frames[1])


def test_residual_correction_repairs_background_no_key_sees():
    # One key only: the background the square hides in it gets the warped square's colours unless the key's
    # local input -> translation model corrects them by what the input frame shows there.
    clip = CLIPS["v(8,0) span 4"]()
    frames = clip.frames
    errors = {}
    for residual in (True, False):
        out = propagate_span(frames, translate(frames[0]), None, options=Options(residual=residual))
        hidden = [~clip.square_mask(t) & clip.square_mask(0) for t in range(1, 5)]
        errors[residual] = [error_map(o, f)[h].mean() for o, f, h in zip(out, frames[1:], hidden)]
    print("hidden in the key: with residual", np.round(errors[True], 1), "without", np.round(errors[False], 1))
    assert max(errors[True]) < 0.4 * min(errors[False])


class BiasedFlow(ExactFlow):
    """The clip's flow with the square's motion off by ``bias`` px in x: a misplaced moving edge."""

    def __init__(self, clip: SyntheticClip, bias: float) -> None:
        super().__init__(clip)
        self.bias = bias

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        flow = super().__call__(a, b)
        flow[..., 0] += np.where(self.clip.square_mask(self.index[a.tobytes()]), np.float32(self.bias), 0)
        return flow


def test_realignment_puts_misplaced_moving_edges_back():
    clip = moving_square(frames=3, velocity=(4, 1), seed=3)
    frames, near = clip.frames, cv2.dilate(clip.square_mask(1).astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    errors = {}
    for realign in (True, False):
        out = propagate_span(frames, translate(frames[0]), translate(frames[-1]), BiasedFlow(clip, 2.0),
                             Options(realign=realign, residual=False))
        errors[realign] = error_map(out[0], frames[1])[near].mean()
    print("around the square: realigned", round(errors[True], 2), "as warped", round(errors[False], 2))
    assert errors[True] < 0.5 * errors[False]


PAN = dict(height=64, width=96, frames=13, velocity=2, noise=4.0)


def noisy_pan(seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A camera pan (``PAN["velocity"]`` px per frame to the left) over smooth gradients with sensor noise, and
    its translation: the colour map plus a stroke texture fixed to the scene that the input does not show."""
    rng = np.random.default_rng(seed)
    height, width, count, velocity = PAN["height"], PAN["width"], PAN["frames"], PAN["velocity"]
    canvas_width = width + velocity * count
    ys, xs = np.mgrid[0:height, 0:canvas_width]
    canvas = np.stack([60 + 100 * xs / canvas_width, 80 + 80 * ys / height, 120 + 40 * np.sin(xs / 17)], -1)
    strokes = 40.0 * (cv2.GaussianBlur(rng.random((height, canvas_width)), (0, 0), 1.0) > 0.5) - 20
    frames, translated = [], []
    for t in range(count):
        view = np.s_[:, velocity * t:velocity * t + width]
        frames.append(np.clip(canvas[view] + rng.normal(0, PAN["noise"], (height, width, 3)), 0, 255).astype(np.uint8))
        translated.append(np.clip(translate(frames[-1]) + strokes[view][..., None], 0, 255).astype(np.uint8))
    return frames, translated


class PanFlow:
    """The pan's flow between any two of its frames, times ``scale`` (below 1: an estimator that lags the motion)."""

    def __init__(self, frames: list[np.ndarray], scale: float = 1.0) -> None:
        self.index, self.scale = {frame.tobytes(): i for i, frame in enumerate(frames)}, scale
        self.shape = frames[0].shape[:2]

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        steps = self.index[b.tobytes()] - self.index[a.tobytes()]
        motion = np.array([-PAN["velocity"] * steps * self.scale, 0], np.float32)
        return np.broadcast_to(motion, (*self.shape, 2)).copy()


def test_realignment_does_not_make_frames_flicker():
    # Composed flow that lags the pan by 20 % leaves the warped keys misplaced by growing fractions of a pixel;
    # a shift chosen afresh per frame from noisy patches jitters the stroke texture, one kept along the track
    # does not. Temporal error: Pixel-MSE of consecutive output frames (keys included) under the exact flow.
    frames, translated = noisy_pan()
    exact = PanFlow(frames)
    still = np.zeros(frames[0].shape[:2], np.float32)
    flow = BatchFlow.from_numpy([exact(a, b) for a, b in zip(frames, frames[1:])],
                                [exact(b, a) for a, b in zip(frames, frames[1:])], [still] * 12, [still] * 12)
    errors = {}
    for name, options in (("default", DEFAULT), ("realign", Options(realign=True)),
                          ("without realign", Options(realign=False))):
        out = propagate_span(frames, translated[0], translated[-1], PanFlow(frames, 0.8), options)
        errors[name] = 1e3 * pixel_mse([translated[0], *out, translated[-1]], flow)
    print("temporal Pixel-MSE x 1000:", {name: round(e, 3) for name, e in errors.items()})
    assert errors["realign"] <= 1.03 * errors["without realign"]
    assert errors["default"] <= 1.03 * errors["without realign"]
