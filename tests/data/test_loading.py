import json

import pandas as pd
import pytest

from deltatune.data import load_table, train_validation_split
from deltatune.errors import DeltatuneError

ROWS = [{"text": "a, with comma", "label": "x"}, {"text": 'say "hi"', "label": "y"}, {"text": "plain", "label": "x"}]


def test_reads_every_format(tmp_path):
    pd.DataFrame(ROWS).to_csv(tmp_path / "d.csv", index=False)
    (tmp_path / "d.tsv").write_text("text\tlabel\n" + "".join(f"{r['text']}\t{r['label']}\n" for r in ROWS))
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "d.json").write_text(json.dumps(ROWS))
    pd.DataFrame(ROWS).to_parquet(tmp_path / "d.parquet")
    for ext in ("csv", "tsv", "jsonl", "json", "parquet"):
        ds = load_table(str(tmp_path / f"d.{ext}"))
        assert ds.column_names == ["text", "label"], ext
        assert ds["text"] == [r["text"] for r in ROWS], ext


def test_tsv_keeps_quotes_literally(tmp_path):
    p = tmp_path / "q.tsv"
    p.write_text('sentence\tlabel\n"quoted start and an unmatched " quote\t1\n')
    assert load_table(str(p))["sentence"] == ['"quoted start and an unmatched " quote']


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DeltatuneError, match="not found: .*nope.csv"):
        load_table(str(tmp_path / "nope.csv"))


def test_invalid_utf8_names_line(tmp_path):
    p = tmp_path / "latin.csv"
    p.write_bytes(b"text,label\nok,1\ncaf\xe9,0\n")
    with pytest.raises(DeltatuneError, match=r"latin.csv: line 3 is not valid UTF-8"):
        load_table(str(p))


def test_empty_and_header_only_files(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DeltatuneError, match="empty"):
        load_table(str(tmp_path / "empty.csv"))
    (tmp_path / "header.csv").write_text("text,label\n")
    with pytest.raises(DeltatuneError, match="no data rows"):
        load_table(str(tmp_path / "header.csv"))


