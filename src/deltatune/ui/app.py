"""The web UI's app (FastAPI): HTML pages, their JSON API and the static files.

Pages (``templates/``, drawn and updated by ``static/ui.js``; nothing is fetched from the
internet):
    ``GET /``: the new-run form; ``GET /runs``: the runs list (compare, delete);
    ``GET /runs/{name}``: one run (live progress and curves, final metrics, try the model);
    ``GET /runs/{name}/report``: its report.html (written when missing);
    ``GET /compare/{file}``: a comparison written by ``POST /api/compare``.

JSON API (every refusal is a 4xx ``{"error": "one line"}``; a fault of the UI itself a 500
with one line):
    ``GET /api/options``: tasks, packaged models, Δθ methods, the runs folder;
    ``POST /api/inspect``: the inferred task/columns and ``deltatune check``'s report of a form;
    ``POST /api/runs``: start a run (201); ``GET /api/runs``: the runs;
    ``GET /api/runs/{name}``: status, progress, metrics records, eval.json, log tail;
    ``POST /api/runs/{name}/stop``: SIGINT (checkpoint, resumable); ``DELETE /api/runs/{name}``;
    ``POST /api/runs/{name}/load``, ``/predict``, ``/chat``: try a finished run;
    ``POST /api/compare``: write a comparison of runs; ``PUT /api/upload/{filename}``: upload a data file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import secrets
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
)
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from deltatune.errors import DeltatuneError
from deltatune.serving.http_errors import ApiError
from deltatune.ui.forms import INFER, RunForm
from deltatune.ui.runs import NAME, Runs, UiError
from deltatune.ui.trying import ModelCache, input_fields, request_input
from deltatune.version import __version__

HERE = Path(__file__).parent
UPLOAD_LIMIT = 2 << 30  # bytes of one uploaded data file
UPLOAD_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet", ".txt", ".conll")


class TryRequest(BaseModel):
    """``POST /api/runs/{name}/predict``: the try form's fields (``{"text": ...}``, ``{"question", "context"}``)."""

    inputs: dict[str, str]


class ChatTurn(BaseModel):
    """One message of the chat box."""

    role: str
    content: str


class ChatRequest(BaseModel):
    """``POST /api/runs/{name}/chat``: the conversation so far (the last message is the user's)."""

    messages: list[ChatTurn] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=1024)


class CompareRequest(BaseModel):
    """``POST /api/compare``: two or more run names."""

    runs: list[str] = Field(min_length=2, max_length=20)


def create_app(runs_dir: Path, device: str | None = None, allowed_hosts: list[str] | None = None) -> FastAPI:
    """The UI over the runs in ``runs_dir``.

    Args:
        runs_dir: the runs folder (listed; new runs go there; made when the first starts).
        device: where tried models run (default: CUDA when available).
        allowed_hosts: the ``Host`` header names answered (others get 400), e.g. ``127.0.0.1``
            and ``localhost`` for a UI on this machine only, so that a web page whose name
            resolves to 127.0.0.1 (DNS rebinding) cannot drive it; ``None``: any.
    """
    runs = Runs(Path(runs_dir))
    models = ModelCache(device)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        models.close()
        runs.stop_watching()

    app = FastAPI(title="deltatune ui", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.runs, app.state.models = runs, models
    if allowed_hosts:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    _add_error_handlers(app)
    _add_pages(app, runs)
    _add_run_routes(app, runs, models)
    _add_try_routes(app, runs, models)
    return app


# ---- pages --------------------------------------------------------------------------------
def _templates():
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True)


