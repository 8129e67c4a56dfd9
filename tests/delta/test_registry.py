"""The Δθ method registry is the one list: builders, config, auto, CLI and README all agree with it."""

import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch

import deltatune.delta.tuners as tuners
from deltatune.config import DEFAULT_LEARNING_RATES, DeltaConfig, build_config
from deltatune.delta import registry
from deltatune.delta.registry import FAMILIES, METHOD_NAMES, METHODS, PEFT_METHODS, builder, get_method, searched_methods
from deltatune.errors import DeltatuneError

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_entry_has_a_builder_module_and_sane_fields(name):
    m = METHODS[name]
    assert m.name == name
    module, _, func = m.builder.partition(":")
    assert module.startswith("deltatune.delta.tuners.") and func, m.builder
    build = builder(name)
    assert callable(build) and list(inspect.signature(build).parameters)[:4] == ["model", "cfg", "task_type", "modules_to_save"]
    assert build.__doc__, f"{m.builder} has no docstring"
    assert 0 < m.learning_rate < 1 and m.description and not set("();") & set(m.description)
    assert m.families and set(m.families) <= set(FAMILIES)
    assert set(m.searched_for) <= {"encoder", "decoder"}


def test_every_tuner_module_is_registered_exactly_once():
    modules = [i.name for i in pkgutil.iter_modules(tuners.__path__) if not i.name.startswith("_")]
    referenced = [m.builder.partition(":")[0].rsplit(".", 1)[1] for m in METHODS.values()]
    assert sorted(modules) == sorted(referenced), "a builder module under delta/tuners/ without a registry entry, or the reverse"
    for mod in modules:  # one public builder per module, the one the registry names
        builds = [n for n, f in vars(importlib.import_module(f"deltatune.delta.tuners.{mod}")).items() if n.startswith("build") and callable(f)]
        assert builds == ["build"], (mod, builds)


def test_config_accepts_exactly_the_registered_methods():
    assert typing.get_args(DeltaConfig.model_fields["method"].annotation) == METHOD_NAMES
    assert DEFAULT_LEARNING_RATES == {n: m.learning_rate for n, m in METHODS.items()}
    assert PEFT_METHODS == tuple(n for n, m in METHODS.items() if m.peft)
    for name in METHOD_NAMES:  # each learning-rate default reaches the resolved config
        assert build_config(None, {"delta.method": name}).train.learning_rate == METHODS[name].learning_rate
    with pytest.raises(DeltatuneError, match="delta.method"):
        build_config(None, {"delta.method": "adalora"})
    with pytest.raises(DeltatuneError, match="unknown delta.method 'adalora'; choose from full, freeze"):
        get_method("adalora")


def test_apply_delta_dispatches_through_the_registry(monkeypatch):
    """A new method is one entry plus one builder: apply_delta needs no other change."""
    from deltatune.delta import apply_delta

    monkeypatch.setitem(
        registry.METHODS, "toy", registry.DeltaMethod("toy", f"{__name__}:_toy_build", 1e-3, "toy method for the test")
    )
    _TOY_CALLS.clear()
    model = torch.nn.Linear(2, 2)
    assert apply_delta(model, DeltaConfig.model_construct(method="toy"), "SEQ_CLS", ["head"]) is model
    assert _TOY_CALLS == [("SEQ_CLS", ["head"])] and not any(p.requires_grad for p in model.parameters())


_TOY_CALLS: list = []


def _toy_build(model, cfg, task_type, modules_to_save):
    """Freeze everything (a test builder)."""
    _TOY_CALLS.append((task_type, modules_to_save))
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def test_auto_defaults_and_families_come_from_the_registry(tiny_model_dir):
    from deltatune.auto.candidates import choose_candidates

    assert searched_methods("encoder") == ["full", "lora"] and searched_methods("decoder") == ["lora"]
    # prefix applies only to decoders: an encoder candidate is kept with lora, prefix is noted
    kept, _ = choose_candidates([tiny_model_dir], "text-classification", ["prefix", "lora"], None, None, 1000)
    assert kept[0].methods == ["lora"] and any("no prefix, it applies only to decoder models" in n for n in kept[0].notes)


def test_cli_choices_and_help_come_from_the_registry(capsys, monkeypatch):
    from deltatune.cli import FLAG_CHOICES, main

    assert FLAG_CHOICES["delta"] == METHOD_NAMES
    monkeypatch.setenv("COLUMNS", "2000")
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    delta_line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("--delta"))
    for name, m in METHODS.items():
        assert f"{name} ({m.description})" in delta_line, delta_line
    with pytest.raises(SystemExit):
        main(["auto", "--help"])
    methods_line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("--methods"))
    assert all(n in methods_line for n in METHOD_NAMES), methods_line


def test_readme_delta_paragraph_names_every_method():
    text = README.read_text()
    para = text[text.index("`delta.method`: "):]
    para = para[: para.index("\n\n")]
    assert set(re.findall(r"`(\w+)`", para)) >= set(METHOD_NAMES), para


def test_registry_and_config_import_without_torch_or_peft():
    code = (
        "import sys\nimport deltatune.config, deltatune.delta.registry, deltatune.cli\n"
        "print(sorted(m for m in ('torch', 'peft', 'transformers') if m in sys.modules))"
    )
    src = str(Path(importlib.import_module("deltatune").__file__).parents[1])  # the deltatune under test
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={"PYTHONPATH": src})
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
