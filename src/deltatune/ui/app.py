"""The web UI's app (FastAPI): HTML pages, their JSON API and the static files.

Pages (``templates/``, drawn and updated by ``static/ui.js``; nothing is fetched from the
internet):
    ``GET /``: the new-run form; ``GET /runs``: the runs list (compare, delete);
    ``GET /runs/{name}``: one run (live progress and curves, final metrics, try the model);
    ``GET /runs/{name}/report`` (and ``/runs/{name}/report.html``): its report.html (written when missing);
    ``GET /runs/compare/{file}``: a comparison written by ``POST /api/compare`` (its links to
    ``../NAME/report.html`` are the runs' report routes).

Every state-changing request (POST, PUT, DELETE) is refused (403) when its ``Origin`` is not
the UI's own or its ``Sec-Fetch-Site`` is ``cross-site`` (another web site's page), and the JSON
routes take only ``Content-Type: application/json`` (415), so that no other page can drive the
UI from the user's browser (CSRF); with ``allowed_hosts`` the ``Host`` header is checked too.

JSON API (every refusal is a 4xx ``{"error": "one line"}``; a fault of the UI itself a 500
with one line; the page routes answer the same refusals as an HTML page with the line and a
link back):
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
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
)
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from deltatune.errors import DeltatuneError
from deltatune.serving.http_errors import ApiError, check_unicode
from deltatune.ui.forms import INFER, RunForm
from deltatune.ui.runs import NAME, Runs, UiError
from deltatune.ui.trying import ModelCache, input_fields, request_input
from deltatune.version import __version__

HERE = Path(__file__).parent
UPLOAD_LIMIT = 2 << 30  # bytes of one uploaded data file
JSON_LIMIT = 1 << 20  # bytes of a JSON request body
MAX_TRAININGS = 2  # trainings the UI runs at once (create_app's max_trainings)
UPLOAD_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet", ".txt", ".conll")


class TryRequest(BaseModel):
    """``POST /api/runs/{name}/predict``: the try form's fields (``{"text": ...}``, ``{"question", "context"}``)."""

    inputs: dict[str, str]


class ChatTurn(BaseModel):
    """One message of the chat box."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    """``POST /api/runs/{name}/chat``: the conversation so far (the last message is the user's)."""

    messages: list[ChatTurn] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=1024)


class CompareRequest(BaseModel):
    """``POST /api/compare``: two or more run names."""

    runs: list[str] = Field(min_length=2, max_length=20)