def _add_pages(app: FastAPI, runs: Runs) -> None:
    env = _templates()

    def page(template: str, **context: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(template).render(version=__version__, runs_dir=str(runs.root), **context))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def new_run() -> HTMLResponse:
        return page("new.html", options=options(runs))

    @app.get("/runs", response_class=HTMLResponse, include_in_schema=False)
    def runs_page() -> HTMLResponse:
        return page("runs.html")

    @app.get("/runs/{name}", response_class=HTMLResponse, include_in_schema=False)
    def run_page(name: str) -> HTMLResponse:
        runs.folder(name)
        return page("run.html", name=name)

    @app.get("/runs/{name}/report", include_in_schema=False)
    async def report(name: str) -> FileResponse:
        folder = runs.folder(name)
        if runs.is_running(name):
            raise UiError(409, f"run {name!r} is still running; its report is written when it ends")
        target = folder / "report.html"
        if not target.is_file():
            await asyncio.to_thread(_write_report, [folder], None)
        return FileResponse(target, media_type="text/html")

    @app.get("/compare/{file}", include_in_schema=False)
    def compared(file: str) -> FileResponse:
        if not (file.startswith("compare-") and file.endswith(".html") and NAME.fullmatch(file)):
            raise UiError(404, f"no comparison {file!r}")
        path = runs.ui_dir / file
        if not path.is_file():
            raise UiError(404, f"no comparison {file!r}; compare runs on the runs page")
        return FileResponse(path, media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> RedirectResponse:
        return RedirectResponse("/static/favicon.svg")


def _write_report(folders: list[Path], output: Path | None) -> Path:
    """``deltatune.report.write_report`` (torch-free); its refusals as 4xx."""
    from deltatune.report import write_report

    try:
        return write_report(folders, output, overwrite=True)
    except NotImplementedError:
        raise UiError(503, "report.html is not available in this version of deltatune") from None


def options(runs: Runs) -> dict[str, Any]:
    """What the new-run form offers: tasks, packaged models, Δθ methods (with default learning rates)."""
    from deltatune.delta.registry import METHODS
    from deltatune.models.resolve import PACKAGED_MODELS
    from deltatune.tasks.registry import task_names

    return {
        "tasks": [INFER, *task_names()],
        "models": [{"name": n, "description": m.description} for n, m in PACKAGED_MODELS.items()],
        "methods": [{"name": m.name, "description": m.description, "learning_rate": m.learning_rate} for m in METHODS.values()],
        "runs_dir": str(runs.root),
    }


# ---- runs ---------------------------------------------------------------------------------
def _add_run_routes(app: FastAPI, runs: Runs, models: ModelCache) -> None:
    @app.get("/api/options")
    def get_options() -> JSONResponse:
        return json_response(options(runs))

    @app.post("/api/inspect")
    async def inspect(form: RunForm) -> JSONResponse:
        from deltatune.ui.forms import inspect as inspect_form

        name = form.name or "inspect"
        result = await asyncio.to_thread(inspect_form, form, str(runs.root / f".ui/inspect-{secrets.token_hex(4)}-{_safe(name)}"))
        return json_response(result)

    @app.post("/api/runs", status_code=201)
    async def start(form: RunForm) -> JSONResponse:
        from deltatune.ui.forms import prepared_overrides

        name = form.name.strip()
        folder = runs.folder(name, must_exist=False)
        if folder.exists() or folder.is_symlink() or runs.job_path(name).exists():
            raise UiError(409, f"a run named {name!r} already exists in {runs.root}; choose another name")
        overrides, reasons = await asyncio.to_thread(prepared_overrides, form, str(folder))
        runs.start(name, overrides)
        return json_response({"name": name, "url": f"/runs/{name}", "overrides": overrides, "reasons": reasons}, 201)

    @app.get("/api/runs")
    def list_runs() -> JSONResponse:
        return json_response({"runs_dir": str(runs.root), "runs": [runs.summary(n) for n in runs.names()]})

    @app.get("/api/runs/{name}")
    def run_detail(name: str) -> JSONResponse:
        detail = runs.detail(name)
        detail["inputs"] = input_fields(detail["config"])
        return json_response(detail)

    @app.post("/api/runs/{name}/stop")
    def stop(name: str) -> JSONResponse:
        runs.stop(name)
        return json_response({"name": name, "stopping": True})

    @app.delete("/api/runs/{name}")
    def delete(name: str) -> JSONResponse:
        folder = runs.folder(name)
        runs.delete(name)
        models.forget(folder)
        return json_response({"name": name, "deleted": True})

    @app.post("/api/compare")
    async def compare(body: CompareRequest) -> JSONResponse:
        names = list(dict.fromkeys(body.runs))
        if len(names) < 2:
            raise UiError(400, "runs: select at least two different runs to compare")
        folders = [runs.folder(n) for n in names]
        for n, f in zip(names, folders):
            if not (f / "eval.json").is_file() and not (f / "metrics.jsonl").is_file():
                raise UiError(409, f"run {n!r} has no metrics yet; compare runs that have trained")
        file = f"compare-{hashlib.sha256(' '.join(names).encode()).hexdigest()[:12]}.html"
        runs.ui_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(_write_report, folders, runs.ui_dir / file)
        return json_response({"url": f"/compare/{file}", "runs": names})

    @app.put("/api/upload/{filename}")
    async def upload(filename: str, request: Request) -> JSONResponse:
        if not NAME.fullmatch(filename) or not filename.lower().endswith(UPLOAD_SUFFIXES):
            raise UiError(400, f"file name {filename!r}: use letters, digits, '.', '_', '-' and one of {', '.join(UPLOAD_SUFFIXES)}")
        folder = runs.ui_dir / "uploads" / secrets.token_hex(6)
        folder.mkdir(parents=True, exist_ok=True)
        target, size = folder / filename, 0
        with target.open("wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > UPLOAD_LIMIT:
                    f.close()
                    target.unlink()
                    raise UiError(413, f"the file is larger than {UPLOAD_LIMIT >> 30} GiB; give its path instead")
                f.write(chunk)
        return json_response({"path": str(target.resolve()), "bytes": size}, 201)


def _safe(name: str) -> str:
    return name if NAME.fullmatch(name) else "run"


# ---- trying a run -------------------------------------------------------------------------
def _add_try_routes(app: FastAPI, runs: Runs, models: ModelCache) -> None:
    def finished(name: str) -> Path:
        folder = runs.folder(name)
        if not (folder / "model").is_dir() or runs.is_running(name):
            raise UiError(409, f"run {name!r} has no trained model yet; try it once it has finished")
        return folder

    @app.post("/api/runs/{name}/load")
    async def load(name: str) -> JSONResponse:
        return json_response(await models.capabilities(finished(name)))

    @app.post("/api/runs/{name}/predict")
    async def predict(name: str, body: TryRequest) -> JSONResponse:
        folder = finished(name)
        fields = await models.fields(folder)
        predictions = await models.predict(folder, [request_input(fields, body.inputs)])
        return json_response({"name": name, "predictions": predictions})

    @app.post("/api/runs/{name}/chat")
    async def chat(name: str, body: ChatRequest) -> JSONResponse:
        folder = finished(name)
        answer = await models.chat(folder, [m.model_dump() for m in body.messages], body.max_tokens)
        return json_response(answer)


# ---- JSON and errors ----------------------------------------------------------------------
def json_response(payload: Any, status: int = 200) -> Response:
    """``payload`` as JSON; NaN and infinities (JSON has none) as ``null``, numpy numbers as numbers."""
    return Response(json.dumps(_plain(payload), ensure_ascii=False, allow_nan=False, default=_default), status_code=status,
                    media_type="application/json")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _default(value: Any) -> Any:
    """numpy scalars and arrays (predictions) as plain numbers and lists; anything else as text."""
    if isinstance(value, (np.ndarray, np.generic)):
        return _plain(value.tolist())
    return str(value)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    import logging

    log = logging.getLogger("deltatune.ui")

    @app.exception_handler(UiError)
    async def ui_error(_: Request, e: UiError) -> JSONResponse:
        return _error(e.status, e.message)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:  # serving's refusal of a tried input (names the field)
        return _error(e.status, e.message)

    @app.exception_handler(DeltatuneError)
    async def deltatune_error(_: Request, e: DeltatuneError) -> JSONResponse:
        return _error(400, str(e))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        errors = e.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        return _error(422, f"{where}: {first.get('msg', 'invalid')}{more}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return _error(e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return _error(500, f"internal error: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
