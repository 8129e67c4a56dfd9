"""Type-checked reading of a run folder's JSON files: what the report uses, in the types it uses.

A file can be valid JSON (or YAML) and still hold the wrong types or shapes: a hand edit, a
file from another program, a disk error. The report never trusts a value's type. Each file is
passed once through a cleaner here, which returns the same structure with every value the
report reads in its expected type; a value of the wrong type or shape is left out and a
*note* says so (``damaged eval.json: train.best_step is "x", not an integer; left out``). The
notes are shown at the top of the report. A file that is not a JSON object at all (``[1]``) is
an error: :class:`DeltatuneError` ``damaged <file>: ...``.

Every string (values and keys) has its lone surrogates (``"\\ud800"``, valid in JSON and in
Python, not encodable as UTF-8) replaced by U+FFFD, so the report can always be written.

- :func:`clean_text`: a string without lone surrogates.
- :func:`clean_eval`, :func:`clean_analysis`, :func:`clean_auto_report`,
  :func:`clean_leaderboard`, :func:`clean_records`, :func:`clean_config`: one per file.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Optional

from deltatune.errors import DeltatuneError

_SURROGATES = re.compile("[\ud800-\udfff]")
_SHOW = 40  # characters of a damaged value quoted in a note


def clean_text(s: str) -> str:
    """``s`` with each lone surrogate (U+D800-U+DFFF) replaced by U+FFFD."""
    return _SURROGATES.sub("\ufffd", s)


def scrub(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, scalars) with every string and dict key cleaned by :func:`clean_text`."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value


def is_number(v: Any) -> bool:
    """An int or float (not a bool); NaN and infinities count."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_finite(v: Any) -> bool:
    """A finite int or float (not a bool)."""
    return is_number(v) and math.isfinite(v)


def _shown(v: Any) -> str:
    try:
        s = json.dumps(v, ensure_ascii=False, allow_nan=True)
    except (TypeError, ValueError):
        s = repr(v)
    s = clean_text(s)
    return s if len(s) <= _SHOW else s[: _SHOW - 1] + "…"


class Checker:
    """Typed access to one file's values; a value of the wrong type becomes ``None`` and a note.

    Attributes:
        file: the file's name as shown in notes (``"eval.json"``).
        notes: ``"damaged <file>: <where> is <value>, not <type>; left out"`` per value left out.
    """

    def __init__(self, file: str, notes: Optional[list[str]] = None):
        self.file = file
        self.notes: list[str] = notes if notes is not None else []

    def bad(self, where: str, value: Any, expected: str) -> None:
        """Record that ``where`` held ``value`` instead of ``expected``."""
        self.notes.append(f"damaged {self.file}: {where} is {_shown(value)}, not {expected}; left out")

    def _typed(self, v: Any, where: str, ok: Callable[[Any], bool], expected: str) -> Any:
        if v is None:
            return None
        if ok(v):
            return v
        self.bad(where, v, expected)
        return None

    def obj(self, v: Any, where: str) -> Optional[dict]:
        """A JSON object (``None`` when missing or of another type)."""
        return self._typed(v, where, lambda x: isinstance(x, dict), "an object")

    def items(self, v: Any, where: str) -> list:
        """A JSON array (``[]`` when missing or of another type)."""
        return self._typed(v, where, lambda x: isinstance(x, list), "a list") or []

    def int_(self, v: Any, where: str) -> Optional[int]:
        """An integer (an integral float is accepted and converted)."""
        if isinstance(v, float) and v.is_integer():
            return int(v)
        return self._typed(v, where, lambda x: isinstance(x, int) and not isinstance(x, bool), "an integer")

    def num(self, v: Any, where: str) -> Optional[float | int]:
        """A number (int or float, NaN and infinities kept)."""
        return self._typed(v, where, is_number, "a number")

    def bool_(self, v: Any, where: str) -> Optional[bool]:
        """true or false."""
        return self._typed(v, where, lambda x: isinstance(x, bool), "true or false")

    def text(self, v: Any, where: str) -> Optional[str]:
        """A string; a number or bool is turned into text, an object or list is left out."""
        if isinstance(v, str):
            return clean_text(v)
        if isinstance(v, (int, float, bool)):
            return json.dumps(v)
        return self._typed(v, where, lambda x: False, "text")

    def shown(self, v: Any) -> str:
        """Any value as text for a table cell (a string as it is, anything else as JSON)."""
        if v is None:
            return ""
        return clean_text(v) if isinstance(v, str) else _shown_full(v)

    def fields(self, d: dict, where: str, spec: dict[str, Callable[[Any, str], Any]], keep_scalars: bool = False) -> dict:
        """``d`` with each key of ``spec`` checked by its reader (left out when missing or damaged);
        other keys kept when ``keep_scalars`` and their value is a number, string or bool."""
        out: dict[str, Any] = {}
        for k, v in d.items():
            if k in spec:
                value = spec[k](v, f"{where}{k}")
                if value is not None:
                    out[k] = value
            elif keep_scalars and isinstance(v, (int, float, str, bool)):
                out[k] = clean_text(v) if isinstance(v, str) else v
        return out


