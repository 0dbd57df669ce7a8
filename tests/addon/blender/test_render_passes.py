"""A 3D scene strip guides its translation with Blender's render passes (render_passes.py): tiny procedural scenes
rendered with Cycles at 64 x 48, their passes checked against known motion, depth and normals, against the colour
frames, and against OpenCV DIS; the fallbacks where a strip has no passes; a job that carries them."""
from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import bpy
import pytest

from conftest import REPO, TINY, backend_python, scene_state, snapshot, trim
from test_strip_kinds import translate_sync
from test_uijob import FakeClient, drive, marked_scenes, ui  # noqa: F401 (ui: a fixture)

WIDTH, HEIGHT = 64, 48
FRAMES = 6  # of each test scene, from frame 1


def addon_module(addon, name):
    return sys.modules[f"{addon.__name__}.{name}"]


def emission(name, rgb=(1.0, 1.0, 1.0), noise=0.0):
    """An emission material of colour ``rgb``, or of a noise texture of that scale on the object (``noise``)."""
    material = bpy.data.materials.new(name)
    if not getattr(material.bl_rna.properties["use_nodes"], "is_deprecated", False):  # 5.x: always nodes
        material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    nodes.clear()
    shader, out = nodes.new("ShaderNodeEmission"), nodes.new("ShaderNodeOutputMaterial")
    links.new(shader.outputs[0], out.inputs["Surface"])
    shader.inputs["Color"].default_value = (*rgb, 1.0)
    if noise:
        texture = nodes.new("ShaderNodeTexNoise")
        texture.inputs["Scale"].default_value = noise
        texture.inputs["Detail"].default_value = 4.0
        links.new(texture.outputs["Color"], shader.inputs["Color"])
    return material


def mesh_object(scene, name, vertices, faces, material, parent=None):
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(vertices, [], faces)
    mesh.materials.append(material)
    obj = bpy.data.objects.new(name, mesh)
    scene.collection.objects.link(obj)
    obj.parent = parent
    return obj


def square(scene, name, size, material, parent=None):
    h = size / 2
    return mesh_object(scene, name, [(-h, -h, 0), (h, -h, 0), (h, h, 0), (-h, h, 0)], [(0, 1, 2, 3)], material,
                       parent)


def cube(scene, name, size, material):
    h = size / 2
    vertices = [(x, y, z) for x in (-h, h) for y in (-h, h) for z in (-h, h)]
    faces = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    return mesh_object(scene, name, vertices, faces, material)


def keyed(obj, where):
    """Keys on every frame of the test scenes: ``where(frame)`` -> (location, rotation)."""
    for frame in range(0, FRAMES + 2):
        obj.location, obj.rotation_euler = where(frame)
        obj.keyframe_insert("location", frame=frame)
        obj.keyframe_insert("rotation_euler", frame=frame)


def new_shot(name, camera_data=None):
    """A Cycles scene of ``FRAMES`` frames at 64 x 48 with a camera (``camera_data`` or a perspective one)."""
    shot = bpy.data.scenes.new(name)
    shot.render.engine = "CYCLES"
    shot.cycles.samples = 16
    shot.cycles.use_denoising = False
    shot.render.resolution_x, shot.render.resolution_y, shot.render.resolution_percentage = WIDTH, HEIGHT, 100
    shot.frame_start, shot.frame_end = 1, FRAMES
    camera = bpy.data.objects.new(name + " camera", camera_data or bpy.data.cameras.new(name + " camera"))
    shot.collection.objects.link(camera)
    shot.camera = camera
    return shot


def add_scene_strip(editing, shot, compat, name="shot", start=10):
    editing.render.resolution_x, editing.render.resolution_y = WIDTH, HEIGHT
    editing.render.resolution_percentage = 100
    strip = compat.top_strips(compat.editor(editing, create=True)).new_scene(name, shot, 2, start)
    for key, value in TINY.items():
        setattr(strip.fresco, key, value)
    return strip


def export_passes(addon, scene, strip, folder, names=None, frames_per_step=2):
    """Every pass of ``strip`` exported to ``folder`` by ``PassExporter`` (``frames_per_step`` a step)."""
    render_passes = addon_module(addon, "render_passes")
    names = names or list(addon_module(addon, "contract").passes.RENDERED)
    exporter = render_passes.PassExporter(scene, strip, names, folder)
    try:
        while exporter.done < exporter.total:
            exporter.step(frames_per_step)
    finally:
        exporter.close()
    return exporter


