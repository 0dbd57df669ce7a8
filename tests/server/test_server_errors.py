"""Domain errors carry no HTTP status: server/app.py answers each with the status it had when the
errors carried their own (JobError.status), and the body is {"error": its message}."""
from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

import server.images
import server.jobs
from fresco_contract import wire
from fresco_contract.settings import SettingsError
from server.app import ERROR_STATUS, create_app, error_status
from server.images import BadImage, ImageTooLarge
from server.jobs import InvalidJob, JobConflict, JobError, JobNotDeleted, JobNotFound, OutputNotFound

TOKEN = "t" * 32
STATUS_BEFORE = {  # as JobError(status=...) and BadImage(status=...) had them
    JobError: 400, JobNotFound: 404, OutputNotFound: 404, JobConflict: 409, InvalidJob: 422,
    JobNotDeleted: 500, BadImage: 400, ImageTooLarge: 413, SettingsError: 422,
}


def domain_errors() -> set[type[Exception]]:
    """The error classes server/jobs.py and server/images.py define."""
    return {cls for module in (server.jobs, server.images) for _, cls in inspect.getmembers(module, inspect.isclass)
            if issubclass(cls, Exception) and cls.__module__ == module.__name__}


def test_every_domain_error_has_its_status_in_the_table():
    assert domain_errors() <= set(ERROR_STATUS)
    assert {cls: error_status(cls("m")) for cls in STATUS_BEFORE} == STATUS_BEFORE
    assert not any(hasattr(cls("m"), "status") for cls in domain_errors())


@pytest.mark.parametrize("error", sorted(STATUS_BEFORE, key=lambda cls: cls.__name__), ids=lambda cls: cls.__name__)
def test_the_api_answers_a_domain_error_with_its_status_and_message(error):
    def get(job_id):
        raise error(f"about {job_id}: it cannot be served")

    manager = SimpleNamespace(get=get, work_dir="/nowhere")
    app = create_app(manager, SimpleNamespace(), TOKEN, {"version": "x"})
    with TestClient(app) as client:
        response = client.get(wire.job_path("j1"), headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == STATUS_BEFORE[error]
    assert response.content == b'{"error":"about j1: it cannot be served"}'
