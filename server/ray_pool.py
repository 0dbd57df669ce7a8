"""A pool of Ray worker actors running jobs split into segments (``python -m server --ray``).

Each ``Worker`` actor keeps a warm pipeline on its device (``fresco_backend.warm.WarmPipeline``, as the
plain server: a job's ControlNets and LoRAs are swapped in without reloading the SD model). A job
(``RayPool.translate``, called by ``server/jobs.py`` like ``translate_frames``) is the job's plan
(``fresco_backend/plan.py``, ``segments`` segments) walked by the one executor
(``fresco_backend/executor.py``) with the ``RayRunner``: the input frames go to the object store once,
the skeleton pass runs on one worker, its anchor latents go to the object store and the segment passes
run in parallel on free workers; a propagation span runs as a CPU task as soon as the outputs of both
its keys exist. A worker runs its pass with the local runner (``fresco_backend.translate.LocalRunner``)
and streams the executor's messages back (a streaming generator of ``Progress``, ``executor.Frame`` and
``executor.Recorded``); every frame is yielded once, frames the checkpoint already holds never. The
pool logs every pass it starts (run, pass, worker, attempt) and every worker lost.

Fairness: a free worker goes to the waiting job holding the fewest workers (then the one waiting
longest). Cancel: each actor takes two calls at once, so ``cancel`` reaches a running segment and
stops it within a denoising step. A worker that dies is replaced and its segment runs again on a
free worker. Resume: the skeleton's outputs are normal outputs and its anchors are the checkpoint's
first batch (``fresco_backend/job.py`` CheckpointStore), a segment whose keys' outputs all exist and
a span whose frames all exist are not run again.

Settings: the job's ``JobConfig`` (made once by the server, ``server/jobs.py``) is what the actors
and propagation tasks receive: a frozen dataclass of tuples and frozen dataclasses of
``fresco_backend.config``, it pickles as it is, so nothing across the process boundary parses the
settings again.

A runtime the pool starts itself (``LocalRuntime``: no address) serves this machine only: every
Ray listener (GCS, raylet and object manager, workers, runtime-env agent, the driver) is bound to
127.0.0.1, Ray's token authentication is on with a token of its own (no ``~/.ray/auth_token`` is
written), its files live in a temp dir of its own, and a reaper process (``server/ray_reaper.py``)
ends its helpers and removes that dir as soon as the server is gone, killed with -9 included.
"""
from __future__ import annotations

import itertools
import logging
import os
import queue
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

# Read by Ray when it is imported: with its multi-node support off, the head node a process starts
# takes 127.0.0.1 as its address (on Linux it would take the machine's), and Ray's gRPC servers and
# agents listen on loopback only when the node's address is 127.0.0.1. Joining a cluster is not
# affected: a driver that joins takes its node's address from the cluster.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
os.environ[LOOPBACK_ENV] = "0"

import numpy as np  # noqa: E402
import ray  # noqa: E402
from ray import exceptions as rex  # noqa: E402

from fresco_backend.checkpoint import Anchors, Checkpoint
from fresco_backend.config import JobConfig, require
from fresco_backend.denoise import Cancelled, Progress
from fresco_backend.executor import Done, Failed, Frame, Recorded, Spanned, execute
from fresco_backend.mask import composited, region_of
from fresco_backend.models import ModelChoice, choose_models
from fresco_backend.plan import Pass
from fresco_backend.render_passes import RenderPasses
from fresco_backend.translate import CheckedKeys, job_plan

from .ray_reaper import MARKER_ENV

log = logging.getLogger("fresco.server.ray")

ATTEMPTS = 4  # runs of one segment before a job fails because its workers keep dying
STARTUP = 900.0  # seconds the workers may take to start and load the model (an outer limit)
POLL = 0.2  # seconds between checks of a job's cancel while it waits
LOST = (rex.RayActorError, rex.ActorUnavailableError, rex.WorkerCrashedError, rex.NodeDiedError,
        rex.OutOfMemoryError)  # a worker died or is unreachable: its segment runs again elsewhere
