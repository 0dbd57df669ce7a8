"""A masked region (mask.py): the mask from a strip on another channel (its brightness, frame for frame) and from
the source's own alpha reaches the job as its "mask" passes with the right values, also after a 3D scene strip's
render passes; a mask that cannot be made (a missing strip, the strip itself, an opaque source) is a report and
nothing reaches the backend."""
from __future__ import annotations

import struct
import sys
import zlib

import bpy
import pytest

from conftest import CLIP_SIZE, OFFSET_START, STRIP_START, TINY
from test_panel import flat, panel, shown
from test_render_passes import FRAMES as SHOT_FRAMES, HEIGHT as SHOT_HEIGHT, WIDTH as SHOT_WIDTH
from test_render_passes import add_scene_strip, emission, keyed, new_shot, square
from test_strip_kinds import translate_sync
from test_uijob import FakeClient, drive, marked_scenes, ui  # noqa: F401 (ui: a fixture)

WIDTH, HEIGHT = CLIP_SIZE
FRAMES = 6  # the movie strip's visible frames (conftest.movie_scene)


def png(width, height, pixel):
    """An 8-bit RGBA PNG whose pixel (x, y) (rows from the top) is ``pixel(x, y)`` (standard library only)."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    raw = b"".join(b"\x00" + b"".join(bytes(pixel(x, y)) for x in range(width)) for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def matte_edge(index):
    return 10 + 8 * index  # frame ``index`` of the matte is white left of it, black right of it


def sequence(compat, scene, tmp_path, name, count, pixel, channel, start, size=CLIP_SIZE):
    """An image-sequence strip ``name`` of ``count`` PNG frames ``pixel(i, x, y)`` of ``size``."""
    folder = tmp_path / name
    folder.mkdir()
    for i in range(count):
        (folder / f"{i + 1:04d}.png").write_bytes(png(*size, lambda x, y: pixel(i, x, y)))
    strip = compat.new_image_strip(compat.top_strips(scene.sequence_editor), name, str(folder / "0001.png"),
                                   channel, start, fit_method="ORIGINAL")  # the frames' size, as the movie's
    for i in range(1, count):
        strip.elements.append(f"{i + 1:04d}.png")
    return strip


class MaskClient(FakeClient):
    """A FakeClient that takes render passes as the server does and keeps them."""

    def create_job(self, settings, frame_count, part="all", keys=(), passes=()):
        self.passes, self.uploaded = list(passes), {}
        return super().create_job(settings, frame_count, part, keys)

    def upload_pass(self, job_id, name, index, npy_bytes):
        self.uploaded[name, index] = npy_bytes


def mask_rows(addon, data, size=CLIP_SIZE):
    """A "mask" pass file as rows of values from the top, checked against the contract."""
    passes = sys.modules[addon.__name__ + ".contract"].passes
    (channels, height, width), offset = passes.read_header(passes.MASK, data)
    assert (channels, width, height) == (1, *size)
    values = struct.unpack_from(f"<{width * height}e", data, offset)
    return [values[y * width:(y + 1) * width] for y in range(height)]


def test_a_mask_strip_on_another_channel_and_the_sources_alpha_reach_the_job(addon, movie_scene, compat, tmp_path,
                                                                                monkeypatch):
    first = STRIP_START + OFFSET_START  # the movie's first visible frame: the matte's first frame is there
    sequence(compat, movie_scene, tmp_path, "matte", FRAMES,
             lambda i, x, y: (255,) * 4 if x < matte_edge(i) else (0, 0, 0, 255), 5, first)
    clip = compat.all_strips(movie_scene.sequence_editor)["clip"]
    clip.fresco.mask, clip.fresco.mask_strip, clip.fresco.mask_feather = "strip", "matte", 3
    log = flat(panel())
    assert ("prop_search", "mask_strip", compat.all_strips_name(movie_scene.sequence_editor)) in log  # a picker
    assert {"mask", "mask_feather"} <= set(shown(log)) and "mask_strip" not in shown(log)
    client = MaskClient()
    assert translate_sync(addon, client, monkeypatch, strip="clip") == {"FINISHED"}
    assert client.passes == ["mask"] and client.settings["mask_strip"] == "matte"
    assert sorted(client.uploaded) == [("mask", i) for i in range(FRAMES)]
    for i in range(FRAMES):
        rows = mask_rows(addon, client.uploaded["mask", i])
        assert all(row[x] == 1 for row in rows for x in range(matte_edge(i))), i
        assert all(row[x] == 0 for row in rows for x in range(matte_edge(i), WIDTH)), i
    translation = sys.modules[addon.__name__ + ".translation"]  # a preview's one frame (Preview Frame)
    _settings, made, _notes = translation.frame_passes(movie_scene, clip, client.settings, tmp_path / "one", 2)
    assert list(made) == ["mask"]
    assert mask_rows(addon, made["mask"][0].read_bytes())[0][matte_edge(2) - 1:][:2] == (1, 0)

    cut = sequence(compat, movie_scene, tmp_path, "cut", 2,
                   lambda i, x, y: (200, 90, 30, 255 if x < 40 + 10 * i else 0), 7, 40)
    for name, value in {**TINY, "mask": "alpha"}.items():
        setattr(cut.fresco, name, value)
    client = MaskClient()
    assert translate_sync(addon, client, monkeypatch, strip="cut") == {"FINISHED"}
    assert client.passes == ["mask"] and client.count == 2
    for i in range(2):
        rows = mask_rows(addon, client.uploaded["mask", i])
        assert {row[x] for row in rows for x in range(40 + 10 * i)} == {1.0}, i
        assert {row[x] for row in rows for x in range(40 + 10 * i, WIDTH)} == {0.0}, i


def test_in_the_ui_the_mask_is_exported_a_frame_a_tick_after_the_frames(addon, ui, movie_scene, compat, tmp_path,
                                                                          monkeypatch):
    monkeypatch.setattr(sys.modules[addon.__name__ + ".backend"], "config_problem", lambda config: None)
    client = MaskClient()
    monkeypatch.setattr(ui.get().backend, "get_client", lambda config, timeout=60.0: client)
    sequence(compat, movie_scene, tmp_path, "matte", FRAMES, lambda i, x, y: (255,) * 4 if x < 30 else (0, 0, 0, 255),
             5, STRIP_START + OFFSET_START)
    clip = compat.all_strips(movie_scene.sequence_editor)["clip"]
    clip.fresco.mask, clip.fresco.mask_strip = "strip", "matte"
    assert bpy.ops.fresco.translate(strip="clip") == {"FINISHED"}
    job, seen = ui.current(), []
    while job.exporting:
        ui.tick()
        seen.append((job.stage, job.done))
    translation = sys.modules[addon.__name__ + ".translation"]
    assert [done for stage, done in seen if stage == translation.MASK_STAGE] == list(range(1, FRAMES))
    assert len(seen) == 2 * FRAMES  # the last tick of the mask starts the job
    drive(ui)
    assert job.stage == "done", job.error
    assert client.passes == ["mask"] and len(client.uploaded) == FRAMES and marked_scenes(addon) == []


def test_a_scene_strip_sends_its_render_passes_and_its_mask(addon, blend, compat, tmp_path, monkeypatch):
    """The mask comes after the render passes (a 3D scene strip with Optical Flow Render), both reach the job."""
    shot = new_shot("Shot")
    shot.cycles.samples = 1
    square(shot, "ground", 30, emission("ground"))
    keyed(shot.camera, lambda f: ((0.2 * f, 0.0, 8.0), (0.0, 0.0, 0.0)))
    strip = add_scene_strip(bpy.context.scene, shot, compat)
    strip.fresco.flow, strip.fresco.mask, strip.fresco.mask_strip = "render", "strip", "matte"
    size = (SHOT_WIDTH, SHOT_HEIGHT)
    sequence(compat, bpy.context.scene, tmp_path, "matte", SHOT_FRAMES,
             lambda i, x, y: (255,) * 4 if y < 10 + 5 * i else (0, 0, 0, 255), 5, 10, size)
    client = MaskClient()
    assert translate_sync(addon, client, monkeypatch, strip="shot") == {"FINISHED"}
    assert client.passes == ["flow_prev", "flow_next", "depth", "mask"]
    assert sorted(client.uploaded) == sorted((name, i) for name in client.passes for i in range(SHOT_FRAMES))
    for i in range(SHOT_FRAMES):
        rows = mask_rows(addon, client.uploaded["mask", i], size)
        assert [row[0] for row in rows] == [1.0] * (10 + 5 * i) + [0.0] * (SHOT_HEIGHT - 10 - 5 * i), i


@pytest.mark.parametrize("settings, words", [
    ({"mask": "strip", "mask_strip": "nowhere"}, "Mask Strip 'nowhere' is not a strip of scene"),
    ({"mask": "strip", "mask_strip": "clip"}, "Mask Strip 'clip' is the strip being translated"),
    ({"mask": "strip", "mask_strip": "blocker"}, "Mask Strip 'blocker' is a color strip"),
    ({"mask": "alpha"}, "clip is opaque in every frame, so it has no alpha"),
])
def test_a_mask_that_cannot_be_made_is_a_report_and_nothing_starts(addon, movie_scene, compat, monkeypatch,
                                                                   settings, words):
    clip = compat.all_strips(movie_scene.sequence_editor)["clip"]
    for name, value in settings.items():
        setattr(clip.fresco, name, value)
    said = any(words in text for text in shown(panel(), "label"))
    assert said == (settings["mask"] == "strip")  # the panel says so before Translate; opacity shows in the export
    client = MaskClient()
    with pytest.raises(RuntimeError, match=words):
        translate_sync(addon, client, monkeypatch, strip="clip")
    assert client.count is None  # no job was made
