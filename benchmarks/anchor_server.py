"""The anchor of ``serve_load.py``: a plain ``transformers`` pipeline behind a minimal FastAPI app.

What a user writes from the transformers and FastAPI docs::

    pipe = pipeline("text-classification", model=MODEL_DIR, device=-1)

    @app.post("/v1/predict")
    def predict(body: Body):            # a plain def: FastAPI runs it in its thread pool
        out = pipe(body.inputs)         # one pipeline call per request
        ...

served by uvicorn with one worker (``--mode default --workers 1``: the anchor's defaults).

Tuned variants (the anchor "at its best settings" of the project's benchmark rules):

- ``--workers N``: N uvicorn worker processes (each loads its own pipeline), with
  ``--torch-threads T`` intra-op threads each (``torch.set_num_threads``), e.g. 2 x 1 on a
  2-core machine, so that the processes do not fight for the cores.
- ``--mode lock``: an ``async def`` endpoint that runs the pipeline with
  ``run_in_executor`` under an ``asyncio.Lock``: one forward pass at a time (no thread
  oversubscription between FastAPI's pool threads), the event loop free meanwhile.

Same request body as ``deltatune serve``'s ``/v1/predict`` (``{"inputs": "text" or [texts]}``);
answers ``{"predictions": [{"label", "score"}]}``. ``GET /health`` is 200 once the pipeline is
loaded and names the worker's process id (so a client can see that every worker is up).

Run::

    HF_HUB_OFFLINE=1 python benchmarks/anchor_server.py RUN/model --port 8001 [--workers 2 --torch-threads 1] [--mode lock]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from pydantic import BaseModel

ENV = "DELTATUNE_ANCHOR_"  # settings handed to the worker processes


class Body(BaseModel):
    """The request body: one text or a list of texts."""

    inputs: str | list[str]


def create_app():
    """The FastAPI app (a factory: uvicorn calls it in every worker process).

    Reads ``DELTATUNE_ANCHOR_MODEL`` (model folder), ``..._MODE`` (``default`` | ``lock``) and
    ``..._TORCH_THREADS`` (intra-op threads; empty: torch's default, one per core).
    """
    import torch
    from fastapi import FastAPI
    from transformers import pipeline

    threads = os.environ.get(ENV + "TORCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    mode = os.environ.get(ENV + "MODE", "default")
    pipe = pipeline("text-classification", model=os.environ[ENV + "MODEL"], device=-1)
    app = FastAPI(title="anchor")

    def answer(out) -> dict:
        out = out if isinstance(out, list) else [out]
        return {"predictions": [{"label": o["label"], "score": o["score"]} for o in out]}

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "pid": os.getpid(), "mode": mode, "torch_threads": torch.get_num_threads()}

    if mode == "default":

        @app.post("/v1/predict")
        def predict(body: Body) -> dict:
            return answer(pipe(body.inputs))

    elif mode == "lock":
        lock = asyncio.Lock()

        @app.post("/v1/predict")
        async def predict(body: Body) -> dict:
            async with lock:
                out = await asyncio.get_running_loop().run_in_executor(None, pipe, body.inputs)
            return answer(out)

    else:
        raise SystemExit(f"unknown mode {mode!r}: default or lock")
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a model folder transformers can load (a deltatune run's model/)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    p.add_argument("--torch-threads", type=int, default=None, help="intra-op threads per worker (default: torch's)")
    p.add_argument("--mode", choices=("default", "lock"), default="default")
    args = p.parse_args()
    os.environ[ENV + "MODEL"] = str(Path(args.model).resolve())
    os.environ[ENV + "MODE"] = args.mode
    os.environ[ENV + "TORCH_THREADS"] = "" if args.torch_threads is None else str(args.torch_threads)
    import uvicorn

    uvicorn.run(
        "anchor_server:create_app", factory=True, host=args.host, port=args.port, workers=args.workers,
        log_level="warning", access_log=False, app_dir=str(Path(__file__).resolve().parent),
    )


if __name__ == "__main__":
    sys.exit(main())
