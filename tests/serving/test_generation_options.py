"""predict/evaluate generation options and batch sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import deltatune
from deltatune.cli import main
from deltatune.errors import DeltatuneError


@pytest.fixture(scope="module")
def decoder_run(tiny_llama_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(run, data): a 1-step instruction run on the tiny random Llama whose eval generates 4 tokens."""
    root = tmp_path_factory.mktemp("decoder")
    rows = [{"instruction": f"Repeat the word {w}", "input": "", "output": w} for w in ["red", "blue", "green", "cyan", "pink", "gold"]]
    data = root / "sft.json"
    data.write_text(json.dumps(rows))
    cfg = {
        "task": "instruction",
        "output_dir": str(root / "run"),
        "model": {"name_or_path": tiny_llama_dir},
        "data": {"train_file": str(data), "validation_split": 0.34, "max_seq_length": 64},
        "train": {"max_steps": 1, "per_device_train_batch_size": 4, "progress_bar": False},
        "eval": {"eval_strategy": "no", "generation_max_samples": 0, "max_new_tokens": 4},
    }
    deltatune.finetune(cfg, verbose=False)
    return root / "run", data


def _generated_tokens(predictor, records) -> list[int]:
    return [len(predictor.tokenizer(r["generated"], add_special_tokens=False)["input_ids"]) for r in records]


def test_max_new_tokens_overrides_the_runs_evaluation_length(decoder_run):
    run, _ = decoder_run
    prompt = ["Repeat the word red"]
    default = deltatune.load(run)
    short = default.predict(prompt)
    assert default.config.eval.max_new_tokens == 4 and not short[0]["ended_with_eos"]
    longer = deltatune.load(run, max_new_tokens=24)
    assert longer.config.eval.max_new_tokens == 24
    got = longer.predict(prompt)
    # the run's 4-token cut no longer applies: the answer continues past it (greedy: same start)
    assert got[0]["ended_with_eos"] or _generated_tokens(longer, got)[0] > _generated_tokens(default, short)[0]
    assert got[0]["generated"].startswith(short[0]["generated"][:8])


def test_temperature_top_p_and_beams_reach_generation(decoder_run):
    run, _ = decoder_run
    sampled = deltatune.load(run, temperature=0.7, top_p=0.9, num_beams=2, max_new_tokens=3)
    e = sampled.config.eval
    assert (e.do_sample, e.temperature, e.top_p, e.num_beams, e.max_new_tokens) == (True, 0.7, 0.9, 2, 3)
    assert len(sampled.predict(["Repeat the word blue"])) == 1
    greedy = deltatune.load(run, temperature=0)
    assert greedy.config.eval.do_sample is False


def test_top_p_needs_sampling(decoder_run):
    run, _ = decoder_run
    with pytest.raises(DeltatuneError, match="--top-p.*greedily.*--temperature"):
        deltatune.load(run, top_p=0.9)
    with pytest.raises(DeltatuneError, match="--top-p.*--temperature 0"):
        deltatune.load(run, top_p=0.9, temperature=0)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"max_new_tokens": 0}, "--max-new-tokens"),
        ({"num_beams": -1}, "--num-beams"),
        ({"temperature": -0.5}, "--temperature"),
        ({"temperature": float("nan")}, "--temperature"),
        ({"top_p": 0.0}, "--top-p"),
        ({"top_p": 1.5}, "--top-p"),
    ],
)
def test_out_of_range_generation_options_are_refused_by_the_api(decoder_run, kwargs, words):
    run, _ = decoder_run
    with pytest.raises(DeltatuneError, match=words):
        deltatune.load(run, **kwargs)


@pytest.mark.parametrize(
    "argv",
    [
        ["--max-new-tokens", "0"],
        ["--num-beams", "0"],
        ["--temperature", "-1"],
        ["--temperature", "inf"],
        ["--top-p", "0"],
        ["--top-p", "1.01"],
        ["--batch-size", "0"],
        ["--batch-size", "-1"],
    ],
)
def test_out_of_range_options_are_usage_errors(argv, capsys):
    # argparse refuses them while parsing, before any handler runs (the run folder is not even looked at)
    for command in (["predict", "runs/x", "--text", "hi"], ["evaluate", "runs/x", "--data", "x.csv"]):
        with pytest.raises(SystemExit) as e:
            main(command + argv)
        assert e.value.code == 2
        assert f"argument {argv[0]}" in capsys.readouterr().err


def test_generation_options_on_a_classifier_are_one_line_errors(classifier_run, sentiment_files, capsys):
    _, val = sentiment_files
    for argv in (
        ["predict", str(classifier_run), "--text", "good", "--max-new-tokens", "8"],
        ["evaluate", str(classifier_run), "--data", str(val), "--temperature", "0.7", "--top-p", "0.9"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "does not generate text" in err and "text-classification" in err, err


def test_decoder_predict_and_evaluate_take_the_options_on_the_cli(decoder_run, tmp_path, capsys):
    run, data = decoder_run
    assert main(["predict", str(run), "--text", "Repeat the word red", "--max-new-tokens", "2", "--num-beams", "2"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["text"] == "Repeat the word red" and "generated" in record
    out = tmp_path / "metrics.json"
    argv = ["evaluate", str(run), "--data", str(data), "--max-new-tokens", "2", "--batch-size", "2", "--output", str(out)]
    assert main(argv) == 0
    assert "loss" in json.loads(out.read_text())


def test_batch_size_below_one_is_refused_by_the_api(classifier_run, sentiment_files):
    _, val = sentiment_files
    with pytest.raises(DeltatuneError, match="--batch-size"):
        deltatune.evaluate(classifier_run, str(val), batch_size=0)
    predictor = deltatune.load(classifier_run)
    from deltatune.data import load_table

    with pytest.raises(DeltatuneError, match="--batch-size.*got -1"):
        predictor.predict_rows(load_table(str(val)), str(val), batch_size=-1)
    assert len(predictor.predict_rows(load_table(str(val)), str(val), batch_size=3)) == 16
