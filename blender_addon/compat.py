"""One set of names for the sequencer API across Blender 4.2 LTS .. 5.x.

Blender 4.4 added ``Strip`` type names and ``SequenceEditor.strips`` next to
the old ``Sequence``/``sequences`` names; 5.0 removed the old ones. 5.2 added
``left_handle``/``right_handle``/``duration``/``content_start`` for a strip's
timing and deprecated ``frame_final_*``, ``frame_start`` and ``frame_offset_*``.
The rest of the add-on only uses the functions here.
"""
from __future__ import annotations

from typing import Any, Iterator

import bpy


def strip_type() -> type:
    """The RNA base type of every strip (``bpy.types.Strip`` or ``Sequence``)."""
    return getattr(bpy.types, "Strip", None) or bpy.types.Sequence


def editor(scene: Any, create: bool = False) -> Any:
    """The scene's sequence editor (created if asked), or None."""
    if scene.sequence_editor is None and create:
        scene.sequence_editor_create()
    return scene.sequence_editor


def top_strips(ed: Any) -> Any:
    """The editor's top-level strip collection (has new_movie/new_image/remove)."""
    coll = getattr(ed, "strips", None)
    return coll if coll is not None else ed.sequences


def all_strips(ed: Any) -> Any:
    """Every strip of the editor, including those inside meta strips."""
    coll = getattr(ed, "strips_all", None)
    return coll if coll is not None else ed.sequences_all


def all_strips_name(ed: Any) -> str:
    """The name of the editor's property that ``all_strips`` is (for ``UILayout.prop_search``)."""
    return "strips_all" if hasattr(ed, "strips_all") else "sequences_all"


def active_strip(context: Any) -> Any:
    """The active strip of the context's scene, or None."""
    scene = getattr(context, "scene", None)
    ed = scene.sequence_editor if scene is not None else None
    return ed.active_strip if ed is not None else None


def meta_children(strip: Any) -> Any:
    """The strips inside a meta strip."""
    coll = getattr(strip, "strips", None)
    return coll if coll is not None else strip.sequences


def walk(coll: Any) -> Iterator[Any]:
    """Every strip of ``coll`` and, recursively, of its meta strips."""
    for strip in coll:
        yield strip
        if strip.type == "META":
            yield from walk(meta_children(strip))


def meta_chain(coll: Any, target: Any, chain: tuple = ()) -> tuple | None:
    """The meta strips of ``coll`` that contain ``target``, outermost first; None where it is not in ``coll``."""
    for strip in coll:
        if strip == target:
            return chain
        if strip.type == "META":
            found = meta_chain(meta_children(strip), target, chain + (strip,))
            if found is not None:
                return found
    return None


def holding_collection(ed: Any, strip: Any) -> Any:
    """The collection ``strip`` is in: the editor's top level or its meta strip's (None if it is in neither)."""
    chain = meta_chain(top_strips(ed), strip)
    if chain is None:
        return None
    return meta_children(chain[-1]) if chain else top_strips(ed)


def blend_relative_path_options() -> dict:
    """Keyword arguments that let a FILE_PATH StringProperty hold a "//" path: 4.5's option, nothing before
    (4.2 refuses the option only when the class is registered)."""
    if "is_path_supports_blend_relative" in bpy.types.Property.bl_rna.properties:
        return {"options": {"PATH_SUPPORTS_BLEND_RELATIVE"}}
    return {}


def _handles(strip: Any) -> bool:
    """Whether ``strip`` has 5.2's timing names (``left_handle``...); 5.2 deprecates ``frame_final_*``, 6.0 drops them."""
    return "left_handle" in strip.bl_rna.properties


def visible_start(strip: Any) -> int:
    """First frame at which the strip shows (after trimming)."""
    return int(strip.left_handle if _handles(strip) else strip.frame_final_start)


def visible_duration(strip: Any) -> int:
    """Number of frames the strip shows (after trimming)."""
    return int(strip.duration if _handles(strip) else strip.frame_final_duration)


def visible_end(strip: Any) -> int:
    """One past the last frame at which the strip shows."""
    return int(strip.right_handle if _handles(strip) else strip.frame_final_end)


def content_start(strip: Any) -> float:
    """The timeline frame where the strip's content (its first frame before any trim) begins."""
    return strip.content_start if _handles(strip) else strip.frame_start


def content_trim_start(strip: Any) -> int:
    """Frames of the content a scene or movie strip skips at its start (5.2's ``content_trim_start``)."""
    return int(strip.content_trim_start if "content_trim_start" in strip.bl_rna.properties
               else strip.animation_offset_start)


def new_image_strip(coll: Any, name: str, first_file: str, channel: int, frame_start: int,
                    fit_method: str = "FIT") -> Any:
    return coll.new_image(name=name, filepath=first_file, channel=channel,
                          frame_start=frame_start, fit_method=fit_method)


def invalidate(strip: Any) -> None:
    """Make the sequencer read ``strip``'s files again (their names or contents changed)."""
    strip.invalidate_cache("RAW")


def new_movie_strip(coll: Any, name: str, filepath: str, channel: int, frame_start: int) -> Any:
    return coll.new_movie(name=name, filepath=filepath, channel=channel, frame_start=frame_start)


def set_image_png(image_settings: Any) -> None:
    """Make ``image_settings`` write 8-bit RGB PNGs (5.0 added ``media_type``)."""
    if "media_type" in image_settings.bl_rna.properties:
        image_settings.media_type = "IMAGE"
    image_settings.file_format = "PNG"
    image_settings.color_mode = "RGB"
    image_settings.color_depth = "8"


def set_image_exr(image_settings: Any) -> None:
    """Make ``image_settings`` write uncompressed full-float RGBA OpenEXR files of one layer (5.0 added
    ``media_type``)."""
    if "media_type" in image_settings.bl_rna.properties:
        image_settings.media_type = "IMAGE"
    image_settings.file_format = "OPEN_EXR"
    image_settings.color_mode = "RGBA"
    image_settings.color_depth = "32"
    image_settings.exr_codec = "NONE"


def set_image_exr_layers(image_settings: Any, codec: str) -> None:
    """Make ``image_settings`` write every pass of a render into one single-part, full-float multilayer OpenEXR
    file (5.0 added ``media_type``; 5.2 writes one part per pass unless ``use_exr_interleave``)."""
    if "media_type" in image_settings.bl_rna.properties:
        image_settings.media_type = "MULTI_LAYER_IMAGE"
    image_settings.file_format = "OPEN_EXR_MULTILAYER"
    image_settings.color_depth = "32"
    image_settings.exr_codec = codec
    if "use_exr_interleave" in image_settings.bl_rna.properties:
        image_settings.use_exr_interleave = True


def new_effect_strip(coll: Any, name: str, type: str, channel: int, frame_start: int, length: int,
                     **inputs: Any) -> Any:
    """A new effect strip covering ``length`` frames (5.0 takes ``length``, 4.x ``frame_end``)."""
    params = coll.bl_rna.functions["new_effect"].parameters
    if "length" in params:
        return coll.new_effect(name=name, type=type, channel=channel, frame_start=frame_start, length=length,
                               **inputs)
    return coll.new_effect(name=name, type=type, channel=channel, frame_start=frame_start,
                           frame_end=frame_start + length, **inputs)
