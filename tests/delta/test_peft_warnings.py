"""No transformers FutureWarning about gradient checkpointing when a peft adapter is applied or loaded."""

import warnings

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from deltatune.config import DeltaConfig
from deltatune.delta import apply_delta


def _tiny_llama():
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def test_lora_on_a_decoder_raises_no_gradient_checkpointing_future_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = apply_delta(_tiny_llama(), DeltaConfig(method="lora", lora_r=2), "CAUSAL_LM")
        warnings.warn("an unrelated FutureWarning still shows", FutureWarning)
    texts = [str(w.message) for w in caught]
    assert not [t for t in texts if "checkpointing" in t], texts
    assert "an unrelated FutureWarning still shows" in texts  # only that one warning is ignored
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) > 0
