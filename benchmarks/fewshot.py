"""Few-shot text classification: SetFit's recipe (``train.method: contrastive``) against standard fine-tuning.

For each dataset, size K (examples per class) and seed, K training rows per class are sampled
(numpy, seeded) from the training file; the same rows train

- ``contrastive``: SetFit (arXiv:2209.11055) in deltatune's loop: 20 pair iterations
  (``train.contrastive_iterations``), 1 epoch over the pairs, batch 16, learning rate 2e-5
  (the contrastive default for full fine-tuning), then the logistic regression head;
- ``standard``: the usual classification fine-tuning (linear head on the pooled output,
  cross-entropy): batch 8, 20 epochs, learning rate 1e-4 (the full-fine-tuning default), warmup 10%;

both full fine-tuning of the packaged MiniLM (all-MiniLM-L6-v2; ``--model mpnet``: all-mpnet-base-v2,
the 109M encoder of SetFit's paper), max length 64, no model selection
(``eval.eval_strategy: no``: the dev rows are never seen before the final evaluation). Evaluated on
SST-2 dev.tsv (872 rows) or the support tickets' validation file (80 rows), the first
``--max-eval`` rows of a seeded shuffle. Prints mean +- std accuracy per dataset, size and method
over the seeds and writes every run and the summary as JSON to ``--output``.

Data: ``../shared/data/text_classification/sst2`` (GLUE SST-2 TSV, columns ``sentence``/``label``,
read with csv.QUOTE_NONE; see its PROVENANCE.txt) and ``examples/data/support_tickets_*.csv``
(``text``/``label``, 4 intents).

Run from the repository root (the full grid: 2 datasets x 4 sizes x 3 seeds x 2 methods)::

    HF_HUB_OFFLINE=1 python benchmarks/fewshot.py --output benchmarks/results/fewshot.json

A smoke run::

    HF_HUB_OFFLINE=1 python benchmarks/fewshot.py --sizes 8 --seeds 0 --max-eval 64 --output /tmp/fewshot.json
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "text_classification" / "sst2"
DATASETS = {
    "sst2": {"train": SST2 / "train.tsv", "eval": SST2 / "dev.tsv", "text": "sentence", "label": "label", "tsv": True},
    "support": {
        "train": ROOT / "examples" / "data" / "support_tickets_train.csv",
        "eval": ROOT / "examples" / "data" / "support_tickets_validation.csv",
        "text": "text", "label": "label", "tsv": False,
    },
}
METHODS = {
    "contrastive": {
        "train": {"method": "contrastive", "contrastive_iterations": 20, "num_train_epochs": 1, "per_device_train_batch_size": 16,
                  "warmup_ratio": 0.1},
    },
    "standard": {
        "train": {"method": "standard", "num_train_epochs": 20, "per_device_train_batch_size": 8, "learning_rate": 1e-4,
                  "warmup_ratio": 0.1},
    },
}


def read_rows(path: Path, text: str, label: str, tsv: bool) -> list[dict]:
    """``[{"text", "label"}]`` of a CSV file, or a TSV read with no quoting (GLUE)."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if tsv else csv.DictReader(f)
        return [{"text": r[text], "label": str(r[label])} for r in reader]


def sample_per_class(rows: list[dict], k: int, seed: int) -> list[dict]:
    """``k`` rows of each label, drawn without replacement with ``numpy.random.default_rng(seed)``, shuffled."""
    import numpy as np

    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_label.setdefault(r["label"], []).append(i)
    picked = []
    for label in sorted(by_label):
        idx = by_label[label]
        if len(idx) < k:
            raise SystemExit(f"label {label!r} has {len(idx)} training rows, fewer than --sizes {k}")
        picked += [idx[j] for j in rng.choice(len(idx), size=k, replace=False)]
    return [rows[i] for i in rng.permutation(picked)]


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(rows)
    return path


