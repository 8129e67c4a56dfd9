"""``simpo``: Simple Preference Optimization (Meng et al. 2024, arXiv:2405.14734).

No reference model: the reward of a response is ``beta`` times its per-token mean
log-probability, and the loss ``-log sigmoid(beta * (mean log p_chosen - mean log p_rejected) - gamma)``
asks for a margin ``gamma = data.simpo_gamma * beta`` (TRL's CPOTrainer ``loss_type="simpo"``,
``simpo_gamma`` there being gamma itself; here the paper's gamma/beta ratio, 0.5 by default with
``beta`` 2.0, the paper's setting for its Mistral/Llama-3 Base runs is beta 2.0-2.5, ratio 0.5-0.55).
"""

from __future__ import annotations

from deltatune.tasks.preference.base import PreferenceTask
from deltatune.tasks.preference.losses import simpo_loss


class SimPOTask(PreferenceTask):
    """SimPO on prompt/chosen/rejected pairs."""

    name = "simpo"
    default_beta = 2.0
    setting_keys = ("simpo_gamma",)

    def pair_loss(self, model, batch, logps):
        return simpo_loss(logps["chosen_avg"], logps["rejected_avg"], self.beta, self.config.data.simpo_gamma)