class Plane:
    """One channel of a pass file, as read back through the contract (rows from the top)."""

    def __init__(self, addon, folder, name, index, channel):
        passes = addon_module(addon, "contract").passes
        data = passes.pass_file(folder, name, index).read_bytes()
        (channels, self.height, self.width), offset = passes.read_header(name, data)
        count = self.height * self.width
        self.values = struct.unpack_from(f"<{count}e", data, offset + 2 * count * channel)

    def __call__(self, x, y):
        return self.values[y * self.width + x]


def png_rows(path):
    """RGB rows of a PNG from the top, as Blender reads it (rows from the bottom)."""
    image = bpy.data.images.load(str(path), check_existing=False)
    try:
        width, height = image.size
        pixels = image.pixels[:]  # Blender 4.x's pixels take no step slices
    finally:
        bpy.data.images.remove(image)
    return [[pixels[4 * ((height - 1 - y) * width + x):4 * ((height - 1 - y) * width + x) + 3] for x in range(width)]
            for y in range(height)]


def centroid(points):
    return (sum(p[0] for p in points) / len(points), sum(p[1] for p in points) / len(points)) if points else None


def shot_state(shot):
    """What an export must leave as it was of the strip's scene."""
    return {"render": snapshot(shot.render), "cycles": snapshot(shot.cycles, 0),
            "layers": [snapshot(layer, 0) for layer in shot.view_layers],
            "camera": shot.camera.name, "frames": (shot.frame_start, shot.frame_end, shot.frame_current),
            "scenes": sorted(s.name for s in bpy.data.scenes)}


def editing_state(scene, compat):
    """``scene_state`` of the editing scene, without what evaluating the strip's scene changes of its view layer
    (5.x: the strip's ``view_layer``): its lazily synced layer collection and its depsgraph's last updates."""
    state = scene_state(scene, compat)
    for strip in state["strips"].values():
        for name in ("layer_collection", "depsgraph"):
            strip.get("view_layer", {}).pop(name, None)
    return state


# -- known motion: an orthographic camera, 4 px per unit ------------------------------------------------------------
STEP_X, STEP_Y = 4.0, 2.0  # pixels per frame the square moves: right and down


@pytest.fixture
def moving_square(blend, compat):
    """A red square (4 x 4 px, 10 units from the camera) moving right and down over a still blue plane (15
    units), in the scene strip 'shot' at frame 10, its content trimmed by a frame and its handles by one each."""
    data = bpy.data.cameras.new("ortho")
    data.type, data.ortho_scale = "ORTHO", WIDTH / 4.0
    shot = new_shot("Shot", data)
    shot.camera.location = (0, 0, 10)
    square(shot, "background", 40, emission("blue", (0.0, 0.0, 1.0))).location = (0, 0, -5)
    moving = square(shot, "square", 1, emission("red", (1.0, 0.0, 0.0)))
    keyed(moving, lambda f: ((-5 + STEP_X / 4 * f, 3 - STEP_Y / 4 * f, 0), (0, 0, 0)))
    strip = add_scene_strip(bpy.context.scene, shot, compat)
    if "content_trim_start" in strip.bl_rna.properties:
        strip.content_trim_start = 1
    else:
        strip.animation_offset_start = 1
    trim(strip, 1, 1)
    bpy.context.scene.sequence_editor.active_strip = strip
    return strip


