"""``deltatune.auto()``: infer the task, choose models, search hyperparameters, keep the best run.

Layout of the output folder (``output_dir``, default ``runs/auto``)::

    optuna.db              the study (optuna RDB storage; any optuna URL via ``storage``)
    trials/trial-NNN/      one normal run directory per trial (config.yaml, metrics.jsonl,
                           eval.json; model/ only for the best unless keep_all)
    best -> trials/...     the best trial
    leaderboard.csv/.json  every trial: parameters, metric, time, state
    auto_report.json       inference, candidates, search space, leaderboard, best, importances
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from deltatune.auto.budget import format_seconds, parse_duration, parse_memory
from deltatune.auto.candidates import DEFAULT_MODELS, choose_candidates, method_family, model_family
from deltatune.auto.infer import SAMPLE_ROWS, few_shot_reason, infer_task, task_family
from deltatune.auto.report import (
    format_importances,
    format_leaderboard,
    importances,
    leaderboard,
    prune_trial_folders,
    write_leaderboard,
)
from deltatune.auto.search import SEARCHED_KEYS, SearchSpace, make_objective, shortest_trial_seconds
from deltatune.auto.timing import TimeBudget
from deltatune.config import RunConfig, apply_overrides, build_config, flatten_dict, read_yaml
from deltatune.delta.registry import METHOD_NAMES, searched_methods
from deltatune.errors import DeltatuneError
from deltatune.files import write_atomically
from deltatune.report import write_report

DEFAULT_TRIALS = 10
MAX_SKIPPED_IN_A_ROW = 3  # sampled trials in a row too long for the time left: the search ends
STUDY_NAME = "deltatune-auto"


@dataclass
class AutoResult:
    """The outcome of :func:`auto`.

    Attributes:
        path: the output folder.
        task: the task searched.
        metric: the validation metric optimized; ``maximize`` its direction.
        best_path: the best trial's run directory (``None`` when no trial completed).
        best_value, baseline_value: validation metric of the best and of the hand-set default trial.
        leaderboard: rows of :func:`deltatune.auto.report.leaderboard`.
        report: the content of auto_report.json.
    """

    path: Path
    task: str
    metric: str
    maximize: bool
    best_path: Optional[Path]
    best_value: Optional[float]
    baseline_value: Optional[float]
    leaderboard: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)



def _user_settings(config, overrides) -> dict[str, Any]:
    """The keys the user set (YAML/dict/RunConfig plus overrides), flattened to dotted keys."""
    if isinstance(config, RunConfig):
        data = config.to_dict()
    elif isinstance(config, (str, Path)):
        data = read_yaml(config)
    else:
        data = dict(config or {})
    if overrides:
        data = apply_overrides(data, overrides)
    return flatten_dict(data)


def _metric(cfg: RunConfig, task) -> tuple[str, bool]:
    """The metric that picks the best run and its direction (as :class:`deltatune.training.Trainer` decides)."""
    ec = cfg.eval
    metric = ec.metric_for_best_model or task.default_metric
    if ec.greater_is_better is not None:
        return metric, ec.greater_is_better
    return metric, task.greater_is_better if metric == task.default_metric else metric != "loss"


def _open_study(storage: str, name: str, resume: bool, seed: int, maximize: bool, attrs: dict[str, Any]):
    """Create (or, with ``resume``, load) the optuna study in ``storage``.

    Raises:
        DeltatuneError: the storage cannot be opened (bad URL, missing driver), there is no
            study to resume, the study exists already without ``resume``, or it was made for
            another task or metric.
    """
    try:
        return _open_study_unchecked(storage, name, resume, seed, maximize, attrs)
    except DeltatuneError:
        raise
    except Exception as e:  # optuna/sqlalchemy: unknown dialect, unreachable server, bad path
        first = str(e).splitlines()[0] if str(e) else ""
        raise DeltatuneError(f"cannot open the optuna storage {storage!r}: {type(e).__name__}: {first}") from None


def _open_study_unchecked(storage: str, name: str, resume: bool, seed: int, maximize: bool, attrs: dict[str, Any]):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials are reported by deltatune, one line each
    # active once the default trial has completed; never at a trial's first evaluation (a longer
    # schedule starts slower than the 1-epoch default at the same fraction of an epoch)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=2)
    direction = "maximize" if maximize else "minimize"
    existing = 0
    if resume:
        try:
            existing = len(optuna.load_study(study_name=name, storage=storage).trials)
        except KeyError:
            raise DeltatuneError(f"nothing to resume: no study '{name}' in {storage}; start without --resume") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # a resumed session must not replay the first session's random start-up samples
        sampler = optuna.samplers.TPESampler(seed=seed + existing, n_startup_trials=4, multivariate=True, group=True)
    if resume:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        for key in ("task", "metric"):
            if study.user_attrs.get(key) != attrs[key]:
                raise DeltatuneError(
                    f"cannot resume study '{name}': it was made for {key} {study.user_attrs.get(key)!r}, now {attrs[key]!r}; "
                    "resume with the same data and options"
                )
        for t in study.trials:  # a previous session killed mid-trial leaves it RUNNING
            if t.state == optuna.trial.TrialState.RUNNING:
                study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        return study
    try:
        study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner, direction=direction)
    except optuna.exceptions.DuplicatedStudyError:
        raise DeltatuneError(f"study '{name}' already exists in {storage}; continue it with --resume or choose another --storage/--study-name") from None
    for k, v in attrs.items():
        study.set_user_attr(k, v)
    return study


def auto(
    config: str | Path | dict[str, Any] | RunConfig | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    *,
    models: Optional[list[str]] = None,
    methods: Optional[list[str]] = None,
    max_memory: str | int | None = None,
    time_budget: str | float | None = None,
    n_trials: Optional[int] = None,
    storage: Optional[str] = None,
    study_name: str = STUDY_NAME,
    resume: bool = False,
    keep_all: bool = False,
    evals_per_epoch: int = 2,
    verbose: bool = True,
    train: Callable[..., Any],
) -> AutoResult:
    """Fine-tune with the task, model and hyperparameters chosen automatically.

    Infers the task and columns from the training data (:mod:`deltatune.auto.infer`) unless
    ``task`` is set, checks the candidate models against the budgets
    (:mod:`deltatune.auto.candidates`), runs the hand-set default configuration as trial 0 and
    then a TPE search with median pruning (:mod:`deltatune.auto.search`) until ``n_trials``
    trials ran in this session or ``time_budget`` is used up, and writes the leaderboard,
    parameter importances and auto_report.json (:mod:`deltatune.auto.runner` has the layout).

    Time budget (:mod:`deltatune.auto.timing`): the default trial is timed on its first steps
    and the estimate printed; when it cannot fit the time left it restarts shortened to the
    steps that fit (``train.max_steps``), with what would make it fit whole (a bigger budget,
    ``--max-train-samples``, a smaller model). Every later trial is estimated from the trials
    timed so far and not started when it cannot fit; the search ends when not even the
    shortest trial fits, or after :data:`MAX_SKIPPED_IN_A_ROW` trials in a row did not. A trial
    still running at the deadline is stopped after the step in progress: with an evaluation
    behind it, its best evaluated weights are its model and count (note "stopped by the time
    budget"); otherwise it is incomplete (pruned), but for the default trial, which is
    evaluated where it stopped so that the search returns a model. So the call ends within
    ``time_budget`` plus one trial's wrap-up: the optimizer step and the evaluation in
    progress at the deadline, restoring and saving the stopped trial's weights and its final
    validation/test evaluation, then writing the leaderboard and report (no training starts
    after the deadline). Measured with the packaged minilm on 2 CPU cores shared with other
    jobs (speed swung 20-fold): a step (batch 32) 0.2-5 s, an evaluation of 30-300 examples
    0.8-7 s, the wrap-up 1.5-5.5 s, the report under 1 s: at most ~20 s past the budget. The
    budget counts from this call: ``deltatune auto`` first spends ~5-10 s importing torch.

    Args:
        config: a base config (YAML path, dict or :class:`RunConfig`); keys set here or in
            ``overrides`` are kept fixed (a searched key set by the user is not searched).
            ``data.train_file`` is required; ``output_dir`` is the search folder.
        overrides: dotted ``key=value`` strings or a dict.
        models: candidate model references (default: ``model.name_or_path`` if set, else the
            packaged default for the task's family: minilm for encoder tasks, smollm2 for
            generative ones).
        methods: Δθ methods to search, any of :data:`deltatune.delta.registry.METHODS`
            (default: those whose ``searched_for`` names the task's family: ``full`` and
            ``lora`` for encoder tasks, ``lora`` for decoder tasks).
        max_memory: bytes (or ``"8GB"``) for model states; candidates/methods that need more
            are skipped, with the reason printed.
        time_budget: seconds (or ``"20m"``) for the whole search, set-up included.
        n_trials: trials to run in this session (default 10 without a time budget, else unlimited).
        storage: optuna storage URL (default ``sqlite:///<output_dir>/optuna.db``).
        resume: continue the study in ``storage`` (adds trials; the default trial is not rerun).
        keep_all: keep every trial's model/ and checkpoints/ (default: only the best model).
        evals_per_epoch: intermediate evaluations per epoch, the pruning points.
        verbose: print the reasoning, one line per finished trial and the leaderboard.
        train: the function that runs one trial: :func:`deltatune.api.finetune`, passed in by
            :func:`deltatune.api.auto` (``deltatune.auto``), since auto sits below the API layer.

    Returns:
        :class:`AutoResult`.

    Raises:
        DeltatuneError: no training data; a task that cannot be inferred (the message names the
            columns found and the flags to pass); no candidate fits; an output folder that
            already holds a search (without ``resume``); a study to resume that does not exist
            or was made for another task or metric.
    """
    import optuna  # noqa: F401 (imported before the clock starts: the budget counts the search, not this import)

    start = time.monotonic()
    say: Callable[[str], None] = (lambda s: print(s, flush=True)) if verbose else (lambda s: None)
    budget, memory = _check_arguments(time_budget, max_memory, evals_per_epoch, n_trials, methods)
    user = _user_settings(config, overrides)
    out, train_file = _output_folder(user, resume, storage)
    ds, sample = _read_sample(user, train_file)
    inference, refs, trust = _infer(user, models, ds, sample, train_file, say)
    kept, skipped, methods = _choose_models(user, refs, methods, inference.task, ds, sample, memory, budget, trust, say)
    plan = _plan_search(user, inference, kept, skipped, methods, ds, train_file, evals_per_epoch, say)
    study, storage = _start_study(out, storage, study_name, resume, plan)
    timebox = TimeBudget(budget, start, say)
    if n_trials is None and budget is None:
        n_trials = DEFAULT_TRIALS
    objective = make_objective(plan.space, plan.base, out, plan.metric, timebox, train, train_rows=len(ds))
    interrupted = _run_trials(study, objective, n_trials, _AfterTrial(plan, timebox, keep_all, say), timebox, say)
    _check_default_trial(study)
    outcome = _collect_results(study, plan, out, keep_all)
    report = _report(plan, outcome, study, study_name, storage, budget, start, interrupted, out)
    _write_results(outcome.rows, report, out)
    _print_results(plan, outcome, report, out, say)
    best, baseline = outcome.best, outcome.baseline
    return AutoResult(
        out, inference.task, plan.metric, plan.maximize, outcome.best_path,
        best.value if best else None, baseline.value if baseline else None, outcome.rows, report,
    )


@dataclass
class _Plan:
    """What the search was set up with: the inferred task, the candidates, the base config shared by
    all trials (dotted keys), the keys the user pinned, the metric and the search space."""

    inference: Any
    kept: list[Any]
    skipped: list[Any]
    base: dict[str, Any]
    pinned: dict[str, Any]
    seed: int
    metric: str
    maximize: bool
    space: SearchSpace


@dataclass
class _Outcome:
    """The search's results: leaderboard rows, the best and the default trial (optuna ``FrozenTrial``
    or ``None``), parameter importances, bytes freed by pruning trial folders, the best run's folder."""

    rows: list[dict[str, Any]]
    best: Any
    baseline: Any
    importances: dict[str, Any]
    freed: int
    best_path: Optional[Path]


def _check_arguments(
    time_budget: str | float | None, max_memory: str | int | None, evals_per_epoch: int, n_trials: Optional[int], methods: Optional[list[str]]
) -> tuple[Optional[float], Optional[int]]:
    """Step 1 of :func:`auto`: check the search's own arguments.

    Returns:
        ``(budget, memory)``: the time budget in seconds and the memory limit in bytes (``None``: none).

    Raises:
        DeltatuneError: an unparsable budget or memory, ``evals_per_epoch`` or ``n_trials`` below 1,
            an unknown method.
    """
    budget = parse_duration(time_budget) if time_budget is not None else None
    memory = parse_memory(max_memory) if max_memory is not None else None
    if evals_per_epoch < 1:
        raise DeltatuneError("evals_per_epoch must be at least 1")
    if n_trials is not None and n_trials < 1:
        raise DeltatuneError(f"--n-trials must be at least 1 (got {n_trials}); leave it out to search until --time-budget")
    unknown = [m for m in methods or [] if m not in METHOD_NAMES]
    if unknown:
        raise DeltatuneError(f"unknown --methods '{unknown[0]}'; choose from {', '.join(METHOD_NAMES)}")
    return budget, memory


def _output_folder(user: dict[str, Any], resume: bool, storage: Optional[str]) -> tuple[Path, Any]:
    """Step 2 of :func:`auto`: the search folder (``output_dir`` and ``name`` are taken out of ``user``)
    and the training data reference.

    Raises:
        DeltatuneError: a non-empty folder without ``resume`` (and no other ``storage``); no training data.
    """
    out = Path(user.pop("output_dir", None) or Path("runs") / str(user.get("name") or "auto"))
    user.pop("name", None)
    if not resume and storage is None and out.exists() and any(out.iterdir()):
        raise DeltatuneError(f"{out} is not empty; continue its search with --resume or choose another --output-dir")
    train_file = user.get("data.train_file")
    if not train_file:
        raise DeltatuneError("no training data: pass --train FILE (or set data.train_file)")
    return out, train_file


def _read_sample(user: dict[str, Any], train_file: Any) -> tuple[Any, list[dict[str, Any]]]:
    """Step 3 of :func:`auto`: the training data (``datasets.Dataset``, cut to ``data.max_train_samples``)
    and its first :data:`deltatune.auto.infer.SAMPLE_ROWS` rows as dicts.

    Raises:
        DeltatuneError: unreadable training data.
    """
    from deltatune.data import load_table

    ds = load_table(str(train_file), split="train", config_name=user.get("data.dataset_config_name"))
    if user.get("data.max_train_samples"):
        ds = ds.select(range(min(int(user["data.max_train_samples"]), len(ds))))
    sample = ds.select(range(min(SAMPLE_ROWS, len(ds)))).to_list()
    return ds, sample


def _infer(
    user: dict[str, Any], models: Optional[list[str]], ds, sample: list[dict[str, Any]], train_file: Any, say: Callable[[str], None]
) -> tuple[Any, list[str], bool]:
    """Step 4 of :func:`auto`: infer the task and columns (what the user set wins) and print the reasons.

    Returns:
        ``(inference, refs, trust)``: the :class:`deltatune.auto.infer` result, the model references
        given (may be empty) and whether remote code is trusted.

    Raises:
        DeltatuneError: models given both ways; a task that cannot be inferred.
    """
    from deltatune.models import resolve_model
    from deltatune.models.loading import load_config

    if models and user.get("model.name_or_path"):
        raise DeltatuneError("give the models either with --models or with --model / model.name_or_path, not both")
    refs = list(models or ([user["model.name_or_path"]] if user.get("model.name_or_path") else []))
    trust = bool(user.get("model.trust_remote_code", False))
    family = model_family(load_config(resolve_model(refs[0]), trust)) if refs else None
    inference = infer_task(sample, ds.column_names, family, user.get("task"), source=str(train_file))
    for key, value in list(inference.settings.items()):  # what the user set wins, and the report says so
        if key in user and user[key] != value:
            inference.settings[key] = user[key]
            inference.reasons = [r for r in inference.reasons if repr(value) not in r and f"'{value}'" not in r]
            inference.reasons.append(f"{key} = {user[key]!r}: set by you (inferred: {value!r})")
    say(f"task: {inference.task}")
    for line in inference.reasons:
        say(f"  - {line}")
    return inference, refs, trust


def _choose_models(
    user: dict[str, Any], refs: list[str], methods: Optional[list[str]], task: str, ds, sample: list[dict[str, Any]],
    memory: Optional[int], budget: Optional[float], trust: bool, say: Callable[[str], None],
) -> tuple[list[Any], list[Any], list[str]]:
    """Step 5 of :func:`auto`: the candidate models and methods that fit the budgets, the reasons printed.

    Returns:
        ``(kept, skipped, methods)``: :class:`deltatune.auto.candidates` candidates and the methods asked for.

    Raises:
        DeltatuneError: no candidate fits.
    """
    if not refs:
        refs = [DEFAULT_MODELS[task_family(task)]]
        say(f"  - model: {refs[0]}, the packaged default for {task_family(task)} tasks (name others with --models)")
    if user.get("delta.method"):
        methods = [user["delta.method"]]
    methods = list(methods or searched_methods(method_family(task_family(task))))
    chars = sum(len(str(v)) for row in sample for v in row.values()) * len(ds) / max(len(sample), 1)
    kept, skipped = choose_candidates(refs, task, methods, memory, budget, int(chars), trust)
    for c in kept + skipped:
        for note in c.notes:
            say(f"  - {note}")
    if not kept:
        raise DeltatuneError(f"no candidate model fits: {'; '.join(c.notes[-1] for c in skipped)}")
    return kept, skipped, methods


def _plan_search(
    user: dict[str, Any], inference, kept: list[Any], skipped: list[Any], methods: list[str], ds, train_file: Any,
    evals_per_epoch: int, say: Callable[[str], None],
) -> _Plan:
    """Step 6 of :func:`auto`: the base config shared by all trials (checked by building it), the metric
    and the search space, printed.

    Raises:
        DeltatuneError: a bad key or value in the user's settings (before any training).
    """
    from deltatune.tasks import create_task

    base = {"task": inference.task, **inference.settings, "train.progress_bar": False, **user}
    base["model.name_or_path"] = kept[0].ref
    pinned = {k: user[k] for k in SEARCHED_KEYS if k in user}
    cfg = build_config(None, base)  # a bad key or value fails here, before any training
    task = create_task(cfg)
    task.fit(ds, str(train_file))
    few_shot = few_shot_reason(task.stratify_keys(ds)) if cfg.task == "text-classification" and "train.method" not in user else None
    if few_shot:  # few labelled rows per class: SetFit's recipe
        say(f"  - {few_shot}")
        base["train.method"] = "contrastive"
        cfg = build_config(None, base)
        task = create_task(cfg)
        task.fit(ds, str(train_file))
    metric, maximize = _metric(cfg, task)
    n_train = len(ds) if cfg.data.validation_file else len(ds) - min(max(1, round(len(ds) * cfg.data.validation_split)), len(ds) - 1)
    if cfg.train.method == "contrastive":  # an epoch is over the generated pairs (2 per row and iteration)
        n_train *= 2 * cfg.train.contrastive_iterations
    space = SearchSpace(
        kept, [m for m in methods if any(m in c.methods for c in kept)], pinned, n_train, evals_per_epoch,
        cfg.train.gradient_accumulation_steps,
    )
    say(f"search: {metric} on the validation split ({'maximize' if maximize else 'minimize'}); space {json.dumps({k: v for k, v in space.describe().items() if k != 'pinned'})}")
    if pinned:
        say(f"  - fixed by you: {', '.join(f'{k}={v}' for k, v in pinned.items())}")
    return _Plan(inference, kept, skipped, base, pinned, cfg.seed, metric, maximize, space)


def _start_study(out: Path, storage: Optional[str], study_name: str, resume: bool, plan: _Plan) -> tuple[Any, str]:
    """Step 7 of :func:`auto`: create the search folder and open the study (a failed start leaves
    nothing behind that would block the next one); the default trial is queued unless one ran.

    Returns:
        ``(study, storage)``: the optuna study and its storage URL.

    Raises:
        DeltatuneError: as :func:`_open_study`.
    """
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    default_db = out / "optuna.db"
    db_existed = default_db.exists()
    storage = storage or f"sqlite:///{default_db.resolve()}"
    attrs = {"task": plan.inference.task, "metric": plan.metric, "base": plan.base}
    try:
        study = _open_study(storage, study_name, resume, plan.seed, plan.maximize, attrs)
    except DeltatuneError:
        if created:  # nothing of this failed start may block the next one
            shutil.rmtree(out, ignore_errors=True)
        elif not db_existed and default_db.exists():
            default_db.unlink()
        raise
    if not any(t.user_attrs.get("baseline") and not t.user_attrs.get("skipped") for t in study.trials):
        study.enqueue_trial(plan.space.baseline_params(), user_attrs={"baseline": True})
    return study, storage


class _AfterTrial:
    """The optuna callback after each trial: print its line, free disk (unless ``keep_all``), and
    stop the search when the default trial failed on the input or the time budget cannot fit
    another trial (:data:`MAX_SKIPPED_IN_A_ROW` skipped in a row ends it too)."""

    def __init__(self, plan: _Plan, timebox: TimeBudget, keep_all: bool, say: Callable[[str], None]):
        self.plan = plan
        self.timebox = timebox
        self.keep_all = keep_all
        self.say = say
        self.skipped_in_a_row = 0

    def __call__(self, study, trial) -> None:
        """Called by ``study.optimize`` with the study and the optuna ``FrozenTrial`` just finished."""
        import optuna

        self._print(trial)
        if not self.keep_all:
            _tidy(study, trial)
        if trial.user_attrs.get("baseline") and trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs.get("error_kind") == "input":
            study.stop()  # the data or config is at fault: every trial would fail the same way
            return
        self.skipped_in_a_row = self.skipped_in_a_row + 1 if trial.user_attrs.get("skipped") else 0
        if self.timebox.deadline is not None:
            self._stop_when_out_of_time(study)

    def _print(self, trial) -> None:
        """One line for a finished trial: its metric (or state), time, settings and note."""
        note = trial.user_attrs.get("note") or trial.user_attrs.get("error") or ""
        value = f"{self.plan.metric} {trial.value:.4f}" if trial.value is not None else trial.state.name.lower()
        settings = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in trial.user_attrs.get("settings", {}).items())
        self.say(f"trial {trial.number}{' (default)' if trial.user_attrs.get('baseline') else ''}: {value} in "
                 f"{format_seconds(trial.user_attrs.get('seconds', 0.0))} | {settings}{' | ' + note if note else ''}")

    def _stop_when_out_of_time(self, study) -> None:
        """Stop the study when the budget is used up, cannot fit the shortest trial, or too many trials
        in a row were skipped for the time left."""
        timebox = self.timebox
        left = format_seconds(max(timebox.left(), 0.0))
        shortest = shortest_trial_seconds(self.plan.space, timebox)
        if timebox.left() <= 0:
            self.say("auto: the time budget is used up: the search ends")
            study.stop()
        elif shortest is not None and not timebox.fits(shortest):
            self.say(f"auto: {left} of the budget left, less than the shortest trial needs (~{format_seconds(shortest)}): the search ends")
            study.stop()
        elif self.skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
            self.say(f"auto: {self.skipped_in_a_row} sampled trials in a row needed more than the {left} left: the search ends")
            study.stop()


