"""The prompt schedule's settings: changes rise, each has a prompt, and none starts past the job's last frame."""
import pytest

from fresco_contract import settings as S


def schedule(*changes):
    return {"prompt": "a mosaic", "prompt_schedule": [{"frame": f, "prompt": p} for f, p in changes]}


@pytest.mark.parametrize("changes, needle", [
    (((8, "ink"), (4, "oil")), "prompt_schedule: frames must rise, each once, got [8, 4]"),
    (((4, "ink"), (4, "oil")), "prompt_schedule: frames must rise, each once, got [4, 4]"),
    (((4, ""),), "prompt_schedule[0].prompt: must not be empty"),
    (((-1, "ink"),), "prompt_schedule[0].frame: -1 is below the minimum 0"),
])
def test_bad_schedules_are_refused(changes, needle):
    with pytest.raises(S.SettingsError) as info:
        S.validate(schedule(*changes))
    assert needle in str(info.value)


def test_a_change_past_the_jobs_end_is_refused():
    values = S.validate(schedule((4, "ink"), (9, "oil")))
    S.check_frames(values, 10)  # frame 9 is the last of 10
    with pytest.raises(S.SettingsError, match=r"prompt_schedule\[1\].frame: 9 is not a frame of a job of 9 frames"):
        S.check_frames(values, 9)
