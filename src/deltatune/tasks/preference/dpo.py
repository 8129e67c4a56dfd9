"""``dpo``: Direct Preference Optimization (Rafailov et al. 2023, arXiv:2305.18290).

The policy's implicit reward of a response is ``beta * (log pi(y|x) - log pi_ref(y|x))``; the
loss pushes the chosen response's reward above the rejected one's: the sigmoid loss with
optional conservative label smoothing (``data.label_smoothing``), or IPO's squared loss
(Azar et al. 2023, arXiv:2310.12036; ``data.loss_type: ipo``) on length-averaged
log-probabilities as TRL computes it. The reference log-probabilities are computed once before
training (``data.precompute_reference``, the default) or at every step (see
:mod:`deltatune.tasks.preference.base`).
"""

from __future__ import annotations

from deltatune.tasks.preference.base import PreferenceTask
from deltatune.tasks.preference.losses import dpo_loss, ipo_loss


class DPOTask(PreferenceTask):
    """DPO on prompt/chosen/rejected pairs; ``beta`` default 0.1 (TRL's)."""

    name = "dpo"
    uses_reference = True
    default_beta = 0.1
    setting_keys = ("loss_type", "label_smoothing", "precompute_reference")

    def pair_loss(self, model, batch, logps):
        ref_c, ref_r = self.reference_logps(model, batch)
        d = self.config.data
        if d.loss_type == "ipo":
            # IPO on per-token means (TRL's ipo): the reference sums over the same token counts
            tokens_c, tokens_r = self._token_counts(batch)
            losses, _, _ = ipo_loss(logps["chosen_avg"], logps["rejected_avg"], ref_c / tokens_c, ref_r / tokens_r, self.beta)
            chosen_rewards = self.beta * (logps["chosen"] - ref_c).detach()
            rejected_rewards = self.beta * (logps["rejected"] - ref_r).detach()
            return losses, chosen_rewards, rejected_rewards
        return dpo_loss(logps["chosen"], logps["rejected"], ref_c, ref_r, self.beta, d.label_smoothing)

    @staticmethod
    def _token_counts(batch):
        """(B,) trained-token counts of the chosen and rejected sequences, at least 1."""
        counts = (batch["labels"][:, 1:] != -100).sum(-1).float().clamp(min=1)
        b = counts.shape[0] // 2
        return counts[:b], counts[b:]
