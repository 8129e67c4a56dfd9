"""Domain-adaptive masked-LM pretraining of MiniLM on SciTLDR abstracts, then SST-2 from the adapted encoder.

1. ``masked-lm`` on the abstracts (``source`` sentences joined) of the first ``--mlm-docs``
   documents of ``../shared/data/summarization/scitldr_a/train.jsonl``, packed into blocks of
   ``--block`` tokens, for ``--mlm-steps`` optimizer steps. Held out: the first ``--eval-docs``
   abstracts of dev.jsonl, with fixed masks (15%, 80/10/10, seed 42). Reported before (step 0:
   the packaged MiniLM has no MLM head, so the head transform is fresh and the output layer is
   the tied word embeddings) and after: masked-token accuracy, loss and masked-token perplexity.
   For scale, the accuracy of always predicting the most frequent training token on the same
   held-out masks.
2. ``text-classification`` on the first ``--sst2-rows`` rows of SST-2 train.tsv for one epoch,
   evaluated on dev.tsv (872 rows), once from the packaged MiniLM and once from the masked-LM
   run directory (``model.name_or_path: <run dir>``), same seed and settings. The MLM model has
   no pooler, so the adapted run's pooler starts fresh while plain MiniLM's is pretrained.

Run from the repository root::

    HF_HUB_OFFLINE=1 python benchmarks/mlm_domain.py --output benchmarks/results/mlm_domain.json
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SCITLDR = DATA / "summarization" / "scitldr_a"
SST2 = DATA / "text_classification" / "sst2"


def abstracts(path: Path, n: int) -> list[dict]:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()][:n]
    return [{"text": " ".join(s.strip() for s in r["source"] if s.strip())} for r in rows]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def mlm_config(args, tmp: Path) -> dict:
    return {
        "task": "masked-lm",
        "output_dir": str(tmp / "mlm"),
        "seed": 42,
        "model": {"name_or_path": "minilm"},
        "data": {
            "train_file": str(write_jsonl(tmp / "mlm_train.jsonl", abstracts(SCITLDR / "train.jsonl", args.mlm_docs))),
            "validation_file": str(write_jsonl(tmp / "mlm_dev.jsonl", abstracts(SCITLDR / "dev.jsonl", args.eval_docs))),
            "max_seq_length": args.block,
            "whole_word_masking": args.whole_word_masking,
        },
        "train": {
            "max_steps": args.mlm_steps,
            "per_device_train_batch_size": args.batch_size,
            "learning_rate": args.mlm_learning_rate,
            "warmup_ratio": 0.06,
            "progress_bar": False,
        },
        "eval": {"eval_strategy": "no"},
    }


def before_and_baseline(cfg: dict) -> tuple[dict, float]:
    """Held-out MLM metrics of the step-0 model (built exactly as the run builds it), and the
    accuracy of predicting the most frequent training token at every held-out masked position."""
    import numpy as np
    import torch
    from accelerate.utils import set_seed

    from deltatune.config import build_config
    from deltatune.data import load_table
    from deltatune.models import resolve_model
    from deltatune.models.loading import load_tokenizer
    from deltatune.tasks import create_task
    from deltatune.training.inference import batched_outputs, merge_outputs

    c = build_config(cfg)
    task = create_task(c)
    path = resolve_model(c.model.name_or_path)
    tok = load_tokenizer(path)
    task.set_tokenizer(tok)
    train = task.encode(load_table(c.data.train_file), tok)
    dev = task.encode(load_table(c.data.validation_file), tok)
    set_seed(c.seed)  # finetune seeds the same way before building the model: the same fresh head
    model = task.build_model(path, {}).eval()
    out = merge_outputs(batched_outputs(model, task, dev, 64, "cpu"), len(dev))
    before = task.compute_metrics(out, dev)

    special = set(tok.all_special_ids)
    counts = collections.Counter(i for r in train.rows for i in r["input_ids"] if i not in special)
    top = counts.most_common(1)[0][0]
    with torch.no_grad():
        labels = np.concatenate([task.collate(dev.rows[i : i + 64])["labels"].flatten().numpy() for i in range(0, len(dev), 64)])
    masked = labels[labels != -100]
    return before, float(np.mean(masked == top))


def sst2_config(name_or_path: str, out: Path, rows: int) -> dict:
    return {
        "task": "text-classification",
        "output_dir": str(out),
        "seed": 42,
        "model": {"name_or_path": name_or_path},
        "data": {
            "train_file": str(SST2 / "train.tsv"),
            "validation_file": str(SST2 / "dev.tsv"),
            "text_column": "sentence",
            "max_train_samples": rows,
            "max_seq_length": 128,
        },
        "train": {"num_train_epochs": 1, "per_device_train_batch_size": 32, "warmup_ratio": 0.06, "progress_bar": False},
        "eval": {"eval_strategy": "no"},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mlm-docs", type=int, default=1991, help="SciTLDR train abstracts for MLM (1991 = all)")
    ap.add_argument("--eval-docs", type=int, default=200, help="SciTLDR dev abstracts held out")
    ap.add_argument("--mlm-steps", type=int, default=150)
    ap.add_argument("--block", type=int, default=64, help="tokens per MLM block (data.max_seq_length)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--mlm-learning-rate", type=float, default=1e-4)
    ap.add_argument("--whole-word-masking", action="store_true")
    ap.add_argument("--sst2-rows", type=int, default=2000, help="SST-2 train rows for the downstream runs (0: skip them)")
    ap.add_argument("--output", type=Path, default=None)
    args = ap.parse_args()

    import deltatune

    tmp = Path(tempfile.mkdtemp())
    cfg = mlm_config(args, tmp)
    t0 = time.perf_counter()
    before, most_frequent = before_and_baseline(cfg)
    mlm = deltatune.finetune(cfg, verbose=False)
    after = mlm.metrics["validation"]
    mlm_seconds = time.perf_counter() - t0
    t = mlm.metrics["train"]
    print(
        f"masked-lm on {args.mlm_docs} SciTLDR train abstracts: {t['global_step']} steps x {args.batch_size} blocks of "
        f"{args.block} tokens, {t['train_seconds']:.0f} s; held out: {args.eval_docs} dev abstracts, "
        f"{after['masked_tokens']} fixed masked tokens"
    )
    print("| model | masked-token accuracy | loss | masked-token perplexity |")
    print("|---|---|---|---|")
    print(f"| most frequent training token | {most_frequent:.4f} | | |")
    for name, m in (("MiniLM, step 0 (fresh head, tied embeddings)", before), (f"after {t['global_step']} MLM steps", after)):
        print(f"| {name} | {m['accuracy']:.4f} | {m['loss']:.3f} | {m['perplexity']:.1f} |")

    downstream = {}
    if args.sst2_rows:
        for name, ref in (("MiniLM", "minilm"), ("MiniLM + SciTLDR MLM", str(mlm.path))):
            run = deltatune.finetune(sst2_config(ref, tmp / f"sst2_{len(downstream)}", args.sst2_rows), verbose=False)
            downstream[name] = {
                "dev_accuracy": run.metrics["validation"]["accuracy"],
                "train_seconds": run.metrics["train"]["train_seconds"],
            }
        print(f"\nSST-2, first {args.sst2_rows} train rows, 1 epoch, batch 32, lr 1e-4; dev.tsv (872 rows):")
        print("| encoder | dev accuracy | train time |")
        print("|---|---|---|")
        for name, d in downstream.items():
            print(f"| {name} | {d['dev_accuracy']:.4f} | {d['train_seconds']:.0f} s |")

    if args.output:
        import torch
        import transformers

        args.output.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "mlm": {"before": before, "after": {k: v for k, v in after.items()}, "most_frequent_token_accuracy": most_frequent,
                    "train": t, "seconds": round(mlm_seconds, 1)},
            "sst2": downstream,
            "environment": {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__},
        }
        args.output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
