"""Options of training-data augmentation, read by ``text-classification`` and ``text-regression``
(torch-free; :mod:`deltatune.data.augment`, docs/augmentation.md).

One model shared by the two tasks (both registry entries name it, as ``ClassificationOptions``
is shared), not ``config.DataFiles``: the operations rewrite a row's text and copy its label,
which is only right for tasks whose label belongs to the whole text. Token-level tasks would
need the labels realigned, generative tasks the target rewritten too; declaring the keys here
makes ``data.augmentation: eda`` on any other task a config error naming the two tasks, before
torch is imported.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, Field

# EDA's four operations (Wei and Zou 2019), in the paper's order
EDA_OPERATIONS = ("synonym_replacement", "random_insertion", "random_swap", "random_deletion")

Operation = Literal["synonym_replacement", "random_insertion", "random_swap", "random_deletion"]


class AugmentationOptions(BaseModel):
    """``data.*`` keys of training-data augmentation (``text-classification``, ``text-regression``)."""

    augmentation: Literal["none", "eda"] = Field(
        default="none",
        description="augment the training rows (after the validation split is carved out): none, or eda (Easy Data "
        "Augmentation, Wei and Zou 2019: synonym replacement, random insertion, random swap, random deletion); the "
        "rows trained on are written to <run>/augmented_train.jsonl",
    )
    augmentation_copies: int = Field(
        default=4, ge=1, le=64, description="augmented rows per training row (EDA's n_aug); labels are copied"
    )
    augmentation_alpha: float = Field(
        default=0.1, gt=0.0, le=0.5,
        description="EDA's alpha: share of a text's words changed (replaced, inserted, swapped; deletion probability)",
    )
    augmentation_operations: list[Operation] = Field(
        default_factory=lambda: list(EDA_OPERATIONS), min_length=1,
        description="the EDA operations used, in turn per copy; synonym_replacement and random_insertion need the "
        "WordNet corpus (nltk), random_swap and random_deletion need nothing",
    )
    augmentation_seed: Optional[int] = Field(
        default=None, ge=0, description="seed of the augmentation (unset: the run's seed)"
    )



def unused_augmentation_keys(data: BaseModel, resolved: bool = False) -> list[str]:
    """The ``data.augmentation_*`` keys given (pydantic's ``model_fields_set``) while ``data.augmentation``
    is ``none``, so that they would change nothing; empty when augmentation is on.

    Args:
        data: the ``data`` section.
        resolved: the config is a saved one (``<run>/config.yaml``, every key written): only values other
            than the default count. A ``data`` section holding every key of :class:`AugmentationOptions`
            gives none, so that runs saved before this check still load.
    """
    given = data.model_fields_set
    if getattr(data, "augmentation", "none") != "none" or set(AugmentationOptions.model_fields) <= given:
        return []
    fields = AugmentationOptions.model_fields
    return [
        k for k in fields
        if k != "augmentation" and k in given
        and (not resolved or getattr(data, k) != fields[k].get_default(call_default_factory=True))
    ]
