"""deltatune.metrics.text against the reference implementations (rouge-score, sacrebleu)."""

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from deltatune.errors import DeltatuneError
from deltatune.metrics.text import bleu_chrf, rouge, sentence_lines, squad_em_f1
from deltatune.tasks.examples import rouge_l

KEYS = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
PRED = "The cat sat on the mat. It was happy."
REF = "The cat was happy. It sat on the mat."


def _reference_rouge(preds, refs):
    """Mean F ×100 per key from rouge-score's score_multi on texts split one sentence per line by hand."""
    scorer = rouge_scorer.RougeScorer(KEYS, use_stemmer=True)
    totals = dict.fromkeys(KEYS, 0.0)
    for p, rs in zip(preds, refs):
        s = scorer.score_multi(rs, p)
        for k in KEYS:
            totals[k] += s[k].fmeasure
    return {k: 100.0 * v / len(preds) for k, v in totals.items()}


def test_sentence_lines_splits_and_keeps_existing_lines():
    assert sentence_lines(PRED) == "The cat sat on the mat.\nIt was happy."
    assert sentence_lines("Dr. Smith came at 3.5 p.m. today. He left.") == "Dr. Smith came at 3.5 p.m. today.\nHe left."
    assert sentence_lines("first line\nsecond. third.") == "first line\nsecond.\nthird."
    assert sentence_lines("") == ""


def test_rougelsum_splits_both_sides():
    m = rouge([PRED], [[REF]])
    # both sides split into the same two sentences: every sentence's LCS is whole -> 100
    assert m["rougeLsum"] == pytest.approx(100.0)
    split = _reference_rouge(["The cat sat on the mat.\nIt was happy."], [["The cat was happy.\nIt sat on the mat."]])
    for k in KEYS:
        assert m[k] == pytest.approx(split[k])
    # the old one-sided split gave 88.9 (and rouge-score unsplit 66.7)
    assert m["rougeLsum"] != pytest.approx(_reference_rouge(["The cat sat on the mat.\nIt was happy."], [[REF]])["rougeLsum"])


def test_rouge_multi_reference_matches_score_multi():
    preds = ["The quick brown fox jumps. It lands softly on the grass.", "A storm hit the coast. Power was cut."]
    refs = [
        ["A fox jumped quickly. It landed on grass.", "The brown fox jumps over the dog."],
        ["Power was cut after a storm hit the coast.", "The coast was hit. Power lines fell. People waited."],
    ]
    m = rouge(preds, refs)
    want = _reference_rouge(
        ["The quick brown fox jumps.\nIt lands softly on the grass.", "A storm hit the coast.\nPower was cut."],
        [
            ["A fox jumped quickly.\nIt landed on grass.", "The brown fox jumps over the dog."],
            ["Power was cut after a storm hit the coast.", "The coast was hit.\nPower lines fell.\nPeople waited."],
        ],
    )
    assert set(m) == set(KEYS)
    for k in KEYS:
        assert m[k] == pytest.approx(want[k])


def test_per_row_rouge_l_is_the_corpus_rougeL():
    preds = [PRED, "Power was cut. A storm came."]
    refs = [[REF], ["A storm hit the coast. Power was cut.", "Nothing."]]
    rows = [rouge_l(p, r) for p, r in zip(preds, refs)]
    assert sum(rows) / len(rows) == pytest.approx(rouge(preds, refs)["rougeL"])


@pytest.mark.parametrize("metric", [rouge, bleu_chrf, squad_em_f1])
def test_empty_input_is_a_clear_error(metric):
    with pytest.raises(DeltatuneError, match="no examples to score"):
        metric([], [])


def test_bleu_example_without_reference_is_a_clear_error():
    with pytest.raises(DeltatuneError, match="example 1 has no reference"):
        bleu_chrf(["a b c", "d e f"], [["a b c"], []])


def test_bleu_chrf_variable_reference_counts_match_sacrebleu():
    preds = ["the cat is on the mat", "there is a dog in the garden today", "hello world"]
    refs = [
        ["the cat sits on the mat", "a cat is on the mat", "on the mat is a cat"],
        ["a dog is in the garden today"],
        ["hello there world", "hello world !"],
    ]
    got = bleu_chrf(preds, refs)
    # sacrebleu's own statistics, each example scored against exactly its references, summed over the corpus
    for key, metric in (("bleu", sacrebleu.BLEU()), ("chrf", sacrebleu.CHRF())):
        stats = [metric._extract_corpus_statistics([p], [[r] for r in rs])[0] for p, rs in zip(preds, refs)]
        want = metric._aggregate_and_compute(stats).score
        assert got[key] == pytest.approx(want)
    # the same references given as padded streams (sacrebleu's documented multi-reference form)
    streams = [[rs[i] if i < len(rs) else None for rs in refs] for i in range(3)]
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, streams).score)
    assert got["chrf"] == pytest.approx(sacrebleu.corpus_chrf(preds, streams).score)


def test_a_bare_string_where_lists_are_expected_is_refused():
    from deltatune.errors import DeltatuneError
    from deltatune.metrics.text import bleu_chrf, rouge

    with pytest.raises(DeltatuneError, match="not a bare string"):
        rouge(["the cat sat"], ["the cat sat"])  # references of one prediction must be a list
    with pytest.raises(DeltatuneError, match="not a bare string"):
        bleu_chrf(["the cat sat"], ["the cat sat"])
    with pytest.raises(DeltatuneError, match="not a bare string"):
        rouge("the cat", "the cat")
