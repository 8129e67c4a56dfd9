"""Export an encoder run to ONNX: ``model.onnx`` + tokenizer + model config + ``deltatune_onnx.json``.

What the folder holds (read back by :func:`deltatune.serving.onnx_backend.load_onnx`):

- ``model.onnx``: the task model (adapters merged into the weights first), fp32, or with
  ``quantize="int8"`` its weights quantized to int8 by onnxruntime's dynamic quantization
  (``onnxruntime.quantization.quantize_dynamic``: int8 weights of MatMul/Gemm per output
  channel, activations quantized per batch at run time). Inputs ``input_ids``, ``attention_mask`` (and
  ``token_type_ids`` when the tokenizer makes them and the model's forward takes them), int64
  (batch, sequence), both axes dynamic; outputs the task's logits (``logits`` or
  ``start_logits``/``end_logits``), float32.
- the tokenizer files (``tokenizer.save_pretrained``) and the model's ``config.json``
  (``id2label``, the QA v1.1/v2.0 choice, ...);
- ``deltatune_onnx.json``: format version, task, input and output names, opset, quantization,
  and the run's resolved config (``RunConfig.to_dict()``, what ``<run>/config.yaml`` holds).

Exporter: the ``torch.export``-based exporter (``torch.onnx.export(..., dynamo=True)``,
opset 18) with ``dynamic_shapes``; the TorchScript exporter (``dynamo=False``) is deprecated
in torch >= 2.9 and traces transformers' data-dependent mask branches as constants.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
from pathlib import Path
from typing import Any

import torch

from deltatune.errors import DeltatuneError
from deltatune.models.loading import quiet_transformers
from deltatune.serving.predictor import Predictor

# the encoder tasks whose predictions come from one forward pass of the model (Task.eval_step)
ONNX_TASKS = ("text-classification", "token-classification", "question-answering", "extractive-summarization")
QUANTIZE_CHOICES = ("int8",)
ONNX_OPSET = 18
MODEL_FILE = "model.onnx"
META_FILE = "deltatune_onnx.json"
FORMAT_VERSION = 1
# graph inputs, in this order, when the tokenizer makes them and the model's forward takes them
INPUT_CANDIDATES = ("input_ids", "attention_mask", "token_type_ids")


def check_onnx_request(task: str, quantize: str | None) -> None:
    """Refuse what the ONNX export does not support (callable before the run is loaded).

    Raises:
        DeltatuneError: ``task`` is not one of :data:`ONNX_TASKS`; ``quantize`` is not ``None``
            or ``"int8"``.
    """
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise DeltatuneError(f"--quantize {quantize!r} is not supported; use --quantize int8 (or leave it out for fp32)")
    if task not in ONNX_TASKS:
        raise DeltatuneError(
            f"--format onnx supports the encoder tasks {', '.join(ONNX_TASKS)}; this run's task is {task}: "
            "export decoder runs with --format gguf or as a merged model (--merge)"
        )


def export_onnx(predictor: Predictor, out_dir: Path, quantize: str | None = None) -> dict[str, Any]:
    """Write ``predictor``'s model as an ONNX export into the empty folder ``out_dir``.

    The caller provides ``out_dir`` (a temporary folder it swaps in atomically, see
    :func:`deltatune.files.replace_dir_atomically`). An adapter run (a peft ``PeftModel``) is
    merged first (peft ``merge_and_unload``, on a copy: ``predictor`` is left unchanged).

    Args:
        predictor: a loaded encoder run (:func:`deltatune.serving.predictor.load`, ideally on CPU).
        out_dir: the existing, empty folder to write.
        quantize: ``None`` (fp32) or ``"int8"`` (dynamic int8 quantization of the weights).

    Returns:
        The metadata written to ``deltatune_onnx.json`` (``task``, ``inputs``, ``outputs``,
        ``opset``, ``quantize``, ``config``, ...).

    Raises:
        DeltatuneError: a task other than :data:`ONNX_TASKS`; an unknown ``quantize``; an
            adapter that cannot be merged (prefix tuning); the exporter failing (its first line).
        OSError: ``out_dir`` cannot be written.
    """
    cfg = predictor.config
    check_onnx_request(cfg.task, quantize)
    out_dir = Path(out_dir)
    model = _merged(predictor.model).eval()
    inputs = _input_names(model, predictor.tokenizer)
    dummy = _dummy_inputs(predictor.tokenizer, inputs, _device_of(model))
    with torch.no_grad(), quiet_transformers():
        outputs = [k for k, v in model(**dummy).items() if isinstance(v, torch.Tensor)]
    fp32 = out_dir / (MODEL_FILE if quantize is None else "model-fp32.onnx")
    _export(model, dummy, inputs, outputs, fp32)
    if quantize == "int8":
        _quantize_int8(fp32, out_dir / MODEL_FILE)
        fp32.unlink()
    with quiet_transformers():
        predictor.tokenizer.save_pretrained(out_dir)
        model.config.save_pretrained(out_dir)
    meta = {
        "format_version": FORMAT_VERSION,
        "task": cfg.task,
        "model_file": MODEL_FILE,
        "inputs": inputs,
        "outputs": outputs,
        "opset": ONNX_OPSET,
        "quantize": quantize,
        "torch_version": torch.__version__,
        "config": cfg.to_dict(),
    }
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2))
    return meta


def _merged(model: torch.nn.Module) -> torch.nn.Module:
    """The plain transformers model: a ``PeftModel`` is copied and its adapters folded into the weights."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return model
    try:
        with quiet_transformers():
            return copy.deepcopy(model).merge_and_unload()
    except Exception as e:  # peft raises for methods without merge (prefix tuning, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DeltatuneError(f"this adapter cannot be merged into the weights for ONNX export ({first}); use --format adapter") from None


