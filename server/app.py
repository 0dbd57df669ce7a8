"""HTTP routes of the backend (the API described in ``fresco_contract/wire.py``).

Every error is JSON ``{"error": "..."}`` with a 4xx/5xx code (a domain error's code is the one
``ERROR_STATUS`` gives its class); every route but
``/v1/health`` requires ``Authorization: Bearer <token>`` (health without it tells only the
API and version). A server bound to loopback answers only requests whose ``Host`` names the
loopback, so a web page cannot reach it through DNS rebinding.
"""
from __future__ import annotations

import errno
import hmac
import ipaddress
import json
from typing import Any, Callable

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from fresco_contract import passes, wire
from fresco_contract.estimate import PRIOR_SECONDS_PER_STEP, device_kind
from fresco_contract.settings import SETTINGS, Setting, SettingsError, validate

from .images import BadImage, ImageTooLarge
from .jobs import BadPass, InvalidJob, JobConflict, JobError, JobManager, JobNotDeleted, JobNotFound, OutputNotFound
from .warm_models import WarmModels

# The HTTP status of each domain error a route may raise; a subclass not named has its nearest base's.
ERROR_STATUS: dict[type[Exception], int] = {
    JobError: 400, BadImage: 400, BadPass: 400, JobNotFound: 404, OutputNotFound: 404, JobConflict: 409,
    ImageTooLarge: 413, InvalidJob: 422, SettingsError: 422, JobNotDeleted: 500,
}


def error_status(exc: Exception) -> int:
    """The HTTP status ``exc`` (an instance of a class of ``ERROR_STATUS``) is answered with."""
    return next(ERROR_STATUS[cls] for cls in type(exc).__mro__ if cls in ERROR_STATUS)


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII characters escaped: text with a lone surrogate is sent, not a 500."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return AsciiJSONResponse({"error": message}, status_code=status, headers=headers)


MAX_URL_BYTES = 8 * 1024  # path + query string; the API's own URLs are far shorter


def is_loopback_host(host: str) -> bool:
    """Whether a ``Host`` header names the loopback: localhost or a loopback IP, any port."""
    name, colon, port = host.strip().lower().rpartition(":")
    if not (colon and port.isdigit() and (not name.startswith("[") or name.endswith("]"))):
        name = host.strip().lower()  # no port (an IPv6 literal's colons are inside [...])
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


class Guard:
    """ASGI middleware answering before any routing: 414 for an over-long URL and, with
    ``loopback_only``, 403 for a ``Host`` header that does not name the loopback."""

    def __init__(self, app: Any, loopback_only: bool) -> None:
        self.app = app
        self.loopback_only = loopback_only

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            response = self.refusal(scope)
            if response is not None:
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: dict[str, Any]) -> JSONResponse | None:
        size = len(scope.get("raw_path") or scope["path"].encode()) + len(scope.get("query_string") or b"")
        if size > MAX_URL_BYTES:
            return _error(414, f"request URL of {size} bytes exceeds the limit of {MAX_URL_BYTES} bytes")
        if self.loopback_only:
            host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
            if not is_loopback_host(host):
                return _error(403, f"Host header {host!r} does not name this machine: a backend bound to "
                                   "the loopback answers only requests to 127.0.0.1, localhost or [::1] "
                                   "(protection against DNS rebinding)")
        return None


TOO_DEEP = (f"body is JSON nested more than {wire.MAX_JSON_DEPTH} levels deep; "
            'a job is {"settings": {...}, "frame_count": N}')


def json_depth(value: Any) -> int:
    """How deeply lists and objects nest in a parsed JSON value (a scalar is 0)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, depth = todo.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            todo.extend((child, depth + 1) for child in children)
    return deepest


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over ``limit`` bytes before and while reading."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise ApiError(400, "invalid Content-Length header") from None
        if length > limit:
            raise ApiError(413, f"request body of {length} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def setting_schema(setting: Setting) -> dict[str, Any]:
    """JSON schema of one job setting (the documentation of what ``validate`` accepts); a "list" is an
    array of objects with its fields' schemas."""
    if setting.kind == "list":
        item = {"type": "object", "additionalProperties": False,
                "required": [f.name for f in setting.fields if f.required],
                "properties": {f.name: setting_schema(f) for f in setting.fields}}
        return {"description": setting.description, "default": [dict(i) for i in setting.default],
                "type": "array", "maxItems": setting.max_items, "items": item}
    schema: dict[str, Any] = {"description": setting.description, "default": setting.default}
    if setting.kind == "enum":
        schema["enum"] = list(setting.choices)
    else:
        schema["type"] = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}[setting.kind]
    if setting.minimum is not None:
        schema["minimum"] = setting.minimum
    if setting.maximum is not None:
        schema["maximum"] = setting.maximum
    if setting.required:
        schema["pattern"] = r"\S"
    return schema


