"""Extractive question answering (SQuAD v1.1 / v2.0) with a span head on an encoder.

Rows hold a question (``data.question_column``), a context (``data.context_column``) and, for
training/evaluation, the gold answers (``data.answers_column``). SQuAD nested JSON is flattened
by :func:`deltatune.data.load_table` into exactly these columns. Answers may be given as

- SQuAD's dict ``{"text": [...], "answer_start": [...]}`` (or single values; without
  ``answer_start`` each text is located in the context);
- a list of such dicts (``[{"text": "Paris", "answer_start": 31}, ...]``);
- a plain string or a list of strings: each is located at its first occurrence in the context;
- an empty list/dict/string or a missing value: the question has no answer (SQuAD v2.0).

Method (Devlin et al. 2019, "BERT", §4.2 SQuAD v1.1 and §4.3 v2.0; the sliding windows and
post-processing of BERT's ``run_squad.py`` and Hugging Face's ``run_qa.py``):

- encoding: ``[CLS] question [SEP] context window [SEP]``; contexts longer than
  ``data.max_seq_length`` are split into windows overlapping by ``data.doc_stride`` tokens.
  Questions longer than half the window are cut (at a token boundary) to leave room for context.
- training labels: the first gold answer's start/end token in a window that contains the whole
  answer; the ``[CLS]`` token for both in a window that does not (it cuts the answer or misses
  it) and for unanswerable questions.
- loss per window: (CE(start) + CE(end)) / 2 over the window's real tokens (padding excluded, so
  the loss does not depend on how a batch is padded); summed over windows, the loop divides by
  the number of windows.
- decoding, per question over all its windows: the ``data.n_best_size`` best start and end
  logits among the context tokens, pairs with start <= end and at most
  ``data.max_answer_length`` tokens; span score = start logit + end logit, the best span wins.
  SQuAD v2.0 (``data.version_2_with_negative``): the null score is the minimum over windows of
  the ``[CLS]`` start + end logits, and the answer is empty when null score − best span score
  > ``data.null_score_diff_threshold``.
- metrics: exact match and F1 of the official SQuAD script, in percent (0-100), see
  :mod:`deltatune.metrics.squad`; HasAns/NoAns splits when some question is unanswerable; and
  the mean window loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForQuestionAnswering

from deltatune.config import RunConfig
from deltatune.data.columns import is_missing, require_columns
from deltatune.errors import DeltatuneError
from deltatune.metrics.squad import squad_metrics
from deltatune.models.loading import load_with_new_head
from deltatune.tasks.base import Features, Task
from deltatune.tasks.collate import pad_batch
from deltatune.tasks.examples import ROW_SCORERS, example_row, joined_references, squad_f1, worst_examples

# model-config attribute that records whether a run answers SQuAD v2.0 style (may abstain)
V2_ATTRIBUTE = "deltatune_version_2_with_negative"
# model-config attribute: how many training questions had no answer (absent in runs saved before it existed)
TRAIN_UNANSWERABLE_ATTRIBUTE = "deltatune_train_unanswerable"

Offsets = list  # per token: (char start, char end) in the context, or None for non-context tokens


# ---- gold answers ----------------------------------------------------------------------------
@dataclass(frozen=True)
class GoldAnswer:
    """One gold answer: its text and its character offset ``start`` in the context (0-based)."""

    text: str
    start: int

    @property
    def end(self) -> int:
        """Character offset one past the answer's last character."""
        return self.start + len(self.text)


def _as_list(value: Any) -> list:
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value)
    return [value]


def _answer_items(value: Any, where: str) -> list[tuple[Any, Any]]:
    """(text, answer_start or None) pairs from any accepted answers form."""
    if isinstance(value, dict):
        if "text" not in value:
            raise DeltatuneError(f"{where} is a dict without a 'text' key; give {{'text': [...], 'answer_start': [...]}}")
        texts = _as_list(value["text"])
        starts = value.get("answer_start")
        starts = [None] * len(texts) if starts is None else _as_list(starts)
        if len(starts) != len(texts):
            raise DeltatuneError(
                f"{where} has {len(texts)} answer text(s) but {len(starts)} answer_start value(s); give one start per text"
            )
        return list(zip(texts, starts))
    if isinstance(value, (list, tuple, np.ndarray)):
        items: list[tuple[Any, Any]] = []
        for item in value:
            items.extend(_answer_items(item, where) if isinstance(item, dict) else [(item, None)])
        return items
    if isinstance(value, str):
        return [(value, None)]
    raise DeltatuneError(
        f"{where} holds a {type(value).__name__}; give a text, a list of texts or {{'text': [...], 'answer_start': [...]}}"
    )


