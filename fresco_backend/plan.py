"""The one plan of a job: its keys, the passes that translate them and the spans propagated between them.

``make_plan`` is made once per job from the clip, its ``JobConfig`` and a number of segments S; the
executor (``executor.py``) walks it, in this process (``translate.py``) or on Ray workers
(``server/ray_pool.py``). Everything is a frame index of the clip.

* Keys: the frames translated (``keyframes_for``: the ``keyframes`` setting; every frame in the
  per-frame mode). A *span* is two consecutive keys with frames between them; those frames are
  propagated from the outputs of both keys (``propagate.py``), so a span can run as soon as both exist.
* Passes: lists of batches (``fresco_contract.estimate.Batch``) translated in order by one worker.
  S = 1 is one pass over the whole chain (``key_batches``: FRESCO's anchored chain, or the per-frame
  grid) and no skeleton.
* S > 1 in FRESCO mode cuts the chain without losing its shared appearance. Every batch after the first
  is anchored to the global first key K0 and to the last key of the previous batch, whose latents it takes
  over at every denoising step. The keys after K0 are split into S contiguous groups of about equal batch
  count (whole batches, never an empty segment; S is capped so that every segment translates at least one
  key). The *skeleton* pass translates [K0] + the first key of groups 1..S-1 as an ordinary chain and
  records those keys' latents after every step; segment s translates the rest of its group, its first
  batch anchored to [K0, its skeleton key] (segment 0: [K0]) with the skeleton's latents (``Pass.needs``),
  its later batches chained inside the segment. A segment never needs another segment's output.
* A redo (``redo_plan``) keeps the keys before one, translated before, and translates the rest again as
  one chain anchored to the first key and the last kept one.
* S > 1 in the per-frame mode: the segments are groups of whole batches of the same grid (no anchors), so
  any S gives the frames of S = 1.
* Cuts (``find_cuts``: the ``cut_detection`` setting, FRESCO mode): each shot is a chain of its own. Its
  keys are chosen on the shot alone (its first and last frames among them, so a cut has a key on both
  sides and no span crosses it), its batches hold its keys only and its first batch is anchored to
  nothing (it is its own K0). S = 1: one pass of the shots' chains one after the other. S > 1: one
  segment per shot, no skeleton (a shot is never cut into segments: it shares nothing with the others).
  A redo anchors each shot's keys to the kept keys of that shot only; a finish refuses keys that leave a
  span across a cut. Without a cut the plan is the one above.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from fresco_contract.estimate import key_batches, prompt_keys
from fresco_contract.keys import KeysError, check_kept
from fresco_contract.wire import frame_filename

from .config import JobConfig, Keyframes, require
from .cuts import detect_cuts
from .keyframes import Batch, adaptive_keys, fixed_keys, plan_batches


class Clip(Sequence[np.ndarray]):
    """The frames at ``indices`` of a (possibly lazily read) clip, read on access and checked to have the
    clip's size."""

    def __init__(self, frames: Sequence[np.ndarray], indices: Sequence[int] | None = None,
                 shape: tuple[int, ...] | None = None):
        self.frames = frames
        self.indices = list(range(len(frames)) if indices is None else indices)
        self.shape = frames[0].shape if shape is None else shape

    def __len__(self) -> int:
        return len(self.indices)

    def _read(self, index: int) -> np.ndarray:
        frame = self.frames[index]
        if frame.shape != self.shape:
            raise ValueError(f"all frames of a clip must have the same size: frame {index} is "
                             f"{frame.shape[1]}x{frame.shape[0]}, the first is {self.shape[1]}x{self.shape[0]}")
        return frame

    def __getitem__(self, item):
        if isinstance(item, slice):
            return [self._read(i) for i in self.indices[item]]
        return self._read(self.indices[item])


def find_cuts(frames: Sequence[np.ndarray], config: JobConfig) -> tuple[int, ...] | None:
    """The first frame of every shot after the first (``cuts.detect_cuts``, reading every frame); None where
    the job does not look for cuts (``cut_detection`` off, or the per-frame mode, which has no chain)."""
    config = require(config)
    if not (config.cut_detection and config.fresco):
        return None
    return tuple(detect_cuts(frames[i] for i in range(len(frames))))


def shots(count: int, cuts: Sequence[int]) -> list[tuple[int, int]]:
    """(first frame, end) of each shot of a clip of ``count`` frames cut at ``cuts``; ValueError for cuts
    that are not ascending frames of the clip after its first."""
    if list(cuts) != sorted(set(cuts)) or any(not 0 < c < count for c in cuts):
        raise ValueError(f"cuts must be ascending frame indices from 1 to {count - 1}, got {list(cuts)[:20]}")
    bounds = [0, *cuts, count]
    return list(zip(bounds, bounds[1:]))


