"""SmolLM2 DPO (LoRA) on HH-RLHF helpful-base pairs, side by side: TRL's DPOTrainer vs deltatune.

Every arm trains a LoRA adapter (r 8, alpha 16, dropout 0, all linear layers: deltatune's
defaults) on the packaged SmolLM2-135M-Instruct (fp32 on CPU, no mixed precision) with the
sigmoid DPO loss (Rafailov et al. 2023, beta ``--beta``), the *same* pairs, batch size, number of
optimizer steps, learning rate, linear schedule with ``--warmup-ratio`` warmup, weight decay 0.01,
gradient clipping 1.0, AdamW, seed. The reference model is the base (the adapter disabled).

Data: ``../shared/data/preference/hh_rlhf_helpful_base/pairs.jsonl`` (PROVENANCE.txt there).
Training pairs: the first ``--pairs`` rows with split "train" whose chat-templated prompt plus
longer reply fit ``--max-length`` tokens (so no tool truncates anything); held out: the rows with
split "eval" (235; ``--eval-pairs`` caps them). The prompt is ``prompt_messages`` (a list of
messages), the replies ``chosen_text``/``rejected_text``. deltatune reads them as JSONL with
columns prompt (messages), chosen, rejected (strings); TRL gets its documented conversational
form (prompt = messages, chosen/rejected = [{"role": "assistant", "content": ...}]).

Arms (each in its own subprocess, so peak RSS is its own):
- ``trl``: DPOTrainer at its defaults otherwise: the reference log-probs computed at every step
  with the adapter disabled, gradient checkpointing on (DPOConfig's default), fp32 (DPOConfig
  would use bf16 autocast).
- ``trl-best``: TRL's fastest settings here with the same math: ``precompute_ref_log_probs``
  (the reference pass before training, batch ``--precompute-batch-size``; its time is counted in
  the training time), gradient checkpointing off. ``padding_free`` is a no-op in TRL 1.16's
  DPOTrainer (it warns and falls back to padding) and there is no ``use_logits_to_keep``; TRL
  already computes log-probs through its fused LM head.
- ``deltatune``: ``deltatune.finetune`` with task dpo at its defaults (reference log-probs
  precomputed, length-grouped batches); its training time is ``result.train_seconds`` plus the
  reference pass (the ``{"event": "reference"}`` record of metrics.jsonl).
- ``deltatune-mb4``: the same with ``train.micro_batch_size: 4`` (each step's pairs in forward
  passes of 4, gradients accumulated: the same optimizer steps with half the activation memory;
  TRL's default gets its lower memory from gradient checkpointing instead).

Measured per arm: pairs trained per second of training (incl. any reference precompute),
training seconds, peak RSS of the arm's process (ru_maxrss), and on the held-out pairs, by the
same code for every arm (a separate process that loads the base model and each arm's saved
adapter with ``peft.PeftModel.from_pretrained``): the DPO implicit reward
``r = beta * (log pi(y|x) - log pi_ref(y|x))`` (log-probs summed over the reply tokens, the
reply's end-of-turn token included; pi_ref = the base model), the reward accuracy (share of pairs
with r(chosen) > r(rejected), ties 0.5) and the mean margin r(chosen) - r(rejected). The base
model's own preference (share of pairs with log p(chosen) > log p(rejected)) is reported too.

    HF_HUB_OFFLINE=1 python benchmarks/dpo_vs_trl.py --pairs 16 --steps 2 --eval-pairs 16   # quick check
    HF_HUB_OFFLINE=1 python benchmarks/dpo_vs_trl.py --output benchmarks/results/dpo_vs_trl.json
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
PAIRS = ROOT.parent / "shared" / "data" / "preference" / "hh_rlhf_helpful_base" / "pairs.jsonl"
LORA = {"r": 8, "alpha": 16, "dropout": 0.0}  # deltatune's DeltaConfig defaults (lora_r, lora_alpha, lora_dropout)
WEIGHT_DECAY = 0.01  # deltatune's TrainConfig default (TRL/transformers: 0.0)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _tokenizer():
    from transformers import AutoTokenizer

    from deltatune.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("smollm2"))


def encode_pair(tok, prompt: list[dict], reply: str) -> tuple[list[int], int]:
    """(token ids of prompt + reply, number of prompt tokens) with the model's chat template.

    The prompt is rendered with the generation prompt (``<|im_start|>assistant\\n``); the reply
    tokens are the assistant turn's content and its end-of-turn token ``<|im_end|>`` (not the
    newline the template writes after it).
    """
    p = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template(prompt + [{"role": "assistant", "content": reply}], tokenize=False)
    assert full.startswith(p), "chat template renders the prompt differently alone"
    end = full.rindex("<|im_end|>") + len("<|im_end|>")
    prompt_ids = tok(p, add_special_tokens=False)["input_ids"]
    reply_ids = tok(full[len(p) : end], add_special_tokens=False)["input_ids"]
    return prompt_ids + reply_ids, len(prompt_ids)


def select(args, tok=None) -> tuple[list[dict], list[dict]]:
    """(train rows, eval rows) as {"prompt": messages, "chosen": str, "rejected": str}."""
    tok = tok or _tokenizer()
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    train, held = [], []
    for r in rows:
        row = {"prompt": r["prompt_messages"], "chosen": r["chosen_text"], "rejected": r["rejected_text"]}
        if r["split"] == "eval":
            held.append(row)
        elif len(train) < args.pairs:
            # the full rendering (with the template's newline after <|im_end|>) is what TRL trains on: the longest
            longest = max(
                len(tok(tok.apply_chat_template(row["prompt"] + [{"role": "assistant", "content": row[k]}], tokenize=False),
                        add_special_tokens=False)["input_ids"])
                for k in ("chosen", "rejected")
            )
            if longest <= args.max_length:
                train.append(row)
    if len(train) < args.pairs:
        raise SystemExit(f"only {len(train)} train pairs fit --max-length {args.max_length}")
    return train, held[: args.eval_pairs]


def run_trl(args, train, out: Path, best: bool) -> dict:
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from deltatune.models import resolve_model

    class TimedDPOTrainer(DPOTrainer):
        """DPOTrainer that records how long its reference precompute (run in ``__init__``) takes."""

        precompute_seconds = 0.0

        def _precompute_ref_logps(self, dataset, name, batch_size):
            t0 = time.perf_counter()
            try:
                return super()._precompute_ref_logps(dataset, name, batch_size)
            finally:
                self.precompute_seconds += time.perf_counter() - t0

    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2"), dtype=torch.float32)
    peft_config = LoraConfig(
        r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], target_modules="all-linear", task_type="CAUSAL_LM"
    )
    conversational = [
        {
            "prompt": r["prompt"],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
        }
        for r in train
    ]
    extra = {}
    if best:
        extra = {
            "precompute_ref_log_probs": True,
            "precompute_ref_batch_size": args.precompute_batch_size,
            "gradient_checkpointing": False,
        }
    with tempfile.TemporaryDirectory() as work:
        cfg = DPOConfig(
            output_dir=work,
            per_device_train_batch_size=args.batch_size,
            max_steps=args.steps,
            learning_rate=args.learning_rate,
            lr_scheduler_type="linear",
            warmup_steps=args.warmup_ratio,  # a float < 1 is a ratio in transformers 5
            weight_decay=WEIGHT_DECAY,
            max_grad_norm=1.0,
            beta=args.beta,
            loss_type=["sigmoid"],
            max_length=args.max_length,
            bf16=False,
            eval_strategy="no",
            save_strategy="no",
            logging_steps=10,
            report_to="none",
            seed=args.seed,
            disable_tqdm=True,
            **extra,
        )
        os.environ["HF_DATASETS_CACHE"] = str(Path(work) / "datasets")  # no cached reference log-probs across runs
        t0 = time.perf_counter()
        trainer = TimedDPOTrainer(
            model=model,
            args=cfg,
            train_dataset=datasets.Dataset.from_list(conversational),
            processing_class=_tokenizer(),
            peft_config=peft_config,
        )
        init_seconds = time.perf_counter() - t0
        init_peak = _peak_rss_mib()
        t0 = time.perf_counter()
        trainer.train()
        loop_seconds = time.perf_counter() - t0
        peak = _peak_rss_mib()
        trainer.model.save_pretrained(str(out))
    return {
        "train_seconds": loop_seconds + trainer.precompute_seconds,
        "loop_seconds": loop_seconds,
        "reference_seconds": trainer.precompute_seconds,
        "init_seconds": init_seconds,
        "init_peak_rss_mib": init_peak,
        "steps": trainer.state.global_step,
        "peak_rss_mib": peak,
        "settings": {k: getattr(cfg, k) for k in ("gradient_checkpointing", "precompute_ref_log_probs", "precompute_ref_batch_size",
                                                  "padding_free", "optim", "disable_dropout")},
    }


def run_deltatune(args, train, held, out: Path, micro_batch_size: int | None = None) -> dict:
    import shutil

    import deltatune
    from deltatune.models import resolve_model

    with tempfile.TemporaryDirectory() as work:
        data, val_data = Path(work) / "train.jsonl", Path(work) / "validation.jsonl"
        data.write_text("\n".join(json.dumps(r) for r in train) + "\n")
        # a few held-out pairs as the run's validation split (the run needs one; its reference pass over
        # them is counted in the training time): the held-out figures come from evaluate(), as for TRL
        val_data.write_text("\n".join(json.dumps(r) for r in held[:8]) + "\n")
        run_dir = Path(work) / "run"
        cfg = {
            "task": "dpo",
            "output_dir": str(run_dir),
            "seed": args.seed,
            "model": {"name_or_path": str(resolve_model("smollm2"))},
            "data": {"train_file": str(data), "validation_file": str(val_data), "max_seq_length": args.max_length, "beta": args.beta},
            "train": {
                "max_steps": args.steps,
                "per_device_train_batch_size": args.batch_size,
                "learning_rate": args.learning_rate,
                "warmup_ratio": args.warmup_ratio,
                "weight_decay": WEIGHT_DECAY,
                "lr_scheduler_type": "linear",
                "max_grad_norm": 1.0,
                **({"micro_batch_size": micro_batch_size} if micro_batch_size else {}),
                "mixed_precision": "no",
                "logging_steps": 10,
                "progress_bar": False,
            },
            "eval": {"eval_strategy": "no", "compare_generations": 0, "generation_max_samples": 0},
            "delta": {"method": "lora", "lora_r": LORA["r"], "lora_alpha": LORA["alpha"], "lora_dropout": LORA["dropout"]},
        }
        run = deltatune.finetune(cfg, verbose=False)
        peak = _peak_rss_mib()
        reference = 0.0
        metrics = Path(run.path) / "metrics.jsonl"
        if metrics.exists():
            for line in metrics.read_text().splitlines():
                rec = json.loads(line) if line.strip() else {}
                if rec.get("event") == "reference":
                    reference += float(rec["seconds"])
        shutil.copytree(Path(run.path) / "model", out)
    r = run.result
    return {
        "train_seconds": r.train_seconds + reference,
        "loop_seconds": r.train_seconds,
        "reference_seconds": reference,
        "steps": r.global_step,
        "peak_rss_mib": peak,
    }


def sequence_logps(model, examples) -> list[float]:
    """Sum of log p(token) over each example's reply tokens; ``examples``: (ids, prompt_len) pairs.

    One sequence per forward (no padding); only the logits that predict reply tokens are computed
    (``logits_to_keep``). Returns one float per example, in nats.
    """
    import torch

    res = []
    with torch.no_grad():
        for ids, p in examples:
            n = len(ids) - p
            logits = model(input_ids=torch.tensor([ids]), logits_to_keep=n + 1).logits[0, :-1].float()
            logp = torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(ids[p:]).unsqueeze(-1))
            res.append(float(logp.sum()))
    return res


def evaluate(args, adapters: dict[str, str]) -> dict:
    """Reward accuracy and margin of each adapter on the held-out pairs, plus the base's own preference."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from deltatune.models import resolve_model

    tok = _tokenizer()
    _, held = select(argparse.Namespace(**{**vars(args), "pairs": 0}), tok)
    chosen = [encode_pair(tok, r["prompt"], r["chosen"]) for r in held]
    rejected = [encode_pair(tok, r["prompt"], r["rejected"]) for r in held]
    base = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2"), dtype=torch.float32).eval()
    t0 = time.perf_counter()
    ref_c, ref_r = sequence_logps(base, chosen), sequence_logps(base, rejected)
    seconds = time.perf_counter() - t0
    out = {
        "pairs": len(held),
        "base": {
            "reward_accuracy": 0.5,
            "logp_preference": sum((c > r) + 0.5 * (c == r) for c, r in zip(ref_c, ref_r)) / len(held),
            "seconds": seconds,
        },
    }
    for name, path in adapters.items():
        t0 = time.perf_counter()
        model = PeftModel.from_pretrained(base, path).eval()
        pol_c, pol_r = sequence_logps(model, chosen), sequence_logps(model, rejected)
        margins = [args.beta * ((pc - rc) - (pr - rr)) for pc, rc, pr, rr in zip(pol_c, ref_c, pol_r, ref_r)]
        out[name] = {
            "reward_accuracy": sum((m > 0) + 0.5 * (m == 0) for m in margins) / len(margins),
            "mean_margin": sum(margins) / len(margins),
            "chosen_reward": args.beta * sum(p - r for p, r in zip(pol_c, ref_c)) / len(held),
            "rejected_reward": args.beta * sum(p - r for p, r in zip(pol_r, ref_r)) / len(held),
            "logp_preference": sum((c > r) + 0.5 * (c == r) for c, r in zip(pol_c, pol_r)) / len(held),
            "seconds": time.perf_counter() - t0,
        }
        base = model.unload()  # the base again, without the adapter's layers
    return out


