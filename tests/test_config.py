import json

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
    cfg = build_config({"task": "translation"}, ["data.prompt_template=Translate: {en}"])
    assert cfg.data.prompt_template == "Translate: {en}"
    # values that are meant as YAML still are
    assert parse_override("train.learning_rate=5e-5")[1] == 5e-5
    assert parse_override("x=[1,2]")[1] == [1, 2]
    assert parse_override("x={a: 1}")[1] == {"a": 1}
    assert parse_override("x=null")[1] is None and parse_override("x=~")[1] is None and parse_override("x=")[1] is None
    assert parse_override("x='a: b'")[1] == "a: b"


@pytest.mark.parametrize("name", ["../../x", "a/b", "a\\b", "..", ".hidden", "", " "])
def test_name_is_a_name_not_a_path(name):
    with pytest.raises(DeltatuneError) as e:
        build_config({"name": name})
    msg = str(e.value)
    assert "'name'" in msg and "output_dir" in msg and "\n" not in msg


def test_plain_names_still_work():
    cfg = build_config({"name": "sst2-lora_v1.2"})
    assert cfg.name == "sst2-lora_v1.2" and cfg.output_dir == "runs/sst2-lora_v1.2"


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.learning_rate=inf", "train.learning_rate"),
        ("train.learning_rate=nan", "train.learning_rate"),
        ("train.learning_rate=.inf", "train.learning_rate"),
        ("train.warmup_ratio=nan", "train.warmup_ratio"),
        ("train.weight_decay=-inf", "train.weight_decay"),
        ("train.max_grad_norm=inf", "train.max_grad_norm"),
        ("train.num_train_epochs=inf", "train.num_train_epochs"),
        ("data.null_score_diff_threshold=nan", "data.null_score_diff_threshold"),
        ("eval.early_stopping_threshold=inf", "eval.early_stopping_threshold"),
        ("delta.lora_alpha=inf", "delta.lora_alpha"),
        ("model.dropout=nan", "model.dropout"),
    ],
)
def test_no_inf_or_nan_in_any_number(override, key):
    with pytest.raises(DeltatuneError) as e:
        build_config({}, [override])
    assert f"'{key}'" in str(e.value) and "finite" in str(e.value)


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.learning_rate=0", "train.learning_rate"),
        ("train.learning_rate=-1e-4", "train.learning_rate"),
        ("train.per_device_train_batch_size=0", "train.per_device_train_batch_size"),
        ("eval.per_device_eval_batch_size=-1", "eval.per_device_eval_batch_size"),
        ("train.gradient_accumulation_steps=0", "train.gradient_accumulation_steps"),
        ("train.warmup_ratio=1.5", "train.warmup_ratio"),
        ("train.warmup_steps=-1", "train.warmup_steps"),
        ("train.max_steps=0", "train.max_steps"),
        ("data.max_seq_length=2", "data.max_seq_length"),
        ("data.max_target_length=1", "data.max_target_length"),
        ("seed=-1", "seed"),
        ("seed=4294967296", "seed"),
        ("eval.top_p=0", "eval.top_p"),
        ("delta.lora_r=0", "delta.lora_r"),
    ],
)
def test_numbers_out_of_range_name_the_key(override, key):
    with pytest.raises(DeltatuneError) as e:
        build_config({}, [override])
    assert f"'{key}'" in str(e.value) and "\n" not in str(e.value)


def test_doc_stride_must_be_below_max_seq_length():
    with pytest.raises(DeltatuneError, match=r"data.doc_stride 128 must be smaller than data.max_seq_length 128"):
        build_config({"task": "question-answering", "data": {"doc_stride": 128}})
    with pytest.raises(DeltatuneError, match=r"data.doc_stride applies to question-answering, not text-classification"):
        build_config({"data": {"doc_stride": 128}})  # another task's option: that error comes first
    assert build_config({"task": "question-answering", "data": {"doc_stride": 64}}).data.doc_stride == 64


