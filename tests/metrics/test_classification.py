import numpy as np
import pytest

from deltatune.metrics import format_table, multi_label_metrics, single_label_metrics


def test_single_label_metrics_hand_computed():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2])
    m = single_label_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["accuracy"] == 4 / 6
    # per class: a P=1 R=2/3 F=0.8; b P=1/2 R=1/2 F=0.5; c P=1/2 R=1 F=2/3
    assert np.isclose(m["per_class"]["a"]["f1"], 0.8)
    assert np.isclose(m["per_class"]["b"]["f1"], 0.5)
    assert np.isclose(m["per_class"]["c"]["f1"], 2 / 3)
    assert np.isclose(m["f1_macro"], (0.8 + 0.5 + 2 / 3) / 3)
    assert np.isclose(m["f1_micro"], 4 / 6)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    table = format_table(m, "t")
    assert "accuracy" in table and "confusion matrix" in table


def test_multi_label_metrics_hand_computed():
    y_true = np.array([[1, 0], [1, 1], [0, 1]])
    y_pred = np.array([[1, 0], [1, 0], [0, 1]])
    m = multi_label_metrics(y_true, y_pred, ["x", "y"])
    assert np.isclose(m["subset_accuracy"], 2 / 3)
    # pooled: TP=3, FP=0, FN=1 -> P=1, R=0.75, F=6/7
    assert np.isclose(m["f1_micro"], 6 / 7)
    assert np.isclose(m["f1_macro"], (1.0 + 2 / 3) / 2)  # x: F=1; y: P=1 R=1/2 F=2/3


def test_single_label_macro_f1_leaves_out_absent_class_like_sklearn():
    from sklearn.metrics import f1_score

    # 5 labels; "e" (id 4) is neither a gold label nor predicted
    y_true = np.array([0, 0, 1, 1, 2, 2, 3, 3, 0, 1])
    y_pred = np.array([0, 1, 1, 2, 2, 3, 3, 0, 2, 1])
    m = single_label_metrics(y_true, y_pred, ["a", "b", "c", "d", "e"])
    assert m["f1_macro"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert m["f1_macro"] != pytest.approx(f1_score(y_true, y_pred, labels=range(5), average="macro", zero_division=0))
    assert m["absent_classes"] == ["e"]
    assert m["per_class"]["e"]["support"] == 0 and len(m["confusion_matrix"]) == 5
    table = format_table(m, "t")  # the list is not a scalar row, and does not break the table
    assert "f1_macro" in table and "absent_classes" not in table


def test_single_label_macro_f1_counts_a_class_only_predicted():
    from sklearn.metrics import f1_score

    y_true = np.array([0, 0, 1])
    y_pred = np.array([0, 2, 1])  # "c" never gold, but predicted: present, F1 0
    m = single_label_metrics(y_true, y_pred, ["a", "b", "c", "d"])
    assert m["f1_macro"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert m["absent_classes"] == ["d"]


def test_multi_label_macro_f1_leaves_out_absent_label():
    from sklearn.metrics import f1_score

    y_true = np.array([[1, 0, 0, 1], [1, 1, 0, 0], [0, 1, 0, 0]])
    y_pred = np.array([[1, 0, 0, 0], [1, 0, 0, 1], [0, 1, 0, 0]])
    m = multi_label_metrics(y_true, y_pred, ["w", "x", "y", "z"])
    assert m["f1_macro"] == pytest.approx(f1_score(y_true, y_pred, labels=[0, 1, 3], average="macro"))
    assert m["f1_macro"] == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)
    assert m["absent_classes"] == ["y"]


def test_bad_inputs_are_one_line_errors():
    import numpy as np

    from deltatune.errors import DeltatuneError
    from deltatune.metrics.classification import multi_label_metrics, single_label_metrics

    with pytest.raises(DeltatuneError, match="no examples to score"):
        single_label_metrics(np.array([], dtype=int), np.array([], dtype=int), ["a", "b"])
    with pytest.raises(DeltatuneError, match="gold class id 5 is outside 0..2"):
        single_label_metrics(np.array([0, 5]), np.array([0, 1]), ["a", "b", "c"])
    with pytest.raises(DeltatuneError, match="rows of 3/3 labels for 2 label names"):
        multi_label_metrics(np.zeros((2, 3), dtype=int), np.zeros((2, 3), dtype=int), ["a", "b"])
