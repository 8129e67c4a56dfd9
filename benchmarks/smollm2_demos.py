"""Generative fine-tuning of the packaged SmolLM2-135M-Instruct: before/after on real data.

Scenarios (each writes its slices to a temporary folder, trains with deltatune, and prints
the metrics of the pretrained model and of the fine-tuned one on the same held-out rows):

- ``shakespeare``: continued pretraining on tiny-shakespeare (first 90% of the text; train on
  its first ``--train-chars`` characters), held-out perplexity on the last 10%;
- ``translation``: English→German on a Multi30k train slice, BLEU/chrF on test2016 sentences;
- ``summarization``: SciTLDR-A train slice, ROUGE on test documents (all TLDRs as references);
- ``alpaca``: LoRA instruction SFT on the first ``--train`` (at most 800) examples of the Alpaca
  demo set; validation loss (on the first ``--val`` of the 199 rows after the first 800), EOS
  share and three generations before/after (``--test`` of those rows generated for).

Run from the repository root (CPU: minutes to an hour per scenario; sizes are flags)::

    HF_HUB_OFFLINE=1 python benchmarks/smollm2_demos.py shakespeare
    HF_HUB_OFFLINE=1 python benchmarks/smollm2_demos.py translation --train 1000 --test 200
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def _gz_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [ln.rstrip("\n") for ln in f]


def scenario(name: str, args: argparse.Namespace, tmp: Path) -> tuple[dict, str]:
    """(config dict, held-out data file) for one scenario."""
    base_train = {"num_train_epochs": args.epochs, "per_device_train_batch_size": args.batch_size, "logging_steps": 5}
    ev = {"eval_strategy": "no", "per_device_eval_batch_size": 8, "generation_batch_size": 16}
    if name == "shakespeare":
        text = (DATA / "text_generation" / "tiny_shakespeare" / "input.txt").read_text()
        cut = int(len(text) * 0.9)
        (tmp / "train.txt").write_text(text[: min(cut, args.train_chars)])
        (tmp / "val.txt").write_text(text[cut : cut + args.eval_chars])
        cfg = {
            "task": "causal-lm",
            "data": {"train_file": str(tmp / "train.txt"), "validation_file": str(tmp / "val.txt"), "max_seq_length": 256},
            "train": base_train,
            "eval": {**ev, "generation_max_samples": 0},
            "delta": {"method": args.method},
        }
        return cfg, str(tmp / "val.txt")
    if name == "translation":
        d = DATA / "translation" / "multi30k_en_de"
        en, de = _gz_lines(d / "train.en.gz"), _gz_lines(d / "train.de.gz")
        ten, tde = _gz_lines(d / "test_2016_flickr.en.gz"), _gz_lines(d / "test_2016_flickr.de.gz")
        train = _write_jsonl(tmp / "train.jsonl", [{"source": a, "target": b} for a, b in zip(en[: args.train], de[: args.train])])
        test = _write_jsonl(tmp / "test.jsonl", [{"source": a, "target": b} for a, b in zip(ten[: args.test], tde[: args.test])])
        cfg = {
            "task": "translation",
            "data": {"train_file": train, "validation_file": test, "max_seq_length": 128, "source_lang": "English", "target_lang": "German"},
            "train": base_train,
            "eval": {**ev, "max_new_tokens": 64, "generation_max_samples": args.test},
            "delta": {"method": args.method},
        }
        return cfg, test
    if name == "summarization":
        d = DATA / "summarization" / "scitldr_a"
        rows = [json.loads(x) for x in (d / "train.jsonl").read_text().splitlines()[: args.train]]
        test_rows = [json.loads(x) for x in (d / "test.jsonl").read_text().splitlines()[: args.test]]
        keep = ("source", "target")
        train = _write_jsonl(tmp / "train.jsonl", [{k: r[k] for k in keep} for r in rows])
        test = _write_jsonl(tmp / "test.jsonl", [{k: r[k] for k in keep} for r in test_rows])
        cfg = {
            "task": "summarization",
            "data": {"train_file": train, "validation_file": test, "max_seq_length": 384},
            "train": base_train,
            "eval": {**ev, "max_new_tokens": 48, "generation_max_samples": args.test},
            "delta": {"method": args.method},
        }
        return cfg, test
    if name == "alpaca":
        rows = json.loads((DATA / "text_generation" / "alpaca_en_demo" / "alpaca_en_demo.json").read_text())
        train = tmp / "train.json"
        val = tmp / "val.json"
        if args.train > 800:
            raise SystemExit("alpaca: --train is at most 800 (rows 800+ are the held-out set)")
        train.write_text(json.dumps(rows[: args.train]))
        heldout = rows[800:]  # always the same 199 held-out rows, whatever --train is
        val.write_text(json.dumps(heldout[: args.val] if args.val else heldout))
        cfg = {
            "task": "instruction",
            "data": {"train_file": str(train), "validation_file": str(val), "max_seq_length": args.max_seq_length},
            "train": base_train,
            "eval": {**ev, "max_new_tokens": 128, "generation_max_samples": args.test},
            "delta": {"method": "lora", "lora_r": 16, "lora_alpha": 32},
        }
        return cfg, str(val)
    raise SystemExit(f"unknown scenario {name}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=["shakespeare", "translation", "summarization", "alpaca"])
    p.add_argument("--train", type=int, default=800, help="training rows (translation/summarization/alpaca)")
    p.add_argument("--test", type=int, default=200, help="held-out rows to generate for")
    p.add_argument("--val", type=int, default=None, help="alpaca: validation-loss rows, the first N of the 199 held out (default all)")
    p.add_argument("--train-chars", type=int, default=200_000)
    p.add_argument("--eval-chars", type=int, default=40_000)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-seq-length", type=int, default=384)
    p.add_argument("--method", default="lora")
    p.add_argument("--output", help="write before/after metrics as JSON here")
    args = p.parse_args()

    import deltatune
    from deltatune.api import evaluate_pretrained

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cfg, heldout = scenario(args.scenario, args, tmp)
        cfg.update({"model": {"name_or_path": "smollm2"}, "output_dir": str(tmp / "run"), "seed": 42})
        cfg["train"]["progress_bar"] = sys.stderr.isatty()
        t0 = time.perf_counter()
        before = evaluate_pretrained(cfg, heldout)
        t_before = time.perf_counter() - t0
        run = deltatune.finetune(cfg, verbose=False)
        after = run.metrics["validation"]
        result = {
            "scenario": args.scenario,
            "args": vars(args),
            "before": before,
            "after": after,
            "train": run.metrics["train"],
            "data": run.metrics.get("data"),
            "seconds_before_eval": t_before,
        }
    keys = [k for k in ("loss", "perplexity", "bleu", "chrf", "rouge1", "rouge2", "rougeL", "rougeLsum", "exact_match", "f1", "generation_eos_share") if k in before]
    print(f"\n{args.scenario}: SmolLM2-135M-Instruct, {args.method}, trained {run.metrics['train']['global_step']} steps in {run.metrics['train']['train_seconds']:.0f} s")
    print(f"{'metric':<22}{'before':>12}{'after':>12}")
    for k in keys:
        print(f"{k:<22}{before[k]:>12.4f}{after[k]:>12.4f}")
    for label, m in (("before", before), ("after", after)):
        for s in m.get("samples", []):
            print(f"[{label}] {s['prediction'][:300]!r}  (reference: {s['reference'][:120]!r})")
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
