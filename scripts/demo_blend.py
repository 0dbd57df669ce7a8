"""Headless FRESCO run inside Blender (the bpy module): what a render farm does.

Builds a .blend with the clip as a movie strip, installs the add-on from its
zip, sets the strip's prompt and translates it with the add-on's operator
(synchronous in background mode), then saves the .blend with the new strip.
Run by scripts/demo.sh; the backend is configured by FRESCO_* variables.

    python scripts/demo_blend.py --addon ZIP --clip CLIP --out DIR [--prompt TEXT]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

# Blender reads its user folders on import: keep the user's own preferences and extensions untouched.
_USER = Path(tempfile.mkdtemp(prefix="fresco-demo-user-"))
for folder in ("CONFIG", "SCRIPTS", "EXTENSIONS", "DATAFILES"):
    os.environ[f"BLENDER_USER_{folder}"] = str(_USER / folder.lower())

import bpy  # noqa: E402

PACKAGE = "fresco_vse"


def install_addon(zip_path: Path):
    """Install and enable the add-on as a user would; return its module."""
    bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo="user_default", enable_on_install=True)
    name = next(n for n in bpy.context.preferences.addons.keys() if n.split(".")[-1] == PACKAGE)
    return sys.modules[name]


def free_path(folder: Path, stem: str, suffix: str) -> Path:
    """folder/stem.suffix, or stem_2, stem_3, ... if taken: never overwrite."""
    path, n = folder / f"{stem}{suffix}", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}_{n}{suffix}"
    return path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--addon", type=Path, required=True)
    parser.add_argument("--clip", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--prompt", default="a watercolour painting, soft light")
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()

    addon = install_addon(args.addon.resolve())
    bpy.context.preferences.filepaths.save_version = 0  # no demo.blend1 backups
    compat = sys.modules[addon.__name__ + ".compat"]
    args.out.mkdir(parents=True, exist_ok=True)
    blend = free_path(args.out.resolve(), "demo", ".blend")
    bpy.ops.wm.read_homefile(use_empty=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))  # so //fresco/ lands next to it

    scene = bpy.context.scene
    strips = compat.top_strips(compat.editor(scene, create=True))
    source = compat.new_movie_strip(strips, "clip", str(args.clip.resolve()), 1, 1)
    scene.render.resolution_x, scene.render.resolution_y = source.elements[0].orig_width, source.elements[0].orig_height
    scene.frame_start, scene.frame_end = compat.visible_start(source), compat.visible_end(source) - 1
    source.fresco.prompt = args.prompt
    source.fresco.size = args.size
    source.fresco.seed = 42

    result = bpy.ops.fresco.translate(strip=source.name)
    if result != {"FINISHED"}:
        print("demo: translation failed", file=sys.stderr)
        return 1
    bpy.ops.wm.save_mainfile()
    new = [s for s in strips if s.name != source.name]
    for strip in new:
        print(f"demo: strip {strip.name!r} channel {strip.channel} frames "
              f"{compat.visible_start(strip)}..{compat.visible_end(strip) - 1} from {bpy.path.abspath(strip.directory)}")
    print(f"demo: saved {blend}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