def _shown_full(v: Any) -> str:
    try:
        return clean_text(json.dumps(v, ensure_ascii=False, allow_nan=True))
    except (TypeError, ValueError):
        return clean_text(repr(v))


def require_object(raw: Any, path: Path, what: str) -> Optional[dict]:
    """``raw`` (a file's parsed JSON) as a dict; ``None`` stays ``None`` (the file is missing).

    Raises:
        DeltatuneError: ``damaged <path>: it holds a JSON <type>, not an object ...``.
    """
    if raw is None or isinstance(raw, dict):
        return raw
    kind = {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(raw), type(raw).__name__)
    raise DeltatuneError(f"damaged {path}: it holds a JSON {kind}, not an object ({what}); restore it, or delete it and "
                         "rerun the command that writes it")


# ---- eval.json ------------------------------------------------------------------------------
_TRAIN_INTS = ("global_step", "best_step", "micro_batch_size", "micro_batches_per_step", "trainable_parameters",
               "total_parameters", "saved_bytes", "per_device_train_batch_size")
_TRAIN_NUMS = ("train_seconds", "examples_per_second", "tokens_per_second", "peak_rss_mib")


def _split_metrics(c: Checker, m: dict, where: str) -> dict[str, Any]:
    """One split's metrics: numbers, ``per_class`` (label -> {precision, recall, f1, support}),
    ``confusion_matrix`` (square, non-negative integer counts, one row per ``per_class`` label),
    ``samples`` ({prediction, reference} texts); other values left out silently (not shown)."""
    out: dict[str, Any] = {}
    for k, v in m.items():
        if k == "per_class":
            pc = c.obj(v, f"{where}per_class")
            if pc is not None:
                rows = {}
                for label, row in pc.items():
                    r = c.obj(row, f"{where}per_class.{label}")
                    if r is not None:
                        rows[clean_text(str(label))] = c.fields(r, f"{where}per_class.{label}.", {
                            "precision": c.num, "recall": c.num, "f1": c.num, "support": c.int_})
                out["per_class"] = rows
        elif k == "confusion_matrix":
            out["confusion_matrix"] = v  # checked against per_class below
        elif k == "samples":
            samples = []
            for i, s in enumerate(c.items(v, f"{where}samples")):
                s = c.obj(s, f"{where}samples[{i}]")
                if s is not None:
                    samples.append({x: c.shown(s.get(x)) for x in ("prediction", "reference")})
            out["samples"] = samples
        elif is_number(v):
            out[clean_text(k)] = v
    if "confusion_matrix" in out:
        cm = out.pop("confusion_matrix")
        n = len(out.get("per_class") or {})
        if (isinstance(cm, list) and n and len(cm) == n
                and all(isinstance(r, list) and len(r) == n and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in r)
                        for r in cm)):
            out["confusion_matrix"] = cm
        else:
            c.notes.append(f"damaged {c.file}: {where}confusion_matrix is not a {n} x {n} table of counts "
                           f"(one row and column per class of per_class); left out")
    return out


def _data_files(c: Checker, v: Any, where: str) -> Optional[dict]:
    d = c.obj(v, where)
    if d is None:
        return None
    out = {}
    for split, entry in d.items():
        e = c.obj(entry, f"{where}.{split}")
        if e is not None:
            out[clean_text(str(split))] = c.fields(e, f"{where}.{split}.", {
                "file": c.text, "rows": c.int_, "path": c.text, "bytes": c.int_, "carved_from": c.text})
    return out


