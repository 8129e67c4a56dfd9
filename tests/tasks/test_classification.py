import datasets
import numpy as np
import pytest
import torch

from deltatune.config import build_config
from deltatune.errors import DeltatuneError
from deltatune.tasks import ClassificationTask
from deltatune.tasks.classification import normalize_label


def _task(**data):
    return ClassificationTask(build_config({"data": data}))


def _ds(texts, labels):
    return datasets.Dataset.from_dict({"text": texts, "label": labels})


def test_integer_and_string_labels_normalise():
    assert normalize_label(1) == normalize_label(1.0) == normalize_label("1 ") == "1"
    t = _task()
    t.fit(_ds(["a", "b", "c", "d"], [10, 2, 2, 10]), "train.csv")
    assert t.labels == ["2", "10"]  # numeric order, not string order
    t = _task()
    t.fit(_ds(["a", "b", "c"], ["pos", "neg", "pos"]), "train.csv")
    assert t.labels == ["neg", "pos"] and t.multi_label is False


def test_unseen_label_in_eval_data_names_row():
    t = _task()
    t.fit(_ds(["a", "b"], ["pos", "neg"]), "train.csv")
    with pytest.raises(DeltatuneError, match=r"dev.csv: row 2 has label 'neutral'"):
        t.check(_ds(["x", "y"], ["pos", "neutral"]), "dev.csv")


def test_empty_text_and_missing_label_name_rows():
    t = _task()
    with pytest.raises(DeltatuneError, match=r"row 2 has an empty 'text'"):
        t.fit(_ds(["a", "  ", "c"], ["p", "n", "p"]), "train.csv")
    t = _task()
    with pytest.raises(DeltatuneError, match=r"row 3 has no label"):
        t.fit(_ds(["a", "b", "c"], ["p", "n", None]), "train.csv")


def test_single_class_is_refused():
    with pytest.raises(DeltatuneError, match="at least 2"):
        _task().fit(_ds(["a", "b"], ["p", "p"]), "train.csv")


def test_multi_label_from_lists_and_from_separator():
    t = _task()
    t.fit(_ds(["a", "b", "c"], [["x", "y"], ["y"], []]), "train.jsonl")
    assert t.multi_label and t.labels == ["x", "y"]
    t2 = _task(label_separator=";")
    t2.fit(_ds(["a", "b"], ["x;z", "y"]), "train.csv")
    assert t2.multi_label and t2.labels == ["x", "y", "z"]


class _Tok:
    pad_token_id = 0

    def __call__(self, texts, pairs=None, truncation=True, max_length=8):
        ids = [[101] + [5] * min(len(t.split()), max_length - 2) + [102] for t in texts]
        return {"input_ids": ids, "attention_mask": [[1] * len(i) for i in ids]}


def test_encode_and_collate_pad_dynamically():
    t = _task()
    ds = _ds(["one", "one two three", "x y"], ["a", "b", "a"])
    t.fit(ds, "train.csv")
    t.set_tokenizer(_Tok())
    f = t.encode(ds, _Tok())
    assert f.lengths == [3, 5, 4]
    batch = t.collate([f[0], f[1]])
    assert batch["input_ids"].shape == (2, 5)  # padded to the longest in the batch, not max_seq_length
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1] * 5]
    assert batch["labels"].tolist() == [0, 1]


def test_multi_label_targets_are_multi_hot():
    t = _task()
    ds = _ds(["a", "b"], [["x", "z"], ["y"]])
    t.fit(ds, "train.jsonl")
    f = t.encode(ds, _Tok())
    assert f[0]["labels"] == [1.0, 0.0, 1.0]
    out = {"logits": np.array([[5.0, -5.0, 5.0], [-5.0, 5.0, -5.0]]), "labels": np.array([[1, 0, 1], [0, 1, 0]])}
    m = t.compute_metrics(out)
    assert m["subset_accuracy"] == 1.0 and m["f1_micro"] == 1.0
    assert t.decode(out)[0]["label"] == ["x", "z"]


def test_loss_is_summed_with_example_count():
    t = _task()
    t.fit(_ds(["a", "b"], ["p", "n"]), "train.csv")

    class M(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None):
            return type("O", (), {"logits": torch.zeros(input_ids.shape[0], 2)})()

    batch = {"input_ids": torch.ones(3, 4, dtype=torch.long), "labels": torch.tensor([0, 1, 1])}
    total, n = t.loss(M(), batch)
    assert int(n) == 3 and torch.isclose(total, torch.tensor(3 * np.log(2), dtype=torch.float32))
