"""The loss formulas of preference tuning: DPO, IPO, SimPO, ORPO and KTO, on sequence log-probabilities.

Pure torch functions, no model. Inputs are per-sequence log-probabilities in nats, float tensors
of shape (B,) (float32 in training, float64 works too: the tests run ``torch.autograd.gradcheck``
on every loss); outputs are in the input dtype. Losses are returned **per pair / per example,
not reduced**: the training loop sums them and divides by the number of pairs of the whole
optimizer step (docs/extending.md), so gradient accumulation gives the full batch's gradient.
Rewards are returned detached (logging and metrics only).

The formulas follow the papers and Hugging Face TRL's trainers (``trl/trainer/dpo_trainer.py``,
``trl/experimental/cpo/cpo_trainer.py`` for SimPO, ``trl/experimental/orpo/orpo_trainer.py``,
``trl/trainer/kto_trainer.py``); each function's docstring says where it differs from TRL and why.

Errors: a hyperparameter outside its range raises :class:`deltatune.errors.DeltatuneError` naming
the ``data.*`` key; tensors of mismatched or non-1-D shape raise ``ValueError`` (a bug in the
caller, not the user's input).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from deltatune.errors import DeltatuneError

__all__ = ["dpo_loss", "ipo_loss", "simpo_loss", "orpo_loss", "kto_loss", "kto_kl", "sequence_logps", "log1mexp"]

_LOG_HALF = -math.log(2.0)
# largest log-probability the odds of ORPO are computed at: log(1 - exp(x)) -> -inf as x -> 0
# (a response the model is certain of has infinite odds); x is clamped to at most this value,
# which changes nothing unless the mean per-token probability is above 1 - 1e-10
_MAX_LOGP = -1e-10


def _check_pairs(name: str, *tensors: Tensor) -> None:
    """Raise ``ValueError`` unless every tensor is 1-D with the shape of the first."""
    shape = tensors[0].shape
    for t in tensors:
        if t.dim() != 1 or t.shape != shape:
            raise ValueError(f"{name}: expected 1-D log-probability tensors of one shape (B,), got {[tuple(x.shape) for x in tensors]}")


def _check_beta(task: str, beta: float) -> None:
    if not beta > 0:
        raise DeltatuneError(f"data.beta = {beta}: {task} needs beta > 0; set data.beta to a positive number (e.g. 0.1)")


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """DPO's sigmoid loss per pair, with conservative label smoothing.

    Rafailov et al. 2023, "Direct Preference Optimization" (arXiv:2305.18290), Eq. 7; label
    smoothing ε is conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences"):
    the label is assumed flipped with probability ε.

        h = (pc - rc) - (pr - rr)
        loss = -(1 - ε) log σ(β h) - ε log σ(-β h)

    with pc/pr the policy's and rc/rr the reference model's summed log-probabilities of the
    chosen/rejected response. Rewards: β (pc - rc) and β (pr - rr), detached.

    TRL: identical to ``DPOTrainer`` ``loss_type="sigmoid"`` up to TRL 0.28; TRL's DPO refactor
    (2026, PR #3906) dropped label smoothing from ``sigmoid`` (kept in ``robust``/``aot``), so with
    ε = 0 this equals current TRL, and ε > 0 is the older TRL (and the cDPO note's) loss.

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: (B,)
            float sequence log-probabilities (nats, summed over response tokens).
        beta: inverse temperature of the implicit reward, > 0.
        label_smoothing: ε in [0, 0.5).

    Returns:
        (losses, chosen_rewards, rejected_rewards), each (B,) in the input dtype.

    Raises:
        DeltatuneError: beta <= 0 or label_smoothing outside [0, 0.5).
        ValueError: the four tensors are not 1-D of one shape.
    """
    _check_pairs("dpo_loss", policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    _check_beta("dpo", beta)
    if not 0.0 <= label_smoothing < 0.5:
        raise DeltatuneError(f"data.label_smoothing = {label_smoothing}: must be in [0, 0.5) (probability that a preference label is flipped)")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    logits = chosen_logratios - rejected_logratios
    losses = -F.logsigmoid(beta * logits)
    if label_smoothing > 0:
        losses = (1 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-beta * logits)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """IPO's squared loss per pair.

    Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences" (arXiv:2310.12036), Eq. 17, with β the paper's regularization τ:

        h = (pc - rc) - (pr - rr)
        loss = (h - 1 / (2 β))²

    minimal (0) at h = 1/(2β). **The caller passes length-averaged log-probabilities** (mean
    per response token, of the policy and of the reference alike), as TRL does: summed
    log-probabilities make the squared loss grow with the response length, and TRL's authors
    confirmed with the IPO authors that the paper's results use the per-token mean. Rewards:
    β (pc - rc) and β (pr - rr) on the log-probabilities as passed (the averages), detached.

    TRL: ``DPOTrainer`` ``loss_type="ipo"``. Current TRL divides the summed log-ratios by the
    response token counts (the same thing) but reports its rewards on the summed log-ratios;
    up to 0.28 it averaged the log-probabilities themselves and reported rewards on the averages,
    as here. Callers that want summed-log-ratio rewards compute them from the sums.

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: (B,)
            float per-token mean log-probabilities (nats per token).
        beta: τ, > 0.

    Returns:
        (losses, chosen_rewards, rejected_rewards), each (B,) in the input dtype.

    Raises:
        DeltatuneError: beta <= 0.
        ValueError: the four tensors are not 1-D of one shape.
    """
    _check_pairs("ipo_loss", policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    _check_beta("dpo with loss_type ipo", beta)
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    logits = chosen_logratios - rejected_logratios
    losses = (logits - 1 / (2 * beta)) ** 2
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def simpo_loss(
    policy_chosen_avg_logps: Tensor,
    policy_rejected_avg_logps: Tensor,
    beta: float,
    gamma_beta_ratio: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """SimPO's reference-free loss per pair.

    Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward"
    (arXiv:2405.14734), Eq. 6:

        loss = -log σ(β (c - r) - γ),   γ = gamma_beta_ratio · β

    with c/r the policy's per-token mean log-probabilities of the chosen/rejected response (the
    length-normalized implicit reward) and γ the target reward margin. Rewards: β c and β r,
    detached.

    TRL: ``CPOTrainer`` ``loss_type="simpo"``, ``label_smoothing=0``, ``cpo_alpha=0`` (the same
    formula). TRL's ``simpo_gamma`` is γ itself (its code subtracts ``simpo_gamma / beta`` from
    the log-ratio); here the margin is given as γ/β, as the SimPO authors' own trainer does
    (``gamma_beta_ratio``) and deltatune's ``data.simpo_gamma`` documents, so that changing β
    keeps the margin in units of β. TRL's ``simpo_gamma=g`` is ``gamma_beta_ratio=g/beta`` here.

    Args:
        policy_chosen_avg_logps, policy_rejected_avg_logps: (B,) float per-token mean
            log-probabilities (nats per token).
        beta: reward scale, > 0.
        gamma_beta_ratio: γ/β, >= 0.

    Returns:
        (losses, chosen_rewards, rejected_rewards), each (B,) in the input dtype.

    Raises:
        DeltatuneError: beta <= 0 or gamma_beta_ratio < 0.
        ValueError: the tensors are not 1-D of one shape.
    """
    _check_pairs("simpo_loss", policy_chosen_avg_logps, policy_rejected_avg_logps)
    _check_beta("simpo", beta)
    if not gamma_beta_ratio >= 0:
        raise DeltatuneError(f"data.simpo_gamma = {gamma_beta_ratio}: the SimPO margin (in units of beta) must be >= 0")
    logits = beta * (policy_chosen_avg_logps - policy_rejected_avg_logps) - gamma_beta_ratio * beta
    losses = -F.logsigmoid(logits)
    return losses, beta * policy_chosen_avg_logps.detach(), beta * policy_rejected_avg_logps.detach()


def log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for x < 0, accurate and with finite gradients everywhere.

    Mächler 2012, "Accurately computing log(1 - exp(-|a|))": ``log(-expm1(x))`` for
    x > -log 2, ``log1p(-exp(x))`` below. Each branch gets an input clamped to its own range so
    the branch ``torch.where`` discards never produces inf/NaN gradients; x is first clamped to
    at most -1e-10 (log(1 - exp(0)) = -inf), so x >= -1e-10 gives log(1e-10) ≈ -23.0 and
    zero gradient.

    Args:
        x: float tensor of log-probabilities (<= 0), any shape.

    Returns:
        Tensor of x's shape and dtype.
    """
    x = x.clamp(max=_MAX_LOGP)
    near_zero = x > _LOG_HALF
    small = torch.log(-torch.expm1(x.clamp(min=_LOG_HALF)))
    large = torch.log1p(-torch.exp(x.clamp(max=_LOG_HALF)))
    return torch.where(near_zero, small, large)


