"""The HTTP app of ``deltatune serve`` (FastAPI): routes, auth, limits, errors, metrics.

Routes:
    ``GET /health``: 200 ``{"status": "ok"}`` once every model is loaded, 503 before (or when
    loading failed); never needs the API key.
    ``GET /metrics``: Prometheus text format (:mod:`deltatune.serving.metrics`).
    ``POST /v1/predict``: every task's predictions (:mod:`deltatune.serving.schemas`), through
    the same :class:`~deltatune.serving.predictor.Predictor` path as ``deltatune predict``,
    with concurrent requests batched (:class:`~deltatune.serving.batcher.DynamicBatcher`).
    ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``: OpenAI-compatible
    (:mod:`deltatune.serving.openai_api`).

Every refusal is a 4xx JSON body ``{"error": {"message", "type", "param", "code"}}``
(:class:`~deltatune.serving.http_errors.ApiError`); an unexpected fault is a 500 with a
one-line message and no traceback.
"""


import asyncio
import contextlib
import hmac
import threading
import json
import math
import logging
import time
from contextlib import asynccontextmanager
from typing import Any, Callable

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from deltatune.errors import DeltatuneError
from deltatune.serving.batcher import DynamicBatcher
from deltatune.serving.http_errors import ApiError, check_unicode, field_path
from deltatune.serving.inputs import predict_located, request_rows
from deltatune.serving.media_inputs import request_uploads
from deltatune.serving.metrics import ServerMetrics
from deltatune.serving.pool import ModelPool, ServedModel
from deltatune.serving.predictor import Predictor
from deltatune.serving.schemas import predict_models
from deltatune.serving.settings import ServeSettings
from deltatune.version import __version__

log = logging.getLogger("deltatune.serve")
OPEN_PATHS = ("/health",)  # answered without the API key


def create_app(pool: ModelPool, settings: ServeSettings, tasks: list[str], on_start: Callable[[], None] | None = None) -> FastAPI:
    """The app serving ``pool``.

    Args:
        pool: the models (routes answer 503 until ``pool.ready``).
        settings: limits, batching, API key, CORS.
        tasks: the served runs' task names, read from their configs before loading (they type
            ``/v1/predict``'s OpenAPI schema).
        on_start: called once the server listens (:func:`deltatune.serving.server.serve` starts
            loading the models there, so that ``/health`` answers "loading" meanwhile).
    """
    batchers: dict[str, DynamicBatcher] = {}
    closers: list[Callable[[], None]] = []

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        if on_start is not None:
            on_start()
        yield
        for b in batchers.values():
            b.close()
        for close in closers:
            close()

    app = FastAPI(title="deltatune", version=__version__, description="Predictions of fine-tuned deltatune runs.", lifespan=lifespan)
    metrics = ServerMetrics()
    app.state.pool, app.state.settings, app.state.metrics = pool, settings, metrics

    def batcher(served: ServedModel) -> DynamicBatcher:
        if served.name not in batchers:
            workers = pool.workers(served)
            spares = [served.predictor] + [served.predictor.worker_copy() for _ in range(workers - 1)]
            mine: dict[int, Predictor] = {}
            taking = threading.Lock()

            def run(items):  # each worker thread takes a predictor of its own on first use
                with taking:
                    predictor = mine.setdefault(threading.get_ident(), spares[len(mine)] if len(mine) < len(spares) else spares[0])
                return predict_batch(served, predictor, items, settings.rows_per_forward(served.predictor.device.type))

            observe = metrics.batch_size.labels(served.name).observe
            batchers[served.name] = DynamicBatcher(run, settings.max_batch_size, settings.max_wait_ms, served.name, observe, workers)
        return batchers[served.name]

    _add_error_handlers(app, metrics)
    _add_guards(app, settings, metrics)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"]
        )

    @app.api_route("/health", methods=["GET", "HEAD"], tags=["server"])
    def health() -> JSONResponse:
        """Readiness: 200 once the models are loaded, 503 while loading or when loading failed."""
        if pool.ready:
            return JSONResponse({"status": "ok", "models": [m.name for m in pool.models()]})
        if pool.error:
            return JSONResponse({"status": "error", "error": pool.error}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503)

    @app.get("/metrics", tags=["server"])
    def prometheus() -> Response:
        """Requests, errors, latency and batch sizes in Prometheus text format."""
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    request_model, response_model = predict_models(tasks, [name for name, _ in pool.runs])

    @app.post("/v1/predict", response_model=response_model, tags=["predict"])
    async def predict(body: request_model) -> JSONResponse:  # type: ignore[valid-type]
        """Predictions for ``inputs`` (one input or a list), one per input, in order."""
        check_unicode(body.model_dump())
        served = pool.get(body.model)
        params = body.parameters.model_dump(exclude_none=True) if body.parameters is not None else {}
        if params.get("max_new_tokens", 0) > settings.max_new_tokens_limit:
            raise ApiError(400, f"parameters.max_new_tokens is {params['max_new_tokens']}; this server generates at most "
                           f"{settings.max_new_tokens_limit} tokens (serve --max-new-tokens-limit)", param="parameters.max_new_tokens")
        if params and not served.generative:
            raise ApiError(400, f"parameters: {served.task_name} runs take no parameters ({', '.join(params)})", param="parameters")
        if params:
            try:
                served.predictor.with_generation(**params)
            except DeltatuneError as e:
                raise ApiError(400, f"parameters: {e}", param="parameters") from None
        # image/audio runs: the uploads are request-scoped temporary files, decoded and checked off the event loop
        with request_uploads(served.predictor.task, settings.max_upload_bytes, settings.max_upload_pixels) as uploads:
            args = (body.inputs, served.predictor.task, settings.max_inputs, settings.max_input_chars, uploads)
            rows = request_rows(*args) if uploads is None else await asyncio.to_thread(request_rows, *args)
            key = json.dumps(params, sort_keys=True)
            predictions = await batcher(served).submit([(key, where, row) for where, row in rows])
        metrics.inputs.labels(served.name).inc(len(rows))
        # already typed by the task (the schema documents it): answered without re-validation
        return json_response({"model": served.name, "task": served.task_name, "predictions": predictions})

    from deltatune.serving.openai_api import openai_router

    openai = openai_router(pool, settings, on_batch=lambda name, rows: metrics.batch_size.labels(name).observe(rows))
    closers.append(openai.close)
    app.include_router(openai)

    return app


