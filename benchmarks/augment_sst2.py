"""EDA data augmentation (``data.augmentation: eda``) on few-example SST-2: does it help?

For each size K (examples per class) and seed, K rows per class are sampled from the first
8,000 rows of SST-2's train.tsv with :func:`benchmarks.fewshot.sample_per_class` (benchmarks/fewshot.py's
sampling, imported); the same rows train

- ``standard``: plain fine-tuning (benchmarks/fewshot.py's ``standard`` arm: batch 8,
  learning rate 1e-4, warmup 10%, weight decay 0.01);
- ``eda``: the same, on the rows plus ``data.augmentation_copies`` (4) EDA copies each
  (alpha 0.1, all four operations, WordNet synonyms; Wei and Zou 2019's setting for small data);
- ``eda_same_epochs`` (not in the default ``--arms``): ``eda`` with 5x the steps, i.e. the same
  number of passes over the (augmented) training set as ``standard`` makes over the originals;
- ``standard_long`` (not in the default ``--arms``): ``standard`` with 5x the steps, the control
  of ``eda_same_epochs`` (is it the copies or the extra steps?);

both full fine-tuning of the packaged MiniLM (all-MiniLM-L6-v2), max length 64, no model selection
(``eval.eval_strategy: no``). ``standard`` and ``eda`` take the **same number of optimizer steps**,
``10 epochs x ceil(2K / 8)`` (``train.max_steps``; ``--epochs``): the ``eda`` arm sees 5x more distinct
rows in 2 passes where ``standard`` makes 10 passes over the originals, so the comparison is "same compute,
more varied data" rather than "more steps". Accuracy on all of SST-2's dev.tsv (872 rows); mean +-
std over the seeds; every run and the summary as JSON to ``--output``.

The WordNet corpus must be on nltk's data path (``NLTK_DATA``). Offline, ``--wordnet-from-debian
DIR`` makes an nltk-readable copy in ``DIR`` from Debian's ``wordnet-base`` and
``wordnet-sense-index`` packages (``apt-get install wordnet-base wordnet-sense-index``: the
WordNet 3.0 database files nltk's own ``wordnet`` corpus holds, plus the ``lexnames`` list from
the WordNet documentation) and points ``NLTK_DATA`` at it.

Run from the repository root (the full grid: 4 sizes x 3 seeds x 2 arms; ``--arms
standard,eda,eda_same_epochs`` adds the third)::

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/augment_sst2.py --wordnet-from-debian /tmp/nltk_data \\
        --output benchmarks/results/augment_sst2.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ (already there when run as a script)
from fewshot import DATASETS, read_rows, sample_per_class, write_csv  # noqa: E402  (benchmarks/fewshot.py)

POOL = 8000
ARMS = ("standard", "eda", "eda_same_epochs", "standard_long")
COPIES = 4
# WordNet 3.0's lexicographer files (lexnames(5WN)): index, name, syntactic category (1 noun, 2 verb, 3 adj, 4 adv)
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body noun.cognition "
    "noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive noun.object noun.person "
    "noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication verb.competition verb.consumption "
    "verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative "
    "verb.weather adj.ppl"
).split()
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


def wordnet_from_debian(target: Path, source: Path = Path("/usr/share/wordnet")) -> Path:
    """An nltk data folder (``target/corpora/wordnet``) holding Debian's WordNet 3.0 files (copied:
    nltk refuses symbolic links that leave its root) and a ``lexnames`` file; returns ``target``."""
    folder = target / "corpora" / "wordnet"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{kind}.{pos}" for kind in ("data", "index") for pos in ("adj", "adv", "noun", "verb")]
    names += [f"{pos}.exc" for pos in ("adj", "adv", "noun", "verb")] + ["index.sense", "cntlist.rev"]
    for name in names:
        if not (source / name).is_file():
            raise SystemExit(f"{source / name} is missing: apt-get install wordnet-base wordnet-sense-index")
        if not (folder / name).is_file():
            shutil.copyfile(source / name, folder / name)
    lines = [f"{i:02d}\t{n}\t{_CATEGORY[n.split('.')[0]]}\n" for i, n in enumerate(_LEXNAMES)]
    (folder / "lexnames").write_text("".join(lines))
    return target


def config(arm: str, train: Path, evaluation: Path, out: Path, seed: int, steps: int) -> dict:
    """The run config of ``arm`` (see the module) on the sampled ``train`` rows."""
    data = {"train_file": str(train), "validation_file": str(evaluation), "max_seq_length": 64}
    if arm.startswith("eda"):
        data.update(augmentation="eda", augmentation_copies=COPIES, augmentation_alpha=0.1)
    if arm in ("eda_same_epochs", "standard_long"):
        steps *= 1 + COPIES
    return {
        "task": "text-classification", "output_dir": str(out), "seed": seed, "model": {"name_or_path": "minilm"},
        "data": data,
        "train": {"progress_bar": False, "weight_decay": 0.01, "per_device_train_batch_size": 8, "learning_rate": 1e-4,
                  "warmup_ratio": 0.1, "num_train_epochs": 1000, "max_steps": steps},
        "eval": {"eval_strategy": "no", "worst_examples": 0},
        "delta": {"method": "full"},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="8,16,32,64", help="examples per class, comma-separated")
    p.add_argument("--seeds", default="0,1,2", help="sampling (and training) seeds, comma-separated")
    p.add_argument("--arms", default="standard,eda", help="comma-separated, of: " + ", ".join(ARMS))
    p.add_argument("--epochs", type=int, default=10, help="optimizer steps = epochs x ceil(2K / 8), both arms")
    p.add_argument("--max-eval", type=int, default=None, help="evaluate on the first N dev rows only (smoke runs)")
    p.add_argument("--wordnet-from-debian", type=Path, default=None, help="make an nltk WordNet folder here (see module)")
    p.add_argument("--output", type=Path, required=True, help="JSON file to write")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    arms = [a for a in args.arms.split(",") if a]
    if set(arms) - set(ARMS):
        raise SystemExit(f"unknown arm(s) {', '.join(sorted(set(arms) - set(ARMS)))}; choose from {', '.join(ARMS)}")
    if args.wordnet_from_debian:
        os.environ["NLTK_DATA"] = str(wordnet_from_debian(args.wordnet_from_debian))

    import deltatune
    from deltatune.data.augment import wordnet_synonyms

    t0 = time.perf_counter()
    wordnet_synonyms()("good")  # fails early without WordNet; loads it once for every run
    wordnet_seconds = round(time.perf_counter() - t0, 1)

    spec = DATASETS["sst2"]
    pool = read_rows(spec["train"], spec["text"], spec["label"], spec["tsv"])[:POOL]
    eval_rows = read_rows(spec["eval"], spec["text"], spec["label"], spec["tsv"])[: args.max_eval]
    work = Path(tempfile.mkdtemp(prefix="augment-"))
    evaluation = write_csv(work / "dev.csv", eval_rows)
    results = []
    started = time.perf_counter()
    try:
        for k in sizes:
            steps = args.epochs * math.ceil(2 * k / 8)
            for seed in seeds:
                train = write_csv(work / f"{k}-{seed}.csv", sample_per_class(pool, k, seed))
                for arm in arms:
                    out = work / f"{k}-{seed}-{arm}"
                    t = time.perf_counter()
                    run = deltatune.finetune(config(arm, train, evaluation, out, seed, steps), overwrite=True, verbose=False)
                    files = run.metrics["train"]["data_files"]["train"]
                    record = {
                        "per_class": k, "seed": seed, "arm": arm, "accuracy": run.metrics["validation"]["accuracy"],
                        "f1_macro": run.metrics["validation"].get("f1_macro"), "train_rows": files["rows"],
                        "added_rows": files.get("augmentation", {}).get("added_rows", 0), "eval_rows": len(eval_rows),
                        "steps": run.metrics["train"]["global_step"], "train_seconds": run.metrics["train"]["train_seconds"],
                        "peak_rss_mib": run.metrics["train"].get("peak_rss_mib"),
                        "wall_seconds": round(time.perf_counter() - t, 1),
                    }
                    results.append(record)
                    print(json.dumps(record), flush=True)
                    shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    summary: dict = {}
    print(f"\n{'K/class':>7} {'arm':<9} {'accuracy mean +- std':>22} {'seeds':>5}")
    for k in sizes:
        for arm in arms:
            accs = [r["accuracy"] for r in results if (r["per_class"], r["arm"]) == (k, arm)]
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            summary.setdefault(str(k), {})[arm] = {"mean": statistics.mean(accs), "std": std, "n": len(accs)}
            print(f"{k:>7} {arm:<9} {100 * statistics.mean(accs):>14.1f} +- {100 * std:4.1f} {len(accs):>5}")
    payload = {
        "benchmark": "augment_sst2", "model": "minilm", "pool": POOL, "sizes": sizes, "seeds": seeds, "arms": arms,
        "epochs_of_originals": args.epochs, "eda": {"copies": 4, "alpha": 0.1, "operations": "all four"},
        "wordnet_load_seconds": wordnet_seconds, "total_seconds": round(time.perf_counter() - started, 1),
        "results": results, "summary": summary,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.output} ({payload['total_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
