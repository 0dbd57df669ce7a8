"""Command line: ``python -m fresco_backend translate|make-tiny|make-clip``.

The translate options are generated from the job settings schema
(fresco_contract/settings.py), so the CLI, the server and the add-on accept the
same names, defaults and ranges.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

from fresco_contract import options, passes, settings as S, wire
from fresco_contract.keys import MANIFEST, KeysError, KeysManifest, write_manifest
from fresco_contract.estimate import DRAFT, LONG_JOB, PRIOR_SECONDS_PER_STEP, device_kind, estimate_job
from fresco_contract.progress import Progress

from .device import DeviceError
from .job import RECORD, JobMismatch
from .annotators import set_annotators_folder
from .config import JobConfig
from .plan import find_cuts
from .models import (DEFAULT_MODEL, ModelChoice, ModelNotFoundError, choose_models, controlnet_configs,
                     parse_kind_options)
from .video_io import ClipError
from .denoise import NonFiniteError
from .job_files import check_job_files
from .style import StyleModels, style_downloads, style_record

_TYPES = {"str": str, "enum": str, "int": int, "float": float}
JOB_DIR = ".fresco-job"  # inside --out while a run is unfinished: re-running the command resumes it


def _value_type(setting: S.Setting):
    """argparse type of a setting's value; an animated number's also takes one value per frame of the job,
    comma-separated (``0.3,0.45,0.6``)."""
    kind = _TYPES[setting.kind]
    if not setting.animated:
        return kind
    return lambda text: [kind(v) for v in text.split(",")] if "," in text else kind(text)


def _list_item(setting: S.Setting):
    """argparse type of one item of a list setting: ``FIRST[@SECOND]`` (e.g. ``tile@0.5``), the fields in
    the schema's order; without a number after the last ``@`` all of it is FIRST (a path may hold ``@``) and
    SECOND takes its default. A frame first (``--prompt-schedule 24@ink wash``) ends at the first ``@``, the text
    after it may hold more. The contract checks the values."""
    first, second = setting.fields

    def parse(text: str) -> dict:
        if first.kind == "int":
            head, at, tail = text.partition("@")
            return {first.name: int(head), second.name: tail} if at and head.strip().isdigit() else {first.name: text}
        head, _, tail = text.rpartition("@")
        try:
            return {first.name: head, second.name: _value_type(second)(tail)} if head else {first.name: text}
        except ValueError:
            return {first.name: text}
    return parse


def _help(text: str) -> str:
    """A setting's help text as argparse prints it (a "%" of the text is not a format of argparse's)."""
    return text.replace("%", "%%")


def _add_setting_options(parser: argparse.ArgumentParser) -> None:
    for setting in S.SETTINGS:
        flag = "--" + setting.name.replace("_", "-")
        if setting.kind == "list":
            first, second = setting.fields
            parser.add_argument(flag, dest=setting.name, type=_list_item(setting), action="append", default=None,
                                metavar=f"{first.name.upper()}[@{second.name.upper()}]",
                                help=_help(f"{setting.description}; repeat for several (default: "
                                           f"{', '.join(f'{i[first.name]}@{i[second.name]}' for i in setting.default) or 'none'})"))
            continue
        if setting.kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=_help(setting.description))
            continue
        bounds = "" if setting.minimum is None else f" [{setting.minimum:g}..{setting.maximum:g}]"
        default = "" if setting.default == "" else f" (default {setting.default})"
        frames = "; or one value per frame, comma-separated" if setting.animated else ""
        parser.add_argument(flag, dest=setting.name, type=_value_type(setting), default=None,
                            choices=setting.choices or None, help=_help(f"{setting.description}{bounds}{default}{frames}"))


def default_conditions_dir() -> Path:
    """The conditions cache's per-user folder (XDG_CACHE_HOME, else ~/.cache)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fresco-for-blender"


