"""Fresh-process measurements, shared by the benchmark scripts.

Each benchmark measures in a fresh Python process (so peak memory is that run's own): the parent calls
``run_json(script, *args)``, the child prints its figures as one JSON line last on stdout, with
``peak_memory()`` among them where memory counts. The scripts import this module as a sibling
(``from child_process import run_json``): Python puts the folder of the script it runs first on
``sys.path``, whether that is run.py or one of the others run directly.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class ChildError(RuntimeError):
    """A benchmark child process failed or printed no JSON; the message holds its stderr's tail."""


def run_json(script: str | Path, *args, tail: int = 15) -> dict:
    """Run ``python script *args`` in a fresh process (cwd: the repo); return the last stdout line as JSON."""
    argv = [sys.executable, str(script), *map(str, args)]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO)
    lines = done.stdout.strip().splitlines()
    try:
        if done.returncode == 0 and lines:
            return json.loads(lines[-1])
    except json.JSONDecodeError:
        pass
    stderr = "\n".join(done.stderr.strip().splitlines()[-tail:])
    last = lines[-1] if lines else "(no output)"
    raise ChildError(f"{Path(script).name} {' '.join(argv[2:])[:300]} exited {done.returncode}; "
                     f"last stdout line: {last[:300]}\nstderr tail:\n{stderr}")


def peak_memory() -> dict:
    """This process's peak RSS in MB, and its peak CUDA memory in MB when a GPU is there."""
    peak = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        peak["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peak


def peak_mb(figures: dict) -> tuple[float, str]:
    """(peak memory in MB, its label) of a child's figures: CUDA memory on a GPU (RSS does not show it),
    else RSS."""
    if "peak_cuda_mb" in figures:
        return figures["peak_cuda_mb"], "peak CUDA memory"
    return figures["peak_rss_mb"], "peak RSS"


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model / --controlnet, shared by the benchmark scripts."""
    parser.add_argument("--model", help="SD 1.5 model in any form the backend loads (default: the tiny untrained one)")
    parser.add_argument("--controlnet", help="its ControlNet (given together with --model)")


def models(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[str, str]:
    """(model, controlnet) from the options, else the tiny untrained pair, saved once in the temp folder."""
    if bool(args.model) != bool(args.controlnet):
        parser.error("--model and --controlnet go together")
    if args.model:
        return args.model, args.controlnet
    from fresco_backend.tiny import save_tiny_models

    model, controlnet = save_tiny_models(Path(tempfile.gettempdir()) / "fresco-bench-tiny")
    return str(model), str(controlnet)
