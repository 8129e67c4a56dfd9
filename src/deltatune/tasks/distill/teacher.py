"""The teacher's soft targets: one pass of a finished run's model over the student's training rows.

The teacher is a loaded run (:class:`deltatune.serving.predictor.Predictor`, handed down by the
API: a lower layer takes what it needs from above as an argument). Its own task encodes the
rows with its own tokenizer (the teacher and the student may tokenize differently), so the
targets are per row, not per student token:

- ``sequence``: the head's logits, (L,) float32 per row (text classification);
- ``word``: the logits at each word's first subword, (words, L) float32 per row, NaN for the
  words the teacher's truncation cut off (token classification);
- ``token``: the next-token logits at the positions of the student's trained (response) tokens,
  (tokens, V) float16 per feature (decoder tasks; the teacher reads the student's token ids,
  which needs the same vocabulary).

Targets are kept in ``teacher_logits.safetensors`` in the student's run folder (:func:`save_targets`)
with a fingerprint of the teacher and the inputs, so a resumed run reads them instead of
running the teacher again (:func:`load_targets`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import datasets
import numpy as np
import torch

from deltatune.files import write_file_atomically
from deltatune.tasks.collate import pad_batch
from deltatune.tasks.token_classification import first_subword_positions

CACHE_NAME = "teacher_logits.safetensors"
_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def fingerprint(teacher_root: str | Path, kind: str, inputs: Any) -> str:
    """A hash of the teacher run (folder, its model files' names, sizes and modification times), the
    kind of targets and the inputs (rows or token ids, JSON-serialisable): 16 hex digits."""
    root = Path(teacher_root).resolve()
    h = hashlib.sha256(f"{root}|{kind}|".encode())
    model = root / "model"
    for f in sorted(model.rglob("*")) if model.is_dir() else ():
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(model)}:{st.st_size}:{st.st_mtime_ns};".encode())
    h.update(json.dumps(inputs, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def save_targets(path: str | Path, targets: Sequence[np.ndarray], key: str) -> None:
    """Write per-row target arrays (any shapes sharing the trailing axis) to ``path`` atomically.

    Stored as one concatenated tensor ``targets`` (rows of the trailing axis), ``offsets`` (N+1,)
    int64, ``shapes`` (N, ndim) int64, with ``key`` (:func:`fingerprint`) in the metadata.
    """
    from safetensors.numpy import save_file

    dtype = targets[0].dtype if targets else np.float32
    flat = [np.asarray(t, dtype=dtype).reshape(-1, t.shape[-1]) if t.ndim > 1 else np.asarray(t, dtype=dtype)[None] for t in targets]
    width = flat[0].shape[-1] if flat else 1
    rows = np.concatenate(flat, axis=0) if flat else np.zeros((0, width), dtype=dtype)
    offsets = np.cumsum([0] + [f.shape[0] for f in flat]).astype(np.int64)
    ndim = max((t.ndim for t in targets), default=1)
    shapes = np.array([list(t.shape) + [0] * (ndim - t.ndim) for t in targets] or [[0] * ndim], dtype=np.int64)
    tensors = {"targets": rows, "offsets": offsets, "shapes": shapes}
    write_file_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata={"fingerprint": key, "rows": str(len(targets))}))


def stored_fingerprint(path: str | Path) -> str | None:
    """The fingerprint :func:`save_targets` stored in ``path`` (its header only), or ``None``."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return (f.metadata() or {}).get("fingerprint")
    except Exception:  # missing or damaged
        return None


def load_targets(path: str | Path, key: str) -> list[np.ndarray] | None:
    """The targets :func:`save_targets` wrote to ``path``, or ``None`` when there is no such file,
    it is unreadable, or it was made for other inputs or another teacher (``key`` differs)."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        return None
    try:
        with safe_open(str(p), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("fingerprint") != key:
                return None
            rows, offsets, shapes = f.get_tensor("targets"), f.get_tensor("offsets"), f.get_tensor("shapes")
    except Exception:  # a damaged cache is computed again, never trusted
        return None
    n = int(meta.get("rows", len(offsets) - 1))
    out = []
    for i in range(n):
        chunk = rows[offsets[i] : offsets[i + 1]]
        shape = tuple(int(d) for d in shapes[i] if d > 0) or (0,)
        out.append(chunk.reshape(shape) if len(shape) > 1 else chunk.reshape(-1))
    return out


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (less padding), longest first."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def _logits(teacher, rows: list[dict[str, Any]], pad_id: int) -> torch.Tensor:
    """The teacher model's logits (B, ..., K) float32 for feature rows (their model inputs padded)."""
    batch = pad_batch(rows, {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": 0})
    inputs = {k: v.to(teacher.device) for k, v in batch.items() if k in _INPUT_KEYS}
    return teacher.model(**inputs).logits.float()


def sequence_targets(teacher, ds: datasets.Dataset, batch_size: int, source: str) -> list[np.ndarray]:
    """Per row of ``ds``, the teacher's class logits (L,) float32 (text classification teachers).

    Raises:
        DeltatuneError: rows the teacher's task cannot read (its text columns), naming ``source``.
    """
    teacher.task.check(ds, source, with_labels=False)
    feats = teacher.task.encode(ds, teacher.tokenizer, with_labels=False, source=source)
    out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(feats)
    for idx in _batches(feats.lengths, batch_size):
        logits = _logits(teacher, [feats.rows[i] for i in idx], teacher.task.pad_token_id).cpu().numpy()
        for j, i in enumerate(idx):
            out[i] = logits[j]
    return out


def word_targets(teacher, ds: datasets.Dataset, batch_size: int, source: str) -> list[np.ndarray]:
    """Per row of ``ds``, the teacher's logits at each word's first subword, (words, L) float32;
    NaN rows for words the teacher's truncation cut off (token classification teachers)."""
    teacher.task.check(ds, source, with_labels=False)
    feats = teacher.task.encode(ds, teacher.tokenizer, with_labels=False, source=source)
    out: list[np.ndarray] = [np.zeros((0, 0), np.float32)] * len(feats)
    for idx in _batches(feats.lengths, batch_size):
        logits = _logits(teacher, [feats.rows[i] for i in idx], teacher.task.pad_token_id).cpu().numpy()
        for j, i in enumerate(idx):
            n_words = len(feats.examples[i]["words"])
            pos = first_subword_positions(feats.meta[i]["word_ids"], n_words)
            words = np.full((n_words, logits.shape[-1]), np.nan, np.float32)
            for w, t in enumerate(pos):
                if t >= 0:
                    words[w] = logits[j, t]
            out[i] = words
    return out


def response_positions(labels: Sequence[int]) -> list[int]:
    """Positions ``t`` whose logits predict a trained token (``labels[t + 1] != -100``): the
    response tokens of a decoder example, as the next-token loss shifts them."""
    return [t for t in range(len(labels) - 1) if labels[t + 1] != -100]


def token_targets(teacher, rows: Sequence[dict[str, Any]], batch_size: int, pad_id: int) -> list[np.ndarray]:
    """Per student feature row, the teacher's next-token logits at :func:`response_positions`,
    (tokens, V) float16 (decoder teachers reading the student's token ids)."""
    out: list[np.ndarray] = [np.zeros((0, 0), np.float16)] * len(rows)
    for idx in _batches([len(r["input_ids"]) for r in rows], batch_size):
        batch = [{k: rows[i][k] for k in ("input_ids", "attention_mask") if k in rows[i]} for i in idx]
        logits = _logits(teacher, batch, pad_id)
        for j, i in enumerate(idx):
            pos = response_positions(rows[i]["labels"])
            out[i] = logits[j, pos].to(torch.float16).cpu().numpy()
    return out
