"""The server finds a job's shot cuts (fresco_backend/plan.py find_cuts) before it translates: a CutsEvent in
the feed, "cuts" in the status and the job's record, the cuts handed to the translator; none looked for with
Detect Cuts off."""
from __future__ import annotations

from pathlib import Path

import cv2
import pytest

from fresco_backend.video_io import read_frames
from fresco_contract import wire
from server import records
from server.jobs import JobManager, LocalTranslator
from server_support import finish, using

DATA = Path(__file__).resolve().parents[1] / "data"


class Recording:
    """A translator that inverts the frames and keeps the cuts it was given."""

    def __init__(self):
        self.cuts = []

    def __call__(self, pipe, frames, config, on_progress, cancel, checkpoint=None, keys_only=False, kept=None,
                 rendered=None, cuts=None):
        self.cuts.append(cuts)
        for index in range(len(frames)):
            yield index, 255 - frames[index]


@pytest.fixture(scope="module")
def pngs() -> list[bytes]:
    """4 frames of bikes.mp4 at carphone's size, then 4 of carphone_pristine.mp4: a cut at 4."""
    carphone = read_frames(DATA / "carphone_pristine.mp4")[:4]
    height, width = carphone[0].shape[:2]
    bikes = [cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in read_frames(DATA / "bikes.mp4")[:4]]
    return [cv2.imencode(".png", cv2.cvtColor(f, cv2.COLOR_RGB2BGR))[1].tobytes() for f in bikes + carphone]


@pytest.mark.parametrize("detect", [True, False])
def test_the_cuts_of_a_job_reach_its_feed_status_record_and_translator(tmp_path, pngs, detect):
    translate = Recording()
    manager = JobManager(tmp_path, LocalTranslator(using(lambda config: "pipe"), translate))
    try:
        job = manager.create({"prompt": "x", "cut_detection": detect}, len(pngs))
        for index, data in enumerate(pngs):
            manager.put_input(job.id, index, data)
        manager.start(job.id)
        answer = finish(manager, job.id)
        assert answer["state"] == wire.DONE
        found = [e["frames"] for e in answer["events"] if e["type"] == wire.EV_CUTS]
        assert found == ([[4]] if detect else [])
        assert manager.get(job.id).status()["cuts"] == ([4] if detect else None)
        assert translate.cuts == [(4,) if detect else None]
        assert records.load(tmp_path / job.id).cuts == ((4,) if detect else None)
    finally:
        manager.shutdown()
