"""``deltatune curve``: train at several fractions of the training rows and fit how the metric grows.

Layout of the output folder (default ``<output_dir>-curve``)::

    curve_config.yaml          the base config every point shares (without data.train_fraction/subset_seed)
    frac-0.250-seed-1/         one normal run directory per (fraction, seed): config.yaml records
                               data.train_fraction and data.subset_seed, so ``deltatune train
                               frac-0.250-seed-1/config.yaml`` reproduces the point
    curve.json                 points, the fit, the leave-last-out check, the gain from 2x data
    curve.html                 the table and the plot (metric vs training rows, log x axis)

Every point is evaluated on the same validation rows: the validation split is fixed by ``seed``
before ``data.train_fraction`` takes its subset (:func:`deltatune.api._load_splits`), and the
curve's seeds are subset seeds (``data.subset_seed`` 0, 1, ...), never the run's ``seed``. At
fraction 1 every subset seed selects all the rows, so that fraction is trained once (seed 0).

Resumable: a point whose eval.json exists is read, not retrained; an unfinished one continues
from its newest checkpoint, or starts again when it has none. A folder made with another base
config is refused. Torch-free to import; the training function comes from the caller
(:func:`deltatune.api.finetune`), as :mod:`deltatune.auto` gets it.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from deltatune.config import RunConfig, build_config, flatten_dict, read_yaml
from deltatune.errors import DeltatuneError
from deltatune.files import write_atomically

DEFAULT_FRACTIONS = (0.1, 0.25, 0.5, 1.0)
CONFIG_FILE = "curve_config.yaml"
# keys that may differ between sessions of one curve: where it lives, what each point sets, display
_NOT_COMPARED = {
    "output_dir", "name", "data.train_fraction", "data.subset_seed", "train.progress_bar", "train.log_interval_seconds",
    "model.trust_remote_code", "model.allow_pickle_weights", "train.micro_batch_size",
}


@dataclass
class CurveResult:
    """The outcome of :func:`curve`: the folder, curve.json's content, and whether it was interrupted."""

    path: Path
    data: dict[str, Any]
    interrupted: bool = False
    trained: list[Path] = field(default_factory=list)


def parse_fractions(value: str | Sequence[float]) -> list[float]:
    """``--fractions``: comma-separated numbers in (0, 1], no duplicates, any order; returned sorted.

    Raises:
        DeltatuneError: an empty list, a non-number, a value outside (0, 1] or a duplicate.
    """
    items = [t.strip() for t in value.split(",")] if isinstance(value, str) else list(value)
    if not items or items == [""]:
        raise DeltatuneError("--fractions is empty; give fractions of the training rows, e.g. --fractions 0.1,0.25,0.5,1.0")
    out: list[float] = []
    for item in items:
        try:
            f = float(item)
        except (TypeError, ValueError):
            raise DeltatuneError(f"--fractions: {item!r} is not a number; give fractions in (0, 1], e.g. 0.1,0.25,0.5,1.0") from None
        if not 0.0 < f <= 1.0:
            raise DeltatuneError(f"--fractions: {item} is outside (0, 1]; a fraction of the training rows is above 0 and at most 1")
        if any(abs(f - g) < 5e-4 for g in out):
            raise DeltatuneError(f"--fractions: {item} is given twice (folders are named to 3 decimals); give each fraction once")
        out.append(f)
    return sorted(out)


def check_seeds(seeds: int) -> int:
    """``--seeds``: subsets per fraction, at least 1.

    Raises:
        DeltatuneError: fewer than 1.
    """
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise DeltatuneError(f"--seeds must be a whole number of at least 1 (got {seeds!r}): the subsets drawn per fraction")
    return seeds


def point_name(fraction: float, seed: int) -> str:
    """The run folder of one point: ``frac-0.250-seed-1``."""
    return f"frac-{fraction:.3f}-seed-{seed}"


def _compared(cfg: RunConfig) -> dict[str, Any]:
    return {k: v for k, v in flatten_dict(cfg.to_dict()).items() if k not in _NOT_COMPARED}


@dataclass
class CurvePlan:
    """What :func:`plan_curve` checked: the base config, the output folder and the (fraction, seed) points."""

    cfg: RunConfig
    out: Path
    fractions: list[float]
    seeds: int
    points: list[tuple[float, int]]