def config(method: str, train: Path, evaluation: Path, out: Path, seed: int, model: str = "minilm") -> dict:
    """The run config of ``method`` (see the module) on the sampled ``train`` rows."""
    return {
        "task": "text-classification",
        "output_dir": str(out),
        "seed": seed,
        "model": {"name_or_path": model},
        "data": {"train_file": str(train), "validation_file": str(evaluation), "max_seq_length": 64},
        "train": {"progress_bar": False, "weight_decay": 0.01, **METHODS[method]["train"]},
        "eval": {"eval_strategy": "no", "worst_examples": 0},
        "delta": {"method": "full"},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default="sst2,support", help="comma-separated, of: " + ", ".join(DATASETS))
    p.add_argument("--sizes", default="8,16,32,64", help="examples per class, comma-separated")
    p.add_argument("--seeds", default="0,1,2", help="sampling (and training) seeds, comma-separated")
    p.add_argument("--methods", default="contrastive,standard", help="comma-separated, of: " + ", ".join(METHODS))
    p.add_argument("--model", default="minilm", help="the encoder both recipes fine-tune (a packaged name such as mpnet, or a path)")
    p.add_argument("--max-eval", type=int, default=None, help="evaluate on at most this many rows (a seeded shuffle)")
    p.add_argument("--output", type=Path, required=True, help="JSON file to write")
    args = p.parse_args(argv)
    datasets = [d for d in args.datasets.split(",") if d]
    methods = [m for m in args.methods.split(",") if m]
    for name, known in [(d, DATASETS) for d in datasets] + [(m, METHODS) for m in methods]:
        if name not in known:
            raise SystemExit(f"unknown name {name!r}; choose from {', '.join(known)}")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    seeds = [int(s) for s in args.seeds.split(",") if s]

    import numpy as np

    import deltatune

    work = Path(tempfile.mkdtemp(prefix="fewshot-"))
    results = []
    started = time.perf_counter()
    try:
        for ds in datasets:
            spec = DATASETS[ds]
            train_rows = read_rows(spec["train"], spec["text"], spec["label"], spec["tsv"])
            eval_rows = read_rows(spec["eval"], spec["text"], spec["label"], spec["tsv"])
            eval_rows = [eval_rows[i] for i in np.random.default_rng(0).permutation(len(eval_rows))][: args.max_eval]
            evaluation = write_csv(work / f"{ds}-eval.csv", eval_rows)
            for k in sizes:
                for seed in seeds:
                    train = write_csv(work / f"{ds}-{k}-{seed}.csv", sample_per_class(train_rows, k, seed))
                    for method in methods:
                        out = work / f"{ds}-{k}-{seed}-{method}"
                        t0 = time.perf_counter()
                        run = deltatune.finetune(config(method, train, evaluation, out, seed, args.model), overwrite=True, verbose=False)
                        record = {
                            "dataset": ds, "per_class": k, "seed": seed, "method": method,
                            "accuracy": run.metrics["validation"]["accuracy"],
                            "f1_macro": run.metrics["validation"].get("f1_macro"),
                            "train_rows": run.metrics["train"]["data_files"]["train"]["rows"],
                            "eval_rows": len(eval_rows),
                            "steps": run.metrics["train"]["global_step"],
                            "train_seconds": run.metrics["train"]["train_seconds"],
                            "wall_seconds": round(time.perf_counter() - t0, 1),
                        }
                        results.append(record)
                        print(json.dumps(record), flush=True)
                        shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    summary: dict = {}
    print(f"\n{'dataset':<9} {'K/class':>7} {'method':<12} {'accuracy mean +- std':>22} {'seeds':>5}")
    for ds in datasets:
        for k in sizes:
            for method in methods:
                accs = [r["accuracy"] for r in results if (r["dataset"], r["per_class"], r["method"]) == (ds, k, method)]
                std = statistics.stdev(accs) if len(accs) > 1 else 0.0
                summary.setdefault(ds, {}).setdefault(str(k), {})[method] = {"mean": statistics.mean(accs), "std": std, "n": len(accs)}
                print(f"{ds:<9} {k:>7} {method:<12} {100 * statistics.mean(accs):>14.1f} +- {100 * std:4.1f} {len(accs):>5}")
    payload = {
        "benchmark": "fewshot", "model": args.model, "datasets": datasets, "sizes": sizes, "seeds": seeds, "max_eval": args.max_eval,
        "methods": {m: METHODS[m]["train"] for m in methods}, "total_seconds": round(time.perf_counter() - started, 1),
        "results": results, "summary": summary,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.output} ({payload['total_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
