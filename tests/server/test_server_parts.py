"""The server's job parts on the tiny model: a keys job, a finish job that only propagates (given keys,
no model), a preview that runs beside a strip job without changing its frames."""
from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

from fresco_backend.synthetic import moving_square
from fresco_backend.translate import translate_frames
from fresco_backend.warm import WarmPipeline
from fresco_contract import settings as S, wire
from server.jobs import InvalidJob, JobConflict, JobError, JobManager, LocalTranslator
from server.warm_models import WarmModels
from server_support import OUTER_LIMIT, finish, wait_for

CLIP = moving_square(frames=9, width=64, height=64, velocity=(3, 1), square=24)
SETTINGS = S.validate({"prompt": "a mosaic", "steps": 3, "size": 64, "opt_iterations": 2, "keyframes": "interval",
                       "key_interval": 4})


def png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))[1].tobytes()


def rgb(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]


class Counting:
    """``translate_frames`` that counts its calls (a finish job must never make one)."""

    def __init__(self, pause_after_first: threading.Event | None = None):
        self.calls, self.pause = 0, pause_after_first

    def __call__(self, *args, **kwargs):
        self.calls += 1
        for number, item in enumerate(translate_frames(*args, **kwargs)):
            yield item
            if number == 0 and self.pause is not None and kwargs.get("keys_only") is False \
                    and args[2].sampling.prompt == SETTINGS["prompt"]:
                assert self.pause.wait(OUTER_LIMIT), "the preview never finished beside the strip job"


@pytest.fixture
def setup(tiny_models, tmp_path):
    models = WarmModels(WarmPipeline("cpu"), str(tiny_models[0]), {"canny": str(tiny_models[1])})
    translate = Counting()
    manager = JobManager(tmp_path / "work", LocalTranslator(models.use, translate))
    yield manager, models, translate
    manager.shutdown()


def run(manager, frames, part=wire.ALL, keys=None, settings=SETTINGS) -> tuple[str, dict]:
    job = manager.create(settings, len(frames), part, sorted(keys or ()))
    for i, frame in enumerate(frames):
        manager.put_input(job.id, i, png(frame))
    for index, key in (keys or {}).items():
        manager.put_key(job.id, index, png(key))
    manager.start(job.id)
    return job.id, finish(manager, job.id)


def outputs(manager, job_id) -> dict[int, np.ndarray]:
    job = manager.get(job_id)
    return {i: rgb(manager.read_output(job_id, i)) for i in sorted(job.outputs)}


def test_keys_then_finish_equals_the_whole_job_and_loads_nothing(setup):
    manager, models, translate = setup
    whole_id, answer = run(manager, CLIP.frames)
    assert answer["state"] == wire.DONE
    whole = outputs(manager, whole_id)
    keys_id, answer = run(manager, CLIP.frames, wire.KEYS)
    assert answer["state"] == wire.DONE
    assert manager.get(keys_id).status()["keys"] == [0, 4, 8]
    keys = outputs(manager, keys_id)
    assert sorted(keys) == [0, 4, 8] and all(np.array_equal(keys[k], whole[k]) for k in keys)

    calls, loads = translate.calls, models.load_count
    finish_id, answer = run(manager, CLIP.frames, wire.FINISH, keys)
    assert answer["state"] == wire.DONE, answer["events"][-3:]
    assert translate.calls == calls and models.load_count == loads  # nothing was denoised, nothing loaded
    stages = [e["stage"] for e in answer["events"] if e["type"] == wire.EV_PROGRESS]
    assert "load model" not in stages and "propagate frames 2-4" in stages
    done = outputs(manager, finish_id)
    assert sorted(done) == list(range(9)) and all(np.array_equal(done[i], whole[i]) for i in range(9))


def test_a_redo_job_keeps_the_given_keys_and_translates_the_rest_again(setup):
    manager, _, _ = setup
    keys_id, _ = run(manager, CLIP.frames, wire.KEYS)
    keys = outputs(manager, keys_id)
    reseeded = {**SETTINGS, "seed": 11}
    redo_id, answer = run(manager, CLIP.frames, wire.KEYS, {0: keys[0], 4: keys[4]}, reseeded)
    assert answer["state"] == wire.DONE, answer["events"][-3:]
    assert manager.get(redo_id).status()["keys"] == [0, 4, 8]
    redone = outputs(manager, redo_id)
    assert np.array_equal(redone[0], keys[0]) and np.array_equal(redone[4], keys[4])
    assert not np.array_equal(redone[8], keys[8])
    batches = {e["stage"].split("batch ")[-1] for e in answer["events"]
               if e["type"] == wire.EV_PROGRESS and e["stage"].startswith("denoise")}
    assert batches == {"1/1"}  # the one batch of the keys after the kept ones