def parse_answers(value: Any, context: str, source: str, row: int, column: str) -> list[GoldAnswer]:
    """The gold answers of one row, each checked against the context.

    Args:
        value: the row's answers cell in any form listed in the module docstring.
        context: the row's context text.
        source, row, column: where the cell comes from (row counted from 1), for errors.

    Returns:
        The answers in the given order; ``[]`` for an unanswerable question (missing or empty
        cell, empty lists, empty texts).

    Raises:
        DeltatuneError: an unsupported form, texts/starts of different lengths, an
            ``answer_start`` that does not point at its text, or a text absent from the context.
    """
    where = f"{source}: row {row} column '{column}'"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    answers = []
    for text, start in _answer_items(value, where):
        if is_missing(text):
            continue
        text = str(text)
        if start is None or (isinstance(start, float) and math.isnan(start)):
            found = context.find(text)
            if found < 0:
                raise DeltatuneError(f"{where}: answer {text!r} is not in the context; fix the answer or the context")
            answers.append(GoldAnswer(text, found))
            continue
        try:
            start = int(start)
        except (TypeError, ValueError):
            raise DeltatuneError(f"{where}: answer_start {start!r} is not an integer character offset") from None
        if text not in context:
            raise DeltatuneError(f"{where}: answer {text!r} is not in the context (answer_start {start}); fix the answer or the context")
        if start < 0 or context[start : start + len(text)] != text:
            there = context[max(start, 0) : max(start, 0) + len(text)]
            raise DeltatuneError(
                f"{where}: answer_start {start} does not point at the answer {text!r} (the context has {there!r} there); "
                "fix answer_start (a 0-based character offset) or leave it out to locate the text"
            )
        answers.append(GoldAnswer(text, start))
    return answers


# ---- windows and labels ----------------------------------------------------------------------
def window_labels(offsets: Offsets, answer: GoldAnswer | None, cls_index: int = 0) -> tuple[int, int]:
    """Start and end token of ``answer`` in one window, or ``(cls_index, cls_index)``.

    Args:
        offsets: per token of the window, the (start, end) character offsets in the context,
            ``None`` for question, special and padding tokens.
        answer: the gold answer, ``None`` for an unanswerable question.
        cls_index: the ``[CLS]`` token's position.

    Returns:
        (start token, end token), inclusive; the ``[CLS]`` position twice when the window does
        not contain the whole answer (as in BERT's ``run_squad.py`` and Hugging Face's ``run_qa.py``).
    """
    if answer is None:
        return cls_index, cls_index
    ctx = [i for i, o in enumerate(offsets) if o is not None]
    if not ctx or answer.start < offsets[ctx[0]][0] or answer.end > offsets[ctx[-1]][1]:
        return cls_index, cls_index
    # first token ending after the answer starts; last token starting before the answer ends
    start = next(i for i in ctx if offsets[i][1] > answer.start)
    end = next(i for i in reversed(ctx) if offsets[i][0] < answer.end)
    if end < start:  # the answer covers no token (e.g. only characters the tokenizer drops)
        return cls_index, cls_index
    return start, end


# ---- post-processing -----------------------------------------------------------------------
@dataclass
class QAPrediction:
    """The answer to one question.

    Attributes:
        text: the answer (``""`` for "no answer").
        score: start logit + end logit of the chosen span; for "no answer" the null score.
        start, end: character offsets of the answer in the context (``context[start:end]``);
            ``None`` for "no answer".
    """

    text: str
    score: float
    start: int | None
    end: int | None

    def record(self) -> dict[str, Any]:
        """The prediction record ``{"answer", "score", "start", "end"}``."""
        return {"answer": self.text, "score": self.score, "start": self.start, "end": self.end}


