"""Prompt changes from the timeline's markers: those inside the strip, at its own frames (0: its first), one undo
step; the job and its result strip carry them; Preview Frame takes the prompt in effect at its frame."""
from __future__ import annotations

import json
import sys

import bpy
import pytest

from conftest import OFFSET_START, STRIP_START, VISIBLE
from test_panel import panel, shown
from test_queue import QueueClient, use

FIRST = STRIP_START + OFFSET_START  # the strip's first visible scene frame


def schedule(strip):
    return [(item.frame, item.prompt) for item in strip.fresco.prompt_schedule]


@pytest.fixture
def marked(movie_scene, compat):
    """The movie scene with markers before, inside (one without a name) and after the strip."""
    for name, frame in (("before", FIRST - 1), ("ink", FIRST + 2), ("", FIRST + 3), ("oil", FIRST + VISIBLE - 1),
                        ("after", FIRST + VISIBLE)):
        movie_scene.timeline_markers.new(name, frame=frame)
    return compat.all_strips(movie_scene.sequence_editor)["clip"]


def test_markers_inside_the_strip_become_its_prompt_changes_in_one_undo_step(addon, marked, capsys):
    bpy.ops.ed.undo_push(message="before")
    assert bpy.ops.fresco.prompts_from_markers() == {"FINISHED"}
    assert schedule(marked) == [(2, "ink"), (VISIBLE - 1, "oil")]  # frames of the strip; outside ones ignored
    said = capsys.readouterr()  # the operator's reports: on stdout or stderr, as the Blender version prints them
    assert f"the marker at frame {FIRST + 3} has no name" in said.out + said.err
    assert bpy.ops.ed.undo() == {"FINISHED"}
    strip = bpy.context.scene.sequence_editor.active_strip
    assert schedule(strip) == []


def test_the_panel_shows_each_change_at_its_scene_frame(addon, marked):
    assert "fresco.prompts_from_markers" in shown(panel(), "operator")
    assert any(text.startswith("Prompt holds on every frame") for text in shown(panel(), "label"))
    bpy.ops.fresco.prompts_from_markers()
    labels = shown(panel(), "label")
    assert f"scene {FIRST + 2}" in labels and f"scene {FIRST + VISIBLE - 1}" in labels
    assert any(f"0 = its first (scene frame {FIRST})" in text for text in labels)


def test_no_named_marker_inside_is_a_report_and_changes_nothing(addon, movie_scene, compat):
    strip = compat.all_strips(movie_scene.sequence_editor)["clip"]
    strip.fresco.prompt_schedule.add().prompt, movie_scene.timeline_markers.new("far", frame=FIRST + 40)
    with pytest.raises(RuntimeError, match="no named timeline marker inside clip"):
        bpy.ops.fresco.prompts_from_markers()
    assert schedule(strip) == [(0, "")]


def test_preview_frame_takes_the_prompt_in_effect(addon):
    translation = sys.modules[addon.__name__ + ".translation"]
    settings = {"prompt": "a", "prompt_blend": 2, "prompt_schedule": [{"frame": 4, "prompt": "ink"}]}
    assert translation.prompt_at(settings, 1) == ({**settings, "prompt_schedule": []}, [])
    at, notes = translation.prompt_at(settings, 3)  # inside the blend: the prompt it blends from, said so
    assert at["prompt"] == "a" and "1 before the change to 'ink'" in notes[0]
    assert translation.prompt_at(settings, 4)[0]["prompt"] == "ink"


def test_the_job_and_its_result_carry_the_schedule(addon, marked, compat, monkeypatch):
    client = QueueClient()  # the backend's side: tests/backend/test_prompts.py
    use(addon, client, monkeypatch)
    assert bpy.ops.fresco.prompts_from_markers() == {"FINISHED"}
    assert bpy.ops.fresco.translate(strip="clip") == {"FINISHED"}
    want = [{"frame": 2, "prompt": "ink"}, {"frame": VISIBLE - 1, "prompt": "oil"}]
    assert [job["prompt_schedule"] for job in client.jobs] == [want]
    result = compat.all_strips(bpy.context.scene.sequence_editor)["clip.fresco"]
    assert json.loads(result["fresco_settings"])["prompt_schedule"] == want
    assert json.loads(marked["fresco_job_settings"])["prompt_schedule"] == want
    assert schedule(result) == [(2, "ink"), (VISIBLE - 1, "oil")] and len(result.elements) == VISIBLE
