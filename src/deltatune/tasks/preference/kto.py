"""``kto``: Kahneman-Tversky Optimization (Ethayarajh et al. 2024, arXiv:2402.01306) on unpaired data.

Rows are ``prompt``, ``completion`` and ``label`` (true: a desirable completion, false: an
undesirable one). With the implicit reward ``r = log pi(y|x) - log pi_ref(y|x)`` and the
reference point ``z`` (an estimate of KL(pi || pi_ref), detached and clamped at 0), a desirable
completion's loss is ``desirable_weight * (1 - sigmoid(beta * (r - z)))`` and an undesirable
one's ``undesirable_weight * (1 - sigmoid(beta * (z - r)))``.

``z`` is estimated as the paper and TRL do, from mismatched pairs: each example's prompt with
another example's completion (here the next kept row's, fixed at encoding, so the reference
log-probabilities of these sequences can be precomputed too), averaged over the micro-batch.
A feature holds the completion sequence (``input_ids``/``labels``), the mismatched one
(``kl_input_ids``/``kl_labels``) and ``desirable`` (1/0); :meth:`KTOTask.collate` stacks the
completions first and the mismatched sequences after them into one 2B-row batch.

Metrics: ``loss``, ``rewards_desirable`` / ``rewards_undesirable`` (mean ``beta * r`` of each
kind), ``rewards_margin`` (their difference), ``reward_auc`` (probability that a desirable
completion's reward is above an undesirable one's, ties one half: the Mann-Whitney U statistic
over the split, 0.5 before training), ``kl`` (the mean reference point), ``logps_desirable`` /
``logps_undesirable``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from deltatune.errors import DeltatuneError
from deltatune.tasks.base import Features
from deltatune.tasks.chat_format import mark_trained
from deltatune.tasks.examples import example_row, worst_examples
from deltatune.tasks.preference.base import PreferenceTask
from deltatune.tasks.preference.data import PreferenceStats, read_example
from deltatune.tasks.preference.losses import kto_kl, kto_loss


def rank_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a positive's score exceeds a negative's, ties one half (Mann-Whitney U / (n_pos n_neg));
    NaN when either class is absent."""
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


