"""Atomic training checkpoints: each is complete or absent, and none needs pickle to load.

A checkpoint is a folder ``checkpoints/step-<N>/`` holding
- ``trainable.safetensors``: every trainable parameter (frozen ones equal the base model);
- ``optimizer.pt``, ``scheduler.pt``: their ``state_dict``s (tensors, numbers, lists, dicts);
- ``rng.pt``: python, numpy and torch (CPU and CUDA) generator states as tensors and plain
  values (see :func:`capture_rng_state`);
- ``trainer_state.json``: step, epoch, position in the epoch, best metric, early-stopping state,
  and ``checkpoint_format`` (:data:`CHECKPOINT_FORMAT`).
A checkpoint of a sharded (FSDP) run holds ``sharded/`` instead of ``trainable.safetensors``
and ``optimizer.pt``: the trainable parameters and the optimizer state as
``torch.distributed.checkpoint`` (DCP) wrote them, one file per process plus ``.metadata``
(tensors only, read back without pickle of any object but DCP's own metadata). Every process
writes its shards into ``checkpoints/.shard-step-<N>/`` (:func:`save_sharded`); the main process
then moves that folder into the temporary checkpoint folder with the other files and renames the
whole into place, so a sharded checkpoint too is complete or absent. DCP reshards on load, so such
a checkpoint can be read by a launch of any number of processes (the loop itself resumes with the
same number, as the global batch depends on it).
A checkpoint of a DeepSpeed run (``distributed.strategy: deepspeed``) holds ``deepspeed/``
instead: the folder ``engine.save_checkpoint`` wrote (every process's ZeRO partitions of the
model and optimizer state, staged and moved in as sharded ones are;
:mod:`deltatune.training.deepspeed_engine`). DeepSpeed reads its files with pickle, so such a
checkpoint is resumed only on the user's word (``--trust-checkpoint``), as format 1 is.
The ``.pt`` files are read with ``torch.load(weights_only=True)``: a file that needs any other
Python object (a crafted pickle) is refused before it can run code. Checkpoints of format 1
(older deltatune, no ``checkpoint_format``) kept python/numpy RNG states as pickled tuples
and numpy arrays; they are refused (:class:`UntrustedCheckpointError`) unless the caller opts in
(``deltatune train --resume RUN --trust-checkpoint``), and even then are read with
``weights_only=True`` allowing numpy arrays only: no pickle from a run folder ever runs code.

A checkpoint is written to a hidden temporary folder next to it and renamed into place, so an
interrupted save (Ctrl-C, ``kill -9``, a full disk) leaves no half-written checkpoint and never
touches the older ones; only after the new one is complete are all but the newest ``keep``
removed. A failed write ends in a one-line :class:`DeltatuneError` naming the folder.

Test hook (tests only): with ``DELTATUNE_TEST_CHECKPOINT_PAUSE="<step>:<seconds>"`` in the
environment, the save of step ``<step>`` sleeps ``<seconds>`` after writing its first file into
the temporary folder, so a test can kill the process in the middle of a checkpoint write.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from deltatune import files
from deltatune.errors import DeltatuneError
from deltatune.rundir import write_failure

CHECKPOINT_FORMAT = 2
"""Version of the checkpoint layout written by :func:`save_checkpoint` (1: pickled RNG states)."""

CHECKPOINT_FILES = ("trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json")
SHARDED_FILES = ("sharded/.metadata", "scheduler.pt", "rng.pt", "trainer_state.json")
DEEPSPEED_FILES = ("deepspeed/latest", "scheduler.pt", "rng.pt", "trainer_state.json")
TRAINER_STATE_KEYS = ("global_step", "epoch", "batch_in_epoch", "examples_seen", "total_steps")
PAUSE_ENV = "DELTATUNE_TEST_CHECKPOINT_PAUSE"

_STEP_RE = re.compile(r"^step-(\d+)$")
_LEFTOVER_RE = re.compile(r"^\.(tmp|old|del)-step-(\d+)$")
_STAGING_RE = re.compile(r"^\.shard-step-(\d+)$")


class CheckpointError(DeltatuneError):
    """A checkpoint that cannot be used: a file missing, truncated, invalid, or not tensors-only.

    Resume warns and falls back to the previous checkpoint on this error.
    """


class UntrustedCheckpointError(DeltatuneError):
    """A format-1 checkpoint (older deltatune): its RNG file holds numpy arrays, read only on the user's word."""


