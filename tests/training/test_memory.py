"""The memory estimate: parameter, gradient and optimizer parts exact; activations near measured."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from deltatune.config import DeltaConfig, TrainConfig
from deltatune.delta import apply_delta
from deltatune.training.memory import MemoryEstimate, activation_bytes, estimate_memory, logits_bytes
from deltatune.training.optim import build_optimizer


def _tensor_bytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def _tiny(vocab=100, h=32, i=64, layers=2, heads=2, attn="sdpa"):
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=h, intermediate_size=i, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=128,
    )
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("optimizer,momentum", [("adamw", 0.9), ("sgd", 0.9), ("sgd", 0.0), ("adafactor", 0.9)])
def test_parameter_gradient_and_optimizer_parts_are_exact(method, optimizer, momentum):
    model = _tiny()
    if method == "lora":
        model = apply_delta(model, DeltaConfig(method="lora", lora_r=4), "CAUSAL_LM")
    opt = build_optimizer(model, TrainConfig(optimizer=optimizer, momentum=momentum, learning_rate=1e-3))
    ids = torch.randint(0, 100, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    est = estimate_memory(model, optimizer, batch_size=2, seq_len=8, bits16=False, momentum=momentum)
    assert est.parameters == _tensor_bytes(model.parameters())
    assert est.gradients == _tensor_bytes(p.grad for p in model.parameters() if p.requires_grad)
    assert est.optimizer == _tensor_bytes(t for st in opt.state.values() for t in st.values())
    if method == "lora":
        assert 0 < est.gradients < est.parameters / 4
    if optimizer == "sgd" and momentum == 0:
        assert est.optimizer == 0


def _saved_activation_bytes(model, ids):
    """Bytes of the distinct non-parameter tensors autograd saves in the backbone's forward pass."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.model(input_ids=ids, use_cache=False)
    return sum(storages.values())


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("shape", [(32, 64, 2, 2), (64, 172, 4, 4)])
def test_activation_estimate_within_a_factor_of_measured(attn, shape):
    h, i, layers, heads = shape
    model = _tiny(1000, h, i, layers, heads, attn).train()
    b, s = 4, 64
    ids = torch.randint(0, 1000, (b, s))
    measured = _saved_activation_bytes(model, ids)
    est = activation_bytes(model.config, b, s, bits16=False)
    assert 0.67 < est / measured < 1.5
    assert activation_bytes(model.config, b, s, bits16=True) * 2 == est
    # with checkpointing the forward pass keeps the layer inputs; the estimate adds one layer's
    # full activations for the recomputation in the backward pass
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    measured_ckpt = _saved_activation_bytes(model, ids)
    est_ckpt = activation_bytes(model.config, b, s, bits16=False, checkpointing=True)
    one_layer = (est - 8 * s * b * h) / layers
    assert measured_ckpt < measured / 3
    assert 0.67 < (est_ckpt - one_layer) / measured_ckpt < 1.5


def test_logits_part_and_format():
    assert logits_bytes(16, 1024, 151_936) == 8 * 16 * 1024 * 151_936
    assert logits_bytes(16, 1024, 151_936, chunk_size=1024) == 8 * 1024 * 151_936
    model = _tiny(vocab=5000)
    est = estimate_memory(model, "adamw", 2, 16, bits16=True, vocab_logits=True)
    assert est.logits == 8 * 2 * 16 * 5000
    assert est.total == est.parameters + est.gradients + est.optimizer + est.activations + est.logits
    line = MemoryEstimate(2**30, 2**29, 2**30, None, 0).format()
    assert line.startswith("memory estimate 2.50 GiB") and "activations ?" in line


@pytest.mark.parametrize(("task", "data", "sequences"), [("instruction", {}, 1), ("dpo", {}, 2), ("kto", {}, 2),
                                                         ("grpo", {"num_generations": 4, "max_completion_length": 8}, 4)])
def test_a_run_estimate_counts_every_sequence_an_example_puts_through_the_model(task, data, sequences):
    from deltatune.config import build_config
    from deltatune.tasks import create_task
    from deltatune.training.memory import estimate_run_memory

    model = _tiny()
    cfg = build_config({"task": task, "data": {"max_seq_length": 16, **data}, "train": {"per_device_train_batch_size": 2}})
    est = estimate_run_memory(model, create_task(cfg), cfg, "no")
    single = estimate_memory(model, "adamw", batch_size=2, seq_len=16, bits16=False, vocab_logits=True)
    assert est.activations == sequences * single.activations > 0
    assert est.logits == sequences * single.logits > 0  # tiny vocabulary: one chunk holds every token's logits


def test_image_text_models_are_read_from_their_text_config():
    """LLaVA-style configs keep vocab_size/hidden_size in the text config: the estimate must find them."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    from deltatune.training.memory import _config_value

    cfg = LlavaConfig(
        text_config=LlamaConfig(vocab_size=321, hidden_size=64, num_attention_heads=4),
        vision_config=CLIPVisionConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64),
    )
    assert _config_value(cfg, "vocab_size") == 321 and _config_value(cfg, "hidden_size") == 64
    assert _config_value(LlamaConfig(vocab_size=99), "vocab_size") == 99 and _config_value(None, "vocab_size") is None
