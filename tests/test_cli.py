"""Bad input: one line on stderr naming file/row/column, exit status 2, nothing written."""

import subprocess
import sys
from pathlib import Path

import pytest

from deltatune.cli import main
from tests.helpers import make_sentiment_rows, run_cli_fresh, write_csv


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


# --- overrides anywhere on the line ------------------------------------------------------------


@pytest.fixture
def base_yaml(tmp_path, tiny_model_dir, sentiment_csv):
    train, _ = sentiment_csv
    p = tmp_path / "base.yaml"
    p.write_text(f"model:\n  name_or_path: {tiny_model_dir}\ndata:\n  train_file: {train}\n  max_seq_length: 32\n")
    return p


def _resolved(argv):
    from deltatune.cli import _config_source, _overrides, parse_args
    from deltatune.config import build_config

    args = parse_args(argv)
    return build_config(_config_source(args), _overrides(args))


def test_overrides_after_flags_with_a_config_file(base_yaml, tmp_path):
    cfg = _resolved(["train", str(base_yaml), "--output-dir", str(tmp_path / "x"), "--max-steps", "3", "train.save_steps=1"])
    assert cfg.train.save_steps == 1 and cfg.train.max_steps == 3 and cfg.output_dir == str(tmp_path / "x")
    cfg = _resolved(["check", str(base_yaml), "--max-seq-length", "64", "task=instruction", "data.format=alpaca", "seed=5"])
    assert cfg.data.format == "alpaca" and cfg.data.max_seq_length == 64 and cfg.seed == 5
    # in command-line order, the config file anywhere among them
    cfg = _resolved(["train", "seed=1", "--quiet", str(base_yaml), "seed=2", "--max-steps", "3", "train.save_steps=4"])
    assert cfg.seed == 2 and cfg.train.save_steps == 4 and cfg.data.max_seq_length == 32


def test_check_takes_overrides_after_flags(base_yaml, capsys):
    assert main(["check", str(base_yaml), "--examples", "0", "data.max_train_samples=5"]) == 0
    assert "5 encoded training examples" in capsys.readouterr().out


def test_auto_takes_overrides_after_flags(base_yaml, monkeypatch):
    from types import SimpleNamespace

    import deltatune.api

    seen = {}

    def fake_auto(config, overrides, **kw):
        seen.update(config=config, overrides=overrides)
        return SimpleNamespace(best_path=None)

    monkeypatch.setattr(deltatune.api, "auto", fake_auto)  # the CLI calls the API
    assert main(["auto", str(base_yaml), "--n-trials", "1", "train.save_steps=1", "--quiet"]) == 1
    assert seen == {"config": str(base_yaml), "overrides": ["train.save_steps=1"]}
    # a leading override is kept, not dropped, and the config file may follow flags
    assert main(["auto", "seed=3", "--n-trials", "1", str(base_yaml)]) == 1
    assert seen == {"config": str(base_yaml), "overrides": ["seed=3"]}


def test_leftover_that_is_not_an_override_is_still_an_argparse_error(base_yaml, capsys):
    for extra in (["stray"], ["--bogus"]):
        with pytest.raises(SystemExit) as e:
            main(["train", str(base_yaml), "--max-steps", "3", *extra])
        assert e.value.code == 2 and f"unrecognized arguments: {extra[0]}" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # commands without config overrides take none
        main(["predict", "runs/x", "--text", "hi", "a=1"])


def test_prompt_template_override_with_braces_and_colon(base_yaml):
    cfg = _resolved(["check", str(base_yaml), "--task", "translation", "data.prompt_template=Translate: {en}"])
    assert cfg.data.prompt_template == "Translate: {en}"


# --- resume, check --validation ------------------------------------------------------------------


def test_resume_a_run_directory_that_does_not_exist(capsys, tmp_path):
    _fails(capsys, ["train", "--resume", str(tmp_path / "nope")], "cannot resume", "nope does not exist", "run directory")


