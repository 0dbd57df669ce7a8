"""The backend's options, each described once: its flag, type, default and help, and where the add-on has it,
its configuration key, environment variable and preference.

Made from ``OPTIONS``: the server's parser (``server/__main__.py``: ``add_arguments(parser, SERVER)``), the
flags the CLI shares with it (``fresco_backend/cli.py``: ``add_arguments(parser, TRANSLATE)``; the CLI's own
input, output and cache flags and the job settings of ``settings.py`` stay there), and in the add-on
(``addon_settings()``) the ``ENV`` and ``PREF_ATTR`` tables and the configuration (``blender_addon/config.py``),
the preferences (``blender_addon/prefs.py``) and the server arguments of the launcher
(``blender_addon/launcher.py``). In the add-on an environment variable overrides its preference (tests,
render farms); the backend itself reads only ANNOTATORS_ENV (``fresco_backend/annotators.py``, when used)
and the token's FRESCO_TOKEN (``wire.TOKEN_ENV``).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .hubcache import DEFAULT_CONTROLNETS, DEFAULT_MODEL, IMAGE_ENCODER, IP_ADAPTER
from .settings import CONTROL_KINDS
from .wire import TOKEN_ENV

SERVER, TRANSLATE = "server", "translate"  # the parsers: ``python -m server``, ``python -m fresco_backend translate``
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
ANNOTATORS_ENV = "FRESCO_ANNOTATORS"  # the annotators folder: the add-on's override and the backend's fallback


def port_number(text: str) -> int:
    """argparse type of --port: 0..65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number from 0 to 65535")
    return port


