"""Strips other than a plain top-level clip: a clip inside a meta strip gets its result where it shows, and
strips with missing files or with no picture of their own are refused before anything reaches the backend."""
from __future__ import annotations

import importlib
import struct
import sys
import zlib

import bpy
import pytest

from conftest import CLIP_SIZE, OFFSET_START, STRIP_START, TINY, set_duration
from test_uijob import FakeClient

GREEN = (0, 255, 0)


def solid_png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """An 8-bit RGB PNG of one colour (standard library only)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    raw = (b"\x00" + bytes(rgb) * width) * height
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


class PaintingClient(FakeClient):
    """'Translates' every frame to plain green, so the result visibly differs from its source."""

    def download_frame(self, job_id, index):
        return solid_png(*CLIP_SIZE, GREEN)


def translate_sync(addon, client, monkeypatch, strip="clip"):
    """The operator as a farm or script runs it (background mode: synchronous), with ``client`` as the backend."""
    monkeypatch.setattr(sys.modules[addon.__name__ + ".backend"], "config_problem", lambda config: None)
    session = sys.modules[addon.__name__ + ".session"]
    monkeypatch.setattr(session.get().backend, "get_client", lambda config, timeout=60.0: client)
    return bpy.ops.fresco.translate(strip=strip)


def render_pixels(scene, compat, frame, path):
    """RGBA floats of the scene's sequencer render at ``frame``."""
    scene.frame_set(frame)
    render = scene.render
    render.resolution_x, render.resolution_y = CLIP_SIZE
    render.resolution_percentage = 100
    render.use_sequencer = True
    scene.view_settings.view_transform = "Standard"  # plain green stays plain green
    render.filepath = str(path)
    compat.set_image_png(render.image_settings)
    assert bpy.ops.render.render(write_still=True, scene=scene.name) == {"FINISHED"}
    image = bpy.data.images.load(str(path), check_existing=False)
    try:
        return list(image.pixels)
    finally:
        bpy.data.images.remove(image)


def mean_green(pixels):
    return sum(pixels[1::4]) / (len(pixels) // 4)


def test_result_of_a_strip_in_a_meta_shows_in_the_render(addon, movie_scene, compat, monkeypatch, tmp_path):
    """'clip' on inner channel 1 of a meta strip on channel 5: the result goes inside the meta, on the first
    free channel above 'clip' there, so a render of the sequencer changes."""
    ed = movie_scene.sequence_editor
    top = compat.top_strips(ed)
    meta = top.new_meta(name="meta", channel=5, frame_start=STRIP_START)
    top["clip"].move_to_meta(meta)
    inner = compat.meta_children(meta)
    inner["clip"].channel = 1
    compat.new_effect_strip(inner, "inner blocker", "COLOR", 2, STRIP_START, 1)  # inner 2 busy at frame 10 only
    set_duration(meta, 30)  # a new meta does not grow to fit what is moved into it
    frame = STRIP_START + OFFSET_START + 1
    before = render_pixels(movie_scene, compat, frame, tmp_path / "before.png")
    assert mean_green(before) < 0.9

    assert translate_sync(addon, PaintingClient(), monkeypatch) == {"FINISHED"}
    after = render_pixels(movie_scene, compat, frame, tmp_path / "after.png")
    assert sum(abs(a - b) for a, b in zip(before, after)) / len(before) > 0.1, "the render did not change"
    assert mean_green(after) > 0.95  # the translated (green) frame is what the sequencer shows now

    inner = compat.meta_children(compat.top_strips(ed)["meta"])
    assert "clip.fresco" in [s.name for s in inner], [s.name for s in compat.top_strips(ed)]
    assert "clip.fresco" not in [s.name for s in compat.top_strips(ed)]
    result = inner["clip.fresco"]
    assert result.channel == 2  # 'inner blocker' ends before the clip shows
    assert compat.visible_start(result) == STRIP_START + OFFSET_START


@pytest.fixture
def image_sequence(movie_scene, compat, tmp_path):
    """A 4-frame image-sequence strip 'seq' (PNG files in tmp_path/seq) on channel 6 at frame 30."""
    folder = tmp_path / "seq"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i + 1:04d}.png").write_bytes(solid_png(*CLIP_SIZE, (40 * i, 80, 120)))
    strip = compat.new_image_strip(compat.top_strips(movie_scene.sequence_editor), "seq", str(folder / "0001.png"),
                                   6, 30)
    for i in range(1, 4):
        strip.elements.append(f"{i + 1:04d}.png")
    for name, value in TINY.items():
        setattr(strip.fresco, name, value)
    return folder