def test_check_reads_the_validation_file(capsys, tiny_model_dir, sentiment_csv, tmp_path):
    train, val = sentiment_csv
    args = ["check", "--model", tiny_model_dir, "--train", str(train), "--max-seq-length", "32", "--examples", "1"]
    rows = make_sentiment_rows(10)
    rows[2]["label"] = "neutral"
    bad = write_csv(tmp_path / "badval.csv", rows)
    _fails(capsys, args + ["--validation", str(bad)], "badval.csv", "row 3", "'neutral'")
    _fails(capsys, args + ["--validation", str(val), "--test", str(bad)], "badval.csv", "row 3", "'neutral'")
    assert main(args + ["--validation", str(val), "--test", str(val)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("text-classification: 96 encoded training examples from")
    assert f"=== validation: 32 encoded examples from {val}" in out and f"=== test: 32 encoded examples from {val}" in out


# --- predict / evaluate --output -----------------------------------------------------------------


@pytest.fixture
def tiny_run(base, tmp_path):
    args, out = base
    assert main(args + ["--max-steps", "2", "--batch-size", "32"]) == 0
    return out


def test_predict_and_evaluate_refuse_to_overwrite(tiny_run, sentiment_csv, capsys, tmp_path):
    _, val = sentiment_csv
    val_text = val.read_text()
    pred = tmp_path / "pred.csv"
    pred.write_text("mine")
    metrics = tmp_path / "metrics.json"
    metrics.write_text("mine")
    _fails(capsys, ["predict", str(tiny_run), "--input", str(val), "--output", str(pred)], "pred.csv", "already exists", "--overwrite")
    _fails(capsys, ["evaluate", str(tiny_run), "--data", str(val), "--output", str(metrics)], "metrics.json", "already exists", "--overwrite")
    assert pred.read_text() == "mine" and metrics.read_text() == "mine"
    # the input is never the output, --overwrite or not
    for extra in ([], ["--overwrite"]):
        _fails(capsys, ["predict", str(tiny_run), "--input", str(val), "--output", str(val), *extra], "validation.csv", "--input")
        _fails(capsys, ["evaluate", str(tiny_run), "--data", str(val), "--output", str(val), *extra], "validation.csv", "--data")
    assert val.read_text() == val_text
    # nor one of the run's own files, --overwrite or not
    config_text = (tiny_run / "config.yaml").read_text()
    for extra in ([], ["--overwrite"]):
        _fails(capsys, ["evaluate", str(tiny_run), "--data", str(val), "--output", str(tiny_run / "config.yaml"), *extra],
               "config.yaml", "a file of the run being read")
        _fails(capsys, ["predict", str(tiny_run), "--input", str(val), "--output", str(tiny_run / "model" / "p.csv"), *extra],
               "model", "a file of the run being read")
    assert (tiny_run / "config.yaml").read_text() == config_text
    # with --overwrite: replaced, atomically (no temporary file left)
    assert main(["predict", str(tiny_run), "--input", str(val), "--output", str(pred), "--overwrite"]) == 0
    assert main(["evaluate", str(tiny_run), "--data", str(val), "--output", str(metrics), "--overwrite", "--json"]) == 0
    assert pred.read_text().startswith("text,label,predicted_label") and "accuracy" in metrics.read_text()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_train_help_lists_tasks_and_delta_methods(capsys, monkeypatch):
    from deltatune.config import TASKS

    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps help at the terminal width
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    task_line = next(ln for ln in out.splitlines() if ln.strip().startswith("--task"))
    delta_line = next(ln for ln in out.splitlines() if ln.strip().startswith("--delta"))
    assert all(t in task_line for t in TASKS), task_line
    assert all(m in delta_line for m in ("full", "freeze", "lora", "dora", "ia3", "prefix")), delta_line
    assert "--strict" in out


def test_unknown_task_value_is_a_usage_error_listing_the_choices(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--task", "text-clasification"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "invalid choice" in err and "'text-classification'" in err


@pytest.mark.parametrize(
    "argv, guess",
    [
        (["train", "--lerning-rate", "1e-4"], "--learning-rate"),
        (["train", "--batchsize=8"], "--batch-size"),
        (["check", "--max_seq_length", "64"], "--max-seq-length"),
        (["predict", "run", "--text", "hi", "--batchsize", "3"], "--batch-size"),
        (["train", "--lr", "1e-3"], "--learning-rate"),  # HF Trainer / TRL names
        (["train", "--num_train_epochs", "3"], "--epochs"),
    ],
)
def test_unknown_flag_gets_did_you_mean(capsys, argv, guess):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"did you mean {guess}?" in err, err


def test_unknown_config_key_gets_did_you_mean(base, capsys):
    args, out = base
    _fails(capsys, args + ["train.lerning_rate=1e-4"], "unknown key 'train.lerning_rate'", "did you mean train.learning_rate?")
    assert not out.exists()


def test_name_that_is_a_path_is_refused(base, capsys, tmp_path, monkeypatch):
    args, out = base
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    i = args.index("--output-dir")
    no_out = args[:i] + args[i + 2:]
    _fails(capsys, no_out + ["--name", "../../x"], "'name'", "../../x", "output_dir")
    assert not (tmp_path / "x").exists() and not (work / "runs").exists()


@pytest.mark.parametrize("flag, value, key", [("--learning-rate", "inf", "train.learning_rate"), ("--epochs", "nan", "train.num_train_epochs")])
def test_infinite_numbers_are_refused_before_training(base, capsys, flag, value, key):
    args, out = base
    _fails(capsys, args + [flag, value], f"'{key}'", "finite")
    assert not out.exists()


def test_eval_strategy_no_from_the_command_line_and_a_file(tmp_path):
    from deltatune.cli import _config_source, _overrides, parse_args
    from deltatune.config import build_config

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("eval:\n  eval_strategy: no\n")
    args = parse_args(["train", str(cfg_file), "train.mixed_precision=no"])
    cfg = build_config(_config_source(args), _overrides(args))
    assert cfg.eval.eval_strategy == "no" and cfg.train.mixed_precision == "no"
    args = parse_args(["train", "eval.eval_strategy=no"])
    assert build_config(_config_source(args), _overrides(args)).eval.eval_strategy == "no"


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--train", "x.csv", "train.learning_rate=inf"],  # config error
        ["train", "--train", "x.csv", "--learnin-rate", "3"],  # usage error
        ["check", "--train", "x.csv", "train.no_such_key=1"],
        ["predict", "runs/x", "--text", "a", "--batch-size", "0"],
        ["predict", "runs/x", "--text", "a"],  # no such run
        ["train", "--resume", "runs/x"],  # nothing to resume
        ["evaluate", "copied", "--data", "d.csv"],  # a copied config, never trained
        ["predict", "run/config.yaml", "--text", "a"],  # a file, not the run folder
        ["evaluate", "run", "--data", "missing.csv"],
        ["predict", "run", "--input", "missing.csv"],
        ["predict", "run", "--input", "bad.csv"],  # no 'text' column
        ["evaluate", "run", "--data", "bad.csv"],
        ["evaluate", "run", "--data", "d.csv", "--output", "run/config.yaml", "--overwrite"],  # the run's own file
        ["predict", "run", "--input", "d.csv", "--output", "d.csv", "--overwrite"],
    ],
)
def test_usage_and_config_errors_come_before_torch_is_imported(argv, tmp_path):
    (tmp_path / "run" / "model").mkdir(parents=True)  # looks like a finished run: checks pass up to the data
    (tmp_path / "run" / "config.yaml").write_text("task: text-classification\n")
    (tmp_path / "copied").mkdir()
    (tmp_path / "copied" / "config.yaml").write_text("task: text-classification\n")
    (tmp_path / "d.csv").write_text("text,label\na,b\n")
    (tmp_path / "bad.csv").write_text("review,label\na,b\n")
    out = run_cli_fresh(argv, tmp_path)
    assert out.stdout.split() == ["no", "torch", "2"], out.stdout + out.stderr
    assert "error" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["predict", "text", "--file", "a.png"], "error: --file: text is a text-classification run, which reads texts; give them with --text or --input"),
        (["predict", "vlm", "--file", "a.png"], "error: --file: vlm is a vision-language run, which reads conversations"),
        (["predict", "img", "--file", "gone.png"], "error: --file gone.png: "),
        (["predict", "img", "--file", "a.png", "--file", "a.wav"], "a.wav is not an image Pillow can read; the image-classification run img reads image files"),
        (["predict", "wav", "--file", "a.png"], "a.png is not an audio file soundfile can read"),
        (["predict", "wav", "--text", "hello"], "error: --text: the audio-classification run wav reads audio files, not texts; give them with --file"),
        (["export", "vlm", "--out", "vlm-onnx", "--format", "onnx"], "--format onnx supports the encoder tasks"),
        (["train", "--train", "d.csv", "--task", "speech-recognition", "data.audio_column=text"], "reads column 'text' for two different inputs"),
        (["train", "--train", "d.csv", "distributed.strategy=fsdp"], "error: distributed.strategy fsdp shards the model over several processes, and this launch has 1"),
        (["train", "--train", "d.csv", "distributed.strategy=deepspeed", "distributed.offload_param=cpu"], "distributed.offload_param applies to zero_stage 3"),
        (["train", "--train", "d.csv", "data.augmentation_alpha=0.3"], "data.augmentation_alpha is set but data.augmentation is 'none'"),
        (["train", "--train", "d.csv", "distill.temperature=4"], "distill.temperature is set but distill.teacher is not"),
        (["train", "--train", "d.csv", "distributed.strategy=deepspeed", "distributed.zero_stage=true"],
         "'distributed.zero_stage': Input should be 1, 2 or 3 (got 'true')"),
        (["train", "--train", "d.csv", "distributed.zero_stage=3"],
         "distributed.zero_stage is set but distributed.strategy is ddp, and it applies only to distributed.strategy: deepspeed"),
        (["check", "--train", "d.csv", "distributed.strategy=ddp", "distributed.offload_optimizer=cpu"],
         "distributed.offload_optimizer is set but distributed.strategy is ddp"),
    ],
)
def test_predict_files_strategy_and_unused_settings_are_refused_before_torch(argv, needle, tmp_path):
    import numpy as np
    import soundfile as sf
    from PIL import Image

    for name, task in (("text", "text-classification"), ("img", "image-classification"), ("wav", "audio-classification"),
                       ("vlm", "vision-language")):
        (tmp_path / name / "model").mkdir(parents=True)  # looks like a finished run
        (tmp_path / name / "config.yaml").write_text(f"task: {task}\n")
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    sf.write(str(tmp_path / "a.wav"), np.zeros(800, np.float32), 8000)
    (tmp_path / "d.csv").write_text("text,label\na,b\nc,d\n")
    out = run_cli_fresh(argv, tmp_path)
    assert out.stdout.split() == ["no", "torch", "2"], out.stdout + out.stderr
    assert needle in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "runs").exists()


