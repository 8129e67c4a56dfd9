"""Speech recognition on FSDD with the packaged whisper-tiny-en: zero-shot vs fine-tuned (docs/vision_audio.md).

FSDD (../shared/data/audio_classification/fsdd, 3,000 8 kHz WAVs of spoken digits, CC BY-SA 4.0) has
no transcript column, so this script first writes ``<data-dir>/fsdd_asr.csv`` (absolute ``path``,
``text`` = the digit as a word, "zero" ... "nine", and ``split``); the repository's data is not
copied. Then, on the test split:

1. zero-shot, Whisper's own 30 s window (the first ``--zero-shot-30s`` test clips; slow on a CPU);
2. zero-shot with the clip length the fine-tuned run uses (``data.max_audio_seconds`` of the example,
   the encoder cut to its first positions);
3. fine-tuned with ``examples/fsdd_asr.yaml`` (``deltatune.finetune``), then transcribed by the saved run.

Each is scored with the task's scorer (``wer``, ``cer``, ``exact_match`` on normalized text, in
percent) and a lenient ``digit_accuracy``: the normalized transcript is the digit's word or its
numeral (Whisper zero-shot often writes "7."). Results go to ``--output`` (JSON).

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 python benchmarks/fsdd_asr.py --output benchmarks/results/fsdd_asr.json
    python benchmarks/fsdd_asr.py --write-manifest-only          # just the manifest examples/fsdd_asr.yaml reads
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FSDD = ROOT.parent / "shared" / "data" / "audio_classification" / "fsdd"
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def write_manifest(out: Path, fsdd: Path = FSDD) -> Path:
    """``out/fsdd_asr.csv``: path (absolute), text (digit word), split, from ``fsdd``/manifest.csv.

    Raises:
        SystemExit: one line when ``fsdd``/manifest.csv is missing (name the folder with ``--fsdd``).
    """
    fsdd = Path(fsdd).resolve()
    if not (fsdd / "manifest.csv").is_file():
        raise SystemExit(f"error: {fsdd / 'manifest.csv'} not found; point --fsdd at the FSDD folder (audio_classification/fsdd of the shared data)")
    out.mkdir(parents=True, exist_ok=True)
    target = out / "fsdd_asr.csv"
    with (fsdd / "manifest.csv").open() as f, target.open("w", newline="") as g:
        w = csv.writer(g)
        w.writerow(["path", "text", "split"])
        for row in csv.DictReader(f):
            w.writerow([str(fsdd / row["path"]), WORDS[int(row["label"])], row["split"]])
    return target


def score(predictions: list[str], references: list[str]) -> dict:
    """The task's scorer plus the lenient digit accuracy (word or numeral)."""
    from deltatune.metrics.speech import normalize_transcript, wer_cer

    metrics = wer_cer(predictions, [[r] for r in references])
    ok = sum(normalize_transcript(p) in (r, str(WORDS.index(r))) for p, r in zip(predictions, references))
    metrics["digit_accuracy"] = 100.0 * ok / len(references)
    metrics["clips"] = len(references)
    metrics["samples"] = [{"prediction": p, "reference": r} for p, r in list(zip(predictions, references))[:5]]
    return metrics


