"""Distillation losses as pure functions of logits (Hinton, Vinyals and Dean 2015, arXiv:1503.02531).

The soft term compares the teacher's and the student's distributions at temperature ``T``:

    KL(p_T || q_T) = sum_k p_T(k) * (log p_T(k) - log q_T(k)),
    p_T = softmax(z_teacher / T),  q_T = softmax(z_student / T)

and is multiplied by ``T^2`` so that its gradient keeps the scale of the hard loss's when ``T``
changes (the paper, section 2). Multi-label heads (independent sigmoids) use the Bernoulli KL of
each label, averaged over the labels as the hard binary cross-entropy is:

    KL(Bern(a) || Bern(b)) = a log(a/b) + (1-a) log((1-a)/(1-b)),  a = sigmoid(t/T), b = sigmoid(s/T).

The total per target is :func:`mix`: ``alpha * T^2 * KL + (1 - alpha) * hard``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def softmax_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(teacher/T) || softmax(student/T)) over the last axis, one value per leading index.

    Args:
        student_logits, teacher_logits: float tensors of the same shape (..., K).
        temperature: T > 0.

    Returns:
        float32 tensor (...), >= 0 (nats), not multiplied by T^2.
    """
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(-1)


def sigmoid_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Bernoulli KL of each label's sigmoid(teacher/T) to sigmoid(student/T), averaged over the last axis.

    Args:
        student_logits, teacher_logits: float tensors of the same shape (..., L), one logit per label.
        temperature: T > 0.

    Returns:
        float32 tensor (...), >= 0 (nats), not multiplied by T^2.
    """
    s, t = student_logits.float() / temperature, teacher_logits.float() / temperature
    a = torch.sigmoid(t)
    # BCE(s; a) - BCE(t; a) = cross-entropy minus the teacher's entropy, both stable in logits
    kl = F.binary_cross_entropy_with_logits(s, a, reduction="none") - F.binary_cross_entropy_with_logits(t, a, reduction="none")
    return kl.mean(-1)


def mix(hard: torch.Tensor, kl: torch.Tensor, alpha: float, temperature: float) -> torch.Tensor:
    """``alpha * T^2 * kl + (1 - alpha) * hard``, elementwise (tensors of one shape, or scalars)."""
    return alpha * temperature**2 * kl + (1.0 - alpha) * hard
