"""Write a merged Llama-architecture causal LM held in memory as a GGUF file (llama.cpp, Ollama).

What is written mirrors llama.cpp's reference converter (``convert_hf_to_gguf.py``, classes
``LlamaModel`` and ``TextModel._set_vocab_gpt2``) for a ``LlamaForCausalLM`` (or a
``MistralForCausalLM``, which that converter also writes as ``llama``) with a byte-level BPE
tokenizer:

- metadata: ``general.architecture = llama``, ``general.name``, ``general.file_type``,
  ``llama.{context_length, embedding_length, block_count, feed_forward_length,
  rope.dimension_count, rope.freq_base, attention.head_count, attention.head_count_kv,
  attention.layer_norm_rms_epsilon, vocab_size}`` and, when the head size is not
  ``hidden_size / heads``, ``llama.attention.{key_length, value_length}``;
- tokenizer: ``tokenizer.ggml.model = gpt2``, ``tokenizer.ggml.pre`` (the pre-tokenizer
  llama.cpp must use, recognised the converter's way: the SHA-256 of the token ids of a fixed
  check text), tokens, token types (NORMAL / CONTROL / USER_DEFINED / UNUSED), merges,
  BOS/EOS/UNK/PAD ids, ``add_bos_token`` and ``tokenizer.chat_template`` (read with
  ``gguf.SpecialVocab`` from the tokenizer saved to a scratch folder);
- tensors: GGUF names (``token_embd``, ``blk.N.attn_q`` ... ``output_norm``, ``output``; no
  ``output`` when the embeddings are tied) with ``attn_q``/``attn_k`` rows permuted the way
  llama.cpp expects (``permute`` in the converter; transformers' GGUF loader reverses it).
  1-D tensors (norms) stay float32 whatever ``dtype`` is, as the converter writes them.

The file is written to a temporary file next to the target and renamed over it, so a failed
or interrupted export leaves no half-written ``.gguf`` (and an existing file untouched).
"""

from __future__ import annotations

import tempfile
from hashlib import sha256
from pathlib import Path
from typing import Any

from deltatune.errors import DeltatuneError
from deltatune.files import write_file_atomically

#: Architectures written (as GGUF ``llama``); llama.cpp's converter maps both to ``LlamaModel``.
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
DTYPES = ("f16", "f32", "q8_0")

# The converter's check text (``get_vocab_base_pre``): its token ids, hashed, name the
# pre-tokenizer. Known hashes below are from llama.cpp's converter table.
_CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\U0001f680 (normal) \U0001f636\u200d\U0001f32b\ufe0f "
    "(multiple emojis concatenated) \u2705 \U0001f999\U0001f999 3 33 333 3333 33333 333333 3333333 "
    "33333333 3.3 3..3 3...3 \u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796\u17b7\u179f\u17c1\u179f\u17a2"
    "\u17b6\u1785\U0001f601 ?\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e ------======= "
    "\u043d\u0435\u0449\u043e \u043d\u0430 \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure "
    "I'll make it, 'D you like some tea? We'Ve a'lL"
)
_KNOWN_PRE = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM/SmolLM2 (tested)
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3 (untested here)
}


