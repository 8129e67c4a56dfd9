import pytest

from deltatune.errors import DeltatuneError
from deltatune.models import resolve_model
from deltatune.models.loading import dropout_overrides, load_tokenizer


def test_packaged_default_resolves_to_a_local_folder():
    path = resolve_model("minilm")
    assert path.endswith("model")
    assert load_tokenizer(path)("hello world")["input_ids"][0] == 101


def test_local_folder_without_config_is_refused(tmp_path):
    with pytest.raises(DeltatuneError, match="not a model folder"):
        resolve_model(str(tmp_path))
    with pytest.raises(DeltatuneError, match="not found"):
        resolve_model(str(tmp_path / "missing"))


def test_hub_id_offline_is_refused(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DeltatuneError, match="offline"):
        resolve_model("bert-base-uncased")


def test_hub_id_online_passes_through(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert resolve_model("org/some-model") == "org/some-model"


def test_dropout_override_covers_every_dropout_key(tiny_model_dir):
    keys = dropout_overrides(tiny_model_dir, 0.25)
    assert keys["hidden_dropout_prob"] == 0.25 and keys["attention_probs_dropout_prob"] == 0.25
    assert keys["classifier_dropout"] == 0.25
    assert dropout_overrides(tiny_model_dir, None) == {}
