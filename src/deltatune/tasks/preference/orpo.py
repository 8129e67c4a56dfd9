"""``orpo``: Odds Ratio Preference Optimization (Hong et al. 2024, arXiv:2403.07691).

No reference model. The loss of a pair is the supervised loss on the chosen response (its
mean token cross-entropy) plus ``beta`` (the paper's lambda, TRL's ``beta``, default 0.1) times
the odds-ratio term ``-log sigmoid(log odds(chosen) - log odds(rejected))``, where
``odds(y) = p / (1 - p)`` of the response's per-token mean probability ``p = exp(mean log p)``.
Rewards (logged, as TRL): ``beta * mean log p`` of each response.

TRL averages the supervised part over all chosen tokens of a batch; here each pair's mean
counts once (a pair is the loss target, so accumulation and data parallelism give the
same gradient whatever the micro-batches).
"""

from __future__ import annotations

from deltatune.tasks.preference.base import PreferenceTask
from deltatune.tasks.preference.losses import orpo_loss


class ORPOTask(PreferenceTask):
    """ORPO on prompt/chosen/rejected pairs."""

    name = "orpo"
    default_beta = 0.1

    def pair_loss(self, model, batch, logps):
        ratio, chosen_rewards, rejected_rewards = orpo_loss(logps["chosen_avg"], logps["rejected_avg"], self.beta)
        return -logps["chosen_avg"] + ratio, chosen_rewards, rejected_rewards
