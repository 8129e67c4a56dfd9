"""The overfitting verdict: does the validation loss rise while the training loss falls?

The rule (documented in docs/report.md; thresholds are the constants below):

1. Take the evaluations with a finite ``eval_loss`` from metrics.jsonl, one per step (the last
   record of a step wins), in step order. Fewer than :data:`MIN_EVALS` (3): *too few
   evaluations to judge*.
2. Find the minimum validation loss (its first occurrence) and compare the last evaluation with
   it: the loss *rose* when ``last - min > max(REL_TOL * |min|, ABS_TOL)`` (2 % relative and
   0.01 absolute, both), with at least :data:`MIN_EVALS_AFTER_MIN` (2) evaluations after the
   minimum (one bad evaluation is noise).
3. The training loss at an evaluation is the mean of the training records logged since the
   previous evaluation (up to and including its step); when there are none, the training
   record nearest in steps. It *fell* when it is lower at the last evaluation than at the
   minimum's.
4. Rose and fell: **overfitting** (``kind="overfitting"``). Rose but the training loss did not
   fall: not overfitting but unstable training (``kind="unstable"``: the learning rate may be
   too high). Otherwise: *no sign of overfitting* (``kind="ok"``).

The idea is the generalization gap of Goodfellow, Bengio & Courville (2016), *Deep Learning*,
§5.2 and §7.8 (early stopping: validation loss turning up while training loss keeps falling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

MIN_EVALS = 3  # evaluations with a validation loss needed to judge
MIN_EVALS_AFTER_MIN = 2  # evaluations after the minimum before a rise counts
REL_TOL = 0.02  # the rise must exceed 2 % of the minimum ...
ABS_TOL = 0.01  # ... and 0.01 in absolute terms

REMEDIES = (
    "consider early stopping (eval.early_stopping_patience), more dropout (model.dropout), "
    "weight decay (train.weight_decay), fewer epochs or more data"
)


@dataclass
class Diagnosis:
    """The verdict on one run.

    Attributes:
        overfitting: whether the rule of this module says the model overfits.
        message: one plain-English sentence (or two) saying what was seen and what to do.
        kind: ``"overfitting"``, ``"unstable"`` (validation loss rose without the training loss
            falling), ``"ok"`` (no sign of overfitting) or ``"too_few"`` (under 3 evaluations).
        evaluations: ``(step, validation loss, training loss or None)`` per evaluation used.
    """

    overfitting: bool
    message: str
    kind: str
    evaluations: list[tuple[int, float, Optional[float]]]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def loss_pairs(records: list[dict[str, Any]]) -> list[tuple[int, float, Optional[float]]]:
    """``(step, validation loss, training loss)`` per evaluation with a finite ``eval_loss``, by step.

    The training loss of an evaluation is the mean ``loss`` of the training records logged after
    the previous evaluation's step and up to its own; when there are none, the training record
    nearest in steps; ``None`` without any training record. Records without a finite value are
    skipped (no NaN reaches the verdict).
    """
    evals: dict[int, float] = {}
    for r in records:
        if _finite(r.get("eval_loss")) and isinstance(r.get("step"), int):
            evals[r["step"]] = float(r["eval_loss"])
    train = sorted((r["step"], float(r["loss"])) for r in records
                   if "event" not in r and _finite(r.get("loss")) and isinstance(r.get("step"), int))
    out: list[tuple[int, float, Optional[float]]] = []
    previous = -1
    for step in sorted(evals):
        window = [loss for s, loss in train if previous < s <= step]
        if window:
            tl: Optional[float] = sum(window) / len(window)
        elif train:
            tl = min(train, key=lambda sl: abs(sl[0] - step))[1]
        else:
            tl = None
        out.append((step, evals[step], tl))
        previous = step
    return out


def diagnose(records: list[dict[str, Any]], best_step: Optional[int] = None, restored: bool = False) -> Diagnosis:
    """The overfitting verdict from metrics.jsonl records (the rule is in the module docstring).

    Args:
        records: metrics.jsonl records (train, eval and event records, any order).
        best_step: the step whose weights the run kept (eval.json ``train.best_step``), for the message.
        restored: whether the run put the best step's weights back at the end (its best step
            differs from its last step).

    Returns:
        A :class:`Diagnosis`; never raises on odd records (missing or non-finite values are skipped).
    """
    pairs = loss_pairs(records)
    if len(pairs) < MIN_EVALS:
        return Diagnosis(False, (
            f"too few evaluations to judge overfitting ({len(pairs)} with a validation loss; at least {MIN_EVALS} are needed: "
            "evaluate more often with eval.eval_strategy: steps and eval.eval_steps, or train more epochs)"
        ), "too_few", pairs)
    i_min = min(range(len(pairs)), key=lambda i: pairs[i][1])
    s_min, v_min, t_min = pairs[i_min]
    s_last, v_last, t_last = pairs[-1]
    after = len(pairs) - 1 - i_min
    above = v_last - v_min > max(REL_TOL * abs(v_min), ABS_TOL)
    if not (above and after >= MIN_EVALS_AFTER_MIN):
        if after == 0:
            where = "its lowest"
        elif not above:
            where = f"within the tolerance of its minimum {v_min:.3f} (step {s_min})"
        else:
            where = f"up from {v_min:.3f} at step {s_min} at the last evaluation only"
        return Diagnosis(False, f"no sign of overfitting: the validation loss is {v_last:.3f} at step {s_last}, {where} "
                                f"({len(pairs)} evaluations)", "ok", pairs)
    seen = f"validation loss rose for the last {after} evaluations ({v_min:.3f} at step {s_min} -> {v_last:.3f} at step {s_last})"
    if t_min is None or t_last is None or not t_last < t_min:
        train = "" if t_min is None or t_last is None else f" ({t_min:.3f} -> {t_last:.3f})"
        return Diagnosis(False, (
            f"{seen} but training loss did not fall{train}: not overfitting, but training is unstable; "
            "try a lower learning rate (train.learning_rate) or more warmup (train.warmup_ratio)"
        ), "unstable", pairs)
    if restored and best_step is not None:
        weights = f"the best step ({best_step}) was restored"
    else:
        weights = (
            f"the final weights are from step {s_last}: set eval.metric_for_best_model (e.g. loss) so the best "
            "evaluation's weights are kept, or use early stopping"
        )
    return Diagnosis(True, f"{seen} while training loss fell ({t_min:.3f} -> {t_last:.3f}): the model is overfitting; {weights}; {REMEDIES}",
                     "overfitting", pairs)


def diagnose_run(run_root: str | Path) -> Optional[Diagnosis]:
    """The verdict on the run folder ``run_root`` (its metrics.jsonl and eval.json).

    ``restored`` is true when eval.json's ``train.best_step`` differs from ``train.global_step``
    (for an unfinished run: the early-stopping event's best step, else never).

    Returns:
        ``None`` when the folder has no training record yet (no metrics.jsonl, or an empty one).

    Raises:
        DeltatuneError: not a run folder; a damaged metrics.jsonl line other than the last.
    """
    from deltatune.report.reading import read_run

    run = read_run(run_root)
    if not run.records:
        return None
    best, last = run.best_step, run.last_step
    summary = run.train_summary
    if "best_step" in summary or "global_step" in summary:
        restored = summary.get("best_step") is not None and summary.get("best_step") != summary.get("global_step")
    else:
        restored = False
    return diagnose(run.records, best_step=best if best is not None else last, restored=restored)
