"""The run directory: what --overwrite may replace, a file in the way, the marker, the metrics log."""

import json

import pytest

from deltatune import finetune
from deltatune.cli import main
from deltatune.errors import DeltatuneError
from deltatune.rundir import MARKER, RunDir


def test_a_new_run_gets_a_marker(tmp_path):
    rd = RunDir(tmp_path / "runs" / "a")
    rd.prepare(overwrite=False, resume=False)
    marker = json.loads((rd.root / MARKER).read_text())
    assert set(marker) == {"deltatune_version", "created"} and rd.is_run()


def test_overwrite_refuses_a_folder_with_merely_a_config(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.yaml").write_text("mine: true\n")
    (project / "notes.txt").write_text("keep me")
    with pytest.raises(DeltatuneError, match="not a deltatune run directory.*--overwrite only replaces runs") as e:
        RunDir(project).prepare(overwrite=True, resume=False)
    assert "\n" not in str(e.value)
    assert (project / "notes.txt").read_text() == "keep me" and (project / "config.yaml").read_text() == "mine: true\n"


def test_overwrite_refusal_comes_before_any_work(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.yaml").write_text("mine: true\n")
    # no data file exists: the run directory is refused first, nothing read or written
    cfg = {"output_dir": str(project), "data": {"train_file": str(tmp_path / "missing.csv")}}
    with pytest.raises(DeltatuneError, match="not a deltatune run directory"):
        finetune(cfg, overwrite=True, verbose=False)
    assert sorted(p.name for p in project.iterdir()) == ["config.yaml"]


def test_overwrite_replaces_runs(tmp_path):
    marked = RunDir(tmp_path / "marked")
    marked.prepare(overwrite=False, resume=False)
    (marked.root / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    (marked.root / "model").mkdir()
    marked.prepare(overwrite=True, resume=False)
    assert sorted(p.name for p in marked.root.iterdir()) == [MARKER]
    legacy = tmp_path / "legacy"  # made by an older deltatune: no marker, but config.yaml and a metrics log
    legacy.mkdir()
    (legacy / "config.yaml").write_text("task: text-classification\n")
    (legacy / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    RunDir(legacy).prepare(overwrite=True, resume=False)
    assert sorted(p.name for p in legacy.iterdir()) == [MARKER]


def test_overwrite_refuses_a_symlink_and_the_current_folder(tmp_path, monkeypatch):
    real = RunDir(tmp_path / "real")
    real.prepare(overwrite=False, resume=False)
    (tmp_path / "link").symlink_to(real.root)
    with pytest.raises(DeltatuneError, match="symbolic link"):
        RunDir(tmp_path / "link").prepare(overwrite=True, resume=False)
    monkeypatch.chdir(real.root)
    with pytest.raises(DeltatuneError, match="current folder"):
        RunDir(".").prepare(overwrite=True, resume=False)
    assert (real.root / MARKER).is_file()


@pytest.mark.parametrize("overwrite", [False, True])
def test_run_directory_that_is_a_file(tmp_path, capsys, overwrite):
    path = tmp_path / "out"
    path.write_text("a file")
    argv = ["train", "--train", str(tmp_path / "none.csv"), "--output-dir", str(path)] + (["--overwrite"] if overwrite else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the run directory") and "is an existing file" in err and err.count("\n") == 1
    assert path.read_text() == "a file"
    with pytest.raises(DeltatuneError, match="is a file, so the run directory"):
        RunDir(path / "sub").prepare(overwrite=False, resume=False)
    with pytest.raises(DeltatuneError, match="is an existing file"):
        RunDir(path).prepare(overwrite=False, resume=True)


def test_unwritable_run_directory_is_one_line(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.prepare(overwrite=False, resume=False)
    rd.metrics.mkdir()  # appending to it fails like a read-only file (EISDIR)
    with pytest.raises(DeltatuneError, match=r"cannot write .*metrics.jsonl.*--resume") as e:
        rd.log({"step": 1})
    assert "\n" not in str(e.value)


def test_cut_last_metrics_line_is_dropped_with_a_warning(tmp_path, capsys):
    rd = RunDir(tmp_path / "run")
    rd.prepare(overwrite=False, resume=False)
    for step in (1, 2, 3):
        rd.log({"step": step, "loss": 1.0 / step})
    with rd.metrics.open("a") as f:
        f.write('{"step": 4, "lo')
    assert [r["step"] for r in rd.read_log()] == [1, 2, 3]  # a line still being written is left out quietly
    assert capsys.readouterr().err == ""
    rd.truncate_log(2)
    assert "dropping the unreadable last line 4" in capsys.readouterr().err
    assert rd.metrics.read_text() == '{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n'
    assert [p.name for p in rd.root.iterdir() if p.name.startswith(".") and p.name != MARKER] == []


def test_damaged_metrics_line_in_the_middle_names_the_line(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.prepare(overwrite=False, resume=False)
    rd.metrics.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(DeltatuneError, match=r"metrics.jsonl, line 2: not a JSON object"):
        rd.truncate_log(3)
    assert rd.metrics.read_text() == '{"step": 1}\nnot json\n{"step": 3}\n'  # left as it was


@pytest.mark.skipif(__import__("os").geteuid() == 0, reason="root writes to read-only folders anyway")
def test_read_only_parent_is_one_line(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        with pytest.raises(DeltatuneError, match="cannot write .*not writable") as e:
            RunDir(parent / "run").prepare(overwrite=False, resume=False)
    finally:
        parent.chmod(0o755)
    assert "\n" not in str(e.value)


def test_overwrite_refuses_an_unmarked_folder_holding_files_no_run_writes(tmp_path):
    folder = tmp_path / "project"  # looks like an old run, but also holds the user's own work
    (folder / "model").mkdir(parents=True)
    (folder / "config.yaml").write_text("task: text-classification\n")
    (folder / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    (folder / "thesis.tex").write_text("my thesis")
    with pytest.raises(DeltatuneError, match="thesis.tex"):
        RunDir(folder).prepare(overwrite=True, resume=False)
    assert (folder / "thesis.tex").read_text() == "my thesis"


def test_overwrite_of_a_run_keeps_the_users_files_in_it(tmp_path):
    run = RunDir(tmp_path / "run")
    run.prepare(overwrite=False, resume=False)
    (run.root / "train.tsv").write_text("sentence\tlabel\n")  # the data the new run would read
    (run.root / "preds.jsonl").write_text("{}\n")
    with pytest.raises(DeltatuneError, match="preds.jsonl, train.tsv.*move them out"):
        run.prepare(overwrite=True, resume=False)
    assert (run.root / "train.tsv").is_file() and (run.root / "preds.jsonl").is_file()


def test_a_run_being_trained_names_its_process_and_refuses_overwrite_and_resume(tmp_path):
    import os
    import subprocess
    import sys

    rd = RunDir(tmp_path / "runs" / "a")
    rd.prepare(overwrite=False, resume=False)
    rd.config.write_text("task: text-classification\n")
    assert rd.training_pid() is None
    with rd.training():
        assert rd.training_pid() == os.getpid()
    # another process training it (its own .training file)
    import psutil

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        info = {"pid": other.pid, "host": __import__("socket").gethostname(), "process_started": psutil.Process(other.pid).create_time()}
        (rd.root / ".training").write_text(json.dumps(info))
        assert rd.training_pid() == other.pid
        for kw in ({"overwrite": True, "resume": False}, {"overwrite": False, "resume": True}):
            with pytest.raises(DeltatuneError, match=rf"is being trained right now by process {other.pid}") as e:
                rd.check(**kw)
            assert "\n" not in str(e.value)
    finally:
        other.kill()
        other.wait()
    (rd.root / ".training").unlink()
    assert rd.training_pid() is None and not (rd.root / ".training").exists()
    # a process that died without removing the file (kill -9) does not count
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    (rd.root / ".training").write_text(json.dumps({"pid": int(dead), "host": __import__("socket").gethostname(), "process_started": 1.0}))
    assert rd.training_pid() is None
    rd.check(overwrite=True, resume=False)  # no refusal
    # a live pid that started at another time (a reused pid) does not count either
    (rd.root / ".training").write_text(json.dumps({"pid": os.getpid(), "host": __import__("socket").gethostname(), "process_started": 1.0}))
    assert rd.training_pid() is None


def test_the_training_file_is_removed_when_training_fails(tmp_path):
    rd = RunDir(tmp_path / "b")
    rd.prepare(overwrite=False, resume=False)
    with pytest.raises(RuntimeError):
        with rd.training():
            raise RuntimeError("boom")
    assert not (rd.root / ".training").exists()


def test_files_written_into_a_run_by_distillation_and_augmentation_count_as_run_files():
    """--overwrite refuses folders holding files no run writes: the distillation cache and the augmented
    rows are written by deltatune itself, so a student or augmented run must stay replaceable."""
    from deltatune.data.augment import AUGMENTED_FILE
    from deltatune.rundir import RUN_ENTRIES
    from deltatune.tasks.distill.teacher import CACHE_NAME

    assert {CACHE_NAME, AUGMENTED_FILE} <= RUN_ENTRIES
