"""Undo: placing a result strip is one undo step (pushed explicitly: timers push none), and undo, redo or a save
never lose frames another strip uses."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import bpy

from test_queue import QueueClient, three, use  # noqa: F401  (three is a fixture)
from test_uijob import FakeClient, drive, ui  # noqa: F401  (ui is a fixture)
from test_unsaved import result_dir, temp_root, unsaved_scene, user_temp  # noqa: F401  (fixtures)


def names(compat):
    return sorted(s.name for s in compat.all_strips(bpy.context.scene.sequence_editor))


def test_each_placed_result_is_one_undo_step(addon, ui, three, compat, monkeypatch, blend):
    use(addon, QueueClient(), monkeypatch)
    bpy.ops.ed.undo_push(message="before")
    before = names(compat)
    assert bpy.ops.fresco.translate(strip="clip") == {"FINISHED"}
    assert bpy.ops.fresco.translate(strip="clip_b") == {"FINISHED"}
    drive(ui)
    assert names(compat) == sorted(before + ["clip.fresco", "clip_b.fresco"])
    folders = {name: result_dir(bpy.context.scene, compat, name) for name in ("clip.fresco", "clip_b.fresco")}

    assert bpy.ops.ed.undo() == {"FINISHED"}  # the second result only
    assert names(compat) == sorted(before + ["clip.fresco"])
    assert bpy.ops.ed.undo() == {"FINISHED"}  # then the first
    assert names(compat) == before
    for folder in folders.values():  # undo deletes no frames: redo brings the strips back whole
        assert len(list(folder.iterdir())) > 0
    assert bpy.ops.ed.redo() == {"FINISHED"} and bpy.ops.ed.redo() == {"FINISHED"}
    assert names(compat) == sorted(before + ["clip.fresco", "clip_b.fresco"])
    for name, folder in folders.items():
        strip = compat.all_strips(bpy.context.scene.sequence_editor)[name]
        assert all((folder / e.filename).is_file() for e in strip.elements)


def test_undo_step_pushed_in_background_mode_too(addon, three, compat, monkeypatch):
    """The synchronous path places through the same step: one undo step per result strip."""
    use(addon, QueueClient(), monkeypatch)
    bpy.ops.ed.undo_push(message="before")
    before = names(compat)
    assert bpy.ops.fresco.translate_selected() == {"FINISHED"}
    assert len(names(compat)) == len(before) + 3
    for left in (2, 1, 0):
        assert bpy.ops.ed.undo() == {"FINISHED"}
        assert len(names(compat)) == len(before) + left


def copy_strip(compat, strip, name, keep_props=True):
    """A strip showing the same frames as ``strip`` (what Duplicate makes; or, without the result's properties,
    an image strip the user added from that folder)."""
    coll = compat.holding_collection(bpy.context.scene.sequence_editor, strip)
    first = os.path.join(bpy.path.abspath(strip.directory), strip.elements[0].filename)
    copy = compat.new_image_strip(coll, name, first, strip.channel + 3, compat.visible_start(strip))
    for element in list(strip.elements)[1:]:
        copy.elements.append(element.filename)
    if keep_props:
        for key in strip.keys():
            if key.startswith("fresco_") and isinstance(strip[key], str):
                copy[key] = strip[key]
    return copy


def test_shared_result_folder_survives_save_undo_and_redo(addon, ui, unsaved_scene, compat, temp_root,
                                                          monkeypatch, tmp_path):
    use(addon, FakeClient(), monkeypatch)
    assert bpy.ops.fresco.translate(strip="clip") == {"FINISHED"}
    drive(ui)
    scene = bpy.context.scene
    old = result_dir(scene, compat)
    assert str(old).startswith(os.path.realpath(user_temp(temp_root)))
    result = compat.all_strips(scene.sequence_editor)["clip.fresco"]
    copy_strip(compat, result, "duplicate")
    copy_strip(compat, result, "by hand", keep_props=False)
    bpy.ops.ed.undo_push(message="copies")
    frames = sorted(p.name for p in old.iterdir())

    path = tmp_path / "saved" / "shot.blend"
    path.parent.mkdir()
    bpy.ops.wm.save_as_mainfile(filepath=str(path))  # moves the folder next to the file, repoints all three
    new = Path(os.path.realpath(path.parent / "fresco" / "clip_1"))
    assert not old.exists() and sorted(p.name for p in new.iterdir()) == frames
    for name in ("clip.fresco", "duplicate", "by hand"):
        assert result_dir(scene, compat, name) == new

    # undo and redo bring back the strips as they were before the save, pointing at the temp folder:
    # the handler points them at the moved folder again
    assert bpy.ops.ed.undo() == {"FINISHED"} and bpy.ops.ed.redo() == {"FINISHED"}
    for name in ("clip.fresco", "duplicate", "by hand"):
        assert result_dir(bpy.context.scene, compat, name) == new


def test_a_folder_in_use_is_never_removed(addon, ui, movie_scene, compat, monkeypatch, blend):
    """A failed job removes its output folder, unless a strip uses it (here: made to point at it)."""
    use(addon, FakeClient(fail="out of GPU memory"), monkeypatch)
    resultdirs = sys.modules[addon.__name__ + ".resultdirs"]
    assert bpy.ops.fresco.translate(strip="clip") == {"FINISHED"}
    job = ui.current()
    (job.out_dir / "0001.png").write_bytes(b"frame")
    user = compat.new_image_strip(compat.top_strips(movie_scene.sequence_editor), "user",
                                  str(job.out_dir / "0001.png"), 9, 1)
    drive(ui)
    assert job.stage == "failed" and job.out_dir.is_dir()  # kept: 'user' shows it
    compat.top_strips(movie_scene.sequence_editor).remove(user)
    resultdirs.remove_unused(job.out_dir)
    assert not job.out_dir.exists()
