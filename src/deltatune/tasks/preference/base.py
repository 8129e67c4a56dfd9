"""What the paired preference tasks (dpo, orpo, simpo) share: reading and encoding pairs, one
forward pass over chosen and rejected together, the reference model, the metrics.

A feature is one pair: ``input_ids``/``labels`` hold the chosen sequence (prompt + chosen
response), ``rejected_input_ids``/``rejected_labels`` the rejected one, sharing the prompt's
ids; labels are -100 over the prompt, so a sequence's log-probability is the sum of its
response tokens' log-probabilities (through the end-of-turn/EOS token). With a precomputed
reference (:attr:`needs_reference_pass`) the feature also holds ``ref_chosen_logps`` and
``ref_rejected_logps``.

:meth:`collate` stacks the chosen rows first and the rejected rows after them into one batch
of 2B sequences (TRL's "concatenated forward"), so one forward pass gives both log-probability
sums; the LM head and the log-softmax run only at trained positions in chunks
(:mod:`deltatune.tasks.token_loss`), never over the full B x T x V logits.

The reference model (DPO, KTO) is, in this order: the peft model with its adapter disabled (a
Δθ run: no second copy of the weights); a frozen copy of the model made before training
(full fine-tuning with ``data.precompute_reference: false``); the model itself as initialised
(the Trainer's reference pass, which runs before anything is trained); the base model named in
the run's config, loaded once (evaluating a saved full fine-tune).

Metrics (TRL's names with ``_`` for ``/``): ``reward_accuracy`` (share of pairs whose chosen
reward is above the rejected one; a tie counts one half, so a model that has not moved from its
reference scores 0.5), ``rewards_chosen``, ``rewards_rejected``, ``rewards_margin``,
``logps_chosen``, ``logps_rejected`` (summed response log-probabilities, nats),
``logps_accuracy`` (share of pairs the policy itself gives the chosen response a higher
log-probability, ties one half: the "before" figure of a base model), ``sft_loss`` (mean
cross-entropy per chosen response token) and ``loss``.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator, Optional

import datasets
import numpy as np
import torch

from deltatune.config import RunConfig
from deltatune.errors import DeltatuneError
from deltatune.tasks.base import Features
from deltatune.tasks.chat_format import IGNORE_INDEX, mark_trained
from deltatune.tasks.collate import pad_batch
from deltatune.tasks.examples import example_row, worst_examples
from deltatune.tasks.generation import generate
from deltatune.tasks.language_modeling import LanguageModelTask
from deltatune.tasks.preference.data import (
    PreferenceEncoder,
    PreferenceExample,
    PreferenceStats,
    detect_preference_format,
    hh_messages,
    read_example,
    split_dialogues,
)
from deltatune.tasks.preference.losses import sequence_logps
from deltatune.tasks.prompting import SCORERS, GenerationMetrics
from deltatune.tasks.token_loss import next_token_losses, resolve_chunk_size, unwrap

# the columns collate stacks into the 2B-row batch (chosen rows first)
_SEQUENCE_KEYS = ("input_ids", "labels")


def is_adapter_model(model: torch.nn.Module) -> bool:
    """Whether ``model`` (unwrapped from DDP/compile) is a peft model, whose adapter can be disabled."""
    from peft import PeftModel

    return isinstance(unwrap(model), PeftModel)


class StatSums:
    """Running sums of per-pair statistics between two :meth:`pop` calls (training logs)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, values: dict[str, torch.Tensor]) -> None:
        """Add per-pair values, each (B,) float, detached."""
        n = 0
        for k, v in values.items():
            v = v.detach().float()
            self.sums[k] = self.sums.get(k, 0.0) + float(v.sum())
            n = v.numel()
        self.count += n

    def pop(self) -> dict[str, float]:
        """The means since the last pop; the sums restart."""
        out = {k: s / self.count for k, s in self.sums.items()} if self.count else {}
        self.sums, self.count = {}, 0
        return out


def accuracy(chosen: np.ndarray, rejected: np.ndarray) -> float:
    """Share of pairs with ``chosen > rejected``, a tie counting one half."""
    if len(chosen) == 0:
        return float("nan")
    return float(np.mean((chosen > rejected) + 0.5 * (chosen == rejected)))


