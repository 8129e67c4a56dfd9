"""Entity metrics agree with seqeval and with counts done by hand; tag schemes convert to IOB2."""

import random

import pytest
from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score

from deltatune.metrics.ner import consistent_iob2, entity_metrics, entity_spans, split_tag, to_iob2

# (gold, predicted) sentences chosen for the cases conlleval reads in a particular way
TRICKY = [
    # an I- without B- starts an entity: the prediction equals the gold PER(0,1)
    (["B-PER", "I-PER", "O", "B-LOC"], ["I-PER", "I-PER", "O", "B-LOC"]),
    # type switch B-PER I-LOC: two one-word entities, neither equals the gold PER(0,1)
    (["B-PER", "I-PER", "O"], ["B-PER", "I-LOC", "O"]),
    # entity ending at the sentence end
    (["O", "O", "B-ORG", "I-ORG"], ["O", "O", "B-ORG", "I-ORG"]),
    # adjacent B-PER B-PER are two entities; B-PER I-PER is one, matching neither
    (["B-PER", "B-PER"], ["B-PER", "I-PER"]),
    # a gold entity made of a lone I- tag, missed
    (["I-MISC"], ["O"]),
    # B-ORG vs I-ORG on one word: the same entity
    (["B-ORG"], ["I-ORG"]),
    # an I-ORG opening a sentence right after a sentence ending in B-ORG: entities do not cross sentences
    (["I-ORG"], ["I-ORG"]),
]


def _split(pairs):
    return [g for g, _ in pairs], [p for _, p in pairs]


def test_tricky_sequences_match_hand_counts():
    gold, pred = _split(TRICKY)
    m = entity_metrics(gold, pred)
    # by hand: gold PER 4, LOC 1, ORG 3, MISC 1 (9); predicted PER 3, LOC 2, ORG 3 (8);
    # correct PER 1 (S1), LOC 1 (S1), ORG 3 (S3, S6, S7) -> 5
    assert m["precision"] == pytest.approx(5 / 8)
    assert m["recall"] == pytest.approx(5 / 9)
    assert m["f1"] == pytest.approx(10 / 17)
    assert (m["PER_precision"], m["PER_recall"], m["PER_f1"], m["PER_support"]) == pytest.approx((1 / 3, 1 / 4, 2 / 7, 4))
    assert (m["LOC_precision"], m["LOC_recall"], m["LOC_f1"], m["LOC_support"]) == pytest.approx((1 / 2, 1.0, 2 / 3, 1))
    assert (m["ORG_precision"], m["ORG_recall"], m["ORG_f1"], m["ORG_support"]) == pytest.approx((1.0, 1.0, 1.0, 3))
    assert (m["MISC_precision"], m["MISC_recall"], m["MISC_f1"], m["MISC_support"]) == (0.0, 0.0, 0.0, 1)
    assert isinstance(m["PER_support"], int)
    # words: 16, of which 11 carry exactly the gold tag
    assert m["accuracy"] == pytest.approx(11 / 16)


def test_tricky_sequences_match_seqeval_report():
    gold, pred = _split(TRICKY)
    m = entity_metrics(gold, pred)
    report = classification_report(gold, pred, output_dict=True, zero_division=0)
    assert m["precision"] == pytest.approx(precision_score(gold, pred))
    assert m["recall"] == pytest.approx(recall_score(gold, pred))
    assert m["f1"] == pytest.approx(f1_score(gold, pred))
    assert m["accuracy"] == pytest.approx(accuracy_score(gold, pred))
    types = [k for k in report if not k.endswith(" avg")]
    assert sorted(types) == ["LOC", "MISC", "ORG", "PER"]
    for t in types:
        assert m[f"{t}_precision"] == pytest.approx(report[t]["precision"])
        assert m[f"{t}_recall"] == pytest.approx(report[t]["recall"])
        assert m[f"{t}_f1"] == pytest.approx(report[t]["f1-score"])
        assert m[f"{t}_support"] == report[t]["support"]


def test_entity_spans_follow_conlleval():
    assert entity_spans(["I-PER", "I-PER", "O", "B-LOC", "I-ORG"]) == [("PER", 0, 1), ("LOC", 3, 3), ("ORG", 4, 4)]
    assert entity_spans(["B-PER", "B-PER", "I-PER"]) == [("PER", 0, 0), ("PER", 1, 2)]
    assert entity_spans(["O", "B-LOC", "I-LOC"]) == [("LOC", 1, 2)]  # at the end
    assert entity_spans(["O", "O"]) == []


def test_no_entities_and_mismatched_lengths():
    assert entity_metrics([["O", "O"]], [["O", "O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 1.0}
    only_pred = entity_metrics([["O", "O"]], [["B-PER", "O"]])
    assert only_pred["precision"] == 0.0 and only_pred["PER_support"] == 0 and only_pred["accuracy"] == 0.5
    with pytest.raises(ValueError, match="sentence 0: 2 gold tags but 1 predicted"):
        entity_metrics([["O", "O"]], [["O"]])
    with pytest.raises(ValueError, match="1 gold sentences but 2 predicted"):
        entity_metrics([["O"]], [["O"], ["O"]])


def test_iob1_iobes_bilou_convert_to_iob2():
    # IOB1: I- starts entities; B- only separates two adjacent entities of one type
    assert to_iob2(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG"]
    assert to_iob2(["B-PER", "I-LOC"]) == ["B-PER", "B-LOC"]  # type switch starts a new entity
    assert to_iob2(["S-PER", "B-LOC", "I-LOC", "E-LOC", "U-ORG", "B-ORG", "L-ORG"]) == [
        "B-PER", "B-LOC", "I-LOC", "I-LOC", "B-ORG", "B-ORG", "I-ORG"
    ]
    iob2 = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC"]
    assert to_iob2(iob2) == iob2
    assert to_iob2(["B-I-PER", "I-I-PER"]) == ["B-I-PER", "I-I-PER"]  # the type may contain dashes


@pytest.mark.parametrize("tag", ["PER", "X-PER", "B-", "b-PER", "0", ""])
def test_non_bio_tags_are_refused(tag):
    with pytest.raises(ValueError, match="is not O, B-TYPE or I-TYPE"):
        to_iob2(["O", tag])
    with pytest.raises(ValueError):
        split_tag(tag)


def test_conversion_keeps_conlleval_entities_on_random_sequences():
    rng = random.Random(0)
    tags = ["O", "B-X", "I-X", "B-Y", "I-Y"]
    for _ in range(500):
        seq = [rng.choice(tags) for _ in range(rng.randint(1, 12))]
        assert entity_spans(to_iob2(seq)) == entity_spans(seq), seq


def test_predicted_tags_are_rewritten_as_the_entities_they_mean():
    tags = ["I-PER", "I-PER", "O", "I-LOC", "B-ORG", "I-MISC"]
    fixed = consistent_iob2(tags)
    assert fixed == ["B-PER", "I-PER", "O", "B-LOC", "B-ORG", "B-MISC"]
    assert entity_spans(fixed) == entity_spans(tags)
