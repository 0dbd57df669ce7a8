"""The server's Ray mode (server/ray_pool.py): a real local Ray runtime, 2 CPU workers of one thread
each holding the tiny model, jobs run by an in-process JobManager.

The segment passes are a fake of ``fresco_backend/segments.py`` defined here (the workers import
this module): each key's output is the inverted input, found step by step with cancel checks;
the last segment of a job waits while the file ``closed`` is in the gate folder, so a test can
hold a job mid-way. With the real module installed, one segment is also compared byte for byte
with the plain server.
"""
from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

ray = pytest.importorskip("ray")

from fresco_contract import wire  # noqa: E402
from fresco_backend.config import JobConfig  # noqa: E402
from fresco_backend.denoise import StepClock  # noqa: E402
from server_support import OUTER_LIMIT, fake_cache, finish, wait_for  # noqa: E402

HERE = Path(__file__).resolve().parent
GATE_ENV = "FRESCO_TEST_RAY_GATE"
SETTINGS = {"prompt": "x", "steps": 2, "size": 64}
FRAMES = 9


# ---- the fake segments module (run inside the workers) ---------------------------


@dataclass(frozen=True)
class Segment:
    index: int
    anchor: int | None
    keys: list[int]


@dataclass(frozen=True)
class SegmentPlan:
    keys: list[int]
    skeleton: list[int]
    segments: list[Segment]

    def spans(self) -> list[tuple[int, int]]:
        return [(a, b) for a, b in zip(self.keys, self.keys[1:]) if b - a > 1]


def plan_segments(frames, config, segments: int) -> SegmentPlan:
    count = len(frames)
    keys = sorted(set(range(0, count, 2)) | {count - 1})
    inner = keys[1:-1]
    size = -(-len(inner) // segments)
    parts = [inner[i:i + size] for i in range(0, len(inner), size)] or [[]]
    return SegmentPlan(keys, [keys[0], keys[-1]], [Segment(i, keys[0], part) for i, part in enumerate(parts)])


def _key_output(frames, key: int, clock: StepClock, steps: int):
    import torch

    latents = []
    for _ in range(steps):
        time.sleep(0.02)
        clock.step()
        latents.append(torch.full((1, 4, 8, 8), float(key)))
    return 255 - np.asarray(frames[key]), latents


def run_skeleton(pipe, frames, config, plan, on_progress=None, cancel=None, cache=None):
    clock = StepClock(len(plan.skeleton) * config.sampling.steps, on_progress, cancel)
    found = {key: _key_output(frames, key, clock, config.sampling.steps) for key in plan.skeleton}
    return {k: v[0] for k, v in found.items()}, {k: v[1] for k, v in found.items()}


def run_segment(pipe, frames, config, plan, index, anchors, on_progress=None, cancel=None, cache=None):
    assert set(anchors) == set(plan.skeleton)
    segment = plan.segments[index]
    clock = StepClock(len(segment.keys) * config.sampling.steps, on_progress, cancel)
    gate = Path(os.environ[GATE_ENV]) / "closed"
    for key in segment.keys:
        while index == len(plan.segments) - 1 and gate.exists():
            clock.check_cancel()
            time.sleep(0.05)
        yield key, _key_output(frames, key, clock, config.sampling.steps)[0]


def propagate(frames, first, last, out_first, out_last, config):
    return [(i, 255 - np.asarray(frames[i])) for i in range(first + 1, last)]


# ---- fixtures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def gate(tmp_path_factory):
    return tmp_path_factory.mktemp("gate")


@pytest.fixture(scope="module")
def runtime(gate):
    """One local Ray runtime for the module; the workers find this module and the repo."""
    path = os.pathsep.join([str(HERE), str(HERE.parents[1]), str(HERE.parent / "support"), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=3, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, GATE_ENV: str(gate)}})
    yield
    ray.shutdown()


def pool_controlnets(tiny_models, tiny_controlnets) -> dict[str, str]:
    """The pool's --controlnet: tiny.py's for canny, a second tiny one for tile."""
    return {"canny": str(tiny_models[1]), "tile": str(tiny_controlnets["tile"])}


@pytest.fixture(scope="module")
def pool(runtime, tiny_models, tiny_controlnets, tmp_path_factory):
    from server.ray_pool import RayPool

    pool = RayPool(2, (str(tiny_models[0]), pool_controlnets(tiny_models, tiny_controlnets)), "cpu", segments=3, threads=1,
                   cache_dir=tmp_path_factory.mktemp("pool") / "cache", segments_module="test_server_ray")
    yield pool
    pool.shutdown()


