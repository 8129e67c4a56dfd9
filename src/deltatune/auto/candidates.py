"""Model candidates for ``deltatune auto``: family, size, and whether they fit the budgets.

Memory estimate (model states only; activations come on top and grow with batch size and
sequence length), after the model-state accounting of ZeRO (Rajbhandari et al. 2020, §3):
full fine-tuning with fp32 AdamW holds weights, gradients and two moments, 4 + 4 + 8 =
:data:`FULL_BYTES_PER_PARAMETER` bytes per parameter; LoRA holds the frozen fp32 weights
(:data:`LORA_BYTES_PER_PARAMETER`), the adapter being negligible.

Time estimate: training costs about 6 FLOPs per non-embedding parameter per token (forward +
backward, Kaplan et al. 2020, "Scaling Laws for Neural Language Models", §2.1); one epoch's
tokens are estimated as characters / 4 (padding not counted), and the device's speed as the
peak rate of a large fp32 matrix multiplication measured here. Training rarely runs faster than
the matmul peak, so the estimate is meant to be optimistic, but it is rough (it ignores padding,
attention's quadratic term and other jobs sharing the machine); a candidate is skipped only when
this estimate of one epoch exceeds the whole time budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional

import torch

from deltatune.auto.budget import format_bytes, format_seconds
from deltatune.auto.infer import ENCODER_TASKS, task_family
from deltatune.config import FAMILY_DEFAULT_MODELS
from deltatune.delta.registry import METHODS
from deltatune.errors import DeltatuneError
from deltatune.tasks.registry import tasks_of_family

FULL_BYTES_PER_PARAMETER = 16
LORA_BYTES_PER_PARAMETER = 4
CHARS_PER_TOKEN = 4
ENCODER_DECODER_TASKS = tasks_of_family("encoder-decoder")  # from the task registry
DEFAULT_MODELS = {"encoder": "minilm", "decoder": "smollm2", **FAMILY_DEFAULT_MODELS,
                  "vision-language": "HuggingFaceTB/SmolVLM-256M-Instruct"}  # a hub model: no VLM is packaged
# image / audio classifiers are encoders (Whisper's classifier is its encoder alone): the Δθ methods'
# families (deltatune.delta.registry) and the methods searched by default are those of an encoder
MEDIA_FAMILIES = ("vision", "audio")


def method_family(family: str) -> str:
    """The family a Δθ method's ``families`` / ``searched_for`` are checked against: ``"encoder"`` for
    ``"vision"`` and ``"audio"`` (models or tasks), ``"encoder-decoder"`` for ``"speech-seq2seq"`` (Whisper), else ``family``."""
    if family == "speech-seq2seq":
        return "encoder-decoder"
    return "encoder" if family in MEDIA_FAMILIES else family


@dataclass
class Candidate:
    """One model ``deltatune auto`` may train.

    Attributes:
        ref: what the user wrote (``minilm``, a folder, a hub id).
        family: ``"encoder"``, ``"decoder"``, ``"encoder-decoder"``, ``"vision"`` or ``"audio"``.
        parameters: total parameter count; ``non_embedding``: without embedding tables.
        methods: the Δθ methods that apply to its family and fit the memory budget (subset of
            the searched ones).
        notes: one line per decision about this candidate.
    """

    ref: str
    family: str
    parameters: int
    non_embedding: int
    methods: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "model": self.ref, "family": self.family, "parameters": self.parameters,
            "non_embedding_parameters": self.non_embedding, "methods": self.methods, "notes": self.notes,
        }


def model_family(model_config) -> str:
    """``"audio"`` (an ``AutoModelForAudioClassification`` architecture: Whisper, wav2vec 2.0, AST; Whisper
    is an encoder-decoder whose encoder classifies), ``"encoder-decoder"``, ``"encoder"`` (a masked-LM family
    such as BERT), ``"vision"`` (an ``AutoModelForImageClassification`` architecture: ViT, DINOv2) or ``"decoder"``."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES,
        MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    kind = model_config.model_type
    if kind in MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES:
        return "audio"
    if getattr(model_config, "is_encoder_decoder", False):
        return "encoder-decoder"
    if kind in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "encoder"
    return "vision" if kind in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES else "decoder"


def count_parameters(model_config, encoder_only: bool = False) -> tuple[int, int]:
    """(total, non-embedding) parameters of the bare model, built on the meta device (no memory);
    ``encoder_only``: of an encoder-decoder's encoder (Whisper's audio classifier).

    Raises:
        DeltatuneError: the architecture cannot be built from its config.
    """
    from transformers import AutoModel

    try:
        with torch.device("meta"):
            model = AutoModel.from_config(model_config)
    except Exception as e:  # an architecture transformers does not know
        raise DeltatuneError(f"cannot size model {model_config.model_type}: {str(e).splitlines()[0]}") from None
    if encoder_only and getattr(model_config, "is_encoder_decoder", False):
        model = model.get_encoder()
    total = sum(p.numel() for p in model.parameters())
    emb = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters(recurse=False))
    return total, total - emb


