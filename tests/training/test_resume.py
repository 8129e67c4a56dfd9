"""A run interrupted at step k and resumed ends exactly like an uninterrupted run."""

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file

from deltatune import finetune
from deltatune.errors import DeltatuneError
from tests.helpers import tiny_config


def _cfg(tiny_model_dir, sentiment_csv, out):
    train, val = sentiment_csv
    cfg = tiny_config(tiny_model_dir, train, val, out, num_train_epochs=3, save_steps=2)
    cfg["model"]["dropout"] = 0.1  # dropout uses the RNG: resume must restore it
    cfg["eval"] = {"eval_strategy": "steps", "eval_steps": 5}
    return cfg


def _losses(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in lines if "loss" in r]


def test_resume_reaches_the_same_final_loss(tiny_model_dir, sentiment_csv, tmp_path):
    full = finetune(_cfg(tiny_model_dir, sentiment_csv, tmp_path / "full"), verbose=False)

    def stop_at_7(trainer, state):
        if state.global_step == 7:
            raise KeyboardInterrupt

    cfg = _cfg(tiny_model_dir, sentiment_csv, tmp_path / "cut")
    cut = finetune(cfg, callbacks=(stop_at_7,), verbose=False)
    assert cut.result.interrupted and cut.result.global_step == 7
    assert not (tmp_path / "cut" / "eval.json").exists()
    newest = sorted((tmp_path / "cut" / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:]))[-1]
    checkpointed = json.loads((newest / "trainer_state.json").read_text())
    assert 0 < checkpointed["train_seconds"] <= cut.result.train_seconds
    resumed = finetune(tmp_path / "cut", resume=True, verbose=False)
    assert resumed.result.global_step == full.result.global_step
    # the training time counts the first launch up to its checkpoint as well as the resumed part
    assert resumed.result.train_seconds > checkpointed["train_seconds"]
    assert json.loads((resumed.path / "eval.json").read_text())["train"]["train_seconds"] >= round(checkpointed["train_seconds"], 2)
    a, b = _losses(full.path), _losses(resumed.path)
    assert [s for s, _ in a] == [s for s, _ in b]
    assert a[-1][1] == pytest.approx(b[-1][1], abs=1e-6)
    wa = load_file(str(full.path / "model" / "model.safetensors"))
    wb = load_file(str(resumed.path / "model" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0)
    assert resumed.metrics["validation"]["accuracy"] == full.metrics["validation"]["accuracy"]
    # a finished run has nothing left to resume: refused, the model is left as it was
    before = (full.path / "model" / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(DeltatuneError, match="finished run"):
        finetune(full.path, resume=True, verbose=False)
    assert (full.path / "model" / "model.safetensors").stat().st_mtime_ns == before


def test_resume_refuses_a_changed_config(tiny_model_dir, sentiment_csv, tmp_path):
    def stop_at_3(trainer, state):
        if state.global_step == 3:
            raise KeyboardInterrupt

    cfg = _cfg(tiny_model_dir, sentiment_csv, tmp_path / "r")
    finetune(cfg, callbacks=(stop_at_3,), verbose=False)
    cfg["train"]["learning_rate"] = 5e-4
    with pytest.raises(DeltatuneError, match="train.learning_rate"):
        finetune(cfg, resume=True, verbose=False)


def test_resume_without_a_run_is_refused(tmp_path):
    with pytest.raises(DeltatuneError, match="none does not exist"):
        finetune({"output_dir": str(tmp_path / "none"), "data": {"train_file": "x.csv"}}, resume=True, verbose=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DeltatuneError, match="no config.yaml"):
        finetune({"output_dir": str(tmp_path / "empty"), "data": {"train_file": "x.csv"}}, resume=True, verbose=False)


# ---- damaged checkpoints, crafted files, cut logs, full disks --------------------------------

import errno  # noqa: E402
import shutil  # noqa: E402

import numpy as np  # noqa: E402

from deltatune.training import checkpoint as ckpt_mod  # noqa: E402
from deltatune.training.checkpoint import list_checkpoints  # noqa: E402
from tests.helpers import make_sentiment_rows, write_csv  # noqa: E402


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """An uninterrupted run and the same run interrupted at step 7 (checkpoints at steps 4, 6 and 7)."""
    root = tmp_path_factory.mktemp("resume_faults")
    data = (write_csv(root / "train.csv", make_sentiment_rows(96, 1)), write_csv(root / "validation.csv", make_sentiment_rows(32, 2)))
    full = finetune(_cfg(tiny_model_dir, data, root / "full"), verbose=False)

    def stop_at_7(trainer, state):
        if state.global_step == 7:
            raise KeyboardInterrupt

    cfg = _cfg(tiny_model_dir, data, root / "cut")
    cfg["train"]["save_total_limit"] = 3
    finetune(cfg, callbacks=(stop_at_7,), verbose=False)
    return {"full": full, "cut": root / "cut", "cfg": _cfg(tiny_model_dir, data, root / "x")}


def _copy_cut(runs, tmp_path):
    dst = tmp_path / "cut"
    shutil.copytree(runs["cut"], dst)
    return dst


def _assert_same_end(full, path):
    a, b = _losses(full.path), _losses(path)
    assert [s for s, _ in a] == [s for s, _ in b]
    assert a[-1][1] == pytest.approx(b[-1][1], abs=1e-6)
    wa = load_file(str(full.path / "model" / "model.safetensors"))
    wb = load_file(str(path / "model" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0)


def _edit_state(checkpoint, **values):
    """Write edited values into a checkpoint's trainer_state.json (a crafted or damaged state)."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    (checkpoint / "trainer_state.json").write_text(json.dumps({**state, **values}))


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: (p / "optimizer.pt").write_bytes((p / "optimizer.pt").read_bytes()[:200]), id="truncated-optimizer"),
        pytest.param(lambda p: (p / "trainer_state.json").write_text('{"global_step": 7, "epo'), id="invalid-trainer-state"),
        pytest.param(lambda p: (p / "scheduler.pt").unlink(), id="missing-file"),
        pytest.param(lambda p: _edit_state(p, global_step=1_000_000_000), id="step-past-the-end"),
        pytest.param(lambda p: _edit_state(p, global_step=-5), id="negative-step"),
        pytest.param(lambda p: _edit_state(p, batch_in_epoch=1_000_000), id="batch-past-the-epoch"),
        pytest.param(lambda p: _edit_state(p, epoch=1_000_000_000), id="epoch-past-the-steps"),
        pytest.param(lambda p: _edit_state(p, processes=0), id="no-processes"),
    ],
)
def test_resume_falls_back_from_a_damaged_checkpoint(runs, tmp_path, capsys, damage):
    cut = _copy_cut(runs, tmp_path)
    assert [p.name for p in list_checkpoints(cut / "checkpoints")] == ["step-00000004", "step-00000006", "step-00000007"]
    damage(cut / "checkpoints" / "step-00000007")
    resumed = finetune(cut, resume=True, verbose=False)
    err = capsys.readouterr().err
    assert "warning: skipping checkpoint step-00000007" in err and "resuming from step-00000006" in err
    _assert_same_end(runs["full"], resumed.path)  # steps 7.. are trained again: the same curve


def test_resume_without_a_usable_checkpoint_is_one_line(runs, tmp_path):
    cut = _copy_cut(runs, tmp_path)
    for p in list_checkpoints(cut / "checkpoints"):
        (p / "trainer_state.json").write_text("garbage")
    with pytest.raises(DeltatuneError, match="no usable checkpoint.*trainer_state.json is not valid JSON") as e:
        finetune(cut, resume=True, verbose=False)
    assert "\n" not in str(e.value)


class _Marker:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_resume_refuses_a_crafted_rng_file(runs, tmp_path, capsys):
    cut = _copy_cut(runs, tmp_path)
    marker = tmp_path / "pwned"
    for p in list_checkpoints(cut / "checkpoints"):
        torch.save({"python": _Marker(marker), "torch": torch.get_rng_state()}, p / "rng.pt", pickle_protocol=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's own pickle warnings would come before our one line
        with pytest.raises(DeltatuneError, match="rng.pt holds Python objects beyond tensors"):
            finetune(cut, resume=True, verbose=False)
    assert not marker.exists()


def _to_format1(path):
    """Rewrite a checkpoint as deltatune wrote it before format 2 (pickled RNG tuples), same generator states."""
    state = json.loads((path / "trainer_state.json").read_text())
    del state["checkpoint_format"]
    (path / "trainer_state.json").write_text(json.dumps(state))
    rng = torch.load(path / "rng.pt", weights_only=True)
    py, npy = rng["python"], rng["numpy"]
    old = {
        "python": (py["version"], tuple(py["state"].tolist()), py["gauss"]),
        "numpy": (npy["bit_generator"], npy["key"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"]),
        "torch": rng["torch"],
    }
    torch.save(old, path / "rng.pt")


def test_resume_of_an_old_format_checkpoint_needs_trust(runs, tmp_path):
    cut = _copy_cut(runs, tmp_path)
    for p in list_checkpoints(cut / "checkpoints"):
        _to_format1(p)
    newest = list_checkpoints(cut / "checkpoints")[-1]
    good_rng = (newest / "rng.pt").read_bytes()
    marker = tmp_path / "pwned"
    torch.save({"python": _Marker(marker)}, newest / "rng.pt")
    with pytest.raises(DeltatuneError, match="older deltatune.*--trust-checkpoint"):
        finetune(cut, resume=True, verbose=False)
    assert not marker.exists()
    (newest / "rng.pt").write_bytes(good_rng)
    resumed = finetune(cut, resume=True, trust_checkpoint=True, verbose=False)
    _assert_same_end(runs["full"], resumed.path)


def test_resume_drops_a_cut_last_metrics_line(runs, tmp_path, capsys):
    cut = _copy_cut(runs, tmp_path)
    with (cut / "metrics.jsonl").open("a") as f:
        f.write('{"step": 8, "epoch": 0.66, "lo')  # killed in the middle of a write
    resumed = finetune(cut, resume=True, verbose=False)
    assert "dropping the unreadable last line" in capsys.readouterr().err
    _assert_same_end(runs["full"], resumed.path)


def test_full_disk_at_a_checkpoint_keeps_the_previous_one(runs, tmp_path, monkeypatch):
    write = ckpt_mod.write_tensors

    def fill_up_at_step_6(tensors, path):
        if ".tmp-step-00000006" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        write(tensors, path)

    monkeypatch.setattr(ckpt_mod, "write_tensors", fill_up_at_step_6)
    cfg = json.loads(json.dumps(runs["cfg"]))
    cfg["output_dir"] = str(tmp_path / "run")
    with pytest.raises(DeltatuneError, match="step-00000006: no space left.*--resume") as e:
        finetune(cfg, verbose=False)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["best", "step-00000002", "step-00000004"]
    monkeypatch.setattr(ckpt_mod, "write_tensors", write)  # space freed
    resumed = finetune(tmp_path / "run", resume=True, verbose=False)
    _assert_same_end(runs["full"], resumed.path)


def test_full_disk_at_the_final_model_save(runs, tmp_path, monkeypatch):
    import deltatune.api

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(deltatune.api, "save_trained", full)
    cfg = json.loads(json.dumps(runs["cfg"]))
    cfg["output_dir"] = str(tmp_path / "run")
    with pytest.raises(DeltatuneError, match="cannot write .*model: no space left") as e:
        finetune(cfg, verbose=False)
    assert "\n" not in str(e.value)
    run = tmp_path / "run"
    assert not (run / "model").exists() and not (run / ".tmp-model").exists() and not (run / "eval.json").exists()
    monkeypatch.undo()
    resumed = finetune(run, resume=True, verbose=False)  # the last checkpoints are intact
    _assert_same_end(runs["full"], resumed.path)


def test_cli_trust_checkpoint_flag(runs, tmp_path, capsys):
    from deltatune.cli import main

    cut = _copy_cut(runs, tmp_path)
    for p in list_checkpoints(cut / "checkpoints"):
        _to_format1(p)
    assert main(["train", str(cut), "--trust-checkpoint"]) == 2
    assert capsys.readouterr().err == "error: --trust-checkpoint only applies with --resume (it allows loading an older run's checkpoints)\n"
    assert main(["train", str(cut), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--trust-checkpoint" in err and err.count("\n") == 1
    assert main(["train", str(cut), "--resume", "--trust-checkpoint", "--quiet"]) == 0
    _assert_same_end(runs["full"], cut)
