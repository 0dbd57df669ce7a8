"""Model downloads (fresco_backend/download.py, fresco_contract/hubcache.py, blender_addon/downloads.py)
against tests/support/fake_hub.py serving the tiny models on 127.0.0.1."""
from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from blender_addon.downloads import Download
from fake_hub import LFS_SUFFIXES, FakeHub, git_sha1
from fresco_backend import download as D
from fresco_contract import hubcache, wire
from fresco_contract.progress import Cancelled, Progress

SD, CN = "tiny/sd15", "tiny/canny"
OUTER_LIMIT = 600.0  # seconds: only a stuck download takes this long
UNET = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture
def hub(tiny_models, monkeypatch):
    with FakeHub({SD: tiny_models[0], CN: tiny_models[1]}) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield fake


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "hub-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(folder))
    return folder


def sizes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def blob(cache: Path, source: Path) -> Path:
    """Where the cache keeps ``source``'s bytes: named by its sha256 (LFS files) or git blob sha1."""
    etag = sha256(source) if source.name.endswith(LFS_SUFFIXES) else git_sha1(source.read_bytes())
    return hubcache.repo_folder(cache, SD) / "blobs" / etag


def wait_for_partial(cache: Path) -> None:
    """Until some bytes of a paused transfer are on disk (in ``<etag>.incomplete``)."""
    blobs = hubcache.repo_folder(cache, SD) / "blobs"
    wait_until(lambda: any(p.stat().st_size > 0 for p in blobs.glob("*.incomplete")), "partial file")