def test_a_finish_job_is_checked_and_survives_a_restart(setup, tmp_path, tiny_models):
    manager, models, _ = setup
    with pytest.raises(InvalidJob, match="last frame"):
        manager.create(SETTINGS, 9, wire.FINISH, [0, 4])
    with pytest.raises(InvalidJob, match="cannot be kept"):
        manager.create(SETTINGS, 9, wire.KEYS, [0, 8])
    with pytest.raises(InvalidJob, match="only a 'finish' or a 'keys' job"):
        manager.create(SETTINGS, 9, wire.ALL, [0])
    with pytest.raises(InvalidJob, match="part"):
        manager.create(SETTINGS, 9, "everything")
    job = manager.create(SETTINGS, 9, wire.FINISH, [0, 4, 8])
    for i, frame in enumerate(CLIP.frames):
        manager.put_input(job.id, i, png(frame))
    with pytest.raises(JobError, match="not one of job"):
        manager.put_key(job.id, 3, png(CLIP.frames[3]))
    with pytest.raises(JobError, match="one size"):
        manager.put_key(job.id, 4, png(CLIP.frames[4][:32]))
    for index in (0, 4):
        manager.put_key(job.id, index, png(CLIP.frames[index]))
    with pytest.raises(JobConflict, match="1 of its 3 keys not uploaded yet"):
        manager.start(job.id)
    manager.put_key(job.id, 8, png(CLIP.frames[8]))
    manager.shutdown()

    again = JobManager(tmp_path / "work", LocalTranslator(models.use, translate_frames))
    try:
        assert again.get(job.id).status()["uploaded_keys"] == 3
        again.start(job.id)
        assert finish(again, job.id)["state"] == wire.DONE
        done = outputs(again, job.id)
        # the input's own frames as keys: propagation gives frames close to the input itself
        assert max(np.abs(done[i].astype(int) - CLIP.frames[i]).mean() for i in range(9)) < 12
    finally:
        again.shutdown()


def test_a_preview_runs_between_the_strip_jobs_batches_and_changes_none_of_its_frames(tiny_models, tmp_path):
    settings = {**SETTINGS, "batch_size": 3, "key_interval": 2}  # keys 0 2 4 6 8 in batches 0 2 4 | 0 4 6 | 0 6 8
    models = WarmModels(WarmPipeline("cpu"), str(tiny_models[0]), {"canny": str(tiny_models[1])})
    alone = JobManager(tmp_path / "alone", LocalTranslator(models.use, translate_frames))
    try:
        alone_id, answer = run(alone, CLIP.frames, settings=settings)
        assert answer["state"] == wire.DONE
        expected = outputs(alone, alone_id)
    finally:
        alone.shutdown()

    preview_done = threading.Event()
    manager = JobManager(tmp_path / "work", LocalTranslator(models.use, Counting(pause_after_first=preview_done)))
    try:
        strip = manager.create(settings, 9)
        for i, frame in enumerate(CLIP.frames):
            manager.put_input(strip.id, i, png(frame))
        manager.start(strip.id)
        wait_for(manager, strip.id, lambda e: e["type"] == wire.EV_FRAME)  # its first batch is done; it waits
        look = {**settings, "prompt": "a watercolour", "seed": 3}
        preview = manager.create(look, 1, wire.PREVIEW)
        manager.put_input(preview.id, 0, png(CLIP.frames[4]))
        manager.start(preview.id)
        answer = finish(manager, preview.id)
        assert answer["state"] == wire.DONE and manager.get(strip.id).state == wire.RUNNING
        preview_done.set()
        assert finish(manager, strip.id)["state"] == wire.DONE
        got = outputs(manager, strip.id)
        assert all(np.array_equal(got[i], expected[i]) for i in range(9))
        assert models.load_count == 1  # the preview used the strip job's warm model
        with pytest.raises(InvalidJob, match="one batch"):
            manager.create(look, 4, wire.PREVIEW)
    finally:
        manager.shutdown()


def test_a_job_that_wants_other_models_waits_until_no_job_holds_the_pipeline():
    from fresco_backend.config import JobConfig
    from fresco_contract.progress import Cancelled
    from server_support import fake_models

    models = fake_models("model")
    same, other = JobConfig.of({"prompt": "a"}), JobConfig.of({"prompt": "b", "model": "another"})
    never = threading.Event()
    got: list[str] = []
    with models.use(same, never) as first:
        with models.use(same, never) as shared:  # the same model, ControlNets and LoRAs: held together
            assert shared is first
        cancel = threading.Event()
        cancel.set()
        with pytest.raises(Cancelled):
            with models.use(other, cancel):
                pass
        waiter = threading.Thread(target=lambda: got.append(models.use(other, never).__enter__().model))
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive() and not got  # it waits while the first job holds the pipeline
    waiter.join(OUTER_LIMIT)
    assert got == ["another"]
