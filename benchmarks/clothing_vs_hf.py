"""clothing_small image classification, full fine-tuning of the packaged DINOv2-small: deltatune vs HF Trainer
(issue 17), same model, images, preprocessing, augmentation, optimizer settings, steps and seed.

Data: ``../shared/data/image_classification/clothing_small/{train,test}/<class>/*.jpg`` (3,068 / 372 photos,
10 classes). ``--train-images N`` takes a class-stratified subset of the training photos (each class its share
of N, at least one; drawn with ``--seed``), the same list (a CSV of absolute paths) for every arm; the default is
all of them. ``--test-images N`` does the same to the test photos, for quick checks only (default all 372). Model: the converted ``dinov2-small`` folder (``deltatune.models.resolve_model``), its
``AutoImageProcessor`` (shortest edge 256 bicubic, centre crop 224, rescale, ImageNet normalize); training
images mirrored left-right with probability 0.5 before it, evaluation images never.

Arms, each in its own subprocess under ``/usr/bin/time`` (wall seconds, peak RSS of the whole process):

- ``deltatune``: ``python -m deltatune train examples/clothing.yaml`` with ``delta.method=full``, the subset CSV
  as ``data.train_file``, the test folder as ``data.validation_file`` (evaluated once, after training: its
  accuracy, ``own_test_accuracy``, cross-checks the shared evaluation; no ``test_file``), and the settings below;
- ``hf``: HF Trainer + ``AutoModelForImageClassification.from_pretrained(<same folder>, num_labels=10,
  id2label, label2id)`` as the HF image classification tutorial does it: a ``datasets`` table of image files,
  ``set_transform`` (flip + processor), ``remove_unused_columns=False``, a collate stacking ``pixel_values``;
  Trainer defaults otherwise (fused AdamW, random sampling, no dataloader workers);
- ``hf-best``: the same Trainer and math, with every training image decoded, resized and centre-cropped once
  before training (uint8, 3 x 224 x 225: one spare column so that a mirrored image takes the same pixels as
  mirroring before the crop would) and the flip, rescale and normalize done per batch
  (``predecode_seconds`` is reported apart from ``train_seconds``); no dataloader workers (with the pixels in
  memory a worker only competes for the 2 cores). Its batches are bit-identical to ``hf``'s (checked on
  portrait, landscape and square photos, mirrored or not), and so is its loss; but decoding and processing
  cost ~16 ms a photo against ~1.9 s a photo of training on this CPU, so it gains under 1%: the CPU time is
  the forward and backward pass itself.

Same math in every arm: AdamW (betas 0.9/0.999, eps 1e-8, fused), ``--learning-rate``, ``--weight-decay``,
linear decay after ``ceil(--warmup-ratio * steps)`` warmup steps (given to both tools as a number of steps),
gradient clipping at 1.0, batch ``--batch-size``, float32, ``--max-steps`` optimizer steps (default
``ceil(--epochs * ceil(N / batch))``; one partial batch per epoch in both tools: HF's comes last, deltatune's
anywhere (it shuffles the batch order), so a run that stops mid-epoch may see a few images more or fewer in
one arm; whole epochs see the same). Known difference:
deltatune exempts every parameter with fewer than 2 dimensions from weight decay, HF Trainer biases and
LayerNorm weights only, so DINOv2's layer-scale vectors (24 x 384 values) are decayed by HF alone
(``decay_differs`` in the results).

Measured per arm: test accuracy and macro-F1 on the test photos (all 372 by default) by one shared function
(:func:`evaluate_model`, in a separate subprocess: the saved model reloaded with
``AutoModelForImageClassification``), training images/s (images seen / training seconds; model loading,
pre-decoding and evaluation excluded), training seconds, optimizer steps and images seen (HF: counted by a
forward hook), peak RSS. Results are written to ``--output`` (JSON) after every arm; the ratios
deltatune / HF are printed at the end. Run from the repository root::

    HF_HUB_OFFLINE=1 python benchmarks/clothing_vs_hf.py --epochs 2 --output /tmp/clothing_vs_hf.json   # full
    HF_HUB_OFFLINE=1 python benchmarks/clothing_vs_hf.py --train-images 64 --max-steps 4 --test-images 32 \\
        --output /tmp/clothing_tiny.json                                                               # quick check
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLOTHING = ROOT.parent / "shared" / "data" / "image_classification" / "clothing_small"
ARMS = ("deltatune", "hf", "hf-best")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


# ---- data ------------------------------------------------------------------------------------
def split_rows(split: str) -> list[tuple[str, str]]:
    """(absolute path, class name) of every image of ``split``, sorted by class then file name."""
    folder = CLOTHING / split
    if not folder.is_dir():
        raise SystemExit(f"{folder} is missing; the clothing_small data set lives in ../shared/data (see its PROVENANCE.txt)")
    return [
        (str(f.resolve()), c.name)
        for c in sorted(p for p in folder.iterdir() if p.is_dir())
        for f in sorted(c.iterdir())
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]


def stratified_subset(rows: list[tuple[str, str]], n: int | None, seed: int) -> list[tuple[str, str]]:
    """``n`` rows with each class's share of ``n`` (largest remainders, at least one per class), drawn with
    ``seed``; all rows when ``n`` is ``None`` or at least ``len(rows)``. Sorted as ``rows``."""
    if n is None or n >= len(rows):
        return list(rows)
    by_class: dict[str, list[tuple[str, str]]] = {}
    for r in rows:
        by_class.setdefault(r[1], []).append(r)
    if n < len(by_class):
        raise SystemExit(f"--train-images {n}: fewer than the {len(by_class)} classes; give at least {len(by_class)}")
    exact = {c: n * len(v) / len(rows) for c, v in by_class.items()}
    take = {c: max(1, math.floor(x)) for c, x in exact.items()}
    for c in sorted(exact, key=lambda c: exact[c] - math.floor(exact[c]), reverse=True):
        if sum(take.values()) >= n:
            break
        take[c] += 1
    while sum(take.values()) > n:  # the minimum of one per class overshot: trim the largest classes
        take[max(take, key=lambda c: take[c])] -= 1
    rng = random.Random(seed)
    chosen = {p for c, v in by_class.items() for p, _ in rng.sample(v, take[c])}
    return [r for r in rows if r[0] in chosen]


def read_rows(csv_path: str) -> list[tuple[str, str]]:
    with open(csv_path, newline="") as f:
        return [(r["image"], r["label"]) for r in csv.DictReader(f)]


def images_seen(n: int, batch: int, steps: int) -> int:
    """Images in ``steps`` optimizer steps over ``n`` images in batches of ``batch`` (a partial last batch per epoch)."""
    per_epoch = math.ceil(n / batch)
    full, rest = divmod(steps, per_epoch)
    return full * n + min(rest * batch, n)


# ---- evaluation (shared by every arm) --------------------------------------------------------
def evaluate_model(model_dir: str, rows: list[tuple[str, str]], batch_size: int = 32) -> dict:
    """Accuracy and macro-F1 of the model saved in ``model_dir`` on the test images ``rows`` (path, class; no
    augmentation), its classes matched by name (``config.label2id``); images processed by the packaged
    model's processor."""
    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from deltatune.models import resolve_model

    processor = AutoImageProcessor.from_pretrained(resolve_model("dinov2-small"))
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where the arms trained too (both tools pick a GPU)
    model = AutoModelForImageClassification.from_pretrained(model_dir).eval().to(device)
    label2id = {str(k): int(v) for k, v in model.config.label2id.items()}
    missing = sorted({c for _, c in rows} - set(label2id))
    if missing:
        raise SystemExit(f"{model_dir}: its config.label2id lacks the test classes {missing}")
    y = np.array([label2id[c] for _, c in rows])
    pred = []
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(rows), batch_size):
            images = []
            for path, _ in rows[i : i + batch_size]:
                with Image.open(path) as im:
                    images.append(im.convert("RGB"))
            pixels = processor(images=images, return_tensors="pt")["pixel_values"].float().to(device)
            pred.append(model(pixel_values=pixels).logits.argmax(-1).cpu().numpy())
    p = np.concatenate(pred)
    f1 = []
    for k in sorted(set(y.tolist())):
        tp, fp, fn = int(((p == k) & (y == k)).sum()), int(((p == k) & (y != k)).sum()), int(((p != k) & (y == k)).sum())
        f1.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return {
        "test_accuracy": float((p == y).mean()),
        "test_f1_macro": float(np.mean(f1)),
        "test_images": len(rows),
        "eval_seconds": time.perf_counter() - start,
    }