def run_in_thread(**kwargs) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["path"] = D.ensure_model(SD, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_progress_is_monotone_and_ends_at_the_selected_size(hub, cache, tiny_models):
    events: list[Progress] = []
    path = D.ensure_model(SD, cache, events.append)
    expected = sizes(tiny_models[0])  # the tiny model holds exactly what diffusers needs
    assert events and len({e.total for e in events}) == 1 and events[0].total == sum(expected.values())
    assert [e.done for e in events] == sorted(e.done for e in events)
    assert events[-1].done == events[-1].total and events[0].files == len(expected)
    assert all(type(e) is Progress and e.stage == wire.STAGE_DOWNLOAD for e in events)  # the one Progress
    assert all(e.eta == ((e.total - e.done) / e.speed if e.speed else None) for e in events)
    assert sizes(path) == expected
    assert all((path / name).read_bytes() == (tiny_models[0] / name).read_bytes() for name in expected)
    record = hubcache.downloaded(cache, SD)
    assert record is not None and record.path == path and record.files == expected
    assert hubcache.size_on_disk(cache, SD) >= sum(expected.values())


def test_already_complete_needs_no_network(hub, cache):
    path = D.ensure_model(SD, cache)
    hub.offline = True
    asked = len(hub.requests)
    assert D.ensure_model(SD, cache) == path and not D.needs_download(SD, cache)
    assert len(hub.requests) == asked


def test_offline_error_names_the_model_and_how_to_get_it(hub, cache, tiny_models):
    from fresco_backend.models import ModelNotFoundError, load_pipeline

    hub.offline = True
    with pytest.raises(D.DownloadError) as info:
        D.ensure_model(SD, cache)
    message = str(info.value)
    assert SD in message and "python -m fresco_backend.download tiny/sd15" in message
    assert "Preferences > Add-ons > FRESCO > Models > Download" in message
    with pytest.raises(ModelNotFoundError, match="tiny/sd15"):
        load_pipeline(SD, str(tiny_models[1]), device="cpu")
    assert hubcache.downloaded(cache, SD) is None


def test_offline_uses_a_complete_snapshot_of_another_tool(hub, cache):
    path = D.ensure_model(SD, cache)
    hubcache.record_path(cache, SD).unlink()  # as if huggingface_hub itself had downloaded it
    hub.offline = True
    assert D.ensure_model(SD, cache) == path


def test_a_hub_id_loads_as_a_pipeline(hub, cache):
    from fresco_backend.models import load_pipeline

    pipe = load_pipeline(SD, CN, device="cpu")
    assert pipe.unet is not None and pipe.controlnet is not None
    assert hubcache.downloaded(cache, SD) and hubcache.downloaded(cache, CN)


def test_cancel_records_nothing_and_a_second_run_resumes_with_a_range(hub, cache, tiny_models):
    unet = tiny_models[0] / UNET
    hub.pause_after = 2_000_000  # inside the unet's weights (the largest file, fetched first of its folder)
    cancel, events = threading.Event(), []
    thread, outcome = run_in_thread(cache_dir=cache, on_progress=events.append, cancel=cancel)
    assert hub.paused.wait(OUTER_LIMIT)
    wait_for_partial(cache)
    assert events, "no progress before the pause"
    cancel.set()
    hub.release.set()
    thread.join(OUTER_LIMIT)
    assert isinstance(outcome.get("error"), Cancelled)
    assert hubcache.downloaded(cache, SD) is None
    partials = list((hubcache.repo_folder(cache, SD) / "blobs").glob("*.incomplete"))
    assert len(partials) == 1 and 0 < partials[0].stat().st_size
    kept = partials[0].stat().st_size
    name = next(n for n in sizes(tiny_models[0]) if partials[0].name == sha256(tiny_models[0] / n) + ".incomplete")
    missing = sum(size for n, size in sizes(tiny_models[0]).items()
                  if not blob(cache, tiny_models[0] / n).exists()) - kept
    served_before = hub.served

    path = D.ensure_model(SD, cache)
    assert (name, kept) in hub.ranges
    assert hub.served - served_before == missing  # only the missing bytes were sent again
    assert sha256(path / name) == sha256(tiny_models[0] / name) and sha256(path / UNET) == sha256(unet)


def test_a_dropped_connection_is_resumed_in_the_same_run(hub, cache, tiny_models):
    hub.drop_after = 1_000_000
    path = D.ensure_model(SD, cache)
    assert any(start > 0 for _, start in hub.ranges)
    assert sizes(path) == sizes(tiny_models[0])
    assert all(sha256(path / n) == sha256(tiny_models[0] / n) for n in sizes(path))


def test_a_corrupt_partial_file_is_detected_and_downloaded_again(hub, cache, tiny_models):
    source = tiny_models[0] / UNET
    partial = blob(cache, source).with_name(sha256(source) + ".incomplete")
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\0" * (source.stat().st_size // 2))  # the right length so far, the wrong bytes
    events: list[Progress] = []
    path = D.ensure_model(SD, cache, events.append)
    assert (UNET, source.stat().st_size // 2) in hub.ranges  # it was resumed first, then failed verification
    assert sha256(path / UNET) == sha256(source)
    assert [e.done for e in events] == sorted(e.done for e in events) and events[-1].done == events[-1].total
    assert not partial.exists()


def test_a_corrupted_complete_blob_is_not_taken_as_complete(hub, cache, tiny_models):
    source = tiny_models[0] / UNET
    path = D.ensure_model(SD, cache)
    target = blob(cache, source)
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))  # same size: only the checksum tells
    hubcache.record_path(cache, SD).unlink()
    assert sha256(D.ensure_model(SD, cache) / UNET) == sha256(source)
    with open(target, "r+b") as handle:  # truncated under a record: the record no longer counts
        handle.truncate(10)
    assert hubcache.downloaded(cache, SD) is None
    assert sha256(D.ensure_model(SD, cache) / UNET) == sha256(source) and path.is_dir()


SD15_LISTING = """.gitattributes README.md feature_extractor/preprocessor_config.json model_index.json
safety_checker/config.json safety_checker/model.fp16.safetensors safety_checker/model.safetensors
safety_checker/pytorch_model.bin safety_checker/pytorch_model.fp16.bin scheduler/scheduler_config.json
text_encoder/config.json text_encoder/model.fp16.safetensors text_encoder/model.safetensors
text_encoder/pytorch_model.bin text_encoder/pytorch_model.fp16.bin text_encoder/flax_model.msgpack
text_encoder/model.onnx tokenizer/merges.txt tokenizer/special_tokens_map.json tokenizer/tokenizer_config.json
tokenizer/vocab.json unet/config.json unet/diffusion_pytorch_model.bin unet/diffusion_pytorch_model.fp16.bin
unet/diffusion_pytorch_model.fp16.safetensors unet/diffusion_pytorch_model.non_ema.bin
unet/diffusion_pytorch_model.non_ema.safetensors unet/diffusion_pytorch_model.safetensors
unet/diffusion_flax_model.msgpack unet/model.onnx unet/model.onnx_data onnx/unet/model.onnx
v1-5-pruned-emaonly.ckpt v1-5-pruned-emaonly.safetensors v1-5-pruned.ckpt v1-5-pruned.safetensors
v1-inference.yaml vae/config.json vae/diffusion_pytorch_model.bin vae/diffusion_pytorch_model.fp16.bin
vae/diffusion_pytorch_model.fp16.safetensors vae/diffusion_pytorch_model.safetensors
vae/diffusion_flax_model.msgpack""".split()
SD15_INDEX = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.6.0",
              "feature_extractor": ["transformers", "CLIPImageProcessor"],
              "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
              "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
              "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
              "vae": ["diffusers", "AutoencoderKL"], "image_encoder": [None, None]}


