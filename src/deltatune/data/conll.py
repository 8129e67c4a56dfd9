"""CoNLL-style token files: one token per line (``word [POS chunk ...] TAG``), blank line between sentences.

The first field is the word and the last the tag (CoNLL-2003: ``word POS chunk NER``; two
columns ``word TAG`` also work). ``-DOCSTART-`` lines are document separators and skipped.
Reference: Tjong Kim Sang & De Meulder (2003), "Introduction to the CoNLL-2003 Shared Task".
"""

from __future__ import annotations

import re
from pathlib import Path

from deltatune.errors import DeltatuneError

CONLL_SUFFIXES = {".conll", ".conllu", ".iob", ".iob2", ".bio", ".ner"}
_TAG = re.compile(r"^(O|[BIESLU]-\S+|[BIESLU]|\S+-[BIESLU])$")


def looks_like_conll(path: Path, probe_lines: int = 50) -> bool:
    """True when the first non-blank lines of ``path`` are whitespace-separated fields ending in a BIO-like tag."""
    try:
        with path.open(encoding="utf-8-sig") as f:
            lines = [ln.strip() for _, ln in zip(range(probe_lines), f)]
    except (UnicodeDecodeError, OSError):
        return False
    fields = [ln.split() for ln in lines if ln and not ln.startswith("-DOCSTART-")]
    return bool(fields) and all(len(x) >= 2 and _TAG.match(x[-1]) for x in fields)


def read_conll(path: Path) -> list[dict[str, list[str]]]:
    """Sentences of a CoNLL file as rows ``{"tokens": [...], "tags": [...]}`` (strings).

    Raises:
        DeltatuneError: a non-blank line with a single field (naming the line), or no sentence.
    """
    rows: list[dict[str, list[str]]] = []
    tokens: list[str] = []
    tags: list[str] = []
    with path.open(encoding="utf-8-sig") as f:
        for n, line in enumerate(f, start=1):
            parts = line.split()
            if not parts or parts[0] == "-DOCSTART-":
                if tokens:
                    rows.append({"tokens": tokens, "tags": tags})
                    tokens, tags = [], []
                continue
            if len(parts) < 2:
                raise DeltatuneError(
                    f"{path}: line {n} has one field ({line.strip()!r}); CoNLL lines are 'word ... TAG' separated by spaces"
                )
            tokens.append(parts[0])
            tags.append(parts[-1])
    if tokens:
        rows.append({"tokens": tokens, "tags": tags})
    if not rows:
        raise DeltatuneError(f"{path} holds no sentences")
    return rows
