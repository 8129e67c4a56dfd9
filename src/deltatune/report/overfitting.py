"""The overfitting verdict: does the validation loss rise while the training loss falls?

The rule (documented in docs/report.md; thresholds are the constants below):

0. A training or validation loss that is NaN or infinite: the run **diverged** from the first
   step logging one (``kind="diverged"``); nothing after it says anything about overfitting.
   Evaluation off (``eval.eval_strategy: no``) or no validation split: *no evaluations*, saying
   why (``kind="too_few"``).
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
   too high). Otherwise: *no sign of overfitting* (``kind="ok"``). The message counts the
   evaluations that rose one after another at the end ("rose for the last 3 evaluations"), or,
   when the loss came partly back down, says since which step it has been above its minimum.

The idea is the generalization gap of Goodfellow, Bengio & Courville (2016), *Deep Learning*,
§5.2 and §7.8 (early stopping: validation loss turning up while training loss keeps falling).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

MIN_EVALS = 3  # evaluations with a validation loss needed to judge
MIN_EVALS_AFTER_MIN = 2  # evaluations after the minimum before a rise counts
REL_TOL = 0.02  # the rise must exceed 2 % of the minimum ...
ABS_TOL = 0.01  # ... and 0.01 in absolute terms

OTHER_REMEDIES = "more dropout (model.dropout), weight decay (train.weight_decay), fewer epochs or more data"
REMEDIES = f"consider early stopping (eval.early_stopping_patience), {OTHER_REMEDIES}"


@dataclass
class Diagnosis:
    """The verdict on one run.

    Attributes:
        overfitting: whether the rule of this module says the model overfits.
        message: one plain-English sentence (or two) saying what was seen and what to do.
        kind: ``"overfitting"``, ``"unstable"`` (validation loss rose without the training loss
            falling), ``"diverged"`` (a NaN or infinite loss), ``"ok"`` (no sign of overfitting) or
            ``"too_few"`` (under 3 evaluations, or none: evaluation off).
        evaluations: ``(step, validation loss, training loss or None)`` per evaluation used.
    """

    overfitting: bool
    message: str
    kind: str
    evaluations: list[tuple[int, float, Optional[float]]]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _scan(records: list[dict[str, Any]]):
    """One pass over the records: ``(evals, train, first non-finite)``: the finite validation loss per
    step (the last record of a step wins), the sorted ``(step, training loss)`` pairs, and
    ``(step, "training"/"validation", value)`` of the first NaN or infinite loss by step (or ``None``)."""
    evals: dict[int, float] = {}
    train: list[tuple[int, float]] = []
    first: Optional[tuple[int, str, float]] = None
    isfinite = math.isfinite
    for r in records:
        step = r.get("step")
        if type(step) is not int or "event" in r:
            continue
        for key, which in (("loss", "training"), ("eval_loss", "validation")):
            v = r.get(key)
            if type(v) is not float and type(v) is not int:  # missing, or not a number (bools too)
                continue
            if isfinite(v):
                if which == "training":
                    train.append((step, float(v)))
                else:
                    evals[step] = float(v)
            elif first is None or step < first[0]:
                first = (step, which, v)
    train.sort()
    return evals, train, first


def loss_pairs(records: list[dict[str, Any]]) -> list[tuple[int, float, Optional[float]]]:
    """``(step, validation loss, training loss)`` per evaluation with a finite ``eval_loss``, by step.

    The training loss of an evaluation is the mean ``loss`` of the training records logged after
    the previous evaluation's step and up to its own; when there are none, the training record
    nearest in steps; ``None`` without any training record. Records without a finite value are
    skipped (no NaN reaches the verdict).
    """
    evals, train, _ = _scan(records)
    return _pairs(evals, train)


def _pairs(evals: dict[int, float], train: list[tuple[int, float]]) -> list[tuple[int, float, Optional[float]]]:
    """:func:`loss_pairs` from :func:`_scan`'s evaluations and training losses."""
    steps = [s for s, _ in train]
    sums = [0.0]  # prefix sums: each window's mean in O(log n) (a 200,000-step log stays fast)
    for _, loss in train:
        sums.append(sums[-1] + loss)
    out: list[tuple[int, float, Optional[float]]] = []
    previous = -1
    for step in sorted(evals):
        lo, hi = bisect.bisect_right(steps, previous), bisect.bisect_right(steps, step)
        if hi > lo:
            tl: Optional[float] = (sums[hi] - sums[lo]) / (hi - lo)
        elif train:
            near = [i for i in (lo - 1, lo) if 0 <= i < len(train)]
            tl = train[min(near, key=lambda i: abs(steps[i] - step))][1]
        else:
            tl = None
        out.append((step, evals[step], tl))
        previous = step
    return out


