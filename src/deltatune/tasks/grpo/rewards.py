"""GRPO's reward functions: the built-ins and the user's own, and their weighted sum per completion.

A reward function scores every completion of a step at once, with TRL's signature
(``trl.GRPOTrainer``'s ``reward_funcs``)::

    def my_reward(completions: list[str], prompts: list, **columns) -> list[float]

``completions`` are the generated texts (special tokens removed), ``prompts`` the rows' ``prompt``
values (a string, or a list of ``{role, content}`` messages), one per completion; every other
column of the data comes as a keyword argument holding one value per completion (``answer=[...]``),
and ``completion_ids`` (the generated token ids, through the first EOS) too. Only the keywords a
function declares are passed, unless it takes ``**kwargs``. It returns one finite number per
completion.

Built-ins (``data.rewards``):

- ``exact_match``: 1.0 when the completion's final answer, normalized, equals the normalized
  answer column (SQuAD's normalization: lower case, no punctuation, no articles ``a an the``,
  single spaces). The final answer is the last ``\\boxed{...}``, else what follows the last
  ``Answer:``, else the last non-empty line.
- ``numeric_match``: 1.0 when the last number in the completion (thousands commas removed)
  equals the last number in the answer column within 1e-6.
- ``format``: 1.0 when ``re.fullmatch(data.format_pattern, completion.strip())`` matches.
- ``length_penalty``: ``-max(0, tokens - limit) / data.max_completion_length``, ``limit =
  data.length_penalty_tokens`` (0: half of ``max_completion_length``).

**User rewards run user code.** ``'module:function'`` names a function in a module found only
under ``data.reward_path`` (a folder, put first on ``sys.path`` while the module is imported, so it
can import its neighbours; or one ``.py`` file whose name is the module): nothing is imported from
anywhere else, and never from a run folder (a ``reward_path`` inside ``output_dir`` is refused).
A run loaded for prediction or evaluation (:func:`deltatune.load`, ``deltatune evaluate``) keeps
its config's ``data.reward_path`` only with ``trust_remote_code``: a received run cannot make its
author's reward code run.
The module is imported, and so runs, when the task first needs its rewards (training, or
evaluating labelled rows), never to generate predictions.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import re
import string
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from deltatune.errors import DeltatuneError
from deltatune.tasks.options.preference import BUILTIN_REWARDS, REWARDS_NEEDING_ANSWER, is_user_reward, reward_weights_problem

# keyword arguments the task passes itself; columns of these names are not passed
RESERVED = frozenset({"completions", "prompts", "completion_ids"})

_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_ANSWER = re.compile(r"answer\s*(?:is)?\s*[:=]", re.IGNORECASE)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


# ---- the built-ins --------------------------------------------------------------------------
def normalize_text(text: Any) -> str:
    """SQuAD's answer normalization: lower case, punctuation and articles removed, single spaces."""
    s = "".join(ch for ch in str(text).lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def final_answer(completion: str) -> str:
    """The final answer of a completion: the last ``\\boxed{...}``, else the text after the last
    ``Answer:`` (``answer is``/``answer =``), else the last non-empty line ("" for an empty text)."""
    boxed = _BOXED.findall(completion)
    if boxed:
        return boxed[-1]
    marks = list(_ANSWER.finditer(completion))
    if marks:
        return completion[marks[-1].end() :].strip()
    lines = [line for line in completion.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def last_number(text: Any) -> Optional[float]:
    """The last number written in ``text`` (``-1,234.5``: thousands commas removed), or ``None``."""
    found = _NUMBER.findall(str(text))
    return float(found[-1].replace(",", "")) if found else None


def exact_match(completions: Sequence[str], answers: Sequence[Any]) -> list[float]:
    """1.0 where ``normalize_text(final_answer(completion)) == normalize_text(answer)``, else 0.0."""
    return [float(normalize_text(final_answer(c)) == normalize_text(a)) for c, a in zip(completions, answers)]


def numeric_match(completions: Sequence[str], answers: Sequence[Any]) -> list[float]:
    """1.0 where the completion's last number equals the answer's last number within 1e-6, else 0.0
    (also 0.0 for a completion without a number)."""
    out = []
    for c, a in zip(completions, answers):
        got, want = last_number(c), last_number(a)
        out.append(float(got is not None and want is not None and abs(got - want) <= 1e-6))
    return out


def format_match(completions: Sequence[str], pattern: re.Pattern) -> list[float]:
    """1.0 where ``pattern.fullmatch(completion.strip())``, else 0.0."""
    return [float(pattern.fullmatch(c.strip()) is not None) for c in completions]


def length_penalty(lengths: Sequence[int], limit: int, max_length: int) -> list[float]:
    """``-max(0, tokens - limit) / max_length`` per completion (0 down to -1 + limit/max_length)."""
    return [-max(0, int(n) - limit) / max_length for n in lengths]


# ---- user rewards ---------------------------------------------------------------------------
def _module_file(module: str, root: Path) -> Optional[Path]:
    """``root/a/b.py`` or ``root/a/b/__init__.py`` for module ``a.b``, or ``None``."""
    parts = module.split(".")
    for candidate in (root.joinpath(*parts[:-1], parts[-1] + ".py"), root.joinpath(*parts, "__init__.py")):
        if candidate.is_file():
            return candidate
    return None


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def load_user_reward(spec: str, reward_path: Optional[str], output_dir: Optional[str] = None) -> Callable:
    """The function ``'module:function'`` of a module under ``reward_path`` (see the module doc).

    Raises:
        DeltatuneError: no ``data.reward_path``; the path is missing or inside the run folder
            ``output_dir``; the module is not there (or is not the .py file given); importing it
            fails (its exception named); no such attribute, or it is not callable.
    """
    module, _, name = spec.partition(":")
    if not is_user_reward(spec):
        raise DeltatuneError(f"data.rewards: {spec!r} is neither a built-in ({', '.join(BUILTIN_REWARDS)}) nor 'module:function'")
    if not reward_path:
        raise DeltatuneError(
            f"data.rewards: {spec!r} is a reward of your own, and user rewards are imported only from data.reward_path; "
            "set data.reward_path to the folder (or .py file) that holds it (a run folder's own data.reward_path is "
            "used only when you load it with --trust-remote-code / trust_remote_code=True)"
        )
    root = Path(reward_path).expanduser().resolve()
    if output_dir and _is_within(root, Path(output_dir).expanduser().resolve()):
        raise DeltatuneError(
            f"data.reward_path {reward_path} is inside the run folder {output_dir}; rewards are never imported from a "
            "run folder: keep them in a folder of your own"
        )
    if root.is_file():
        if root.suffix != ".py" or root.stem != module:
            raise DeltatuneError(f"data.reward_path is the file {root}; name its functions '{root.stem}:function' (got {spec!r})")
        file, folder = root, root.parent
    elif root.is_dir():
        file, folder = _module_file(module, root), root
        if file is None:
            raise DeltatuneError(f"data.rewards: module {module!r} of {spec!r} is not in data.reward_path {root} (no {module.replace('.', '/')}.py)")
    else:
        raise DeltatuneError(f"data.reward_path {reward_path} does not exist; give the folder (or .py file) of your reward functions")
    mod = _import_file(f"deltatune_user_rewards.{module}", file, folder, spec)
    fn = getattr(mod, name, None)
    if fn is None:
        raise DeltatuneError(f"data.rewards: {file} has no function {name!r} (for {spec!r})")
    if not callable(fn):
        raise DeltatuneError(f"data.rewards: {spec!r} in {file} is a {type(fn).__name__}, not a function")
    return fn


def _import_file(qualified: str, file: Path, folder: Path, spec: str):
    """Import ``file`` as module ``qualified`` with ``folder`` first on ``sys.path`` meanwhile."""
    mod_spec = importlib.util.spec_from_file_location(qualified, file)
    if mod_spec is None or mod_spec.loader is None:
        raise DeltatuneError(f"data.rewards: cannot import {file} for {spec!r}")
    module = importlib.util.module_from_spec(mod_spec)
    sys.path.insert(0, str(folder))
    try:
        mod_spec.loader.exec_module(module)
    except Exception as e:  # the user's module: any error it raises becomes one line
        msg = str(e).splitlines()[0] if str(e) else ""
        raise DeltatuneError(f"data.rewards: importing {file} for {spec!r} failed: {type(e).__name__}: {msg}") from None
    finally:
        try:
            sys.path.remove(str(folder))
        except ValueError:
            pass
    return module


def _accepted(fn: Callable, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments ``fn`` declares (all with ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return kwargs
    names = {p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    return {k: v for k, v in kwargs.items() if k in names}


# ---- the set of rewards of a run ------------------------------------------------------------
@dataclass
class Reward:
    """One reward of ``data.rewards``: ``spec`` as written, ``key`` (the metric suffix: ``reward_<key>``),
    its ``weight``, whether it reads the answer column, and ``fn`` (a user function, or ``None``
    for a built-in)."""

    spec: str
    key: str
    weight: float
    needs_answer: bool
    fn: Optional[Callable] = None


class RewardSet:
    """The rewards of a run (``data.rewards``, ``data.reward_weights``, ...) and their weighted sum.

    Args:
        data: the run's ``data`` config section.
        output_dir: the run folder (user rewards are never imported from it).

    Raises:
        DeltatuneError: no reward; ``reward_weights`` of another length or not finite; a bad
            ``format_pattern``; a user reward that cannot be loaded (:func:`load_user_reward`).
    """

    def __init__(self, data, output_dir: Optional[str] = None):
        specs = list(data.rewards)
        if not specs:
            raise DeltatuneError("data.rewards is empty; name at least one reward (e.g. [numeric_match])")
        weights = list(data.reward_weights) if data.reward_weights is not None else [1.0] * len(specs)
        problem = reward_weights_problem(len(specs), weights)
        if problem:
            raise DeltatuneError(problem)
        self.answer_column = data.answer_column
        self.max_length = data.max_completion_length
        self.limit = data.length_penalty_tokens or data.max_completion_length // 2
        self.pattern: Optional[re.Pattern] = None
        self.rewards: list[Reward] = []
        seen: set[str] = set()
        for spec, w in zip(specs, weights):
            if spec in BUILTIN_REWARDS:
                fn, key = None, spec
                if spec == "format" and self.pattern is None:
                    try:
                        self.pattern = re.compile(data.format_pattern)
                    except re.error as e:
                        raise DeltatuneError(f"data.format_pattern {data.format_pattern!r} is not a regular expression: {e}") from None
            else:
                fn = load_user_reward(spec, data.reward_path, output_dir)
                key = spec.partition(":")[2]
            while key in seen:
                key += "_"
            seen.add(key)
            self.rewards.append(Reward(spec, key, float(w), spec in REWARDS_NEEDING_ANSWER, fn))
        if any(r.needs_answer for r in self.rewards) and not self.answer_column:
            names = ", ".join(r.spec for r in self.rewards if r.needs_answer)
            raise DeltatuneError(f"data.rewards {names} compare with a reference answer: set data.answer_column")

    @property
    def needs_answer(self) -> bool:
        """Whether a built-in reward reads ``answer_column``."""
        return any(r.needs_answer for r in self.rewards)

    @property
    def keys(self) -> list[str]:
        """The metric suffixes, in ``data.rewards`` order (``reward_<key>``)."""
        return [r.key for r in self.rewards]

    def check_rows(self, rows: Sequence[dict[str, Any]], source: str) -> None:
        """Check that every row has what the built-ins read: a non-empty answer (with a number for
        ``numeric_match``).

        Raises:
            DeltatuneError: the column is missing, or a row's answer is empty/without a number,
                naming ``source``, the row (from 1) and the column.
        """
        if not self.needs_answer:
            return
        col = self.answer_column
        numeric = any(r.spec == "numeric_match" for r in self.rewards)
        for i, row in enumerate(rows, start=1):
            if col not in row:
                raise DeltatuneError(
                    f"{source}: no column '{col}' (data.answer_column), which the rewards "
                    f"{', '.join(r.spec for r in self.rewards if r.needs_answer)} compare with; columns are "
                    f"{', '.join(repr(c) for c in row)}"
                )
            value = row[col]
            if value is None or not str(value).strip():
                raise DeltatuneError(f"{source}: row {i} has an empty '{col}' (data.answer_column); fill it or drop the row")
            if numeric and last_number(value) is None:
                raise DeltatuneError(f"{source}: row {i}'s '{col}' {str(value)[:60]!r} has no number for the numeric_match reward")

    def score(
        self,
        completions: Sequence[str],
        completion_ids: Sequence[Sequence[int]],
        prompts: Sequence[Any],
        columns: dict[str, Sequence[Any]],
    ) -> tuple[list[float], dict[str, list[float]]]:
        """Every reward of every completion and their weighted sum.

        Args:
            completions: N completion texts.
            completion_ids: N token id lists (their lengths are the completions' token counts).
            prompts: N prompts (the rows' ``prompt`` values).
            columns: the rows' other columns, N values each.

        Returns:
            ``(total, per_reward)``: N weighted sums, and ``{key: N unweighted values}``.

        Raises:
            DeltatuneError: a user reward raises, returns other than N values, or a value that
                is not a finite number (naming the reward).
        """
        n = len(completions)
        per: dict[str, list[float]] = {}
        for r in self.rewards:
            per[r.key] = self._one(r, completions, completion_ids, prompts, columns, n)
        total = [sum(r.weight * per[r.key][i] for r in self.rewards) for i in range(n)]
        return total, per

    def _one(self, r: Reward, completions, completion_ids, prompts, columns, n: int) -> list[float]:
        if r.spec == "exact_match":
            return exact_match(completions, columns[self.answer_column])
        if r.spec == "numeric_match":
            return numeric_match(completions, columns[self.answer_column])
        if r.spec == "format":
            return format_match(completions, self.pattern)
        if r.spec == "length_penalty":
            return length_penalty([len(c) for c in completion_ids], self.limit, self.max_length)
        kwargs = {k: list(v) for k, v in columns.items() if k not in RESERVED}
        kwargs.update(completions=list(completions), prompts=list(prompts), completion_ids=[list(c) for c in completion_ids])
        try:
            values = r.fn(**_accepted(r.fn, kwargs))
        except DeltatuneError:
            raise
        except Exception as e:  # the user's code: one line naming it
            msg = str(e).splitlines()[0] if str(e) else ""
            raise DeltatuneError(f"reward {r.spec!r} failed: {type(e).__name__}: {msg}") from None
        return check_values(r.spec, values, n)


def check_values(name: str, values: Any, n: int) -> list[float]:
    """``values`` as N floats.

    Raises:
        DeltatuneError: not a sequence of N values, or a value that is not a finite real number
            (booleans count as 0/1), naming the reward ``name``.
    """
    try:
        values = list(values)
    except TypeError:
        raise DeltatuneError(f"reward {name!r} returned a {type(values).__name__}; return a list of {n} numbers, one per completion") from None
    if len(values) != n:
        raise DeltatuneError(f"reward {name!r} returned {len(values)} rewards for {n} completions; return one per completion")
    out = []
    for i, v in enumerate(values):
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise DeltatuneError(f"reward {name!r} returned {v!r} for completion {i}; rewards must be numbers") from None
        if isinstance(v, str) or not math.isfinite(x):
            raise DeltatuneError(f"reward {name!r} returned {v!r} for completion {i}; rewards must be finite numbers")
        out.append(x)
    return out
