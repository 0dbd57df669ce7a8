"""The one definition of a translation job's settings.

Names, types, defaults, ranges and help texts live here and nowhere else: the
add-on builds its per-strip properties from ``SETTINGS``, the server validates
job specs with ``validate``, and the backend command line builds its options
from it. Standard library only, so Blender's Python, the server and the
backend can all import it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping


class SettingsError(ValueError):
    """A job's settings are invalid; the message lists every problem."""


@dataclass(frozen=True)
class Setting:
    """One user-facing job setting."""

    name: str
    kind: str  # "str", "int", "float", "bool", "enum" or "list" (of objects whose fields are ``fields``)
    default: Any
    label: str
    description: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = field(default_factory=tuple)
    required: bool = False  # a str that must not be empty
    advanced: bool = False  # tuning knob: the add-on shows it folded away
    fields: tuple[Setting, ...] = ()  # a "list": the fields of one item (the first one is the item's "key")
    max_items: int = 0  # a "list": the most items it may hold
    file: bool = False  # a "str" naming a file on the backend's machine (the add-on shows a file browser)
    # where a user interface shows it: one of GROUPS ("" for a list item's field); advanced=True means "advanced"
    group: str = ""
    # when it is used: (setting, values) pairs that must all hold (the named setting has one of the values; a
    # list setting: one of its items' keys has); a setting that does not apply is still valid, only unused
    applies_when: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    # a number an artist may animate: a list of one value per frame of the job stands for it (``check_frames``)
    animated: bool = False

    def __post_init__(self) -> None:
        if self.advanced and not self.group:
            object.__setattr__(self, "group", "advanced")

    def applies(self, values: Mapping[str, Any]) -> bool:
        """Whether this setting is used by a job with ``values`` (settings as ``validate`` returns them;
        missing ones are taken at their defaults)."""
        for name, accepted in self.applies_when:
            other = BY_NAME[name]
            value = values.get(name, other.default_value())
            if other.kind == "list":
                key = other.fields[0].name
                if not any(isinstance(item, Mapping) and item.get(key) in accepted for item in value):
                    return False
            elif value not in accepted:
                return False
        return True

    def check(self, value: Any) -> tuple[Any, str | None]:
        """Return (normalised value, None) or (None, problem)."""
        if self.kind == "list":
            return self._check_list(value)
        if self.animated and isinstance(value, (list, tuple)):
            return self._check_frames(value)
        expected = {"str": str, "enum": str, "bool": bool, "int": int, "float": (int, float)}[self.kind]
        # bool is an int subclass in Python; refuse it where a number is meant
        if not isinstance(value, expected) or (self.kind in ("int", "float") and isinstance(value, bool)):
            return None, f"{self.name}: expected {self.kind}, got {type(value).__name__} {value!r}"
        if self.kind == "float":
            value = float(value)
            if value != value:  # NaN
                return None, f"{self.name}: must be a number, got NaN"
        if self.kind in ("str", "enum"):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:  # a lone surrogate, e.g. JSON "\\ud800"
                return None, (f"{self.name}: character {exc.start} is not valid Unicode "
                              f"({value[exc.start]!r}, a lone surrogate); send UTF-8 text")
        if self.kind == "str" and self.required and not value.strip():
            return None, f"{self.name}: must not be empty ({self.description})"
        if self.kind == "enum" and value not in self.choices:
            return None, f"{self.name}: {value!r} is not one of {', '.join(self.choices)}"
        if self.minimum is not None and value < self.minimum:
            return None, f"{self.name}: {value} is below the minimum {self.minimum}"
        if self.maximum is not None and value > self.maximum:
            return None, f"{self.name}: {value} is above the maximum {self.maximum}"
        return value, None

    def _check_frames(self, value: Any) -> tuple[Any, str | None]:
        """An animated number's per-frame values: each one checked as the number is."""
        if not value or len(value) > MAX_FRAMES:
            return None, f"{self.name}: per-frame values must be 1 to {MAX_FRAMES} numbers, got {len(value)}"
        values = []
        for index, item in enumerate(value):
            checked, problem = replace(self, animated=False).check(item)
            if problem:
                return None, f"{problem} (frame {index})"
            values.append(checked)
        return values, None

    def _check_list(self, value: Any) -> tuple[Any, str | None]:
        """A list of objects: each one's fields checked and defaults filled in, unknown fields refused."""
        if not isinstance(value, (list, tuple)):
            return None, f"{self.name}: expected a list, got {type(value).__name__} {value!r}"
        if len(value) > self.max_items:
            return None, f"{self.name}: at most {self.max_items} items, got {len(value)}"
        known = {f.name: f for f in self.fields}
        items = []
        for index, item in enumerate(value):
            if not isinstance(item, Mapping):
                return None, f"{self.name}[{index}]: expected an object, got {type(item).__name__} {item!r}"
            unknown = [k for k in item if k not in known]
            if unknown:
                return None, f"{self.name}[{index}]: unknown field {unknown[0]!r} (known: {', '.join(known)})"
            checked = {}
            for f in self.fields:
                field_value, problem = f.check(item.get(f.name, f.default))
                if problem:
                    return None, f"{self.name}[{index}].{problem}"
                checked[f.name] = field_value
            items.append(checked)
        return items, None

    def default_value(self) -> Any:
        """The default, as a fresh object (list defaults are never shared)."""
        return [dict(item) for item in self.default] if self.kind == "list" else self.default


