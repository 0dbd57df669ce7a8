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
    ({"prompt": "x", "control": "hed2"}, "control: 'hed2' is not one of"),
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
        assert setting.check(setting.default) == (setting.default, None), setting.name
