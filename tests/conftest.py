"""Shared fixtures: tiny untrained models built once per test session, synthetic clips."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> tuple[Path, Path]:
    """(model_dir, controlnet_dir): random-weight SD1.5-shaped diffusers folders.

    FRESCO_TINY_DIR reuses a folder across runs (the demo and CI set it).
    """
    from fresco_backend.tiny import save_tiny_models

    root = os.environ.get("FRESCO_TINY_DIR")
    return save_tiny_models(Path(root) if root else tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def backend_python() -> Path:
    """The Python that runs the backend: this test run's own."""
    return Path(sys.executable)


@pytest.fixture(scope="session")
def pipe(tiny_models):
    from fresco_backend.models import load_pipeline

    return load_pipeline(str(tiny_models[0]), str(tiny_models[1]), device="cpu")


@pytest.fixture(scope="session", autouse=True)
def private_cache_home(tmp_path_factory):
    """Keep the CLI's per-user cache (XDG_CACHE_HOME) out of the user's home during tests."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache-home"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture(scope="module")
def backend(tiny_models, backend_python, tmp_path_factory):
    """A real server subprocess on loopback, started the way the add-on starts it."""
    from blender_addon.launcher import launch

    model, controlnet = tiny_models
    proc = launch(backend_python, REPO, str(model), str(controlnet), device="cpu",
                  work_dir=tmp_path_factory.mktemp("work"), log_dir=tmp_path_factory.mktemp("logs"),
                  ready_timeout=600)  # a generous outer limit: a loaded machine starts it slowly
    yield proc
    proc.stop()
    print(proc.log_tail(80))
