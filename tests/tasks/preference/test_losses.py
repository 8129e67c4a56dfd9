"""The preference losses against hand-computed values (math, from the papers' formulas), their
analytic gradients, ``torch.autograd.gradcheck``, and the edge cases (ORPO near log p = 0, KTO's
KL clamp, empty masks)."""

import math

import pytest
import torch

from deltatune.errors import DeltatuneError
from deltatune.tasks.preference.losses import (
    dpo_loss,
    ipo_loss,
    kto_kl,
    kto_loss,
    log1mexp,
    orpo_loss,
    sequence_logps,
    simpo_loss,
)


def t(*values, dtype=torch.float32, grad=False):
    return torch.tensor(values, dtype=dtype, requires_grad=grad)


def logsig(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sig(x):
    return 1 / (1 + math.exp(-x))


# pairs: (policy chosen, policy rejected, ref chosen, ref rejected)
PAIRS = [(-12.0, -15.0, -13.0, -14.0), (-20.0, -9.0, -18.0, -10.5), (-3.0, -3.0, -3.0, -3.0)]


# ---- DPO -------------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_dpo_matches_hand_computed_values_and_rewards(eps):
    beta = 0.2
    pc, pr, rc, rr = (t(*col) for col in zip(*PAIRS))
    losses, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, rc, rr, beta, eps)
    for i, (a, b, c, d) in enumerate(PAIRS):
        h = (a - c) - (b - d)
        expected = -(1 - eps) * logsig(beta * h) - eps * logsig(-beta * h)
        assert losses[i].item() == pytest.approx(expected, rel=1e-6)
        assert chosen_rewards[i].item() == pytest.approx(beta * (a - c), rel=1e-6)
        assert rejected_rewards[i].item() == pytest.approx(beta * (b - d), rel=1e-6)
    assert losses.shape == (3,) and losses.dtype == torch.float32
    assert losses[2].item() == pytest.approx(math.log(2), rel=1e-6)  # no preference yet: log 2 whatever eps


def test_dpo_label_smoothing_zero_is_plain_dpo_and_rewards_are_detached():
    pc, pr, rc, rr = (t(*col, grad=True) for col in zip(*PAIRS))
    smoothed, cr, rj = dpo_loss(pc, pr, rc, rr, 0.1, 0.0)
    plain = -torch.nn.functional.logsigmoid(0.1 * ((pc - rc) - (pr - rr)))
    assert torch.equal(smoothed, plain)
    assert not cr.requires_grad and not rj.requires_grad


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_dpo_gradient_matches_the_analytic_derivative(eps):
    beta = 0.5
    pc, pr = t(-12.0, -20.0, grad=True), t(-15.0, -9.0, grad=True)
    rc, rr = t(-13.0, -18.0), t(-14.0, -10.5)
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta, eps)
    losses.sum().backward()
    for i in range(2):
        h = (pc[i] - rc[i] - pr[i] + rr[i]).item()
        d_pc = -beta * (1 - eps) * sig(-beta * h) + beta * eps * sig(beta * h)
        assert pc.grad[i].item() == pytest.approx(d_pc, rel=1e-5)
        assert pr.grad[i].item() == pytest.approx(-d_pc, rel=1e-5)


# ---- IPO -------------------------------------------------------------------------------------
def test_ipo_matches_hand_computed_values():
    beta = 0.1
    # per-token mean log-probabilities
    pairs = [(-1.2, -1.5, -1.3, -1.4), (-2.0, -0.9, -1.8, -1.05)]
    pc, pr, rc, rr = (t(*col) for col in zip(*pairs))
    losses, chosen_rewards, rejected_rewards = ipo_loss(pc, pr, rc, rr, beta)
    for i, (a, b, c, d) in enumerate(pairs):
        h = (a - c) - (b - d)
        assert losses[i].item() == pytest.approx((h - 1 / (2 * beta)) ** 2, rel=1e-5)
        assert chosen_rewards[i].item() == pytest.approx(beta * (a - c), rel=1e-5, abs=1e-7)
        assert rejected_rewards[i].item() == pytest.approx(beta * (b - d), rel=1e-5, abs=1e-7)