INT_SETTINGS = frozenset(s.name for s in SETTINGS if s.kind == "int")


def integral(value: Any) -> Any:
    """JSON does not tell 3 from 3.0 (JSON Schema calls both integers): 3.0 becomes 3."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# The routes read their bodies themselves (size limits, our own errors); these describe them
# in the OpenAPI schema for clients and for the schema-based fuzz test.
JOB_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["settings", "frame_count"], "additionalProperties": False,
    "properties": {"settings": {"type": "object", "additionalProperties": False,
                                "required": [s.name for s in SETTINGS if s.required],
                                "properties": {s.name: setting_schema(s) for s in SETTINGS}},
                   "frame_count": {"type": "integer", "minimum": 1, "maximum": wire.MAX_FRAMES},
                   "part": {"type": "string", "enum": list(wire.PARTS)},
                   "keys": {"type": "array", "items": {"type": "integer", "minimum": 0,
                                                       "maximum": wire.MAX_FRAMES - 1}},
                   "passes": {"type": "array", "uniqueItems": True,
                              "items": {"type": "string", "enum": list(passes.PASSES)}}}}}}}}
FRAME_BODY = {"requestBody": {"required": True, "content": {"image/png": {"schema": {
    "type": "string", "format": "binary", "maxLength": wire.MAX_FRAME_BYTES}}}}}
PASS_BODY = {"requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {
    "type": "string", "format": "binary", "maxLength": wire.MAX_FRAME_BYTES}}}}}


def speed(device: str, measured: float | None) -> dict[str, Any]:
    """/v1/health's ``speed``: seconds per U-Net frame-step at 512x512, measured on this server's jobs
    (``measured``) or else the prior of the device's kind (cpu, cuda, mps; anything else counts as cpu)."""
    kind = device_kind(device)
    if measured is not None:
        return {"seconds_per_step": measured, "measured": True, "device": kind}
    return {"seconds_per_step": PRIOR_SECONDS_PER_STEP[kind], "measured": False, "device": kind}


