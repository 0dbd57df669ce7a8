"""The Style Image in Blender: Style From Strip writes an image strip's frame as the active strip's Style Image (a
PNG a job names), the panel's Style Image row offers it, and the Models box lists the IP-Adapter and its image
encoder with Download rows (or the local ones the preferences name)."""
from __future__ import annotations

import sys

import bpy
import pytest

from conftest import FakeLayout


def png(path, colour) -> None:
    image = bpy.data.images.new("picture", 8, 6)
    image.pixels = list(colour) * (8 * 6)
    image.filepath_raw, image.file_format = str(path), "PNG"
    image.save()
    bpy.data.images.remove(image)


def pixels(path) -> list:
    image = bpy.data.images.load(str(path), check_existing=False)
    try:
        return [round(v, 2) for v in image.pixels[:4]]
    finally:
        bpy.data.images.remove(image)


@pytest.fixture
def scene(blend, compat, tmp_path):
    """A shot (a colour strip, active) and a two-frame image strip 'look' from frame 11."""
    for name, colour in (("a.png", (1.0, 0.0, 0.0, 1.0)), ("b.png", (0.0, 0.0, 1.0, 1.0))):
        png(tmp_path / name, colour)
    scene = bpy.context.scene
    ed = compat.editor(scene, create=True)
    strips = compat.top_strips(ed)
    shot = compat.new_effect_strip(strips, "shot", "COLOR", 1, 1, 20)
    look = compat.new_image_strip(strips, "look", str(tmp_path / "a.png"), 2, 11)
    look.elements.append("b.png")
    ed.active_strip = shot
    return scene, shot


def test_style_from_strip_writes_the_frames_picture_as_the_style_image(addon, scene, tmp_path, monkeypatch):
    scene, shot = scene
    monkeypatch.setenv("FRESCO_OUTPUT_DIR", str(tmp_path / "out"))
    props = sys.modules[addon.__name__ + ".props"]
    scene.frame_current = 12  # the strip's second picture
    assert bpy.ops.fresco.style_from_strip(strip="look", frame="CURRENT") == {"FINISHED"}
    second = shot.fresco.ip_adapter[0].image
    assert pixels(second) == [0.0, 0.0, 1.0, 1.0] and second.startswith(str(tmp_path / "out" / "style"))
    assert bpy.ops.fresco.style_from_strip(strip="look", frame="FIRST") == {"FINISHED"}
    first = shot.fresco.ip_adapter[0].image
    assert pixels(first) == [1.0, 0.0, 0.0, 1.0] and first != second and len(shot.fresco.ip_adapter) == 1
    assert pixels(second) == [0.0, 0.0, 1.0, 1.0]  # another picture never overwrites one
    assert props.job_settings(shot)["ip_adapter"] == [{"image": first, "weight": pytest.approx(0.6)}]
    (tmp_path / "b.png").unlink()
    with pytest.raises(RuntimeError, match="Style From Strip: the strip's picture .*b.png is missing"):
        bpy.ops.fresco.style_from_strip(strip="look", frame="CURRENT")
    assert shot.fresco.ip_adapter[0].image == first  # left as it was


def test_the_style_image_row_offers_a_strip_and_the_models_box_lists_the_ip_adapter(addon, scene, tmp_path,
                                                                                  monkeypatch):
    scene, shot = scene
    panels, model_ops, config = (sys.modules[f"{addon.__name__}.{m}"] for m in ("panels", "model_ops", "config"))
    hubcache = sys.modules[addon.__name__ + ".fresco_contract.hubcache"]
    schema = sys.modules[addon.__name__ + ".fresco_contract.settings"]
    log: list = []
    panels.draw_list(FakeLayout(log), shot.fresco, schema.BY_NAME["ip_adapter"])
    assert ("label", "Style Image") in log and ("operator", "fresco.style_from_strip") in log

    monkeypatch.setenv("FRESCO_MODEL_CACHE", str(tmp_path))
    repo, folder = hubcache.IMAGE_ENCODER
    files = {f"{folder}/config.json": 2, f"{folder}/model.safetensors": 3}
    record = hubcache.write_record(tmp_path, repo, "0" * 40, files)  # as if downloaded with --file models/...
    for name, size in files.items():
        (record.path / name).parent.mkdir(parents=True, exist_ok=True)
        (record.path / name).write_bytes(b"x" * size)
    log = []
    model_ops.draw(FakeLayout(log), bpy.context, config.preferences())
    rows = [text for kind, text in log if kind == "label"]
    at = rows.index(f"IP-Adapter: {repo} {hubcache.IP_ADAPTER[1]}")
    assert rows[at + 1] == "Not downloaded, about 44.6 MB to download"
    at = rows.index(f"Image encoder: {repo} {folder}")
    assert rows[at + 1].startswith("Downloaded, ")
    assert log.count(("operator", "fresco.download_model")) >= 1
    monkeypatch.setenv("FRESCO_IP_ADAPTER_FILE", str(tmp_path / "mine.safetensors"))  # a local one instead
    log = []
    model_ops.draw(FakeLayout(log), bpy.context, config.preferences())
    rows = [text for kind, text in log if kind == "label"]
    at = rows.index(f"IP-Adapter: {tmp_path / 'mine.safetensors'}")
    assert rows[at + 1] == "Missing: no such folder or file"
