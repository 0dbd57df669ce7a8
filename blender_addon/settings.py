"""The one definition of a translation job's settings.

Names, types, defaults, ranges and help texts live here and nowhere else: the
add-on builds its per-strip properties from ``SETTINGS``, the server validates
job specs with ``validate``, and the backend command line builds its options
from it. Standard library only, so Blender's Python, the server and the
backend can all import it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


class SettingsError(ValueError):
    """A job's settings are invalid; the message lists every problem."""


@dataclass(frozen=True)
class Setting:
    """One user-facing job setting."""

    name: str
    kind: str  # "str", "int", "float", "bool" or "enum"
    default: Any
    label: str
    description: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = field(default_factory=tuple)
    required: bool = False  # a str that must not be empty

    def check(self, value: Any) -> tuple[Any, str | None]:
        """Return (normalised value, None) or (None, problem)."""
        expected = {"str": str, "enum": str, "bool": bool, "int": int, "float": (int, float)}[self.kind]
        # bool is an int subclass in Python; refuse it where a number is meant
        if not isinstance(value, expected) or (self.kind in ("int", "float") and isinstance(value, bool)):
            return None, f"{self.name}: expected {self.kind}, got {type(value).__name__} {value!r}"
        if self.kind == "float":
            value = float(value)
            if value != value:  # NaN
                return None, f"{self.name}: must be a number, got NaN"
        if self.kind == "str" and self.required and not value.strip():
            return None, f"{self.name}: must not be empty ({self.description})"
        if self.kind == "enum" and value not in self.choices:
            return None, f"{self.name}: {value!r} is not one of {', '.join(self.choices)}"
        if self.minimum is not None and value < self.minimum:
            return None, f"{self.name}: {value} is below the minimum {self.minimum}"
        if self.maximum is not None and value > self.maximum:
            return None, f"{self.name}: {value} is above the maximum {self.maximum}"
        return value, None


SETTINGS: tuple[Setting, ...] = (
    Setting("prompt", "str", "", "Prompt", "Text describing the look of the result", required=True),
    Setting("negative_prompt", "str", "", "Negative Prompt", "Text describing what the result should not show"),
    Setting("mode", "enum", "per_frame", "Mode",
            "per_frame: every frame translated on its own (baseline, flickers)",
            choices=("per_frame",)),
    Setting("seed", "int", 0, "Seed", "Seed of the initial noise; the same seed gives the same result",
            minimum=0, maximum=2**31 - 1),
    Setting("strength", "float", 0.75, "Strength",
            "How far the result may depart from the input: 0 keeps the input, 1 ignores its colours",
            minimum=0.05, maximum=1.0),
    Setting("steps", "int", 20, "Steps", "Denoising steps of the scheduler (before strength shortens them)",
            minimum=1, maximum=150),
    Setting("guidance_scale", "float", 7.5, "Guidance", "Classifier-free guidance scale (1 = off)",
            minimum=1.0, maximum=30.0),
    Setting("size", "int", 512, "Size", "Short side of the processed frames in pixels, rounded to a multiple of 64",
            minimum=64, maximum=2048),
    Setting("batch_size", "int", 4, "Batch Size",
            "Frames denoised together; more is faster on a GPU but needs more memory",
            minimum=1, maximum=16),
    Setting("control", "enum", "canny", "Control", "ControlNet condition computed from each input frame",
            choices=("canny",)),
    Setting("control_scale", "float", 0.7, "Control Scale", "Strength of the ControlNet condition",
            minimum=0.0, maximum=2.0),
    Setting("canny_low", "int", 50, "Canny Low", "Lower hysteresis threshold of the canny edges",
            minimum=0, maximum=255),
    Setting("canny_high", "int", 100, "Canny High", "Upper hysteresis threshold of the canny edges",
            minimum=0, maximum=255),
    Setting("model", "str", "", "Model",
            "Stable Diffusion 1.5 checkpoint: hub id, diffusers folder or .safetensors file "
            "(empty: the backend's default)"),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


def defaults() -> dict[str, Any]:
    """Every setting at its default value."""
    return {s.name: s.default for s in SETTINGS}


def validate(values: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``values`` against the schema and fill in defaults.

    Raises SettingsError naming every unknown, mistyped or out-of-range
    setting at once, so a user fixes them in one go.
    """
    if not isinstance(values, Mapping):
        raise SettingsError(f"settings must be an object, got {type(values).__name__}")
    problems = [f"{name}: unknown setting (known: {', '.join(BY_NAME)})"
                for name in values if name not in BY_NAME]
    result = defaults()
    for setting in SETTINGS:
        value = values.get(setting.name, setting.default)
        checked, problem = setting.check(value)
        if problem:
            problems.append(problem)
        else:
            result[setting.name] = checked
    if result["canny_low"] > result["canny_high"] and not problems:
        problems.append("canny_low: must not exceed canny_high")
    if problems:
        raise SettingsError("invalid settings: " + "; ".join(problems))
    return result
