"""text-regression: targets checked row by row, standardized on the training rows and back in
their units on prediction; sentence pairs; several targets; STS-B read through the loader."""

from __future__ import annotations

import json
import math
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

import deltatune
import deltatune.api
from deltatune.config import build_config
from deltatune.data.loading import load_table
from deltatune.errors import DeltatuneError
from deltatune.serving.schemas import TASK_IO
from deltatune.tasks.regression import MEAN_KEY, STD_KEY, TextRegressionTask
from tests.tasks.demo_runs import write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")

STSB = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "text_regression" / "stsb"


def _task(**data) -> TextRegressionTask:
    return TextRegressionTask(build_config({"task": "text-regression", "data": data}))


def _ds(**columns) -> datasets.Dataset:
    return datasets.Dataset.from_dict(columns)


class _Logits(torch.nn.Module):
    """A 'model' whose outputs are the batch's own labels (to follow the standardization)."""

    def __init__(self, values: torch.Tensor):
        super().__init__()
        self.values = values

    def forward(self, **inputs):
        return type("Out", (), {"logits": self.values})()


def _config(tmp_path: Path, model_dir: str, train_rows: list[dict], dev_rows: list[dict], steps: int = 2, **data) -> dict:
    return {
        "task": "text-regression",
        "output_dir": str(tmp_path / "run"),
        "seed": 3,
        "model": {"name_or_path": model_dir, "dropout": 0.0},
        "data": {"train_file": write_jsonl(tmp_path / "train.jsonl", train_rows),
                 "validation_file": write_jsonl(tmp_path / "dev.jsonl", dev_rows), "max_seq_length": 32, **data},
        "train": {"per_device_train_batch_size": 4, "learning_rate": 1e-3, "max_steps": steps, "progress_bar": False},
        "eval": {"eval_strategy": "no"},
    }


# ---- targets ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("column", "shown"),
    [(["1", "2.5", "high"], "'high' in column 'score', not a number"), ([1.0, 2.5, None], "no target in column 'score'"),
     ([1.0, 2.5, float("nan")], "no target in column 'score'"), (["1", "2.5", "inf"], "'inf' in column 'score'; give a finite"),
     ([True, False, True], "True in column 'score', not a number"), (["1", "2", " "], "no target in column 'score'")],
)
def test_a_bad_target_is_refused_naming_file_row_and_column(column, shown):
    row = 1 if isinstance(column[0], bool) else 3
    with pytest.raises(DeltatuneError, match=rf"^train\.csv: row {row} has {shown}"):
        _task(label_column="score").fit(_ds(text=["a", "b", "c"], score=column), "train.csv")


def test_a_bad_value_in_the_second_target_column_names_that_column():
    with pytest.raises(DeltatuneError, match=r"dev\.jsonl: row 2 has 'x' in column 'b'"):
        _task(label_columns=["a", "b"]).check(_ds(text=["p", "q"], a=[1, 2], b=["3", "x"]), "dev.jsonl")


def test_classification_options_are_refused():
    with pytest.raises(DeltatuneError, match="data.multi_label applies to text-classification"):
        _task(multi_label=True).fit(_ds(text=["a", "b"], label=[1.0, 2.0]), "train.csv")


def test_targets_are_standardized_on_training_rows_and_come_back_in_their_units():
    t = _task()
    train = _ds(text=["a", "b", "c", "d"], label=["0", "5", "1.0", "4"])
    t.fit(train, "train.csv")
    assert t.mean.tolist() == [2.5] and t.std.tolist() == pytest.approx([np.std([0, 5, 1, 4])])
    tok = type("Tok", (), {"__call__": lambda self, a, b, **k: {"input_ids": [[1, 2]] * len(a), "attention_mask": [[1, 1]] * len(a)}})()
    features = t.encode(train, tok, source="train.csv")
    z = np.array([f["labels"] for f in features.rows])
    assert z.mean() == pytest.approx(0.0) and z.std() == pytest.approx(1.0)  # the head trains on standardized values
    batch = t.collate(features.rows)
    out = t.eval_step(_Logits(batch["labels"]), batch)
    assert out["scores"][:, 0] == pytest.approx([0.0, 5.0, 1.0, 4.0], abs=1e-5)
    assert t.decode(out)[1] == {"score": pytest.approx(5.0, abs=1e-5)}
    assert t.compute_metrics(out)["mse"] == pytest.approx(0.0, abs=1e-9)


def test_without_standardization_the_targets_are_used_as_they_are():
    t = _task(standardize_targets=False)
    t.fit(_ds(text=["a", "b"], label=[0.0, 5.0]), "train.csv")
    assert t.mean.tolist() == [0.0] and t.std.tolist() == [1.0]


def test_a_constant_target_keeps_std_one():
    t = _task()
    t.fit(_ds(text=["a", "b"], label=[2.0, 2.0]), "train.csv")
    assert t.mean.tolist() == [2.0] and t.std.tolist() == [1.0]


def test_huber_loss_is_the_per_example_mean_summed():
    t = _task(regression_loss="huber")
    labels = torch.tensor([[0.0], [0.0]])
    batch = {"input_ids": torch.ones(2, 2, dtype=torch.long), "labels": labels}
    total, n = t.loss(_Logits(torch.tensor([[0.5], [3.0]])), batch)
    assert float(total) == pytest.approx(0.5 * 0.5**2 + (3.0 - 0.5)) and int(n) == 2


# ---- trained runs ---------------------------------------------------------------------------
def _scored_rows(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"text": "great " * (1 + i % 5), "label": float(i % 5) + float(rng.uniform(0, 1))} for i in range(n)]


