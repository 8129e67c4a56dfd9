"""The GRPO objective (deltatune.tasks.grpo.loss) against values and gradients computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from deltatune.tasks.grpo.loss import STD_EPS, group_advantages, group_stats, grpo_token_loss, k3_kl


def test_group_advantages_normalize_within_each_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0])
    adv = group_advantages(rewards, 3)
    # group 1: mean 1/3, unbiased std sqrt(((2/3)^2 + 2 (1/3)^2) / 2) = sqrt(1/3)
    std = math.sqrt(1 / 3)
    expected = [(2 / 3) / (std + STD_EPS), (-1 / 3) / (std + STD_EPS), (-1 / 3) / (std + STD_EPS)]
    assert adv[:3].tolist() == pytest.approx(expected, rel=1e-6)
    # group 2: mean 4/3, std sqrt(((−4/3)^2 + 2 (2/3)^2) / 2) = sqrt(4/3)
    std2 = math.sqrt(4 / 3)
    assert adv[3:].tolist() == pytest.approx([(-4 / 3) / (std2 + STD_EPS), (2 / 3) / (std2 + STD_EPS), (2 / 3) / (std2 + STD_EPS)], rel=1e-6)


def test_a_group_with_equal_rewards_has_zero_advantage():
    adv = group_advantages(torch.tensor([0.5, 0.5, 1.0, 0.0]), 2)
    assert adv[:2].tolist() == [0.0, 0.0]
    assert adv[2:].tolist() == pytest.approx([0.5 / (math.sqrt(0.5) + STD_EPS), -0.5 / (math.sqrt(0.5) + STD_EPS)])
    std, equal = group_stats(torch.tensor([0.5, 0.5, 1.0, 0.0]), 2)
    assert equal.tolist() == [True, False] and std.tolist() == pytest.approx([0.0, math.sqrt(0.5)])


def test_group_advantages_refuse_a_ragged_group():
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.zeros(4), 3)


def test_k3_is_zero_when_equal_and_matches_its_formula():
    lp = torch.tensor([-1.0, -2.0])
    ref = torch.tensor([-1.0, -1.5])
    kl = k3_kl(lp, ref)
    assert kl[0].item() == 0.0
    assert kl[1].item() == pytest.approx(math.exp(0.5) - 0.5 - 1)


def test_loss_value_and_gradient_with_ratio_one():
    """num_iterations 1: the ratio is 1, the loss per token is -A + beta*KL, and its gradient
    -A + beta*(1 - exp(ref - logp)) per token, divided by the completion's token count."""
    logps = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.25, 0.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -2.0, -1.0], [-0.5, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    adv = torch.tensor([2.0, -1.0])
    beta = 0.1
    loss, stats = grpo_token_loss(logps, ref, adv, mask, epsilon=0.2, beta=beta)

    def kl(lp, r):
        return math.exp(r - lp) - (r - lp) - 1

    kl0 = [kl(-1.0, -1.5), kl(-2.0, -2.0)]
    kl1 = [kl(-0.5, -0.5), kl(-0.25, -1.0), kl(0.0, 0.0)]
    expected0 = sum(-2.0 + beta * k for k in kl0) / 2
    expected1 = sum(1.0 + beta * k for k in kl1) / 3
    assert loss.tolist() == pytest.approx([expected0, expected1], rel=1e-6)
    assert stats["kl"].tolist() == pytest.approx([sum(kl0) / 2, sum(kl1) / 3], rel=1e-6)
    assert stats["clip_ratio"].tolist() == [0.0, 0.0]

    loss.sum().backward()
    # d/dlogp of -A*exp(lp - sg(lp)) = -A; of beta*(exp(r - lp) - (r - lp) - 1) = beta*(1 - exp(r - lp))
    g0 = [(-2.0 + beta * (1 - math.exp(r - lp))) / 2 for lp, r in ((-1.0, -1.5), (-2.0, -2.0))] + [0.0]
    g1 = [(1.0 + beta * (1 - math.exp(r - lp))) / 3 for lp, r in ((-0.5, -0.5), (-0.25, -1.0), (0.0, 0.0))]
    assert logps.grad.tolist()[0] == pytest.approx(g0, rel=1e-6)
    assert logps.grad.tolist()[1] == pytest.approx(g1, rel=1e-6)


def test_without_reference_there_is_no_kl_term():
    logps = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, stats = grpo_token_loss(logps, None, torch.tensor([0.5]), torch.ones(1, 2, dtype=torch.bool), 0.2, 0.0)
    assert loss.item() == pytest.approx(-0.5)
    assert stats["kl"].tolist() == [0.0]
    loss.backward()
    assert logps.grad.tolist() == [[-0.25, -0.25]]
    with pytest.raises(ValueError, match="reference"):
        grpo_token_loss(logps, None, torch.tensor([0.5]), torch.ones(1, 2, dtype=torch.bool), 0.2, 0.1)


def test_the_ratio_is_clipped_against_an_older_policy():
    """With old log-probabilities (a second update on the same samples), a ratio beyond 1+eps with
    a positive advantage takes the clipped (constant) term: no gradient; below 1-eps with a
    positive advantage the unclipped term is the minimum and keeps its gradient."""
    logps = torch.tensor([[math.log(1.5), math.log(0.5)]], requires_grad=True)
    old = torch.zeros(1, 2)
    adv = torch.tensor([1.0])
    loss, stats = grpo_token_loss(logps, None, adv, torch.ones(1, 2, dtype=torch.bool), 0.2, 0.0, old_logps=old)
    # token 1: min(1.5, 1.2) = 1.2 (clipped); token 2: min(0.5, 0.8) = 0.5
    assert loss.item() == pytest.approx(-(1.2 + 0.5) / 2)
    assert stats["clip_ratio"].tolist() == [0.5]
    loss.backward()
    # token 2: d(-ratio/2)/dlogp = -ratio/2 = -0.25
    assert logps.grad.tolist()[0] == pytest.approx([0.0, -0.25])
    # negative advantage: ratio 1.5 > 1+eps gives min(-1.5, -1.2) = -1.5, unclipped, with gradient
    loss, stats = grpo_token_loss(logps, None, -adv, torch.ones(1, 2, dtype=torch.bool), 0.2, 0.0, old_logps=old)
    assert loss.item() == pytest.approx((1.5 + 0.8) / 2)
    assert stats["clip_ratio"].tolist() == [0.5]


def test_padding_is_ignored():
    logps = torch.tensor([[-1.0, 123.0]])
    loss, _ = grpo_token_loss(logps, torch.tensor([[-1.0, -50.0]]), torch.tensor([3.0]), torch.tensor([[1, 0]]), 0.2, 0.5)
    assert loss.item() == pytest.approx(-3.0)