def test_selection_on_a_listing_shaped_like_sd15():
    assert sorted(D.select_files(SD15_LISTING, SD15_INDEX)) == sorted([
        "model_index.json", "feature_extractor/preprocessor_config.json", "safety_checker/config.json",
        "scheduler/scheduler_config.json", "text_encoder/config.json", "text_encoder/model.safetensors",
        "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors"])
    bin_only = [n for n in SD15_LISTING if not n.startswith("unet/") or not n.endswith(".safetensors")]
    assert "unet/diffusion_pytorch_model.bin" in D.select_files(bin_only, SD15_INDEX)


def test_selection_of_a_controlnet_and_of_shards():
    listing = ["README.md", "config.json", "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin",
               "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors", "images/a.png",
               "control_sd15_canny.pth"]
    assert D.select_files(listing, None) == ["config.json", "diffusion_pytorch_model.safetensors"]
    shards = ["config.json", "diffusion_pytorch_model-00001-of-00002.safetensors",
              "diffusion_pytorch_model-00002-of-00002.safetensors", "diffusion_pytorch_model.safetensors.index.json",
              "diffusion_pytorch_model.safetensors.index.fp16.json"]
    assert D.select_files(shards, None) == ["config.json", *shards[1:4]]
    with pytest.raises(D.DownloadError, match="neither model_index.json"):
        D.select_files(["README.md", "model.ckpt"], None)


def test_remove_deletes_that_repo_only(hub, cache):
    D.ensure_model(SD, cache)
    D.ensure_model(CN, cache)
    hubcache.remove(cache, SD)
    assert hubcache.downloaded(cache, SD) is None and not hubcache.repo_folder(cache, SD).exists()
    assert hubcache.downloaded(cache, CN) is not None
    with pytest.raises(ValueError):
        hubcache.remove(cache, "../escape")


def test_default_cache_dir_follows_huggingface_hub(monkeypatch, tmp_path):
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    assert hubcache.default_cache_dir() == Path.home() / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hubcache.default_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert hubcache.default_cache_dir() == tmp_path / "cache"


# ---- the command line and the add-on's driver ----------------------------------------------------

def cli(*args: str) -> tuple[int, list[dict]]:
    done = subprocess.run([sys.executable, "-m", "fresco_backend.download", *args], capture_output=True,
                          timeout=OUTER_LIMIT)
    return done.returncode, [json.loads(line) for line in done.stdout.decode().splitlines()]


def test_cli_prints_json_lines_and_exit_codes(hub, cache):
    code, events = cli(CN, "--cache-dir", str(cache))
    assert code == 0 and events[0]["event"] == "start" and events[0]["repo_id"] == CN
    assert events[-1]["event"] == "done" and Path(events[-1]["path"]).is_dir()
    assert events[-1]["bytes"] == events[0]["total"] == events[-2]["done"]
    code, events = cli(CN, "--cache-dir", str(cache), "--remove")
    assert code == 0 and events[-1]["event"] == "removed" and hubcache.downloaded(cache, CN) is None
    hub.offline = True
    code, events = cli(CN, "--cache-dir", str(cache))
    assert code == 1 and events[-1]["event"] == "error" and CN in events[-1]["message"]


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + OUTER_LIMIT
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {OUTER_LIMIT} s"
        time.sleep(0.05)


