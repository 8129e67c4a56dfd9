"""Few-shot text classification with SetFit's recipe (``train.method: contrastive``).

Training (Tunstall et al. 2022, arXiv:2209.11055), in deltatune's own training loop:

1. The training rows are encoded as single texts, as :class:`ClassificationTask` encodes them;
   :meth:`ContrastiveClassificationTask.training_features` turns them into pairs
   (:func:`deltatune.tasks.fewshot.pairs.make_pairs`: ``train.contrastive_iterations`` rounds
   of one positive and one negative pair per text, seeded by the run's ``seed``).
2. The encoder of a :class:`~deltatune.tasks.fewshot.model.SentenceClassifier` is trained on the
   pairs with CosineSimilarityLoss: the squared difference between the cosine of the two
   mean-pooled embeddings and the target (1 same label, 0 different), summed over the pairs of a
   batch, counted per pair (the loop divides by the pairs of the whole step). Any Δθ method that
   fits an encoder applies to it (full, LoRA, ...; peft's generic model, the head saved whole).
3. A logistic regression (``train.contrastive_head``; scikit-learn, multinomial for one label per
   row, one binary regression per label for multi-label rows) is fitted on the embeddings of the
   training texts and copied into the linear head: logits are the regression's decision function
   (for two classes ``-z/2, +z/2``), so softmax(logits) is its ``predict_proba`` (sigmoid per
   label for multi-label), and evaluation, prediction and export run the torch module alone.

The head is fitted when training ends (:meth:`finish_training`, before the model is saved and
evaluated) and, so that evaluations during training (``eval.eval_strategy``, best-model choice,
early stopping) score the encoder as it is then, before the first evaluation after a training
step. A resumed run trains on from its checkpoint and fits the head at its end like any run.
One process only (no DDP launch): the head is fitted on the main process.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from deltatune.errors import DeltatuneError
from deltatune.tasks.base import Features
from deltatune.tasks.classification import ClassificationTask
from deltatune.tasks.collate import model_inputs, pad_batch
from deltatune.tasks.fewshot.model import LinearHead, SentenceClassifier
from deltatune.tasks.fewshot.pairs import make_pairs

# a logit that makes a class (or a label) impossible: exp() of it is 0 in float32 and float64
IMPOSSIBLE = -1e4


class PairFeatures(Features):
    """Training pairs of single-text features: row ``k`` is ``{"first": row, "second": row, "target": 1.0 | 0.0}``
    (the rows are those of ``singles``, shared, not copied); ``lengths[k]`` counts both texts' tokens.

    ``singles`` are the encoded training texts (with labels) the head is fitted on."""

    def __init__(self, singles: Features, first: list[int], second: list[int], targets: list[float]):
        rows = [{"first": singles.rows[a], "second": singles.rows[b], "target": t} for a, b, t in zip(first, second, targets)]
        super().__init__(rows, [singles.lengths[a] + singles.lengths[b] for a, b in zip(first, second)])
        self.singles = singles


def cosine_similarity_loss(first: torch.Tensor, second: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over pairs of ``(cos(first_i, second_i) - target_i)**2`` (sentence-transformers'
    CosineSimilarityLoss, summed rather than averaged); ``first``/``second`` (pairs, dim)."""
    cos = F.cosine_similarity(first.float(), second.float(), dim=-1)
    return ((cos - targets.float()) ** 2).sum()