def _run_trials(study, objective: Callable, n_trials: Optional[int], after_trial: _AfterTrial, timebox: TimeBudget, say: Callable[[str], None]) -> bool:
    """Step 8 of :func:`auto`: run the trials until ``n_trials``, the deadline, or a stop.

    Returns:
        Whether the search was interrupted (Ctrl-C): the trials so far are still reported.
    """
    deadline = timebox.deadline
    timeout = max(deadline - time.monotonic(), 1.0) if deadline is not None else None
    try:
        study.optimize(objective, n_trials=n_trials, timeout=timeout, catch=(DeltatuneError, RuntimeError), callbacks=[after_trial])
    except KeyboardInterrupt:
        say("interrupted: reporting the trials so far (continue with --resume)")
        return True
    return False


def _check_default_trial(study) -> None:
    """Step 9 of :func:`auto`: when the default trial failed on the input and nothing completed, say so.

    Raises:
        DeltatuneError: the default trial's error, as every trial would fail the same way.
    """
    import optuna

    failed_default = next(
        (t for t in study.trials if t.user_attrs.get("baseline") and t.user_attrs.get("error_kind") == "input"
         and t.state == optuna.trial.TrialState.FAIL), None,
    )
    if failed_default is not None and not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        raise DeltatuneError(f"the default trial failed, so every trial would: {failed_default.user_attrs['error']}")


