"""Command line: ``deltatune train | distill | auto | curve | evaluate | predict | export | serve | check``. Thin: parse, call :mod:`deltatune.api`, print.

Every :class:`DeltatuneError` is printed as one line ``error: ...`` with exit status 2.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
from pathlib import Path
import typing
from typing import Any

from deltatune.config import TASKS, TrainConfig
from deltatune.delta.registry import METHOD_NAMES, METHODS, searched_methods
from deltatune.data.paths import COLUMN_REMEDIES, check_columns, check_data_file
from deltatune.errors import DeltatuneError
from deltatune.rundir import RunDir
from deltatune.tasks.registry import REGISTRY

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
    "batch_size": ("train.per_device_train_batch_size", lambda v: _batch_size(v)),
    "gradient_accumulation_steps": ("train.gradient_accumulation_steps", int),
    "weight_decay": ("train.weight_decay", float),
    "mixed_precision": ("train.mixed_precision", str),
}


# the valid values of flags whose config key takes one of a fixed set (listed by --help, checked by argparse)
FLAG_CHOICES: dict[str, tuple[str, ...]] = {
    "task": TASKS,
    "delta": METHOD_NAMES,
    "mixed_precision": typing.get_args(TrainConfig.model_fields["mixed_precision"].annotation),
}


def _batch_size(value: str) -> int | str:
    """``--batch-size``: a positive integer, or ``auto`` (the largest micro-batch that fits in memory)."""
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or auto, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or auto, got {value!r}")
    return n


# a command-line token that is a ``key=value`` config override: a (dotted) key, then ``=``
_OVERRIDE = re.compile(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*=")


def _add_config_args(p: argparse.ArgumentParser, config_help: str) -> None:
    p.add_argument("config", nargs="?", help=config_help)
    p.add_argument("overrides", nargs="*", help="dotted overrides such as train.learning_rate=1e-4 (anywhere on the line)")
    for flag, (key, typ) in FLAG_KEYS.items():
        choices = FLAG_CHOICES.get(flag)
        help_ = f"sets {key}" + (f": one of {', '.join(choices)}" if choices else "")
        if flag == "delta":  # each method with its one-line description from the registry
            help_ = f"sets {key}: " + "; ".join(f"{name} ({m.description})" for name, m in METHODS.items())
        p.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=typ, default=None, choices=choices, metavar=flag.upper(), help=help_)
    p.add_argument("--set", dest="set_", action="append", default=[], metavar="KEY=VALUE", help="any config key")


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a model (config file and/or flags)", description="Fine-tune and evaluate.")
    _add_config_args(p, "YAML config file (or, with --resume, the run directory)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--resume", action="store_true", help="continue the run from its newest checkpoint")
    p.add_argument(
        "--trust-checkpoint", action="store_true",
        help="with --resume: accept checkpoints of older deltatune versions, whose RNG files hold numpy arrays "
        "(still read with weights_only=True: nothing else is unpickled)",
    )
    p.add_argument(
        "--quiet", action="store_true",
        help="no progress bar: a progress line every 5 minutes (train.log_interval_seconds, at least 300), the summary and results",
    )
    p.add_argument("--strict", action="store_true", help=STRICT_HELP)
    p.add_argument(
        "--few-shot", action="store_true",
        help="few-shot text classification (SetFit): contrastive training on pairs of training texts, then a logistic "
        "regression head (sets train.method=contrastive)",
    )
    _add_load_permission_args(p)
    _add_ray_args(p)


def _add_ray_args(p: argparse.ArgumentParser) -> None:
    """``train --ray``: the same run on a Ray cluster through Ray Train (docs/distributed.md, "Ray")."""
    p.add_argument("--ray", action="store_true", help="run on a Ray cluster with Ray Train's TorchTrainer (pip install 'deltatune[ray]')")
    p.add_argument("--num-workers", type=_COUNT, default=None, metavar="N", help="--ray: training processes (default 2)")
    p.add_argument("--address", default=None, metavar="ADDR", help="--ray: the cluster to join, e.g. ray://host:10001 (default: $RAY_ADDRESS, else a local one)")
    p.add_argument("--ray-device", choices=("auto", "cpu", "gpu"), default=None,
                   help="--ray: cpu (gloo) or gpu (one GPU per worker, NCCL); auto (default): gpu when the cluster has a GPU per worker")
    p.add_argument("--max-failures", type=_number(int, 0, what="an integer >= 0"), default=None, metavar="N",
                   help="--ray: worker-group restarts after a failure, each resuming from the last checkpoint (default 3)")
    p.add_argument("--ray-storage", default=None, metavar="DIR", help="--ray: Ray's own storage (default: <parent of output_dir>/.deltatune-ray)")


STRICT_HELP = "make the data warnings (tokens unknown to the model's vocabulary, truncated examples) errors (exit status 2)"


def _auto_parser(sub) -> None:
    p = sub.add_parser(
        "auto", help="infer the task, choose the model and search hyperparameters (optuna)",
        description="Infer the task from the data, check candidate models against the budgets, run the default "
        "configuration and a TPE search with median pruning; keep the best run.",
    )
    _add_config_args(p, "optional YAML base config (keys set there or by flags are not searched)")
    p.add_argument("--models", help="comma-separated candidate models (names, folders, hub ids)")
    p.add_argument(
        "--methods",
        help=f"comma-separated delta methods to search, among {', '.join(METHOD_NAMES)} (default: "
        f"{','.join(searched_methods('encoder'))} for encoder tasks, {','.join(searched_methods('decoder'))} for decoder tasks)",
    )
    p.add_argument("--max-memory", help="memory for model states, e.g. 8GB; candidates that need more are skipped")
    p.add_argument("--time-budget", help="wall-clock budget for the whole search, e.g. 90s, 20m, 1h")
    p.add_argument("--n-trials", type=int, default=None, help="trials in this session (default 10 without --time-budget)")
    p.add_argument("--storage", help="optuna storage URL (default sqlite:///<output-dir>/optuna.db)")
    p.add_argument("--study-name", default="deltatune-auto")
    p.add_argument("--resume", action="store_true", help="continue the study, adding trials")
    p.add_argument("--keep-all", action="store_true", help="keep every trial's model and checkpoints")
    p.add_argument("--evals-per-epoch", type=int, default=2, help="intermediate evaluations per epoch (pruning points)")
    p.add_argument("--quiet", action="store_true", help="print only the best run")


def _curve_parser(sub) -> None:
    p = sub.add_parser(
        "curve", help="learning curve: train on fractions of the data and fit what more data would buy",
        description="Train one normal run per (fraction of the training rows, subset seed), all evaluated on the same "
        "validation rows, fit an inverse power law to the metric and predict the gain from more data. Resumable: "
        "run the same command again to continue; finished points are not retrained.",
    )
    _add_config_args(p, "YAML base config (data.train_fraction and data.subset_seed are set per point)")
    for action in p._actions:
        if action.dest == "output_dir":
            action.help = "the curve folder (default: the config's output_dir + '-curve'); the runs go inside it"
    p.add_argument("--fractions", default="0.1,0.25,0.5,1.0", help="comma-separated fractions of the training rows, in (0, 1] (default 0.1,0.25,0.5,1.0)")
    p.add_argument("--seeds", type=int, default=1, help="subsets drawn per fraction below 1 (data.subset_seed 0..N-1; default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _distill_parser(sub) -> None:
    p = sub.add_parser(
        "distill", help="knowledge distillation: train a student model on a finished teacher run's soft targets",
        description="Train --student on the rows of the teacher run (its config.yaml, or CONFIG) with the loss "
        "alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * hard loss (distill.alpha, distill.temperature; "
        "docs/distillation.md). The teacher's outputs are computed once and kept in the student's run folder; "
        "resume an interrupted student with deltatune train --resume RUN.",
    )
    p.add_argument("--teacher", required=True, metavar="RUN", help="the teacher: a finished run folder (classification, NER or decoder)")
    p.add_argument("--student", required=True, metavar="MODEL", help="the student model: packaged name (minilm), folder or hub id")
    p.add_argument("config", nargs="?", help="YAML config of the student's run (default: the teacher's config.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides such as distill.temperature=4 (anywhere on the line)")
    p.add_argument("--output-dir", dest="output_dir", default=None, help="the student's run folder (default: <teacher>-distill-<student>)")
    p.add_argument("--set", dest="set_", action="append", default=[], metavar="KEY=VALUE", help="any config key")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar: a progress line every 5 minutes, the summary and results")
    p.add_argument("--strict", action="store_true", help=STRICT_HELP)


def _number(kind: type, low: float, high: float | None = None, low_open: bool = False, what: str = ""):
    """An argparse ``type``: a finite ``kind`` in [low, high] ((low, high] with ``low_open``); else a usage error."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value != value or value in (float("inf"), float("-inf")) or value < low or (low_open and value == low) or (
            high is not None and value > high
        ):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return parse