def manager_on(pool, work: Path):
    from server.jobs import JobManager

    return JobManager(work, pool.translate, concurrency=2 * pool.size)


def clip(count: int = FRAMES) -> list[np.ndarray]:
    rng = np.random.default_rng(count)
    return [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(count)]


def submit(manager, frames: list[np.ndarray], settings: dict = SETTINGS) -> str:
    job = manager.create(dict(settings), len(frames))
    for i, rgb in enumerate(frames):
        manager.put_input(job.id, i, cv2.imencode(".png", rgb[..., ::-1])[1].tobytes())
    manager.start(job.id)
    return job.id


def output(manager, job_id: str, index: int) -> np.ndarray:
    data = manager.read_output(job_id, index)
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]


def frame_events(events: list[dict]) -> list[int]:
    return [e["index"] for e in events if e["type"] == wire.EV_FRAME]


def check_outputs(manager, job_id: str, frames: list[np.ndarray]) -> None:
    for i, rgb in enumerate(frames):
        assert np.array_equal(output(manager, job_id, i), 255 - rgb), f"frame {i}"


def runs_of(pool, kind: str, before: int = 0) -> list[tuple[str, str, int | None]]:
    return [h for h in pool.history[before:] if h[1] == kind]


def wait_idle(pool) -> None:
    deadline = time.monotonic() + OUTER_LIMIT
    while any(w["state"] == "busy" for w in pool.describe()["workers"]):
        assert time.monotonic() < deadline, "the workers stayed busy"
        time.sleep(0.1)


@pytest.fixture
def closed(gate):
    """The gate closed for the test (opened again at its end)."""
    (gate / "closed").touch()
    yield gate / "closed"
    (gate / "closed").unlink(missing_ok=True)


# ---- tests ----------------------------------------------------------------------


def test_several_segments_give_every_frame_once(pool, tmp_path):
    manager = manager_on(pool, tmp_path)
    frames = clip()
    before = len(pool.history)
    try:
        job_id = submit(manager, frames)
        answer = finish(manager, job_id)
    finally:
        manager.shutdown()
    assert answer["state"] == wire.DONE, answer["events"][-3:]
    assert sorted(frame_events(answer["events"])) == list(range(FRAMES))
    check_outputs(manager, job_id, frames)
    assert sorted(h[2] for h in runs_of(pool, "segment", before)) == [0, 1, 2]
    progress = [e for e in answer["events"] if e["type"] == wire.EV_PROGRESS]
    steps = (2 + 3) * SETTINGS["steps"]  # every step of the skeleton's 2 keys and the segments' 3, on both workers
    assert (progress[-1]["done"], progress[-1]["total"]) == (steps, steps)
    # the time left: none before the first finished step, then from all workers' rate (RayPool _Run._eta)
    timed = [i for i, e in enumerate(progress) if e["eta"] is not None]
    assert timed and progress[timed[0] - 1]["eta"] is None and progress[-1]["eta"] == 0.0
    assert all(progress[i]["done"] > 0 and progress[i]["eta"] >= 0 for i in timed)


def test_a_killed_worker_has_its_segment_run_again(pool, tmp_path, closed):
    manager = manager_on(pool, tmp_path)
    frames = clip()
    before = len(pool.history)
    try:
        job_id = submit(manager, frames)
        last = plan_segments(frames, SETTINGS, 3).segments[-1].keys
        others = set(plan_segments(frames, SETTINGS, 3).keys) - set(last)
        seen: set[int] = set()
        wait_for(manager, job_id, lambda e: e["type"] == wire.EV_FRAME and (seen.add(e["index"]) or others <= seen))
        wait_idle_but_one(pool)
        busy = [i for i, w in enumerate(pool.describe()["workers"]) if w["state"] == "busy"]
        pool.kill_worker(busy[0])
        closed.unlink()
        answer = finish(manager, job_id)
    finally:
        manager.shutdown()
    assert answer["state"] == wire.DONE, answer["events"][-3:]
    assert sorted(frame_events(answer["events"])) == list(range(FRAMES))
    check_outputs(manager, job_id, frames)
    assert [h[2] for h in runs_of(pool, "segment", before)].count(2) == 2
    assert len(pool.describe()["workers"]) == 2


