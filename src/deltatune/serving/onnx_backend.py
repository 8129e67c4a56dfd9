"""Predict with an ONNX export (:mod:`deltatune.serving.onnx_export`) through the usual Predictor.

:class:`OnnxModel` stands in for the PyTorch model: ``model(**inputs)`` runs the onnxruntime
session and returns the outputs as float32 torch tensors by name (``.logits``,
``.start_logits``/``.end_logits``), so :class:`deltatune.serving.predictor.Predictor` (task.encode
-> batched_outputs -> task.eval_step -> task.decode) runs unchanged. Image and audio exports read
their files through the run's own task with the exported processor (same checks, same errors,
same pixels / features as the PyTorch run).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deltatune.config import build_config
from deltatune.errors import DeltatuneError
from deltatune.models.loading import load_config, load_processor
from deltatune.serving.onnx_export import EXPORTABLE_TASKS, FORMAT_VERSION, META_FILE, MODEL_FILE
from deltatune.serving.predictor import Predictor
from deltatune.tasks import get_task_class


class OnnxOutput(dict):
    """The model's outputs by name (float32 torch tensors), readable as attributes like a
    transformers ``ModelOutput`` (``out.logits``)."""

    def __getattr__(self, name: str) -> torch.Tensor:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"the ONNX model has no output {name!r} (it has {', '.join(self)})") from None


class OnnxModel:
    """A callable stand-in for the task model, running ``model.onnx`` with onnxruntime.

    ``model(input_ids=..., attention_mask=..., token_type_ids=...)`` takes int64 tensors
    (B, T) (image/audio exports: ``pixel_values`` / ``input_features`` / ``input_values`` float32) and
    returns an :class:`OnnxOutput` of float32 CPU tensors (``logits`` (B, C) or (B, T, C);
    ``start_logits``/``end_logits`` (B, T)). Each input is converted to the graph input's element
    type. A text graph input not given is filled as the PyTorch model would: ``token_type_ids``
    zeros, ``attention_mask`` ones.

    Args:
        path: the ``model.onnx`` file.
        config: the model's transformers config (``id2label``, ...), kept as ``.config``.
        providers: onnxruntime execution providers (default ``["CPUExecutionProvider"]``).
        threads: intra-op threads (``None``: onnxruntime's default, one per physical core).

    Raises:
        DeltatuneError: ``path`` is missing or not a loadable ONNX model (names the file).
    """

    def __init__(self, path: str | Path, config=None, providers: list[str] | None = None, threads: int | None = None):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise DeltatuneError(f"{path} is missing: this is not a complete ONNX export; export the run again (--format onnx)")
        options = ort.SessionOptions()
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise DeltatuneError(f"threads must be an integer >= 1, got {threads!r}")
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DeltatuneError(f"{path} cannot be loaded by onnxruntime ({first[:200]}): the file is damaged; export the run again") from None
        self.path, self.config = path, config
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.input_dtypes = {i.name: _NUMPY_TYPES.get(i.type, np.float32) for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.device = torch.device("cpu")
        self.training = False

    def __call__(self, **inputs: torch.Tensor) -> OnnxOutput:
        """Run the session on ``inputs`` (tensors by graph input name); outputs as float32 CPU tensors.

        Raises:
            DeltatuneError: an input the graph does not take, or lacks (names it and the graph's
                inputs); a batch of another shape than the graph's fixed axes (onnxruntime's first line).
        """
        extra = set(inputs) - set(self.input_names)
        if extra:
            raise DeltatuneError(f"{self.path} takes {', '.join(self.input_names)}, not {', '.join(sorted(extra))}")
        ids = inputs.get("input_ids")
        feed = {}
        for name in self.input_names:
            value = inputs.get(name)
            if value is None:
                if ids is None or name not in ("attention_mask", "token_type_ids"):
                    raise DeltatuneError(f"{self.path} needs the input {name} (it takes {', '.join(self.input_names)})")
                value = torch.ones_like(ids) if name == "attention_mask" else torch.zeros_like(ids)
            feed[name] = value.detach().cpu().numpy().astype(self.input_dtypes[name], copy=False)
        try:
            results = self.session.run(self.output_names, feed)
        except Exception as e:  # onnxruntime's InvalidArgument / Fail for shapes the graph does not take
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DeltatuneError(f"{self.path} cannot run this batch ({first[:300]})") from None
        return OnnxOutput({n: torch.from_numpy(np.asarray(r, dtype=np.float32)) for n, r in zip(self.output_names, results)})

    forward = __call__

    def to(self, *args: Any, **kwargs: Any) -> "OnnxModel":
        """No-op (the session's providers decide the device); returns ``self``."""
        return self

    def eval(self) -> "OnnxModel":
        """No-op (an exported graph is always in inference mode); returns ``self``."""
        return self


def is_onnx_export(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by :func:`deltatune.serving.onnx_export.export_onnx`
    (it holds ``deltatune_onnx.json``)."""
    return (Path(path) / META_FILE).is_file()


def read_onnx_meta(path: str | Path) -> dict[str, Any]:
    """The export's ``deltatune_onnx.json``.

    Raises:
        DeltatuneError: missing, not JSON, or of a newer format / unsupported task (names the file).
    """
    file = Path(path) / META_FILE
    if not file.is_file():
        raise DeltatuneError(f"{path} is not an ONNX export (no {META_FILE}); export a run with --format onnx")
    try:
        meta = json.loads(file.read_text())
        task, config, version = meta["task"], meta["config"], meta["format_version"]
    except (ValueError, KeyError, TypeError) as e:
        raise DeltatuneError(f"{file} is damaged ({type(e).__name__}: {e}); export the run again") from None
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DeltatuneError(f"{file}: format_version {version!r} is newer than this deltatune reads ({FORMAT_VERSION}); upgrade deltatune")
    if task not in EXPORTABLE_TASKS or not isinstance(config, dict):
        raise DeltatuneError(f"{file}: task {task!r} is not one an ONNX export holds ({', '.join(EXPORTABLE_TASKS)}); export the run again")
    return meta


def load_onnx(path: str | Path, device: str | None = None, threads: int | None = None) -> Predictor:
    """A :class:`Predictor` on an ONNX export folder (same predictions as the run's PyTorch model).

    The export's config and tokenizer (image processor / feature extractor for image and audio
    runs, handed to the task as the PyTorch run's is: ``task.set_tokenizer``) are read with
    ``trust_remote_code=False`` (nothing in the folder runs code).

    Args:
        path: the export folder.
        device: ``None`` or ``"cpu"``: onnxruntime on CPU; ``"cuda"``: the CUDA execution
            provider (onnxruntime-gpu).
        threads: intra-op threads of the session (``None``: onnxruntime's default).

    Raises:
        DeltatuneError: not an ONNX export; a damaged ``deltatune_onnx.json``, ``config.json`` or
            ``model.onnx`` (names the file); a device onnxruntime cannot use.
    """
    import onnxruntime as ort

    path = Path(path)
    meta = read_onnx_meta(path)
    providers = _providers(device, ort.get_available_providers())
    cfg = build_config(meta["config"], {"model.trust_remote_code": False, "model.allow_pickle_weights": False})
    if cfg.task != meta["task"]:
        raise DeltatuneError(f"{path / META_FILE}: task {meta['task']!r} differs from its config's {cfg.task!r}; export the run again")
    model_config = load_config(str(path), False)
    task = get_task_class(cfg.task).from_pretrained_config(cfg, model_config)
    tokenizer = load_processor(str(path), task.input_kind, False)
    task.set_tokenizer(tokenizer)
    model = OnnxModel(path / meta.get("model_file", MODEL_FILE), model_config, providers, threads)
    return Predictor(cfg, task, model, tokenizer, "cpu")


# onnxruntime input element types -> numpy
_NUMPY_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
                "tensor(float16)": np.float16, "tensor(double)": np.float64, "tensor(bool)": np.bool_}


def _providers(device: str | None, available: list[str]) -> list[str]:
    """onnxruntime providers for ``device`` (``None``/``"cpu"``, ``"cuda"``/``"cuda:N"``)."""
    if device is None or str(device) == "cpu":
        return ["CPUExecutionProvider"]
    if str(device).startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise DeltatuneError(f"device {device}: this onnxruntime has no CUDA provider (install onnxruntime-gpu); use device cpu")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise DeltatuneError(f"device {device!r} is not supported for ONNX exports; use cpu or cuda")
