"""``grpo``: reinforcement fine-tuning of a decoder on prompts with checkable answers (GRPO, Shao et al. 2024).

Rows: ``prompt`` (a string = one user turn, or a list of ``{role, content}`` messages) and the
columns the rewards read (``answer`` for the built-ins ``exact_match``/``numeric_match``,
``data.answer_column``; a user reward may read any column). A feature is one prompt, rendered with
the chat template (``data.chat_template``, ``data.system_prompt``) and one BOS, cut from the left
to ``data.max_seq_length - data.max_completion_length`` tokens (counted as ``truncated``); it
holds ``input_ids``, ``attention_mask`` and ``example_id``, the index of its row, which the task
keeps for the rewards (:meth:`GRPOTask.encode`).

One training step (:meth:`GRPOTask.loss`), per micro-batch of B prompts:

1. ``G = data.num_generations`` completions per prompt are sampled in one batched ``generate``
   call (``data.temperature``, ``data.top_p``, at most ``data.max_completion_length`` tokens,
   KV cache, the model in eval mode, no gradients) and cut after their first EOS
   (:mod:`.sampling`);
2. each completion gets the weighted sum of the rewards (:mod:`.rewards`), and each group its
   normalized advantages (:func:`.loss.group_advantages`);
3. the policy's per-token log-probabilities of the completions (one forward pass over prompt +
   completion, ``position_ids = cumsum(attention_mask) - 1`` as in generation, LM head in chunks:
   :func:`deltatune.tasks.token_loss.next_token_losses`), and with ``beta > 0`` the reference
   model's (the peft model with its adapter disabled, or a frozen copy of the model made before
   training: :meth:`GRPOTask.prepare_model`; ``beta == 0`` runs no reference forward);
4. the clipped objective minus ``beta`` times the k3 KL, averaged over each completion's tokens
   (:func:`.loss.grpo_token_loss`); the loss is the sum over the B*G completions and the number
   of targets is B*G (so the loop's division gives the paper's ``1/G sum_i 1/|o_i| sum_t``).

Training log (metrics.jsonl, per logged step, :meth:`GRPOTask.pop_train_metrics`): ``reward``
(mean over completions), ``reward_std`` (mean of the groups' stds), ``reward_<name>`` per reward,
``kl``, ``completion_length`` (tokens), ``zero_std_groups`` (share of groups whose rewards are all
equal: they teach nothing), ``clip_ratio``.

Evaluation (:meth:`GRPOTask.eval_step`): one greedy completion per prompt, at most
``data.max_completion_length`` tokens, scored: ``reward`` (the default metric, higher is better),
``reward_<name>``, ``completion_length``. ``generate_rows`` (predict, serve, report.html's
before/after) generates with the ``eval`` settings; the final evaluation scores those
generations row by row (total reward) for report.html.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import datasets
import numpy as np
import torch

from deltatune.config import RunConfig
from deltatune.data.columns import require_columns
from deltatune.errors import DeltatuneError
from deltatune.tasks.base import Features, ScoredGenerations
from deltatune.tasks.chat_format import IGNORE_INDEX, ChatEncoder, EncodeStats
from deltatune.tasks.collate import pad_batch
from deltatune.tasks.examples import example_row
from deltatune.tasks.generation import eos_token_ids, generate
from deltatune.tasks.grpo.loss import group_advantages, group_stats, grpo_token_loss
from deltatune.tasks.grpo.rewards import RewardSet
from deltatune.tasks.grpo.sampling import sample
from deltatune.tasks.language_modeling import LanguageModelTask
from deltatune.tasks.token_loss import next_token_losses, resolve_chunk_size, unwrap

PROMPT_COLUMN = "prompt"
ROLES = ("system", "user", "assistant")


def is_adapter_model(model: torch.nn.Module) -> bool:
    """Whether ``model`` (unwrapped from DDP/compile) is a peft model, whose adapter can be disabled."""
    from peft import PeftModel

    return isinstance(unwrap(model), PeftModel)


@dataclass
class GRPOStats(EncodeStats):
    """Counts from encoding GRPO prompts: nothing is trained from the data itself (the trained
    tokens are the ``sampled_per_prompt`` completions of at most ``max_completion_tokens`` each,
    sampled during training), so ``deltatune check`` shows the prompts, their tokens and how many
    were cut from the left instead of trained-token counts."""

    sampled_per_prompt: int = 0
    max_completion_tokens: int = 0

    def summary(self) -> str:
        return (
            f"prompts {self.examples} | cut from the left to fit {self.truncated} | prompt tokens {self.total_tokens}"
            f" | trained: {self.sampled_per_prompt} sampled completions per prompt, <= {self.max_completion_tokens} tokens each"
        )


class Means:
    """Running weighted means of training statistics between two :meth:`pop` calls."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}

    def add(self, key: str, values: torch.Tensor | np.ndarray | list) -> None:
        """Add the values (any shape) of one statistic; each value weighs the same."""
        v = torch.as_tensor(values).detach().double().reshape(-1)
        self.sums[key] = self.sums.get(key, 0.0) + float(v.sum())
        self.counts[key] = self.counts.get(key, 0.0) + v.numel()

    def pop(self) -> dict[str, float]:
        """The means since the last pop; the sums restart."""
        out = {k: self.sums[k] / self.counts[k] for k in self.sums if self.counts[k]}
        self.sums, self.counts = {}, {}
        return out


