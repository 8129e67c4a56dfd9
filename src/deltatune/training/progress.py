"""Training progress for people: a bar on a terminal, plain lines in files.

On a terminal (the stream is a TTY) a tqdm bar is updated every optimizer step. Otherwise
(output redirected to a file or a pipe, a CI log, a notebook capture) a bar's carriage-return
updates would pile up, so one plain line is written every ``interval`` seconds instead, and
at the last step::

    step 40/200 | loss 1.2345 | 12.3 examples/s | 310 tokens/s | elapsed 1m20s | ETA 5m20s

Quiet mode (``train.progress_bar: false``, ``--quiet``) never draws a bar and writes such a
line at most every :data:`QUIET_INTERVAL_SECONDS`, so a long run still shows it is alive.

Rates are examples (not packs or windows) and real tokens (attention mask, not padding) per
second of training since the start of this process's training, printed with 3 significant
digits (a CPU run at 0.04 examples/s shows ``0.04``, not ``0.0``). Tasks whose input has no
tokens (images, audio: :func:`counts_tokens`) show examples/s only.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Optional, TextIO

from tqdm.auto import tqdm

QUIET_INTERVAL_SECONDS = 300.0

# Task.input_kind values whose inputs are not tokens (pixels, samples): no tokens/s for them
TOKENLESS_INPUTS = ("image", "audio")


def counts_tokens(input_kind: str) -> bool:
    """Whether a task reading ``input_kind`` (``Task.input_kind``: ``text``, ``image``, ``audio``,
    ``image-text``) trains on tokens, so that a tokens/s rate means something (not images or audio)."""
    return input_kind not in TOKENLESS_INPUTS


def format_rate(x: float) -> str:
    """A rate with 3 significant digits and no exponent: 1234 -> ``1234``, 12.34 -> ``12.3``, 0.0412 -> ``0.0412``."""
    if x >= 100:
        return f"{x:.0f}"
    if x <= 0:
        return "0"
    return f"{x:.3g}" if x >= 1e-3 else f"{x:.1e}"


def format_duration(seconds: float) -> str:
    """``45s``, ``1m20s``, ``2h05m``."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def progress_line(
    step: int, total: int, loss: Optional[float], examples: float, tokens: Optional[float], elapsed: float, steps_done: int,
    metric: str = "",
) -> str:
    """One progress line (module doc). ``examples``/``tokens``: counts since the start of this
    process's training (``tokens`` ``None``: a task without tokens, no tokens/s); ``steps_done``:
    optimizer steps in that time (for the ETA)."""
    rate = lambda n: n / elapsed if elapsed > 0 else 0.0  # noqa: E731
    parts = [f"step {step}/{total}"]
    if loss is not None:
        parts.append(f"loss {loss:.4f}")
    if metric:  # "accuracy=0.9123" from the latest evaluation
        parts.append("eval " + metric.replace("=", " "))
    parts.append(f"{format_rate(rate(examples))} examples/s")
    if tokens is not None:
        parts.append(f"{format_rate(rate(tokens))} tokens/s")
    parts.append(f"elapsed {format_duration(elapsed)}")
    if steps_done > 0 and step < total:
        parts.append(f"ETA {format_duration(elapsed / steps_done * (total - step))}")
    return " | ".join(parts)


class Progress:
    """Reports training progress: a tqdm bar on a TTY, else a line every ``interval`` seconds.

    Args:
        total: optimizer steps of the run; ``initial``: steps already done (resume).
        enabled: this process reports (the main process); others stay silent.
        bar: ``train.progress_bar`` (False: quiet, lines at most every :data:`QUIET_INTERVAL_SECONDS`).
        interval: seconds between lines when not on a terminal (0: every step).
        stream: where to write (stderr by default, as tqdm).
        clock: seconds, monotonic (tests pass a fake one).
        tokens: show tokens/s (False for tasks without tokens: :func:`counts_tokens`).
    """

    def __init__(
        self,
        total: int,
        initial: int,
        enabled: bool,
        bar: bool,
        interval: float,
        stream: Optional[TextIO] = None,
        clock: Callable[[], float] = time.perf_counter,
        tokens: bool = True,
    ):
        self.total = total
        self.tokens = tokens
        self.initial = initial
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.start = clock()
        self.enabled = enabled
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.use_bar = enabled and bar and tty
        self.interval = interval if bar else max(interval, QUIET_INTERVAL_SECONDS)
        self.last_line = self.start
        self.metric = ""
        self._bar = tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True, file=self.stream) if self.use_bar else None

    def update(
        self,
        step: int,
        examples: float,
        tokens: float,
        loss: Optional[float] = None,
        recent_loss: Optional[Callable[[], Optional[float]]] = None,
    ) -> None:
        """After optimizer step ``step``.

        Args:
            examples, tokens: trained since this process started training (not since step 0).
            loss: the latest logged loss (None before the first), shown on the bar.
            recent_loss: called only when a line is written, for the loss of the latest steps.
        """
        if not self.enabled:
            return
        now = self.clock()
        elapsed = now - self.start
        if self._bar is not None:
            rate = examples / elapsed if elapsed > 0 else 0.0
            loss_text = f"loss={loss:.4f} " if loss is not None else ""
            self._bar.set_postfix_str(f"{loss_text}{format_rate(rate)} ex/s {self.metric}".strip(), refresh=False)
            self._bar.update(1)
            return
        if now - self.last_line >= self.interval or step >= self.total:
            self.last_line = now
            shown = recent_loss() if recent_loss is not None else loss
            line = progress_line(
                step, self.total, shown, examples, tokens if self.tokens else None, elapsed, step - self.initial, self.metric
            )
            print(line, file=self.stream, flush=True)

    def set_metric(self, text: str) -> None:
        """The latest evaluation (``accuracy=0.9123``), shown from the next update on."""
        self.metric = text

    def close(self) -> None:
        """Close the bar (if any); lines need no closing."""
        if self._bar is not None:
            self._bar.close()
