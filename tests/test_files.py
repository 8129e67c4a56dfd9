"""The one atomic-write helper for files and folders (deltatune.files)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from deltatune.files import interrupts_deferred, old_dir_for, recover_dir, replace_dir_atomically, temp_dir_for, write_atomically


class WriterFailed(Exception):
    pass


def _fail(*_):
    raise WriterFailed("the writer stopped half-way")


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_write_atomically_writes_the_file_and_keeps_its_permissions(tmp_path):
    path = tmp_path / "sub" / "eval.json"
    write_atomically(path, lambda f: f.write("first\n"))
    os.chmod(path, 0o600)
    write_atomically(path, lambda f: f.write("second\n"))
    assert path.read_text() == "second\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert _leftovers(path.parent) == []


def test_a_failing_file_writer_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "predictions.csv"
    path.write_text("old rows\n")

    def write(f):
        f.write("half of the new rows")
        _fail()

    with pytest.raises(WriterFailed):
        write_atomically(path, write)
    assert path.read_text() == "old rows\n"
    assert _leftovers(tmp_path) == []


def test_replace_dir_atomically_makes_and_replaces_a_folder_whole(tmp_path):
    target = tmp_path / "model"
    replace_dir_atomically(lambda d: (d / "a.txt").write_text("1"), target)
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    replace_dir_atomically(lambda d: (d / "b.txt").write_text("2"), target)
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]  # the old folder's files are gone
    assert _leftovers(tmp_path) == []


def test_the_folder_is_in_place_while_the_new_one_is_written(tmp_path):
    target = tmp_path / "model"
    replace_dir_atomically(lambda d: (d / "weights").write_text("old"), target)
    seen = []
    replace_dir_atomically(lambda d: seen.append((target / "weights").read_text()), target)
    assert seen == ["old"]


def test_a_failing_folder_writer_leaves_the_old_folder_intact_and_no_temporary_folder(tmp_path):
    target = tmp_path / "export"
    replace_dir_atomically(lambda d: (d / "config.json").write_text("{}"), target)

    def write(d):
        (d / "config.json").write_text('{"half": ')
        _fail()

    with pytest.raises(WriterFailed):
        replace_dir_atomically(write, target)
    assert (target / "config.json").read_text() == "{}"
    assert _leftovers(tmp_path) == []
    # a writer that fails on a first write leaves nothing at all
    with pytest.raises(WriterFailed):
        replace_dir_atomically(_fail, tmp_path / "new")
    assert not (tmp_path / "new").exists() and _leftovers(tmp_path) == []


def test_a_swap_stopped_between_the_renames_is_undone_by_the_next_call(tmp_path):
    target = tmp_path / "best"
    old = old_dir_for(target)
    old.mkdir()  # killed after moving the complete old folder aside, before the new one came in
    (old / "trainable.safetensors").write_text("complete old")
    temp_dir_for(target).mkdir()
    (temp_dir_for(target) / "trainable.safetensors").write_text("partial")
    recover_dir(target)
    assert (target / "trainable.safetensors").read_text() == "complete old"
    assert _leftovers(tmp_path) == []
    # the same through a new write that fails: the recovered old folder stays
    old_again = old_dir_for(target)
    target.rename(old_again)
    with pytest.raises(WriterFailed):
        replace_dir_atomically(_fail, target)
    assert (target / "trainable.safetensors").read_text() == "complete old" and _leftovers(tmp_path) == []


def test_a_finished_swap_whose_old_folder_was_not_deleted_is_cleaned(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "new").write_text("new")
    old_dir_for(target).mkdir()
    replace_dir_atomically(lambda d: (d / "newer").write_text("newer"), target)
    assert sorted(p.name for p in target.iterdir()) == ["newer"] and _leftovers(tmp_path) == []


@pytest.fixture
def umask_022():
    set_umask = os.umask  # kept: a test may replace os.umask
    old = set_umask(0o022)
    yield
    set_umask(old)


def test_new_files_get_the_users_umask_not_the_temporary_files_0600(tmp_path, umask_022):
    """Issue 20: a file written through a temporary file (mkstemp makes it 0600) ends up 0o666
    minus the umask, like a file the user writes."""
    from deltatune.files import write_file_atomically

    write_atomically(tmp_path / "eval.json", lambda f: f.write("{}"))
    write_file_atomically(tmp_path / "model.gguf", lambda tmp: tmp.write_bytes(b"GGUF"))
    assert (tmp_path / "eval.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "model.gguf").stat().st_mode & 0o777 == 0o644
    os.umask(0o027)
    write_file_atomically(tmp_path / "other.gguf", lambda tmp: tmp.write_bytes(b"GGUF"))
    assert (tmp_path / "other.gguf").stat().st_mode & 0o777 == 0o640


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="no /proc: the umask is read by setting it")
def test_the_umask_is_read_without_changing_it(monkeypatch, umask_022):
    """Setting the umask to 0 for a moment would give files other threads create then mode 0666."""
    from deltatune import files

    calls = []
    monkeypatch.setattr(files.os, "umask", lambda mask: calls.append(mask) or 0)
    assert files._umask() == 0o022 and calls == []


def test_a_folder_writers_private_files_get_the_users_umask(tmp_path, umask_022):
    """Issue 20: safetensors (>= 0.8) and tempfile make files 0600; an exported folder's files
    are 0o644 under umask 022 like any file the user makes (execute bits kept)."""
    import tempfile

    def write(d):
        fd, name = tempfile.mkstemp(dir=d)  # 0600, as safetensors.save_file makes its files
        os.close(fd)
        os.rename(name, d / "model.safetensors")
        sub = Path(tempfile.mkdtemp(dir=d))  # 0700
        (sub / "run.sh").write_text("#!/bin/sh\n")
        os.chmod(sub / "run.sh", 0o700)

    replace_dir_atomically(write, tmp_path / "export")
    out = tmp_path / "export"
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o644
    (sub,) = [p for p in out.iterdir() if p.is_dir()]
    assert sub.stat().st_mode & 0o777 == 0o755
    assert (sub / "run.sh").stat().st_mode & 0o777 == 0o755


def test_a_ctrl_c_during_a_folder_write_is_raised_once_the_folder_is_complete(tmp_path, capsys):
    target = tmp_path / "ckpt"

    def write(d: Path) -> None:
        (d / "a.bin").write_bytes(b"a")
        os.kill(os.getpid(), signal.SIGINT)  # delivered here, between the two files
        (d / "b.bin").write_bytes(b"b")

    with pytest.raises(KeyboardInterrupt):
        replace_dir_atomically(write, target)
    assert sorted(p.name for p in target.iterdir()) == ["a.bin", "b.bin"]  # complete, then the interrupt
    assert not temp_dir_for(target).exists()
    assert "finishing writing" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_abandons_the_write_and_keeps_the_old_file(tmp_path):
    path = write_atomically_text(tmp_path / "f.txt", "old")

    def write(f) -> None:
        f.write("new, half")
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        f.write(" and the rest")

    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, write)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_interrupts_are_not_held_under_another_handler_or_in_a_nested_block():
    seen = []
    previous = signal.signal(signal.SIGINT, lambda *_: seen.append("mine"))
    try:
        with interrupts_deferred("x"):
            os.kill(os.getpid(), signal.SIGINT)
        assert seen == ["mine"]
    finally:
        signal.signal(signal.SIGINT, previous)
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred("outer"):
            with interrupts_deferred("inner"):
                os.kill(os.getpid(), signal.SIGINT)
            seen.append("inner done")
    assert seen == ["mine", "inner done"]


def write_atomically_text(path: Path, text: str) -> Path:
    write_atomically(path, lambda f: f.write(text))
    return path
