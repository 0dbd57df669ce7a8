"""The one definition of the wire format between the add-on and the backend.

HTTP/1.1 + JSON under a versioned prefix, a bearer token on every request but
``/v1/health``, PNG frames up and down. The server (``server/``) implements
these routes; the add-on's client (``client.py``) calls them. Standard library
only.

A job's life:
  POST   /v1/jobs                      {"settings": {...}, "frame_count": N} -> job status
                                       (+ "part": one of PARTS, default "all"; a "finish" job
                                       also "keys": [frame indices, first and last included]; a
                                       "keys" job given "keys" (from the first frame, before the
                                       last) keeps them and translates the keys after them again;
                                       "passes": the render passes it carries, names of passes.PASSES)
  PUT    /v1/jobs/{id}/input/{index}   PNG body, index 0..N-1
  PUT    /v1/jobs/{id}/keys/{index}    PNG body of a given key at frame index, input size
  PUT    /v1/jobs/{id}/passes/{name}/{index}   NPY body of render pass ``name`` of input frame index
                                       (``passes.py``: float16, input size), one per pass named and frame
  POST   /v1/jobs/{id}/start           queue it once every input frame is there
  GET    /v1/jobs/{id}/events?after=C&wait=S   events with seq > C, waiting up to S s
  GET    /v1/jobs/{id}/output/{index}  PNG of a finished frame
  POST   /v1/jobs/{id}/cancel
  GET    /v1/jobs/{id}                 status
  DELETE /v1/jobs/{id}                 forget a finished job and remove its files
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar

from .progress import Progress

API_VERSION = "v1"
PREFIX = "/" + API_VERSION

# {"api", "version"}; with the token also the device, models, load figures and "speed":
# {"seconds_per_step": float (per U-Net frame-step at 512x512, for ``estimate.JobEstimate.seconds``),
#  "measured": bool (false: a rough prior for the device kind), "device": "cpu" | "cuda" | "mps"}
HEALTH = PREFIX + "/health"
JOBS = PREFIX + "/jobs"

TOKEN_ENV = "FRESCO_TOKEN"  # how a launcher hands the token to the server (never on argv)
AUTH_HEADER = "Authorization"
AUTH_SCHEME = "Bearer"

READY_PREFIX = "FRESCO_SERVER_READY "  # the server's first stdout line: prefix + JSON

MAX_FRAMES = 10_000
MAX_FRAME_BYTES = 64 * 1024 * 1024
MAX_JSON_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 8  # nesting of a request body; a job spec needs 2
MAX_FRAME_PIXELS = 7680 * 4320  # width x height of an input frame (8K UHD), checked before decoding
MIN_FRAME_SIDE = 12  # shortest input frame side: OpenCV's DIS flow refuses smaller frames

# what a job does ("part" of its spec): everything; the keys only (those after given keys: a redo); the
# frames between given keys (uploaded to keys/{index}), denoising nothing; a short look at a frame or two,
# run beside other jobs
ALL, KEYS, FINISH, PREVIEW = "all", "keys", "finish", "preview"
PARTS = (ALL, KEYS, FINISH, PREVIEW)

# job states
QUEUED, UPLOADING, RUNNING, DONE, FAILED, CANCELLED = (
    "queued", "uploading", "running", "done", "failed", "cancelled")
FINAL_STATES = (DONE, FAILED, CANCELLED)

# event types: every event is {"seq": int, "type": str, ...}, one of the Event classes below
EV_STATE, EV_PROGRESS, EV_FRAME, EV_DONE, EV_ERROR, EV_CUTS = "state", "progress", "frame", "done", "error", "cuts"
STAGE_DOWNLOAD = "download"  # the progress stage of a hub model being downloaded: done/total in bytes
STAGES = ("check input", "find cuts", "load model", "choose keys", "conditions", "flow", "denoise step", "write",
          "propagate")  # the other progress stages' first words


@dataclass(frozen=True, kw_only=True)
class Event:
    """One event of a job's feed; on the wire ``{"seq": int, "type": TYPE, <its fields in order>}``.
    ``seq`` is its place in the feed, from 0: None until the server's feed numbers it."""

    TYPE: ClassVar[str]
    seq: int | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.seq is None:
            raise ValueError(f"a {self.TYPE} event has no seq until the feed numbers it")
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "seq"}
        return {"seq": self.seq, "type": self.TYPE, **fields}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Event | None:
        """The event a feed answer holds; None for a type this version does not know (a newer
        server's). ValueError names a field that is missing or of the wrong type."""
        cls = EVENT_TYPES.get(data.get("type")) if isinstance(data, dict) else None
        if cls is None:
            return None
        values = {}
        for f in dataclasses.fields(cls):
            value = data.get(f.name)
            kind = "int" if f.name == "seq" else f.type  # a feed's events are numbered
            if not FIELD_CHECKS[kind](value):
                raise ValueError(f"{cls.TYPE} event: {f.name}: expected {kind}, got {value!r}")
            values[f.name] = float(value) if kind == "float | None" and value is not None else value
        return cls(**values)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# an event field's annotation (a string: annotations are not evaluated) -> whether a JSON value fits it
