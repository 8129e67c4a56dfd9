"""BIO tag schemes and entity-level metrics for tagged sequences (named entity recognition).

Tag schemes (Ramshaw & Marcus 1995; Tjong Kim Sang & Veenstra 1999): IOB2 starts every
entity with ``B-X`` and continues it with ``I-X``; IOB1 uses ``I-X`` for starts too and ``B-X``
only for an entity that directly follows another of the same type; IOBES/BILOU add ``E-``/``L-``
(last word) and ``S-``/``U-`` (single word). :func:`to_iob2` maps all of them to IOB2.

Metrics via seqeval.
Definitions (CoNLL-2000/2003 ``conlleval``; Tjong Kim Sang & De Meulder 2003): an entity is a
maximal chunk of words with one type; a predicted entity counts as correct only when its
type, first word and last word all equal those of a gold entity. Precision = correct /
predicted entities, recall = correct / gold entities, F1 = their harmonic mean; the overall
figures pool the counts of all types (micro average). Chunks are read in seqeval's default
mode, which reproduces ``conlleval``: an ``I-X`` that does not continue an ``X`` chunk (after
``O``, after another type, or at the start) starts a new entity, and ``B-X`` always does.
Token accuracy is the share of words whose tag is exactly right (``O`` included).

Reference implementation: seqeval 1.2.2 (``seqeval.metrics.classification_report``,
``accuracy_score``), https://github.com/chakki-works/seqeval.
"""

from __future__ import annotations

from typing import Any, Sequence

from seqeval.metrics import accuracy_score, classification_report
from seqeval.metrics.sequence_labeling import get_entities

__all__ = ["entity_metrics", "entity_spans", "split_tag", "to_iob2"]

_BEGIN = {"B": "B", "S": "B", "U": "B"}  # prefixes that start an entity
_INSIDE = {"I": "I", "E": "I", "L": "I"}  # prefixes that continue one (in IOB1, may start one)


def split_tag(tag: str) -> tuple[str, str | None]:
    """``"B-PER"`` -> ``("B", "PER")``, ``"O"`` -> ``("O", None)``.

    Raises:
        ValueError: a tag that is not ``O`` or ``P-TYPE`` with P one of B, I, E, S, L, U.
    """
    if tag == "O":
        return "O", None
    prefix, sep, kind = tag.partition("-")
    if not sep or not kind or (prefix not in _BEGIN and prefix not in _INSIDE):
        raise ValueError(f"tag {tag!r} is not O, B-TYPE or I-TYPE")
    return prefix, kind


def to_iob2(tags: Sequence[str]) -> list[str]:
    """Convert one sentence's tags from IOB1, IOB2, IOBES or BILOU to IOB2.

    ``S-``/``U-`` become ``B-`` and ``E-``/``L-`` become ``I-``; then an ``I-X`` that does not
    follow ``B-X`` or ``I-X`` becomes ``B-X`` (so IOB1 starts become IOB2 starts). Valid IOB2 is
    returned unchanged, and the entities read by :func:`entity_spans` are the same before and
    after conversion for IOB1/IOB2 input.

    Raises:
        ValueError: a tag :func:`split_tag` rejects.
    """
    out: list[str] = []
    prev_kind: str | None = None  # type of the entity the previous word belongs to
    for tag in tags:
        prefix, kind = split_tag(tag)
        if kind is None:
            out.append("O")
        elif prefix in _BEGIN or kind != prev_kind:
            out.append(f"B-{kind}")
        else:
            out.append(f"I-{kind}")
        prev_kind = kind
    return out


def entity_metrics(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Entity precision/recall/F1 (overall and per type) and word accuracy.

    Args:
        y_true: gold tags, one list of strings (``O``, ``B-X``, ``I-X``) per sentence.
        y_pred: predicted tags, same shape as ``y_true``.

    Returns:
        ``precision``, ``recall``, ``f1`` (micro average over entity types, floats in [0, 1];
        0.0 when undefined, e.g. no predicted entity), ``accuracy`` (word level), and per
        entity type ``X`` found in gold or predictions: ``X_precision``, ``X_recall``,
        ``X_f1`` (floats) and ``X_support`` (int, gold entities of type X).

    Raises:
        ValueError: the number of sentences or of tags in a sentence differs between
            ``y_true`` and ``y_pred``.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} gold sentences but {len(y_pred)} predicted")
    for i, (t, p) in enumerate(zip(y_true, y_pred)):
        if len(t) != len(p):
            raise ValueError(f"sentence {i}: {len(t)} gold tags but {len(p)} predicted")
    y_true = [list(s) for s in y_true]
    y_pred = [list(s) for s in y_pred]
    out: dict[str, Any] = {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    n_words = sum(len(s) for s in y_true)
    out["accuracy"] = float(accuracy_score(y_true, y_pred)) if n_words else 0.0
    if not any(get_entities(s) for s in y_true) and not any(get_entities(s) for s in y_pred):
        return out  # seqeval's report is undefined without any entity
    report = classification_report(y_true, y_pred, output_dict=True, zero_division=0)
    micro = report["micro avg"]
    out.update(precision=float(micro["precision"]), recall=float(micro["recall"]), f1=float(micro["f1-score"]))
    for name, row in sorted(report.items()):
        if name.endswith(" avg"):
            continue
        out[f"{name}_precision"] = float(row["precision"])
        out[f"{name}_recall"] = float(row["recall"])
        out[f"{name}_f1"] = float(row["f1-score"])
        out[f"{name}_support"] = int(row["support"])
    return out


def entity_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entities of one tag sequence as ``(type, first word, last word)`` (inclusive), in order.

    Chunking is seqeval's default (``conlleval``) reading, the same as :func:`entity_metrics`.
    """
    return [(t, int(s), int(e)) for t, s, e in get_entities(list(tags))]


def consistent_iob2(tags: Sequence[str]) -> list[str]:
    """IOB2 tags rewritten from the entities they are read as (:func:`entity_spans`).

    A predicted ``I-X`` that follows ``O`` or another type starts an entity (``conlleval``'s
    reading), so it becomes ``B-X``: the tags then say exactly what the entities say.
    Example: ``["I-PER", "I-PER", "O", "I-LOC"]`` → ``["B-PER", "I-PER", "O", "B-LOC"]``.
    """
    out = ["O"] * len(tags)
    for kind, first, last in entity_spans(tags):
        out[first] = f"B-{kind}"
        for i in range(first + 1, last + 1):
            out[i] = f"I-{kind}"
    return out
