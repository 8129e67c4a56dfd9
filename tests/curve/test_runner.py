"""deltatune curve end to end on the tiny model: run folders, curve.json/html, resuming, refusals, CLI errors."""

import json

import pytest
import yaml

import deltatune
from deltatune.curve.runner import parse_fractions, plan_curve
from deltatune.errors import DeltatuneError
from tests.helpers import make_sentiment_rows, run_cli_fresh, tiny_config, write_csv


def test_curve_end_to_end_writes_runs_and_resumes_without_retraining(tiny_model_dir, tmp_path, capsys):
    train = write_csv(tmp_path / "all.csv", make_sentiment_rows(60))
    base = tiny_config(tiny_model_dir, train, None, tmp_path / "base", num_train_epochs=1)
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[0].output_dir)
        return deltatune.finetune(*args, **kwargs)

    out = tmp_path / "c"
    result = deltatune_curve(base, out, counted)
    names = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert names == ["frac-0.500-seed-0", "frac-0.500-seed-1", "frac-0.750-seed-0", "frac-0.750-seed-1"]
    assert len(calls) == 4 and (out / "curve.html").is_file()
    data = json.loads((out / "curve.json").read_text())
    assert data["metric"] == "accuracy" and data["validation_rows"] == 6
    assert sorted((p["fraction"], p["seed"], p["train_rows"]) for p in data["points"]) == [
        (0.5, 0, 27), (0.5, 1, 27), (0.75, 0, 40), (0.75, 1, 40)]
    assert all(isinstance(p["value"], float) for p in data["points"])
    assert not data["fit"]["ok"] and "a curve needs at least 3" in data["fit"]["reason"]  # 2 sizes: no fit, said so
    saved = yaml.safe_load((out / "frac-0.500-seed-1" / "config.yaml").read_text())
    assert saved["data"]["train_fraction"] == 0.5 and saved["data"]["subset_seed"] == 1  # reproducible with deltatune train
    assert "svg" in (out / "curve.html").read_text() and result.data == data
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("frac-*/eval.json")}
    capsys.readouterr()
    again = deltatune_curve(base, out, counted)
    assert len(calls) == 4 and {p: p.stat().st_mtime_ns for p in out.glob("frac-*/eval.json")} == stamps  # nothing retrained
    assert "finished before, not retrained" in capsys.readouterr().out
    assert again.data["points"] == data["points"]
    (out / "frac-0.750-seed-1" / "eval.json").unlink()  # an unfinished point is trained again, only it
    deltatune_curve(base, out, counted)
    assert calls[4:] == [str(out / "frac-0.750-seed-1")]
    with pytest.raises(DeltatuneError, match=r"made with another config: it differs at train.learning_rate"):
        deltatune_curve({**base, "train": {**base["train"], "learning_rate": 5e-4}}, out, counted)


def deltatune_curve(config, out, train):
    from deltatune.curve.runner import curve

    return curve(config, None, fractions="0.5,0.75", seeds=2, output_dir=out, train=train)


def test_plan_runs_full_data_once_and_names_the_default_folder(tmp_path):
    plan = plan_curve({"output_dir": str(tmp_path / "runs" / "x")}, None, "1.0,0.1,0.25", 3)
    assert plan.out == tmp_path / "runs" / "x-curve" and plan.fractions == [0.1, 0.25, 1.0]
    assert plan.points == [(0.1, 0), (0.1, 1), (0.1, 2), (0.25, 0), (0.25, 1), (0.25, 2), (1.0, 0)]


@pytest.mark.parametrize("text, message", [
    ("0.1,0.1", "given twice"), ("0,0.5", "outside (0, 1]"), ("0.5,1.2", "outside (0, 1]"), ("a", "not a number"), ("", "empty"),
])
def test_bad_fractions_are_refused(text, message):
    with pytest.raises(DeltatuneError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_fractions(text)
    assert parse_fractions("1.0,0.25,0.1") == [0.1, 0.25, 1.0]  # unsorted is fine


def test_a_fraction_in_the_config_and_a_foreign_folder_are_refused(tmp_path):
    with pytest.raises(DeltatuneError, match="deltatune curve sets it for each point"):
        plan_curve({"data": {"train_fraction": 0.5}}, None, "0.5,1", 1, tmp_path / "c")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(DeltatuneError, match="not a deltatune curve folder"):
        plan_curve(None, None, "0.5,1", 1, tmp_path / "mine")


@pytest.mark.parametrize("argv, needle", [
    (["curve", "--fractions", "0.1,0.1"], "given twice"),
    (["curve", "--fractions", "0.5,1.5"], "outside (0, 1]"),
    (["curve", "--seeds", "0"], "--seeds must be"),
    (["curve", "--seeds", "two"], "invalid int value"),
    (["curve", "--train", "missing.csv", "--task", "text-classification"], "missing.csv"),
    (["curve", "data.train_fraction=0.5", "--train", "d.csv"], "drop it from the config"),
    (["curve", "train.learning_rate=-1"], "train.learning_rate"),
])
def test_cli_usage_and_config_errors_come_before_torch(argv, needle, tmp_path):
    (tmp_path / "d.csv").write_text("text,label\na,b\n")
    out = run_cli_fresh(argv, tmp_path)
    assert out.stdout.split() == ["no", "torch", "2"], out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], out.stderr
