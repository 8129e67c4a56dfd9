"""The GRPO objective as pure functions of tensors (Shao et al. 2024, "DeepSeekMath", arXiv:2402.03300, eq. 3).

One GRPO step samples a group of ``G`` completions ``o_1..o_G`` per prompt ``q``, scores them
(rewards ``r_i``) and maximizes

    J = 1/G sum_i 1/|o_i| sum_t [ min(rho_it A_i, clip(rho_it, 1-eps, 1+eps) A_i) - beta KL_it ]

with the policy ratio ``rho_it = pi(o_it | q, o_i<t) / pi_old(o_it | q, o_i<t)``, the group-normalized
advantage ``A_i = (r_i - mean(r)) / (std(r) + 1e-4)`` (outcome supervision, the paper's section 4.1.2;
the 1e-4 and the unbiased std are TRL's ``GRPOTrainer``) and the KL penalty to the reference model
estimated per token with Schulman's k3 estimator (http://joschu.net/blog/kl-approx.html, 2020):

    KL_it = pi_ref/pi - log(pi_ref/pi) - 1 = exp(ref - logp) - (ref - logp) - 1   (>= 0, unbiased).

With one policy update per batch of samples (TRL's default ``num_iterations=1``) ``pi_old`` is the
policy itself, detached: the ratio is exactly 1 in value (nothing is clipped) and its gradient is
the policy gradient ``A_i grad log pi``.
"""

from __future__ import annotations

from typing import Optional

import torch

# added to the group's standard deviation (TRL's GRPOTrainer), so a group whose rewards are all
# equal gets advantage 0 rather than 0/0
STD_EPS = 1e-4


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Group-normalized advantages ``(r - group mean) / (group std + 1e-4)``.

    Args:
        rewards: (N,) float rewards, ``N = prompts x group_size``, the completions of one prompt
            next to each other (completion ``i`` belongs to prompt ``i // group_size``).
        group_size: completions per prompt (``G`` >= 2).

    Returns:
        (N,) float advantages (same dtype as ``rewards``). The std is the unbiased sample standard
        deviation of the group (Bessel's correction, as ``torch.std`` and TRL).

    Raises:
        ValueError: ``N`` is not a multiple of ``group_size`` or ``group_size`` < 2.
    """
    if group_size < 2 or rewards.shape[0] % group_size:
        raise ValueError(f"{rewards.shape[0]} rewards do not make groups of {group_size} (>= 2)")
    groups = rewards.view(-1, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True)
    return ((groups - mean) / (std + STD_EPS)).reshape(-1)


def group_stats(rewards: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group: the unbiased std of its rewards and whether all its rewards are equal.

    Args:
        rewards: (N,) float, grouped as in :func:`group_advantages`.

    Returns:
        ``(std, all_equal)``: (N / group_size,) float and bool.
    """
    groups = rewards.view(-1, group_size)
    return groups.std(dim=1), (groups == groups[:, :1]).all(dim=1)


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate ``exp(ref - logp) - (ref - logp) - 1`` (Schulman 2020's k3).

    Args:
        logps, ref_logps: same shape, log-probabilities (nats) of the sampled tokens under the
            policy and the reference model.

    Returns:
        Same shape, >= 0; 0 where the two agree.
    """
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1


def grpo_token_loss(
    logps: torch.Tensor,
    ref_logps: Optional[torch.Tensor],
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon: float,
    beta: float,
    old_logps: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The negated GRPO objective per completion: the per-token loss averaged over its tokens.

    Per token: ``-(min(rho A, clip(rho, 1-eps, 1+eps) A) - beta KL)``, ``rho = exp(logp - old_logp)``,
    KL by :func:`k3_kl`; per completion the mean over its tokens (``mask``), the paper's
    ``1/|o_i| sum_t`` (see the module doc). Summing the result over completions and dividing by
    their number gives the paper's ``-J``.

    Args:
        logps: (N, L) float policy log-probabilities (nats) of the completion tokens, with gradients.
        ref_logps: (N, L) reference log-probabilities (no gradient), or ``None`` (``beta`` must be 0:
            no KL term).
        advantages: (N,) float, one per completion (:func:`group_advantages`).
        mask: (N, L) bool/0-1, the completion's tokens (through its first EOS); padding 0.
        epsilon: clip range of the ratio (PPO's epsilon, 0 < eps < 1).
        beta: weight of the KL penalty (>= 0).
        old_logps: (N, L) log-probabilities of the sampling policy; ``None``: ``logps.detach()``
            (one update per sample batch, the ratio is 1).

    Returns:
        ``(per_sequence_loss, stats)``: (N,) float losses; ``stats`` holds detached (N,) tensors
        ``kl`` (mean KL per token of each completion; zeros without a reference) and
        ``clip_ratio`` (share of each completion's tokens whose objective is the clipped term,
        i.e. ``clip(rho) A < rho A``).

    Raises:
        ValueError: ``beta`` > 0 without ``ref_logps``.
    """
    if beta > 0 and ref_logps is None:
        raise ValueError("a KL penalty (beta > 0) needs the reference log-probabilities")
    mask = mask.to(logps.dtype)
    old = logps.detach() if old_logps is None else old_logps
    ratio = torch.exp(logps - old)
    adv = advantages.to(logps.dtype).unsqueeze(1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * adv
    objective = torch.minimum(unclipped, clipped)
    kl = k3_kl(logps, ref_logps) if ref_logps is not None else torch.zeros_like(logps)
    if beta > 0:
        objective = objective - beta * kl
    tokens = mask.sum(-1).clamp(min=1)
    per_sequence = (-objective * mask).sum(-1) / tokens
    stats = {
        "kl": ((kl * mask).sum(-1) / tokens).detach(),
        "clip_ratio": (((clipped < unclipped).to(logps.dtype) * mask).sum(-1) / tokens).detach(),
    }
    return per_sequence, stats