def create_app(runs_dir: Path, device: str | None = None, allowed_hosts: list[str] | None = None,
               max_trainings: int = MAX_TRAININGS) -> FastAPI:
    """The UI over the runs in ``runs_dir``.

    Args:
        runs_dir: the runs folder (listed; new runs go there; made when the first starts).
        device: where tried models run (default: CUDA when available).
        allowed_hosts: the ``Host`` header names answered (others get 400), e.g. ``127.0.0.1``,
            ``localhost`` and ``[::1]`` for a UI on this machine only, so that a web page whose
            name resolves to 127.0.0.1 (DNS rebinding) cannot drive it; ``None``: any.
        max_trainings: how many trainings the UI runs at once (a start beyond: 429).
    """
    if max_trainings < 1:
        raise DeltatuneError(f"max_trainings is {max_trainings}; give at least 1")
    runs = Runs(Path(runs_dir), max_trainings=max_trainings)
    models = ModelCache(device)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        models.close()
        runs.stop_watching()

    app = FastAPI(title="deltatune ui", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.runs, app.state.models = runs, models
    _add_guard(app, allowed_hosts)
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
    @app.get("/runs/{name}/report.html", include_in_schema=False)
    async def report(name: str) -> HTMLResponse:
        target = await ensure_report(runs, name)
        return HTMLResponse(_with_back_link(target.read_text(encoding="utf-8", errors="replace"), f"/runs/{name}", f"back to run {name}"))

    @app.get("/runs/compare/{file}", include_in_schema=False)
    def compared(file: str) -> HTMLResponse:
        if not (file.startswith("compare-") and file.endswith(".html") and NAME.fullmatch(file)):
            raise UiError(404, f"no comparison {file!r}")
        path = runs.ui_dir / file
        if not path.is_file():
            raise UiError(404, f"no comparison {file!r}; compare runs on the runs page")
        return HTMLResponse(_with_back_link(path.read_text(encoding="utf-8", errors="replace"), "/runs", "back to the runs"))

    @app.get("/compare/{file}", include_in_schema=False)
    def compared_old(file: str) -> RedirectResponse:  # the address of earlier versions
        return RedirectResponse(f"/runs/compare/{file}")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> RedirectResponse:
        return RedirectResponse("/static/favicon.svg")


def _write_report(folders: list[Path], output: Path | None) -> Path:
    """``deltatune.report.write_report`` (torch-free); its refusals as 4xx (a run's files it
    cannot read: 409 with one line, never a 500)."""
    from deltatune.report import write_report

    try:
        return write_report(folders, output, overwrite=True)
    except NotImplementedError:
        raise UiError(503, "report.html is not available in this version of deltatune") from None
    except DeltatuneError:
        raise
    except Exception as e:  # noqa: BLE001 - wrongly shaped files the report code does not check
        names = ", ".join(f.name for f in folders)
        raise UiError(409, f"cannot write the report of {names}: {type(e).__name__}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def usable(runs: Runs, name: str, what: str) -> Path:
    """The folder of run ``name`` when it is neither training nor damaged.

    Raises:
        UiError: 404 unknown; 409 training or damaged (with the reason).
    """
    folder = runs.folder(name)
    status, reason = runs.status(name)
    if status == "running":
        raise UiError(409, f"run {name!r} is still training; {what} once it has ended")
    if status == "damaged":
        raise UiError(409, f"run {name!r} is damaged: {reason}")
    return folder


async def ensure_report(runs: Runs, name: str) -> Path:
    """The run's report.html, written into its folder when missing (an interrupted or failed
    run's report shows what it logged).

    Raises:
        UiError: as :func:`usable`; the report cannot be written.
    """
    folder = usable(runs, name, "open its report")
    target = folder / "report.html"
    if not target.is_file():
        await asyncio.to_thread(_write_report, [folder], None)
    return target


def _with_back_link(html: str, href: str, text: str) -> str:
    """``html`` with a small link back into the UI at the top of its body."""
    import html as html_lib
    import re

    bar = (f'<p style="margin:0;padding:.4rem 1rem;background:#1d2330;font:14px system-ui,sans-serif">'
           f'<a style="color:#fff" href="{html_lib.escape(href)}">&larr; {html_lib.escape(text)}</a></p>')
    m = re.search(r"<body[^>]*>", html, flags=re.IGNORECASE)
    return html[: m.end()] + bar + html[m.end():] if m else bar + html


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

        check_unicode(form.model_dump())
        name = form.name or "inspect"
        result = await asyncio.to_thread(inspect_form, form, str(runs.root / f".ui/inspect-{secrets.token_hex(4)}-{_safe(name)}"))
        return json_response(result)

    @app.post("/api/runs", status_code=201)
    async def start(form: RunForm) -> JSONResponse:
        from deltatune.ui.forms import prepared_overrides

        check_unicode(form.model_dump())
        name = form.name.strip()
        folder = runs.folder(name, must_exist=False)
        if folder.exists() or folder.is_symlink() or runs.job_path(name).exists():
            raise UiError(409, f"a run named {name!r} already exists in {runs.root}; choose another name")
        runs.check_capacity()  # before the slow checks
        overrides, reasons = await asyncio.to_thread(prepared_overrides, form, str(folder))
        runs.start(name, overrides)
        return json_response({"name": name, "url": f"/runs/{name}", "overrides": overrides, "reasons": reasons}, 201)

    @app.get("/api/runs")
    def list_runs() -> JSONResponse:
        return json_response({"runs_dir": str(runs.root), "runs": [runs.summary(n) for n in runs.names()]})

    @app.get("/api/runs/{name}")
    def run_detail(name: str) -> JSONResponse:
        detail = runs.detail(name)
        detail["inputs"] = input_fields(detail["config"]) if detail["status"] != "damaged" else None
        return json_response(detail)

    @app.post("/api/runs/{name}/stop")
    def stop(name: str) -> JSONResponse:
        runs.stop(name)
        return json_response({"name": name, "stopping": True})

    @app.delete("/api/runs/{name}")
    def delete(name: str) -> JSONResponse:
        runs.delete(name)
        models.forget(runs.root / name)
        return json_response({"name": name, "deleted": True})

    @app.post("/api/compare")
    async def compare(body: CompareRequest) -> JSONResponse:
        check_unicode(body.model_dump())
        names = list(dict.fromkeys(body.runs))
        if len(names) < 2:
            raise UiError(400, "runs: select at least two different runs to compare")
        folders = [usable(runs, n, "compare it") for n in names]
        for n, f in zip(names, folders):
            if not (f / "eval.json").is_file() and not (f / "metrics.jsonl").is_file():
                raise UiError(409, f"run {n!r} has no metrics yet; compare runs that have trained")
        for n in names:  # the comparison links to each run's report.html: write the missing ones
            await ensure_report(runs, n)
        # one file per set of runs, whatever their order (the latest order is the one shown)
        file = f"compare-{hashlib.sha256(' '.join(sorted(names)).encode()).hexdigest()[:12]}.html"
        runs.ui_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(_write_report, folders, runs.ui_dir / file)
        return json_response({"url": f"/runs/compare/{file}", "runs": names})

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
        if size == 0:
            target.unlink()
            folder.rmdir()
            raise UiError(400, f"{filename} is empty; upload a file with data")
        return json_response({"path": str(target.resolve()), "bytes": size}, 201)


def _safe(name: str) -> str:
    return name if NAME.fullmatch(name) else "run"


# ---- trying a run -------------------------------------------------------------------------
def _add_try_routes(app: FastAPI, runs: Runs, models: ModelCache) -> None:
    def finished(name: str) -> Path:
        folder = usable(runs, name, "try it")
        if not (folder / "model").is_dir():
            raise UiError(409, f"run {name!r} has no trained model yet; try it once it has finished")
        return folder

    @app.post("/api/runs/{name}/load")
    async def load(name: str) -> JSONResponse:
        return json_response(await models.capabilities(finished(name)))

    @app.post("/api/runs/{name}/predict")
    async def predict(name: str, body: TryRequest) -> JSONResponse:
        check_unicode(body.model_dump())
        folder = finished(name)
        fields = await models.fields(folder)
        predictions = await models.predict(folder, [request_input(fields, body.inputs)])
        return json_response({"name": name, "predictions": predictions})

    @app.post("/api/runs/{name}/chat")
    async def chat(name: str, body: ChatRequest) -> JSONResponse:
        check_unicode(body.model_dump())
        folder = finished(name)
        answer = await models.chat(folder, [m.model_dump() for m in body.messages], body.max_tokens)
        return json_response(answer)


# ---- JSON and errors ----------------------------------------------------------------------
def json_response(payload: Any, status: int = 200) -> Response:
    """``payload`` as JSON; NaN and infinities (JSON has none) as ``null``, numpy numbers as numbers."""
    text = json.dumps(_plain(payload), ensure_ascii=False, allow_nan=False, default=_default)
    # a lone surrogate (from a file name, say) as its \uXXXX escape: never an encoding error
    return Response(text.encode("utf-8", errors="backslashreplace"), status_code=status, media_type="application/json")


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


def one_line(message: Any) -> str:
    """``message`` on one line, lone surrogates escaped (``\\ud800``), so that it can always be sent."""
    text = " ".join(str(message).split())
    return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


def _error(status: int, message: str, request: Request | None = None) -> Response:
    """The refusal: ``{"error": "one line"}``; for a page route (not ``/api/``, not ``/static/``)
    an HTML page with the line and a link back to the UI."""
    line = one_line(message)
    if request is None or request.url.path.startswith(("/api/", "/static/")):
        return JSONResponse({"error": line}, status_code=status)
    return HTMLResponse(_error_page(status, line), status_code=status)


def _error_page(status: int, line: str) -> str:
    import html

    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" "
        "content=\"width=device-width, initial-scale=1\"><title>" + str(status) + " · deltatune ui</title>"
        "<link rel=\"stylesheet\" href=\"/static/ui.css\"></head><body data-page=\"error\">"
        "<header class=\"top\"><a class=\"brand\" href=\"/\">Δ deltatune</a><nav><a href=\"/\">New run</a>"
        "<a href=\"/runs\">Runs</a></nav></header><main><h1>Not available</h1>"
        f"<p id=\"message\" class=\"error\" role=\"alert\">{html.escape(line)}</p>"
        "<p><a class=\"button secondary\" href=\"/runs\">Back to the runs</a></p></main></body></html>"
    )


def _add_guard(app: FastAPI, allowed_hosts: list[str] | None) -> None:
    """Host check (DNS rebinding), cross-site refusal (CSRF), JSON content type and size."""
    allowed = {h.lower() for h in allowed_hosts or ()}
    json_routes = ("/api/",)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        host = request.headers.get("host", "")
        if allowed and host_name(host) not in allowed:
            return _error(400, f"invalid host header {host!r}: this UI answers only {', '.join(sorted(allowed))}", request)
        if request.method in ("POST", "PUT", "DELETE", "PATCH"):
            origin = request.headers.get("origin")
            if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
                return _error(403, f"refused a request from another site ({origin!r}); use the UI's own pages", request)
            if request.headers.get("sec-fetch-site", "").lower() == "cross-site":
                return _error(403, "refused a request from another site; use the UI's own pages", request)
            path = request.url.path
            if request.method == "POST" and path.startswith(json_routes):
                kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
                if kind != "application/json":
                    return _error(415, f"send JSON (Content-Type: application/json), not {kind or 'no content type'!r}", request)
                size = request.headers.get("content-length")
                if size is not None and size.isdigit() and int(size) > JSON_LIMIT:
                    return _error(413, f"the request body is larger than {JSON_LIMIT >> 20} MiB", request)
        return await call_next(request)


def host_name(host: str) -> str:
    """The name of a ``Host`` header without its port: ``127.0.0.1:7860`` -> ``127.0.0.1``,
    ``[::1]:7860`` -> ``[::1]``; lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _add_error_handlers(app: FastAPI) -> None:
    import logging

    log = logging.getLogger("deltatune.ui")

    @app.exception_handler(UiError)
    async def ui_error(request: Request, e: UiError) -> Response:
        return _error(e.status, e.message, request)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> Response:  # serving's refusal of a tried input (names the field)
        return _error(e.status, _for_the_ui(e.message), request)

    @app.exception_handler(DeltatuneError)
    async def deltatune_error(request: Request, e: DeltatuneError) -> Response:
        return _error(400, str(e), request)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> Response:
        errors = e.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            return _error(422, "body: not valid JSON", request)
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        return _error(400, f"{where}: {first.get('msg', 'invalid')}{more}", request)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> Response:
        return _error(e.status_code, str(e.detail), request)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> Response:
        log.exception("unexpected error")
        return _error(500, f"internal error: {type(e).__name__}: {_first_line(e)}", request)


# serving's messages name its flags and routes; in the UI they read as what to do here
_UI_WORDING = (
    (" (serve --max-input-tokens)", ""),
    ("this server takes", "the UI takes"),
    ("send its inputs to POST /v1/predict", "use the Try the model box instead"),
    ("completions need a decoder run", "chat needs a decoder run"),
    ("POST /v1/predict", "the Try the model box"),
    ("/v1/chat/completions", "the chat box"),
)


def _for_the_ui(message: str) -> str:
    for old, new in _UI_WORDING:
        message = message.replace(old, new)
    return message
