"""The chunked LM-head + cross-entropy equals the plain path (loss and gradients), with and without LoRA."""

import pytest
import torch

from deltatune.config import DeltaConfig
from deltatune.delta import apply_delta
from deltatune.tasks.token_loss import (
    AUTO_CHUNK_TOKENS,
    next_token_losses,
    output_head,
    resolve_chunk_size,
)


def _batch(vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = [13, 9, 4]
    ids = torch.zeros(3, 13, dtype=torch.long)
    mask = torch.zeros(3, 13, dtype=torch.long)
    labels = torch.full((3, 13), -100)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(1, vocab, (n,), generator=g)
        mask[i, :n] = 1
        labels[i, n // 3 : n] = ids[i, n // 3 : n]  # masked prompt, trained answer, padding
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _model(tiny_llama_dir, lora: bool):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    if lora:
        model = apply_delta(model, DeltaConfig(method="lora", lora_r=4), "CAUSAL_LM")
        # LoRA B starts at zero; move it so the adapter changes the logits and gets real gradients
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
    return model.train()


def _loss_and_grads(model, batch, chunk):
    model.zero_grad()
    ce, mask = next_token_losses(model, batch, chunk)
    (ce.sum() / mask.sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return ce.detach(), mask, grads


@pytest.mark.parametrize("lora", [False, True])
def test_chunked_loss_and_gradients_equal_plain(tiny_llama_dir, lora):
    model = _model(tiny_llama_dir, lora)
    batch = _batch(model.config.vocab_size)
    ce0, mask0, g0 = _loss_and_grads(model, batch, 0)
    assert int(mask0.sum()) == 18
    for chunk in (5, 64):  # several chunks with a ragged last one; one chunk
        ce, mask, g = _loss_and_grads(model, batch, chunk)
        assert torch.equal(mask, mask0)
        torch.testing.assert_close(ce, ce0, atol=1e-5, rtol=0)
        assert set(g) == set(g0) and len(g) > 0
        for n in g0:
            torch.testing.assert_close(g[n], g0[n], atol=1e-5, rtol=1e-5, msg=n)


def test_chunked_path_never_computes_full_logits(tiny_llama_dir):
    model = _model(tiny_llama_dir, lora=False)
    batch = _batch(model.config.vocab_size)
    shapes = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape)))
    try:
        with torch.no_grad():
            next_token_losses(model, batch, 8)
    finally:
        handle.remove()
    v = model.config.vocab_size
    # the model's own call gets an empty slice; then 18 trained tokens in chunks of 8
    assert shapes == [(3, 0, v), (8, v), (8, v), (2, v)]


def test_models_with_logit_postprocessing_take_the_plain_path():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = Gemma2Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, final_logit_softcapping=30.0,
    )
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(cfg)
    assert output_head(model) is None
    batch = _batch(64)
    torch.testing.assert_close(next_token_losses(model, batch, 4)[0], next_token_losses(model, batch, 0)[0])


def test_prefix_tuning_takes_the_plain_path(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    assert output_head(model) is model.lm_head
    prefixed = apply_delta(model, DeltaConfig(method="prefix", num_virtual_tokens=4), "CAUSAL_LM")
    assert output_head(prefixed) is None


def test_resolve_chunk_size():
    assert resolve_chunk_size(None, 49_152) == AUTO_CHUNK_TOKENS
    assert resolve_chunk_size(None, 30_522) == 0
    assert resolve_chunk_size(0, 151_936) == 0
    assert resolve_chunk_size(256, 100) == 256
