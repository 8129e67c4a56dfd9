"""Gradient accumulation is normalized over the whole accumulated batch.

One SGD step (lr=1, no momentum, no weight decay, no clipping, dropout 0, constant schedule)
moves every parameter by exactly minus its gradient, so equal parameters after the step mean
equal gradients.
"""

import pytest
import torch
from safetensors.torch import load_file

from deltatune import finetune
from tests.helpers import make_sentiment_rows, tiny_config, write_csv


def _one_step(tiny_model_dir, tmp_path, train, batch, accum):
    cfg = tiny_config(
        tiny_model_dir,
        train,
        None,
        tmp_path / f"run_b{batch}_a{accum}",
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accum,
        optimizer="sgd",
        momentum=0.0,
        weight_decay=0.0,
        learning_rate=1.0,
        lr_scheduler_type="constant",
        max_grad_norm=None,
        max_steps=1,
        group_by_length=False,
    )
    cfg["eval"] = {"eval_strategy": "no"}
    run = finetune(cfg, verbose=False)
    return load_file(str(run.path / "model" / "model.safetensors"))


@pytest.mark.parametrize("batch,accum", [(2, 4), (3, 3), (1, 8)])
def test_accumulated_step_equals_full_batch_step(tiny_model_dir, tmp_path, batch, accum):
    # 8 examples of different lengths; the validation split is carved out of extra rows,
    # so training sees exactly the same 8 examples in both runs (same seed, no length grouping)
    train = write_csv(tmp_path / "train.csv", make_sentiment_rows(9, 3))
    ref = _one_step(tiny_model_dir, tmp_path, train, 8, 1)
    acc = _one_step(tiny_model_dir, tmp_path, train, batch, accum)
    init = load_file(str(next(iter([__import__("pathlib").Path(tiny_model_dir) / "model.safetensors"]))))
    moved = 0
    for name, w in ref.items():
        torch.testing.assert_close(acc[name], w, atol=1e-5, rtol=0, msg=name)
        key = name.removeprefix("bert.")
        if key in init and not torch.equal(init[key], w):
            moved += 1
    assert moved > 10  # the step really changed the weights