def test_known_motion_depth_rows_and_frames(addon, moving_square, compat, tmp_path):
    """The square's flow_next is (+4, +2) px (right, down: to where it is in the next frame) and its flow_prev
    (-4, -2); depth 10 on it, 15 behind; normals (0, 0, 1) facing the camera; and each pass frame shows the scene
    frame the colour frame shows (the square where the colour frame has it: frame mapping, row order, size).
    Nothing of either scene changes and no scene copy is left."""
    scene, strip = bpy.context.scene, moving_square
    shot = strip.scene
    export = addon_module(addon, "export")
    before, shot_before = editing_state(scene, compat), shot_state(shot)
    frames = export.render_strip(scene, strip, tmp_path / "frames")
    started = time.monotonic()
    exporter = export_passes(addon, scene, strip, tmp_path / "passes")
    print(f"{exporter.total} frames of passes in {time.monotonic() - started:.2f} s")
    assert exporter.total == len(frames) == compat.visible_duration(strip) == FRAMES - 3
    assert editing_state(scene, compat) == before and shot_state(shot) == shot_before
    assert marked_scenes(addon) == []
    shown = []
    for index, png in enumerate(frames):
        rows = png_rows(png)
        red = centroid([(x, y) for y, row in enumerate(rows) for x, (r, g, b) in enumerate(row) if r > 0.5 > b])
        depth = Plane(addon, tmp_path / "passes", "depth", index, 0)
        near = [(x, y) for y in range(HEIGHT) for x in range(WIDTH) if depth(x, y) < 12.5]
        assert red is not None and centroid(near) == pytest.approx(red, abs=0.3), index
        shown.append(red)
        # away from its edges: Cycles's Depth takes one sample a pixel, its Vector and Normal the filtered mean
        inside = [(x, y) for x, y in near if all(abs(depth(x + dx, y + dy) - 10) < 1e-3
                                                 for dx in (-1, 0, 1) for dy in (-1, 0, 1))]
        assert len(inside) == 4
        flows = {(name, c): Plane(addon, tmp_path / "passes", name, index, c)
                 for name in ("flow_next", "flow_prev") for c in (0, 1)}
        for x, y in inside:
            flow_next = flows["flow_next", 0](x, y), flows["flow_next", 1](x, y)
            flow_prev = flows["flow_prev", 0](x, y), flows["flow_prev", 1](x, y)
            assert flow_next == pytest.approx((STEP_X, STEP_Y), abs=0.02)
            assert flow_prev == pytest.approx((-STEP_X, -STEP_Y), abs=0.02)
        normal = [Plane(addon, tmp_path / "passes", "normal", index, c) for c in range(3)]
        for x, y in [(0, 0), (WIDTH - 1, HEIGHT - 1), *inside]:
            assert [n(x, y) for n in normal] == pytest.approx([0, 0, 1], abs=1e-3)
        assert depth(0, 0) == depth(WIDTH - 1, 0) == pytest.approx(15, abs=1e-3)
        assert (flows["flow_next", 0](0, 0), flows["flow_prev", 1](0, 0)) == (0, 0)  # the plane stands still
    # the strip shows scene frames 3..5 (content trim 1, handle trim 1): the square 4 px right, 2 px down a frame
    assert shown[0] == pytest.approx((WIDTH / 2 - 20 + 3 * STEP_X - 0.5, HEIGHT / 2 - 12 + 3 * STEP_Y - 0.5), abs=0.3)
    assert [b[0] - a[0] for a, b in zip(shown, shown[1:])] == pytest.approx([STEP_X] * 2, abs=0.3)
    assert [b[1] - a[1] for a, b in zip(shown, shown[1:])] == pytest.approx([STEP_Y] * 2, abs=0.3)


