"""Keyframed FRESCO numbers (issue 23): sampled at every frame of the strip into the job's settings, the plain
number where nothing is animated, the value at the playhead in the panel; a translation's result records the
per-frame values and is not animated itself."""
from __future__ import annotations

import json
import sys

import bpy
import pytest

from conftest import FakeLayout, STRIP_START, OFFSET_START, VISIBLE, set_duration

FIRST = STRIP_START + OFFSET_START  # the scene frame of the strip's first visible frame (job frame 0)
LAST = FIRST + VISIBLE - 1


def module(addon, name):
    return sys.modules[f"{addon.__name__}.{name}"]


def keyframe(owner, name, *points, setting=None):
    """Key ``owner.name`` at each (frame, value) with the panel's keyframe button, as an artist does."""
    scene = bpy.context.scene
    for frame, value in points:
        scene.frame_set(frame)
        setattr(owner, name, value)
        assert bpy.ops.fresco.keyframe_setting(setting=setting or name) == {"FINISHED"}


class ValueLayout(FakeLayout):
    """Records ("prop", name, the value the field shows) for the strip's settings."""

    def _child(self, *args, **kwargs):
        return ValueLayout(self.log)

    row = column = box = split = _child

    def prop(self, data, name, **kwargs):
        assert name in data.bl_rna.properties, name
        self.log.append(("prop", name, getattr(data, name)))

    def operator(self, idname, icon="NONE", **kwargs):
        log = self.log

        class Props:
            def __setattr__(self, key, value):
                if idname == "fresco.keyframe_setting":
                    log.append(("keyframe", value, icon))
        return Props()


@pytest.fixture
def animated(addon, movie_scene, compat):
    """The test strip with strength keyframed 0.3 at its first visible frame and 0.9 at its last (linear)."""
    strip = compat.all_strips(movie_scene.sequence_editor)["clip"]
    strip.fresco.controls.add().kind = "canny"  # an edited ControlNet list: its items can be keyframed
    keyframe(strip.fresco, "strength", (FIRST, 0.3), (LAST, 0.9))
    for fcurve in module(addon, "animation").scene_fcurves(movie_scene).values():
        for key in fcurve.keyframe_points:
            key.interpolation = "LINEAR"
    return strip


def test_keyframed_strength_gives_per_frame_values_and_the_rest_stays_a_number(addon, animated, compat):
    props, animation = module(addon, "props"), module(addon, "animation")
    settings = props.job_settings(animated)
    strengths = settings["strength"]
    assert len(strengths) == VISIBLE and strengths[0] == pytest.approx(0.3) and strengths[-1] == pytest.approx(0.9)
    assert strengths == pytest.approx([0.3 + 0.6 * i / (VISIBLE - 1) for i in range(VISIBLE)], abs=1e-6)
    assert settings["guidance_scale"] == animated.fresco.guidance_scale  # not animated: the number as today
    assert settings["controls"] == [{"kind": "canny", "scale": pytest.approx(0.7)}]

    keyframe(animated.fresco.controls[0], "scale", (FIRST, 0.2), (FIRST + 2, 1.4), setting="controls[0].scale")
    animated.name = "renamed"  # the F-curves' paths follow the strip's name
    settings = props.job_settings(animated)
    assert len(settings["strength"]) == VISIBLE
    scales = settings["controls"][0]["scale"]
    assert scales[0] == pytest.approx(0.2) and scales[2:] == pytest.approx([1.4] * (VISIBLE - 2))
    schema = module(addon, "contract").settings
    validated = schema.validate(settings)
    schema.check_frames(validated, VISIBLE)
    assert animation.at_frames(validated, [2])["strength"] == [strengths[2]]  # a Preview Frame's one frame

    # the panel draws the field with layout.prop: it shows the animated value at the playhead, and its keyframe
    # button says whether the frame has a key
    for frame, icon in ((FIRST, "DECORATE_KEYFRAME"), (FIRST + 3, "DECORATE_ANIMATE")):
        animated.id_data.frame_set(frame)
        log: list = []
        bpy.types.FRESCO_PT_panel.draw(type("P", (), {"layout": ValueLayout(log)})(), bpy.context)
        shown = [entry[2] for entry in log if entry[:2] == ("prop", "strength")]
        assert shown == [pytest.approx(strengths[frame - FIRST])]
        assert ("keyframe", "strength", icon) in log and ("keyframe", "guidance_scale", "DECORATE") in log
    # its cost counts the peak strength's steps (2 x 0.9), not the playhead's (2 x 0.66: 1 step)
    assert [entry[1] for entry in log if entry[0] == "label" and " batch" in entry[1]][0].endswith(" of 2 steps")
    animated.id_data.frame_set(FIRST)
    assert bpy.ops.fresco.keyframe_setting(setting="strength") == {"FINISHED"}  # a key there: deleted
    assert len(props.job_settings(animated)["strength"]) == VISIBLE  # the one at the last frame holds
    assert props.job_settings(animated)["strength"] == pytest.approx([0.9] * VISIBLE)
    with pytest.raises(RuntimeError, match="has no setting 'prompt' that can be keyframed"):
        bpy.ops.fresco.keyframe_setting(setting="prompt")


def test_a_translation_records_the_per_frame_values_and_its_result_is_not_animated(addon, animated, compat,
                                                                                  backend_env):
    animation = module(addon, "animation")
    set_duration(animated, 3)  # a short, cheap job: its frames 13..15
    animated.fresco.steps = 1
    assert bpy.ops.fresco.translate(strip="clip") == {"FINISHED"}
    result = compat.all_strips(animated.id_data.sequence_editor)["clip.fresco"]
    recorded = json.loads(result["fresco_settings"])
    assert recorded["strength"] == pytest.approx([0.3 + 0.6 * i / (VISIBLE - 1) for i in range(3)], abs=1e-6)
    assert result.fresco.strength == pytest.approx(0.3)  # its field: the first frame's value
    curves = animation.scene_fcurves(animated.id_data)
    assert animation.setting_path(result, "strength") not in curves  # nothing keyframed on the result
    assert animation.setting_path(animated, "strength") in curves
