"""Distillation on top of a task: the teacher's soft targets attached to the training features,
and the loss mixing the KL to them with the task's own (``distill.*``, docs/distillation.md).

:func:`distilled_task` gives a task of the same class with one of the mixins below in front:

- :class:`SequenceDistillation` (text-classification): KL over the class logits per example
  (softmax, or per-label sigmoids for multi-label); the targets count examples;
- :class:`WordDistillation` (token-classification): KL per word between the logits at the
  first subword of the word in the teacher's tokenization and in the student's (the two may
  tokenize differently, e.g. MPNet and MiniLM); the targets count the words distilled;
- :class:`TokenDistillation` (decoder tasks): KL over the vocabulary per response token (the
  tokens the task's loss trains), the teacher reading the student's token ids (same vocabulary
  required); the targets count response tokens.

Per target: ``alpha * T^2 * KL + (1 - alpha) * hard`` (:func:`deltatune.tasks.distill.losses.mix`);
rows of ``distill.unlabeled_file`` (encoder tasks) have the KL term only. Prediction,
evaluation and the saved model are the task's own: a distilled run loads like any other.

The teacher's outputs are computed once in :meth:`_Distillation.training_features` (before the
student is built and before anything is written), then written to the run folder by
:meth:`_Distillation.prepare_model` (the Trainer calls it once the folder exists); a resumed run
reads them back (:mod:`deltatune.tasks.distill.teacher`).
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path
from typing import Any, Callable

import datasets
import numpy as np
import torch
import torch.nn.functional as F

from deltatune.data import load_table
from deltatune.errors import DeltatuneError
from deltatune.tasks.base import Features, Task
from deltatune.tasks.classification import ClassificationTask
from deltatune.tasks.distill import teacher as teacher_pass
from deltatune.tasks.distill.losses import mix, sigmoid_kl, softmax_kl
from deltatune.tasks.language_modeling import LanguageModelTask
from deltatune.tasks.token_classification import IGNORE_INDEX, TokenClassificationTask, first_subword_positions

# the tasks a teacher may have (the student has the same task)
DECODER_TASKS = ("causal-lm", "instruction", "summarization", "translation", "generative-qa")
SUPPORTED_TASKS = ("text-classification", "token-classification", *DECODER_TASKS)
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
# batch keys the mixins add to a training batch
_LABELLED, _TEACHER, _POSITIONS = "distill_labelled", "teacher_logits", "distill_positions"


def _model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the model's forward takes from a batch (no labels, no distillation keys)."""
    return {k: v for k, v in batch.items() if k in _MODEL_INPUTS}


def _is_main_process() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_rank() == 0