def keyframes_for(frames: Sequence[np.ndarray], config: JobConfig, cuts: Sequence[int] = ()) -> list[int]:
    """The frames translated (the first and the last are always among them), for the job's ``config``: its
    ``keyframes`` choice, with ``cuts`` on each shot alone, and where it has a prompt schedule, the frames where
    the look starts and ends changing."""
    config, count = require(config), len(frames)
    keys = config.keyframes
    if not config.fresco or keys.choice == "all":
        return list(range(count))
    chosen = [start + key for start, end in shots(count, cuts) for key in _chosen_keys(
        Clip(frames, range(start, end)), keys)]
    sampling = config.sampling  # a prompt schedule's changes and blends start at keys
    return sorted({*chosen, *prompt_keys((c.frame for c in sampling.prompt_schedule), sampling.prompt_blend, count)})


def _chosen_keys(frames: Sequence[np.ndarray], keys: Keyframes) -> list[int]:
    """The keys the ``keyframes`` choice (interval or adaptive) picks on ``frames`` alone."""
    if keys.choice == "interval":
        return fixed_keys(len(frames), keys.interval)
    return adaptive_keys((frames[i] for i in range(len(frames))), keys.min_gap, keys.max_gap)


@dataclass(frozen=True)
class Pass:
    """Batches one worker translates in order."""

    name: str                     # "skeleton" or "segment <s>", for logs and errors
    batches: tuple[Batch, ...]
    needs: tuple[int, ...] = ()   # skeleton keys whose recorded latents its batches are anchored to
    records: tuple[int, ...] = ()  # keys whose latents after every step it hands on (the skeleton's own)

    @property
    def keys(self) -> list[int]:
        """The keys it translates, in order."""
        return [key for batch in self.batches for key in batch.new]


@dataclass(frozen=True)
class Plan:
    """What one job runs: ``skeleton`` first (None with one segment), then the ``segments`` (in
    parallel where the runner can), and every span once both of its keys exist."""

    frames: int
    keys: tuple[int, ...]
    skeleton: Pass | None
    segments: tuple[Pass, ...]
    spans: tuple[tuple[int, int], ...]
    cuts: tuple[int, ...] = ()  # the first frame of every shot after the first

    @property
    def passes(self) -> tuple[Pass, ...]:
        return ((self.skeleton,) if self.skeleton else ()) + self.segments

    @property
    def batch_count(self) -> int:
        return sum(len(p.batches) for p in self.passes)

    def keys_only(self) -> Plan:
        """This plan without its spans: the keys are translated, nothing is propagated."""
        return replace(self, spans=())