def _collect_results(study, plan: _Plan, out: Path, keep_all: bool) -> _Outcome:
    """Step 10 of :func:`auto`: the leaderboard, the best and default trials and the importances; prune
    the other trials' folders (unless ``keep_all``) and link ``out/best``."""
    import optuna

    rows = leaderboard(study.trials, plan.metric, plan.maximize, plan.pinned)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = study.best_trial if complete else None
    baselines = [t for t in study.trials if t.user_attrs.get("baseline")]  # one, or one not started and its rerun
    baseline = next((t for t in baselines if not t.user_attrs.get("skipped")), baselines[0] if baselines else None)
    imp = importances(study)
    freed = 0 if keep_all else prune_trial_folders(rows, best.number if best else None)
    best_path = Path(best.user_attrs["path"]) if best else None
    if best_path is not None:
        _link_best(out, best_path)
    return _Outcome(rows, best, baseline, imp, freed, best_path)


def _report(
    plan: _Plan, outcome: _Outcome, study, study_name: str, storage: str, budget: Optional[float], start: float,
    interrupted: bool, out: Path,
) -> dict[str, Any]:
    """The content of auto_report.json (``seconds``: since ``start``, ``time.monotonic()``)."""
    best, baseline, best_path = outcome.best, outcome.baseline, outcome.best_path
    return {
        "task": plan.inference.task,
        "inference": {"settings": plan.inference.settings, "reasons": plan.inference.reasons},
        "candidates": [c.as_dict() for c in plan.kept],
        "skipped_candidates": [c.as_dict() for c in plan.skipped],
        "metric": plan.metric,
        "direction": "maximize" if plan.maximize else "minimize",
        "study": {"name": study_name, "storage": storage, "trials": len(study.trials)},
        "search_space": plan.space.describe(),
        "time_budget_seconds": budget,
        "trial_timings": {t.number: t.user_attrs["timing"] for t in study.trials if "timing" in t.user_attrs},
        "seconds": round(time.monotonic() - start, 1),
        "interrupted": interrupted,
        "baseline": {"trial": baseline.number, "value": baseline.value, "state": baseline.state.name} if baseline else None,
        "best": None if best is None else {
            "trial": best.number,
            "value": best.value,
            "path": str(best_path),
            "config": str(best_path / "config.yaml"),
            "settings": best.user_attrs.get("settings", {}),
            "test": best.user_attrs.get("test", {}),
            "reproduce": f"deltatune train {best_path / 'config.yaml'} --output-dir {out / 'reproduced'}",
        },
        "importances": outcome.importances,
        "freed_bytes": outcome.freed,
        "leaderboard": outcome.rows,
    }


