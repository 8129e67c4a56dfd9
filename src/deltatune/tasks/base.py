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
from dataclasses import dataclass, field
from typing import Any, Sequence

import datasets
import numpy as np
import torch

from deltatune.config import DeltaConfig, RunConfig
from deltatune.errors import DeltatuneError
from deltatune.tasks.chat_format import EncodeStats


class Features(torch.utils.data.Dataset):
    """Encoded examples held in memory: a list of dicts of python lists/ints.

    ``lengths[i]`` is the token length of feature ``i`` (used by length-grouped batching and by
    length-sorted evaluation).

    Tasks where one input row gives several features (extractive QA: one feature per context
    window; extractive summarization: one per sentence) or where decoding needs more than the
    tensors (offsets, word ids) keep that in ``meta`` (one entry per feature, any Python
    object, never collated) and the source rows in ``examples``; both are handed back to
    :meth:`Task.compute_metrics` and :meth:`Task.decode` with the outputs.

    ``stats`` holds the encoding counts of tasks that report them (examples truncated, dropped,
    EOS appended; :class:`EncodeStats`, reported by ``deltatune check`` and in ``eval.json``),
    else ``None``.
    """

    def __init__(
        self,
        rows: list[dict[str, Any]],
        lengths: Sequence[int],
        meta: list[Any] | None = None,
        examples: list[dict[str, Any]] | None = None,
        stats: EncodeStats | None = None,
    ):
        self.rows = rows
        self.lengths = list(lengths)
        self.meta = meta
        self.examples = examples
        self.stats = stats
        if meta is not None and len(meta) != len(rows):
            raise ValueError(f"meta has {len(meta)} entries for {len(rows)} features")

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def num_examples(self) -> int:
        """Number of training examples held (one per feature; packed features hold several)."""
        return len(self.rows)

    def examples_in(self, indices: Sequence[int]) -> int:
        """Number of examples in the features at ``indices`` (a batch): one each here."""
        return len(indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


class Task(ABC):
    """Base class of all tasks: everything a caller (API, trainer, predictor, planners) uses.

    Subclasses set ``name`` (their registry name, :mod:`deltatune.tasks.registry`),
    ``default_metric`` and ``greater_is_better``, the model attributes
    (``auto_model_class``, ``peft_task_type``) and implement the abstract methods. Optional
    capabilities are the declared attributes below, with their defaults; callers read them
    and never probe a task for a method. Tasks that answer by generating text also derive
    from :class:`GenerativeTask`. ``source`` arguments are human-readable origins (a file
    path) used in error messages.

    Per-example analysis (analysis.json, report.html): :meth:`worst_examples` scores each
    validation row from the final evaluation's outputs and returns the lowest-scored ones
    (default ``None``: the task has no per-row score, e.g. masked-lm and causal-lm, whose
    features are packed blocks rather than rows); generative tasks score their generations
    instead (:meth:`GenerativeTask.scored_generations`).
    """

    name: str = ""
    default_metric: str = "loss"  # key of compute_metrics' result that selects the best checkpoint
    greater_is_better: bool = False

    # ---- declared capabilities (read by the callers named) --------------------------------
    # train.packing may put several examples in one sequence (deltatune.training.packing)
    supports_packing: bool = False
    # the validation split is carved out as the last rows rather than at random (deltatune.api)
    contiguous_split: bool = False
    # modules trained and saved whole next to a peft adapter (peft's ``modules_to_save``);
    # build_model may set it on the instance when it initialises a head fresh
    modules_to_save: list[str] | None = None
    # the model's output is logits over the whole vocabulary per token (memory estimate)
    vocab_logits: bool = False
    # sequences one example puts through the model per training forward pass (memory estimate,
    # micro-batch planning): 2 for a preference pair (chosen and rejected), G for GRPO's groups
    sequences_per_example: int = 1
    # ``data.*`` keys of the task's own hyperparameters, shown in report.html (see settings())
    setting_keys: tuple[str, ...] = ()
    # what the model reads: "text" (a tokenizer), "image" (an image processor) or "audio" (a feature
    # extractor); deltatune.models.loading.load_processor loads the matching one for set_tokenizer and
    # encode, and the vocabulary check (deltatune.data.coverage) runs on text only (deltatune.api);
    # "image-text": a vision-language model's AutoProcessor (tokenizer, image processor, chat template);
    # "audio-text": a speech-to-text model's AutoProcessor (feature extractor and tokenizer: WhisperProcessor)
    input_kind: str = "text"

    def __init__(self, config: RunConfig):
        self.config = config
        self.pad_token_id = 0

    def settings(self) -> dict[str, Any]:
        """The task's own hyperparameters as this run uses them (defaults resolved), by dotted config
        key: ``{"data.beta": 0.1, "data.loss_type": "sigmoid"}``. The trainer logs them in
        metrics.jsonl's start record and report.html lists them with the other hyperparameters."""
        return {f"data.{k}": getattr(self.config.data, k) for k in self.setting_keys}

    def set_tokenizer(self, tokenizer) -> None:
        """Remember what the collator needs from the tokenizer (its pad id). ``tokenizer`` is what
        ``load_processor(model, self.input_kind)`` gives: an image processor or feature extractor for
        image/audio tasks, which override this."""
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
    def encode(self, ds: datasets.Dataset, tokenizer, with_labels: bool = True, source: str = "data") -> Features:
        """Tokenize rows that :meth:`fit` or :meth:`check` accepted into :class:`Features`.

        Each feature row holds ``input_ids`` (list[int]) and, as the task needs,
        ``attention_mask`` / ``token_type_ids`` (list[int]) and ``labels`` (when
        ``with_labels``). Tasks that count what encoding did (truncation, dropped rows) return
        those counts in ``Features.stats``.

        Raises:
            DeltatuneError: rows that cannot be encoded, naming ``source`` and the row.
        """

    def rows_from_texts(self, texts: Sequence[Any]) -> datasets.Dataset:
        """Rows from plain inputs (``predict --text``, :meth:`Predictor.predict`).

        Default: each text fills ``data.text_column``; a ``(text, text_pair)`` tuple also fills
        ``data.text_pair_column`` when the run has one (a plain text then gets an empty pair).
        """
        d = self.config.data
        if d.text_pair_column:
            pairs = [t if isinstance(t, (tuple, list)) else (t, "") for t in texts]
            return datasets.Dataset.from_dict({d.text_column: [p[0] for p in pairs], d.text_pair_column: [p[1] for p in pairs]})
        return datasets.Dataset.from_dict({d.text_column: list(texts)})

    def planned_length(self, lengths: Sequence[int]) -> int:
        """Positions per example that the memory estimate and the micro-batch planner assume, from the
        training features' ``lengths``. Default: the longest, at most ``data.max_seq_length`` (inputs
        are cut to it)."""
        limit = self.config.data.max_seq_length
        return min(limit, max(lengths)) if len(lengths) else limit

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
    peft_task_type: str | None = ""  # peft's TaskType name (SEQ_CLS, TOKEN_CLS, CAUSAL_LM, ...); None: peft has none
    new_parameter_names: set = set()  # parameters build_model initialised fresh (the head)
    # model-config fields that define what the head outputs (label names, ...): head_config()
    head_config_keys: tuple[str, ...] = ()

    def head_config(self, model_config) -> dict[str, Any] | None:
        """What a user needs, besides an exported adapter, to rebuild this task's head on the base
        model: ``num_labels`` and the model-config fields of :attr:`head_config_keys` that are set
        (``id2label``, ``label2id``, ...); ``None`` for tasks without (a language-model head).
        Written as ``head_config.json`` next to an exported adapter
        (:func:`deltatune.delta.export.write_head_config`)."""
        if not self.head_config_keys:
            return None
        values = model_config.to_dict()
        head = {"num_labels": model_config.num_labels}
        head.update({k: values[k] for k in self.head_config_keys if values.get(k) is not None})
        return head

    def load_trained(self, model_dir: str) -> torch.nn.Module:
        """Load a model this task trained and saved (``save_pretrained`` folder)."""
        from deltatune.models.loading import load_pretrained

        m = self.config.model
        return load_pretrained(
            self.auto_model_class, model_dir, trust_remote_code=m.trust_remote_code, allow_pickle_weights=m.allow_pickle_weights
        )

    def load_pretrained_float32(self, auto_class: Any, model_path: str, config_overrides: dict[str, Any]) -> torch.nn.Module:
        """``auto_class.from_pretrained`` of ``model_path`` in float32 with ``config_overrides`` and the run's
        trust settings; sets :attr:`new_parameter_names` to the parameters the checkpoint lacks.

        Raises:
            DeltatuneError: unloadable weights (:func:`deltatune.models.loading.load_pretrained`).
        """
        from deltatune.models.loading import load_pretrained

        m = self.config.model
        model, info = load_pretrained(auto_class, model_path, trust_remote_code=m.trust_remote_code,
                                      allow_pickle_weights=m.allow_pickle_weights, dtype=torch.float32,
                                      output_loading_info=True, **config_overrides)
        self.new_parameter_names = set(info["missing_keys"])
        return model

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

    def worst_examples(
        self, outputs: dict[str, np.ndarray], features: Features, rows: datasets.Dataset, k: int
    ) -> dict[str, Any] | None:
        """The ``k`` validation rows this task scores lowest, worst first (analysis.json's ``worst_examples``).

        Args:
            outputs: concatenated :meth:`eval_step` outputs of ``features`` (as for :meth:`compute_metrics`).
            features: the encoded ``rows`` (with labels).
            rows: the labelled rows ``features`` were encoded from; a record's ``row`` is a
                0-based index into them.
            k: how many rows to return (``eval.worst_examples``, >= 1).

        Returns:
            ``{"score": what the score is, "higher_is_better": bool, "rows": [{"row", "input",
            "reference", "prediction", "score"}, ...]}`` (:func:`deltatune.tasks.examples.worst_examples`),
            or ``None`` (the default) when the task has no per-row score.
        """
        return None

    # ---- training extras (preference tuning, reinforcement fine-tuning) --------------------
    # the Trainer runs reference_step over the training and validation features once before
    # training (on the model as initialised, before a resume loads a checkpoint) and hands the
    # outputs to attach_reference (dpo, kto: data.precompute_reference)
    needs_reference_pass: bool = False

    def delta_config(self, delta: DeltaConfig) -> DeltaConfig:
        """The Δθ settings the model built by :meth:`build_model` is set up with (``deltatune.api``
        hands the result to ``apply_delta``). Default: ``delta`` unchanged; vision-language narrows
        LoRA's ``all-linear`` targets to the language model (not the image encoder)."""
        return delta

    def prepare_model(self, model: torch.nn.Module) -> None:
        """Called by the Trainer once, with the model on its device and before anything is trained
        (a resume's checkpoint not loaded yet): e.g. keep a frozen copy as the reference model.
        Default: nothing."""

    def reference_step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """Per-example reference outputs of a collated batch (no gradients), for :meth:`attach_reference`.

        Only called when :attr:`needs_reference_pass` is true.
        """
        raise NotImplementedError(f"task {self.name!r} declares no reference pass")

    def attach_reference(self, features: Features, outputs: dict[str, np.ndarray]) -> None:
        """Store the merged :meth:`reference_step` outputs of ``features`` (one entry per feature, in order)
        with the features, so that :meth:`collate` batches them for :meth:`loss`."""
        raise NotImplementedError(f"task {self.name!r} declares no reference pass")

    def training_features(self, features: Features) -> Features:
        """The features the Trainer trains on, made from the encoded training split (:meth:`encode`
        encodes every split alike, not knowing which one it is). Called once per run by
        :func:`deltatune.api.finetune`, before packing. Default: ``features`` unchanged;
        few-shot classification (``train.method: contrastive``) returns pairs of its texts."""
        return features

    def evaluation_warning(self, ds: datasets.Dataset, source: str) -> str | None:
        """A one-line warning about evaluating this run on ``ds`` (rows :meth:`check` accepted; ``source``
        names them), printed by :func:`deltatune.api.evaluate`, or ``None``: e.g. SQuAD v2.0 data with
        unanswerable questions on a question-answering run that never learned to abstain. Default: ``None``."""
        return None

    def finish_training(self, model: torch.nn.Module, train_features: Features) -> None:
        """Called once when training ends (not interrupted), on the main process, with the weights
        the run keeps in place (the best evaluated ones), before the model is saved and the final
        evaluation runs: e.g. fit a head that is not trained by gradient. ``train_features`` are
        :meth:`training_features`' result. Default: nothing."""

    def pop_train_metrics(self) -> dict[str, float]:
        """The task's own training statistics since the last call, averaged (DPO: rewards and
        reward accuracy; GRPO: reward mean/std, KL, completion length), logged with the training
        loss to metrics.jsonl; the counters restart. Default: none."""
        return {}

    def show_feature(self, tokenizer, feature: dict[str, Any]) -> list[str]:
        """Lines showing one encoded feature for ``deltatune check``: its text with the trained spans
        (labels != -100) wrapped in ``[[ ]]``. Tasks whose features hold several sequences
        (preference pairs) show each."""
        from deltatune.tasks.chat_format import mark_trained

        return [mark_trained(tokenizer, feature["input_ids"], feature.get("labels"))]

    @classmethod
    @abstractmethod
    def from_pretrained_config(cls, config: RunConfig, model_config) -> "Task":
        """Rebuild a fitted task from a run's config and its saved model config."""

    @classmethod
    def demo_rows(cls) -> dict[str, Any]:
        """A few small labelled rows and the config this task trains on (contract tests, docs).

        Returns:
            ``{"rows": [row dicts], "config": {dotted or nested config overrides}}``; the rows
            must give at least two of everything the task needs (two labels, two answers).
        """
        raise NotImplementedError(f"task {cls.name!r} declares no demo rows")


@dataclass
class ScoredGenerations:
    """What one generation pass over labelled rows gives (:meth:`GenerativeTask.scored_generations`).

    Attributes:
        metrics: the split's generation metrics, exactly :meth:`GenerativeTask.final_metrics`.
        rows: per generated row, in row order, ``{"row", "input", "reference", "prediction",
            "score"}`` (:func:`deltatune.tasks.examples.example_row`); empty when the
            generations are not scored per row.
        score: what a row's ``score`` is (e.g. ``"ROUGE-L F (0-100)"``), ``None`` without rows.
        higher_is_better: whether a higher row score is better.
    """

    metrics: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    score: str | None = None
    higher_is_better: bool = True


class GenerativeTask(ABC):
    """Mixin of the tasks that answer by generating text (decoder and encoder-decoder tasks).

    Callers test ``isinstance(task, GenerativeTask)``: prediction then generates
    (:meth:`generate_rows`) instead of decoding :meth:`Task.eval_step` outputs, and the final
    evaluation adds :meth:`final_metrics` to the token-loss metrics.

    Tasks whose generations are scored against references (:attr:`scores_generations`) also
    score each generated row (:meth:`scored_generations`, the same single generation pass as
    :meth:`final_metrics`): the final evaluation's worst rows and the generations before and
    after training in analysis.json come from it.
    """

    # final_metrics scores generations against reference outputs, row by row in
    # scored_generations; read by deltatune.api (generations before training, analysis.json)
    scores_generations: bool = False

    def scored_generations(
        self, model: torch.nn.Module, tokenizer, ds: datasets.Dataset, device: torch.device | str = "cpu", source: str = "data"
    ) -> ScoredGenerations:
        """:meth:`final_metrics` of labelled rows ``ds`` with the per-row records of the same generations.

        Default: the metrics alone (no rows), for tasks that score no generation per row.
        ``source`` names ``ds`` in error messages.
        """
        return ScoredGenerations(self.final_metrics(model, tokenizer, ds, device))

    @abstractmethod
    def generate_rows(
        self, model: torch.nn.Module, tokenizer, ds: datasets.Dataset, device: torch.device | str = "cpu", source: str = "data"
    ) -> tuple[list[str], list[bool]]:
        """Generate one output text per row of ``ds`` (rows that :meth:`Task.check` accepted
        without labels).

        Returns:
            (generated texts in row order, whether each generation ended with an end token
            within ``eval.max_new_tokens``).
        """

    # the task answers chat messages (decoder tasks: :meth:`chat_prompt_ids`); read by the HTTP API
    chat: bool = False

    def chat_prompt_ids(self, tokenizer, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a conversation followed by the assistant's generation prompt, rendered as
        training rendered prompts (the run's chat template, system prompt and BOS).

        Args:
            messages: ``[{"role": "system" | "user" | "assistant", "content": str}, ...]``.

        Raises:
            DeltatuneError: the task has no chat form (:attr:`chat` is False), or the template fails.
        """
        raise DeltatuneError(f"{type(self).__name__} does not take chat messages; send inputs to /v1/predict")

    @abstractmethod
    def final_metrics(self, model: torch.nn.Module, tokenizer, ds: datasets.Dataset, device: torch.device | str = "cpu") -> dict[str, Any]:
        """Generation metrics of labelled rows ``ds`` (e.g. ROUGE, BLEU), merged into the
        split's metrics at the end of a run; ``{}`` when there is nothing to score."""