_OFFLOAD = ["distributed.strategy=deepspeed", "distributed.zero_stage=3", "distributed.offload_param=cpu"]


@pytest.mark.parametrize(
    "argv, env, needle",
    [
        (["check", "--train", "d.csv", "distributed.strategy=deepspeed", "train.mixed_precision=fp16"], {},
         "error: distributed.strategy deepspeed with train.mixed_precision fp16 is not supported by deltatune yet; use bf16"),
        (["check", "--train", "d.csv", "distributed.strategy=deepspeed", "train.l1_lambda=0.01"], {},
         "error: distributed.strategy deepspeed with train.l1_lambda is not supported"),
        (["check", "--train", "d.csv", *_OFFLOAD], {"CUDA_VISIBLE_DEVICES": ""},
         "error: distributed.offload_param cpu moves GPU state to the CPU, and these processes run on the CPU already; set it to none"),
        (["train", "--train", "d.csv", *_OFFLOAD], {"CUDA_VISIBLE_DEVICES": "-1"}, "error: distributed.offload_param cpu moves GPU state"),
        (["train", "--train", "d.csv", "distributed.strategy=deepspeed", "distributed.offload_optimizer=cpu"], {"ACCELERATE_USE_CPU": "true"},
         "error: distributed.offload_optimizer cpu moves GPU state"),
    ],
)
def test_check_makes_the_deepspeed_refusals_of_train_before_torch(argv, env, needle, tmp_path, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:  # refused first as not installed, before torch all the same
        needle = "error: distributed.strategy deepspeed needs DeepSpeed"
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "d.csv").write_text("text,label\na,b\nc,d\n")
    out = run_cli_fresh(argv, tmp_path)
    assert out.stdout.split() == ["no", "torch", "2"], out.stdout + out.stderr
    assert out.stderr.startswith(needle) and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "runs").exists()


