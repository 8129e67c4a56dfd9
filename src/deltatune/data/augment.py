"""Training-data augmentation for small text data: EDA (Wei and Zou 2019).

"EDA: Easy Data Augmentation Techniques for Boosting Performance on Text Classification
Tasks" (EMNLP-IJCNLP 2019, arXiv:1901.11196) makes ``n_aug`` copies of each training sentence,
each changed by one of four operations, with ``n = max(1, int(alpha * len(words)))``:

- synonym replacement (SR): ``n`` distinct non-stop words replaced by a random WordNet synonym
  (every occurrence of the word);
- random insertion (RI): ``n`` times, a random synonym of a random non-stop word inserted at a
  random position;
- random swap (RS): ``n`` times, two random words swap places;
- random deletion (RD): each word deleted with probability ``alpha`` (at least one word stays).

As in the authors' code (github.com/jasonwei20/eda_nlp), words are the whitespace-separated
tokens and labels are copied. Unlike it, texts are not lower-cased nor stripped of punctuation
(the model sees the originals as they are), a synonym replacing a capitalized word is
capitalized, and the copies of one row take the operations in turn, in a seeded order, instead
of a shuffle of ``n_aug/4 + 1`` copies per operation. Stop words are scikit-learn's English list;
synonyms are WordNet 3.0's lemmas through nltk (:func:`wordnet_synonyms`), which needs the
WordNet corpus on nltk's data path (docs/augmentation.md).

Everything is seeded: one ``random.Random`` per row from ``(seed, row index)``, so a row's copies
do not depend on the other rows. Layer 1: torch-free.
"""

from __future__ import annotations

import functools
import json
import random
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import datasets

from deltatune.errors import DeltatuneError
from deltatune.files import write_atomically

# the operations, in the paper's order (the names of data.augmentation_operations)
OPERATIONS = ("synonym_replacement", "random_insertion", "random_swap", "random_deletion")
NEEDS_THESAURUS = frozenset({"synonym_replacement", "random_insertion"})
# the columns augmented_train.jsonl adds to each row
SOURCE_COLUMN = "augmented_from"
OPERATION_COLUMN = "augmentation"
ORIGINAL = "original"
# the file in the run folder holding the rows trained on
AUGMENTED_FILE = "augmented_train.jsonl"

Synonyms = Callable[[str], Sequence[str]]

_WORD = re.compile(r"^[A-Za-z][A-Za-z'-]*$")
_SYNONYM = re.compile(r"^[A-Za-z][A-Za-z' -]*$")


def _no_synonyms(word: str) -> Sequence[str]:
    return ()


@functools.lru_cache(maxsize=1)
def _stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def _candidates(words: Sequence[str]) -> list[str]:
    """The distinct lower-cased words (first occurrence order) that may get a synonym: alphabetic,
    not stop words."""
    stop = _stop_words()
    seen: dict[str, None] = {}
    for w in words:
        if _WORD.match(w) and w.lower() not in stop:
            seen.setdefault(w.lower(), None)
    return list(seen)


def _cased_like(synonym: str, word: str) -> str:
    return synonym[:1].upper() + synonym[1:] if word[:1].isupper() else synonym


def synonym_replacement(words: Sequence[str], n: int, rng: random.Random, synonyms: Synonyms) -> list[str]:
    """EDA's SR: up to ``n`` distinct non-stop words (case-insensitive), tried in random order, each
    replaced (every occurrence, each keeping a capital first letter) by a random one of its
    ``synonyms``; words without synonyms are skipped.

    Args:
        words: the text's tokens. n: how many words to replace (>= 1). rng: the row's generator.
        synonyms: ``word -> synonyms`` (e.g. :func:`wordnet_synonyms`).

    Returns:
        A new token list (a synonym of several words is one token holding spaces); unchanged when
        no word has a synonym.
    """
    out = list(words)
    candidates = _candidates(words)
    rng.shuffle(candidates)
    replaced = 0
    for word in candidates:
        options = list(synonyms(word))
        if not options:
            continue
        new = rng.choice(options)
        out = [_cased_like(new, w) if w.lower() == word else w for w in out]
        replaced += 1
        if replaced >= n:
            break
    return out


def random_insertion(words: Sequence[str], n: int, rng: random.Random, synonyms: Synonyms) -> list[str]:
    """EDA's RI: ``n`` times, a random synonym of a random non-stop word (up to 10 words tried, as
    the authors' code) inserted at a random position (0..len).

    Returns:
        A new token list, up to ``n`` tokens longer; unchanged when no word has a synonym.
    """
    out = list(words)
    for _ in range(n):
        candidates = _candidates(out)
        if not candidates:
            break
        for _ in range(10):
            options = list(synonyms(rng.choice(candidates)))
            if options:
                out.insert(rng.randint(0, len(out)), rng.choice(options))
                break
    return out


def random_swap(words: Sequence[str], n: int, rng: random.Random) -> list[str]:
    """EDA's RS: ``n`` times, two distinct random positions swap their words (texts of fewer than
    two words are returned as they are).

    Returns:
        A new token list, a permutation of ``words``.
    """
    out = list(words)
    if len(out) < 2:
        return out
    for _ in range(n):
        i, j = rng.sample(range(len(out)), 2)
        out[i], out[j] = out[j], out[i]
    return out


