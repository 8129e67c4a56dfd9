"""GGUF files → a cached safetensors model folder that training and saving can use.

transformers reads GGUF (``from_pretrained(folder, gguf_file=name)``, needs the ``gguf``
package) and dequantizes the weights to float; the resulting model carries quantizer state
that makes it refuse ``save_pretrained``. We therefore copy its weights into a model built
from the same config without quantization settings, and save that (float32 safetensors) plus
the tokenizer (with its chat template) once, in a cache folder keyed by the GGUF file's size,
modification time and first/last megabyte hash. Later runs load the folder directly.

Cache location: ``$DELTATUNE_CACHE`` or ``~/.cache/deltatune``, subfolder ``gguf/``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from deltatune.errors import DeltatuneError
from deltatune.files import replace_dir_atomically


def cache_root() -> Path:
    """Where converted models are kept."""
    return Path(os.environ.get("DELTATUNE_CACHE", Path.home() / ".cache" / "deltatune"))


def _fingerprint(path: Path) -> str:
    st = path.stat()
    h = hashlib.sha256(f"{path.name}:{st.st_size}".encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, st.st_size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def convert_gguf(path: str | Path) -> str:
    """Return a folder holding ``path`` converted to a float32 safetensors model + tokenizer.

    Converts on first use (seconds to minutes by model size) and reuses the cache after.

    Raises:
        DeltatuneError: the file is missing, the ``gguf`` package is absent, or transformers
            cannot read the file's architecture.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise DeltatuneError(f"GGUF file not found: {path}")
    target = cache_root() / "gguf" / f"{path.stem}-{_fingerprint(path)}"
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return str(target)
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise DeltatuneError(f"reading {path.name} needs the gguf package: pip install gguf") from None

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from deltatune.models.loading import quiet_transformers

    def write(tmp: Path) -> None:
        with quiet_transformers():
            loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            with torch.device("meta"):
                clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            clean.load_state_dict(loaded.state_dict(), assign=True)
            if getattr(clean.config, "tie_word_embeddings", False):
                clean.tie_weights()
            clean.generation_config = loaded.generation_config
            clean.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)

    try:  # the cache folder is complete or absent (a stale or partial one is replaced whole)
        replace_dir_atomically(write, target)
    except DeltatuneError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DeltatuneError(f"cannot convert {path.name} from GGUF: {first}") from None
    return str(target)
