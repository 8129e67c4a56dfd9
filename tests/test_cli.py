"""Bad input: one line on stderr naming file/row/column, exit status 2, nothing written."""

import subprocess
import sys

import pytest

from deltatune.cli import main
from tests.helpers import make_sentiment_rows, write_csv


@pytest.fixture
def base(tmp_path, tiny_model_dir, sentiment_csv):
    train, val = sentiment_csv
    out = tmp_path / "run"
    args = ["train", "--model", tiny_model_dir, "--train", str(train), "--validation", str(val),
            "--output-dir", str(out), "--quiet", "--max-seq-length", "32", "--epochs", "1"]
    return args, out


def _fails(capsys, argv, *needles):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _replace(args, flag, value):
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


def test_missing_train_file(base, capsys, tmp_path):
    args, out = base
    _fails(capsys, _replace(args, "--train", str(tmp_path / "missing.csv")), "missing.csv", "not found")
    assert not out.exists()


def test_unknown_column_lists_existing(base, capsys):
    args, out = base
    _fails(capsys, args + ["--text-column", "review"], "no column 'review'", "'text'", "'label'")
    assert not out.exists()


def test_all_nan_text(base, capsys, tmp_path):
    args, out = base
    bad = tmp_path / "nan.csv"
    bad.write_text("text,label\n,pos\n,neg\n,pos\n")
    _fails(capsys, _replace(args, "--train", str(bad)), "nan.csv", "empty in every row")
    assert not out.exists()


def test_empty_text_row(base, capsys, tmp_path):
    args, out = base
    rows = make_sentiment_rows(10)
    rows[4]["text"] = "   "
    bad = write_csv(tmp_path / "gap.csv", rows)
    _fails(capsys, _replace(args, "--train", str(bad)), "gap.csv", "row 5")
    assert not out.exists()


def test_unseen_validation_label(base, capsys, tmp_path):
    args, out = base
    rows = make_sentiment_rows(10)
    rows[2]["label"] = "neutral"
    bad = write_csv(tmp_path / "val.csv", rows)
    _fails(capsys, _replace(args, "--validation", str(bad)), "val.csv", "row 3", "'neutral'")
    assert not out.exists()


def test_undecodable_bytes(base, capsys, tmp_path):
    args, out = base
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("text,label\ngood film,pos\nna\xefve plot,neg\n".encode("latin-1"))
    _fails(capsys, _replace(args, "--train", str(bad)), "latin1.csv", "line 3", "UTF-8")
    assert not out.exists()


def test_model_path_that_is_not_a_model(base, capsys, tmp_path):
    args, out = base
    (tmp_path / "notamodel").mkdir()
    _fails(capsys, _replace(args, "--model", str(tmp_path / "notamodel")), "notamodel", "not a model folder")
    assert not out.exists()


def test_empty_file(base, capsys, tmp_path):
    args, out = base
    (tmp_path / "empty.csv").write_text("")
    _fails(capsys, _replace(args, "--train", str(tmp_path / "empty.csv")), "empty.csv", "empty")


def test_bad_config_key(base, capsys):
    args, out = base
    _fails(capsys, args + ["train.lerning_rate=1"], "train.lerning_rate", "unknown key")


def test_existing_run_is_not_overwritten(base, capsys):
    args, out = base
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    _fails(capsys, args, "already exists", "--overwrite")
    assert (out / "precious.txt").read_text() == "keep me"


def test_evaluate_and_predict_on_a_non_run(capsys, tmp_path):
    _fails(capsys, ["evaluate", str(tmp_path), "--data", "x.csv"], "not a deltatune run directory")
    _fails(capsys, ["predict", str(tmp_path), "--text", "hi"], "not a deltatune run directory")


def test_console_script_exit_status(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "deltatune", "train", "--train", str(tmp_path / "nope.csv"), "--output-dir", str(tmp_path / "o")],
        capture_output=True, text=True,
    )
    assert r.returncode == 2 and "nope.csv" in r.stderr and "Traceback" not in r.stderr


def test_overwrite_refuses_a_folder_that_is_not_a_run(base, capsys, tmp_path):
    args, out = base
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    _fails(capsys, args + ["--overwrite"], "not a deltatune run directory")
    assert (out / "notes.txt").read_text() == "mine"


def test_na_like_text_and_labels_are_data(base, capsys, tmp_path):
    from deltatune.data import load_table

    p = tmp_path / "na.csv"
    p.write_text("text,label\nNA,None\nnull,NA\n")
    ds = load_table(str(p))
    assert ds["text"] == ["NA", "null"] and ds["label"] == ["None", "NA"]


def test_numeric_looking_column_names_stay_strings():
    from deltatune.cli import _overrides, build_parser

    args = build_parser().parse_args(["train", "--text-column", "0", "--label-column", "2024"])
    from deltatune.config import build_config

    cfg = build_config({}, _overrides(args))
    assert cfg.data.text_column == "0" and cfg.data.label_column == "2024"
