"""Masked-LM continued pretraining of an encoder (domain-adaptive pretraining).

Rows: raw text in ``data.text_column`` (a .txt file gives one row per paragraph). Documents are
tokenized, concatenated with ``[SEP]`` after each, and cut into blocks of
``data.max_seq_length`` tokens, each ``[CLS] ... [SEP]`` (RoBERTa's FULL-SENTENCES packing, Liu
et al. 2019, arXiv:1907.11692, sec. 4.2: blocks may span documents, separated by ``[SEP]``;
nothing is thrown away, the last block may be shorter).

Masking (Devlin et al. 2019, BERT, sec. 3.1 "Task #1"), in :meth:`MaskedLMTask.collate`: each
non-special token is selected with probability ``data.mlm_probability``; a selected token is
replaced by ``[MASK]`` 80% of the time, by a uniformly random vocabulary token 10%, and kept
10%; the loss is cross-entropy on the selected tokens only (labels -100 elsewhere). With
``data.whole_word_masking`` the selection is per word: all subwords of a word (WordPiece ``##``
continuations, or BPE/SentencePiece tokens without a word-start marker) are selected together
(the 80/10/10 choice stays per token, as in Google's BERT ``create_pretraining_data.py``).

Randomness: training masks are drawn anew at every collation (dynamic masking, RoBERTa
sec. 4.1) from torch's global generator, which the trainer seeds with ``config.seed`` and saves
in every checkpoint, so a run is reproducible from its seed and a resumed run draws the same
masks as an uninterrupted one (a generator owned by the task would not be checkpointed).
Evaluation masks are fixed: collation under ``torch.no_grad()`` (the trainer's and predictor's
evaluation) masks feature ``i`` with its own ``torch.Generator`` seeded from ``config.seed`` and
``i``, so every evaluation of a split sees the same masks, whatever the batch composition.

Loss: cross-entropy summed over masked tokens; ``num_targets`` is the number of masked tokens
(DESIGN.md). For BERT- and RoBERTa-style models the vocabulary projection is applied only to
the masked positions (the logits of other positions are never needed).

Metrics: ``loss`` (mean CE over masked tokens, nats; the default metric, lower is better),
``accuracy`` (share of masked tokens whose argmax is the original token), ``perplexity`` =
exp(loss): the masked-token perplexity under this masking scheme, not the pseudo-perplexity of
Salazar et al. 2020, and ``masked_tokens``.

Model: ``AutoModelForMaskedLM``. A checkpoint without an MLM head (the packaged MiniLM) gets a
fresh transform (dense + LayerNorm) and output bias; the output projection is tied to the word
embeddings. PEFT methods (LoRA, DoRA, IA3) run with peft's generic model (peft has no MLM task
type) and keep the freshly initialised head modules trainable and saved (``modules_to_save``,
see :func:`fresh_head_modules`: BERT's head transform); the output bias then stays at its
initial zeros.

Prediction (rows without labels): each text is encoded on its own (truncated) and the user's
``[MASK]`` tokens are filled: the 5 most likely tokens per mask and the text with each mask
replaced by its best token.
"""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForMaskedLM

from deltatune.config import RunConfig
from deltatune.data.columns import check_text_column, require_columns
from deltatune.errors import DeltatuneError
from deltatune.metrics.text import perplexity
from deltatune.models.loading import load_pretrained
from deltatune.tasks.base import Features, Task
from deltatune.tasks.collate import pad_batch

IGNORE_INDEX = -100
TOP_K = 5  # predictions per [MASK] when filling masks