# ---- HF Trainer arms -------------------------------------------------------------------------
class Predecoded:
    """Training images decoded, resized (the processor's resize) and centre-cropped once: uint8 (N, 3, 224, 225).

    The spare column: a mirrored image must take the pixels that cropping the mirrored resized image would,
    columns ``[W - left - 224, W - left)``, which start one column right of ``left`` when ``W - 224`` is odd.
    """

    def __init__(self, processor, paths: list[str], labels: list[int]):
        import numpy as np
        import torch
        from PIL import Image

        height, width = processor.crop_size["height"], processor.crop_size["width"]
        self.width = width
        self.pixels = torch.empty((len(paths), 3, height, width + 1), dtype=torch.uint8)
        self.odd = torch.zeros(len(paths), dtype=torch.bool)
        for i, path in enumerate(paths):
            with Image.open(path) as im:
                img = im.convert("RGB")
            arr = processor(images=[img], do_center_crop=False, do_rescale=False, do_normalize=False)["pixel_values"][0]
            arr = np.asarray(arr)
            h, w = arr.shape[-2:]
            top, left = (h - height) // 2, (w - width) // 2  # the processor's centre crop (transformers' center_crop)
            if w < width + 1 or h < height:
                raise SystemExit(f"{path}: resized to {h}x{w}, smaller than the crop: hf-best cannot pre-decode it")
            self.pixels[i] = torch.from_numpy(np.ascontiguousarray(arr[:, top : top + height, left : left + width + 1]).astype(np.uint8))
            self.odd[i] = (w - width) % 2 == 1
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"index": i, "labels": self.labels[i]}

    def crop(self, i: int, flip: bool):
        """The 224-wide uint8 crop of image ``i``, mirrored when ``flip``: (3, 224, 224)."""
        x = self.pixels[i]
        if not flip:
            return x[:, :, : self.width]
        start = 1 if self.odd[i] else 0
        return x[:, :, start : start + self.width].flip(-1)


