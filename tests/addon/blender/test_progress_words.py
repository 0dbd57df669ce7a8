"""Progress as the console and the queue box say it (translation.stage_text, progress_text, throttled)."""
from __future__ import annotations

import sys

import pytest


@pytest.fixture
def translation(addon):
    return sys.modules[addon.__name__ + ".translation"]


def test_stage_text(translation):
    text = translation.stage_text
    assert text("starting backend", 0, 0) == "starting the backend..."  # not "starting backend 0/0"
    assert text("export", 3, 6) == "export 3/6" and text("receive", 6, 6, 2.0) == "receive 6/6"
    assert text("download", 500_000_000, 2_000_000_000, None) == "download model 0.50 of 2.00 GB"
    assert text("load model", 0, 14, None) == "load model (0/14 steps done)"
    assert text("denoise step 3/7, batch 1/2", 2, 14, 130.0) == (
        "denoise step 3/7, batch 1/2 (2/14 steps done, about 2 min left)")
    assert text("write", 14, 14, 0.0) == "write (14/14 steps done)"
    assert [translation.duration_text(s) for s in (0.2, 40, 89, 3599, 3600, 13500)] == [
        "about 1 s", "about 40 s", "about 1 min", "about 1 h", "about 1 h", "about 3 h 45 min"]


def test_throttled_keeps_each_new_stage(translation, monkeypatch):
    now = [100.0]
    monkeypatch.setattr(translation.time, "monotonic", lambda: now[0])
    seen = []
    report = translation.throttled(lambda stage, done, total, eta: seen.append(stage))
    for stage, done in (("load model", 0), ("conditions", 0), ("flow", 0), ("denoise step 1/3, batch 1/1", 0),
                        ("denoise step 2/3, batch 1/1", 1), ("denoise step 3/3, batch 1/1", 2)):
        report(stage, done, 3, None)  # all within a second
    now[0] += 1.5
    report("write", 3, 3, None)
    assert seen == ["load model", "conditions", "flow", "denoise step 1/3, batch 1/1", "write"]