def best_span(
    start_logits: np.ndarray, end_logits: np.ndarray, offsets: Offsets, n_best_size: int, max_answer_length: int
) -> tuple[float, int, int] | None:
    """The best-scoring answer span of one window.

    Candidates are the ``n_best_size`` highest start logits and end logits among the context
    tokens, paired with start <= end and end − start + 1 <= ``max_answer_length`` tokens; if no
    such pair exists, every context start and end is tried.

    Args:
        start_logits, end_logits: float arrays (T,) of the window (padding may follow).
        offsets: per token, context character offsets or ``None`` (length = real tokens).

    Returns:
        (start logit + end logit, start token, end token), or ``None`` without context tokens.
    """
    ctx = np.array([i for i, o in enumerate(offsets) if o is not None], dtype=np.int64)
    if ctx.size == 0:
        return None
    s_all, e_all = np.asarray(start_logits, np.float64)[ctx], np.asarray(end_logits, np.float64)[ctx]
    for n in (n_best_size, ctx.size):
        s_pick = np.argsort(-s_all, kind="stable")[:n]
        e_pick = np.argsort(-e_all, kind="stable")[:n]
        s_tok, e_tok = ctx[s_pick][:, None], ctx[e_pick][None, :]
        valid = (e_tok >= s_tok) & (e_tok - s_tok + 1 <= max_answer_length)
        if valid.any():
            scores = np.where(valid, s_all[s_pick][:, None] + e_all[e_pick][None, :], -np.inf)
            i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
            return float(scores[i, j]), int(s_tok[i, 0]), int(e_tok[0, j])
    return None


def postprocess_predictions(
    start_logits: Sequence[np.ndarray],
    end_logits: Sequence[np.ndarray],
    meta: Sequence[dict[str, Any]],
    contexts: Sequence[str],
    n_best_size: int = 20,
    max_answer_length: int = 30,
    version_2_with_negative: bool = False,
    null_score_diff_threshold: float = 0.0,
) -> list[QAPrediction]:
    """One answer per question from the logits of all its windows.

    Args:
        start_logits, end_logits: per window, float arrays (T_w,) (rows of a padded (W, T)
            array or a ragged object array).
        meta: per window ``{"example": question index, "offsets": context offsets per token
            (None off the context), "cls_index": [CLS] position}``.
        contexts: the context of each question (answers are cut from it by character offsets).
        n_best_size, max_answer_length, version_2_with_negative, null_score_diff_threshold:
            as ``data.*`` (see the module docstring).

    Returns:
        ``len(contexts)`` :class:`QAPrediction`, in question order.
    """
    windows: list[list[int]] = [[] for _ in contexts]
    for w, m in enumerate(meta):
        windows[m["example"]].append(w)
    predictions = []
    for ex, ws in enumerate(windows):
        best: tuple[float, int, int] | None = None  # score, char start, char end
        null = math.inf
        for w in ws:
            offsets, cls = meta[w]["offsets"], meta[w]["cls_index"]
            s, e = np.asarray(start_logits[w], np.float64), np.asarray(end_logits[w], np.float64)
            null = min(null, float(s[cls] + e[cls]))
            span = best_span(s, e, offsets, n_best_size, max_answer_length)
            if span is not None and (best is None or span[0] > best[0]):
                best = (span[0], offsets[span[1]][0], offsets[span[2]][1])
        if best is None or (version_2_with_negative and null - best[0] > null_score_diff_threshold):
            predictions.append(QAPrediction("", null if math.isfinite(null) else 0.0, None, None))
        else:
            predictions.append(QAPrediction(contexts[ex][best[1] : best[2]], best[0], best[1], best[2]))
    return predictions