def job_models(config: JobConfig, choice: ModelChoice, configs: dict[str, str]) -> dict[str, str | None]:
    """What a job's results depend on besides its settings, as its record names it: the ControlNet (and
    single-file config) of each control kind, ``controlnet``/``controlnet_config`` for canny as before."""
    models: dict[str, str | None] = {"controlnet": None, "controlnet_config": None}
    for net, ref in zip(config.control.nets, choice.controlnets):
        suffix = "" if net.kind == "canny" else f"_{net.kind}"
        models[f"controlnet{suffix}"], models[f"controlnet_config{suffix}"] = ref, configs.get(net.kind)
    return models


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fresco_backend",
                                     description="FRESCO video translation (Stable Diffusion 1.5 + ControlNet)")
    sub = parser.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("translate", help="translate a video file or image folder into a PNG sequence")
    tr.add_argument("input", type=Path, help="video file or folder of images")
    tr.add_argument("--out", type=Path, required=True, help="output folder for 0001.png, 0002.png, ...")
    _add_setting_options(tr)
    options.add_arguments(tr, options.TRANSLATE)  # the flags it shares with the server
    tr.add_argument("--conditions-dir", "--cache-dir", dest="conditions_dir", type=Path,
                    default=default_conditions_dir(),
                    help="the conditions cache: where control images and optical flow of clips are kept, so a new "
                         "prompt on the same clip skips them (default %(default)s; --cache-dir is its old name)")
    tr.add_argument("--mp4", type=Path, default=None,
                    help="also write the result as an H.264 mp4 at the input's frame rate (never overwritten)")
    tr.add_argument("--allow-short-input", action="store_true",
                    help="translate the frames of a video that ends before the frame count its container states "
                         "(a file cut short); without it such a file is refused")
    part = tr.add_mutually_exclusive_group()
    part.add_argument("--keys-only", action="store_true",
                       help="translate the keyframes only and write them to --out with keys.json (frame numbers "
                            "and settings): paint over them, then fill in the rest with --keys")
    part.add_argument("--keys", type=Path, default=None, metavar="DIR",
                       help="propagate only: fill in the frames between the keys in DIR (a --keys-only result, "
                            "edited or not, or frame-numbered PNGs of the input's size including its first and "
                            "last frame) along the input's flow; nothing is denoised, no model is loaded")
    tr.add_argument("--restart", action="store_true",
                    help=f"discard an unfinished job in --out (its {JOB_DIR} folder and the frames it wrote) "
                         f"and start over, instead of resuming it")

    tiny = sub.add_parser("make-tiny", help="save tiny UNTRAINED models (random weights, for plumbing tests only)")
    tiny.add_argument("dir", type=Path)

    clip = sub.add_parser("make-clip", help="write a synthetic test clip (textured square moving over a background)")
    clip.add_argument("path", type=Path)
    clip.add_argument("--frames", type=int, default=24)
    clip.add_argument("--width", type=int, default=128)
    clip.add_argument("--height", type=int, default=96)
    return parser


def _duration(seconds: float) -> str:
    """``seconds`` in the unit an artist reads: s, min or h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 90 * 60 else f"{seconds / 3600:.1f} h"


def _flags(values: dict) -> str:
    """Command-line flags setting ``values`` (``--no-...`` for a bool that is off)."""
    flags = []
    for name, value in values.items():
        flag = name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            flags.append(f"--{flag} {value}")
    return " ".join(flags)


def estimate_lines(settings: dict, frame_count: int, width: int, height: int, device: str) -> list[str]:
    """What the job will cost (``fresco_contract.estimate``), with the Draft settings suggested where a
    CPU would take longer than ``LONG_JOB``; the time is from the device kind's rough prior."""
    cost = estimate_job(settings, frame_count, width, height)
    kind = device_kind(device)
    seconds = cost.seconds(PRIOR_SECONDS_PER_STEP[kind])
    keys = f"{cost.keys} keys" if cost.exact else f"about {cost.keys} keys (adaptive: chosen from the pictures)"
    lines = [f"estimate: {cost.frames} frames of {width}x{height}, processed at {cost.work_size[0]}x"
             f"{cost.work_size[1]}; {keys} in {cost.batches} batch(es) of {cost.steps} denoising steps "
             f"({cost.denoise_steps} frame-steps); about {_duration(seconds)} of denoising on {kind} (a rough "
             f"prior of {PRIOR_SECONDS_PER_STEP[kind]:g} s per 512x512 frame-step, not measured here)"]
    if kind == "cpu" and seconds > LONG_JOB:
        draft = estimate_job({**settings, **DRAFT}, frame_count, width, height)
        lines.append(f"hint: a long job on the CPU; try the look first with Draft settings, {_flags(DRAFT)} "
                     f"(the same keys at a smaller size, at most {S.DRAFT_STEPS} steps, no feature "
                     f"optimisation): about {_duration(draft.seconds(PRIOR_SECONDS_PER_STEP[kind]))}")
    return lines


