"""Extractive QA on XQuAD (English): the packaged MiniLM fine-tuned in full, EM and F1 on held-out articles.

XQuAD English (``../shared/data/question_answering/xquad_en/xquad.en.json``) is 240 paragraphs
and 1,190 questions of SQuAD v1.1's development set in 48 articles (Artetxe et al. 2020). The
questions of the first ``--train-articles`` articles (file order) train the model; the questions
of the remaining articles are the evaluation set, so no paragraph is seen in both. The split
files are written as SQuAD JSON to a temporary folder (never into the repository) and read back
through deltatune's SQuAD loader.

Printed: training and evaluation questions and windows, optimizer steps, training seconds,
exact match and F1 (official SQuAD definitions, percent) on the evaluation articles.

Run from the repository root::

    HF_HUB_OFFLINE=1 python benchmarks/xquad.py --output benchmarks/results/xquad.json
    HF_HUB_OFFLINE=1 python benchmarks/xquad.py --max-train-questions 40 --max-eval-questions 20 --epochs 1   # quick check
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
XQUAD = ROOT.parent / "shared" / "data" / "question_answering" / "xquad_en" / "xquad.en.json"


def split_articles(path: Path, train_articles: int, max_train: int | None, max_eval: int | None) -> tuple[dict, dict]:
    """(train, eval) SQuAD dicts: the first ``train_articles`` articles and the rest, questions capped in file order."""
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    if not 0 < train_articles < len(data):
        raise SystemExit(f"--train-articles must be between 1 and {len(data) - 1}")

    def capped(articles: list[dict], limit: int | None) -> dict:
        out, left = [], limit if limit is not None else float("inf")
        for art in articles:
            paragraphs = []
            for para in art["paragraphs"]:
                qas = para["qas"][: int(min(left, len(para["qas"])))]
                left -= len(qas)
                if qas:
                    paragraphs.append({**para, "qas": qas})
            if paragraphs:
                out.append({**art, "paragraphs": paragraphs})
        return {"version": "1.1", "data": out}

    return capped(data[:train_articles], max_train), capped(data[train_articles:], max_eval)


def n_questions(squad: dict) -> int:
    return sum(len(p["qas"]) for a in squad["data"] for p in a["paragraphs"])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=XQUAD)
    ap.add_argument("--train-articles", type=int, default=40)
    ap.add_argument("--max-train-questions", type=int, default=None, help="cap on training questions (file order)")
    ap.add_argument("--max-eval-questions", type=int, default=None, help="cap on evaluation questions (file order)")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--learning-rate", type=float, default=1e-4)
    ap.add_argument("--max-seq-length", type=int, default=384)
    ap.add_argument("--doc-stride", type=int, default=128)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    import deltatune

    train, dev = split_articles(args.data, args.train_articles, args.max_train_questions, args.max_eval_questions)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "train.json").write_text(json.dumps(train))
        (tmp / "dev.json").write_text(json.dumps(dev))
        cfg = {
            "task": "question-answering",
            "output_dir": str(tmp / "run"),
            "seed": args.seed,
            "model": {"name_or_path": "minilm"},
            "data": {
                "train_file": str(tmp / "train.json"),
                "validation_file": str(tmp / "dev.json"),
                "max_seq_length": args.max_seq_length,
                "doc_stride": args.doc_stride,
            },
            "train": {
                "num_train_epochs": args.epochs,
                "per_device_train_batch_size": args.batch_size,
                "learning_rate": args.learning_rate,
                "warmup_ratio": 0.1,
                "weight_decay": 0.01,
                "progress_bar": False,
            },
            "eval": {"eval_strategy": "no", "per_device_eval_batch_size": 32},
            "delta": {"method": "full"},
        }
        t0 = time.perf_counter()
        run = deltatune.finetune(cfg, verbose=True)
        wall = time.perf_counter() - t0
    m, t = run.metrics["validation"], run.metrics["train"]
    result = {
        "model": "minilm (all-MiniLM-L6-v2), full fine-tuning",
        "data": (
            f"{args.data.name}: train = questions of articles 1-{args.train_articles}"
            + (f" (the first {args.max_train_questions} in file order, {len(train['data'])} articles)" if args.max_train_questions else "")
            + f", eval = the questions of the other {len(dev['data'])} articles"
            + (f" (the first {args.max_eval_questions})" if args.max_eval_questions else "")
        ),
        "train_questions": n_questions(train),
        "eval_questions": n_questions(dev),
        "settings": {k: v for k, v in vars(args).items() if k not in ("data", "output")},
        "optimizer_steps": t["global_step"],
        "train_seconds": t["train_seconds"],
        "total_seconds": round(wall, 1),
        "exact_match": round(m["exact_match"], 2),
        "f1": round(m["f1"], 2),
        "eval_loss": round(m["loss"], 4),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
    }
    print()
    print(f"XQuAD-en, MiniLM full fine-tuning ({result['train_questions']} train / {result['eval_questions']} eval questions)")
    print(f"{'metric':<22}{'value':>10}")
    for key in ("exact_match", "f1", "eval_loss", "optimizer_steps", "train_seconds", "total_seconds"):
        print(f"{key:<22}{result[key]:>10}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
