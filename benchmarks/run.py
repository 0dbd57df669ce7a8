"""All FRESCO benchmarks in one run: every figure a ratio of two measurements taken side by side.

    .venv/bin/python benchmarks/run.py [--quick] [--real-size] [--json out.json] [--model DIR --controlnet DIR]

Rows (tiny untrained model unless --model/--controlnet; it shows cost, not trained quality):
 1. FRESCO (every frame a key) / per-frame baseline time (best of 3 runs) and peak memory, each FRESCO
    part alone, and the default pipeline (adaptive keys + propagation: translates only the keys) /
    baseline (fresco_ablation.py, one fresh process per configuration); FRESCO / baseline time again
    at 512 px, the default size, where the Gram loss's cost grows as HW^2.
 2. Efficient cross-frame attention / all-frame attention on bikes.mp4: keys attended and the time
    of one SDPA call at the up_blocks.3 grid (8 heads x 40), random Q/K/V.
 3. Gram loss memory: the analytic model (512x512, batch 8) and a measured peak of torch tensor
    memory (torch MemTracker, which counts live CPU tensor storage) of full vs chunked L_spat.
 4. Transport: upload + download of PNG frames through blender_addon.client against a real server
    (launcher.launch), vs writing + reading the same bytes on disk; and its share of the whole job
    (upload + compute until DONE + download) with the default settings.
 5. Peak RSS of a 300-frame job / a 30-frame job (memory_vs_length.py, fresh processes).
 6. Pixel-MSE of FRESCO (every frame a key) / baseline and default pipeline / baseline on real clips,
    with DIS flow estimated on the inputs, and again with Farneback flow (metrics.pixel_mse_independent):
    propagation warps with DIS flow, so a DIS-flow Pixel-MSE flatters the propagated frames.
 7. DIS flow: frames per second at 512x512 and end-point error on the synthetic ground-truth clip.
 8. Ray (python -m server --ray, server/ray_pool.py): time of the same segmented job on 2 workers / 1 worker
    (CPU workers of one thread each, side by side in one Ray runtime, each timed after a warm-up run), and
    Pixel-MSE of the consecutive pairs crossing a segment boundary / of the pairs inside segments (the
    2-worker run's outputs; keys every 2 frames, batches of 2, so that every segment chains batches).
 9. Propagation against a ground truth (benchmarks/propagation.py: stylised frames as keys, keys every 8
    and 16 frames): PSNR gain of today's propagation over the one before (its techniques switched off),
    top-5 % moving-edge error and time per frame after / before, and the temporal Pixel-MSE of its whole
    output (Farneback flow) / the ground truth's own and / before.

10. Only with --real-size (real_size_cost.py): on the SD 1.5 architecture with random weights
    (real_size.py), CPU time and peak RSS of FRESCO full, without feature optimisation and without each
    attention part / the per-frame baseline, at 256 px (8 frames, 4 steps) and 512 px (4 frames, 2
    steps), each configuration in its own process on one thread; and a profile of full FRESCO (each
    stage's share of the run, and of FRESCO's extra time over the baseline). Full FRESCO's CPU time / the
    diffusers community FrescoV2VPipeline's on the same work, side by side, where FRESCO_COMMUNITY_PIPELINE
    names a copy of it (benchmarks/community_fresco.py says what is patched).

Rows with a target the issue states carry it (target, met). Peak memory is peak CUDA memory when a
GPU is there (RSS does not show it), else peak RSS. --quick uses the smallest sizes and counts (a smoke
test; its figures mean little). The real clips are in tests/data/.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import operator
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from child_process import add_model_options, models, peak_mb, run_json

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MEDIA = REPO / "tests" / "data"  # real clips kept in the repo (tests/data/README.md)
BIKES, CARPHONE = MEDIA / "bikes.mp4", MEDIA / "carphone_pristine.mp4"

FULL = dict(ablation=dict(size=128, frames=8, steps=20, repeats=3, large=dict(size=512, frames=4, steps=20)),
            memory=dict(size=64, steps=4, lengths=(30, 300)),
            attention=dict(frames=8, short=512, queries=1024), gram=dict(hw_side=32, channels=64, chunk=256),
            transport=dict(frames=100, size=512, steps=4), consistency=dict(frames=16, size=256, steps=10),
            flow=dict(size=512, pairs=10), ray=dict(frames=24, size=128, steps=10, segments=2),
            propagation=dict(frames=49, short=128, intervals=(8, 16)),
            real_size=dict(sizes=[dict(size=256, frames=8, steps=4, community=True),  # each of real_size_cost.py's
                                  dict(size=512, frames=4, steps=2, community=True,
                                       configs=["baseline (per frame)", "full FRESCO", "without feature optimisation"])]))
QUICK = dict(ablation=dict(size=64, frames=4, steps=2, parts=False), memory=dict(size=64, steps=1, lengths=(4, 16)),
             attention=dict(frames=4, short=128, queries=256), gram=dict(hw_side=16, channels=16, chunk=64),
             transport=dict(frames=8, size=64, steps=1), consistency=dict(frames=4, size=64, steps=2),
             flow=dict(size=128, pairs=3), ray=dict(frames=8, size=64, steps=2, segments=2),
             propagation=dict(frames=17, short=48, intervals=(16,)),
             real_size=dict(sizes=[dict(size=64, frames=4, steps=1, configs=["baseline (per frame)", "full FRESCO"])]))


def _script(name: str):
    """Import benchmarks/<name>.py as a module (the benchmarks folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _child(task: str, **params) -> dict:
    """Run ``task`` of this file (CHILDREN) in a fresh Python process; returns its JSON answer."""
    return run_json(__file__, "--child", task, "--params", json.dumps(params))


TARGETS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge}