class PreferenceTask(GenerationMetrics, LanguageModelTask):
    """Base of dpo, orpo and simpo: pairs of a preferred and a dispreferred response to one prompt.

    Subclasses implement :meth:`pair_loss` and set ``default_beta``; ``uses_reference`` says
    whether the loss reads a reference model (DPO) or not (ORPO, SimPO).
    """

    default_metric = "loss"
    greater_is_better = False
    supports_packing = False
    paired = True
    uses_reference = False
    default_beta = 0.1
    sequences_per_example = 2  # chosen + rejected (KTO: the completion + its mismatched KL sequence)
    scores_generations = True
    # feature/batch keys of the reference log-probabilities of the first and second half of the 2B rows
    reference_keys = ("ref_chosen_logps", "ref_rejected_logps")

    def __init__(self, config: RunConfig):
        super().__init__(config)
        d = config.data
        self.beta = d.beta if d.beta is not None else self.default_beta
        self.needs_reference_pass = self.uses_reference and d.precompute_reference
        self._stats = StatSums()
        self._reference_copy: Optional[torch.nn.Module] = None
        self._initial_model: Optional[torch.nn.Module] = None

    def settings(self) -> dict[str, Any]:
        """``data.beta`` as used (the task's default when unset), then the task's ``setting_keys``."""
        return {"data.beta": self.beta, **super().settings()}

    # ---- rows ------------------------------------------------------------------------------
    def columns(self) -> dict[str, str]:
        """The column names of a pair (``data.prompt_column`` ...)."""
        d = self.config.data
        return {"prompt_column": d.prompt_column, "chosen_column": d.chosen_column, "rejected_column": d.rejected_column}

    def data_format(self, ds: datasets.Dataset, source: Optional[str] = None) -> str:
        """The preference format of ``ds`` from its columns (see :func:`detect_preference_format`);
        ``source`` (the file) is named in the error."""
        return detect_preference_format(ds.column_names, paired=self.paired, source=source, **self.columns())

    def fit_columns(self, ds: datasets.Dataset, source: str, with_labels: bool = True) -> None:
        """Check the columns: a full pair when labelled, a prompt (or dialogues) for prediction inputs.

        Raises:
            DeltatuneError: no known layout of columns, naming ``source`` and the columns.
        """
        if with_labels:
            self.data_format(ds, source)
        elif self.config.data.prompt_column not in ds.column_names:
            self.data_format(ds, source)  # dialogues: the prompt is their shared prefix

    def examples(self, ds: datasets.Dataset, source: str, stats: PreferenceStats) -> list[tuple[int, PreferenceExample]]:
        """(0-based row index, example) of every row kept; dropped rows are counted in ``stats``."""
        fmt = self.data_format(ds, source)
        out = []
        for i, row in enumerate(ds):
            ex = read_example(row, fmt, i + 1, source, stats, system_prompt=self.config.data.system_prompt, **self.columns())
            if ex is not None:
                out.append((i, ex))
        return out

    def prompt_messages(self, row: dict[str, Any], row_number: int, source: str) -> list[dict[str, str]]:
        """The prompt of one row as chat messages (for generation), system prompt included.

        Raises:
            DeltatuneError: the row has no usable prompt.
        """
        d = self.config.data
        where = f"{source}: row {row_number}"
        value = row.get(d.prompt_column)
        if value is None:
            if d.chosen_column in row and d.rejected_column in row:
                messages = split_dialogues(row[d.chosen_column], row[d.rejected_column], where)[0]
            else:
                raise DeltatuneError(f"{where} has no '{d.prompt_column}'; give the prompt in that column")
        elif isinstance(value, str):
            if not value.strip():
                raise DeltatuneError(f"{where} has an empty '{d.prompt_column}'; fill it or drop the row")
            messages = hh_messages(value, where)
        else:
            messages = read_example(
                {d.prompt_column: value, d.chosen_column: "x", d.rejected_column: "y"}, "pairs", row_number, source,
                PreferenceStats(), system_prompt=None, **self.columns(),
            ).prompt
        if d.system_prompt and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": d.system_prompt}, *messages]
        return messages

    # ---- features --------------------------------------------------------------------------
    def encoder(self, tokenizer) -> PreferenceEncoder:
        return PreferenceEncoder(tokenizer, self.config.data.chat_template, self.config.data.max_seq_length)

    def encode(self, ds, tokenizer, with_labels: bool = True, source: str = "data") -> Features:
        """One feature per kept pair (see the module doc); ``meta`` holds each feature's row index.

        Raises:
            DeltatuneError: no pair is left (all dropped: identical, empty, or too long).
        """
        enc = self.encoder(tokenizer)
        stats = PreferenceStats()
        rows, meta = [], []
        for i, ex in self.examples(ds, source, stats):
            out = enc.encode_pair(ex, stats, i + 1)
            if out is None:
                continue
            rows.append({
                "input_ids": out["chosen_input_ids"], "labels": out["chosen_labels"],
                "rejected_input_ids": out["rejected_input_ids"], "rejected_labels": out["rejected_labels"],
            })
            meta.append(i)
        if not rows:
            raise DeltatuneError(
                f"{source}: no pair left to train or evaluate on ({stats.dropped_identical} identical, {stats.dropped_empty} with an empty "
                f"response, {stats.dropped_too_long} too long for data.max_seq_length={self.config.data.max_seq_length})"
            )
        lengths = [len(r["input_ids"]) + len(r["rejected_input_ids"]) for r in rows]
        return Features(rows, lengths, meta=meta, examples=None, stats=stats)

    def show_feature(self, tokenizer, feature: dict[str, Any]) -> list[str]:
        """The pair with its trained spans in ``[[ ]]``: the chosen, then the rejected sequence."""
        return [
            "chosen:   " + mark_trained(tokenizer, feature["input_ids"], feature["labels"]),
            "rejected: " + mark_trained(tokenizer, feature["rejected_input_ids"], feature["rejected_labels"]),
        ]

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """2B right-padded rows (chosen first, then rejected) and, when precomputed, the (B,)
        reference log-probabilities."""
        seqs = [{k: f[k] for k in _SEQUENCE_KEYS} for f in features]
        seqs += [{"input_ids": f["rejected_input_ids"], "labels": f["rejected_labels"]} for f in features]
        return self.stack_sequences(seqs, features)

    def stack_sequences(self, seqs: list[dict[str, Any]], features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """``seqs`` ({input_ids, labels}: the first halves, then the second) right-padded with an
        attention mask, and the features' precomputed reference log-probabilities (B,) when present."""
        for s in seqs:
            s["attention_mask"] = [1] * len(s["input_ids"])
        batch = pad_batch(seqs, {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX})
        if all(k in features[0] for k in self.reference_keys):
            for k in self.reference_keys:
                batch[k] = torch.tensor([f[k] for f in features], dtype=torch.float32)
        return batch

    def num_targets(self, batch) -> int:
        """One target per pair."""
        return batch["input_ids"].shape[0] // 2

    # ---- log-probabilities -----------------------------------------------------------------
    def sequence_logps(self, model, batch) -> dict[str, torch.Tensor]:
        """Summed and mean response log-probabilities of the 2B sequences, split into halves.

        Returns:
            ``chosen``, ``rejected`` (B,) fp32 sums (nats); ``chosen_avg``, ``rejected_avg``
            (B,) per-token means; ``chosen_tokens`` (B,) trained-token counts.
        """
        vocab = getattr(getattr(unwrap(model), "config", None), "vocab_size", 0) or 0
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
        ce, mask = next_token_losses(model, inputs, resolve_chunk_size(self.config.train.loss_chunk_size, vocab))
        total = sequence_logps(-ce, mask, average=False)
        mean = sequence_logps(-ce, mask, average=True)
        b = total.shape[0] // 2
        return {
            "chosen": total[:b], "rejected": total[b:], "chosen_avg": mean[:b], "rejected_avg": mean[b:],
            "chosen_tokens": mask[:b].sum(-1).float(),
        }

    @contextlib.contextmanager
    def reference_model(self, model) -> Iterator[torch.nn.Module]:
        """The reference model to run (see the module doc for the order), in eval mode, without gradients."""
        if is_adapter_model(model):
            inner = unwrap(model)
            with inner.disable_adapter(), torch.no_grad():
                yield inner
            return
        if self._reference_copy is None and self._initial_model is not unwrap(model):
            self._reference_copy = self._load_base(model)
        ref = self._reference_copy if self._reference_copy is not None else unwrap(model)
        with torch.no_grad():
            yield ref

    def _load_base(self, model) -> torch.nn.Module:
        """The run's base model (``model.name_or_path``), frozen, on ``model``'s device."""
        from deltatune.models import resolve_model

        device = next(unwrap(model).parameters()).device
        base = self.build_model(resolve_model(self.config.model.name_or_path), {})
        return base.to(device).eval().requires_grad_(False)

    def prepare_model(self, model) -> None:
        """Before training: the model as initialised is the reference of the reference pass; a full
        fine-tune without a precomputed reference keeps a frozen copy."""
        self._initial_model = unwrap(model)
        if self.uses_reference and not self.needs_reference_pass and not is_adapter_model(model):
            self._reference_copy = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)

    def reference_logps(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) reference log-probability sums of chosen and rejected: from the batch when precomputed,
        else computed now (:meth:`reference_model`)."""
        first, second = self.reference_keys
        if first in batch:
            return batch[first], batch[second]
        with self.reference_model(model) as ref:
            was = ref.training
            ref.eval()
            out = self.sequence_logps(ref, batch)
            ref.train(was)
        return out["chosen"].detach(), out["rejected"].detach()

    def reference_step(self, model, batch) -> dict[str, np.ndarray]:
        """The reference log-probability sums of a batch's two halves (the Trainer's reference pass)."""
        with self.reference_model(model) as ref:
            out = self.sequence_logps(ref, batch)
        first, second = self.reference_keys
        return {first: out["chosen"].double().cpu().numpy(), second: out["rejected"].double().cpu().numpy()}

    def attach_reference(self, features: Features, outputs: dict[str, np.ndarray]) -> None:
        """Store each feature's reference log-probabilities in it (:attr:`reference_keys`)."""
        first, second = self.reference_keys
        for row, a, b in zip(features.rows, outputs[first], outputs[second]):
            row[first], row[second] = float(a), float(b)

    # ---- loss and metrics ------------------------------------------------------------------
    def pair_loss(self, model, batch, logps: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(losses, chosen_rewards, rejected_rewards), each (B,), from the policy's ``logps``
        (:meth:`sequence_logps`)."""
        raise NotImplementedError

    def _pair_outputs(self, model, batch) -> dict[str, torch.Tensor]:
        """Per-pair loss, rewards, log-probabilities and chosen-token NLL of one batch, (B,) each."""
        logps = self.sequence_logps(model, batch)
        losses, chosen_rewards, rejected_rewards = self.pair_loss(model, batch, logps)
        return {
            "loss": losses, "rewards_chosen": chosen_rewards, "rewards_rejected": rejected_rewards,
            "logps_chosen": logps["chosen"], "logps_rejected": logps["rejected"],
            "nll_sum": -logps["chosen"], "chosen_tokens": logps["chosen_tokens"],
        }

    def loss(self, model, batch):
        """Sum of the per-pair losses and the number of pairs; the pairs' statistics are kept for the log."""
        out = self._pair_outputs(model, batch)
        c, r = out["rewards_chosen"].detach(), out["rewards_rejected"].detach()
        self._stats.add({
            "rewards_chosen": c, "rewards_rejected": r, "rewards_margin": c - r,
            "reward_accuracy": (c > r).float() + 0.5 * (c == r).float(),
            "logps_chosen": out["logps_chosen"], "logps_rejected": out["logps_rejected"],
        })
        return out["loss"].sum(), torch.tensor(out["loss"].shape[0])

    def pop_train_metrics(self) -> dict[str, float]:
        return self._stats.pop()

    @torch.no_grad()
    def eval_step(self, model, batch):
        out = self._pair_outputs(model, batch)
        return {k: v.detach().double().cpu().numpy() for k, v in out.items()}

    def compute_metrics(self, outputs, features=None) -> dict[str, Any]:
        """The split's means (see the module doc); ``pairs`` is how many were evaluated."""
        c, r = outputs["rewards_chosen"], outputs["rewards_rejected"]
        lc, lr = outputs["logps_chosen"], outputs["logps_rejected"]
        return {
            "loss": float(np.mean(outputs["loss"])),
            "reward_accuracy": accuracy(c, r),
            "rewards_chosen": float(np.mean(c)),
            "rewards_rejected": float(np.mean(r)),
            "rewards_margin": float(np.mean(c - r)),
            "logps_chosen": float(np.mean(lc)),
            "logps_rejected": float(np.mean(lr)),
            "logps_accuracy": accuracy(lc, lr),
            "sft_loss": float(np.sum(outputs["nll_sum"]) / max(float(np.sum(outputs["chosen_tokens"])), 1.0)),
            "pairs": int(len(c)),
        }

    def decode(self, outputs, features=None) -> list[dict[str, Any]]:
        """Per pair: the rewards, their margin and whether the chosen response wins."""
        c, r = outputs["rewards_chosen"], outputs["rewards_rejected"]
        return [
            {"reward_chosen": float(a), "reward_rejected": float(b), "margin": float(a - b), "chosen_preferred": bool(a > b)}
            for a, b in zip(c, r)
        ]

    def worst_examples(self, outputs, features, rows, k):
        """The pairs with the lowest reward margin (chosen - rejected): reference = chosen response,
        prediction = rejected response."""
        kept = dict(self.examples(rows, "data", PreferenceStats()))  # row index -> the pair as encoded (response texts)
        recs = []
        for row_index, c, r in zip(features.meta, outputs["rewards_chosen"], outputs["rewards_rejected"]):
            ex = kept[int(row_index)]
            recs.append(example_row(row_index, self.example_input(rows[int(row_index)], row_index + 1, "data"), ex.chosen, ex.rejected, float(c - r)))
        return worst_examples("reward margin, chosen - rejected (reference: chosen, prediction: rejected)", True, recs, k)

    # ---- generation (report.html: the answers before and after training) ------------------
    def example_input(self, row: dict[str, Any], row_number: int, source: str) -> str:
        """The prompt of one row as text (``role: content`` lines when it has several turns)."""
        msgs = self.prompt_messages(row, row_number, source)
        if len(msgs) == 1:
            return msgs[0]["content"]
        return "\n".join(f"{m['role']}: {m['content']}" for m in msgs)

    def references(self, row: dict[str, Any]) -> list[str]:
        """The chosen response of a labelled row (the reference generations are scored against)."""
        stats = PreferenceStats()
        ex = read_example(row, self.data_format(datasets.Dataset.from_list([row])), 0, "data", stats, **self.columns())
        return [ex.chosen] if ex is not None and ex.chosen else [""]

    def score(self, predictions, references) -> dict[str, float]:
        """ROUGE of the generations against the chosen responses (how close the answers come to the preferred ones)."""
        return SCORERS[self.name](predictions, references)

    def generate_rows(self, model, tokenizer, ds, device="cpu", source: str = "data") -> tuple[list[str], list[bool]]:
        """Greedy (``eval`` settings) answers to each row's prompt."""
        enc = self.encoder(tokenizer)
        prompts = [enc.prompt_ids(self.prompt_messages(row, i, source)) for i, row in enumerate(ds, start=1)]
        return generate(model, tokenizer, prompts, self.generation_settings(), device)

    def rows_from_texts(self, texts) -> datasets.Dataset:
        """Rows for :meth:`generate_rows` from plain prompts (``predict --text``)."""
        return datasets.Dataset.from_dict({self.config.data.prompt_column: [str(t) for t in texts]})

    def input_texts(self, ds: datasets.Dataset, source: str = "data") -> list[tuple[str, ...]]:
        """Each pair's prompt and its longer response joined by newlines (vocabulary and truncation check)."""
        out = []
        for _, ex in self.examples(ds, source, PreferenceStats()):
            longer = max(ex.chosen or "", ex.rejected or "", key=len)
            out.append(("\n".join([*(m["content"] for m in ex.prompt), longer]),))
        return out

    @classmethod
    def demo_rows(cls) -> dict[str, Any]:
        """Eight prompt/chosen/rejected rows; see :meth:`Task.demo_rows`."""
        rows = [
            {"prompt": f"What is {i} plus one?", "chosen": f"It is {i + 1}.", "rejected": f"I think it is {i + 7}, maybe."}
            for i in range(8)
        ]
        return {"rows": rows, "config": {}}
