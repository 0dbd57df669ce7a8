"""A job recorded before the ``upscale`` setting existed ran upscaled: read back, it still does, so
resuming it with today's default (off) is another job, not the same one at another size."""
from __future__ import annotations

import json

from fresco_backend.job import RECORD, JobFolder, JobRecord
from fresco_contract.settings import validate


def test_an_old_record_reads_as_upscaled_and_differs_from_a_new_job(tmp_path):
    new = validate({"prompt": "x"})
    folder = JobFolder(tmp_path)
    folder.write_record(JobRecord({k: v for k, v in new.items() if k != "upscale"}))
    assert "upscale" not in json.loads((tmp_path / RECORD).read_text())["settings"]
    old = folder.read_record().settings
    assert old["upscale"] is True and old != new
    folder.write_record(JobRecord(new))
    assert folder.read_record().settings == new
