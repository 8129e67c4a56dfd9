"""The small interface every task implements, and the feature container tasks produce.

A task turns rows into model features and model outputs back into predictions and metrics.
It knows its model head, its collator, its loss and its metrics; it knows nothing about the
training loop (which only calls the methods below).

Loss contract (see DESIGN.md, "Training loop rules"): :meth:`Task.loss` returns the *sum* of
per-target losses in a batch and the number of targets (examples for classification, trained
tokens for language modelling). The loop divides by the number of targets in the whole
accumulated (and all-reduced) batch, so batch 8 x accumulation 1 and batch 2 x accumulation 4
give the same gradient.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import datasets
import numpy as np
import torch

from deltatune.config import RunConfig


class Features(torch.utils.data.Dataset):
    """Encoded examples held in memory: a list of dicts of python lists/ints.

    ``lengths[i]`` is the token length of feature ``i`` (used by length-grouped batching and by
    length-sorted evaluation).

    Tasks where one input row gives several features (extractive QA: one feature per context
    window; extractive summarization: one per sentence) or where decoding needs more than the
    tensors (offsets, word ids) keep that in ``meta`` (one entry per feature, any Python
    object, never collated) and the source rows in ``examples``; both are handed back to
    :meth:`Task.compute_metrics` and :meth:`Task.decode` with the outputs.
    """

    def __init__(
        self,
        rows: list[dict[str, Any]],
        lengths: Sequence[int],
        meta: list[Any] | None = None,
        examples: list[dict[str, Any]] | None = None,
    ):
        self.rows = rows
        self.lengths = list(lengths)
        self.meta = meta
        self.examples = examples
        if meta is not None and len(meta) != len(rows):
            raise ValueError(f"meta has {len(meta)} entries for {len(rows)} features")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


class Task(ABC):
    """Base class of all tasks.

    Subclasses set ``name``, ``default_metric`` and ``greater_is_better`` and implement the
    abstract methods. ``source`` arguments are human-readable origins (a file path) used in
    error messages.
    """

    name: str = ""
    default_metric: str = "loss"
    greater_is_better: bool = False

    def __init__(self, config: RunConfig):
        self.config = config
        self.pad_token_id = 0

    def set_tokenizer(self, tokenizer) -> None:
        """Remember what the collator needs from the tokenizer (its pad id)."""
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is not None:
            self.pad_token_id = tokenizer.pad_token_id

    # ---- data -> features ---------------------------------------------------------------
    @abstractmethod
    def fit(self, train: datasets.Dataset, source: str) -> None:
        """Learn what the task needs from the training rows (e.g. the label set); validate them."""

    @abstractmethod
    def check(self, ds: datasets.Dataset, source: str, with_labels: bool = True) -> None:
        """Validate evaluation/prediction rows (columns present, texts non-empty, labels known)."""

    @abstractmethod
    def encode(self, ds: datasets.Dataset, tokenizer, with_labels: bool = True) -> Features:
        """Tokenize rows into :class:`Features`."""

    def stratify_keys(self, ds: datasets.Dataset) -> list | None:
        """Per-row keys to stratify the validation split by, or ``None``."""
        return None

    # ---- language / vocabulary check (deltatune.data.coverage) ----------------------------
    # False where a long input is windowed or packed into blocks, so that nothing is cut off
    long_inputs_truncated: bool = True

    def input_texts(self, ds: datasets.Dataset, source: str = "data") -> list[tuple[str, ...]]:
        """The texts the tokenizer encodes as model input: one tuple per input (two texts: a pair).

        Read by the vocabulary and truncation check (:func:`deltatune.data.coverage.check_coverage`)
        on rows that :meth:`fit` or :meth:`check` accepted. Default: ``data.text_column``.
        """
        return [(str(v),) for v in ds[self.config.data.text_column]]

    # ---- model ----------------------------------------------------------------------------
    auto_model_class: Any = None  # the transformers Auto* class of this task's head
    peft_task_type: str = ""  # peft's TaskType name (SEQ_CLS, TOKEN_CLS, CAUSAL_LM, ...)
    new_parameter_names: set = set()  # parameters build_model initialised fresh (the head)

    def load_trained(self, model_dir: str) -> torch.nn.Module:
        """Load a model this task trained and saved (``save_pretrained`` folder)."""
        from deltatune.models.loading import load_pretrained

        m = self.config.model
        return load_pretrained(
            self.auto_model_class, model_dir, trust_remote_code=m.trust_remote_code, allow_pickle_weights=m.allow_pickle_weights
        )

    @abstractmethod
    def build_model(self, model_path: str, config_overrides: dict[str, Any]) -> torch.nn.Module:
        """Load the pretrained backbone with this task's head.

        Sets :attr:`new_parameter_names` to the parameters absent from the checkpoint.
        """

    @abstractmethod
    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad a list of features into a batch of tensors (dynamic padding)."""

    @abstractmethod
    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (sum of per-target losses: float scalar tensor, number of targets: scalar tensor)."""

    @abstractmethod
    def num_targets(self, batch: dict[str, torch.Tensor]) -> int:
        """Number of loss targets in ``batch`` (known before the forward pass)."""

    # ---- outputs -> metrics / predictions -------------------------------------------------
    @abstractmethod
    def eval_step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """Forward pass without gradients; per-example arrays (first axis = batch)."""

    @abstractmethod
    def compute_metrics(self, outputs: dict[str, np.ndarray], features: Features | None = None) -> dict[str, Any]:
        """Metrics from concatenated :meth:`eval_step` outputs of a whole split.

        ``outputs`` arrays have one entry per feature, in the order of ``features`` (the
        :class:`Features` they came from, for tasks that need its ``meta``/``examples``).
        """

    @abstractmethod
    def decode(self, outputs: dict[str, np.ndarray], features: Features | None = None) -> list[dict[str, Any]]:
        """One prediction record per input row from concatenated :meth:`eval_step` outputs."""

    @classmethod
    @abstractmethod
    def from_pretrained_config(cls, config: RunConfig, model_config) -> "Task":
        """Rebuild a fitted task from a run's config and its saved model config."""
