"""SmolLM2 SFT on the Alpaca demo set, side by side: HF Trainer via TRL's SFTTrainer vs deltatune.

Both tools train the packaged SmolLM2-135M-Instruct (fp32 weights on CPU, no mixed precision)
on the *same* token sequences with the *same* masking: the first ``--examples`` rows of
``../shared/data/text_generation/alpaca_en_demo/alpaca_en_demo.json`` are chat-templated once
with deltatune's encoder (the model's chat template, loss on the assistant answer and its
end-of-turn token only), and TRL gets these pre-tokenized ``input_ids``/``labels`` (a dataset
that brings ``labels`` is used as is by SFTTrainer). The next ``--eval-examples`` rows are the
validation set. Same epochs, learning rate, linear schedule with warmup, weight decay,
gradient clipping, fused AdamW, seed. Each tool runs in its own subprocess (peak RSS is its own).

Tools:
- ``trl``: SFTTrainer with TRL's defaults (batches in random order padded to their longest
  example, gradient checkpointing on), except fp32 (TRL would use bf16 autocast) and the shared
  hyperparameters above; ``--batch-size`` examples per step.
- ``trl-nockpt``: the same without gradient checkpointing (TRL's fastest setting here).
- ``deltatune``: deltatune's defaults (length-grouped batches, chunked LM-head loss) with
  ``train.packing``: examples packed into sequences of ``--max-length`` tokens without
  attention between them; the batch (in packs) holds about as many tokens as ``--batch-size``
  average examples, so the number of optimizer steps is close to the other tools'.

Measured: real (non-padding) tokens trained per second of training (every tool trains the same
examples, so the same tokens), training seconds, peak RSS, and the validation loss (mean
cross-entropy per answer token) of each trained model, computed by the same code for all.

    HF_HUB_OFFLINE=1 python benchmarks/smollm2_sft_cpu.py --examples 64 --eval-examples 16   # quick check
    HF_HUB_OFFLINE=1 python benchmarks/smollm2_sft_cpu.py --output benchmarks/results/smollm2_sft_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _worker import run_worker  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ALPACA = ROOT.parent / "shared" / "data" / "text_generation" / "alpaca_en_demo" / "alpaca_en_demo.json"
LEARNING_RATES = {"lora": 1e-3, "full": 1e-4}  # deltatune's defaults per method


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _rows(args):
    rows = json.loads(ALPACA.read_text())
    return rows[: args.examples], rows[args.examples : args.examples + args.eval_examples]


def encode(rows, max_length: int):
    """(tokenizer, list of {"input_ids", "labels"}) with deltatune's chat encoding (assistant-only labels)."""
    import datasets
    from transformers import AutoTokenizer

    from deltatune.config import RunConfig
    from deltatune.models import resolve_model
    from deltatune.tasks import create_task

    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2"))
    task = create_task(RunConfig(task="instruction", data={"max_seq_length": max_length}))
    task.set_tokenizer(tok)
    ds = datasets.Dataset.from_list(rows)
    task.fit(ds, str(ALPACA))
    feats = task.encode(ds, tok, source=str(ALPACA))
    return tok, [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in feats.rows]


