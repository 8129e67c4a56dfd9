"""audio-classification on a tiny random Whisper encoder: 8 kHz WAVs resampled to 16 kHz, clips cut to
data.max_audio_seconds (and the encoder's positions with them), bad files, class folders, prediction."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import deltatune
from deltatune.api import predict
from deltatune.errors import DeltatuneError

pytestmark = pytest.mark.usefixtures("one_thread")


def _clips(folder: Path, n: int, rate: int = 8000) -> list[tuple[str, str]]:
    """``n`` tones of 0.3-0.6 s at ``rate`` Hz: "low" (300 Hz) and "high" (2,500 Hz), as (relative path, label)."""
    out = []
    (folder / "wav").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        label = ("low", "high")[i % 2]
        t = np.arange(int(rate * (0.3 + 0.05 * (i % 7)))) / rate
        x = 0.5 * np.sin(2 * np.pi * (300 if label == "low" else 2500) * t)
        rel = f"wav/{label}-{i}.wav"
        sf.write(str(folder / rel), x.astype(np.float32), rate)
        out.append((rel, label))
    return out


def _csv(path: Path, rows) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["audio", "label"])
        w.writerows(rows)
    return path


def _config(model_dir: str, train: Path, validation: Path | None, out: Path, **data) -> dict:
    return {
        "task": "audio-classification",
        "output_dir": str(out),
        "seed": 3,
        "model": {"name_or_path": model_dir},
        "data": {"train_file": str(train), "validation_file": str(validation) if validation else None,
                 "max_audio_seconds": 0.5, **data},
        "train": {"per_device_train_batch_size": 8, "learning_rate": 3e-3, "max_steps": 10, "progress_bar": False},
        "eval": {"eval_strategy": "no"},
    }


def test_train_predict_evaluate_on_8k_wavs(tiny_whisper_dir, tmp_path):
    data = tmp_path / "data"
    rows = _clips(data, 20)
    train, dev = _csv(data / "train.csv", rows[:14]), _csv(data / "dev.csv", rows[14:])
    run = deltatune.finetune(_config(tiny_whisper_dir, train, dev, tmp_path / "run"), verbose=False)
    assert run.metrics["validation"]["accuracy"] >= 5 / 6  # two tones: learnt in 10 steps
    predictor = deltatune.load(run.path)
    # 0.5 s clips: 50 log-mel frames... of 100 per second, 25 encoder positions of the 1,500 (30 s) it was made with
    assert predictor.model.config.max_source_positions == 25 and not predictor.model.config.is_encoder_decoder
    assert predictor.model.encoder.embed_positions.weight.shape[0] == 25
    assert deltatune.evaluate(run.path, str(dev))["accuracy"] == pytest.approx(run.metrics["validation"]["accuracy"])
    predictions = predict(run.path, input=str(dev))
    assert [p["label"] for p in predictions] == [label for _, label in rows[14:]]
    assert predict(run.path, files=[str(data / rows[0][0])])[0]["label"] == rows[0][1]


def test_clips_are_resampled_cut_and_padded_to_max_audio_seconds(tiny_whisper_dir, tmp_path):
    from datasets import Dataset

    from deltatune.config import build_config
    from deltatune.models.loading import load_processor
    from deltatune.tasks import create_task

    sf.write(str(tmp_path / "long.wav"), np.zeros(8000 * 3, np.float32), 8000)  # 3 s at 8 kHz
    sf.write(str(tmp_path / "short.wav"), np.zeros(800, np.float32), 8000)  # 0.1 s
    task = create_task(build_config({"task": "audio-classification", "data": {"max_audio_seconds": 1.2}}))
    ds = Dataset.from_list([{"audio": str(tmp_path / "long.wav"), "label": "a"}, {"audio": str(tmp_path / "short.wav"), "label": "b"}])
    task.fit(ds, "rows")
    task.set_tokenizer(load_processor(tiny_whisper_dir, "audio"))
    batch = task.collate(task.encode(ds, task.tokenizer, source="rows").rows)
    assert batch["input_features"].shape == (2, 16, 120)  # 16 mel bins x 100 frames per second x 1.2 s
    assert batch["labels"].tolist() == [0, 1]


def test_max_audio_seconds_beyond_the_models_clips_is_refused_before_the_run_folder(tiny_whisper_dir, tmp_path):
    rows = _clips(tmp_path, 4)
    train = _csv(tmp_path / "train.csv", rows)
    cfg = _config(tiny_whisper_dir, train, train, tmp_path / "run", max_audio_seconds=45)
    with pytest.raises(DeltatuneError, match=r"data.max_audio_seconds 45 exceeds the 30 s clips .*set data.max_audio_seconds to at most 30$"):
        deltatune.finetune(cfg, verbose=False)
    assert not (tmp_path / "run").exists()


def test_a_missing_audio_column_names_data_audio_column(tiny_whisper_dir, tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in _clips(tmp_path, 4)))
    with pytest.raises(DeltatuneError, match=r"no column 'audio'; .*\(set the column names in data.audio_column .*--task\)$"):
        deltatune.finetune(_config(tiny_whisper_dir, train, train, tmp_path / "run"), verbose=False)


def test_a_bad_audio_file_is_refused_or_skipped(tiny_whisper_dir, tmp_path, capsys):
    rows = _clips(tmp_path, 10)
    (tmp_path / "wav" / "empty.wav").write_bytes(b"")
    train = _csv(tmp_path / "train.csv", rows + [("wav/empty.wav", "low")])
    with pytest.raises(DeltatuneError, match=r"train.csv: row 11, column 'audio': .*empty.wav is empty \(0 bytes\)"):
        deltatune.finetune(_config(tiny_whisper_dir, train, train, tmp_path / "run"), verbose=False)
    cfg = _config(tiny_whisper_dir, train, train, tmp_path / "run", skip_bad_rows=True)
    cfg["train"]["max_steps"] = 1
    run = deltatune.finetune(cfg, verbose=False)
    assert "skipped 1 of 11 rows whose audio file cannot be read" in capsys.readouterr().err
    assert json.loads((run.path / "eval.json").read_text())


def test_a_bad_audio_file_in_a_carved_validation_split_names_the_files_row(tiny_whisper_dir, tmp_path):
    rows = _clips(tmp_path, 11)
    train = _csv(tmp_path / "train.csv", rows[:5] + [("wav/gone.wav", "low")] + rows[5:])  # row 6 of the file
    for seed in (0, 1):  # the shuffle puts row 6 in a different part and place each time
        cfg = _config(tiny_whisper_dir, train, None, tmp_path / "run", validation_split=0.3)
        cfg["seed"] = seed
        with pytest.raises(DeltatuneError, match=r"train.csv: row 6, column 'audio': .*gone.wav does not exist"):
            deltatune.finetune(cfg, verbose=False)


def test_a_class_folder_of_wavs_is_training_data(tiny_whisper_dir, tmp_path):
    root = tmp_path / "digits"
    for rel, label in _clips(tmp_path, 8):
        (root / label).mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).rename(root / label / Path(rel).name)
    cfg = _config(tiny_whisper_dir, root, None, tmp_path / "run", validation_split=0.25)
    cfg["train"]["max_steps"] = 1
    run = deltatune.finetune(cfg, verbose=False)
    assert deltatune.load(run.path).task.labels == ["high", "low"]


def test_a_class_folder_is_read_with_the_runs_own_path_column(tiny_whisper_dir, tmp_path):
    rows = _clips(tmp_path, 8)
    train = tmp_path / "train.csv"
    train.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows))
    cfg = _config(tiny_whisper_dir, train, train, tmp_path / "run", audio_column="path")
    cfg["train"]["max_steps"] = 1
    run = deltatune.finetune(cfg, verbose=False)
    root = tmp_path / "new"
    for rel, label in rows[:4]:
        (root / label).mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).rename(root / label / Path(rel).name)
    predictions = predict(run.path, input=str(root))  # class folders give an 'audio' column: read as the run's 'path'
    assert len(predictions) == 4 and all(p["label"] in ("low", "high") and Path(p["path"]).is_file() for p in predictions)
    assert set(deltatune.evaluate(run.path, str(root))) >= {"accuracy"}
