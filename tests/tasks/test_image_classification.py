"""image-classification on a tiny random ViT: tables with relative paths, class folders, bad files,
multi-label, LoRA, augmentation, and prediction from a file list and ``predict --file``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import deltatune
from deltatune.api import predict
from deltatune.cli import main as cli_main
from deltatune.errors import DeltatuneError

pytestmark = pytest.mark.usefixtures("one_thread")

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


def _images(folder: Path, n: int, labels=("red", "blue")) -> list[tuple[str, str]]:
    """``n`` 32x32 images of solid colours (slightly varied), as (path relative to ``folder``, label)."""
    out = []
    for i in range(n):
        label = labels[i % len(labels)]
        r, g, b = COLOURS[label]
        rel = Path("imgs") / f"{label}-{i}.png"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (r + i % 20, g, b)).save(folder / rel)
        out.append((str(rel), label))
    return out


def _csv(path: Path, rows: list[tuple[str, str]], header=("image", "label")) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _config(model_dir: str, train: Path, validation: Path | None, out: Path, **data) -> dict:
    return {
        "task": "image-classification",
        "output_dir": str(out),
        "seed": 3,
        "model": {"name_or_path": model_dir},
        "data": {"train_file": str(train), "validation_file": str(validation) if validation else None, **data},
        "train": {"per_device_train_batch_size": 8, "learning_rate": 5e-3, "max_steps": 12, "progress_bar": False},
        "eval": {"eval_strategy": "no"},
    }


def test_train_predict_evaluate_with_paths_relative_to_the_data_file(tiny_vit_dir, tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    rows = _images(data, 24)
    train, dev = _csv(data / "train.csv", rows[:16]), _csv(data / "dev.csv", rows[16:])
    monkeypatch.chdir(tmp_path)  # the paths are relative to data/, not to the current folder
    run = deltatune.finetune(_config(tiny_vit_dir, train, dev, tmp_path / "run"), verbose=False)
    assert run.metrics["validation"]["accuracy"] == 1.0  # solid red vs blue: learnt in 12 steps
    assert {"f1_macro", "loss"} <= set(run.metrics["validation"])
    again = deltatune.evaluate(run.path, str(dev))
    assert again["accuracy"] == pytest.approx(run.metrics["validation"]["accuracy"])
    predictions = predict(run.path, input=str(dev))
    assert [p["label"] for p in predictions] == [label for _, label in rows[16:]]
    assert set(predictions[0]["probabilities"]) == {"blue", "red"}
    one = predict(run.path, files=[str(data / rows[0][0])])  # predict --file: relative to the current folder
    assert one[0]["label"] == rows[0][1] and one[0]["image"] == str(data / rows[0][0])


def test_an_image_run_reports_examples_per_second_not_tokens(tiny_vit_dir, tmp_path, capfd):
    rows = _images(tmp_path, 12)
    train = _csv(tmp_path / "train.csv", rows)
    cfg = _config(tiny_vit_dir, train, train, tmp_path / "run", max_seq_length=8)  # a text setting: no effect on images
    cfg["train"].update(max_steps=2, log_interval_seconds=0)
    run = deltatune.finetune(cfg, verbose=True)
    captured = capfd.readouterr()
    lines = [x for x in captured.err.splitlines() if x.startswith("step ")]
    assert lines and all("examples/s" in x and "tokens" not in x for x in lines), lines
    # the memory estimate's length: (32 / 8-pixel patches of the model config)^2 + [CLS], not 16-pixel patches, not cut to 8
    assert "tokens" not in captured.out and "(batch 8 x 17 positions per forward pass)" in captured.out, captured.out
    assert "tokens_per_second" not in json.loads((run.path / "eval.json").read_text())["train"]


def test_a_class_folder_directory_is_training_data(tiny_vit_dir, tmp_path):
    root = tmp_path / "train"
    for rel, label in _images(tmp_path, 12, ("red", "blue", "green")):
        (root / label).mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).rename(root / label / Path(rel).name)
    run = deltatune.finetune(_config(tiny_vit_dir, root, None, tmp_path / "run", validation_split=0.25), verbose=False)
    assert run.config.data.train_file == str(root)
    predictor = deltatune.load(run.path)
    assert predictor.task.labels == ["blue", "green", "red"]


@pytest.mark.parametrize(("content", "problem"), [(b"", r"is empty \(0 bytes\)"), (b"hello", "is not an image Pillow can read")])
def test_a_bad_image_is_refused_naming_the_file_and_row(tiny_vit_dir, tmp_path, content, problem):
    rows = _images(tmp_path, 8)
    (tmp_path / "imgs" / "bad.jpg").write_bytes(content)
    train = _csv(tmp_path / "train.csv", rows[:3] + [("imgs/bad.jpg", "red")] + rows[3:])
    with pytest.raises(DeltatuneError, match=rf"train.csv: row 4, column 'image': .*bad.jpg {problem}; .*data.skip_bad_rows: true"):
        deltatune.finetune(_config(tiny_vit_dir, train, train, tmp_path / "run"), verbose=False)
    assert not (tmp_path / "run").exists()  # refused before the run folder


@pytest.mark.parametrize("bad_row", [3, 12])
def test_a_bad_image_in_a_carved_validation_split_names_the_files_row(tiny_vit_dir, tmp_path, bad_row):
    # no validation_file: the rows are shuffled into a training and a validation part, and the
    # message still names the bad image's row in train.csv (data rows counted from 1)
    rows = _images(tmp_path, 11)
    train = _csv(tmp_path / "train.csv", rows[: bad_row - 1] + [("imgs/gone.png", "red")] + rows[bad_row - 1 :])
    with pytest.raises(DeltatuneError, match=rf"train.csv: row {bad_row}, column 'image': .*gone.png does not exist"):
        deltatune.finetune(_config(tiny_vit_dir, train, None, tmp_path / "run", validation_split=0.25), verbose=False)


def test_skip_bad_rows_in_a_carved_split_reports_the_files_rows(tiny_vit_dir, tmp_path, capsys):
    from deltatune.api import _encode, _load_splits
    from deltatune.config import build_config

    rows = _images(tmp_path, 10)
    train = _csv(tmp_path / "train.csv", rows[:4] + [("imgs/gone.png", "red")] + rows[4:8] + [("imgs/lost.png", "blue")] + rows[8:])
    cfg = build_config(_config(tiny_vit_dir, train, None, tmp_path / "run", validation_split=0.5, skip_bad_rows=True))
    task, splits = _load_splits(cfg)
    _, encoded = _encode(cfg, task, splits, tiny_vit_dir, strict=False)
    dropped = encoded.train.stats.dropped_rows + encoded.validation.stats.dropped_rows
    assert sorted(dropped) == [5, 10]  # rows 5 and 10 of train.csv, whichever part they fell in
    assert "(data.skip_bad_rows; first: row 5)" in capsys.readouterr().err  # the lower of them in its part


def test_skip_bad_rows_skips_and_counts_them(tiny_vit_dir, tmp_path, capsys):
    rows = _images(tmp_path, 12)
    (tmp_path / "imgs" / "empty.png").write_bytes(b"")
    (tmp_path / "imgs" / "text.png").write_text("not an image")
    train = _csv(tmp_path / "train.csv", rows[:8] + [("imgs/empty.png", "red"), ("imgs/text.png", "blue"), ("imgs/gone.png", "red")])
    dev = _csv(tmp_path / "dev.csv", rows[8:] + [("imgs/empty.png", "blue")])
    run = deltatune.finetune(_config(tiny_vit_dir, train, dev, tmp_path / "run", skip_bad_rows=True), verbose=False)
    err = capsys.readouterr().err
    assert "train.csv: skipped 3 of 11 rows whose image file cannot be read" in err and "dev.csv: skipped 1 of 5 rows" in err
    report = json.loads((run.path / "eval.json").read_text())
    assert "skipped_bad_files" in json.dumps(report)
    analysis = json.loads((run.path / "analysis.json").read_text())
    assert all(r["row"] < 4 for r in analysis["worst_examples"]["rows"])  # rows of dev.csv that were kept
    with pytest.raises(DeltatuneError, match="empty.png is empty .* prediction needs every file"):
        predict(run.path, input=str(dev))


def test_a_truncated_jpeg_is_refused_in_encode_or_skipped(tiny_vit_dir, tmp_path):
    import io

    from datasets import Dataset

    from deltatune.config import build_config
    from deltatune.tasks import create_task

    rows = _images(tmp_path, 4)
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).effect_spread(8).save(buf, "JPEG", quality=95)
    (tmp_path / "imgs" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    table = rows[:2] + [("imgs/cut.jpg", "red")] + rows[2:]
    source = str(_csv(tmp_path / "train.csv", table))
    ds = Dataset.from_list([{"image": p, "label": label} for p, label in table])
    for skip in (False, True):
        task = create_task(build_config({"task": "image-classification", "data": {"skip_bad_rows": skip}}))
        task.fit(ds, source)
        if not skip:
            with pytest.raises(DeltatuneError, match=r"train.csv: row 3, column 'image': .*cut.jpg is a damaged image"):
                task.encode(ds, None, source=source)
        else:
            features = task.encode(ds, None, source=source)
            assert len(features.rows) == 4 and features.stats.skipped_bad_files == 1 and features.stats.dropped_rows == [3]


def test_a_missing_image_column_names_data_image_column_and_task(tiny_vit_dir, tmp_path, capsys):
    train = _csv(tmp_path / "train.csv", _images(tmp_path, 4), header=("path", "label"))
    argv = ["train", "--task", "image-classification", "--model", tiny_vit_dir, "--train", str(train), "--output-dir", str(tmp_path / "run")]
    assert cli_main(argv) != 0  # the header check before torch
    err = capsys.readouterr().err
    assert "no column 'image'" in err and "data.image_column" in err and "--task" in err and "--text-column" not in err
    with pytest.raises(DeltatuneError, match=r"no column 'image'; .*\(set the column names in data.image_column .*--task\)$"):
        deltatune.finetune(_config(tiny_vit_dir, train, train, tmp_path / "run"), verbose=False)  # the task's check


def test_a_bad_file_at_prediction_does_not_suggest_skip_bad_rows(tmp_path):
    from datasets import Dataset

    from deltatune.config import build_config
    from deltatune.tasks import create_task

    (tmp_path / "empty.png").write_bytes(b"")
    source = str(_csv(tmp_path / "new.csv", [("empty.png", "red")]))
    task = create_task(build_config({"task": "image-classification"}))
    with pytest.raises(DeltatuneError, match=r"new.csv: row 1, column 'image': .*empty.png is empty \(0 bytes\); fix or remove the file; prediction needs every file$"):
        task.encode(Dataset.from_list([{"image": "empty.png"}]), None, with_labels=False, source=source)


def test_multi_label_images(tiny_vit_dir, tmp_path):
    rows = []
    for i in range(16):
        colour = ("red", "blue")[i % 2]
        rel = Path("imgs") / f"{i}.png"
        (tmp_path / "imgs").mkdir(exist_ok=True)
        img = Image.new("RGB", (32, 32), COLOURS[colour])
        if i % 4 < 2:  # a white band: label "striped" too
            for x in range(32):
                for y in range(0, 32, 4):
                    img.putpixel((x, y), (255, 255, 255))
        img.save(tmp_path / rel)
        rows.append({"image": str(rel), "label": [colour] + (["striped"] if i % 4 < 2 else [])})
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = deltatune.finetune(_config(tiny_vit_dir, train, train, tmp_path / "run"), verbose=False)
    assert run.metrics["validation"]["f1_micro"] > 0.5
    predictor = deltatune.load(run.path)
    assert predictor.task.multi_label and predictor.task.labels == ["blue", "red", "striped"]
    assert isinstance(predictor.predict([str(tmp_path / rows[0]["image"])])[0]["label"], list)


def test_lora_trains_the_new_head_whole_and_reloads(tiny_vit_dir, tmp_path):
    rows = _images(tmp_path, 16)
    train = _csv(tmp_path / "train.csv", rows)
    cfg = _config(tiny_vit_dir, train, train, tmp_path / "run")
    cfg["delta"] = {"method": "lora", "lora_r": 4}
    run = deltatune.finetune(cfg, verbose=False)
    predictor = deltatune.load(run.path)
    assert predictor.task.modules_to_save == ["classifier"]
    names = [n for n, _ in predictor.model.named_parameters()]
    assert any("lora_A" in n for n in names) and any("modules_to_save" in n and "classifier" in n for n in names)
    again = deltatune.evaluate(run.path, str(train))
    assert again["accuracy"] == pytest.approx(run.metrics["validation"]["accuracy"])


def test_augmentations_apply_to_training_batches_only(tiny_vit_dir, tmp_path):
    from deltatune.config import build_config
    from deltatune.models.loading import load_processor
    from deltatune.tasks import create_task
    from datasets import Dataset

    img = Image.new("RGB", (64, 32), (0, 0, 0))
    for x in range(32):
        for y in range(32):
            img.putpixel((x, y), (255, 255, 255))  # left half white
    img.save(tmp_path / "half.png")
    cfg = build_config({"task": "image-classification", "data": {"horizontal_flip": True, "random_resized_crop": True}})
    task = create_task(cfg)
    ds = Dataset.from_list([{"image": str(tmp_path / "half.png"), "label": "a"}, {"image": str(tmp_path / "half.png"), "label": "b"}])
    task.fit(ds, "rows")
    task.set_tokenizer(load_processor(tiny_vit_dir, "image"))
    features = task.encode(ds, task.tokenizer, source="rows")
    evaluation = [task.collate(features.rows[:1])["pixel_values"] for _ in range(5)]
    assert all(torch.equal(evaluation[0], e) for e in evaluation)  # no augmentation outside training
    training = task.training_features(features)
    batches = [task.collate(training.rows[:1])["pixel_values"] for _ in range(8)]
    assert batches[0].shape == evaluation[0].shape == (1, 3, 32, 32)
    assert any(not torch.equal(evaluation[0], b) for b in batches)


def test_predict_cli_takes_a_data_file_and_files(tiny_vit_dir, tmp_path, capsys):
    rows = _images(tmp_path, 8)
    train = _csv(tmp_path / "train.csv", rows)
    cfg = _config(tiny_vit_dir, train, train, tmp_path / "run")
    cfg["train"]["max_steps"] = 2
    run = deltatune.finetune(cfg, verbose=False)
    capsys.readouterr()
    assert cli_main(["predict", str(run.path), "--input", str(train)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 8 and lines[0]["image"] == rows[0][0] and lines[0]["label"] in ("red", "blue")
    assert cli_main(["predict", str(run.path), "--file", str(tmp_path / rows[1][0]), "--file", str(tmp_path / rows[2][0])]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["image"] for x in lines] == [str(tmp_path / rows[1][0]), str(tmp_path / rows[2][0])]


def test_check_shows_the_files_and_their_labels(tiny_vit_dir, tmp_path):
    from deltatune.api import check

    rows = _images(tmp_path, 6)
    train = _csv(tmp_path / "train.csv", rows)
    report = check(_config(tiny_vit_dir, train, train, tmp_path / "run"), examples=2)
    assert f"{tmp_path / rows[0][0]} -> red" in report and "examples 6 | skipped (unreadable file) 0" in report
    assert "tokens" not in report and "max_seq_length" not in report and "--- example 1: " in report  # images have no tokens
