"""The task contract, run on every registered task (and on a task registered from outside the package).

Each task's own ``demo_rows()`` are encoded, trained for two steps on a tiny random model of
the task's family, saved, reloaded with :func:`deltatune.load`, predicted and evaluated; a task
gets these tests by being registered in :mod:`deltatune.tasks.registry`. The registry tests
fail when a task is added in one place only (a module not registered, a list that does not
come from the registry).
"""

from __future__ import annotations

import importlib
import inspect
import math
import pkgutil
import re
from pathlib import Path

import pytest
import torch
from datasets import Dataset

import deltatune
import deltatune.tasks as tasks_pkg
from deltatune.config import build_config
from deltatune.errors import DeltatuneError
from deltatune.models.loading import load_processor
from deltatune.tasks import create_task, get_task_class
from deltatune.tasks.base import Features, GenerativeTask, Task
from deltatune.tasks.options import ClassificationOptions, RegressionOptions
from deltatune.tasks.options.regression import regression_columns
from deltatune.tasks.regression import TextRegressionTask
from deltatune.tasks.registry import REGISTRY, TASK_SPECS, TaskSpec, register, tasks_of_family, unregister
from tests.tasks.demo_runs import demo_config


class ScoreTask(TextRegressionTask):
    """The packaged text regression under another name, as a user's own task module would define it."""

    name = "text-score"


# registered from outside the package (docs/extending.md): it reads the option models of text-regression
TOY = TaskSpec("text-score", "tests.tasks.test_contract:ScoreTask", "encoder",
               options=(ClassificationOptions, RegressionOptions), columns=regression_columns)
# (task name, model family) for every registered implementation
CASES = [(s.name, s.family) for s in TASK_SPECS] + [(s.name, "encoder-decoder") for s in TASK_SPECS if s.encoder_decoder]
MODEL_FIXTURES = {
    "encoder": "tiny_model_dir", "decoder": "tiny_llama_dir", "encoder-decoder": "tiny_t5_dir",
    "vision": "tiny_vit_dir", "audio": "tiny_whisper_dir", "vision-language": "tiny_vlm_dir",
    "speech-seq2seq": "tiny_whisper_asr_dir",
}


pytestmark = pytest.mark.usefixtures("one_thread")




@pytest.fixture
def toy_task():
    """A task of the test's own, registered for the test only."""
    register(TOY)
    yield TOY
    unregister(TOY.name)


