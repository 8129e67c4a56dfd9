"""Token classification (named entity recognition and other BIO tagging) on encoders.

Rows: a list of words in ``data.tokens_column`` and one tag per word in ``data.tags_column``
(CoNLL files give both as ``tokens``/``tags``; in JSON/JSONL they are lists; a string is split
on whitespace, as in a CSV cell ``"John lives in Paris"``). Tags are strings (integers are
turned into strings) of a BIO scheme: IOB2 (``B-X`` starts an entity, ``I-X`` continues it),
IOB1, IOBES or BILOU; all are converted to IOB2 when read (:func:`deltatune.metrics.ner.to_iob2`),
so the model learns and predicts IOB2 tags. The label list is ``O`` followed by ``B-X`` and
``I-X`` for every entity type ``X`` in the training data, sorted. For prediction only, rows
may instead hold raw text in ``data.text_column``, split on whitespace into words.

Encoding: the words are tokenized with ``is_split_into_words=True`` (a fast tokenizer is
needed for ``word_ids``), truncated to ``data.max_seq_length`` tokens. The first subword of a
word carries the word's tag; the other subwords and special tokens get -100 (ignored), unless
``data.label_all_subwords``, in which case continuation subwords carry the word's tag with
``B-`` turned into ``I-``. Words cut off by truncation (and the rare word the tokenizer maps
to no token at all) are predicted ``O``: metrics still count their gold entities as missed,
and ``truncated_words`` in the metrics says how many words were cut.

Loss: cross-entropy summed over labelled tokens; the number of targets is the number of
labelled tokens, so the loop normalises per token over the accumulated batch. A word's
prediction is the argmax at its first subword (Devlin et al. 2019, §5.3).

Metrics: entity precision/recall/F1 overall (micro) and per type, in ``conlleval``'s definition
(via seqeval), token (word) accuracy and the loss; see :mod:`deltatune.metrics.ner`.

Predictions: per row ``{"entities": [{"type", "text", "start", "end", "score"}], "tags": [...]}``
where ``tags`` are the predicted tags per word (valid IOB2: an ``I-X`` predicted after ``O`` or
another type is written ``B-X``, as it starts an entity), entities are read from them as the metrics do,
``start``/``end`` are character offsets (end exclusive) into the raw text for text rows and into
``" ".join(tokens)`` for token rows, and ``score`` is the mean over the entity's words of the
probability of the predicted tag.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForTokenClassification

from deltatune.config import RunConfig
from deltatune.data.columns import check_text_column, is_missing, require_columns
from deltatune.errors import DeltatuneError
from deltatune.metrics.ner import consistent_iob2, entity_metrics, entity_spans, split_tag, to_iob2
from deltatune.models.loading import load_with_new_head
from deltatune.tasks.base import Features, Task
from deltatune.tasks.classification import normalize_label
from deltatune.tasks.collate import model_inputs, pad_batch
from deltatune.tasks.examples import example_row, worst_examples

IGNORE_INDEX = -100
_WORD = re.compile(r"\S+")


def split_words(text: str) -> tuple[list[str], list[int]]:
    """Whitespace-separated words of ``text`` and the character offset of each in ``text``."""
    matches = list(_WORD.finditer(text))
    return [m.group() for m in matches], [m.start() for m in matches]


def join_offsets(words: list[str]) -> list[int]:
    """Character offset of each word in ``" ".join(words)``."""
    starts, pos = [], 0
    for w in words:
        starts.append(pos)
        pos += len(w) + 1
    return starts


def align_labels(word_ids: list[int | None], word_labels: list[int], continuation: list[int], label_all_subwords: bool) -> list[int]:
    """Token label ids from word label ids, for one tokenized sentence.

    Args:
        word_ids: per token, the index of its word, ``None`` for special tokens (the tokenizer's
            ``word_ids()``).
        word_labels: label id per word.
        continuation: per label id, the id to give continuation subwords (``B-X`` -> ``I-X``,
            others unchanged).
        label_all_subwords: label continuation subwords too (else they get -100).

    Returns:
        One int per token: the word's label id at its first subword, -100 at special tokens,
        and -100 or ``continuation[label]`` at later subwords.
    """
    out, prev = [], None
    for w in word_ids:
        if w is None:
            out.append(IGNORE_INDEX)
        elif w != prev:
            out.append(word_labels[w])
        else:
            out.append(continuation[word_labels[w]] if label_all_subwords else IGNORE_INDEX)
        prev = w
    return out


def first_subword_positions(word_ids: list[int | None], n_words: int) -> list[int]:
    """Per word, the token position of its first subword, or -1 when it has none (truncated)."""
    pos = [-1] * n_words
    for t, w in enumerate(word_ids):
        if w is not None and pos[w] < 0:
            pos[w] = t
    return pos


def tagged_words(words: list[str], tags: list[str]) -> str:
    """The words joined by spaces, each followed by ``/`` and its tag unless the tag is ``O``."""
    return " ".join(w if t == "O" else f"{w}/{t}" for w, t in zip(words, tags))


class TokenClassificationTask(Task):
    """Per-word tagging with a linear head on every token (``AutoModelForTokenClassification``)."""

    name = "token-classification"
    default_metric = "f1"
    greater_is_better = True
    auto_model_class = AutoModelForTokenClassification
    peft_task_type = "TOKEN_CLS"
    head_config_keys = ("id2label", "label2id")
    # peft's "all-linear" LoRA would also wrap the head and then fail to save it in full; naming
    # the head here keeps it out of the adapter targets (peft's head names for token/sequence heads)
    modules_to_save = ["classifier", "score"]

    def __init__(self, config: RunConfig, labels: list[str] | None = None):
        super().__init__(config)
        self.labels: list[str] = list(labels or [])

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.labels)}

    # ---- rows -----------------------------------------------------------------------------
    def _as_list(self, value: Any, column: str, row: int, source: str) -> list:
        if isinstance(value, str):
            return value.split()
        if isinstance(value, (list, tuple, np.ndarray)):
            return list(value)
        raise DeltatuneError(
            f"{source}: row {row} has {type(value).__name__} in '{column}'; give a list (JSON) or a space-separated string"
        )

    def _words(self, value: Any, row: int, source: str) -> list[str]:
        col = self.config.data.tokens_column
        words = self._as_list(value, col, row, source)
        if not words:
            raise DeltatuneError(f"{source}: row {row} has no tokens in '{col}'; remove the row")
        for k, w in enumerate(words, start=1):
            if is_missing(w):
                raise DeltatuneError(f"{source}: row {row} has an empty token (number {k}) in '{col}'; remove or fill it")
        return [str(w) for w in words]

    def _tags(self, value: Any, n_words: int, row: int, source: str) -> list[str]:
        d = self.config.data
        raw = self._as_list(value, d.tags_column, row, source)
        if len(raw) != n_words:
            raise DeltatuneError(
                f"{source}: row {row} has {n_words} tokens in '{d.tokens_column}' but {len(raw)} tags in "
                f"'{d.tags_column}'; give one tag per token"
            )
        try:
            tags = [normalize_label(t) for t in raw]
        except ValueError:
            raise DeltatuneError(f"{source}: row {row} has a missing tag in '{d.tags_column}'; fill it") from None
        try:
            return to_iob2(tags)
        except ValueError as e:
            raise DeltatuneError(
                f"{source}: row {row} in '{d.tags_column}': {e}; tags must follow a BIO scheme "
                "(IOB2, IOB1, IOBES or BILOU, e.g. B-PER I-PER O)"
            ) from None

    def _examples(self, ds: datasets.Dataset, source: str, with_labels: bool) -> list[dict[str, Any]]:
        """Validated rows as ``{"words", "starts", "text", "tags"}`` (tags IOB2, or None).

        Raises:
            DeltatuneError: missing columns, empty rows or tokens, tag/token count mismatch,
                non-BIO tags, tags of a type the training data lacks (when fitted).
        """
        d = self.config.data
        if not with_labels and d.tokens_column not in ds.column_names and d.text_column in ds.column_names:
            check_text_column(ds[d.text_column], d.text_column, source)
            out = []
            for text in ds[d.text_column]:
                words, starts = split_words(str(text))
                out.append({"words": words, "starts": starts, "text": str(text), "tags": None})
            return out
        require_columns(ds, [d.tokens_column] + ([d.tags_column] if with_labels else []), source)
        tag_values = ds[d.tags_column] if with_labels else [None] * len(ds)
        known = self.label2id
        out = []
        for i, (value, tag_value) in enumerate(zip(ds[d.tokens_column], tag_values), start=1):
            words = self._words(value, i, source)
            tags = self._tags(tag_value, len(words), i, source) if with_labels else None
            if tags is not None and known:
                for k, tag in enumerate(tags, start=1):
                    if tag not in known:
                        types = sorted({split_tag(t)[1] for t in self.labels if t != "O"})
                        raise DeltatuneError(
                            f"{source}: row {i} has tag '{tag}' (word {k}) in '{d.tags_column}' whose entity type "
                            f"'{split_tag(tag)[1]}' the training data does not have (known types: {', '.join(types)}); "
                            "fix the tag or add it to training"
                        )
            out.append({"words": words, "starts": join_offsets(words), "text": " ".join(words), "tags": tags})
        return out

    def input_texts(self, ds: datasets.Dataset, source: str = "data") -> list[tuple[str, ...]]:
        """``(words joined by spaces,)`` per row (see :meth:`Task.input_texts`)."""
        return [(ex["text"],) for ex in self._examples(ds, source, with_labels=False)]

    def rows_from_texts(self, texts: list[str]) -> datasets.Dataset:
        """Rows for raw texts (``Predictor.predict``): one ``data.text_column`` value each, split on whitespace at encoding."""
        return datasets.Dataset.from_dict({self.config.data.text_column: [str(t) for t in texts]})

    def fit(self, train: datasets.Dataset, source: str) -> None:
        """Build the label list (``O``, then ``B-X``/``I-X`` per entity type, sorted) and check the rows.

        Raises:
            DeltatuneError: as :meth:`check`, and when the tags hold no entity at all.
        """
        self.labels = []
        examples = self._examples(train, source, with_labels=True)
        types = {split_tag(t)[1] for ex in examples for t in ex["tags"] if t != "O"}
        if not types:
            raise DeltatuneError(
                f"{source}: column '{self.config.data.tags_column}' holds only 'O' tags; token classification needs entities (B-X/I-X tags)"
            )
        self.labels = ["O"] + sorted(f"{p}-{t}" for t in types for p in ("B", "I"))

    def check(self, ds: datasets.Dataset, source: str, with_labels: bool = True) -> None:
        """Validate rows (see :meth:`_examples`); rows are numbered from 1."""
        self._examples(ds, source, with_labels)

    # ---- encoding -----------------------------------------------------------------------
    def encode(self, ds: datasets.Dataset, tokenizer, with_labels: bool = True, source: str = "data") -> Features:
        """Tokenize the words of each row; one feature per row.

        Features rows hold ``input_ids``, ``attention_mask`` (``token_type_ids``) and, with
        labels, ``labels`` (one label id or -100 per token, see :func:`align_labels`);
        ``meta[i]`` is ``{"word_ids": [...]}`` and ``examples[i]`` the validated row
        (``words``, ``starts``, ``text``, ``tags``).

        Raises:
            DeltatuneError: the tokenizer is not a fast one (``word_ids`` unavailable), bad rows.
        """
        if not getattr(tokenizer, "is_fast", False):
            raise DeltatuneError(
                f"token classification needs a fast (Rust) tokenizer to map subwords to words; {type(tokenizer).__name__} is not"
            )
        d = self.config.data
        examples = self._examples(ds, source, with_labels)
        enc = tokenizer([ex["words"] for ex in examples], is_split_into_words=True, truncation=True, max_length=d.max_seq_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        l2i = self.label2id
        continuation = [l2i.get("I-" + n[2:], i) if n.startswith("B-") else i for i, n in enumerate(self.labels)]
        rows, meta = [], []
        for i, ex in enumerate(examples):
            word_ids = enc.word_ids(i)
            row = {k: enc[k][i] for k in keys}
            if with_labels:
                row["labels"] = align_labels(word_ids, [l2i[t] for t in ex["tags"]], continuation, d.label_all_subwords)
            rows.append(row)
            meta.append({"word_ids": word_ids})
        return Features(rows, [len(r["input_ids"]) for r in rows], meta=meta, examples=examples)

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return pad_batch(
            features, {"input_ids": self.pad_token_id, "attention_mask": 0, "token_type_ids": 0, "labels": IGNORE_INDEX}
        )

    # ---- model --------------------------------------------------------------------------
    def build_model(self, model_path: str, config_overrides: dict[str, Any]) -> torch.nn.Module:
        """``AutoModelForTokenClassification`` with ``num_labels``, ``id2label``, ``label2id``.

        The head is new (or re-initialised when its shape does not match): listed in
        :attr:`new_parameter_names`.
        """
        model, self.new_parameter_names = load_with_new_head(
            AutoModelForTokenClassification,
            model_path,
            trust_remote_code=self.config.model.trust_remote_code,
            allow_pickle_weights=self.config.model.allow_pickle_weights,
            num_labels=len(self.labels),
            id2label=dict(enumerate(self.labels)),
            label2id=self.label2id,
            **config_overrides,
        )
        return model

    def loss(self, model, batch):
        """(cross-entropy summed over labelled tokens, number of labelled tokens)."""
        logits = model(**model_inputs(batch)).logits.float()
        labels = batch["labels"]
        total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
        return total, (labels != IGNORE_INDEX).sum()

    def num_targets(self, batch) -> int:
        return int((batch["labels"] != IGNORE_INDEX).sum())

    # ---- outputs --------------------------------------------------------------------------
    @torch.no_grad()
    def eval_step(self, model, batch):
        """Per token: ``predictions`` (B, T) int64 label ids and ``scores`` (B, T) float32 their
        probabilities; with labels also ``loss`` (B,) float64 summed over labelled tokens and
        ``num_targets`` (B,) int64."""
        logits = model(**model_inputs(batch)).logits.float()
        scores, predictions = torch.softmax(logits, dim=-1).max(dim=-1)
        out = {"predictions": predictions.cpu().numpy(), "scores": scores.cpu().numpy()}
        if "labels" in batch:
            labels = batch["labels"]
            per_token = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
            out["loss"] = per_token.sum(-1).double().cpu().numpy()
            out["num_targets"] = (labels != IGNORE_INDEX).sum(-1).cpu().numpy()
        return out

    def _word_predictions(self, outputs: dict[str, np.ndarray], features: Features | None) -> list[tuple[list[str], list, int]]:
        """Per row: (predicted tag per word, its probability or None, number of truncated words).

        Raises:
            ValueError: ``features`` without ``meta``/``examples`` (word ids are needed).
        """
        if features is None or features.meta is None or features.examples is None:
            raise ValueError("token classification needs the Features (word ids) to turn token outputs into word tags")
        out = []
        for i, (meta, ex) in enumerate(zip(features.meta, features.examples)):
            n = len(ex["words"])
            pos = first_subword_positions(meta["word_ids"], n)
            kept = max((w for w in meta["word_ids"] if w is not None), default=-1) + 1
            preds, scores = outputs["predictions"][i], outputs["scores"][i]
            tags = [self.labels[int(preds[p])] if p >= 0 else "O" for p in pos]
            probs = [float(scores[p]) if p >= 0 else None for p in pos]
            out.append((tags, probs, n - kept))
        return out

    def compute_metrics(self, outputs, features=None):
        """``loss`` (mean CE per labelled token), entity ``precision``/``recall``/``f1`` overall and
        per type, word ``accuracy`` (see :func:`deltatune.metrics.ner.entity_metrics`) and
        ``truncated_words`` (words cut by ``max_seq_length``, scored as ``O`` predictions).

        Raises:
            ValueError: ``features`` missing (word ids are needed).
        """
        words = self._word_predictions(outputs, features)
        gold = [ex["tags"] for ex in features.examples]
        pred = [tags for tags, _, _ in words]
        truncated = sum(cut for _, _, cut in words)
        loss = float(np.sum(outputs["loss"]) / max(int(np.sum(outputs["num_targets"])), 1))
        return {"loss": loss, **entity_metrics(gold, pred), "truncated_words": truncated}

    def decode(self, outputs, features=None):
        """One record per row: ``{"entities": [...], "tags": [...]}`` (see the module docstring)."""
        records, truncated, rows_cut = [], 0, 0
        words = self._word_predictions(outputs, features)
        for ex, (tags, probs, cut) in zip(features.examples, words):
            entities = []
            for kind, first, last in entity_spans(tags):
                start, end = ex["starts"][first], ex["starts"][last] + len(ex["words"][last])
                entities.append(
                    {
                        "type": kind,
                        "text": ex["text"][start:end],
                        "start": start,
                        "end": end,
                        "score": float(np.mean(probs[first : last + 1])),
                    }
                )
            records.append({"entities": entities, "tags": consistent_iob2(tags)})
            truncated += cut
            rows_cut += cut > 0
        if truncated:
            warnings.warn(
                f"{truncated} words in {rows_cut} rows lie beyond data.max_seq_length={self.config.data.max_seq_length} "
                "tokens and were predicted 'O'; raise data.max_seq_length (at most the model's positions) to tag them",
                stacklevel=2,
            )
        return records

    def worst_examples(self, outputs, features, rows, k):
        """The ``k`` sentences with the lowest word accuracy (share of words whose predicted tag
        is the gold one, ``O`` included, words cut by ``max_seq_length`` predicted ``O``: the
        ``accuracy`` metric per sentence), worst first; see :meth:`Task.worst_examples`.

        ``input`` is the words joined by spaces; ``reference`` and ``prediction`` the words with
        their gold / predicted tag after a slash where it is not ``O`` (``EU/B-ORG rejects
        German/B-MISC call``).
        """
        records = []
        for i, (ex, (tags, _, _)) in enumerate(zip(features.examples, self._word_predictions(outputs, features))):
            gold = ex["tags"]
            accuracy = sum(g == t for g, t in zip(gold, tags)) / max(len(gold), 1)
            records.append(example_row(i, ex["text"], tagged_words(ex["words"], gold), tagged_words(ex["words"], tags), accuracy))
        return worst_examples("word accuracy", True, records, k)

    @classmethod
    def from_pretrained_config(cls, config: RunConfig, model_config) -> "TokenClassificationTask":
        id2label = {int(k): v for k, v in model_config.id2label.items()}
        return cls(config, [id2label[i] for i in range(len(id2label))])

    @classmethod
    def demo_rows(cls) -> dict[str, Any]:
        """Eight ``tokens``/``tags`` rows with PER and LOC entities (IOB2); see :meth:`Task.demo_rows`."""
        rows = [
            {"tokens": ["Paris", "is", "nice"], "tags": ["B-LOC", "O", "O"]},
            {"tokens": ["see", "John", "Smith"], "tags": ["O", "B-PER", "I-PER"]},
        ]
        return {"rows": rows * 4, "config": {}}
