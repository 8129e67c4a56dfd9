import pytest

from deltatune.config import RunConfig, apply_overrides, build_config, parse_override
from deltatune.errors import DeltatuneError


def test_defaults_fill_name_and_output_dir():
    cfg = build_config({})
    assert cfg.task == "text-classification"
    assert cfg.name == "text-classification"
    assert cfg.output_dir == "runs/text-classification"


def test_unknown_key_is_named_with_known_keys():
    with pytest.raises(DeltatuneError) as e:
        build_config({"train": {"lerning_rate": 1e-4}})
    msg = str(e.value)
    assert "train.lerning_rate" in msg and "learning_rate" in msg and "\n" not in msg


def test_wrong_type_names_key_and_value():
    with pytest.raises(DeltatuneError) as e:
        build_config({"train": {"per_device_train_batch_size": "many"}})
    assert "train.per_device_train_batch_size" in str(e.value) and "'many'" in str(e.value)


def test_overrides_are_parsed_as_yaml_values():
    assert parse_override("train.learning_rate=1e-4") == (["train", "learning_rate"], 1e-4)
    assert parse_override("data.text_pair_column=null") == (["data", "text_pair_column"], None)
    assert parse_override("train.group_by_length=false")[1] is False
    with pytest.raises(DeltatuneError):
        parse_override("no_equals_sign")


def test_overrides_apply_over_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  learning_rate: 0.1\n  num_train_epochs: 3\n")
    cfg = build_config(p, ["train.learning_rate=0.5", "model.name_or_path=/x"])
    assert cfg.train.learning_rate == 0.5 and cfg.train.num_train_epochs == 3 and cfg.model.name_or_path == "/x"


def test_resolved_config_roundtrip_is_identical(tmp_path):
    cfg = build_config({"seed": 3, "data": {"train_file": "a.csv"}, "eval": {"eval_strategy": "steps", "eval_steps": 5}})
    cfg.save(tmp_path / "config.yaml")
    again = build_config(tmp_path / "config.yaml")
    assert again == cfg


def test_steps_strategy_needs_eval_steps():
    with pytest.raises(DeltatuneError, match="eval_steps"):
        build_config({"eval": {"eval_strategy": "steps"}})


def test_temperature_zero_is_greedy_only():
    assert build_config({"eval": {"temperature": 0}}).eval.temperature == 0  # unused without sampling
    with pytest.raises(DeltatuneError, match="do_sample false"):
        build_config({"eval": {"temperature": 0, "do_sample": True}})


def test_bad_yaml_and_non_mapping(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(DeltatuneError, match="not valid YAML"):
        build_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(DeltatuneError, match="mapping"):
        build_config(lst)


def test_apply_overrides_does_not_mutate():
    base = {"train": {"learning_rate": 1.0}}
    out = apply_overrides(base, {"train.learning_rate": 2.0})
    assert base["train"]["learning_rate"] == 1.0 and out["train"]["learning_rate"] == 2.0
    assert isinstance(RunConfig.model_validate(out), RunConfig)


def test_override_text_that_yaml_would_turn_into_a_mapping_stays_text():
    assert parse_override("data.prompt_template=Translate: {en}") == (["data", "prompt_template"], "Translate: {en}")
    assert parse_override("data.system_prompt=Answer: briefly") == (["data", "system_prompt"], "Answer: briefly")
    assert parse_override("data.system_prompt=- be brief") == (["data", "system_prompt"], "- be brief")
    assert parse_override("data.system_prompt=#1 rule: be brief") == (["data", "system_prompt"], "#1 rule: be brief")
    assert parse_override("data.prompt_template=Q: {q} A:")[1] == "Q: {q} A:"
    assert parse_override("data.prompt_template={en}")[1] == "{en}"  # a template, not the mapping {en: null}
    assert parse_override("data.prompt_template={en!r}")[1] == "{en!r}"
    cfg = build_config({}, ["data.prompt_template=Translate: {en}"])
    assert cfg.data.prompt_template == "Translate: {en}"
    # values that are meant as YAML still are
    assert parse_override("train.learning_rate=5e-5")[1] == 5e-5
    assert parse_override("x=[1,2]")[1] == [1, 2]
    assert parse_override("x={a: 1}")[1] == {"a": 1}
    assert parse_override("x=null")[1] is None and parse_override("x=~")[1] is None and parse_override("x=")[1] is None
    assert parse_override("x='a: b'")[1] == "a: b"
