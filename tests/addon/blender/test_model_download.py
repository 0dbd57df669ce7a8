"""The Models section from Blender against a stand-in hub on 127.0.0.1 (tests/support/fake_hub.py, HF_ENDPOINT):
add a hub id, Download it (synchronous in background mode), translate with hub ids where the
ControlNet is fetched by the server's download stage, Remove, and the offline error."""
from __future__ import annotations

import os
import sys

import bpy
import pytest

from conftest import REPO, VISIBLE, FakeLayout

sys.path.insert(0, str(REPO / "tests" / "support"))
from fake_hub import FakeHub  # noqa: E402  (standard library only)

sys.path.remove(str(REPO / "tests" / "support"))

SD, CN = "tiny-org/tiny-sd", "tiny-org/tiny-canny"


@pytest.fixture
def online():
    """Blender's online access on for the test (the bpy module starts with it off)."""
    system = bpy.context.preferences.system
    system.use_online_access = True
    try:
        yield
    finally:
        system.use_online_access = False


@pytest.fixture
def hub(backend_env, online, monkeypatch, tmp_path):
    with FakeHub({SD: os.environ["FRESCO_MODEL"], CN: os.environ["FRESCO_CONTROLNET"]}) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)  # passed on to the backend's processes
        monkeypatch.setenv("FRESCO_MODEL_CACHE", str(tmp_path / "Modèles cache"))
        yield fake


def models_box(addon) -> list:
    log: list = []
    model_ops, config = (sys.modules[f"{addon.__name__}.{m}"] for m in ("model_ops", "config"))
    model_ops.draw(FakeLayout(log), bpy.context, config.preferences())
    return log


def test_download_use_and_remove(addon, hub, movie_scene, compat, blend, monkeypatch):
    config, backend = sys.modules[addon.__name__ + ".config"], sys.modules[addon.__name__ + ".session"].get().backend
    hubcache = sys.modules[addon.__name__ + ".fresco_contract.hubcache"]
    prefs = config.preferences()
    cache = config.model_cache_dir()
    prefs.new_model.ref, prefs.new_model.kind = SD, "MODEL"
    assert bpy.ops.fresco.add_model() == {"FINISHED"}
    try:
        assert ("label", SD) in models_box(addon) and (
            "label", "Not downloaded, size known once the download starts") in models_box(addon)
        assert bpy.ops.fresco.download_model(repo_id=SD) == {"FINISHED"}
        record = hubcache.downloaded(cache, SD)
        assert record is not None and record.bytes > 0
        assert any(kind == "label" and text.startswith("Downloaded, ") for kind, text in models_box(addon))

        # hub ids for both: the model is downloaded, the ControlNet comes through the job's download stage
        backend.stop()
        monkeypatch.setenv("FRESCO_MODEL", SD)
        monkeypatch.setenv("FRESCO_CONTROLNET", CN)
        assert hubcache.downloaded(cache, CN) is None
        assert bpy.ops.fresco.translate(strip="clip") == {"FINISHED"}
        assert hubcache.downloaded(cache, CN) is not None
        assert len(compat.all_strips(movie_scene.sequence_editor)["clip.fresco"].elements) == VISIBLE
        backend.stop()

        assert bpy.ops.fresco.remove_model(repo_id=SD) == {"FINISHED"}
        assert hubcache.downloaded(cache, SD) is None and not hubcache.repo_folder(cache, SD).exists()
        assert hubcache.downloaded(cache, CN) is not None  # only that model

        hub.offline = True
        with pytest.raises(RuntimeError, match=f"download of {SD} failed.*{SD}"):
            bpy.ops.fresco.download_model(repo_id=SD)
        assert hubcache.downloaded(cache, SD) is None
    finally:
        backend.stop()
        prefs.models.clear()