def run_hf(args: argparse.Namespace, best: bool) -> dict:
    import datasets
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification, Trainer, TrainingArguments

    from deltatune.models import resolve_model

    torch.set_num_threads(args.threads)
    path = resolve_model("dinov2-small")
    processor = AutoImageProcessor.from_pretrained(path)
    rows = read_rows(args.train_csv)
    classes = sorted({c for _, c in split_rows("test")} | {c for _, c in rows})
    label2id = {c: i for i, c in enumerate(classes)}
    paths, labels = [p for p, _ in rows], [label2id[c] for _, c in rows]
    predecode_seconds = 0.0
    if best:
        t0 = time.perf_counter()
        train_ds = Predecoded(processor, paths, labels)
        predecode_seconds = time.perf_counter() - t0

        def collate(batch):
            flips = (torch.rand(len(batch)) < 0.5).tolist() if args.horizontal_flip else [False] * len(batch)
            crops = [train_ds.crop(b["index"], f).numpy() for b, f in zip(batch, flips)]
            pixels = processor(images=crops, do_resize=False, do_center_crop=False, return_tensors="pt")["pixel_values"]
            return {"pixel_values": pixels.float(), "labels": torch.tensor([b["labels"] for b in batch])}
    else:
        train_ds = datasets.Dataset.from_dict({"image": paths, "label": labels}).cast_column("image", datasets.Image())

        def transform(batch):
            images = [im.convert("RGB") for im in batch["image"]]
            if args.horizontal_flip:
                images = [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if torch.rand(()) < 0.5 else im for im in images]
            batch["pixel_values"] = list(processor(images=images, return_tensors="pt")["pixel_values"])
            del batch["image"]
            return batch

        train_ds.set_transform(transform)

        def collate(batch):
            return {"pixel_values": torch.stack([b["pixel_values"] for b in batch]).float(),
                    "labels": torch.tensor([b["label"] for b in batch])}

    torch.manual_seed(args.seed)
    model = AutoModelForImageClassification.from_pretrained(
        path, num_labels=len(classes), id2label=dict(enumerate(classes)), label2id=label2id
    )
    seen = [0]
    model.register_forward_pre_hook(
        lambda m, a, kw: seen.__setitem__(0, seen[0] + int(kw["pixel_values"].shape[0])) if m.training else None, with_kwargs=True
    )
    # parameters HF Trainer decays that deltatune (ndim < 2: no decay) does not, and the reverse
    hf_decay = set(Trainer.get_decay_parameter_names(None, model))  # does not read self
    differs = sum(p.numel() for n, p in model.named_parameters() if (n in hf_decay) != (p.ndim >= 2))
    out = Path(args.model_out)
    targs = TrainingArguments(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_steps=args.steps,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=10,
        report_to="none",
        seed=args.seed,
        disable_tqdm=True,
        remove_unused_columns=False,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=train_ds, data_collator=collate)
    t0 = time.perf_counter()
    train_out = trainer.train()
    seconds = time.perf_counter() - t0
    trainer.save_model(str(out / "model"))
    return {
        "train_seconds": seconds,
        "images_per_second": seen[0] / seconds,
        "images_seen": seen[0],
        "optimizer_steps": int(train_out.global_step),
        "predecode_seconds": predecode_seconds,
        "train_loss": float(train_out.training_loss),
        "decay_differs": differs,
        "model_dir": str(out / "model"),
    }