def wait_idle_but_one(pool) -> None:
    deadline = time.monotonic() + OUTER_LIMIT
    while sum(w["state"] == "busy" for w in pool.describe()["workers"]) != 1:
        assert time.monotonic() < deadline, "the workers did not settle on the held segment"
        time.sleep(0.1)


def test_cancel_stops_every_task(pool, tmp_path, closed):
    manager = manager_on(pool, tmp_path)
    try:
        job_id = submit(manager, clip())
        wait_for(manager, job_id, lambda e: e["type"] == wire.EV_FRAME)
        manager.cancel(job_id)
        answer = finish(manager, job_id)
        assert answer["state"] == wire.CANCELLED
        wait_idle(pool)  # the held segment saw the cancel although its gate stays closed
    finally:
        manager.shutdown()


def test_a_restarted_server_resumes_without_redoing_finished_segments(pool, tmp_path, closed):
    frames = clip()
    plan = plan_segments(frames, SETTINGS, 3)
    first = manager_on(pool, tmp_path)
    try:
        job_id = submit(first, frames)
        needed = set(plan.skeleton) | set(plan.segments[0].keys)
        seen: set[int] = set()
        wait_for(first, job_id, lambda e: e["type"] == wire.EV_FRAME and (seen.add(e["index"]) or needed <= seen))
    finally:
        first.shutdown()
    wait_idle(pool)
    before = len(pool.history)
    closed.unlink()
    second = manager_on(pool, tmp_path)
    try:
        answer = finish(second, job_id)
    finally:
        second.shutdown()
    assert answer["state"] == wire.DONE, answer["events"][-3:]
    assert not runs_of(pool, "skeleton", before)
    assert 0 not in [h[2] for h in runs_of(pool, "segment", before)]
    assert not set(frame_events(answer["events"])) & needed  # written once, by the first server
    check_outputs(second, job_id, frames)


def test_two_jobs_progress_at_once(pool, tmp_path, closed):
    manager = manager_on(pool, tmp_path)
    frames = clip()
    try:
        first = submit(manager, frames)
        wait_for(manager, first, lambda e: e["type"] == wire.EV_FRAME)
        second = submit(manager, clip(7))
        wait_for(manager, second, lambda e: e["type"] == wire.EV_FRAME)
        assert manager.get(first).state == wire.RUNNING  # held by its gate: both run at once
        closed.unlink()
        answers = [finish(manager, job) for job in (first, second)]
    finally:
        manager.shutdown()
    assert [a["state"] for a in answers] == [wire.DONE, wire.DONE]
    check_outputs(manager, first, frames)
    check_outputs(manager, second, clip(7))


def test_health_reports_the_workers(pool, tmp_path):
    from fastapi.testclient import TestClient

    from server.app import create_app

    manager = manager_on(pool, tmp_path)
    app = create_app(manager, fake_cache("m"), "t" * 20, {"version": "test"},
                     workers=pool.describe)
    try:
        with TestClient(app) as client:
            health = client.get(wire.HEALTH, headers={wire.AUTH_HEADER: f"{wire.AUTH_SCHEME} {'t' * 20}"}).json()
    finally:
        manager.shutdown()
    assert health["workers"]["count"] == 2
    assert [w["device"] for w in health["workers"]["workers"]] == ["cpu", "cpu"]
    assert {w["state"] for w in health["workers"]["workers"]} <= {"idle", "busy"}


@pytest.mark.skipif(importlib.util.find_spec("fresco_backend.segments") is None,
                    reason="fresco_backend/segments.py is not there yet")
def test_one_segment_is_byte_identical_to_the_plain_server(pool, pipe, tmp_path, monkeypatch):
    from fresco_backend.translate import translate_frames
    from server.jobs import JobManager, LocalTranslator

    monkeypatch.setattr(pool, "segments", 1)
    monkeypatch.setattr(pool, "segments_module", "fresco_backend.segments")
    import torch

    frames = clip(5)
    plain = JobManager(tmp_path / "plain", LocalTranslator(lambda config: pipe, translate_frames))
    on_ray = manager_on(pool, tmp_path / "ray")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: CPU reductions round alike only with the same thread count
    try:
        jobs = [(m, submit(m, frames)) for m in (plain, on_ray)]
        assert [finish(m, j)["state"] for m, j in jobs] == [wire.DONE, wire.DONE]
        for i in range(len(frames)):
            assert plain.read_output(jobs[0][1], i) == on_ray.read_output(jobs[1][1], i), f"frame {i}"
    finally:
        torch.set_num_threads(threads)
        plain.shutdown()
        on_ray.shutdown()


