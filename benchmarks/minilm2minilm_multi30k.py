"""English→German translation with an encoder-decoder warm-started from two copies of the packaged MiniLM.

``model.name_or_path: minilm`` + ``model.decoder_name_or_path: minilm`` builds an
``EncoderDecoderModel`` (the bert2bert setup of Rothe et al. 2020, TACL): the encoder and the
decoder's self-attention and embeddings come from all-MiniLM-L6-v2; the decoder's
cross-attention and LM-head transform are new. It is trained with deltatune on a Multi30k
(Elliott et al. 2016) en→de train slice and scored on test2016 (flickr) sentences.

What it prints: validation loss/perplexity over target tokens before training (untrained
cross-attention) and after; the first and last logged training loss; BLEU and chrF
(sacrebleu defaults, corpus level) of greedy generations against the plain references and
against references normalised the way the MiniLM tokenizer sees them. MiniLM's tokenizer is
English uncased WordPiece: it lower-cases and strips accents (ä → a, ß stays), so the model
can never produce German casing or umlauts; "normalised" BLEU compares with
``tokenizer.decode(tokenizer.encode(reference))``, the best the tokenizer allows. Both are
printed, clearly labelled; plain BLEU is the comparable number.

Run from the repository root (CPU; sizes are flags)::

    HF_HUB_OFFLINE=1 python benchmarks/minilm2minilm_multi30k.py --train 800 --test 200 --epochs 1 \\
        --learning-rate 2e-4 --output benchmarks/results/minilm2minilm_multi30k.json

One training step (batch 16, ~23 source and ~34 target tokens) costs about 110 GFLOP; on the
2-core CPU shared with other jobs where it was run that took ~12 s, hence the small slice.
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
DATA = ROOT.parent / "shared" / "data" / "translation" / "multi30k_en_de"


def _gz_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [ln.rstrip("\n") for ln in f]


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=3000, help="training pairs (the first N of train)")
    p.add_argument("--test", type=int, default=200, help="test2016 pairs to score (the first N)")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--max-length", type=int, default=64, help="data.max_seq_length and data.max_target_length")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--num-beams", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared, loaded CPU)")
    p.add_argument("--output", help="write the results as JSON here")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    import deltatune
    from deltatune.api import evaluate_pretrained
    from deltatune.metrics.text import bleu_chrf

    en, de = _gz_lines(DATA / "train.en.gz"), _gz_lines(DATA / "train.de.gz")
    ten, tde = _gz_lines(DATA / "test_2016_flickr.en.gz"), _gz_lines(DATA / "test_2016_flickr.de.gz")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        train = _write_jsonl(tmp / "train.jsonl", [{"source": a, "target": b} for a, b in zip(en[: args.train], de[: args.train])])
        test_rows = [{"source": a, "target": b} for a, b in zip(ten[: args.test], tde[: args.test])]
        test = _write_jsonl(tmp / "test.jsonl", test_rows)
        cfg = {
            "task": "translation",
            "output_dir": str(tmp / "run"),
            "seed": 42,
            "model": {"name_or_path": "minilm", "decoder_name_or_path": "minilm"},
            "data": {"train_file": train, "validation_file": test, "max_seq_length": args.max_length, "max_target_length": args.max_length},
            "train": {
                "num_train_epochs": args.epochs, "per_device_train_batch_size": args.batch_size,
                "learning_rate": args.learning_rate, "logging_steps": 5, "progress_bar": sys.stderr.isatty(),
            },
            # generation is done below through the saved run (deltatune.load), to score it two ways
            "eval": {
                "eval_strategy": "no", "generation_max_samples": 0, "per_device_eval_batch_size": 32,
                "max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams, "generation_batch_size": 32,
            },
        }
        t0 = time.perf_counter()
        before = evaluate_pretrained(cfg, test)
        t_before = time.perf_counter() - t0
        run = deltatune.finetune(cfg, verbose=False)
        logged = [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()]
        train_losses = [(r["step"], r["loss"]) for r in logged if "loss" in r]

        t0 = time.perf_counter()
        predictor = deltatune.load(run.path)
        records = predictor.predict_rows(predictor.task.rows_from_texts([r["source"] for r in test_rows]))
        t_generate = time.perf_counter() - t0
        preds = [r["generated"] for r in records]
        tok = predictor.tokenizer
        refs = [r["target"] for r in test_rows]
        norm_refs = [tok.decode(tok(r)["input_ids"], skip_special_tokens=True) for r in refs]
        plain = bleu_chrf(preds, [[r] for r in refs])
        normalised = bleu_chrf(preds, [[r] for r in norm_refs])
        after = run.metrics["validation"]
        result = {
            "args": vars(args),
            "model": "EncoderDecoderModel(minilm, minilm)",
            "torch_threads": torch.get_num_threads(),
            "before": {"loss": before["loss"], "perplexity": before["perplexity"], "tokens": before["tokens"]},
            "after": {"loss": after["loss"], "perplexity": after["perplexity"], "tokens": after["tokens"]},
            "train_loss_first": train_losses[0],
            "train_loss_last": train_losses[-1],
            "train_losses": train_losses,
            "bleu_plain": plain["bleu"],
            "chrf_plain": plain["chrf"],
            "bleu_normalised_refs": normalised["bleu"],
            "chrf_normalised_refs": normalised["chrf"],
            "ended_with_eos_share": sum(r["ended_with_eos"] for r in records) / max(len(records), 1),
            "train": run.metrics["train"],
            "data": run.metrics.get("data"),
            "seconds_before_eval": t_before,
            "seconds_generate": t_generate,
            "samples": [{"source": s["source"], "prediction": q, "reference": r, "reference_normalised": n}
                        for s, q, r, n in list(zip(test_rows, preds, refs, norm_refs))[:5]],
        }
    t = run.metrics["train"]
    print(
        f"\nminilm2minilm en→de: {args.train} Multi30k train pairs, {args.epochs:g} epochs, {t['global_step']} steps "
        f"(batch {args.batch_size}) in {t['train_seconds']:.0f} s; {t['trainable_parameters'] / 1e6:.1f}M parameters trained"
    )
    print(f"{'metric (test2016, ' + str(args.test) + ' sentences)':<44}{'before':>10}{'after':>10}")
    print(f"{'loss (nats / target token)':<44}{before['loss']:>10.3f}{after['loss']:>10.3f}")
    print(f"{'perplexity':<44}{before['perplexity']:>10.1f}{after['perplexity']:>10.1f}")
    print(f"{'training loss (first / last logged step)':<44}{train_losses[0][1]:>10.3f}{train_losses[-1][1]:>10.3f}")
    print(f"{'BLEU, plain references':<44}{'':>10}{plain['bleu']:>10.2f}")
    print(f"{'chrF, plain references':<44}{'':>10}{plain['chrf']:>10.2f}")
    print(f"{'BLEU, references normalised by the tokenizer':<44}{'':>10}{normalised['bleu']:>10.2f}")
    print(f"{'chrF, references normalised by the tokenizer':<44}{'':>10}{normalised['chrf']:>10.2f}")
    print(f"{'generations ending with [SEP]':<44}{'':>10}{result['ended_with_eos_share']:>10.2f}")
    for s in result["samples"][:3]:
        print(f"  src: {s['source']}\n  out: {s['prediction']}\n  ref: {s['reference']}\n  ref (normalised): {s['reference_normalised']}")
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
