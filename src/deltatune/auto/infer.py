"""Task inference: which deltatune task a table is for, and which columns hold what.

:func:`infer_task` looks at the column names and at the values of the first rows and applies
these rules, first match wins (each decision is returned as one line of reasoning):

0. **image-classification** / **audio-classification**: a column of file paths to images
   (``.jpg``, ``.png``, ... :data:`IMAGE_SUFFIXES`) or audio (``.wav``, ``.flac``, ``.mp3``, ``.ogg``:
   :data:`AUDIO_SUFFIXES`), judged by the values' suffixes, next to a label column (a class-folder
   directory loads as ``image``/``audio`` + ``label``). The path column is ``data.image_column`` /
   ``data.audio_column``; labels as text-classification's (multi-label included).
1. **token-classification**: a column of word lists (``tokens``/``words``) next to a column of
   tag lists of the same lengths (``tags``/``ner_tags``/...); CoNLL files load this way.
2. **question-answering**: question + context + answers, where the answers are SQuAD-style
   (``{"text": [...], "answer_start": [...]}``). Plain-text answers (no character offsets)
   give **generative-qa**, which does not need offsets.
3. **instruction**: Alpaca ``instruction``/``output``, chat ``messages``/``conversations``, or
   ``prompt``/``completion`` columns.
4. **source → target** text pairs (``source``/``target``, ``document``/``summary``,
   ``article``/``highlights``, ``src``/``tgt``, ``input``/``output``, two language codes such
   as ``en``/``de``). Summary-like names, a source stored as a list of sentences, or sources
   at least :data:`SUMMARY_LENGTH_RATIO` times longer than targets (median words) mean
   **summarization**; language-code names or similar lengths mean **translation**. On an
   encoder model summarization becomes **extractive-summarization**.
5. **text-classification**: a text column and a label column. Lists of labels, or labels
   joined by ``,``/``;``/``|`` (in at least 10% of the rows, with fewer distinct parts than
   distinct values), mean multi-label. Two text columns of a known pair (``sentence1``/
   ``sentence2``, ``premise``/``hypothesis``, ...) are a text pair.
6. **raw text** (one text column, nothing else usable): **causal-lm** on a decoder model,
   **masked-lm** on an encoder; without a model named, causal-lm (the packaged decoder).

For the generative tasks the default prompt template's placeholders (``{source}``,
``{question}``, ``{context}``) are renamed to the table's columns (``data.prompt_template``),
using the seq2seq templates for an encoder-decoder model and the instruction-style ones for a
decoder. Known column names are matched case-insensitively; when none matches, the text column is the
string column with the longest mean length and the label column a low-cardinality column
(at most :data:`MAX_CLASSES` distinct values, fewer than half the rows).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from deltatune.errors import DeltatuneError
from deltatune.tasks.registry import REGISTRY, tasks_of_family

SAMPLE_ROWS = 200
SUMMARY_LENGTH_RATIO = 2.0
MAX_CLASSES = 100

TEXT_NAMES = ("text", "sentence", "review", "content", "document", "comment", "tweet", "body", "utterance", "query", "message")
LABEL_NAMES = ("label", "labels", "category", "categories", "sentiment", "class", "intent", "topic", "tag", "target")
PAIR_NAMES = (
    ("sentence1", "sentence2"), ("premise", "hypothesis"), ("question1", "question2"),
    ("text_a", "text_b"), ("text1", "text2"), ("question", "sentence"),
)
TOKENS_NAMES = ("tokens", "words")
TAGS_NAMES = ("tags", "ner_tags", "ner", "labels", "pos_tags", "bio", "tag", "label")
QUESTION_NAMES = ("question", "query")
CONTEXT_NAMES = ("context", "passage", "paragraph")
ANSWER_NAMES = ("answers", "answer")
SOURCE_TARGET_NAMES = (
    ("document", "summary"), ("article", "highlights"), ("article", "summary"), ("text", "summary"),
    ("dialogue", "summary"), ("source", "target"), ("src", "tgt"), ("input", "output"),
)
SUMMARY_NAMES = {"summary", "highlights", "abstract", "tldr"}
LANGUAGES = {
    "en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian", "pt": "Portuguese",
    "nl": "Dutch", "ru": "Russian", "zh": "Chinese", "ja": "Japanese", "cs": "Czech", "ro": "Romanian",
}
SEPARATORS = (";", "|", ",")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")
# file kind -> (task, its path-column key, usual names of that column)
MEDIA = {
    "image": ("image-classification", "data.image_column", ("image", "img", "image_path", "path", "file", "filename", "filepath")),
    "audio": ("audio-classification", "data.audio_column", ("audio", "audio_path", "path", "file", "filename", "filepath")),
}

# tasks done by an encoder (the others by a decoder): from the task registry
ENCODER_TASKS = tasks_of_family("encoder")


@dataclass
class Inference:
    """What :func:`infer_task` decided.

    Attributes:
        task: a name of :data:`deltatune.config.TASKS`.
        settings: dotted config keys to set (``{"data.text_column": "review"}``).
        reasons: one line per decision, in order.
    """

    task: str
    settings: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)


# at most this many training rows in every class: deltatune auto trains few-shot (train.method contrastive)
FEW_SHOT_MAX_PER_CLASS = 16


def few_shot_reason(keys: Optional[Sequence[Any]]) -> Optional[str]:
    """Why ``deltatune auto`` should train a single-label classification few-shot (SetFit's recipe,
    ``train.method: contrastive``), or ``None``: every class of the training labels ``keys`` (one
    per row; ``None`` for multi-label data) has at most :data:`FEW_SHOT_MAX_PER_CLASS` rows. SetFit
    (Tunstall et al. 2022) reports its largest gains over standard fine-tuning at 8-16 examples per class."""
    if not keys:
        return None
    counts: dict[Any, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    if len(counts) < 2 or max(counts.values()) > FEW_SHOT_MAX_PER_CLASS:
        return None
    return (f"train.method = 'contrastive' (few-shot): at most {max(counts.values())} training rows per class "
            f"(<= {FEW_SHOT_MAX_PER_CLASS}; set train.method: standard to fine-tune the usual way)")


# ---- value helpers -----------------------------------------------------------------------
def _is_list(v: Any) -> bool:
    return isinstance(v, (list, tuple, np.ndarray))


def _is_text(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


def _words(v: Any) -> int:
    if _is_list(v):
        return sum(_words(x) for x in v)
    return len(str(v).split()) if v is not None else 0


def _frac(values: Sequence[Any], pred) -> float:
    present = [v for v in values if v is not None]
    return sum(1 for v in present if pred(v)) / len(present) if present else 0.0


def _find(columns: dict[str, str], names: Sequence[str], exclude: Sequence[str] = ()) -> Optional[str]:
    """The actual column name of the first of ``names`` present (case-insensitive)."""
    for n in names:
        if n in columns and columns[n] not in exclude:
            return columns[n]
    return None


class _Table:
    """Column names (lowercase → actual) and the sampled values of each column."""

    def __init__(self, rows: list[dict[str, Any]], column_names: Sequence[str]):
        self.names = list(column_names)
        self.lower = {c.lower(): c for c in self.names}
        self.values = {c: [r.get(c) for r in rows] for c in self.names}

    def text_like(self, col: str) -> bool:
        return _frac(self.values[col], _is_text) >= 0.9

    def list_like(self, col: str) -> bool:
        return _frac(self.values[col], _is_list) >= 0.9

    def mean_chars(self, col: str) -> float:
        vals = [len(str(v)) for v in self.values[col] if v is not None]
        return sum(vals) / len(vals) if vals else 0.0


# ---- rules -------------------------------------------------------------------------------
def _token_classification(t: _Table) -> Optional[Inference]:
    tokens = _find(t.lower, TOKENS_NAMES)
    if tokens is None or not t.list_like(tokens):
        return None
    for name in TAGS_NAMES:
        tags = t.lower.get(name)
        if tags is None or tags == tokens or not t.list_like(tags):
            continue
        same = _frac(
            list(zip(t.values[tokens], t.values[tags])), lambda p: _is_list(p[0]) and _is_list(p[1]) and len(p[0]) == len(p[1])
        )
        if same >= 0.9:
            return Inference(
                "token-classification",
                {"data.tokens_column": tokens, "data.tags_column": tags},
                [f"token-classification: '{tokens}' holds word lists and '{tags}' one tag per word"],
            )
    return None


def _is_squad_answer(v: Any) -> bool:
    return isinstance(v, dict) and "text" in v and "answer_start" in v


def _prompt_template(task: str, family: Optional[str], renames: dict[str, str]) -> Optional[str]:
    """The task's default prompt template with its placeholders renamed to the table's columns.

    ``None`` when every placeholder already names a column. Encoder-decoder models use the
    seq2seq templates (plain ``{source}``), decoders the instruction-style ones.
    """
    renames = {k: v for k, v in renames.items() if k != v}
    if not renames:
        return None
    if family == "encoder-decoder":
        from deltatune.tasks.seq2seq import SEQ2SEQ_PROMPTS as prompts
    else:
        from deltatune.tasks.language_modeling import DEFAULT_PROMPTS as prompts
    template = prompts[task]
    for placeholder, column in renames.items():
        template = template.replace("{%s}" % placeholder, "{%s}" % column)
    return template


def _qa_settings(q: str, c: str, a: str, generative: bool, family: Optional[str]) -> dict[str, Any]:
    if not generative:
        return {"data.question_column": q, "data.context_column": c, "data.answers_column": a}
    # generative QA reads question and context through its prompt template (data.question_column is extractive QA's)
    settings: dict[str, Any] = {"data.target_column": a}
    template = _prompt_template("generative-qa", family, {"question": q, "context": c})
    if template is not None:
        settings["data.prompt_template"] = template
    return settings


def _question_answering(t: _Table, family: Optional[str] = None, force: Optional[str] = None) -> Optional[Inference]:
    q, c, a = _find(t.lower, QUESTION_NAMES), _find(t.lower, CONTEXT_NAMES), _find(t.lower, ANSWER_NAMES)
    if not (q and c and a):
        return None
    squad = _frac(t.values[a], _is_squad_answer) >= 0.9
    task = force or ("question-answering" if squad else "generative-qa")
    if task == "question-answering":
        why = f"question-answering: '{q}', '{c}' and '{a}' with SQuAD-style answers (text and answer_start)"
    else:
        why = f"generative-qa: '{q}', '{c}' and '{a}'" + (
            "" if squad else ", but the answers have no character offsets (answer_start), so the answer is generated rather than extracted"
        )
    return Inference(task, _qa_settings(q, c, a, task == "generative-qa", family), [why])


def _instruction(t: _Table) -> Optional[Inference]:
    cols = set(t.lower)
    if {"instruction", "output"} <= cols:
        fmt, why = "alpaca", "'instruction' and 'output' columns (Alpaca)"
    elif "messages" in cols or "conversations" in cols:
        fmt, why = "messages", "a chat column ('messages'/'conversations')"
    elif {"prompt", "completion"} <= cols:
        fmt, why = "prompt_completion", "'prompt' and 'completion' columns"
    else:
        return None
    if any(t.lower[c] != c for c in ("instruction", "output", "messages", "conversations", "prompt", "completion") if c in t.lower):
        return None  # the chat formats read these exact (lowercase) names
    return Inference("instruction", {"data.format": fmt}, [f"instruction (SFT): {why}"])


def _source_target(t: _Table, family: Optional[str], force: Optional[str] = None) -> Optional[Inference]:
    pair = next(((t.lower[s], t.lower[g]) for s, g in SOURCE_TARGET_NAMES if s in t.lower and g in t.lower), None)
    langs = [c for c in t.names if c.lower() in LANGUAGES and t.text_like(c)]
    if pair is None and len(langs) == 2:
        pair = (langs[0], langs[1])
    if pair is None:
        return None
    src, tgt = pair
    if not (t.text_like(src) or t.list_like(src)) or not (t.text_like(tgt) or t.list_like(tgt)):
        return None
    settings: dict[str, Any] = {}
    is_langs = src.lower() in LANGUAGES and tgt.lower() in LANGUAGES
    if is_langs:
        settings.update({"data.source_lang": LANGUAGES[src.lower()], "data.target_lang": LANGUAGES[tgt.lower()]})
    if force is not None:
        task, reasons = force, [f"{force}: chosen with --task; source '{src}', target '{tgt}'"]
    elif is_langs:
        task = "translation"
        reasons = [f"translation: columns '{src}' and '{tgt}' are language codes ({LANGUAGES[src.lower()]} → {LANGUAGES[tgt.lower()]})"]
    elif tgt.lower() in SUMMARY_NAMES:
        task, reasons = "summarization", [f"summarization: '{src}' → '{tgt}' (a summary-like target name)"]
    elif t.list_like(src):
        task, reasons = "summarization", [f"summarization: '{src}' holds lists of sentences (a document) and '{tgt}' the target"]
    else:
        s = statistics.median(_words(v) for v in t.values[src])
        g = statistics.median(_words(v) for v in t.values[tgt]) or 1
        ratio = s / g
        task = "summarization" if ratio >= SUMMARY_LENGTH_RATIO else "translation"
        reasons = [
            f"{task}: '{src}' → '{tgt}' with median lengths {s:.0f} and {g:.0f} words (ratio {ratio:.1f}; "
            f"summarization when ≥ {SUMMARY_LENGTH_RATIO:g}, else translation)"
        ]
    if task == "summarization" and family == "encoder" and force is None:
        reasons.append("extractive-summarization: the model is an encoder, which selects sentences instead of writing")
        task = "extractive-summarization"
    if task == "extractive-summarization":
        return Inference(task, {"data.text_column": src, "data.target_column": tgt}, reasons)
    settings.update({"data.text_column": src, "data.target_column": tgt})
    if task in ("summarization", "translation"):  # the default prompt reads {source}
        template = _prompt_template(task, family, {"source": src})
        if template is not None:
            settings["data.prompt_template"] = template
    return Inference(task, settings, reasons)


def _label_column(t: _Table, exclude: Sequence[str], n_rows: int) -> tuple[Optional[str], str]:
    named = _find(t.lower, LABEL_NAMES, exclude)
    if named is not None:
        return named, f"'{named}' is a usual label column name"
    for c in t.names:
        if c in exclude:
            continue
        vals = [v for v in t.values[c] if v is not None and not _is_list(v)]
        distinct = {str(v) for v in vals}
        if vals and 2 <= len(distinct) <= min(MAX_CLASSES, max(2, len(vals) // 2)):
            return c, f"'{c}' has {len(distinct)} distinct values in {len(vals)} sampled rows (few classes)"
    return None, ""


def _separator(values: Sequence[Any]) -> Optional[str]:
    strings = [v for v in values if isinstance(v, str) and v.strip()]
    if not strings:
        return None
    for sep in SEPARATORS:
        with_sep = [v for v in strings if sep in v]
        if len(with_sep) < 0.1 * len(strings):
            continue
        parts = {p.strip() for v in strings for p in v.split(sep) if p.strip()}
        if len(parts) < len(set(strings)) and all(len(p.split()) <= 4 for p in parts):
            return sep
    return None


def _file_kind(v: Any) -> Optional[str]:
    """``"image"`` or ``"audio"`` when ``v`` is a path (string) ending in a known suffix, else ``None``."""
    if not isinstance(v, str):
        return None
    name = v.strip().lower()
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    return "audio" if name.endswith(AUDIO_SUFFIXES) else None


def _media_column(t: _Table, kind: str) -> Optional[str]:
    """The column whose values are (at least 90%) paths of ``kind`` files: a usual name first."""
    cols = [c for c in t.names if _frac(t.values[c], lambda v: _file_kind(v) == kind) >= 0.9]
    return next((t.lower[n] for n in MEDIA[kind][2] if n in t.lower and t.lower[n] in cols), cols[0] if cols else None)


def _media_classification(t: _Table, n_rows: int, source: str, force: Optional[str] = None) -> Optional[Inference]:
    """image-/audio-classification: a column of image or audio file paths and a label column.

    Raises:
        DeltatuneError: (not with ``force``) file paths but no label column.
    """
    for kind, (task, key, _) in MEDIA.items():
        if force is not None and force != task:
            continue
        col = _media_column(t, kind)
        if col is None:
            continue
        label, why = _label_column(t, [col], n_rows)
        if label is None:
            if force is not None:
                return Inference(task, {key: col}, [])
            raise DeltatuneError(
                f"{source}: column '{col}' holds {kind} files but no label column was found; pass --task {task} and --label-column"
            )
        settings: dict[str, Any] = {key: col, "data.label_column": label}
        reasons = [f"{task}: '{col}' holds paths of {kind} files (by their suffixes) and a label column",
                   f"{kind} column '{col}'", f"label column {why}"]
        _label_kind(t, label, settings, reasons)
        return Inference(task, settings, reasons)
    return None


def _label_kind(t: _Table, label: str, settings: dict[str, Any], reasons: list[str]) -> None:
    """Multi-label settings of the label column ``label`` (lists, or labels joined by a separator), added
    to ``settings`` and ``reasons``.

    Raises:
        DeltatuneError: the labels are continuous numbers (regression).
    """
    values = t.values[label]
    if _frac(values, _is_list) >= 0.5:
        settings["data.multi_label"] = True
        reasons.append(f"multi-label: '{label}' holds lists of labels")
    elif (sep := _separator(values)) is not None:
        settings.update({"data.multi_label": True, "data.label_separator": sep})
        reasons.append(f"multi-label: labels in '{label}' are joined by '{sep}'")
    else:
        nums = [v for v in values if isinstance(v, float) and not float(v).is_integer()]
        if len(nums) > 0.5 * len([v for v in values if v is not None]):
            raise DeltatuneError(
                f"column '{label}' holds continuous numbers (regression), which deltatune does not train; "
                "give class labels or pass --task and --label-column"
            )


def _classification(t: _Table, n_rows: int) -> Optional[Inference]:
    reasons = []
    settings: dict[str, Any] = {}
    pair = next(((t.lower[a], t.lower[b]) for a, b in PAIR_NAMES if a in t.lower and b in t.lower), None)
    if pair and t.text_like(pair[0]) and t.text_like(pair[1]):
        text, text_pair = pair
        settings["data.text_pair_column"] = text_pair
        reasons.append(f"text pair: '{text}' and '{text_pair}'")
    else:
        text = _find(t.lower, TEXT_NAMES)
        if text is not None and not t.text_like(text):
            text = None
        if text is None:
            strings = [c for c in t.names if t.text_like(c)]
            if not strings:
                return None
            text = max(strings, key=t.mean_chars)
            reasons.append(f"text column '{text}': the string column with the longest values ({t.mean_chars(text):.0f} characters on average)")
        else:
            reasons.append(f"text column '{text}': a usual text column name")
    label, why = _label_column(t, [text, settings.get("data.text_pair_column")], n_rows)
    if label is None:
        return None
    settings["data.text_column"] = text
    settings["data.label_column"] = label
    reasons.append(f"label column {why}")
    _label_kind(t, label, settings, reasons)
    return Inference("text-classification", settings, ["text-classification: a text column and a label column", *reasons])


def _raw_text(t: _Table, family: Optional[str]) -> Optional[Inference]:
    text = _find(t.lower, TEXT_NAMES) or next((c for c in t.names if t.text_like(c)), None)
    if text is None or not t.text_like(text):
        return None
    if family == "encoder":
        task, why = "masked-lm", "the model is an encoder"
    elif family is None:
        task, why = "causal-lm", "no model named: the packaged decoder (pass --models minilm for masked-LM on an encoder)"
    else:
        task, why = "causal-lm", f"the model is a {family} model"
    return Inference(task, {"data.text_column": text}, [f"{task}: only raw text in '{text}' ({why})"])


def infer_task(
    rows: list[dict[str, Any]],
    column_names: Sequence[str],
    family: Optional[str] = None,
    task: Optional[str] = None,
    source: str = "the data",
) -> Inference:
    """Infer the task and the column mapping of a table (rules in the module docstring; image and audio
    file paths first).

    Args:
        rows: the first rows of the table (a sample; :data:`SAMPLE_ROWS` is plenty).
        column_names: all columns of the table.
        family: ``"encoder"``, ``"decoder"``, ``"encoder-decoder"``, ``"vision"`` or ``"audio"`` of the first candidate
            model, or ``None`` when no model was named (tie-breaks raw text and summarization).
        task: a task the user chose (``--task``): no inference, only the column mapping for it.
        source: the file name, for messages.

    Returns:
        :class:`Inference`.

    Raises:
        DeltatuneError: nothing matches (the message lists the columns and the flags to pass);
            a label column of continuous numbers; image/audio file paths without a label column.
    """
    t = _Table(rows, column_names)
    if task is not None:
        return _for_task(t, task, family, len(rows), source)
    rules = (
        lambda: _media_classification(t, len(rows), source),
        lambda: _token_classification(t),
        lambda: _question_answering(t, family),
        lambda: _instruction(t),
        lambda: _source_target(t, family),
        lambda: _classification(t, len(rows)),
        lambda: _raw_text(t, family),
    )
    for rule in rules:
        found = rule()
        if found is not None:
            return found
    raise DeltatuneError(
        f"{source}: cannot infer the task from columns {', '.join(map(repr, t.names))}; pass --task "
        "(e.g. text-classification) and the columns (--text-column, --label-column)"
    )


def _for_task(t: _Table, task: str, family: Optional[str], n: int, source: str) -> Inference:
    """The column mapping for a task the user chose, or the task's default column names."""
    by_task = {
        "token-classification": lambda: _token_classification(t),
        "question-answering": lambda: _question_answering(t, family, task),
        "generative-qa": lambda: _question_answering(t, family, task),
        "instruction": lambda: _instruction(t),
        "summarization": lambda: _source_target(t, family, task),
        "translation": lambda: _source_target(t, family, task),
        "extractive-summarization": lambda: _source_target(t, family, task),
        "text-classification": lambda: _classification(t, n),
        "image-classification": lambda: _media_classification(t, n, source, task),
        "audio-classification": lambda: _media_classification(t, n, source, task),
        "causal-lm": lambda: _raw_text(t, "decoder"),
        "masked-lm": lambda: _raw_text(t, "encoder"),
    }
    found = by_task.get(task, lambda: None)()
    settings = dict(found.settings) if found is not None else {}
    mapped = ", ".join(f"{k.removeprefix('data.')}={v!r}" for k, v in settings.items() if k.endswith("_column"))
    return Inference(task, settings, [f"{task}: chosen with --task; columns: {mapped or 'the task defaults'}"])


def task_family(task: str) -> str:
    """``"encoder"`` for tasks the packaged encoder does, ``"vision"``/``"audio"``/``"vision-language"``/``"speech-seq2seq"``
    for image/audio/image-text/speech-to-text tasks (their registry family), else ``"decoder"`` (generative tasks)."""
    if task in ENCODER_TASKS:
        return "encoder"
    own = ("vision", "audio", "vision-language", "speech-seq2seq")
    return REGISTRY[task].family if task in REGISTRY and REGISTRY[task].family in own else "decoder"