MAX_FRAMES = 100_000  # the most frames an animated setting's per-frame values cover
MASKS = ("none", "strip", "alpha")  # where the ``mask`` setting's region comes from


def peak(value: Any) -> Any:
    """An animated setting's largest value over the frames (``value`` itself when it is not animated)."""
    return max(value) if isinstance(value, list) else value


def animated(values: Mapping[str, Any]) -> list[tuple[str, int]]:
    """The animated settings of validated ``values``: (name, length) of each per-frame list, named as the
    panel names them ("strength", "controls[0].scale", "loras[1].weight")."""
    found = []
    for setting in SETTINGS:
        value = values.get(setting.name)
        if setting.kind == "list":
            for index, item in enumerate(value or ()):
                found += [(f"{setting.name}[{index}].{f.name}", len(item[f.name])) for f in setting.fields
                          if f.animated and isinstance(item.get(f.name), list)]
        elif setting.animated and isinstance(value, list):
            found.append((setting.name, len(value)))
    return found


def check_frames(values: Mapping[str, Any], frames: int) -> None:
    """SettingsError unless every animated setting of validated ``values`` holds one value per frame of a job
    of ``frames`` frames, and every prompt change starts at one of them."""
    problems = [f"{name}: {length} per-frame values for a job of {frames} frames" for name, length
                in animated(values) if length != frames]
    problems += [f"prompt_schedule[{i}].frame: {item['frame']} is not a frame of a job of {frames} frames"
                 for i, item in enumerate(values.get("prompt_schedule", ())) if item["frame"] >= frames]
    if problems:
        raise SettingsError("invalid settings: " + "; ".join(problems))


CONTROL_KINDS = ("canny", "tile", "softedge", "depth", "lineart", "normal")
# the groups a user interface shows the settings in (``Setting.group``: id, title), by what an artist decides:
# the look of the result, what guides it, which frames are keys, its quality and cost, and research switches
# Draft quality (the ``quality`` setting): what it changes, measured and defended in README.md ("Draft")
QUALITIES = ("final", "draft")
DRAFT_STEPS = 6    # at most this many scheduler steps: 4 denoised at the default strength 0.75 instead of 15
DRAFT_SCALE = 0.5  # each side of the working size (estimate.working_size): 25 % of the pixels
LCM_STEPS = 4      # a Draft with an LCM-LoRA (``draft_lora``): the few-step sampler's steps, without guidance