def test_ipo_minimum_is_at_logits_one_over_two_beta():
    beta = 0.25  # target margin 2.0
    rc, rr = t(-1.0, dtype=torch.float64), t(-1.0, dtype=torch.float64)
    values = {}
    for h in (1.5, 2.0, 2.5):
        pc = torch.tensor([-1.0 + h], dtype=torch.float64, requires_grad=True)
        losses, _, _ = ipo_loss(pc, t(-1.0, dtype=torch.float64), rc, rr, beta)
        losses.sum().backward()
        values[h] = (losses.item(), pc.grad.item())
        assert pc.grad.item() == pytest.approx(2 * (h - 1 / (2 * beta)), abs=1e-12)  # d/dpc (h - 1/2β)² = 2(h - 1/2β)
    assert values[2.0] == (0.0, 0.0)
    assert values[1.5][0] > 0 and values[2.5][0] > 0
    assert values[1.5][1] < 0 < values[2.5][1]


# ---- SimPO -----------------------------------------------------------------------------------
def test_simpo_matches_hand_computed_values_and_margin():
    beta, ratio = 2.0, 0.5  # gamma = 1.0
    c, r = [-0.8, -1.5, -1.0], [-1.2, -0.7, -1.5]
    losses, chosen_rewards, rejected_rewards = simpo_loss(t(*c), t(*r), beta, ratio)
    for i in range(3):
        assert losses[i].item() == pytest.approx(-logsig(beta * (c[i] - r[i]) - ratio * beta), rel=1e-6)
        assert chosen_rewards[i].item() == pytest.approx(beta * c[i])
        assert rejected_rewards[i].item() == pytest.approx(beta * r[i])
    # a mean log-prob gap of exactly gamma/beta puts the pair at the margin: loss log 2
    assert losses[2].item() == pytest.approx(math.log(2), rel=1e-6)
    # without a margin, the same pair is already "won"
    no_margin, _, _ = simpo_loss(t(*c), t(*r), beta, 0.0)
    assert no_margin[2].item() < math.log(2)
    assert torch.all(no_margin < losses)


def test_simpo_gradient_matches_the_analytic_derivative():
    beta, ratio = 2.0, 0.5
    c, r = t(-0.8, -1.5, grad=True), t(-1.2, -0.7, grad=True)
    losses, _, _ = simpo_loss(c, r, beta, ratio)
    losses.sum().backward()
    for i in range(2):
        x = beta * (c[i] - r[i]).item() - ratio * beta
        assert c.grad[i].item() == pytest.approx(-beta * sig(-x), rel=1e-5)
        assert r.grad[i].item() == pytest.approx(beta * sig(-x), rel=1e-5)


# ---- ORPO ------------------------------------------------------------------------------------
def log_odds(p_log):
    return p_log - math.log1p(-math.exp(p_log))


def test_orpo_matches_hand_computed_values():
    beta = 0.1
    c, r = [-0.5, -2.0, -0.05], [-1.0, -0.3, -3.0]
    losses, chosen_rewards, rejected_rewards = orpo_loss(t(*c), t(*r), beta)
    for i in range(3):
        expected = -beta * logsig(log_odds(c[i]) - log_odds(r[i]))
        assert losses[i].item() == pytest.approx(expected, rel=1e-5)
        assert chosen_rewards[i].item() == pytest.approx(beta * c[i], rel=1e-6)
        assert rejected_rewards[i].item() == pytest.approx(beta * r[i], rel=1e-6)
    assert torch.all(losses >= 0)


def test_orpo_gradient_matches_the_analytic_derivative():
    beta = 0.3
    c, r = t(-0.5, -2.0, grad=True), t(-1.0, -0.3, grad=True)
    losses, _, _ = orpo_loss(c, r, beta)
    losses.sum().backward()
    for i in range(2):
        a, b = c[i].item(), r[i].item()
        s = sig(-(log_odds(a) - log_odds(b)))
        # d log odds(x) / dx = 1 + e^x / (1 - e^x) = 1 / (1 - e^x)
        assert c.grad[i].item() == pytest.approx(-beta * s / (1 - math.exp(a)), rel=1e-5)
        assert r.grad[i].item() == pytest.approx(beta * s / (1 - math.exp(b)), rel=1e-5)


@pytest.mark.parametrize("logp", [-1e-8, -1e-12, 0.0])
def test_orpo_is_finite_when_the_log_probability_goes_to_zero(logp):
    c, r = t(logp, -1e-8, -0.7, grad=True), t(-1.0, -1e-8, logp, grad=True)
    losses, chosen_rewards, rejected_rewards = orpo_loss(c, r, 0.1)
    losses.sum().backward()
    for x in (losses, chosen_rewards, rejected_rewards, c.grad, r.grad):
        assert torch.isfinite(x).all(), x
    # the chosen response is (nearly) certain, the rejected one is not: almost no loss left
    assert losses[0].item() < 1e-6
    # both near-certain: equal odds, log 2 (times beta)
    assert losses[1].item() == pytest.approx(0.1 * math.log(2), rel=1e-4)


