"""Memory and time of the LM-head + cross-entropy: plain (full logits) vs chunked, on CPU.

Each mode runs in its own subprocess (so its peak RSS is its own): the model is built, then
``--steps`` forward+backward passes of deltatune's next-token loss on a random batch of
``--batch x --length`` tokens (every token trained, as in continued pretraining), timed after
one warm-up step. Printed: peak RSS, the RSS added by training over the loaded model, seconds
per step, and the loss (equal in both modes).

Models:
- ``tiny-qwen``: a 2-layer, 64-wide random Qwen2 with Qwen2.5's 151,936-token vocabulary
  (where the logits dominate memory);
- ``smollm2``: the packaged SmolLM2-135M (vocabulary 49,152), LoRA r=8 on all linear layers.

    HF_HUB_OFFLINE=1 python benchmarks/chunked_loss_cpu.py --model tiny-qwen --batch 8 --length 512
    HF_HUB_OFFLINE=1 python benchmarks/chunked_loss_cpu.py --model smollm2 --batch 4 --length 256 --steps 2
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _worker import run_worker  # noqa: E402


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def build(name: str):
    import torch

    torch.manual_seed(0)
    if name == "tiny-qwen":
        from transformers import Qwen2Config, Qwen2ForCausalLM

        cfg = Qwen2Config(
            vocab_size=151_936, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True,
        )
        return Qwen2ForCausalLM(cfg)
    from transformers import AutoModelForCausalLM

    from deltatune.config import DeltaConfig
    from deltatune.delta import apply_delta
    from deltatune.models import resolve_model

    model = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2"), dtype=torch.float32)
    return apply_delta(model, DeltaConfig(method="lora"), "CAUSAL_LM")


def worker(args: argparse.Namespace) -> None:
    import torch

    from deltatune.tasks.token_loss import next_token_losses

    chunk = 0 if args.worker == "plain" else args.chunk_size
    model = build(args.model).train()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (args.batch, args.length), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    loaded = _current_rss_mib()
    times, loss = [], None
    for step in range(args.steps + 1):
        t0 = time.perf_counter()
        ce, mask = next_token_losses(model, batch, chunk)
        total = ce.sum() / mask.sum()
        total.backward()
        model.zero_grad(set_to_none=True)
        if step > 0:
            times.append(time.perf_counter() - t0)
        loss = float(total)
    print("RESULT " + json.dumps({
        "peak_rss_mib": _rss_mib(), "loaded_rss_mib": loaded, "seconds_per_step": sum(times) / len(times), "loss": loss,
    }), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["tiny-qwen", "smollm2"], default="tiny-qwen")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--output", help="also write the results as JSON here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    passthrough = ["--model", args.model, "--batch", str(args.batch), "--length", str(args.length),
                   "--chunk-size", str(args.chunk_size), "--steps", str(args.steps)]
    results = {}
    for mode in ("plain", "chunked"):
        print(f"running {mode} ...", flush=True)
        results[mode] = run_worker(__file__, mode, passthrough)
    print(f"\n{args.model}, batch {args.batch} x {args.length} tokens, all trained; chunk {args.chunk_size} tokens; "
          f"mean of {args.steps} steps after one warm-up")
    print(f"{'mode':<8} {'peak RSS GiB':>13} {'added by training GiB':>22} {'s/step':>8} {'loss':>9}")
    for mode, r in results.items():
        added = (r["peak_rss_mib"] - r["loaded_rss_mib"]) / 1024
        print(f"{mode:<8} {r['peak_rss_mib'] / 1024:>13.2f} {added:>22.2f} {r['seconds_per_step']:>8.2f} {r['loss']:>9.4f}")
    a, b = results["plain"], results["chunked"]
    print(f"chunked / plain: peak RSS x{b['peak_rss_mib'] / a['peak_rss_mib']:.2f}, "
          f"time per step x{b['seconds_per_step'] / a['seconds_per_step']:.2f}")
    if args.output:
        Path(args.output).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