def zero_shot(config: dict, test, max_audio_seconds: float | None) -> tuple[dict, float]:
    """Transcribe ``test`` rows with the pretrained model through the task's own code (no training)."""
    from deltatune.config import build_config
    from deltatune.models import resolve_model
    from deltatune.models.loading import load_processor
    from deltatune.tasks import create_task

    cfg = build_config(config, {"data.max_audio_seconds": max_audio_seconds})
    task = create_task(cfg)
    path = resolve_model(cfg.model.name_or_path)
    processor = load_processor(path, task.input_kind)
    task.set_tokenizer(processor)
    model = task.build_model(path, {}).eval()
    start = time.perf_counter()
    texts, _ = task.generate_rows(model, processor, test, "cpu", "test")
    seconds = time.perf_counter() - start
    return score(texts, list(test["text"])), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fsdd", default=str(FSDD), help="the FSDD folder holding manifest.csv (default: ../shared/data/audio_classification/fsdd)")
    ap.add_argument("--data-dir", default=str(ROOT / "runs" / "fsdd_asr_data"), help="where fsdd_asr.csv is written")
    ap.add_argument("--config", default=str(ROOT / "examples" / "fsdd_asr.yaml"))
    ap.add_argument("--output-dir", default=str(ROOT / "runs" / "fsdd_asr"), help="the fine-tuned run")
    ap.add_argument("--zero-shot-30s", type=int, default=100, help="test clips for the 30 s zero-shot (0: skip)")
    ap.add_argument("--max-steps", type=int, default=None, help="override train.max_steps")
    ap.add_argument("--no-zero-shot", action="store_true", help="skip both zero-shot measurements")
    ap.add_argument("--limit", type=int, default=None, help="smoke test: at most this many rows per split")
    ap.add_argument("--write-manifest-only", action="store_true")
    ap.add_argument("--output", default=None, help="results JSON")
    args = ap.parse_args()

    manifest = write_manifest(Path(args.data_dir), Path(args.fsdd))
    print(f"wrote {manifest}")
    if args.write_manifest_only:
        return

    import datasets
    import torch

    import deltatune
    from deltatune.config import load_yaml

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    config = load_yaml(Path(args.config).read_text())
    config["data"]["train_file"] = str(manifest)
    config["output_dir"] = args.output_dir
    config["train"]["progress_bar"] = False
    if args.max_steps:
        config["train"]["max_steps"] = args.max_steps
    rows = datasets.Dataset.from_csv(str(manifest))
    test = rows.filter(lambda r: r["split"] == "test")
    if args.limit:
        test = test.select(range(0, len(test), len(test) // args.limit)).select(range(args.limit))
        config["data"].update(max_train_samples=args.limit, max_eval_samples=args.limit)
    results: dict = {"uptime_before": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
                     "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
                     "threads": torch.get_num_threads(), "config": config}
    seconds = config["data"]["max_audio_seconds"]

    if args.zero_shot_30s and not args.no_zero_shot:
        part = test.select(range(0, len(test), max(1, len(test) // args.zero_shot_30s)))[: args.zero_shot_30s]
        part = datasets.Dataset.from_dict(part)
        m, t = zero_shot(config, part, None)
        results["zero_shot_30s"] = {**m, "seconds": round(t, 1)}
        print("zero-shot, 30 s window:", {k: v for k, v in m.items() if k != "samples"}, f"{t:.0f} s", flush=True)
    if not args.no_zero_shot:
        m, t = zero_shot(config, test, seconds)
        results[f"zero_shot_{seconds:g}s"] = {**m, "seconds": round(t, 1)}
        print(f"zero-shot, {seconds:g} s clips:", {k: v for k, v in m.items() if k != "samples"}, f"{t:.0f} s", flush=True)

    start = time.perf_counter()
    run = deltatune.finetune(config, overwrite=True, verbose=False)
    train_seconds = time.perf_counter() - start
    results["finetune"] = {"seconds_total": round(train_seconds, 1), "global_step": run.result.global_step,
                           "metrics": {k: {kk: vv for kk, vv in v.items() if kk != "samples"} for k, v in run.metrics.items() if isinstance(v, dict)}}
    print("run metrics:", results["finetune"]["metrics"], f"{train_seconds:.0f} s", flush=True)
    predictor = deltatune.load(run.path, device="cpu")
    start = time.perf_counter()
    records = predictor.predict_rows(test.remove_columns(["text"]), "test")
    t = time.perf_counter() - start
    m = score([r["generated"] for r in records], list(test["text"]))
    results["fine_tuned"] = {**m, "seconds": round(t, 1)}
    print("fine-tuned:", {k: v for k, v in m.items() if k != "samples"}, f"{t:.0f} s", flush=True)
    results["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.output}")


if __name__ == "__main__":
    sys.exit(main())