class _Distillation:
    """What the three mixins share: loading and checking the teacher, the cached teacher pass,
    the unlabelled rows, and the KL/hard statistics for metrics.jsonl. Placed before a
    :class:`~deltatune.tasks.base.Task` class in the bases (:func:`distilled_task`)."""

    target_kind = ""  # "sequence", "word" or "token" (deltatune.tasks.distill.teacher)
    load_teacher: Callable[[Path], Any] | None = None  # the API's run loader (serving.predictor.load)

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        self._to_save: tuple[list[np.ndarray], str] | None = None
        self._sums = {"kl": 0.0, "hard": 0.0, "n": 0}

    # ---- the teacher --------------------------------------------------------------------
    def _load_teacher(self):
        """The teacher run, loaded and checked against this run (task, labels, vocabulary).

        Raises:
            DeltatuneError: not a finished run, another task, other labels or vocabulary.
        """
        root = Path(self.config.distill.teacher)
        if not (root / "config.yaml").is_file() or not (root / "model").is_dir():
            raise DeltatuneError(f"distill.teacher {root} is not a finished deltatune run folder (config.yaml and model/); train the teacher first")
        teacher = self.load_teacher(root)
        if teacher.config.task != self.config.task:
            raise DeltatuneError(
                f"distill.teacher {root} is a {teacher.config.task} run and this run is {self.config.task}; the student's task must be the teacher's"
            )
        self.check_teacher(teacher, root)
        return teacher

    def check_teacher(self, teacher, root: Path) -> None:
        """Refuse a teacher whose outputs cannot be targets of this student (default: labels equal)."""
        if list(teacher.task.labels) != list(self.labels):
            raise DeltatuneError(
                f"distill.teacher {root} has labels {list(teacher.task.labels)[:10]} and the training data {list(self.labels)[:10]}; "
                "the label sets must be the same"
            )

    def teacher_inputs(self, features: Features) -> Any:
        """JSON-serialisable inputs the teacher reads for ``features`` (for the cache fingerprint)."""
        return features.source_rows.to_dict()

    def compute_targets(self, teacher, features: Features) -> list[np.ndarray]:
        """The teacher's targets per training feature (:mod:`deltatune.tasks.distill.teacher`)."""
        raise NotImplementedError

    def attach_targets(self, features: Features, targets: list[np.ndarray]) -> None:
        """Store ``targets`` (one per feature) in the feature rows for :meth:`collate`."""
        for row, t in zip(features.rows, targets):
            row[_TEACHER] = t

    # ---- features -----------------------------------------------------------------------
    def encode(self, ds: datasets.Dataset, tokenizer, with_labels: bool = True, source: str = "data") -> Features:
        """The task's encoding; the rows are kept with the features (``source_rows``) for the teacher."""
        features = super().encode(ds, tokenizer, with_labels, source)
        features.source_rows = ds
        return features

    def unlabeled_features(self) -> Features | None:
        """``distill.unlabeled_file``'s rows, checked and encoded without labels, or ``None``.

        Raises:
            DeltatuneError: the file cannot be read or lacks the text column(s).
        """
        path = self.config.distill.unlabeled_file
        if not path:
            return None
        ds = load_table(path, split="train", config_name=None)
        self.check(ds, path, with_labels=False)
        return self.encode(ds, self.tokenizer, with_labels=False, source=path)

    def training_features(self, features: Features) -> Features:
        """The task's training features (plus ``distill.unlabeled_file``'s rows), each with the
        teacher's targets: read from the run folder's cache when it holds them for these inputs
        and this teacher, else computed with the teacher (loaded, then freed)."""
        features = self.join_unlabeled(super().training_features(features))
        d = self.config.distill
        key = teacher_pass.fingerprint(d.teacher, self.target_kind, self.teacher_inputs(features))
        cache = Path(self.config.output_dir) / teacher_pass.CACHE_NAME
        targets = teacher_pass.load_targets(cache, key)
        if targets is not None and len(targets) == len(features):
            print(f"deltatune: teacher outputs for {len(targets)} examples read from {cache}", file=sys.stderr, flush=True)
            self._to_save = (targets, key)  # kept (not rewritten) unless --overwrite empties the folder first
        else:
            print(f"deltatune: teacher pass over {len(features)} training examples ({d.teacher}, once; "
                  f"kept in {cache})", file=sys.stderr, flush=True)
            start = time.perf_counter()
            teacher = self._load_teacher()
            with torch.inference_mode():
                targets = self.compute_targets(teacher, features)
            del teacher
            gc.collect()
            self._to_save = (targets, key)
            self.teacher_seconds = time.perf_counter() - start
            print(f"deltatune: teacher pass done in {self.teacher_seconds:.0f} s", file=sys.stderr, flush=True)
        self.attach_targets(features, targets)
        return features

    def join_unlabeled(self, features: Features) -> Features:
        """``features`` followed by the unlabelled rows' (every row marked labelled or not)."""
        extra = self.unlabeled_features()
        for row in features.rows:
            row[_LABELLED] = 1
        if extra is None:
            return features
        for row in extra.rows:
            row[_LABELLED] = 0
        joined = Features(
            features.rows + extra.rows,
            features.lengths + extra.lengths,
            meta=features.meta + extra.meta if features.meta is not None and extra.meta is not None else None,
            examples=features.examples + extra.examples if features.examples is not None and extra.examples is not None else None,
            stats=features.stats,
        )
        joined.source_rows = datasets.concatenate_datasets([features.source_rows, extra.source_rows])
        print(f"distill.unlabeled_file: {len(extra):,} rows without labels added to {len(features):,} training rows",
              file=sys.stderr, flush=True)
        return joined

    def prepare_model(self, model: torch.nn.Module) -> None:
        """Write the teacher's targets computed this launch into the run folder (main process),
        now that it exists; then the task's own preparation."""
        cache = Path(self.config.output_dir) / teacher_pass.CACHE_NAME
        if self._to_save is not None and _is_main_process() and teacher_pass.stored_fingerprint(cache) != self._to_save[1]:
            teacher_pass.save_targets(cache, *self._to_save)
        self._to_save = None
        super().prepare_model(model)

    # ---- statistics -----------------------------------------------------------------------
    def count(self, kl: torch.Tensor, hard: torch.Tensor, n: int) -> None:
        """Add a micro-batch's summed KL and hard loss over ``n`` targets to the statistics."""
        self._sums["kl"] += float(kl.detach())
        self._sums["hard"] += float(hard.detach())
        self._sums["n"] += n

    def pop_train_metrics(self) -> dict[str, float]:
        """``distill_kl`` (KL per target at temperature T, without T^2) and ``hard_loss`` (per
        target) since the last call."""
        s, self._sums = self._sums, {"kl": 0.0, "hard": 0.0, "n": 0}
        out = dict(super().pop_train_metrics())
        if s["n"]:
            out.update(distill_kl=s["kl"] / s["n"], hard_loss=s["hard"] / s["n"])
        return out

    def settings(self) -> dict[str, Any]:
        """The task's settings and the ``distill.*`` ones (report.html, metrics.jsonl)."""
        d = self.config.distill
        return {**super().settings(), "distill.teacher": d.teacher, "distill.temperature": d.temperature, "distill.alpha": d.alpha}


