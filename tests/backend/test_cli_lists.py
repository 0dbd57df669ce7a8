"""The command line's list settings (--controls KIND[@SCALE], --loras FILE[@WEIGHT]) and several
ControlNets (--controlnet KIND=DIR) and LoRAs in a real run."""
from __future__ import annotations

import numpy as np
import pytest

from fresco_backend import cli
from fresco_backend.synthetic import moving_square, write_video
from fresco_backend.video_io import read_png
from fresco_contract import settings as S


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", moving_square(frames=3, width=64, height=64).frames)


def test_list_flags_take_first_at_second_and_the_fields_defaults():
    args = cli.build_parser().parse_args([
        "translate", "in.mp4", "--out", "o", "--controls", "tile@0.5", "--controls", "canny",
        "--loras", "/l/a@b.safetensors@0.8", "--loras", "/l/plain.safetensors"])
    values = S.validate({"prompt": "x", "controls": args.controls, "loras": args.loras})
    assert values["controls"] == [{"kind": "tile", "scale": 0.5}, {"kind": "canny", "scale": 0.7}]
    assert values["loras"] == [{"path": "/l/a@b.safetensors", "weight": 0.8},
                               {"path": "/l/plain.safetensors", "weight": 1.0}]
    assert cli.build_parser().parse_args(["translate", "i", "--out", "o"]).controls is None  # the default


def test_prompt_changes_take_frame_at_prompt_and_must_be_frames_of_the_clip(clip, tmp_path, capsys):
    args = cli.build_parser().parse_args(["translate", "i", "--out", "o", "--prompt-schedule", "2@ink @ dusk"])
    assert S.validate({"prompt": "x", "prompt_schedule": args.prompt_schedule})["prompt_schedule"] == [
        {"frame": 2, "prompt": "ink @ dusk"}]
    code = cli.main(["translate", str(clip), "--out", str(tmp_path / "o"), "--prompt", "a fox",
                     "--prompt-schedule", "3@ink", "--device", "cpu"])
    assert code != 0 and "prompt_schedule[0].frame: 3 is not a frame of a job of 3 frames" in capsys.readouterr().err
    assert not (tmp_path / "o" / cli.JOB_DIR).exists()  # no job left to resume or restart


def run(clip, out, models, controlnets, *extra) -> list[np.ndarray]:
    code = cli.main(["translate", str(clip), "--out", str(out), "--prompt", "a fox", "--model", str(models[0]),
                     "--controlnet", str(controlnets["canny"]), "--controlnet", f"tile={controlnets['tile']}",
                     "--steps", "2", "--size", "64", "--mode", "per_frame", "--device", "cpu", *extra])
    assert code == 0
    return [read_png(path) for path in sorted(out.glob("*.png"))]


def test_cli_runs_several_controlnets_and_a_lora(clip, tiny_models, tiny_controlnets, tiny_lora, tmp_path, capsys):
    models = (tiny_models, tiny_controlnets)
    canny = run(clip, tmp_path / "canny", *models)
    both = run(clip, tmp_path / "both", *models, "--controls", "canny", "--controls", "tile@0.9")
    lora = run(clip, tmp_path / "lora", *models, "--loras", f"{tiny_lora}@1.5")
    assert len(canny) == len(both) == len(lora) == 3
    assert all(not np.array_equal(a, b) for a, b in zip(canny, both))
    assert all(not np.array_equal(a, b) for a, b in zip(canny, lora))
    zero = run(clip, tmp_path / "zero", *models, "--loras", f"{tiny_lora}@0")
    assert all(np.array_equal(a, b) for a, b in zip(canny, zero))  # weight 0: the model as it is
    missing = tmp_path / "missing.safetensors"
    code = cli.main(["translate", str(clip), "--out", str(tmp_path / "bad"), "--prompt", "x",
                     "--model", str(tiny_models[0]), "--controlnet", str(tiny_models[1]), "--device", "cpu",
                     "--loras", str(missing)])
    err = capsys.readouterr().err
    assert code == 2 and f"LoRA file {missing} cannot be read" in err and "Traceback" not in err


def test_translate_help_prints_every_setting(capsys):
    """--help prints each setting's help, a "%" in its text included (Quality's "50 % of the sides")."""
    with pytest.raises(SystemExit) as done:
        cli.main(["translate", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--cut-detection" in out and "--prompt-schedule" in out and f"{S.DRAFT_SCALE * 100:g} %" in out
