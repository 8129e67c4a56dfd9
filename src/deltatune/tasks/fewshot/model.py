"""The few-shot classifier: a transformers encoder, mean pooling and a linear head.

:class:`SentenceClassifier` embeds a text as the L2-normalised mean of its last hidden states
over the attention mask (what sentence-transformers' all-MiniLM-L6-v2 computes) and scores the
labels with a linear head; its output has ``.logits`` like a transformers model (and
``.embeddings`` when asked). With ``train.method: contrastive`` the head is not trained by
gradient: a logistic regression fitted on the embeddings is copied into it
(:mod:`deltatune.tasks.fewshot.task`).

A saved classifier (:meth:`SentenceClassifier.save_pretrained`) is a folder holding

- the encoder as a Hugging Face model folder (``config.json`` with ``id2label``/``label2id``,
  ``model.safetensors``; ``transformers.AutoModel`` loads it);
- ``sentence_classifier_head.safetensors``: the head's ``weight`` (labels x hidden) and ``bias``;
- ``deltatune_sentence_classifier.json``: what the folder is (format version, pooling,
  normalisation, head file, label count);

and :meth:`SentenceClassifier.from_pretrained` loads it back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from transformers import AutoModel
from transformers.utils import ModelOutput

from deltatune.errors import DeltatuneError

META_FILE = "deltatune_sentence_classifier.json"
HEAD_FILE = "sentence_classifier_head.safetensors"
FORMAT_VERSION = 1


@dataclass
class SentenceClassifierOutput(ModelOutput):
    """``logits`` (batch, labels) and, when asked, ``embeddings`` (batch, hidden), L2-normalised."""

    logits: Optional[torch.Tensor] = None
    embeddings: Optional[torch.Tensor] = None


class LinearHead(torch.nn.Module):
    """``x @ weight.T + bias``: a linear layer that is deliberately not a ``torch.nn.Linear``, so
    that peft's ``target_modules: all-linear`` puts no adapter on it (peft only recognises the
    heads of transformers models); it is fitted, and saved whole (``modules_to_save``)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(out_features, in_features))
        self.bias = torch.nn.Parameter(torch.zeros(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The head's scores of embeddings ``x`` (batch, in_features)."""
        return F.linear(x, self.weight, self.bias)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (batch, seq, dim) over the positions where ``attention_mask`` is 1."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class SentenceClassifier(torch.nn.Module):
    """An encoder (``body``, a transformers ``AutoModel``), mean pooling, L2 normalisation and a
    linear head (``head``) over ``num_labels`` labels.

    ``config`` is the body's config (with the label names), so that code reading
    ``model.config`` (position limits, saved label maps) treats it like a transformers model.
    """

    def __init__(self, body: torch.nn.Module, num_labels: int):
        super().__init__()
        self.body = body
        self.config = body.config
        self.head = LinearHead(body.config.hidden_size, num_labels)

    def embed(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, **inputs: Any) -> torch.Tensor:
        """L2-normalised mean-pooled embeddings (batch, hidden) of a tokenized batch."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask, **inputs).last_hidden_state
        return F.normalize(mean_pool(hidden, attention_mask).float(), dim=-1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        return_embeddings: bool = False,
    ) -> SentenceClassifierOutput:
        """Label scores of a tokenized batch; with ``return_embeddings`` also the embeddings."""
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        emb = self.embed(input_ids, attention_mask, **extra)
        logits = self.head(emb.to(self.head.weight.dtype))
        return SentenceClassifierOutput(logits=logits, embeddings=emb if return_embeddings else None)

    # ---- files ------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path, **kwargs: Any) -> None:
        """Write the classifier into ``folder`` (see the module): the body as a Hugging Face
        folder (``kwargs`` go to its ``save_pretrained``), the head, and the JSON saying what it is."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.body.save_pretrained(folder, **kwargs)
        save_file({"weight": self.head.weight.detach().cpu().contiguous(), "bias": self.head.bias.detach().cpu().contiguous()},
                  str(folder / HEAD_FILE))
        meta = {
            "format_version": FORMAT_VERSION, "class": "SentenceClassifier", "pooling": "mean", "normalize": True,
            "head_file": HEAD_FILE, "num_labels": int(self.head.weight.shape[0]), "hidden_size": int(self.head.weight.shape[1]),
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def is_saved_in(cls, folder: str | Path) -> bool:
        """Whether ``folder`` holds a saved :class:`SentenceClassifier` (its JSON file)."""
        return (Path(folder) / META_FILE).is_file()

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, trust_remote_code: bool = False, allow_pickle_weights: bool = False
    ) -> "SentenceClassifier":
        """Load a classifier written by :meth:`save_pretrained`.

        Raises:
            DeltatuneError: the folder is not a saved sentence classifier, or a file of it is
                missing or damaged (names the file).
        """
        from deltatune.delta.storage import check_safetensors
        from deltatune.models.loading import load_pretrained
        from safetensors.torch import load_file

        folder = Path(folder)
        meta_path = folder / META_FILE
        if not meta_path.is_file():
            raise DeltatuneError(f"{folder} is not a few-shot sentence classifier (no {META_FILE}); give a model/ folder of a train.method contrastive run")
        try:
            meta = json.loads(meta_path.read_text())
            head_path = folder / str(meta["head_file"])
            num_labels = int(meta["num_labels"])
        except (ValueError, KeyError, TypeError) as e:
            raise DeltatuneError(f"{meta_path} is damaged ({type(e).__name__}: {e}); train the run again") from None
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise DeltatuneError(f"{meta_path} has format version {meta['format_version']}, newer than this deltatune reads; upgrade deltatune")
        check_safetensors(head_path)
        body = load_pretrained(AutoModel, str(folder), trust_remote_code=trust_remote_code, allow_pickle_weights=allow_pickle_weights)
        model = cls(body, num_labels)
        head = load_file(str(head_path))
        if set(head) != {"weight", "bias"} or tuple(head["weight"].shape) != tuple(model.head.weight.shape):
            raise DeltatuneError(
                f"{head_path} does not hold a head of {num_labels} labels x {model.head.weight.shape[1]} dimensions; train the run again"
            )
        with torch.no_grad():
            model.head.weight.copy_(head["weight"])
            model.head.bias.copy_(head["bias"])
        return model
