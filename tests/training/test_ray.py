"""``deltatune train CONFIG --ray``: Ray Train's ``TorchTrainer`` runs the loop on 2 CPU workers (gloo).

The usage errors (no Ray, a Ray flag without ``--ray``, a config error) are checked in fresh
processes without any cluster. The cluster tests start one local Ray cluster for the module
(``ray.init(num_cpus=2)``, this machine only), which the CLI joins: 2-worker runs (DDP, and FSDP2
with relative paths) follow the single-process loss curve at the same global batch (1e-4) and
save the model; a run whose worker is killed (``kill -9``) mid-training is restarted by Ray,
resumes from the run folder's last complete checkpoint and ends with the uninterrupted run's
losses (1e-6); a Ctrl-C to the driver stops every worker after the same step with an interrupt
checkpoint (exit status 130).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from deltatune.training.checkpoint import PAUSE_ENV
from tests.helpers import make_sentiment_rows, run_cli_fresh, tiny_config, write_csv

HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="Ray is not installed (pip install 'deltatune[ray]')")

WORKERS = 2
GLOBAL_BATCH = 8
STEPS = 6
KILL_AT = 3  # the main worker pauses PAUSE_SECONDS inside step 3's checkpoint write: a worker is killed then
PAUSE_SECONDS = 5

_NO_RAY = (
    "import sys\nsys.modules['ray'] = None  # as if Ray were not installed\nfrom deltatune.cli import main\n"
    "rc = main(sys.argv[1:])\nprint('torch loaded' if 'torch' in sys.modules else 'no torch', rc)\n"
)


def test_ray_without_ray_installed_is_one_line_before_torch(tmp_path):
    out = subprocess.run([sys.executable, "-c", _NO_RAY, "train", "config.yaml", "--ray"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.stdout.split() == ["no", "torch", "2"], out
    assert out.stderr.strip() == "error: --ray needs Ray: pip install 'deltatune[ray]'"


def test_ray_flags_without_ray_are_usage_errors(tmp_path):
    for flags in (["--num-workers", "2"], ["--address", "ray://head:10001"], ["--max-failures", "0"]):
        out = run_cli_fresh(["train", "config.yaml", *flags], tmp_path)
        assert out.stdout.split() == ["no", "torch", "2"], out
        assert out.stderr.strip().startswith(f"error: {flags[0]} only applies with --ray"), out.stderr


def _write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


@needs_ray
def test_ray_config_errors_come_before_ray_starts(tiny_model_dir, tmp_path):
    train = write_csv(tmp_path / "train.csv", make_sentiment_rows(16, 1))
    config = _write_config(tmp_path / "config.yaml", tiny_config(tiny_model_dir, train, None, tmp_path / "run"))
    out = run_cli_fresh(["train", str(config), "--ray", "train.no_such_key=1"], tmp_path)
    assert out.stdout.split() == ["no", "torch", "2"] and "train.no_such_key" in out.stderr, out
    out = run_cli_fresh(["train", str(config), "--ray", "--num-workers", "1", "distributed.strategy=fsdp"], tmp_path)
    assert out.stdout.split() == ["no", "torch", "2"] and "--num-workers is 1" in out.stderr, out
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster of 2 CPUs for this module (its workers pause in step KILL_AT's checkpoint write)."""
    if not HAS_RAY:
        pytest.skip("Ray is not installed (pip install 'deltatune[ray]')")
    import ray

    saved = {k: os.environ.get(k) for k in (PAUSE_ENV, "OMP_NUM_THREADS")}
    os.environ.update({PAUSE_ENV: f"{KILL_AT}:{PAUSE_SECONDS}", "OMP_NUM_THREADS": "1"})  # the raylet's environment, the workers'
    try:
        ray.init(address="local", num_cpus=WORKERS, include_dashboard=False, log_to_driver=True, _node_ip_address="127.0.0.1")
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    yield ray
    ray.shutdown()


def _data(tmp_path: Path) -> tuple[Path, Path]:
    # 48 rows: 6 global batches of 8
    return write_csv(tmp_path / "train.csv", make_sentiment_rows(48, 1)), write_csv(tmp_path / "val.csv", make_sentiment_rows(10, 2))


def _cfg(model_dir: str, train: Path, val: Path, out: Path, per_device: int) -> dict:
    cfg = tiny_config(model_dir, train, val, out, per_device_train_batch_size=per_device, max_steps=STEPS, save_steps=1,
                      mixed_precision="no", weight_decay=0.0)
    cfg["eval"] = {"eval_strategy": "no"}
    return cfg


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def _train_on_ray(config: Path, *flags: str) -> int:
    from deltatune.cli import main

    return main(["train", str(config), "--ray", "--num-workers", str(WORKERS), *flags])