def test_check_leaves_the_number_of_processes_to_the_launch(tmp_path):
    from deltatune.cli import _validated_config, parse_args
    from deltatune.errors import DeltatuneError

    (tmp_path / "d.csv").write_text("text,label\na,b\nc,d\n")
    fsdp = ["--train", str(tmp_path / "d.csv"), "--output-dir", str(tmp_path / "run"), "distributed.strategy=fsdp"]
    _validated_config(parse_args(["check", *fsdp]), strategy=True)  # usually run without torchrun: not refused
    with pytest.raises(DeltatuneError, match="distributed.strategy fsdp shards the model over several processes, and this launch has 1"):
        _validated_config(parse_args(["train", *fsdp]), run_dir=True)


def test_check_words_a_one_process_deepspeed_launch_for_one_process():
    from deltatune.config import build_config
    from deltatune.training.distributed import describe_launch

    d = build_config({"distributed": {"strategy": "deepspeed", "zero_stage": 3, "offload_param": "cpu"}}).distributed
    one, four = describe_launch(d, 1), describe_launch(d, 4)
    assert one.startswith("distributed: deepspeed ZeRO-3 in one process") and "1/1" not in one and "offload_param in CPU memory" in one
    assert "torchrun --nproc_per_node N" in one
    assert four.startswith("distributed: deepspeed ZeRO-3 over 4 processes") and "about 1/4 per process" in four


