"""Vocabulary coverage and truncation checks (deltatune.data.coverage) in check, train and per task."""

import csv

import datasets
import pytest

from deltatune.api import check, finetune
from deltatune.cli import main
from deltatune.config import build_config
from deltatune.data.coverage import UNK_WARN_SHARE, check_room, measure_coverage
from deltatune.errors import DeltatuneError
from deltatune.tasks import create_task
from tests.conftest import SST2
from tests.helpers import make_sentiment_rows, tiny_config, write_csv

# ChnSentiCorp-like hotel reviews (written for this test), label 1 positive / 0 negative
ZH_POS = [
    "这家酒店的服务很好，房间干净",
    "位置方便，早餐丰富，下次还会再来",
    "前台服务热情，性价比很高",
    "房间宽敞明亮，床很舒服",
    "环境安静，交通便利，推荐入住",
    "设施齐全，工作人员非常友好",
]
ZH_NEG = [
    "房间又小又脏，服务态度很差",
    "隔音太差，一晚上都没睡好",
    "早餐难吃，价格还贵，不推荐",
    "卫生间有异味，空调也坏了",
    "前台态度冷淡，办理入住等了很久",
    "床单不干净，窗户关不上",
]


@pytest.fixture
def chinese_csv(tmp_path):
    """48 ChnSentiCorp-like rows (text, label)."""
    p = tmp_path / "zh_train.csv"
    with p.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(48):
            w.writerow([ZH_POS[i % 6], 1] if i % 2 else [ZH_NEG[i % 6], 0])
    return p


def _minilm_tokenizer():
    from transformers import AutoTokenizer

    from deltatune.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("minilm"))


