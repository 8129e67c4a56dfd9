"""GRPO: reinforcement fine-tuning of a decoder with checkable rewards (Shao et al. 2024, DeepSeekMath,
arXiv:2402.03300): :mod:`.task` (the task), :mod:`.loss` (the objective as pure functions),
:mod:`.rewards` (built-in and user reward functions), :mod:`.sampling` (batched completions)."""
