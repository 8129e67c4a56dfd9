"""Knowledge distillation from a finished teacher run (``distill.*``; docs/distillation.md).

- :mod:`.losses`: the KL terms and their mixing with the hard loss, pure functions of logits;
- :mod:`.teacher`: the teacher's pass over the training rows and its cache in the run folder;
- :mod:`.task`: the mixins that put both into a task (:func:`~.task.distilled_task`);
- :mod:`.setup`: the student's run config from the teacher's (torch-free: ``deltatune distill``
  checks it before torch is imported).

Importing this package imports neither torch nor the tasks (the CLI reads :mod:`.setup`).
"""