def _target(row: dict, op: str, bound: float) -> dict:
    """Give ``row`` the issue's target for it (``value op bound``) and whether it is met."""
    row["target"], row["met"] = f"{op} {bound:g} {row['unit']}", bool(TARGETS[op](row["value"], bound))
    return row


def _read_clip(path: Path, frames: int, short: int) -> list:
    from fresco_contract.estimate import working_size
    from fresco_backend.frames import resize
    from fresco_backend.video_io import iter_frames

    out = []
    for rgb in iter_frames(path):
        width, height = working_size(rgb.shape[1], rgb.shape[0], short, upscale=True)
        out.append(resize(rgb, width, height))
        if len(out) == frames:
            break
    return out


# ---------------------------------------------------------------- the rows

DEFAULT_PIPELINE = "full, adaptive keys + propagation"  # fresco_ablation.CONFIGS: the product's pipeline


def row_ablation(model: str, controlnet: str, p: dict) -> list[dict]:
    ablation = _script("fresco_ablation")
    parts = ["+ cross-frame attention", "+ spatial guidance", "+ temporal guidance", "+ feature optimisation"]
    configs = ["baseline (per frame)", "full FRESCO", DEFAULT_PIPELINE] + (parts if p.get("parts", True) else [])
    rows = ablation.measure(model, controlnet, p["size"], p["frames"], p["steps"],
                            {n: ablation.CONFIGS[n] for n in configs}, p.get("repeats", 1))
    base, (base_mb, memory) = rows[configs[0]], peak_mb(rows[configs[0]])
    config = ablation.CONFIGS[DEFAULT_PIPELINE]
    names = {"full FRESCO": "full FRESCO (every frame a key)",
             DEFAULT_PIPELINE: "default pipeline (adaptive keys + propagation)"}
    notes = {DEFAULT_PIPELINE: f"; translates only {rows[DEFAULT_PIPELINE]['keys']} of {p['frames']} frames "
                               f"(adaptive keys, gaps {config['key_min_gap']}..{config['key_max_gap']}), "
                               "propagates the rest"}
    where = f"{p['frames']} frames {p['size']}px {p['steps']} steps, synthetic clip"
    out = []
    for name in configs[1:]:
        r, label = rows[name], names.get(name, name)
        out.append(dict(row=1, name=f"{label} / baseline: time", value=r["seconds"] / base["seconds"], unit="x",
                        detail=f"{r['seconds']:.2f} s vs {base['seconds']:.2f} s; {where}{notes.get(name, '')}"))
        out.append(dict(row=1, name=f"{label} / baseline: {memory}", value=peak_mb(r)[0] / base_mb, unit="x",
                        detail=f"{peak_mb(r)[0]:.0f} MB vs {base_mb:.0f} MB"))
    _target(out[0], "<=", 2.5)
    if "large" in p:  # the product's default size, where the Gram loss's O(HW^2) cost shows
        q = p["large"]
        big = ablation.measure(model, controlnet, q["size"], q["frames"], q["steps"],
                               {n: ablation.CONFIGS[n] for n in configs[:2]})
        b, r = big[configs[0]], big[configs[1]]
        out.append(_target(dict(
            row=1, name=f"full FRESCO (every frame a key) / baseline: time at {q['size']} px", unit="x",
            value=r["seconds"] / b["seconds"],
            detail=f"{r['seconds']:.1f} s vs {b['seconds']:.1f} s; {q['frames']} frames {q['size']}px "
                   f"{q['steps']} steps (the default size); {memory} {peak_mb(r)[0]:.0f} vs {peak_mb(b)[0]:.0f} MB"),
            "<=", 2.5))
    for name in parts[len(configs) - 3:]:
        for what in ("time", memory):
            out.append(dict(row=1, name=f"{name} / baseline: {what}", skipped="not measured in --quick"))
    return out