def test_addon_driver_downloads_cancels_and_resumes(hub, cache, tiny_models, tmp_path):
    hub.pause_after = 2_000_000
    first = Download(sys.executable, SD, cache, cwd=tmp_path).start()
    assert hub.paused.wait(OUTER_LIMIT)
    wait_until(lambda: first.total > 0, "start event")
    wait_for_partial(cache)
    first.cancel()
    assert first.finished and first.error is None and first.path is None and first.cancelled
    hub.release.set()
    assert hubcache.downloaded(cache, SD) is None

    second = Download(sys.executable, SD, cache, cwd=tmp_path).start()
    assert second.wait(OUTER_LIMIT) and second.error is None, second.error
    assert second.path == hubcache.downloaded(cache, SD).path and second.done == second.total > 0
    assert any(start > 0 for _, start in hub.ranges)  # the second one resumed the first one's partial file

    hub.offline = True
    hubcache.remove(cache, SD)
    failed = Download(sys.executable, SD, cache, cwd=tmp_path).start()
    assert failed.wait(OUTER_LIMIT) and failed.path is None and SD in (failed.error or "")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cli_stops_on_a_signal_with_exit_130_keeping_the_partial_file(hub, cache, signum):
    hub.pause_after = 2_000_000
    child = subprocess.Popen([sys.executable, "-m", "fresco_backend.download", SD, "--cache-dir", str(cache)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert hub.paused.wait(OUTER_LIMIT)
        wait_for_partial(cache)
        child.send_signal(signum)
        out, _ = child.communicate(timeout=OUTER_LIMIT)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130
    assert json.loads(out.decode().splitlines()[-1]) == {"event": "cancelled"}
    assert hubcache.downloaded(cache, SD) is None
    assert any((hubcache.repo_folder(cache, SD) / "blobs").glob("*.incomplete"))


def test_two_downloads_of_one_repo_at_once_fetch_it_once(hub, cache, tiny_models):
    hub.pause_after = 2_000_000  # the first one holds the repo's lock while it waits here
    first, first_outcome = run_in_thread(cache_dir=cache)
    assert hub.paused.wait(OUTER_LIMIT)
    second, second_outcome = run_in_thread(cache_dir=cache)
    hub.release.set()  # the first one resumes after the dropped connection, the second waits for it
    first.join(OUTER_LIMIT)
    second.join(OUTER_LIMIT)
    assert first_outcome["path"] == second_outcome["path"]
    assert hub.served == sum(sizes(tiny_models[0]).values())
    assert len([r for r in hub.requests if r.startswith("GET /api/models/")]) == 1


ANNOTATORS = "tiny/annotators"


@pytest.fixture
def annotator_hub(tmp_path, monkeypatch):
    """A repo of two weights files and a large one a single-file download must not touch."""
    folder = tmp_path / "annotators-repo"
    folder.mkdir()
    (folder / "ControlNetHED.pth").write_bytes(b"hed weights " * 1000)
    (folder / "sk_model.pth").write_bytes(b"line art weights " * 700)
    (folder / "huge.safetensors").write_bytes(b"\x01" * 3_000_000)
    with FakeHub({ANNOTATORS: folder}) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield fake, folder


def test_one_file_of_a_repo_is_downloaded_verified_and_recorded(annotator_hub, cache):
    hub, folder = annotator_hub
    reports: list[Progress] = []
    hed = D.ensure_file(ANNOTATORS, "ControlNetHED.pth", cache, on_progress=reports.append)
    assert hed.read_bytes() == (folder / "ControlNetHED.pth").read_bytes()
    assert not any("huge" in request or "sk_model" in request for request in hub.requests)
    assert reports[-1].done == reports[-1].total == hed.stat().st_size and reports[-1].files == 1
    assert hubcache.downloaded(cache, ANNOTATORS).files == {"ControlNetHED.pth": 12000}

    lineart = D.ensure_file(ANNOTATORS, "sk_model.pth", cache)  # the record grows; the first file stays
    assert hubcache.downloaded(cache, ANNOTATORS).files == {"ControlNetHED.pth": 12000, "sk_model.pth": 11900}
    hub.offline = True
    asked = len(hub.requests)
    assert D.ensure_file(ANNOTATORS, "ControlNetHED.pth", cache) == hed and hed.is_file() and lineart.is_file()
    assert len(hub.requests) == asked  # recorded: no network


def test_a_single_file_download_names_what_is_missing(annotator_hub, cache):
    hub, _ = annotator_hub
    with pytest.raises(D.ModelNotFoundError, match="no file 'absent.pth'"):
        D.ensure_file(ANNOTATORS, "absent.pth", cache)
    hub.offline = True
    with pytest.raises(D.DownloadError, match="fresco_backend.download tiny/annotators --file sk_model.pth"):
        D.ensure_file(ANNOTATORS, "sk_model.pth", cache)
    assert hubcache.downloaded(cache, ANNOTATORS) is None


def test_cli_downloads_one_file(annotator_hub, cache):
    code, events = cli(ANNOTATORS, "--file", "sk_model.pth", "--cache-dir", str(cache))
    assert code == 0 and events[0]["event"] == "start" and events[0]["files"] == 1
    assert events[-1]["event"] == "done" and Path(events[-1]["path"]).name == "sk_model.pth"
    assert events[-1]["bytes"] == events[0]["total"] == 11900


# ---- a hostile or broken hub ----------------------------------------------------------------------

def hostile(hub: FakeHub, repo: str, **changes) -> dict:
    """Serve ``repo``'s real listing with ``changes``: ``sha`` and ``siblings`` (a function of the real
    siblings) replaced."""
    info = json.loads(json.dumps(hub.info(repo)))
    if "siblings" in changes:
        info["siblings"] = changes.pop("siblings")(info["siblings"])
    info.update(changes)
    hub.listings[repo] = json.dumps(info).encode()
    return info


@pytest.fixture
def victims(tmp_path) -> dict[Path, bytes]:
    """Files of the user outside the cache a hostile listing aims at."""
    folder = tmp_path / "x"
    folder.mkdir()
    files = {folder / "commitdir": b"user data", folder / "victim.json": b'{"mine": 1}'}
    for path, data in files.items():
        path.write_bytes(data)
    return files


def untouched(victims: dict[Path, bytes]) -> bool:
    folder = next(iter(victims)).parent
    return (all(not p.is_symlink() and p.read_bytes() == data for p, data in victims.items())
            and sorted(folder.iterdir()) == sorted(victims))


def with_entry(name: str, **fields):
    return lambda siblings: [{**s, **fields} if s["rfilename"] == name else s for s in siblings]


HOSTILE = {
    "a commit that climbs out": dict(sha="../../x/commitdir"),
    "a blob id that climbs out": dict(siblings=with_entry("config.json", blobId="../../x/victim.json")),
    "an lfs hash that climbs out": dict(siblings=lambda ss: [
        {**s, "lfs": {**s["lfs"], "sha256": "../../x/victim.json"}} if "lfs" in s else s for s in ss]),
    "an absolute path": dict(siblings=lambda ss: ss + [{"rfilename": "/fresco_probe_abs.json", "size": 2,
                                                         "blobId": "0" * 40}]),
    "a path with ..": dict(siblings=with_entry("config.json", rfilename="../config.json")),
    "a backslash": dict(siblings=with_entry("config.json", rfilename="a\\config.json")),
    "a drive letter": dict(siblings=with_entry("config.json", rfilename="C:/config.json")),
    "an empty segment": dict(siblings=with_entry("config.json", rfilename="a//config.json")),
    "a size that is text": dict(siblings=with_entry("config.json", size="12")),
    "a path that is a number": dict(siblings=with_entry("config.json", rfilename=7)),
    "files that are not a list": dict(siblings=lambda ss: {"config.json": 1}),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_listing_is_refused_and_nothing_outside_the_cache_changes(hub, cache, victims, case):
    hostile(hub, CN, **HOSTILE[case])
    code, events = cli(CN, "--cache-dir", str(cache))
    assert code == 1 and events[-1]["event"] == "error" and CN in events[-1]["message"], events
    assert untouched(victims)
    assert hubcache.downloaded(cache, CN) is None
    assert not any("resolve" in r for r in hub.requests)  # nothing downloaded on a listing refused


def test_a_component_named_empty_selects_nothing_outside_the_repo(hub, cache, tmp_path, monkeypatch):
    index = json.dumps({"_class_name": "StableDiffusionPipeline", "": ["x", "y"]}).encode()
    folder = tmp_path / "evil-repo"
    folder.mkdir()
    (folder / "model_index.json").write_bytes(index)
    with FakeHub({"evil/sd": folder}) as evil:
        monkeypatch.setenv("HF_ENDPOINT", evil.url)
        with pytest.raises(D.DownloadError, match="not a folder name"):
            D.ensure_model("evil/sd", cache)
    assert hubcache.downloaded(cache, "evil/sd") is None


@pytest.mark.parametrize("name", ["/etc/hostname", "../victim.json", "a\\b.pth", "a//b.pth", "C:/x.pth"])
def test_cli_file_outside_the_repo_is_refused(annotator_hub, cache, name):
    code, events = cli(ANNOTATORS, "--file", name, "--cache-dir", str(cache))
    assert code == 1 and events == [{"event": "error", "message": events[-1]["message"]}]
    assert "not a file path inside a repo" in events[-1]["message"]
    assert not annotator_hub[0].requests


def test_a_file_without_a_hash_is_not_recorded_as_complete(hub, cache):
    hostile(hub, CN, siblings=lambda ss: [{k: v for k, v in s.items() if k not in ("blobId", "lfs")}
                                          if s["rfilename"] == "config.json" else s for s in ss])
    with pytest.raises(D.DownloadError, match="no checksum for config.json"):
        D.ensure_model(CN, cache)
    assert hubcache.downloaded(cache, CN) is None
    blobs = hubcache.repo_folder(cache, CN) / "blobs"
    assert not blobs.exists() or blobs.is_dir()


@pytest.mark.parametrize("body", [b"null", b"[]", b'{"sha": 5, "siblings": []}', b"[" * 100_000 + b"]" * 100_000,
                                  b"{not json", b'{"sha": "' + b"a" * 40 + b'", "siblings": [1]}'])
def test_a_malformed_listing_gives_a_json_error_line(hub, cache, body):
    hub.listings[CN] = body
    code, events = cli(CN, "--cache-dir", str(cache))
    assert code == 1 and events[-1]["event"] == "error" and CN in events[-1]["message"], events


@pytest.mark.parametrize("index", [b"[1, 2]", b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe"])
def test_a_malformed_model_index_gives_a_json_error_line(hub, cache, tmp_path, index, monkeypatch):
    folder = tmp_path / "bad-index"
    folder.mkdir()
    (folder / "model_index.json").write_bytes(index)
    with FakeHub({"bad/index": folder}) as bad:
        monkeypatch.setenv("HF_ENDPOINT", bad.url)
        code, events = cli("bad/index", "--cache-dir", str(cache))
    assert code == 1 and events[-1]["event"] == "error" and "model_index.json" in events[-1]["message"], events


def test_a_redirect_loop_gives_a_json_error_line(hub, cache):
    hub.redirect_loop = True
    code, events = cli(CN, "--cache-dir", str(cache))
    assert code == 1 and events[-1]["event"] == "error" and "redirect" in events[-1]["message"].lower(), events


def test_the_listing_size_is_capped(hub, cache, monkeypatch):
    hostile(hub, CN, siblings=lambda ss: ss + [{"rfilename": f"extra/{i}.txt", "size": 1, "blobId": "0" * 40}
                                               for i in range(200)])
    monkeypatch.setenv("FRESCO_DOWNLOAD_LISTING_FILES", "100")
    with pytest.raises(D.DownloadError, match="more than 100"):
        D.ensure_model(CN, cache)
    monkeypatch.delenv("FRESCO_DOWNLOAD_LISTING_FILES")
    monkeypatch.setenv("FRESCO_DOWNLOAD_LISTING_BYTES", "1000")
    with pytest.raises(D.DownloadError, match="over 1000 bytes"):
        D.ensure_model(CN, cache)


def test_a_trickling_body_fails_with_a_clear_message(hub, cache, monkeypatch):
    hub.trickle = 0.01
    monkeypatch.setenv("FRESCO_DOWNLOAD_STALL", "0.3")
    monkeypatch.setenv("FRESCO_DOWNLOAD_MIN_RATE", "10000")
    monkeypatch.setenv("FRESCO_DOWNLOAD_RETRIES", "1")
    with pytest.raises(D.DownloadError, match=r"under 10000 bytes/s .*run the download again to resume"):
        D.ensure_model(CN, cache)
    assert hubcache.downloaded(cache, CN) is None


def test_a_partial_file_of_a_version_changed_upstream_is_discarded(hub, cache, tiny_models):
    hub.pause_after = 2_000_000
    cancel = threading.Event()
    thread, outcome = run_in_thread(cache_dir=cache, cancel=cancel)
    assert hub.paused.wait(OUTER_LIMIT)
    wait_for_partial(cache)
    cancel.set()
    hub.release.set()
    thread.join(OUTER_LIMIT)
    assert isinstance(outcome.get("error"), Cancelled)
    blobs = hubcache.repo_folder(cache, SD) / "blobs"
    (stale,) = blobs.glob("*.incomplete")
    name = next(s["rfilename"] for s in hub.info(SD)["siblings"]  # the file being downloaded changes upstream
                if stale.name == s.get("lfs", {}).get("sha256", s["blobId"]) + ".incomplete")
    changed = tiny_models[0] / name
    original = changed.read_bytes()
    try:
        changed.write_bytes(original[:-4] + b"\0\0\0\0")
        hub.reload()
        path = D.ensure_model(SD, cache)
        assert (path / name).read_bytes() == changed.read_bytes()
        assert not stale.exists() and not any(blobs.glob("*.incomplete"))
    finally:
        changed.write_bytes(original)
        hub.reload()


def test_a_file_that_changes_during_the_download_is_discarded(hub, cache):
    info = hostile(hub, CN)  # the listing as it was; the files served say another hash
    hub.listings[CN] = json.dumps({**info, "siblings": with_entry("config.json", blobId="1" * 40)(
        info["siblings"])}).encode()
    with pytest.raises(D.DownloadError, match="changed on the hub during the download"):
        D.ensure_model(CN, cache)
    blobs = hubcache.repo_folder(cache, CN) / "blobs"
    assert not any(blobs.glob("*.incomplete"))


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_cli_stops_promptly_on_sigterm_during_a_trickling_body(hub, cache):
    hub.trickle = 9.0  # a byte every 9 s, under the read timeout: only the signal ends it
    child = subprocess.Popen([sys.executable, "-m", "fresco_backend.download", CN, "--cache-dir", str(cache)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        blobs = hubcache.repo_folder(cache, CN) / "blobs"
        wait_until(lambda: hub.served > 0 and any(blobs.glob("*.incomplete")), "first byte and partial file")
        served = hub.served
        child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=OUTER_LIMIT)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130 and json.loads(out.decode().splitlines()[-1]) == {"event": "cancelled"}
    assert hub.served == served  # it stopped before the next byte came
    assert any(blobs.glob("*.incomplete"))  # kept for the next run to resume


def test_a_model_folder_of_a_repo_is_downloaded_as_its_config_and_one_weight_set(tmp_path, monkeypatch, cache):
    """The IP-Adapter's image encoder (hubcache.IMAGE_ENCODER): a folder of a repo of other files."""
    folder = tmp_path / "ip-adapter-repo"
    (folder / "models" / "image_encoder").mkdir(parents=True)
    (folder / "models" / "ip-adapter_sd15.safetensors").write_bytes(b"adapter " * 500)
    (folder / "models" / "image_encoder" / "config.json").write_text('{"model_type": "clip_vision_model"}')
    (folder / "models" / "image_encoder" / "model.safetensors").write_bytes(b"encoder " * 900)
    (folder / "models" / "image_encoder" / "pytorch_model.bin").write_bytes(b"\x01" * 3_000_000)
    with FakeHub({"tiny/ip-adapter": folder}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        encoder = D.ensure_file("tiny/ip-adapter", "models/image_encoder", cache)
        assert encoder.is_dir() and (encoder / "model.safetensors").read_bytes() == b"encoder " * 900
        assert not any("pytorch_model" in request for request in hub.requests)  # one weight set
        record = hubcache.downloaded(cache, "tiny/ip-adapter")
        assert hubcache.recorded_bytes(record, "models/image_encoder") == 7200 + 35
        assert hubcache.recorded_bytes(record, "models/ip-adapter_sd15.safetensors") is None
        adapter = D.ensure_file("tiny/ip-adapter", "models/ip-adapter_sd15.safetensors", cache)
        hub.offline = True
        asked = len(hub.requests)
        assert D.ensure_file("tiny/ip-adapter", "models/image_encoder", cache) == encoder and adapter.is_file()
        assert len(hub.requests) == asked  # both recorded: no network
        hub.offline = False
        with pytest.raises(D.ModelNotFoundError, match="no file 'models/absent', nor a model folder"):
            D.ensure_file("tiny/ip-adapter", "models/absent", cache)
