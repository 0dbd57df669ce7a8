import math

import pytest

from fresco_contract import settings as S


def test_defaults_validate_once_prompt_is_given():
    values = S.validate({"prompt": "a watercolour street"})
    assert values == {**S.defaults(), "prompt": "a watercolour street"}


@pytest.mark.parametrize("values, needle", [
    ({}, "prompt: must not be empty"),
    ({"prompt": "   "}, "prompt: must not be empty"),
    ({"prompt": "x", "steps": 0}, "steps: 0 is below the minimum"),
    ({"prompt": "x", "strength": 1.5}, "strength: 1.5 is above the maximum"),
    ({"prompt": "x", "steps": 3.5}, "steps: expected int"),
    ({"prompt": "x", "seed": True}, "seed: expected int, got bool"),
    ({"prompt": "x", "guidance_scale": math.nan}, "guidance_scale: must be a number"),
    ({"prompt": "x", "control": "hed2"}, "controls[0].kind: 'hed2' is not one of"),  # an old record's setting
    ({"prompt": "x", "controls": [{"kind": "tile", "scale": 3}]}, "controls[0].scale: 3.0 is above the maximum 2.0"),
    ({"prompt": "x", "controls": [{"kind": "tile", "bogus": 1}]}, "controls[0]: unknown field 'bogus'"),
    ({"prompt": "x", "controls": []}, "controls: at least one ControlNet"),
    ({"prompt": "x", "controls": [{"kind": "tile"}, {"kind": "tile", "scale": 0.2}]}, "each kind at most once"),
    ({"prompt": "x", "controls": [{"kind": "canny"}] * 5}, "controls: at most 4 items"),
    ({"prompt": "x", "loras": [{"weight": 1.0}]}, "loras[0].path: must not be empty"),
    ({"prompt": "x", "loras": "a.safetensors"}, "loras: expected a list"),
    ({"prompt": "x", "colour": 1}, "colour: unknown setting"),
    ({"prompt": "x", "canny_low": 200, "canny_high": 100}, "canny_low: must not exceed canny_high"),
])
def test_invalid_settings_are_named(values, needle):
    with pytest.raises(S.SettingsError, match=None) as info:
        S.validate(values)
    assert needle in str(info.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(S.SettingsError) as info:
        S.validate({"prompt": "", "steps": -1, "bogus": 1})
    message = str(info.value)
    assert "prompt" in message and "steps" in message and "bogus" in message


def test_not_a_mapping():
    with pytest.raises(S.SettingsError, match="must be an object"):
        S.validate(["prompt"])


def test_ints_are_accepted_for_floats():
    assert S.validate({"prompt": "x", "strength": 1})["strength"] == 1.0


def test_schema_is_self_consistent():
    for setting in S.SETTINGS:
        if setting.required:
            continue
        assert setting.check(setting.default_value()) == (setting.default_value(), None), setting.name


def test_list_settings_fill_in_defaults_and_old_records_upgrade():
    values = S.validate({"prompt": "x", "controls": [{"kind": "tile"}, {"kind": "canny", "scale": 1}],
                         "loras": [{"path": "/l.safetensors"}]})
    assert values["controls"] == [{"kind": "tile", "scale": 0.7}, {"kind": "canny", "scale": 1}]
    assert values["loras"] == [{"path": "/l.safetensors", "weight": 1.0}]
    old = S.validate({"prompt": "x", "control": "canny", "control_scale": 0.4})
    assert old["controls"] == [{"kind": "canny", "scale": 0.4}] and "control" not in old


def test_a_record_written_before_upscale_existed_keeps_upscaling():
    old = {k: v for k, v in S.validate({"prompt": "x"}).items() if k != "upscale"}
    assert S.from_record(old)["upscale"] is True
    assert S.from_record({**old, "upscale": False})["upscale"] is False
    assert S.validate(old)["upscale"] is False  # a new job's settings: off by default
    with pytest.raises(S.SettingsError, match="must be an object"):
        S.from_record(["x"])
