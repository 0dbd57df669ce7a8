"""The server's Ray mode (server/ray_pool.py): a real local Ray runtime, 2 CPU workers of one thread
each holding the tiny model, jobs run by an in-process JobManager on the job's real plan.

Which pass ran on which worker is read from the pool's log; a job is made long with more denoising
steps (LONG), a worker is lost by killing its actor (``ray.kill``, found through ``RayPool.slots``).
Every job's frames are compared byte for byte with its plan walked here (``plan_walk.segmented``,
one torch thread as the workers). Tests wait for events (a frame, a progress item), each wait bounded.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

ray = pytest.importorskip("ray")

from fresco_contract import wire  # noqa: E402
from fresco_backend.config import JobConfig  # noqa: E402
from fresco_backend.plan import make_plan  # noqa: E402
from plan_walk import segmented  # noqa: E402
from server_support import OUTER_LIMIT, fake_models, finish, using, wait_for  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SETTINGS = {"prompt": "x", "steps": 2, "size": 64, "keyframes": "interval", "key_interval": 2, "batch_size": 2}
LONG = {**SETTINGS, "steps": 30}  # a job that runs for a while: more denoising steps
FRAMES = 13  # 7 keys: a skeleton of 3, 3 segments (more than the workers) and 6 propagation spans
SEGMENTS = 3
PASS = "run %s: %s on worker %d (attempt %d)"  # the pool's log line of every pass started
LOST = "run %s: worker %d lost during %s (attempt %d): %s"


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
                   segments=SEGMENTS, threads=1, conditions_dir=tmp_path_factory.mktemp("pool") / "cache")
    yield pool
    pool.shutdown()


@pytest.fixture(autouse=True)
def idle_after(request):
    """Every test leaves the pool's workers idle (each wait bounded)."""
    yield
    if "pool" in request.fixturenames:
        wait_idle(request.getfixturevalue("pool"))


@pytest.fixture(scope="module")
def reference(tiny_models):
    """reference(count, settings): the frames of ``clip(count)`` by the plan walked here (computed once), on a
    pipeline loaded here as the workers load theirs (the session's ``pipe`` may carry what earlier tests did)."""
    import torch

    from fresco_backend.models import load_pipeline

    pipe = load_pipeline(str(tiny_models[0]), str(tiny_models[1]), device="cpu")

    found: dict[tuple, dict[int, np.ndarray]] = {}

    def frames(count: int = FRAMES, settings: dict = SETTINGS) -> dict[int, np.ndarray]:
        key = (count, tuple(sorted(settings.items())))
        if key not in found:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # as the workers: CPU reductions round alike only with the same thread count
            try:
                found[key] = dict(segmented(pipe, clip(count), JobConfig.of(settings), SEGMENTS)[0])
            finally:
                torch.set_num_threads(threads)
        return found[key]

    return frames


@pytest.fixture
def passes(caplog):
    """passes(): (run, pass, worker, attempt) of every pass the pool started during the test."""
    caplog.set_level(logging.INFO, logger="fresco.server.ray")
    return lambda: [r.args for r in list(caplog.records) if r.name == "fresco.server.ray" and r.msg == PASS]


def lost(caplog) -> list[str]:
    """The pass of every pass whose worker was lost during the test."""
    return [r.args[2] for r in list(caplog.records) if r.name == "fresco.server.ray" and r.msg == LOST]


def manager_on(pool, work: Path):
    from server.jobs import JobManager

    return JobManager(work, pool.translate, concurrency=2 * pool.size)


def clip(count: int = FRAMES) -> list[np.ndarray]:
    rng = np.random.default_rng(count)
    return [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(count)]


def plan_of(count: int = FRAMES, settings: dict = SETTINGS):
    return make_plan(clip(count), JobConfig.of(settings), SEGMENTS)


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
    """Until no worker holds a run (``RayPool.describe``)."""
    deadline = time.monotonic() + OUTER_LIMIT
    while any(w["state"] == "busy" for w in pool.describe()["workers"]):
        assert time.monotonic() < deadline, "the workers stayed busy"
        time.sleep(0.1)


def named(records: list[tuple], name: str) -> list[tuple]:
    return [r for r in records if r[1] == name]


# ---- tests ----------------------------------------------------------------------


