"""Knowledge distillation on SST-2: an MPNet teacher (109M) distilled into the packaged MiniLM (22.7M).

Stages, each a ``python -m deltatune`` subprocess timed by ``/usr/bin/time`` (wall seconds, peak RSS):

1. ``teacher``: ``mpnet`` fine-tuned with the examples/sst2.yaml recipe on the first ``--rows`` rows
   of ``../shared/data/text_classification/sst2/train.tsv`` (``--teacher-epochs`` epochs, batch 32, lr 1e-4), dev.tsv;
2. ``student-standard``: MiniLM fine-tuned the same way on the same rows (``--student-epochs`` epochs);
3. ``student-distilled``: ``deltatune distill --teacher <1> --student minilm`` (the teacher's config,
   distill.alpha 0.5, distill.temperature 2);
4. ``student-distilled-unlabeled`` (with ``--unlabeled N``): as 3, plus the next N train.tsv rows
   given as text only (``distill.unlabeled_file``: the KL term only).

Writes ``--output`` (JSON, after every stage): per stage dev accuracy, wall seconds, training
seconds, peak RSS (MiB) and, for the distilled students, the teacher pass's seconds. A finished
stage (its eval.json present) is read back, not run again. Run from the repository root::

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 python benchmarks/distill_sst2.py --rows 1000 --unlabeled 1000 \\
        --runs runs/distill_sst2 --output benchmarks/results/distill_sst2.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "text_classification" / "sst2"


def _stage(name: str, argv: list[str], run: Path, log: Path) -> dict:
    """Run ``deltatune <argv>`` (unless ``run`` is finished) and read its figures."""
    timing = run.parent / f"{name}.time"
    if not (run / "eval.json").is_file():
        start = time.time()
        with log.open("w") as f:
            rc = subprocess.call(["/usr/bin/time", "-f", "%e %M", "-o", str(timing), sys.executable, "-m", "deltatune", *argv],
                                 stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if rc != 0:
            raise SystemExit(f"stage {name} failed ({rc}); see {log}")
        print(f"{name}: {time.time() - start:.0f} s", flush=True)
    ev = json.loads((run / "eval.json").read_text())
    wall, peak = (timing.read_text().split()[-2:] if timing.is_file() else (None, None))
    teacher = re.search(r"teacher pass done in (\d+) s", log.read_text()) if log.is_file() else None
    return {
        "dev_accuracy": ev["validation"]["accuracy"],
        "wall_seconds": float(wall) if wall else None,
        "peak_rss_mib": round(int(peak) / 1024, 1) if peak else None,
        "train_seconds": ev["train"]["train_seconds"],
        "train_peak_rss_mib": ev["train"].get("peak_rss_mib"),
        "train_examples": ev["train"]["data_files"]["train"]["rows"],
        "teacher_pass_seconds": float(teacher.group(1)) if teacher else None,
        "run": str(run),
    }


SPEED_SNIPPET = r"""
import json, sys, time
import datasets, torch
import deltatune
from deltatune.data.loading import load_table
run, dev = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
p = deltatune.load(run)
rows = load_table(dev).select_columns(["sentence"])
p.predict_rows(rows.select(range(64)), "dev", batch_size=32)  # warm-up
start = time.perf_counter()
p.predict_rows(rows, "dev", batch_size=32)
seconds = time.perf_counter() - start
params = sum(t.numel() for t in p.model.parameters())
print(json.dumps({"parameters": params, "predict_rows": len(rows), "predict_seconds": round(seconds, 2),
                  "predict_rows_per_second": round(len(rows) / seconds, 1)}))
"""


def _predict_speed(run: Path) -> dict:
    """Parameters of the run's model and its prediction speed on the 872 dev.tsv rows (batch 32, after a
    64-row warm-up), measured in a fresh process so one run's threads and caches do not help another."""
    out = subprocess.run([sys.executable, "-c", SPEED_SNIPPET, str(run), str(SST2 / "dev.tsv")], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if out.returncode != 0:
        raise SystemExit(f"predict speed of {run} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _unlabeled(rows: int, n: int, out: Path) -> Path:
    """The ``sentence`` column of train.tsv rows ``rows .. rows + n`` (no labels) as a TSV."""
    with (SST2 / "train.tsv").open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        texts = [r["sentence"] for i, r in enumerate(reader) if rows <= i < rows + n]
    out.write_text("sentence\n" + "".join(t.replace("\t", " ") + "\n" for t in texts), encoding="utf-8")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=8000, help="first N training rows (teacher and students)")
    ap.add_argument("--unlabeled", type=int, default=0, help="also distil with the next N train.tsv rows as unlabelled text")
    ap.add_argument("--teacher-epochs", type=int, default=1, help="epochs of the teacher")
    ap.add_argument("--student-epochs", type=int, default=1, help="epochs of every student (standard and distilled)")
    ap.add_argument("--runs", default="runs/distill_sst2", help="folder of the runs")
    ap.add_argument("--output", default="benchmarks/results/distill_sst2.json")
    args = ap.parse_args()
    runs = (ROOT / args.runs).resolve()
    runs.mkdir(parents=True, exist_ok=True)
    recipe, rows = "examples/sst2.yaml", f"data.max_train_samples={args.rows}"
    quiet = "train.progress_bar=false"
    epochs = f"train.num_train_epochs={args.student_epochs}"
    teacher = runs / "teacher-mpnet"
    plan = [
        ("teacher", ["train", recipe, rows, quiet, f"train.num_train_epochs={args.teacher_epochs}", "model.name_or_path=mpnet", "name=sst2-teacher-mpnet", f"output_dir={teacher}"], teacher),
        ("student-standard", ["train", recipe, rows, quiet, epochs, "name=sst2-minilm", f"output_dir={runs / 'minilm-standard'}"],
         runs / "minilm-standard"),
        ("student-distilled", ["distill", "--teacher", str(teacher), "--student", "minilm", quiet, epochs, f"--output-dir={runs / 'minilm-distilled'}"],
         runs / "minilm-distilled"),
    ]
    if args.unlabeled:
        extra = _unlabeled(args.rows, args.unlabeled, runs / "unlabeled.tsv")
        plan.append(("student-distilled-unlabeled", ["distill", "--teacher", str(teacher), "--student", "minilm", quiet, epochs,
                                                     f"distill.unlabeled_file={extra}", f"--output-dir={runs / 'minilm-distilled-unlabeled'}"],
                     runs / "minilm-distilled-unlabeled"))
    results = {"rows": args.rows, "unlabeled": args.unlabeled, "teacher_epochs": args.teacher_epochs, "student_epochs": args.student_epochs, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
               "cpus": os.cpu_count(), "stages": {}}
    out = ROOT / args.output
    out.parent.mkdir(parents=True, exist_ok=True)
    for name, argv, run in plan:
        results["stages"][name] = _stage(name, argv, run, runs / f"{name}.log")
        results["stages"][name].update(_predict_speed(run))
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps({name: results["stages"][name]}), flush=True)


if __name__ == "__main__":
    main()