@pytest.mark.parametrize(
    "argv, missing",
    [
        (["train", "--train", "missing.csv", "--task", "text-classification"], "missing.csv"),
        (["train", "--train", "here.csv", "--validation", "data/dev.jsonl"], "data/dev.jsonl"),
        (["check", "--train", "here.csv", "--test", "./held-out"], "held-out"),
    ],
)
def test_a_missing_data_file_is_reported_before_torch_is_imported(argv, missing, tmp_path):
    (tmp_path / "here.csv").write_text("text,label\ngood,pos\nbad,neg\n")
    code = (
        "import sys\nfrom deltatune.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        "print(','.join(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules) or 'none', rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.stdout.split() == ["none", "2"], out.stdout + out.stderr
    assert out.stderr.startswith(f"error: data file not found: {missing} (check the path; relative paths start from ")
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "files, argv, message",
    [
        ({"bad.csv": "review,label\ngood,pos\nbad,neg\n"}, ["train", "--train", "bad.csv"],
         "error: bad.csv: no column 'text'; columns are 'review', 'label' (set the column name in data.*_column, e.g. --text-column)"),
        ({"ok.csv": "text,label\ngood,pos\nbad,neg\n", "dev.tsv": "text\tstars\ngood\t5\n"},
         ["check", "--train", "ok.csv", "--validation", "dev.tsv"], "error: dev.tsv: no column 'label'; columns are 'text', 'stars' "),
        ({"qa.jsonl": '{"question": "q?", "passage": "p", "answers": "p"}\n'}, ["train", "--task", "question-answering", "--train", "qa.jsonl"],
         "error: qa.jsonl: no column 'context'; columns are 'question', 'passage', 'answers' "),
    ],
)
def test_a_missing_column_is_reported_before_torch_is_imported(files, argv, message, tmp_path):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    code = (
        "import sys\nfrom deltatune.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        "print(','.join(m for m in ('torch', 'transformers', 'datasets', 'pandas') if m in sys.modules) or 'none', rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.stdout.split() == ["none", "2"], out.stdout + out.stderr
    assert out.stderr.startswith(message) and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_batch_size_flag_takes_auto_or_a_positive_integer(capsys):
    from deltatune.cli import _overrides, parse_args
    from deltatune.config import build_config

    args = parse_args(["train", "--batch-size", "auto"])
    assert build_config(None, _overrides(args)).train.per_device_train_batch_size == "auto"
    assert build_config(None, _overrides(parse_args(["train", "--batch-size", "4"]))).train.per_device_train_batch_size == 4
    with pytest.raises(SystemExit):
        parse_args(["train", "--batch-size", "0"])
    assert "positive integer or auto" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["trian"], "did you mean train?"),
        (["train", "--task", "text-clasification"], "did you mean text-classification?"),
        (["train", "--batch-size", "0"], "--batch-size"),
        (["predict", "r", "--text", "a", "--top-p", "2"], "--top-p"),
    ],
)
def test_usage_errors_are_one_line_with_a_pointer_to_help(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: deltatune"), err
    assert needle in lines[0] and "--help)" in lines[0]


def test_a_bad_mlflow_store_is_refused_before_torch_and_writes_nothing(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run"
    config = Path(__file__).resolve().parents[1] / "examples" / "support_tickets.yaml"
    code = (
        "import sys; from deltatune.cli import main; "
        f"rc = main(['train', '{config}', 'output_dir={out}', 'train.report_to=[mlflow]', 'train.tracking_uri=foo://x']); "
        "print('torch' in sys.modules); sys.exit(rc)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode != 0 and p.stdout.strip() == "False", (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: train.tracking_uri: MLflow has no foo:// store"), p.stderr
    assert not out.exists()


def test_train_is_interruptible_even_when_started_with_sigint_ignored_or_blocked():
    """A non-interactive shell starts background jobs with SIGINT ignored; training must still stop on it."""
    import signal as _signal
    import subprocess as _subprocess

    code = (
        "import signal\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})\n"
        "from deltatune.cli import interruptible\n"
        "interruptible()\n"
        "assert signal.getsignal(signal.SIGINT) is signal.default_int_handler\n"
        "assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())\n"
        "try:\n"
        "    signal.raise_signal(signal.SIGINT)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted')\n"
    )
    out = _subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: _signal.signal(_signal.SIGINT, _signal.SIG_IGN))
    assert out.returncode == 0 and out.stdout.strip() == "interrupted", out.stderr


# ---- evaluate --pretrained: the "before" numbers of a config's pretrained model ----

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _pretrained_slice(task: str, tmp_path: Path, rows: int = 3) -> tuple[Path, Path]:
    """(config.yaml, held-out data file) for ``task`` on the packaged SmolLM2, on ``rows`` real rows."""
    import gzip
    import json

    import yaml

    if task == "translation":
        d = SHARED_DATA / "translation" / "multi30k_en_de"
        if not d.is_dir():
            pytest.skip(f"no shared data at {d}")
        read = lambda name: gzip.open(d / name, "rt", encoding="utf-8").read().splitlines()[:rows]  # noqa: E731
        data = [{"source": a, "target": b} for a, b in zip(read("test_2016_flickr.en.gz"), read("test_2016_flickr.de.gz"))]
        extra = {"source_lang": "English", "target_lang": "German", "max_seq_length": 128}
    else:
        d = SHARED_DATA / "summarization" / "scitldr_a"
        if not d.is_dir():
            pytest.skip(f"no shared data at {d}")
        lines = (d / "test.jsonl").read_text().splitlines()[:rows]
        data = [{k: json.loads(x)[k] for k in ("source", "target")} for x in lines]
        extra = {"max_seq_length": 384}
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data))
    cfg = {
        "task": task, "model": {"name_or_path": "smollm2"}, "output_dir": str(tmp_path / "run"),
        "data": {"train_file": str(test), "validation_file": str(test), **extra},
        "eval": {"per_device_eval_batch_size": 4, "max_new_tokens": 8, "generation_max_samples": rows},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, test


@pytest.mark.parametrize("task, keys", [("translation", ("bleu", "chrf")), ("summarization", ("rouge1", "rougeL"))])
def test_evaluate_pretrained_cli_equals_the_api(task, keys, tmp_path, capsys):
    import json

    from deltatune.api import evaluate_pretrained

    config, test = _pretrained_slice(task, tmp_path)
    out = tmp_path / "before.json"
    argv = ["evaluate", "--pretrained", str(config), "--data", str(test), "--json", "--output", str(out), "eval.max_new_tokens=8"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    cli = json.loads(captured.out)
    assert "pretrained model's numbers" in captured.err and "no training" in captured.err
    assert all(k in cli for k in keys) and "loss" in cli
    assert json.loads(out.read_text()) == cli  # --output holds the same numbers
    assert evaluate_pretrained(str(config), str(test), ["eval.max_new_tokens=8"]) == cli
    # an existing --output is refused without --overwrite, before anything loads
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_evaluate_pretrained_refuses_a_fresh_head_task(tmp_path, capsys, tiny_model_dir, sentiment_csv):
    import yaml

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"task": "text-classification", "model": {"name_or_path": str(tiny_model_dir)},
                                      "data": {"train_file": str(sentiment_csv)}, "output_dir": str(tmp_path / "run")}))
    assert main(["evaluate", "--pretrained", str(config), "--data", str(sentiment_csv)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: task text-classification: the pretrained model ") and "train first" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["evaluate", "--pretrained", "missing.yaml", "--data", "d.jsonl"], "config file not found: missing.yaml"),
        (["evaluate", "--pretrained", "c.yaml", "--data", "d.jsonl", "train.no_such_key=1"], "no_such_key"),
        (["evaluate", "--pretrained", "c.yaml", "--data", "missing.jsonl"], "data file not found: missing.jsonl"),
        (["evaluate", "--pretrained", "c.yaml", "--data", "d.jsonl", "--output", "d.jsonl", "--overwrite"], "d.jsonl"),
        (["evaluate", "--pretrained", "c.yaml", "--data", "d.jsonl", "--output", "taken.json"], "--overwrite"),
        (["evaluate", "--pretrained", "eval.max_new_tokens=8", "--data", "d.jsonl"], "give the YAML config"),
        (["evaluate", "run", "--data", "d.jsonl", "eval.max_new_tokens=8"], "apply with --pretrained CONFIG only"),
    ],
)
def test_evaluate_pretrained_usage_errors_come_before_torch(argv, needle, tmp_path):
    (tmp_path / "d.jsonl").write_text('{"source": "a", "target": "b"}\n')
    (tmp_path / "taken.json").write_text("{}")
    (tmp_path / "c.yaml").write_text("task: translation\nmodel: {name_or_path: smollm2}\ndata: {train_file: d.jsonl}\n")
    out = run_cli_fresh(argv, tmp_path)
    assert out.stdout.split() == ["no", "torch", "2"], out.stdout + out.stderr
    assert out.stderr.startswith("error: ") and needle in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_distill_checks_its_usage_before_torch_and_trains_a_student_next_to_the_teacher(tmp_path, tiny_model_dir, sentiment_csv, capsys):
    import json

    import yaml

    # usage and a missing teacher come back before torch is imported
    out = run_cli_fresh(["distill", "--student", "minilm"], tmp_path)
    assert out.stdout.split() == ["no", "torch", "2"] and "--teacher" in out.stderr
    out = run_cli_fresh(["distill", "--teacher", "nowhere", "--student", "minilm"], tmp_path)
    assert out.stdout.split() == ["no", "torch", "2"] and "not a finished deltatune run folder" in out.stderr
    # a teacher run, then its student with the teacher's config and the default run folder
    train, dev = sentiment_csv
    teacher = tmp_path / "teacher"
    args = ["train", "--model", tiny_model_dir, "--train", str(train), "--validation", str(dev), "--output-dir", str(teacher),
            "--max-steps", "2", "--quiet", "data.max_seq_length=32"]
    assert main(args) == 0
    student = tmp_path / f"teacher-distill-{Path(tiny_model_dir).name}"  # the default: next to the teacher
    existing = tmp_path / "taken"
    (existing / "x").mkdir(parents=True)
    out = run_cli_fresh(["distill", "--teacher", str(teacher), "--student", tiny_model_dir, "--output-dir", str(existing)], tmp_path)
    assert out.stdout.split() == ["no", "torch", "2"] and "taken" in out.stderr  # an existing folder is refused as train does
    out = run_cli_fresh(["distill", "--teacher", str(teacher), "--student", str(tmp_path / "no-such-model")], tmp_path)
    assert out.stdout.split() == ["no", "torch", "2"] and out.stderr.startswith("error: --student ") and "no such folder" in out.stderr
    assert main(["distill", "--teacher", str(teacher), "--student", tiny_model_dir, "--quiet", "distill.temperature=3",
                 "--set", "train.max_steps=1"]) == 0
    saved = yaml.safe_load((student / "config.yaml").read_text())
    assert saved["distill"]["teacher"] == str(teacher) and saved["distill"]["temperature"] == 3.0
    assert saved["model"]["name_or_path"] == tiny_model_dir and saved["data"]["train_file"] == str(train)
    assert (student / "teacher_logits.safetensors").is_file() and json.loads((student / "eval.json").read_text())["train"]["global_step"] == 1