class SequenceDistillation(_Distillation):
    """Text classification: per example, the KL of the class distributions (softmax; multi-label:
    each label's sigmoid, :func:`~deltatune.tasks.distill.losses.sigmoid_kl`)."""

    target_kind = "sequence"

    def compute_targets(self, teacher, features):
        return teacher_pass.sequence_targets(teacher, features.source_rows, self.config.eval.per_device_eval_batch_size, "training rows")

    def check_teacher(self, teacher, root):
        super().check_teacher(teacher, root)
        if bool(teacher.task.multi_label) != bool(self.multi_label):
            raise DeltatuneError(f"distill.teacher {root} is {'multi' if teacher.task.multi_label else 'single'}-label and this run is not")

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if _TEACHER not in features[0]:
            return super().collate(features)
        n = len(self.labels)
        filled = [f if f[_LABELLED] else {**f, "labels": [0.0] * n if self.multi_label else IGNORE_INDEX} for f in features]
        batch = super().collate(filled)
        batch[_LABELLED] = torch.tensor([f[_LABELLED] for f in features], dtype=torch.float32)
        batch[_TEACHER] = torch.from_numpy(np.stack([np.asarray(f[_TEACHER], np.float32) for f in features]))
        return batch

    def loss(self, model, batch):
        """(sum over examples of alpha T^2 KL + (1 - alpha) hard loss, number of examples)."""
        if _TEACHER not in batch:
            return super().loss(model, batch)
        d = self.config.distill
        logits = model(**_model_inputs(batch)).logits.float()
        labelled = batch[_LABELLED]
        if self.multi_label:
            kl = sigmoid_kl(logits, batch[_TEACHER], d.temperature)
            hard = F.binary_cross_entropy_with_logits(logits, batch["labels"], reduction="none").mean(-1) * labelled
        else:
            kl = softmax_kl(logits, batch[_TEACHER], d.temperature)
            hard = F.cross_entropy(logits, batch["labels"], ignore_index=IGNORE_INDEX, reduction="none")
        self.count(kl.sum(), hard.sum(), int(logits.shape[0]))
        return mix(hard, kl, d.alpha, d.temperature).sum(), torch.tensor(logits.shape[0], device=logits.device)


