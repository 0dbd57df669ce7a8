"""Exporting a strip renders it alone, as the sequencer shows it, and leaves the user's file untouched."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import bpy
import pytest

from conftest import CLIP_SIZE, OFFSET_START, VISIBLE, backend_python, scene_state

# which clip frame each exported PNG shows (by nearest mean absolute difference), computed with OpenCV
MATCH = r"""
import json, sys, cv2, numpy as np
clip, files = sys.argv[1], json.loads(sys.argv[2])
cap = cv2.VideoCapture(clip); frames = []
while True:
    ok, f = cap.read()
    if not ok: break
    frames.append(f.astype(np.float32))
out = []
for path in files:
    img = cv2.imread(path).astype(np.float32)
    diffs = [float(np.abs(img - f).mean()) for f in frames]
    out.append([int(np.argmin(diffs)), min(diffs), list(img.shape)])
print(json.dumps(out))
"""


def test_render_strip_alone(addon, movie_scene, compat, clip_path, tmp_path):
    export = sys.modules[addon.__name__ + ".export"]
    scene = movie_scene
    scene.render.resolution_x, scene.render.resolution_y = 1280, 720
    before = scene_state(scene, compat)
    strip = compat.all_strips(scene.sequence_editor)["clip"]
    assert export.source_size(scene, strip) == CLIP_SIZE
    files = export.render_strip(scene, strip, tmp_path / "frames")
    assert [f.name for f in files] == [f"{i + 1:04d}.png" for i in range(VISIBLE)]
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [f.name for f in files]
    assert scene_state(scene, compat) == before

    python = backend_python()
    if python is None:
        return
    out = subprocess.run([str(python), "-c", MATCH, str(clip_path), json.dumps([str(f) for f in files])],
                         check=True, capture_output=True, text=True)
    matches = json.loads(out.stdout)
    for i, (best, diff, shape) in enumerate(matches):
        assert shape == [CLIP_SIZE[1], CLIP_SIZE[0], 3]
        assert best == OFFSET_START + i, matches  # trims respected, the red blocker strip is not in it
        assert diff < 8.0, matches


def test_render_strip_hidden_by_mute(addon, movie_scene, compat, tmp_path):
    """A muted source still exports (the copy unmutes it); the user's mute flag stays."""
    export = sys.modules[addon.__name__ + ".export"]
    strip = compat.all_strips(movie_scene.sequence_editor)["clip"]
    strip.mute = True
    files = export.render_strip(movie_scene, strip, tmp_path / "frames")
    assert len(files) == VISIBLE
    assert strip.mute is True


def pngs(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def marked_scenes(export):
    return [s.name for s in bpy.data.scenes if s.get(export.MARKER)]


def test_exporter_renders_a_few_frames_per_step(addon, movie_scene, compat, tmp_path):
    """Set-up renders nothing; each step renders at most the frames asked for; close restores everything."""
    export = sys.modules[addon.__name__ + ".export"]
    before = scene_state(movie_scene, compat)
    strip = compat.all_strips(movie_scene.sequence_editor)["clip"]
    out = tmp_path / "frames"
    exporter = export.StripExporter(movie_scene, strip, out)
    assert (exporter.done, exporter.total) == (0, VISIBLE) and pngs(out) == []
    assert marked_scenes(export) == [exporter.scene_name]
    assert bpy.data.scenes[exporter.scene_name].is_runtime_data
    assert exporter.step(2) == (2, VISIBLE) and pngs(out) == ["0001.png", "0002.png"]
    assert exporter.step(1) == (3, VISIBLE)
    assert exporter.step(100) == (VISIBLE, VISIBLE)  # fewer at the end
    assert exporter.step(1) == (VISIBLE, VISIBLE)  # nothing left
    exporter.close()
    exporter.close()  # idempotent
    assert [f.name for f in exporter.files] == pngs(out) == [f"{i + 1:04d}.png" for i in range(VISIBLE)]
    assert scene_state(movie_scene, compat) == before


def test_exporter_closed_midway(addon, movie_scene, compat, tmp_path):
    """Closing before the end (cancel, error) removes the scene copy and leaves the user's scene as it was."""
    export = sys.modules[addon.__name__ + ".export"]
    before = scene_state(movie_scene, compat)
    strip = compat.all_strips(movie_scene.sequence_editor)["clip"]
    exporter = export.StripExporter(movie_scene, strip, tmp_path / "frames")
    exporter.step(1)
    exporter.close()
    assert marked_scenes(export) == []
    assert scene_state(movie_scene, compat) == before


def test_save_and_undo_mid_export(addon, movie_scene, compat, blend, tmp_path):
    """Saving mid-export never writes the scene copy; undo keeps the live copy and removes an ended export's."""
    export = sys.modules[addon.__name__ + ".export"]
    before = scene_state(movie_scene, compat)
    strip = compat.all_strips(movie_scene.sequence_editor)["clip"]
    exporter = export.StripExporter(movie_scene, strip, tmp_path / "frames")
    exporter.step(1)
    assert bpy.ops.wm.save_mainfile() == {"FINISHED"}
    saved = tmp_path / "saved.blend"
    shutil.copy(blend, saved)  # Blender will not list the open file itself
    with bpy.data.libraries.load(str(saved)) as (data_from, _):
        assert list(data_from.scenes) == ["Scene"] and list(data_from.images) == []

    # undo replaces every ID: the exporter finds its copy again by name and goes on
    bpy.ops.ed.undo_push(message="mid-export")
    exporter.step(1)
    bpy.ops.ed.undo_push(message="two frames")
    assert bpy.ops.ed.undo() == {"FINISHED"}
    assert marked_scenes(export) == [exporter.scene_name]
    assert exporter.step(100) == (VISIBLE, VISIBLE)
    exporter.close()
    assert pngs(tmp_path / "frames") == [f"{i + 1:04d}.png" for i in range(VISIBLE)]

    # undoing back to a state from the export brings its copy back: the undo handler removes it
    bpy.ops.ed.undo_push(message="after export")
    assert bpy.ops.ed.undo() == {"FINISHED"}
    assert marked_scenes(export) == []
    assert scene_state(bpy.data.scenes["Scene"], compat) == before


def test_render_log_of_saved_frames_dropped(addon, movie_scene, compat, tmp_path, capfd):
    """Blender prints "Saved: '...render_000001.png'" per rendered frame on file descriptor 1 (its C code): the
    export drops those lines, and keeps whatever else was printed meanwhile."""
    export = sys.modules[addon.__name__ + ".export"]
    strip = compat.all_strips(movie_scene.sequence_editor)["clip"]
    capfd.readouterr()
    export.render_strip(movie_scene, strip, tmp_path / "frames")
    out = capfd.readouterr().out
    assert "Saved:" not in out and "render_0000" not in out, out

    with export.quiet_render_log():
        os.write(1, b"Saved: '/x/render_000001.png' Time: 00:00.01 (Saving: 00:00.00)\n\n")
        os.write(1, b"Error: the real trouble\n")
        print("a Python line")
    out = capfd.readouterr().out  # (pytest's sys.stdout writes to its capture directly, not through fd 1)
    assert sorted(out.splitlines()) == ["Error: the real trouble", "a Python line"]
    with pytest.raises(RuntimeError), export.quiet_render_log():  # a render that fails: what it printed stays
        os.write(1, b"00:04.190  render           | Saved: '/x/render_000001.png'\nError: out of memory\n")
        raise RuntimeError("the render failed")
    assert capfd.readouterr().out == "Error: out of memory\n"
