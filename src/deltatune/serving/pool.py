"""The models a server holds: one :class:`ServedModel` per run, loaded once at start.

Adapter runs of one base (:func:`deltatune.delta.storage.share_key`) share that base in
memory: the first loads it, the others add their adapters to it
(:func:`deltatune.serving.predictor.load_onto`), and a lock shared by them keeps one adapter
active per forward pass.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from deltatune.errors import DeltatuneError
from deltatune.serving.http_errors import ApiError
from deltatune.serving.settings import ServeSettings

if TYPE_CHECKING:  # torch-free at import: the CLI checks run arguments before torch loads
    from deltatune.serving.predictor import Predictor

# peft's name of the first adapter of a model
FIRST_ADAPTER = "default"


@dataclass
class ServedModel:
    """One served run.

    Attributes:
        name: the id clients send as ``model`` (the run folder's name unless given ``NAME=RUN``).
        run: the run (or ONNX export) folder.
        predictor: the loaded run (:class:`deltatune.serving.predictor.Predictor`).
        backend: ``torch`` or ``onnx``.
        lock: held around every forward pass or generation on this model; one lock per
            model object, so runs sharing a base share it.
        adapter: the peft adapter name of this run on a shared base, or ``None``.
        created: when it was loaded (unix seconds).
    """

    name: str
    run: Path
    predictor: "Predictor"
    backend: str
    lock: threading.Lock
    adapter: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    def activate(self) -> None:
        """Select this run's adapter on a shared base; call with :attr:`lock` held."""
        if self.adapter is not None:
            self.predictor.model.set_adapter(self.adapter)

    @property
    def task_name(self) -> str:
        """The run's task (``text-classification``, ``instruction``, ...)."""
        return self.predictor.config.task

    @property
    def generative(self) -> bool:
        """The run answers by generating text (decoder and encoder-decoder tasks)."""
        from deltatune.tasks import GenerativeTask

        return isinstance(self.predictor.task, GenerativeTask)

    @property
    def decoder(self) -> bool:
        """The model is a decoder (GPT-like), not an encoder-decoder; False for ONNX exports."""
        config = self.predictor.model.config if self.backend == "torch" else None
        return self.generative and config is not None and not config.is_encoder_decoder

    @property
    def chat(self) -> bool:
        """The run takes chat messages (``/v1/chat/completions``)."""
        from deltatune.tasks import GenerativeTask

        task = self.predictor.task
        return isinstance(task, GenerativeTask) and task.chat and self.decoder


def parse_run_args(runs: list[str]) -> list[tuple[str, Path]]:
    """``RUN`` or ``NAME=RUN`` arguments as (model id, folder), torch-free.

    Raises:
        DeltatuneError: no run, a folder that does not exist, an empty name, or two runs with
            the same model id (give one ``NAME=RUN``).
    """
    if not runs:
        raise DeltatuneError("serve needs at least one run folder: deltatune serve runs/my-run")
    out: list[tuple[str, Path]] = []
    for arg in runs:
        name, sep, folder = arg.partition("=")
        path = Path(folder if sep else arg)
        if sep and not name.strip():
            raise DeltatuneError(f"{arg!r}: the model id before '=' is empty; write NAME=RUN")
        if path.is_file():
            raise DeltatuneError(f"{path} is a file; give the run folder (the one deltatune train wrote)")
        if not path.is_dir():
            raise DeltatuneError(f"{path}: no such run folder")
        model_id = name.strip() if sep else path.resolve().name
        if any(model_id == n for n, _ in out):
            raise DeltatuneError(f"two runs are served as model '{model_id}'; name them: deltatune serve a={path} ...")
        out.append((model_id, path))
    return out


def check_memory(folders: list[Path], available: int | None = None) -> None:
    """Refuse to start when the runs' weights clearly do not fit in free memory.

    The estimate is the bytes of the weight files (``*.safetensors``, ``*.bin``, ``*.onnx``) of
    each run's model folder plus, for Δθ runs, their base's, each base counted once.

    Raises:
        DeltatuneError: the estimate exceeds 90% of the available memory (``psutil``), with both
            figures in GiB.
    """
    import psutil

    from deltatune.delta.storage import folder_size, is_delta_folder, read_meta
    from deltatune.models import resolve_model

    def weights(folder: Path) -> int:  # the run's weight files, and an ONNX export's graph
        return folder_size(folder, weights_only=True) + sum(p.stat().st_size for p in folder.rglob("*.onnx"))

    seen: set[str] = set()
    total = 0
    for folder in folders:
        model_dir = folder / "model" if (folder / "model").is_dir() else folder
        total += weights(model_dir)
        if is_delta_folder(model_dir):
            base = read_meta(model_dir)["base"]
            if base["sha256"] not in seen:
                seen.add(base["sha256"])
                try:
                    total += weights(Path(resolve_model(base["name_or_path"])))
                except DeltatuneError:
                    continue  # loading names the missing base
    free = available if available is not None else psutil.virtual_memory().available
    if total > 0.9 * free:
        raise DeltatuneError(
            f"the {len(folders)} run(s) need ~{total / 2**30:.1f} GiB of weights and {free / 2**30:.1f} GiB is free: "
            "serve fewer runs at once (adapter runs of one base share it), or use a machine with more memory"
        )


class ModelPool:
    """The served models by id; loaded by :meth:`load` (the server is ready once it returns).

    Args:
        runs: (model id, folder) pairs (:func:`parse_run_args`).
        settings: backend, device and load permissions.
        loader: ``loader(folder, settings) -> Predictor`` for one run (default: the backend's).
    """

    def __init__(self, runs: list[tuple[str, Path]], settings: ServeSettings, loader: Callable | None = None):
        self.runs, self.settings = runs, settings
        self._models: dict[str, ServedModel] = {}
        self._loader = loader
        self.ready = False
        self.error: str | None = None
        self.threads = 1

    def load(self) -> None:
        """Load every run (adapter runs of one base onto one model); then :attr:`ready` is True.

        Raises:
            DeltatuneError: a run that cannot be loaded (names it); the memory check failing.
        """
        check_memory([p for _, p in self.runs])
        shared: dict[tuple, ServedModel] = {}
        for name, folder in self.runs:
            served = self._load_one(name, folder, shared)
            self._models[name] = served
        import torch

        self.threads = self.settings.intra_op_threads(encoders_only=not any(m.generative for m in self._models.values()))
        torch.set_num_threads(self.threads)  # ONNX sessions were made with it (only encoder tasks export to ONNX)
        self.ready = True

    def workers(self, served: ServedModel) -> int:
        """Threads predicting batches of ``served`` at once: one for generative runs and runs
        sharing a base (one lock), else :meth:`ServeSettings.predict_workers`."""
        if served.generative or served.adapter is not None:
            return 1
        return self.settings.predict_workers(self.threads)

    def _load_one(self, name: str, folder: Path, shared: dict[tuple, ServedModel]) -> ServedModel:
        s = self.settings
        if s.backend == "onnx":
            from deltatune.serving.onnx_backend import load_onnx

            return ServedModel(name, folder, load_onnx(folder, s.device, threads=s.intra_op_threads(encoders_only=True)), "onnx", threading.Lock())
        if self._loader is not None:
            return ServedModel(name, folder, self._loader(folder, s), "torch", threading.Lock())
        from deltatune.delta.storage import is_delta_folder, share_key
        from deltatune.rundir import RunDir
        from deltatune.serving.predictor import load, load_onto

        model_dir = RunDir(folder).model
        key = share_key(model_dir) if is_delta_folder(model_dir) else None
        if key is not None and key in shared:
            first = shared[key]
            if first.adapter is None:
                first.adapter = FIRST_ADAPTER
            predictor = load_onto(folder, first.predictor, name, allow_pickle_weights=s.allow_pickle_weights)
            return ServedModel(name, folder, predictor, "torch", first.lock, adapter=name)
        predictor = load(folder, s.device, trust_remote_code=s.trust_remote_code, allow_pickle_weights=s.allow_pickle_weights)
        served = ServedModel(name, folder, predictor, "torch", threading.Lock())
        if key is not None:
            shared[key] = served
        return served

    def models(self) -> list[ServedModel]:
        """Every served model, in the order given."""
        return list(self._models.values())

    def get(self, name: str | None) -> ServedModel:
        """The model a request names; ``None`` (no ``model`` field) is the only model when one is served.

        Raises:
            ApiError: 503 while loading; 404 for an unknown id (``param="model"``); 400 when
                several models are served and the request names none.
        """
        if not self.ready:
            raise ApiError(503, "the server is still loading its models; retry when GET /health says ready", code="loading")
        if name is None:
            if len(self._models) == 1:
                return next(iter(self._models.values()))
            raise ApiError(400, f"several models are served; name one in 'model': {', '.join(self._models)}", param="model")
        served = self._models.get(name)
        if served is None:
            raise ApiError(404, f"model {name!r} is not served here; GET /v1/models lists: {', '.join(self._models)}", param="model", code="model_not_found")
        return served