def _write_results(rows: list[dict[str, Any]], report: dict[str, Any], out: Path) -> None:
    """Step 11 of :func:`auto`: write leaderboard.csv/.json, auto_report.json and report.html
    (:mod:`deltatune.report`: leaderboard, optimization history, importances, the best trial) into ``out``.
    A report that cannot be written is a warning: the search's results are already saved."""
    write_leaderboard(rows, out)
    write_atomically(out / "auto_report.json", lambda f: f.write(json.dumps(report, indent=2, default=str)))
    try:
        write_report([out])
    except Exception as e:  # noqa: BLE001 - the search's results are saved: no report bug may fail it
        what = str(e) if isinstance(e, (DeltatuneError, OSError)) else f"{type(e).__name__}: {e}"
        print(f"warning: report.html not written ({what}); write it later with: deltatune report {out}", file=sys.stderr)


def _print_results(plan: _Plan, outcome: _Outcome, report: dict[str, Any], out: Path, say: Callable[[str], None]) -> None:
    """Step 12 of :func:`auto`: print the leaderboard, the importances, the best run and the report's path."""
    rows, best, baseline = outcome.rows, outcome.best, outcome.baseline
    test_metric = plan.metric if any(plan.metric in r["test"] for r in rows) else None
    say(format_leaderboard(rows, test_metric))
    say(format_importances(outcome.importances))
    if best is not None:
        base_txt = f"; the default (trial {baseline.number}) got {baseline.value:.4f}" if baseline is not None and baseline.value is not None else ""
        say(f"best: trial {best.number}, {plan.metric} {best.value:.4f}{base_txt}")
        say(f"best run: {outcome.best_path} (reproduce: {report['best']['reproduce']})")
    else:
        say("no trial completed; see the notes in the leaderboard")
    say(f"report: {out / 'report.html'} (data: {out / 'auto_report.json'})")


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _tidy(study, trial) -> None:
    """Free disk as trials finish: no trial keeps checkpoints/, only the best so far keeps model/."""
    try:
        best = study.best_trial.number
    except ValueError:
        best = None
    rows = [{"trial": t.number, "path": t.user_attrs.get("path")} for t in study.trials if t.state.is_finished()]
    prune_trial_folders(rows, best)


def _link_best(out: Path, best_path: Path) -> None:
    """``out/best`` → the best trial's folder (a relative symlink; skipped where links are not allowed)."""
    link = out / "best"
    try:
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(best_path, out), target_is_directory=True)
    except OSError:
        pass