def child_attention(p: dict) -> dict:
    import torch
    import torch.nn.functional as F

    from fresco_backend.flow import estimate_batch_flow
    from fresco_backend.fresco_attention import shared_key_attention, unique_token_index

    frames = _read_clip(BIKES, p["frames"], p["short"])
    height, width = frames[0].shape[:2]
    h, w = height // 8, width // 8  # up_blocks.3 works at the latent grid (1/8)
    flow = estimate_batch_flow(frames).at_size(h, w)
    index = unique_token_index(flow.occ_bwd)
    batch, tokens = len(frames), len(frames) * h * w
    torch.manual_seed(0)
    q = torch.randn(1, 8, p["queries"], 40)  # a slice of the queries: the cost per query is what differs
    k, v = torch.randn(1, 8, tokens, 40), torch.randn(1, 8, tokens, 40)

    def timed(run) -> float:
        run()  # warm-up
        best = math.inf
        for _ in range(3):
            started = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - started)
        return best

    with torch.no_grad():
        shared = timed(lambda: shared_key_attention(q, k, v, index))
        full = timed(lambda: F.scaled_dot_product_attention(q, k, v))
    return dict(keys_shared=int(index.numel()), keys_all=tokens, grid=f"{h}x{w}", frames=batch,
                size=f"{width}x{height}", queries=p["queries"], shared_s=shared, full_s=full)


def row_attention(model: str, controlnet: str, p: dict) -> list[dict]:
    r = _child("attention", **p)
    where = f"first {r['frames']} frames of bikes.mp4 at {r['size']}, grid {r['grid']}"
    return [_target(dict(row=2, name="cross-frame / all-frame: keys attended", value=r["keys_shared"] / r["keys_all"],
                         unit="x", detail=f"{r['keys_shared']} vs {r['keys_all']} keys; {where}"), "<", 1),
            dict(row=2, name="cross-frame / all-frame: attention time", value=r["shared_s"] / r["full_s"], unit="x",
                 detail=f"{r['shared_s'] * 1e3:.1f} ms vs {r['full_s'] * 1e3:.1f} ms, {r['queries']} queries x "
                        f"8 heads x 40, best of 3")]


def child_gram(p: dict) -> dict:
    import torch
    from torch.distributed._tools.mem_tracker import MemTracker

    from fresco_backend.feature_opt import spatial_loss_backward, spatial_loss_full

    torch.manual_seed(4)
    side = p["hw_side"]
    f = torch.randn(8, p["channels"], side, side, requires_grad=True)
    ref = torch.randn(8, p["channels"], side, side)

    def peak(run) -> int:
        tracker = MemTracker()
        with tracker:
            run()
        f.grad = None
        return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]

    return dict(full=peak(lambda: spatial_loss_full(f, ref).backward()),
                chunked=peak(lambda: spatial_loss_backward(f, ref, chunk=p["chunk"])))


def row_gram(model: str, controlnet: str, p: dict) -> list[dict]:
    from fresco_backend.feature_opt import gram_memory_bytes

    full, chunked = gram_memory_bytes(8, 64 * 64, 1024)
    out = [dict(row=3, name="Gram loss chunked / full: model bytes", value=chunked / full, unit="x",
                detail=f"{chunked / 2**20:.0f} MiB vs {full / 2**20:.0f} MiB; 512x512 (HW 4096) batch 8, "
                       "chunk 1024 (gram_memory_bytes)")]
    r = _child("gram", **p)
    hw = p["hw_side"] ** 2
    out.append(dict(row=3, name="Gram loss chunked / full: measured peak", value=r["chunked"] / r["full"], unit="x",
                    detail=f"{r['chunked'] / 2**20:.1f} MiB vs {r['full'] / 2**20:.1f} MiB peak torch CPU tensor "
                           f"memory (MemTracker), HW {hw} batch 8, C {p['channels']}, chunk {p['chunk']}, forward + "
                           "backward"))
    return out