def orpo_loss(
    policy_chosen_avg_logps: Tensor,
    policy_rejected_avg_logps: Tensor,
    beta: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """ORPO's odds-ratio term per pair, weighted by β (the paper's λ); the SFT part is the caller's.

    Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model"
    (arXiv:2403.07691), Eqs. 4-7, with P the per-token mean probability (exp of the mean
    log-probability):

        log odds(y) = log P - log(1 - P)          (computed as logp - log1mexp(logp))
        ratio_term  = -log σ(log odds(y_w) - log odds(y_l))
        losses      = β · ratio_term

    The full ORPO loss is ``NLL(chosen) + losses`` (L_SFT + λ L_OR); the caller adds the NLL.
    Rewards: β c and β r (per-token mean log-probabilities), detached. Finite (values and
    gradients) for log-probabilities up to and including 0 (see :func:`log1mexp`).

    TRL: ``ORPOTrainer.odds_ratio_loss`` (which returns ``β · log σ(...)``, and its trainer
    subtracts the mean: the same loss with the opposite sign convention here, losses >= 0).
    TRL's ``log1mexp`` evaluates both branches of ``torch.where`` on the raw input, which gives
    NaN gradients when a mean log-probability rounds to 0 in float32 (e.g. -1e-8); the per-branch
    clamps here avoid that.

    Args:
        policy_chosen_avg_logps, policy_rejected_avg_logps: (B,) float per-token mean
            log-probabilities (nats per token, <= 0).
        beta: λ, >= 0 (0 leaves plain SFT).

    Returns:
        (losses, chosen_rewards, rejected_rewards), each (B,) in the input dtype.

    Raises:
        DeltatuneError: beta < 0.
        ValueError: the tensors are not 1-D of one shape.
    """
    _check_pairs("orpo_loss", policy_chosen_avg_logps, policy_rejected_avg_logps)
    if not beta >= 0:
        raise DeltatuneError(f"data.beta = {beta}: orpo needs beta >= 0 (the weight of the odds-ratio term)")
    log_odds_chosen = policy_chosen_avg_logps - log1mexp(policy_chosen_avg_logps)
    log_odds_rejected = policy_rejected_avg_logps - log1mexp(policy_rejected_avg_logps)
    losses = -beta * F.logsigmoid(log_odds_chosen - log_odds_rejected)
    return losses, beta * policy_chosen_avg_logps.detach(), beta * policy_rejected_avg_logps.detach()


def kto_kl(policy_kl_logps: Tensor, ref_kl_logps: Tensor) -> Tensor:
    """KTO's reference point z: the batch estimate of KL(π || π_ref), clamped at 0, detached.

    Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization"
    (arXiv:2402.01306), Sec. 4.1: z = max(0, mean over mismatched pairs (x_i, y_j), j != i, of
    log π(y_j|x_i) - log π_ref(y_j|x_i)). No gradient flows through z (as in the paper and TRL).

    TRL: ``KTOTrainer`` (``(KL_logps - ref_KL_logps).mean().detach()``, gathered over processes,
    ``.clamp(min=0)``). Here the mean is over the tensors given (one process's micro-batch); an
    empty batch gives 0.

    Args:
        policy_kl_logps, ref_kl_logps: (N,) float summed log-probabilities of the mismatched
            completions under the policy and the reference model.

    Returns:
        0-dim tensor (dtype of ``policy_kl_logps``), >= 0, detached.

    Raises:
        ValueError: the tensors are not 1-D of one shape.
    """
    _check_pairs("kto_kl", policy_kl_logps, ref_kl_logps)
    if policy_kl_logps.numel() == 0:
        return policy_kl_logps.new_zeros(())
    return (policy_kl_logps.detach() - ref_kl_logps.detach()).mean().clamp(min=0)


def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    desirable: Tensor,
    kl: Tensor,
    beta: float,
    desirable_weight: float,
    undesirable_weight: float,
) -> tuple[Tensor, Tensor]:
    """KTO's loss per example (unpaired: each completion is labeled desirable or undesirable).

    Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization"
    (arXiv:2402.01306), Eq. 8, written as the paper's λ_y - v(x, y):

        r = log π(y|x) - log π_ref(y|x),   z = max(kl, 0) (detached)
        desirable:   λ_D (1 - σ(β (r - z)))
        undesirable: λ_U (1 - σ(β (z - r)))

    Rewards: β r, detached.

    TRL: ``KTOTrainer`` ``loss_type="kto"`` (the same per-example values; TRL concatenates the
    desirable losses before the undesirable ones, here they stay in batch order).

    Args:
        policy_logps, ref_logps: (B,) float summed log-probabilities of the completions.
        desirable: (B,) bool, True where the completion is desirable.
        kl: 0-dim tensor, the reference point from :func:`kto_kl` (clamped and detached again here).
        beta: > 0.
        desirable_weight, undesirable_weight: λ_D, λ_U, > 0.

    Returns:
        (losses, rewards), each (B,) in the input dtype.

    Raises:
        DeltatuneError: beta or a weight <= 0.
        ValueError: shapes differ, ``desirable`` is not bool, or ``kl`` is not a scalar.
    """
    _check_pairs("kto_loss", policy_logps, ref_logps)
    _check_beta("kto", beta)
    if not (desirable_weight > 0 and undesirable_weight > 0):
        raise DeltatuneError(
            f"data.desirable_weight = {desirable_weight}, data.undesirable_weight = {undesirable_weight}: both must be > 0"
        )
    if desirable.dtype != torch.bool or desirable.shape != policy_logps.shape:
        raise ValueError(f"kto_loss: desirable must be a bool tensor of shape {tuple(policy_logps.shape)}, got {desirable.dtype} {tuple(desirable.shape)}")
    if kl.numel() != 1:
        raise ValueError(f"kto_loss: kl must be a scalar tensor, got shape {tuple(kl.shape)}")
    z = kl.detach().reshape(()).clamp(min=0).to(policy_logps.dtype)
    logratios = policy_logps - ref_logps
    chosen_losses = desirable_weight * (1 - torch.sigmoid(beta * (logratios - z)))
    rejected_losses = undesirable_weight * (1 - torch.sigmoid(beta * (z - logratios)))
    losses = torch.where(desirable, chosen_losses, rejected_losses)
    return losses, beta * logratios.detach()


def sequence_logps(token_logps: Tensor, mask: Tensor, average: bool) -> Tensor:
    """Sequence log-probabilities from per-token log-probabilities and a mask of response tokens.

    Args:
        token_logps: (B, T) float per-token log-probabilities (nats). Values at masked-out
            positions are ignored, even inf or NaN (selected away, not multiplied by 0).
        mask: (B, T) bool (or 0/1 integer) mask, True at the tokens that count.
        average: False: the sum over the mask (B,); True: the mean over the mask (B,), 0 for a
            row with no True position (no NaN).

    Returns:
        (B,) tensor in ``token_logps``'s dtype.

    Raises:
        ValueError: the shapes differ or are not 2-D.
    """
    if token_logps.dim() != 2 or token_logps.shape != mask.shape:
        raise ValueError(f"sequence_logps: expected (B, T) log-probabilities and mask, got {tuple(token_logps.shape)} and {tuple(mask.shape)}")
    mask = mask.bool()
    total = torch.where(mask, token_logps, torch.zeros_like(token_logps)).sum(dim=-1)
    if not average:
        return total
    return total / mask.sum(dim=-1).clamp(min=1).to(token_logps.dtype)
