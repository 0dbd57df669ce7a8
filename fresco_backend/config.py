"""A job's validated settings as typed, frozen groups: converted once, at the edges.

``JobConfig.of`` takes a settings mapping, validates it against ``fresco_contract.settings`` (the one
source of names and defaults) and gives the ``JobConfig`` that everything below the edge takes, and
nothing else: a mapping passed there by mistake is refused (``require``), never validated again.
Every field that mirrors a user setting names it (``setting``), takes the schema's default and is
filled from it by ``from_settings``; the remaining fields are internal constants that have no setting.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping, TypeVar

from fresco_contract import settings as S
from fresco_contract.estimate import executed_steps, working_size

G = TypeVar("G")


def setting(name: str) -> Any:
    """A dataclass field mirroring the user setting ``name``, with the schema's default."""
    return field(default=S.BY_NAME[name].default, metadata={"setting": name})


def setting_list(name: str, item: type) -> Any:
    """A dataclass field mirroring the list setting ``name`` as a tuple of frozen ``item``s."""
    default = tuple(item(**value) for value in S.BY_NAME[name].default)
    return field(default=default, metadata={"setting": name, "item": item})


def _value(f: Any, settings: Mapping[str, Any]) -> Any:
    value = settings[f.metadata["setting"]]
    if "item" in f.metadata:
        return tuple(f.metadata["item"](**{k: _frozen(v) for k, v in item.items()}) for item in value)
    return _frozen(value)


def _frozen(value: Any) -> Any:
    """An animated setting's per-frame list as a tuple (the groups are frozen); any other value as it is."""
    return tuple(value) if isinstance(value, list) else value


def at(value: Any, frame: int) -> Any:
    """An animated setting's value at job frame ``frame`` (0-based): ``value`` itself when it is a number."""
    return value[frame] if isinstance(value, tuple) else value


def peak(value: Any) -> Any:
    """An animated setting's largest value over the job's frames (``value`` itself when it is a number)."""
    return max(value) if isinstance(value, tuple) else value


def from_settings(kind: type[G], settings: Mapping[str, Any]) -> G:
    """``kind`` with each setting-backed field taken from validated ``settings`` (nested groups too)."""
    values = {f.name: _value(f, settings) for f in fields(kind) if "setting" in f.metadata}
    nested = {f.name: from_settings(f.default_factory, settings) for f in fields(kind) if "group" in f.metadata}
    return kind(**values, **nested)


def group(kind: type) -> Any:
    """A dataclass field holding a nested group of settings, by default at the schema's defaults."""
    return field(default_factory=kind, metadata={"group": True})


@dataclass(frozen=True)
class PromptChange:
    """A prompt that holds from ``frame`` (0-based, of the job's frames) on."""

    frame: int
    prompt: str