def test_log1mexp_is_accurate_on_both_branches():
    x = torch.tensor([-1e-9, -1e-4, -0.3, -0.69, -0.7, -1.0, -5.0, -40.0, -800.0], dtype=torch.float64)
    got = log1mexp(x)
    for xi, gi in zip(x.tolist(), got.tolist()):
        expected = math.log(-math.expm1(xi)) if xi > -math.log(2) else math.log1p(-math.exp(xi))
        assert gi == pytest.approx(expected, rel=1e-12, abs=1e-300)


# ---- KTO -------------------------------------------------------------------------------------
def test_kto_desirable_and_undesirable_branches():
    beta, wd, wu = 0.1, 1.0, 1.5
    policy, ref = [-10.0, -10.0, -7.0, -12.0], [-11.0, -11.0, -9.0, -9.5]
    desirable = torch.tensor([True, False, True, False])
    kl = torch.tensor(0.4)
    losses, rewards = kto_loss(t(*policy), t(*ref), desirable, kl, beta, wd, wu)
    for i in range(4):
        r = policy[i] - ref[i]
        if desirable[i]:
            expected = wd * (1 - sig(beta * (r - 0.4)))
        else:
            expected = wu * (1 - sig(beta * (0.4 - r)))
        assert losses[i].item() == pytest.approx(expected, rel=1e-6)
        assert rewards[i].item() == pytest.approx(beta * r, rel=1e-6)
    # the same log-ratio: a desirable example's loss + an undesirable one's (unweighted) is 1
    assert (losses[0] / wd + losses[1] / wu).item() == pytest.approx(1.0, rel=1e-6)


def test_kto_gradients_push_desirable_up_and_undesirable_down():
    beta = 0.5
    policy = t(-10.0, -10.0, grad=True)
    ref = t(-10.5, -10.5)
    losses, _ = kto_loss(policy, ref, torch.tensor([True, False]), torch.tensor(0.2), beta, 1.0, 2.0)
    losses.sum().backward()
    x = beta * (0.5 - 0.2)
    s = sig(x)
    assert policy.grad[0].item() == pytest.approx(-beta * s * (1 - s), rel=1e-5)  # d/dr (1 - σ(β(r - z)))
    assert policy.grad[1].item() == pytest.approx(2.0 * beta * s * (1 - s), rel=1e-5)  # d/dr λ_U (1 - σ(β(z - r)))


def test_kto_kl_is_the_clamped_detached_mean_and_loss_clamps_it_too():
    p = t(-10.0, -8.0, -12.0, grad=True)
    ref = t(-11.0, -9.5, -11.0)
    z = kto_kl(p, ref)
    assert z.shape == () and not z.requires_grad
    assert z.item() == pytest.approx((1.0 + 1.5 - 1.0) / 3, rel=1e-6)
    assert kto_kl(t(-12.0, -9.0), t(-10.0, -9.5)).item() == 0.0  # mean -0.75 clamped
    assert kto_kl(t(), t()).item() == 0.0
    # a negative kl passed in is treated as 0, and no gradient goes to it
    policy, reference = t(-10.0, -10.0), t(-10.5, -9.0)
    desirable = torch.tensor([True, False])
    neg = torch.tensor(-3.0, requires_grad=True)
    clamped, _ = kto_loss(policy, reference, desirable, neg, 0.1, 1.0, 1.0)
    zero, _ = kto_loss(policy, reference, desirable, torch.tensor(0.0), 0.1, 1.0, 1.0)
    assert torch.equal(clamped, zero)
    assert not clamped.requires_grad


# ---- sequence_logps --------------------------------------------------------------------------
def test_sequence_logps_with_masks():
    logps = torch.tensor([[-1.0, -2.0, -3.0, float("nan")], [-0.5, float("-inf"), -1.5, -2.0], [-1.0, -1.0, -1.0, -1.0]])
    mask = torch.tensor([[True, True, True, False], [True, False, True, True], [False, False, False, False]])
    total = sequence_logps(logps, mask, average=False)
    mean = sequence_logps(logps, mask, average=True)
    assert total.tolist() == [-6.0, -4.0, 0.0]
    assert mean.tolist() == pytest.approx([-2.0, -4.0 / 3, 0.0])
    assert torch.isfinite(mean).all()
    # 0/1 integer masks work alike
    assert torch.equal(sequence_logps(logps, mask.long(), average=True), mean)
    # gradients only reach the masked-in tokens, and are finite
    x = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -2.0, -3.0]], requires_grad=True)
    m = torch.tensor([[True, False, True], [False, False, False]])
    sequence_logps(x, m, average=True).sum().backward()
    assert x.grad.tolist() == [[0.5, 0.0, 0.5], [0.0, 0.0, 0.0]]