class GRPOTask(LanguageModelTask):
    """Group Relative Policy Optimization with checkable rewards (see the module doc)."""

    name = "grpo"
    default_metric = "reward"
    greater_is_better = True
    supports_packing = False
    scores_generations = True
    default_beta = 0.04
    setting_keys = ("num_generations", "rewards", "reward_weights", "max_completion_length", "temperature", "top_p", "epsilon")

    def __init__(self, config: RunConfig):
        super().__init__(config)
        d = config.data
        self.beta = d.beta if d.beta is not None else self.default_beta
        self.sequences_per_example = d.num_generations  # the prompt's G sampled completions
        self._rows: list[dict[str, Any]] = []  # by example_id: the rows encode() saw (prompt + other columns)
        self._rewards: Optional[RewardSet] = None
        self._means = Means()
        self._reference: Optional[torch.nn.Module] = None

    def settings(self) -> dict[str, Any]:
        """``data.beta`` as used (the KL weight; the task's default when unset), then the sampling and
        reward settings (``setting_keys``)."""
        return {"data.beta": self.beta, **super().settings()}

    # ---- rows ------------------------------------------------------------------------------
    @property
    def rewards(self) -> RewardSet:
        """The run's rewards, loaded on first use (user rewards are imported then: see :mod:`.rewards`)."""
        if self._rewards is None:
            self._rewards = RewardSet(self.config.data, self.config.output_dir)
        return self._rewards

    def prompt_messages(self, row: dict[str, Any], row_number: int, source: str) -> list[dict[str, str]]:
        """The prompt of one row as chat messages, ``data.system_prompt`` first when it has none.

        Raises:
            DeltatuneError: the prompt is missing, empty, or not a string / list of
                ``{role, content}`` messages (naming ``source`` and the row, from 1).
        """
        where = f"{source}: row {row_number}"
        value = row.get(PROMPT_COLUMN)
        if isinstance(value, str):
            if not value.strip():
                raise DeltatuneError(f"{where} has an empty '{PROMPT_COLUMN}'; fill it or drop the row")
            messages = [{"role": "user", "content": value}]
        elif isinstance(value, (list, tuple)) and value:
            messages = []
            for m in value:
                if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                    raise DeltatuneError(
                        f"{where}: '{PROMPT_COLUMN}' must be a string or a list of {{role, content}} messages (role one of "
                        f"{', '.join(ROLES)}), got {str(m)[:80]!r}"
                    )
                messages.append({"role": m["role"], "content": m["content"]})
            if messages[-1]["role"] == "assistant":
                raise DeltatuneError(f"{where}: the prompt's last message is the assistant's; the completion is generated after the prompt")
        else:
            raise DeltatuneError(
                f"{where}: '{PROMPT_COLUMN}' must be a string or a list of {{role, content}} messages, got {type(value).__name__}"
            )
        if self.config.data.system_prompt and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": self.config.data.system_prompt})
        return messages

    def fit_columns(self, ds: datasets.Dataset, source: str, with_labels: bool = True) -> None:
        """Check the prompts and, for labelled rows, what the rewards read (the answer column).

        Raises:
            DeltatuneError: no ``prompt`` column, a bad prompt, or (labelled) a reward's column
                missing or empty (see :meth:`.rewards.RewardSet.check_rows`); a reward that cannot
                be loaded.
        """
        require_columns(ds, [PROMPT_COLUMN], source)
        for i, row in enumerate(ds, start=1):
            self.prompt_messages(row, i, source)
        if with_labels:
            self.rewards.check_rows(ds, source)

    def example_input(self, row: dict[str, Any], row_number: int, source: str) -> str:
        """The prompt of one row as text (``role: content`` lines when it has several messages)."""
        msgs = self.prompt_messages(row, row_number, source)
        if len(msgs) == 1:
            return msgs[0]["content"]
        return "\n".join(f"{m['role']}: {m['content']}" for m in msgs)

    def rows_from_texts(self, texts) -> datasets.Dataset:
        """Rows for :meth:`generate_rows` from plain prompts (``predict --text``)."""
        return datasets.Dataset.from_dict({PROMPT_COLUMN: [str(t) for t in texts]})

    def input_texts(self, ds: datasets.Dataset, source: str = "data") -> list[tuple[str, ...]]:
        """Each row's prompt message contents, joined by newlines (the vocabulary and truncation check)."""
        return [("\n".join(m["content"] for m in self.prompt_messages(row, i, source)),) for i, row in enumerate(ds, start=1)]

    # ---- features --------------------------------------------------------------------------
    def prompt_budget(self) -> int:
        """Prompt tokens kept: ``data.max_seq_length - data.max_completion_length``.

        Raises:
            DeltatuneError: no room is left for a prompt.
        """
        d = self.config.data
        budget = d.max_seq_length - d.max_completion_length
        if budget < 1:
            raise DeltatuneError(
                f"data.max_seq_length ({d.max_seq_length}) leaves no room for a prompt before data.max_completion_length "
                f"({d.max_completion_length}) generated tokens; raise max_seq_length or lower max_completion_length"
            )
        return budget

    def prompt_ids(self, tokenizer, ds: datasets.Dataset, source: str, stats: Optional[EncodeStats] = None) -> list[list[int]]:
        """Token ids of each row's prompt with the assistant's generation prompt, cut from the left
        to :meth:`prompt_budget` (counted in ``stats.truncated``)."""
        enc = ChatEncoder(tokenizer, self.config.data.chat_template, self.config.data.max_seq_length)
        budget = self.prompt_budget()
        out = []
        for i, row in enumerate(ds, start=1):
            ids = enc.prompt_ids(self.prompt_messages(row, i, source))
            if len(ids) > budget:
                ids = ids[-budget:]
                if stats is not None:
                    stats.truncated += 1
            out.append(ids)
        return out

    def encode(self, ds, tokenizer, with_labels: bool = True, source: str = "data") -> Features:
        """One feature per row: the prompt's ids, its attention mask and ``example_id``; the task
        keeps the row under that id for the rewards. ``lengths`` are prompt + ``max_completion_length``.

        Raises:
            DeltatuneError: as :meth:`fit_columns`; ``data.max_seq_length`` leaves no room for a prompt.
        """
        self.fit_columns(ds, source, with_labels)
        d = self.config.data
        stats = GRPOStats(sampled_per_prompt=d.num_generations, max_completion_tokens=d.max_completion_length)
        ids = self.prompt_ids(tokenizer, ds, source, stats)
        rows = []
        for prompt, row in zip(ids, ds):
            rows.append({"input_ids": prompt, "attention_mask": [1] * len(prompt), "example_id": len(self._rows)})
            self._rows.append(dict(row))
        stats.examples = len(rows)
        stats.total_tokens = sum(len(p) for p in ids)
        completion = self.config.data.max_completion_length
        return Features(rows, [len(r["input_ids"]) + completion for r in rows], stats=stats)

    def show_feature(self, tokenizer, feature: dict[str, Any]) -> list[str]:
        """The prompt as the model sees it; the completions are sampled in training."""
        d = self.config.data
        return [tokenizer.decode(feature["input_ids"]) + f"[[{d.num_generations} sampled completions, <= {d.max_completion_length} tokens]]"]

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Left-padded prompts (B, P) for generation, and ``example_id`` (B,)."""
        batch = pad_batch(features, {"input_ids": self.pad_token_id, "attention_mask": 0}, side="left")
        batch["example_id"] = torch.tensor([f["example_id"] for f in features], dtype=torch.long)
        return batch

    def num_targets(self, batch) -> int:
        """One target per completion: prompts x ``data.num_generations``."""
        return int(batch["input_ids"].shape[0]) * self.config.data.num_generations

    # ---- the model, the reference ----------------------------------------------------------
    def prepare_model(self, model) -> None:
        """Before training: with ``beta > 0`` and a model without adapter (full fine-tuning), keep a
        frozen copy as the reference model (a peft model disables its adapter instead)."""
        if self.beta > 0 and not is_adapter_model(model):
            self._reference = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)

    @contextlib.contextmanager
    def reference_model(self, model) -> Iterator[torch.nn.Module]:
        """The reference model, in eval mode, without gradients: the peft model with its adapter
        disabled, else the copy :meth:`prepare_model` made (made now when it was not called: the
        model before its first update)."""
        if is_adapter_model(model):
            inner = unwrap(model)
            was = inner.training
            inner.eval()
            try:
                with inner.disable_adapter(), torch.no_grad():
                    yield inner
            finally:
                inner.train(was)
            return
        if self._reference is None:
            self.prepare_model(model)
        with torch.no_grad():
            yield self._reference

    def completion_logps(self, model, inputs: dict[str, torch.Tensor], length: int) -> torch.Tensor:
        """(N, length) fp32 log-probabilities of the completion tokens (the last ``length`` columns
        of ``inputs["input_ids"]``); 0 where ``labels`` is -100."""
        vocab = getattr(getattr(unwrap(model), "config", None), "vocab_size", 0) or 0
        ce, _ = next_token_losses(model, inputs, resolve_chunk_size(self.config.train.loss_chunk_size, vocab))
        return -ce[:, -length:]

    @staticmethod
    def sequences(batch: dict[str, torch.Tensor], completion: torch.Tensor, mask: torch.Tensor, group: int) -> dict[str, torch.Tensor]:
        """Prompt + completion rows for the log-probability forward pass.

        Args:
            batch: the collated prompts, ``input_ids``/``attention_mask`` (B, P), left-padded.
            completion, mask: (B*G, L) generated ids and the tokens that count.
            group: G.

        Returns:
            ``input_ids``, ``attention_mask`` (pads and tokens after the first EOS: 0),
            ``position_ids`` (``cumsum(attention_mask) - 1`` clamped at 0, the positions generation
            used) and ``labels`` (the counted completion tokens; -100 elsewhere), each (B*G, P+L).
        """
        prompt = batch["input_ids"].repeat_interleave(group, dim=0)
        prompt_mask = batch["attention_mask"].repeat_interleave(group, dim=0)
        input_ids = torch.cat([prompt, completion], dim=1)
        attention = torch.cat([prompt_mask, mask.long()], dim=1)
        labels = torch.cat([torch.full_like(prompt, IGNORE_INDEX), torch.where(mask, completion, IGNORE_INDEX)], dim=1)
        positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
        return {"input_ids": input_ids, "attention_mask": attention, "position_ids": positions, "labels": labels}

    # ---- rewards ---------------------------------------------------------------------------
    def eos_ids(self, model) -> list[int]:
        return eos_token_ids(unwrap(model), self.tokenizer)

    def score_completions(
        self, example_ids: torch.Tensor, completion: torch.Tensor, mask: torch.Tensor, group: int
    ) -> tuple[list[str], list[float], dict[str, list[float]]]:
        """Decode the (B*G, L) completions and score them against their rows.

        Returns:
            ``(texts, total rewards, {reward key: values})``, B*G each.
        """
        ids = [row[m].tolist() for row, m in zip(completion.cpu(), mask.cpu())]
        texts = [self.tokenizer.decode(i, skip_special_tokens=True).strip() for i in ids]
        rows = [self._rows[int(e)] for e in example_ids.tolist() for _ in range(group)]
        return (texts, *self.score_rows(rows, texts, ids))

    def score_rows(
        self, rows: list[dict[str, Any]], texts: list[str], ids: list[list[int]]
    ) -> tuple[list[float], dict[str, list[float]]]:
        """The rewards of one completion per row (``texts``, token ids ``ids``)."""
        names = dict.fromkeys(k for r in rows for k in r if k != PROMPT_COLUMN)
        columns = {k: [r.get(k) for r in rows] for k in names}
        return self.rewards.score(texts, ids, [r.get(PROMPT_COLUMN) for r in rows], columns)

    # ---- training --------------------------------------------------------------------------
    def loss(self, model, batch):
        """One GRPO step on a batch of prompts (see the module doc).

        Returns:
            (sum over the B*G completions of their per-token-averaged loss, B*G).
        """
        d = self.config.data
        group = d.num_generations
        completion, mask = sample(
            model, batch["input_ids"], batch["attention_mask"], group, d.max_completion_length,
            self.eos_ids(model), self.pad_token_id, True, d.temperature, d.top_p,
        )
        _, total, per = self.score_completions(batch["example_id"], completion, mask, group)
        device = batch["input_ids"].device
        rewards = torch.tensor(total, dtype=torch.float32, device=device)
        advantages = group_advantages(rewards, group)
        inputs = self.sequences(batch, completion, mask, group)
        logps = self.completion_logps(model, inputs, completion.shape[1])
        ref = None
        if self.beta > 0:
            with self.reference_model(model) as reference:
                ref = self.completion_logps(reference, inputs, completion.shape[1])
        losses, stats = grpo_token_loss(logps, ref, advantages, mask, d.epsilon, self.beta)
        self._record(rewards, per, mask, stats, group)
        return losses.sum(), torch.tensor(losses.shape[0], device=device)

    def _record(self, rewards: torch.Tensor, per: dict[str, list[float]], mask: torch.Tensor, stats: dict, group: int) -> None:
        std, equal = group_stats(rewards, group)
        m = self._means
        m.add("reward", rewards)
        m.add("reward_std", std)
        for key, values in per.items():
            m.add(f"reward_{key}", values)
        m.add("kl", stats["kl"])
        m.add("completion_length", mask.sum(-1).float())
        m.add("zero_std_groups", equal.float())
        m.add("clip_ratio", stats["clip_ratio"])

    def pop_train_metrics(self) -> dict[str, float]:
        """Means since the last call (see the module doc); the counters restart."""
        return self._means.pop()

    # ---- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def eval_step(self, model, batch):
        """One greedy completion per prompt (at most ``data.max_completion_length`` tokens), scored.

        Returns:
            (B,) arrays: ``reward`` (the weighted sum), ``reward_<key>`` per reward,
            ``completion_length`` (tokens, through the first EOS).
        """
        completion, mask = sample(
            model, batch["input_ids"], batch["attention_mask"], 1, self.config.data.max_completion_length,
            self.eos_ids(model), self.pad_token_id, False,
        )
        _, total, per = self.score_completions(batch["example_id"], completion, mask, 1)
        out = {"reward": np.asarray(total, dtype=np.float64)}
        out.update({f"reward_{k}": np.asarray(v, dtype=np.float64) for k, v in per.items()})
        out["completion_length"] = mask.sum(-1).cpu().numpy().astype(np.float64)
        return out

    def compute_metrics(self, outputs, features=None) -> dict[str, Any]:
        """Means over the split of every :meth:`eval_step` output (``reward`` first) and ``examples``."""
        metrics = {k: float(np.mean(v)) for k, v in outputs.items() if k == "reward" or k.startswith("reward_") or k == "completion_length"}
        metrics["examples"] = int(len(outputs["reward"]))
        return metrics

    def decode(self, outputs, features=None) -> list[dict[str, Any]]:
        """Per row: its greedy completion's rewards and length."""
        keys = [k for k in outputs if k == "reward" or k.startswith("reward_") or k == "completion_length"]
        return [{k: float(outputs[k][i]) for k in keys} for i in range(len(outputs["reward"]))]

    # ---- generation ------------------------------------------------------------------------
    def generate_rows(self, model, tokenizer, ds, device="cpu", source: str = "data") -> tuple[list[str], list[bool]]:
        """Answers to each row's prompt with the ``eval`` generation settings (greedy by default)."""
        return generate(model, tokenizer, self.prompt_ids(tokenizer, ds, source), self.generation_settings(), device)

    def final_metrics(self, model, tokenizer, ds, device="cpu") -> dict[str, Any]:
        """:meth:`scored_generations`' metrics (``generated_reward`` and the counts; ``reward`` itself
        comes from :meth:`eval_step` over the whole split)."""
        return self.scored_generations(model, tokenizer, ds, device).metrics

    def scored_generations(self, model, tokenizer, ds, device="cpu", source: str = "data") -> ScoredGenerations:
        """Generate (:meth:`generate_rows`) for up to ``eval.generation_max_samples`` rows and score
        each by its total reward (token counts for ``length_penalty`` re-tokenized from the text).

        Metrics: ``generated_reward`` (their mean), ``generation_eos_share``,
        ``generated_examples`` and three ``samples``.
        """
        n = min(len(ds), self.config.eval.generation_max_samples)
        if n == 0:
            return ScoredGenerations({})
        ds = ds.select(range(n))
        texts, ended = self.generate_rows(model, tokenizer, ds, device, source)
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] + ([0] if e else []) for t, e in zip(texts, ended)]
        rows = [dict(r) for r in ds]
        total, _ = self.score_rows(rows, texts, ids)
        col = self.config.data.answer_column
        references = [str(r.get(col, "")) if col and r.get(col) is not None else "" for r in rows]
        metrics = {
            "generated_reward": float(np.mean(total)),
            "generation_eos_share": float(np.mean(ended)),
            "generated_examples": n,
            "samples": [{"prediction": p, "reference": r} for p, r in list(zip(texts, references))[:3]],
        }
        records = [
            example_row(i, self.example_input(row, i + 1, source), ref, text, score)
            for i, (row, ref, text, score) in enumerate(zip(rows, references, texts, total))
        ]
        return ScoredGenerations(metrics, records, "reward (weighted sum of data.rewards)", higher_is_better=True)

    @classmethod
    def demo_rows(cls) -> dict[str, Any]:
        """Eight arithmetic prompts with numeric answers; two completions per prompt of at most four
        tokens. See :meth:`deltatune.tasks.base.Task.demo_rows`."""
        rows = [{"prompt": f"What is {i} plus {i + 2}? Reply with the number only.", "answer": str(2 * i + 2)} for i in range(8)]
        config = {
            "data": {"num_generations": 2, "max_completion_length": 4, "rewards": ["numeric_match", "length_penalty"],
                     "length_penalty_tokens": 1},
            "eval": {"max_new_tokens": 4},
        }
        return {"rows": rows, "config": config}