def worker(args: argparse.Namespace) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.worker == "eval":
        print("RESULT " + json.dumps(evaluate(args, json.loads(args.adapters))), flush=True)
        return
    train, held = select(args)
    out = Path(args.adapter_out)
    if args.worker == "deltatune":
        res = run_deltatune(args, train, held, out)
    elif args.worker == "deltatune-mb4":
        res = run_deltatune(args, train, held, out, micro_batch_size=4)
    else:
        res = run_trl(args, train, out, best=args.worker == "trl-best")
    res["pairs_trained"] = args.steps * args.batch_size
    res["pairs_per_second"] = res["pairs_trained"] / res["train_seconds"]
    print("RESULT " + json.dumps(res), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=512, help="training pairs (first train-split rows that fit --max-length)")
    p.add_argument("--eval-pairs", type=int, default=235, help="held-out pairs (split 'eval', at most 235)")
    p.add_argument("--steps", type=int, default=64, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per optimizer step")
    p.add_argument("--max-length", type=int, default=256, help="tokens of prompt + reply at most")
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--precompute-batch-size", type=int, default=32, help="trl-best: pairs per reference precompute batch")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch's default); 1 on a shared CPU")
    p.add_argument("--arms", default="trl,trl-best,deltatune,deltatune-mb4")
    p.add_argument("--output", help="also write the results as JSON here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--adapter-out", help=argparse.SUPPRESS)
    p.add_argument("--adapters", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    shared = ("pairs", "eval_pairs", "steps", "batch_size", "max_length", "learning_rate", "beta", "warmup_ratio",
              "precompute_batch_size", "seed", "threads")
    passthrough = [x for k in shared for x in (f"--{k.replace('_', '-')}", str(getattr(args, k)))]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        adapters = {}
        for arm in args.arms.split(","):
            print(f"training {arm} ...", flush=True)
            adapters[arm] = str(Path(tmp) / arm)
            t0 = time.perf_counter()
            results[arm] = run_worker(__file__, arm, passthrough + ["--adapter-out", adapters[arm]])
            results[arm]["wall_seconds"] = time.perf_counter() - t0
        print("evaluating ...", flush=True)
        t0 = time.perf_counter()
        evaluation = run_worker(__file__, "eval", passthrough + ["--adapters", json.dumps(adapters)])
        print(f"evaluation took {time.perf_counter() - t0:.0f} s", flush=True)
    for arm, r in results.items():
        r.update(evaluation[arm])

    print(
        f"\nSmolLM2-135M-Instruct DPO (LoRA r8) on HH-RLHF helpful-base: {args.pairs} train pairs (<= {args.max_length} tokens), "
        f"{evaluation['pairs']} held-out pairs, {args.steps} steps x {args.batch_size} pairs, lr {args.learning_rate:g}, "
        f"beta {args.beta:g}, warmup {args.warmup_ratio:g}, fp32, seed {args.seed}"
    )
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs\n")
    b = evaluation["base"]
    print(f"base model: reward accuracy 0.5 (by construction), log-prob preference {b['logp_preference']:.3f}\n")
    print(f"{'arm':<13} {'pairs/s':>8} {'train s':>8} {'(ref s)':>8} {'peak RSS GiB':>13} {'reward acc':>10} {'margin':>8} {'logp pref':>9}")
    for arm, r in results.items():
        print(
            f"{arm:<13} {r['pairs_per_second']:>8.3f} {r['train_seconds']:>8.1f} {r['reference_seconds']:>8.1f} "
            f"{r['peak_rss_mib'] / 1024:>13.2f} {r['reward_accuracy']:>10.3f} {r['mean_margin']:>8.4f} {r['logp_preference']:>9.3f}"
        )
    for ours in ("deltatune", "deltatune-mb4"):
        d = results.get(ours)
        for other in ("trl", "trl-best"):
            if not d or other not in results:
                continue
            o = results[other]
            print(
                f"{ours} / {other}: pairs/s x{d['pairs_per_second'] / o['pairs_per_second']:.2f}, "
                f"peak RSS x{d['peak_rss_mib'] / o['peak_rss_mib']:.2f}, "
                f"reward accuracy {d['reward_accuracy'] - o['reward_accuracy']:+.3f}"
            )
    if args.output:
        Path(args.output).write_text(json.dumps({"args": vars(args), "base": evaluation["base"], "results": results}, indent=2))


if __name__ == "__main__":
    main()