def validation_loss(model, examples, pad_id: int, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy over the trained (label != -100) tokens of ``examples``."""
    import torch
    import torch.nn.functional as F

    model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            part = [examples[i] for i in order[s : s + batch_size]]
            t = max(len(e["input_ids"]) for e in part)
            ids = torch.full((len(part), t), pad_id)
            mask = torch.zeros((len(part), t), dtype=torch.long)
            labels = torch.full((len(part), t), -100)
            for k, e in enumerate(part):
                n = len(e["input_ids"])
                ids[k, :n], mask[k, :n], labels[k, :n] = torch.tensor(e["input_ids"]), 1, torch.tensor(e["labels"])
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="sum")
            total += float(ce)
            count += int((target != -100).sum())
    return total / max(count, 1)


def run_trl(args, train, val, tok, checkpointing: bool) -> dict:
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from deltatune.models import resolve_model

    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2"), dtype=torch.float32)
    peft_config = None
    if args.method == "lora":
        peft_config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    with tempfile.TemporaryDirectory() as out:
        cfg = SFTConfig(
            output_dir=out,
            per_device_train_batch_size=args.batch_size,
            num_train_epochs=args.epochs,
            learning_rate=LEARNING_RATES[args.method],
            lr_scheduler_type="linear",
            warmup_steps=args.warmup_ratio,  # a float < 1 is a ratio in transformers 5
            weight_decay=args.weight_decay,
            max_grad_norm=1.0,
            max_length=args.max_length,
            gradient_checkpointing=checkpointing,
            bf16=False,
            eval_strategy="no",
            save_strategy="no",
            logging_steps=10,
            report_to="none",
            seed=args.seed,
            disable_tqdm=True,
        )
        trainer = SFTTrainer(
            model=model,
            args=cfg,
            train_dataset=datasets.Dataset.from_list(train),
            processing_class=tok,
            peft_config=peft_config,
        )
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        trained = trainer.model
    return {"train_seconds": seconds, "validation_loss": validation_loss(trained, val, tok.pad_token_id)}


def run_deltatune(args, train, val, tok) -> dict:
    import deltatune

    mean_len = sum(len(e["input_ids"]) for e in train) / len(train)
    packs_per_batch = max(1, round(args.batch_size * mean_len / args.max_length))
    held = []
    with tempfile.TemporaryDirectory() as out:
        # deltatune encodes the same Alpaca rows with the same encoder as encode() above
        train_rows, val_rows = _rows(args)
        data, val_data = Path(out) / "train.jsonl", Path(out) / "validation.jsonl"
        data.write_text("\n".join(json.dumps(r) for r in train_rows))
        val_data.write_text("\n".join(json.dumps(r) for r in val_rows))
        cfg = {
            "task": "instruction",
            "output_dir": str(Path(out) / "run"),
            "seed": args.seed,
            "model": {"name_or_path": "smollm2"},
            # its own end-of-run evaluation is cut to 1 row: the validation loss is computed below, as for TRL
            "data": {"train_file": str(data), "validation_file": str(val_data), "max_eval_samples": 1, "max_seq_length": args.max_length},
            "train": {
                "num_train_epochs": args.epochs,
                "per_device_train_batch_size": packs_per_batch,
                "learning_rate": LEARNING_RATES[args.method],
                "warmup_ratio": args.warmup_ratio,
                "weight_decay": args.weight_decay,
                "lr_scheduler_type": "linear",
                "max_grad_norm": 1.0,
                "packing": True,
                "logging_steps": 10,
                "progress_bar": False,
            },
            "eval": {"eval_strategy": "no", "generation_max_samples": 0},
            "delta": {"method": args.method, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0},
        }
        run = deltatune.finetune(cfg, verbose=False, callbacks=(lambda trainer, state: held[:1] or held.append(trainer),))
        trained = held[0].accelerator.unwrap_model(held[0].model)
        packing = run.metrics["data"]["packing"]
    r = run.result
    return {
        "train_seconds": r.train_seconds,
        "validation_loss": validation_loss(trained, val, tok.pad_token_id),
        "packs": packing["packs"],
        "packs_per_batch": packs_per_batch,
        "steps": r.global_step,
    }


def worker(args: argparse.Namespace) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    train_rows, val_rows = _rows(args)
    tok, train = encode(train_rows, args.max_length)
    _, val = encode(val_rows, args.max_length)
    if args.worker == "deltatune":
        res = run_deltatune(args, train, val, tok)
    else:
        res = run_trl(args, train, val, tok, checkpointing=args.worker == "trl")
    tokens = sum(len(e["input_ids"]) for e in train) * args.epochs
    res.update(
        real_tokens=tokens,
        trained_tokens=sum(sum(1 for x in e["labels"][1:] if x != -100) for e in train) * args.epochs,
        tokens_per_second=tokens / res["train_seconds"],
        peak_rss_mib=_peak_rss_mib(),
    )
    print("RESULT " + json.dumps(res), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=800, help="training rows (from the start of the file)")
    p.add_argument("--eval-examples", type=int, default=199, help="validation rows (after the training rows)")
    p.add_argument("--methods", default="lora,full")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=8, help="examples per optimizer step (deltatune: packs of as many tokens)")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--warmup-ratio", type=float, default=0.06)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--tools", default="trl,deltatune")
    p.add_argument("--output", help="also write the results as JSON here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--method", default="lora", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    shared = ("examples", "eval_examples", "epochs", "batch_size", "max_length", "warmup_ratio", "weight_decay", "seed")
    passthrough = [x for k in shared for x in (f"--{k.replace('_', '-')}", str(getattr(args, k)))]
    results: dict[str, dict[str, dict]] = {}
    for method in args.methods.split(","):
        results[method] = {}
        for tool in args.tools.split(","):
            print(f"running {tool} ({method}) ...", flush=True)
            results[method][tool] = run_worker(__file__, tool, passthrough + ["--method", method])

    print(
        f"\nSmolLM2-135M-Instruct SFT on Alpaca demo: {args.examples} train / {args.eval_examples} validation rows, "
        f"{args.epochs:g} epoch, batch {args.batch_size}, max length {args.max_length}, fp32, "
        f"warmup {args.warmup_ratio:g}, wd {args.weight_decay:g}, seed {args.seed}"
    )
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs\n")
    print(f"{'method':<6} {'tool':<11} {'real tok/s':>10} {'train s':>8} {'peak RSS GiB':>13} {'val loss':>9}")
    for method, per_tool in results.items():
        for tool, r in per_tool.items():
            print(
                f"{method:<6} {tool:<11} {r['tokens_per_second']:>10.1f} {r['train_seconds']:>8.1f} "
                f"{r['peak_rss_mib'] / 1024:>13.2f} {r['validation_loss']:>9.4f}"
            )
        d = per_tool.get("deltatune")
        for base in ("trl", "trl-nockpt"):
            if d and base in per_tool:
                b = per_tool[base]
                print(
                    f"{method}: deltatune / {base}: real tokens/s x{d['tokens_per_second'] / b['tokens_per_second']:.2f}, "
                    f"peak RSS x{d['peak_rss_mib'] / b['peak_rss_mib']:.2f}, "
                    f"validation loss {d['validation_loss'] - b['validation_loss']:+.4f}"
                )
    if args.output:
        Path(args.output).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
