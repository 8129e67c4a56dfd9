"""The Δθ methods (config ``delta.method``), declared once: name → :class:`DeltaMethod`.

Everything that lists or describes the methods reads this table: config validation
(``DeltaConfig.method``, ``DEFAULT_LEARNING_RATES``), ``deltatune auto`` (which methods it
searches by default, which fit a model family), the CLI's ``--delta`` choices and help, the
saving/loading code (:data:`PEFT_METHODS`) and :func:`deltatune.delta.apply_delta`.

The table imports neither torch nor peft: each method's builder (the function that applies it
to a model) is named by its import path (``"module:function"``) and imported only by
:func:`builder`. Adding a method is one module under :mod:`deltatune.delta.tuners` plus one
entry here (``tests/delta/test_registry.py`` fails when either is missing).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from deltatune.errors import DeltatuneError

# model families, as :func:`deltatune.auto.candidates.model_family` names them
FAMILIES = ("encoder", "decoder", "encoder-decoder")


@dataclass(frozen=True)
class DeltaMethod:
    """One Δθ method.

    Attributes:
        name: the value of ``delta.method``.
        builder: ``"module:function"`` of the function that applies the method:
            ``build(model, cfg: DeltaConfig, task_type: str | None, modules_to_save: list[str] | None)
            -> torch.nn.Module`` (see :func:`deltatune.delta.apply_delta`).
        learning_rate: peak learning rate used when ``train.learning_rate`` is not set.
        description: one line for the CLI help and the docs (no parentheses or semicolons:
            the help lists ``name (description); ...``).
        peft: the method trains a ``peft`` adapter (saved as a PEFT adapter folder).
        trains_all_weights: every weight is trained (full optimizer states: ``auto``'s memory
            estimate uses 16 bytes per parameter instead of 4).
        families: model families the method applies to (``encoder``, ``decoder``,
            ``encoder-decoder``).
        searched_for: task families (``encoder``, ``decoder``, see
            :func:`deltatune.auto.infer.task_family`) for which ``deltatune auto`` searches the
            method when ``--methods`` is not given; empty: only when asked for.
    """

    name: str
    builder: str
    learning_rate: float
    description: str
    peft: bool = False
    trains_all_weights: bool = False
    families: tuple[str, ...] = FAMILIES
    searched_for: tuple[str, ...] = ()


METHODS: dict[str, DeltaMethod] = {
    m.name: m
    for m in (
        DeltaMethod(
            "full", "deltatune.delta.tuners.full:build", 1e-4, "every weight is trained",
            trains_all_weights=True, searched_for=("encoder",),
        ),
        DeltaMethod(
            "freeze", "deltatune.delta.tuners.freeze:build", 1e-4,
            "only the top delta.train_layers layers and the task head are trained",
        ),
        DeltaMethod(
            "lora", "deltatune.delta.tuners.lora:build", 1e-3,
            "LoRA adapter: low-rank updates of the linear layers, Hu et al. 2021",
            peft=True, searched_for=("encoder", "decoder"),
        ),
        DeltaMethod(
            "dora", "deltatune.delta.tuners.dora:build", 1e-3,
            "DoRA adapter: LoRA plus a trained magnitude per output, Liu et al. 2024", peft=True,
        ),
        DeltaMethod(
            "ia3", "deltatune.delta.tuners.ia3:build", 1e-2,
            "IA3 adapter: learned scaling of keys, values and feed-forward, Liu et al. 2022", peft=True,
        ),
        DeltaMethod(
            "prefix", "deltatune.delta.tuners.prefix:build", 1e-2,
            "prefix tuning: trained virtual key/value tokens, decoders only, Li & Liang 2021",
            peft=True, families=("decoder",),
        ),
    )
}

METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
PEFT_METHODS: tuple[str, ...] = tuple(n for n, m in METHODS.items() if m.peft)


def get_method(name: str) -> DeltaMethod:
    """The registry entry of ``name``.

    Raises:
        DeltatuneError: ``name`` is not a registered method (the message lists them).
    """
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise DeltatuneError(f"unknown delta.method {name!r}; choose from {', '.join(METHOD_NAMES)}") from None


def default_learning_rates() -> dict[str, float]:
    """Method name → its default peak learning rate (``train.learning_rate`` when unset)."""
    return {n: m.learning_rate for n, m in METHODS.items()}


def searched_methods(task_family: str) -> list[str]:
    """The methods ``deltatune auto`` searches for a task family (``encoder``/``decoder``) by default."""
    return [n for n, m in METHODS.items() if task_family in m.searched_for]


def builder(name: str) -> Callable[..., Any]:
    """Import and return the builder function of method ``name`` (this imports torch/peft).

    Raises:
        DeltatuneError: ``name`` is not a registered method.
    """
    module, _, func = get_method(name).builder.partition(":")
    return getattr(importlib.import_module(module), func)