def write_gguf(model: Any, tokenizer: Any, path: Path, dtype: str = "f16") -> dict:
    """Write ``model`` (merged, float weights) and ``tokenizer`` as one GGUF file at ``path``.

    Args:
        model: a ``transformers`` ``LlamaForCausalLM`` / ``MistralForCausalLM`` (any float
            dtype, on any device; weights are copied to CPU). Δθ must already be merged.
        tokenizer: its fast (``tokenizers``-backed) byte-level BPE tokenizer; the chat
            template, special tokens and BOS behaviour are carried into the file.
        path: the ``.gguf`` file to write (parent folders are made; an existing file is
            replaced only once the new one is complete).
        dtype: ``"f16"`` (default, half the size), ``"f32"`` (exact weights) or ``"q8_0"``
            (8-bit blocks of 32, ~0.27 of f32; matrices whose rows are not a multiple of 32
            stay f16). 1-D tensors are float32 in every case.

    Returns:
        ``{"path": str, "dtype": str, "tensors": int, "bytes": int, "architecture": "llama",
        "tokenizer_pre": str}`` (``bytes`` is the file size).

    Raises:
        DeltatuneError: an architecture other than those in ``SUPPORTED_ARCHITECTURES`` (use
            ``deltatune export --merge``: a safetensors folder), a setting llama.cpp's Llama
            graph does not run (biases, rope scaling), a tokenizer that is not byte-level BPE
            or whose pre-tokenizer llama.cpp does not know, an unknown ``dtype``, or the
            ``gguf`` package missing. Nothing is left at ``path`` (or beside it) on any error.
    """
    if dtype not in DTYPES:
        raise DeltatuneError(f"GGUF dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    config = model.config
    _check_architecture(type(model).__name__, config)
    try:
        import gguf
    except ImportError:
        raise DeltatuneError("writing GGUF needs the gguf package: pip install gguf") from None

    path = Path(path)
    vocab = _vocab(tokenizer, config.vocab_size)
    tensors = _tensors(model, config, dtype)

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        _add_metadata(writer, config, dtype, path.stem)
        _add_vocab(writer, vocab)
        for name, array, raw_dtype in tensors:
            writer.add_tensor(name, array, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    write_file_atomically(path, write)
    return {
        "path": str(path),
        "dtype": dtype,
        "tensors": len(tensors),
        "bytes": path.stat().st_size,
        "architecture": "llama",
        "tokenizer_pre": vocab["pre"],
    }


def _check_architecture(arch: str, config: Any) -> None:
    """Refuse what llama.cpp's ``llama`` graph would not run as transformers does.

    ``arch`` is the model's class name (a PEFT wrapper is refused too: merge Δθ first).
    """
    if arch not in SUPPORTED_ARCHITECTURES:
        raise DeltatuneError(
            f"GGUF export supports {', '.join(SUPPORTED_ARCHITECTURES)}, not {arch}: "
            "use `deltatune export --merge` (a safetensors folder) instead"
        )
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise DeltatuneError(f"GGUF export: {arch} with attention/MLP biases is not supported; use `deltatune export --merge`")
    window = getattr(config, "sliding_window", None)
    if window is not None and window < config.max_position_embeddings:
        raise DeltatuneError(
            f"GGUF export: {arch} with sliding_window={window} is not supported (llama.cpp's llama graph "
            "attends to the whole context); use `deltatune export --merge`"
        )
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise DeltatuneError(
            f"GGUF export: rope scaling {rope.get('rope_type')!r} is not supported; use `deltatune export --merge`"
        )


def _rope_theta(config: Any) -> float:
    rope = getattr(config, "rope_parameters", None) or {}
    return float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _head_dim(config: Any) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def _add_metadata(writer: Any, config: Any, dtype: str, name: str) -> None:
    import gguf

    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]
    head_dim = _head_dim(config)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads))
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_file_type(int(file_type))
    writer.add_vocab_size(int(config.vocab_size))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _vocab(tokenizer: Any, vocab_size: int) -> dict:
    """Tokens, types, pre-tokenizer name and the ``SpecialVocab`` of a byte-level BPE tokenizer.

    Follows ``get_vocab_base`` of llama.cpp's converter: ids the tokenizer lacks become
    ``[PAD<i>]`` (UNUSED); added tokens are CONTROL when special (or ``<|...|>``-shaped),
    else USER_DEFINED; the rest NORMAL.
    """
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise DeltatuneError("GGUF export needs a fast (tokenizers) tokenizer; use `deltatune export --merge`")
    import json

    spec = json.loads(backend.to_str())
    model_type = spec["model"]["type"]
    if model_type != "BPE":
        raise DeltatuneError(f"GGUF export supports byte-level BPE tokenizers, not {model_type}; use `deltatune export --merge`")
    chkhsh = sha256(str(tokenizer.encode(_CHKTXT)).encode()).hexdigest()
    pre = _KNOWN_PRE.get(chkhsh)
    if pre is None:
        raise DeltatuneError(
            f"GGUF export: llama.cpp's pre-tokenizer for this tokenizer is not known (check hash {chkhsh[:16]}...); "
            "use `deltatune export --merge` (safetensors) and llama.cpp's convert_hf_to_gguf.py"
        )
    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    if max(reverse) >= vocab_size:
        raise DeltatuneError(f"GGUF export: the tokenizer has id {max(reverse)} but the model's vocab_size is {vocab_size}")
    added = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        token = reverse[i]
        if i in added:
            special = added[i].special or (token.startswith("<|") and token.endswith("|>"))
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    with tempfile.TemporaryDirectory(prefix="deltatune-gguf-tok-") as tmp:
        tokenizer.save_pretrained(tmp)
        special_vocab = gguf.SpecialVocab(tmp, load_merges=True, n_vocab=vocab_size)
    if not special_vocab.merges:
        raise DeltatuneError("GGUF export: the tokenizer has no BPE merges; use `deltatune export --merge`")
    # what the tokenizer does (not what a config flag says) decides add_bos_token
    probe = tokenizer("a")["input_ids"]
    special_vocab.add_special_token["bos"] = bool(
        tokenizer.bos_token_id is not None and probe and probe[0] == tokenizer.bos_token_id
    )
    pre_tok = spec.get("pre_tokenizer") or {}
    space_prefix = bool(pre_tok.get("add_prefix_space", False)) if pre_tok.get("type") == "ByteLevel" else None
    return {"tokens": tokens, "types": types, "pre": pre, "special": special_vocab, "space_prefix": space_prefix}


