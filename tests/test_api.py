"""Whole runs through the Python API on the tiny model: variants of data and precision."""

import json

import pytest
import yaml

import deltatune
from deltatune.cli import main
from tests.helpers import make_sentiment_rows, tiny_config, write_csv


def test_validation_split_is_carved_and_config_is_reproducible(tiny_model_dir, tmp_path):
    train = write_csv(tmp_path / "all.csv", make_sentiment_rows(60))
    run = deltatune.finetune(tiny_config(tiny_model_dir, train, None, tmp_path / "r", num_train_epochs=1), verbose=False)
    assert sum(run.metrics["validation"]["per_class"][c]["support"] for c in ("neg", "pos")) == 6  # 10% of 60
    assert run.metrics["validation"]["per_class"]["neg"]["support"] == 3  # stratified
    saved = yaml.safe_load((run.path / "config.yaml").read_text())
    assert saved["train"]["learning_rate"] == 1e-3 and saved["data"]["validation_split"] == 0.1
    again = deltatune.finetune(run.path / "config.yaml", {"output_dir": str(tmp_path / "r2")}, verbose=False)
    assert again.metrics["validation"]["loss"] == run.metrics["validation"]["loss"]  # same seed, same result
    cfg = json.loads((run.path / "model" / "config.json").read_text())
    assert cfg["id2label"] == {"0": "neg", "1": "pos"}
    # eval.json keeps what the data files were (a report made elsewhere later still knows), and the run
    # folder no longer says it is being trained
    files = json.loads((run.path / "eval.json").read_text())["train"]["data_files"]
    assert files["train"] == {"file": str(train), "rows": 54, "path": str(train.resolve()), "bytes": train.stat().st_size}
    assert files["validation"] == {"file": None, "rows": 6, "carved_from": str(train)}
    assert (run.path / "report.html").is_file() and not (run.path / ".training").exists()


def test_an_interrupted_run_gets_its_report_and_says_it_is_no_longer_trained(tiny_model_dir, tmp_path):
    train = write_csv(tmp_path / "all.csv", make_sentiment_rows(60))
    seen = []

    def stop_at_two(trainer, state):
        seen.append((trainer.run_dir.root / ".training").is_file())
        if state.global_step == 2:
            raise KeyboardInterrupt

    run = deltatune.finetune(tiny_config(tiny_model_dir, train, None, tmp_path / "r", num_train_epochs=3), callbacks=(stop_at_two,), verbose=False)
    assert run.result.interrupted and all(seen) and not (run.path / ".training").exists()
    assert (run.path / "report.html").is_file() and not (run.path / "eval.json").exists()


def test_multi_label_jsonl_run_and_predict(tiny_model_dir, tmp_path):
    rows = [
        {"text": f"{' '.join(['ball'] * (i % 3 + 1))} {'vote' if i % 2 else ''} game", "label": ["sports"] + (["politics"] if i % 2 else [])}
        for i in range(40)
    ]
    path = tmp_path / "ml.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tiny_config(tiny_model_dir, path, None, tmp_path / "ml", num_train_epochs=2)
    run = deltatune.finetune(cfg, verbose=False)
    m = run.metrics["validation"]
    assert {"subset_accuracy", "f1_micro", "f1_macro"} <= set(m)
    pred = deltatune.load(run.path).predict(["ball vote game"])[0]
    assert isinstance(pred["label"], list) and set(pred["probabilities"]) == {"politics", "sports"}


def test_text_pairs_bf16_accumulation_and_l1(tiny_model_dir, tmp_path, capsys):
    rows = [{"premise": r["text"], "hypothesis": "it was good", "label": r["label"]} for r in make_sentiment_rows(40)]
    train = write_csv(tmp_path / "pairs.csv", rows)
    cfg = tiny_config(
        tiny_model_dir, train, None, tmp_path / "pairs", mixed_precision="bf16", gradient_accumulation_steps=2, l1_lambda=1e-5
    )
    cfg["data"].update({"text_column": "premise", "text_pair_column": "hypothesis"})
    run = deltatune.finetune(cfg, verbose=False)
    log = [json.loads(x) for x in (run.path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert all(0 < x < 10 for x in losses)
    out = deltatune.load(run.path).predict([("a great film", "it was good")])
    assert out[0]["label"] in ("neg", "pos")
    # the CLI passes the second text with --text-pair, one per --text
    assert main(["predict", str(run.path), "--text", "a great film", "--text-pair", "it was good"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["text_pair"] == "it was good" and printed["probabilities"] == pytest.approx(out[0]["probabilities"])
    assert main(["predict", str(run.path), "--text", "a", "--text", "b", "--text-pair", "c"]) == 2
    assert "one --text-pair per --text" in capsys.readouterr().err


def test_evaluate_pretrained_scores_only_held_out_rows_and_refuses_fresh_heads(tmp_path, capsys, tiny_model_dir):
    """The pretrained model's numbers ("before"): the split_column's training rows are left out, as
    deltatune.api.evaluate does; a task with a fresh head is refused naming the task."""
    import gzip
    from pathlib import Path

    from deltatune.api import evaluate_pretrained
    from deltatune.errors import DeltatuneError

    d = Path(__file__).resolve().parents[2] / "shared" / "data" / "translation" / "multi30k_en_de"
    if not d.is_dir():
        pytest.skip(f"no shared data at {d}")
    read = lambda name: gzip.open(d / name, "rt", encoding="utf-8").read().splitlines()[:4]  # noqa: E731
    rows = [{"source": a, "target": b} for a, b in zip(read("test_2016_flickr.en.gz"), read("test_2016_flickr.de.gz"))]
    mixed, held = tmp_path / "mixed.jsonl", tmp_path / "held.jsonl"
    mixed.write_text("".join(json.dumps({**r, "split": s}) + "\n" for r, s in zip(rows, ("train", "test", "train", "test"))))
    held.write_text("".join(json.dumps(r) + "\n" for r in rows[1::2]))
    cfg = {
        "task": "translation", "model": {"name_or_path": "smollm2"}, "output_dir": str(tmp_path / "run"),
        "data": {"train_file": str(mixed), "split_column": "split", "source_lang": "English", "target_lang": "German", "max_seq_length": 128},
        "eval": {"per_device_eval_batch_size": 4, "max_new_tokens": 4},
    }
    out = tmp_path / "m.json"
    on_mixed = evaluate_pretrained(cfg, str(mixed), output=out)
    err = capsys.readouterr().err
    assert "evaluating its 2 rows with split=test" in err and "pretrained model's numbers" in err
    assert json.loads(out.read_text()) == on_mixed
    with pytest.raises(DeltatuneError, match="--overwrite"):
        evaluate_pretrained(cfg, str(mixed), output=out)
    assert evaluate_pretrained(cfg, str(held)) == on_mixed  # the same two rows
    classify = {"task": "text-classification", "model": {"name_or_path": str(tiny_model_dir)}, "data": {"train_file": str(held)}}
    with pytest.raises(DeltatuneError, match=r"^task text-classification: .*no trained head.*train first"):
        evaluate_pretrained(classify, str(held))
