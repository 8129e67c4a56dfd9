"""The run directory: config, metrics log, checkpoints, model, evaluation.

Layout (see DESIGN.md)::

    runs/<name>/config.yaml     resolved config
    runs/<name>/metrics.jsonl   one JSON object per log/eval event
    runs/<name>/checkpoints/    step-<N>/ folders, newest few
    runs/<name>/model/          best (or final) model in Hugging Face format
    runs/<name>/eval.json       final metrics per split
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from deltatune.errors import DeltatuneError


class RunDir:
    """Paths inside one run directory, and its creation rules.

    Args:
        root: the run directory.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    config = property(lambda self: self.root / "config.yaml")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    checkpoints = property(lambda self: self.root / "checkpoints")
    model = property(lambda self: self.root / "model")
    eval = property(lambda self: self.root / "eval.json")

    def exists(self) -> bool:
        return self.root.exists() and any(self.root.iterdir())

    def prepare(self, overwrite: bool, resume: bool) -> None:
        """Create the directory for a new run, or accept it for a resume.

        Raises:
            DeltatuneError: the directory exists and neither ``overwrite`` nor ``resume`` is
                set; ``overwrite`` on a non-empty folder that is not a run (or is the current
                folder or one above it); or ``resume`` is set and there is nothing to resume
                (no run, or a finished one: its ``eval.json`` is written last).
        """
        if resume:
            if not self.config.is_file():
                raise DeltatuneError(f"cannot resume: {self.root} has no config.yaml (start a new run without --resume)")
            if self.eval.is_file():
                raise DeltatuneError(
                    f"cannot resume: {self.root} is a finished run (model in {self.model}, metrics in {self.eval}); "
                    "train longer in a new run (another --output-dir) or replace it with --overwrite"
                )
            return
        if self.exists():
            if not overwrite:
                raise DeltatuneError(
                    f"run directory {self.root} already exists; use --overwrite to replace it, --resume to continue it, "
                    "or choose another --output-dir"
                )
            if not self.config.is_file() or self.root.resolve() in (Path.cwd().resolve(), *Path.cwd().resolve().parents):
                raise DeltatuneError(
                    f"{self.root} is not empty and is not a deltatune run directory (no config.yaml): --overwrite only "
                    "replaces runs; choose another --output-dir"
                )
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line to metrics.jsonl."""
        with self.metrics.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_log(self, after_step: int) -> None:
        """Drop metrics.jsonl lines logged after ``after_step`` (they are redone on resume)."""
        if not self.metrics.is_file():
            return
        keep = [ln for ln in self.metrics.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= after_step]
        self.metrics.write_text("".join(ln + "\n" for ln in keep))

    def read_log(self) -> list[dict[str, Any]]:
        """All metrics.jsonl records."""
        if not self.metrics.is_file():
            return []
        return [json.loads(ln) for ln in self.metrics.read_text().splitlines() if ln.strip()]