def predict_batch(
    served: ServedModel, predictor: Predictor, items: list[tuple[str, str, dict[str, Any]]], forward_batch_size: int
) -> list[dict[str, Any]]:
    """Predictions for (generation parameters as JSON, field, row) items gathered from several requests.

    Rows with the same parameters and columns are predicted in one
    :meth:`~deltatune.serving.predictor.Predictor.predict_rows` call of ``predictor`` (this
    worker's copy of the served one; length-sorted forward passes of ``forward_batch_size``
    rows). Generative runs and runs sharing a base hold the model's lock (one worker).

    Raises:
        ApiError: 400 naming the input the task refuses (:func:`deltatune.serving.inputs.predict_located`).
    """
    groups: dict[tuple, list[int]] = {}
    for i, (key, _, row) in enumerate(items):
        groups.setdefault((key, tuple(row)), []).append(i)
    out: list[Any] = [None] * len(items)
    with served.lock if served.generative or served.adapter is not None else contextlib.nullcontext():
        served.activate()
        for (key, _), idx in groups.items():
            variant = predictor.with_generation(**json.loads(key))
            records = predict_located(
                lambda ds: variant.predict_rows(ds, "inputs", batch_size=forward_batch_size), [items[i][1:] for i in idx]
            )
            for i, rec in zip(idx, records):
                out[i] = rec
    return out


def json_response(payload: Any, status: int = 200) -> Response:
    """``payload`` as a JSON response: numpy numbers as numbers, NaN and infinities as ``null``
    (JSON has no such values)."""
    return Response(json.dumps(_plain(payload), ensure_ascii=False, allow_nan=False), status_code=status, media_type="application/json")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _error(status: int, message: str, param: str | None = None, type: str = "invalid_request_error", code: str | None = None) -> JSONResponse:
    return JSONResponse(ApiError(status, message, param, type, code).body(), status_code=status)


