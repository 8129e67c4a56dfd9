"""Time estimates of ``deltatune auto``'s trials, and the planning that keeps a search in its budget.

A trial's cost is measured on its own optimizer steps by :class:`StepClock` (a Trainer
callback) and modelled as (seconds of ``time.monotonic``)::

    trial ≈ setup + steps · examples_per_step · seconds_per_example
                  + evaluations · seconds_per_evaluation + finish

- ``setup``: the trial's start to the end of its first step, less that step (reading and
  encoding the data, loading the model, building the optimizer);
- ``seconds_per_example``: the median over the steps without an evaluation, the first step
  excluded (it pays one-time costs); per example, so that a trial with another batch size or
  number of epochs is estimated from the same figure;
- ``seconds_per_evaluation``: one evaluation of the validation split during training; before one
  is measured, one training step, or :data:`FORWARD_SHARE` of a training example per validation
  example when that is more (measured with minilm on CPU: 1.2 s for 30 validation examples,
  0.8 s for 300, against 0.09 s per training example: a fixed cost, then little per example);
- ``finish``: the last step to the trial's end (the last evaluation, the best evaluated weights
  restored, the model saved, the final validation/test evaluation); before one is measured,
  :data:`SAVE_SHARE` of the setup (saving the model; the setup also reads and encodes the data
  and, in the first trial, imports libraries) plus two evaluations.

Another candidate model is estimated from a measured one in proportion to their non-embedding
parameters (training costs ~6·N FLOPs per token; Kaplan et al. 2020, "Scaling Laws for Neural
Language Models", §2.1). Estimates are multiplied by :data:`SAFETY` before being compared with
the time left.

The default trial runs first, with nothing measured before it: :class:`DefaultTrialPlanner`
times its first :data:`DECIDE_AT_STEP` steps (the median of 3 step times: with length-grouped
batches one step can take 5 times another), or fewer when they are slow (from step 2, once
they took :data:`EARLY_SHARE` of the time left), prints the estimate, and when the rest cannot fit
the time left, raises :class:`ShortenTrial` so that the trial restarts with the number of steps
that fits (``train.max_steps``). Later trials are estimated before they start
(:meth:`TimeBudget.estimate`) and not started when they cannot fit. Whatever the estimates say,
:class:`deltatune.auto.search.TrialReporter` stops a trial still running at the deadline.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

from deltatune.auto.budget import format_seconds

DECIDE_AT_STEP = 4
EARLY_SHARE = 0.1
SAFETY = 1.15
FORWARD_SHARE = 0.1
SAVE_SHARE = 0.25


@dataclass
class TrialTiming:
    """What one trial's steps cost, in seconds (see the module docstring for the model).

    Attributes:
        seconds_per_example: training seconds per example (one example in one optimizer step).
        examples_per_step: examples in one optimizer step (global batch × accumulation).
        setup: seconds from the trial's start to its first step.
        evaluation: seconds per evaluation during training (``None``: none measured).
        finish: seconds from the last step to the trial's end (``None``: it did not end normally).
        eval_examples: validation examples (for the evaluation estimate before one is measured).
        steps: optimizer steps timed.
        non_embedding: non-embedding parameters of the model timed (0: unknown).
        method: the Δθ method timed.
    """

    seconds_per_example: float
    examples_per_step: float
    setup: float
    evaluation: Optional[float] = None
    finish: Optional[float] = None
    eval_examples: int = 0
    steps: int = 0
    non_embedding: int = 0
    method: str = ""

    @property
    def step_seconds(self) -> float:
        """Seconds per optimizer step of this trial (its batch)."""
        return self.seconds_per_example * self.examples_per_step

    def evaluation_seconds(self, scale: float = 1.0) -> float:
        """Seconds of one evaluation, on a model ``scale`` times this one's non-embedding size."""
        if self.evaluation is not None:
            return self.evaluation * scale
        return self.seconds_per_example * scale * max(self.examples_per_step, FORWARD_SHARE * self.eval_examples)

    def finish_seconds(self, scale: float = 1.0) -> float:
        """Seconds from the last step to the end (measured, else the guess of the module docstring)."""
        if self.finish is not None:
            return self.finish * max(1.0, scale)
        return self.setup * SAVE_SHARE * max(1.0, scale) + 2 * self.evaluation_seconds(scale)

    def estimate(self, steps: int, examples_per_step: float, evaluations: int, scale: float = 1.0) -> float:
        """Seconds for a whole trial measured by this one's figures.

        Args:
            steps: optimizer steps of the trial; ``examples_per_step``: its global batch × accumulation.
            evaluations: evaluations during its training (the final ones are in ``finish``).
            scale: its model's non-embedding parameters / this one's (setup and finish are not
                scaled down for a smaller model).
        """
        return (
            self.setup * max(1.0, scale)
            + steps * examples_per_step * self.seconds_per_example * scale
            + evaluations * self.evaluation_seconds(scale)
            + self.finish_seconds(scale)
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, seconds rounded to milliseconds."""
        return {k: round(v, 6 if k == "seconds_per_example" else 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


class StepClock:
    """Trainer callback: when each optimizer step of one trial ended (``time.monotonic()``).

    Place it first among the callbacks, so that it times the step and not the other callbacks.

    Args:
        non_embedding, method: the trial's model size and Δθ method, copied into :meth:`timing`.
        started: ``time.monotonic()`` at the trial's start (default: now).
    """

    def __init__(self, non_embedding: int = 0, method: str = "", started: Optional[float] = None):
        self.non_embedding = non_embedding
        self.method = method
        self.started = time.monotonic() if started is None else started
        self.marks: list[tuple[float, int, bool]] = []  # (time, examples seen, evaluated at this step)
        self.eval_examples = 0
        self.ended: Optional[float] = None

    def __call__(self, trainer, state) -> None:
        if not self.marks and trainer.eval_features is not None:
            self.eval_examples = len(trainer.eval_features)
        self.marks.append((time.monotonic(), state.examples_seen, state.last_eval_step == state.global_step))

    def stop(self) -> None:
        """Mark the trial's normal end (after its final evaluation), for ``finish``."""
        self.ended = time.monotonic()

    def timing(self) -> Optional[TrialTiming]:
        """The figures measured so far; ``None`` before the first step.

        When every step after the first evaluated, ``seconds_per_example`` includes the
        evaluations; with a single step timed, also the setup: over-estimates, never under-estimates.
        """
        if not self.marks:
            return None
        pairs = [(a, b) for a, b in zip(self.marks, self.marks[1:]) if b[1] > a[1]]
        train = [(b[0] - a[0]) / (b[1] - a[1]) for a, b in pairs if not b[2]] or [(b[0] - a[0]) / (b[1] - a[1]) for a, b in pairs]
        last_time, last_seen, _ = self.marks[-1]
        per_example = statistics.median(train) if train else (last_time - self.started) / max(last_seen, 1)
        evals = [max(0.0, (b[0] - a[0]) - (b[1] - a[1]) * per_example) for a, b in pairs if b[2]]
        first_time, first_seen, _ = self.marks[0]
        per_step = statistics.median([b[1] - a[1] for a, b in pairs]) if pairs else max(first_seen, 1)
        return TrialTiming(
            seconds_per_example=per_example,
            examples_per_step=float(per_step),
            setup=max(0.0, first_time - self.started - first_seen * per_example),
            evaluation=statistics.median(evals) if evals else None,
            finish=self.ended - last_time if self.ended is not None else None,
            eval_examples=self.eval_examples,
            steps=len(self.marks),
            non_embedding=self.non_embedding,
            method=self.method,
        )


class TimeBudget:
    """A search's deadline and what its trials have cost so far.

    Args:
        seconds: the whole budget; ``None``: no budget (nothing is estimated against it or stopped).
        start: ``time.monotonic()`` when the search began (the budget counts from there).
        say: prints one line (the estimates and decisions).
    """

    def __init__(self, seconds: Optional[float], start: float, say: Callable[[str], None] = lambda s: None):
        self.seconds = seconds
        self.deadline = start + seconds if seconds is not None else None
        self.say = say
        self.timings: list[TrialTiming] = []

    def left(self) -> float:
        """Seconds until the deadline (negative past it; ``inf`` without a budget)."""
        return math.inf if self.deadline is None else self.deadline - time.monotonic()

    def fits(self, seconds: float) -> bool:
        """Whether ``seconds`` (an estimate, enlarged by :data:`SAFETY`) fit the time left."""
        return seconds * SAFETY <= self.left()

    def record(self, timing: Optional[TrialTiming]) -> None:
        """Keep a trial's figures for the next estimates."""
        if timing is not None:
            self.timings.append(timing)

    def estimate(self, steps: int, examples_per_step: float, evaluations: int, method: str, non_embedding: int = 0) -> Optional[float]:
        """Seconds a trial needs, from the latest trial timed with ``method`` (else with any method)
        on at least :data:`DECIDE_AT_STEP` steps (else from the one timed on the most steps).

        Setup and finish come from the latest trial that measured them. ``None`` before any trial
        was timed.
        """
        same = [t for t in self.timings if t.method == method] or self.timings
        if not same:
            return None
        enough = [t for t in same if t.steps >= DECIDE_AT_STEP]
        latest = enough[-1] if enough else max(reversed(same), key=lambda t: t.steps)
        finish = next((t.finish for t in reversed(self.timings) if t.finish is not None), None)
        evaluation = next((t.evaluation for t in reversed(same) if t.evaluation is not None), None)
        merged = TrialTiming(**{**asdict(latest), "finish": finish, "evaluation": evaluation})
        scale = non_embedding / latest.non_embedding if non_embedding and latest.non_embedding else 1.0
        return merged.estimate(steps, examples_per_step, evaluations, scale)


class ShortenTrial(Exception):
    """Raised from a Trainer callback: restart this trial with ``steps`` optimizer steps of ``planned``."""

    def __init__(self, steps: int, planned: int):
        super().__init__(f"restart with {steps} of {planned} steps to fit the time budget")
        self.steps = steps
        self.planned = planned


def format_rate(step_seconds: float) -> str:
    """``0.8`` (seconds per step) → ``"1.2 steps/s"``; ``0.004`` → ``"250 steps/s"``."""
    rate = 1 / max(step_seconds, 1e-9)
    return f"{rate:.0f} steps/s" if rate >= 10 else f"{rate:.2g} steps/s"


class DefaultTrialPlanner:
    """Trainer callback for the default trial: estimate it on its first steps; shorten it if needed.

    At step :data:`DECIDE_AT_STEP` (or at the last step, or from step 2 once the steps since the
    first took :data:`EARLY_SHARE` of the time left at the first, if sooner) it projects the whole trial
    from ``clock``, prints the estimate against the budget, and when the rest of the trial cannot
    fit the time left, raises :class:`ShortenTrial` with the steps that fit a restart (which pays
    the setup again), the number of evaluations being ``evaluations`` plus the final ones. When
    not even one step would fit, it says so and lets the trial run on until the budget stops it
    (:class:`deltatune.auto.search.TrialReporter` then evaluates it there).
    Either way it names what would make the whole default trial fit.

    Args:
        clock: the trial's :class:`StepClock` (placed before this callback).
        budget: the search's :class:`TimeBudget` (with a deadline).
        eval_steps: optimizer steps between this run's evaluations.
        evaluations: evaluations during a shortened run's training.
        train_rows: rows of training data (for the ``--max-train-samples`` hint; 0: no hint).
    """

    def __init__(self, clock: StepClock, budget: TimeBudget, eval_steps: int, evaluations: int, train_rows: int = 0):
        self.clock = clock
        self.budget = budget
        self.eval_steps = max(1, eval_steps)
        self.evaluations = evaluations
        self.train_rows = train_rows
        self.decided = False
        self.left_at_first_step: Optional[float] = None

    def __call__(self, trainer, state) -> None:
        step, total = state.global_step, trainer.total_steps
        if self.decided:
            return
        if self.left_at_first_step is None:
            self.left_at_first_step = self.budget.left()
        slow = step >= 2 and bool(self.clock.marks) and time.monotonic() - self.clock.marks[0][0] >= EARLY_SHARE * self.left_at_first_step
        if step < DECIDE_AT_STEP and step < total and not slow:
            return
        self.decided = True
        timing = self.clock.timing()
        if timing is None or self.budget.deadline is None:
            return
        step_s, eval_s, finish = timing.step_seconds, timing.evaluation_seconds(), timing.finish_seconds()
        whole = timing.estimate(total, timing.examples_per_step, total // self.eval_steps)
        rest = whole - timing.setup - step * step_s - (step // self.eval_steps) * eval_s
        elapsed = time.monotonic() - self.clock.started
        left = self.budget.left()
        head = (f"auto: default trial ~{format_seconds(whole)} (about {total} steps at {format_rate(step_s)}); "
                f"budget {format_seconds(self.budget.seconds)}, {format_seconds(max(left, 0.0))} left")
        if self.budget.fits(rest):
            self.budget.say(f"{head}: it fits")
            return
        fixed = timing.setup + finish + self.evaluations * eval_s
        steps = math.floor((left / SAFETY - fixed) / step_s)
        if steps >= total:  # a restart would hold it all: the projection was borderline; the guard has the last word
            self.budget.say(f"{head}: tight; it goes on and is stopped at the budget if need be")
            return
        used_before = self.budget.seconds - left - elapsed
        hint = (f"for the whole default trial give --time-budget {math.ceil((used_before + whole * SAFETY) / 60)}m"
                + (f", --max-train-samples {max(2, self.train_rows * max(steps, 1) // total)}" if self.train_rows else "")
                + " or a smaller model (--models)")
        if steps >= 1:
            shortened = fixed + steps * step_s
            self.budget.say(f"{head}: it does not fit, so it restarts shortened to {steps} of {total} steps (~{format_seconds(shortened)}); {hint}")
            raise ShortenTrial(steps, total)
        self.budget.say(f"{head}: it does not fit, not even shortened to 1 step; it goes on until the budget stops it "
                        f"and is evaluated there; {hint}")
