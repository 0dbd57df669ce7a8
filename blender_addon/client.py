"""HTTP client of the backend API (``wire.py``), standard library only (runs inside Blender).

Every call opens one short connection, so a client object can be shared
between Blender's main thread and a worker thread. Any failure raises
BackendError with a message fit for the user.
"""
from __future__ import annotations

import http.client
import json
import socket
from typing import Any, Mapping, Sequence

from .contract import wire


class BackendError(RuntimeError):
    """The backend refused a request, failed, or cannot be reached.

    ``status`` is the HTTP status code, or None when there was no answer.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class Client:
    """Calls of the v1 API on ``host:port`` with a bearer ``token``."""

    def __init__(self, host: str, port: int, token: str, timeout: float = 30.0) -> None:
        self.host = host
        self.port = int(port)
        self.token = token
        self.timeout = timeout

    def __repr__(self) -> str:  # never show the token
        return f"Client({self.host!r}, {self.port})"

    # ---- API -------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Server facts: api and version with any token; with the right one also device, models."""
        return self._json("GET", wire.HEALTH)

    def create_job(self, settings: Mapping[str, Any], frame_count: int, part: str = wire.ALL,
                   keys: Sequence[int] = (), passes: Sequence[str] = ()) -> str:
        """A new job for ``frame_count`` frames doing ``part`` (``wire.PARTS``; a "finish" job is given the
        frame indices of its ``keys``, a redo those of the keys it keeps), carrying the render ``passes`` named
        (``contract.passes``; each uploaded with ``upload_pass``); returns its id."""
        spec = {"settings": dict(settings), "frame_count": frame_count}
        if part != wire.ALL:
            spec.update(part=part, **({"keys": list(keys)} if keys else {}))
        if passes:
            spec["passes"] = list(passes)
        return str(self._json("POST", wire.JOBS, json.dumps(spec).encode(), "application/json")["id"])

    def upload_frame(self, job_id: str, index: int, png_bytes: bytes) -> None:
        """Upload input frame ``index`` (0-based) as PNG bytes."""
        if len(png_bytes) > wire.MAX_FRAME_BYTES:
            raise BackendError(f"frame {index} is {len(png_bytes)} bytes, over the limit of "
                               f"{wire.MAX_FRAME_BYTES} bytes", 413)
        self._json("PUT", wire.input_path(job_id, index), png_bytes, "image/png")

    def upload_key(self, job_id: str, index: int, png_bytes: bytes) -> None:
        """Upload the key at frame ``index`` of a "finish" job as PNG bytes (the input frames' size)."""
        if len(png_bytes) > wire.MAX_FRAME_BYTES:
            raise BackendError(f"key {index} is {len(png_bytes)} bytes, over the limit of "
                               f"{wire.MAX_FRAME_BYTES} bytes", 413)
        self._json("PUT", wire.key_path(job_id, index), png_bytes, "image/png")

    def upload_pass(self, job_id: str, name: str, index: int, npy_bytes: bytes) -> None:
        """Upload render pass ``name`` of input frame ``index`` as an NPY file (``passes.encode``)."""
        if len(npy_bytes) > wire.MAX_FRAME_BYTES:
            raise BackendError(f"pass {name} of frame {index} is {len(npy_bytes)} bytes, over the limit of "
                               f"{wire.MAX_FRAME_BYTES} bytes", 413)
        self._json("PUT", wire.pass_path(job_id, name, index), npy_bytes, "application/octet-stream")

    def start(self, job_id: str) -> dict[str, Any]:
        """Queue the job (every input frame must be uploaded); returns its status."""
        return self._json("POST", wire.start_path(job_id), b"")

    def events(self, job_id: str, after: int = -1, wait: float = 0.0) -> dict[str, Any]:
        """{"events": [...], "state": ...}: events with seq > ``after``, waiting up to ``wait`` s."""
        return self._json("GET", wire.events_path(job_id, after, wait), timeout=self.timeout + wait)

    def download_frame(self, job_id: str, index: int) -> bytes:
        """PNG bytes of finished output frame ``index``."""
        return self._request("GET", wire.output_path(job_id, index))

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Ask the backend to stop the job; returns its status."""
        return self._json("POST", wire.cancel_path(job_id), b"")

    def status(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", wire.job_path(job_id))

    def delete_job(self, job_id: str) -> None:
        """Have the backend forget a finished job and remove its files."""
        self._json("DELETE", wire.job_path(job_id))

    # ---- transport -------------------------------------------------------------

    def _json(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
              timeout: float | None = None) -> dict[str, Any]:
        data = self._request(method, path, body, content_type, timeout)
        try:
            result = json.loads(data)
        except ValueError:
            raise BackendError(f"backend sent an invalid answer to {method} {path}: {data[:200]!r}") from None
        if not isinstance(result, dict):
            raise BackendError(f"backend sent an unexpected answer to {method} {path}")
        return result

    def _request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
                 timeout: float | None = None) -> bytes:
        headers = {wire.AUTH_HEADER: f"{wire.AUTH_SCHEME} {self.token}", "Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout or self.timeout)
        where = f"{self.host}:{self.port}"
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except ConnectionRefusedError:
            raise BackendError(f"the FRESCO backend is not running (connection to {where} refused)") from None
        except socket.timeout:
            raise BackendError(f"the FRESCO backend at {where} did not answer {method} {path} "
                               f"within {timeout or self.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise BackendError(f"lost the connection to the FRESCO backend at {where}: {exc}") from None
        finally:
            conn.close()
        if not 200 <= response.status < 300:
            raise BackendError(self._error_text(response.status, data), response.status)
        return data

    @staticmethod
    def _error_text(status: int, data: bytes) -> str:
        try:
            message = json.loads(data).get("error")
        except (ValueError, AttributeError):
            message = None
        if not message:
            text = data[:200].decode("utf-8", "replace").strip()
            message = f"backend error {status}: {text or http.client.responses.get(status, '')}"
        return str(message)