def _add_error_handlers(app: FastAPI, metrics: ServerMetrics) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        errors = e.errors()
        # with unions pydantic reports every member tried: the deepest location names the element
        first = max(errors, key=lambda x: sum(isinstance(p, int) for p in x.get("loc", ())), default=None) or {
            "loc": ("body",), "msg": "invalid request", "type": "invalid"}
        if first.get("type") == "json_invalid":
            return _error(400, f"the body is not valid JSON: {first.get('msg', '')}", "body", code="json_invalid")
        path, kind = field_path(first.get("loc", ())), str(first.get("type", "invalid"))
        if path == "body" and kind in ("model_attributes_type", "dict_type", "missing"):
            return _error(422, "the body must be a JSON object sent with Content-Type: application/json, e.g. {\"inputs\": \"text\"}", "body",
                          code="body_not_object")
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        # a value out of range is 400 as OpenAI answers it; a wrong type or a missing or unknown field 422
        status = 422 if kind.endswith(("_type", "_parsing")) or kind in ("missing", "extra_forbidden", "model_type") else 400
        return _error(status, f"{path}: {first.get('msg', 'invalid')}{more}", path, code=kind)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        if isinstance(e, BodyTooLarge):
            return _error(413, str(e.detail), "body", code="body_too_large")
        if e.status_code == 400 and "parsing the body" in str(e.detail):  # FastAPI could not decode it
            return _error(400, "the body cannot be read as JSON (invalid UTF-8, nesting too deep or a compressed body): "
                          "send plain UTF-8 JSON", "body", code="body_invalid")
        return _error(e.status_code, str(e.detail), code="not_found" if e.status_code == 404 else None)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error")
        metrics.observe(_route(request.url.path), 500, 0.0)  # answered outside the Guard middleware
        return _error(500, f"internal error: {type(e).__name__}; the server log has the details", type="server_error")


def _add_guards(app: FastAPI, settings: ServeSettings, metrics: ServerMetrics) -> None:
    """Body size limit, API key and request metrics (:class:`Guard`)."""
    app.add_middleware(Guard, settings=settings, metrics=metrics)


class BodyTooLarge(StarletteHTTPException):
    """A body over ``max_body_bytes``, found while it streams in (no Content-Length given)."""

    def __init__(self, limit: int):
        super().__init__(413, f"the body is larger than the server's limit of {limit} bytes (serve --max-body-bytes); send less per request")


class Guard:
    """Pure ASGI middleware: the API key (constant-time compare), the body size limit and the
    request metrics; streaming-safe (it never buffers a response).

    Args:
        app: the inner ASGI app.
        settings: ``api_key`` (``None``: open) and ``max_body_bytes``.
        metrics: where each answered request is counted.
    """

    def __init__(self, app, settings: ServeSettings, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics
        self.key = settings.api_key.encode() if settings.api_key else None
        self.limit = settings.max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, path, status = time.perf_counter(), scope["path"], {"code": 500}

        async def send_counted(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.metrics.observe(_route(path), status["code"], time.perf_counter() - start)

        headers = dict(scope.get("headers") or [])
        if self.key is not None and path not in OPEN_PATHS and scope.get("method") != "OPTIONS":
            scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                refusal = _error(
                    401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                    type="authentication_error", code="invalid_api_key",
                )
                return await refusal(scope, receive, send_counted)
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            refusal = _error(413, f"the body is larger than the server's limit of {self.limit} bytes (serve --max-body-bytes); send less per request", "body", code="body_too_large")
            return await refusal(scope, receive, send_counted)
        received = {"n": 0}

        async def receive_limited():
            message = await receive()
            if message["type"] == "http.request":
                received["n"] += len(message.get("body", b""))
                if received["n"] > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, receive_limited, send_counted)


def _route(path: str) -> str:
    """A bounded label for metrics: known routes as they are, anything else ``other``."""
    known = ("/health", "/metrics", "/v1/predict", "/v1/chat/completions", "/v1/completions", "/v1/models")
    return path if path in known else ("/v1/models/{id}" if path.startswith("/v1/models/") else "other")
