"""``deltatune train CONFIG --ray``: the same run on a Ray cluster, through Ray Train's ``TorchTrainer``.

One job: build and run the ``TorchTrainer`` (docs/distributed.md, "Ray"). Each Ray Train worker
runs :func:`deltatune.api.finetune` exactly as a ``torchrun`` process does: Ray Train forms the
torch process group (gloo on CPU workers, NCCL on GPU workers) and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` and ``ACCELERATE_TORCH_DEVICE``
in every worker, which Accelerate's ``PartialState`` and
:func:`deltatune.training.distributed.world_size` read, so ``distributed.strategy`` (``ddp``,
``fsdp``) works unchanged. The run directory (``output_dir``, on storage every worker sees) is
written by deltatune as usual; Ray's own storage (``RunConfig(storage_path=...)``) only holds
Ray's small bookkeeping files (no model state; no Ray checkpoint is ever reported), in
``<parent of output_dir>/.deltatune-ray/`` by default, removed after the run.

Fault tolerance: ``FailureConfig(max_failures=N)``. When a worker dies (or raises anything but a
:class:`DeltatuneError`), Ray Train restarts the whole worker group; the restarted group resumes
from the run directory's newest complete checkpoint (as ``deltatune train --resume``), or starts
the run again when none was written yet. A :class:`DeltatuneError` (bad data, a refused strategy)
is no failure to retry: it comes back to the driver, which prints its one line.

Ctrl-C (SIGINT) in the driver asks every worker, through a small Ray actor, to stop after the
same optimizer step: they save the interrupt checkpoint as under ``torchrun`` and the command
exits 130; a second Ctrl-C abandons them.

Ray is imported lazily: :func:`check_ray_available` is torch-free and Ray-free.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from deltatune.errors import DeltatuneError

RAY_MISSING = "--ray needs Ray: pip install 'deltatune[ray]'"
DEVICES = ("auto", "cpu", "gpu")
STORAGE_FOLDER = ".deltatune-ray"


def check_ray_available() -> None:
    """Refuse ``--ray`` when Ray Train is not installed (no import: neither Ray nor torch is loaded).

    Raises:
        DeltatuneError: ``ray`` cannot be found (exit status 2).
    """
    try:
        found = importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise DeltatuneError(RAY_MISSING)


@dataclass
class RayOptions:
    """How to run on Ray (the ``--ray`` flags of ``deltatune train``).

    Attributes:
        num_workers: Ray Train workers (processes); the global batch is
            ``per_device_train_batch_size * num_workers * gradient_accumulation_steps``.
        address: the cluster to join (``ray.init(address=...)``: ``ray://host:10001``,
            ``host:6379``, ``auto``); ``None``: the cluster named by ``RAY_ADDRESS`` (as under
            ``ray job submit``), else a new local one on this machine.
        device: ``cpu`` (gloo), ``gpu`` (one GPU per worker, NCCL) or ``auto`` (GPU when the
            cluster has at least ``num_workers`` GPUs).
        max_failures: worker-group restarts Ray Train makes after failures (0: none).
        storage_path: Ray's own storage (``RunConfig(storage_path=...)``); ``None``:
            ``<parent of output_dir>/.deltatune-ray``.
    """

    num_workers: int = 2
    address: Optional[str] = None
    device: str = "auto"
    max_failures: int = 3
    storage_path: Optional[str] = None


def _resolved_config(source: Any, overrides: list[str], resume: bool):
    """The run's config as the workers will build it (torch-free).

    Raises:
        DeltatuneError: as :func:`deltatune.config.build_config`.
    """
    from deltatune.config import build_config

    if resume and isinstance(source, (str, Path)) and Path(source).is_dir():
        return build_config(Path(source) / "config.yaml", [*overrides, f"output_dir={Path(source)}"])
    return build_config(source, overrides)


def check_workers(strategy: str, num_workers: int) -> None:
    """The launch refusals that need no worker: what :func:`deltatune.training.loop.check_launch`
    would raise in every worker, found before Ray starts.

    Raises:
        DeltatuneError: ``distributed.strategy fsdp`` on one worker.
    """
    if strategy == "fsdp" and num_workers < 2:
        raise DeltatuneError(
            "distributed.strategy fsdp shards the model over several processes, and --num-workers is 1 (it would run "
            "unsharded); give --num-workers 2 or more, or set distributed.strategy ddp"
        )


class _Control:
    """A Ray actor shared by the driver and the workers: each worker's attempt number (0 for the
    first start, 1 after the first restart, ...) and the driver's stop request (Ctrl-C)."""

    def __init__(self) -> None:
        self.starts: dict[int, int] = {}
        self.stop = False

    def start(self, rank: int) -> int:
        n = self.starts.get(rank, 0)
        self.starts[rank] = n + 1
        return n

    def request_stop(self) -> None:
        self.stop = True

    def stop_requested(self) -> bool:
        return self.stop