def capture_rng_state() -> dict[str, Any]:
    """Snapshot of every random generator the loop uses, as tensors and plain values.

    Returns:
        ``{"python": {"version": int, "state": int64 tensor [625], "gauss": float | None},
        "numpy": {"bit_generator": str, "key": int64 tensor [624], "pos": int, "has_gauss": int,
        "cached_gaussian": float}, "torch": uint8 tensor, "cuda": [uint8 tensor per device]}``
        (``cuda`` only where CUDA is available). ``torch.save`` of it loads back with
        ``torch.load(weights_only=True)``.
    """
    state = _rng_as_tensors(random.getstate(), np.random.get_state(legacy=True), torch.get_rng_state())
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _rng_as_tensors(python_state: tuple, numpy_state: tuple, torch_state: torch.Tensor) -> dict[str, Any]:
    """``random.getstate()`` and legacy ``np.random.get_state()`` tuples as tensors and plain values."""
    version, internal, gauss = python_state
    name, key, pos, has_gauss, cached = numpy_state
    return {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "bit_generator": str(name),
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch_state,
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put generators back to a :func:`capture_rng_state` snapshot.

    Raises:
        ValueError: ``state`` is not such a snapshot (see :func:`check_rng_state`).
    """
    check_rng_state(state)
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    key = npy["key"].numpy().astype(np.uint32)
    np.random.set_state((npy["bit_generator"], key, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_rng_state(state: Any) -> None:
    """Check the structure of a :func:`capture_rng_state` snapshot.

    Raises:
        ValueError: a key is missing or has the wrong type or shape (the message names it).
    """
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"RNG state: {what}")

    need(isinstance(state, dict), "not a dict")
    py, npy = state.get("python"), state.get("numpy")
    need(isinstance(py, dict) and isinstance(py.get("version"), int), "python.version missing")
    need(isinstance(py.get("state"), torch.Tensor) and py["state"].shape == (625,), "python.state is not 625 integers")
    need(py.get("gauss") is None or isinstance(py["gauss"], float), "python.gauss is not a float")
    need(isinstance(npy, dict) and isinstance(npy.get("bit_generator"), str), "numpy.bit_generator missing")
    need(isinstance(npy.get("key"), torch.Tensor) and npy["key"].shape == (624,), "numpy.key is not 624 integers")
    need(all(isinstance(npy.get(k), int) for k in ("pos", "has_gauss")), "numpy.pos/has_gauss missing")
    need(isinstance(npy.get("cached_gaussian"), float), "numpy.cached_gaussian missing")
    need(isinstance(state.get("torch"), torch.Tensor) and state["torch"].dtype == torch.uint8, "torch state missing")
    need(all(isinstance(t, torch.Tensor) for t in state.get("cuda", [])), "cuda states are not tensors")


def _rng_from_format1(state: Any) -> dict[str, Any]:
    """Convert a format-1 snapshot (pickled ``random.getstate()`` / ``np.random.get_state()`` tuples)."""
    if isinstance(state, dict) and "per_process" in state:
        return {"per_process": [_rng_from_format1(s) for s in state["per_process"]]}
    if not isinstance(state, dict):
        raise ValueError("RNG state: not a dict")
    out = _rng_as_tensors(state["python"], state["numpy"], state["torch"])
    if "cuda" in state:
        out["cuda"] = list(state["cuda"])
    return out


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached CPU copies of the trainable parameters, by name (shared tensors listed once)."""
    return {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy saved trainable parameters into ``model`` in place.

    Raises:
        KeyError: a trainable parameter of ``model`` is missing from ``tensors``.
    """
    params = dict(model.named_parameters())
    for name, p in params.items():
        if p.requires_grad and name not in tensors:
            raise KeyError(f"checkpoint lacks trainable parameter {name}")
    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(t.to(params[name].device, params[name].dtype))


def write_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write ``tensors`` to the safetensors file ``path`` (the one place checkpoints write tensors).

    Raises:
        OSError, SafetensorError: the file cannot be written (read-only folder, full disk).
    """
    save_file(tensors, str(path))


def write_state(obj: Any, path: Path) -> None:
    """``torch.save`` ``obj`` (tensors and plain values) to ``path`` through a Python file.

    ``torch.save`` to a path reports a full disk as a ``RuntimeError`` from its zip writer;
    through a file object it is the ``OSError`` (``ENOSPC``) that the caller can explain.

    Raises:
        OSError: the file cannot be written.
    """
    with open(path, "wb") as f:
        torch.save(obj, f)


def _pause_for_tests(step: int) -> None:
    spec = os.environ.get(PAUSE_ENV, "")
    if spec.partition(":")[0] == str(step):
        time.sleep(float(spec.partition(":")[2] or 60))


def _clean_leftovers(folder: Path) -> None:
    """Remove what an interrupted save or prune left (``.tmp-``/``.del-step-*``); put back an ``.old-step-*``
    whose replacement never arrived."""
    for p in folder.iterdir():
        m = _LEFTOVER_RE.match(p.name)
        if not m:
            continue
        final = folder / f"step-{m.group(2)}"
        if m.group(1) == "old" and not final.exists():
            p.rename(final)
        else:
            shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(
    folder: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict[str, Any],
    rng_state: dict[str, Any],
    keep: int,
    sharded: Path | None = None,
    sharded_as: str = "sharded",
) -> Path:
    """Write checkpoint ``folder/step-<step>`` atomically and prune to the newest ``keep``.

    Args:
        folder: the run's ``checkpoints/`` folder (made if missing).
        rng_state: a :func:`capture_rng_state` snapshot, or ``{"per_process": [snapshot, ...]}``.
        keep: how many complete checkpoints to keep (>= 1); older ones are removed only after
            the new one is in place.
        sharded: the folder :func:`save_sharded` wrote (parameters and optimizer state of a sharded
            model): moved in as ``sharded/`` instead of writing ``trainable.safetensors`` and
            ``optimizer.pt`` (``model`` and ``optimizer`` are then not read).
        sharded_as: the name ``sharded`` gets in the checkpoint: ``sharded`` (DCP, FSDP) or
            ``deepspeed`` (``engine.save_checkpoint``'s folder).

    Returns:
        The checkpoint's path.

    Raises:
        DeltatuneError: the checkpoint cannot be written (read-only folder, full disk, a file in
            the way); the temporary folder is removed and the older checkpoints are untouched.
    """
    final = folder / f"step-{step:08d}"

    def write(tmp: Path) -> None:
        if sharded is not None:
            sharded.rename(tmp / sharded_as)
            _pause_for_tests(step)
        else:
            write_tensors(trainable_state(model), tmp / "trainable.safetensors")
            _pause_for_tests(step)
            write_state(optimizer.state_dict(), tmp / "optimizer.pt")
        write_state(scheduler.state_dict(), tmp / "scheduler.pt")
        write_state(rng_state, tmp / "rng.pt")
        state = {**trainer_state, "checkpoint_format": CHECKPOINT_FORMAT}
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))

    try:
        folder.mkdir(parents=True, exist_ok=True)
        _clean_leftovers(folder)
        # .tmp-step-N, then swapped in; the same step saved again (an interrupt right after a
        # periodic save) replaces the older copy only once the new one is complete
        files.replace_dir_atomically(write, final)
    except (OSError, SafetensorError) as e:
        raise write_failure(
            final, e, f"then continue from the last complete checkpoint with: deltatune train --resume {folder.parent}"
        ) from e
    for old in list_checkpoints(folder)[:-keep]:
        gone = folder / f".del-{old.name}"
        try:
            old.rename(gone)  # never a half-deleted folder under a checkpoint's name
        except OSError:
            continue
        shutil.rmtree(gone, ignore_errors=True)
    return final


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint folders ``step-<N>`` in ``folder``, oldest first (temporary folders excluded)."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _STEP_RE.match(p.name))]
    return [p for _, p in sorted(found)]


