"""ONNX export of the SST-2 classifier: PyTorch vs ONNX fp32 vs ONNX int8 (dynamic quantization).

Trains the "full" setting of ``benchmarks/delta_methods_sst2.py`` (packaged MiniLM, first
``--rows`` rows of ``../shared/data/text_classification/sst2/train.tsv``, one epoch, batch 32,
max length 128, same config function) unless ``--run`` names a finished run, exports it with
:func:`deltatune.serving.onnx_export.export_onnx` (fp32, and int8 with
``onnxruntime.quantization.quantize_dynamic``), and evaluates the three on dev.tsv (872 rows),
all through the same :class:`deltatune.serving.predictor.Predictor` path.

Reported per backend: dev accuracy, agreement of the predicted labels with PyTorch, max
|logit - PyTorch logit|, throughput in sentences/s (tokenization included: ``Predictor.outputs``)
with 1 and 2 threads at batch 32 (all 872 rows) and batch 1 (the first ``--batch1-rows`` rows),
and the model file size (PyTorch: ``model/model.safetensors``).

Run from the repository root::

    HF_HUB_OFFLINE=1 python benchmarks/onnx_sst2.py --output benchmarks/results/onnx_sst2.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from delta_methods_sst2 import METHODS, SST2, config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def train(out: Path, rows: int) -> Path:
    """The "full" run of delta_methods_sst2.py in ``out``."""
    import deltatune

    deltatune.finetune(config("full", out, rows, METHODS["full"]), overwrite=True, verbose=False)
    return out


def export(run: Path, folder: Path, quantize: str | None) -> tuple[Path, float]:
    """Export ``run`` into the new folder ``folder``; (folder, seconds)."""
    import deltatune
    from deltatune.serving.onnx_export import export_onnx

    folder.mkdir(parents=True)
    start = time.perf_counter()
    export_onnx(deltatune.load(run, device="cpu"), folder, quantize)
    return folder, time.perf_counter() - start


def throughput(predictor, ds, batch_size: int) -> float:
    """Sentences per second of ``predictor.outputs`` (tokenization + batched forward passes)."""
    predictor.outputs(ds.select(range(min(8, len(ds)))), with_labels=False, batch_size=batch_size)  # warm-up
    start = time.perf_counter()
    predictor.outputs(ds, with_labels=False, batch_size=batch_size)
    return len(ds) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="a finished SST-2 text-classification run (default: train one)")
    p.add_argument("--rows", type=int, default=8000, help="training rows when training")
    p.add_argument("--batch1-rows", type=int, default=200, help="rows timed at batch size 1")
    p.add_argument("--workdir", help="where the run and the exports go (default: a temporary folder)")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "onnx_sst2.json"))
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import datasets
    import numpy as np
    import pandas as pd
    import torch

    from deltatune.serving.onnx_backend import load_onnx

    work = Path(args.workdir or tempfile.mkdtemp(prefix="onnx_sst2_"))
    run = Path(args.run) if args.run else None
    if run is None:
        print(f"training the full run in {work / 'run'} ...", flush=True)
        start = time.perf_counter()
        run = train(work / "run", args.rows)
        print(f"  trained in {time.perf_counter() - start:.0f} s", flush=True)
    exports = {}
    for name, quantize in (("onnx_fp32", None), ("onnx_int8", "int8")):
        exports[name], seconds = export(run, work / name, quantize)
        print(f"exported {name} in {seconds:.1f} s", flush=True)

    dev = datasets.Dataset.from_pandas(pd.read_csv(SST2 / "dev.tsv", sep="\t", quoting=3), preserve_index=False)
    first = dev.select(range(min(args.batch1_rows, len(dev))))
    predictors = {"pytorch": lambda threads: _torch_predictor(run, threads)}
    for name, folder in exports.items():
        predictors[name] = lambda threads, folder=folder: load_onnx(folder, threads=threads)
    sizes = {"pytorch": (run / "model" / "model.safetensors").stat().st_size}
    sizes.update({name: (folder / "model.onnx").stat().st_size for name, folder in exports.items()})

    results, reference = {}, None
    for name, make in predictors.items():
        predictor = make(2)
        outputs, features = predictor.outputs(dev, with_labels=True, batch_size=32)
        logits = outputs["logits"].astype(np.float64)
        metrics = predictor.task.compute_metrics(outputs, features)
        if reference is None:
            reference = logits
        r = {
            "dev_accuracy": metrics["accuracy"],
            "agreement_with_pytorch": float(np.mean(logits.argmax(-1) == reference.argmax(-1))),
            "max_abs_logit_diff": float(np.abs(logits - reference).max()),
            "model_bytes": sizes[name],
        }
        for threads in (1, 2):
            predictor = make(threads)
            r[f"sent_per_s_b32_t{threads}"] = throughput(predictor, dev, 32)
            r[f"sent_per_s_b1_t{threads}"] = throughput(predictor, first, 1)
        results[name] = r
        print(f"{name}: {json.dumps(r)}", flush=True)

    torch.set_num_threads(2)
    record = {
        "run": str(run),
        "dev_rows": len(dev),
        "batch1_rows": len(first),
        "load_average_at_end": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "onnxruntime": __import__("onnxruntime").__version__,
        "results": results,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(record, indent=2))
    print(table(results))
    print(f"wrote {args.output}")


def _torch_predictor(run: Path, threads: int):
    import torch

    import deltatune

    torch.set_num_threads(threads)
    return deltatune.load(run, device="cpu")


def table(results: dict) -> str:
    """Markdown table of the results."""
    head = (
        "| backend | dev acc | Δacc vs PyTorch (pts) | agreement | max abs logit diff | sent/s b32 1t | sent/s b32 2t "
        "| sent/s b1 1t | sent/s b1 2t | model MB |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    base = results["pytorch"]["dev_accuracy"]
    lines = []
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['dev_accuracy']:.4f} | {100 * (r['dev_accuracy'] - base):+.2f} | {r['agreement_with_pytorch']:.4f} "
            f"| {r['max_abs_logit_diff']:.2e} | {r['sent_per_s_b32_t1']:.0f} | {r['sent_per_s_b32_t2']:.0f} "
            f"| {r['sent_per_s_b1_t1']:.0f} | {r['sent_per_s_b1_t2']:.0f} | {r['model_bytes'] / 2**20:.1f} |"
        )
    return head + "\n".join(lines)


if __name__ == "__main__":
    main()
