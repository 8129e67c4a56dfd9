"""Options of preference tuning (``dpo``, ``orpo``, ``simpo``, ``kto``) and of reinforcement
fine-tuning with a checkable reward (``grpo``), torch-free.

Every field here is a ``data.*`` key (the YAML stays flat: ``data.beta``), read only by the tasks
whose registry entry names its model (:mod:`deltatune.tasks.registry`). Formulas and defaults:
docs/preference.md.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field, field_validator, model_validator

# GRPO's built-in rewards (deltatune.tasks.grpo.rewards), and those that read data.answer_column
BUILTIN_REWARDS = ("exact_match", "numeric_match", "format", "length_penalty")
REWARDS_NEEDING_ANSWER = frozenset({"exact_match", "numeric_match"})


def is_user_reward(spec: str) -> bool:
    """Whether ``spec`` has the form ``'module:function'`` of a user reward (dotted module, identifiers)."""
    module, _, name = spec.partition(":")
    return bool(module) and bool(name) and all(p.isidentifier() for p in module.split(".")) and name.isidentifier()


def reward_spec_problem(spec: str) -> Optional[str]:
    """Why ``spec`` is not a reward name of ``data.rewards`` (neither a built-in nor ``'module:function'``), or None."""
    if spec in BUILTIN_REWARDS or is_user_reward(spec):
        return None
    return f"{spec!r} is neither a built-in ({', '.join(BUILTIN_REWARDS)}) nor 'module:function' (a reward of your own)"


def reward_weights_problem(n_rewards: int, weights: Optional[list[float]]) -> Optional[str]:
    """Why ``data.reward_weights`` does not fit ``n_rewards`` rewards (another length, a non-finite weight), or None."""
    if weights is None:
        return None
    if len(weights) != n_rewards:
        return f"data.reward_weights has {len(weights)} weights for {n_rewards} rewards in data.rewards; give one each, or unset it"
    if not all(math.isfinite(w) for w in weights):
        return f"data.reward_weights must be finite numbers, got {list(weights)}"
    return None


def completion_room_problem(data: Any) -> Optional[str]:
    """Why grpo's ``data.max_completion_length`` leaves no room for a prompt in ``data.max_seq_length``, or None.

    For :class:`deltatune.config.RunConfig` to call for the task grpo only (other tasks keep the
    default ``max_completion_length`` whatever their ``max_seq_length``).
    """
    if data.max_completion_length >= data.max_seq_length:
        return (
            f"data.max_completion_length {data.max_completion_length} must be smaller than data.max_seq_length "
            f"{data.max_seq_length}: it leaves no room for a prompt; raise data.max_seq_length or lower "
            "data.max_completion_length"
        )
    return None


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

    @model_validator(mode="after")
    def _smoothing_is_for_sigmoid(self) -> Any:
        if self.loss_type == "ipo" and self.label_smoothing > 0:
            raise ValueError(
                f"data.label_smoothing applies to loss_type sigmoid; IPO has none: remove data.label_smoothing "
                f"(got {self.label_smoothing}) or set data.loss_type=sigmoid"
            )
        return self


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

    @field_validator("rewards")
    @classmethod
    def _known_rewards(cls, rewards: list[str]) -> list[str]:
        if not rewards:
            raise ValueError("empty; name at least one reward (e.g. [numeric_match])")
        for spec in rewards:
            problem = reward_spec_problem(spec)
            if problem:
                raise ValueError(f"{problem}; fix the name")
        return rewards

    @field_validator("format_pattern")
    @classmethod
    def _pattern_compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"{pattern!r} is not a regular expression: {e}; fix it (Python re syntax)") from None
        return pattern

    @model_validator(mode="after")
    def _rewards_fit(self) -> Any:
        problem = reward_weights_problem(len(self.rewards), self.reward_weights)
        if problem:
            raise ValueError(problem)
        needing = [r for r in self.rewards if r in REWARDS_NEEDING_ANSWER]
        if needing and not self.answer_column:
            raise ValueError(
                f"the rewards {', '.join(needing)} in data.rewards compare completions with a reference answer: set "
                "data.answer_column to its column (or use other rewards)"
            )
        return self