def row_transport(model: str, controlnet: str, p: dict) -> list[dict]:
    import numpy as np

    from fresco_contract import wire
    if str(REPO) not in sys.path:  # the add-on (its stdlib launcher) is in the checkout, not in the installed wheel
        sys.path.insert(0, str(REPO))
    from blender_addon.launcher import launch
    from fresco_backend.synthetic import moving_square
    from fresco_backend.video_io import encode_png

    n, size, steps = p["frames"], p["size"], p["steps"]
    clip = moving_square(frames=n, width=size, height=size, velocity=(3, 2), square=size // 3)
    noise = np.random.default_rng(0).integers(0, 24, (size, size, 3), dtype=np.uint8)  # realistic PNG sizes
    pngs = [encode_png(rgb + noise) for rgb in clip.frames]
    with tempfile.TemporaryDirectory(prefix="fresco-bench-transport-") as tmp:
        backend = launch(sys.executable, REPO, model, controlnet, work_dir=Path(tmp) / "server")
        try:
            client = backend.client(timeout=120)
            # the product's defaults (mode fresco, adaptive keyframes), as the add-on sends them
            job = client.create_job({"prompt": "a watercolour painting", "steps": steps, "size": size}, n)
            started = time.perf_counter()
            for i, data in enumerate(pngs):
                client.upload_frame(job, i, data)
            upload = time.perf_counter() - started
            client.start(job)
            after, state = -1, ""
            deadline = time.monotonic() + 3600
            while state not in wire.FINAL_STATES and time.monotonic() < deadline:
                answer = client.events(job, after, wait=5)
                state = answer["state"]
                if answer["events"]:
                    after = answer["events"][-1]["seq"]
            if state != wire.DONE:
                raise RuntimeError(f"transport job ended {state!r}: {backend.log_tail(10)}")
            compute = time.perf_counter() - started - upload
            outputs = [client.download_frame(job, i) for i in range(n)]
            whole = time.perf_counter() - started
            download = whole - upload - compute
        finally:
            backend.stop()
        disk = Path(tmp) / "disk"
        disk.mkdir()
        started = time.perf_counter()
        for i, data in enumerate(pngs):
            (disk / f"in{i:05d}.png").write_bytes(data)
        write = time.perf_counter() - started
        for i, data in enumerate(outputs):
            (disk / f"out{i:05d}.png").write_bytes(data)
        started = time.perf_counter()
        for i in range(n):
            (disk / f"out{i:05d}.png").read_bytes()
        read = time.perf_counter() - started
    mb = (sum(map(len, pngs)) + sum(map(len, outputs))) / 2**20
    slow = "" if steps == 20 else f"{steps} steps, not the default 20 (too slow here for a benchmark), "
    return [dict(row=4, name="server round trip / disk write+read", value=(upload + download) / (write + read),
                 unit="x", detail=f"{n} frames {size}x{size}, {mb:.1f} MB of PNG: upload {upload:.2f} s + download "
                                  f"{download:.2f} s vs disk {write * 1e3:.0f} + {read * 1e3:.0f} ms "
                                  f"({(upload + download) / n * 1e3:.1f} ms/frame over HTTP)"),
            dict(row=4, name="server round trip / whole job: share of time", value=(upload + download) / whole,
                 unit="x", detail=f"{upload + download:.2f} s of {whole:.1f} s (compute until DONE {compute:.1f} s); "
                                  f"the same job, default settings (fresco, adaptive keys), {slow}"
                                  f"{model_note(model)}")]


def model_note(model: str) -> str:
    """What the compute of a job on ``model`` says about a real job's transport share."""
    from fresco_backend.tiny import TINY_MODEL_DIR

    if Path(model).name == TINY_MODEL_DIR:
        return "tiny model: its compute is tiny, so this is an upper bound of a real SD 1.5 job's share"
    return f"model {Path(model).name}"


def row_memory(model: str, controlnet: str, p: dict) -> list[dict]:
    short, long = p["lengths"]
    rows = _script("memory_vs_length").measure(model, controlnet, p["size"], p["steps"], tuple(p["lengths"]))
    (a, memory), b = peak_mb(rows[short]), peak_mb(rows[long])[0]
    return [_target(dict(row=5, name=f"{memory} {long} / {short} frames", value=b / a, unit="x",
                         detail=f"{b:.0f} MB vs {a:.0f} MB, whole-video job {p['size']}px {p['steps']} steps "
                                f"({rows[long]['seconds']:.0f} s vs {rows[short]['seconds']:.0f} s)"), "<=", 1.2)]


def child_consistency(p: dict) -> dict:
    from fresco_backend.models import load_pipeline

    pipe = load_pipeline(p["model"], p["controlnet"])
    return {clip: _consistency(pipe, Path(clip), p) for clip in p["clips"]}


def _consistency(pipe, clip: Path, p: dict) -> dict:
    from fresco_backend.config import JobConfig
    from fresco_backend.flow import estimate_batch_flow
    from fresco_backend.frames import resize
    from fresco_backend.metrics import pixel_mse, pixel_mse_independent
    from fresco_backend.plan import keyframes_for
    from fresco_backend.translate import translate_frames

    frames = _read_clip(clip, p["frames"], p["size"])
    result, flow = {"frames": len(frames)}, None
    for name, config in p["configs"].items():
        settings = JobConfig.of({"prompt": "a watercolour painting", "steps": p["steps"], "size": p["size"],
                                 "batch_size": len(frames), "seed": 7, **config})
        out = [rgb for _, rgb in translate_frames(pipe, frames, settings)]
        if flow is None:
            height, width = out[0].shape[:2]
            flow = estimate_batch_flow([resize(f, width, height) for f in frames])
            result["size"] = f"{width}x{height}"
        result[name] = dict(pixel_mse=pixel_mse(out, flow), pixel_mse_farneback=pixel_mse_independent(out, frames),
                            keys=len(keyframes_for(frames, settings)))
    return result


def row_consistency(model: str, controlnet: str, p: dict) -> list[dict]:
    ablation = _script("fresco_ablation")
    configs = {"baseline": dict(mode="per_frame"), "FRESCO (every frame a key)": dict(mode="fresco", keyframes="all"),
               "default pipeline": ablation.CONFIGS[DEFAULT_PIPELINE]}
    gaps = f"{configs['default pipeline']['key_min_gap']}..{configs['default pipeline']['key_max_gap']}"
    notes = {"default pipeline": f"adaptive keys (gaps {gaps}) + propagation: "}
    out = []
    measured = _child("consistency", clips=[str(CARPHONE), str(BIKES)], model=model, controlnet=controlnet,
                      configs=configs, **p)
    for clip in (CARPHONE, BIKES):
        for name in list(configs)[1:]:
            label = f"Pixel-MSE {name} / baseline, {clip.name}"
            r = measured[str(clip)]
            a, b = r[name], r["baseline"]
            out.append(dict(row=6, name=label, value=a["pixel_mse"] / b["pixel_mse"], unit="x",
                            detail=f"{a['pixel_mse']:.5f} vs {b['pixel_mse']:.5f}; {notes.get(name, '')}"
                                   f"{a['keys']} keys of the first "
                                   f"{r['frames']} frames at {r['size']}, {p['steps']} steps, seed 7, estimated DIS "
                                   "flow (no ground truth)"))
            out.append(dict(row=6, name=f"{label}, Farneback flow",
                            value=a["pixel_mse_farneback"] / b["pixel_mse_farneback"], unit="x",
                            detail=f"{a['pixel_mse_farneback']:.5f} vs {b['pixel_mse_farneback']:.5f}; the same outputs "
                                   "warped with Farneback flow, independent of the DIS flow propagation used"))
    return out


def row_flow(model: str, controlnet: str, p: dict) -> list[dict]:
    import numpy as np

    from fresco_backend.flow import OpenCVFlow
    from fresco_backend.synthetic import moving_square

    estimator = OpenCVFlow()
    size, pairs = p["size"], p["pairs"]
    clip = moving_square(frames=pairs + 1, width=size, height=size, velocity=(4, 2), square=size // 3)
    estimator(clip.frames[0], clip.frames[1])  # warm-up
    started = time.perf_counter()
    for a, b in zip(clip.frames[:-1], clip.frames[1:]):
        estimator(a, b)
    seconds = (time.perf_counter() - started) / pairs
    truth = moving_square()  # the ground-truth clip of tests/backend/test_flow.py (128 x 96)
    errors = []
    for i in range(len(truth.frames) - 1):
        fwd, _, occ_fwd, _ = truth.gt_flow(i)
        est = estimator(truth.frames[i], truth.frames[i + 1])
        visible = occ_fwd < 0.5
        errors.append(np.linalg.norm(est - fwd, axis=-1)[visible])
    epe = float(np.concatenate(errors).mean())
    return [dict(row=7, name=f"DIS flow pairs per second at {size}x{size}", value=1.0 / seconds, unit="fps",
                 detail=f"{seconds * 1e3:.0f} ms per pair, mean of {pairs}"),
            dict(row=7, name="DIS flow end-point error, synthetic moving square", value=epe, unit="px",
                 detail=f"{len(truth.frames)} frames 128x96, non-occluded pixels vs gt_flow")]


def child_ray(p: dict) -> dict:
    import numpy as np
    import ray
    import torch

    from fresco_backend.config import JobConfig
    from fresco_backend.flow import estimate_batch_flow, warp
    from fresco_backend.plan import make_plan
    from fresco_backend.synthetic import moving_square
    from server.ray_pool import RayPool

    frames = moving_square(frames=p["frames"], width=p["size"], height=p["size"], velocity=(3, 2),
                           square=p["size"] // 3).frames
    settings = JobConfig.of({"prompt": "a watercolour painting", "steps": p["steps"], "size": p["size"], "seed": 7,
                             "keyframes": "interval", "key_interval": 2, "batch_size": 2})  # several batches a segment
    ray.init(num_cpus=3, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    seconds, outputs = {}, {}
    for workers in (1, 2):
        pool = RayPool(workers, (p["model"], {"canny": p["controlnet"]}), "cpu", segments=p["segments"], threads=1)
        try:
            list(pool.translate(frames, settings))  # warm-up: each worker's first calls
            started = time.perf_counter()
            outputs[workers] = dict(pool.translate(frames, settings))
            seconds[workers] = time.perf_counter() - started
        finally:
            pool.shutdown()
    ray.shutdown()
    out = [outputs[2][i] for i in range(len(frames))]
    flow = estimate_batch_flow(list(frames))
    video = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255.0
    visible = 1.0 - flow.occ_bwd
    squared = ((video[1:] - warp(video[:-1], flow.bwd)) ** 2).mean(dim=1, keepdim=True) * visible
    pair_mse = (squared.sum(dim=(1, 2, 3)) / visible.sum(dim=(1, 2, 3)).clamp(min=1.0)).tolist()
    plan = make_plan(list(frames), settings, p["segments"])
    # each segment from its skeleton key (the key before its own; segment 0 from its first) to its last key
    ranges = [(plan.keys[plan.keys.index(s.keys[0]) - 1] if i else s.keys[0], s.keys[-1])
              for i, s in enumerate(plan.segments)]
    boundary = {i for (_, end), (start, _) in zip(ranges, ranges[1:]) for i in range(end, start)}
    inside = [m for i, m in enumerate(pair_mse) if i not in boundary]
    crossing = [m for i, m in enumerate(pair_mse) if i in boundary]
    return dict(seconds=seconds, boundary=float(np.mean(crossing)) if crossing else None,
                inside=float(np.mean(inside)) if inside else None, pairs=[len(crossing), len(inside)])


def row_ray(model: str, controlnet: str, p: dict) -> list[dict]:
    if importlib.util.find_spec("ray") is None:
        return [dict(row=8, name="Ray 2 workers / 1 worker: time", skipped="ray is not installed (the [ray] extra)")]
    r = _child("ray", model=model, controlnet=controlnet, **p)
    one, two = r["seconds"]["1"], r["seconds"]["2"]
    job = f"{p['frames']} frames {p['size']}px {p['steps']} steps, {p['segments']} segments"
    rows = [_target(dict(row=8, name="Ray 2 workers / 1 worker: time", value=two / one, unit="x",
                         detail=f"{two:.1f} s vs {one:.1f} s, {job}, CPU workers of one thread"), "<=", 0.65)]
    if r["boundary"] and r["inside"]:
        rows.append(dict(row=8, name="Ray Pixel-MSE segment boundary / inside", value=r["boundary"] / r["inside"],
                         unit="x", detail=f"{r['boundary']:.4f} over {r['pairs'][0]} pairs vs {r['inside']:.4f} "
                                          f"over {r['pairs'][1]}, {job}; {quality_note(model)}"))
    else:
        rows.append(dict(row=8, name="Ray Pixel-MSE segment boundary / inside",
                         skipped=f"the plan has no pairs {'across' if not r['boundary'] else 'inside'} segments"))
    return rows


def row_propagation(model: str, controlnet: str, p: dict) -> list[dict]:
    bench = _script("propagation")
    means = [m for m in bench.summary(bench.measure(p)) if m["method"] in ("before", "after", bench.REFERENCE)]
    out = []
    for interval in p["intervals"]:
        before, after, truth = (next(m for m in means if m["interval"] == interval and m["method"] == w)
                                for w in ("before", "after", bench.REFERENCE))
        where = f"{p['frames']} frames of {', '.join(bench.CLIPS)} at {p['short']} px, styles {', '.join(bench.STYLES)}"
        rows = [dict(row=9, name=f"propagation, keys every {interval}: PSNR after - before", value=after["psnr_gain"],
                     unit="dB", detail=f"{after['psnr']:.2f} vs {before['psnr']:.2f} dB in-between frames; {where}"),
                dict(row=9, name=f"propagation, keys every {interval}: top-5% moving-edge error after / before",
                     value=after["top5_ratio"], unit="x",
                     detail=f"{after['edge_top5']:.1f} vs {before['edge_top5']:.1f} (mean abs RGB error, 0..255)"),
                dict(row=9, name=f"propagation, keys every {interval}: time per frame after / before",
                     value=after["time_ratio"], unit="x",
                     detail=f"{after['ms_per_frame']:.0f} vs {before['ms_per_frame']:.0f} ms per frame, DIS flow included"),
                dict(row=9, name=f"propagation, keys every {interval}: temporal Pixel-MSE after / ground truth",
                     value=after["temporal_vs_truth"], unit="x",
                     detail=f"{after['temporal']:.3f} vs {truth['temporal']:.3f} (x 1000), consecutive frames warped with "
                            "Farneback flow of the input, independent of the DIS flow propagation used"),
                dict(row=9, name=f"propagation, keys every {interval}: temporal Pixel-MSE after / before",
                     value=after["temporal_ratio"], unit="x",
                     detail=f"{after['temporal']:.3f} vs {before['temporal']:.3f} (x 1000)")]
        if interval == 16:  # the targets
            for row, (op, bound) in zip(rows, ((">=", 1.5), ("<=", 0.5), ("<=", 2.0), ("<=", 1.0))):
                _target(row, op, bound)
        out.extend(rows)
    return out


def row_real_size(model: str, controlnet: str, p: dict) -> list[dict]:
    """FRESCO's cost on the real SD 1.5 architecture (real_size_cost.py), at each of ``p``'s sizes."""
    cost = _script("real_size_cost")
    out = []
    for q in p["sizes"]:
        configs = {name: cost.CONFIGS[name] for name in q.get("configs", cost.CONFIGS)}
        figures = cost.measure(model, controlnet, q["size"], q["frames"], q["steps"], configs)
        where = (f"{q['frames']} frames {q['size']} px {q['steps']} steps, every frame a key, one thread each, "
                 f"{figures[cost.BASELINE]['side_by_side']} side by side; {model_note(model)}")
        out.extend(_real_size_rows(cost, figures, q["size"], where))
        out.append(_community_row(cost, model, controlnet, q, where))
    return out


def _community_row(cost, model: str, controlnet: str, q: dict, where: str) -> dict:
    """Full FRESCO's CPU time over the diffusers community pipeline's, the two side by side (target: 2x faster)."""
    name = f"{q['size']} px: FRESCO full / {cost.community_fresco.NAME}: CPU time"
    why = cost.community_fresco.unavailable()
    if why or not q.get("community"):
        return dict(row=10, name=name, skipped=why or "not in this run")
    figures = cost.measure(model, controlnet, q["size"], q["frames"], q["steps"],
                           {cost.FULL: cost.CONFIGS[cost.FULL], **cost.COMMUNITY})
    full, other = figures[cost.FULL], figures[cost.community_fresco.NAME]
    row = dict(row=10, name=name, value=_cpu_seconds(full) / _cpu_seconds(other), unit="x",
               detail=f"{_cpu_seconds(full):.1f} s vs {_cpu_seconds(other):.1f} s, peak RSS {full['peak_rss_mb']:.0f} "
                      f"vs {other['peak_rss_mb']:.0f} MB; its flow patched to OpenCV DIS "
                      f"(benchmarks/community_fresco.py); {where}")
    return _target(row, "<=", 0.5)


def _cpu_seconds(figures: dict) -> float:
    """A real_size_cost.py child's CPU time: user + system."""
    return figures["user"] + figures["system"]


def _real_size_rows(cost, figures: dict[str, dict], size: int, where: str) -> list[dict]:
    base, full = figures[cost.BASELINE], figures[cost.FULL]
    out = []
    for name, r in figures.items():
        if name == cost.BASELINE:
            continue
        label = f"{size} px: FRESCO {name.removeprefix('full FRESCO').strip() or 'full'} / baseline"
        used, used_base = _cpu_seconds(r), _cpu_seconds(base)
        out.append(dict(row=10, name=f"{label}: CPU time", value=used / used_base, unit="x",
                        detail=f"{used:.1f} s vs {used_base:.1f} s (system {r['system'] / used:.0%} vs "
                               f"{base['system'] / used_base:.0%}, {r['page_faults'] / 1e6:.1f} M vs "
                               f"{base['page_faults'] / 1e6:.1f} M page faults); {where}"))
        if name == cost.FULL:
            _target(out[-1], "<=", 1.4)
        out.append(dict(row=10, name=f"{label}: peak RSS", value=r["peak_rss_mb"] / base["peak_rss_mb"], unit="x",
                        detail=f"{r['peak_rss_mb']:.0f} MB vs {base['peak_rss_mb']:.0f} MB"))
    extra = max(full["profiled"] - base["profiled"], 1e-9)
    for stage, seconds in full["stages"].items():
        name = f"{size} px profile: {stage.strip()}{' (in feature optimisation)' if stage.startswith(' ') else ''}"
        if not seconds:
            out.append(dict(row=10, name=name, skipped="not called in full FRESCO"))
            continue
        other = base["stages"][stage]
        out.append(dict(row=10, name=f"{name}: share of FRESCO's run", value=seconds / full["profiled"],
                        unit="x", detail=f"{seconds:.2f} s of {full['profiled']:.1f} s (baseline {other:.2f} s of "
                                         f"{base['profiled']:.1f} s); {(seconds - other) / extra:.0%} of FRESCO's "
                                         f"extra {extra:.1f} s (cProfile, cumulative)"))
    return out


def quality_note(model: str) -> str:
    """What a consistency figure on ``model`` says."""
    from fresco_backend.tiny import TINY_MODEL_DIR

    return "tiny untrained model: shows the mechanism, not trained quality" if Path(model).name == TINY_MODEL_DIR \
        else f"model {Path(model).name}"


ROWS = [row_ablation, row_attention, row_gram, row_transport, row_memory, row_consistency, row_flow, row_ray,
        row_propagation, row_real_size]
ROW_NAMES = {1: "FRESCO vs baseline", 2: "cross-frame attention", 3: "Gram loss memory", 4: "transport",
             5: "memory vs length", 6: "consistency", 7: "flow", 8: "Ray workers", 9: "propagation",
             10: "real-size cost"}
CHILDREN = {"attention": child_attention, "gram": child_gram, "consistency": child_consistency, "ray": child_ray}


def print_table(results: list[dict]) -> None:
    print(f"{'#':>2s}  {'measure':70s} {'value':>10s}  {'target':>8s} {'met':3s}  detail")
    for r in results:
        value = f"{r['value']:.3f} {r['unit']}" if "value" in r else "skipped"
        met = {True: "yes", False: "no"}.get(r.get("met"), "")
        print(f"{r['row']:2d}  {r['name']:70s} {value:>10s}  {r.get('target', ''):>8s} {met:3s}  "
              f"{r.get('detail') or r.get('skipped')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smallest sizes and counts (smoke test)")
    parser.add_argument("--json", type=Path, help="also write the table here as JSON")
    parser.add_argument("--real-size", action="store_true",
                        help="row 10 alone, on real_size.py's model (with --quick, its tiny sizes)")
    add_model_options(parser)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](json.loads(args.params))))
        return
    plan = QUICK if args.quick else FULL
    if args.model and not args.quick:  # a real model (on a GPU): the transport-share job at the default 20 steps
        plan = {**plan, "transport": {**plan["transport"], "steps": 20}}
    if args.real_size and not args.model:
        import real_size

        args.model, args.controlnet = map(str, real_size.build(arch=real_size.TINY if args.quick else real_size.SD15))
    args.model, args.controlnet = models(parser, args)
    keys = ("ablation", "attention", "gram", "transport", "memory", "consistency", "flow", "ray", "propagation",
            "real_size")
    chosen = [(row_real_size, "real_size")] if args.real_size else list(zip(ROWS[:-1], keys))
    results, started, loads = [], time.perf_counter(), [os.getloadavg()[0]]
    for fn, key in chosen:
        t0 = time.perf_counter()
        try:
            rows = fn(args.model, args.controlnet, plan[key])
        except Exception as exc:  # one failing row must not lose the others
            traceback.print_exc()
            rows = [dict(row=ROWS.index(fn) + 1, name=ROW_NAMES[ROWS.index(fn) + 1],
                         skipped=f"not measured: {type(exc).__name__}: {exc}")]
        for r in rows:
            r["seconds"] = time.perf_counter() - t0
        print(f"[row {ROWS.index(fn) + 1} {ROW_NAMES[ROWS.index(fn) + 1]}: {time.perf_counter() - t0:.1f} s]",
              file=sys.stderr, flush=True)
        results.extend(rows)
        loads.append(os.getloadavg()[0])
    wall = time.perf_counter() - started
    print_table(results)
    print(f"wall time {wall:.1f} s ({'quick' if args.quick else 'full'}); 1-minute load average up to "
          f"{max(loads):.1f} on {os.cpu_count()} CPUs (the run adds up to that; more: other work distorted the times)")
    if args.json:
        args.json.write_text(json.dumps({"quick": args.quick, "model": args.model, "wall_seconds": wall,
                                         "max_load_average": max(loads), "plan": plan, "rows": results}, indent=1))


if __name__ == "__main__":
    main()
