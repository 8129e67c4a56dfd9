"""CoNLL-2003 English NER with the packaged MiniLM: train on a slice of eng.train, evaluate on eng.testa.

deltatune fine-tunes all weights of MiniLM (``task: token-classification``) on the first
``--train-rows`` sentences of ``../shared/data/token_classification/conll2003/eng.train`` and
evaluates on eng.testa (the standard development set, all 3,250 sentences unless
``--eval-rows``). Printed: entity precision/recall/F1 (conlleval definition, via seqeval)
overall and per type, word accuracy, training time and throughput.

The default size (1,500 sentences, 2 epochs) was chosen to stay well under 12 minutes on the
shared 2-core machine this was written on while other jobs were running (it took 5.3 minutes
there, plus about a minute for the cross-check); ``--threads 1`` avoids oversubscribing those
cores (there it made a MiniLM training step ~3x faster than torch's default of 2 threads).
Results of the run: ``benchmarks/results/conll2003.json``.

As a cross-check of the metric plumbing, the trained run is reloaded with ``deltatune.load``,
its per-word predictions on the same sentences are scored directly with
``seqeval.metrics.f1_score``, and that F1 is printed next to the one from training.

Run from the repository root::

    HF_HUB_OFFLINE=1 python benchmarks/conll2003.py --threads 1 --output benchmarks/results/conll2003.json
    HF_HUB_OFFLINE=1 python benchmarks/conll2003.py --train-rows 64 --eval-rows 32 --epochs 1   # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONLL = ROOT.parent / "shared" / "data" / "token_classification" / "conll2003"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-rows", type=int, default=1500, help="first N sentences of eng.train")
    p.add_argument("--eval-rows", type=int, default=None, help="first N sentences of eng.testa (default: all 3,250)")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=3e-4)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--output", help="write the results as JSON here")
    args = p.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    import deltatune
    from deltatune.data import load_table
    from seqeval.metrics import f1_score

    with tempfile.TemporaryDirectory() as tmp:
        config = {
            "task": "token-classification",
            "output_dir": str(Path(tmp) / "run"),
            "seed": args.seed,
            "model": {"name_or_path": "minilm"},
            "data": {
                "train_file": str(CONLL / "eng.train"),
                "validation_file": str(CONLL / "eng.testa"),
                "max_train_samples": args.train_rows,
                "max_eval_samples": args.eval_rows,
                "max_seq_length": args.max_length,
            },
            "train": {
                "num_train_epochs": args.epochs,
                "per_device_train_batch_size": args.batch_size,
                "learning_rate": args.learning_rate,
                "progress_bar": False,
            },
            "eval": {"eval_strategy": "no"},
        }
        start = time.perf_counter()
        run = deltatune.finetune(config, verbose=False)
        total_seconds = time.perf_counter() - start
        m, t = run.metrics["validation"], run.metrics["train"]

        dev = load_table(str(CONLL / "eng.testa"))
        if args.eval_rows:
            dev = dev.select(range(min(args.eval_rows, len(dev))))
        predicted = [r["tags"] for r in run.predictor().predict_rows(dev, "eng.testa")]
        crosscheck_f1 = float(f1_score(dev["tags"], predicted))

    types = sorted(k[: -len("_support")] for k in m if k.endswith("_support"))
    print(
        f"CoNLL-2003 eng.testa ({len(dev)} sentences), MiniLM full fine-tuning on the first {args.train_rows} sentences of "
        f"eng.train, {args.epochs:g} epochs, batch {args.batch_size}, lr {args.learning_rate:g}, max length {args.max_length}"
    )
    print(f"{'entity type':<12}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}")
    for name in types:
        print(f"{name:<12}{m[name + '_precision']:>10.4f}{m[name + '_recall']:>10.4f}{m[name + '_f1']:>10.4f}{m[name + '_support']:>9d}")
    support = sum(m[n + "_support"] for n in types)
    print(f"{'overall':<12}{m['precision']:>10.4f}{m['recall']:>10.4f}{m['f1']:>10.4f}{support:>9d}")
    print(f"word accuracy {m['accuracy']:.4f} | eval loss {m['loss']:.4f} | words cut by max length {m['truncated_words']}")
    print(f"seqeval f1_score on reloaded-run predictions: {crosscheck_f1:.4f} (training-time f1 {m['f1']:.4f})")
    print(
        f"train {t['train_seconds']:.1f} s, {t['global_step']} steps, {t['examples_per_second']:.1f} sentences/s, "
        f"peak RSS {t['peak_rss_mib'] / 1024:.2f} GiB; whole run incl. loading and evaluation {total_seconds:.1f} s"
    )
    print(
        f"{torch.get_num_threads()} torch threads on {os.cpu_count()} CPUs; load average "
        f"{load_before[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end (other jobs share the CPU)"
    )

    if args.output:
        import transformers

        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "args": vars(args),
            "validation": m,
            "train": t,
            "crosscheck_seqeval_f1": crosscheck_f1,
            "total_seconds": total_seconds,
            "peak_rss_mib_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "platform": {
                "machine": platform.machine(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "load_average_start_end": [load_before[0], os.getloadavg()[0]],
            },
        }
        out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