def abstention_warning(
    source: str, n_unanswerable: int, n_questions: int, version_2_with_negative: bool, train_unanswerable: int | None
) -> str | None:
    """The one-line warning for evaluation data with unanswerable questions on a run that never abstains.

    A run answers "no answer" only when it was trained SQuAD v2.0 style
    (``version_2_with_negative``) on data that had unanswerable questions
    (``train_unanswerable`` > 0; ``None`` for runs saved before the count was recorded: the
    v2.0 flag alone decides). Otherwise every unanswerable question scores 0 (NoAns).

    Args:
        source: how the evaluation data is named in messages (its file).
        n_unanswerable, n_questions: the evaluation data's unanswerable and total questions.
        version_2_with_negative: the run's v1.1/v2.0 choice (its model config).
        train_unanswerable: the run's unanswerable training questions, or ``None`` if unknown.

    Returns:
        The warning text (no "warning:" prefix), or ``None`` when there is nothing to warn about.
    """
    if n_unanswerable == 0:
        return None
    if version_2_with_negative and (train_unanswerable is None or train_unanswerable > 0):
        return None
    why = (
        "with data.version_2_with_negative true but no unanswerable training question"
        if version_2_with_negative
        else "on SQuAD v1.1-style data (every training question answerable)"
    )
    return (
        f"{source}: {n_unanswerable} of {n_questions} questions have no answer (SQuAD v2.0), but this run was trained "
        f"{why} and never abstains, so they score 0 (NoAns); to answer them, train on data with unanswerable "
        "questions (empty answers) and data.version_2_with_negative: true (or unset: detected)"
    )