def random_deletion(words: Sequence[str], p: float, rng: random.Random) -> list[str]:
    """EDA's RD: each word deleted with probability ``p``; if none is left, one random word stays
    (a one-word text is returned as it is).

    Returns:
        A new token list, a subsequence of ``words`` (never empty for a non-empty text).
    """
    if len(words) <= 1:
        return list(words)
    kept = [w for w in words if rng.random() > p]
    return kept or [rng.choice(list(words))]


def apply_operation(operation: str, text: str, alpha: float, rng: random.Random, synonyms: Synonyms) -> str:
    """``text`` changed by one EDA ``operation`` (a name of :data:`OPERATIONS`) with
    ``n = max(1, int(alpha * words))``; words are whitespace tokens, joined by single spaces.

    Raises:
        ValueError: an unknown operation.
    """
    words = text.split()
    if not words:
        return text
    n = max(1, int(alpha * len(words)))
    if operation == "synonym_replacement":
        out = synonym_replacement(words, n, rng, synonyms)
    elif operation == "random_insertion":
        out = random_insertion(words, n, rng, synonyms)
    elif operation == "random_swap":
        out = random_swap(words, n, rng)
    elif operation == "random_deletion":
        out = random_deletion(words, alpha, rng)
    else:
        raise ValueError(f"unknown EDA operation {operation!r}; choose from {', '.join(OPERATIONS)}")
    return " ".join(out)


@dataclass
class Augmented:
    """The outcome of :func:`augment_rows`.

    Attributes:
        train: the rows to train on: each original row followed by its copies, the original columns
            and features only.
        written: the same rows as dicts with :data:`SOURCE_COLUMN` (the 0-based index of the
            original row in the training split) and :data:`OPERATION_COLUMN` (``"original"`` or
            the operation), for ``augmented_train.jsonl``.
        original_rows: rows before augmentation. added_rows: copies added.
    """

    train: datasets.Dataset
    written: list[dict[str, Any]]
    original_rows: int
    added_rows: int


def augment_rows(
    ds: datasets.Dataset,
    text_columns: Iterable[str],
    copies: int,
    alpha: float,
    operations: Sequence[str],
    seed: int,
    synonyms: Synonyms = _no_synonyms,
) -> Augmented:
    """EDA copies of every row of ``ds``: ``copies`` per row, copy ``k`` made by operation
    ``order[k % len(operations)]`` where ``order`` is a seeded shuffle of ``operations`` per row;
    each text column of ``text_columns`` (a sentence pair's two texts) changed by the same
    operation, independently; every other column (the label) copied. Texts that are not strings
    (missing values) are copied as they are.

    Args:
        ds: the training rows. text_columns: the columns holding text. copies: copies per row (>= 1).
        alpha: EDA's alpha, in (0, 0.5]. operations: names of :data:`OPERATIONS`.
        seed: the row ``i``'s generator is ``random.Random(f"{seed}:{i}")``.
        synonyms: ``word -> synonyms``; needed by synonym_replacement and random_insertion.

    Returns:
        :class:`Augmented`, ``len(train) == len(ds) * (1 + copies)``.
    """
    columns = list(text_columns)
    data = ds.to_dict()
    names = list(data)
    rows = [{c: data[c][i] for c in names} for i in range(len(ds))]
    written: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        rng = random.Random(f"{seed}:{i}")
        order = list(operations)
        rng.shuffle(order)
        written.append({**row, SOURCE_COLUMN: i, OPERATION_COLUMN: ORIGINAL})
        for k in range(copies):
            op = order[k % len(order)]
            new = dict(row)
            for c in columns:
                if isinstance(row[c], str):
                    new[c] = apply_operation(op, row[c], alpha, rng, synonyms)
            written.append({**new, SOURCE_COLUMN: i, OPERATION_COLUMN: op})
    train = datasets.Dataset.from_dict({c: [r[c] for r in written] for c in names}, features=ds.features)
    return Augmented(train, written, len(ds), len(written) - len(ds))


def wordnet_synonyms(option: str = "data.augmentation_operations") -> Synonyms:
    """``word -> synonyms`` from WordNet through nltk, as EDA: the lemma names of every synset of
    the (lower-cased) word, ``_`` read as a space, without the word itself and without lemmas
    holding other than letters, spaces, ``'`` and ``-``; sorted (so a seed gives the same choice);
    cached per word.

    Raises:
        DeltatuneError: the WordNet corpus is not on nltk's data path (``nltk.data.path``: the
            folders in ``NLTK_DATA``, ``~/nltk_data``, ...), naming ``option`` and how to get it.
    """
    import nltk

    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        try:
            nltk.data.find("corpora/wordnet.zip")
        except LookupError:
            raise DeltatuneError(
                "data.augmentation eda: synonym_replacement and random_insertion need the WordNet corpus, not found on "
                "nltk's data path (NLTK_DATA, ~/nltk_data, ...): run python -m nltk.downloader wordnet where the network "
                "allows (offline copies: docs/augmentation.md), or set "
                f"{option}=[random_swap,random_deletion]"
            ) from None
    from nltk.corpus import wordnet

    @functools.lru_cache(maxsize=None)
    def synonyms(word: str) -> tuple[str, ...]:
        key = word.lower()
        found = {lemma.name().replace("_", " ") for synset in wordnet.synsets(key) for lemma in synset.lemmas()}
        return tuple(sorted(s for s in found if s.lower() != key and _SYNONYM.match(s)))

    return synonyms


def write_jsonl(path, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``rows`` as JSON lines to ``path``, atomically (:func:`deltatune.files.write_atomically`).

    Raises:
        OSError: the file cannot be written.
    """
    def write(f) -> None:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")

    write_atomically(path, write)
