"""Building blocks for tests that need a trained run: tiny runs and a model folder whose config
names custom code that writes a marker file when imported (used by tests/serving and tests/delta)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.helpers import tiny_config

# imported (only) when transformers runs the folder's code: writes the marker file first
MARKER_MODULE = '''
from pathlib import Path

Path({marker!r}).write_text("custom code ran")

from transformers import BertConfig, BertForSequenceClassification, BertModel


class MarkerConfig(BertConfig):
    model_type = "marker_bert"


class MarkerModel(BertModel):
    config_class = MarkerConfig


class MarkerForSequenceClassification(BertForSequenceClassification):
    config_class = MarkerConfig
'''


def add_custom_code(folder: Path, marker: Path) -> None:
    """Make ``folder``'s config.json name an architecture defined in ``folder/marker.py`` (auto_map)."""
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model_type"] = "marker_bert"
    cfg["auto_map"] = {
        "AutoConfig": "marker.MarkerConfig",
        "AutoModel": "marker.MarkerModel",
        "AutoModelForSequenceClassification": "marker.MarkerForSequenceClassification",
    }
    cfg_path.write_text(json.dumps(cfg, indent=2))
    (folder / "marker.py").write_text(MARKER_MODULE.format(marker=str(marker)))


def train_tiny_run(model_dir: str, files: tuple[Path, Path], out: Path, **sections) -> Path:
    """A finished 1-step text-classification run in ``out``; ``sections`` update the config
    sections (``model={"trust_remote_code": True}``, ``delta={"method": "lora"}``)."""
    import deltatune

    train, val = files
    cfg = tiny_config(model_dir, train, val, out, max_steps=1)
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    deltatune.finetune(cfg, verbose=False)
    return out


def copy_run(run: Path, dst: Path) -> Path:
    """A copy of ``run`` at ``dst`` to change in a test (session runs stay intact)."""
    shutil.copytree(run, dst)
    return dst
