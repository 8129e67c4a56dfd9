"""SQuAD exact match / F1 against hand-computed cases of the official script's definitions."""

import pytest

from deltatune.metrics.squad import exact_match, normalize_answer, question_scores, squad_metrics, token_f1
from deltatune.metrics.text import squad_em_f1


def test_normalization_drops_case_punctuation_articles_and_extra_spaces():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("An apple, a pear and THE plum.") == "apple pear and plum"
    # articles only as whole words: "theory" and "another" keep their letters
    assert normalize_answer("theory of another") == "theory of another"
    assert exact_match("the Denver Broncos", "Denver Broncos.") == 1
    assert exact_match("Denver Broncos", "Broncos") == 0


def test_token_f1_partial_overlap():
    # prediction has 3 tokens, 2 of them in the 2-token gold: precision 2/3, recall 1
    assert token_f1("Denver Broncos", "the Denver Broncos team") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert token_f1("Denver Broncos", "the Denver Broncos team") == pytest.approx(0.8)
    # counts are a bag: a repeated token matches at most as often as the gold has it
    assert token_f1("w x y z", "x x") == pytest.approx(2 * (1 / 2) * (1 / 4) / (1 / 2 + 1 / 4))
    # the article "a" is not a token: gold "b c d" (3 tokens), precision 1/2, recall 1/3
    assert token_f1("a b c d", "b b") == pytest.approx(0.4)
    assert token_f1("Carolina Panthers", "Broncos") == 0.0


def test_max_over_gold_answers():
    em, f1 = question_scores(["Santa Clara, California", "Levi's Stadium", "Levi's Stadium in Santa Clara"], "Levi's Stadium")
    assert (em, f1) == (1, 1.0)
    em, f1 = question_scores(["Santa Clara, California", "Santa Clara"], "Santa Clara in the Bay Area")
    # best gold "santa clara" (2 tokens) vs prediction "santa clara in bay area" (5 tokens): P 2/5, R 1
    assert em == 0 and f1 == pytest.approx(2 * 0.4 * 1 / 1.4)


def test_no_answer_questions_need_an_empty_prediction():
    assert question_scores([], "") == (1, 1.0)
    assert question_scores([], "Broncos") == (0, 0.0)
    assert question_scores(["Broncos"], "") == (0, 0.0)
    # a gold answer that normalizes to nothing counts as "no answer" (official v2.0 script)
    assert question_scores(["The"], "") == (1, 1.0)


def test_corpus_means_in_percent_and_hasans_noans_split():
    preds = ["Denver Broncos", "the Denver Broncos team", "", "Panthers"]
    refs = [["Denver Broncos"], ["Denver Broncos"], [], []]
    m = squad_metrics(preds, refs)
    assert m["exact_match"] == pytest.approx(100 * (1 + 0 + 1 + 0) / 4)
    assert m["f1"] == pytest.approx(100 * (1 + 0.8 + 1 + 0) / 4)
    assert m["total"] == 4
    assert m["HasAns_exact"] == pytest.approx(50.0) and m["HasAns_f1"] == pytest.approx(90.0) and m["HasAns_total"] == 2
    assert m["NoAns_exact"] == pytest.approx(50.0) and m["NoAns_f1"] == pytest.approx(50.0) and m["NoAns_total"] == 2


def test_no_split_keys_when_every_question_has_an_answer():
    m = squad_metrics(["a cat"], [["cat", "dog"]])
    assert m == {"exact_match": 100.0, "f1": 100.0, "total": 1}
    with pytest.raises(ValueError):
        squad_metrics(["x"], [])


def test_text_squad_em_f1_keeps_its_two_keys():
    out = squad_em_f1(["the Denver Broncos team", "x"], [["Denver Broncos"], ["y", "x"]])
    assert out == {"exact_match": pytest.approx(50.0), "f1": pytest.approx(90.0)}