def plan_curve(
    config: str | Path | dict[str, Any] | RunConfig | None,
    overrides: list[str] | dict[str, Any] | None,
    fractions: str | Sequence[float] = DEFAULT_FRACTIONS,
    seeds: int = 1,
    output_dir: str | Path | None = None,
) -> CurvePlan:
    """Check the curve's arguments, config and folder, touching nothing (torch-free: the CLI calls it first).

    Raises:
        DeltatuneError: bad ``fractions``/``seeds``; a bad config; ``data.train_fraction`` or
            ``data.subset_seed`` set in the config (the curve sets them per point); an output
            folder that is a file, holds something other than a curve, or holds a curve made
            with another base config (naming the first keys that differ).
    """
    fracs = parse_fractions(fractions)
    check_seeds(seeds)
    cfg = build_config(config, overrides)
    for key, default in (("train_fraction", 1.0), ("subset_seed", 0)):
        if getattr(cfg.data, key) != default:
            raise DeltatuneError(
                f"data.{key} is {getattr(cfg.data, key)!r} in the config, but deltatune curve sets it for each point "
                f"(--fractions, --seeds); drop it from the config"
            )
    out = Path(output_dir) if output_dir else Path(f"{str(cfg.output_dir).rstrip('/')}-curve")
    _check_folder(out, cfg)
    points = [(f, s) for f in fracs for s in (range(1) if f >= 1.0 else range(seeds))]
    return CurvePlan(cfg, out, fracs, seeds, points)


def _check_folder(out: Path, cfg: RunConfig) -> None:
    """Refuse an output folder this curve cannot use (see :func:`plan_curve`)."""
    if out.exists() and not out.is_dir():
        raise DeltatuneError(f"the curve folder {out} is an existing file; choose another --output-dir")
    if not out.is_dir() or not any(out.iterdir()):
        return
    saved_path = out / CONFIG_FILE
    if not saved_path.is_file():
        raise DeltatuneError(
            f"{out} exists and is not a deltatune curve folder (no {CONFIG_FILE}); choose another --output-dir"
        )
    try:
        saved = _compared(build_config(read_yaml(saved_path)))
    except DeltatuneError as e:
        raise DeltatuneError(f"{saved_path} cannot be read as a config ({e}); choose another --output-dir") from None
    now = _compared(cfg)
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if diff:
        k = diff[0]
        raise DeltatuneError(
            f"the curve in {out} was made with another config: it differs at {', '.join(diff[:5])} ({k}: "
            f"{saved.get(k)!r} there, {now.get(k)!r} now); continue it with the same config, or choose another --output-dir"
        )


def curve(
    config: str | Path | dict[str, Any] | RunConfig | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    *,
    fractions: str | Sequence[float] = DEFAULT_FRACTIONS,
    seeds: int = 1,
    output_dir: str | Path | None = None,
    verbose: bool = True,
    train: Callable[..., Any],
) -> CurveResult:
    """Train one run per (fraction, subset seed), then fit and write the learning curve.

    Args:
        config, overrides: the base config (as :func:`deltatune.api.finetune` takes them); every
            point is this config with ``output_dir``, ``data.train_fraction`` and ``data.subset_seed`` set.
        fractions: fractions of the training rows (after the validation split), in (0, 1].
        seeds: subset seeds per fraction below 1 (``data.subset_seed`` 0 .. seeds-1).
        output_dir: the curve folder (default ``<config's output_dir>-curve``).
        verbose: print a line per point and the table at the end.
        train: the function that trains one run: :func:`deltatune.api.finetune`.

    Returns:
        :class:`CurveResult`; curve.json and curve.html are written even when interrupted (Ctrl-C
        in a run: the points so far; run the same command again to continue).

    Raises:
        DeltatuneError: as :func:`plan_curve`, before anything is written; a point's training error.
    """
    say: Callable[[str], None] = (lambda s: print(s, flush=True)) if verbose else (lambda s: None)
    plan = plan_curve(config, overrides, fractions, seeds, output_dir)
    out, cfg = plan.out, plan.cfg
    out.mkdir(parents=True, exist_ok=True)
    saved_config = out / CONFIG_FILE
    if not saved_config.is_file():
        write_atomically(saved_config, lambda f: f.write(cfg.to_yaml()))
    evals: dict[tuple[float, int], Optional[dict[str, Any]]] = {}
    trained: list[Path] = []
    interrupted = False
    for fraction, seed in plan.points:
        path = out / point_name(fraction, seed)
        if interrupted:
            evals[(fraction, seed)] = None
            continue
        if (path / "eval.json").is_file():
            say(f"{path.name}: finished before, not retrained")
            evals[(fraction, seed)] = _read_eval(path)
            continue
        point = build_config(cfg.to_dict(), {"output_dir": str(path), "data.train_fraction": fraction, "data.subset_seed": seed})
        resume = path.is_dir() and _has_checkpoint(path)
        say(f"{path.name}: {'continuing from its checkpoint' if resume else 'training'}")
        start = time.monotonic()
        run = train(point, None, resume=resume, overwrite=not resume, verbose=False)
        trained.append(path)
        if run.result is not None and run.result.interrupted:
            interrupted = True
            evals[(fraction, seed)] = None
            say(f"interrupted in {path.name}: the points so far are written; run the same command again to continue")
            continue
        evals[(fraction, seed)] = _read_eval(path) if (path / "eval.json").is_file() else dict(run.metrics or {})
        say(f"{path.name}: done in {time.monotonic() - start:.1f} s")
    data = _curve_data(plan, evals)
    _write(out, data)
    if verbose:
        from deltatune.curve.report import format_table

        say(format_table(data))
        say(f"curve: {out / 'curve.html'} (data: {out / 'curve.json'})")
    return CurveResult(out, data, interrupted, trained)


