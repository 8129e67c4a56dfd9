"""DeepSpeed ZeRO-2/3 on GPUs (``distributed.strategy: deepspeed``): loss parity, resume, export, memory.

One prepared check for a GPU session (docs/distributed.md, "DeepSpeed"). A random-init BERT-base
shaped classifier (12 layers, hidden 768: 110M parameters; ``--cpu``: 2 layers, hidden 32) with
the packaged MiniLM tokenizer trains ``--steps`` steps on synthetic sentiment rows (fp32:
``train.mixed_precision: no``, so that the curves are comparable; ``--bf16`` for bf16 autocast),
as these runs, each launched by ``torchrun`` in its own processes:

- ``plain``: one process, no DeepSpeed, per-device batch = the global batch (the reference);
- ``zero2``, ``zero3``: ``--nproc`` processes (default: every GPU; 1 GPU = one-process ZeRO), per-device
  batch = global / nproc, micro-batches of half that (the engine's accumulation boundary);
- ``zero3-resume``: ``zero3`` killed after step ``--steps // 2 + 1`` (``os._exit``, no interrupt
  checkpoint), then resumed by a new launch from its last DeepSpeed checkpoint (``--trust-checkpoint``);
- ``zero3-lora``: LoRA under ZeRO-3 against ``plain-lora``.

Checked and printed (exit status 1 when a check fails): each curve against its reference (largest
step-loss difference, ``--tolerance``, default 1e-3 for GPU kernels' nondeterminism), the resumed
curve against the uninterrupted one, the saved model's logits against the reference model's
(``--tolerance``), the ZeRO-3 adapter non-empty; per run: tokens/s (eval.json) and peak GPU memory
per process (``torch.cuda.max_memory_allocated``, the largest over processes).

    python benchmarks/gpu_deepspeed.py --output benchmarks/results/gpu_deepspeed_h200.json   # a GPU machine
    HF_HUB_OFFLINE=1 python benchmarks/gpu_deepspeed.py --cpu --steps 4                      # CPU check (2 gloo processes)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

POS = ["great", "lovely", "wonderful", "superb", "fine", "delightful"]
NEG = ["awful", "terrible", "boring", "dreadful", "poor", "dull"]


def _rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = [rng.choice(POS if label else NEG) for _ in range(3)] + [rng.choice(["the", "a", "film", "plot", "was"]) for _ in range(9)]
        rng.shuffle(words)
        out.append({"text": " ".join(words), "label": "pos" if label else "neg"})
    return out


def _write_csv(path: Path, rows: list[dict]) -> Path:
    import csv

    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(rows)
    return path


def _make_model(folder: Path, cpu: bool) -> str:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from deltatune.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64) if cpu else \
        dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tok.vocab_size, max_position_embeddings=128, **size)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def _config(args, root: Path, name: str, method: str, nproc: int, zero: int | None) -> dict:
    per_device = args.global_batch // nproc
    return {
        "task": "text-classification", "output_dir": str(root / name), "seed": 3,
        "model": {"name_or_path": str(root / "model"), "dropout": 0.0},
        "data": {"train_file": str(root / "train.csv"), "validation_file": str(root / "val.csv"), "max_seq_length": 64},
        "delta": {"method": method},
        "train": {"per_device_train_batch_size": per_device, "micro_batch_size": max(1, per_device // 2) if zero else None,
                  "learning_rate": 1e-4 if method == "full" else 1e-3, "max_steps": args.steps, "logging_steps": 1,
                  "save_steps": max(1, args.steps // 2), "progress_bar": False, "weight_decay": 0.0,
                  "mixed_precision": "bf16" if args.bf16 else "no"},
        "eval": {"eval_strategy": "no", "per_device_eval_batch_size": 16},
        "distributed": {"strategy": "deepspeed", "zero_stage": zero} if zero else {"strategy": "ddp"},
    }


def worker(spec: dict) -> None:
    """One process of a torchrun launch: train (or resume) the run of ``spec``; its peak memory to a file."""
    import torch

    from deltatune import finetune

    rank = int(os.environ.get("RANK", "0"))
    peak = Path(spec["config"]["output_dir"] + f".peak{rank}.json")

    def record(trainer, state):
        if torch.cuda.is_available():
            peak.write_text(json.dumps({"peak_gib": torch.cuda.max_memory_allocated() / 2**30}))
        if spec.get("kill_at") == state.global_step:
            torch.distributed.barrier()
            time.sleep(1)
            os._exit(0)

    if spec.get("resume"):
        finetune(spec["config"]["output_dir"], resume=True, trust_checkpoint=True, callbacks=(record,), verbose=False)
    else:
        finetune(spec["config"], callbacks=(record,), verbose=False)


def _launch(args, root: Path, config: dict, nproc: int, **extra) -> float:
    spec = root / f"{Path(config['output_dir']).name}.{len(list(root.glob('*.spec.json')))}.spec.json"
    spec.write_text(json.dumps({"config": config, **extra}))
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(29500 + random.randint(1, 2000)),
           __file__, "--worker", str(spec)]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-6000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"{Path(config['output_dir']).name}: the launch failed (exit {done.returncode})")
    return time.perf_counter() - start


def _losses(run: Path) -> list[float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def _logits(run: Path, val: Path):
    import datasets
    import torch

    import deltatune

    outputs, _ = deltatune.load(run).outputs(datasets.Dataset.from_csv(str(val)), with_labels=False)
    return torch.from_numpy(outputs["logits"])


def _summary(run: Path, nproc: int) -> dict:
    train = json.loads((run / "eval.json").read_text())["train"]
    peaks = [json.loads(p.read_text())["peak_gib"] for p in run.parent.glob(f"{run.name}.peak*.json")]
    return {"processes": nproc, "tokens_per_second": train.get("tokens_per_second"), "train_seconds": train["train_seconds"],
            "peak_gpu_gib_per_process": round(max(peaks), 3) if peaks else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="a tiny model on 2 CPU processes (DS_ACCELERATOR=cpu, gloo)")
    p.add_argument("--nproc", type=int, help="processes of the DeepSpeed runs (default: the GPUs; 2 with --cpu)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--global-batch", type=int, default=32)
    p.add_argument("--rows", type=int, default=512)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (the curves then differ more: raise --tolerance)")
    p.add_argument("--tolerance", type=float, default=1e-3)
    p.add_argument("--output", type=Path)
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(json.loads(args.worker.read_text()))

    import torch

    if args.cpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    elif not torch.cuda.is_available():
        raise SystemExit("no GPU here: run with --cpu for the CPU check")
    nproc = args.nproc or (2 if args.cpu else torch.cuda.device_count())
    root = Path(tempfile.mkdtemp(prefix="gpu_deepspeed_"))
    _make_model(root / "model", args.cpu)
    _write_csv(root / "train.csv", _rows(args.rows, 1))
    val = _write_csv(root / "val.csv", _rows(64, 2))
    results: dict = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "steps": args.steps,
                     "global_batch": args.global_batch, "precision": "bf16" if args.bf16 else "fp32", "runs": {}, "checks": {}}
    failed: list[str] = []

    def check(name: str, value: float) -> None:
        ok = value <= args.tolerance
        results["checks"][name] = {"value": value, "ok": ok}
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {value:.3g} (tolerance {args.tolerance:g})", flush=True)
        if not ok:
            failed.append(name)

    runs = {
        "plain": (_config(args, root, "plain", "full", 1, None), 1),
        "zero2": (_config(args, root, "zero2", "full", nproc, 2), nproc),
        "zero3": (_config(args, root, "zero3", "full", nproc, 3), nproc),
        "plain-lora": (_config(args, root, "plain-lora", "lora", 1, None), 1),
        "zero3-lora": (_config(args, root, "zero3-lora", "lora", nproc, 3), nproc),
    }
    for name, (cfg, n) in runs.items():
        seconds = _launch(args, root, cfg, n)
        results["runs"][name] = {**_summary(root / name, n), "launch_seconds": round(seconds, 1)}
        print(name, results["runs"][name], flush=True)
    resumed = _config(args, root, "zero3-resume", "full", nproc, 3)
    _launch(args, root, resumed, nproc, kill_at=args.steps // 2 + 1)
    _launch(args, root, resumed, nproc, resume=True)

    for name, ref in (("zero2", "plain"), ("zero3", "plain"), ("zero3-lora", "plain-lora"), ("zero3-resume", "zero3")):
        a, b = _losses(root / ref), _losses(root / name)
        check(f"{name} loss curve vs {ref}", max(abs(x - y) for x, y in zip(a, b)) if len(a) == len(b) == args.steps else float("inf"))
    for name, ref in (("zero2", "plain"), ("zero3", "plain"), ("zero3-resume", "plain"), ("zero3-lora", "plain-lora")):
        check(f"{name} saved model logits vs {ref}", float((_logits(root / name, val) - _logits(root / ref, val)).abs().max()))
    from safetensors.torch import load_file

    adapter = load_file(str(root / "zero3-lora" / "model" / "adapter_model.safetensors"))
    empty = [k for k, t in adapter.items() if t.numel() == 0]
    results["checks"]["zero3 adapter non-empty"] = {"ok": bool(adapter) and not empty}
    print(f"{'ok  ' if adapter and not empty else 'FAIL'} zero3 adapter: {len(adapter)} tensors, {len(empty)} empty", flush=True)
    if not adapter or empty:
        failed.append("zero3 adapter")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2))
        print("wrote", args.output)
    print(f"folder: {root}")
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
