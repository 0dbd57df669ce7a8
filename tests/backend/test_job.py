"""Resumable jobs: an interrupted run continues where it stopped and gives the same frames."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import fresco_backend.job as job_module
from fresco_contract.progress import Cancelled
from fresco_contract.settings import validate
from fresco_backend.job import FORMAT, RECORD, Job, JobMismatch
from fresco_backend.synthetic import moving_square, write_video
from fresco_backend.video_io import ClipError, read_png, write_png_atomic

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


def with_progress(job: Job) -> Job:
    """Record a finished first batch, as a run would (no pipeline needed)."""
    job.layout.checkpoint_store().batch_done(0, {})
    return job


def test_a_folder_holds_one_job(clip_path, tmp_path):
    with_progress(Job(tmp_path, validate(SETTINGS), clip_path))
    with pytest.raises(JobMismatch, match=r"holds another, unfinished job \(1 batch\(es\) done\).*prompt"):
        Job(tmp_path, validate({**SETTINGS, "prompt": "charcoal"}), clip_path)
    assert Job(tmp_path, validate(SETTINGS), clip_path).checkpoint().batches_done == 1  # still there


def test_a_job_without_progress_is_replaced(clip_path, tmp_path):
    Job(tmp_path, validate(SETTINGS), clip_path)
    other = Job(tmp_path, validate({**SETTINGS, "prompt": "charcoal"}), clip_path)
    assert "prompt" in other.started_over and other.checkpoint().batches_done == 0


def test_a_failed_decode_does_not_block_the_fixed_input(clip_path, tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video")
    with pytest.raises(ClipError):
        Job(tmp_path / "job", validate(SETTINGS), garbage)
    job = Job(tmp_path / "job", validate(SETTINGS), clip_path)
    assert len(job.frames) == 9 and "not the one the job started on" not in (job.started_over or "")


@pytest.mark.parametrize("change, needle", [
    ({"frames": 12, "width": 96}, "12 frames instead of 9"),
    ({"width": 96}, "frames of 96x64 instead of 64x64"),
    ({"velocity": (1, 3)}, "other picture content (the frames' SHA-256 differs)"),
])
def test_another_clip_at_the_same_path_is_not_resumed(change, needle, tmp_path):
    clip = tmp_path / "clip.mp4"
    shape = {"frames": 9, "width": 64, "height": 64, "velocity": (3, 1), "square": 20}
    write_video(clip, moving_square(**shape).frames)
    with_progress(Job(tmp_path / "job", validate(SETTINGS), clip))
    write_video(clip, moving_square(**{**shape, **change}).frames)
    with pytest.raises(JobMismatch, match="is not the one the job started on: " + re.escape(needle)):
        Job(tmp_path / "job", validate(SETTINGS), clip)
    restarted = Job(tmp_path / "job", validate(SETTINGS), clip, restart=True)
    assert restarted.checkpoint().batches_done == 0 and len(restarted.frames) == change.get("frames", 9)


def test_the_same_clip_elsewhere_resumes_and_decodes_once(clip_path, tmp_path, monkeypatch):
    with_progress(Job(tmp_path / "job", validate(SETTINGS), clip_path))
    moved = tmp_path / "moved.mp4"
    moved.write_bytes(clip_path.read_bytes())
    written = []
    monkeypatch.setattr(job_module, "write_png_atomic", lambda path, rgb: written.append(path))
    job = Job(tmp_path / "job", validate(SETTINGS), moved)
    assert job.started_over is None and job.checkpoint().batches_done == 1 and len(job.frames) == 9
    assert written == []  # checked by hashing while decoding; the stored frames are not rewritten


def test_relative_and_absolute_model_paths_are_one_job(clip_path, tiny_models, tmp_path, monkeypatch):
    model, controlnet = tiny_models
    monkeypatch.chdir(model.parent)
    relative = {"controlnet": controlnet.name, "config": None}
    with_progress(Job(tmp_path, validate({**SETTINGS, "model": model.name}), clip_path, models=relative))
    absolute = {"controlnet": str(controlnet), "config": None}
    job = Job(tmp_path, validate({**SETTINGS, "model": str(model)}), clip_path, models=absolute)
    assert job.started_over is None and job.checkpoint().batches_done == 1
    with pytest.raises(JobMismatch, match="controlnet"):
        Job(tmp_path, validate({**SETTINGS, "model": str(model)}), clip_path, models={"controlnet": "hub/other"})


def test_folders_of_another_format_are_refused_or_restarted(clip_path, tmp_path):
    with_progress(Job(tmp_path, validate(SETTINGS), clip_path))
    record = tmp_path / RECORD
    record.write_text(json.dumps({"format": 1, "settings": SETTINGS, "source": str(clip_path)}))
    with pytest.raises(JobMismatch, match="job format 1, which this version \\(job format 2\\) cannot resume"):
        Job(tmp_path, validate(SETTINGS), clip_path)
    for bad in ("null", "[1, 2]", "[" * 1000 + "]" * 1000, "{"):
        record.write_text(bad)
        with pytest.raises(JobMismatch, match="not a job record|cannot be read"):
            Job(tmp_path, validate(SETTINGS), clip_path)
    job = Job(tmp_path, validate(SETTINGS), clip_path, restart=True)
    assert job.started_over and json.loads(record.read_text())["format"] == FORMAT


def test_restart_removes_the_job_and_its_frames_only(clip_path, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    job = with_progress(Job(out / ".job", validate(SETTINGS), clip_path, out_dir=out))
    for index in range(3):
        write_png_atomic(job.output_path(index), np.zeros((4, 4, 3), np.uint8))
    (out / "0011.png").write_bytes(b"not in the job's sequence")
    fresh = Job(out / ".job", validate({**SETTINGS, "seed": 1}), clip_path, out_dir=out, restart=True)
    assert fresh.checkpoint().batches_done == 0
    assert sorted(p.name for p in out.iterdir()) == [".job", "0011.png", "notes.txt"]


def test_killed_cli_run_resumes_to_identical_frames(clip_path, tiny_models, reference, tmp_path):
    """Killed mid-run; a re-run on another clip at the same path is refused (nothing written), a
    re-run with the original clip and relative model paths resumes to the uninterrupted frames."""
    out, clip = tmp_path / "out", tmp_path / "clip.mp4"
    clip.write_bytes(clip_path.read_bytes())
    model, controlnet = tiny_models

    def argv(model_path, controlnet_path):
        args = [sys.executable, "-m", "fresco_backend", "translate", str(clip), "--out", str(out),
                "--model", str(model_path), "--controlnet", str(controlnet_path), "--device", "cpu"]
        for name, value in SETTINGS.items():
            args += ["--" + name.replace("_", "-"), str(value)]
        return args

    process = subprocess.Popen(argv(model, controlnet), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    progress = out / ".fresco-job" / "state" / "progress.json"
    deadline = time.monotonic() + 600  # an outer limit only: the loop ends when the batch is recorded
    while not progress.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert progress.exists(), "the run ended before its first batch was recorded"
    written = sorted(p.name for p in out.glob("*.png"))

    write_video(clip, moving_square(frames=12, width=96, height=64).frames)
    refused = subprocess.run(argv(model, controlnet), capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert "is not the one the job started on: 12 frames instead of 9" in refused.stderr
    assert "--restart" in refused.stderr and sorted(p.name for p in out.glob("*.png")) == written

    clip.write_bytes(clip_path.read_bytes())
    rerun = subprocess.run(argv(model.name, controlnet.name), capture_output=True, text=True, timeout=600,
                           cwd=model.parent)
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
    first = Job(tmp_path / "a", validate(SETTINGS), clip_path, conditions_dir=shared)
    list(first.run(pipe))
    assert calls == {"flow": 3, "control": 9}  # 3 batches of 3 keys
    assert same_as(reference, first)  # caching changes nothing

    second = Job(tmp_path / "b", validate({**SETTINGS, "prompt": "charcoal", "seed": 9}), clip_path, conditions_dir=shared)
    list(second.run(pipe))
    assert calls == {"flow": 3, "control": 9}  # all hits
    third = Job(tmp_path / "c", validate({**SETTINGS, "canny_low": 20}), clip_path, conditions_dir=shared)
    list(third.run(pipe))
    assert calls == {"flow": 3, "control": 18}  # a control setting misses the controls only


def test_a_checkpoint_of_another_plan_is_not_resumed(clip_path, tmp_path):
    """Batches and anchors recorded by a segmented run (the Ray pool) mean something else to the plain
    chain, and the other way round: such a checkpoint starts the job over instead of mixing the two."""
    import torch

    job = Job(tmp_path, validate(SETTINGS), clip_path)
    job.layout.checkpoint_store("segments:2").batch_done(0, {0: [torch.zeros(4, 2, 2)]})
    segmented = job.layout.checkpoint_store("segments:2").load()
    assert segmented.batches_done == 1 and list(segmented.anchors) == [0]
    for plan in ("", "segments:3"):
        other = job.layout.checkpoint_store(plan).load()
        assert other.batches_done == 0 and other.anchors == {} and not other.has_output(0)
    job.layout.checkpoint_store().batch_done(0, {})
    assert job.layout.checkpoint_store().load().batches_done == 1
    assert job.layout.checkpoint_store("segments:2").load().batches_done == 0


def in_thread(call):
    """``call()``'s result or exception, from a thread joined with a generous limit (a hang fails)."""
    result = {}

    def run():
        try:
            result["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), "reading the job folder hangs"
    return result


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifos_named_like_the_records_do_not_hang(clip_path, tmp_path):
    """A FIFO named job.json, progress.json or anchors.safetensors is refused as unreadable, at once."""
    record = tmp_path / RECORD
    Job(tmp_path, validate(SETTINGS), clip_path)
    record.unlink()
    os.mkfifo(record)
    error = in_thread(lambda: job_module.JobFolder(tmp_path).read_record())["error"]
    assert isinstance(error, job_module.JobFolderError) and "not a regular file" in str(error)
    job = in_thread(lambda: Job(tmp_path, validate(SETTINGS), clip_path))["value"]  # no progress: starts over
    assert "not a regular file" in job.started_over and record.is_file()

    store = job.layout.checkpoint_store()
    store.batch_done(0, {})
    for name in ("progress.json", "anchors.safetensors"):
        path = store.state_dir / name
        path.unlink()
        os.mkfifo(path)
        if name == "anchors.safetensors":  # a readable progress.json again, so that the anchors are read
            (store.state_dir / "progress.json").unlink()
            (store.state_dir / "progress.json").write_text(json.dumps({"batches_done": 1, "plan": ""}))
        error = in_thread(store.load)["error"]
        assert isinstance(error, job_module.JobFolderError) and "not a regular file" in str(error), name
