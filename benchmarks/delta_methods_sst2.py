"""Δθ methods on SST-2: full, freeze (top 2 layers), LoRA (r=8), DoRA, IA3, and compressed full deltas.

Each method trains in its own subprocess (peak RSS is its own) on the first ``--rows`` rows of
``../shared/data/text_classification/sst2/train.tsv`` with the packaged MiniLM for one epoch
(batch 32, max length 128, warmup 6%, weight decay 0.01, each method's default learning rate),
then is evaluated on dev.tsv (872 rows). Reported per method: dev accuracy, trainable
parameters, bytes of weights saved in ``model/``, training seconds, peak RSS.

The full run's Δθ is then compressed after the fact at several settings (truncated SVD keeping
an energy share or a rank, fp16 or int8 factors) and each reconstruction is evaluated: size
ratio against the full model's safetensors and accuracy change against the uncompressed model.

Run from the repository root::

    HF_HUB_OFFLINE=1 python benchmarks/delta_methods_sst2.py --output benchmarks/results/delta_methods_sst2.json
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _worker import run_worker  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "text_classification" / "sst2"
METHODS = {
    "full": {"method": "full"},
    "freeze": {"method": "freeze", "train_layers": 2},
    "lora": {"method": "lora", "lora_r": 8},
    "dora": {"method": "dora", "lora_r": 8},
    "ia3": {"method": "ia3"},
}
COMPRESSION = [
    {"delta_energy": 0.5},
    {"delta_energy": 0.8},
    {"delta_energy": 0.9},
    {"delta_rank": 32},
    {"delta_rank": 32, "delta_int8": True},
]


def config(name: str, out: Path, rows: int, delta: dict) -> dict:
    return {
        "task": "text-classification",
        "output_dir": str(out),
        "seed": 42,
        "model": {"name_or_path": "minilm"},
        "data": {
            "train_file": str(SST2 / "train.tsv"),
            "validation_file": str(SST2 / "dev.tsv"),
            "text_column": "sentence",
            "max_train_samples": rows,
            "max_seq_length": 128,
        },
        "train": {"num_train_epochs": 1, "per_device_train_batch_size": 32, "warmup_ratio": 0.06, "progress_bar": False},
        "eval": {"eval_strategy": "no"},
        "delta": delta,
    }


def worker(method: str, rows: int, keep: Path | None, overrides: list[str]) -> dict:
    import deltatune

    out = keep or Path(tempfile.mkdtemp()) / method
    run = deltatune.finetune(config(method, out, rows, METHODS[method]), overrides, overwrite=True, verbose=False)
    t = run.metrics["train"]
    res = {
        "dev_accuracy": run.metrics["validation"]["accuracy"],
        "trainable_parameters": t["trainable_parameters"],
        "total_parameters": t["total_parameters"],
        "saved_bytes": t["saved_bytes"],
        "train_seconds": t["train_seconds"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "learning_rate": run.config.train.learning_rate,
    }
    if method == "full":
        res["compressed"] = compress_after_the_fact(run)
    return res


def compress_after_the_fact(run) -> list[dict]:
    """Compress the full run's Δθ at several settings and evaluate each reconstruction."""
    import torch

    import deltatune
    from deltatune.delta.compress import compress_delta, reconstruct

    predictor = deltatune.load(run.path)
    task, model = predictor.task, predictor.model
    tuned = {n: p.detach().clone() for n, p in model.named_parameters()}
    fresh = task.build_model(_base_path(run), {})
    base = {n: p.detach() for n, p in fresh.named_parameters() if n not in task.new_parameter_names}
    import datasets
    import pandas as pd

    dev = datasets.Dataset.from_pandas(pd.read_csv(SST2 / "dev.tsv", sep="\t", quoting=3), preserve_index=False)
    full_bytes = (run.path / "model" / "model.safetensors").stat().st_size
    results = []
    for setting in COMPRESSION:
        stored, st = compress_delta(
            base, tuned, setting.get("delta_energy", 0.9), setting.get("delta_rank"), setting.get("delta_int8", False)
        )
        rebuilt = reconstruct(base, stored)
        with torch.no_grad():
            params = dict(model.named_parameters())
            for k, v in rebuilt.items():
                params[k].copy_(v)
        acc = task.compute_metrics(*predictor.outputs(dev))["accuracy"]
        with torch.no_grad():
            for k, v in tuned.items():
                params[k].copy_(v)
        results.append(
            {**setting, "stored_bytes": st.stored_bytes, "size_ratio": st.stored_bytes / full_bytes, "mean_rank": st.mean_rank, "dev_accuracy": acc}
        )
    return results


def _base_path(run) -> str:
    from deltatune.models import resolve_model

    return resolve_model(run.config.model.name_or_path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=8000)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--output")
    p.add_argument(
        "--set", action="append", default=[], metavar="METHOD:KEY=VALUE",
        help="config override for one method, e.g. lora:train.learning_rate=1e-3 (repeatable)",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        mine = [o.split(":", 1)[1] for o in args.set if o.split(":", 1)[0] == args.worker]
        print("RESULT " + json.dumps(worker(args.worker, args.rows, None, mine)), flush=True)
        return
    results = {}
    for method in args.methods.split(","):
        print(f"running {method} ...", flush=True)
        results[method] = run_worker(__file__, method, ["--rows", str(args.rows), *[f"--set={o}" for o in args.set]])
        r = results[method]
        print(f"  dev accuracy {r['dev_accuracy']:.4f}, {r['train_seconds']:.0f} s", flush=True)

    print(f"\nSST-2, packaged MiniLM, {args.rows} rows x 1 epoch, batch 32; dev.tsv (872 rows)\n")
    if args.set:
        print("overrides: " + ", ".join(args.set) + "\n")
    print("| method | lr | dev accuracy | trainable params | saved weights | train time | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for m, r in results.items():
        print(
            f"| {m} | {r['learning_rate']:g} | {r['dev_accuracy']:.4f} | {r['trainable_parameters'] / 1e6:.3f}M "
            f"({100 * r['trainable_parameters'] / r['total_parameters']:.2f}%) | {r['saved_bytes'] / 2**20:.2f} MiB | "
            f"{r['train_seconds']:.0f} s | {r['peak_rss_mib'] / 1024:.2f} GiB |"
        )
    if "full" in results:
        full = results["full"]
        print("\nCompressed full Δθ (after the fact, from the full run):\n")
        print("| setting | mean rank | stored | size vs full model | dev accuracy | change |")
        print("|---|---|---|---|---|---|")
        for c in full["compressed"]:
            setting = ", ".join(f"{k}={v}" for k, v in c.items() if k.startswith("delta_"))
            print(
                f"| {setting} | {c['mean_rank']:.0f} | {c['stored_bytes'] / 2**20:.2f} MiB | {100 * c['size_ratio']:.1f}% | "
                f"{c['dev_accuracy']:.4f} | {100 * (c['dev_accuracy'] - full['dev_accuracy']):+.2f} pts |"
            )
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
