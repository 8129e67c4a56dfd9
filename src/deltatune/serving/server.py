"""``deltatune serve``: the models, the app and uvicorn, in one process.

The server listens at once and loads the models in a background thread: ``GET /health`` says
``loading`` (503) until they are loaded, then ``ok``. When loading fails, the error is printed
as one line and the process exits with status 1.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
from pathlib import Path

from deltatune.errors import DeltatuneError
from deltatune.serving.pool import ModelPool, parse_run_args
from deltatune.serving.settings import ServeSettings


def served_tasks(runs: list[tuple[str, Path]], backend: str) -> list[str]:
    """The task of each run, read from its config (torch-free; before loading).

    Raises:
        DeltatuneError: a folder that is not a run (or, with ``backend="onnx"``, not an ONNX export).
    """
    if backend == "onnx":
        import json

        tasks = []
        for _, folder in runs:
            meta = folder / "deltatune_onnx.json"
            if not meta.is_file():
                raise DeltatuneError(f"{folder} is not an ONNX export (no deltatune_onnx.json); make one: deltatune export RUN --format onnx --out DIR")
            tasks.append(json.loads(meta.read_text())["task"])
        return tasks
    from deltatune.config import build_config
    from deltatune.rundir import RunDir

    out = []
    for _, folder in runs:
        if (folder / "deltatune_onnx.json").is_file():
            raise DeltatuneError(f"{folder} is an ONNX export: serve it with --backend onnx")
        rd = RunDir(folder)
        rd.check_loadable()
        out.append(build_config(rd.config).task)
    return out


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(runs: list[str], settings: ServeSettings) -> int:
    """Serve ``runs`` (``RUN`` or ``NAME=RUN``) until interrupted.

    Returns:
        The exit status: 0 after Ctrl-C, 1 when the models could not be loaded.

    Raises:
        DeltatuneError: bad run arguments, folders that are not runs, or a port in use.
    """
    pairs = parse_run_args(runs)
    tasks = served_tasks(pairs, settings.backend)
    sock = bind_port(settings.host, settings.port)  # before the slow imports: a port in use is reported at once
    import uvicorn

    from deltatune.serving.app import create_app

    pool = ModelPool(pairs, settings)
    host, port = sock.getsockname()[:2]
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    failed: dict[str, str] = {}
    server: uvicorn.Server | None = None

    def load() -> None:
        try:
            pool.load()
        except Exception as e:  # noqa: BLE001 - any failure to load ends the server with one line (never a server stuck "loading")
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            message = first if isinstance(e, (DeltatuneError, OSError)) else f"loading the models failed: {type(e).__name__}: {first}"
            pool.error = failed["error"] = message
            print(f"error: {message}", file=sys.stderr, flush=True)
            if server is not None:
                server.should_exit = True
            return
        names = ", ".join(m.name for m in pool.models())
        routes = ["POST /v1/predict"] + (["/v1/chat/completions"] if any(m.chat for m in pool.models()) else []) + (
            ["/v1/completions"] if any(m.decoder for m in pool.models()) else [])
        print(f"ready: serving {names} at {url} ({', '.join(routes)}; GET /health, /metrics; Ctrl-C stops)", flush=True)

    app = create_app(pool, settings, tasks, on_start=lambda: threading.Thread(target=load, name="deltatune-load", daemon=True).start())
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    print(f"listening at {url}; loading {len(pairs)} model(s)", flush=True)
    server.run(sockets=[sock])
    return 1 if failed else 0


def bind_port(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); port 0 picks a free one.

    Raises:
        DeltatuneError: the address cannot be bound (in use, not this machine's), naming it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise DeltatuneError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port or --host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