def check_contract(name: str, cls: type[Task], model_dir: str, tmp_path: Path) -> None:
    """Encode, train two steps, save, reload, predict and evaluate ``cls`` on its demo rows."""
    cfg, rows = demo_config(name, cls, model_dir, tmp_path)
    train, dev = cfg["data"]["train_file"], cfg["data"]["validation_file"]

    # encode: a task built from the config is this class; every feature has token ids
    task = create_task(build_config(cfg))
    assert type(task) is cls
    ds = Dataset.from_list(rows)
    task.fit(ds, train)
    tokenizer = load_processor(model_dir, task.input_kind)  # image/audio tasks: the image processor / feature extractor
    task.set_tokenizer(tokenizer)
    features = task.encode(ds, tokenizer, source=train)
    assert isinstance(features, Features) and len(features) >= 1 and len(features.lengths) == len(features)
    if task.input_kind == "text":
        assert all(isinstance(f["input_ids"], list) and f["input_ids"] and isinstance(f["input_ids"][0], int) for f in features.rows)
    assert features.num_examples == len(features) and features.examples_in([0]) == 1
    if isinstance(task, GenerativeTask):  # text tasks return what encoding cut or dropped with the features
        assert features.stats is not None and features.stats.as_dict()["examples"] >= 1
    batch = task.collate(features.rows[:2])
    inputs = {"text": "input_ids", "image-text": "input_ids", "image": "pixel_values", "audio": "input_features",
              "audio-text": "input_features"}[task.input_kind]
    assert batch[inputs].dtype == (torch.long if inputs == "input_ids" else torch.float32) and task.num_targets(batch) >= 1

    # train two steps and save; the metrics hold the task's default metric
    run = deltatune.finetune(cfg, verbose=False)
    assert run.result.global_step == 2
    validation = run.metrics["validation"]
    assert math.isfinite(validation[task.default_metric])

    # reload: the same task class; predictions: one record per row
    predictor = deltatune.load(run.path)
    assert type(predictor.task) is cls
    predictions = predictor.predict_rows(Dataset.from_list(rows[:2]), "demo")
    assert len(predictions) == 2 and all(isinstance(p, dict) and p for p in predictions)
    if isinstance(predictor.task, GenerativeTask):
        assert all(isinstance(p["generated"], str) for p in predictions)

    # evaluate the saved run: the run's own numbers come back
    again = deltatune.evaluate(run.path, dev)
    assert again[task.default_metric] == pytest.approx(validation[task.default_metric], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize(("name", "family"), CASES, ids=[f"{n}[{f}]" for n, f in CASES])
def test_registered_task_meets_the_contract(name, family, tmp_path, request):
    model_dir = request.getfixturevalue(MODEL_FIXTURES[family])
    check_contract(name, get_task_class(name, family == "encoder-decoder"), model_dir, tmp_path)


def test_a_task_registered_from_outside_the_package_meets_the_contract(toy_task, tiny_model_dir, tmp_path):
    check_contract(toy_task.name, ScoreTask, tiny_model_dir, tmp_path)
    predictions = deltatune.load(tmp_path / "run").predict(["good good"])
    assert set(predictions[0]) == {"score"}


def test_an_unregistered_task_is_refused_by_the_config():
    with pytest.raises(DeltatuneError, match="'task': Input should be 'text-classification'"):
        build_config({"task": TOY.name})


# ---- the registry is the one list ----------------------------------------------------------
def _task_classes_in_package() -> set[type]:
    found = set()
    for info in pkgutil.iter_modules(tasks_pkg.__path__):
        module = importlib.import_module(f"deltatune.tasks.{info.name}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Task) and obj.__module__ == module.__name__ and vars(obj).get("name") and not inspect.isabstract(obj):
                found.add(obj)
    return found


def test_every_task_class_in_the_package_is_registered_under_its_name():
    registered = {}
    for spec in TASK_SPECS:
        for encoder_decoder, ref in ((False, spec.implementation), (True, spec.encoder_decoder)):
            if ref:
                cls = get_task_class(spec.name, encoder_decoder)
                assert cls.name == spec.name, ref
                registered[cls] = spec
    assert _task_classes_in_package() <= set(registered), "a task class is not in deltatune.tasks.registry.TASK_SPECS"


def test_every_registered_task_declares_its_capabilities():
    for spec in TASK_SPECS:
        for encoder_decoder, ref in ((False, spec.implementation), (True, spec.encoder_decoder)):
            if not ref:
                continue
            cls = get_task_class(spec.name, encoder_decoder)
            # decoder and encoder-decoder tasks generate; encoder tasks decode their outputs
            assert issubclass(cls, GenerativeTask) == (spec.family in ("decoder", "vision-language", "speech-seq2seq")), ref
            assert cls.auto_model_class is not None, ref
            demo = cls.demo_rows()
            assert len(demo["rows"]) >= 2 and isinstance(demo["config"], dict), ref


def test_the_task_lists_all_read_the_registry():
    from deltatune.auto.candidates import DEFAULT_MODELS, ENCODER_DECODER_TASKS
    from deltatune.auto.infer import ENCODER_TASKS, task_family
    from deltatune.config import TASKS
    from deltatune.tasks.prompting import SCORERS

    assert TASKS == tuple(REGISTRY) == tuple(s.name for s in TASK_SPECS)
    assert set(ENCODER_TASKS) == {s.name for s in TASK_SPECS if s.family == "encoder"}
    assert set(ENCODER_DECODER_TASKS) == {s.name for s in TASK_SPECS if s.encoder_decoder} == set(tasks_of_family("encoder-decoder"))
    assert set(SCORERS) == {s.name for s in TASK_SPECS if s.scorer}
    for spec in TASK_SPECS:
        assert task_family(spec.name) == spec.family and spec.family in DEFAULT_MODELS


def test_no_caller_probes_a_task_for_an_attribute():
    """Capabilities are declared on Task / GenerativeTask / Features: nothing in src/ probes for them."""
    src = Path(deltatune.__file__).parent
    probes = re.compile(r"(hasattr|getattr)\(.*task")
    found = [f"{p.relative_to(src)}:{i}" for p in src.rglob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1) if probes.search(line)]
    assert not found, found


def test_registering_a_task_checks_its_spec():
    with pytest.raises(ValueError, match="family"):
        register(TaskSpec("x", "m:C", "encoder-decoder"))
    with pytest.raises(ValueError, match="module:Class"):
        register(TaskSpec("x", "m.C", "encoder"))
    with pytest.raises(ValueError, match="packaged"):
        unregister("text-classification")


def test_a_packaged_task_is_never_replaced_by_register():
    with pytest.raises(ValueError, match="packaged task"):
        register(TaskSpec("text-classification", "tests.tasks.test_contract:ScoreTask", "encoder"))
    with pytest.raises(ValueError, match="packaged task"):
        register(TaskSpec("text-regression", "tests.tasks.test_contract:ScoreTask", "encoder"))
    assert REGISTRY["text-classification"].implementation == "classification:ClassificationTask"