# ---- gradcheck -------------------------------------------------------------------------------
def _inputs(*rows, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(3, generator=g, dtype=torch.float64) * lo).requires_grad_() for lo in rows]


def test_gradcheck_every_loss():
    gc = torch.autograd.gradcheck
    pc, pr, rc, rr = _inputs(-20, -20, -20, -20)
    assert gc(lambda a, b, c, d: dpo_loss(a, b, c, d, 0.3, 0.1)[0], (pc, pr, rc, rr))
    assert gc(lambda a, b, c, d: dpo_loss(a, b, c, d, 0.3)[0], (pc, pr, rc, rr))
    ac, ar, bc, br = _inputs(-3, -3, -3, -3, seed=1)
    assert gc(lambda a, b, c, d: ipo_loss(a, b, c, d, 0.1)[0], (ac, ar, bc, br))
    assert gc(lambda a, b: simpo_loss(a, b, 2.0, 0.5)[0], (ac, ar))
    # ORPO on both branches of log1mexp (above and below -log 2)
    oc = torch.tensor([-0.1, -0.5, -2.0], dtype=torch.float64, requires_grad=True)
    orj = torch.tensor([-1.5, -0.05, -0.9], dtype=torch.float64, requires_grad=True)
    assert gc(lambda a, b: orpo_loss(a, b, 0.2)[0], (oc, orj))
    pol, ref = _inputs(-20, -20, seed=2)
    desirable = torch.tensor([True, False, True])
    assert gc(lambda a, b: kto_loss(a, b, desirable, torch.tensor(0.3, dtype=torch.float64), 0.2, 1.0, 1.3)[0], (pol, ref))
    tok = (torch.rand(2, 4, dtype=torch.float64) * -5).requires_grad_()
    m = torch.tensor([[True, True, False, True], [False, True, True, False]])
    assert gc(lambda x: sequence_logps(x, m, average=True), (tok,))
    assert gc(lambda x: sequence_logps(x, m, average=False), (tok,))


def test_float64_in_float64_out():
    a, b, c, d = (torch.tensor([-1.0, -2.0], dtype=torch.float64) for _ in range(4))
    for out in (dpo_loss(a, b, c, d, 0.1), ipo_loss(a, b, c, d, 0.1), simpo_loss(a, b, 2.0, 0.5), orpo_loss(a, b, 0.1)):
        assert all(x.dtype == torch.float64 for x in out)


# ---- bad input -------------------------------------------------------------------------------
def test_bad_hyperparameters_and_shapes():
    a = t(-1.0, -2.0)
    with pytest.raises(DeltatuneError, match="data.beta"):
        ipo_loss(a, a, a, a, 0.0)
    with pytest.raises(DeltatuneError, match="data.beta"):
        dpo_loss(a, a, a, a, -0.1)
    with pytest.raises(DeltatuneError, match="data.label_smoothing"):
        dpo_loss(a, a, a, a, 0.1, 0.5)
    with pytest.raises(DeltatuneError, match="data.simpo_gamma"):
        simpo_loss(a, a, 2.0, -1.0)
    with pytest.raises(DeltatuneError, match="data.desirable_weight"):
        kto_loss(a, a, torch.tensor([True, False]), torch.tensor(0.0), 0.1, 0.0, 1.0)
    with pytest.raises(ValueError, match="dpo_loss"):
        dpo_loss(a, a, a, a[:, None], 0.1)
    with pytest.raises(ValueError, match="desirable"):
        kto_loss(a, a, torch.tensor([1, 0]), torch.tensor(0.0), 0.1, 1.0, 1.0)
    with pytest.raises(ValueError, match="sequence_logps"):
        sequence_logps(torch.zeros(2, 3), torch.ones(2, 4, dtype=torch.bool), average=False)
    assert orpo_loss(a, a, 0.0)[0].tolist() == [0.0, 0.0]  # beta 0: no odds-ratio term (plain SFT)