def test_download_with_a_ui_is_a_task_the_timer_drives(addon, hub, monkeypatch):
    """With a UI, Download returns at once: the download runs as a task of the session on its thread, the Models
    box shows its progress, and the session's one timer (called by hand: no timers fire headless) redraws until
    it has ended, then stops."""
    config, session = (sys.modules[f"{addon.__name__}.{m}"] for m in ("config", "session"))
    hubcache = sys.modules[addon.__name__ + ".fresco_contract.hubcache"]
    monkeypatch.setattr(session, "has_event_loop", lambda: True)
    prefs = config.preferences()
    prefs.new_model.ref, prefs.new_model.kind = CN, "CONTROLNET"
    assert bpy.ops.fresco.add_model() == {"FINISHED"}  # a row of the Models box
    hub.pause_after = 1  # the hub holds the download back until released
    assert bpy.ops.fresco.download_model(repo_id=CN) == {"FINISHED"}
    task = session.get().running(f"download {CN}")
    assert task is not None and task.thread is not None
    try:
        assert hub.paused.wait(60.0)
        with pytest.raises(RuntimeError, match="being downloaded already"):
            bpy.ops.fresco.download_model(repo_id=CN)
        texts = [text for kind, text in models_box(addon) if kind == "label"]
        assert any(text.startswith("Downloading, ") for text in texts), texts
        assert session.tick() is not None  # the timer goes on while the task runs
        hub.release.set()
        assert task.wait(120.0) and task.error is None, task.error
        limit = 1000  # a generous bound: the task is over, so the next step settles it
        while session.tick() is not None:
            limit -= 1
            assert limit > 0, "the timer did not stop"
        assert task.settled and hubcache.downloaded(config.model_cache_dir(), CN) is not None
        assert any(text.startswith("Downloaded, ") for kind, text in models_box(addon) if kind == "label")
    finally:
        hub.release.set()
        prefs.models.clear()


def test_online_access_off_downloads_nothing(addon, hub, movie_scene, monkeypatch):
    """With Blender's online access off, Download is refused and a job's download stage does not go online:
    the local backend runs with HF_HUB_OFFLINE and the job fails naming the model and the reason."""
    config, backend = sys.modules[addon.__name__ + ".config"], sys.modules[addon.__name__ + ".session"].get().backend
    hubcache = sys.modules[addon.__name__ + ".fresco_contract.hubcache"]
    cache = config.model_cache_dir()
    bpy.context.preferences.system.use_online_access = False
    try:
        with pytest.raises(RuntimeError, match="online access is off.*--online-mode.*Download of"):
            bpy.ops.fresco.download_model(repo_id=SD)
        backend.stop()
        monkeypatch.setenv("FRESCO_CONTROLNET", CN)  # not downloaded: the job's download stage would fetch it
        with pytest.raises(RuntimeError, match=f"{CN}.*HF_HUB_OFFLINE.*online access is off"):
            bpy.ops.fresco.translate(strip="clip")
        assert hub.requests == [] and not hubcache.repo_folder(cache, CN).exists()
    finally:
        backend.stop()


def test_single_file_entry_with_its_config(addon, backend_env, monkeypatch, tmp_path):
    """A .safetensors ControlNet added to the list carries the folder describing it; Use sets both and
    the backend gets them as --controlnet / --controlnet-config."""
    config, backend = sys.modules[addon.__name__ + ".config"], sys.modules[addon.__name__ + ".session"].get().backend
    launcher = sys.modules[addon.__name__ + ".launcher"]
    prefs = config.preferences()
    weights, described_by = tmp_path / "my canny.safetensors", tmp_path / "canny config"
    weights.write_bytes(b"not loaded here")
    described_by.mkdir()
    prefs.new_model.ref, prefs.new_model.kind = str(tmp_path / "missing.safetensors"), "CONTROLNET"
    with pytest.raises(RuntimeError, match="neither a hub id"):
        bpy.ops.fresco.add_model()
    prefs.new_model.ref = str(weights)
    assert bpy.ops.fresco.add_model() == {"FINISHED"}
    try:
        prefs.models[-1].config = str(described_by)
        assert ("prop", "config") in models_box(addon)
        assert bpy.ops.fresco.use_model(ref=str(weights), kind="CONTROLNET") == {"FINISHED"}
        assert (prefs.controlnet, prefs.controlnet_config) == (str(weights), str(described_by))
        monkeypatch.delenv("FRESCO_CONTROLNET", raising=False)
        calls = []
        backend.stop()
        started = type("Started", (), {"client": lambda self, timeout: "client"})()
        monkeypatch.setattr(launcher, "launch", lambda *args, **kwargs: calls.append((args, kwargs)) or started)
        try:
            assert backend.get_client(config.backend_config()) == "client"
        finally:
            backend._process = None
        args, kwargs = calls[0]
        assert args[3] == str(weights) and kwargs["extra_args"][-2:] == ["--controlnet-config", str(described_by)]
        assert bpy.ops.fresco.use_model(ref="lllyasviel/sd-controlnet-canny", kind="CONTROLNET") == {"FINISHED"}
        assert (prefs.controlnet, prefs.controlnet_config) == ("", "")  # the default again
    finally:
        prefs.models.clear()
        prefs.controlnet = prefs.controlnet_config = ""