# ---- arms in subprocesses ----------------------------------------------------------------------
def _timed(cmd: list[str], log: Path, threads: int) -> tuple[float, float]:
    """Run ``cmd`` under ``/usr/bin/time``; (wall seconds, peak RSS MiB). Exits naming ``log`` if it fails."""
    timing = log.with_suffix(".time")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with log.open("w") as f:
        rc = subprocess.call(["/usr/bin/time", "-f", "%e %M", "-o", str(timing), *cmd], stdout=f, stderr=subprocess.STDOUT,
                             cwd=ROOT, env=env)
    if rc != 0:
        sys.stderr.write(log.read_text()[-3000:])
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed with exit code {rc}; see {log}")
    wall, peak = timing.read_text().split()[-2:]
    return float(wall), int(peak) / 1024


def _result_line(log: Path) -> dict:
    line = next((ln for ln in log.read_text().splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"no RESULT line in {log}")
    return json.loads(line[len("RESULT ") :])


def run_arm(arm: str, args: argparse.Namespace, work: Path) -> dict:
    """Train one arm in a subprocess, then evaluate its saved model in another."""
    out = work / arm
    out.mkdir(parents=True, exist_ok=True)
    log = work / f"{arm}.log"
    if arm == "deltatune":
        run = out / "run"
        overrides = [
            f"output_dir={run}", f"seed={args.seed}", "delta.method=full",
            # the test folder as the validation split (data.validation_file unset would carve 10% out of training)
            f"data.train_file={args.train_csv}", f"data.validation_file={args.test_csv}", "data.test_file=null",
            f"data.horizontal_flip={str(args.horizontal_flip).lower()}", "data.random_resized_crop=false",
            f"train.max_steps={args.steps}", f"train.per_device_train_batch_size={args.batch_size}",
            f"train.learning_rate={args.learning_rate}", f"train.warmup_steps={args.warmup_steps}",
            f"train.weight_decay={args.weight_decay}", "train.lr_scheduler_type=linear", "train.max_grad_norm=1.0",
            "train.optimizer=adamw", "train.mixed_precision=no", "train.progress_bar=false", "eval.eval_strategy=no",
        ]
        wall, peak = _timed([sys.executable, "-m", "deltatune", "train", "examples/clothing.yaml", *overrides], log, args.threads)
        ev = json.loads((run / "eval.json").read_text())
        tr = ev["train"]
        res = {
            "train_seconds": tr["train_seconds"],
            "images_per_second": tr["examples_per_second"],
            "images_seen": round(tr["examples_per_second"] * tr["train_seconds"]),
            "optimizer_steps": tr["global_step"],
            "train_peak_rss_mib": tr.get("peak_rss_mib"),
            "own_test_accuracy": ev["validation"]["accuracy"],
            "model_dir": str(run / "model"),
        }
    else:
        passthrough = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
                       ("batch_size", "learning_rate", "weight_decay", "seed", "threads", "steps", "warmup_steps", "train_csv")]
        passthrough += ["--model-out", str(out)] + ([] if args.horizontal_flip else ["--no-horizontal-flip"])
        wall, peak = _timed([sys.executable, __file__, "--worker", arm, *passthrough], log, args.threads)
        res = _result_line(log)
    res.update(wall_seconds=wall, peak_rss_mib=peak)
    elog = work / f"{arm}-eval.log"
    _timed([sys.executable, __file__, "--worker", "eval", "--model-out", res["model_dir"], "--test-csv", args.test_csv], elog, args.threads)
    res.update(_result_line(elog))
    return res