@dataclass
class CheckpointContents:
    """Everything read from one checkpoint, checked, before any of it is applied.

    Attributes:
        path: the checkpoint folder.
        trainable: trainable parameters by name (CPU tensors, saved dtype).
        optimizer, scheduler: ``state_dict``s.
        trainer_state: trainer_state.json (``global_step``, ``epoch``, ``batch_in_epoch``,
            ``examples_seen``, ``total_steps``, ``early_stopping``, ``train_seconds`` (training time up to
            this step over every launch; absent before 0.x checkpoints), ...).
        rng: a :func:`capture_rng_state` snapshot or ``{"per_process": [snapshot, ...]}``.
    """

    path: Path
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    trainer_state: dict[str, Any]
    rng: dict[str, Any]
    sharded: Path | None = None  # the DCP folder of a sharded checkpoint (``trainable``/``optimizer`` then empty)
    deepspeed: Path | None = None  # the DeepSpeed folder of a DeepSpeed checkpoint (``trainable``/``optimizer`` then empty)


def _format1_numpy_globals() -> list[Any]:
    """The numpy classes a format-1 RNG file needs (``np.random.get_state()`` holds a uint32 array):
    the only globals :func:`_load_tensors_file` allows beyond torch's tensors and plain values."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return [np.ndarray, np.dtype, _reconstruct, type(np.dtype(np.uint32))]


def _load_tensors_file(path: Path, allow_pickle: bool) -> Any:
    """``torch.load`` with ``weights_only=True``, which never runs code from the file.

    Args:
        allow_pickle: also accept numpy arrays (:func:`_format1_numpy_globals`), which format-1
            RNG files hold; no other Python object is ever unpickled.

    Raises:
        CheckpointError: the file is truncated or corrupt, or holds other Python objects.
    """
    allowed = _format1_numpy_globals() if allow_pickle else []
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(allowed):
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")  # reported as our own one line
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower() and "weights_only" not in str(e).lower():
            raise CheckpointError(f"{path} is truncated or corrupt ({_first_line(e)})") from e
        raise CheckpointError(
            f"{path} holds Python objects beyond tensors, which would run code when loaded: refused "
            "(a deltatune checkpoint holds tensors only)"
        ) from e
    except Exception as e:  # truncated zip, empty file, unreadable
        raise CheckpointError(f"{path} is truncated or corrupt ({_first_line(e)})") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    if not text:
        return type(e).__name__
    line = text.splitlines()[0]
    return f"{type(e).__name__}: {line if len(line) <= 200 else line[:197] + '...'}"


def read_checkpoint(path: Path, trust: bool = False) -> CheckpointContents:
    """Read and check every file of checkpoint ``path``; nothing is changed.

    Args:
        trust: the user opts in to a format-1 checkpoint (``--trust-checkpoint``): its RNG file is
            read allowing numpy arrays too (still ``weights_only=True``; any other object is
            refused). Format-2 files never need it.

    Raises:
        CheckpointError: a file is missing, truncated or invalid, or holds more than tensors
            and plain values (a crafted pickle is refused without being run).
        UntrustedCheckpointError: a format-1 checkpoint and ``trust`` is false.
    """
    is_deepspeed = (path / "deepspeed").is_dir()
    is_sharded = (path / "sharded").is_dir() or is_deepspeed
    needed = DEEPSPEED_FILES if is_deepspeed else SHARDED_FILES if is_sharded else CHECKPOINT_FILES
    missing = [n for n in needed if not (path / n).is_file()]
    if missing:
        raise CheckpointError(f"{path} is incomplete: {', '.join(missing)} missing")
    state_file = path / "trainer_state.json"
    try:
        state = json.loads(state_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{state_file} is not valid JSON ({_first_line(e)})") from e
    if (
        not isinstance(state, dict)
        or any(not isinstance(state.get(k), int) for k in TRAINER_STATE_KEYS)
        or not isinstance(state.get("early_stopping"), dict)
    ):
        raise CheckpointError(
            f"{state_file} lacks {', '.join(TRAINER_STATE_KEYS)} or early_stopping (not a deltatune trainer state)"
        )
    step = _STEP_RE.match(path.name)
    if (
        (step is not None and int(step.group(1)) != state["global_step"])
        or not 1 <= state["global_step"] <= state["total_steps"]
        or min(state["epoch"], state["batch_in_epoch"], state["examples_seen"]) < 0
        or state["epoch"] > state["global_step"]  # every epoch has at least one step
        or not isinstance(state.get("processes", 1), int)
        or state.get("processes", 1) < 1
    ):
        raise CheckpointError(
            f"{state_file} is inconsistent (global_step {state['global_step']} in folder {path.name}, of "
            f"{state['total_steps']} steps; epoch at most global_step, processes >= 1, batch_in_epoch and "
            "examples_seen >= 0)"
        )
    version = state.get("checkpoint_format", 1)
    if version not in (1, CHECKPOINT_FORMAT):
        raise CheckpointError(f"{path} has checkpoint_format {version!r}, unknown to this deltatune (made by a newer one?)")
    legacy = version == 1
    if legacy and not trust:
        raise UntrustedCheckpointError(
            f"{path} was written by an older deltatune whose checkpoints store RNG states as pickled numpy objects; "
            f"to accept them (numpy arrays only, nothing else is unpickled), resume {path.parent.parent} with --trust-checkpoint "
            "(Python: trust_checkpoint=True), else start a new run"
        )
    if is_deepspeed and not trust:
        raise UntrustedCheckpointError(
            f"{path} holds DeepSpeed's own checkpoint files, which DeepSpeed reads with pickle; if {path.parent.parent} "
            "is your own run, resume it with --trust-checkpoint (Python: trust_checkpoint=True)"
        )
    trainable, optimizer = _read_model_files(path, legacy, is_sharded)
    scheduler = _load_tensors_file(path / "scheduler.pt", allow_pickle=legacy)
    rng = _load_tensors_file(path / "rng.pt", allow_pickle=legacy)
    try:
        if legacy:
            rng = _rng_from_format1(rng)
        for snapshot in rng["per_process"] if isinstance(rng, dict) and "per_process" in rng else [rng]:
            check_rng_state(snapshot)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path / 'rng.pt'} is not a generator-state file ({_first_line(e)})") from e
    for name, value in (("optimizer.pt", optimizer), ("scheduler.pt", scheduler)):
        if not isinstance(value, dict):
            raise CheckpointError(f"{path / name} is not a state_dict")
    if is_deepspeed:
        return CheckpointContents(path, trainable, optimizer, scheduler, state, rng, deepspeed=path / "deepspeed")
    return CheckpointContents(path, trainable, optimizer, scheduler, state, rng, path / "sharded" if is_sharded else None)


def _read_model_files(path: Path, legacy: bool, is_sharded: bool) -> tuple[dict[str, torch.Tensor], Any]:
    """``trainable.safetensors`` and ``optimizer.pt`` of checkpoint ``path`` (``({}, {})`` for a sharded
    one: its DCP folder is read when applied, by every process).

    Raises:
        CheckpointError: a file is truncated, corrupt, or not tensors-only.
    """
    if is_sharded:
        return {}, {}
    try:
        trainable = load_file(str(path / "trainable.safetensors"))
    except Exception as e:  # SafetensorError, OSError
        raise CheckpointError(f"{path / 'trainable.safetensors'} is truncated or corrupt ({_first_line(e)})") from e
    return trainable, _load_tensors_file(path / "optimizer.pt", allow_pickle=legacy)


def apply_checkpoint(contents: CheckpointContents, model: torch.nn.Module, optimizer, scheduler) -> None:
    """Load ``contents`` into the model's trainable parameters, the optimizer and the scheduler.

    Every trainable parameter, the whole optimizer state and the scheduler state are replaced, so
    applying another checkpoint after a failed apply leaves nothing of the failed one.

    Raises:
        CheckpointError: the saved tensors or states do not fit this model/optimizer.
    """
    try:
        if contents.deepspeed is not None:  # model: the DeepSpeed engine
            from deltatune.training import deepspeed_engine

            deepspeed_engine.load(model, contents.deepspeed)
        elif contents.sharded is not None:
            load_sharded(contents.sharded, model, optimizer)
        else:
            load_trainable_state(model, contents.trainable)
            optimizer.load_state_dict(contents.optimizer)
        scheduler.load_state_dict(contents.scheduler)
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{contents.path} does not fit this model ({_first_line(e)})") from e


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer, scheduler, trust: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore model/optimizer/scheduler from ``path``; return (trainer_state, rng_state).

    Raises:
        CheckpointError, UntrustedCheckpointError: as :func:`read_checkpoint` and :func:`apply_checkpoint`.
    """
    contents = read_checkpoint(path, trust=trust)
    apply_checkpoint(contents, model, optimizer, scheduler)
    return contents.trainer_state, contents.rng