def test_bad_json_line_is_named(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(DeltatuneError, match="line 2"):
        load_table(str(p))


def test_unsupported_extension(tmp_path):
    p = tmp_path / "d.xlsx"
    p.write_text("x")
    with pytest.raises(DeltatuneError, match="unsupported file type"):
        load_table(str(p))


def test_offline_hub_name_is_refused(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DeltatuneError, match="offline"):
        load_table("glue")


def test_stratified_split_keeps_proportions_and_is_seeded(tmp_path):
    import datasets

    labels = ["a"] * 80 + ["b"] * 20
    ds = datasets.Dataset.from_dict({"text": [str(i) for i in range(100)], "label": labels})
    tr, va = train_validation_split(ds, 0.2, seed=1, stratify_by=labels)
    assert len(tr) == 80 and len(va) == 20
    assert va["label"].count("b") == 4  # 20% of each class
    assert set(tr["text"]).isdisjoint(va["text"])
    tr2, va2 = train_validation_split(ds, 0.2, seed=1, stratify_by=labels)
    assert va2["text"] == va["text"]
    _, va3 = train_validation_split(ds, 0.2, seed=2, stratify_by=labels)
    assert va3["text"] != va["text"]


def test_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    p = tmp_path / "bom.csv"
    p.write_bytes("text,label\ngood,1\n".encode("utf-8-sig"))
    assert load_table(str(p)).column_names == ["text", "label"]


def test_a_json_column_mixing_lists_and_single_values_is_named(tmp_path):
    p = tmp_path / "docs.jsonl"
    p.write_text('{"source": ["One.", "Two."], "target": "x"}\n{"source": "Three. Four.", "target": "y"}\n')
    with pytest.raises(DeltatuneError, match=r"column 'source' holds a list in row 1 but text in row 2; .*a list of sentences"):
        load_table(str(p))


@pytest.mark.parametrize(("second", "message"), [
    ('{"chosen": 4}', "column 'chosen' holds text in row 1 but a number in row 2; .*quote numbers as text"),
    ('{"chosen": {"role": "assistant"}}', "column 'chosen' holds text in row 1 but an object in row 2"),
    ('{"chosen": true}', "column 'chosen' holds text in row 1 but true/false in row 2"),
])
def test_a_json_column_mixing_kinds_of_values_is_named_with_its_row(tmp_path, second, message):
    p = tmp_path / "pairs.jsonl"
    p.write_text('{"chosen": "It is 4."}\n' + second + "\n" + '{"chosen": null}\n')
    with pytest.raises(DeltatuneError, match=message):
        load_table(str(p))
    p.write_text('{"n": 1}\n{"n": 2.5}\n{"n": null}\n')  # ints and floats are one kind; nulls are allowed
    assert load_table(str(p))["n"] == [1.0, 2.5, None]


def test_an_empty_conll_file_asks_for_a_sentence(tmp_path):
    p = tmp_path / "train.conll"
    p.write_text("")
    with pytest.raises(DeltatuneError, match="needs at least one sentence"):
        load_table(str(p))


def test_conll_and_squad_files_become_rows(tmp_path):
    conll = tmp_path / "eng.train"
    conll.write_text("-DOCSTART- -X- O O\n\nJohn NNP B-NP B-PER\nruns VBZ B-VP O\n\nParis NNP B-NP B-LOC\n")
    ds = load_table(str(conll))
    assert ds["tokens"] == [["John", "runs"], ["Paris"]] and ds["tags"] == [["B-PER", "O"], ["B-LOC"]]
    squad = tmp_path / "squad.json"
    squad.write_text(
        '{"data": [{"title": "T", "paragraphs": [{"context": "Paris is big.", "qas": ['
        '{"id": "q1", "question": "What is big?", "answers": [{"text": "Paris", "answer_start": 0}]},'
        '{"id": "q2", "question": "What is small?", "answers": [], "is_impossible": true}]}]}]}'
    )
    ds = load_table(str(squad))
    assert ds["id"] == ["q1", "q2"] and ds[0]["answers"] == {"text": ["Paris"], "answer_start": [0]}
    assert ds[1]["answers"]["text"] == []


CONLL_LINES = """EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

BRUSSELS NNP B-NP B-LOC
1996-08-22 CD I-NP O
"""


def test_conll_content_in_a_txt_file_is_read_as_conll(tmp_path):
    p = tmp_path / "ner_train.txt"
    p.write_text("-DOCSTART- -X- -X- O\n\n" + CONLL_LINES)
    ds = load_table(str(p))
    assert ds.column_names == ["tokens", "tags"] and len(ds) == 3
    assert ds[0] == {"tokens": ["EU", "rejects", "German", "call"], "tags": ["B-ORG", "O", "B-MISC", "O"]}


def test_prose_txt_stays_paragraphs(tmp_path):
    p = tmp_path / "story.txt"
    p.write_text("It was a dark night.\nThe wind blew.\n\nThen it was O\n")
    assert load_table(str(p)).column_names == ["text"]


def test_token_classification_trains_from_a_conll_txt(tmp_path):
    from deltatune.config import build_config
    from deltatune.tasks import create_task

    p = tmp_path / "ner.txt"
    p.write_text(CONLL_LINES)
    task = create_task(build_config({"task": "token-classification"}))
    task.fit(load_table(str(p)), str(p))
    assert "B-PER" in task.labels and "B-LOC" in task.labels


def test_token_task_on_a_plain_txt_says_how_to_name_a_token_file(tmp_path):
    from deltatune.config import build_config
    from deltatune.tasks import create_task

    p = tmp_path / "ner.txt"
    p.write_text("EU B-ORG\nrejects\n")  # a line without a tag: not CoNLL, so read as text
    task = create_task(build_config({"task": "token-classification"}))
    with pytest.raises(DeltatuneError) as e:
        task.fit(load_table(str(p)), str(p))
    msg = str(e.value)
    assert "ner.txt: no column 'tokens'" in msg and "read as plain text" in msg and "CoNLL" in msg and "--text-column" not in msg


# ---- gzip-compressed data files ----


def _gz(path, data: bytes):
    import gzip

    path.write_bytes(gzip.compress(data))
    return path


def test_gzip_files_are_read_as_their_inner_format(tmp_path):
    from deltatune.data.paths import header_columns

    jsonl = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    tsv = ("text\tlabel\n" + "".join(f"{r['text']}\t{r['label']}\n" for r in ROWS)).encode()
    files = [
        _gz(tmp_path / "d.jsonl.gz", jsonl),
        _gz(tmp_path / "d.JSON.GZ", json.dumps(ROWS).encode()),
        _gz(tmp_path / "d.csv.gz", pd.DataFrame(ROWS).to_csv(index=False).encode()),
        _gz(tmp_path / "d.tsv.gz", tsv),
    ]
    for p in files:
        ds = load_table(str(p))
        assert ds.column_names == ["text", "label"] and ds.to_list() == ROWS, p.name
    assert header_columns(files[0]) == header_columns(files[2]) == ["text", "label"]
    assert header_columns(files[1]) is None  # a JSON array: not cheap


def test_gzip_content_checks_name_the_compressed_file(tmp_path):
    from deltatune.data.paths import looks_like_path

    p = _gz(tmp_path / "empty.jsonl.gz", b"")
    with pytest.raises(DeltatuneError, match=r"empty\.jsonl\.gz is empty; it needs at least one row"):
        load_table(str(p))
    p = _gz(tmp_path / "bad.tsv.gz", b"text\tlabel\ncaf\xe9\tx\n")
    with pytest.raises(DeltatuneError) as e:
        load_table(str(p))
    assert str(e.value).startswith(f"{p}: line 2 is not valid UTF-8")
    p = _gz(tmp_path / "bad.jsonl.gz", b'{"a": 1}\n{"a": \n')
    with pytest.raises(DeltatuneError, match=r"bad\.jsonl\.gz: line 2 is not valid JSON"):
        load_table(str(p))
    with pytest.raises(DeltatuneError, match=r"unsupported file type"):
        load_table(str(_gz(tmp_path / "d.xlsx.gz", b"a\n")))
    assert looks_like_path("train.jsonl.gz") and not looks_like_path("org/name")
    with pytest.raises(DeltatuneError, match="data file not found"):
        load_table("missing.jsonl.gz")


def test_a_corrupt_gzip_file_is_one_line_naming_it(tmp_path):
    import gzip

    for name, data in [("junk.jsonl.gz", b"not gzip at all"), ("cut.jsonl.gz", gzip.compress(b'{"a": 1}\n' * 50)[:-10])]:
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(DeltatuneError) as e:
            load_table(str(p))
        msg = str(e.value)
        assert msg.startswith(f"{p}: is not a valid gzip file") and "\n" not in msg and "re-compress" in msg


def test_the_real_hh_rlhf_gzip_file_loads():
    from pathlib import Path

    p = Path("/work/shared/data/preference/hh_rlhf_helpful_base/test.jsonl.gz")
    if not p.exists():
        pytest.skip("HH-RLHF helpful-base not staged")
    ds = load_table(str(p))
    assert ds.column_names == ["chosen", "rejected"] and len(ds) == 2354