def spans_between(keys: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """The spans of ``keys`` (ascending): two consecutive keys with frames between them."""
    return tuple((a, b) for a, b in zip(keys, keys[1:]) if b - a > 1)


def finish_plan(frames: int, keys: Sequence[int], cuts: Sequence[int] = ()) -> Plan:
    """The plan of filling in a clip of ``frames`` frames from ``keys`` translated before: no passes,
    every span propagated. KeysError where a span would cross one of ``cuts``: the keys must hold the
    frames on both sides of every cut."""
    missing = [c for c in cuts if c - 1 not in keys or c not in keys]
    if missing:
        raise KeysError(f"the strip has a cut before frame{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(frame_filename(c) for c in missing[:10])}, but the keys do not hold the frames "
                        f"on both sides of it: translate the keys again (a key is made on each side of a cut), or "
                        f"switch Detect Cuts off to propagate across it")
    return Plan(frames, tuple(keys), None, (), spans_between(keys), tuple(cuts))


def redo_plan(plan: Plan, kept: Sequence[int], config: JobConfig) -> Plan:
    """The keys-only plan that keeps the ``kept`` keys (translated before: ascending from the first frame on,
    ``fresco_contract.keys.check_kept``) and translates ``plan``'s keys after them again with ``config``: in
    FRESCO mode one chain whose first batch is anchored to the first key and the last kept one (their
    latents made from their outputs, ``executor.GivenKey``) and every later batch as in any chain; in the
    per-frame mode the grid of those keys."""
    check_kept(list(kept), plan.frames)
    redo = [key for key in plan.keys if key > kept[-1]]
    size = config.sampling.batch_size
    if not config.fresco:
        batches = key_batches(redo, size, False)
    else:  # each shot's keys anchored to the kept keys of that shot (without cuts: the one shot)
        batches = []
        for start, end in shots(plan.frames, plan.cuts):
            again = [key for key in redo if start <= key < end]
            held = [key for key in kept if start <= key < end]
            if again:
                batches += _chain(sorted({held[0], held[-1]}), again, size) if held else plan_batches(again, size)
    return Plan(plan.frames, tuple(kept) + tuple(redo), None, (_segment("redo", batches),), (), plan.cuts)


def _chain(anchors: list[int], keys: list[int], batch_size: int) -> list[Batch]:
    """Batches of ``keys``, the first anchored to ``anchors``, each later one to [anchors[0], the previous
    batch's last key]; anchors truncated to ``batch_size - 1`` as in ``plan_batches``."""
    batches: list[Batch] = []
    done = 0
    while done < len(keys):
        held = anchors[:batch_size - 1]
        new = keys[done:done + batch_size - len(held)]
        batches.append(Batch(held + new, len(held), new))
        done += len(new)
        anchors = [anchors[0], new[-1]]
    return batches


def _fresco_groups(rest: list[int], batch_size: int, segments: int) -> list[list[int]]:
    """``rest`` (the keys after K0) in contiguous groups of about equal batch count; every group after the
    first starts with its skeleton key and holds at least one more key."""
    count = max(1, min(segments, (len(rest) + 1) // 2))
    if count == 1:
        return [rest]
    first_new = batch_size - min(1, batch_size - 1)  # segment 0's first batch, anchored to K0 only
    new = batch_size - min(2, batch_size - 1)        # every other batch, anchored to two keys
    # fewest batches in all that hold the keys: segment 0 holds first_new + new * (b - 1), another 1 + new * b
    total = max(count, -(-(len(rest) - (count - 1) - first_new + new) // new))
    counts = [total // count + (i < total % count) for i in range(count)]
    sizes = [first_new + new * (counts[0] - 1)] + [1 + new * b for b in counts[1:]]
    least = [1] + [2] * (count - 1)
    for _ in range(sum(sizes) - len(rest)):  # trim the room left over from the largest groups, later first
        largest = max((i for i in range(count) if sizes[i] > least[i]), key=lambda i: (sizes[i], i))
        sizes[largest] -= 1
    starts = np.cumsum([0] + sizes).tolist()
    return [rest[a:b] for a, b in zip(starts, starts[1:])]


def _segment(name: str, batches: list[Batch]) -> Pass:
    """A segment pass; it needs the latents of the anchors that are not its own keys."""
    own = {key for batch in batches for key in batch.new}
    needs = sorted({f for batch in batches for f in batch.frames[:batch.anchors]} - own)
    return Pass(name, tuple(batches), tuple(needs))


def make_plan(frames: Sequence[np.ndarray], config: JobConfig, segments: int = 1,
              cuts: Sequence[int] | None = None) -> Plan:
    """The plan of translating the clip ``frames`` (uint8 RGB) with ``config`` in at most ``segments``
    segments; ``cuts``: the clip's (None: ``find_cuts``)."""
    if segments < 1:
        raise ValueError(f"segments must be >= 1, got {segments}")
    require(config)
    if cuts is None:
        cuts = find_cuts(Clip(frames), config) if len(frames) else ()
    if cuts and config.fresco:
        return _shots_plan(frames, config, segments, tuple(cuts))
    keys = keyframes_for(Clip(frames), config) if len(frames) else []
    size = config.sampling.batch_size
    spans = spans_between(keys)
    skeleton, passes = None, [key_batches(keys, size, config.fresco)]
    if not config.fresco and segments > 1:  # whole batches of the one grid
        grid = passes[0]
        count = max(1, min(segments, len(grid)))
        bounds = [round(i * len(grid) / count) for i in range(count + 1)]
        passes = [grid[a:b] for a, b in zip(bounds, bounds[1:])]
    elif config.fresco and len(groups := _fresco_groups(keys[1:], size, segments)) > 1:
        tops = [keys[0]] + [g[0] for g in groups[1:]]
        skeleton = Pass("skeleton", tuple(plan_batches(tops, size)), records=tuple(tops))
        passes = [_chain([keys[0]], groups[0], size)] + [_chain([keys[0], g[0]], g[1:], size) for g in groups[1:]]
    return Plan(len(frames), tuple(keys), skeleton,
                tuple(_segment(f"segment {i}", batches) for i, batches in enumerate(passes) if batches), spans)


def _shots_plan(frames: Sequence[np.ndarray], config: JobConfig, segments: int, cuts: tuple[int, ...]) -> Plan:
    """``make_plan`` of a clip with cuts: every shot its own chain; one pass of them all (``segments`` 1)
    or a segment per shot."""
    keys = keyframes_for(Clip(frames), config, cuts)
    size = config.sampling.batch_size
    chains = [plan_batches([k for k in keys if start <= k < end], size) for start, end in shots(len(frames), cuts)]
    passes = [[batch for chain in chains for batch in chain]] if segments == 1 else chains
    return Plan(len(frames), tuple(keys), None,
                tuple(_segment(f"segment {i}", batches) for i, batches in enumerate(passes)), spans_between(keys), cuts)