def _add_vocab(writer: Any, vocab: dict) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    if vocab["space_prefix"] is not None:
        writer.add_add_space_prefix(vocab["space_prefix"])
    vocab["special"].add_to_gguf(writer, quiet=True)


def _permute(w: Any, n_head: int) -> Any:
    """llama.cpp's Q/K row order: per head, interleave the two rotary halves.

    ``w``: ``[n_head * head_dim, hidden]`` numpy array (or ``[n_head * head_dim]``). Source:
    ``LlamaModel.permute`` in llama.cpp's ``convert_hf_to_gguf.py``.
    """
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensors(model: Any, config: Any, dtype: str) -> list[tuple[str, Any, Any]]:
    """``(gguf_name, numpy array, raw_dtype or None)`` for every weight, cast as ``dtype`` says."""
    import gguf
    import numpy as np
    import torch

    n_head = int(config.num_attention_heads)
    n_kv = int(getattr(config, "num_key_value_heads", None) or n_head)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(config.num_hidden_layers))
    tied = bool(getattr(config, "tie_word_embeddings", False))
    out: list[tuple[str, Any, Any]] = []
    for hf_name, tensor in model.state_dict().items():
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise DeltatuneError(f"GGUF export: no GGUF name for tensor {hf_name!r}; use `deltatune export --merge`")
        data = tensor.detach().to("cpu", torch.float32).numpy()
        if hf_name.endswith("q_proj.weight"):
            data = _permute(data, n_head)
        elif hf_name.endswith("k_proj.weight"):
            data = _permute(data, n_kv)
        out.append((name, *_cast(np.ascontiguousarray(data), dtype)))
    return out


def _cast(data: Any, dtype: str) -> tuple[Any, Any]:
    import gguf
    import numpy as np

    if data.ndim <= 1 or dtype == "f32":
        return data.astype(np.float32), None
    if dtype == "q8_0" and data.shape[-1] % 32 == 0:
        q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
        return q, gguf.GGMLQuantizationType.Q8_0
    return data.astype(np.float16), None
