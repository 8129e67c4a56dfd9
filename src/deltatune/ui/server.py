"""``deltatune ui``: start the web UI (:mod:`deltatune.ui.app`) with uvicorn, in one process.

The port is bound before the slow imports (FastAPI, the app), as ``deltatune serve`` does, so
that a port in use is reported at once. Importing this module imports neither torch nor
FastAPI; torch is imported only when a tried model is loaded, a form is inspected or the
task of a decoder run is inferred (in worker threads). Training runs in separate processes
(``python -m deltatune train``), which keep running when the UI stops.
"""

from __future__ import annotations

from pathlib import Path

from deltatune.errors import DeltatuneError


def run_ui(host: str, port: int, runs_dir: Path, max_trainings: int = 2) -> int:
    """Serve the UI on ``host:port`` over the runs in ``runs_dir`` until interrupted.

    Args:
        host: address to bind (127.0.0.1: this machine only; the CLI warns about others).
        port: TCP port; 0 picks a free one (printed).
        runs_dir: the runs folder (made when the first run starts).
        max_trainings: how many trainings the UI runs at once (a start beyond is refused, 429).

    Returns:
        The exit status: 0 after Ctrl-C.

    Raises:
        DeltatuneError: the address cannot be bound; ``runs_dir`` is a file.
    """
    from deltatune.serving.server import (  # torch-free: the same binding and message as serve
        bind_port,
        is_loopback,
    )

    runs_dir = Path(runs_dir)
    if runs_dir.exists() and not runs_dir.is_dir():
        raise DeltatuneError(f"--runs-dir {runs_dir} is a file; give a folder (made when the first run starts)")
    sock = bind_port(host, port)
    import uvicorn

    from deltatune.ui.app import create_app

    app = create_app(runs_dir, allowed_hosts=loopback_names(host) if is_loopback(host) else None, max_trainings=max_trainings)
    bound_host, bound_port = sock.getsockname()[:2]
    url = f"http://{bound_host if ':' not in bound_host else f'[{bound_host}]'}:{bound_port}"
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=3)
    print(f"deltatune ui at {url} (runs in {runs_dir.resolve()}; Ctrl-C stops the UI, not the trainings)", flush=True)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def loopback_names(host: str) -> list[str]:
    """The ``Host`` names a UI bound to the loopback address ``host`` answers (without port):
    ``127.0.0.1``, ``localhost``, ``[::1]`` and ``host`` itself (IPv6 in brackets), so that
    a web page whose name resolves to the loopback (DNS rebinding) cannot drive it."""
    own = f"[{host.strip('[]')}]" if ":" in host else host
    return list(dict.fromkeys(["127.0.0.1", "localhost", "[::1]", own.lower()]))
