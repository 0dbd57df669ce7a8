"""Resumable jobs: an interrupted run continues where it stopped and gives the same frames."""
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from fresco_contract.settings import validate
from fresco_backend.denoise import Cancelled
from fresco_backend.job import Job, JobMismatch
from fresco_backend.synthetic import moving_square, write_video
from fresco_backend.video_io import read_png

# 9 frames, keys every 2nd frame -> keys 0 2 4 6 8 -> batches [0 2 4] [0 4 6] [0 6 8]; odd frames propagated
SETTINGS = {"prompt": "stained glass", "steps": 4, "size": 64, "opt_iterations": 2, "batch_size": 3,
            "keyframes": "interval", "key_interval": 2, "seed": 5}


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    return write_video(path, moving_square(frames=9, width=64, height=64, velocity=(3, 1), square=20).frames)


@pytest.fixture(scope="module")
def reference(pipe, clip_path, tmp_path_factory):
    """The frames of an uninterrupted run."""
    job = Job(tmp_path_factory.mktemp("ref"), validate(SETTINGS), clip_path)
    assert sorted(job.run(pipe)) == list(range(9))
    return [read_png(p) for p in job.outputs()]


def same_as(reference, job):
    return all(np.array_equal(read_png(p), want) for p, want in zip(job.outputs(), reference))


def test_cancelled_job_resumes_without_redoing_finished_batches(pipe, clip_path, reference, tmp_path):
    cancel = threading.Event()
    job = Job(tmp_path, validate(SETTINGS), clip_path)
    checkpoint = job.checkpoint()
    finished = checkpoint.on_batch_done

    def stop_after_first(number, anchors):
        finished(number, anchors)
        cancel.set()

    checkpoint.on_batch_done = stop_after_first
    job.checkpoint = lambda: checkpoint
    with pytest.raises(Cancelled):
        list(job.run(pipe, cancel=cancel))
    assert [p.exists() for p in Job(tmp_path, validate(SETTINGS), clip_path).outputs()][:5] == [True] * 5

    resumed = Job(tmp_path, validate(SETTINGS), clip_path)
    assert resumed.checkpoint().batches_done == 1
    totals = []
    written = list(resumed.run(pipe, on_progress=lambda p: totals.append(p.total)))
    assert 0 not in written and 2 not in written  # batch 1's keys are not translated again
    assert totals[-1] == 2 * 3  # two batches of 3 executed steps left, not three
    assert same_as(reference, resumed)


def test_half_propagated_span_is_finished_on_rerun(pipe, clip_path, reference, tmp_path):
    job = Job(tmp_path, validate(SETTINGS), clip_path)
    list(job.run(pipe))
    job.output_path(7).unlink()  # as if the process died while propagating the last span
    again = Job(tmp_path, validate(SETTINGS), clip_path)
    assert list(again.run(pipe)) == [7]
    assert same_as(reference, again)


def test_a_folder_holds_one_job(clip_path, tmp_path):
    Job(tmp_path, validate(SETTINGS), clip_path)
    with pytest.raises(JobMismatch, match="holds another job"):
        Job(tmp_path, validate({**SETTINGS, "prompt": "charcoal"}), clip_path)


def test_killed_cli_run_resumes_to_identical_frames(clip_path, tiny_models, reference, tmp_path):
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "fresco_backend", "translate", str(clip_path), "--out", str(out),
            "--model", str(tiny_models[0]), "--controlnet", str(tiny_models[1]), "--device", "cpu"]
    for name, value in SETTINGS.items():
        argv += ["--" + name.replace("_", "-"), str(value)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    progress = out / ".fresco-job" / "state" / "progress.json"
    deadline = time.monotonic() + 240
    while not progress.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert progress.exists(), "the run ended before its first batch was recorded"

    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming the job" in rerun.stdout
    frames = sorted(out.glob("*.png"))
    assert len(frames) == 9 and not (out / ".fresco-job").exists()
    assert all(np.array_equal(read_png(p), want) for p, want in zip(frames, reference))


def test_new_prompt_on_the_same_clip_reuses_cached_flow_and_controls(pipe, clip_path, reference, tmp_path,
                                                                      monkeypatch):
    import fresco_backend.conditions as conditions

    calls = {"flow": 0, "control": 0}
    flow, control = conditions.estimate_batch_flow, conditions.control_image

    def counted_flow(*args):
        calls["flow"] += 1
        return flow(*args)

    def counted_control(*args):
        calls["control"] += 1
        return control(*args)

    monkeypatch.setattr(conditions, "estimate_batch_flow", counted_flow)
    monkeypatch.setattr(conditions, "control_image", counted_control)
    shared = tmp_path / "cache"
    first = Job(tmp_path / "a", validate(SETTINGS), clip_path, cache_dir=shared)
    list(first.run(pipe))
    assert calls == {"flow": 3, "control": 9}  # 3 batches of 3 keys
    assert same_as(reference, first)  # caching changes nothing

    second = Job(tmp_path / "b", validate({**SETTINGS, "prompt": "charcoal", "seed": 9}), clip_path, cache_dir=shared)
    list(second.run(pipe))
    assert calls == {"flow": 3, "control": 9}  # all hits
    third = Job(tmp_path / "c", validate({**SETTINGS, "canny_low": 20}), clip_path, cache_dir=shared)
    list(third.run(pipe))
    assert calls == {"flow": 3, "control": 18}  # a control setting misses the controls only