def positive(text: str) -> int:
    """argparse type of counts: an integer from 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a count from 1")
    return value


def log_level(text: str) -> str:
    """argparse type of --log-level: a logging level name, in any case."""
    if text.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return text.upper()


@dataclass(frozen=True)
class Option:
    """One option. ``flag`` "" for one of the add-on only; ``key`` "" for one the add-on does not set.

    ``per_kind``: one value per control kind (``settings.CONTROL_KINDS``), given as ``--flag [KIND=]VALUE`` (bare:
    canny) and kept by the add-on under one key, variable and preference per kind: ``{kind}`` in ``key`` and
    ``env`` is "" for canny (the server's bare value), else e.g. "_tile" and "_TILE"; in ``label`` and
    ``description`` it is the kind's name ("Tile", "tile").
    """

    name: str  # the parsed arguments' attribute
    help: str = ""  # of the flag
    flag: str = ""
    commands: tuple[str, ...] = ()  # the parsers that take the flag
    type: Callable[[str], Any] | None = None
    default: Any = None
    action: str | None = None  # "append" (repeatable), "store_true"
    nargs: str | None = None
    const: Any = None
    metavar: str | None = None
    per_kind: bool = False
    key: str = ""  # the add-on's configuration key (``config.backend_config``)
    env: str = ""  # the add-on's environment variable, read before the preference
    pref: str = ""  # the add-on's preference attribute (where it is not ``key``)
    label: str = ""  # the preference's name
    description: str = ""  # the preference's tooltip, less the note of its variable
    path: str = ""  # the preference is a "file" or "dir" path, or a "secret"
    relative: bool = False  # the preference may be relative to the .blend (//)
    backend: bool = True  # part of the backend's configuration (False: the add-on's own, e.g. the output folder)

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        """Add the flag to ``parser``."""
        given = {"type": self.type, "default": self.default, "action": self.action, "nargs": self.nargs,
                 "const": self.const, "metavar": self.metavar}
        parser.add_argument(self.flag, dest=self.name, help=self.help,
                            **{name: value for name, value in given.items() if value is not None})


@dataclass(frozen=True)
class AddonSetting:
    """One setting of the add-on's configuration: an option, or one control kind's of a ``per_kind`` option."""

    key: str
    env: str
    pref: str
    label: str
    description: str  # with the note of its variable
    path: str
    relative: bool
    default: str  # the preference's: an add-on option's own; "" for a flag's (the server's default then)
    backend: bool
    flag: str  # the server's flag ("" if none)
    kind: str  # the control kind of a ``per_kind`` option's setting, else ""

    def server_args(self, value: str) -> list[str]:
        """The server's arguments giving ``value`` ("" gives none)."""
        if not value or not self.flag:
            return []
        return [self.flag, f"{self.kind}={value}" if self.kind and self.kind != "canny" else value]


OPTIONS: tuple[Option, ...] = (
    Option("host", "address to bind (default 127.0.0.1)", "--host", (SERVER,), default="127.0.0.1"),
    Option("port", "port to bind; 0 picks a free one (default)", "--port", (SERVER,), type=port_number, default=0),
    Option("python", key="python", env="FRESCO_BACKEND_PYTHON", pref="backend_python", label="Backend Python",
           description="Python of a backend environment of your own (empty: the installed backend)", path="file"),
    Option("backend_dir", key="backend_dir", env="FRESCO_BACKEND_DIR", label="Backend Folder",
           description="A checkout containing server/ and fresco_backend/ to run instead of the installed package",
           path="dir"),
    Option("model", f"default Stable Diffusion 1.5 model: hub id, folder or .safetensors (default {DEFAULT_MODEL})",
           "--model", (SERVER,), default=DEFAULT_MODEL, key="model", env="FRESCO_MODEL", label="Model",
           description="Stable Diffusion 1.5 hub id, diffusers folder or .safetensors file (empty: the default SD "
                       "1.5)"),
    Option("controlnet", "ControlNet of a control kind: hub id, diffusers folder or .safetensors; repeat for several "
                         "kinds (a bare REF is the canny one; defaults: "
                         + ", ".join(f"{k}={v}" for k, v in DEFAULT_CONTROLNETS.items()) + ")",
           "--controlnet", (SERVER, TRANSLATE), action="append", metavar="[KIND=]REF", per_kind=True,
           key="controlnet{kind}", env="FRESCO_CONTROLNET{kind}", label="{kind} ControlNet",
           description="ControlNet of the {kind} control: hub id, diffusers folder or .safetensors file (empty: "
                       "the default)"),
    Option("config", "diffusers SD 1.5 folder (or hub id) describing a single-file --model checkpoint; needed "
                     "offline", "--config", (SERVER, TRANSLATE), key="model_config", env="FRESCO_MODEL_CONFIG",
           label="Model Config", path="dir",
           description="For a single-file Model without internet: a diffusers SD 1.5 folder describing it"),
    Option("controlnet_config", "diffusers ControlNet folder describing the single-file --controlnet of a kind; "
                                "needed offline; repeat for several kinds (a bare DIR is the canny one's)",
           "--controlnet-config", (SERVER, TRANSLATE), action="append", metavar="[KIND=]DIR", per_kind=True,
           key="controlnet{kind}_config", env="FRESCO_CONTROLNET{kind}_CONFIG", label="{kind} ControlNet Config",
           path="dir", description="For a single-file {kind} ControlNet without internet: a diffusers ControlNet "
                                   "folder describing it"),
    Option("annotators", "folder holding the annotators' weights of the softedge, depth and lineart controls "
                         f"(else ${ANNOTATORS_ENV}, else the hub cache)", "--annotators", (SERVER, TRANSLATE),
           type=Path, key="annotators", env=ANNOTATORS_ENV, label="Annotators Folder", path="dir",
           description="A folder holding annotator weights (ControlNetHED.pth, sk_model.pth, dpt-hybrid-midas/) "
                       "for softedge, lineart and depth, instead of downloading them"),
    Option("ip_adapter_file", "the SD 1.5 IP-Adapter of a Style Image: a .safetensors file (default: "
                              f"{IP_ADAPTER[1]} of {IP_ADAPTER[0]}, downloaded on first use)", "--ip-adapter-file",
           (SERVER, TRANSLATE), metavar="FILE", key="ip_adapter_file", env="FRESCO_IP_ADAPTER_FILE",
           label="IP-Adapter File", path="file",
           description="The SD 1.5 IP-Adapter a Style Image is taken through, a .safetensors file, instead of "
                       "downloading it"),
    Option("image_encoder", "the IP-Adapter's CLIP image encoder: a transformers folder (default: "
                            f"{IMAGE_ENCODER[1]} of {IMAGE_ENCODER[0]}, downloaded on first use)", "--image-encoder",
           (SERVER, TRANSLATE), metavar="DIR", key="image_encoder", env="FRESCO_IMAGE_ENCODER",
           label="Image Encoder", path="dir",
           description="The IP-Adapter's CLIP image encoder, a folder with config.json and its weights, instead "
                       "of downloading it"),
    Option("work_dir", "folder for job inputs/outputs (default: a temp folder, removed at exit)", "--work-dir",
           (SERVER,), type=Path),
    Option("device", "auto (cuda if available, else mps, else cpu), cpu, cuda, cuda:N or mps", "--device",
           (SERVER, TRANSLATE), default="auto", key="device", env="FRESCO_DEVICE", label="Device",
           description="auto (the best found), cpu, cuda, cuda:N or mps"),
    Option("threads", "CPU threads of torch and OpenCV in this process (default: one per core); where other "
           "work shares the cores, pin it (e.g. the cores left to the backend), as extra threads only wait on a "
           "loaded machine", "--threads", (SERVER, TRANSLATE), type=positive, metavar="N"),
    Option("token_file", f"file holding the bearer token (else ${TOKEN_ENV}, else random)", "--token-file",
           (SERVER,), type=Path),
    Option("exit_with_stdin", "exit when stdin reaches EOF (parent died)", "--exit-with-stdin", (SERVER,),
           action="store_true"),
    Option("ray", "run jobs on a pool of Ray workers (pip install 'fresco-backend[ray]'): without ADDRESS a Ray "
                  "runtime of the server's own on 127.0.0.1, started and stopped with it (RAY_ADDRESS is ignored), "
                  "else the cluster at ADDRESS", "--ray", (SERVER,), nargs="?", const="", metavar="ADDRESS"),
    Option("workers", "Ray workers (default: one per GPU Ray sees, else one per CPU)", "--workers", (SERVER,),
           type=positive),
    Option("segments", "segments a Ray job is split into (default: one per worker)", "--segments", (SERVER,),
           type=positive),
    Option("worker_threads", "torch threads of each CPU Ray worker", "--worker-threads", (SERVER,), type=positive),
    Option("log_level", f"logging level: {', '.join(LOG_LEVELS)} (default INFO)", "--log-level", (SERVER,),
           type=log_level, default="INFO"),
    Option("url", key="url", env="FRESCO_BACKEND_URL", pref="backend_url", label="Remote Backend",
           description="host:port of an already running FRESCO server to use instead of starting one (empty: "
                       "start a local backend)"),
    Option("token", key="token", env=TOKEN_ENV, label="Token", path="secret",
           description="Bearer token of the remote backend"),
    Option("model_cache", key="model_cache", env="FRESCO_MODEL_CACHE", label="Download Folder", path="dir",
           description="Where hub models are downloaded, a Hugging Face cache shared with other tools (empty: the "
                       "Hugging Face default)"),
    Option("output_dir", key="output_dir", env="FRESCO_OUTPUT_DIR", label="Output Folder", path="dir",
           relative=True, default="//fresco/", backend=False,
           description="Folder for the result frames, one new subfolder per job (// is the .blend's folder)"),
)


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Add the flags of ``command`` (SERVER or TRANSLATE) to ``parser``, in the table's order."""
    for option in OPTIONS:
        if command in option.commands:
            option.add_to(parser)


def addon_settings() -> tuple[AddonSetting, ...]:
    """The add-on's settings, in the table's order; a ``per_kind`` option's one per control kind."""
    found: list[AddonSetting] = []
    for option in OPTIONS:
        if not option.key:
            continue
        for kind in CONTROL_KINDS if option.per_kind else ("",):
            other = kind not in ("", "canny")
            names = {"key": f"_{kind}" if other else "", "env": f"_{kind.upper()}" if other else "",
                     "label": kind.title(), "description": kind}
            key, env = option.key.format(kind=names["key"]), option.env.format(kind=names["env"])
            label = option.label.format(kind=names["label"])
            description = option.description.format(kind=names["description"])
            found.append(AddonSetting(key, env, option.pref or key, label, f"{description}; env {env} overrides",
                                      option.path, option.relative, "" if option.flag else option.default or "",
                                      option.backend, option.flag, kind))
    return tuple(found)
