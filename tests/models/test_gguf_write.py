"""GGUF export of a merged Llama: written with deltatune.models.gguf_write, read back with transformers.

transformers' GGUF loader (``from_pretrained(folder, gguf_file=name)``) undoes llama.cpp's Q/K
row permutation and rebuilds the tokenizer from the file's tokens and merges, so equal logits
and equal token ids show that the weights, their order, the config keys and the vocabulary
were all written as llama.cpp's reference converter writes them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from deltatune.errors import DeltatuneError
from deltatune.models.gguf_write import write_gguf

PROMPTS = ["Hello world", "The capital of France is", "def add(a, b):\n    return a + b", "3 33 333 — ünïcödé 🦙"]
CHAT = [{"role": "user", "content": "What is 2 plus 2?"}]
KEYS = [
    "general.architecture", "general.file_type", "llama.context_length", "llama.embedding_length",
    "llama.block_count", "llama.feed_forward_length", "llama.rope.dimension_count", "llama.rope.freq_base",
    "llama.attention.head_count", "llama.attention.head_count_kv", "llama.attention.layer_norm_rms_epsilon",
    "llama.vocab_size", "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token",
    "tokenizer.chat_template",
]


def _load(folder: str):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def _reload(path: Path):
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def _max_logit_diff(a, b, tok) -> float:
    worst = 0.0
    for text in PROMPTS:
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            worst = max(worst, (a(ids).logits - b(ids).logits).abs().max().item())
    return worst


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    return _load(tiny_llama_dir)


def test_f32_round_trip_gives_the_same_logits_tokens_and_chat_template(tiny, tmp_path):
    import gguf

    model, tok = tiny
    path = tmp_path / "out" / "tiny.gguf"
    summary = write_gguf(model, tok, path, dtype="f32")
    assert summary["dtype"] == "f32" and summary["bytes"] == path.stat().st_size
    assert summary["tensors"] == 3 + 9 * model.config.num_hidden_layers  # embd, norm, output (untied) + 9/block
    assert [p.name for p in path.parent.iterdir()] == ["tiny.gguf"]  # no temporary file left

    fields = gguf.GGUFReader(path).fields
    missing = [k for k in KEYS if k not in fields]
    assert not missing
    assert fields["general.architecture"].contents() == "llama"
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert fields["tokenizer.chat_template"].contents() == tok.chat_template

    back, back_tok = _reload(path)
    assert _max_logit_diff(model, back, tok) < 1e-4
    for text in PROMPTS:
        assert back_tok(text)["input_ids"] == tok(text)["input_ids"]
    rendered = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert back_tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) == rendered
    assert back_tok(rendered)["input_ids"] == tok(rendered)["input_ids"]
    assert (back_tok.bos_token_id, back_tok.eos_token_id) == (tok.bos_token_id, tok.eos_token_id)


def _read_back(path: Path, config) -> dict[str, torch.Tensor]:
    """The file's tensors as float32 in transformers' names and row order (Q/K un-permuted).

    Read with ``gguf.GGUFReader`` and ``gguf.quants.dequantize``: quicker than transformers'
    loader (which parses the 49k-token vocabulary again, ~15 s); the f32 test above checks the
    same layout through transformers itself.
    """
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    heads = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}
    out = {}
    for t in gguf.GGUFReader(path).tensors:
        hf = next(k for k in _HF_NAMES(config) if names.get_name(k, try_suffixes=(".weight",)) == t.name)
        w = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).astype("float32").copy())
        w = w.reshape([int(d) for d in reversed(t.shape.tolist())])
        n = next((h for key, h in heads.items() if key in hf), None)
        if n is not None:  # inverse of llama.cpp's permute
            w = w.reshape(n, w.shape[0] // n // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
        out[hf] = w
    return out


def _HF_NAMES(config) -> list[str]:
    per_block = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                 "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm"]
    blocks = [f"model.layers.{i}.{n}.weight" for i in range(config.num_hidden_layers) for n in per_block]
    return ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", *blocks]


def test_f16_and_q8_0_hold_the_weights_within_their_precision(tiny, tmp_path):
    model, tok = tiny
    weights = model.state_dict()
    f32_size = sum(p.numel() for p in model.parameters()) * 4
    for dtype, rel_tol in (("f16", 1e-3), ("q8_0", 1e-2)):
        summary = write_gguf(model, tok, tmp_path / f"tiny-{dtype}.gguf", dtype=dtype)
        assert summary["bytes"] < (0.75 if dtype == "f16" else 0.45) * f32_size  # + ~1 MB of vocabulary
        back = _read_back(tmp_path / f"tiny-{dtype}.gguf", model.config)
        assert set(back) == set(weights)
        for name, w in back.items():
            err = (w - weights[name]).abs().max().item() / weights[name].abs().max().item()
            assert err < rel_tol, (dtype, name, err)


def test_tied_embeddings_write_no_output_tensor(tiny_llama_dir, tiny, tmp_path):
    from transformers import LlamaForCausalLM

    _, tok = tiny
    cfg = LlamaForCausalLM.from_pretrained(tiny_llama_dir).config
    cfg.tie_word_embeddings = True  # as SmolLM2: llama.cpp then reads token_embd for the output
    torch.manual_seed(1)
    model = LlamaForCausalLM(cfg).eval()
    summary = write_gguf(model, tok, tmp_path / "tied.gguf", dtype="f32")
    assert summary["tensors"] == 2 + 9 * cfg.num_hidden_layers
    back = _read_back(tmp_path / "tied.gguf", cfg)
    assert "lm_head.weight" not in back
    for name, w in back.items():
        torch.testing.assert_close(w, model.state_dict()[name], rtol=0, atol=0)


def test_a_mistral_is_written_as_llama_and_a_sliding_window_is_refused(tiny, tmp_path):
    from transformers import MistralConfig, MistralForCausalLM

    _, tok = tiny
    cfg = MistralConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=256, sliding_window=None, head_dim=8,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, architectures=["MistralForCausalLM"],
    )
    torch.manual_seed(2)
    model = MistralForCausalLM(cfg).eval()
    write_gguf(model, tok, tmp_path / "mistral.gguf", dtype="f32")
    back = _read_back(tmp_path / "mistral.gguf", cfg)  # grouped K/V heads: k_proj permuted per KV head
    for name, w in model.state_dict().items():
        torch.testing.assert_close(back[name], w, rtol=0, atol=0)
    cfg.sliding_window = 128
    with pytest.raises(DeltatuneError, match="sliding_window=128"):
        write_gguf(MistralForCausalLM(cfg), tok, tmp_path / "window.gguf")
    assert not (tmp_path / "window.gguf").exists()


def test_a_bert_model_is_refused_and_nothing_is_left(tiny_model_dir, tmp_path):
    from transformers import AutoModel

    model, tok = AutoModel.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)
    with pytest.raises(DeltatuneError, match=r"not BertModel.*deltatune export --merge"):
        write_gguf(model, tok, tmp_path / "bert.gguf")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_the_target_and_no_temporary(tiny, tmp_path):
    model, tok = tiny
    path = tmp_path / "m.gguf"
    path.mkdir()  # the final rename onto a folder fails after the whole file was written
    (path / "keep").write_text("x")
    with pytest.raises(OSError):
        write_gguf(model, tok, path, dtype="f32")
    assert (path / "keep").read_text() == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


def test_bad_dtype_and_unknown_tokenizer_are_refused(tiny, tiny_model_dir, tmp_path):
    model, tok = tiny
    with pytest.raises(DeltatuneError, match="'q4' is not one of f16, f32, q8_0"):
        write_gguf(model, tok, tmp_path / "x.gguf", dtype="q4")
    # a WordPiece tokenizer on a Llama: llama.cpp's gpt2 vocabulary cannot hold it
    with pytest.raises(DeltatuneError, match="byte-level BPE tokenizers, not WordPiece"):
        write_gguf(model, AutoTokenizer.from_pretrained(tiny_model_dir), tmp_path / "x.gguf")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_smollm2_f16_export_generates_what_the_original_generates(smollm2_dir, tmp_path):
    model, tok = _load(smollm2_dir)
    path = tmp_path / "smollm2-f16.gguf"
    summary = write_gguf(model, tok, path, dtype="f16")
    assert summary["tensors"] == 272 and summary["tokenizer_pre"] == "smollm"
    back, back_tok = _reload(path)
    prompt = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    assert back_tok(prompt, return_tensors="pt")["input_ids"].tolist() == ids.tolist()
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=10, do_sample=False)
        got = back.generate(ids, max_new_tokens=10, do_sample=False)
        diff = (model(ids).logits - back(ids).logits).abs().max().item()
    assert got.tolist() == want.tolist(), (tok.decode(want[0]), back_tok.decode(got[0]))
    assert diff < 0.5  # f16 weights: logits of a 135M model move by ~0.1