def check_ray_run(source: Any, overrides: list[str], options: RayOptions, resume: bool = False):
    """Everything that can be refused before Ray starts and before torch is imported; the run's config.

    Args:
        source, overrides, resume: as :func:`run_on_ray`.
        options: the Ray flags.

    Returns:
        the resolved :class:`deltatune.config.RunConfig`.

    Raises:
        DeltatuneError: Ray missing; Ray Train v1 asked for (``RAY_TRAIN_V2_ENABLED=0``); a config
            error; ``distributed.strategy fsdp`` on one worker.
    """
    check_ray_available()
    if os.environ.get("RAY_TRAIN_V2_ENABLED", "1").strip().lower() in ("0", "false"):
        raise DeltatuneError("deltatune train --ray needs Ray Train v2 (it reads the workers' outcome from it); unset RAY_TRAIN_V2_ENABLED")
    cfg = _resolved_config(source, overrides, resume)
    check_workers(cfg.distributed.strategy, options.num_workers)
    return cfg


def run_on_ray(
    source: Any,
    overrides: list[str],
    options: RayOptions,
    *,
    train: Callable[..., Any],
    resume: bool = False,
    overwrite: bool = False,
    strict: bool = False,
    trust_checkpoint: bool = False,
    trust_remote_code: Optional[bool] = None,
    allow_pickle_weights: Optional[bool] = None,
) -> int:
    """Run :func:`deltatune.api.finetune` on ``options.num_workers`` Ray Train workers; the exit status.

    Args:
        source, overrides: the config as ``deltatune train`` takes it (already checked by the CLI);
            with ``resume`` ``source`` may be the run directory.
        options: the cluster, the workers, the restarts (:class:`RayOptions`).
        train: :func:`deltatune.api.finetune` (a layer above this one, hence an argument), run in
            every worker; it must be importable there (Ray sends it by reference).
        resume, overwrite, strict, trust_checkpoint, trust_remote_code, allow_pickle_weights: as
            :func:`deltatune.api.finetune` (the first attempt; a restarted worker group resumes).

    Returns:
        0 when the run finished, 130 when it was interrupted (Ctrl-C; it resumes with
        ``deltatune train --resume RUN --ray``).

    Raises:
        DeltatuneError: Ray missing; a config error or ``fsdp`` on one worker (before Ray starts);
            ``--ray-device gpu`` on a cluster without enough GPUs; the one line of a
            :class:`DeltatuneError` raised in the workers; the run still failing after
            ``max_failures`` restarts (exit status 1; the run folder keeps its checkpoints).
        KeyboardInterrupt: a second Ctrl-C while the workers were stopping.
    """
    cfg = check_ray_run(source, overrides, options, resume)
    run_root = Path(cfg.output_dir).resolve()
    storage = Path(options.storage_path).resolve() if options.storage_path else run_root.parent / STORAGE_FOLDER
    name = f"{run_root.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"

    import ray

    started = _connect(ray, options)
    try:
        return _fit(ray, options, storage, name, {
            "train": train, "source": str(source) if isinstance(source, Path) else source, "overrides": list(overrides),
            "output_dir": str(run_root), "cwd": os.getcwd(), "resume": resume, "overwrite": overwrite, "strict": strict,
            "trust_checkpoint": trust_checkpoint, "trust_remote_code": trust_remote_code,
            "allow_pickle_weights": allow_pickle_weights,
            # a restart resumes, and on a resume only the arguments grant these (finetune): the config's own values
            "trust_remote_code_again": cfg.model.trust_remote_code, "allow_pickle_weights_again": cfg.model.allow_pickle_weights,
        }, started)
    finally:
        if started:
            ray.shutdown()
        with contextlib.suppress(OSError):
            shutil.rmtree(storage / name)
            storage.rmdir()  # only when no other run's folder is left in it


