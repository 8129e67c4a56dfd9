"""Runs trained on a task's own ``demo_rows()`` (the contract test, the server tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def merge(base: dict, extra: dict) -> dict:
    """``base`` updated by ``extra``, nested dicts merged."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def demo_config(name: str, cls: Any, model_dir: str, folder: Path, max_steps: int = 2) -> tuple[dict, list[dict]]:
    """(config, rows): a ``max_steps`` run of task ``name`` (class ``cls``) on its demo rows, in ``folder/run``."""
    demo = cls.demo_rows()
    rows = demo["rows"]
    folder.mkdir(parents=True, exist_ok=True)
    train = write_jsonl(folder / "train.jsonl", rows)
    dev = write_jsonl(folder / "dev.jsonl", rows)
    cfg = merge(
        {
            "task": name,
            "output_dir": str(folder / "run"),
            "seed": 7,
            "model": {"name_or_path": model_dir, "dropout": 0.0},
            "data": {"train_file": train, "validation_file": dev, "max_seq_length": 128},
            "train": {"per_device_train_batch_size": 4, "learning_rate": 1e-3, "max_steps": max_steps, "progress_bar": False},
            "eval": {"eval_strategy": "no", "max_new_tokens": 4, "generation_max_samples": 2},
        },
        demo["config"],
    )
    return cfg, rows