def test_yaml_11_booleans_in_text_keys_are_the_words_written(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("eval:\n  eval_strategy: no\ntrain:\n  mixed_precision: NO\n  packing: yes\ndata:\n  text_column: On\n")
    cfg = build_config(p)
    assert cfg.eval.eval_strategy == "no" and cfg.train.mixed_precision == "no"
    assert cfg.train.packing is True  # a boolean key still reads yes/no as a boolean
    assert cfg.data.text_column == "On"  # a text key keeps the word as written


def test_yaml_11_booleans_in_overrides():
    cfg = build_config({}, ["eval.eval_strategy=no", "train.mixed_precision=Off", "train.group_by_length=off", "data.label_column=yes"])
    assert cfg.eval.eval_strategy == "no" and cfg.train.group_by_length is False and cfg.data.label_column == "yes"
    assert cfg.train.mixed_precision == "no"  # 'Off' is not a mixed_precision word: the Literal's 'no' is meant
    # real booleans (dict API, YAML true/false) given to a text/Literal key become its word
    assert build_config({"eval": {"eval_strategy": False}}).eval.eval_strategy == "no"
    assert build_config({"data": {"text_column": True}}).data.text_column == "true"


def test_resolved_config_with_no_roundtrips(tmp_path):
    cfg = build_config({}, ["eval.eval_strategy=no"])
    cfg.save(tmp_path / "config.yaml")
    assert build_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize(
    "source, overrides, guess",
    [
        ({"train": {"lerning_rate": 1e-4}}, None, "train.learning_rate"),
        ({}, ["train.learnin_rate=1e-4"], "train.learning_rate"),
        ({"learning_rate": 1e-4}, None, "train.learning_rate"),  # right key, wrong section
        ({}, ["data.learning_rate=1e-4"], "train.learning_rate"),
        ({}, ["data.text_colum=review"], "data.text_column"),
        ({"trian": {"learning_rate": 1e-4}}, None, "train"),
        ({}, ["eval.eval_stratgy=no"], "eval.eval_strategy"),
    ],
)
def test_unknown_key_gets_did_you_mean(source, overrides, guess):
    with pytest.raises(DeltatuneError) as e:
        build_config(source, overrides)
    assert f"did you mean {guess}?" in str(e.value) and "\n" not in str(e.value)


def test_unknown_key_far_from_any_gets_no_guess():
    with pytest.raises(DeltatuneError) as e:
        build_config({}, ["train.zzzqqq=1"])
    assert "did you mean" not in str(e.value) and "unknown key 'train.zzzqqq'" in str(e.value)


@pytest.mark.parametrize(
    "source, overrides, key, must_name",
    [
        ({}, ["data.doc_stride=64"], "doc_stride", "question-answering"),
        ({"task": "masked-lm", "data": {"label_column": "y"}}, None, "label_column", "text-classification"),
        ({"task": "causal-lm"}, ["data.target_column=out"], "target_column", "summarization"),
        ({"task": "instruction"}, ["data.source_prefix=summarize: "], "source_prefix", "translation"),
    ],
)
def test_an_option_of_another_task_is_an_error_naming_the_key_and_its_tasks(source, overrides, key, must_name):
    from deltatune.config import _OPTION_OF
    from deltatune.tasks.registry import tasks_reading

    task = (source or {}).get("task", "text-classification")
    readers = tasks_reading(_OPTION_OF[key])  # read from the registry: a task that adds a reader changes the list, not this test
    with pytest.raises(DeltatuneError) as e:
        build_config(source, overrides)
    assert f"data.{key} applies to {', '.join(readers)}, not {task}" in str(e.value), str(e.value)
    assert must_name in readers and "\n" not in str(e.value) and "(top level)" not in str(e.value)


def test_options_of_the_task_stay_flat_in_yaml_and_are_read_as_before(tmp_path):
    p = tmp_path / "qa.yaml"
    p.write_text("task: question-answering\ndata:\n  doc_stride: 64\n  question_column: q\n  max_seq_length: 256\n")
    cfg = build_config(p)
    assert cfg.data.doc_stride == 64 and cfg.data.question_column == "q" and cfg.data.max_seq_length == 256
    tok = build_config({"task": "token-classification"}, ["data.tokens_column=words", "data.label_all_subwords=true"])
    assert tok.data.tokens_column == "words" and tok.data.label_all_subwords is True
    # another task's key at its default value is accepted (a hand-copied resolved config)
    assert build_config({"data": {"doc_stride": None, "tokens_column": "tokens"}}).task == "text-classification"


def test_saved_run_configs_still_load(tmp_path):
    """A resolved config.yaml holds every data key: other tasks' defaults, and (runs saved before
    the check) another task's value that was ignored; both load as before."""
    cfg = build_config({}, ["data.text_column=review"])
    cfg.save(tmp_path / "config.yaml")
    assert build_config(tmp_path / "config.yaml") == cfg
    old = cfg.to_dict()
    old["data"]["doc_stride"] = 64  # set by hand in an older run, never read by text-classification
    (tmp_path / "old.yaml").write_text(__import__("yaml").safe_dump(old))
    assert build_config(tmp_path / "old.yaml").data.doc_stride == 64


def test_every_data_key_is_common_or_declared_by_a_task_with_a_description():
    from deltatune.config import DataConfig, DataFiles
    from deltatune.tasks.options import OPTION_MODELS
    from deltatune.tasks.registry import TASK_SPECS

    declared = {f for m in OPTION_MODELS for f in m.model_fields}
    assert set(DataConfig.model_fields) == declared | set(DataFiles.model_fields)
    assert not declared & set(DataFiles.model_fields)
    assert all(any(m in s.options for s in TASK_SPECS) for m in OPTION_MODELS)
    undocumented = [k for k, f in DataConfig.model_fields.items() if not f.description]
    assert not undocumented, undocumented


def test_the_readme_config_section_lists_every_task_option():
    from pathlib import Path

    from deltatune.tasks.options import OPTION_MODELS

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme[readme.index("### Config"):readme.index("### The run directory")]
    missing = [k for m in OPTION_MODELS for k in m.model_fields if f"`{k}`" not in section]
    assert not missing, missing


@pytest.mark.parametrize("key", ["train.learning_rate", "train.num_train_epochs", "seed", "train.per_device_train_batch_size"])
def test_a_boolean_is_not_a_number(key):
    with pytest.raises(DeltatuneError, match=key.replace(".", r"\.")):
        build_config(None, [f"{key}=true"])


def test_a_key_given_twice_in_a_yaml_file_is_refused(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("train:\n  learning_rate: 1.0e-4\ntrain:\n  max_steps: 3\n")
    with pytest.raises(DeltatuneError, match="line 3.*'train' is given twice"):
        build_config(str(path))


def test_a_saved_classification_run_with_a_stride_as_long_as_its_sequences_still_loads(tmp_path):
    # config.yaml of runs made before per-task options held every data key, doc_stride: 128 included
    saved = RunConfig().to_dict()
    saved["data"]["doc_stride"] = saved["data"]["max_seq_length"]
    path = tmp_path / "config.yaml"
    path.write_text(__import__("yaml").safe_dump(saved))
    assert build_config(str(path)).data.doc_stride == 128


def test_a_grpo_completion_must_leave_room_for_a_prompt_and_other_tasks_ignore_it():
    with pytest.raises(DeltatuneError, match="data.max_completion_length 64 must be smaller than data.max_seq_length 64"):
        build_config({"task": "grpo", "data": {"max_seq_length": 64}})
    assert build_config({"task": "grpo", "data": {"max_seq_length": 65}}).data.max_completion_length == 64
    assert build_config({"task": "text-classification", "data": {"max_seq_length": 32}}).data.max_seq_length == 32


def test_max_steps_zero_points_at_evaluate_pretrained():
    with pytest.raises(DeltatuneError, match=r"'train.max_steps': 0 trains nothing.*deltatune evaluate --pretrained"):
        build_config({}, ["train.max_steps=0"])


def test_a_config_saved_before_new_data_keys_existed_loads_with_list_defaults(tmp_path):
    """A run folder's config.yaml written by an older version lacks the data keys added since, so it
    is not exempt as a resolved config; its other tasks' keys at their defaults, list defaults
    built by a factory (data.rewards) included, must still load."""
    import yaml

    cfg = build_config({}, ["data.text_column=review"])
    saved = cfg.to_dict()
    saved["data"].pop("max_seq_length")  # stands for a key this version added
    assert saved["data"]["rewards"] == ["numeric_match"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert build_config(tmp_path / "config.yaml").data.rewards == ["numeric_match"]


@pytest.mark.parametrize("output_dir", ["runs/teacher", "runs/teacher/student", "runs"])
def test_a_student_run_folder_overlapping_its_teacher_is_refused(output_dir):
    with pytest.raises(DeltatuneError, match="overlap: the student would overwrite its teacher"):
        build_config({"distill": {"teacher": "runs/teacher"}, "output_dir": output_dir})
    assert build_config({"distill": {"teacher": "runs/teacher"}, "output_dir": "runs/student"}).output_dir == "runs/student"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"data": {"augmentation_alpha": 0.2}},
         r"^config error in config: data.augmentation_alpha is set but data.augmentation is 'none', so nothing is augmented; "
         r"set data.augmentation: eda or remove it$"),
        ({"task": "text-regression", "data": {"augmentation_copies": 2, "augmentation_seed": 1}},
         r"data.augmentation_copies, data.augmentation_seed are set but data.augmentation is 'none'.*remove them$"),
        ({"data": {"augmentation": "none", "augmentation_alpha": 0.1}}, "data.augmentation_alpha is set"),  # even at its default
        ({"distill": {"temperature": 4}},
         r"^config error in config: distill.temperature is set but distill.teacher is not, so nothing is distilled; "
         r"set distill.teacher to a finished run folder \(or use deltatune distill --teacher RUN\) or remove it$"),
        ({"distill": {"temperature": 4, "alpha": 0.9}}, r"distill.temperature, distill.alpha are set but distill.teacher is not"),
        ({"distributed": {"zero_stage": 3}},
         r"^config error in config: distributed.zero_stage is set but distributed.strategy is ddp, and it applies only to "
         r"distributed.strategy: deepspeed; set distributed.strategy: deepspeed or remove it$"),
        ({"distributed": {"strategy": "ddp", "zero_stage": 2, "offload_optimizer": "cpu"}},  # even at its default
         r"distributed.zero_stage, distributed.offload_optimizer are set but distributed.strategy is ddp"),
        ({"distributed": {"strategy": "fsdp", "offload_param": "cpu"}},
         r"distributed.offload_param is set but distributed.strategy is fsdp, .*FSDP's own CPU offload is distributed.fsdp_cpu_offload: true"),
    ],
)
def test_settings_without_their_switch_are_refused(config, message):
    with pytest.raises(DeltatuneError, match=message):
        build_config(config)


