"""Progress that reads well in files: plain lines, no carriage returns; quiet runs still show life."""

import io
import re

from deltatune import finetune
from deltatune.training.progress import QUIET_INTERVAL_SECONDS, Progress, format_duration, format_rate, progress_line
from tests.helpers import tiny_config

LINE = re.compile(
    r"^step \d+/\d+ \| loss \d+\.\d{4}( \| eval accuracy \d\.\d{4})? \| [\d.]+ examples/s \| [\d.]+ tokens/s"
    r" \| elapsed (\d+m)?\d+s( \| ETA (\d+m)?\d+s)?$"
)


def test_output_to_a_file_gets_plain_lines_not_a_bar(tiny_model_dir, sentiment_csv, tmp_path, capfd):
    train, val = sentiment_csv
    cfg = tiny_config(tiny_model_dir, train, val, tmp_path / "r", progress_bar=True, log_interval_seconds=0)
    run = finetune(cfg, verbose=False)
    err = capfd.readouterr().err
    assert "\r" not in err
    lines = [x for x in err.splitlines() if x.startswith("step ")]
    assert len(lines) == run.result.global_step  # interval 0: one line per step
    for line in lines:
        assert LINE.match(line), line
    assert lines[-1].startswith(f"step {run.result.global_step}/{run.result.global_step} |") and "ETA" not in lines[-1]
    assert "eval accuracy" in lines[-1]


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_quiet_prints_a_line_every_few_minutes():
    clock, out = _Clock(), io.StringIO()
    p = Progress(total=100, initial=0, enabled=True, bar=False, interval=30, stream=out, clock=clock)
    for step, t in enumerate([10, 100, 299], start=1):
        clock.now = t
        p.update(step, examples=8 * step, tokens=800 * step, loss=2.0)
    assert out.getvalue() == ""  # quiet: not every 30 s
    clock.now = QUIET_INTERVAL_SECONDS + 1
    p.update(4, examples=32, tokens=3200, loss=1.5)
    assert out.getvalue() == "step 4/100 | loss 1.5000 | 0.106 examples/s | 10.6 tokens/s | elapsed 5m01s | ETA 2h00m\n"
    clock.now = QUIET_INTERVAL_SECONDS + 2
    p.update(100, examples=800, tokens=80000, loss=1.0)  # the last step always
    assert out.getvalue().splitlines()[-1].startswith("step 100/100 | loss 1.0000")


def test_lines_every_interval_and_none_from_other_processes():
    clock, out = _Clock(), io.StringIO()
    p = Progress(total=10, initial=2, enabled=True, bar=True, interval=30, stream=out, clock=clock)  # a StringIO is no TTY
    clock.now = 31
    p.update(3, examples=8, tokens=100, recent_loss=lambda: 0.5)
    assert out.getvalue().startswith("step 3/10 | loss 0.5000 |") and "ETA 3m37s" in out.getvalue()  # 31 s per step, 7 left
    silent = io.StringIO()
    other = Progress(total=10, initial=0, enabled=False, bar=True, interval=0, stream=silent, clock=clock)
    other.update(10, examples=1, tokens=1)
    assert silent.getvalue() == ""


def test_tasks_without_tokens_show_examples_per_second_only():
    from deltatune.training.progress import counts_tokens

    assert counts_tokens("text") and counts_tokens("image-text") and not counts_tokens("image") and not counts_tokens("audio")
    clock, out = _Clock(), io.StringIO()
    p = Progress(total=10, initial=0, enabled=True, bar=True, interval=0, stream=out, clock=clock, tokens=False)  # not a TTY: lines
    clock.now = 4.0
    p.update(2, examples=16, tokens=514, loss=0.5)
    assert out.getvalue() == "step 2/10 | loss 0.5000 | 4 examples/s | elapsed 4s | ETA 16s\n"
    assert "tokens/s" not in progress_line(2, 10, 0.5, examples=16, tokens=None, elapsed=4, steps_done=2)


def test_slow_rates_are_not_shown_as_zero():
    # SmolLM2 SFT on 2 CPU cores: ~0.04 examples/s used to print as "0.0 examples/s"
    assert format_rate(0.0412) == "0.0412" and format_rate(12.34) == "12.3" and format_rate(1234.5) == "1234"
    assert format_rate(0.0) == "0" and format_rate(0.00021) == "2.1e-04"
    line = progress_line(2, 50, 1.25, examples=2, tokens=480, elapsed=50, steps_done=2)
    assert "0.04 examples/s | 9.6 tokens/s" in line
    assert format_duration(45) == "45s" and format_duration(80) == "1m20s" and format_duration(7500) == "2h05m"


def test_quiet_cli_run_prints_the_start_the_last_step_and_the_results(tiny_model_dir, sentiment_csv, tmp_path, capfd):
    from deltatune.cli import main

    train, val = sentiment_csv
    argv = ["train", "--model", tiny_model_dir, "--train", str(train), "--validation", str(val), "--output-dir",
            str(tmp_path / "q"), "--quiet", "--max-seq-length", "32", "--epochs", "1", "--batch-size", "32"]
    assert main(argv) == 0
    captured = capfd.readouterr()
    assert captured.out.startswith("deltatune: text-classification") and "validation metrics" in captured.out
    assert "\r" not in captured.err
    assert [x for x in captured.err.splitlines() if x.startswith("step ")] == [x for x in captured.err.splitlines() if x.startswith("step 3/3 |")]
    assert "step 3/3 | loss " in captured.err
