"""An unsaved .blend: the results go to a per-user temporary folder with a warning, and saving the file moves
them next to it (never onto an existing folder) and repoints the result strips."""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import bpy
import pytest

from conftest import OFFSET_END, OFFSET_START, STRIP_START, TINY, VISIBLE, trim
from test_strip_kinds import translate_sync
from test_uijob import FakeClient, drive, translate, ui  # noqa: F401  (ui is a fixture)


@pytest.fixture
def temp_root(monkeypatch, tmp_path):
    """A fresh system temp folder (``tempfile.gettempdir()``) for this test."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    monkeypatch.delenv("FRESCO_OUTPUT_DIR", raising=False)
    return root


@pytest.fixture
def unsaved_scene(addon, clip_path, compat, temp_root):
    """A new, never saved file with the trimmed movie strip 'clip' on channel 2."""
    bpy.ops.wm.read_homefile(use_empty=True)
    assert not bpy.data.filepath
    scene = bpy.context.scene
    strip = compat.new_movie_strip(compat.top_strips(compat.editor(scene, create=True)), "clip", str(clip_path), 2,
                                   STRIP_START)
    trim(strip, OFFSET_START, OFFSET_END)
    for name, value in TINY.items():
        setattr(strip.fresco, name, value)
    return scene


def user_temp(temp_root):
    return temp_root / (f"fresco-{os.getuid()}" if hasattr(os, "getuid") else "fresco")


def result_dir(scene, compat, name="clip.fresco"):
    return Path(os.path.realpath(bpy.path.abspath(compat.all_strips(scene.sequence_editor)[name].directory)))


def pngs(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_unsaved_file_warns_and_uses_a_private_temp_folder(addon, unsaved_scene, compat, temp_root, monkeypatch,
                                                           capfd):
    assert translate_sync(addon, FakeClient(), monkeypatch) == {"FINISHED"}
    out = capfd.readouterr().out
    where = result_dir(unsaved_scene, compat)
    private = user_temp(temp_root)
    assert where == Path(os.path.realpath(private / "fresco" / "clip_1"))
    assert "the .blend is not saved" in out and "save the .blend to move them next to it" in out
    assert f"results are in the temporary folder {where}" in out  # the strip's folder is named
    info = private.stat()
    assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.getuid()
    assert not (temp_root / "fresco").exists()  # no folder shared by every user of the machine
    assert pngs(where) == [f"{i + 1:04d}.png" for i in range(VISIBLE)]


def test_saving_moves_the_results_next_to_the_blend(addon, unsaved_scene, compat, temp_root, tmp_path,
                                                    monkeypatch, capfd):
    assert translate_sync(addon, FakeClient(), monkeypatch) == {"FINISHED"}
    temp_dir = result_dir(unsaved_scene, compat)
    project = tmp_path / "project"
    taken = project / "fresco" / "clip_1"  # someone's folder of that name: never overwritten or merged into
    taken.mkdir(parents=True)
    (taken / "keep.txt").write_text("mine")

    assert bpy.ops.wm.save_as_mainfile(filepath=str(project / "shot.blend")) == {"FINISHED"}
    moved = project / "fresco" / "clip_2"
    assert result_dir(bpy.context.scene, compat) == Path(os.path.realpath(moved))
    assert pngs(moved) == [f"{i + 1:04d}.png" for i in range(VISIBLE)]
    assert not temp_dir.exists()
    assert pngs(taken) == ["keep.txt"] and (taken / "keep.txt").read_text() == "mine"
    assert f"moved {temp_dir} to {moved}" in capfd.readouterr().out

    # what was written to disk points there too
    bpy.ops.wm.open_mainfile(filepath=str(project / "shot.blend"))
    strip = compat.all_strips(bpy.context.scene.sequence_editor)["clip.fresco"]
    assert strip.directory.startswith("//")
    assert result_dir(bpy.context.scene, compat) == Path(os.path.realpath(moved))
    bpy.ops.wm.save_mainfile()  # saving again moves nothing
    assert result_dir(bpy.context.scene, compat) == Path(os.path.realpath(moved))


def test_file_saved_while_its_job_runs(addon, ui, unsaved_scene, compat, temp_root, tmp_path, monkeypatch, capfd):
    """The UI path: the file is saved while the job runs; the result lands next to it, not in the temp folder."""
    job = translate(addon, FakeClient(), monkeypatch)
    assert "the .blend is not saved" in capfd.readouterr().out
    temp_dir = job.out_dir
    assert temp_dir.parent.parent == user_temp(temp_root)
    ui.tick()
    assert job.stage == "export" and not job.finished
    project = tmp_path / "project"
    project.mkdir()
    assert bpy.ops.wm.save_as_mainfile(filepath=str(project / "shot.blend")) == {"FINISHED"}
    drive(ui)
    assert job.stage == "done", job.error
    moved = project / "fresco" / "clip_1"
    assert job.out_dir == moved and not temp_dir.exists()
    assert result_dir(unsaved_scene, compat) == Path(os.path.realpath(moved))
    assert pngs(moved) == [f"{i + 1:04d}.png" for i in range(VISIBLE)]