def test_controlnet_kinds_and_annotators_reach_the_server(addon, backend_env, monkeypatch, tmp_path):
    """A ControlNet entry names its control kind; Use makes it that kind's ControlNet and the launcher passes it
    as --controlnet KIND=REF; the annotators folder goes along as --annotators."""
    config, launcher = (sys.modules[f"{addon.__name__}.{m}"] for m in ("config", "launcher"))
    backend = sys.modules[addon.__name__ + ".session"].get().backend
    prefs = config.preferences()
    prefs.new_model.ref, prefs.new_model.kind, prefs.new_model.control = "me/tile-net", "CONTROLNET", "tile"
    assert bpy.ops.fresco.add_model() == {"FINISHED"}
    try:
        assert ("label", "ControlNet: tile") in models_box(addon)
        assert bpy.ops.fresco.use_model(ref="me/tile-net", kind="CONTROLNET", control="tile") == {"FINISHED"}
        assert (prefs.controlnet_tile, prefs.controlnet) == ("me/tile-net", "")
        monkeypatch.setenv("FRESCO_CONTROLNET_DEPTH", str(tmp_path / "depth net"))  # a farm's override
        prefs.annotators = str(tmp_path)
        settings = config.backend_config()
        assert launcher.model_args(settings) == [
            "--controlnet", "tile=me/tile-net", "--controlnet", f"depth={tmp_path / 'depth net'}",
            "--annotators", str(tmp_path)]
        calls = []
        backend.stop()
        started = type("Started", (), {"client": lambda self, timeout: "client"})()
        monkeypatch.setattr(launcher, "launch", lambda *args, **kwargs: calls.append((args, kwargs)) or started)
        try:
            assert backend.get_client(settings) == "client"
        finally:
            backend._process = None
        assert calls[0][1]["extra_args"] == launcher.model_args(settings)
        assert bpy.ops.fresco.use_model(ref="lllyasviel/control_v11f1e_sd15_tile", kind="CONTROLNET",
                                        control="tile") == {"FINISHED"}
        assert prefs.controlnet_tile == ""  # the default again: nothing passed for tile
        monkeypatch.delenv("FRESCO_CONTROLNET_DEPTH")
        assert "--controlnet" not in launcher.model_args(config.backend_config())
    finally:
        prefs.models.clear()
        prefs.annotators = prefs.controlnet_tile = ""


def test_annotator_rows(addon, backend_env, online, monkeypatch, tmp_path):
    config, downloads = (sys.modules[f"{addon.__name__}.{m}"] for m in ("config", "downloads"))
    hubcache = sys.modules[addon.__name__ + ".fresco_contract.hubcache"]
    monkeypatch.setenv("FRESCO_MODEL_CACHE", str(tmp_path))
    repo, file = hubcache.ANNOTATORS["softedge"]
    record = hubcache.write_record(tmp_path, repo, "0" * 40, {file: 5})  # as if downloaded with --file
    record.path.mkdir(parents=True)
    (record.path / file).write_bytes(b"12345")
    log = models_box(addon)
    rows = [text for kind, text in log if kind == "label"]
    at = rows.index(f"softedge: {repo} {file}")
    assert rows[at + 1].startswith("Downloaded, ")
    at = rows.index(f"lineart: {repo} {hubcache.ANNOTATORS['lineart'][1]}")
    assert rows[at + 1] == "Not downloaded, about 17.2 MB to download"
    assert "depth: Intel/dpt-hybrid-midas" in rows
    started = []

    def no_start(argv, **kwargs):
        started.append(argv)
        raise OSError(2, "not started in this test")

    monkeypatch.setattr(downloads.subprocess, "Popen", no_start)
    with pytest.raises(RuntimeError, match=f"download of {repo}/sk_model.pth failed: cannot start"):
        bpy.ops.fresco.download_model(repo_id=repo, file="sk_model.pth")
    assert started[0][3:] == [repo, "--cache-dir", str(tmp_path), "--file", "sk_model.pth"]
