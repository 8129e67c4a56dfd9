import errno
import json
import os
import random

import numpy as np
import pytest
import torch

from deltatune.errors import DeltatuneError
from deltatune.training import checkpoint as ckpt_mod
from deltatune.training.checkpoint import (
    CheckpointError,
    UntrustedCheckpointError,
    capture_rng_state,
    list_checkpoints,
    load_checkpoint,
    read_checkpoint,
    replace_dir_atomically,
    restore_rng_state,
    save_checkpoint,
)


def _parts():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    return model, opt, sched


def _state(step):
    return {"global_step": step, "epoch": 0, "batch_in_epoch": step, "examples_seen": step, "total_steps": 10,
            "early_stopping": {}}


def _save(folder, step, model, opt, sched, keep=2):
    return save_checkpoint(folder, step, model, opt, sched, _state(step), capture_rng_state(), keep=keep)


def test_roundtrip_and_pruning(tmp_path):
    model, opt, sched = _parts()
    for step in (1, 2, 3):
        _save(tmp_path, step, model, opt, sched)
    ckpts = list_checkpoints(tmp_path)
    assert [p.name for p in ckpts] == ["step-00000002", "step-00000003"]
    fresh, opt2, sched2 = _parts()
    state, _ = load_checkpoint(ckpts[-1], fresh, opt2, sched2)
    assert state["global_step"] == 3
    torch.testing.assert_close(fresh.weight, model.weight)


def test_failed_save_leaves_no_checkpoint(tmp_path):
    model, opt, sched = _parts()

    class Broken:
        def state_dict(self):
            raise OSError("disk full")

    with pytest.raises(DeltatuneError, match="disk full"):
        save_checkpoint(tmp_path, 5, model, Broken(), sched, {}, {}, keep=2)
    assert list_checkpoints(tmp_path) == []
    assert list(tmp_path.iterdir()) == []  # the temporary folder is gone too


def test_replace_dir_keeps_old_on_failure(tmp_path):
    target = tmp_path / "model"
    replace_dir_atomically(lambda d: (d / "w.txt").write_text("v1"), target)

    def broken(d):
        (d / "w.txt").write_text("partial")
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        replace_dir_atomically(broken, target)
    assert (target / "w.txt").read_text() == "v1"