def _has_checkpoint(path: Path) -> bool:
    """Whether an unfinished point's folder holds a complete checkpoint to continue from."""
    from deltatune.training.checkpoint import list_checkpoints

    ckpt = path / "checkpoints"
    return ckpt.is_dir() and bool(list_checkpoints(ckpt))


def _read_eval(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "eval.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DeltatuneError(
            f"{path / 'eval.json'} cannot be read ({e}); delete {path} and run the same command again to retrain that point"
        ) from None


def _metric(cfg: RunConfig, validation: dict[str, Any]) -> tuple[str, bool]:
    """The validation metric the curve follows and whether greater is better: ``eval.metric_for_best_model``,
    else the task's default metric (``f1_micro`` for multi-label classification), as the trainer picks it."""
    from deltatune.tasks import create_task

    task = create_task(cfg)
    metric = cfg.eval.metric_for_best_model
    if metric is None:
        metric = task.default_metric
        if metric not in validation and "f1_micro" in validation:  # multi-label classification (known once fitted)
            metric = "f1_micro"
    if metric not in validation:
        raise DeltatuneError(
            f"the runs' validation metrics have no {metric!r} (they have {', '.join(sorted(validation)) or 'none'}); "
            "set eval.metric_for_best_model to one of them"
        )
    if cfg.eval.greater_is_better is not None:
        return metric, cfg.eval.greater_is_better
    return metric, task.greater_is_better if metric in (task.default_metric, "f1_micro") else metric != "loss"


def _curve_data(plan: CurvePlan, evals: dict[tuple[float, int], Optional[dict[str, Any]]]) -> dict[str, Any]:
    """curve.json's content from the points' eval.json (``None``: not finished)."""
    from deltatune.curve.fit import fit_curve

    finished = [e for e in evals.values() if e]
    metric, maximize = _metric(plan.cfg, finished[0]["validation"]) if finished else ("?", True)
    points, validation_rows = [], None
    for (fraction, seed), ev in evals.items():
        files = (ev or {}).get("train", {}).get("data_files", {})
        value = (ev or {}).get("validation", {}).get(metric)
        validation_rows = validation_rows or files.get("validation", {}).get("rows")
        points.append({
            "fraction": fraction, "seed": seed, "train_rows": files.get("train", {}).get("rows"),
            "value": float(value) if isinstance(value, (int, float)) else None,
            "path": str(plan.out / point_name(fraction, seed)),
        })
    done = [p for p in points if p["value"] is not None and p["train_rows"] is not None]
    fit = fit_curve([p["train_rows"] for p in done], [p["value"] for p in done], maximize)
    return {
        "task": plan.cfg.task,
        "metric": metric,
        "direction": "maximize" if maximize else "minimize",
        "fractions": plan.fractions,
        "seeds": plan.seeds,
        "validation_rows": validation_rows,
        "config": {k: v for k, v in flatten_dict(plan.cfg.to_dict()).items() if k in ("model.name_or_path", "delta.method", "data.train_file", "seed")},
        "points": points,
        "fit": fit.as_dict(),
        "note": "seeds are subset seeds (data.subset_seed); fraction 1 uses every training row, so it is trained once",
    }


def _write(out: Path, data: dict[str, Any]) -> None:
    """curve.json, then curve.html (a page that cannot be drawn is a warning: curve.json has the results)."""
    from deltatune.curve.report import render_html

    write_atomically(out / "curve.json", lambda f: f.write(json.dumps(data, indent=2, default=str)))
    try:
        page = render_html(data)
        write_atomically(out / "curve.html", lambda f: f.write(page))
    except Exception as e:  # noqa: BLE001 - the results are saved in curve.json
        print(f"warning: curve.html not written ({type(e).__name__}: {e})", file=sys.stderr)
