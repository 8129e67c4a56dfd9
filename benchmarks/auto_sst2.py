"""`deltatune auto` on SST-2 against the hand-set default configuration.

The search runs on the first ``--rows`` rows of SST-2 train.tsv: it holds out 10% of them as its
validation split (it selects on that only) and reports every completed trial's accuracy on
dev.tsv (872 rows, never used for selection). The hand-set default (MiniLM, full fine-tuning,
lr 1e-4, 1 epoch, batch 32) is the search's trial 0 (trained on the same 90%), and the
reference figure is that default trained on all ``--rows`` rows, read from
``--reference`` (benchmarks/results/sst2_cpu.json, measured earlier by sst2_cpu.py).

Usage (the equivalent CLI is printed)::

    HF_HUB_OFFLINE=1 python benchmarks/auto_sst2.py --rows 8000 --time-budget 15m \\
        --output benchmarks/results/auto_sst2.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "text_classification" / "sst2"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=8000, help="first rows of train.tsv to use")
    p.add_argument("--time-budget", default="15m")
    p.add_argument("--n-trials", type=int, default=None)
    p.add_argument("--models", default="minilm")
    p.add_argument("--train", default=str(SST2 / "train.tsv"))
    p.add_argument("--dev", default=str(SST2 / "dev.tsv"))
    p.add_argument("--output-dir", default="runs/auto_sst2", help="the search folder (must not exist)")
    p.add_argument("--reference", default=str(ROOT / "benchmarks" / "results" / "sst2_cpu.json"))
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--output", help="write the results as JSON here (e.g. benchmarks/results/auto_sst2.json)")
    args = p.parse_args()

    import deltatune

    overrides = {
        "data.train_file": args.train,
        "data.test_file": args.dev,
        "data.max_train_samples": args.rows,
        "output_dir": args.output_dir,
        "seed": args.seed,
    }
    cli = ["deltatune", "auto", "--train", args.train, "--test", args.dev, "--max-train-samples", str(args.rows),
           "--models", args.models, "--time-budget", args.time_budget, "--output-dir", args.output_dir, "--seed", str(args.seed)]
    if args.n_trials:
        cli += ["--n-trials", str(args.n_trials)]
    print("equivalent command:", " ".join(shlex.quote(c) for c in cli), flush=True)
    start = time.monotonic()
    res = deltatune.auto(
        None, overrides, models=args.models.split(","), time_budget=args.time_budget, n_trials=args.n_trials,
    )
    wall = time.monotonic() - start

    rows = {r["trial"]: r for r in res.leaderboard}
    base = next(r for r in res.leaderboard if r["baseline"])
    best = rows[json.loads((res.path / "auto_report.json").read_text())["best"]["trial"]]
    ref = None
    if Path(args.reference).is_file():
        ref = json.loads(Path(args.reference).read_text())["results"]["deltatune"]["dev_accuracy"]
    completed = sum(r["state"] == "COMPLETE" for r in res.leaderboard)
    pruned = sum(r["state"] == "PRUNED" for r in res.leaderboard)

    def line(name, val, dev, settings):
        v = f"{val:.4f}" if val is not None else "-"
        d = f"{dev:.4f}" if dev is not None else "-"
        return f"| {name} | {v} | {d} | {settings} |"

    def settings_of(r):
        keys = ("delta.method", "train.learning_rate", "train.per_device_train_batch_size", "train.num_train_epochs",
                "train.warmup_ratio", "train.weight_decay", "delta.lora_r")
        return ", ".join(f"{k.split('.')[-1]}={r[k]:.3g}" if isinstance(r[k], float) else f"{k.split('.')[-1]}={r[k]}"
                         for k in keys if r.get(k) is not None)

    print()
    print(f"SST-2, first {args.rows} rows (90% train / 10% selection split), dev.tsv for the report; "
          f"budget {args.time_budget}, {len(res.leaderboard)} trials ({completed} completed, {pruned} pruned) in {wall:.0f} s")
    print("| configuration | validation accuracy (selection) | dev accuracy | settings |")
    print("|---|---|---|---|")
    print(line(f"hand-set default (trial {base['trial']})", base["value"], base["test"].get("accuracy"), settings_of(base)))
    print(line(f"auto best (trial {best['trial']})", best["value"], best["test"].get("accuracy"), settings_of(best)))
    if ref is not None:
        print(line("hand-set default on all rows (reference, sst2_cpu.json)", None, ref, "full, lr 1e-4, batch 32, 1 epoch"))
    result = {
        "args": vars(args),
        "wall_seconds": round(wall, 1),
        "trials": len(res.leaderboard),
        "completed": completed,
        "pruned": pruned,
        "baseline": {"trial": base["trial"], "validation_accuracy": base["value"], "dev_accuracy": base["test"].get("accuracy")},
        "best": {"trial": best["trial"], "validation_accuracy": best["value"], "dev_accuracy": best["test"].get("accuracy"),
                 "settings": settings_of(best), "path": str(res.best_path)},
        "reference_dev_accuracy": ref,
        "importances": res.report.get("importances"),
        "leaderboard": res.leaderboard,
    }
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