@pytest.fixture(scope="module")
def ray_run(ray_cluster, tiny_model_dir, tmp_path_factory) -> Path:
    """An uninterrupted 2-worker run (DDP, per-worker batch 4)."""
    tmp = tmp_path_factory.mktemp("ray")
    train, val = _data(tmp)
    config = _write_config(tmp / "config.yaml", _cfg(tiny_model_dir, train, val, tmp / "run", GLOBAL_BATCH // WORKERS))
    started = time.perf_counter()
    assert _train_on_ray(config) == 0
    print(f"ray run: {time.perf_counter() - started:.1f} s")
    return tmp / "run"


def _one_process(model_dir: str, tmp_path: Path) -> list[tuple[int, float]]:
    """The single-process loss curve at the global batch."""
    from deltatune import finetune

    train, val = _data(tmp_path)
    return _losses(finetune(_cfg(model_dir, train, val, tmp_path / "one", GLOBAL_BATCH), verbose=False).path)


def _check_follows(run: Path, one: list[tuple[int, float]]) -> None:
    b = _losses(run)
    assert [s for s, _ in one] == [s for s, _ in b] == list(range(1, STEPS + 1)), run
    assert max(abs(x - y) for (_, x), (_, y) in zip(one, b)) < 1e-4, (run, one, b)
    assert (run / "model" / "model.safetensors").is_file() and (run / "eval.json").is_file()
    state = json.loads((sorted((run / "checkpoints").glob("step-*"))[-1] / "trainer_state.json").read_text())
    assert state["processes"] == WORKERS
    assert not (run.parent / ".deltatune-ray").exists()  # Ray's own storage, removed after the run


@needs_ray
def test_ray_two_workers_follow_one_process(ray_run, tiny_model_dir, tmp_path):
    _check_follows(ray_run, _one_process(tiny_model_dir, tmp_path))


@needs_ray
def test_ray_fsdp_inside_the_workers_with_relative_paths(ray_cluster, tiny_model_dir, tmp_path):
    # FSDP2 inside the workers, as under torchrun; relative paths are the driver's (the workers start elsewhere)
    one = _one_process(tiny_model_dir, tmp_path)
    fsdp = _cfg(tiny_model_dir, Path("train.csv"), Path("val.csv"), Path("fsdp"), GLOBAL_BATCH // WORKERS)
    config = _write_config(tmp_path / "fsdp.yaml", {**fsdp, "distributed": {"strategy": "fsdp"}})
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert _train_on_ray(config) == 0
    finally:
        os.chdir(cwd)
    _check_follows(tmp_path / "fsdp", one)
    assert (sorted((tmp_path / "fsdp" / "checkpoints").glob("step-*"))[-1] / "sharded" / ".metadata").is_file()


def _train_workers() -> list:
    """The Ray Train worker processes of this test's cluster (descendants of this process)."""
    import psutil

    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            continue
    return found


@needs_ray
def test_ray_restarts_a_killed_worker_and_resumes(ray_run, tiny_model_dir, tmp_path, capfd):
    train, val = _data(tmp_path)
    run = tmp_path / "run"
    config = _write_config(tmp_path / "config.yaml", _cfg(tiny_model_dir, train, val, run, GLOBAL_BATCH // WORKERS))
    killed: list[int] = []

    def kill_one_worker() -> None:  # once step KILL_AT is logged: the main worker is inside its checkpoint write
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            if (run / "metrics.jsonl").is_file() and any(s >= KILL_AT for s, _ in _losses(run)):
                workers = _train_workers()
                assert len(workers) == WORKERS, workers
                os.kill(workers[-1].pid, signal.SIGKILL)
                killed.append(workers[-1].pid)
            time.sleep(0.1)

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    assert _train_on_ray(config, "--max-failures", "1") == 0
    killer.join()
    assert killed, "no worker was killed"
    time.sleep(1)  # the last worker lines reach this process
    out, err = capfd.readouterr()
    # one restart, from the complete checkpoint of step KILL_AT - 1 (the main worker was killed inside step KILL_AT's)
    assert "ray: worker group restarted (attempt 2): resuming" in out + err and "attempt 3" not in out + err
    losses = _losses(run)  # the resumed run's log continues from its checkpoint's step
    assert [s for s, _ in losses] == list(range(1, STEPS + 1)), losses
    expected = _losses(ray_run)
    assert max(abs(x - y) for (_, x), (_, y) in zip(losses, expected)) < 1e-6, (losses, expected)
    assert (run / "model" / "model.safetensors").is_file() and (run / "eval.json").is_file()


@needs_ray
def test_ray_ctrl_c_checkpoints_and_exits_130(ray_cluster, tiny_model_dir, tmp_path, capsys):
    train, val = _data(tmp_path)
    run = tmp_path / "run"
    config = _write_config(tmp_path / "config.yaml", _cfg(tiny_model_dir, train, val, run, GLOBAL_BATCH // WORKERS))
    sent: list[int] = []

    def interrupt() -> None:  # Ctrl-C to this process (the driver) once step 1 is logged
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not sent:
            if (run / "metrics.jsonl").is_file() and _losses(run):
                os.kill(os.getpid(), signal.SIGINT)
                sent.append(_losses(run)[-1][0])
            time.sleep(0.1)

    threading.Thread(target=interrupt, daemon=True).start()
    assert _train_on_ray(config) == 130
    assert sent
    step = _losses(run)[-1][0]
    assert step < STEPS and not (run / "eval.json").exists()
    assert (run / "checkpoints" / f"step-{step:08d}").is_dir()  # the interrupt checkpoint of the step the workers stopped after
    assert f"interrupted at step {step}; continue on Ray with: deltatune train --resume {run} --ray" in capsys.readouterr().out


def test_an_address_nothing_answers_at_is_found_before_ray_tries_for_minutes():
    import socket

    from deltatune.training.ray_launch import _unreachable

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert _unreachable(f"127.0.0.1:{port}") is None and _unreachable(f"ray://127.0.0.1:{port}") is None
    assert "nothing answers at 127.0.0.1:" in _unreachable(f"127.0.0.1:{port}")  # closed now
    assert _unreachable("auto") is None