_COUNT = _number(int, 1, what="an integer >= 1")


def _add_load_permission_args(p: argparse.ArgumentParser) -> None:
    """``--trust-remote-code`` and ``--allow-pickle-weights``: never read from a run folder."""
    p.add_argument(
        "--trust-remote-code", action="store_true",
        help="allow Python code shipped with the model (config.json auto_map) to run; only for folders you trust "
        "(a run folder's config.yaml cannot allow it)",
    )
    p.add_argument(
        "--allow-pickle-weights", action="store_true",
        help="accept pytorch_model.bin / adapter_model.bin pickle weights (which can run code) when there are no safetensors",
    )


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    """Generation options of decoder / encoder-decoder runs (default: the run's eval settings)."""
    p.add_argument("--max-new-tokens", type=_COUNT, default=None, help="generative runs: at most this many new tokens per answer")
    p.add_argument(
        "--temperature", type=_number(float, 0.0, what="a number >= 0"), default=None,
        help="generative runs: sample at this temperature; 0 decodes greedily",
    )
    p.add_argument(
        "--top-p", type=_number(float, 0.0, 1.0, low_open=True, what="a number in (0, 1]"), default=None,
        help="generative runs, when sampling: nucleus probability mass",
    )
    p.add_argument("--num-beams", type=_COUNT, default=None, help="generative runs: beam search width (1: none)")


def _generation_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in ("max_new_tokens", "temperature", "top_p", "num_beams")}


