"""Preference tuning of decoders: a model learns which of two answers people prefer.

- ``dpo`` (:mod:`.dpo`): Direct Preference Optimization (Rafailov et al. 2023), sigmoid or IPO
  loss, against a reference model (precomputed, or the base with the adapter disabled);
- ``orpo`` (:mod:`.orpo`): odds-ratio preference optimization (Hong et al. 2024), no reference;
- ``simpo`` (:mod:`.simpo`): simple preference optimization (Meng et al. 2024), no reference;
- ``kto`` (:mod:`.kto`): Kahneman-Tversky optimization (Ethayarajh et al. 2024) on unpaired
  desirable/undesirable completions.

Shared parts: :mod:`.data` (formats, pair encoding, counts), :mod:`.losses` (the loss formulas,
pure functions of log-probabilities), :mod:`.base` (the paired task: one forward over chosen
and rejected, the reference model, metrics). docs/preference.md has the formulas and settings.
"""
