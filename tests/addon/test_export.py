"""Exporting a strip renders it alone, as the sequencer shows it, and leaves the user's file untouched."""
from __future__ import annotations

import json
import subprocess
import sys

import bpy

from conftest import CLIP_SIZE, OFFSET_START, VISIBLE, backend_python, snapshot

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


def scene_state(scene, compat):
    return {
        "scenes": sorted(s.name for s in bpy.data.scenes),
        "images": sorted(i.name for i in bpy.data.images),
        "render": snapshot(scene.render),
        "view": snapshot(scene.view_settings, 0),
        "frames": (scene.frame_start, scene.frame_end, scene.frame_current),
        "strips": {s.name: snapshot(s) for s in compat.all_strips(scene.sequence_editor)},
    }


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
