"""Command line: ``deltatune train | auto | evaluate | predict | export | check``. Thin: parse, call :mod:`deltatune.api`, print.

Every :class:`DeltatuneError` is printed as one line ``error: ...`` with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from deltatune.errors import DeltatuneError

# flag -> dotted config key, for the settings people change most
FLAG_KEYS: dict[str, tuple[str, Any]] = {
    "task": ("task", str),
    "model": ("model.name_or_path", str),
    "decoder_model": ("model.decoder_name_or_path", str),
    "delta": ("delta.method", str),
    "train": ("data.train_file", str),
    "validation": ("data.validation_file", str),
    "test": ("data.test_file", str),
    "text_column": ("data.text_column", str),
    "text_pair_column": ("data.text_pair_column", str),
    "label_column": ("data.label_column", str),
    "target_column": ("data.target_column", str),
    "max_train_samples": ("data.max_train_samples", int),
    "max_seq_length": ("data.max_seq_length", int),
    "output_dir": ("output_dir", str),
    "name": ("name", str),
    "seed": ("seed", int),
    "epochs": ("train.num_train_epochs", float),
    "max_steps": ("train.max_steps", int),
    "learning_rate": ("train.learning_rate", float),
    "batch_size": ("train.per_device_train_batch_size", int),
    "gradient_accumulation_steps": ("train.gradient_accumulation_steps", int),
    "weight_decay": ("train.weight_decay", float),
    "mixed_precision": ("train.mixed_precision", str),
}


def _add_config_args(p: argparse.ArgumentParser, config_help: str) -> None:
    p.add_argument("config", nargs="?", help=config_help)
    p.add_argument("overrides", nargs="*", help="dotted overrides such as train.learning_rate=1e-4")
    for flag, (key, typ) in FLAG_KEYS.items():
        p.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=typ, default=None, help=f"sets {key}")
    p.add_argument("--set", dest="set_", action="append", default=[], metavar="KEY=VALUE", help="any config key")


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a model (config file and/or flags)", description="Fine-tune and evaluate.")
    _add_config_args(p, "YAML config file (or, with --resume, the run directory)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--resume", action="store_true", help="continue the run from its newest checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _auto_parser(sub) -> None:
    p = sub.add_parser(
        "auto", help="infer the task, choose the model and search hyperparameters (optuna)",
        description="Infer the task from the data, check candidate models against the budgets, run the default "
        "configuration and a TPE search with median pruning; keep the best run.",
    )
    _add_config_args(p, "optional YAML base config (keys set there or by flags are not searched)")
    p.add_argument("--models", help="comma-separated candidate models (names, folders, hub ids)")
    p.add_argument("--methods", help="comma-separated delta methods to search (full,lora)")
    p.add_argument("--max-memory", help="memory for model states, e.g. 8GB; candidates that need more are skipped")
    p.add_argument("--time-budget", help="wall-clock budget for the whole search, e.g. 90s, 20m, 1h")
    p.add_argument("--n-trials", type=int, default=None, help="trials in this session (default 10 without --time-budget)")
    p.add_argument("--storage", help="optuna storage URL (default sqlite:///<output-dir>/optuna.db)")
    p.add_argument("--study-name", default="deltatune-auto")
    p.add_argument("--resume", action="store_true", help="continue the study, adding trials")
    p.add_argument("--keep-all", action="store_true", help="keep every trial's model and checkpoints")
    p.add_argument("--evals-per-epoch", type=int, default=2, help="intermediate evaluations per epoch (pruning points)")
    p.add_argument("--quiet", action="store_true", help="print only the best run")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deltatune", description="Fine-tune pretrained transformers.")
    parser.add_argument("--version", action="store_true", help="print the version")
    sub = parser.add_subparsers(dest="command")
    _train_parser(sub)
    _auto_parser(sub)
    e = sub.add_parser("evaluate", help="evaluate a trained run on labelled data")
    e.add_argument("run", help="run directory")
    e.add_argument("--data", required=True, help="labelled data file")
    e.add_argument("--output", help="write metrics JSON here")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e.add_argument("--batch-size", type=int, default=None)
    pr = sub.add_parser("predict", help="predict with a trained run")
    pr.add_argument("run", help="run directory")
    src = pr.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="data file with the run's text column")
    src.add_argument("--text", action="append", help="a text to classify (repeatable)")
    pr.add_argument("--text-pair", action="append", help="sentence-pair tasks: the second text of each --text, in order")
    pr.add_argument("--output", help="CSV/TSV/JSONL file to write (default: print JSONL)")
    pr.add_argument("--batch-size", type=int, default=None)
    c = sub.add_parser("check", help="pre-flight: show how training examples are encoded and masked")
    _add_config_args(c, "YAML config file")
    c.add_argument("--examples", type=int, default=3)
    c.set_defaults(quiet=False)
    x = sub.add_parser("export", help="write a standalone model folder (adapters merged) or a PEFT adapter")
    x.add_argument("run", help="run directory")
    x.add_argument("--out", required=True, help="new folder to write")
    x.add_argument("--merge", action="store_true", help="merge adapters into the base weights")
    x.add_argument("--format", choices=("model", "adapter"), default="model")
    x.add_argument("--overwrite", action="store_true")
    return parser


def _overrides(args: argparse.Namespace) -> list[str]:
    out = []
    for flag, (key, _) in FLAG_KEYS.items():
        v = getattr(args, flag)
        if v is not None:
            out.append(f"{key}={json.dumps(v) if isinstance(v, str) else v}")
    out += list(args.set_) + list(args.overrides)
    if args.quiet:
        out.append("train.progress_bar=false")
    return out


def _config_source(args: argparse.Namespace) -> str | None:
    """The config file argument, or None when the first positional is really a key=value override."""
    config = args.config
    if config and "=" in config and not os.path.exists(config):
        args.overrides.insert(0, config)
        return None
    return config


def cmd_train(args: argparse.Namespace) -> int:
    from deltatune.api import finetune

    run = finetune(_config_source(args), _overrides(args), overwrite=args.overwrite, resume=args.resume)
    return 130 if run.result and run.result.interrupted else 0


def cmd_auto(args: argparse.Namespace) -> int:
    from deltatune.auto import auto

    split = lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None  # noqa: E731
    overrides = [o for o in _overrides(args) if o != "train.progress_bar=false"]
    result = auto(
        _config_source(args), overrides, models=split(args.models), methods=split(args.methods),
        max_memory=args.max_memory, time_budget=args.time_budget, n_trials=args.n_trials, storage=args.storage,
        study_name=args.study_name, resume=args.resume, keep_all=args.keep_all, evals_per_epoch=args.evals_per_epoch,
        verbose=not args.quiet,
    )
    if args.quiet and result.best_path is not None:
        print(f"best: {result.best_path} ({result.metric} {result.best_value:.4f})")
    return 0 if result.best_path is not None else 1


def cmd_evaluate(args: argparse.Namespace) -> int:
    from deltatune.api import evaluate
    from deltatune.metrics import format_table

    metrics = evaluate(args.run, args.data, args.output, args.batch_size)
    print(json.dumps(metrics, indent=2) if args.json else format_table(metrics, f"metrics on {args.data}"))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from deltatune.data import load_table
    from deltatune.serving import load, write_predictions
    from deltatune.serving.predictor import merge_record

    if args.text_pair and not args.text:
        raise DeltatuneError("--text-pair goes with --text (one --text-pair per --text); for a file use --input")
    predictor = load(args.run)
    if args.input:
        ds = load_table(args.input)
        records = predictor.predict_rows(ds, args.input, batch_size=args.batch_size)
        inputs = ds.to_list()
    elif args.text_pair:
        pair_column = predictor.config.data.text_pair_column
        if not pair_column:
            raise DeltatuneError(f"--text-pair: {args.run} is not a sentence-pair run (its config has no data.text_pair_column)")
        if len(args.text_pair) != len(args.text):
            raise DeltatuneError(f"--text-pair: got {len(args.text_pair)} for {len(args.text)} --text; give one --text-pair per --text")
        records = predictor.predict(list(zip(args.text, args.text_pair)))
        inputs = [{"text": t, "text_pair": u} for t, u in zip(args.text, args.text_pair)]
    else:
        records = predictor.predict(args.text)
        inputs = [{"text": t} for t in args.text]
    if args.output:
        write_predictions(records, inputs, args.output)
        print(f"wrote {len(records)} predictions to {args.output}")
    else:
        for inp, rec in zip(inputs, records):
            print(json.dumps(merge_record(inp, rec), ensure_ascii=False, default=str))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from deltatune.api import check

    print(check(_config_source(args), _overrides(args), examples=args.examples))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from deltatune.delta.export import export_run

    out = export_run(args.run, args.out, merge=args.merge or args.format == "model", fmt=args.format, overwrite=args.overwrite)
    print(f"exported {args.run} to {out} ({args.format})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``deltatune`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from deltatune import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    handlers = {"auto": cmd_auto, "train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "export": cmd_export, "check": cmd_check}
    try:
        return handlers[args.command](args)
    except DeltatuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