class _Marker:
    """Unpickling this object creates ``path`` (what a crafted checkpoint file would do)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_checkpoint_files_load_as_tensors_only(tmp_path):
    model, opt, sched = _parts()
    path = _save(tmp_path, 1, model, opt, sched)
    for name in ("optimizer.pt", "scheduler.pt", "rng.pt"):
        torch.load(path / name, weights_only=True)  # raises if anything needs unpickling
    assert json.loads((path / "trainer_state.json").read_text())["checkpoint_format"] == ckpt_mod.CHECKPOINT_FORMAT


def test_rng_state_roundtrip_through_a_checkpoint(tmp_path):
    model, opt, sched = _parts()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    path = _save(tmp_path, 1, model, opt, sched)
    expected = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    _, rng = load_checkpoint(path, *_parts())
    restore_rng_state(rng)
    assert (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist()) == expected


@pytest.mark.parametrize("name", ["rng.pt", "optimizer.pt", "scheduler.pt"])
def test_crafted_pickle_is_refused_without_running(tmp_path, name):
    model, opt, sched = _parts()
    path = _save(tmp_path, 1, model, opt, sched)
    marker = tmp_path / "pwned"
    torch.save({"torch": _Marker(marker)}, path / name)
    with pytest.raises(CheckpointError, match=f"{name}.*run code when loaded"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError):
        read_checkpoint(path, trust=True)  # trust only opens format-1 checkpoints
    assert not marker.exists()


def _make_format1(path):
    """Turn a checkpoint into what deltatune wrote before format 2: pickled RNG tuples, no format key."""
    state = json.loads((path / "trainer_state.json").read_text())
    del state["checkpoint_format"]
    (path / "trainer_state.json").write_text(json.dumps(state))
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}, path / "rng.pt")


def test_format1_checkpoint_needs_trust(tmp_path):
    model, opt, sched = _parts()
    path = _save(tmp_path, 1, model, opt, sched)
    _make_format1(path)
    expected = random.random()
    with pytest.raises(UntrustedCheckpointError, match="--trust-checkpoint"):
        read_checkpoint(path)
    contents = read_checkpoint(path, trust=True)  # the user's word: unpickled, converted to the tensor form
    restore_rng_state(contents.rng)
    assert random.random() == expected
    marker = tmp_path / "pwned"
    torch.save({"python": _Marker(marker)}, path / "rng.pt")
    with pytest.raises(UntrustedCheckpointError) as e:
        read_checkpoint(path)
    assert "\n" not in str(e.value) and not marker.exists()


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda p: (p / "optimizer.pt").write_bytes((p / "optimizer.pt").read_bytes()[:100]), "optimizer.pt is truncated"),
        (lambda p: (p / "trainable.safetensors").write_bytes(b"\0" * 10), "trainable.safetensors is truncated"),
        (lambda p: (p / "trainer_state.json").write_text('{"global_step": 3,'), "trainer_state.json is not valid JSON"),
        (lambda p: (p / "trainer_state.json").write_text("{}"), "lacks global_step"),
        (lambda p: (p / "rng.pt").unlink(), "incomplete: rng.pt missing"),
        (lambda p: torch.save({"torch": torch.zeros(3)}, p / "rng.pt"), "not a generator-state file"),
    ],
)
def test_damaged_checkpoint_is_reported(tmp_path, damage, match):
    model, opt, sched = _parts()
    path = _save(tmp_path, 1, model, opt, sched)
    damage(path)
    with pytest.raises(CheckpointError, match=match) as e:
        read_checkpoint(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "err, match",
    [(OSError(errno.ENOSPC, "No space left on device"), "no space left"), (PermissionError(errno.EACCES, "Permission denied"), "not writable")],
)
@pytest.mark.parametrize("writer", ["write_tensors", "write_state"])
def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, err, match, writer):
    model, opt, sched = _parts()
    _save(tmp_path, 1, model, opt, sched, keep=1)

    def fail(obj, path):
        raise err

    monkeypatch.setattr(ckpt_mod, writer, fail)  # our own save function: a full disk / read-only folder
    with pytest.raises(DeltatuneError, match=match) as e:
        _save(tmp_path, 2, model, opt, sched, keep=1)
    msg = str(e.value)
    assert "\n" not in msg and "step-00000002" in msg and f"--resume {tmp_path.parent}" in msg
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000001"]  # no temporary folder, step 1 kept
    read_checkpoint(tmp_path / "step-00000001")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders anyway")
def test_read_only_folder(tmp_path):
    model, opt, sched = _parts()
    _save(tmp_path, 1, model, opt, sched)
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(DeltatuneError, match="not writable"):
            _save(tmp_path, 2, model, opt, sched)
    finally:
        tmp_path.chmod(0o755)
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000001"]


def test_leftovers_of_a_killed_save_are_cleaned(tmp_path):
    model, opt, sched = _parts()
    _save(tmp_path, 1, model, opt, sched)
    (tmp_path / ".tmp-step-00000002").mkdir()  # killed while writing step 2
    (tmp_path / ".tmp-step-00000002" / "trainable.safetensors").write_bytes(b"partial")
    (tmp_path / "step-00000001").rename(tmp_path / ".old-step-00000001")  # killed between the two renames
    assert list_checkpoints(tmp_path) == []
    _save(tmp_path, 3, model, opt, sched, keep=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001", "step-00000003"]
    read_checkpoint(tmp_path / "step-00000001")


def test_saving_a_step_again_replaces_it(tmp_path):
    model, opt, sched = _parts()
    _save(tmp_path, 4, model, opt, sched)
    with torch.no_grad():
        model.weight.add_(1.0)
    _save(tmp_path, 4, model, opt, sched)
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000004"]
    torch.testing.assert_close(read_checkpoint(tmp_path / "step-00000004").trainable["weight"], model.weight.detach())


def test_replace_dir_reports_a_full_disk_and_keeps_old(tmp_path):
    target = tmp_path / "model"
    replace_dir_atomically(lambda d: (d / "w.txt").write_text("v1"), target)

    def full(d):
        (d / "w.txt").write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DeltatuneError, match="cannot write .*model: no space left") as e:
        replace_dir_atomically(full, target)
    assert "\n" not in str(e.value)
    assert (target / "w.txt").read_text() == "v1" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    target.rename(tmp_path / ".old-model")  # a crash between the two renames of an earlier swap
    with pytest.raises(DeltatuneError):
        replace_dir_atomically(full, target)
    assert (target / "w.txt").read_text() == "v1"  # put back, not deleted



def test_even_a_trusted_format1_checkpoint_never_unpickles_code(tmp_path):
    model, opt, sched = _parts()
    path = _save(tmp_path, 1, model, opt, sched)
    _make_format1(path)
    marker = tmp_path / "pwned"
    torch.save({"python": _Marker(marker), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}, path / "rng.pt")
    with pytest.raises(CheckpointError, match="rng.pt holds Python objects beyond tensors"):
        read_checkpoint(path, trust=True)  # --trust-checkpoint accepts numpy arrays, nothing else
    assert not marker.exists()
