"""Extractive summarization on SciTLDR-A with the packaged MiniLM, against lead-1 and the oracle.

Trains ``extractive-summarization`` on the first ``--train-docs`` documents of
``../shared/data/summarization/scitldr_a/train.jsonl`` (abstract sentences in ``source``, the
author TLDR in ``target``) for ``--epochs`` epochs, then extracts ``--sentences`` sentence(s)
per document of the test split (the first ``--test-docs``, all 617 by default; several
reference TLDRs each). On the same documents and with the same scorer
(:func:`deltatune.metrics.text.rouge`: rouge-score, Porter stemming, best reference per ROUGE
type) it also scores:

- lead-k: the first ``--sentences`` sentences of the document;
- the greedy ROUGE oracle (the labels' upper bound for a k-sentence extract, built against the
  test references: :func:`deltatune.data.sentences.greedy_oracle`).

Run from the repository root::

    HF_HUB_OFFLINE=1 python benchmarks/scitldr_extractive.py --output benchmarks/results/scitldr_extractive.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCITLDR = ROOT.parent / "shared" / "data" / "summarization" / "scitldr_a"


def read_jsonl(path: Path, n: int | None) -> list[dict]:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return rows[:n] if n else rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps({"source": r["source"], "target": r["target"]}) + "\n" for r in rows))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-docs", type=int, default=1000)
    ap.add_argument("--test-docs", type=int, default=0, help="0: the whole test split")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--sentences", type=int, default=1, help="data.summary_sentences (k)")
    ap.add_argument("--max-seq-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--learning-rate", type=float, default=5e-5)
    ap.add_argument("--output", type=Path, default=None)
    args = ap.parse_args()

    import deltatune
    from deltatune.metrics.text import rouge
    from deltatune.data.sentences import greedy_oracle

    train_rows = read_jsonl(SCITLDR / "train.jsonl", args.train_docs)
    test_rows = read_jsonl(SCITLDR / "test.jsonl", args.test_docs or None)
    tmp = Path(tempfile.mkdtemp())
    cfg = {
        "task": "extractive-summarization",
        "output_dir": str(tmp / "run"),
        "seed": 42,
        "model": {"name_or_path": "minilm"},
        "data": {
            "train_file": str(write_jsonl(tmp / "train.jsonl", train_rows)),
            "validation_file": str(write_jsonl(tmp / "test.jsonl", test_rows)),
            "text_column": "source",
            "target_column": "target",
            "summary_sentences": args.sentences,
            "max_seq_length": args.max_seq_length,
        },
        "train": {
            "num_train_epochs": args.epochs,
            "per_device_train_batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "warmup_ratio": 0.06,
            "progress_bar": False,
        },
        "eval": {"eval_strategy": "no", "per_device_eval_batch_size": 64},
    }
    start = time.perf_counter()
    run = deltatune.finetune(cfg, verbose=False)
    model_metrics = run.metrics["validation"]
    wall = time.perf_counter() - start

    refs = [r["target"] for r in test_rows]
    k = args.sentences
    sents = [[s.strip() for s in r["source"] if s.strip()] for r in test_rows]
    lead = rouge([" ".join(s[:k]) for s in sents], refs)
    oracle = rouge([" ".join(s[i] for i in greedy_oracle(s, ref, k)) for s, ref in zip(sents, refs)], refs)

    keys = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    table = [
        (f"lead-{k}", lead),
        (f"MiniLM extractive (top-{k})", model_metrics),
        (f"oracle (greedy, {k} sentence{'s' if k > 1 else ''})", oracle),
    ]
    print(
        f"SciTLDR-A test: {len(test_rows)} documents ({sum(len(r) for r in refs)} references); "
        f"trained on {len(train_rows)} documents, {run.metrics['train']['global_step']} steps, "
        f"{run.metrics['train']['train_seconds']:.0f} s training, {wall:.0f} s total"
    )
    print("| system | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name, m in table:
        print(f"| {name} | " + " | ".join(f"{m[key]:.2f}" for key in keys) + " |")
    print(
        f"sentence classifier on test: accuracy {model_metrics['sentence_accuracy']:.4f}, "
        f"summary-class F1 {model_metrics['sentence_f1']:.4f}, loss {model_metrics['loss']:.4f}"
    )
    if args.output:
        import torch
        import transformers

        args.output.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "settings": {k2: (str(v) if isinstance(v, Path) else v) for k2, v in vars(args).items()},
            "test_documents": len(test_rows),
            "train_documents": len(train_rows),
            "lead": lead,
            "model": {k2: v for k2, v in model_metrics.items() if isinstance(v, (int, float))},
            "oracle": oracle,
            "train": run.metrics["train"],
            "wall_seconds": round(wall, 1),
            "environment": {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__},
        }
        args.output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
