"""Few-shot text classification in deltatune's own loop: SetFit's recipe (Tunstall et al. 2022,
arXiv:2209.11055), selected by ``train.method: contrastive`` (``deltatune train --few-shot``).

- :mod:`~deltatune.tasks.fewshot.pairs`: the seeded generator of positive/negative text pairs;
- :mod:`~deltatune.tasks.fewshot.model`: :class:`SentenceClassifier`, an encoder with mean
  pooling and a linear head, saved as a Hugging Face body folder plus the head;
- :mod:`~deltatune.tasks.fewshot.task`: :class:`ContrastiveClassificationTask`, which trains the
  encoder on the pairs (CosineSimilarityLoss) and fits a logistic regression head afterwards.

Only :mod:`pairs` is torch-free; import the others explicitly.
"""