# -- normals in the camera's space: a camera turning, three planes moving with it ------------------------------------
def test_normals_in_camera_space_and_planar_depth(addon, blend, compat, tmp_path):
    """Planes parented to a camera that turns and moves: in camera space their normals stay (0, 0, 1) (facing it),
    (0.71, 0, 0.71) (turned right) and (0, 0.71, 0.71) (turned up) at every frame, though their world normals
    change; the depth of the plane facing the camera 10 units away is 10 in the corners too (the distance from
    the camera's plane, not along the ray)."""
    shot = new_shot("Turning")
    camera = shot.camera
    keyed(camera, lambda f: ((0.5 * f, -0.3 * f, 2.0), (0.6 + 0.05 * f, 0.1, 0.3 + 0.25 * f)))
    square(shot, "facing", 20, emission("grey", (0.5, 0.5, 0.5)), camera).location = (0, 0, -10)
    right = square(shot, "right", 1.2, emission("green", (0.0, 1.0, 0.0)), camera)
    right.location, right.rotation_euler = (-1.5, 0, -8), (0, math.radians(45), 0)
    up = square(shot, "up", 1.2, emission("yellow", (1.0, 1.0, 0.0)), camera)
    up.location, up.rotation_euler = (1.5, 0, -8), (math.radians(-45), 0, 0)
    strip = add_scene_strip(bpy.context.scene, shot, compat)
    placed = [tuple(map(tuple, obj.matrix_world)) for obj in shot.objects]
    export_passes(addon, bpy.context.scene, strip, tmp_path, ["normal", "depth"], frames_per_step=FRAMES)
    assert [tuple(map(tuple, obj.matrix_world)) for obj in shot.objects] == placed  # the copy's frames only
    s = math.sqrt(0.5)
    at = {"facing": (WIDTH // 2, 4), "right": (15, HEIGHT // 2), "up": (WIDTH - 16, HEIGHT // 2)}
    expected = {"facing": (0, 0, 1), "right": (s, 0, s), "up": (0, s, s)}
    for index in range(FRAMES):
        normal = [Plane(addon, tmp_path, "normal", index, c) for c in range(3)]
        for name, (x, y) in at.items():
            assert [n(x, y) for n in normal] == pytest.approx(expected[name], abs=0.02), (index, name)
        depth = Plane(addon, tmp_path, "depth", index, 0)
        for x, y in ((0, 0), (WIDTH - 1, 0), (0, HEIGHT - 1), (WIDTH - 1, HEIGHT - 1), at["facing"]):
            assert depth(x, y) == pytest.approx(10, abs=0.02), (index, x, y)


# -- the render's motion against DIS ---------------------------------------------------------------------------------
@pytest.fixture
def textured_shot(blend, compat):
    """A noise-textured cube moving and turning over a noise-textured ground, the camera panning and tilting."""
    shot = new_shot("Textured")
    square(shot, "ground", 30, emission("ground", noise=6.0))
    thing = cube(shot, "cube", 1.6, emission("cube", noise=3.0))
    keyed(thing, lambda f: ((-1.0 + 0.35 * f, 0.2 * f, 1.0), (0.3 * f, 0.2, 0.25 * f)))
    keyed(shot.camera, lambda f: ((0.25 * f, -5.0, 5.0), (math.radians(45 + f), 0, math.radians(2 * f))))
    strip = add_scene_strip(bpy.context.scene, shot, compat)
    bpy.context.scene.sequence_editor.active_strip = strip
    return strip


def test_render_flow_warps_better_than_dis(addon, textured_shot, tmp_path):
    """Frame t+1 warped back by the exported flow_next matches frame t better than warped by OpenCV DIS's flow
    of the same PNGs, on the pixels both mark visible (tests/support/flow_compare.py, in the backend's Python)."""
    python = backend_python()
    if python is None:
        pytest.skip("no backend venv for OpenCV (set FRESCO_BACKEND_PYTHON)")
    scene, strip = bpy.context.scene, textured_shot
    export = addon_module(addon, "export")
    started = time.monotonic()
    export.render_strip(scene, strip, tmp_path / "frames")
    colour = time.monotonic() - started
    started = time.monotonic()
    export_passes(addon, scene, strip, tmp_path / "passes", ["flow_next", "flow_prev"], FRAMES)
    extra = time.monotonic() - started
    done = subprocess.run([str(python), str(REPO / "tests" / "support" / "flow_compare.py"), str(tmp_path / "frames"),
                           str(tmp_path / "passes")], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    errors = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"photometric error: render {errors['render']:.4f}, DIS {errors['dis']:.4f} on {errors['pixels']} pixels; "
          f"export {colour / FRAMES * 1000:.0f} ms a frame, passes {extra / FRAMES * 1000:.0f} ms a frame more")
    assert errors["pixels"] > FRAMES * WIDTH * HEIGHT / 4
    assert errors["render"] < errors["dis"]


# -- jobs: the passes sent, the fallbacks ------------------------------------------------------------------------------
class PassClient(FakeClient):
    """A FakeClient that takes render passes as the server does (``contract.passes``) and keeps them."""

    def create_job(self, settings, frame_count, part="all", keys=(), passes=()):
        self.passes, self.uploaded = list(passes), {}
        return super().create_job(settings, frame_count, part, keys)

    def upload_pass(self, job_id, name, index, npy_bytes):
        assert name in self.passes
        self.uploaded[name, index] = npy_bytes

    def start(self, job_id):
        assert sorted(self.uploaded) == sorted((n, i) for n in self.passes for i in range(self.count))
        return super().start(job_id)


def controls(strip, *kinds):
    strip.fresco.controls.clear()
    for kind in kinds:
        item = strip.fresco.controls.add()
        item.kind, item.scale = kind, 0.7


def test_scene_strip_job_carries_its_passes(addon, textured_shot, compat, monkeypatch):
    """Flow Render and a normal and a depth ControlNet: the job names and uploads every pass of every frame, in the
    contract's shape, and the result strip says what the render guided."""
    passes = addon_module(addon, "contract").passes
    strip = textured_shot
    strip.fresco.flow = "render"
    controls(strip, "normal", "depth")
    client = PassClient()
    assert translate_sync(addon, client, monkeypatch, strip="shot") == {"FINISHED"}
    assert client.passes == list(passes.RENDERED) and client.settings["flow"] == "render"
    for (name, index), data in client.uploaded.items():
        assert passes.read_header(name, data)[0] == (passes.PASSES[name], HEIGHT, WIDTH)
    result = compat.all_strips(bpy.context.scene.sequence_editor)["shot.fresco"]
    assert result["fresco_guidance"] == "motion, depth, normals"
    assert json.loads(result["fresco_settings"])["flow"] == "render"
    assert marked_scenes(addon) == []


def test_passes_export_a_frame_a_tick(addon, ui, textured_shot, compat, monkeypatch):
    """In the UI the passes are exported after the colour frames, a frame per timer tick, with their own stage;
    then the job runs."""
    translation = addon_module(addon, "translation")
    monkeypatch.setattr(addon_module(addon, "backend"), "config_problem", lambda config: None)
    client = PassClient()
    monkeypatch.setattr(ui.get().backend, "get_client", lambda config, timeout=60.0: client)
    textured_shot.fresco.flow = "render"
    assert bpy.ops.fresco.translate(strip="shot") == {"FINISHED"}
    job = ui.current()
    seen = []
    for _tick in range(4 * FRAMES):
        if not job.exporting:
            break
        ui.tick()
        seen.append((job.stage, job.done))
    assert not job.exporting and job.task is not None
    assert [done for stage, done in seen if stage == "export"] == list(range(1, FRAMES + 1))
    # the last tick of the passes starts the job, whose first stage follows at once
    assert [done for stage, done in seen if stage == translation.PASSES_STAGE] == list(range(1, FRAMES)), seen
    assert len(seen) == 2 * FRAMES
    drive(ui)
    assert job.stage == "done", job.error
    assert client.passes == ["flow_prev", "flow_next", "depth"]
    assert compat.all_strips(bpy.context.scene.sequence_editor)[job.result_name]["fresco_guidance"] == "motion, depth"


def test_workbench_scene_falls_back_to_estimated_motion(addon, textured_shot, compat, monkeypatch, capfd):
    textured_shot.scene.render.engine = "BLENDER_WORKBENCH"
    textured_shot.fresco.flow = "render"
    controls(textured_shot, "depth")
    client = PassClient()
    assert translate_sync(addon, client, monkeypatch, strip="shot") == {"FINISHED"}
    out = capfd.readouterr().out
    assert "shot: Optical Flow Render falls back to estimated motion: scene Textured renders with Workbench" in out
    assert "shot: the Depth ControlNet falls back to estimated depth: scene Textured renders with Workbench" in out
    assert client.passes == [] and client.settings["flow"] == "dis"
    result = compat.all_strips(bpy.context.scene.sequence_editor)["shot.fresco"]
    assert "fresco_guidance" not in result.keys() and json.loads(result["fresco_settings"])["flow"] == "dis"


def test_failed_pass_render_falls_back(addon, textured_shot, compat, monkeypatch, capfd):
    """A render of the passes that fails (as EEVEE does without a GPU) falls back too, with the reason."""
    render_passes = addon_module(addon, "render_passes")

    def fail(self, frames=1):
        raise render_passes.PassError("rendering the passes of strip 'shot' with EEVEE failed")

    monkeypatch.setattr(render_passes.PassExporter, "step", fail)
    textured_shot.fresco.flow = "render"
    client = PassClient()
    assert translate_sync(addon, client, monkeypatch, strip="shot") == {"FINISHED"}
    assert ("Optical Flow Render falls back to estimated motion: rendering the passes of strip 'shot' with EEVEE "
            "failed") in capfd.readouterr().out
    assert client.passes == [] and client.settings["flow"] == "dis" and marked_scenes(addon) == []
    assert json.loads(textured_shot["fresco_job_settings"])["flow"] == "dis"  # the settings the job ran with


def test_movie_strip_with_render_flow_falls_back(addon, movie_scene, compat, monkeypatch, capfd):
    strip = compat.all_strips(movie_scene.sequence_editor)["clip"]
    strip.fresco.flow = "render"
    client = PassClient()
    assert translate_sync(addon, client, monkeypatch) == {"FINISHED"}
    assert ("clip: Optical Flow Render falls back to estimated motion: clip is a movie strip, not a 3D scene"
            in capfd.readouterr().out)
    assert client.passes == [] and client.settings["flow"] == "dis"


def test_normal_controlnet_on_a_movie_strip_is_refused(addon, movie_scene, compat, monkeypatch, blend):
    controls(compat.all_strips(movie_scene.sequence_editor)["clip"], "normal")
    client = PassClient()
    with pytest.raises(RuntimeError, match="the Normal ControlNet needs the surface normals a 3D scene strip renders, "
                                           "and there are none: clip is a movie strip"):
        translate_sync(addon, client, monkeypatch)
    assert client.count is None and not (blend.parent / "fresco").exists()


@pytest.mark.parametrize("change, why", [
    (lambda s: setattr(s.transform, "offset_x", 3), "the transform or crop of shot (or of its meta strip) moves"),
    (lambda s: setattr(s.crop, "min_x", 2), "the transform or crop of shot"),
    (lambda s: setattr(s.scene.render, "resolution_y", 64), "scene Textured renders 64 x 64, another shape than"),
    (lambda s: setattr(s.scene.render, "resolution_percentage", 50), "shot does not fill the 64 x 48 frames"),
    (lambda s: setattr(s, "scene_input", "SEQUENCER"), "shot shows the sequencer of scene Textured"),
])
def test_strips_whose_passes_would_not_line_up(addon, textured_shot, change, why):
    render_passes = addon_module(addon, "render_passes")
    assert render_passes.problem(bpy.context.scene, textured_shot) is None
    change(textured_shot)
    assert why in render_passes.problem(bpy.context.scene, textured_shot)


def test_exr_reader_reads_zip_and_refuses_multipart(addon, blend, tmp_path):
    """The reader gives the same values for Blender's ZIP, ZIPS and uncompressed files, and names what it refuses."""
    render_passes = addon_module(addon, "render_passes")
    compat = addon_module(addon, "compat")
    shot = new_shot("Exr")
    square(shot, "ground", 30, emission("ground", noise=6.0)).location = (0, 0, -3)
    layer = shot.view_layers[0]
    layer.use_pass_z = layer.use_pass_vector = True
    shot.render.use_motion_blur = False
    read = {}
    for codec, depth in (("NONE", "32"), ("ZIPS", "32"), ("ZIP", "32"), ("ZIP", "16")):
        compat.set_image_exr_layers(shot.render.image_settings, codec)
        shot.render.image_settings.color_depth = depth  # 16: half floats
        shot.render.filepath = str(tmp_path / f"{codec}{depth}.exr")
        assert bpy.ops.render.render(write_still=True, scene=shot.name) == {"FINISHED"}
        read[codec, depth] = render_passes.read_exr(tmp_path / f"{codec}{depth}.exr")
    assert read["NONE", "32"][:2] == read["ZIP", "16"][:2] == (WIDTH, HEIGHT)
    assert read["ZIP", "32"] == read["NONE", "32"] == read["ZIPS", "32"]
    red = read["NONE", "32"][2][f"{layer.name}.Combined.R"]
    assert len(set(red)) > 100  # a texture, not a plain colour
    assert list(read["ZIP", "16"][2][f"{layer.name}.Combined.R"]) == pytest.approx(list(red), abs=2e-3)
    data = bytearray((tmp_path / "NONE32.exr").read_bytes())
    data[5] |= 0x10  # the multi-part flag
    (tmp_path / "multi.exr").write_bytes(bytes(data))
    with pytest.raises(render_passes.PassError, match="multi-part OpenEXR file"):
        render_passes.read_exr(tmp_path / "multi.exr")


def test_translate_a_scene_strip_with_its_passes(addon, backend_env, textured_shot, compat):
    """End to end with the real backend and the tiny model: Flow Render on a scene strip."""
    textured_shot.fresco.flow = "render"
    assert bpy.ops.fresco.translate(strip="shot") == {"FINISHED"}
    result = compat.all_strips(bpy.context.scene.sequence_editor)["shot.fresco"]
    assert len(result.elements) == FRAMES and result["fresco_guidance"] == "motion, depth"
    assert json.loads(result["fresco_settings"])["flow"] == "render"


def test_farm_sends_the_passes(addon, textured_shot, compat, monkeypatch, capfd):
    """The farm's strips go through the same steps: the passes are exported (its log says so) and sent."""
    farm = addon_module(addon, "farm")
    monkeypatch.setattr(addon_module(addon, "backend"), "config_problem", lambda config: None)
    client = PassClient()
    monkeypatch.setattr(addon_module(addon, "session").get().backend, "get_client",
                        lambda config, timeout=60.0: client)
    textured_shot.fresco.flow = "render"
    bpy.ops.wm.save_mainfile()
    assert farm.run(["shot"]) == 0
    out = capfd.readouterr().out
    assert f"FRESCO farm: [1/1] Scene/shot: render passes {FRAMES}/{FRAMES}" in out, out
    assert client.passes == ["flow_prev", "flow_next", "depth"]


def test_panel_says_what_the_render_guides(addon, textured_shot, movie_scene, compat):
    """The panel names what a scene strip takes from its render, and what happens instead where a strip has no
    render passes; a result strip says what its render guided."""
    from test_panel import flat, panel

    def labels():
        return [e[1] for e in flat(panel()) if e[0] == "label"]

    ed = bpy.context.scene.sequence_editor
    textured_shot.fresco.flow = "render"
    ed.active_strip = textured_shot
    assert "From the 3D render: motion, depth" in labels()
    clip = compat.all_strips(ed)["clip"]
    clip.fresco.flow = "render"
    ed.active_strip = clip
    assert "Optical Flow Render falls back to estimated motion: clip is a movie strip, not a 3D scene" in labels()
    controls(clip, "normal")
    assert any(text.startswith("The Normal ControlNet needs the surface normals") for text in labels()), labels()
    textured_shot["fresco_settings"], textured_shot["fresco_guidance"] = "{}", "motion, depth"
    ed.active_strip = textured_shot
    assert "Guided by its 3D render: motion, depth" in labels()


def test_preview_frame_sends_its_frames_passes(addon, textured_shot, compat, monkeypatch):
    """Preview Frame of a scene strip with a normal ControlNet: the job carries the normals of that one frame."""
    passes = addon_module(addon, "contract").passes
    monkeypatch.setattr(addon_module(addon, "backend"), "config_problem", lambda config: None)
    client = PassClient()
    monkeypatch.setattr(addon_module(addon, "session").get().backend, "get_client",
                        lambda config, timeout=60.0: client)
    controls(textured_shot, "normal", "canny")
    bpy.context.scene.frame_current = compat.visible_start(textured_shot) + 2
    assert bpy.ops.fresco.preview_frame() == {"FINISHED"}
    assert client.count == 1 and client.passes == ["normal"] and client.settings["controls"][0]["kind"] == "normal"
    assert passes.read_header("normal", client.uploaded["normal", 0])[0] == (3, HEIGHT, WIDTH)
    assert marked_scenes(addon) == []


def test_normal_controlnet_and_render_flow_are_choices(addon, blend):
    """The panel offers Flow Render and a Normal ControlNet; the Models box lists the normal ControlNet to
    download (its hub id from the contract) and the preferences take one for the kind."""
    contract = addon_module(addon, "contract")
    model_ops, config = addon_module(addon, "model_ops"), addon_module(addon, "config")
    props = addon_module(addon, "props")
    flows = props.FrescoStripSettings.bl_rna.properties["flow"].enum_items
    assert "render" in [item.identifier for item in flows]
    kinds = props.ITEM_TYPES["controls"].bl_rna.properties["kind"].enum_items
    assert "normal" in [item.identifier for item in kinds]
    rows = model_ops.model_list(config.preferences(bpy.context), {})
    assert [(r.ref, r.kind) for r in rows if r.control == "normal"] == [
        (contract.hubcache.DEFAULT_CONTROLNETS["normal"], "CONTROLNET")]
    assert model_ops.DOWNLOAD_SIZES[contract.hubcache.DEFAULT_CONTROLNETS["normal"]] > 1e9