def effective(values: Mapping[str, Any]) -> dict[str, Any]:
    """Validated settings ``values`` as a job runs them: at Draft quality with at most ``DRAFT_STEPS`` steps
    and no feature optimisation (its smaller working size is ``estimate.working_size``'s ``draft``); with a
    ``draft_lora`` also that LoRA at weight 1, at most ``LCM_STEPS`` steps of the LCM sampler and no
    classifier-free guidance (guidance 1), as LCM-LoRAs are trained to sample."""
    if values.get("quality") != "draft":
        return dict(values)
    draft = {**values, "steps": min(values["steps"], DRAFT_STEPS), "feature_optimization": False}
    if values.get("draft_lora"):
        draft.update(steps=min(values["steps"], LCM_STEPS), guidance_scale=1.0, background_smoothing=False,
                     loras=[*values.get("loras", ()), {"path": values["draft_lora"], "weight": 1.0}])
    return draft


GROUPS = (("look", "Look"), ("guidance", "Guidance"), ("timing", "Keyframes"), ("quality", "Quality"),
          ("advanced", "Advanced"))
_FRESCO = ("mode", ("fresco",))  # only FRESCO mode: per_frame translates every frame on its own

SETTINGS: tuple[Setting, ...] = (
    Setting("prompt", "str", "", "Prompt", "Text describing the look of the result", required=True,
            group="look"),
    Setting("negative_prompt", "str", "", "Negative Prompt", "Text describing what the result should not show",
            group="look"),
    Setting("mode", "enum", "fresco", "Mode",
            "fresco: keyframes translated jointly with FRESCO's flow-guided attention and feature "
            "optimisation (temporally coherent); per_frame: every frame on its own (baseline, flickers)",
            choices=("fresco", "per_frame"), advanced=True),
    Setting("seed", "int", 0, "Seed", "Seed of the initial noise; the same seed gives the same result",
            minimum=0, maximum=2**31 - 1, group="look"),
    Setting("strength", "float", 0.75, "Strength",
            "How far the result may depart from the input: 0 keeps the input, 1 ignores its colours",
            minimum=0.05, maximum=1.0, group="look", animated=True),
    Setting("quality", "enum", "final", "Quality",
            "Final: the whole translation. Draft: a quick look at the same keys: at most "
            f"{DRAFT_STEPS} steps, {DRAFT_SCALE * 100:g} % of the working size's sides and no feature "
            "optimisation, several times faster", choices=QUALITIES, group="quality"),
    Setting("draft_lora", "str", "", "Draft LCM-LoRA",
            "An LCM-LoRA for SD 1.5 (.safetensors on the backend's machine, e.g. the hub's "
            f"latent-consistency/lcm-lora-sdv1-5): Draft then samples {LCM_STEPS} steps with the LCM scheduler "
            "and no classifier-free guidance (empty: Draft samples as Final does)", file=True, group="quality",
            applies_when=(("quality", ("draft",)),)),
    Setting("steps", "int", 20, "Steps", "Denoising steps of the scheduler (before strength shortens them)",
            minimum=1, maximum=150, group="quality"),
    Setting("guidance_scale", "float", 7.5, "Guidance", "Classifier-free guidance scale (1 = off)",
            minimum=1.0, maximum=30.0, group="quality", animated=True),
    Setting("size", "int", 512, "Size",
            "Short side of the processed frames in pixels, rounded to a multiple of 64; a smaller source keeps "
            "its own size unless Allow Upscale is on", minimum=64, maximum=2048, group="quality"),
    Setting("upscale", "bool", False, "Allow Upscale",
            "Process a source whose short side is below Size at Size (slower, and the model invents the "
            "detail); off: it keeps its own size, rounded to a multiple of 64", group="quality"),
    Setting("batch_size", "int", 8, "Batch Size",
            "Frames denoised together (FRESCO: keyframes per batch, two of them anchors after the first "
            "batch); more is more coherent but needs more memory",
            minimum=1, maximum=16, group="quality"),
    Setting("keyframes", "enum", "adaptive", "Keyframes",
            "FRESCO: which frames are translated; the others are propagated from the two nearest "
            "(adaptive: where the picture changes most, interval: every N frames, all: every frame)",
            choices=("adaptive", "interval", "all"), group="timing", applies_when=(_FRESCO,)),
    Setting("key_interval", "int", 10, "Key Interval", "Frames between keyframes for keyframes=interval",
            minimum=1, maximum=200, group="timing", applies_when=(_FRESCO, ("keyframes", ("interval",)))),
    Setting("key_min_gap", "int", 5, "Key Min Gap", "Adaptive keyframes: smallest gap between keys (s_min)",
            minimum=1, maximum=200, group="timing", applies_when=(_FRESCO, ("keyframes", ("adaptive",)))),
    Setting("key_max_gap", "int", 20, "Key Max Gap", "Adaptive keyframes: largest gap between keys (s_max)",
            minimum=1, maximum=200, group="timing", applies_when=(_FRESCO, ("keyframes", ("adaptive",)))),
    Setting("controls", "list", ({"kind": "canny", "scale": 0.7},), "ControlNets",
            "ControlNet conditions computed from each input frame, each with its own scale (several at once "
            "add up). canny: edges; tile: the frame itself (keeps colours and detail); softedge: HED soft "
            "edges; depth: MiDaS depth, or a scene strip's rendered depth; lineart: line drawing (softedge, lineart "
            "and an estimated depth need annotator weights); normal: a scene strip's rendered surface normals",
            max_items=4, group="guidance", fields=(
                Setting("kind", "enum", "canny", "Kind", "Which condition and ControlNet", choices=CONTROL_KINDS),
                Setting("scale", "float", 0.7, "Scale", "Strength of this ControlNet's condition",
                        minimum=0.0, maximum=2.0, animated=True),
            )),
    Setting("canny_low", "int", 50, "Canny Low", "Lower hysteresis threshold of the canny edges",
            minimum=0, maximum=255, group="guidance", applies_when=(("controls", ("canny",)),)),
    Setting("canny_high", "int", 100, "Canny High", "Upper hysteresis threshold of the canny edges",
            minimum=0, maximum=255, group="guidance", applies_when=(("controls", ("canny",)),)),
    Setting("cross_frame_attention", "bool", True, "Cross-Frame Attention",
            "FRESCO: all frames attend to frame 0 plus the regions each later frame reveals", advanced=True,
            applies_when=(_FRESCO,)),
    Setting("spatial_guidance", "bool", True, "Spatial Guidance",
            "FRESCO: at the first step, queries follow the self-similarity of the input frame", advanced=True,
            applies_when=(_FRESCO,)),
    Setting("temporal_guidance", "bool", True, "Temporal Guidance",
            "FRESCO: tokens on one optical-flow track attend to each other", advanced=True,
            applies_when=(_FRESCO,)),
    Setting("feature_optimization", "bool", True, "Feature Optimisation",
            "FRESCO: decoder features optimised for flow consistency and input structure", advanced=True,
            applies_when=(_FRESCO,)),
    Setting("temporal_loss", "bool", True, "Temporal Loss",
            "Feature optimisation: the flow-warped consistency term", advanced=True,
            applies_when=(_FRESCO, ("feature_optimization", (True,)))),
    Setting("spatial_loss", "bool", True, "Spatial Loss",
            "Feature optimisation: the Gram (self-similarity) term", advanced=True,
            applies_when=(_FRESCO, ("feature_optimization", (True,)))),
    Setting("background_smoothing", "bool", False, "Background Smoothing",
            "Blend each frame's background with the previous frame's, warped by flow: in the decoder "
            "features and in the predicted image at two late steps", advanced=True,
            applies_when=(_FRESCO,)),
    Setting("lambda_spatial", "float", 5.0, "Spatial Temperature",
            "Spatial-guided attention temperature lambda_s", minimum=0.1, maximum=100.0, advanced=True,
            applies_when=(_FRESCO, ("spatial_guidance", (True,)))),
    Setting("lambda_temporal", "float", 5.0, "Temporal Temperature",
            "Temporal-guided attention temperature lambda_t", minimum=0.1, maximum=100.0, advanced=True,
            applies_when=(_FRESCO, ("temporal_guidance", (True,)))),
    Setting("temporal_min_t", "int", 350, "Temporal Until t",
            "Temporal-guided attention runs while the timestep is at least this", minimum=0, maximum=1000,
            advanced=True,
            applies_when=(_FRESCO, ("temporal_guidance", (True,)))),
    Setting("opt_end_step", "int", 15, "Optimise Until Step",
            "Feature optimisation at scheduled steps before this one", minimum=0, maximum=150, advanced=True,
            applies_when=(_FRESCO, ("feature_optimization", (True,)))),
    Setting("opt_iterations", "int", 20, "Optimiser Iterations", "Adam iterations per optimised step",
            minimum=1, maximum=200, advanced=True,
            applies_when=(_FRESCO, ("feature_optimization", (True,)))),
    Setting("opt_lr", "float", 0.2, "Optimiser Rate", "Adam learning rate of the feature optimisation",
            minimum=0.001, maximum=10.0, advanced=True,
            applies_when=(_FRESCO, ("feature_optimization", (True,)))),
    Setting("spatial_loss_weight", "float", 100.0, "Spatial Loss Weight", "lambda_spat of the Gram loss",
            minimum=0.0, maximum=10000.0, advanced=True,
            applies_when=(_FRESCO, ("feature_optimization", (True,)), ("spatial_loss", (True,)))),
    Setting("spatial_loss_rows", "int", 1024, "Spatial Loss Rows",
            "Gram rows the spatial loss samples per frame and iteration on large feature maps "
            "(0: all rows, exact but several times slower at 512 px)", minimum=0, maximum=65536, advanced=True,
            applies_when=(_FRESCO, ("feature_optimization", (True,)), ("spatial_loss", (True,)))),
    Setting("flow", "enum", "dis", "Optical Flow",
            "Optical-flow estimator (dis: OpenCV DIS, CPU, no weights; raft: the learned RAFT estimator, "
            "weights from the file in Flow Weights; render: a scene strip's exact motion from Blender's "
            "Vector pass)", choices=("dis", "raft", "render"), advanced=True,
            applies_when=(_FRESCO,)),
    Setting("flow_weights", "str", "", "Flow Weights",
            "RAFT weights (.pth, the authors' raft-things.pth layout) on the backend's machine, for "
            "Optical Flow = raft", advanced=True, file=True,
            applies_when=(_FRESCO, ("flow", ("raft",)))),
    Setting("model", "str", "", "Model",
            "Stable Diffusion 1.5 checkpoint: hub id, diffusers folder or .safetensors file "
            "(empty: the backend's default)", group="guidance"),
    Setting("loras", "list", (), "LoRAs",
            "LoRA files (.safetensors on the backend's machine) applied to the model, each with a weight "
            "(0 leaves the model as it is)", max_items=8, group="guidance", fields=(
                Setting("path", "str", "", "File", "LoRA weights (.safetensors)", required=True, file=True),
                Setting("weight", "float", 1.0, "Weight", "How strongly the LoRA changes the model (animated: "
                        "each batch takes the value at its first new key)", minimum=-4.0, maximum=4.0, animated=True),
            )),
    Setting("prompt_schedule", "list", (), "Prompt Changes",
            "Later prompts, each from its frame on (0: the strip's first frame); Prompt holds until the first "
            "change", max_items=64, group="look", fields=(
                Setting("frame", "int", 0, "Frame", "The strip's frame (0: its first) from which this prompt holds",
                        minimum=0, maximum=MAX_FRAMES - 1),
                Setting("prompt", "str", "", "Prompt", "Text describing the look from this frame on",
                        required=True),
            )),
    Setting("prompt_blend", "int", 8, "Prompt Blend",
            "Frames over which the look blends into a changed prompt, ending at the change's frame "
            "(0: it changes at once)", minimum=0, maximum=240, group="look"),
    Setting("ip_adapter", "list", (), "Style Image",
            "A picture whose look the result takes (through the SD 1.5 IP-Adapter), with a weight "
            "(0 leaves the look to the prompt)", max_items=1, group="look", fields=(
                Setting("image", "str", "", "Image", "The style picture (.png or .jpg on the backend's machine)",
                        required=True, file=True),
                Setting("weight", "float", 0.6, "Weight", "How strongly the picture's look is taken",
                        minimum=0.0, maximum=2.0),
            )),
    Setting("mask", "enum", "none", "Mask",
            "Where the strip is translated (outside, the result is the source as it is): none: everywhere; "
            "strip: where Mask Strip is white; alpha: where the source is opaque", choices=MASKS, group="guidance"),
    Setting("mask_strip", "str", "", "Mask Strip",
            "The strip (a mask, movie or image strip on another channel) whose brightness is the mask",
            group="guidance", applies_when=(("mask", ("strip",)),)),
    Setting("mask_feather", "int", 8, "Mask Feather",
            "Width in pixels of the blend from the translation to the source, inside the mask's edge",
            minimum=0, maximum=256, group="guidance", applies_when=(("mask", ("strip", "alpha")),)),
    Setting("cut_detection", "bool", True, "Detect Cuts",
            "Find hard cuts in the strip and translate each shot on its own: a key on each side of a cut, "
            "nothing carried across it", group="timing", applies_when=(_FRESCO,)),
)

