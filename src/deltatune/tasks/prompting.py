"""What the text-to-text tasks share, whether a decoder or an encoder-decoder does them.

Summarization, translation and generative QA run either by prompting a decoder
(:class:`deltatune.tasks.language_modeling.PromptedTask`) or on an encoder-decoder
(:mod:`deltatune.tasks.seq2seq`). Both read their rows the same way and are scored the same
way:

- :class:`PromptedColumns`: the input text is ``data.prompt_template`` (else the task family's
  default template) filled from the row's columns (``{column}`` placeholders, plus
  ``{source_lang}``/``{target_lang}`` from the config); the reference output is
  ``data.target_column`` (default ``target``; ``answers`` for generative-qa, where SQuAD
  ``{"text": [...]}`` answers give several references).
- :data:`SCORERS`: ROUGE for summarization, BLEU/chrF for translation, SQuAD exact match/F1
  for generative QA (see :mod:`deltatune.metrics.text`), as the task registry
  (:mod:`deltatune.tasks.registry`) names them.
- :class:`GenerationMetrics`: the final evaluation generates for up to
  ``eval.generation_max_samples`` rows and scores them (the corpus metrics, and each row on its
  own for analysis.json).
- :func:`token_loss_metrics`: loss and perplexity from summed token losses.
"""

from __future__ import annotations

import functools
import string
from typing import Any, Callable, Sequence

import datasets
import numpy as np

from deltatune.config import RunConfig
from deltatune.data.columns import require_columns
from deltatune.errors import DeltatuneError
from deltatune.metrics import text as text_metrics
from deltatune.metrics.text import perplexity
from deltatune.tasks.base import ScoredGenerations
from deltatune.tasks.examples import ROW_SCORERS, example_row, joined_references
from deltatune.tasks.registry import REGISTRY

# generation metrics per task name: (predictions, references per prediction) -> {metric: value};
# each task's scorer is named in the task registry
SCORERS: dict[str, Callable[[Sequence[str], Sequence[Sequence[str]]], dict[str, float]]] = {
    spec.name: vars(text_metrics)[spec.scorer] for spec in REGISTRY.values() if spec.scorer
}

# placeholders filled from the config rather than from a column
CONFIG_FIELDS = ("source_lang", "target_lang")


@functools.lru_cache(maxsize=32)
def template_columns(template: str) -> tuple[str, ...]:
    """The columns a ``str.format`` prompt template reads, in order of first use (parsed once per template).

    Raises:
        DeltatuneError: the template is not a valid ``str.format`` template, uses positional
            (``{}``) fields, or reads no column (every prompt would be the same).
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise DeltatuneError(f"data.prompt_template {template!r} is not a valid template ({e}); use {{column}} placeholders") from None
    names = [f for _, f, _, _ in parsed if f is not None]
    if any(not f or f.isdigit() for f in names):
        raise DeltatuneError(f"data.prompt_template {template!r} has a positional field {{}}; name a column, e.g. {{source}}")
    fields = [f for f in names if f not in CONFIG_FIELDS]
    if not fields:
        raise DeltatuneError(
            f"data.prompt_template {template!r} reads no column, so every prompt would be the same; add a "
            "{column} placeholder, e.g. {source}"
        )
    return tuple(dict.fromkeys(fields))


def cell_text(value: Any) -> str:
    """A table cell as text: lists are joined with spaces, ``None`` is empty."""
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return "" if value is None else str(value)


def token_loss_metrics(outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Mean token loss (nats), perplexity (exp of it) and the token count of a split.

    Args:
        outputs: ``loss_sum`` (N,) float, the summed token cross-entropy per example, and
            ``tokens`` (N,) int, its number of target tokens.
    """
    total, n = float(np.sum(outputs["loss_sum"])), int(np.sum(outputs["tokens"]))
    loss = total / max(n, 1)
    return {"loss": loss, "perplexity": perplexity(loss), "tokens": n}


