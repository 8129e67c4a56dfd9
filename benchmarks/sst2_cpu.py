"""SST-2 side by side: HF Trainer vs deltatune, same model, rows, epochs and hyperparameters.

Each tool trains in its own subprocess (so peak RSS is its own), on the first ``--rows`` rows
of ``../shared/data/text_classification/sst2/train.tsv`` with the packaged MiniLM, then
predicts the 872-row dev set. Printed: training samples/s, training seconds, peak RSS and
dev accuracy per tool, and the ratios deltatune / HF Trainer.

Tools:
- ``hf``: HF Trainer with its defaults (random sampling; fused AdamW), the usual baseline;
- ``hf-grouped``: HF Trainer with ``train_sampling_strategy="group_by_length"``;
- ``deltatune``: deltatune with its defaults (length-grouped batches).

Run from the repository root::

    HF_HUB_OFFLINE=1 python benchmarks/sst2_cpu.py            # all three, 8,000 rows, 1 epoch
    HF_HUB_OFFLINE=1 python benchmarks/sst2_cpu.py --rows 500 --tools hf,deltatune   # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _worker import run_worker  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "text_classification" / "sst2"


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _read(path: Path, rows: int | None = None):
    import pandas as pd

    df = pd.read_csv(path, sep="\t", quoting=3)
    return df.iloc[:rows] if rows else df


def run_hf(args: argparse.Namespace, grouped: bool) -> dict:
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from deltatune.models import resolve_model

    path = resolve_model("minilm")
    tok = AutoTokenizer.from_pretrained(path)
    train, dev = _read(SST2 / "train.tsv", args.rows), _read(SST2 / "dev.tsv")

    def encode(df):
        enc = tok(df["sentence"].tolist(), truncation=True, max_length=args.max_length)
        return Dataset.from_dict({**enc, "labels": df["label"].tolist()})

    train_ds, dev_ds = encode(train), encode(dev)
    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=64,
            learning_rate=args.learning_rate,
            num_train_epochs=args.epochs,
            warmup_steps=args.warmup_ratio,  # a float < 1 is a ratio in transformers 5
            weight_decay=args.weight_decay,
            lr_scheduler_type="linear",
            max_grad_norm=1.0,
            eval_strategy="no",
            save_strategy="no",
            logging_steps=50,
            report_to="none",
            seed=args.seed,
            disable_tqdm=True,
            train_sampling_strategy="group_by_length" if grouped else "random",
        )
        trainer = Trainer(model=model, args=targs, train_dataset=train_ds, data_collator=DataCollatorWithPadding(tok))
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        pred = trainer.predict(dev_ds)
    acc = float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())
    return {"train_seconds": seconds, "samples_per_second": len(train_ds) * args.epochs / seconds, "dev_accuracy": acc}


def run_deltatune(args: argparse.Namespace) -> dict:
    import deltatune

    with tempfile.TemporaryDirectory() as out:
        cfg = {
            "task": "text-classification",
            "output_dir": str(Path(out) / "run"),
            "seed": args.seed,
            "model": {"name_or_path": "minilm"},
            "data": {
                "train_file": str(SST2 / "train.tsv"),
                "validation_file": str(SST2 / "dev.tsv"),
                "text_column": "sentence",
                "label_column": "label",
                "max_train_samples": args.rows,
                "max_seq_length": args.max_length,
            },
            "train": {
                "num_train_epochs": args.epochs,
                "per_device_train_batch_size": args.batch_size,
                "learning_rate": args.learning_rate,
                "warmup_ratio": args.warmup_ratio,
                "weight_decay": args.weight_decay,
                "lr_scheduler_type": "linear",
                "max_grad_norm": 1.0,
                "logging_steps": 50,
                "progress_bar": False,
            },
            "eval": {"eval_strategy": "no", "per_device_eval_batch_size": 64},
        }
        run = deltatune.finetune(cfg, verbose=False)
    r = run.result
    return {
        "train_seconds": r.train_seconds,
        "samples_per_second": r.examples_per_second,
        "dev_accuracy": run.metrics["validation"]["accuracy"],
    }


def worker(args: argparse.Namespace) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker == "deltatune":
        res = run_deltatune(args)
    else:
        res = run_hf(args, grouped=args.worker == "hf-grouped")
    res["peak_rss_mib"] = _peak_rss_mib()
    print("RESULT " + json.dumps(res), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=8000)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--warmup-ratio", type=float, default=0.06)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--tools", default="hf,hf-grouped,deltatune")
    p.add_argument("--output", help="also write the results as JSON here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    shared = ("rows", "epochs", "batch_size", "learning_rate", "max_length", "warmup_ratio", "weight_decay", "seed")
    passthrough = [x for k in shared for x in (f"--{k.replace('_', '-')}", str(getattr(args, k)))]
    results = {}
    for tool in args.tools.split(","):
        print(f"running {tool} ...", flush=True)
        results[tool] = run_worker(__file__, tool, passthrough)

    print(
        f"\nSST-2, packaged MiniLM, {args.rows} rows x {args.epochs:g} epoch, batch {args.batch_size}, "
        f"lr {args.learning_rate:g}, max length {args.max_length}, warmup {args.warmup_ratio:g}, wd {args.weight_decay:g}"
    )
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads default\n")
    print(f"{'tool':<12} {'samples/s':>10} {'train s':>9} {'peak RSS GiB':>13} {'dev acc':>8}")
    for tool, r in results.items():
        print(f"{tool:<12} {r['samples_per_second']:>10.1f} {r['train_seconds']:>9.1f} {r['peak_rss_mib'] / 1024:>13.2f} {r['dev_accuracy']:>8.4f}")
    if "deltatune" in results:
        d = results["deltatune"]
        for base in ("hf", "hf-grouped"):
            if base in results:
                b = results[base]
                print(
                    f"deltatune / {base}: samples/s x{d['samples_per_second'] / b['samples_per_second']:.2f}, "
                    f"peak RSS x{d['peak_rss_mib'] / b['peak_rss_mib']:.2f}, "
                    f"dev accuracy {100 * (d['dev_accuracy'] - b['dev_accuracy']):+.1f} points"
                )
    if args.output:
        Path(args.output).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