def test_a_trained_run_predicts_in_the_units_of_its_targets(tiny_model_dir, tmp_path):
    train, dev = _scored_rows(16, 1), _scored_rows(8, 2)  # targets in [0, 5]
    run = deltatune.finetune(_config(tmp_path, tiny_model_dir, train, dev, steps=4), verbose=False)
    assert {"mse", "mae", "rmse", "pearson", "spearman"} <= set(run.metrics["validation"])
    saved = json.loads((run.path / "model" / "config.json").read_text()) if (run.path / "model" / "config.json").is_file() else None
    predictor = deltatune.load(run.path)
    mean = float(np.mean([r["label"] for r in train]))
    assert predictor.task.mean.tolist() == pytest.approx([mean])  # restored from the saved model config
    if saved is not None:
        assert saved[MEAN_KEY] == pytest.approx([mean]) and STD_KEY in saved
    scores = [p["score"] for p in predictor.predict([r["text"] for r in dev])]
    # a random head gives standardized outputs near 0: de-standardized they lie near the training mean, not near 0
    assert abs(float(np.mean(scores)) - mean) < 1.5 and all(math.isfinite(s) for s in scores)
    assert deltatune.evaluate(run.path, str(tmp_path / "dev.jsonl"))["mse"] == pytest.approx(run.metrics["validation"]["mse"], rel=1e-4)


def test_sentence_pairs_with_several_targets(tiny_model_dir, tmp_path):
    rows = [{"s1": f"a cat {'sat ' * (i % 3)}", "s2": "a cat", "sim": float(i % 3), "len": float(i % 4) * 10} for i in range(8)]
    cfg = _config(tmp_path, tiny_model_dir, rows, rows, text_column="s1", text_pair_column="s2", label_columns=["sim", "len"])
    run = deltatune.finetune(cfg, verbose=False)
    assert set(run.metrics["validation"]["per_target"]) == {"sim", "len"}
    predictor = deltatune.load(run.path)
    assert predictor.task.targets == ["sim", "len"] and predictor.task.mean.tolist() == pytest.approx([1.0 - 1 / 8 * 1, 15.0])
    (record,) = predictor.predict([("a cat sat", "a cat")])
    assert set(record) == {"score"} and set(record["score"]) == {"sim", "len"}
    TASK_IO["text-regression"].prediction.model_validate(record)  # the served schema holds it
    with pytest.raises(DeltatuneError, match="reads text pairs .*give each --text its --text-pair"):
        deltatune.api.predict(run.path, texts=["a cat sat"])  # a pair run given single texts


def test_stsb_pairs_and_scores_parse_through_the_loader(tiny_model_dir, tmp_path):
    if not (STSB / "train.tsv").is_file():
        pytest.skip(f"STS-B not found at {STSB}")
    # the whole dev file: TSV without quoting, sentences holding '"' stay whole
    full = load_table(str(STSB / "dev.tsv"))
    assert len(full) == 1500 and all(isinstance(s, float) for s in full["score"])
    assert full[267]["sentence2"] == 'a woman is standing by a pillar where "u2" is written.' and full[267]["score"] == 4.2
    for name in ("train", "dev"):  # header and the first 64 rows
        lines = (STSB / f"{name}.tsv").read_text().splitlines(keepends=True)[:65]
        (tmp_path / f"{name}.tsv").write_text("".join(lines))
    train = load_table(str(tmp_path / "train.tsv"))
    assert len(train) == 64 and train[0]["sentence1"] == "A plane is taking off." and train[0]["sentence2"] == "An air plane is taking off."
    assert train[1]["score"] == 3.8 and all(0.0 <= s <= 5.0 for s in train["score"])
    cfg = _config(tmp_path, tiny_model_dir, [], [], text_column="sentence1", text_pair_column="sentence2", label_column="score")
    cfg["data"].update(train_file=str(tmp_path / "train.tsv"), validation_file=str(tmp_path / "dev.tsv"))
    run = deltatune.finetune(cfg, verbose=False)
    assert run.metrics["validation"]["mse"] >= 0 and -1 <= run.metrics["validation"]["spearman"] <= 1
    (record,) = deltatune.load(run.path).predict([("A man is playing a flute.", "A man plays the flute.")])
    assert 0.0 < record["score"] < 5.0


def test_an_exported_adapter_carries_the_standardization(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from deltatune.delta.export import HEAD_CONFIG_FILE

    train, dev = _scored_rows(16, 1), _scored_rows(8, 2)
    cfg = _config(tmp_path, tiny_model_dir, train, dev, steps=2)
    cfg["delta"] = {"method": "lora"}
    run = deltatune.finetune(cfg, verbose=False)
    out = tmp_path / "adapter"
    deltatune.api.export(run.path, str(out), fmt="adapter")
    head = json.loads((out / HEAD_CONFIG_FILE).read_text())
    assert head[MEAN_KEY] == pytest.approx([float(np.mean([r["label"] for r in train]))]) and head["problem_type"] == "regression"
    head["id2label"] = {int(i): name for i, name in head["id2label"].items()}
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    config = AutoConfig.from_pretrained(adapter_cfg["base_model_name_or_path"])
    config.update(head)
    base = AutoModelForSequenceClassification.from_pretrained(adapter_cfg["base_model_name_or_path"], config=config)
    model = PeftModel.from_pretrained(base, str(out)).eval()
    predictor = deltatune.load(run.path, device="cpu")
    batch = predictor.tokenizer([dev[0]["text"]], return_tensors="pt")
    with torch.no_grad():
        z = model(**batch).logits.float().numpy()[0, 0]
    # the head's standardized output, turned into the target's units with the exported mean and std
    assert z * head[STD_KEY][0] + head[MEAN_KEY][0] == pytest.approx(predictor.predict([dev[0]["text"]])[0]["score"], abs=1e-4)