class WordDistillation(_Distillation):
    """Token classification: per word, the KL of the label distributions at the word's first
    subword in the teacher's tokenization and in the student's (words either one cut off by
    truncation are skipped)."""

    target_kind = "word"

    def teacher_inputs(self, features):
        return [ex["words"] for ex in features.examples]

    def compute_targets(self, teacher, features):
        rows = features.source_rows
        return teacher_pass.word_targets(teacher, rows, self.config.eval.per_device_eval_batch_size, "training rows")

    def attach_targets(self, features, targets):
        """Per feature: ``distill_positions``, the student's token position of each word both
        tokenizations kept, and ``teacher_logits`` (words, L) at those words."""
        for row, meta, ex, t in zip(features.rows, features.meta, features.examples, targets):
            pos = first_subword_positions(meta["word_ids"], len(ex["words"]))
            keep = [w for w, p in enumerate(pos) if p >= 0 and w < len(t) and not np.isnan(t[w]).any()]
            row[_POSITIONS] = [pos[w] for w in keep]
            row[_TEACHER] = t[keep] if keep else np.zeros((0, len(self.labels)), np.float32)

    def collate(self, features):
        if _TEACHER not in features[0]:
            return super().collate(features)
        filled = [f if "labels" in f else {**f, "labels": [IGNORE_INDEX] * len(f["input_ids"])} for f in features]
        batch = super().collate(filled)
        k = max(1, max(len(f[_POSITIONS]) for f in features))
        positions = torch.full((len(features), k), -1, dtype=torch.long)
        teacher = torch.zeros((len(features), k, len(self.labels)), dtype=torch.float32)
        for i, f in enumerate(features):
            n = len(f[_POSITIONS])
            positions[i, :n] = torch.tensor(f[_POSITIONS], dtype=torch.long)
            teacher[i, :n] = torch.from_numpy(np.asarray(f[_TEACHER], np.float32))
        batch[_POSITIONS], batch[_TEACHER] = positions, teacher
        return batch

    def num_targets(self, batch):
        if _TEACHER not in batch:
            return super().num_targets(batch)
        return int((batch[_POSITIONS] >= 0).sum())

    def loss(self, model, batch):
        """(sum over words of alpha T^2 KL + sum over labelled tokens of (1 - alpha) CE, words distilled)."""
        if _TEACHER not in batch:
            return super().loss(model, batch)
        d = self.config.distill
        logits = model(**_model_inputs(batch)).logits.float()
        mask = batch[_POSITIONS] >= 0
        at = torch.gather(logits, 1, batch[_POSITIONS].clamp(min=0).unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
        kl = (softmax_kl(at, batch[_TEACHER], d.temperature) * mask).sum()
        labels = batch["labels"]
        hard = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
        n = int(mask.sum())
        self.count(kl, hard, n)
        return mix(hard, kl, d.alpha, d.temperature), mask.sum()


class TokenDistillation(_Distillation):
    """Decoder tasks: per response token, the KL of the next-token distributions over the
    vocabulary (the teacher reads the student's token ids)."""

    target_kind = "token"

    def check_teacher(self, teacher, root):
        """The teacher must read the student's token ids: the same vocabulary (token -> id)."""
        if teacher.tokenizer.get_vocab() != self.tokenizer.get_vocab():
            raise DeltatuneError(
                f"distill.teacher {root} has another vocabulary than the student {self.config.model.name_or_path}; "
                "decoder distillation compares next-token distributions and needs the same tokenizer"
            )

    def teacher_inputs(self, features):
        return [[r["input_ids"], r["labels"]] for r in features.rows]

    def compute_targets(self, teacher, features):
        return teacher_pass.token_targets(teacher, features.rows, self.config.eval.per_device_eval_batch_size, self.pad_token_id)

    def join_unlabeled(self, features):
        if self.config.distill.unlabeled_file:
            raise DeltatuneError(
                "distill.unlabeled_file applies to text-classification and token-classification; decoder distillation "
                "compares the response tokens of labelled rows: remove it"
            )
        return features

    def collate(self, features):
        batch = super().collate([{k: v for k, v in f.items() if k != _TEACHER} for f in features])
        if _TEACHER in features[0]:
            batch[_TEACHER] = torch.from_numpy(np.concatenate([np.asarray(f[_TEACHER], np.float32) for f in features], axis=0))
        return batch

    def loss(self, model, batch):
        """(sum over response tokens of alpha T^2 KL + (1 - alpha) CE, number of response tokens)."""
        if _TEACHER not in batch:
            return super().loss(model, batch)
        d = self.config.distill
        logits = model(**_model_inputs(batch)).logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        mask = labels != IGNORE_INDEX
        student = logits[mask]  # (N, V), row-major order: the order of the teacher's rows
        teacher = batch[_TEACHER]
        width = min(student.shape[-1], teacher.shape[-1])
        kl = softmax_kl(student[:, :width], teacher[:, :width], d.temperature).sum()
        hard = F.cross_entropy(student, labels[mask], reduction="sum")
        n = int(mask.sum())
        self.count(kl, hard, n)
        return mix(hard, kl, d.alpha, d.temperature), mask.sum()


def distilled_task(task: Task, load_teacher: Callable[[Path], Any]) -> Task:
    """A fresh, unfitted task of ``task``'s class with the distillation mixin of its family in front.

    Args:
        task: the run's task as :func:`deltatune.tasks.create_task` made it (config with
            ``distill.teacher`` set).
        load_teacher: loads a run folder for prediction (:func:`deltatune.serving.predictor.load`):
            given by the API, as a lower layer takes what it needs from above as an argument.

    Raises:
        DeltatuneError: a task distillation does not support (names the supported ones).
    """
    name = task.config.task
    if name not in SUPPORTED_TASKS:
        raise DeltatuneError(f"distillation supports the tasks {', '.join(SUPPORTED_TASKS)}; not {name}")
    if isinstance(task, TokenClassificationTask):
        mixin: type = WordDistillation
    elif isinstance(task, ClassificationTask):
        mixin = SequenceDistillation
    elif isinstance(task, LanguageModelTask):
        mixin = TokenDistillation
    else:
        raise DeltatuneError(f"distillation of {name} supports decoder models, not {type(task).__name__} (an encoder-decoder)")
    cls = type(f"Distilled{type(task).__name__}", (mixin, type(task)), {"__module__": __name__})
    distilled = cls(task.config)
    distilled.load_teacher = load_teacher
    return distilled
