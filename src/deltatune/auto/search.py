"""The hyperparameter search of ``deltatune auto``: search space, trial objective, pruning.

Sampler: TPE (Bergstra et al. 2011, "Algorithms for Hyper-Parameter Optimization"), seeded,
multivariate with grouped conditional parameters (``delta.lora_r`` exists only for LoRA).
Pruner: median stopping rule (Golovin et al. 2017, "Google Vizier", §3.2.2): from the second
intermediate evaluation on, a trial is stopped when its metric is worse than the median of
earlier trials at the same evaluation; it is active as soon as one trial (the default
configuration, trial 0) has completed.

Search space (config keys, so the leaderboard reads like a config):

=================================  ====================================================
``model``                          the candidates (only when there are several)
``delta.method``                   the searched methods (by default ``full`` / ``lora``,
                                   see :func:`deltatune.delta.registry.searched_methods`)
                                   that fit the model and the memory budget
``learning_rate_scale``            log-uniform [0.2, 5]; ``train.learning_rate`` is the
                                   method's default (its registry ``learning_rate``: 1e-4
                                   full, 1e-3 LoRA) times this, so one parameter serves
                                   every method
``train.per_device_train_batch_size``  8, 16, 32, 64 (at most a quarter of the data)
``train.num_train_epochs``         1–3
``train.warmup_ratio``             uniform [0, 0.2]
``train.weight_decay``             uniform [0, 0.1]
``delta.lora_r``                   4, 8, 16, 32 (LoRA only)
=================================  ====================================================

A key the user set (``--batch-size 16``, ``--set train.warmup_ratio=0``) is pinned: not
searched. Every trial evaluates ``evals_per_epoch`` times per epoch (``eval.eval_strategy:
steps``, written into its config.yaml so that the run reproduces) and reports each evaluation
to optuna; the ``k``-th report of every trial is at the same fraction of an epoch.

Time budget (:mod:`deltatune.auto.timing`): every trial is timed; a trial is estimated before it
starts and not started when it cannot fit the time left; the default trial is shortened
(``train.max_steps``) when it cannot fit; :class:`TrialReporter` stops any trial at the deadline.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from deltatune.auto.budget import format_seconds
from deltatune.auto.candidates import Candidate
from deltatune.auto.timing import DefaultTrialPlanner, ShortenTrial, StepClock, TimeBudget
from deltatune.config import DeltaConfig, TrainConfig
from deltatune.delta.registry import METHODS
from deltatune.errors import DeltatuneError

LR_SCALE = (0.2, 5.0)
BATCH_SIZES = (8, 16, 32, 64)
EPOCHS = (1, 3)
WARMUP = (0.0, 0.2)
WEIGHT_DECAY = (0.0, 0.1)
LORA_RANKS = (4, 8, 16, 32)
NO_CHECKPOINTS = 10**9  # train.save_steps beyond any run's length

SEARCHED_KEYS = (
    "model.name_or_path", "delta.method", "train.learning_rate", "train.per_device_train_batch_size",
    "train.num_train_epochs", "train.warmup_ratio", "train.weight_decay", "delta.lora_r",
)


@dataclass
class SearchSpace:
    """What is searched and what is fixed.

    Attributes:
        candidates: models that fit the budgets (each with the methods that fit).
        methods: Δθ methods searched (union over candidates, user's order).
        pinned: config keys the user set (dotted key → value); never searched.
        n_train: training examples (after the validation split), for batch sizes and eval steps.
        evals_per_epoch: intermediate evaluations per epoch (pruning points).
        accumulation: ``train.gradient_accumulation_steps``.
    """

    candidates: list[Candidate]
    methods: list[str]
    pinned: dict[str, Any] = field(default_factory=dict)
    n_train: int = 0
    evals_per_epoch: int = 2
    accumulation: int = 1

    @property
    def batch_sizes(self) -> list[int]:
        default = TrainConfig().per_device_train_batch_size
        fit = [b for b in BATCH_SIZES if b <= max(1, self.n_train // 4)]
        return sorted(set(fit) | {min(BATCH_SIZES)} | ({default} if default <= self.n_train else set()))

    def describe(self) -> dict[str, Any]:
        """The space as JSON (for auto_report.json)."""
        out: dict[str, Any] = {}
        if len(self.candidates) > 1 and "model.name_or_path" not in self.pinned:
            out["model"] = [c.ref for c in self.candidates]
        if "delta.method" not in self.pinned:
            out["delta.method"] = self.methods
        if "train.learning_rate" not in self.pinned:
            out["learning_rate_scale"] = {"low": LR_SCALE[0], "high": LR_SCALE[1], "log": True,
                                          "times": {m: METHODS[m].learning_rate for m in self.methods}}
        for key, spec in (
            ("train.per_device_train_batch_size", self.batch_sizes),
            ("train.num_train_epochs", {"low": EPOCHS[0], "high": EPOCHS[1]}),
            ("train.warmup_ratio", {"low": WARMUP[0], "high": WARMUP[1]}),
            ("train.weight_decay", {"low": WEIGHT_DECAY[0], "high": WEIGHT_DECAY[1]}),
            ("delta.lora_r", list(LORA_RANKS)),
        ):
            if key not in self.pinned and (key != "delta.lora_r" or "lora" in self.methods):
                out[key] = spec
        out["pinned"] = self.pinned
        return out

    def baseline_params(self) -> dict[str, Any]:
        """Optuna params of the hand-set default run (``deltatune train`` with no tuning)."""
        t, d = TrainConfig(), DeltaConfig()
        method = d.method if d.method in self.methods else self.methods[0]
        values = {
            "model": self.candidates[0].ref,
            "delta.method": method,
            "learning_rate_scale": 1.0,
            "train.per_device_train_batch_size": t.per_device_train_batch_size
            if t.per_device_train_batch_size in self.batch_sizes else max(self.batch_sizes),
            "train.num_train_epochs": int(t.num_train_epochs),
            "train.warmup_ratio": t.warmup_ratio,
            "train.weight_decay": t.weight_decay,
            "delta.lora_r": d.lora_r,
        }
        names = self.param_names(method)
        return {k: v for k, v in values.items() if k in names}

    def param_names(self, method: str) -> set[str]:
        """The optuna parameters a trial with ``method`` has."""
        space = self.describe()
        names = {k for k in space if k != "pinned"}
        if method != "lora":
            names.discard("delta.lora_r")
        return names

    def suggest(self, trial) -> dict[str, Any]:
        """Sample one configuration; returns dotted config key → value (pinned keys excluded).

        Raises:
            optuna.TrialPruned: the sampled model cannot use the sampled method within the
                memory budget (recorded as the trial's ``note``).
        """
        import optuna

        space = self.describe()
        by_ref = {c.ref: c for c in self.candidates}
        settings: dict[str, Any] = {}
        ref = trial.suggest_categorical("model", space["model"]) if "model" in space else None
        if ref is not None:
            settings["model.name_or_path"] = ref
        method = trial.suggest_categorical("delta.method", self.methods) if "delta.method" in space else self.pinned["delta.method"]
        settings["delta.method"] = method
        if "learning_rate_scale" in space:
            scale = trial.suggest_float("learning_rate_scale", *LR_SCALE, log=True)
            settings["train.learning_rate"] = METHODS[method].learning_rate * scale
        if "train.per_device_train_batch_size" in space:
            settings["train.per_device_train_batch_size"] = trial.suggest_categorical("train.per_device_train_batch_size", self.batch_sizes)
        if "train.num_train_epochs" in space:
            settings["train.num_train_epochs"] = trial.suggest_int("train.num_train_epochs", *EPOCHS)
        for key, (lo, hi) in (("train.warmup_ratio", WARMUP), ("train.weight_decay", WEIGHT_DECAY)):
            if key in space:
                settings[key] = trial.suggest_float(key, lo, hi)
        if method == "lora" and "delta.lora_r" in space:
            settings["delta.lora_r"] = trial.suggest_categorical("delta.lora_r", list(LORA_RANKS))
        model = by_ref.get(ref or self.pinned.get("model.name_or_path") or self.candidates[0].ref, self.candidates[0])
        if method not in model.methods:
            trial.set_user_attr("note", f"{model.ref} with {method} does not fit the memory budget")
            raise optuna.TrialPruned(f"{model.ref} with {method} does not fit the memory budget")
        return settings

    def eval_steps(self, settings: dict[str, Any]) -> int:
        """Optimizer steps between evaluations: ``evals_per_epoch`` per epoch."""
        batch = self._batch(settings)
        steps = math.ceil(math.ceil(max(self.n_train, 1) / batch) / self.accumulation)
        return max(1, steps // self.evals_per_epoch)

    def planned_steps(self, settings: dict[str, Any]) -> tuple[int, int]:
        """(optimizer steps, examples per step) of a trial with ``settings`` (dotted keys).

        ``train.max_steps`` when set, else epochs × steps per epoch, as the Trainer counts them.
        """
        t = TrainConfig()
        batch = self._batch(settings)
        per_epoch = math.ceil(math.ceil(max(self.n_train, 1) / batch) / self.accumulation)
        max_steps = settings.get("train.max_steps", self.pinned.get("train.max_steps"))
        epochs = settings.get("train.num_train_epochs", self.pinned.get("train.num_train_epochs", t.num_train_epochs))
        steps = int(max_steps) if max_steps else max(1, math.ceil(float(epochs) * per_epoch))
        return steps, batch * self.accumulation

    def _batch(self, settings: dict[str, Any]) -> int:
        """The per-device batch of ``settings`` (``auto`` and unset: the default, 32)."""
        batch = settings.get("train.per_device_train_batch_size", self.pinned.get("train.per_device_train_batch_size"))
        if isinstance(batch, str) and batch.strip().isdigit():
            batch = int(batch)
        return batch if isinstance(batch, int) and not isinstance(batch, bool) and batch > 0 else int(TrainConfig().per_device_train_batch_size)

    def non_embedding(self, ref: str) -> int:
        """Non-embedding parameters of candidate ``ref`` (0 when it is not a candidate)."""
        return next((c.non_embedding for c in self.candidates if c.ref == ref), 0)


class TrialReporter:
    """Trainer callback: report each evaluation to the optuna trial; prune; stop at the deadline.

    Called as ``reporter(trainer, state)`` after every optimizer step (see
    :class:`deltatune.training.Trainer`). Right after an evaluation
    (``state.last_eval_step == state.global_step``) it reports the metric and asks the pruner,
    which stops the trial by raising :class:`optuna.TrialPruned` (that leaves the training loop
    like any exception: the run directory keeps config.yaml and metrics.jsonl up to that step,
    and no model/eval.json). A ``protected`` trial (the default one) is reported but never pruned.

    Then, at every step, it checks ``deadline`` (``time.monotonic()`` seconds), for every trial:
    past it, a trial that has evaluated is stopped cleanly (``state.early_stopped``): the
    trainer restores its best evaluated weights, saves them, and the run's final evaluation is
    the trial's value (its note says it was stopped by the time budget); a trial that has not
    evaluated yet is incomplete and raises :class:`optuna.TrialPruned`, except a ``protected``
    one (the default trial, the one result a search must return): it is stopped cleanly too and
    evaluated there, its note saying it is incomplete.

    Args:
        trial: the optuna trial.
        metric: the metric name in the evaluation dict (e.g. ``accuracy``).
        deadline: ``time.monotonic()`` seconds, or ``None``.
        protected: never pruned by the median rule (the default trial).
        first_report: reports already made for this trial (a restarted run numbers on).
    """

    def __init__(self, trial, metric: str, deadline: Optional[float] = None, protected: bool = False, first_report: int = 0):
        self.trial = trial
        self.metric = metric
        self.deadline = deadline
        self.protected = protected
        self.reports = first_report
        self.evaluations = 0  # of this run

    def __call__(self, trainer, state) -> None:
        import optuna

        if state.last_eval_step == state.global_step and self.metric in state.last_eval_metrics:
            self.reports += 1
            self.evaluations += 1
            value = float(state.last_eval_metrics[self.metric])
            self.trial.report(value, self.reports)
            if not self.protected and self.trial.should_prune():
                note = f"pruned at evaluation {self.reports} (step {state.global_step}): {self.metric} {value:.4f} below the median"
                add_note(self.trial, note)
                raise optuna.TrialPruned(note)
        if self.deadline is None or time.monotonic() <= self.deadline or state.global_step >= trainer.total_steps:
            return  # (after the last step the run ends anyway, with its usual final evaluation)
        where = f"step {state.global_step} of {trainer.total_steps}"
        if self.evaluations:
            add_note(self.trial, f"stopped by the time budget at {where}; the best of its {self.evaluations} evaluations counts")
            self.trial.set_user_attr("budget_stopped", True)
            state.early_stopped = True
            return
        note = f"incomplete: stopped by the time budget at {where}, before its first evaluation"
        self.trial.set_user_attr("budget_stopped", True)
        if self.protected:
            add_note(self.trial, f"{note}; evaluated there")
            state.early_stopped = True
            return
        add_note(self.trial, note)
        raise optuna.TrialPruned(note)


def add_note(trial, note: str) -> None:
    """Append ``note`` to the trial's ``note`` user attribute (``; ``-separated)."""
    old = trial.user_attrs.get("note")
    trial.set_user_attr("note", f"{old}; {note}" if old else note)


def make_objective(
    space: SearchSpace,
    base: dict[str, Any],
    out: Path,
    metric: str,
    budget: TimeBudget,
    train: Callable[..., Any],
    train_rows: int = 0,
) -> Callable[[Any], float]:
    """The optuna objective: one ``deltatune.finetune`` run per trial in ``out/trials/trial-NNN``.

    With a deadline in ``budget``, a trial other than the default one is estimated before it
    starts (:meth:`TimeBudget.estimate`, from the trials timed so far) and not started when the
    estimate does not fit the time left (pruned, ``note`` "not started: ..."); the default trial
    is timed on its first steps and restarted shortened when it cannot fit
    (:class:`deltatune.auto.timing.DefaultTrialPlanner`; ``train.max_steps`` in its config.yaml,
    user attribute ``shortened``); every trial is stopped at the deadline (:class:`TrialReporter`).

    Args:
        base: the flattened base config (dotted keys) shared by all trials.
        budget: the search's :class:`TimeBudget`; each trial's timing is recorded into it.
        train: :func:`deltatune.finetune` (a parameter so tests can wrap it).
        train_rows: rows of training data (for the hint when the default trial does not fit).

    Returns:
        ``objective(trial) -> float``: the run's final validation ``metric`` (the best evaluated
        weights are the run's model). Each trial gets user attributes ``path``, ``settings``,
        ``model``, ``seconds``, ``timing``, ``estimated_seconds`` (when estimated), ``test``
        (test-split metrics) and, when stopped early or shortened, ``note``/``error``.
    """

    def objective(trial) -> float:
        settings = space.suggest(trial)
        path = out / "trials" / f"trial-{trial.number:03d}"
        merged = {**base, **settings}
        run_settings = {
            **merged,
            "output_dir": str(path),
            "name": path.name,
            "eval.eval_strategy": "steps",
            "eval.eval_steps": space.eval_steps(merged),
        }
        if "train.save_steps" not in base:  # no resumable checkpoints in trials: they cost time and disk
            run_settings["train.save_steps"] = NO_CHECKPOINTS
        model, method = run_settings["model.name_or_path"], run_settings["delta.method"]
        trial.set_user_attr("path", str(path))
        trial.set_user_attr("settings", settings)
        trial.set_user_attr("model", model)
        baseline = bool(trial.user_attrs.get("baseline"))
        steps, per_step = space.planned_steps(merged)
        size = space.non_embedding(model)
        if budget.left() <= 0:  # optuna starts one trial even when its timeout has passed
            _not_started(trial, "not started: the time budget was used up before it")
        if not baseline and budget.deadline is not None:
            estimate = budget.estimate(steps, per_step, steps // run_settings["eval.eval_steps"], method, size)
            if estimate is not None:
                trial.set_user_attr("estimated_seconds", round(estimate, 1))
                if not budget.fits(estimate):
                    left = format_seconds(max(budget.left(), 0.0))
                    _not_started(trial, f"not started: needs ~{format_seconds(estimate)}, {left} of the budget left")
        clock = StepClock(size, method)
        reporter = TrialReporter(trial, metric, budget.deadline, protected=baseline)
        callbacks: tuple = (clock, reporter)
        if baseline and budget.deadline is not None:
            planner = DefaultTrialPlanner(clock, budget, run_settings["eval.eval_steps"], space.evals_per_epoch, train_rows)
            callbacks = (clock, planner, reporter)
        start = clock.started
        try:
            try:
                run = train(None, run_settings, overwrite=True, callbacks=callbacks, verbose=False)
            except ShortenTrial as short:
                budget.record(clock.timing())
                run_settings["train.max_steps"] = short.steps
                run_settings["eval.eval_steps"] = max(1, short.steps // space.evals_per_epoch)
                trial.set_user_attr("shortened", {"steps": short.steps, "planned": short.planned})
                add_note(trial, f"shortened to {short.steps} of {short.planned} steps to fit the time budget")
                clock = StepClock(size, method)
                reporter = TrialReporter(trial, metric, budget.deadline, protected=baseline, first_report=reporter.reports)
                run = train(None, run_settings, overwrite=True, callbacks=(clock, reporter), verbose=False)
            clock.stop()
        except Exception as e:
            if type(e).__name__ != "TrialPruned":
                trial.set_user_attr("error", str(e).splitlines()[0] if str(e) else type(e).__name__)
                trial.set_user_attr("error_kind", "input" if isinstance(e, DeltatuneError) else "runtime")
            raise
        finally:
            trial.set_user_attr("seconds", round(time.monotonic() - start, 2))
            timing = clock.timing()
            budget.record(timing)
            if timing is not None:
                trial.set_user_attr("timing", timing.as_dict())
        if run.result is not None and run.result.interrupted:
            raise KeyboardInterrupt
        if "test" in run.metrics:
            trial.set_user_attr("test", _scalars(run.metrics["test"]))
        trial.set_user_attr("validation", _scalars(run.metrics["validation"]))
        return float(run.metrics["validation"][metric])

    return objective


def _not_started(trial, note: str) -> None:
    """Record why the trial was not started and raise :class:`optuna.TrialPruned` (state ``PRUNED``)."""
    import optuna

    add_note(trial, note)
    trial.set_user_attr("skipped", True)
    trial.set_user_attr("seconds", 0.0)
    raise optuna.TrialPruned(note)


def shortest_trial_seconds(space: SearchSpace, budget: TimeBudget) -> Optional[float]:
    """Estimated seconds of the cheapest trial the space holds (fewest epochs, largest batch, any
    method and candidate), ``None`` before any trial was timed."""
    settings: dict[str, Any] = {"train.per_device_train_batch_size": max(space.batch_sizes), "train.num_train_epochs": EPOCHS[0]}
    settings = {**settings, **space.pinned}
    steps, per_step = space.planned_steps(settings)
    evaluations = steps // space.eval_steps(settings)
    estimates = [
        budget.estimate(steps, per_step, evaluations, m, c.non_embedding)
        for c in space.candidates for m in space.methods if m in c.methods
    ]
    known = [e for e in estimates if e is not None]
    return min(known) if known else None


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