def _unreachable(address: str, timeout: float = 5.0) -> Optional[str]:
    """Why nothing answers at a ``host:port`` or ``ray://host:port`` cluster address (a TCP connect with
    ``timeout`` seconds), or None when something does or the address names no port (``auto``)."""
    import socket

    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except OSError as e:
        return f"nothing answers at {host}:{port}: {e.strerror or type(e).__name__}"


def _connect(ray, options: RayOptions) -> bool:
    """Join the cluster (``options.address``, ``RAY_ADDRESS``, or one already joined in this
    process), else start a local one; whether this call started it (to shut it down after).

    Raises:
        DeltatuneError: the cluster at the address cannot be joined.
    """
    if ray.is_initialized():
        return False
    if options.address or os.environ.get("RAY_ADDRESS"):
        where = options.address or os.environ["RAY_ADDRESS"]
        problem = _unreachable(where)
        if problem:  # ray.init retries an address nothing answers at for minutes
            raise DeltatuneError(
                f"cannot join the Ray cluster at {where} ({problem}); check --address (or RAY_ADDRESS) and that `ray status` works there"
            )
        try:
            ray.init(address=options.address, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise DeltatuneError(
                f"cannot join the Ray cluster at {where} ({first}); check --address (or RAY_ADDRESS) and that `ray status` "
                "works there (a cluster with token authentication needs its token here too)"
            ) from None
        return False
    # "local": a new cluster even when a `ray start` one runs on this machine (ray.init() would join it)
    ray.init(address="local", num_cpus=max(options.num_workers, os.cpu_count() or 1), include_dashboard=False, log_to_driver=True)
    return True


def _fit(ray, options: RayOptions, storage: Path, name: str, job: dict[str, Any], local: bool) -> int:
    """Build the ``TorchTrainer`` and wait for it; Ctrl-C asks the workers to stop (see the module)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    use_gpu = options.device == "gpu" or (options.device == "auto" and gpus >= options.num_workers)
    if use_gpu and gpus < options.num_workers:
        raise DeltatuneError(
            f"--ray-device gpu needs one GPU per worker: the cluster has {gpus} for --num-workers {options.num_workers}; "
            "lower --num-workers or use --ray-device cpu"
        )
    per_worker: dict[str, float] = {"CPU": 1}
    if local and not use_gpu:  # this machine's cores shared out (Ray sets OMP_NUM_THREADS to them)
        per_worker["CPU"] = max(1, int(resources.get("CPU", 1)) // options.num_workers)
    # Ray Train's print patch sends print() through a logger: every line twice, and the stdout captures of
    # libraries (dill's, under datasets' hashing) leak; Ray propagates this variable to the workers
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    control = ray.remote(num_cpus=0)(_Control).remote()
    storage.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={**job, "control": control},
        scaling_config=ScalingConfig(num_workers=options.num_workers, use_gpu=use_gpu, resources_per_worker=per_worker),
        run_config=RunConfig(name=name, storage_path=str(storage), failure_config=FailureConfig(max_failures=options.max_failures)),
    )
    box: dict[str, Any] = {}
    done = threading.Event()  # not Thread.join: a join interrupted by Ctrl-C can leave is_alive() false (CPython < 3.13)

    def fit() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=fit, name="deltatune-ray-fit", daemon=True).start()
    stopping = False
    while not done.is_set():
        try:
            done.wait(0.5)
        except KeyboardInterrupt:
            if stopping:
                raise
            stopping = True
            print("interrupt: asking the Ray workers to checkpoint and stop (interrupt again to abandon them)", file=sys.stderr, flush=True)
            control.request_stop.remote()
    if "error" in box:
        first = _failure_line(box["error"])
        err = DeltatuneError(
            f"Ray Train failed after {options.max_failures} restart(s) ({first}); {job['output_dir']} keeps its last checkpoint: "
            f"fix the cause, then continue with deltatune train --resume {job['output_dir']} --ray"
        )
        err.exit_code = 1
        raise err
    outcome = getattr(box["result"], "return_value", None) or {}  # the main worker's (Ray Train v2)
    if outcome.get("error"):
        err = DeltatuneError(outcome["error"])
        err.exit_code = outcome.get("exit_code", 2)
        raise err
    if outcome.get("interrupted"):
        print(f"interrupted at step {outcome.get('step')}; continue on Ray with: deltatune train --resume {job['output_dir']} --ray "
              f"--num-workers {options.num_workers}", flush=True)
        return 130
    return 0


def _failure_line(error: BaseException) -> str:
    """One line for a failed ``fit``: a worker that died if any (the others' errors are its echo,
    e.g. gloo's "Connection reset by peer"), else the first worker's exception (the last line of
    its traceback), else the error's own first line."""
    failures = getattr(error, "worker_failures", None) or {}
    if not failures:
        cause = getattr(error, "controller_failure", error)
        lines = [x.strip() for x in str(cause).splitlines() if x.strip()]
        return (lines[0] if lines else type(cause).__name__)[:300]
    rank = min(failures, key=lambda r: ("Died" not in type(failures[r]).__name__, r))
    cause = failures[rank]
    lines = [x.strip() for x in str(cause).splitlines() if x.strip()] or [type(cause).__name__]
    line = lines[-1] if type(cause).__name__.startswith("RayTaskError") else lines[0]
    return f"worker {rank}: {line[:300]}"


def _attempt_arguments(job: dict[str, Any], attempt: int) -> dict[str, Any]:
    """The arguments of :func:`deltatune.api.finetune` in this attempt: the user's on the first;
    after a restart, resume from the newest complete checkpoint of the run directory (written by
    the first attempt), else start the run again (``overwrite``: the folder holds only what the
    failed attempt wrote)."""
    keys = ("strict", "trust_checkpoint", "trust_remote_code", "allow_pickle_weights")
    args = {"config": job["source"], "overrides": job["overrides"], **{k: job[k] for k in keys}}
    if attempt == 0:
        return {**args, "resume": job["resume"], "overwrite": job["overwrite"]}
    from deltatune.training.checkpoint import list_checkpoints

    root = Path(job["output_dir"])
    if list_checkpoints(root / "checkpoints") or job["resume"]:
        return {**args, "config": str(root), "resume": True, "overwrite": False,
                "trust_remote_code": job["trust_remote_code_again"], "allow_pickle_weights": job["allow_pickle_weights_again"]}
    return {**args, "resume": False, "overwrite": root.exists()}


def _stop_when_asked(control, rank: int, finished: threading.Event):
    """A :class:`deltatune.training.Trainer` callback: after every optimizer step the main worker's
    answer to "did the driver ask to stop?" (polled by a thread until ``finished`` is set) is
    broadcast, and every worker raises ``KeyboardInterrupt`` after the same step (the loop then
    saves its interrupt checkpoint)."""
    import ray
    import torch
    import torch.distributed as dist

    asked = threading.Event()
    if rank == 0:
        def poll() -> None:
            while not asked.is_set() and not finished.wait(0.5):
                with contextlib.suppress(Exception):
                    if ray.get(control.stop_requested.remote(), timeout=10):
                        asked.set()

        threading.Thread(target=poll, name="deltatune-ray-stop", daemon=True).start()

    def callback(trainer, state) -> None:
        flag = torch.tensor([1 if asked.is_set() else 0], device=trainer.accelerator.device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast(flag, 0)
        if int(flag.item()):
            raise KeyboardInterrupt

    return callback


def _train_worker(job: dict[str, Any]) -> dict[str, Any]:
    """The Ray Train worker: ``job["train"]`` (:func:`deltatune.api.finetune`) as under ``torchrun``
    (Ray Train has formed the process group and set the launcher's environment variables).

    Returns:
        ``{"interrupted": bool, "path": str, "step": int}``, or ``{"error": line, "exit_code": n}``
        for a :class:`DeltatuneError` (not retried); the driver reads the main worker's.
    """
    import ray

    if os.path.isdir(job["cwd"]):  # Ray starts workers in its session folder: relative paths are the driver's
        os.chdir(job["cwd"])
    rank = int(os.environ.get("RANK", "0"))
    attempt = ray.get(job["control"].start.remote(rank))
    kwargs = _attempt_arguments(job, attempt)
    if attempt and rank == 0:
        how = f"resuming {job['output_dir']} from its last checkpoint" if kwargs["resume"] else "starting the run again (no checkpoint yet)"
        print(f"ray: worker group restarted (attempt {attempt + 1}): {how}", file=sys.stderr, flush=True)
    finished = threading.Event()
    try:
        run = job["train"](**kwargs, callbacks=(_stop_when_asked(job["control"], rank, finished),))
    except DeltatuneError as e:
        return {"error": str(e), "exit_code": e.exit_code}
    finally:
        finished.set()
    result = run.result
    return {"interrupted": bool(result and result.interrupted), "path": str(run.path), "step": result.global_step if result else 0}
