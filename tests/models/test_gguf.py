"""The packaged SmolLM2 GGUF: load -> convert -> train -> save -> reload, on the real model."""

import json

import torch
from transformers import AutoModelForCausalLM

import deltatune


def test_gguf_is_converted_once_to_a_loadable_folder(smollm2_dir):
    from pathlib import Path

    from deltatune.models import resolve_model

    folder = Path(smollm2_dir)
    assert (folder / "config.json").is_file() and list(folder.glob("*.safetensors"))
    assert resolve_model("smollm2") == smollm2_dir  # cached: same folder, no reconversion
    cfg = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["model_type"] == "llama"


def test_smollm2_lora_sft_round_trip(smollm2_dir, tmp_path):
    rows = [{"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a + b}"} for a, b in [(1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7)]]
    (tmp_path / "sft.json").write_text(json.dumps(rows))
    cfg = {
        "task": "instruction", "output_dir": str(tmp_path / "run"), "model": {"name_or_path": "smollm2"},
        "data": {"train_file": str(tmp_path / "sft.json"), "validation_split": 0.34, "max_seq_length": 64},
        "train": {"per_device_train_batch_size": 4, "max_steps": 2, "progress_bar": False},
        "eval": {"max_new_tokens": 8, "generation_max_samples": 2},
        "delta": {"method": "lora", "lora_r": 4},
    }
    run = deltatune.finetune(cfg, verbose=False)
    assert (run.path / "model" / "adapter_model.safetensors").is_file()
    predictor = deltatune.load(run.path)
    out = predictor.predict(["What is 2 plus 2?"])[0]
    assert isinstance(out["generated"], str) and out["generated"]
    # the merged export is a plain transformers causal LM with the adapter's logits
    from deltatune.serving.export import export_run

    merged_dir = export_run(run.path, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    ids = predictor.tokenizer("Hello", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(merged(**ids).logits, predictor.model(**ids).logits, atol=1e-4, rtol=0)
