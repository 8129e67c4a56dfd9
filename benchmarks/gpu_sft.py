"""GPU training throughput, side by side: HF Trainer vs deltatune on the issue-6 reference scenarios.

A random-init model of the Qwen2.5-0.5B shape (Qwen2: 24 layers, hidden 896, 14 query / 2
key-value heads, MLP 4,864, vocabulary 151,936, tied embeddings: 494M parameters), batch 16,
on synthetic token data (random ids: the speed of a step does not depend on the values):

- ``fixed``: blocks of exactly 1,024 tokens, every token trained (continued pretraining);
- ``sft``: SFT-like examples with lognormal lengths (mean 371, at most 1,024; sigma
  ``--sigma``), the first 30% of each example a masked prompt;
- ``lora``: ``fixed`` with LoRA r=16 (alpha 32) on all linear layers.

Tools, each scenario x tool in its own subprocess:

- ``hf``: HF Trainer with its defaults (bf16 autocast, fused AdamW, random batches padded to
  their longest example, the model's own loss);
- ``deltatune``: deltatune's loop with bf16 autocast, fused AdamW, ``torch.compile`` of each
  transformer block, the chunked LM-head loss, and (``sft``) packing: examples packed into
  1,024-token sequences without attention between them, 16 sequences per batch.

Throughput is measured in steady state: ``--warmup-steps`` steps (compilation, allocator
warm-up) are run first and not timed, then ``--steps`` timed steps (CUDA synchronized at each
step end). Printed per run: real (non-padding) tokens per second, MFU, and peak GPU memory
(``torch.cuda.max_memory_allocated``; peak RSS on CPU).

MFU = model FLOPs of the real tokens / time / peak (``--peak-tflops``, 989 for an H200's dense
bf16). Model FLOPs of an example of ``l`` tokens: ``6*N*l + 12*L*h*l**2`` (PaLM, Chowdhery et al.
2022, appendix B: N parameters, L layers, h hidden size; the attention term without causal
halving), independent of padding and packing. For LoRA the frozen weights get no weight
gradient, so 2/3 of that is counted (forward + input gradients). At 1,024 tokens this gives
3.23 GFLOP per token: 989 TFLOP/s / 3.23 GFLOP = 306,000 tokens/s, the issue's physical limit.

    python benchmarks/gpu_sft.py --output benchmarks/results/gpu_sft_h200.json     # on a GPU machine
    HF_HUB_OFFLINE=1 python benchmarks/gpu_sft.py --tiny                            # CPU check, tiny config
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _worker import run_worker  # noqa: E402

QWEN_05B = dict(
    hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
    vocab_size=151_936, max_position_embeddings=32_768, rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
)
TINY = dict(
    hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    vocab_size=32_768, max_position_embeddings=1024, tie_word_embeddings=True,
)
PROMPT_SHARE = 0.3


# ---- data ---------------------------------------------------------------------------------------
def lognormal_lengths(n: int, mean: float, max_len: int, sigma: float, seed: int) -> list[int]:
    """``n`` lengths from a lognormal with shape ``sigma``, capped at ``max_len``, with mean ``mean``.

    The location is solved (bisection) so that the mean of the *capped* lengths is ``mean``.
    """
    import numpy as np

    z = np.random.default_rng(seed).standard_normal(n)
    lo, hi = 0.0, math.log(max_len) + 3
    for _ in range(60):
        mu = (lo + hi) / 2
        m = np.minimum(np.exp(mu + sigma * z), max_len).clip(min=2).mean()
        lo, hi = (mu, hi) if m < mean else (lo, mu)
    return np.minimum(np.exp(mu + sigma * z), max_len).clip(min=2).astype(int).tolist()


def make_examples(args) -> list[dict]:
    """Token rows ``input_ids``/``labels`` for the scenario (labels -100 on the prompt share for ``sft``)."""
    import torch

    g = torch.Generator().manual_seed(args.seed)
    steps = args.warmup_steps + args.steps
    if args.scenario == "sft":
        # enough for the packed tool too (~seq_len / mean examples per sequence)
        n = int(steps * args.batch_size * args.seq_len / args.mean_len * 1.2) + args.batch_size
        lengths = lognormal_lengths(n, args.mean_len, args.seq_len, args.sigma, args.seed)
    else:
        lengths = [args.seq_len] * (steps * args.batch_size)
    rows = []
    for n in lengths:
        ids = torch.randint(0, args.vocab_size, (n,), generator=g).tolist()
        cut = int(PROMPT_SHARE * n) if args.scenario == "sft" else 0
        rows.append({"input_ids": ids, "labels": [-100] * cut + ids[cut:]})
    return rows


# ---- accounting -------------------------------------------------------------------------------
class StepMeter:
    """Real tokens and model FLOPs per collated batch, and a timestamp per optimizer step."""

    def __init__(self, n_params: int, layers: int, hidden: int, flops_share: float, cuda: bool):
        self.n, self.layers, self.hidden, self.share, self.cuda = n_params, layers, hidden, flops_share, cuda
        self.batches: list[tuple[int, float]] = []
        self.times: list[float] = []

    def example_flops(self, length: int) -> float:
        return self.share * (6 * self.n * length + 12 * self.layers * self.hidden * length**2)

    def record_batch(self, example_lengths: list[int]) -> None:
        self.batches.append((sum(example_lengths), sum(self.example_flops(n) for n in example_lengths)))

    def step_end(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def summary(self, warmup: int, peak_tflops: float) -> dict:
        """Tokens/s and MFU over the steps after ``warmup`` (batch k is consumed by step k)."""
        timed = slice(warmup, len(self.times))
        seconds = self.times[-1] - self.times[warmup - 1] if warmup > 0 else None
        tokens = sum(t for t, _ in self.batches[timed])
        flops = sum(f for _, f in self.batches[timed])
        return {
            "timed_steps": len(self.times) - warmup,
            "seconds": seconds,
            "real_tokens": tokens,
            "tokens_per_second": tokens / seconds,
            "mfu": flops / seconds / (peak_tflops * 1e12),
        }


def _build_model(args):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**(TINY if args.tiny else QWEN_05B))
    cfg._attn_implementation = args.attn
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg)
    return model, device


def _meter(args, model, device) -> StepMeter:
    n = sum(p.numel() for p in model.parameters())
    share = 2 / 3 if args.scenario == "lora" else 1.0
    return StepMeter(n, model.config.num_hidden_layers, model.config.hidden_size, share, device == "cuda")


def _example_lengths(row: dict) -> list[int]:
    """Lengths of the examples in a (possibly packed) row: packed rows restart position ids at 0."""
    pos = row.get("position_ids")
    if pos is None:
        return [len(row["input_ids"])]
    starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
    return [b - a for a, b in zip(starts, starts[1:])]


# ---- tools -------------------------------------------------------------------------------------
def run_hf(args, rows) -> dict:
    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model, device = _build_model(args)
    meter = _meter(args, model, device)
    if args.scenario == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"))

    def collate(feats):
        meter.record_batch([len(f["input_ids"]) for f in feats])
        t = max(len(f["input_ids"]) for f in feats)
        ids = torch.zeros((len(feats), t), dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for i, f in enumerate(feats):
            n = len(f["input_ids"])
            ids[i, :n], mask[i, :n], labels[i, :n] = torch.tensor(f["input_ids"]), 1, torch.tensor(f["labels"])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    class Timer(TrainerCallback):
        def on_step_end(self, *a, **k):
            meter.step_end()

    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=args.batch_size,
            max_steps=args.warmup_steps + args.steps,
            learning_rate=args.learning_rate,
            bf16=device == "cuda",
            logging_steps=10_000,
            save_strategy="no",
            report_to="none",
            seed=args.seed,
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = Trainer(model=model, args=targs, train_dataset=Dataset.from_list(rows), data_collator=collate, callbacks=[Timer()])
        trainer.train()
    return meter.summary(args.warmup_steps, args.peak_tflops)


def run_deltatune(args, rows) -> dict:
    from deltatune.config import RunConfig
    from deltatune.delta import apply_delta
    from deltatune.rundir import RunDir
    from deltatune.tasks.base import Features
    from deltatune.tasks.language_modeling import InstructionTask
    from deltatune.training import Trainer, compute
    from deltatune.training.packing import pack_training_features

    model, device = _build_model(args)
    meter = _meter(args, model, device)
    packing = args.scenario == "sft" and not args.no_packing
    cfg = RunConfig(
        task="instruction",
        seed=args.seed,
        data={"max_seq_length": args.seq_len},
        train={
            "per_device_train_batch_size": args.batch_size,
            "max_steps": args.warmup_steps + args.steps,
            "learning_rate": args.learning_rate,
            "mixed_precision": "bf16" if device == "cuda" else "no",
            "packing": packing,
            "torch_compile": not args.no_compile,
            "loss_chunk_size": args.loss_chunk_size,
            "logging_steps": 10_000,
            "progress_bar": False,
        },
        eval={"eval_strategy": "no"},
        delta={"method": "lora" if args.scenario == "lora" else "full", "lora_r": 16, "lora_alpha": 32.0},
    )
    compute.COMPILE_BACKEND = args.compile_backend

    class MeteredTask(InstructionTask):
        def collate(self, features):
            meter.record_batch([n for f in features for n in _example_lengths(f)])
            return super().collate(features)

    task = MeteredTask(cfg)
    task.pad_token_id = 0
    model = apply_delta(model, cfg.delta, task.peft_task_type)
    feats = Features([{**r, "attention_mask": [1] * len(r["input_ids"])} for r in rows], [len(r["input_ids"]) for r in rows])
    if packing:
        feats = pack_training_features(task, feats, args.seq_len)
    with tempfile.TemporaryDirectory() as out:
        run_dir = RunDir(Path(out) / "run")
        run_dir.prepare(overwrite=False, resume=False)
        trainer = Trainer(model, task, feats, None, cfg, run_dir, save_model=lambda folder: None,
                          callbacks=(lambda tr, state: meter.step_end(),))
        trainer.train()
    return meter.summary(args.warmup_steps, args.peak_tflops)


def worker(args) -> None:
    import torch

    rows = make_examples(args)
    res = run_deltatune(args, rows) if args.worker == "deltatune" else run_hf(args, rows)
    if torch.cuda.is_available():
        res["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        res["device"] = torch.cuda.get_device_name()
    else:
        res["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        res["device"] = "cpu (peak RSS)"
    print("RESULT " + json.dumps(res), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="a tiny Qwen2 config and a few steps (runs on CPU)")
    p.add_argument("--scenarios", default="fixed,sft,lora")
    p.add_argument("--tools", default="hf,deltatune")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int)
    p.add_argument("--mean-len", type=float)
    p.add_argument("--sigma", type=float, default=0.8, help="lognormal shape of the sft lengths")
    p.add_argument("--steps", type=int, help="timed steps")
    p.add_argument("--warmup-steps", type=int, help="untimed steps first (compilation)")
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="the device's dense bf16 peak (H200: 989)")
    p.add_argument("--attn", default="sdpa", help="attention implementation (sdpa, flex_attention, flash_attention_2)")
    p.add_argument("--loss-chunk-size", type=int, default=None, help="deltatune: tokens per loss chunk (unset: automatic)")
    p.add_argument("--no-compile", action="store_true", help="deltatune without torch.compile")
    p.add_argument("--no-packing", action="store_true", help="deltatune without packing (sft)")
    p.add_argument("--compile-backend", help="torch.compile backend (default inductor; aot_eager with --tiny)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", help="also write the results as JSON here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--scenario", help=argparse.SUPPRESS)
    p.add_argument("--vocab-size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    sizes = dict(batch_size=4, seq_len=128, mean_len=48.0, steps=3, warmup_steps=2, compile_backend="aot_eager") if args.tiny else dict(
        batch_size=16, seq_len=1024, mean_len=371.0, steps=30, warmup_steps=8, compile_backend="inductor"
    )
    for k, v in sizes.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.vocab_size = (TINY if args.tiny else QWEN_05B)["vocab_size"]
    if args.warmup_steps < 1:
        p.error("--warmup-steps must be at least 1 (the timed window starts after it)")
    if args.worker:
        worker(args)
        return

    shared = ("batch_size", "seq_len", "mean_len", "sigma", "steps", "warmup_steps", "learning_rate", "peak_tflops",
              "attn", "compile_backend", "seed")
    passthrough = [x for k in shared for x in (f"--{k.replace('_', '-')}", str(getattr(args, k)))]
    passthrough += ["--tiny"] * args.tiny + ["--no-compile"] * args.no_compile + ["--no-packing"] * args.no_packing
    if args.loss_chunk_size is not None:
        passthrough += ["--loss-chunk-size", str(args.loss_chunk_size)]
    results: dict[str, dict[str, dict]] = {}
    for scenario in args.scenarios.split(","):
        results[scenario] = {}
        for tool in args.tools.split(","):
            print(f"running {tool} on {scenario} ...", flush=True)
            results[scenario][tool] = run_worker(__file__, tool, passthrough + ["--scenario", scenario])

    device = next(iter(next(iter(results.values())).values()))["device"]
    shape = "tiny Qwen2" if args.tiny else "Qwen2.5-0.5B shape (494M, vocab 151,936)"
    print(f"\n{shape}, random init, batch {args.batch_size}, {args.seq_len}-token blocks / lognormal SFT lengths "
          f"(mean {args.mean_len:g}, sigma {args.sigma:g}); {args.steps} timed steps after {args.warmup_steps}; "
          f"attention {args.attn}; peak {args.peak_tflops:g} TFLOP/s; {device}; {platform.node()}\n")
    mem = "peak GiB" if "cpu" not in device else "peak RSS GiB"
    print(f"{'scenario':<8} {'tool':<10} {'real tok/s':>11} {'MFU':>7} {mem:>12}")
    for scenario, per_tool in results.items():
        for tool, r in per_tool.items():
            print(f"{scenario:<8} {tool:<10} {r['tokens_per_second']:>11,.0f} {100 * r['mfu']:>6.1f}% {r['peak_gib']:>12.2f}")
        if "hf" in per_tool and "deltatune" in per_tool:
            d, b = per_tool["deltatune"], per_tool["hf"]
            print(f"{scenario}: deltatune / hf: real tokens/s x{d['tokens_per_second'] / b['tokens_per_second']:.2f}, "
                  f"peak memory x{d['peak_gib'] / b['peak_gib']:.2f}")
    if args.output:
        Path(args.output).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