def clean_eval(raw: Any, path: Path, notes: list[str]) -> Optional[dict]:
    """eval.json with its values in the types the report reads (``None`` when the file is missing).

    Keeps: ``train`` (integers: global_step, best_step, ...; numbers: train_seconds, ...;
    early_stopped; ``data_files``), ``data`` (split -> object), every split's metrics
    (:func:`_split_metrics`), ``compressed_delta`` (settings and its ``validation`` metrics).
    What is left out is appended to ``notes``.

    Raises:
        DeltatuneError: the file holds JSON that is not an object.
    """
    ev = require_object(raw, path, "eval.json holds the final metrics per split and a train section")
    if ev is None:
        return None
    c = Checker("eval.json", notes)
    out: dict[str, Any] = {}
    for k, v in ev.items():
        if k == "train":
            t = c.obj(v, "train")
            if t is not None:
                spec: dict[str, Callable] = {x: c.int_ for x in _TRAIN_INTS}
                spec.update({x: c.num for x in _TRAIN_NUMS})
                spec.update(early_stopped=c.bool_, interrupted=c.bool_, data_files=lambda x, w: _data_files(c, x, w))
                out["train"] = c.fields(t, "train.", spec, keep_scalars=True)
        elif k == "data":
            d = c.obj(v, "data")
            if d is not None:
                out["data"] = {clean_text(str(s)): scrub(x) for s, x in d.items() if isinstance(x, dict)}
        elif k == "compressed_delta":
            cd = c.obj(v, "compressed_delta")
            if cd is not None:
                comp: dict[str, Any] = {}
                for ck, cv in cd.items():
                    if isinstance(cv, dict):
                        comp[clean_text(ck)] = _split_metrics(c, cv, f"compressed_delta.{ck}.")
                    elif isinstance(cv, (int, float, str, bool)) or cv is None:
                        comp[clean_text(ck)] = scrub(cv)
                    elif isinstance(cv, list) and all(isinstance(x, (int, float, str, bool)) for x in cv):
                        comp[clean_text(ck)] = scrub(cv)
                out["compressed_delta"] = comp
        elif isinstance(v, dict):  # a split's metrics (validation, test, ...)
            out[clean_text(k)] = _split_metrics(c, v, f"{k}.")
        elif k in ("validation", "test") and v is not None:
            c.bad(k, v, "an object")
    return out


# ---- analysis.json --------------------------------------------------------------------------
def clean_analysis(raw: Any, path: Path, notes: list[str]) -> Optional[dict]:
    """analysis.json checked: ``split``, ``task`` (text), ``worst_examples`` ({score: text,
    higher_is_better: bool, rows: [{row: int, score: number or None, input, reference, prediction:
    text}]}), ``generations`` ([{row: int, input, reference, before, after: text}]). A row that is
    not an object is left out with a note; a non-text input (a token list) is shown as JSON.

    Raises:
        DeltatuneError: the file holds JSON that is not an object.
    """
    an = require_object(raw, path, "analysis.json holds the worst examples and the generations")
    if an is None:
        return None
    c = Checker("analysis.json", notes)
    out: dict[str, Any] = {}
    for k in ("split", "task"):
        if an.get(k) is not None:
            value = c.text(an[k], k)
            if value is not None:
                out[k] = value
    worst = c.obj(an.get("worst_examples"), "worst_examples")
    if worst is not None:
        w: dict[str, Any] = {"rows": []}
        for k, read in (("score", c.text), ("higher_is_better", c.bool_)):
            value = read(worst.get(k), f"worst_examples.{k}")
            if value is not None:
                w[k] = value
        for i, r in enumerate(c.items(worst.get("rows"), "worst_examples.rows")):
            r = c.obj(r, f"worst_examples.rows[{i}]")
            if r is None:
                continue
            row = {x: c.shown(r.get(x)) for x in ("input", "reference", "prediction")}
            row["row"] = c.int_(r.get("row"), f"worst_examples.rows[{i}].row")
            row["score"] = c.num(r.get("score"), f"worst_examples.rows[{i}].score")
            w["rows"].append(row)
        out["worst_examples"] = w
    gens = []
    for i, g in enumerate(c.items(an.get("generations"), "generations")):
        g = c.obj(g, f"generations[{i}]")
        if g is None:
            continue
        row = {x: c.shown(g.get(x)) for x in ("input", "reference", "before", "after")}
        row["row"] = c.int_(g.get("row"), f"generations[{i}].row")
        gens.append(row)
    if gens:
        out["generations"] = gens
    return out


# ---- metrics.jsonl --------------------------------------------------------------------------
_EVENT_FIELDS = {
    "best_step": "int", "total_steps": "int", "metric_for_best_model": "text", "greater_is_better": "bool",
    "task_settings": "settings",
}


def _settings(value: Any) -> Optional[dict[str, Any]]:
    """A start record's ``task_settings``: text keys to scalars or lists of scalars (others left out)."""
    if not isinstance(value, dict):
        return None
    scalar = (int, float, str, bool, type(None))
    return {clean_text(str(k)): scrub(v) for k, v in value.items()
            if isinstance(v, scalar) or (isinstance(v, list) and all(isinstance(x, scalar) for x in v))}


