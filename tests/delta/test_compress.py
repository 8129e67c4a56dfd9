import pytest
import torch

import deltatune
from deltatune.delta.compress import compress_delta, reconstruct
from tests.helpers import tiny_config


def test_low_rank_delta_is_recovered_and_smaller():
    torch.manual_seed(0)
    base = {"w": torch.randn(64, 48), "b": torch.randn(48)}
    delta = torch.randn(64, 2) @ torch.randn(2, 48)  # rank 2
    tuned = {"w": base["w"] + delta, "b": base["b"] + 0.1, "head": torch.randn(3, 48)}
    stored, st = compress_delta(base, tuned, energy=0.999)
    assert st.factored == 1 and st.mean_rank == 2
    out = reconstruct(base, stored)
    torch.testing.assert_close(out["w"], tuned["w"], atol=1e-2, rtol=0)
    torch.testing.assert_close(out["b"], tuned["b"], atol=1e-3, rtol=0)
    torch.testing.assert_close(out["head"], tuned["head"])
    assert st.stored_bytes < 0.3 * st.full_bytes


def test_energy_controls_rank_and_int8_stays_close():
    torch.manual_seed(1)
    base = {"w": torch.zeros(128, 128)}
    u, _ = torch.linalg.qr(torch.randn(128, 128))
    s = torch.tensor([10.0, 5.0, 1.0] + [0.01] * 125)
    tuned = {"w": (u * s) @ u.T}
    _, st_low = compress_delta(base, tuned, energy=0.75)  # 100 of 126.01 is 79%
    _, st_high = compress_delta(base, tuned, energy=0.999)
    assert st_low.mean_rank == 1 and st_high.mean_rank == 3
    stored, _ = compress_delta(base, tuned, rank=3, int8=True)
    assert stored["w.a"].dtype == torch.int8
    err = (reconstruct(base, stored)["w"] - tuned["w"]).norm() / tuned["w"].norm()
    assert err < 0.02


def test_full_run_saved_as_compressed_delta(tiny_model_dir, sentiment_csv, tmp_path):
    train, val = sentiment_csv
    cfg = tiny_config(tiny_model_dir, train, val, tmp_path / "cd", num_train_epochs=3)
    cfg["delta"] = {"method": "full", "save": "delta", "delta_energy": 0.99}
    run = deltatune.finetune(cfg, verbose=False)
    c = run.metrics["compressed_delta"]
    assert c["stored_bytes"] < c["dense_fp32_bytes"]
    assert (run.path / "model" / "delta.safetensors").is_file()
    assert not (run.path / "model" / "model.safetensors").exists()
    # loading reconstructs θ_ft from the base plus the delta: its metrics are the reported ones
    again = deltatune.evaluate(run.path, str(val))
    assert again["loss"] == pytest.approx(c["validation"]["loss"], abs=1e-5)
    assert abs(again["loss"] - run.metrics["validation"]["loss"]) < 0.05