@lru_cache(maxsize=1)
def device_flops_per_second() -> float:
    """Peak fp32 matmul rate of this process's device (FLOP/s): the fastest of ten 1024³ products.

    The fastest, not the mean, so that other jobs sharing the machine distort it less.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    a = torch.randn(1024, 1024, device=device)
    b = torch.randn(1024, 1024, device=device)
    (a @ b).sum().item()
    best = float("inf")
    for _ in range(10):
        start = time.perf_counter()
        (a @ b).sum().item()
        best = min(best, time.perf_counter() - start)
    return 2 * 1024**3 / max(best, 1e-9)


def epoch_seconds_estimate(non_embedding: int, train_chars: int, flops: float) -> float:
    """Estimated seconds for one epoch: 6 · N · tokens / FLOP/s, tokens ≈ characters / 4."""
    return 6.0 * non_embedding * (train_chars / CHARS_PER_TOKEN) / flops


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def fits_task(family: str, task: str) -> Optional[str]:
    """Why a model ``family`` cannot do ``task``, or ``None`` when it can."""
    needed = task_family(task)
    if needed in MEDIA_FAMILIES:
        return None if family == needed else f"{task} needs {_a(needed)} model (this is {_a(family)} model)"
    if family in MEDIA_FAMILIES:
        return f"{task} reads text and needs a text model (this is a {family} model)"
    if task in ENCODER_TASKS:
        return None if family == "encoder" else f"{task} needs an encoder model (this is a {family})"
    if family == "encoder":
        return f"{task} generates text and needs a decoder or encoder-decoder model (this is an encoder)"
    if family == "encoder-decoder" and task not in ENCODER_DECODER_TASKS:
        return f"{task} needs a decoder model (this is an encoder-decoder)"
    return None


def choose_candidates(
    refs: list[str],
    task: str,
    methods: list[str],
    max_memory: Optional[int],
    time_budget: Optional[float],
    train_chars: int,
    trust_remote_code: bool = False,
) -> tuple[list[Candidate], list[Candidate]]:
    """Check each model reference against the task and the budgets.

    Args:
        refs: model references in the user's order.
        methods: the Δθ methods to search (names in :data:`deltatune.delta.registry.METHODS`);
            a method is kept for a candidate when it applies to the candidate's model family
            (``families``) and its model states fit ``max_memory``: 16 bytes per parameter
            for a method that ``trains_all_weights``, else 4.
        max_memory: bytes available for model states, or ``None``.
        time_budget: seconds for the whole search, or ``None``.
        train_chars: characters of training text in one epoch (for the time estimate).

    Returns:
        (kept, skipped) candidates, each with its notes. When every candidate that fits the task
        and the memory was skipped for time only, the one with the shortest epoch is kept all
        the same: ``deltatune auto`` shortens its default trial to the budget
        (:mod:`deltatune.auto.timing`) rather than stopping with nothing.
    """
    from deltatune.models import resolve_model
    from deltatune.models.loading import load_config

    kept, skipped = [], []
    too_slow: list[tuple[float, Candidate]] = []
    for ref in refs:
        cfg = load_config(resolve_model(ref), trust_remote_code)
        family = model_family(cfg)
        total, non_emb = count_parameters(cfg, encoder_only=family == "audio")
        c = Candidate(ref, family, total, non_emb)
        label = {"vision": "vision encoder", "audio": "audio encoder"}.get(family, family)
        c.notes.append(f"{ref}: {label}, {total / 1e6:.1f}M parameters ({non_emb / 1e6:.1f}M outside embeddings)")
        why = fits_task(family, task)
        if why:
            c.notes.append(f"{ref}: skipped, {why}")
            skipped.append(c)
            continue
        for m in methods:
            spec = METHODS[m]
            if method_family(family) not in spec.families:
                c.notes.append(f"{ref}: no {m}, it applies only to {' and '.join(spec.families)} models (this is a {family})")
                continue
            per = FULL_BYTES_PER_PARAMETER if spec.trains_all_weights else LORA_BYTES_PER_PARAMETER
            need = per * total
            if max_memory is not None and need > max_memory:
                c.notes.append(
                    f"{ref}: no {m} fine-tuning, its model states need ~{format_bytes(need)} "
                    f"({per} bytes/parameter) > --max-memory {format_bytes(max_memory)}"
                )
            else:
                c.methods.append(m)
        if not c.methods:
            c.notes.append(f"{ref}: skipped, no searched method fits this model and the memory budget")
            skipped.append(c)
            continue
        if time_budget is not None:
            est = epoch_seconds_estimate(non_emb, train_chars, device_flops_per_second())
            if est > time_budget:
                c.notes.append(
                    f"{ref}: skipped, one epoch needs at least ~{format_seconds(est)} (6·N·tokens at this device's "
                    f"matmul speed) > --time-budget {format_seconds(time_budget)}"
                )
                skipped.append(c)
                too_slow.append((est, c))
                continue
            c.notes.append(f"{ref}: one epoch ~{format_seconds(est)} (rough estimate) fits the time budget")
        kept.append(c)
    if not kept and too_slow:
        _, c = min(too_slow, key=lambda x: x[0])
        c.notes.append(f"{c.ref}: kept all the same, the fastest candidate for this task and memory: its trials are shortened to the budget")
        skipped.remove(c)
        kept.append(c)
    return kept, skipped
