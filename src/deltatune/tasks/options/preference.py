"""Options of preference tuning (``dpo``, ``orpo``, ``simpo``, ``kto``) and of reinforcement
fine-tuning with a checkable reward (``grpo``), torch-free.

Every field here is a ``data.*`` key (the YAML stays flat: ``data.beta``), read only by the tasks
whose registry entry names its model (:mod:`deltatune.tasks.registry`). Formulas and defaults:
docs/preference.md.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, Field


class PreferenceOptions(BaseModel):
    """``data.*`` keys shared by dpo, orpo, simpo, kto and grpo."""

    beta: Optional[float] = Field(
        default=None, ge=0,
        description="strength of the preference term; unset: the task's default (dpo/kto 0.1: inverse temperature of "
        "the implicit reward; orpo 0.1: weight lambda of the odds-ratio term; simpo 2.0; grpo 0.04: weight of the KL "
        "penalty to the reference model, 0 = no reference model at all)",
    )
    precompute_reference: bool = Field(
        default=True,
        description="dpo/kto: compute the reference model's log-probabilities once before training and keep them with "
        "the features (no second model in memory); false: Δθ runs use the base with the adapter disabled at every "
        "step, full fine-tuning keeps a frozen copy of the model",
    )


class PairOptions(BaseModel):
    """``data.*`` keys of the paired preference tasks (dpo, orpo, simpo): where the pair is."""

    prompt_column: str = Field(
        default="prompt",
        description="column of the prompt: a string (HH-RLHF 'Human:/Assistant:' dialogues are split into turns) or a "
        "list of {role, content} messages; absent from the data: chosen and rejected are full dialogues whose shared "
        "prefix is the prompt",
    )
    chosen_column: str = Field(default="chosen", description="column of the preferred response (text, or messages ending with it)")
    rejected_column: str = Field(default="rejected", description="column of the dispreferred response (text, or messages ending with it)")


class DPOOptions(BaseModel):
    """``data.*`` keys read by ``dpo`` only."""

    loss_type: Literal["sigmoid", "ipo"] = Field(
        default="sigmoid",
        description="sigmoid: DPO's loss (Rafailov et al. 2023); ipo: IPO's squared loss (Azar et al. 2023), "
        "on length-averaged log-probabilities",
    )
    label_smoothing: float = Field(
        default=0.0, ge=0, lt=0.5,
        description="sigmoid loss only: assumed probability that a pair's preference label is flipped "
        "(conservative DPO, Mitchell 2023)",
    )


class SimPOOptions(BaseModel):
    """``data.*`` keys read by ``simpo`` only."""

    simpo_gamma: float = Field(
        default=0.5, ge=0,
        description="target reward margin gamma of SimPO (Meng et al. 2024), in units of beta (gamma/beta ratio)",
    )


class KTOOptions(BaseModel):
    """``data.*`` keys read by ``kto`` only (rows: prompt, completion, label true = desirable)."""

    desirable_weight: float = Field(default=1.0, gt=0, description="lambda_D of KTO (Ethayarajh et al. 2024): weight of desirable completions")
    undesirable_weight: float = Field(default=1.0, gt=0, description="lambda_U of KTO: weight of undesirable completions")


class GRPOOptions(BaseModel):
    """``data.*`` keys read by ``grpo`` only (Shao et al. 2024, DeepSeekMath)."""

    answer_column: Optional[str] = Field(
        default="answer", description="column of the reference answer read by the exact_match and numeric_match rewards"
    )
    rewards: list[str] = Field(
        default_factory=lambda: ["numeric_match"],
        description="reward functions summed (weighted) per completion: built-ins exact_match, numeric_match, format, "
        "length_penalty, or 'module:function' of your own (imported from data.reward_path: this runs your code)",
    )
    reward_weights: Optional[list[float]] = Field(default=None, description="one weight per reward; unset: 1.0 each")
    reward_path: Optional[str] = Field(
        default=None, description="folder (or .py file) the 'module:function' rewards are imported from; nothing else is imported"
    )
    format_pattern: str = Field(
        default=r"(?s).*\bAnswer:\s*-?[\d,]*\.?\d+\s*$",
        description="the format reward: 1.0 when the whole completion matches this regular expression (re.fullmatch), else 0.0",
    )
    length_penalty_tokens: int = Field(
        default=0, ge=0, description="the length_penalty reward: -(tokens over this many)/max_completion_length; 0: max_completion_length/2"
    )
    num_generations: int = Field(default=8, ge=2, le=256, description="completions sampled per prompt (the group size G)")
    max_completion_length: int = Field(default=64, ge=1, description="tokens generated per completion at most")
    temperature: float = Field(default=1.0, gt=0, description="sampling temperature of the training completions")
    top_p: float = Field(default=1.0, gt=0, le=1, description="nucleus sampling of the training completions")
    epsilon: float = Field(default=0.2, gt=0, lt=1, description="clip range of the policy ratio (PPO's epsilon)")
