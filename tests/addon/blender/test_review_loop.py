"""The review loop in background mode against the real backend (tiny models): Translate Keys, paint over a key,
Finish (propagation only), also after the backend and the file restarted; Preview Frame beside a running strip
job."""
from __future__ import annotations

import json
import struct
import sys
import zlib
from pathlib import Path

import bpy
import pytest

from conftest import STRIP_START, OFFSET_START, VISIBLE

KEYS = [0, 2, 4, 5]  # keyframes "interval" every 2 over the 6 visible frames; the last frame is always a key


@pytest.fixture
def backend(addon, backend_env):
    yield sys.modules[addon.__name__ + ".session"].get().backend


@pytest.fixture
def keyed_scene(movie_scene, compat):
    clip = compat.all_strips(movie_scene.sequence_editor)["clip"]
    clip.fresco.keyframes, clip.fresco.key_interval = "interval", 2
    return movie_scene


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes) of an 8-bit RGB PNG as the backend writes it (standard library)."""
    data = path.read_bytes()
    pos, chunks = 8, []
    while pos < len(data):
        length, tag = struct.unpack(">I4s", data[pos:pos + 8])
        chunks.append((tag, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", dict(chunks)[b"IHDR"][:10])
    assert (depth, colour) == (8, 2), "an 8-bit RGB PNG"
    raw = zlib.decompress(b"".join(d for t, d in chunks if t == b"IDAT"))
    stride, rows, previous = width * 3, [], bytearray(width * 3)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            left = line[x - 3] if x >= 3 else 0
            up, corner = previous[x], previous[x - 3] if x >= 3 else 0
            if kind == 1:
                line[x] = (line[x] + left) & 255
            elif kind == 2:
                line[x] = (line[x] + up) & 255
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 255
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[x] = (line[x] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 255
        rows.append(bytes(line))
        previous = line
    return width, height, rows


def write_rgb_png(path: Path, width: int, height: int, rows: list[bytes]) -> None:
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    raw = b"".join(b"\x00" + row for row in rows)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def paint_square(path: Path, x: int, y: int, side: int = 8) -> None:
    width, height, rows = png_pixels(path)
    rows = [bytearray(r) for r in rows]
    for row in rows[y:y + side]:
        row[3 * x:3 * (x + side)] = bytes((255, 0, 0)) * side
    write_rgb_png(path, width, height, [bytes(r) for r in rows])


def changed_pixels(a: Path, b: Path) -> list[tuple[int, int]]:
    """(x, y) of the pixels of ``a`` and ``b`` that differ by more than 60 levels summed over RGB."""
    width, _, ra = png_pixels(a)
    _, _, rb = png_pixels(b)
    return [(x, y) for y, (la, lb) in enumerate(zip(ra, rb)) for x in range(width)
            if sum(abs(la[3 * x + c] - lb[3 * x + c]) for c in range(3)) > 60]


def folder_of(strip) -> Path:
    return Path(bpy.path.abspath(strip.directory))


def frames_of(strip) -> list[Path]:
    return [folder_of(strip) / e.filename for e in strip.elements]


def counting_parts(addon, monkeypatch) -> list[str]:
    """The parts of the backend jobs the add-on creates from now on (with the keys a redo keeps)."""
    client_module = sys.modules[addon.__name__ + ".client"]
    parts: list[str] = []
    original = client_module.Client.create_job

    def create_job(self, settings, frame_count, part="all", keys=(), passes=()):
        parts.append(f"{part} {list(keys)}" if part == "keys" and keys else part)
        return original(self, settings, frame_count, part, keys)

    monkeypatch.setattr(client_module.Client, "create_job", create_job)
    return parts


def test_keys_then_an_edited_key_then_finish(backend, addon, keyed_scene, compat, blend, monkeypatch):
    strips = lambda: compat.all_strips(bpy.context.scene.sequence_editor)  # noqa: E731
    assert bpy.ops.fresco.translate(strip="clip") == {"FINISHED"}
    whole = frames_of(strips()["clip.fresco"])
    parts = counting_parts(addon, monkeypatch)
    assert bpy.ops.fresco.translate_keys(strip="clip") == {"FINISHED"}
    keys_strip = strips()["clip.fresco keys"]
    assert json.loads(keys_strip["fresco_keys"]) == KEYS and parts == ["keys"]
    assert compat.visible_start(keys_strip) == STRIP_START + OFFSET_START and len(keys_strip.elements) == VISIBLE
    # each frame shows the last key at or before it; the keys are exactly the whole translation's
    assert [e.filename for e in keys_strip.elements] == ["0001.png", "0001.png", "0003.png", "0003.png",
                                                         "0005.png", "0006.png"]
    folder = folder_of(keys_strip)
    for key in KEYS:
        assert (folder / f"{key + 1:04d}.png").read_bytes() == whole[key].read_bytes()
    manifest = json.loads((folder / "keys.json").read_bytes())
    assert manifest["keys"] == KEYS and manifest["frame_count"] == VISIBLE

    # the key under the playhead opens as an image
    bpy.context.scene.sequence_editor.active_strip = keys_strip
    bpy.context.scene.frame_current = STRIP_START + OFFSET_START + 3
    assert bpy.ops.fresco.open_key() == {"FINISHED"}
    assert Path(bpy.data.images["FRESCO Key"].filepath).name == "0003.png"

    channel = keys_strip.channel
    # paint into key 2, then finish after the backend stopped and the file was saved, closed and reopened
    paint_square(folder / "0003.png", 40, 24)
    bpy.ops.wm.save_mainfile()
    backend.stop()
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    assert bpy.ops.fresco.finish(strip="clip.fresco keys") == {"FINISHED"}
    assert parts == ["keys", "finish"]  # no job of Finish denoises anything
    assert "clip.fresco keys" not in strips()  # replaced, in its channel
    done = strips()["clip.fresco_2"]
    assert done.channel == channel and len(done.elements) == VISIBLE
    result = frames_of(done)
    for frame in (0, 4, 5):  # unedited keys: the frames of the whole translation
        assert result[frame].read_bytes() == whole[frame].read_bytes()
    assert not changed_pixels(result[4], whole[4]) and not changed_pixels(result[5], whole[5])
    for frame in (1, 3):  # next to the edited key: the square, carried along the clip's motion
        assert len(changed_pixels(result[frame], whole[frame])) >= 20, frame
    assert (folder / "0003.png").is_file()  # the artist's keys stay


def test_redo_from_a_key_keeps_the_earlier_keys_as_they_are(backend, addon, keyed_scene, compat, blend,
                                                           monkeypatch):
    strips = lambda: compat.all_strips(bpy.context.scene.sequence_editor)  # noqa: E731
    assert bpy.ops.fresco.translate_keys(strip="clip") == {"FINISHED"}
    old = strips()["clip.fresco keys"]
    folder = folder_of(old)
    paint_square(folder / "0003.png", 40, 24)  # an edited key before the one redone: kept as it is now
    before = {key: (folder / f"{key + 1:04d}.png").read_bytes() for key in KEYS}
    parts = counting_parts(addon, monkeypatch)
    old.fresco.random_seed, old.fresco.seed = False, old.fresco.seed + 1  # the keys strip's settings, changed
    bpy.context.scene.sequence_editor.active_strip = old
    bpy.context.scene.frame_current = STRIP_START + OFFSET_START + 4  # on key 4
    assert bpy.ops.fresco.redo_keys() == {"FINISHED"}
    assert parts == ["keys [0, 2]"]  # the kept keys go with the job; only the keys after them are denoised
    new = strips()["clip.fresco keys_2"]
    assert old.name in strips() and json.loads(new["fresco_keys"]) == KEYS
    assert json.loads(new["fresco_settings"])["seed"] == old.fresco.seed
    redone = {key: (folder_of(new) / f"{key + 1:04d}.png").read_bytes() for key in KEYS}
    assert redone[0] == before[0] and redone[2] == before[2]  # byte-identical, the edit included
    assert redone[4] != before[4] and redone[5] != before[5]
    assert {key: (folder / f"{key + 1:04d}.png").read_bytes() for key in KEYS} == before  # the old strip's own
    assert [e.filename for e in new.elements] == [e.filename for e in old.elements]
    bpy.context.scene.frame_current = STRIP_START + OFFSET_START - 1  # off the strip
    bpy.context.scene.sequence_editor.active_strip = new
    with pytest.raises(RuntimeError, match="not over"):
        bpy.ops.fresco.redo_keys()


def test_the_result_strip_fills_in_while_the_job_runs(backend, addon, keyed_scene, compat, blend, monkeypatch):
    live = sys.modules[addon.__name__ + ".live"]
    strips = lambda: compat.all_strips(keyed_scene.sequence_editor)  # noqa: E731
    seen: list[tuple[int, str, list[str], str]] = []  # after each frame: it, the strip's name, frames, blend
    original = live.LiveStrip.frame_arrived

    def frame_arrived(self, index):
        original(self, index)
        strip = self.strip()
        seen.append((index, strip.name, [e.filename for e in strip.elements], strip.blend_type))
        assert "fresco_settings" not in strip.keys()  # not a result until it is done: a save leaves it be

    monkeypatch.setattr(live.LiveStrip, "frame_arrived", frame_arrived)
    assert bpy.ops.fresco.translate(strip="clip") == {"FINISHED"}
    assert len(seen) == VISIBLE and sorted(i for i, *_ in seen) == list(range(VISIBLE))
    assert {name for _, name, _, _ in seen} == {"clip.fresco"} and {b for *_, b in seen} == {"ALPHA_OVER"}
    arrived: set[int] = set()
    for index, _, names, _ in seen:  # every frame back shows itself, every other one the pending picture
        arrived.add(index)
        assert names == [f"{i + 1:04d}.png" if i in arrived else "pending.png" for i in range(VISIBLE)]
    assert seen[0][0] == 0  # placed with the first key
    done = strips()["clip.fresco"]
    assert [e.filename for e in done.elements] == [f"{i + 1:04d}.png" for i in range(VISIBLE)]
    assert "fresco_live" not in done.keys() and "fresco_settings" in done.keys()
    assert not (folder_of(done) / "pending.png").exists()
    assert [s.name for s in strips() if s.name.startswith("clip.fresco")] == ["clip.fresco"]


def test_the_pending_picture_is_transparent_at_the_frames_size(addon, tmp_path):
    live = sys.modules[addon.__name__ + ".live"]
    path = tmp_path / "pending.png"
    path.write_bytes(live.transparent_png(96, 64))
    assert live.png_size(path) == (96, 64)
    image = bpy.data.images.load(str(path))
    try:
        assert tuple(image.size) == (96, 64) and image.channels == 4
        assert max(list(image.pixels)[3::4]) == 0.0  # every alpha (4.x slices no steps on pixels)
    finally:
        bpy.data.images.remove(image)


def test_finish_refuses_a_keys_strip_whose_key_is_gone(backend, addon, keyed_scene, compat, blend):
    assert bpy.ops.fresco.translate_keys(strip="clip") == {"FINISHED"}
    keys_strip = compat.all_strips(keyed_scene.sequence_editor)["clip.fresco keys"]
    (folder_of(keys_strip) / "0006.png").unlink()
    with pytest.raises(RuntimeError, match="lacks the key file"):
        bpy.ops.fresco.finish(strip=keys_strip.name)
    assert "clip.fresco keys" in compat.all_strips(keyed_scene.sequence_editor)


def test_preview_frame_beside_a_running_strip_job(backend, addon, keyed_scene, compat, blend, monkeypatch):
    """The UI path (timers driven by hand): a preview started while Translate's backend job runs finishes, and
    the strip's frames are those of a Translate without it."""
    from test_uijob import drive

    assert bpy.ops.fresco.translate(strip="clip") == {"FINISHED"}  # alone, synchronously
    alone = [p.read_bytes() for p in frames_of(compat.all_strips(keyed_scene.sequence_editor)["clip.fresco"])]
    session = sys.modules[addon.__name__ + ".session"]
    preview_frame = sys.modules[addon.__name__ + ".preview_frame"]
    monkeypatch.setattr(session, "has_event_loop", lambda: True)
    assert bpy.ops.fresco.translate(strip="clip") == {"FINISHED"}
    job = session.current()
    for _ in range(10_000):  # until its backend job runs (bounded: the export is 6 ticks)
        session.tick()
        if job.task is not None:
            break
    keyed_scene.frame_current = STRIP_START + OFFSET_START + 2
    assert bpy.ops.fresco.preview_frame() == {"FINISHED"}
    shown = preview_frame.current()
    drive(session, timeout=600)
    while shown.running:
        session.tick()
        session.get().tasks["preview"].wait(1.0)
    assert shown.error is None and shown.seconds > 0, shown.error
    image = bpy.data.images["FRESCO Preview"]
    assert tuple(image.size) == (96, 64) and Path(image.filepath) == shown.path
    assert job.stage == "done"
    second = compat.all_strips(keyed_scene.sequence_editor)[job.result_name]
    assert [p.read_bytes() for p in frames_of(second)] == alone
    assert not any(s.name.startswith("clip.fresco") and s.name not in ("clip.fresco", job.result_name)
                   for s in compat.all_strips(keyed_scene.sequence_editor))  # nothing else on the timeline