def clean_records(records: list[dict[str, Any]], notes: list[str]) -> list[dict[str, Any]]:
    """metrics.jsonl records with an integer ``step`` >= 0 (others left out, counted in one note);
    in a training or evaluation record only the numbers are kept (NaN and infinities too: they show
    a diverged run); an event record keeps ``event`` and its typed fields (``best_step``,
    ``total_steps``, ``metric_for_best_model``, ``greater_is_better``, ``task_settings``)."""
    out = []
    dropped = 0
    num_types = (int, float)
    numeric = frozenset(num_types).__contains__
    for r in records:
        step = r.get("step")
        if type(step) is not int or step < 0:
            dropped += 1
            continue
        ev = r.get("event")
        if ev is None:
            if all(map(numeric, map(type, r.values()))):
                out.append(r)  # the common case, untouched (a 200,000-step log stays fast)
            else:
                out.append({k: v for k, v in r.items() if type(v) in num_types})
            continue
        rec: dict[str, Any] = {"step": step, "event": clean_text(str(ev))}
        for k, kind in _EVENT_FIELDS.items():
            v = r.get(k)
            if (kind == "int" and type(v) is int) or (kind == "bool" and isinstance(v, bool)):
                rec[k] = v
            elif kind == "text" and isinstance(v, str):
                rec[k] = clean_text(v)
            elif kind == "settings" and _settings(v) is not None:
                rec[k] = _settings(v)
        out.append(rec)
    if dropped:
        notes.append(f"damaged metrics.jsonl: {dropped} record(s) without a whole-number step; left out")
    return out


# ---- config.yaml ----------------------------------------------------------------------------
def clean_config(raw: dict[str, Any]) -> dict[str, Any]:
    """config.yaml's mapping with lone surrogates replaced (values keep their types; the report
    shows any value as text)."""
    return scrub(raw)


# ---- deltatune auto -------------------------------------------------------------------------
def _leaderboard_row(c: Checker, r: dict, where: str) -> dict[str, Any]:
    spec: dict[str, Callable] = {
        "trial": c.int_, "state": c.text, "value": c.num, "path": c.text, "seconds": c.num, "note": c.text,
        "baseline": c.bool_, "metric": c.text,
        "test": lambda v, w: {clean_text(k): x for k, x in (c.obj(v, w) or {}).items() if is_number(x)},
    }
    out = c.fields(r, where, spec, keep_scalars=True)
    for k, v in r.items():  # config columns may be lists (target modules)
        if k not in out and k not in spec and isinstance(v, list) and all(isinstance(x, (int, float, str, bool)) for x in v):
            out[clean_text(k)] = scrub(v)
    return out


def clean_leaderboard(raw: Any, c: Checker, where: str = "") -> list[dict[str, Any]]:
    """Leaderboard rows (objects; others left out with a note), each with typed ``trial``, ``state``,
    ``value``, ``test``, ``path``, ``seconds``, ``note``, ``baseline`` and its config columns."""
    rows = []
    for i, r in enumerate(c.items(raw, where or "the leaderboard")):
        r = c.obj(r, f"{where}[{i}]")
        if r is not None:
            rows.append(_leaderboard_row(c, r, f"{where}[{i}]."))
    return rows


def clean_auto_report(raw: Any, path: Path, notes: list[str]) -> dict[str, Any]:
    """auto_report.json with the values the report reads typed: ``task``, ``metric``, ``direction``
    (text), ``seconds``, ``time_budget_seconds``, ``freed_bytes`` (numbers), ``interrupted``,
    ``best``/``baseline`` ({trial, value, path, reproduce, state}), ``study`` ({trials}),
    ``importances`` ({values: name -> number, evaluator, trials, caveats, error}), ``leaderboard``.

    Raises:
        DeltatuneError: the file holds JSON that is not an object.
    """
    rep = require_object(raw, path, "auto_report.json holds the search's summary") or {}
    c = Checker("auto_report.json", notes)
    trial = {"trial": c.int_, "value": c.num, "path": c.text, "reproduce": c.text, "state": c.text}
    spec: dict[str, Callable] = {
        "task": c.text, "metric": c.text, "direction": c.text, "seconds": c.num, "time_budget_seconds": c.num,
        "freed_bytes": c.num, "interrupted": c.bool_,
        "best": lambda v, w: c.fields(c.obj(v, w) or {}, f"{w}.", trial) or None,
        "baseline": lambda v, w: c.fields(c.obj(v, w) or {}, f"{w}.", trial) or None,
        "study": lambda v, w: c.fields(c.obj(v, w) or {}, f"{w}.", {"trials": c.int_}),
        "importances": lambda v, w: _importances(c, v, w),
        "leaderboard": lambda v, w: clean_leaderboard(v, c, w),
    }
    return c.fields(rep, "", spec)


def _importances(c: Checker, v: Any, where: str) -> dict[str, Any]:
    imp = c.obj(v, where) or {}
    out = c.fields(imp, f"{where}.", {
        "evaluator": c.text, "trials": c.int_, "error": c.text,
        "caveats": lambda x, w: [t for i, y in enumerate(c.items(x, w)) if (t := c.text(y, f"{w}[{i}]")) is not None],
    })
    values = c.obj(imp.get("values"), f"{where}.values")
    if values is not None:
        out["values"] = {clean_text(k): x for k, x in values.items() if c.num(x, f"{where}.values.{k}") is not None}
    return out