def replace_dir_atomically(write: Callable[[Path], Any], target: Path) -> None:
    """Call ``write(tmp_dir)`` then swap ``tmp_dir`` into ``target`` (old one removed after):
    :func:`deltatune.files.replace_dir_atomically`, with a failed write explained in one line.

    At every moment ``target`` is either the old complete folder or the new complete one (a
    crash between the two renames leaves the old one as ``.old-<name>``, put back by the next
    call). A failed ``write`` removes ``tmp_dir`` and leaves ``target`` as it was.

    Raises:
        DeltatuneError: ``target`` cannot be written (read-only folder, full disk).
    """
    try:
        files.replace_dir_atomically(write, target)
    except (OSError, SafetensorError) as e:
        raise write_failure(target, e, "then run again (--resume continues a run from its last checkpoint)") from e


def save_best_state(folder: Path, model: torch.nn.Module) -> None:
    """Keep an exact copy of the trainable parameters of the best evaluation (``folder/best/``).

    Raises:
        DeltatuneError: it cannot be written (see :func:`replace_dir_atomically`).
    """
    replace_dir_atomically(lambda d: write_tensors(trainable_state(model), d / "trainable.safetensors"), folder / "best")


def load_best_state(folder: Path, model: torch.nn.Module) -> None:
    """Load what :func:`save_best_state` kept back into ``model``.

    Raises:
        CheckpointError: ``folder/best/trainable.safetensors`` is missing or corrupt.
    """
    load_trainable_state(model, read_best_state(folder))