def test_several_segments_in_parallel_give_the_plans_frames_once(pool, tmp_path, reference, passes):
    manager = manager_on(pool, tmp_path)
    try:
        job_id = submit(manager, clip())
        answer = finish(manager, job_id)
    finally:
        manager.shutdown()
    assert answer["state"] == wire.DONE, answer["events"][-3:]
    assert sorted(frame_events(answer["events"])) == list(range(FRAMES))
    check_outputs(manager, job_id, reference())
    plan = plan_of()
    assert sorted(r[1] for r in passes()) == sorted(p.name for p in plan.passes)  # each pass once
    assert {r[2] for r in passes()} == {0, 1}  # on both workers
    progress = [e for e in answer["events"] if e["type"] == wire.EV_PROGRESS]
    steps = plan.batch_count * JobConfig.of(SETTINGS).sampling.executed_steps
    assert (progress[-1]["done"], progress[-1]["total"]) == (steps, steps)
    # the time left: none before the first finished step, then from all workers' rate (RayRunner._eta)
    timed = [i for i, e in enumerate(progress) if e["eta"] is not None]
    assert timed and progress[timed[0] - 1]["eta"] is None and progress[-1]["eta"] == 0.0
    assert all(progress[i]["done"] > 0 and progress[i]["eta"] >= 0 for i in timed)


def test_a_killed_worker_has_its_pass_run_again(pool, reference, passes, caplog):
    """The worker running the skeleton is killed as it reports its first stage; the pass runs again."""
    killed: list[int] = []

    def on_progress(progress) -> None:
        if not killed:
            busy = [slot for slot in pool.slots if slot.run is not None]
            killed.append(busy[0].index)
            ray.kill(busy[0].actor, no_restart=True)

    frames = dict(pool.translate(clip(), JobConfig.of(LONG), on_progress))
    assert sorted(frames) == list(range(FRAMES))
    assert all(np.array_equal(frames[i], rgb) for i, rgb in reference(FRAMES, LONG).items())
    assert lost(caplog) == ["skeleton"]
    assert [r[3] for r in named(passes(), "skeleton")] == [1, 2]
    assert len(pool.describe()["workers"]) == 2


def test_a_pass_waits_for_a_cancelled_pass_on_its_worker(pool, reference):
    """A worker asked to run a pass while a cancelled one still finishes its step runs them one after the
    other on its pipeline: the new pass's keys are the reference's (the driver frees a slot before the
    cancelled pass has stopped)."""
    from fresco_backend.executor import Frame
    from fresco_backend.models import choose_models

    actor = pool.slots[0].actor
    frames = ray.put(clip())
    models = choose_models(JobConfig.of(SETTINGS), *pool.default_models)
    expected = reference(FRAMES, SETTINGS)
    for attempt in range(3):
        slow = actor.run.options(num_returns="streaming").remote(
            f"slow{attempt}", models, frames, JobConfig.of(LONG), plan_of(FRAMES, LONG).skeleton, {})
        ray.get(next(slow))  # it runs
        actor.cancel.remote(f"slow{attempt}")
        quick = actor.run.options(num_returns="streaming").remote(
            f"quick{attempt}", models, frames, JobConfig.of(SETTINGS), plan_of().skeleton, {})
        keys = [item for item in map(ray.get, quick) if isinstance(item, Frame)]
        assert sorted(f.index for f in keys) == sorted(plan_of().skeleton.keys)
        assert all(np.array_equal(f.rgb, expected[f.index]) for f in keys), attempt
        with pytest.raises(ray.exceptions.RayTaskError):  # the slow one was cancelled
            for ref in slow:
                ray.get(ref)


def test_cancel_stops_every_task(pool, tmp_path):
    manager = manager_on(pool, tmp_path)
    try:
        job_id = submit(manager, clip(), LONG)
        wait_for(manager, job_id, lambda e: e["type"] == wire.EV_FRAME)
        manager.cancel(job_id)
        answer = finish(manager, job_id)
        assert answer["state"] == wire.CANCELLED
        wait_idle(pool)  # the running passes saw the cancel within a step
    finally:
        manager.shutdown()


def test_a_restarted_server_resumes_without_redoing_finished_segments(pool, tmp_path, reference, passes):
    plan = plan_of(FRAMES, LONG)
    first = manager_on(pool, tmp_path)
    needed = set(plan.skeleton.keys) | set(plan.segments[0].keys)
    try:
        job_id = submit(first, clip(), LONG)
        seen: set[int] = set()
        wait_for(first, job_id, lambda e: e["type"] == wire.EV_FRAME and (seen.add(e["index"]) or needed <= seen))
    finally:
        first.shutdown()
    wait_idle(pool)
    before = len(passes())
    second = manager_on(pool, tmp_path)
    try:
        answer = finish(second, job_id)
    finally:
        second.shutdown()
    assert answer["state"] == wire.DONE, answer["events"][-3:]
    again = [r[1] for r in passes()[before:]]
    assert "skeleton" not in again and "segment 0" not in again
    assert not set(frame_events(answer["events"])) & needed  # written once, by the first server
    check_outputs(second, job_id, reference(FRAMES, LONG))