def create_app(manager: JobManager, models: WarmModels, token: str, info: dict[str, Any],
               loopback_only: bool = False, workers: Callable[[], dict[str, Any]] | None = None) -> FastAPI:
    """The FastAPI application serving ``manager``; ``info`` is merged into /v1/health for
    clients with the token. ``loopback_only``: refuse Host headers that are not the loopback.
    ``workers``: the Ray pool's workers (``RayPool.describe``), reported by /v1/health."""
    expected = f"{wire.AUTH_SCHEME} {token}".encode()

    def has_token(request: Request) -> bool:
        given = request.headers.get(wire.AUTH_HEADER)
        return given is not None and hmac.compare_digest(given.encode("latin-1"), expected)

    def require_token(request: Request) -> None:
        if request.headers.get(wire.AUTH_HEADER) is None:
            raise ApiError(401, f"missing {wire.AUTH_HEADER} header: this backend needs "
                                f"'{wire.AUTH_SCHEME} <token>'")
        if not has_token(request):
            raise ApiError(401, "invalid token: the backend was started with a different token")

    app = FastAPI(title="FRESCO backend", version=str(info.get("version", "")),
                  default_response_class=AsciiJSONResponse)
    auth = [Depends(require_token)]
    app.add_middleware(Guard, loopback_only=loopback_only)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": wire.AUTH_SCHEME} if exc.status == 401 else None
        return _error(exc.status, exc.message, headers)

    async def _domain_error(_: Request, exc: Exception) -> JSONResponse:
        return _error(error_status(exc), str(exc))

    for error in ERROR_STATUS:
        app.add_exception_handler(error, _domain_error)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code in (404, 405):  # the router's own answers: say which route
            message = f"{message}: no API route {request.method} {request.url.path}"
        return _error(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
                             for e in exc.errors())
        return _error(422, f"invalid request: {problems}")

    @app.exception_handler(OSError)
    async def _os_error(_: Request, exc: OSError) -> JSONResponse:
        if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return _error(507, f"no space left for the backend's work dir {manager.work_dir}: free disk "
                               f"space there or start the backend with --work-dir on a larger disk")
        return _error(500, f"the backend could not use its work dir {manager.work_dir}: "
                           f"{exc.strerror or exc} ({exc.filename or 'no file name'})")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises the exception after this answer, so the server log has its traceback
        return _error(500, f"internal error of the backend ({type(exc).__name__}: {exc}); see its log")

    @app.get(wire.HEALTH)
    def health(request: Request) -> dict[str, Any]:
        public = {"api": wire.API_VERSION, "version": info.get("version")}
        if not has_token(request):  # anyone may ask whether it runs, but not where its files are
            return public
        answer = {**public, **info, "load_count": models.load_count, "last_load_seconds": models.last_load_seconds,
                  "speed": speed(info.get("device", "cpu"), manager.seconds_per_step)}
        return answer if workers is None else {**answer, "workers": workers()}

    @app.post(wire.JOBS, dependencies=auth, status_code=201, openapi_extra=JOB_BODY)
    async def create_job(request: Request) -> dict[str, Any]:
        raw = await read_body(request, wire.MAX_JSON_BYTES)
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(400, f"body is not valid JSON: {exc}") from None
        except RecursionError:  # nested deeper than the parser goes
            raise ApiError(400, TOO_DEEP) from None
        if json_depth(body) > wire.MAX_JSON_DEPTH:
            raise ApiError(400, TOO_DEEP)
        if not isinstance(body, dict):
            raise ApiError(400, 'body must be a JSON object {"settings": {...}, "frame_count": N}')
        unknown = sorted(set(body) - {"settings", "frame_count", "part", "keys", "passes"})
        if unknown:
            raise ApiError(422, f"unknown field(s) in job: {', '.join(unknown)}")
        values = body.get("settings", {})
        if isinstance(values, dict):
            values = {k: integral(v) if k in INT_SETTINGS else v for k, v in values.items()}
        settings = validate(values)
        keys = body.get("keys", [])
        keys = [integral(k) for k in keys] if isinstance(keys, list) else keys
        job = await run_in_threadpool(manager.create, settings, integral(body.get("frame_count")),
                                      body.get("part", wire.ALL), keys, body.get("passes", []))
        return job.status()

    @app.get(wire.JOBS + "/{job_id}", dependencies=auth)
    def job_status(job_id: str) -> dict[str, Any]:
        return manager.get(job_id).status()

    @app.put(wire.JOBS + "/{job_id}/input/{index}", dependencies=auth, openapi_extra=FRAME_BODY)
    async def upload_input(job_id: str, index: int, request: Request) -> dict[str, Any]:
        job = manager.get(job_id)  # 404 before reading a large body
        data = await read_body(request, wire.MAX_FRAME_BYTES)
        await run_in_threadpool(manager.put_input, job_id, index, data)
        return {"id": job.id, "index": index, "uploaded": len(job.uploaded), "frame_count": job.frame_count}

    @app.put(wire.JOBS + "/{job_id}/keys/{index}", dependencies=auth, openapi_extra=FRAME_BODY)
    async def upload_key(job_id: str, index: int, request: Request) -> dict[str, Any]:
        job = manager.get(job_id)
        data = await read_body(request, wire.MAX_FRAME_BYTES)
        await run_in_threadpool(manager.put_key, job_id, index, data)
        return {"id": job.id, "index": index, "uploaded_keys": len(job.uploaded_keys), "keys": len(job.keys)}

    @app.put(wire.JOBS + "/{job_id}/passes/{name}/{index}", dependencies=auth, openapi_extra=PASS_BODY)
    async def upload_pass(job_id: str, name: str, index: int, request: Request) -> dict[str, Any]:
        job = manager.get(job_id)
        data = await read_body(request, wire.MAX_FRAME_BYTES)
        await run_in_threadpool(manager.put_pass, job_id, name, index, data)
        return {"id": job.id, "name": name, "index": index,
                "uploaded": len(job.uploaded_passes.get(name, ())), "frame_count": job.frame_count}

    @app.post(wire.JOBS + "/{job_id}/start", dependencies=auth)
    def start_job(job_id: str) -> dict[str, Any]:
        return manager.start(job_id).status()

    @app.post(wire.JOBS + "/{job_id}/cancel", dependencies=auth)
    def cancel_job(job_id: str) -> dict[str, Any]:
        return manager.cancel(job_id).status()

    @app.delete(wire.JOBS + "/{job_id}", dependencies=auth)
    def delete_job(job_id: str) -> dict[str, Any]:
        manager.delete(job_id)
        return {"id": job_id, "deleted": True}

    @app.get(wire.JOBS + "/{job_id}/events", dependencies=auth)
    async def job_events(job_id: str, after: int = -1, wait: float = 0.0) -> dict[str, Any]:
        return await manager.wait_events(job_id, after, wait)  # holds no worker thread while it waits

    @app.get(wire.JOBS + "/{job_id}/output/{index}", dependencies=auth, response_class=Response,
             responses={200: {"content": {"image/png": {}}}})
    def download_output(job_id: str, index: int) -> Response:
        return Response(manager.read_output(job_id, index), media_type="image/png")

    return app