def _translate(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from .device import pick_runtime
    from .download import ensure_file
    from .job import Job
    from .threads import pin_threads
    from .warm import WarmPipeline
    from .video_io import ShortClipError, check_length, read_png

    values = {s.name: getattr(args, s.name) for s in S.SETTINGS if getattr(args, s.name) is not None}
    if args.keys is not None:
        values = _finish_settings(args.keys, values)
    settings = S.validate(values)  # the record's and the estimate's
    if settings["mask"] != "none":
        raise S.SettingsError(f"--mask {settings['mask']}: the command line takes no mask (the add-on makes it from "
                              f"a mask strip or the source's alpha): translate the strip in Blender with a Mask, "
                              f"or leave --mask at none")
    if passes.required(settings):
        raise S.SettingsError(f"these settings need render passes ({', '.join(passes.required(settings))}), which "
                              f"only a 3D scene strip's render gives and the command line does not take: choose "
                              f"--flow dis or raft and another ControlNet, or translate the scene strip in Blender")
    config = JobConfig.of(settings)  # the edge: everything below takes the JobConfig
    check_job_files(config)  # LoRA and RAFT weights usable: before any folder is made or model loaded
    if args.out.exists() and not args.out.is_dir():
        raise FileExistsError(f"--out {args.out} is a file; --out names the folder for the PNG frames "
                              f"(a new or empty one; nothing was overwritten)")
    job_dir = args.out / JOB_DIR
    existing = sorted(args.out.glob("*.png")) if args.out.is_dir() else []
    if existing and not (job_dir / RECORD).exists():
        raise FileExistsError(f"{args.out} already holds {len(existing)} PNG files; "
                              f"choose an empty or new --out folder (nothing was overwritten)")
    if args.mp4 is not None and args.keys_only:
        raise S.SettingsError("--mp4 writes a whole result; --keys-only writes the keys alone: give one of them")
    if args.mp4 is not None and args.mp4.exists():
        raise FileExistsError(f"{args.mp4} already exists; choose another --mp4 path (nothing was overwritten)")
    if not args.input.exists():
        raise ClipError(f"input {args.input} does not exist")
    runtime = pick_runtime(args.device)  # an unknown or absent device is refused before any work
    if args.threads:
        pin_threads(args.threads)
    try:
        check_length(args.input)
    except ShortClipError as exc:
        if not args.allow_short_input:
            raise ClipError(f"{exc}; use a complete copy, or pass --allow-short-input to translate "
                            f"the {exc.decoded} frames that decode") from None
        print(f"warning: {exc}; translating the {exc.decoded} frames that decode", file=sys.stderr)
    if args.annotators is not None:
        set_annotators_folder(args.annotators)
    part = wire.KEYS if args.keys_only else wire.FINISH if args.keys is not None else wire.ALL
    controlnets = parse_kind_options(args.controlnet, "--controlnet")
    configs = parse_kind_options(args.controlnet_config, "--controlnet-config")
    choice = choose_models(config, DEFAULT_MODEL, controlnets)
    style_models = StyleModels(args.ip_adapter_file or "", args.image_encoder or "")
    models = {"config": args.config, **job_models(config, choice, configs), **style_record(config, style_models)}
    try:
        job = Job(job_dir, settings, args.input, out_dir=args.out, conditions_dir=args.conditions_dir, models=models,
                  restart=args.restart, part=part, keys=args.keys)
    except JobMismatch as exc:
        raise JobMismatch(f"{exc}. Add --restart to discard it (removes {job_dir} and the frames it wrote to "
                          f"{args.out}) or choose another --out; to resume it instead, run it with the settings, "
                          f"models and input it was started with") from None
    if job.started_over:
        print(f"starting a new job in {job_dir}; the one there was discarded: {job.started_over}")
    try:  # per-frame values and prompt changes inside the clip
        S.check_frames(settings, len(job.frames))
    except S.SettingsError:
        job.layout.discard(0)  # made by this run (such settings never started one): a corrected run starts anew
        raise
    height, width = job.frames[0].shape[:2]
    cuts = find_cuts(job.frames, config)
    if cuts is not None:
        print(cuts_line(cuts), flush=True)
    pipe = None
    if job.keys is not None:
        print(f"propagate only: {len(job.frames) - len(job.keys)} frames between {len(job.keys)} keys of {args.keys}")
    else:
        for line in estimate_lines(settings, len(job.frames), width, height, str(runtime.device)):
            print(line)
        print("load model", flush=True)
        warm = WarmPipeline(args.device, args.config, controlnet_configs(controlnets, configs), style_models)
        for repo, name in style_downloads(config, style_models):
            print(f"download {name} of {repo}", flush=True)
            ensure_file(repo, name)
        pipe = warm.get(choice, config.loras, config.style)
    done = job.checkpoint().batches_done
    if done:
        print(f"resuming the job in {job_dir}: {done} batch(es) already done")
    bar = tqdm(total=1, unit="step", desc="translate")

    def on_progress(progress: Progress) -> None:
        bar.total = progress.total
        bar.set_description_str(progress.stage, refresh=False)
        bar.update(progress.done - bar.n)
        bar.refresh()

    for _ in job.run(pipe, on_progress=on_progress, device=str(runtime.device), cuts=cuts):
        pass
    bar.close()
    if part == wire.KEYS:
        keys = tuple(i for i in range(len(job.frames)) if job.output_path(i).is_file())
        write_manifest(args.out, KeysManifest(len(job.frames), keys, settings))
        print(f"wrote {len(keys)} keys of {len(job.frames)} frames to {args.out}; fill in the rest with --keys {args.out}")
    else:
        print(f"wrote {len(job.frames)} frames to {args.out}")
    if args.mp4 is not None:
        from .video_out import read_fps, write_mp4

        pngs = (read_png(path) for path in job.outputs())
        print(f"wrote {write_mp4(args.mp4, pngs, read_fps(args.input) or 24.0)}")
    shutil.rmtree(job_dir)  # finished: the decoded input and the resume state are no longer needed


def cuts_line(cuts: Sequence[int]) -> str:
    """What the command line says of a clip's shot cuts (0-based first frames of the shots after the first),
    in the frame numbers of its output files (0001.png is frame 1)."""
    if not cuts:
        return "no cuts found: one shot"
    return (f"{len(cuts)} cut{'s' if len(cuts) > 1 else ''} found: at frame{'s' if len(cuts) > 1 else ''} "
            f"{', '.join(str(c + 1) for c in cuts)} (each shot is translated on its own; --no-cut-detection "
            f"translates across them)")


def _finish_settings(keys: Path, values: dict) -> dict:
    """The settings of a propagate-only run from the keys in ``keys``: those its manifest records (the
    keys' own), overridden by ``values`` given on the command line; only the flow settings matter."""
    if not keys.is_dir():
        raise KeysError(f"--keys {keys} is not a folder of keys")
    manifest = keys / MANIFEST
    recorded = KeysManifest.from_json(manifest.read_bytes(), str(manifest)).settings if manifest.is_file() else {}
    merged = {**recorded, **values}
    merged.setdefault("prompt", f"keys of {keys}")  # required by the schema, unused by propagation
    return merged


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status: 0 done, 1 a failure of the system (disk, file
    permissions), 2 bad input or usage (the message says what to change), 130 interrupted (Ctrl-C)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # OpenCV's FFmpeg prints decoder noise for damaged videos; the errors here say what matters
    # (set OPENCV_FFMPEG_LOGLEVEL to see it).
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    try:
        if args.command == "translate":
            _translate(args)
        elif args.command == "make-tiny":
            from .tiny import save_tiny_models, save_tiny_style_models

            model, controlnet = save_tiny_models(args.dir)
            for path in (*save_tiny_style_models(args.dir, model), model, controlnet):  # the model two last
                print(path)
        elif args.command == "make-clip":
            from .synthetic import moving_square, write_video

            clip = moving_square(frames=args.frames, width=args.width, height=args.height)
            print(write_video(args.path, clip.frames))
    except (S.SettingsError, ModelNotFoundError, ClipError, FileExistsError, JobMismatch, DeviceError,
            NonFiniteError, KeysError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        resume = "; run the same command again to resume where it stopped" if args.command == "translate" else ""
        print(f"\ninterrupted{resume}", file=sys.stderr)
        return 130
    return 0
