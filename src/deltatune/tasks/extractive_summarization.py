"""Extractive summarization: score every sentence of a document, keep the best ``k`` in order.

Rows: ``data.text_column`` holds the document, either a list of sentences (SciTLDR's
``source``) or one string, split into sentences with pySBD
(:func:`deltatune.data.sentences.split_sentences`); ``data.target_column`` (default
``target``) holds the reference summary, a string or a list of references.

Training labels: the greedy ROUGE oracle (SummaRuNNer, Nallapati et al. 2017; BertSum, Liu &
Lapata 2019; see :func:`deltatune.data.sentences.greedy_oracle`) marks up to
``data.summary_sentences`` sentences as summary (1), the rest 0. With several references, a
selection counts by its best reference.

Model: a binary sentence classifier (``AutoModelForSequenceClassification``, 2 labels). Each
sentence is one feature, encoded as the pair (sentence, whole document) truncated to
``data.max_seq_length`` (longest-first: the document is cut first), so the encoder judges the
sentence in its context. Loss: cross-entropy summed over sentences; the loop divides by the
number of sentences (DESIGN.md).

Output: the ``data.summary_sentences`` sentences of highest P(summary), in document order,
joined by spaces. Metrics: ROUGE-1/2/L/Lsum F ×100 of those summaries (rouge-score with Porter
stemming; several references: the best one per ROUGE type, see
:func:`deltatune.metrics.text.rouge`), plus the sentence classifier's ``loss``,
``sentence_accuracy`` and ``sentence_f1`` (F1 of the summary class at argmax).
"""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np
import torch.nn.functional as F
import torch

from deltatune.config import RunConfig
from deltatune.data.columns import is_missing, require_columns
from deltatune.errors import DeltatuneError
from deltatune.metrics.text import rouge
from deltatune.tasks.base import Features
from deltatune.tasks.classification import ClassificationTask
from deltatune.tasks.examples import ROW_SCORERS, example_row, joined_references, rouge_l, worst_examples
from deltatune.data.sentences import greedy_oracle, split_sentences

SENTENCE_LABELS = ["other", "summary"]  # class ids 0 and 1


