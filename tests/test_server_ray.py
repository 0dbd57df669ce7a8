"""The server's Ray mode (server/ray_pool.py): a real local Ray runtime, 2 CPU workers of one thread
each holding the tiny model, jobs run by an in-process JobManager on the real segment passes
(``fresco_backend/segments.py``).

Which pass ran on which worker is read from the pool's log; a job is made long with more denoising
steps (LONG), a worker is lost by killing its actor (``ray.kill``). Every job's frames are compared
byte for byte with the sequential reference (``translate_segmented``, one torch thread as the workers).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

ray = pytest.importorskip("ray")

from fresco_contract import wire  # noqa: E402
from fresco_backend.config import JobConfig  # noqa: E402
from fresco_backend.segments import plan_segments  # noqa: E402
from server_support import OUTER_LIMIT, fake_cache, finish, wait_for  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SETTINGS = {"prompt": "x", "steps": 2, "size": 64, "keyframes": "interval", "key_interval": 2, "batch_size": 2}
LONG = {**SETTINGS, "steps": 30}  # a job that runs for a while: more denoising steps
FRAMES = 13  # 7 keys: a skeleton of 3, 3 segments (more than the workers) and 6 propagation spans
SEGMENTS = 3
PASS = "run %s: %s %s on worker %d (attempt %d)"  # the pool's log line of every pass started
LOST = "run %s: worker %d lost during %s %s (attempt %d): %s"


# ---- fixtures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def runtime():
    """One local Ray runtime for the module; the workers find the repo."""
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=3, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


def pool_controlnets(tiny_models, tiny_controlnets) -> dict[str, str]:
    """The pool's --controlnet: tiny.py's for canny, a second tiny one for tile."""
    return {"canny": str(tiny_models[1]), "tile": str(tiny_controlnets["tile"])}


@pytest.fixture(scope="module")
def pool(runtime, tiny_models, tiny_controlnets, tmp_path_factory):
    from server.ray_pool import RayPool

    pool = RayPool(2, (str(tiny_models[0]), pool_controlnets(tiny_models, tiny_controlnets)), "cpu",
                   segments=SEGMENTS, threads=1, cache_dir=tmp_path_factory.mktemp("pool") / "cache")
    yield pool
    pool.shutdown()


@pytest.fixture(scope="module")
def reference(pipe):
    """reference(count, settings): the frames of ``clip(count)`` by ``translate_segmented`` (computed once)."""
    import torch

    from fresco_backend.segments import translate_segmented

    found: dict[tuple, dict[int, np.ndarray]] = {}

    def frames(count: int = FRAMES, settings: dict = SETTINGS) -> dict[int, np.ndarray]:
        key = (count, tuple(sorted(settings.items())))
        if key not in found:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # as the workers: CPU reductions round alike only with the same thread count
            try:
                found[key] = dict(translate_segmented(pipe, clip(count), JobConfig.of(settings), SEGMENTS))
            finally:
                torch.set_num_threads(threads)
        return found[key]

    return frames


@pytest.fixture
def passes(caplog):
    """passes(): (run, kind, segment, worker, attempt) of every pass the pool started during the test."""
    caplog.set_level(logging.INFO, logger="fresco.server.ray")
    return lambda: [r.args for r in list(caplog.records) if r.name == "fresco.server.ray" and r.msg == PASS]


def lost(caplog) -> list[tuple]:
    """(kind, segment) of every pass whose worker was lost during the test."""
    return [r.args[2:4] for r in list(caplog.records) if r.name == "fresco.server.ray" and r.msg == LOST]


def manager_on(pool, work: Path):
    from server.jobs import JobManager

    return JobManager(work, pool.translate, concurrency=2 * pool.size)


def clip(count: int = FRAMES) -> list[np.ndarray]:
    rng = np.random.default_rng(count)
    return [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(count)]


def plan_of(count: int = FRAMES, settings: dict = SETTINGS):
    return plan_segments(clip(count), JobConfig.of(settings), SEGMENTS)


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


def check_outputs(manager, job_id: str, expected: dict[int, np.ndarray]) -> None:
    for i, rgb in expected.items():
        assert np.array_equal(output(manager, job_id, i), rgb), f"frame {i}"


def wait_idle(pool) -> None:
    """Until no worker runs a pass, as the workers themselves say (``Worker.cancels`` holds their runs)."""
    deadline = time.monotonic() + OUTER_LIMIT
    while any(w["state"] == "busy" for w in pool.describe()["workers"]) or \
            any(ray.get([s.actor.__ray_call__.remote(lambda worker: len(worker.cancels)) for s in pool.slots])):
        assert time.monotonic() < deadline, "the workers stayed busy"
        time.sleep(0.1)


# ---- tests ----------------------------------------------------------------------


def test_several_segments_give_every_frame_once(pool, tmp_path, passes, reference):
    manager = manager_on(pool, tmp_path)
    try:
        job_id = submit(manager, clip())
        answer = finish(manager, job_id)
    finally:
        manager.shutdown()
    assert answer["state"] == wire.DONE, answer["events"][-3:]
    assert sorted(frame_events(answer["events"])) == list(range(FRAMES))
    check_outputs(manager, job_id, reference())
    started = passes()
    assert sorted(p[2] for p in started if p[1] == "segment") == [0, 1, 2]
    assert {p[3] for p in started} == {0, 1}  # spread over both workers
    progress = [e for e in answer["events"] if e["type"] == wire.EV_PROGRESS]
    skeleton, segments = plan_of().steps(JobConfig.of(SETTINGS))
    steps = skeleton + sum(segments)  # every step of the skeleton and the segments, on both workers
    assert (progress[-1]["done"], progress[-1]["total"]) == (steps, steps)
    # the time left: none before the first finished step, then from all workers' rate (RayPool _Run._eta)
    timed = [i for i, e in enumerate(progress) if e["eta"] is not None]
    assert timed and progress[timed[0] - 1]["eta"] is None and progress[-1]["eta"] == 0.0
    assert all(progress[i]["done"] > 0 and progress[i]["eta"] >= 0 for i in timed)


def test_a_killed_worker_has_its_segment_run_again(pool, tmp_path, passes, caplog, reference):
    wait_idle(pool)
    ray.kill(pool.slots[1].actor, no_restart=True)  # the skeleton takes worker 0, the first free one
    manager = manager_on(pool, tmp_path)
    try:
        job_id = submit(manager, clip())
        answer = finish(manager, job_id)
    finally:
        manager.shutdown()
    assert answer["state"] == wire.DONE, answer["events"][-3:]
    assert sorted(frame_events(answer["events"])) == list(range(FRAMES))
    check_outputs(manager, job_id, reference())
    started = passes()
    _, kind, index, _, attempt = next(p for p in started if p[3] == 1)  # the first pass on the dead worker
    assert (kind, attempt) == ("segment", 1) and lost(caplog) == [("segment", index)]
    assert sorted(p[4] for p in started if p[1:3] == ("segment", index)) == [1, 2]  # run again
    assert [w["device"] for w in pool.describe()["workers"]] == ["cpu", "cpu"]  # replaced


def test_cancel_stops_every_task(pool, tmp_path):
    """The workers end their passes within steps of a cancel, not when their work is done."""
    manager = manager_on(pool, tmp_path)
    try:
        job_id = submit(manager, clip(), {**SETTINGS, "steps": 150})  # about a minute of work
        timed = wait_for(manager, job_id, lambda e: e["type"] == wire.EV_PROGRESS and e["eta"] is not None)
        cancelled = time.monotonic()
        manager.cancel(job_id)
        answer = finish(manager, job_id)
        assert answer["state"] == wire.CANCELLED
        wait_idle(pool)  # the workers' passes ended too
        took = time.monotonic() - cancelled
    finally:
        manager.shutdown()
    assert took < timed["eta"] / 4, (took, timed["eta"])  # their rest would take the time left, at their rate


def test_a_restarted_server_resumes_without_redoing_finished_segments(pool, tmp_path, passes, reference):
    plan = plan_of(settings=LONG)
    first = manager_on(pool, tmp_path)
    try:
        job_id = submit(first, clip(), LONG)
        seen: set[int] = set()

        def skeleton_and_a_segment_written(event: dict) -> bool:
            if event["type"] == wire.EV_FRAME:
                seen.add(event["index"])
            return set(plan.skeleton) <= seen and any(set(s.keys) <= seen for s in plan.segments)

        wait_for(first, job_id, skeleton_and_a_segment_written)
    finally:
        first.shutdown()
    finished = [s.index for s in plan.segments if set(s.keys) <= seen]
    wait_idle(pool)
    before = len(passes())
    second = manager_on(pool, tmp_path)
    try:
        answer = finish(second, job_id)
    finally:
        second.shutdown()
    assert answer["state"] == wire.DONE, answer["events"][-3:]
    again = passes()[before:]
    assert again, "the first server finished the job: nothing was left to resume"
    assert not [p for p in again if p[1] == "skeleton"]
    assert not [p for p in again if p[1] == "segment" and p[2] in finished]
    assert not set(frame_events(answer["events"])) & seen  # written once, by the first server
    check_outputs(second, job_id, reference(FRAMES, LONG))


def test_two_jobs_share_the_pool(pool, tmp_path, passes, reference):
    """A short job submitted while a long one runs gets a worker before the long one's last segment."""
    manager = manager_on(pool, tmp_path)
    try:
        first = submit(manager, clip(), LONG)
        wait_for(manager, first, lambda e: e["type"] == wire.EV_FRAME)  # its segments start now
        second = submit(manager, clip(7))
        answers = [finish(manager, job) for job in (first, second)]
    finally:
        manager.shutdown()
    assert [a["state"] for a in answers] == [wire.DONE, wire.DONE]
    started = passes()
    long_run = started[0][0]  # the first job's skeleton
    assert sum(p[0] != long_run for p in started) == 1 + 2  # the short job: a skeleton and 2 segments
    first_short = next(i for i, p in enumerate(started) if p[0] != long_run)
    assert first_short < max(i for i, p in enumerate(started) if p[0] == long_run)
    check_outputs(manager, first, reference(FRAMES, LONG))
    check_outputs(manager, second, reference(7))


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


def test_one_segment_is_byte_identical_to_the_plain_server(pool, pipe, tmp_path, monkeypatch):
    from fresco_backend.translate import translate_frames
    from server.jobs import JobManager, LocalTranslator

    monkeypatch.setattr(pool, "segments", 1)
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