LOOPBACK = "127.0.0.1"
REACHABLE = 10.0  # seconds to wait for a TCP connection to a cluster's address before giving up
REAPER_EXIT = 60.0  # seconds the reaper may take to end the runtime's helpers and remove its dir


class PoolStartError(RuntimeError):
    """The Ray runtime or the pool's workers could not be started (one message, no traceback)."""


class LocalRuntime:
    """A Ray runtime for this machine only, started here, stopped by ``stop`` or when this process dies."""

    def __init__(self, temp_dir: Path, num_cpus: int | None, runtime_env: dict[str, Any] | None) -> None:
        """``temp_dir``: the runtime's own folder (its Unix sockets need a short path), removed at the end."""
        ignored = os.environ.pop("RAY_ADDRESS", None)
        if ignored:
            log.info("ignoring RAY_ADDRESS=%s: --ray without an address starts a Ray runtime of its own", ignored)
        marker = secrets.token_hex(16)
        env = {k: v for k, v in os.environ.items() if k != MARKER_ENV}
        self.temp_dir = temp_dir
        self.reaper = subprocess.Popen([sys.executable, str(Path(__file__).with_name("ray_reaper.py")), marker,
                                        str(temp_dir)], stdin=subprocess.PIPE, env=env, start_new_session=True)
        # inherited by every process of the runtime: how the reaper finds them, and their token (with
        # RAY_AUTH_MODE unset, ray.init turns token authentication on for the runtime it starts)
        os.environ.pop("RAY_AUTH_MODE", None)
        os.environ.update({MARKER_ENV: marker, "RAY_AUTH_TOKEN": secrets.token_hex(32)})
        try:
            ray.init(address="local", num_cpus=num_cpus, runtime_env=runtime_env, include_dashboard=False,
                     _temp_dir=str(temp_dir))
        except Exception as exc:  # noqa: BLE001 - any failure to start is one message
            self.stop()
            raise PoolStartError(f"the local Ray runtime did not start: {type(exc).__name__}: {exc}") from None
        address = ray.util.get_node_ip_address()
        if address != LOOPBACK:
            self.stop()
            raise PoolStartError(f"the local Ray runtime took the address {address}, not {LOOPBACK}: ray was "
                                 f"imported before server.ray_pool could set {LOOPBACK_ENV}=0")
        log.info("local Ray runtime on %s, temp dir %s", LOOPBACK, temp_dir)

    def stop(self) -> None:
        """Stop Ray, then let the reaper end any helper left and remove the temp dir."""
        if ray.is_initialized():
            ray.shutdown()
        if self.reaper.stdin is not None and not self.reaper.stdin.closed:
            self.reaper.stdin.close()
        try:
            self.reaper.wait(REAPER_EXIT)
        except subprocess.TimeoutExpired:
            log.warning("the Ray reaper (pid %d) is still ending the runtime's processes", self.reaper.pid)


def join_cluster(address: str, runtime_env: dict[str, Any] | None) -> None:
    """Connect to the Ray cluster at ``address``; PoolStartError, quickly, where it is not reachable."""
    host, sep, port = address.rpartition(":")
    if sep and port.isdigit() and "://" not in address:  # host:port (not ray:// nor "auto")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=REACHABLE).close()
        except OSError as exc:
            raise PoolStartError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None
    try:
        ray.init(address=address, runtime_env=runtime_env, include_dashboard=False)
    except Exception as exc:  # noqa: BLE001 - any failure to join is one message
        raise PoolStartError(f"cannot join the Ray cluster at {address}: {type(exc).__name__}: {exc}") from None


