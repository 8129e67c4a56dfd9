"""Load permissions come from the user, never from a run folder: remote code and pickle weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import deltatune
from deltatune.cli import main
from deltatune.errors import DeltatuneError
from tests.serving.runs import MARKER_MODULE, add_custom_code, copy_run, train_tiny_run


def _one_line_error(capsys, argv: list[str], *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for n in needles:
        assert n in err, (n, err)
    return err


@pytest.fixture(scope="module")
def custom_code_run(tiny_model_dir, sentiment_files, tmp_path_factory) -> tuple[Path, Path]:
    """A run trained (with the user's trust_remote_code: true) on a base whose code writes a marker.

    Returns (base folder, run folder). The run's model/ carries the custom code too
    (config.json auto_map + marker.py), and its config.yaml says trust_remote_code: true.
    """
    root = tmp_path_factory.mktemp("custom_code")
    base = root / "base"
    shutil.copytree(tiny_model_dir, base)
    add_custom_code(base, root / "base-marker")
    run = train_tiny_run(str(base), sentiment_files, root / "run", model={"trust_remote_code": True})
    assert (root / "base-marker").exists()  # the user's own config allowed it for a fresh run
    assert (run / "model" / "marker.py").is_file() and "auto_map" in (run / "model" / "config.json").read_text()
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["trust_remote_code"] is True
    return base, run


def _new_marker(folder: Path, marker: Path) -> None:
    """Point the folder's custom code at a fresh marker (new module source: transformers would re-import it)."""
    (folder / "marker.py").write_text(MARKER_MODULE.format(marker=str(marker)))


def test_a_fresh_run_needs_the_users_word_for_custom_code(custom_code_run, sentiment_files, tmp_path):
    base, _ = custom_code_run
    _new_marker(base, tmp_path / "marker")
    with pytest.raises(DeltatuneError, match="runs its own Python code.*--trust-remote-code"):
        train_tiny_run(str(base), sentiment_files, tmp_path / "run")
    assert not (tmp_path / "marker").exists() and not (tmp_path / "run").exists()
    # the flag on the command line is the user's word for a new run
    train, val = sentiment_files
    argv = ["train", "--model", str(base), "--train", str(train), "--validation", str(val), "--output-dir",
            str(tmp_path / "cli"), "--max-steps", "1", "--quiet", "--max-seq-length", "32"]
    assert main(argv) == 2 and not (tmp_path / "marker").exists()
    _new_marker(base, tmp_path / "marker2")  # fresh module source, so that an import would run it again
    assert main(argv + ["--trust-remote-code"]) == 0
    assert (tmp_path / "marker2").exists()


def test_run_folder_custom_code_is_refused_without_the_flag(custom_code_run, tmp_path, capsys):
    _, trained = custom_code_run
    run = copy_run(trained, tmp_path / "received")
    marker = tmp_path / "marker"
    _new_marker(run / "model", marker)
    # its config.yaml says trust_remote_code: true; that is not the user's word
    with pytest.raises(DeltatuneError, match=r"runs its own Python code.*marker\.MarkerConfig.*--trust-remote-code"):
        deltatune.load(run)
    _one_line_error(capsys, ["predict", str(run), "--text", "good film"], "--trust-remote-code")
    _one_line_error(capsys, ["export", str(run), "--out", str(tmp_path / "out")], "--trust-remote-code")
    assert not marker.exists() and not (tmp_path / "out").exists()
    # on the user's word it loads, and the code does run
    predictor = deltatune.load(run, trust_remote_code=True)
    assert marker.read_text() == "custom code ran"
    assert predictor.predict("a good film")[0]["label"] in ("neg", "pos")


def test_evaluate_refuses_run_folder_custom_code(custom_code_run, sentiment_files, tmp_path, capsys):
    _, trained = custom_code_run
    run = copy_run(trained, tmp_path / "received")
    marker = tmp_path / "marker"
    _new_marker(run / "model", marker)
    _, val = sentiment_files
    _one_line_error(capsys, ["evaluate", str(run), "--data", str(val)], "--trust-remote-code")
    assert not marker.exists()
    assert main(["evaluate", str(run), "--data", str(val), "--trust-remote-code", "--json"]) == 0
    assert marker.exists()


def test_resume_takes_trust_from_the_flag_not_the_folder(custom_code_run, tmp_path, capsys):
    base, trained = custom_code_run
    run = copy_run(trained, tmp_path / "unfinished")
    (run / "eval.json").unlink()  # an unfinished run: resumable
    marker = tmp_path / "marker"
    _new_marker(base, marker)
    with pytest.raises(DeltatuneError, match="runs its own Python code.*--trust-remote-code"):
        deltatune.finetune(run, resume=True, verbose=False)
    _one_line_error(capsys, ["train", "--resume", str(run)], "--trust-remote-code")
    assert not marker.exists()
    # with the flag, resume gets past loading the model (the code runs, on the user's word)
    try:
        deltatune.finetune(run, resume=True, trust_remote_code=True, verbose=False)
    except DeltatuneError:
        pass  # what resume makes of this checkpoint-less copy is not this test's business
    assert marker.exists()


def _to_pickle(folder: Path, name: str, pickle_name: str) -> None:
    """Replace ``folder/name`` (safetensors) by the same tensors as a torch pickle ``pickle_name``."""
    torch.save(load_file(str(folder / name)), folder / pickle_name)
    (folder / name).unlink()


def test_pickle_only_run_weights_need_allow_pickle_weights(classifier_run, tmp_path, capsys):
    run = copy_run(classifier_run, tmp_path / "run")
    _to_pickle(run / "model", "model.safetensors", "pytorch_model.bin")
    with pytest.raises(DeltatuneError, match=r"only pytorch_model\.bin \(Python pickle.*--allow-pickle-weights"):
        deltatune.load(run)
    _one_line_error(capsys, ["predict", str(run), "--text", "good film"], "pytorch_model.bin", "--allow-pickle-weights")
    expected = deltatune.load(classifier_run).predict(["a good film", "a dull plot"])
    got = deltatune.load(run, allow_pickle_weights=True).predict(["a good film", "a dull plot"])
    assert got == expected


def test_pickle_only_adapter_needs_allow_pickle_weights(lora_run, tmp_path, capsys):
    run = copy_run(lora_run, tmp_path / "run")
    _to_pickle(run / "model", "adapter_model.safetensors", "adapter_model.bin")
    with pytest.raises(DeltatuneError, match=r"adapter_model\.bin is a Python pickle.*--allow-pickle-weights"):
        deltatune.load(run)
    _one_line_error(capsys, ["predict", str(run), "--text", "good film"], "adapter_model.bin", "--allow-pickle-weights")
    expected = deltatune.load(lora_run).predict(["a good film"])
    assert deltatune.load(run, allow_pickle_weights=True).predict(["a good film"]) == expected


def test_pickle_only_base_model_needs_allow_pickle_weights(tiny_model_dir, sentiment_files, tmp_path, capsys):
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    _to_pickle(base, "model.safetensors", "pytorch_model.bin")
    with pytest.raises(DeltatuneError, match=r"only pytorch_model\.bin.*--allow-pickle-weights"):
        train_tiny_run(str(base), sentiment_files, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    train, val = sentiment_files
    argv = ["train", "--model", str(base), "--train", str(train), "--validation", str(val), "--output-dir",
            str(tmp_path / "cli"), "--max-steps", "1", "--quiet", "--max-seq-length", "32"]
    _one_line_error(capsys, argv, "--allow-pickle-weights")
    assert main(argv + ["--allow-pickle-weights"]) == 0
    assert (tmp_path / "cli" / "model" / "model.safetensors").is_file()  # what we write is safetensors