class PromptedColumns:
    """Mixin: the prompt text and the references of a row for a text-to-text task.

    Needs ``name`` (a key of :data:`SCORERS` and of ``default_prompts``), ``config`` and
    ``default_prompts`` (task name -> template) on the class.
    """

    name: str
    config: RunConfig
    default_prompts: dict[str, str] = {}

    @property
    def template(self) -> str:
        """``data.prompt_template``, else this task family's default for the task."""
        return self.config.data.prompt_template or self.default_prompts[self.name]

    @property
    def target_column(self) -> str:
        """The column holding the reference output."""
        return self.config.data.target_column or ("answers" if self.name == "generative-qa" else "target")

    def template_columns(self) -> list[str]:
        """The columns the template reads, in order of first use (see :func:`template_columns`)."""
        return list(template_columns(self.template))

    def fit_columns(self, ds: datasets.Dataset, source: str, with_labels: bool = True) -> None:
        """Check that the template's columns (and the target column when labelled) exist.

        Raises:
            DeltatuneError: a missing column, naming the file and the columns that exist.
        """
        missing = [c for c in self.template_columns() if c not in ds.column_names]
        if missing:
            raise DeltatuneError(
                f"{source}: no column '{missing[0]}' for the prompt template {self.template!r}; columns are "
                f"{', '.join(repr(c) for c in ds.column_names)} (name the input columns in data.prompt_template, "
                "e.g. '...{en}')"
            )
        if with_labels:
            require_columns(ds, [self.target_column], source)

    def rows_from_texts(self, texts: Sequence[Any]) -> datasets.Dataset:
        """Rows from plain inputs (``predict --text``): a text fills the template's column when it
        reads one; a tuple fills its columns in order; a dict is a row.

        Raises:
            DeltatuneError: a plain text for a template that reads several columns.
        """
        cols = self.template_columns()
        rows = []
        for t in texts:
            if isinstance(t, dict):
                row = dict(t)
            elif isinstance(t, (list, tuple)):
                row = dict(zip(cols, map(str, t)))
            elif len(cols) > 1:
                raise DeltatuneError(
                    f"{self.name} prompts read several columns ({', '.join(cols)}): one --text cannot fill them; "
                    "predict from a file with --input (a column each)"
                )
            else:
                row = {cols[0]: str(t)}
            rows.append({**row, self.target_column: ""})
        return datasets.Dataset.from_list(rows)

    def references(self, row: dict[str, Any]) -> list[str]:
        """The reference outputs of one row (several for SQuAD-style answers)."""
        value = row.get(self.target_column)
        if isinstance(value, dict) and "text" in value:  # SQuAD answers
            value = value["text"]
        if isinstance(value, (list, tuple)):
            return [str(v) for v in value] or [""]
        return [cell_text(value)]

    def target_text(self, row: dict[str, Any], row_number: int, source: str) -> str:
        """The (first) reference output, the training target.

        Raises:
            DeltatuneError: an empty target, naming the file, the row (from 1) and the column.
        """
        refs = self.references(row)
        if not refs or not refs[0].strip():
            raise DeltatuneError(f"{source}: row {row_number} has an empty '{self.target_column}'; fill it or drop the row")
        return refs[0]

    def fill_template(self, row: dict[str, Any], source: str, row_number: int | None = None) -> str:
        """The template filled from the row's columns and the config's language names.

        Raises:
            DeltatuneError: the template names a column the data lacks, a column it reads is
                empty in this row, or the template is malformed.
        """
        fields = {k: cell_text(v) for k, v in row.items()}
        at = f"{source}: row {row_number}" if row_number is not None else source
        for c in self.template_columns():
            if c in fields and not fields[c].strip():
                raise DeltatuneError(f"{at} has an empty '{c}'; fill it or drop the row")
        fields.setdefault("source_lang", self.config.data.source_lang)
        fields.setdefault("target_lang", self.config.data.target_lang)
        try:
            return self.template.format_map(fields)
        except KeyError as e:
            raise DeltatuneError(f"data.prompt_template uses {{{e.args[0]}}} but {source} has no such column") from None
        except (ValueError, IndexError, AttributeError) as e:
            raise DeltatuneError(f"data.prompt_template {self.template!r} cannot be filled ({e}); use plain {{column}} placeholders") from None

    def example_input(self, row: dict[str, Any], row_number: int, source: str) -> str:
        """The input of one row as analysis.json shows it: the filled template (:meth:`fill_template`)."""
        return self.fill_template(row, source, row_number)

    @classmethod
    def demo_rows(cls) -> dict[str, Any]:
        """Eight rows of this text-to-text task (both implementations share them); see
        :meth:`deltatune.tasks.base.Task.demo_rows`."""
        words = "red blue green pink gold gray teal navy".split()
        if cls.name == "generative-qa":
            rows = [
                {"question": f"Which colour is item {i}?", "context": f"Item {i} is {w}.", "answers": {"text": [w], "answer_start": [len(f"Item {i} is ")]}}
                for i, w in enumerate(words)
            ]
        else:
            rows = [{"source": f"the {w} house", "target": f"{w} house"} for w in words]
        return {"rows": rows, "config": {}}

    def score(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
        """This task's generation metrics (:data:`SCORERS`)."""
        return SCORERS[self.name](predictions, references)


class GenerationMetrics:
    """Mixin: the final evaluation of a generative task (``final_metrics``, called by the API) and
    its per-row scores (``scored_generations``: analysis.json's worst rows and generations).

    Needs ``config``, ``name``, ``generate_rows(model, tokenizer, ds, device)``,
    ``references(row)``, ``score(predictions, references)`` and ``example_input(row,
    row_number, source)`` (the input as report.html shows it).
    """

    scores_generations = True

    def final_metrics(self, model, tokenizer, ds: datasets.Dataset, device="cpu") -> dict[str, Any]:
        """Generate for up to ``eval.generation_max_samples`` rows and score them.

        Returns:
            The task's scores, ``generation_eos_share`` (share of generations that ended with
            EOS within ``eval.max_new_tokens``), ``generated_examples`` and three ``samples``.
        """
        return self._generate_and_score(model, tokenizer, ds, device, "data", per_row=False).metrics

    def scored_generations(self, model, tokenizer, ds: datasets.Dataset, device="cpu", source: str = "data") -> ScoredGenerations:
        """:meth:`final_metrics` and, from the same generations, one record per generated row
        scored with the task's metric family (:data:`deltatune.tasks.examples.ROW_SCORERS`:
        ROUGE-L F, sentence chrF or SQuAD F1, each 0-100)."""
        return self._generate_and_score(model, tokenizer, ds, device, source, per_row=True)

    def _generate_and_score(self, model, tokenizer, ds: datasets.Dataset, device, source: str, per_row: bool) -> ScoredGenerations:
        """One generation pass over the first ``eval.generation_max_samples`` rows, scored."""
        n = min(len(ds), self.config.eval.generation_max_samples)
        if n == 0:
            return ScoredGenerations({})
        ds = ds.select(range(n))
        preds, ended = self.generate_rows(model, tokenizer, ds, device, source)
        refs = [self.references(row) for row in ds]
        metrics = self.score(preds, refs)
        metrics["generation_eos_share"] = float(np.mean(ended))
        metrics["generated_examples"] = n
        metrics["samples"] = [{"prediction": p, "reference": r[0] if r else ""} for p, r in list(zip(preds, refs))[:3]]
        if not per_row:
            return ScoredGenerations(metrics)
        spec = REGISTRY.get(self.name)
        if spec is None or spec.scorer not in ROW_SCORERS:  # a scorer with no per-row form: metrics only
            return ScoredGenerations(metrics)
        row_score, score_name = ROW_SCORERS[spec.scorer]
        rows = [
            example_row(i, self.example_input(row, i + 1, source), joined_references(r), p, row_score(p, r))
            for i, (row, p, r) in enumerate(zip(ds, preds, refs))
        ]
        return ScoredGenerations(metrics, rows, score_name, higher_is_better=True)