class _Parser(argparse.ArgumentParser):
    """argparse with deltatune's error form: one line ``error: ...`` on stderr, exit status 2.

    argparse prints the whole usage block before its message; here the line names the command
    and points at its ``--help`` instead, and a mistyped choice (a command, ``--task``) gets a
    ``did you mean`` from :mod:`difflib`. Subparsers use this class too (argparse makes them
    with the parent's class).
    """

    def error(self, message: str):  # noqa: D102 - argparse's hook
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            options = [c.strip(" '") for c in choice.group(2).split(",")]
            close = difflib.get_close_matches(choice.group(1), options, n=1)
            if close:
                message += f"; did you mean {close[0]}?"
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="deltatune", description="Fine-tune pretrained transformers.")
    parser.add_argument("--version", action="store_true", help="print the version")
    sub = parser.add_subparsers(dest="command")
    _train_parser(sub)
    _auto_parser(sub)
    _curve_parser(sub)
    _distill_parser(sub)
    e = sub.add_parser(
        "evaluate", help="evaluate a trained run (or, with --pretrained, the untrained model of a config) on labelled data",
        description="Evaluate a trained run on labelled data; with --pretrained CONFIG, the config's pretrained model "
        "before any training (the 'before' numbers of a before/after comparison).",
    )
    e.add_argument("run", help="run directory (with --pretrained: the YAML config file)")
    e.add_argument("overrides", nargs="*", help="with --pretrained: dotted config overrides such as eval.max_new_tokens=32")
    e.add_argument(
        "--pretrained", action="store_true",
        help="evaluate the pretrained model of the YAML config given in place of the run (no training; decoder and "
        "encoder-decoder tasks only)",
    )
    e.add_argument("--data", required=True, help="labelled data file")
    e.add_argument("--output", help="write metrics JSON here (an existing file is refused without --overwrite)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e.add_argument("--batch-size", type=_COUNT, default=None, help="examples per forward pass (default: the run's)")
    _add_generation_args(e)
    _add_load_permission_args(e)
    pr = sub.add_parser("predict", help="predict with a trained run")
    pr.add_argument("run", help="run directory")
    src = pr.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="data file with the run's text column")
    src.add_argument("--text", action="append", help="a text to classify (repeatable)")
    src.add_argument("--file", action="append", help="image-/audio-classification and speech-recognition runs: an image or audio file to classify or transcribe (repeatable)")
    pr.add_argument("--text-pair", action="append", help="sentence-pair tasks: the second text of each --text, in order")
    pr.add_argument(
        "--output", help="CSV/TSV/JSONL file to write (default: print JSONL); an existing file is refused without --overwrite"
    )
    pr.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    pr.add_argument("--batch-size", type=_COUNT, default=None, help="examples per forward pass (default: the run's)")
    _add_generation_args(pr)
    _add_load_permission_args(pr)
    c = sub.add_parser("check", help="pre-flight: show how training examples are encoded and masked")
    _add_config_args(c, "YAML config file")
    c.add_argument("--examples", type=int, default=3)
    c.add_argument("--strict", action="store_true", help=STRICT_HELP)
    c.set_defaults(quiet=False)
    x = sub.add_parser("export", help="write a standalone model folder (adapters merged), a PEFT adapter, ONNX or GGUF")
    x.add_argument("run", help="run directory")
    x.add_argument("--out", required=True, help="new folder to write")
    x.add_argument("--merge", action="store_true", help="merge adapters into the base weights")
    x.add_argument("--format", choices=("model", "adapter", "onnx", "gguf"), default="model",
                   help="model: transformers folder; adapter: PEFT adapter; onnx: encoder tasks for onnxruntime; "
                        "gguf: one file of a decoder run for llama.cpp/Ollama")
    x.add_argument("--quantize", choices=("int8",), default=None, help="--format onnx: dynamic int8 quantization (onnxruntime)")
    x.add_argument("--gguf-dtype", choices=("f16", "f32", "q8_0"), default=None,
                   help="--format gguf: tensor type (default f16; q8_0 is 8-bit and lossy on small models)")
    x.add_argument("--overwrite", action="store_true", help="replace an earlier export at --out (never other files or folders)")
    _add_load_permission_args(x)
    _serve_parser(sub)
    r = sub.add_parser("report", help="write report.html for a run, an auto search, or a comparison of runs")
    r.add_argument("runs", nargs="+", metavar="RUN", help="run directory (or deltatune auto folder); several: compare them")
    r.add_argument("--output", help="HTML file to write (default: RUN/report.html for one run; required to compare runs)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing --output file (a run's own report.html is always rewritten)")
    u = sub.add_parser("ui", help="local web UI: start training, watch curves, browse and compare runs, try models")
    u.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    u.add_argument("--port", type=_port, default=7860, help="port (default 7860)")
    u.add_argument("--runs-dir", default="runs", help="folder of the runs the UI lists and creates (default runs/)")
    u.add_argument("--max-trainings", type=_COUNT, default=2, help="trainings the UI runs at once (default 2; more starts get a 429)")
    for sp in sub.choices.values():
        sp.set_defaults(_subparser=sp)  # parse_args reports leftovers with the command's own usage
    return parser


def _serve_parser(sub) -> None:
    from deltatune.serving.settings import API_KEY_ENV, ServeSettings

    d = ServeSettings(api_key=None)
    s = sub.add_parser("serve", help="serve runs over HTTP (/v1/predict; OpenAI-compatible /v1/chat/completions for decoders)")
    s.add_argument("runs", nargs="+", metavar="RUN", help="run folders (or ONNX exports with --backend onnx); NAME=RUN sets the model id")
    s.add_argument("--host", default=d.host, help="interface to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=_port, default=d.port, help="TCP port (0: a free one, printed at start)")
    s.add_argument("--api-key", default=None, help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}, else no key)")
    s.add_argument("--backend", choices=("torch", "onnx"), default=d.backend, help="torch: run folders; onnx: folders of deltatune export --format onnx")
    s.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when available)")
    s.add_argument("--max-batch-size", type=_COUNT, default=d.max_batch_size, help="most inputs per forward pass (1: no dynamic batching) (default: %(default)s)")
    s.add_argument("--max-wait-ms", type=_non_negative, default=d.max_wait_ms, help="how long a request waits for others to batch with (ms) (default: %(default)s)")
    s.add_argument("--threads", type=_COUNT, default=None, help="intra-op threads of the model (default: CPU count - 1, at least 1)")
    s.add_argument("--workers", type=_COUNT, default=None,
                   help="threads predicting batches of one encoder run at once (default: CPU count / --threads)")
    s.add_argument("--forward-batch-size", type=_COUNT, default=None,
                   help="rows per forward pass within a gathered batch, length-sorted (default: 8 on CPU, --max-batch-size on GPU)")
    s.add_argument("--max-body-bytes", type=_COUNT, default=d.max_body_bytes, help="largest request body (bytes; larger: 413) (default: %(default)s)")
    s.add_argument("--max-inputs", type=_COUNT, default=d.max_inputs, help="most inputs in one /v1/predict request (default: %(default)s)")
    s.add_argument("--max-input-chars", type=_COUNT, default=d.max_input_chars, help="longest text of an input (characters) (default: %(default)s)")
    s.add_argument("--max-upload-bytes", type=_COUNT, default=d.max_upload_bytes,
                   help="largest uploaded file of an image/audio run's input (bytes, decoded) (default: %(default)s)")
    s.add_argument("--max-upload-pixels", type=_COUNT, default=d.max_upload_pixels,
                   help="most pixels (width x height) of an uploaded image, checked before decoding (default: %(default)s)")
    s.add_argument("--max-input-tokens", type=_COUNT, default=d.max_input_tokens, help="longest completion prompt (tokens) (default: %(default)s)")
    s.add_argument("--max-new-tokens-limit", type=_COUNT, default=d.max_new_tokens_limit, help="largest max_tokens a completion may ask (default: %(default)s)")
    s.add_argument("--cors-origin", action="append", default=[], help="allow browser calls from this origin (repeatable; default: none)")
    _add_load_permission_args(s)


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number 0-65535, got {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0-65535, got {value!r}")
    return port


def _non_negative(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {value!r}") from None
    if not x >= 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {value!r}")
    return x


def parse_args(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """Parse a command line, taking ``key=value`` overrides anywhere on it (also after flags).

    argparse stops filling the ``config``/``overrides`` positionals at the first flag, so
    ``train base.yaml --max-steps 3 train.save_steps=1`` leaves ``train.save_steps=1`` over: every
    such leftover ``section.key=value`` token is added to the overrides, in command-line order.
    A leftover non-flag token is taken as the config file when none came before it
    (``train a=1 --quiet base.yaml``); any other leftover token is an argparse error (usage,
    exit status 2).
    """
    parser = parser or build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        sp = getattr(args, "_subparser", None) or parser
        if not hasattr(args, "overrides"):
            sp.error(f"unrecognized arguments: {' '.join(extra)}{_did_you_mean(sp, extra)}")
        bad = [t for t in extra if not _is_override(t)]
        if bad and not bad[0].startswith("-") and hasattr(args, "config") and _config_source(args, consume=False) is None:
            extra.remove(bad[0])  # the config file, after a flag or an override
            args.overrides = ([args.config] if args.config else []) + args.overrides
            args.config = bad.pop(0)
        if bad:
            hint = "" if all(t.startswith("-") for t in bad) else " (config overrides are key=value, e.g. train.save_steps=100)"
            sp.error(f"unrecognized arguments: {' '.join(bad)}{hint}{_did_you_mean(sp, bad)}")
        args.overrides = list(args.overrides) + [t for t in extra if _is_override(t)]
    return args


# flags of the tools users come from (HF Trainer / TRL scripts, short forms) -> ours
_FLAG_SYNONYMS = {
    "--lr": "--learning-rate",
    "--bs": "--batch-size",
    "--per-device-train-batch-size": "--batch-size",
    "--num-train-epochs": "--epochs",
    "--model-name-or-path": "--model",
    "--train-file": "--train",
    "--validation-file": "--validation",
    "--test-file": "--test",
}


def _did_you_mean(parser: argparse.ArgumentParser, tokens: list[str]) -> str:
    """``; did you mean --learning-rate?`` for the first unknown ``--flag`` that is another tool's
    name for one of ``parser``'s flags (``--lr``) or close to one of them (``--learnin-rate``)."""
    flags = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    for token in tokens:
        if token.startswith("--"):
            name = token.split("=", 1)[0].replace("_", "-")
            if _FLAG_SYNONYMS.get(name) in flags:
                return f"; did you mean {_FLAG_SYNONYMS[name]}?"
            close = difflib.get_close_matches(name, flags, n=1, cutoff=0.6)
            if close:
                return f"; did you mean {close[0]}?"
    return ""


def _is_override(token: str) -> bool:
    """Whether a positional token is a ``key=value`` override rather than a config file path."""
    return bool(_OVERRIDE.match(token)) and not os.path.exists(token)


def _overrides(args: argparse.Namespace) -> list[str]:
    out = []
    for flag, (key, _) in FLAG_KEYS.items():
        v = getattr(args, flag)
        if v is not None:
            out.append(f"{key}={json.dumps(v) if isinstance(v, str) else v}")
    if getattr(args, "few_shot", False):  # deltatune train --few-shot
        out.append("train.method=contrastive")
    out += list(args.set_) + list(args.overrides)
    if args.quiet:
        out.append("train.progress_bar=false")
    return out


def _config_source(args: argparse.Namespace, consume: bool = True) -> str | None:
    """The config file: the first positional that is not a ``key=value`` override, or None.

    With ``consume`` the positionals before it that are overrides stay in ``args.overrides``
    (in order) and the config file is taken out of them.
    """
    positionals = ([args.config] if args.config else []) + list(args.overrides)
    config = next((t for t in positionals if not _is_override(t)), None)
    if consume:
        if config is not None:
            positionals.remove(config)
        args.config, args.overrides = config, positionals
    return config


def _validated_config(args: argparse.Namespace, run_dir: bool = False, strategy: bool = False) -> tuple[str | None, list[str]]:
    """The config source and overrides, with the config built and checked before torch is imported.

    Raises:
        DeltatuneError: unreadable config file, unknown key, bad value (one line naming the key);
            a train/validation/test file that looks like a path and does not exist
            (:func:`deltatune.data.paths.check_data_file`, the check ``load_table`` makes), or a
            local CSV/TSV/JSONL one whose header lacks a column the task reads (the registry's
            ``columns``, :func:`deltatune.data.paths.check_columns`); with
            ``run_dir``, first the refusals of the run folder (:meth:`deltatune.rundir.RunDir.check`),
            in the order :func:`deltatune.api.finetune` makes these checks; with ``strategy`` (``check``) the
            refusals of ``distributed.strategy`` that do not depend on the number of processes.
    """
    from deltatune.config import build_config
    from deltatune.training.tracking import check_tracking  # torch-free

    source, overrides = _config_source(args), _overrides(args)
    if getattr(args, "resume", False):  # a resumed run's config is read from its folder by finetune
        if source is not None and Path(source).suffix.lower() not in (".yaml", ".yml"):
            RunDir(source).check(overwrite=False, resume=True)  # no run there, or a finished one
        return source, overrides
    cfg = build_config(source, overrides)
    if run_dir:
        RunDir(cfg.output_dir).check(overwrite=args.overwrite, resume=False)
        check_tracking(cfg.train)  # a missing tracker package, an MLflow store URI MLflow cannot open
        _check_strategy_before_torch(args, cfg)
    elif strategy:
        _check_strategy_before_torch(args, cfg, launch=False)
    d = cfg.data
    columns = REGISTRY[cfg.task].columns
    # image / audio tasks (model families "vision" / "audio"): the hint names their file column
    remedy = COLUMN_REMEDIES.get({"vision": "image", "audio": "audio", "speech-seq2seq": "audio-text"}.get(REGISTRY[cfg.task].family, "text"))
    for ref in (d.train_file, d.validation_file, d.test_file):  # in finetune's order (all with labels)
        if ref:
            check_data_file(ref)
            if columns is not None:
                check_columns(ref, columns(d, True), remedy)
    return source, overrides


def _check_strategy_before_torch(args: argparse.Namespace, cfg, launch: bool = True) -> None:
    """Refuse a ``distributed.strategy`` this launch cannot run (``fsdp`` in a single process, ``deepspeed`` not installed,
    a DeepSpeed offload where the environment says the processes run on the CPU) before torch is imported
    (:func:`deltatune.training.strategy.check_requested_strategy`); with ``--ray`` the Ray workers are the launch,
    checked by :mod:`deltatune.training.ray_launch`; without ``launch`` (``check``) the number of processes is not known."""
    if getattr(args, "ray", False):
        return
    from deltatune.training.strategy import check_requested_strategy, device_type_before_torch, world_size  # torch-free

    check_requested_strategy(cfg.distributed, world_size() if launch else None, cfg.train.mixed_precision, cfg.train.torch_compile,
                             device_type_before_torch(), l1_lambda=cfg.train.l1_lambda)


def cmd_train(args: argparse.Namespace) -> int:
    if args.trust_checkpoint and not args.resume:
        raise DeltatuneError("--trust-checkpoint only applies with --resume (it allows loading an older run's checkpoints)")
    ray = _ray_options(args)  # before the config, and before torch
    source, overrides = _validated_config(args, run_dir=True)
    if ray is not None:
        from deltatune.training.ray_launch import check_ray_run, run_on_ray

        check_ray_run(source, overrides, ray, resume=args.resume)  # before Ray starts and torch loads
        from deltatune.api import finetune

        return run_on_ray(source, overrides, ray, train=finetune, overwrite=args.overwrite, resume=args.resume, strict=args.strict,
                          trust_checkpoint=args.trust_checkpoint, trust_remote_code=args.trust_remote_code or None,
                          allow_pickle_weights=args.allow_pickle_weights or None)
    from deltatune.api import finetune

    run = finetune(source, overrides, overwrite=args.overwrite, resume=args.resume, strict=args.strict,
                   trust_checkpoint=args.trust_checkpoint, trust_remote_code=args.trust_remote_code or None,
                   allow_pickle_weights=args.allow_pickle_weights or None)
    return 130 if run.result and run.result.interrupted else 0


def _ray_options(args: argparse.Namespace):
    """``train``'s Ray flags as :class:`deltatune.training.ray_launch.RayOptions`, or ``None`` without ``--ray``.

    Raises:
        DeltatuneError: a Ray flag without ``--ray``; ``--ray`` without Ray installed (nothing imported).
    """
    from deltatune.training.ray_launch import RayOptions, check_ray_available

    flags = {"num_workers": "--num-workers", "address": "--address", "ray_device": "--ray-device",
             "max_failures": "--max-failures", "ray_storage": "--ray-storage"}
    if not args.ray:
        given = [flag for dest, flag in flags.items() if getattr(args, dest) is not None]
        if given:
            raise DeltatuneError(f"{given[0]} only applies with --ray (deltatune train CONFIG --ray {given[0]} ...)")
        return None
    check_ray_available()
    defaults = RayOptions()
    return RayOptions(
        num_workers=args.num_workers or defaults.num_workers, address=args.address, device=args.ray_device or defaults.device,
        max_failures=defaults.max_failures if args.max_failures is None else args.max_failures, storage_path=args.ray_storage,
    )


def cmd_distill(args: argparse.Namespace) -> int:
    """``deltatune distill``: the student's config (the teacher's config.yaml, or CONFIG), its run folder
    and data files are checked before torch is imported; then :func:`deltatune.api.distill`."""
    from deltatune.tasks.distill.setup import distill_config

    source = _config_source(args)
    student = Path(args.student).expanduser()
    if args.student.startswith((".", "/", "~")) and not student.exists():  # a local path (hub ids and packaged names are checked later)
        raise DeltatuneError(f"--student {args.student}: no such folder; give a model folder, a hub id or a packaged model name (e.g. minilm)")
    overrides = list(args.set_) + list(args.overrides) + (["train.progress_bar=false"] if args.quiet else [])
    cfg = distill_config(args.teacher, args.student, source, overrides, args.output_dir)
    RunDir(cfg.output_dir).check(overwrite=args.overwrite, resume=False)
    _check_strategy_before_torch(args, cfg)
    d = cfg.data
    columns = REGISTRY[cfg.task].columns
    for ref in (d.train_file, d.validation_file, d.test_file):
        if ref:
            check_data_file(ref)
            if columns is not None:
                check_columns(ref, columns(d, True))
    if cfg.distill.unlabeled_file:
        check_data_file(cfg.distill.unlabeled_file)
        if columns is not None:
            check_columns(cfg.distill.unlabeled_file, columns(d, False))
    from deltatune.api import distill

    run = distill(args.teacher, args.student, cfg, overwrite=args.overwrite, strict=args.strict)
    return 130 if run.result and run.result.interrupted else 0


def cmd_auto(args: argparse.Namespace) -> int:
    from deltatune.auto.budget import parse_duration, parse_memory

    if args.time_budget is not None:  # a usage error comes back before torch loads
        parse_duration(args.time_budget)
    if args.max_memory is not None:
        parse_memory(args.max_memory)
    from deltatune.api import auto

    split = lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None  # noqa: E731
    config = _config_source(args)  # first: a leading key=value positional is an override
    overrides = [o for o in _overrides(args) if o != "train.progress_bar=false"]
    result = auto(
        config, overrides, models=split(args.models), methods=split(args.methods),
        max_memory=args.max_memory, time_budget=args.time_budget, n_trials=args.n_trials, storage=args.storage,
        study_name=args.study_name, resume=args.resume, keep_all=args.keep_all, evals_per_epoch=args.evals_per_epoch,
        verbose=not args.quiet,
    )
    if args.quiet and result.best_path is not None:
        print(f"best: {result.best_path} ({result.metric} {result.best_value:.4f})")
    return 0 if result.best_path is not None else 1


def cmd_curve(args: argparse.Namespace) -> int:
    """``deltatune curve``: usage and config errors (fractions, seeds, config, data files, the curve
    folder) are reported before torch is imported; then :func:`deltatune.curve.runner.curve`."""
    from deltatune.curve.runner import check_seeds, parse_fractions, plan_curve

    parse_fractions(args.fractions)  # usage first, then the config
    check_seeds(args.seeds)
    curve_dir, args.output_dir = args.output_dir, None  # --output-dir is the curve folder, not the base config's
    source, overrides = _validated_config(args)
    plan_curve(source, overrides, args.fractions, args.seeds, curve_dir)
    from deltatune.api import finetune
    from deltatune.curve.runner import curve

    result = curve(source, overrides, fractions=args.fractions, seeds=args.seeds, output_dir=curve_dir, train=finetune)
    return 130 if result.interrupted else 0


def _is_onnx_export(run: str) -> bool:
    """Whether ``run`` is a folder of ``deltatune export --format onnx`` (it holds deltatune_onnx.json)."""
    return (Path(run) / "deltatune_onnx.json").is_file()


def _run_config_source(run: str):
    """What :func:`build_config` reads for ``run``: its config.yaml, or an ONNX export's recorded run config (a dict).

    Raises:
        DeltatuneError: a damaged deltatune_onnx.json (names it).
    """
    if not _is_onnx_export(run):
        return RunDir(run).config
    meta = Path(run) / "deltatune_onnx.json"
    try:
        config = json.loads(meta.read_text())["config"]
    except (ValueError, KeyError, TypeError) as e:
        raise DeltatuneError(f"{meta} is damaged ({type(e).__name__}: {e}); export the run again") from None
    if not isinstance(config, dict):
        raise DeltatuneError(f"{meta} is damaged (its config is not a mapping); export the run again")
    return config


def _check_run_inputs(args: argparse.Namespace, data: str | None, data_flag: str, suffixes: tuple[str, ...] | None) -> None:
    """The run folder, the data file and ``--output`` of evaluate/predict, checked before torch loads.

    Raises:
        DeltatuneError: as :meth:`RunDir.check_loadable`, :func:`check_data_file` and :func:`check_output`.
    """
    from deltatune.config import build_config
    from deltatune.output_files import check_output

    run = RunDir(args.run)
    if not _is_onnx_export(args.run):  # an ONNX export's config is in its deltatune_onnx.json
        run.check_loadable()
    if data is not None:
        check_data_file(data)
        cfg = build_config(_run_config_source(args.run))
        columns = REGISTRY[cfg.task].columns
        if columns is not None:  # the columns the run was trained on (labels too for evaluate)
            check_columns(data, columns(cfg.data, data_flag == "--data"),
                          remedy=f"run {args.run} reads the columns it was trained on: rename the file's columns to match")
    if args.output:
        check_output(args.output, overwrite=args.overwrite, inputs=[data], input_flag=data_flag, suffixes=suffixes,
                     keep=run.own_paths())


def _check_pretrained_inputs(args: argparse.Namespace) -> tuple[str, list[str]]:
    """``evaluate --pretrained``: the config source and overrides, with the config built and checked,
    the ``--data`` file and ``--output`` checked, all before torch loads (as ``train`` checks its config).

    Raises:
        DeltatuneError: no config file among the positionals; as :func:`_validated_config`,
            :func:`check_data_file`, :func:`check_columns` and :func:`check_output`.
    """
    from deltatune.config import build_config
    from deltatune.output_files import check_output

    permissions = ["model.trust_remote_code=true"] * args.trust_remote_code + ["model.allow_pickle_weights=true"] * args.allow_pickle_weights
    ns = argparse.Namespace(config=args.run, overrides=list(args.overrides) + permissions, set_=[], quiet=False,
                            **{flag: None for flag in FLAG_KEYS})
    if _config_source(ns, consume=False) is None:
        raise DeltatuneError(
            "evaluate --pretrained: no config file among the arguments (only key=value overrides); "
            "give the YAML config: deltatune evaluate --pretrained CONFIG --data FILE"
        )
    source, overrides = _validated_config(ns)
    cfg = build_config(source, overrides)
    check_data_file(args.data)
    columns = REGISTRY[cfg.task].columns
    if columns is not None:
        check_columns(args.data, columns(cfg.data, True))
    if args.output:
        check_output(args.output, overwrite=args.overwrite, inputs=[args.data], input_flag="--data")
    return source, overrides


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``deltatune evaluate RUN --data FILE``, or ``--pretrained CONFIG``: the pretrained model's numbers."""
    if args.pretrained:
        source, overrides = _check_pretrained_inputs(args)
        from deltatune.api import evaluate_pretrained, format_table

        metrics = evaluate_pretrained(source, args.data, overrides, args.output, args.batch_size, overwrite=args.overwrite,
                                      **_generation_kwargs(args))
        print(json.dumps(metrics, indent=2) if args.json else format_table(metrics, f"pretrained model's metrics on {args.data}"))
        return 0
    if args.overrides:
        raise DeltatuneError(
            f"evaluate {args.run}: unexpected arguments {' '.join(args.overrides)}; a run is evaluated with its own config "
            "(key=value overrides apply with --pretrained CONFIG only)"
        )
    _check_run_inputs(args, args.data, "--data", None)
    from deltatune.api import evaluate, format_table

    metrics = evaluate(
        args.run, args.data, args.output, args.batch_size, overwrite=args.overwrite, trust_remote_code=args.trust_remote_code,
        allow_pickle_weights=args.allow_pickle_weights, **_generation_kwargs(args),
    )
    print(json.dumps(metrics, indent=2) if args.json else format_table(metrics, f"metrics on {args.data}"))
    return 0


def _check_predict_files(run: str, files: list[str]) -> None:
    """``predict --file``: the run reads image or audio files, and each file is one it can read (the checks
    :func:`deltatune.api.predict` makes, here before torch loads; torch-free Pillow / soundfile).

    Raises:
        DeltatuneError: a run that reads texts or conversations; a file that is missing or not an image /
            audio file of the run's kind (naming the file and what to do).
    """
    from deltatune.config import build_config

    cfg = build_config(_run_config_source(run))
    family = REGISTRY[cfg.task].family
    if family == "vision-language":
        raise DeltatuneError(
            f"--file: {run} is a {cfg.task} run, which reads conversations, not bare files; "
            "give rows with a 'messages' column (images named in the user turns) in a JSONL file via --input"
        )
    if family in ("encoder", "decoder", "encoder-decoder"):
        raise DeltatuneError(f"--file: {run} is a {cfg.task} run, which reads texts; give them with --text or --input")
    kind = {"vision": "image", "audio": "audio", "speech-seq2seq": "audio"}.get(family)
    if kind is None:  # a family of its own: deltatune.api.predict decides
        return
    if kind == "image":
        from deltatune.data.images import image_problem as problem_of
    else:
        from deltatune.data.audio import audio_problem as problem_of
    for f in files:
        problem = problem_of(Path(f).expanduser())
        if problem is not None:
            raise DeltatuneError(f"--file {f}: {Path(f).expanduser()} {problem}; the {cfg.task} run {run} reads {kind} files")


def _check_predict_texts(run: str) -> None:
    """``predict --text``: the run reads texts (not image or audio files), checked before torch loads.

    Raises:
        DeltatuneError: an image-/audio-classification or speech-recognition run, saying to use --file or --input.
    """
    from deltatune.config import build_config

    cfg = build_config(_run_config_source(run))
    kind = {"vision": "image", "audio": "audio", "speech-seq2seq": "audio"}.get(REGISTRY[cfg.task].family)
    if kind is not None:
        raise DeltatuneError(f"--text: the {cfg.task} run {run} reads {kind} files, not texts; give them with --file or --input")


def cmd_predict(args: argparse.Namespace) -> int:
    if args.text_pair and not args.text:
        raise DeltatuneError("--text-pair goes with --text (one --text-pair per --text); for a file use --input")
    from deltatune.output_files import PREDICTION_SUFFIXES

    _check_run_inputs(args, args.input, "--input", PREDICTION_SUFFIXES)
    if args.file:
        _check_predict_files(args.run, args.file)
    if args.text:
        _check_predict_texts(args.run)
    from deltatune.api import predict

    rows = predict(
        args.run, input=args.input, texts=args.text, text_pairs=args.text_pair, files=args.file, output=args.output, overwrite=args.overwrite,
        batch_size=args.batch_size, trust_remote_code=args.trust_remote_code, allow_pickle_weights=args.allow_pickle_weights,
        **_generation_kwargs(args),
    )
    if args.output:
        print(f"wrote {len(rows)} predictions to {args.output}")
    else:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False, default=str))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    source, overrides = _validated_config(args, strategy=True)  # train's refusals of the strategy, before torch
    from deltatune.api import check

    print(check(source, overrides, examples=args.examples, strict=args.strict))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from deltatune.serving.export import check_export_args

    if args.gguf_dtype is not None and args.format != "gguf":
        raise DeltatuneError("--gguf-dtype applies to --format gguf only")
    check_export_args(args.run, args.out, args.format, args.overwrite, args.quantize)  # before torch loads
    from deltatune.api import export

    out = export(
        args.run, args.out, merge=args.merge or args.format == "model", fmt=args.format, overwrite=args.overwrite,
        quantize=args.quantize, gguf_dtype=args.gguf_dtype or "f16", trust_remote_code=args.trust_remote_code,
        allow_pickle_weights=args.allow_pickle_weights,
    )
    print(f"exported {args.run} to {out} ({args.format})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from deltatune.serving.pool import parse_run_args
    from deltatune.serving.server import is_loopback, served_tasks
    from deltatune.serving.settings import ServeSettings

    settings = ServeSettings(
        host=args.host, port=args.port, backend=args.backend, device=args.device, max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms, threads=args.threads, workers=args.workers, forward_batch_size=args.forward_batch_size,
        max_body_bytes=args.max_body_bytes, max_inputs=args.max_inputs,
        max_input_chars=args.max_input_chars, max_input_tokens=args.max_input_tokens, max_upload_bytes=args.max_upload_bytes,
        max_upload_pixels=args.max_upload_pixels,
        max_new_tokens_limit=args.max_new_tokens_limit, cors_origins=args.cors_origin,
        trust_remote_code=args.trust_remote_code, allow_pickle_weights=args.allow_pickle_weights,
    )
    if args.device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?|mps|xpu(:\d+)?", args.device):
        raise DeltatuneError(f"--device {args.device!r}: give cpu, cuda, cuda:N, mps or xpu")
    if args.api_key is not None:
        if not args.api_key.strip():
            raise DeltatuneError("--api-key is empty; give a key or leave the flag out")
        settings.api_key = args.api_key
    served_tasks(parse_run_args(args.runs), settings.backend)  # before torch: folders that are not runs
    if not is_loopback(settings.host) and not settings.api_key:
        print(f"warning: listening on {settings.host} without an API key: anyone who reaches this port can use the models "
              "(set --api-key or $DELTATUNE_API_KEY)", file=sys.stderr)
    # the server module directly (not deltatune.api, which imports torch): it takes the port before its slow imports
    from deltatune.serving.server import serve

    return serve(args.runs, settings)


def cmd_report(args: argparse.Namespace) -> int:
    from deltatune.report import write_report  # torch-free: reads the run folders' files

    out = write_report([Path(r) for r in args.runs], Path(args.output) if args.output else None, overwrite=args.overwrite)
    print(f"report: {out}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from deltatune.serving.server import is_loopback  # torch-free
    from deltatune.ui.server import run_ui

    if not is_loopback(args.host):
        print(f"warning: the UI on {args.host} lets anyone who reaches this port train models and read runs; "
              "it has no login (keep 127.0.0.1 and use an SSH tunnel)", file=sys.stderr)
    return run_ui(args.host, args.port, Path(args.runs_dir), max_trainings=args.max_trainings)


def interruptible() -> None:
    """Make Ctrl-C / ``kill -INT`` stop training (checkpoint, exit 130) even when this process
    inherited SIGINT ignored or blocked: a shell script's background job (``deltatune train ... &``
    in a non-interactive shell) starts with SIGINT ignored, and the web UI's Stop, the printed
    ``kill -INT`` advice and resumable interrupts all rely on it."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``deltatune`` console script; returns the exit status."""
    parser = build_parser()
    args = parse_args(argv, parser)
    if args.version:
        from deltatune import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    handlers = {"auto": cmd_auto, "train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "export": cmd_export, "check": cmd_check, "curve": cmd_curve,
                "serve": cmd_serve, "report": cmd_report, "ui": cmd_ui, "distill": cmd_distill}
    if args.command in ("train", "auto", "curve", "distill"):
        interruptible()
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