def continuation_table(tokenizer) -> torch.Tensor:
    """Bool (len(tokenizer),): True where a token continues the previous word.

    WordPiece (BERT): tokens starting with ``##``. Byte-level BPE (``Ġ`` marks a word start) and
    SentencePiece (``▁``): tokens without the marker. Special tokens are never continuations.

    Raises:
        DeltatuneError: the vocabulary has none of these conventions (whole-word masking
            cannot find words).
    """
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    tokens = [t or "" for t in tokens]
    special = set(tokenizer.all_special_ids)
    if any(t.startswith("##") for t in tokens):
        cont = [t.startswith("##") for t in tokens]
    else:
        marker = next((m for m in ("Ġ", "▁") if sum(t.startswith(m) for t in tokens) > len(tokens) // 10), None)
        if marker is None:
            raise DeltatuneError(
                f"data.whole_word_masking: cannot tell word boundaries in the vocabulary of {type(tokenizer).__name__} "
                "(no WordPiece '##', BPE 'Ġ' or SentencePiece '▁' tokens); set data.whole_word_masking: false"
            )
        cont = [not t.startswith(marker) for t in tokens]
    return torch.tensor([c and i not in special for i, c in enumerate(cont)], dtype=torch.bool)


def mask_tokens(
    ids: torch.Tensor,
    special: torch.Tensor,
    probability: float,
    mask_id: int,
    vocab_size: int,
    continuation: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of one sequence (Devlin et al. 2019): select, then 80% [MASK] / 10% random / 10% kept.

    Args:
        ids: int64 (T,) token ids.
        special: bool (T,), True for tokens never to select ([CLS], [SEP], [PAD], ...).
        probability: selection probability per token (per word with ``continuation``).
        mask_id: the [MASK] token id.
        vocab_size: random replacements are uniform over ``[0, vocab_size)``.
        continuation: bool (T,), True where a token continues the previous word; when given,
            whole words are selected together.
        generator: source of randomness (``None``: torch's global generator).

    Returns:
        (masked input ids int64 (T,), labels int64 (T,): the original id at selected
        positions, -100 elsewhere).
    """
    t = ids.shape[0]
    if continuation is None:
        selected = torch.rand(t, generator=generator) < probability
    else:
        starts = ~continuation | special
        starts[1:] |= special[:-1]  # a continuation right after [CLS]/[SEP] starts its own word
        word = torch.cumsum(starts.long(), 0) - 1
        picked = torch.rand(int(word[-1]) + 1 if t else 0, generator=generator) < probability
        selected = picked[word] if t else torch.zeros(0, dtype=torch.bool)
    selected &= ~special
    choice = torch.rand(t, generator=generator)
    random_ids = torch.randint(vocab_size, (t,), generator=generator)
    to_mask = selected & (choice < 0.8)
    to_random = selected & (choice >= 0.8) & (choice < 0.9)
    inputs = ids.clone()
    inputs[to_mask] = mask_id
    inputs[to_random] = random_ids[to_random]
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    return inputs, labels


def eval_mask_seed(seed: int, index: int) -> int:
    """The generator seed of evaluation feature ``index`` under run seed ``seed`` (a 63-bit int)."""
    return (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + 1) % (2**63)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def masked_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor], positions: torch.Tensor) -> torch.Tensor:
    """Vocabulary logits at ``positions`` only: float (M, V) for the M True entries of bool (B, T).

    BERT-style (``cls`` head) and RoBERTa-style (``lm_head``) models run the encoder, then the
    head on the M hidden states only. Other models (and DDP-wrapped ones, whose forward must go
    through the wrapper) compute all logits and select.
    """
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    inner = _unwrap(model)
    encoder = getattr(inner, getattr(inner, "base_model_prefix", ""), None)
    head = getattr(inner, "cls", None)
    if head is None:
        head = getattr(inner, "lm_head", None)
    if encoder is None or head is None or isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model(**inputs).logits[positions]
    hidden = encoder(**inputs)[0]
    return head(hidden[positions])


def fresh_head_modules(model: torch.nn.Module, new_parameter_names: set[str]) -> list[str] | None:
    """Names of the modules holding freshly initialised parameters, for peft's ``modules_to_save``.

    Modules that contain the output embeddings are left out: copying them would untie (and
    train in full) the vocabulary projection, which shares the word embeddings. For BERT
    without an MLM head: ``cls.predictions.transform.dense`` and ``...transform.LayerNorm``;
    the output bias (a parameter of ``cls.predictions``, which owns the decoder) is not among
    them. ``None`` when the checkpoint had the whole head.
    """
    out = model.get_output_embeddings()
    owners = {name for name, mod in model.named_modules() if out is not None and any(m is out for m in mod.modules())}
    modules = sorted({n.rsplit(".", 1)[0] for n in new_parameter_names if "." in n} - owners)
    return modules or None


class MaskedLMTask(Task):
    """Masked-LM on packed blocks of raw text, with dynamic (training) and fixed (evaluation) masks."""

    name = "masked-lm"
    auto_model_class = AutoModelForMaskedLM
    peft_task_type = None  # peft has no MLM TaskType: its generic PeftModel is used
    modules_to_save: list[str] | None = None  # set by build_model: the head modules it initialised fresh
    vocab_logits = True
    default_metric = "loss"
    greater_is_better = False
    contiguous_split = True
    long_inputs_truncated = False  # documents are packed into blocks: nothing is cut off

    def __init__(self, config: RunConfig):
        super().__init__(config)
        self.mask_token_id: int | None = None
        self.vocab_size = 0
        self.special_ids = torch.zeros(0, dtype=torch.long)
        self.continuation: torch.Tensor | None = None

    def set_tokenizer(self, tokenizer) -> None:
        """Remember the [MASK] id, the vocabulary size, the special ids and (whole-word masking) word boundaries.

        Raises:
            DeltatuneError: the tokenizer has no mask token.
        """
        super().set_tokenizer(tokenizer)
        if tokenizer.mask_token_id is None:
            raise DeltatuneError(f"{type(tokenizer).__name__} has no [MASK] token: masked-lm needs an encoder tokenizer (BERT, RoBERTa, ...)")
        self.mask_token_id = tokenizer.mask_token_id
        self.vocab_size = len(tokenizer)
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self.continuation = continuation_table(tokenizer) if self.config.data.whole_word_masking else None

    # ---- rows ------------------------------------------------------------------------------
    def fit(self, train: datasets.Dataset, source: str) -> None:
        self.check(train, source)

    def check(self, ds: datasets.Dataset, source: str, with_labels: bool = True) -> None:
        """The text column exists and no row is empty.

        Raises:
            DeltatuneError: naming the file, the row and the column.
        """
        require_columns(ds, [self.config.data.text_column], source)
        check_text_column(ds[self.config.data.text_column], self.config.data.text_column, source)

    def rows_from_texts(self, texts: list[str]) -> datasets.Dataset:
        """Rows for prediction from raw texts (with ``[MASK]`` tokens to fill)."""
        return datasets.Dataset.from_dict({self.config.data.text_column: [str(t) for t in texts]})

    def encode(self, ds: datasets.Dataset, tokenizer, with_labels: bool = True, source: str = "data") -> Features:
        """Blocks of packed text (``with_labels``) or one truncated sequence per row (prediction).

        Returns:
            :class:`Features` with ``input_ids`` per row and, for training/evaluation,
            ``mask_seed`` (the seed of its fixed evaluation mask).

        Raises:
            DeltatuneError: the text gives no token.
        """
        d = self.config.data
        texts = [str(t) for t in ds[d.text_column]]
        if not with_labels:
            ids = tokenizer(texts, truncation=True, max_length=d.max_seq_length)["input_ids"]
            return Features([{"input_ids": x} for x in ids], [len(x) for x in ids])
        cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        if cls_id is None or sep_id is None:
            raise DeltatuneError(f"{type(tokenizer).__name__} has no [CLS]/[SEP] tokens: masked-lm needs an encoder tokenizer")
        stream: list[int] = []
        for x in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]:  # long documents are cut below
            stream.extend(x + [sep_id])
        size = d.max_seq_length - 2
        rows = []
        for start in range(0, len(stream), size):
            chunk = stream[start : start + size]
            if chunk and chunk[-1] == sep_id:
                chunk = chunk[:-1]  # the block's own [SEP] closes it
            if chunk and chunk[0] == sep_id:
                chunk = chunk[1:]
            if chunk:
                rows.append({"input_ids": [cls_id] + chunk + [sep_id]})
        if not rows:
            raise DeltatuneError("the text gives no token to train on; give more text")
        for i, row in enumerate(rows):
            row["mask_seed"] = eval_mask_seed(self.config.seed, i)
        return Features(rows, [len(r["input_ids"]) for r in rows])

    # ---- batches ---------------------------------------------------------------------------
    def collate(self, features: list[dict[str, Any]], fixed_masks: bool | None = None) -> dict[str, torch.Tensor]:
        """Pad and mask a batch: input_ids, attention_mask (B, T) and labels (B, T), int64.

        Args:
            fixed_masks: use each feature's own seeded generator (evaluation) instead of the
                global one (training). ``None``: fixed when gradients are disabled, i.e. under
                the ``torch.no_grad()`` of evaluation and prediction.

        Rows without ``mask_seed`` (prediction) are not masked and get no labels.
        """
        batch = pad_batch(features, {"input_ids": self.pad_token_id})
        lengths = torch.tensor([len(f["input_ids"]) for f in features])
        batch["attention_mask"] = (torch.arange(batch["input_ids"].shape[1])[None, :] < lengths[:, None]).long()
        if "mask_seed" not in features[0]:
            return batch
        if fixed_masks is None:
            fixed_masks = not torch.is_grad_enabled()
        inputs = batch["input_ids"].clone()
        labels = torch.full_like(inputs, IGNORE_INDEX)
        for b, f in enumerate(features):
            n = len(f["input_ids"])
            ids = batch["input_ids"][b, :n]
            gen = torch.Generator().manual_seed(f["mask_seed"]) if fixed_masks else None
            cont = self.continuation[ids] if self.continuation is not None else None
            inputs[b, :n], labels[b, :n] = mask_tokens(
                ids, torch.isin(ids, self.special_ids), self.config.data.mlm_probability,
                self.mask_token_id, self.vocab_size, cont, gen,
            )
        batch["input_ids"], batch["labels"] = inputs, labels
        return batch

    # ---- model -----------------------------------------------------------------------------
    def build_model(self, model_path: str, config_overrides: dict[str, Any]) -> torch.nn.Module:
        """``AutoModelForMaskedLM``; the head parts missing from the checkpoint are :attr:`new_parameter_names`."""
        model, info = load_pretrained(
            AutoModelForMaskedLM,
            model_path,
            trust_remote_code=self.config.model.trust_remote_code,
            allow_pickle_weights=self.config.model.allow_pickle_weights,
            output_loading_info=True,
            **config_overrides,
        )
        self.new_parameter_names = set(info["missing_keys"])
        self.modules_to_save = fresh_head_modules(model, self.new_parameter_names)
        return model

    def token_losses(self, model, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(CE per masked token float32 (M,), argmax == label bool (M,), row of each masked token int64 (M,))."""
        positions = batch["labels"] != IGNORE_INDEX
        logits = masked_logits(model, batch, positions).float()
        targets = batch["labels"][positions]
        ce = F.cross_entropy(logits, targets, reduction="none")
        return ce, logits.argmax(-1) == targets, positions.nonzero()[:, 0]

    def loss(self, model, batch):
        ce, _, _ = self.token_losses(model, batch)
        return ce.sum(), torch.tensor(ce.numel(), device=ce.device)

    def num_targets(self, batch) -> int:
        return int((batch["labels"] != IGNORE_INDEX).sum())

    @torch.no_grad()
    def eval_step(self, model, batch):
        """Per feature: ``loss_sum`` (float64), ``masked_tokens`` and ``correct`` (int64); or, without
        labels, the top-5 fills of each [MASK]: ``top_ids``/``top_probs`` object arrays of (n_masks, 5)."""
        b = batch["input_ids"].shape[0]
        if "labels" not in batch:
            return self._fill_step(model, batch)
        ce, correct, rows = self.token_losses(model, batch)
        loss_sum = torch.zeros(b, dtype=torch.float64, device=ce.device).index_add_(0, rows, ce.double())
        count = torch.bincount(rows, minlength=b)
        right = torch.bincount(rows, weights=correct.double(), minlength=b)
        return {
            "loss_sum": loss_sum.cpu().numpy(),
            "masked_tokens": count.cpu().numpy(),
            "correct": right.round().long().cpu().numpy(),
        }

    def _fill_step(self, model, batch):
        positions = batch["input_ids"] == self.mask_token_id
        probs = masked_logits(model, batch, positions).float().softmax(-1)
        top = probs.topk(min(TOP_K, probs.shape[-1]), dim=-1) if probs.numel() else None
        rows = positions.nonzero()[:, 0].cpu().numpy()
        b = batch["input_ids"].shape[0]
        top_ids, top_probs = np.empty(b, dtype=object), np.empty(b, dtype=object)
        for i in range(b):
            sel = rows == i
            top_ids[i] = top.indices.cpu().numpy()[sel] if top is not None else np.zeros((0, TOP_K), dtype=np.int64)
            top_probs[i] = top.values.cpu().numpy()[sel] if top is not None else np.zeros((0, TOP_K))
        ids = np.empty(b, dtype=object)
        for i in range(b):
            n = int(batch["attention_mask"][i].sum())
            ids[i] = batch["input_ids"][i, :n].cpu().numpy()
        return {"input_ids": ids, "top_ids": top_ids, "top_probs": top_probs}

    # ---- outputs ---------------------------------------------------------------------------
    def compute_metrics(self, outputs, features=None):
        """Masked-token loss (nats), accuracy, perplexity = exp(loss), and the number of masked tokens."""
        total = float(np.sum(outputs["loss_sum"]))
        n = int(np.sum(outputs["masked_tokens"]))
        loss = total / max(n, 1)
        return {
            "loss": loss,
            "accuracy": float(np.sum(outputs["correct"])) / max(n, 1),
            "perplexity": perplexity(loss),
            "masked_tokens": n,
        }

    def decode(self, outputs, features=None):
        """Prediction rows: ``{"filled": text, "masks": [{"position", "predictions": [{"token", "score"}]}]}``.

        Labelled features (blocks) give ``{"loss", "accuracy", "masked_tokens"}`` per block.
        """
        if "top_ids" not in outputs:
            return [
                {"loss": float(s / max(n, 1)), "accuracy": float(c / max(n, 1)), "masked_tokens": int(n)}
                for s, n, c in zip(outputs["loss_sum"], outputs["masked_tokens"], outputs["correct"])
            ]
        tok = self.tokenizer
        records = []
        for ids, top_ids, top_probs in zip(outputs["input_ids"], outputs["top_ids"], outputs["top_probs"]):
            ids = np.asarray(ids).copy()
            where = np.nonzero(ids == self.mask_token_id)[0]
            masks = []
            for pos, cand, p in zip(where, top_ids, top_probs):
                masks.append(
                    {
                        "position": int(pos),
                        "predictions": [{"token": tok.convert_ids_to_tokens(int(c)), "score": float(s)} for c, s in zip(cand, p)],
                    }
                )
                ids[pos] = int(cand[0])
            records.append({"filled": tok.decode(ids.tolist(), skip_special_tokens=True), "masks": masks})
        return records

    @classmethod
    def from_pretrained_config(cls, config: RunConfig, model_config) -> "MaskedLMTask":
        return cls(config)

    @classmethod
    def demo_rows(cls) -> dict[str, Any]:
        """Eight short ``text`` rows; see :meth:`Task.demo_rows`."""
        return {"rows": [{"text": f"the cat number {i} sat on the warm mat and slept all day"} for i in range(8)], "config": {}}
