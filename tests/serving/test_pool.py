"""The model pool: run arguments, adapter runs of one base sharing it in memory, the memory check."""

from __future__ import annotations

from pathlib import Path

import pytest
from datasets import Dataset

import deltatune
from deltatune.errors import DeltatuneError
from deltatune.serving.http_errors import ApiError
from deltatune.serving.pool import ModelPool, check_memory, parse_run_args
from deltatune.serving.settings import ServeSettings
from tests.helpers import make_sentiment_rows
from tests.serving.runs import train_tiny_run

# ModelPool.load sets the process-wide torch thread count (as a server should): restored after the module
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def second_lora_run(tiny_model_dir, sentiment_files, tmp_path_factory) -> Path:
    """Another LoRA run on the same tiny base, trained longer (different adapter and head)."""
    return train_tiny_run(tiny_model_dir, sentiment_files, tmp_path_factory.mktemp("runs") / "lora2", delta={"method": "lora"},
                          train={"max_steps": 4, "learning_rate": 5e-2})


def test_adapter_runs_of_one_base_share_it_and_predict_as_when_loaded_alone(lora_run, second_lora_run, classifier_run):
    pool = ModelPool(parse_run_args([f"a={lora_run}", f"b={second_lora_run}", f"full={classifier_run}"]), ServeSettings(device="cpu"))
    pool.load()
    a, b, full = pool.get("a"), pool.get("b"), pool.get("full")
    assert a.predictor.model is b.predictor.model and a.lock is b.lock  # one base in memory
    assert full.predictor.model is not a.predictor.model and full.lock is not a.lock
    ds = Dataset.from_list(make_sentiment_rows(6, 3))
    for served, run in ((a, lora_run), (b, second_lora_run), (a, lora_run)):  # switching back and forth
        with served.lock:
            served.activate()
            got = served.predictor.predict_rows(ds)
        alone = deltatune.load(run, device="cpu").predict_rows(ds)
        assert [g["label"] for g in got] == [x["label"] for x in alone]
        for g, x in zip(got, alone):
            assert g["probabilities"] == pytest.approx(x["probabilities"], abs=1e-6)
    with a.lock:
        a.activate()
        pa = a.predictor.predict_rows(ds)
    with b.lock:
        b.activate()
        pb = b.predictor.predict_rows(ds)
    assert any(abs(x["probabilities"]["pos"] - y["probabilities"]["pos"]) > 1e-4 for x, y in zip(pa, pb)), "b's adapter was not used"


def test_requests_name_a_served_model():
    pool = ModelPool([], ServeSettings())
    with pytest.raises(ApiError) as e:
        pool.get("x")
    assert e.value.status == 503
    pool.ready = True
    with pytest.raises(ApiError) as e:
        pool.get("x")
    assert e.value.status == 404 and e.value.param == "model"


def test_run_arguments(tmp_path, classifier_run):
    assert parse_run_args([str(classifier_run)]) == [(Path(classifier_run).resolve().name, Path(classifier_run))]
    assert parse_run_args([f"mine={classifier_run}"])[0][0] == "mine"
    for args, message in (([], "at least one run"), ([str(tmp_path / "no")], "no such run folder"),
                          ([f"x={classifier_run}", f"x={classifier_run}"], "two runs are served as model 'x'")):
        with pytest.raises(DeltatuneError, match=message):
            parse_run_args(args)


def test_the_memory_check_refuses_what_cannot_fit(classifier_run, lora_run):
    check_memory([Path(classifier_run)], available=10 * 2**30)
    with pytest.raises(DeltatuneError, match=r"need ~0\.\d GiB of weights and 0\.0 GiB is free: serve fewer runs"):
        check_memory([Path(classifier_run), Path(lora_run)], available=1000)