@pytest.mark.skipif(importlib.util.find_spec("fresco_backend.segments") is None,
                    reason="fresco_backend/segments.py is not there yet")
def test_real_segments_in_parallel_give_the_reference_frames(pool, pipe, tmp_path, monkeypatch):
    import torch

    from fresco_backend.segments import translate_segmented

    monkeypatch.setattr(pool, "segments", 2)
    monkeypatch.setattr(pool, "segments_module", "fresco_backend.segments")
    frames = clip()
    settings = {**SETTINGS, "keyframes": "interval", "key_interval": 2, "batch_size": 2}
    manager = manager_on(pool, tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers
    before = len(pool.history)
    try:
        job_id = submit(manager, frames, settings)
        answer = finish(manager, job_id)
        reference = dict(translate_segmented(pipe, frames, JobConfig.of(settings), 2))
    finally:
        torch.set_num_threads(threads)
        manager.shutdown()
    assert answer["state"] == wire.DONE, answer["events"][-3:]
    assert sorted(frame_events(answer["events"])) == list(range(FRAMES))
    assert sorted(h[2] for h in runs_of(pool, "segment", before)) == [0, 1]
    for i in range(FRAMES):
        assert np.array_equal(output(manager, job_id, i), reference[i]), f"frame {i}"


@pytest.mark.skipif(importlib.util.find_spec("fresco_backend.segments") is None,
                    reason="fresco_backend/segments.py is not there yet")
def test_a_jobs_controlnets_and_loras_reach_the_workers(pool, tiny_models, tiny_controlnets, tiny_lora, tmp_path,
                                                        monkeypatch):
    """Two ControlNets and a LoRA on the workers give the plain server's frames (one warm-pipeline code
    path), and a job without them afterwards the plain base frames again."""
    import torch

    from fresco_backend.translate import translate_frames
    from fresco_backend.warm import WarmPipeline
    from server.jobs import JobManager, LocalTranslator
    from server.model_cache import ModelCache

    monkeypatch.setattr(pool, "segments", 1)
    monkeypatch.setattr(pool, "segments_module", "fresco_backend.segments")
    cache = ModelCache(WarmPipeline("cpu"), str(tiny_models[0]), pool_controlnets(tiny_models, tiny_controlnets))
    plain = JobManager(tmp_path / "plain", LocalTranslator(cache.for_settings, translate_frames))
    on_ray = manager_on(pool, tmp_path / "ray")
    styled = {**SETTINGS, "controls": [{"kind": "canny"}, {"kind": "tile", "scale": 0.9}],
              "loras": [{"path": str(tiny_lora), "weight": 1.5}]}
    frames = clip(3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers
    try:
        outputs = {}
        for name, settings in (("styled", styled), ("base", SETTINGS)):
            jobs = [(m, submit(m, frames, settings)) for m in (plain, on_ray)]
            assert [finish(m, j)["state"] for m, j in jobs] == [wire.DONE, wire.DONE]
            outputs[name] = [[m.read_output(j, i) for i in range(len(frames))] for m, j in jobs]
    finally:
        torch.set_num_threads(threads)
        plain.shutdown()
        on_ray.shutdown()
    for name in ("styled", "base"):
        assert outputs[name][0] == outputs[name][1], name
    assert all(a != b for a, b in zip(outputs["styled"][0], outputs["base"][0]))
    assert cache.load_count == 1


def test_a_free_worker_goes_to_the_job_holding_fewest(pool):
    """Job A holds both workers and waits for a third before job B asks: B gets the next free one."""
    import queue
    import threading

    wait_idle(pool)
    stop, got = threading.Event(), queue.Queue()
    held = [pool.acquire("A", stop), pool.acquire("A", stop)]

    def ask(run: str, waiting: int) -> None:
        threading.Thread(target=lambda: got.put((run, pool.acquire(run, stop))), daemon=True).start()
        deadline = time.monotonic() + OUTER_LIMIT
        while len(pool._waiting) != waiting:
            assert time.monotonic() < deadline
            time.sleep(0.01)

    try:
        ask("A", 1)
        ask("B", 2)
        pool.release(held.pop(), lost=False)
        run, slot = got.get(timeout=OUTER_LIMIT)
        held.append(slot)
        assert run == "B"
        pool.release(held.pop(0), lost=False)
        run, slot = got.get(timeout=OUTER_LIMIT)
        held.append(slot)
        assert run == "A"
    finally:
        stop.set()
        for slot in held:
            pool.release(slot, lost=False)