def read_best_state(folder: Path) -> dict[str, torch.Tensor]:
    """The trainable parameters :func:`save_best_state` kept (whole CPU tensors, by name).

    Raises:
        CheckpointError: ``folder/best/trainable.safetensors`` is missing or corrupt.
    """
    path = folder / "best" / "trainable.safetensors"
    try:
        tensors = load_file(str(path))
    except Exception as e:
        raise CheckpointError(
            f"{path} (the best evaluation's weights) is missing or corrupt ({_first_line(e)}); "
            "the last checkpoints are intact: resume from them or train again"
        ) from e
    return tensors


def staging_folder(folder: Path, step: int) -> Path:
    """Where the processes write the shards of checkpoint ``step`` before it is put in place."""
    return folder / f".shard-step-{step:08d}"


def clear_staging(folder: Path) -> None:
    """Remove shard folders left by saves that never completed (main process, before a sharded save)."""
    if folder.is_dir():
        for p in folder.iterdir():
            if _STAGING_RE.match(p.name):
                shutil.rmtree(p, ignore_errors=True)


def _sharded_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The trainable parameters and optimizer state as this process's shards (DTensors), by name."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(ignore_frozen_params=True)
    return {
        "model": get_model_state_dict(model, options=options),
        "optimizer": get_optimizer_state_dict(model, optimizer, options=options),
    }


def save_sharded(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every process writes its shards of the trainable parameters and the optimizer state to
    ``folder`` with ``torch.distributed.checkpoint`` (collective; the main process writes
    ``.metadata`` last, so a folder without it is incomplete).

    Raises:
        OSError: a process could not write (DCP's error, reported on every process).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        dcp.save(_sharded_state(model, optimizer), checkpoint_id=str(folder))
    except CheckpointException as e:
        raise OSError(f"sharded checkpoint not written: {_first_line(e)}") from e


def load_sharded(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Read a :func:`save_sharded` folder into ``model`` and ``optimizer`` (collective; DCP reads each
    process's shards, resharding when the number of processes differs).

    Raises:
        RuntimeError: the folder does not fit this model or optimizer, or cannot be read.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    state = _sharded_state(model, optimizer)
    try:
        dcp.load(state, checkpoint_id=str(folder))
    except Exception as e:  # CheckpointException, a missing or truncated shard file
        raise RuntimeError(f"{folder} cannot be read ({_first_line(e)})") from e
    options = StateDictOptions(ignore_frozen_params=True, strict=False)
    set_model_state_dict(model, state["model"], options=options)
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=options)
