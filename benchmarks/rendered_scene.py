"""A small 3D shot rendered by Blender for benchmarks/propagation.py: its colour frames and render passes as the
add-on exports them for a scene strip. Run by a bpy Python (propagation.py does it):

    .venv-bpy53/bin/python benchmarks/rendered_scene.py --addon ZIP --out DIR [--frames 49] [--width 192] [--height 128] [--light sun|sky] [--clay]

The shot: a ground of blocky colour noise, a textured box that crosses the view turning about two axes, a
textured ball that passes behind it, a column the camera pans past (parallax), lit by a sun (its shadows move
over the ground) or by an even sky alone (``--light``); Cycles, 16 samples, denoised. ``--clay`` renders the same
shot with every surface plain grey, as a previs looks.
Writes DIR/0001.png ... (``export.render_strip`` of the scene strip) and DIR/passes/<name>/0001.npy
(``render_passes.PassExporter``, every pass of ``fresco_contract.passes``), and DIR/timing.json (seconds of each
export).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from demo_blend import install_addon  # noqa: E402  (keeps the user's Blender folders untouched)

import bpy  # noqa: E402

PASSES = ("flow_prev", "flow_next", "depth", "normal")


def textured(name: str, scale: float, seed: int, clay: bool = False) -> bpy.types.Material:
    """A material of blocky colour noise (a Voronoi cell colour mixed with fine noise): texture DIS can follow;
    ``clay``: plain grey instead."""
    material = bpy.data.materials.new(name)
    material.use_nodes = True
    if clay:
        return material
    nodes, links = material.node_tree.nodes, material.node_tree.links
    cells = nodes.new("ShaderNodeTexVoronoi")
    cells.inputs["Scale"].default_value = scale
    if "W" in cells.inputs:
        cells.voronoi_dimensions = "4D"
        cells.inputs["W"].default_value = seed
    noise = nodes.new("ShaderNodeTexNoise")
    noise.inputs["Scale"].default_value = scale * 6
    mix = nodes.new("ShaderNodeMixRGB")
    mix.inputs["Fac"].default_value = 0.3
    links.new(cells.outputs["Color"], mix.inputs["Color1"])
    links.new(noise.outputs["Color"], mix.inputs["Color2"])
    links.new(mix.outputs["Color"], nodes["Principled BSDF"].inputs["Base Color"])
    return material


def add(kind: str, material: bpy.types.Material, **kwargs) -> bpy.types.Object:
    getattr(bpy.ops.mesh, f"primitive_{kind}_add")(**kwargs)
    obj = bpy.context.active_object
    obj.data.materials.append(material)
    return obj


def key(obj: bpy.types.Object, frame: int, location=None, rotation=None) -> None:
    if location is not None:
        obj.location = location
        obj.keyframe_insert("location", frame=frame)
    if rotation is not None:
        obj.rotation_euler = rotation
        obj.keyframe_insert("rotation_euler", frame=frame)


def linear(obj: bpy.types.Object) -> None:
    """Constant speed between the keys (Blender eases them by default)."""
    action = obj.animation_data.action
    curves = action.fcurves if hasattr(action, "fcurves") else [c for layer in action.layers for strip in layer.strips
                                                               for bag in strip.channelbags for c in bag.fcurves]
    for curve in curves:
        for point in curve.keyframe_points:
            point.interpolation = "LINEAR"


def build_shot(frames: int, width: int, height: int, light: str, clay: bool) -> bpy.types.Scene:
    """The shot, in the file's first scene (emptied of the start-up file's objects); ``light``: "sun" (a sun and
    its moving shadows over a dim sky) or "sky" (an even sky light only: shading that barely changes); ``clay``:
    every surface plain grey, as a previs is shaded."""
    shot = bpy.context.scene
    shot.name = "Shot"
    for obj in list(shot.objects):
        bpy.data.objects.remove(obj)
    shot.render.engine = "CYCLES"
    shot.cycles.samples = 16
    # denoised, and a new noise pattern every frame: Cycles' default seed leaves a pattern fixed on the screen
    # that DIS follows (and the stylisation keeps) as if it were the picture
    shot.cycles.use_denoising = True
    shot.cycles.use_animated_seed = True
    shot.render.resolution_x, shot.render.resolution_y, shot.render.resolution_percentage = width, height, 100
    shot.frame_start, shot.frame_end = 1, frames
    shot.world = bpy.data.worlds.new("Sky")
    shot.world.use_nodes = True
    shot.world.node_tree.nodes["Background"].inputs["Strength"].default_value = 1.0 if light == "sun" else 3.0
    add("plane", textured("Ground", 3.0, 1, clay), size=30)
    box = add("cube", textured("Box", 4.0, 2, clay), size=1.6)
    ball = add("uv_sphere", textured("Ball", 5.0, 3, clay), radius=0.9)
    column = add("cylinder", textured("Column", 6.0, 4, clay), radius=0.35, depth=5)
    column.location = (1.2, -2.0, 2.5)
    key(box, 1, (-4.0, 1.0, 1.2), (0.0, 0.0, 0.0))
    key(box, frames, (4.0, 0.0, 1.4), (math.radians(90), 0.0, math.radians(200)))
    key(ball, 1, (3.5, 4.0, 0.9))
    key(ball, frames, (-3.5, 3.0, 0.9))
    if light == "sun":
        sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
        sun.data.energy = 3.0
        sun.rotation_euler = (math.radians(40), math.radians(20), math.radians(30))
        shot.collection.objects.link(sun)
    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    shot.collection.objects.link(camera)
    shot.camera = camera
    key(camera, 1, (-2.5, -11.0, 4.0), (math.radians(75), 0.0, math.radians(-8)))
    key(camera, frames, (2.5, -10.0, 4.0), (math.radians(73), 0.0, math.radians(8)))
    for obj in (box, ball, camera):
        linear(obj)
    return shot


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--addon", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--light", choices=("sun", "sky"), default="sun")
    parser.add_argument("--clay", action="store_true", help="every surface plain grey (a previs)")
    args = parser.parse_args(sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else None)
    addon = install_addon(args.addon)
    shot = build_shot(args.frames, args.width, args.height, args.light, args.clay)
    edit = bpy.data.scenes.new("Edit")
    edit.render.resolution_x, edit.render.resolution_y = args.width, args.height
    edit.render.resolution_percentage = 100
    edit.frame_start, edit.frame_end = 1, args.frames
    editor = edit.sequence_editor_create()
    strip = (editor.strips if hasattr(editor, "strips") else editor.sequences).new_scene("Shot", shot, 1, 1)
    started = time.perf_counter()
    addon.export.render_strip(edit, strip, args.out)
    colour = time.perf_counter() - started
    started = time.perf_counter()
    exporter = addon.render_passes.PassExporter(edit, strip, PASSES, args.out / "passes")
    try:
        while exporter.done < exporter.total:
            exporter.step(8)
    finally:
        exporter.close()
    timing = {"frames": args.frames, "size": [args.width, args.height], "colour_s": colour,
              "passes_s": time.perf_counter() - started}
    (args.out / "timing.json").write_text(json.dumps(timing))
    print(json.dumps(timing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