def _diverged(records: list[dict[str, Any]], bad: tuple[int, str, float], pairs) -> Diagnosis:
    step, which, value = bad
    before = [(v, s) for s, v, _ in pairs if s < step]
    last_good = " (lowest validation loss before it: {:.3f} at step {})".format(*min(before)) if before else ""
    return Diagnosis(False, (
        f"training diverged: the {which} loss is {value} from step {step}{last_good}; the weights after it are useless. "
        "Lower the learning rate (train.learning_rate), add warmup (train.warmup_ratio), keep gradient clipping on "
        "(train.max_grad_norm), and if training in float16 try bfloat16 or float32"
    ), "diverged", pairs)


def diagnose(records: list[dict[str, Any]], best_step: Optional[int] = None, restored: bool = False,
             no_evaluations: Optional[str] = None) -> Diagnosis:
    """The overfitting verdict from metrics.jsonl records (the rule is in the module docstring).

    Args:
        records: metrics.jsonl records (train, eval and event records, any order).
        best_step: the step whose weights the run kept (eval.json ``train.best_step``), for the message.
        restored: whether the run put the best step's weights back at the end (its best step
            differs from its last step).
        no_evaluations: why the run has no evaluation when that is known (e.g. ``"evaluation was
            off (eval.eval_strategy: no)"``); said instead of "evaluate more often" when the
            records hold no evaluation.

    Returns:
        A :class:`Diagnosis`; never raises on odd records (missing values are skipped).
    """
    evals, train, bad = _scan(records)
    pairs = _pairs(evals, train)
    if bad is not None:
        return _diverged(records, bad, pairs)
    if not pairs and no_evaluations:
        return Diagnosis(False, f"no evaluations: {no_evaluations}; overfitting cannot be judged", "too_few", pairs)
    if not pairs and any(r.get("step") is not None and "event" not in r and "eval_loss" not in r
                         and any(k.startswith("eval_") for k in r) for r in records):
        return Diagnosis(False, (
            "the evaluations log no validation loss (this task scores its evaluations otherwise, e.g. GRPO's reward): "
            "overfitting cannot be judged by loss; compare the training and validation metric curves instead"
        ), "too_few", pairs)
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
    rises = 0  # evaluations that rose one after another at the end
    while rises < after and pairs[-1 - rises][1] > pairs[-2 - rises][1]:
        rises += 1
    if rises == after:
        seen = f"validation loss rose for the last {after} evaluations ({v_min:.3f} at step {s_min} -> {v_last:.3f} at step {s_last})"
    else:
        seen = (f"validation loss has been above its minimum ({v_min:.3f} at step {s_min}) since step {pairs[i_min + 1][0]} "
                f"({v_last:.3f} at step {s_last})")
    if t_min is None or t_last is None or not t_last < t_min:
        train = "" if t_min is None or t_last is None else f" ({t_min:.3f} -> {t_last:.3f})"
        return Diagnosis(False, (
            f"{seen} but training loss did not fall{train}: not overfitting, but training is unstable; "
            "try a lower learning rate (train.learning_rate) or more warmup (train.warmup_ratio)"
        ), "unstable", pairs)
    stopped_early = any(r.get("event") == "early_stopping" for r in records)
    if restored and best_step is not None and stopped_early:
        advice = f"early stopping ended training and the best step ({best_step}) was restored; to do better, consider {OTHER_REMEDIES}"
    elif restored and best_step is not None:
        advice = f"the best step ({best_step}) was restored; {REMEDIES}"
    else:
        advice = (
            f"the final weights are from step {s_last}: set eval.metric_for_best_model (e.g. loss) so the best "
            f"evaluation's weights are kept, or use early stopping (eval.early_stopping_patience); also consider {OTHER_REMEDIES}"
        )
    return Diagnosis(True, f"{seen} while training loss fell ({t_min:.3f} -> {t_last:.3f}): the model is overfitting; {advice}",
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

    return diagnose_data(read_run(run_root))


def no_evaluations_reason(run) -> Optional[str]:
    """Why a :class:`~deltatune.report.reading.RunData` has no evaluation, when its files say:
    evaluation off (``eval.eval_strategy: no``), or no validation split (eval.json's ``data_files``)."""
    if run.setting("eval.eval_strategy") == "no":
        return "evaluation was off (eval.eval_strategy: no)"
    files = run.train_summary.get("data_files")
    if isinstance(files, dict) and files and "validation" not in files:
        return "the run had no validation split (data.validation_file, data.validation_split)"
    return None


def diagnose_data(run) -> Optional[Diagnosis]:
    """The verdict on a read run (:class:`~deltatune.report.reading.RunData`); ``None`` without records.

    ``restored`` is true when eval.json's ``train.best_step`` differs from ``train.global_step``;
    the best step shown is :attr:`RunData.best_step`, else the last step."""
    if not run.records:
        return None
    best, last = run.best_step, run.last_step
    summary = run.train_summary
    restored = summary.get("best_step") is not None and summary.get("best_step") != summary.get("global_step")
    return diagnose(run.records, best_step=best if best is not None else last, restored=restored,
                    no_evaluations=no_evaluations_reason(run))