def _input_names(model: torch.nn.Module, tokenizer) -> list[str]:
    """Graph inputs: of :data:`INPUT_CANDIDATES`, those the tokenizer makes and the forward takes
    (``input_ids`` and ``attention_mask`` always)."""
    params = inspect.signature(model.forward).parameters
    made = set(tokenizer.model_input_names) | {"input_ids", "attention_mask"}
    return [k for k in INPUT_CANDIDATES if k in made and k in params]


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _dummy_inputs(tokenizer, names: list[str], device: torch.device) -> dict[str, torch.Tensor]:
    """A padded batch of two texts of different lengths: (2, T) int64, T > 2 (no size-0/1 dims,
    which ``torch.export`` would specialise, and a real padding mask)."""
    enc = tokenizer(
        ["an example sentence", "a second, rather longer example sentence for tracing"],
        ["with a pair", "and its second part"],
        padding=True,
        return_tensors="pt",
    )
    out = {}
    for name in names:
        out[name] = enc[name] if name in enc else torch.zeros_like(enc["input_ids"])
    return {k: v.to(device=device, dtype=torch.long) for k, v in out.items()}


def _export(model: torch.nn.Module, dummy: dict[str, torch.Tensor], inputs: list[str], outputs: list[str], path: Path) -> None:
    """``torch.onnx.export`` (``dynamo=True``) with dynamic batch and sequence axes, saved to ``path``."""
    import warnings

    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    try:
        with warnings.catch_warnings(), quiet_transformers(), _quiet_onnx_logs():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (),
                kwargs=dummy,
                input_names=inputs,
                output_names=outputs,
                dynamic_shapes={k: {0: batch, 1: sequence} for k in inputs},
                opset_version=ONNX_OPSET,
                dynamo=True,
                verbose=False,
            )
            program.save(str(path))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DeltatuneError(f"ONNX export of the {type(model).__name__} failed: {first}") from None


def _quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization of ``src``'s weights into ``dst`` (onnxruntime ``quantize_dynamic``).

    Weights int8 per output channel (``per_channel``), on 7 bits (``reduce_range``: no u8 x s8
    overflow on CPUs without VNNI, onnxruntime's advice for per-channel); only MatMul/Gemm with
    a constant weight (``MatMulConstBOnly``, the dynamic default). On SST-2 dev with the MiniLM
    classifier (benchmarks/onnx_sst2.py) per-tensor weights lost 1.5 accuracy points, these
    settings 0.0.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_onnx_logs():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)


class _quiet_onnx_logs:
    """Silence the root-logger warnings of onnxruntime.quantization ("consider pre-processing")
    and the ``torch.onnx`` progress logger while exporting."""

    def __enter__(self):
        self._levels = [(lg, lg.level) for lg in (logging.getLogger(), logging.getLogger("torch.onnx"))]
        for lg, _ in self._levels:
            lg.setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc) -> None:
        for lg, level in self._levels:
            lg.setLevel(level)
