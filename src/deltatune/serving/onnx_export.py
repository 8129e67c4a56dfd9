"""Export an encoder run to ONNX: ``model.onnx`` + tokenizer (or processor) + model config + ``deltatune_onnx.json``.

What the folder holds (read back by :func:`deltatune.serving.onnx_backend.load_onnx`):

- ``model.onnx``: the task model (adapters merged into the weights first), fp32, or with
  ``quantize="int8"`` its weights quantized to int8 by onnxruntime's dynamic quantization
  (``onnxruntime.quantization.quantize_dynamic``: int8 weights of MatMul/Gemm per output
  channel, activations quantized per batch at run time). Outputs the task's logits (``logits``
  or ``start_logits``/``end_logits``), float32. Inputs:

  - text tasks (:data:`ONNX_TASKS`): ``input_ids``, ``attention_mask`` (and ``token_type_ids``
    when the tokenizer makes them and the model's forward takes them), int64 (batch, sequence),
    both axes dynamic;
  - image-/audio-classification (:data:`MEDIA_ONNX_TASKS`): what the task's ``collate`` gives the
    model (:meth:`~deltatune.tasks.media_classification.MediaClassificationTask.batch_inputs`):
    ``pixel_values`` float32 (batch, 3, H, W), H x W the image processor's output size; Whisper
    ``input_features`` float32 (batch, n_mels, frames), frames = 100 per second of
    ``data.max_audio_seconds`` (the encoder was cut to it); wav2vec-style ``input_values``
    float32 (batch, samples) (and ``attention_mask`` int64 when the extractor makes one). The batch
    axis is dynamic, the others fixed to what the processor produces, except an audio time axis
    when the clips are not padded to a fixed length (no ``data.max_audio_seconds`` and no clip length
    of the extractor's own).
- the tokenizer files (``tokenizer.save_pretrained``), or for image/audio runs the image
  processor / feature extractor (``save_pretrained``: ``preprocessor_config.json``), and the
  model's ``config.json`` (``id2label``, the QA v1.1/v2.0 choice, ...);
- ``deltatune_onnx.json``: format version, task, input and output names (and the input shapes,
  ``None`` for a dynamic axis), the processor's class, opset, quantization, and the run's resolved
  config (``RunConfig.to_dict()``, what ``<run>/config.yaml`` holds).

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
from deltatune.serving.onnx_tasks import EXPORTABLE_TASKS, MEDIA_ONNX_TASKS, ONNX_TASKS, QUANTIZE_CHOICES, check_onnx_request  # noqa: F401 - re-exported
from deltatune.serving.predictor import Predictor

ONNX_OPSET = 18
MODEL_FILE = "model.onnx"
META_FILE = "deltatune_onnx.json"
FORMAT_VERSION = 1
# graph inputs, in this order, when the tokenizer makes them and the model's forward takes them
INPUT_CANDIDATES = ("input_ids", "attention_mask", "token_type_ids")


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
        The metadata written to ``deltatune_onnx.json`` (``task``, ``inputs``, ``input_shapes``,
        ``outputs``, ``processor``, ``opset``, ``quantize``, ``config``, ...).

    Raises:
        DeltatuneError: a task other than :data:`EXPORTABLE_TASKS`; an unknown ``quantize``; an
            adapter that cannot be merged (prefix tuning); the exporter failing (its first line).
        OSError: ``out_dir`` cannot be written.
    """
    cfg = predictor.config
    check_onnx_request(cfg.task, quantize)
    out_dir = Path(out_dir)
    model = _merged(predictor.model).eval()
    if cfg.task in MEDIA_ONNX_TASKS:
        dummy, dynamic = _media_dummy_inputs(predictor.task, model)
        inputs = list(dummy)
    else:
        inputs = _input_names(model, predictor.tokenizer)
        dummy = _dummy_inputs(predictor.tokenizer, inputs, _device_of(model))
        dynamic = {k: {0: "batch", 1: "sequence"} for k in inputs}
    with torch.no_grad(), quiet_transformers():
        outputs = [k for k, v in model(**dummy).items() if isinstance(v, torch.Tensor)]
    fp32 = out_dir / (MODEL_FILE if quantize is None else "model-fp32.onnx")
    _export(model, dummy, inputs, outputs, dynamic, fp32)
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
        "input_shapes": {k: [None if i in dynamic[k] else int(n) for i, n in enumerate(dummy[k].shape)] for k in inputs},
        "outputs": outputs,
        "processor": type(predictor.tokenizer).__name__,
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


def _media_dummy_inputs(task, model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, dict[int, str]]]:
    """A batch of two of the task's own demo files (``demo_rows``: 32x32 PNGs / 0.25 s WAVs) made by
    the task's :meth:`batch_inputs` (same processor, same clip length as prediction), and the
    dynamic axes of each input: the batch axis; the last (time) axis too for audio clips that are
    not padded to a fixed length (:meth:`AudioClassificationTask.clip_seconds` ``None``).

    Raises:
        DeltatuneError: the model's forward does not take an input the task makes.
    """
    files = [row[task.input_kind] for row in type(task).demo_rows()["rows"][:2]]
    batch = task.batch_inputs(files, train=False)
    params = inspect.signature(model.forward).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    missing = [k for k in batch if k not in params]
    if missing and not takes_any:
        raise DeltatuneError(f"the {type(model).__name__} does not take {', '.join(missing)}, which the {task.name} task gives it; it cannot be exported")
    fixed_length = task.input_kind != "audio" or task.clip_seconds() is not None
    dynamic = {k: {0: "batch"} if fixed_length else {0: "batch", v.dim() - 1: "time"} for k, v in batch.items()}
    device = _device_of(model)
    return {k: v.to(device) for k, v in batch.items()}, dynamic


def _export(
    model: torch.nn.Module, dummy: dict[str, torch.Tensor], inputs: list[str], outputs: list[str],
    dynamic: dict[str, dict[int, str]], path: Path,
) -> None:
    """``torch.onnx.export`` (``dynamo=True``) with the dynamic axes ``dynamic`` (input -> {axis: name};
    one ``torch.export.Dim`` per name), saved to ``path``."""
    import warnings

    dims = {name: torch.export.Dim(name) for axes in dynamic.values() for name in axes.values()}
    try:
        with warnings.catch_warnings(), quiet_transformers(), _quiet_onnx_logs():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (),
                kwargs=dummy,
                input_names=inputs,
                output_names=outputs,
                dynamic_shapes={k: {axis: dims[name] for axis, name in dynamic[k].items()} for k in inputs},
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