@ray.remote(max_concurrency=3, max_restarts=0)  # a pass, the next one waiting for it, a cancel
class Worker:
    """One warm pipeline; ``run`` streams a skeleton or segment pass, ``cancel`` stops it."""

    def __init__(self, models: ModelChoice, device: str | None, load_options: dict[str, Any],
                 threads: int | None, conditions_dir: str | None, annotators: str | None) -> None:
        """``load_options``: ``WarmPipeline``'s config, controlnet_config and style_models; ``annotators``: the
        server's ``--annotators`` folder."""
        from fresco_backend.threads import pin_threads

        if threads:
            pin_threads(threads)
        from fresco_backend.annotators import set_annotators_folder
        from fresco_backend.conditions_cache import ConditionsCache
        from fresco_backend.warm import WarmPipeline

        if annotators:
            set_annotators_folder(annotators)
        self.device = device
        self.warm = WarmPipeline(device, **load_options)
        self.cache = ConditionsCache(Path(conditions_dir)) if conditions_dir else None
        self.cancels: dict[str, threading.Event] = {}
        self.running = threading.Lock()  # one pass at a time on the pipeline, a stopping one included
        self.warm.get(models)

    def describe(self) -> str:
        return str(getattr(self.warm.pipe, "device", self.device))

    def cancel(self, run_id: str) -> None:
        self.cancels.setdefault(run_id, threading.Event()).set()

    def run(self, run_id: str, models: ModelChoice, frames: list[np.ndarray], config: JobConfig, step: Pass,
            anchors: Anchors, rendered: RenderPasses | None = None) -> Iterator[Progress | Frame | Recorded]:
        """Runs one pass of a plan (``LocalRunner``; ``rendered``: the clip's render passes, read from the
        job's folder) and streams its messages: Progress of its own steps, a Frame per key and, for a pass that
        records, Recorded last."""
        from fresco_backend.denoise import StepClock
        from fresco_backend.translate import LocalRunner

        cancel = self.cancels.setdefault(run_id, threading.Event())
        # The driver frees this worker's slot as soon as it stops reading a cancelled pass, which may still be
        # finishing its step here: the next pass shares the pipeline (its attention processors, its LoRAs)
        # and waits for it.
        with self.running:
            pipe = self.warm.get(models, config.loras, config.style)  # the same warm swap as the server's
            items: queue.Queue[Progress | Frame | Recorded | Done | Failed] = queue.Queue()
            steps = config.sampling.executed_steps
            clock = StepClock(len(step.batches) * steps, items.put, cancel, steps_per_batch=steps)

            def body() -> None:
                try:
                    runner = LocalRunner(pipe, frames, config, clock, self.cache, rendered=rendered)
                    for message in runner.run([step], anchors):
                        items.put(message)
                    items.put(Done(step.name))
                except BaseException as exc:  # noqa: BLE001 - handed to the caller below
                    items.put(Failed(exc))

            worker = threading.Thread(target=body, name=step.name, daemon=True)
            worker.start()
            try:
                while True:
                    item = items.get()
                    if isinstance(item, Done):
                        return
                    if isinstance(item, Failed):
                        raise item.error
                    yield item
            finally:
                cancel.set()  # the caller stopped reading: stop the pass too, and wait until it has
                worker.join()
                self.cancels.pop(run_id, None)


@ray.remote(num_cpus=0)  # light; and the workers may hold every CPU of the cluster
def propagate_span(frames: list[np.ndarray], first: int, last: int, out_first: np.ndarray, out_last: np.ndarray,
                   config: JobConfig, rendered: RenderPasses | None = None) -> Spanned:
    """The frames between two keys, from their outputs (a CPU task, on one thread: many run at once)."""
    from fresco_backend.threads import pin_threads
    from fresco_backend.translate import job_estimator, propagate_frames

    pin_threads(1)
    return Spanned(propagate_frames(frames, first, last, out_first, out_last, job_estimator(config), rendered))


@dataclass
class Slot:
    """One worker of the pool and the job run holding it (None: idle)."""

    index: int
    actor: Any
    device: str
    run: str | None = None