def top_k_in_order(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` highest ``scores`` (ties: the earlier sentence), in increasing order.

    Args:
        scores: float array (n,), one score per sentence.
        k: how many to keep (all when ``k >= n``).
    """
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return sorted(int(i) for i in order[:k])


class ExtractiveSummarizationTask(ClassificationTask):
    """Sentence scoring with a 2-class sequence classifier; one feature per sentence.

    Reuses :class:`ClassificationTask`'s head, collator, summed cross-entropy loss and
    ``eval_step`` (logits per sentence); adds the document <-> sentence bookkeeping.
    """

    name = "extractive-summarization"
    default_metric = "rougeL"  # type: ignore[assignment]
    greater_is_better = True

    def __init__(self, config: RunConfig, labels: list[str] | None = None, multi_label: bool | None = None):
        super().__init__(config, list(SENTENCE_LABELS), False)

    @property
    def target_column(self) -> str:
        return self.config.data.target_column or "target"

    # ---- rows ------------------------------------------------------------------------------
    def sentences(self, value: Any, row: int, source: str) -> list[str]:
        """The sentences of one document cell (a list is kept as given; a string is split).

        Entries that are missing or whitespace become ``""`` (kept, so indices match the
        user's list, but never scored).

        Raises:
            DeltatuneError: not a string or list, or no non-empty sentence.
        """
        col = self.config.data.text_column
        if isinstance(value, str):
            sents = split_sentences(value)
        elif isinstance(value, (list, tuple, np.ndarray)):
            sents = ["" if is_missing(s) else str(s).strip() for s in value]
        elif is_missing(value):
            sents = []
        else:
            raise DeltatuneError(
                f"{source}: row {row} column '{col}' holds a {type(value).__name__}; give the document as a text or a list of sentences"
            )
        if not any(sents):
            raise DeltatuneError(f"{source}: row {row} has no sentence in column '{col}'; remove the row or fill it")
        return sents

    def references(self, value: Any, row: int, source: str) -> list[str]:
        """The reference summaries of one row (a string or a list of strings).

        Raises:
            DeltatuneError: missing, empty, or not text.
        """
        col = self.target_column
        if isinstance(value, (list, tuple, np.ndarray)):
            refs = [str(v).strip() for v in value if not is_missing(v)]
        elif isinstance(value, str):
            refs = [value.strip()] if value.strip() else []
        else:
            refs = []
        if not refs:
            raise DeltatuneError(
                f"{source}: row {row} has no reference summary in column '{col}'; fill it, drop the row, "
                "or set data.target_column"
            )
        return refs

    def fit(self, train: datasets.Dataset, source: str) -> None:
        """Check the training rows (the label set is fixed: other/summary)."""
        self.check(train, source, with_labels=True)

    def check(self, ds: datasets.Dataset, source: str, with_labels: bool = True) -> None:
        """Check that every row has a document with a sentence (and, with labels, a reference).

        Raises:
            DeltatuneError: naming the file, the row (from 1) and the column.
        """
        d = self.config.data
        require_columns(ds, [d.text_column] + ([self.target_column] if with_labels else []), source)
        for i, v in enumerate(ds[d.text_column], start=1):
            self.sentences(v, i, source)
        if with_labels:
            for i, v in enumerate(ds[self.target_column], start=1):
                self.references(v, i, source)

    def stratify_keys(self, ds: datasets.Dataset) -> list | None:
        return None

    def input_texts(self, ds: datasets.Dataset, source: str = "data") -> list[tuple[str, ...]]:
        """``(sentence,)`` per sentence: the document paired with each is cut by design (see :meth:`encode`)."""
        docs = [self.sentences(v, i, source) for i, v in enumerate(ds[self.config.data.text_column], start=1)]
        return [(s,) for sents in docs for s in sents if s]

    def rows_from_texts(self, texts: list[str]) -> datasets.Dataset:
        """Rows for prediction from raw document strings (split into sentences when encoded)."""
        return datasets.Dataset.from_dict({self.config.data.text_column: [str(t) for t in texts]})

    # ---- encoding --------------------------------------------------------------------------
    def encode(self, ds: datasets.Dataset, tokenizer, with_labels: bool = True, source: str = "data") -> Features:
        """One feature per non-empty sentence: the pair (sentence, document) tokenized.

        Returns:
            :class:`Features` whose rows hold input_ids/attention_mask[/token_type_ids] and,
            with labels, ``labels`` (1 if the oracle selects the sentence, else 0); ``meta[i]``
            is (document index, sentence index); ``examples[d]`` is ``{"sentences": [...],
            "references": [...] or None, "oracle": [...] or None}`` for document ``d``.
        """
        d = self.config.data
        docs = [self.sentences(v, i, source) for i, v in enumerate(ds[d.text_column], start=1)]
        refs = (
            [self.references(v, i, source) for i, v in enumerate(ds[self.target_column], start=1)]
            if with_labels
            else [None] * len(docs)
        )
        examples, meta, firsts, seconds, labels = [], [], [], [], []
        for doc_idx, (sents, ref) in enumerate(zip(docs, refs)):
            oracle = greedy_oracle(sents, ref, d.summary_sentences) if ref is not None else None
            examples.append({"sentences": sents, "references": ref, "oracle": oracle})
            context = " ".join(s for s in sents if s)
            for j, s in enumerate(sents):
                if not s:
                    continue
                meta.append((doc_idx, j))
                firsts.append(s)
                seconds.append(context)
                labels.append(int(oracle is not None and j in oracle))
        enc = tokenizer(firsts, seconds, truncation="longest_first", max_length=d.max_seq_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        rows = [{k: enc[k][i] for k in keys} for i in range(len(firsts))]
        if with_labels:
            for row, y in zip(rows, labels):
                row["labels"] = y
        return Features(rows, [len(r["input_ids"]) for r in rows], meta=meta, examples=examples)

    # ---- outputs ---------------------------------------------------------------------------
    def document_scores(self, outputs: dict[str, np.ndarray], features: Features) -> list[np.ndarray]:
        """P(summary) per sentence, grouped by document: float64 (n_sentences,) each, NaN for empty sentences.

        ``outputs["logits"][i]`` belongs to ``features[i]`` (the trainer and predictor merge
        length-sorted batches back into feature order); ``features.meta[i]`` says which
        document and sentence that is.

        Raises:
            ValueError: ``features`` lacks meta/examples (not made by :meth:`encode`).
        """
        if features is None or features.meta is None or features.examples is None:
            raise ValueError("extractive summarization needs the Features made by encode (meta and examples)")
        probs = self.probabilities(np.asarray(outputs["logits"]))[:, 1]
        scores = [np.full(len(ex["sentences"]), np.nan) for ex in features.examples]
        for p, (doc_idx, sent_idx) in zip(probs, features.meta):
            scores[doc_idx][sent_idx] = p
        return scores

    def summaries(self, scores: list[np.ndarray], features: Features) -> list[tuple[str, list[int]]]:
        """(summary text, selected sentence indices) per document: top ``data.summary_sentences`` in order."""
        out = []
        for s, ex in zip(scores, features.examples):
            valid = np.where(np.isnan(s), -np.inf, s)
            k = min(self.config.data.summary_sentences, int(np.sum(~np.isnan(s))))
            idx = top_k_in_order(valid, k)
            out.append((" ".join(ex["sentences"][i] for i in idx), idx))
        return out

    def compute_metrics(self, outputs, features=None):
        """ROUGE of the extracted summaries per document, and the sentence classifier's loss/accuracy/F1."""
        logits, labels = np.asarray(outputs["logits"]), np.asarray(outputs["labels"])
        probs = self.probabilities(logits)
        pred = probs.argmax(-1)
        loss = F.cross_entropy(torch.from_numpy(logits).double(), torch.from_numpy(labels).long())
        tp = float(np.sum((pred == 1) & (labels == 1)))
        denom = float(np.sum(pred == 1) + np.sum(labels == 1))
        summaries = self.summaries(self.document_scores(outputs, features), features)
        refs = [ex["references"] for ex in features.examples]
        return {
            "loss": float(loss),
            **rouge([s for s, _ in summaries], refs),
            "sentence_accuracy": float(np.mean(pred == labels)) if len(labels) else 0.0,
            "sentence_f1": 2 * tp / denom if denom else 0.0,
            "documents": len(summaries),
        }

    def decode(self, outputs, features=None):
        """One record per document: ``summary``, ``sentence_indices`` (in order) and ``scores``.

        ``scores`` has one P(summary) per sentence of the document (``None`` for empty ones).
        """
        scores = self.document_scores(outputs, features)
        records = []
        for s, (text, idx) in zip(scores, self.summaries(scores, features)):
            records.append(
                {"summary": text, "sentence_indices": idx, "scores": [None if np.isnan(x) else float(x) for x in s]}
            )
        return records

    def worst_examples(self, outputs, features, rows, k):
        """The ``k`` documents whose extracted summary has the lowest ROUGE-L F (×100, the best
        over the references, as the ``rougeL`` metric scores each), worst first; see
        :meth:`deltatune.tasks.base.Task.worst_examples`.

        ``input`` is the document's sentences joined by spaces, ``reference`` the reference
        summaries joined by " / ", ``prediction`` the extracted summary.
        """
        summaries = self.summaries(self.document_scores(outputs, features), features)
        records = [
            example_row(i, " ".join(s for s in ex["sentences"] if s), joined_references(ex["references"]), text, rouge_l(text, ex["references"]))
            for i, (ex, (text, _)) in enumerate(zip(features.examples, summaries))
        ]
        return worst_examples(ROW_SCORERS["rouge"][1], True, records, k)

    @classmethod
    def from_pretrained_config(cls, config: RunConfig, model_config) -> "ExtractiveSummarizationTask":
        return cls(config)

    @classmethod
    def demo_rows(cls) -> dict[str, Any]:
        """Six documents (``text``: a list of sentences) with a one-sentence ``target``; see :meth:`Task.demo_rows`."""
        rows = []
        for i, topic in enumerate("graphs vision speech robots proteins music".split()):
            sents = ["It rained all day.", "The room was cold."]
            sents.insert(i % 3, f"We propose a new model for {topic}.")
            rows.append({"text": sents, "target": f"A new model for {topic}."})
        return {"rows": rows, "config": {}}