FIELD_CHECKS: dict[str, Any] = {
    "int": _is_int, "str": lambda v: isinstance(v, str),
    "float | None": lambda v: v is None or _is_int(v) or isinstance(v, float),
    "list[int]": lambda v: isinstance(v, list) and all(_is_int(i) for i in v)}


@dataclass(frozen=True, kw_only=True)
class StateEvent(Event):
    """The job is in ``state`` now (one of the job states)."""

    TYPE: ClassVar[str] = EV_STATE
    state: str


@dataclass(frozen=True, kw_only=True)
class ProgressEvent(Event):
    """A stage of the job STARTS. The stages in order: "check input" (the frames read against the job's
    record; done/total 0), "find cuts" (shot cuts, reading every frame; done/total 0), "download" (STAGE_DOWNLOAD), "load model", "choose keys" (adaptive keys read
    every frame; done/total 0), then per batch "conditions" (ControlNet images), "flow" (FRESCO: optical
    flow), "denoise step k/n, batch b/B" (each step), "write" (decoding and writing its frames), and
    "propagate frame(s) ..." (frames between two keys, counted from 1). Outside "download", done/total
    count the job's denoising steps (total from the estimate at "load model", exact from the first batch
    on; a resumed job counts the steps it has left); eta is seconds left, None until a step has been
    timed, then measured from the steps so far. Match a stage by its first words (STAGES): more may follow."""

    TYPE: ClassVar[str] = EV_PROGRESS
    stage: str
    done: int
    total: int
    eta: float | None

    @classmethod
    def of(cls, progress: Progress) -> ProgressEvent:
        """The event of a job's ``Progress``: its stage, counts and eta (the rest, such as ``seconds_per_step``,
        stays with the server)."""
        eta = progress.eta
        return cls(stage=str(progress.stage), done=int(progress.done), total=int(progress.total),
                   eta=None if eta is None else float(eta))


@dataclass(frozen=True, kw_only=True)
class FrameEvent(Event):
    """Output frame ``index`` is ready to download."""

    TYPE: ClassVar[str] = EV_FRAME
    index: int


@dataclass(frozen=True, kw_only=True)
class DoneEvent(Event):
    """The job is done: ``frame_count`` output frames."""

    TYPE: ClassVar[str] = EV_DONE
    frame_count: int


@dataclass(frozen=True, kw_only=True)
class ErrorEvent(Event):
    """The job failed: ``message`` says why, for the user."""

    TYPE: ClassVar[str] = EV_ERROR
    message: str


@dataclass(frozen=True, kw_only=True)
class CutsEvent(Event):
    """The job looked for shot cuts (the ``cut_detection`` setting) and found these: ``frames``, the 0-based
    index of the first frame of every shot after the first (empty: one shot). Each shot is translated on its
    own. Sent once, before the job loads its model; the job's status holds them too ("cuts", null until
    looked for)."""

    TYPE: ClassVar[str] = EV_CUTS
    frames: list[int]


EVENT_TYPES: dict[str, type[Event]] = {cls.TYPE: cls for cls in (StateEvent, ProgressEvent, FrameEvent,
                                                                  DoneEvent, ErrorEvent, CutsEvent)}


def job_path(job_id: str) -> str:
    return f"{JOBS}/{job_id}"


def input_path(job_id: str, index: int) -> str:
    return f"{JOBS}/{job_id}/input/{index}"


def key_path(job_id: str, index: int) -> str:
    return f"{JOBS}/{job_id}/keys/{index}"


def pass_path(job_id: str, name: str, index: int) -> str:
    return f"{JOBS}/{job_id}/passes/{name}/{index}"


def output_path(job_id: str, index: int) -> str:
    return f"{JOBS}/{job_id}/output/{index}"


def start_path(job_id: str) -> str:
    return f"{JOBS}/{job_id}/start"


def cancel_path(job_id: str) -> str:
    return f"{JOBS}/{job_id}/cancel"


def events_path(job_id: str, after: int = -1, wait: float = 0.0) -> str:
    return f"{JOBS}/{job_id}/events?after={after}&wait={wait:g}"


def frame_filename(index: int) -> str:
    """File name of frame ``index`` (0-based) in every PNG sequence we write: 0001.png, ..."""
    return f"{index + 1:04d}.png"


def ready_line(host: str, port: int) -> str:
    return READY_PREFIX + json.dumps({"host": host, "port": port, "api": API_VERSION})


def parse_ready_line(line: str) -> dict[str, Any] | None:
    """The server's address from its ready line, or None if ``line`` is not one."""
    if not line.startswith(READY_PREFIX):
        return None
    return json.loads(line[len(READY_PREFIX):])