def test_chinese_on_minilm_warns_of_unk_in_check(chinese_csv):
    report = check({"model": {"name_or_path": "minilm"}, "data": {"train_file": str(chinese_csv)}})
    warnings = [ln for ln in report.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1, report
    w = warnings[0]
    assert "[UNK]" in w and "zh_train.csv" in w and "'minilm'" in w and "multilingual" in w and "--model" in w
    share = int(w.split("warning: ", 1)[1].split("%", 1)[0])
    assert share > 50  # most Chinese characters are not in the English WordPiece vocabulary


def test_english_sst2_on_minilm_has_no_warning_even_strict():
    dev = SST2 / "dev.tsv"
    if not dev.is_file():
        pytest.skip("SST-2 not available")
    report = check({"model": {"name_or_path": "minilm"}, "data": {"train_file": str(dev), "text_column": "sentence"}}, strict=True)
    assert "warning:" not in report


def test_strict_check_exits_2_with_one_line(chinese_csv, capsys):
    code = main(["check", "--train", str(chinese_csv), "--model", "minilm", "--strict"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: ") and "[UNK]" in err and "--strict" in err


def test_train_prints_the_warning_and_strict_train_writes_nothing(chinese_csv, tiny_model_dir, tmp_path, capsys):
    cfg = tiny_config(tiny_model_dir, chinese_csv, None, tmp_path / "run", max_steps=1)
    with pytest.raises(DeltatuneError, match=r"are \[UNK\]"):
        finetune(cfg, strict=True, verbose=False)
    assert not (tmp_path / "run").exists()
    finetune(cfg, verbose=False)
    err = capsys.readouterr().err
    assert "warning: " in err and "[UNK]" in err and "zh_train.csv" in err


def test_truncation_warning_names_max_seq_length(tmp_path):
    train = write_csv(tmp_path / "long.csv", [{"text": "word " * 40, "label": i % 2} for i in range(20)])
    report = check({"model": {"name_or_path": "minilm"}, "data": {"train_file": str(train), "max_seq_length": 16}})
    assert "warning: 100% of the examples of" in report and "data.max_seq_length=16" in report
    with pytest.raises(DeltatuneError, match="data.max_seq_length=16"):
        check({"model": {"name_or_path": "minilm"}, "data": {"train_file": str(train), "max_seq_length": 16}}, strict=True)
    # windowed/packed tasks lose nothing: no truncation warning for masked-lm
    report = check({"task": "masked-lm", "model": {"name_or_path": "minilm"}, "data": {"train_file": str(train), "max_seq_length": 16}})
    assert "warning:" not in report


def test_max_seq_length_without_room_for_a_pair_is_refused(tmp_path):
    rows = [{"a": "good film", "b": "fine movie", "label": i % 2} for i in range(6)]
    train = write_csv(tmp_path / "pairs.csv", rows)
    cfg = {"model": {"name_or_path": "minilm"}, "data": {"train_file": str(train), "text_column": "a", "text_pair_column": "b", "max_seq_length": 4}}
    with pytest.raises(DeltatuneError, match="data.max_seq_length 4 leaves no room.*at least 5"):
        check(cfg)
    check_room(_minilm_tokenizer(), 3)  # [CLS] x [SEP] fits


def test_measure_counts_unk_and_truncation_on_a_pair():
    tok = _minilm_tokenizer()
    cov = measure_coverage([("good", "酒店")], tok, max_length=5)
    assert cov.tokens == 3 and cov.unknown == 2 and cov.unknown_share > UNK_WARN_SHARE
    assert cov.truncated == 1  # [CLS] good [SEP] x x [SEP] = 6 > 5
    assert measure_coverage([("good", "film")], tok, max_length=5).truncated == 0


TASK_ROWS = {
    "text-classification": (
        {"data": {"text_pair_column": "b"}}, {"text": ["这家酒店", "房间"], "b": ["很好", "很差"], "label": ["1", "0"]},
        [("这家酒店", "很好"), ("房间", "很差")],
    ),
    "token-classification": ({}, {"tokens": [["北京", "很", "大"]], "tags": [["B-LOC", "O", "O"]]}, [("北京 很 大",)]),
    "question-answering": (
        {}, {"question": ["哪里?"], "context": ["在北京"], "answers": [{"text": ["北京"], "answer_start": [1]}]}, [("哪里?", "在北京")],
    ),
    "masked-lm": ({}, {"text": ["这家酒店"]}, [("这家酒店",)]),
    "extractive-summarization": (
        {}, {"text": [["房间很干净。", "早餐难吃。"], ["酒店很好。"]], "target": ["房间很干净。", "酒店很好。"]},
        [("房间很干净。",), ("早餐难吃。",), ("酒店很好。",)],
    ),
    "instruction": ({}, {"instruction": ["翻译"], "input": [""], "output": ["好"]}, None),
    "summarization": ({}, {"source": ["翻译很长的文章"], "target": ["好"]}, None),
}


@pytest.mark.parametrize("name", list(TASK_ROWS))
def test_every_task_names_its_input_texts(name, tmp_path):
    extra, columns, expected = TASK_ROWS[name]
    cfg = build_config({"task": name, "model": {"name_or_path": "minilm"}, **extra})
    task = create_task(cfg)
    ds = datasets.Dataset.from_dict(columns)
    task.fit(ds, "t.jsonl")
    texts = task.input_texts(ds, "t.jsonl")
    if expected is None:  # decoder: the conversation's contents
        assert len(texts) == 1 and "翻译" in texts[0][0] and "好" in texts[0][0]  # prompt and answer
    else:
        assert texts == expected
    cov = measure_coverage(texts, _minilm_tokenizer(), None)
    assert cov.unknown_share > UNK_WARN_SHARE  # Chinese on MiniLM, whatever the task


def test_english_rows_have_no_unknown_tokens():
    rows = make_sentiment_rows(30)
    cov = measure_coverage([(r["text"],) for r in rows], _minilm_tokenizer(), 128)
    assert cov.unknown == 0 and cov.truncated == 0 and cov.tokens > 100


class _ByteFallbackTokenizer:
    """Stands for a SentencePiece tokenizer with byte fallback (Llama): 256 byte tokens <0x00>..<0xFF>."""

    unk_token_id = 0
    unk_token = "<unk>"

    def get_vocab(self):
        return {"<unk>": 0, "a": 1, **{f"<0x{b:02X}>": 2 + b for b in range(256)}}


def test_byte_fallback_tokens_count_as_unknown():
    from deltatune.data.coverage import unknown_token_ids

    ids, name = unknown_token_ids(_ByteFallbackTokenizer())
    assert ids == {0} | set(range(2, 258)) and "byte-fallback" in name
    ids, name = unknown_token_ids(_minilm_tokenizer())
    assert name == "[UNK]" and len(ids) == 1