@dataclass(frozen=True)
class Sampling:
    """The denoising loop: prompt, seed, SDEdit strength, scheduler steps, guidance and batching."""

    prompt: str = setting("prompt")
    negative_prompt: str = setting("negative_prompt")
    prompt_schedule: tuple[PromptChange, ...] = setting_list("prompt_schedule", PromptChange)
    prompt_blend: int = setting("prompt_blend")  # frames over which a changed prompt's embeddings blend in
    seed: int = setting("seed")
    strength: float | tuple[float, ...] = setting("strength")  # a tuple: one per job frame (``at``)
    steps: int = setting("steps")
    quality: str = setting("quality")  # "final" or "draft" (``settings.effective`` has set what it changes)
    draft_lora: str = setting("draft_lora")  # a Draft's LCM-LoRA (``settings.effective`` added it to the LoRAs)
    guidance_scale: float | tuple[float, ...] = setting("guidance_scale")  # a tuple: one per job frame
    size: int = setting("size")
    upscale: bool = setting("upscale")
    batch_size: int = setting("batch_size")

    @property
    def executed_steps(self) -> int:
        """Steps the loop runs: the last ``strength`` part of the schedule (an animated strength's peak: a
        batch steps from its strongest frame's start, ``denoise.FrameValues``), at least one."""
        return executed_steps(self.steps, peak(self.strength))

    def work_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) a ``width`` x ``height`` clip is processed at (``estimate.working_size``)."""
        return working_size(width, height, self.size, self.upscale, self.quality == "draft")

    @property
    def skipped_steps(self) -> int:
        """Scheduled steps before the SDEdit start."""
        return self.steps - self.executed_steps

    @property
    def lcm(self) -> bool:
        """Whether it samples with the LCM scheduler: a Draft with an LCM-LoRA (``denoise.scheduler_for``)."""
        return self.quality == "draft" and bool(self.draft_lora)

    @property
    def guided(self) -> bool:
        """Whether classifier-free guidance is on (two U-Net halves per step): for any frame, where animated."""
        return peak(self.guidance_scale) > 1.0


@dataclass(frozen=True)
class Keyframes:
    """Which frames FRESCO translates; the others are propagated."""

    choice: str = setting("keyframes")      # "adaptive", "interval" or "all"
    interval: int = setting("key_interval")
    min_gap: int = setting("key_min_gap")
    max_gap: int = setting("key_max_gap")


@dataclass(frozen=True)
class AttentionConfig:
    """FRESCO-guided self-attention: the three mechanisms and their parameters."""

    cross_frame: bool = setting("cross_frame_attention")
    spatial: bool = setting("spatial_guidance")
    temporal: bool = setting("temporal_guidance")
    lambda_s: float = setting("lambda_spatial")
    lambda_t: float = setting("lambda_temporal")
    temporal_min_t: int = setting("temporal_min_t")   # temporal guidance while t >= this


@dataclass(frozen=True)
class FeatureOptConfig:
    """FRESCO-aware feature optimisation and background smoothing."""

    enabled: bool = setting("feature_optimization")
    temporal: bool = setting("temporal_loss")           # L_temp
    spatial: bool = setting("spatial_loss")             # L_spat
    lr: float = setting("opt_lr")
    iterations: int = setting("opt_iterations")
    lambda_spat: float = setting("spatial_loss_weight")
    end_opt_step: int = setting("opt_end_step")         # optimise at scheduled steps 0..end_opt_step-1
    gram_rows: int = setting("spatial_loss_rows")       # Gram rows sampled per frame and iteration (0: all)
    background_smoothing: bool = setting("background_smoothing")
    gram_chunk: int = 1024             # Gram rows per block of the blockwise L_spat
    saliency_threshold: float = 0.25   # saliency below this (in [0, 1]) is background
    smoothing_strength: float = 1.0    # 1 = background copied from the warped previous frame

    def in_window(self, step_index: int) -> bool:
        """Whether scheduled step ``step_index`` (0-based) is inside the optimisation window."""
        return step_index < self.end_opt_step


@dataclass(frozen=True)
class ControlNetUse:
    """One ControlNet of a job: its kind (``fresco_contract.settings.CONTROL_KINDS``) and scale."""

    kind: str
    scale: float | tuple[float, ...]  # a tuple: one per job frame (``at``)


@dataclass(frozen=True)
class Control:
    """The ControlNet conditions computed from each input frame."""

    nets: tuple[ControlNetUse, ...] = setting_list("controls", ControlNetUse)
    canny_low: int = setting("canny_low")
    canny_high: int = setting("canny_high")


@dataclass(frozen=True)
class Lora:
    """One LoRA file applied to the model, with its weight."""

    path: str
    weight: float | tuple[float, ...]  # a tuple: one per job frame, applied per batch (``lora.batch_loras``)

    def at(self, frame: int) -> Lora:
        """This LoRA with its weight at job frame ``frame``."""
        return Lora(self.path, at(self.weight, frame))


@dataclass(frozen=True)
class StyleImage:
    """A style reference picture (a file on the backend's machine) taken through the IP-Adapter, with its weight."""

    image: str
    weight: float


@dataclass(frozen=True)
class Mask:
    """Where a job translates: ``source`` "none" (everywhere), "strip" or "alpha" (the add-on sends the region
    as the clip's "mask" pass either way), blended into the source over ``feather`` pixels inside its edge."""

    source: str = setting("mask")
    strip: str = setting("mask_strip")  # the add-on's mask strip (the backend reads only the pass)
    feather: int = setting("mask_feather")

    @property
    def enabled(self) -> bool:
        return self.source != "none"


@dataclass(frozen=True)
class JobConfig:
    """Every decision of one translation job, grouped; built by ``JobConfig.of``."""

    mode: str = setting("mode")       # "fresco" or "per_frame"
    flow: str = setting("flow")       # optical-flow estimator
    flow_weights: str = setting("flow_weights")  # its weights file, for learned estimators
    model: str = setting("model")     # "" = the server's or command line's default
    loras: tuple[Lora, ...] = setting_list("loras", Lora)
    style: tuple[StyleImage, ...] = setting_list("ip_adapter", StyleImage)  # at most one
    cut_detection: bool = setting("cut_detection")  # each shot its own chain
    mask: Mask = group(Mask)
    sampling: Sampling = group(Sampling)
    keyframes: Keyframes = group(Keyframes)
    attention: AttentionConfig = group(AttentionConfig)
    optimisation: FeatureOptConfig = group(FeatureOptConfig)
    control: Control = group(Control)

    @classmethod
    def of(cls, settings: Mapping[str, Any]) -> JobConfig:
        """The settings mapping ``settings`` validated (defaults filled), at its quality (``settings.effective``:
        Draft's fewer steps, no feature optimisation) and converted; raises
        ``fresco_contract.settings.SettingsError`` for invalid settings. Called at the edges only:
        the command line's arguments (``cli.py``), a job folder's settings (``job.Job``) and the
        server's job as it runs (``server/jobs.py`` JobManager, for a new and a reloaded job alike)."""
        if not isinstance(settings, Mapping):
            raise TypeError(f"JobConfig.of takes a settings mapping, not {type(settings).__name__}")
        return from_settings(cls, S.effective(S.validate(settings)))

    @property
    def fresco(self) -> bool:
        return self.mode == "fresco"


def require(config: JobConfig) -> JobConfig:
    """``config``, where it is a JobConfig; a TypeError saying what to pass otherwise (a settings
    mapping is converted once, at the edge, never below it)."""
    if not isinstance(config, JobConfig):
        raise TypeError(f"expected a JobConfig, got {type(config).__name__}: convert a job's settings "
                        f"once at the edge with JobConfig.of(settings) and pass the JobConfig")
    return config