class KTOTask(PreferenceTask):
    """KTO on prompt/completion/label rows; ``beta`` default 0.1 (TRL's)."""

    name = "kto"
    paired = False
    uses_reference = True
    default_beta = 0.1
    reference_keys = ("ref_logps", "ref_kl_logps")
    setting_keys = ("desirable_weight", "undesirable_weight", "precompute_reference")

    def __init__(self, config):
        super().__init__(config)
        self._kind_sums: dict[str, list[float]] = {}  # statistic -> [sum, count] since the last log

    def columns(self) -> dict[str, str]:
        """KTO's columns are fixed: prompt, completion, label."""
        return {}

    def fit_columns(self, ds, source: str, with_labels: bool = True) -> None:
        if with_labels:
            self.data_format(ds, source)
        elif "prompt" not in ds.column_names:
            raise DeltatuneError(
                f"{source}: no 'prompt' column; columns are {', '.join(ds.column_names)}; rename your prompt column to prompt"
            )

    def prompt_messages(self, row, row_number, source):
        """The prompt of one row as chat messages (a string, HH dialogue, or messages)."""
        ex = read_example(
            {"prompt": row.get("prompt"), "completion": "x", "label": True}, "unpaired", row_number, source,
            PreferenceStats(), system_prompt=self.config.data.system_prompt,
        )
        return ex.prompt

    def references(self, row: dict[str, Any]) -> list[str]:
        """The completion of a desirable row (an undesirable one is no reference: empty)."""
        ex = read_example(row, "unpaired", 0, "data", PreferenceStats())
        return [ex.completion] if ex is not None and ex.label else [""]

    def encode(self, ds, tokenizer, with_labels: bool = True, source: str = "data") -> Features:
        """One feature per kept row, with its mismatched KL sequence (the next kept row's completion)."""
        enc = self.encoder(tokenizer)
        stats = PreferenceStats()
        kept = self.examples(ds, source, stats)
        rows, meta = [], []
        for k, (i, ex) in enumerate(kept):
            out = enc.encode_single(ex.prompt, ex.completion, stats, i + 1)
            other = kept[(k + 1) % len(kept)][1]
            kl = enc.encode_single(ex.prompt, other.completion, PreferenceStats(), i + 1) if out is not None else None
            if out is None or kl is None:
                continue
            rows.append({
                "input_ids": out["input_ids"], "labels": out["labels"],
                "kl_input_ids": kl["input_ids"], "kl_labels": kl["labels"], "desirable": int(bool(ex.label)),
            })
            meta.append(i)
        if not rows:
            raise DeltatuneError(
                f"{source}: no example left to train or evaluate on ({stats.dropped_empty} with an empty completion, "
                f"{stats.dropped_too_long} too long for data.max_seq_length={self.config.data.max_seq_length})"
            )
        lengths = [len(r["input_ids"]) + len(r["kl_input_ids"]) for r in rows]
        return Features(rows, lengths, meta=meta, stats=stats)

    def show_feature(self, tokenizer, feature: dict[str, Any]) -> list[str]:
        kind = "desirable" if feature["desirable"] else "undesirable"
        return [
            f"{kind}: " + mark_trained(tokenizer, feature["input_ids"], feature["labels"]),
            "KL (mismatched): " + mark_trained(tokenizer, feature["kl_input_ids"], feature["kl_labels"]),
        ]

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """2B right-padded rows (completions, then the mismatched KL sequences), ``desirable`` (B,) bool
        and, when precomputed, ``ref_logps`` / ``ref_kl_logps`` (B,)."""
        seqs = [{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features]
        seqs += [{"input_ids": f["kl_input_ids"], "labels": f["kl_labels"]} for f in features]
        batch = self.stack_sequences(seqs, features)
        batch["desirable"] = torch.tensor([bool(f["desirable"]) for f in features])
        return batch

    def _pair_outputs(self, model, batch) -> dict[str, torch.Tensor]:
        """Per-example loss, reward, log-probability and the batch's KL point, (B,) each."""
        logps = self.sequence_logps(model, batch)  # "chosen": completions, "rejected": mismatched KL sequences
        ref, ref_kl = self.reference_logps(model, batch)
        d = self.config.data
        z = kto_kl(logps["rejected"], ref_kl)
        losses, rewards = kto_loss(logps["chosen"], ref, batch["desirable"], z, self.beta, d.desirable_weight, d.undesirable_weight)
        return {
            "loss": losses, "rewards": rewards, "logps": logps["chosen"], "desirable": batch["desirable"].float(),
            "kl": z.expand_as(losses), "nll_sum": -logps["chosen"], "chosen_tokens": logps["chosen_tokens"],
        }

    def loss(self, model, batch):
        out = self._pair_outputs(model, batch)
        good = out["desirable"] > 0
        stats = {"kl": out["kl"]}
        if good.any():
            stats["rewards_desirable"] = out["rewards"][good]
        if (~good).any():
            stats["rewards_undesirable"] = out["rewards"][~good]
        for k, v in stats.items():  # per-kind means: each kind has its own count
            acc = self._kind_sums.setdefault(k, [0.0, 0])
            acc[0] += float(v.detach().sum())
            acc[1] += v.numel()
        return out["loss"].sum(), torch.tensor(out["loss"].shape[0])

    def pop_train_metrics(self) -> dict[str, float]:
        out = {k: s / n for k, (s, n) in self._kind_sums.items() if n}
        self._kind_sums = {}
        return out

    def compute_metrics(self, outputs, features=None) -> dict[str, Any]:
        r, good = outputs["rewards"], outputs["desirable"] > 0
        lp = outputs["logps"]
        mean = lambda x: float(np.mean(x)) if len(x) else float("nan")  # noqa: E731
        return {
            "loss": float(np.mean(outputs["loss"])),
            "rewards_desirable": mean(r[good]),
            "rewards_undesirable": mean(r[~good]),
            "rewards_margin": mean(r[good]) - mean(r[~good]),
            "reward_auc": rank_auc(r, good),
            "kl": float(np.mean(outputs["kl"])),
            "logps_desirable": mean(lp[good]),
            "logps_undesirable": mean(lp[~good]),
            "sft_loss": float(np.sum(outputs["nll_sum"][good]) / max(float(np.sum(outputs["chosen_tokens"][good])), 1.0)),
            "examples": int(len(r)),
        }

    def decode(self, outputs, features=None) -> list[dict[str, Any]]:
        return [{"reward": float(r), "desirable": bool(d)} for r, d in zip(outputs["rewards"], outputs["desirable"])]

    def worst_examples(self, outputs, features, rows, k):
        """Desirable completions with the lowest reward and undesirable ones with the highest (score:
        the reward, negated for undesirable ones)."""
        kept = dict(self.examples(rows, "data", PreferenceStats()))  # row index -> the example as encoded
        recs = []
        for row_index, r, d in zip(features.meta, outputs["rewards"], outputs["desirable"]):
            kind = "desirable" if d else "undesirable"
            completion = kept[int(row_index)].completion
            recs.append(example_row(row_index, self.example_input(rows[int(row_index)], row_index + 1, "data"), kind, completion, float(r if d else -r)))
        return worst_examples("signed reward (negated for undesirable completions; reference: the label)", True, recs, k)

    def rows_from_texts(self, texts):
        import datasets

        return datasets.Dataset.from_dict({"prompt": [str(t) for t in texts]})

    def input_texts(self, ds, source: str = "data"):
        return [("\n".join([*(m["content"] for m in ex.prompt), ex.completion or ""]),) for _, ex in self.examples(ds, source, PreferenceStats())]

    @classmethod
    def demo_rows(cls) -> dict[str, Any]:
        """Eight prompt/completion/label rows, half desirable; see :meth:`Task.demo_rows`."""
        rows = [
            {"prompt": f"What is {i} plus one?", "completion": f"It is {i + 1}." if i % 2 else f"Maybe {i + 5}?", "label": bool(i % 2)}
            for i in range(8)
        ]
        return {"rows": rows, "config": {}}
