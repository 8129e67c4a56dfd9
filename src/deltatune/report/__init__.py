"""report.html: what happened in a run, from the files in its folder (torch-free; docs/report.md).

- :func:`write_report`: one run folder -> its ``report.html``; a ``deltatune auto`` folder ->
  its ``report.html`` (leaderboard, optimization history, importances, and the best trial);
  several run folders -> a comparison written to ``output`` (required then).
- :func:`deltatune.report.overfitting.diagnose` / ``diagnose_run``: the overfitting verdict
  from metrics.jsonl records.
- :func:`deltatune.report.plots.curves_svg`: the learning curves as an SVG string (the web UI
  draws live runs with it).

Modules: ``reading`` (run folder -> dataclass), ``checked`` (every file's values type-checked:
wrong types left out with a note, lone surrogates replaced), ``overfitting`` (the verdict), ``plots``
(matplotlib -> inline SVG), ``sections`` (the tables' data), ``html`` (jinja2 rendering),
``compare`` and ``auto`` (the comparison and search pages), ``templates/*.html.j2``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from deltatune.errors import DeltatuneError
from deltatune.output_files import check_output, write_atomically
from deltatune.rundir import RunDir, write_failure

__all__ = ["write_report"]

HTML_SUFFIXES = (".html", ".htm")


def _output_for(paths: list[Path], kinds: list[str], output: Path | None, overwrite: bool) -> Path:
    """Where the report goes: a single folder's own ``report.html`` by default; ``output``
    (checked: .html, not a file of a run being read, not inside another run folder, not an
    existing file without ``overwrite``)."""
    default = paths[0] / "report.html" if len(paths) == 1 else None
    if output is None:
        if default is None:
            raise DeltatuneError(
                f"comparing {len(paths)} runs needs --output FILE.html (the comparison is not written inside any of the runs)"
            )
        return default
    out = Path(output)
    if default is not None and out.resolve() == default.resolve():
        return default
    keep = [p for path, kind in zip(paths, kinds) for p in (RunDir(path).own_paths() if kind == "run" else _auto_files(path))]
    checked = check_output(out, overwrite=overwrite, keep=keep, suffixes=HTML_SUFFIXES)
    _refuse_other_runs(out)
    return checked


def _is_run_folder(folder: Path) -> bool:
    """A deltatune run folder: the ``.deltatune-run`` marker, or ``config.yaml`` beside ``model/``,
    ``checkpoints/``, ``metrics.jsonl`` or ``eval.json`` (older runs)."""
    if (folder / ".deltatune-run").is_file():
        return True
    return (folder / "config.yaml").is_file() and any(
        (folder / n).exists() for n in ("model", "checkpoints", "metrics.jsonl", "eval.json"))


def _refuse_other_runs(out: Path) -> None:
    """Refuse an ``--output`` inside a run folder (any folder above it), or inside any ``model/``
    or ``checkpoints/`` folder: those belong to deltatune train, and a report there would be taken
    for the run's own. The one exception, a run's own report.html rewritten by ``deltatune report
    THAT_RUN``, never reaches here (:func:`_output_for` returns it first).

    Raises:
        DeltatuneError: naming the run folder (or model/checkpoints folder) and what to do.
    """
    resolved = out.resolve()
    for folder in resolved.parents:
        if folder.name in ("model", "checkpoints") and _is_run_folder(folder.parent):
            raise DeltatuneError(f"--output {out} is inside {folder}, the {folder.name} folder of a run; "
                                 "give a file outside any run folder")
        if _is_run_folder(folder):
            own = " (its own report.html is rewritten by: deltatune report " + str(folder) + ")" if resolved == folder / "report.html" else ""
            raise DeltatuneError(f"--output {out} is inside the run folder {folder}, which deltatune train writes{own}; "
                                 "give a file outside any run folder")


def _unique(items: list[Path]) -> list[Path]:
    """``items`` without repeats of the same folder (``s1``, ``s1/``, ``./s1`` and a symlink to it are one), first kept."""
    seen: set[Path] = set()
    out = []
    for p in items:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _auto_files(folder: Path) -> list[Path]:
    """The files and folders ``deltatune auto`` writes (see :mod:`deltatune.auto.runner`), which a report never replaces."""
    names = ("report.html", "auto_report.json", "leaderboard.json", "leaderboard.csv", "optuna.db", "trials", "best")
    return [folder / n for n in names]


def _resolve_auto_for_comparison(path: Path) -> Path:
    """A ``deltatune auto`` folder among several paths stands for its best trial.

    Raises:
        DeltatuneError: no trial of the search completed.
    """
    from deltatune.report.reading import read_auto

    best = read_auto(path).best_path
    if best is None:
        raise DeltatuneError(f"{path} is a deltatune auto folder with no completed trial to compare; give run folders")
    return best


def write_report(paths: Sequence[str | Path] | str | Path, output: Path | None = None, *, overwrite: bool = False) -> Path:
    """Write a self-contained HTML report and return its path.

    Args:
        paths: one run folder (-> ``<run>/report.html``, always rewritten), one ``deltatune auto``
            folder (-> ``<auto>/report.html``), or several run folders (compared in one table;
            an auto folder among them stands for its best trial; the same folder given twice,
            however spelled, is one). A run still training (no eval.json yet) gets a report of
            what it logged so far.
        output: the HTML file to write instead (required for several paths).
        overwrite: allow replacing an existing ``output`` (never a file of a run being read).

    Returns:
        The path written.

    Raises:
        DeltatuneError: no path; a path that is not a run or auto folder (named, with what to
            give); several paths without ``output``; ``output`` exists without ``overwrite``,
            is a file of a run being read, lies inside another run folder (or any run's model/
            or checkpoints/), or does not end in .html; a run's file is not JSON or not a JSON
            object (``damaged <file>: ...``; values of the wrong type are left out with a note
            in the report instead); the report cannot be written (full disk, read-only folder).
    """
    from deltatune.report.reading import folder_kind

    items = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not items:
        raise DeltatuneError("no run folder given; give a run folder made by deltatune train (or several to compare them)")
    items = _unique(items)
    kinds = [folder_kind(p) for p in items]  # refuses what is not a run before anything is read
    target = _output_for(items, kinds, output, overwrite)
    html = _render(items, kinds, target)
    try:
        write_atomically(target, lambda f: f.write(html))
    except OSError as e:
        raise write_failure(target, e, "or give another --output") from None
    return target


def _render(items: list[Path], kinds: list[str], target: Path) -> str:
    """The HTML text of the report (see :func:`write_report`)."""
    from deltatune.report.reading import read_auto, read_run

    if len(items) == 1 and kinds[0] == "auto":
        from deltatune.report.auto import render_auto

        return render_auto(read_auto(items[0]))
    if len(items) == 1:
        from deltatune.report.html import render, run_view

        return render("run.html.j2", r=run_view(read_run(items[0])))
    from deltatune.report.compare import render_comparison

    folders = _unique([_resolve_auto_for_comparison(p) if k == "auto" else p for p, k in zip(items, kinds)])
    if len(folders) == 1:  # an auto folder and its own best trial
        from deltatune.report.html import render, run_view

        return render("run.html.j2", r=run_view(read_run(folders[0])))
    return render_comparison([read_run(p) for p in folders], target)