def test_two_jobs_share_the_workers(pool, tmp_path, reference, passes):
    """A second job gets a worker before the first job's last pass: the one holding fewest goes first."""
    manager = manager_on(pool, tmp_path)
    try:
        first = submit(manager, clip(), LONG)
        wait_for(manager, first, lambda e: e["type"] == wire.EV_FRAME)  # its skeleton is done
        second = submit(manager, clip(7))
        answers = [finish(manager, job) for job in (first, second)]
    finally:
        manager.shutdown()
    assert [a["state"] for a in answers] == [wire.DONE, wire.DONE]
    check_outputs(manager, first, reference(FRAMES, LONG))
    check_outputs(manager, second, reference(7))
    runs = [r[0] for r in passes()]  # the run of every pass started, in order
    second_run = next(run for run in runs if run != runs[0])
    assert runs.index(second_run) < max(i for i, run in enumerate(runs) if run == runs[0])


def test_health_reports_the_workers(pool, tmp_path):
    from fastapi.testclient import TestClient

    from server.app import create_app

    manager = manager_on(pool, tmp_path)
    app = create_app(manager, fake_models("m"), "t" * 20, {"version": "test"},
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
    plain = JobManager(tmp_path / "plain", LocalTranslator(using(lambda config: pipe), translate_frames))
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



def test_a_redo_on_the_pool_is_the_redo_here(pool, pipe):
    """A redo is one chain on one worker, its first batch anchored to the kept keys: the frames of the redo
    walked here, although the pool cuts a plain job into segments."""
    import torch

    from fresco_backend.translate import translate_frames

    frames, reseeded = clip(FRAMES), JobConfig.of({**SETTINGS, "seed": 5})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: CPU reductions round alike only with the same thread count
    try:
        keys = dict(translate_frames(pipe, frames, JobConfig.of(SETTINGS), keys_only=True))
        kept = {k: keys[k] for k in (0, 2, 4)}
        here = dict(translate_frames(pipe, frames, reseeded, keys_only=True, kept=kept))
    finally:
        torch.set_num_threads(threads)
    there = dict(pool.translate(frames, reseeded, keys_only=True, kept=kept))
    assert sorted(there) == sorted(here) == sorted(keys)
    assert all(np.array_equal(here[k], there[k]) for k in here)
    assert all(np.array_equal(there[k], kept[k]) for k in kept)  # as given


def test_a_jobs_controlnets_and_loras_reach_the_workers(pool, tiny_models, tiny_controlnets, tiny_lora, tmp_path,
                                                        monkeypatch):
    """Two ControlNets and a LoRA on the workers give the plain server's frames (one warm-pipeline code
    path), and a job without them afterwards the plain base frames again."""
    import torch

    from fresco_backend.translate import translate_frames
    from fresco_backend.warm import WarmPipeline
    from server.jobs import JobManager, LocalTranslator
    from server.warm_models import WarmModels

    monkeypatch.setattr(pool, "segments", 1)
    cache = WarmModels(WarmPipeline("cpu"), str(tiny_models[0]), pool_controlnets(tiny_models, tiny_controlnets))
    plain = JobManager(tmp_path / "plain", LocalTranslator(cache.use, translate_frames))
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


def test_a_masked_job_on_the_pool_keeps_the_source_outside_the_mask(pool, tmp_path):
    """Every frame the pool gives, key or propagated, passes the mask's composite (``mask.composited``)."""
    from pass_files import write_passes

    from fresco_backend.render_passes import RenderPasses

    frames = clip(5)
    height, width = frames[0].shape[:2]
    region = np.zeros((1, height, width), np.float32)
    region[:, 8:40, 4:36] = 1
    rendered = RenderPasses(write_passes(tmp_path, {"mask": [region] * 5}), ("mask",), 5, (width, height))
    out = dict(pool.translate(frames, JobConfig.of({**SETTINGS, "mask": "alpha", "mask_feather": 0}),
                              rendered=rendered))
    assert sorted(out) == list(range(5))
    for i, rgb in out.items():
        assert np.array_equal(rgb[region[0] == 0], frames[i][region[0] == 0]), i
        assert not np.array_equal(rgb[region[0] == 1], frames[i][region[0] == 1]), i