# ---- the task --------------------------------------------------------------------------------
class ExtractiveQATask(Task):
    """Extractive QA with ``AutoModelForQuestionAnswering`` (a start/end linear head).

    Prediction records: ``{"answer": str, "score": float, "start": int | None, "end": int |
    None}``; ``start``/``end`` are character offsets in the context (``context[start:end] ==
    answer``) and are ``None`` (JSON ``null``) with ``answer == ""`` when the model abstains
    (SQuAD v2.0 runs only).
    """

    name = "question-answering"
    auto_model_class = AutoModelForQuestionAnswering
    peft_task_type = "QUESTION_ANS"
    # named so that peft's "all-linear" LoRA/IA3 leaves the head out of its targets and trains and
    # saves it in full (peft excludes only sequence-classification heads by itself)
    modules_to_save = ["qa_outputs"]
    default_metric = "f1"
    greater_is_better = True
    contiguous_split = True  # questions on one paragraph are neighbours: a random split would leak contexts

    def __init__(self, config: RunConfig, version_2_with_negative: bool | None = None, train_unanswerable: int | None = None):
        super().__init__(config)
        v2 = config.data.version_2_with_negative if version_2_with_negative is None else version_2_with_negative
        self.version_2_with_negative: bool | None = v2
        # unanswerable training questions (set by fit, stored in the model config); None: unknown
        self.train_unanswerable: int | None = train_unanswerable

    # ---- rows ---------------------------------------------------------------------------
    def _gold_answers(self, ds: datasets.Dataset, source: str) -> list[list[GoldAnswer]]:
        d = self.config.data
        contexts = list(ds[d.context_column])
        return [
            parse_answers(v, str(c), source, i, d.answers_column)
            for i, (v, c) in enumerate(zip(ds[d.answers_column], contexts), start=1)
        ]

    def fit(self, train: datasets.Dataset, source: str) -> None:
        """Check the training rows and decide SQuAD v1.1 vs v2.0 (unanswerable questions).

        With ``data.version_2_with_negative`` unset, v2.0 is chosen when some training row has
        no answer.

        Raises:
            DeltatuneError: as :meth:`check`; a row without answer when
                ``data.version_2_with_negative`` is false.
        """
        self.check(train, source, with_labels=True)
        golds = self._gold_answers(train, source)
        unanswerable = [i for i, g in enumerate(golds, start=1) if not g]
        self.train_unanswerable = len(unanswerable)
        if self.config.data.version_2_with_negative is None:
            self.version_2_with_negative = bool(unanswerable)
        elif unanswerable and not self.config.data.version_2_with_negative:
            raise DeltatuneError(
                f"{source}: row {unanswerable[0]} has no answer in column '{self.config.data.answers_column}' "
                f"({len(unanswerable)} such rows) but data.version_2_with_negative is false; "
                "set it true (or leave it unset) for SQuAD v2.0 data, or give every question an answer"
            )

    def check(self, ds: datasets.Dataset, source: str, with_labels: bool = True) -> None:
        """Check columns, non-empty questions and contexts, and (with labels) the answers.

        Raises:
            DeltatuneError: naming the file, the row (counted from 1) and the column.
        """
        d = self.config.data
        require_columns(ds, [d.question_column, d.context_column] + ([d.answers_column] if with_labels else []), source)
        for column in (d.question_column, d.context_column):
            for i, v in enumerate(ds[column], start=1):
                if is_missing(v):
                    raise DeltatuneError(
                        f"{source}: row {i} has an empty '{column}'; every row needs a question and a context "
                        "(set data.question_column / data.context_column if they are named otherwise)"
                    )
        if with_labels:
            self._gold_answers(ds, source)

    def evaluation_warning(self, ds: datasets.Dataset, source: str) -> str | None:
        """A warning when labelled rows ``ds`` have unanswerable questions this run never abstains on.

        See :func:`abstention_warning`; ``ds`` is checked already (:meth:`check` with labels).

        Returns:
            The one-line warning, or ``None``.
        """
        golds = self._gold_answers(ds, source)
        return abstention_warning(
            source, sum(1 for g in golds if not g), len(golds), bool(self.version_2_with_negative), self.train_unanswerable
        )

    long_inputs_truncated = False  # long contexts are split into overlapping windows

    def input_texts(self, ds: datasets.Dataset, source: str = "data") -> list[tuple[str, ...]]:
        """``(question, context)`` per row (see :meth:`Task.input_texts`)."""
        d = self.config.data
        return [(str(q), str(c)) for q, c in zip(ds[d.question_column], ds[d.context_column])]

    def rows_from_texts(self, texts: Sequence[Any]) -> datasets.Dataset:
        """Rows from ``(question, context)`` pairs, for ``Predictor.predict``.

        Raises:
            DeltatuneError: an item that is not a (question, context) pair (e.g. a bare string).
        """
        questions, contexts = [], []
        for i, item in enumerate(texts, start=1):
            if isinstance(item, str) or not isinstance(item, (tuple, list)) or len(item) != 2:
                raise DeltatuneError(
                    f"input {i}: question answering needs (question, context) pairs, e.g. "
                    "predict([('Who wrote it?', 'It was written by Ann.')]); from the command line use "
                    "--input with a file that has question and context columns"
                )
            questions.append(item[0])
            contexts.append(item[1])
        d = self.config.data
        return datasets.Dataset.from_dict({d.question_column: questions, d.context_column: contexts})

    # ---- encoding -----------------------------------------------------------------------
    def _fit_questions(self, questions: list[str], tokenizer) -> tuple[list[str], int]:
        """Questions cut to at most half the window's tokens, and the longest length left."""
        limit = max(1, (self.config.data.max_seq_length - tokenizer.num_special_tokens_to_add(pair=True)) // 2)
        enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
        out, longest = [], 0
        for q, offsets in zip(questions, enc["offset_mapping"]):
            if len(offsets) > limit:
                q = q[: offsets[limit - 1][1]]
            out.append(q)
            longest = max(longest, min(len(offsets), limit))
        return out, longest

    def encode(self, ds: datasets.Dataset, tokenizer, with_labels: bool = True, source: str = "data") -> Features:
        """Tokenize rows into overlapping windows, one feature per window.

        Features rows: ``input_ids``, ``attention_mask`` (and ``token_type_ids``), plus
        ``start_positions``/``end_positions`` (int token indices) with labels. ``meta`` per
        window: ``{"example": row index, "offsets": context (start, end) character offsets per
        token or None, "cls_index": int}``; ``examples`` per row: ``{"context": str,
        "answers": [GoldAnswer] or None}``.

        Raises:
            DeltatuneError: a slow tokenizer (no offsets), or ``data.doc_stride`` too large for
                the room the questions leave in a window.
        """
        d = self.config.data
        if not getattr(tokenizer, "is_fast", False):
            raise DeltatuneError("question answering needs a fast tokenizer (character offsets); this model has none")
        contexts = [str(c) for c in ds[d.context_column]]
        questions, longest = self._fit_questions([str(q).strip() for q in ds[d.question_column]], tokenizer)
        room = d.max_seq_length - tokenizer.num_special_tokens_to_add(pair=True) - longest
        stride = d.doc_stride if d.doc_stride is not None else max(1, min(d.max_seq_length // 3, room // 2))
        if stride >= room:
            raise DeltatuneError(
                f"data.doc_stride {stride} must be smaller than the context tokens per window ({room}: "
                f"max_seq_length {d.max_seq_length} minus the longest question, {longest} tokens, and special tokens); "
                "lower data.doc_stride or raise data.max_seq_length (e.g. 384 with doc_stride 128)"
            )
        golds = self._gold_answers(ds, source) if with_labels else None
        enc = tokenizer(
            questions,
            contexts,
            truncation="only_second",
            max_length=d.max_seq_length,
            stride=stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        rows, meta = [], []
        for w, ex in enumerate(enc["overflow_to_sample_mapping"]):
            ids = enc["input_ids"][w]
            offsets = [tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][w], enc.sequence_ids(w))]
            cls = ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0
            row = {k: enc[k][w] for k in keys}
            if golds is not None:
                answers = golds[ex]
                row["start_positions"], row["end_positions"] = window_labels(offsets, answers[0] if answers else None, cls)
            rows.append(row)
            meta.append({"example": int(ex), "offsets": offsets, "cls_index": cls})
        examples = [{"context": c, "answers": golds[i] if golds is not None else None} for i, c in enumerate(contexts)]
        return Features(rows, [len(r["input_ids"]) for r in rows], meta=meta, examples=examples)

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad to the batch's longest window; positions become (B,) int64 tensors."""
        batch = pad_batch(features, {"input_ids": self.pad_token_id, "attention_mask": 0, "token_type_ids": 0})
        if "start_positions" in features[0]:
            for key in ("start_positions", "end_positions"):
                batch[key] = torch.tensor([f[key] for f in features], dtype=torch.long)
        return batch

    # ---- model --------------------------------------------------------------------------
    def build_model(self, model_path: str, config_overrides: dict[str, Any]) -> torch.nn.Module:
        """``AutoModelForQuestionAnswering``; its ``qa_outputs`` head is new unless the checkpoint has one.

        The v1.1/v2.0 choice is stored in the model config (``deltatune_version_2_with_negative``),
        and, once :meth:`fit` has counted them, the unanswerable training questions
        (``deltatune_train_unanswerable``).
        """
        model, self.new_parameter_names = load_with_new_head(
            AutoModelForQuestionAnswering,
            model_path,
            trust_remote_code=self.config.model.trust_remote_code,
            allow_pickle_weights=self.config.model.allow_pickle_weights,
            **config_overrides,
        )
        setattr(model.config, V2_ATTRIBUTE, bool(self.version_2_with_negative))
        if self.train_unanswerable is not None:
            setattr(model.config, TRAIN_UNANSWERABLE_ATTRIBUTE, int(self.train_unanswerable))
        return model

    @staticmethod
    def _logits(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(start, end) float32 logits (B, T), padding positions set to the float32 minimum."""
        out = model(**{k: v for k, v in batch.items() if k not in ("start_positions", "end_positions")})
        pad = batch["attention_mask"] == 0
        low = torch.finfo(torch.float32).min
        return out.start_logits.float().masked_fill(pad, low), out.end_logits.float().masked_fill(pad, low)

    @staticmethod
    def _window_losses(start: torch.Tensor, end: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(CE(start) + CE(end)) / 2 per window, (B,) float32."""
        s = F.cross_entropy(start, batch["start_positions"], reduction="none")
        e = F.cross_entropy(end, batch["end_positions"], reduction="none")
        return (s + e) / 2

    def loss(self, model, batch):
        start, end = self._logits(model, batch)
        losses = self._window_losses(start, end, batch)
        return losses.sum(), torch.tensor(losses.shape[0], device=losses.device)

    def num_targets(self, batch) -> int:
        return int(batch["input_ids"].shape[0])

    # ---- outputs --------------------------------------------------------------------------
    @torch.no_grad()
    def eval_step(self, model, batch):
        """``start_logits``/``end_logits`` (B, T) float32 and, with labels, the window ``loss`` (B,)."""
        start, end = self._logits(model, batch)
        out = {"start_logits": start.cpu().numpy(), "end_logits": end.cpu().numpy()}
        if "start_positions" in batch:
            out["loss"] = self._window_losses(start, end, batch).cpu().numpy()
        return out

    def predictions(self, outputs: dict[str, np.ndarray], features: Features) -> list[QAPrediction]:
        """One :class:`QAPrediction` per row of ``features.examples``."""
        d = self.config.data
        return postprocess_predictions(
            outputs["start_logits"],
            outputs["end_logits"],
            features.meta,
            [ex["context"] for ex in features.examples],
            d.n_best_size,
            d.max_answer_length,
            bool(self.version_2_with_negative),
            d.null_score_diff_threshold,
        )

    def compute_metrics(self, outputs, features=None):
        """SQuAD ``exact_match``/``f1`` (percent), HasAns/NoAns splits if any, and the mean window ``loss``."""
        if features is None or features.meta is None:
            raise ValueError("question answering metrics need the Features (windows and contexts)")
        preds = self.predictions(outputs, features)
        refs = [[a.text for a in ex["answers"]] for ex in features.examples]
        metrics: dict[str, Any] = {}
        if "loss" in outputs:
            metrics["loss"] = float(np.mean(outputs["loss"]))
        metrics.update(squad_metrics([p.text for p in preds], refs))
        return metrics

    def decode(self, outputs, features=None):
        """``{"answer", "score", "start", "end"}`` per row (see the class docstring)."""
        if features is None or features.meta is None:
            raise ValueError("question answering decoding needs the Features (windows and contexts)")
        return [p.record() for p in self.predictions(outputs, features)]

    def worst_examples(self, outputs, features, rows, k):
        """The ``k`` questions whose predicted answer has the lowest SQuAD F1 (×100, the best over
        the gold answers, :func:`deltatune.metrics.squad.question_scores`), worst first; see
        :meth:`Task.worst_examples`.

        ``input`` is the question, " | " and the context; ``reference`` the gold answers joined
        by " / " (``(no answer)`` for an unanswerable question); ``prediction`` the answer.
        """
        questions = [str(q).strip() for q in rows[self.config.data.question_column]]
        records = []
        for i, (q, ex, pred) in enumerate(zip(questions, features.examples, self.predictions(outputs, features))):
            golds = [a.text for a in ex["answers"]]
            records.append(
                example_row(i, f"{q} | {ex['context']}", joined_references(golds), pred.text or "(no answer)", squad_f1(pred.text, golds))
            )
        return worst_examples(ROW_SCORERS["squad_em_f1"][1], True, records, k)

    @classmethod
    def from_pretrained_config(cls, config: RunConfig, model_config) -> "ExtractiveQATask":
        """The task of a saved run; the v1.1/v2.0 choice from the model config, else config.yaml;
        the unanswerable training questions from the model config (``None`` for older runs)."""
        v2 = getattr(model_config, V2_ATTRIBUTE, None)
        if v2 is None:
            v2 = config.data.version_2_with_negative
        n = getattr(model_config, TRAIN_UNANSWERABLE_ATTRIBUTE, None)
        return cls(config, bool(v2), None if n is None else int(n))

    @classmethod
    def demo_rows(cls) -> dict[str, Any]:
        """Eight ``question``/``context``/``answers`` rows (SQuAD answers); see :meth:`Task.demo_rows`."""
        rows = []
        for i, colour in enumerate("red green blue yellow purple orange black white".split()):
            context = f"The weather was fine. The favourite colour of unit {i} is {colour}. It rains."
            answer = {"text": [colour], "answer_start": [context.index(f" is {colour}.") + 4]}
            rows.append({"question": f"What is the favourite colour of unit {i}?", "context": context, "answers": answer})
        return {"rows": rows, "config": {}}
