"""Atomic training checkpoints: each is complete or absent.

A checkpoint is a folder ``checkpoints/step-<N>/`` holding
- ``trainable.safetensors``: every trainable parameter (frozen ones equal the base model);
- ``optimizer.pt``, ``scheduler.pt``: their ``state_dict``s;
- ``rng.pt``: python, numpy and torch (CPU and CUDA) generator states;
- ``trainer_state.json``: step, epoch, position in the epoch, best metric, early-stopping state.
It is written to a hidden temporary folder next to it and renamed into place, so an
interrupted save leaves no half-written checkpoint. Only the newest ``keep`` survive.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

_STEP_RE = re.compile(r"^step-(\d+)$")


def capture_rng_state() -> dict[str, Any]:
    """Snapshot of every random generator the loop uses."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put generators back to a :func:`capture_rng_state` snapshot."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def save_checkpoint(
    folder: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict[str, Any],
    rng_state: dict[str, Any],
    keep: int,
) -> Path:
    """Write checkpoint ``folder/step-<step>`` atomically and prune to the newest ``keep``.

    Returns:
        The checkpoint's path.
    """
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:08d}"
    tmp = folder / f".tmp-step-{step:08d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state, tmp / "rng.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _STEP_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore model/optimizer/scheduler from ``path``; return (trainer_state, rng_state)."""
    load_trainable_state(model, load_file(str(path / "trainable.safetensors")))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng = torch.load(path / "rng.pt", weights_only=False)
    state = json.loads((path / "trainer_state.json").read_text())
    return state, rng


def replace_dir_atomically(write: Any, target: Path) -> None:
    """Call ``write(tmp_dir)`` then swap ``tmp_dir`` into ``target`` (old one removed after).

    At every moment ``target`` is either the old complete folder or the new complete one.
    """
    tmp = target.with_name(f".tmp-{target.name}")
    old = target.with_name(f".old-{target.name}")
    for p in (tmp, old):
        if p.exists():
            shutil.rmtree(p)
    tmp.mkdir(parents=True)
    write(tmp)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    if old.exists():
        shutil.rmtree(old)


def save_best_state(folder: Path, model: torch.nn.Module) -> None:
    """Keep an exact copy of the trainable parameters of the best evaluation (``folder/best/``)."""
    folder.mkdir(parents=True, exist_ok=True)
    replace_dir_atomically(lambda d: save_file(trainable_state(model), str(d / "trainable.safetensors")), folder / "best")


def load_best_state(folder: Path, model: torch.nn.Module) -> None:
    """Load what :func:`save_best_state` kept back into ``model``."""
    load_trainable_state(model, load_file(str(folder / "best" / "trainable.safetensors")))