def worker(args: argparse.Namespace) -> None:
    if args.worker == "eval":
        res = evaluate_model(args.model_out, read_rows(args.test_csv))
    else:
        res = run_hf(args, best=args.worker == "hf-best")
    print("RESULT " + json.dumps(res), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
    p.add_argument("--train-images", type=int, help="a class-stratified subset of the 3,068 training images (default all)")
    p.add_argument("--test-images", type=int, help="a class-stratified subset of the 372 test images, for quick checks (default all)")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=5e-5)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch / OpenMP threads per arm")
    p.add_argument("--no-horizontal-flip", dest="horizontal_flip", action="store_false", help="no augmentation in any arm")
    p.add_argument("--work", help="folder for the subset CSV, runs, models and logs (default: a temporary folder, removed)")
    p.add_argument("--output", help="write the results as JSON here (after every arm)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    p.add_argument("--warmup-steps", type=int, help=argparse.SUPPRESS)
    p.add_argument("--train-csv", help=argparse.SUPPRESS)
    p.add_argument("--test-csv", help=argparse.SUPPRESS)
    p.add_argument("--model-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"--arms: unknown {', '.join(unknown)}; choose from {', '.join(ARMS)}")

    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="clothing_vs_hf-")
    work = Path(args.work or tmp.name).resolve()
    work.mkdir(parents=True, exist_ok=True)
    rows = stratified_subset(split_rows("train"), args.train_images, args.seed)
    test_rows = stratified_subset(split_rows("test"), args.test_images, args.seed)
    args.train_csv, args.test_csv = str(work / "train.csv"), str(work / "test.csv")
    for path, part in ((args.train_csv, rows), (args.test_csv, test_rows)):
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "label"])
            w.writerows(part)
    n = len(rows)
    args.steps = args.max_steps or max(1, math.ceil(args.epochs * math.ceil(n / args.batch_size)))
    args.warmup_steps = math.ceil(args.warmup_ratio * args.steps)
    expected = images_seen(n, args.batch_size, args.steps)
    setting = {
        "train_images": n, "test_images": len(test_rows), "classes": len({c for _, c in rows}), "optimizer_steps": args.steps, "warmup_steps": args.warmup_steps,
        "images_seen": expected, "epochs": expected / n, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
        "weight_decay": args.weight_decay, "horizontal_flip": args.horizontal_flip, "seed": args.seed, "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
    }
    print(f"clothing_small, dinov2-small full fine-tuning: {json.dumps(setting)}", flush=True)
    results: dict[str, dict] = {}
    for arm in arms:
        print(f"running {arm} ...", flush=True)
        t0 = time.time()
        results[arm] = r = run_arm(arm, args, work)
        if r["optimizer_steps"] != args.steps or r["images_seen"] != expected:
            print(f"warning: {arm} made {r['optimizer_steps']} steps on {r['images_seen']} images; expected {args.steps} on "
                  f"{expected} (a run stopping mid-epoch: deltatune's partial batch may come anywhere in an epoch)",
                  file=sys.stderr, flush=True)
        print(f"{arm}: {time.time() - t0:.0f} s wall, {r['images_per_second']:.2f} images/s, test accuracy "
              f"{r['test_accuracy']:.4f}", flush=True)
        if args.output:
            Path(args.output).write_text(json.dumps({"setting": setting, "args": vars(args), "results": results}, indent=2))

    print(f"\n{'arm':<10} {'images/s':>9} {'train s':>8} {'steps':>6} {'images':>7} {'peak RSS GiB':>13} {'test acc':>9} {'macro-F1':>9}")
    for arm, r in results.items():
        print(f"{arm:<10} {r['images_per_second']:>9.2f} {r['train_seconds']:>8.1f} {r['optimizer_steps']:>6} {r['images_seen']:>7} "
              f"{r['peak_rss_mib'] / 1024:>13.2f} {r['test_accuracy']:>9.4f} {r['test_f1_macro']:>9.4f}")
    if "deltatune" in results:
        d = results["deltatune"]
        print(f"deltatune's own test accuracy: {d['own_test_accuracy']}")
        for base in ("hf", "hf-best"):
            if base in results:
                b = results[base]
                print(f"deltatune / {base}: images/s x{d['images_per_second'] / b['images_per_second']:.2f}, "
                      f"peak RSS x{d['peak_rss_mib'] / b['peak_rss_mib']:.2f}, "
                      f"test accuracy {100 * (d['test_accuracy'] - b['test_accuracy']):+.1f} points")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
