"""ONNX export of an image-classification run: PyTorch vs ONNX fp32 vs ONNX int8 on the clothing test images.

Exports a finished ``examples/clothing.yaml`` run (``--run``; e.g. ``deltatune train
examples/clothing.yaml train.max_steps=2 eval.eval_strategy=no output_dir=/tmp/clothing_onnx_run``)
with :func:`deltatune.serving.onnx_export.export_onnx` (fp32, and int8 with
``onnxruntime.quantization.quantize_dynamic``) and predicts the class-folder test split
(``../shared/data/image_classification/clothing_small/test``, 372 images) with the three, all
through the same :class:`deltatune.serving.predictor.Predictor` path (images decoded and
processed by the run's image processor, batch 32, one thread: ``torch.set_num_threads(1)`` /
onnxruntime ``intra_op_num_threads=1``).

Reported per backend: test accuracy, agreement of the predicted labels with PyTorch, max
|probability - PyTorch probability| (softmax over the 10 classes), images/s (decoding and
processing included: ``Predictor.outputs``; one timed pass after an 8-image warm-up), the
model file size and the export time; for PyTorch the median top-1 probability and top-1 minus
top-2 margin (how close the labels are to flipping), and the agreement on the images whose
margin is above the median.

Run from the repository root::

    HF_HUB_OFFLINE=1 python benchmarks/onnx_clothing.py --run /tmp/clothing_onnx_run --output benchmarks/results/onnx_clothing.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST = ROOT.parent / "shared" / "data" / "image_classification" / "clothing_small" / "test"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a finished image-classification run folder")
    ap.add_argument("--test", default=str(TEST), help="class-folder test split (default: %(default)s)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--backends", default="fp32,int8", help="ONNX exports to measure (default: %(default)s)")
    ap.add_argument("--output", help="write the figures to this JSON file")
    args = ap.parse_args()

    import numpy as np
    import torch

    import deltatune
    from deltatune.api import _class_folder_rows
    from deltatune.data.loading import load_table
    from deltatune.serving.onnx_backend import load_onnx
    from deltatune.serving.onnx_export import export_onnx

    torch.set_num_threads(1)
    pytorch = deltatune.load(args.run, device="cpu")
    ds = _class_folder_rows(load_table(args.test), args.test, pytorch.task)
    results: dict = {"run": str(args.run), "test_images": len(ds), "batch_size": args.batch_size, "threads": 1,
                     "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__}

    def measure(predictor) -> tuple[np.ndarray, np.ndarray, float]:
        predictor.outputs(ds.select(range(8)), with_labels=False, batch_size=args.batch_size)  # warm-up
        start = time.perf_counter()
        outputs, _ = predictor.outputs(ds, with_labels=True, batch_size=args.batch_size, source=args.test)
        seconds = time.perf_counter() - start
        return predictor.task.probabilities(outputs["logits"]), np.asarray(outputs["labels"]), len(ds) / seconds

    ref, gold, ips = measure(pytorch)
    weights = sum(p.stat().st_size for p in (Path(args.run) / "model").glob("*.safetensors"))
    top2 = np.sort(ref, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]  # top-1 minus top-2 probability: how close a label is to flipping
    results["pytorch"] = {"accuracy": float((ref.argmax(1) == gold).mean()), "images_per_second": round(ips, 2),
                          "run_model_bytes": weights, "top1_probability_median": float(np.median(ref.max(1))),
                          "top1_top2_margin_median": float(np.median(margin))}
    print("pytorch", results["pytorch"], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for quantize in [None if b == "fp32" else b for b in args.backends.split(",")]:
            folder = Path(tmp) / (quantize or "fp32")
            folder.mkdir()
            start = time.perf_counter()
            export_onnx(pytorch, folder, quantize)
            export_seconds = time.perf_counter() - start
            probs, _, ips = measure(load_onnx(folder, threads=1))
            results[quantize or "fp32"] = {
                "accuracy": float((probs.argmax(1) == gold).mean()),
                "agreement_with_pytorch": float((probs.argmax(1) == ref.argmax(1)).mean()),
                "agreement_where_margin_above_median": float((probs.argmax(1) == ref.argmax(1))[margin > np.median(margin)].mean()),
                "max_abs_probability_difference": float(np.abs(probs - ref).max()),
                "images_per_second": round(ips, 2),
                "model_onnx_bytes": (folder / "model.onnx").stat().st_size,
                "export_seconds": round(export_seconds, 1),
            }
            print(quantize or "fp32", results[quantize or "fp32"], flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
