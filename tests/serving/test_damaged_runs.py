"""A damaged model/adapter file of a run ends in one line naming the file, at predict, evaluate and export."""

from __future__ import annotations

import pytest

import deltatune
from deltatune.cli import main
from deltatune.errors import DeltatuneError
from tests.serving.runs import copy_run


def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


DAMAGE = {
    "truncated adapter weights": ("adapter_model.safetensors", lambda p: _truncate(p), "not a complete safetensors file"),
    "empty adapter weights": ("adapter_model.safetensors", lambda p: p.write_bytes(b""), "not a complete safetensors file"),
    "adapter weights missing": ("adapter_model.safetensors", lambda p: p.unlink(), "is missing"),
    "invalid adapter_config.json": ("adapter_config.json", lambda p: p.write_text("{ not json"), "cannot be read"),
    "adapter_config.json without peft_type": ("adapter_config.json", lambda p: p.write_text("{}"), "no valid 'peft_type'"),
    "invalid meta": ("deltatune_delta.json", lambda p: _truncate(p), "cannot be read"),
    "meta without base": ("deltatune_delta.json", lambda p: p.write_text('{"method": "lora"}'), "no valid 'base.name_or_path'"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_adapter_run_is_one_line_naming_the_file(case, lora_run, sentiment_files, tmp_path, capsys):
    name, damage, words = DAMAGE[case]
    run = copy_run(lora_run, tmp_path / "run")
    damage(run / "model" / name)
    with pytest.raises(DeltatuneError, match=words) as e:
        deltatune.load(run)
    assert name in str(e.value) and "restore it" in str(e.value)
    _, val = sentiment_files
    for argv in (
        ["predict", str(run), "--text", "good film"],
        ["evaluate", str(run), "--data", str(val)],
        ["export", str(run), "--out", str(tmp_path / "out"), "--format", "adapter"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and name in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / ".tmp-out").exists()


def test_truncated_full_model_weights_are_one_line(classifier_run, tmp_path, capsys):
    run = copy_run(classifier_run, tmp_path / "run")
    _truncate(run / "model" / "model.safetensors")
    assert main(["predict", str(run), "--text", "good film"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.safetensors is not a complete safetensors file" in err, err
    assert str(run / "model") in err and "restore" in err


def test_freeze_and_compressed_delta_files_are_checked(tmp_path):
    from deltatune.delta.storage import load_trained

    folder = tmp_path / "model"
    folder.mkdir()
    for method, name in (("freeze", "trained.safetensors"), ("full", "delta.safetensors")):
        (folder / "deltatune_delta.json").write_text(
            f'{{"method": "{method}", "base": {{"name_or_path": "x", "sha256": "0"}}, "model_config": {{}}}}'
        )
        (folder / name).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")  # a header, no end
        with pytest.raises(DeltatuneError, match=f"{name} is not a complete safetensors file"):
            load_trained(folder, build_base=lambda base: pytest.fail("the base is built only after the files are checked"))
        (folder / name).unlink()