def test_settings_with_their_switch_and_saved_configs_are_accepted():
    on = build_config({"data": {"augmentation": "eda", "augmentation_alpha": 0.2}, "distill": {"teacher": "t", "alpha": 0.9}})
    assert on.data.augmentation_alpha == 0.2 and on.distill.alpha == 0.9
    saved = build_config({}).to_dict()  # every key written, as <run>/config.yaml
    assert build_config(saved).distill.temperature == 2.0
    saved["data"].pop("augmentation_seed")  # a run saved before a key was added: defaults still load
    saved["distill"].pop("unlabeled_file")
    assert build_config(saved).data.augmentation == "none"
    saved["data"]["augmentation_alpha"] = 0.3  # but not a value that would have been ignored
    with pytest.raises(DeltatuneError, match="data.augmentation_alpha is set but data.augmentation is 'none'"):
        build_config(saved)


@pytest.mark.parametrize("value", [True, False, "true", "2", 0, 4, 2.5, "two", None])
def test_the_zero_stage_is_1_2_or_3_never_a_boolean_or_text(value):
    for source, overrides in (({"distributed": {"strategy": "deepspeed", "zero_stage": value}}, None),
                              (None, ["distributed.strategy=deepspeed", f"distributed.zero_stage={json.dumps(value)}"])):
        with pytest.raises(DeltatuneError) as e:
            build_config(source, overrides)
        assert "'distributed.zero_stage': Input should be 1, 2 or 3 (got " in str(e.value) and "\n" not in str(e.value)
    assert build_config(None, ["distributed.strategy=deepspeed", "distributed.zero_stage=3"]).distributed.zero_stage == 3


def test_deepspeed_keys_with_deepspeed_and_saved_configs_are_accepted():
    d = build_config({"distributed": {"strategy": "deepspeed", "zero_stage": 3, "offload_optimizer": "cpu", "offload_param": "cpu"}}).distributed
    assert (d.zero_stage, d.offload_optimizer, d.offload_param) == (3, "cpu", "cpu")
    saved = build_config({"distributed": {"strategy": "fsdp"}}).to_dict()  # every distributed key written, as <run>/config.yaml
    assert build_config(saved).distributed.zero_stage == 2
    saved["distributed"].pop("offload_param")  # saved before a key was added: defaults still load
    assert build_config(saved).distributed.strategy == "fsdp"
    saved["distributed"]["zero_stage"] = 3  # but not a value that would have been ignored
    with pytest.raises(DeltatuneError, match="distributed.zero_stage is set but distributed.strategy is fsdp"):
        build_config(saved)
