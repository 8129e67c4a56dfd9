import pytest
import torch

from deltatune.training.checkpoint import list_checkpoints, load_checkpoint, replace_dir_atomically, save_checkpoint


def _parts():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    return model, opt, sched


def test_roundtrip_and_pruning(tmp_path):
    model, opt, sched = _parts()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, opt, sched, {"global_step": step}, {"torch": torch.get_rng_state()}, keep=2)
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

    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 5, model, Broken(), sched, {}, {}, keep=2)
    assert list_checkpoints(tmp_path) == []


def test_replace_dir_keeps_old_on_failure(tmp_path):
    target = tmp_path / "model"
    replace_dir_atomically(lambda d: (d / "w.txt").write_text("v1"), target)

    def broken(d):
        (d / "w.txt").write_text("partial")
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        replace_dir_atomically(broken, target)
    assert (target / "w.txt").read_text() == "v1"