class RayPool:
    """The workers and the scheduler sharing them between job runs."""

    def __init__(self, workers: int | None, models: tuple[str, Mapping[str, str]], device: str | None = None,
                 load_options: Mapping[str, Any] | None = None, *, segments: int | None = None,
                 address: str | None = None, threads: int | None = None, conditions_dir: Path | None = None,
                 runtime_env: dict[str, Any] | None = None,
                 annotators: str | None = None, temp_dir: Path | None = None) -> None:
        """``workers``: None for one per GPU Ray sees, else one per CPU; ``segments``: the segments of
        a job (default: one per worker); ``address``: a Ray cluster (None: a ``LocalRuntime`` started
        here in ``temp_dir``, default a new temp folder, and stopped by ``shutdown``); ``threads``: torch
        threads of each CPU worker; ``models``: the default model and the ControlNet of each control kind
        ({kind: ref}, over the defaults). Where Ray is already initialised, its runtime is used.
        PoolStartError where the runtime or the workers cannot be started."""
        self._runtime: LocalRuntime | None = None
        self._joined = False
        if not ray.is_initialized() and address is None:
            self._runtime = LocalRuntime(temp_dir or Path(tempfile.mkdtemp(prefix="fresco-ray-")),
                                         max(os.cpu_count() or 1, workers) if workers else None, runtime_env)
        elif not ray.is_initialized():
            join_cluster(address, runtime_env)
            self._joined = True
        gpus = int(ray.cluster_resources().get("GPU", 0))
        use_gpu = gpus > 0 and (device is None or not device.startswith("cpu"))
        self.size = workers or gpus or int(ray.cluster_resources().get("CPU", 1))
        self.segments = segments or self.size
        # how jobs are cut into batches, for their checkpoints (fresco_backend/job.py CheckpointStore)
        self.checkpoint_plan = f"segments:{self.segments}" if self.segments > 1 else ""
        self.default_models = models
        self._args = (None if use_gpu else device, dict(load_options or {}), None if use_gpu else threads,
                      None if conditions_dir is None else str(conditions_dir), annotators)
        self._resources = {"num_gpus": 1} if use_gpu else {"num_cpus": 1}
        self._cond = threading.Condition()
        self._waiting: list[tuple[int, str]] = []  # (ticket, run) of runs waiting for a worker
        self._tickets = itertools.count()
        self._closed = False
        actors = [self._new_actor() for _ in range(self.size)]
        try:
            loaded, _ = ray.wait([a.describe.remote() for a in actors], num_returns=self.size, timeout=STARTUP)
            devices = ray.get(loaded) if len(loaded) == self.size else None
        except rex.RayError as exc:
            self.shutdown()
            raise PoolStartError(f"the Ray workers could not load the model: {exc}") from None
        if devices is None:
            self.shutdown()
            raise PoolStartError(f"only {len(loaded)} of {self.size} Ray workers started within {STARTUP:.0f} s: each "
                               f"needs {self._resources} free in the cluster ({ray.available_resources()})")
        self.slots = [Slot(i, a, d) for i, (a, d) in enumerate(zip(actors, devices))]  # the workers, in order
        log.info("Ray pool: %d workers on %s, %d segments a job", self.size, ", ".join(devices), self.segments)

    def _new_actor(self) -> Any:
        return Worker.options(**self._resources).remote(choose_models(JobConfig(), *self.default_models),
                                                        *self._args)

    # ---- scheduling ------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The workers for /v1/health: count, and each one's device and state."""
        with self._cond:
            return {"count": len(self.slots), "segments": self.segments,
                    "workers": [{"device": s.device, "state": "busy" if s.run else "idle"} for s in self.slots]}

    def acquire(self, run: str, stop: threading.Event) -> Slot:
        """A free worker for ``run``, once it is the waiting run holding the fewest workers (then the
        one that waited longest); Cancelled when ``stop`` is set first."""
        ticket = (next(self._tickets), run)
        with self._cond:
            self._waiting.append(ticket)
            try:
                while True:
                    if stop.is_set() or self._closed:
                        raise Cancelled("job cancelled")
                    free = [s for s in self.slots if s.run is None]
                    if free and min(self._waiting, key=self._priority) == ticket:
                        free[0].run = run
                        self._cond.notify_all()
                        return free[0]
                    self._cond.wait(POLL)
            finally:
                self._waiting.remove(ticket)

    def _priority(self, ticket: tuple[int, str]) -> tuple[int, int]:
        return sum(s.run == ticket[1] for s in self.slots), ticket[0]

    def release(self, slot: Slot, lost: bool) -> None:
        """Give a worker back; a lost one is replaced by a new actor (it loads the model first)."""
        with self._cond:
            if lost and not self._closed:
                ray.kill(slot.actor, no_restart=True)
                slot.actor = self._new_actor()
            slot.run = None
            self._cond.notify_all()

    def cancel(self, run: str) -> None:
        """Stop the passes of ``run`` running on workers, within a denoising step."""
        with self._cond:
            for slot in self.slots:
                if slot.run == run:
                    slot.actor.cancel.remote(run)

    def shutdown(self) -> None:
        """Kill the workers; stop the Ray runtime this pool started, or leave the cluster it joined."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            for slot in getattr(self, "_slots", []):
                ray.kill(slot.actor, no_restart=True)
        if self._runtime is not None:
            self._runtime.stop()
        elif self._joined and ray.is_initialized():
            ray.shutdown()

    # ---- jobs --------------------------------------------------------------------

    def translate(self, frames: Sequence[np.ndarray], config: JobConfig,
                  on_progress: Callable[[Progress], None] | None = None, cancel: threading.Event | None = None,
                  checkpoint: Checkpoint | None = None, keys_only: bool = False,
                  kept: Mapping[int, np.ndarray] | None = None, rendered: RenderPasses | None = None,
                  cuts: Sequence[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """The server's translator (``server/jobs.py`` Translator) on the pool: like
        ``fresco_backend.translate.translate_frames`` without a pipeline (the workers hold theirs); yields every
        frame the checkpoint does not hold yet, once (``keys_only``: the keys alone; ``kept``: a redo's;
        ``rendered``: the clip's render passes; ``cuts``: its shot cuts, None: found here where the job looks
        for them). With cuts, every shot is a segment of its own (``fresco_backend/plan.py``)."""
        config = require(config)
        frames = [np.asarray(f) for f in frames]
        kept = CheckedKeys(kept, frames[0].shape) if kept else None
        runner = RayRunner(self, frames, config, on_progress, cancel or threading.Event(), rendered)
        plan = job_plan(frames, config, keys_only, kept, self.segments, cuts)
        try:
            yield from composited(execute(plan, runner, checkpoint or Checkpoint(), kept), frames,
                                  region_of(config, rendered), kept or ())
        finally:
            runner.close()


class RayRunner:
    """Runs one job's plan on the pool (``executor.Runner``): each pass on a free worker, passes in
    parallel, a span as a CPU task; one progress for the job, summed over its passes."""

    def __init__(self, pool: RayPool, frames: list[np.ndarray], config: JobConfig,
                 on_progress: Callable[[Progress], None] | None, cancel: threading.Event,
                 rendered: RenderPasses | None = None) -> None:
        self.pool, self.config, self.on_progress, self.cancel = pool, config, on_progress, cancel
        self.rendered = rendered
        self.id = uuid.uuid4().hex
        self.models = choose_models(config, *pool.default_models)
        self.frames = ray.put(frames)
        self.messages: queue.Queue[Progress | Frame | Recorded | Done | Failed] = queue.Queue()
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.spans: dict[Any, tuple[int, int]] = {}  # propagation tasks running
        self.lock = threading.Lock()
        self.progress: dict[str, tuple[int, int]] = {}  # (done, total) of each pass's own steps
        self.first_timed: tuple[float, int] | None = None  # (when, steps done) at the first finished step

    def run(self, passes: Sequence[Pass], anchors: Anchors,
            checkpoint: Checkpoint | None = None) -> Iterator[Frame | Recorded | Spanned]:
        """The passes run whole on workers (a resumed job reruns an unfinished pass from its start, and
        so does a worker lost); ``checkpoint`` is not needed."""
        anchors_ref = ray.put(anchors)
        running = {step.name for step in passes}
        for step in passes:
            thread = threading.Thread(target=self._task, args=(step, anchors_ref), name=f"ray-{step.name}",
                                      daemon=True)
            thread.start()
            self.threads.append(thread)
        while running or self.spans:
            self._check_cancel()
            if self.spans:
                ready, _ = ray.wait(list(self.spans), num_returns=len(self.spans), timeout=0 if running else POLL)
                for ref in ready:
                    del self.spans[ref]
                    yield ray.get(ref)
            if not running:
                continue
            try:
                item = self.messages.get(timeout=POLL)
            except queue.Empty:
                continue
            if isinstance(item, Progress):
                self._report(item)
            elif isinstance(item, Done):
                running.discard(item.name)
            elif isinstance(item, Failed):
                raise item.error
            else:
                yield item

    def propagate(self, first: int, last: int, out_first: np.ndarray,
                  out_last: np.ndarray) -> list[tuple[int, np.ndarray]]:
        self.spans[propagate_span.remote(self.frames, first, last, out_first, out_last, self.config,
                                           self.rendered)] = first, last
        return []  # its frames come as a Spanned message of ``run``

    def close(self) -> None:
        """Stop every pass of the job still running and wait for their threads."""
        self.stop.set()
        self.pool.cancel(self.id)
        for thread in self.threads:
            thread.join(60.0)

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Cancelled("job cancelled")

    def _report(self, progress: Progress) -> None:
        """One pass's progress as the job's: steps summed over its passes, the time left from them all."""
        if self.on_progress is None:
            return
        with self.lock:
            done, total = (sum(p[i] for p in self.progress.values()) for i in (0, 1))
        self.on_progress(Progress(progress.stage, done, total, self._eta(done, total), progress.seconds_per_step))

    def _eta(self, done: int, total: int) -> float | None:
        """Seconds left at the rate all workers together have finished steps since the first one."""
        now = time.monotonic()
        if self.first_timed is None:
            if done:
                self.first_timed = now, done
            return None
        since, at = self.first_timed
        return (now - since) / (done - at) * max(total - done, 0) if done > at else None

    def _task(self, step: Pass, anchors_ref: Any) -> None:
        """Run one pass on a worker, again on another when its worker is lost."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                slot = self.pool.acquire(self.id, self.stop)
            except Cancelled:
                return
            lost = False
            try:
                log.info("run %s: %s on worker %d (attempt %d)", self.id, step.name, slot.index, attempt)
                stream = slot.actor.run.options(num_returns="streaming").remote(
                    self.id, self.models, self.frames, self.config, step, anchors_ref, self.rendered)
                for ref in stream:
                    item = ray.get(ref)
                    if self.stop.is_set():  # cancel() may have found this slot already free: stop the pass here
                        slot.actor.cancel.remote(self.id)
                        return
                    if isinstance(item, Progress):
                        with self.lock:
                            self.progress[step.name] = item.done, item.total
                    self.messages.put(item)
                self.messages.put(Done(step.name))
                return
            except LOST as exc:
                lost = True
                log.warning("run %s: worker %d lost during %s (attempt %d): %s", self.id, slot.index, step.name,
                            attempt, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            except rex.RayTaskError as exc:
                if not self.stop.is_set():
                    self.messages.put(Failed(exc.as_instanceof_cause()))
                return
            except Exception as exc:  # noqa: BLE001 - the job fails with it
                self.messages.put(Failed(exc))
                return
            finally:
                self.pool.release(slot, lost)
        self.messages.put(Failed(RuntimeError(f"the workers running {step.name} died {ATTEMPTS} times; "
                                              f"see the server log")))