def strip_names(scene, compat):
    return sorted(s.name for s in compat.all_strips(scene.sequence_editor))


def test_image_sequence_with_a_missing_file_is_refused(addon, movie_scene, image_sequence, compat, blend,
                                                       monkeypatch):
    (image_sequence / "0003.png").unlink()
    (image_sequence / "0004.png").unlink()
    before = strip_names(movie_scene, compat)
    client = FakeClient()
    with pytest.raises(RuntimeError, match=r"'seq'.* 2 of its 4 files are missing: .*0003\.png, .*0004\.png"):
        translate_sync(addon, client, monkeypatch, strip="seq")
    assert client.count is None  # nothing reached the backend
    assert strip_names(movie_scene, compat) == before
    assert not (blend.parent / "fresco").exists()


def test_image_sequence_with_all_files_is_translated(addon, movie_scene, image_sequence, compat, monkeypatch):
    assert translate_sync(addon, FakeClient(), monkeypatch, strip="seq") == {"FINISHED"}
    assert len(compat.all_strips(movie_scene.sequence_editor)["seq.fresco"].elements) == 4


def test_missing_movie_file_is_refused(addon, movie_scene, compat, blend, monkeypatch, tmp_path):
    compat.all_strips(movie_scene.sequence_editor)["clip"].filepath = str(tmp_path / "gone.mp4")
    client = FakeClient()
    with pytest.raises(RuntimeError, match=r"'clip'.*file is missing: .*gone\.mp4"):
        translate_sync(addon, client, monkeypatch)
    assert client.count is None and not (blend.parent / "fresco").exists()


@pytest.mark.parametrize("kind, why", [
    ("ADJUSTMENT", "an adjustment strip only changes the strips below it"),
    ("COLOR", "a colour strip is one plain colour"),
    ("TEXT", "a text strip has no picture of its own"),
])
def test_strip_without_a_picture_of_its_own_is_refused(addon, movie_scene, compat, blend, monkeypatch, kind, why):
    strip = compat.new_effect_strip(compat.top_strips(movie_scene.sequence_editor), "fx", kind, 7, 13, 6)
    for name, value in TINY.items():
        setattr(strip.fresco, name, value)
    before = strip_names(movie_scene, compat)
    client = FakeClient()
    with pytest.raises(RuntimeError, match=f"'fx': {why}"):
        translate_sync(addon, client, monkeypatch, strip="fx")
    assert client.count is None
    assert strip_names(movie_scene, compat) == before
    assert not (blend.parent / "fresco").exists()


def test_farm_reports_a_refused_strip_and_sends_nothing(addon, movie_scene, compat, monkeypatch, capfd):
    farm = importlib.import_module(addon.__name__ + ".farm")
    monkeypatch.setattr(sys.modules[addon.__name__ + ".backend"], "config_problem", lambda config: None)
    backend = sys.modules[addon.__name__ + ".session"].get().backend
    monkeypatch.setattr(backend, "get_client", lambda config, timeout=60.0: pytest.fail("reached the backend"))
    compat.new_effect_strip(compat.top_strips(movie_scene.sequence_editor), "fx", "ADJUSTMENT", 7, 13, 6)
    bpy.ops.wm.save_mainfile()
    assert farm.run(["fx"]) == 1
    out = capfd.readouterr().out
    assert "FAILED [1/1] Scene/fx: strip 'fx': an adjustment strip only changes the strips below it" in out
