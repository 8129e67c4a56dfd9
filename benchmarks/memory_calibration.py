"""Calibrate the micro-batch planner: peak RSS of two AdamW steps of SmolLM2-135M at batch B x 384 vs the estimate.

    HF_HUB_OFFLINE=1 python benchmarks/memory_calibration.py 4 full     # or lora; one process per size

Prints one JSON line: RSS before the steps, peak RSS, and the estimate's parts (GiB). The ratio
(peak - before - gradients - optimizer) / (activations + logits) is the factor
training/batch_plan.py plans with (benchmarks/README.md, "Memory-aware batching").
"""
import json
import resource
import sys
import time

import psutil
import torch

from deltatune.config import build_config
from deltatune.tasks import create_task
from deltatune.models import resolve_model
from deltatune.delta import apply_delta
from deltatune.training.memory import estimate_run_memory
from deltatune.training.optim import build_optimizer

b = int(sys.argv[1]); method = sys.argv[2] if len(sys.argv) > 2 else "full"
S = 384
cfg = build_config({"task": "instruction", "model": {"name_or_path": "smollm2"}, "delta": {"method": method},
                    "data": {"train_file": "x.json", "max_seq_length": S}, "train": {"per_device_train_batch_size": b}})
task = create_task(cfg)
path = resolve_model("smollm2")
from deltatune.models.loading import load_tokenizer
task.set_tokenizer(load_tokenizer(path, False))
model = apply_delta(task.build_model(path, {}), cfg.delta, task.peft_task_type, getattr(task, "peft_modules_to_save", None))
model.train()
opt = build_optimizer(model, cfg.train)
est = estimate_run_memory(model, task, cfg, "no")
rss0 = psutil.Process().memory_info().rss
torch.manual_seed(0)
ids = torch.randint(10, 40000, (b, S))
labels = ids.clone(); labels[:, :S // 3] = -100
batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
t = time.time()
for _ in range(2):
    loss, n = task.loss(model, batch)
    (loss / n).backward()
    opt.step(); opt.zero_grad(set_to_none=True)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"b": b, "method": method, "rss_before_gib": rss0 / 2**30, "peak_gib": peak / 2**30, "extra_gib": (peak - rss0) / 2**30,
                  "est_total_gib": est.total / 2**30, "est_params": est.parameters / 2**30, "est_act": est.activations / 2**30,
                  "est_logits": est.logits / 2**30, "est_grad_opt": (est.gradients + est.optimizer) / 2**30, "sec": time.time() - t}))