# Settings of earlier versions and how they map onto today's: a job record or .blend written before
# ``controls`` held one ControlNet as ``control`` + ``control_scale``.
LEGACY = ("control", "control_scale")

# Settings added since job records were first written, with the value a record that lacks them meant:
# before ``upscale`` existed, the short side was always scaled to ``size``; before ``draft_lora``, no Draft had one;
# before ``cut_detection``, a job ran straight across cuts.
ADDED = {"upscale": True, "draft_lora": "", "cut_detection": False}

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


def defaults() -> dict[str, Any]:
    """Every setting at its default value."""
    return {s.name: s.default_value() for s in SETTINGS}


def upgrade(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with settings of earlier versions (``LEGACY``) turned into today's."""
    values = dict(values)
    if any(name in values for name in LEGACY):
        kind, scale = values.pop("control", "canny"), values.pop("control_scale", 0.7)
        values.setdefault("controls", [{"kind": kind, "scale": scale}])
    return values


def validate(values: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``values`` against the schema and fill in defaults.

    Raises SettingsError naming every unknown, mistyped or out-of-range
    setting at once, so a user fixes them in one go.
    """
    if not isinstance(values, Mapping):
        raise SettingsError(f"settings must be an object, got {type(values).__name__}")
    values = upgrade(values)
    problems = [f"{name}: unknown setting (known: {', '.join(BY_NAME)})"
                for name in values if name not in BY_NAME]
    result = defaults()
    for setting in SETTINGS:
        value = values.get(setting.name, setting.default_value())
        checked, problem = setting.check(value)
        if problem:
            problems.append(problem)
        else:
            result[setting.name] = checked
    if result["canny_low"] > result["canny_high"] and not problems:
        problems.append("canny_low: must not exceed canny_high")
    if result["key_min_gap"] > result["key_max_gap"] and not problems:
        problems.append("key_min_gap: must not exceed key_max_gap")
    if not problems:
        kinds = [c["kind"] for c in result["controls"]]
        if not kinds:
            problems.append("controls: at least one ControlNet (e.g. canny, or tile to keep the picture's look)")
        elif len(set(kinds)) < len(kinds):
            problems.append(f"controls: each kind at most once, got {', '.join(kinds)}")
        if result["flow"] == "raft" and not result["flow_weights"].strip():
            problems.append("flow_weights: flow=raft needs a RAFT weights file (.pth)")
        if result["mask"] == "strip" and not result["mask_strip"].strip():
            problems.append("mask_strip: mask=strip needs the name of the strip that holds the mask")
        changes = [item["frame"] for item in result["prompt_schedule"]]
        if changes != sorted(set(changes)):
            problems.append(f"prompt_schedule: frames must rise, each once, got {changes}")
    if problems:
        raise SettingsError("invalid settings: " + "; ".join(problems))
    return result


def from_record(values: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of a stored job record, validated (``validate``); settings the record predates
    (``ADDED``) take the value its job ran with, so an old job is never resumed as a different one."""
    return validate({**ADDED, **values} if isinstance(values, Mapping) else values)
