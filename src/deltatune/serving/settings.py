"""The settings of ``deltatune serve`` (one object: the CLI fills it, the app reads it)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

API_KEY_ENV = "DELTATUNE_API_KEY"


@dataclass
class ServeSettings:
    """What the server allows and how it batches.

    Attributes:
        host: interface to bind; 127.0.0.1 (this machine only) unless the user opens it.
        port: TCP port (0: a free one, printed at start).
        api_key: when set, every route but ``/health`` needs ``Authorization: Bearer <key>``
            (compared in constant time); default from ``$DELTATUNE_API_KEY``.
        cors_origins: origins allowed by CORS; empty: no CORS headers (browsers on other
            origins cannot call the API).
        max_batch_size: most inputs gathered into one forward pass (dynamic batching).
        max_wait_ms: longest time a request waits for others to join its batch (ms).
        forward_batch_size: rows per forward pass within a gathered batch, length-sorted so
            that little is padding (``None``: 8 on a CPU, where larger batches of mixed lengths
            were slower per row on MiniLM, and ``max_batch_size`` on a GPU).
        threads: PyTorch / ONNX Runtime intra-op threads per forward pass (``None``: 1 when
            every served run is an encoder run, which then predicts in :attr:`workers` threads
            at once; else the CPU count minus one, at least 1, so that the HTTP event loop
            keeps a core). All cores for one forward pass was 3x slower on 2 cores than one
            thread, the spinning threads starving the event loop (``benchmarks/serve_load.py``).
        workers: threads predicting batches of one encoder run at once, each with its own
            tokenizer (``None``: the CPU count divided by :attr:`threads`). Generative runs and
            adapter runs sharing a base predict one batch at a time.
        max_body_bytes: largest request body accepted (bytes); larger is 413.
        max_inputs: most inputs in one ``/v1/predict`` request.
        max_input_chars: longest text in an input (characters); longer is 400.
        max_upload_bytes: largest uploaded file of an image or audio run's input (bytes, decoded;
            larger is 400); the base64 text is 4/3 of it and must also fit ``max_body_bytes``.
        max_upload_pixels: most pixels (width x height) of an uploaded image, read from its header
            before it is decoded (more is 400): a small compressed file can decode to gigabytes.
        max_input_tokens: longest prompt of a completion (tokens).
        max_new_tokens_limit: the largest ``max_tokens`` a completion may ask for.
        max_n: the largest ``n`` (choices per completion request).
        backend: ``torch`` (a run folder) or ``onnx`` (an ONNX export folder).
        device: ``cpu``, ``cuda``, ... (default: CUDA when available).
        trust_remote_code, allow_pickle_weights: load permissions (never from the run folder).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = field(default_factory=lambda: os.environ.get(API_KEY_ENV) or None)
    cors_origins: list[str] = field(default_factory=list)
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    forward_batch_size: int | None = None
    threads: int | None = None
    workers: int | None = None
    max_body_bytes: int = 1 << 20
    max_inputs: int = 256
    max_input_chars: int = 20_000
    max_upload_bytes: int = 10 << 20
    max_upload_pixels: int = 50_000_000  # a 48-megapixel phone photo fits
    max_input_tokens: int = 4096
    max_new_tokens_limit: int = 1024
    max_n: int = 8
    backend: str = "torch"
    device: str | None = None
    trust_remote_code: bool = False
    allow_pickle_weights: bool = False

    def intra_op_threads(self, encoders_only: bool) -> int:
        """:attr:`threads`, or its default (see there) for the served runs."""
        if self.threads:
            return self.threads
        return 1 if encoders_only else max(1, (os.cpu_count() or 2) - 1)

    def predict_workers(self, threads: int) -> int:
        """:attr:`workers`, or the CPU count divided by ``threads`` (at least 1)."""
        return self.workers or max(1, (os.cpu_count() or 1) // threads)

    def rows_per_forward(self, device_type: str) -> int:
        """:attr:`forward_batch_size`, or its default for a device type (``cpu``, ``cuda``, ...)."""
        return self.forward_batch_size or (8 if device_type == "cpu" else self.max_batch_size)