def fit_logistic_head(
    embeddings: np.ndarray, labels: np.ndarray, num_labels: int, multi_label: bool, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Fit scikit-learn's ``LogisticRegression`` on ``embeddings`` (n, dim) and return the linear
    head that reproduces it: ``(weight (num_labels, dim), bias (num_labels,))``, float32.

    Single-label (``labels``: class ids (n,)): multinomial regression over the classes present;
    for two classes the binary regression's ``z = w.x + b`` becomes logits ``(-z/2, z/2)``, whose
    softmax is ``(1 - sigmoid(z), sigmoid(z))``; a class absent from ``labels`` gets logit
    :data:`IMPOSSIBLE`. So ``softmax(x @ weight.T + bias)`` equals ``predict_proba`` (as
    :class:`ClassificationTask.probabilities` computes it). Multi-label (``labels``: multi-hot
    (n, num_labels)): one binary regression per label (one-vs-rest), ``sigmoid`` of each logit
    its ``predict_proba``; a label that is always 0 (or always 1) gets logit :data:`IMPOSSIBLE`
    (or its negation).

    Raises:
        DeltatuneError: fewer than two classes among ``labels`` (single-label).
    """
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(embeddings, dtype=np.float64)
    weight = np.zeros((num_labels, x.shape[1]))
    bias = np.full(num_labels, IMPOSSIBLE)

    def regression() -> LogisticRegression:
        return LogisticRegression(max_iter=1000, random_state=seed)

    if multi_label:
        y = np.asarray(labels) >= 0.5
        for j in range(num_labels):
            if y[:, j].all() or not y[:, j].any():
                bias[j] = -IMPOSSIBLE if y[:, j].all() else IMPOSSIBLE
                continue
            lr = regression().fit(x, y[:, j].astype(int))
            weight[j], bias[j] = lr.coef_[0], lr.intercept_[0]
        return weight.astype(np.float32), bias.astype(np.float32)
    y = np.asarray(labels).astype(int)
    present = np.unique(y)
    if len(present) < 2:
        raise DeltatuneError(f"the few-shot head needs training rows of at least two labels; the training split has {len(present)}")
    lr = regression().fit(x, y)
    classes = [int(c) for c in lr.classes_]
    if len(classes) == 2:
        weight[classes[0]], bias[classes[0]] = -lr.coef_[0] / 2, -lr.intercept_[0] / 2
        weight[classes[1]], bias[classes[1]] = lr.coef_[0] / 2, lr.intercept_[0] / 2
    else:
        for row, c in enumerate(classes):
            weight[c], bias[c] = lr.coef_[row], lr.intercept_[row]
    return weight.astype(np.float32), bias.astype(np.float32)


class ContrastiveClassificationTask(ClassificationTask):
    """Text classification trained SetFit's way (see the module); predictions, metrics and saved
    label maps are :class:`ClassificationTask`'s."""

    sequences_per_example = 2  # a pair: two texts per training example
    peft_task_type = None  # peft's generic model: the SentenceClassifier is no transformers head model

    def __init__(self, config, labels=None, multi_label=None):
        super().__init__(config, labels, multi_label)
        self._singles: Features | None = None  # the encoded training texts, once training_features ran
        self._head_stale = False  # the encoder was trained since the head was last fitted

    def settings(self) -> dict[str, Any]:
        """The few-shot settings of the run (``train.*``), logged with the run's start."""
        t = self.config.train
        return {"train.method": t.method, "train.contrastive_iterations": t.contrastive_iterations, "train.contrastive_head": t.contrastive_head}

    # ---- training features ----------------------------------------------------------------
    def training_features(self, features: Features) -> PairFeatures:
        """The pairs of the encoded training texts ``features`` (with labels), see the module."""
        if len(features) and "labels" not in features.rows[0]:
            raise ValueError("training features need labels")
        keys = [tuple(r["labels"]) if self.multi_label else r["labels"] for r in features.rows]
        pairs = make_pairs(keys, self.config.train.contrastive_iterations, self.config.seed, source=self.config.data.train_file or "training data")
        self._singles = features
        self._head_stale = True
        return PairFeatures(features, [p.first for p in pairs], [p.second for p in pairs], [p.target for p in pairs])

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Single texts as :meth:`ClassificationTask.collate`; pairs as one batch of 2B texts (the
        first texts, then the second ones) with ``targets`` (B,) float."""
        if not features or "target" not in features[0]:
            return super().collate(features)
        seqs = [f["first"] for f in features] + [f["second"] for f in features]
        batch = pad_batch(seqs, {"input_ids": self.pad_token_id, "attention_mask": 0, "token_type_ids": 0})
        batch["targets"] = torch.tensor([f["target"] for f in features], dtype=torch.float32)
        return batch

    # ---- model ----------------------------------------------------------------------------
    def build_model(self, model_path: str, config_overrides: dict[str, Any]) -> torch.nn.Module:
        """A :class:`SentenceClassifier` on the pretrained encoder (``AutoModel``), its config holding
        the label maps; the head starts at zero (it is fitted, not trained)."""
        from transformers import AutoModel

        from deltatune.models.loading import load_pretrained

        m = self.config.model
        body = load_pretrained(
            AutoModel, model_path, trust_remote_code=m.trust_remote_code, allow_pickle_weights=m.allow_pickle_weights,
            **config_overrides,
        )
        body.config.num_labels = len(self.labels)
        body.config.id2label = dict(enumerate(self.labels))
        body.config.label2id = self.label2id
        body.config.problem_type = "multi_label_classification" if self.multi_label else "single_label_classification"
        model = SentenceClassifier(body, len(self.labels))
        model.head.requires_grad_(False)  # fitted by finish_training; peft's saved copy gets its own flag
        self.new_parameter_names = {"head.weight", "head.bias"}
        self.modules_to_save = ["head"]  # adapters save the fitted head whole
        return model

    def load_trained(self, model_dir: str) -> torch.nn.Module:
        """The :class:`SentenceClassifier` saved in ``model_dir``."""
        m = self.config.model
        return SentenceClassifier.from_pretrained(model_dir, trust_remote_code=m.trust_remote_code, allow_pickle_weights=m.allow_pickle_weights)

    def prepare_model(self, model: torch.nn.Module) -> None:
        """Refuse a launch of several processes (the head is fitted on the main process only)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            raise DeltatuneError("train.method contrastive (few-shot) trains on one process; launch it without torchrun/accelerate launch")

    # ---- loss -----------------------------------------------------------------------------
    def loss(self, model, batch):
        """CosineSimilarityLoss summed over the batch's pairs, and the number of pairs."""
        if "targets" not in batch:
            raise ValueError("contrastive training takes pair features (training_features)")
        self._head_stale = True
        emb = model(**{k: v for k, v in batch.items() if k != "targets"}, return_embeddings=True).embeddings
        n = batch["targets"].shape[0]
        return cosine_similarity_loss(emb[:n], emb[n:], batch["targets"]), torch.tensor(n, device=emb.device)

    def num_targets(self, batch) -> int:
        return int(batch["targets"].shape[0]) if "targets" in batch else super().num_targets(batch)

    # ---- the head ---------------------------------------------------------------------------
    @torch.no_grad()
    def eval_step(self, model, batch):
        """As :meth:`ClassificationTask.eval_step`, fitting the head first when the encoder was trained since."""
        if self._head_stale and self._singles is not None:
            self.fit_head(model, self._singles)
        return super().eval_step(model, batch)

    def finish_training(self, model: torch.nn.Module, train_features: Features) -> None:
        """Fit the head on the kept encoder's embeddings of the training texts (see the module)."""
        singles = train_features.singles if isinstance(train_features, PairFeatures) else train_features
        self.fit_head(model, singles)

    @torch.no_grad()
    def embed(self, model: torch.nn.Module, features: Features) -> np.ndarray:
        """Embeddings (n, dim) float32 of single-text ``features`` through ``model``, in eval mode."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        size = self.config.eval.per_device_eval_batch_size
        parts = []
        try:
            for start in range(0, len(features), size):
                batch = super().collate(features.rows[start : start + size])
                inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
                parts.append(model(**inputs, return_embeddings=True).embeddings.float().cpu().numpy())
        finally:
            model.train(was_training)
        return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)

    def fit_head(self, model: torch.nn.Module, singles: Features) -> None:
        """Fit the logistic regression on ``model``'s embeddings of ``singles`` (encoded training texts
        with labels) and copy it into every :class:`LinearHead` of ``model`` (a peft model holds
        the original and its trained copy)."""
        x = self.embed(model, singles)
        y = np.asarray([r["labels"] for r in singles.rows])
        weight, bias = fit_logistic_head(x, y, len(self.labels), bool(self.multi_label), self.config.seed)
        heads = [m for m in model.modules() if isinstance(m, LinearHead)]
        if not heads:
            raise ValueError("the model has no LinearHead to fit")
        for head in heads:
            head.weight.data.copy_(torch.from_numpy(weight).to(head.weight))
            head.bias.data.copy_(torch.from_numpy(bias).to(head.bias))
        self._head_stale = False
