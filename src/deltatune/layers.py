"""The import layers of deltatune, bottom first: a module may import from its own layer or below.

``tests/test_layering.py`` walks ``src/deltatune`` with ``ast`` and fails on any import of a
deltatune module from a higher layer, lazy imports inside functions included. The table:

0. foundation, torch-free: ``errors``, ``config``, ``version``, ``layers``, ``files`` (atomic
   writes of files and folders), ``output_files`` (where a result file may be written: needed by
   the API, serving and the CLI's checks before torch), the per-task ``data.*`` option models
   ``tasks.options`` (pydantic only; ``config`` inherits them), and the two registries ``tasks.registry``
   and ``delta.registry``: declarations (names, options, implementations as dotted paths
   imported on use) that ``config`` validates against, kept in their packages next to the
   implementations but importing nothing above this layer;
1. ``models``, ``delta`` (Δθ math and storage), ``data``, ``metrics``, ``rundir`` (the run
   folder's layout and failure messages), ``report`` (report.html from a run folder's files, torch-free);
2. ``tasks``;
3. ``training``;
4. ``auto``, ``curve`` (learning curves: one run per training-data fraction), ``serving`` (loading a
   run to predict or export it);
5. ``api``;
6. ``cli``, ``__main__``, ``ui`` (the local web UI, a front end like the CLI) and the package
   facade ``deltatune`` itself (``deltatune/__init__.py``).

A module is placed by its longest dotted prefix in :data:`LAYERS` (``deltatune.data.paths`` by
``data``). Lower layers that need something from above take it as an argument: ``auto`` gets
the function that trains a trial from ``api.auto`` (``train=api.finetune``).
"""

from __future__ import annotations

LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "config", "version", "layers", "files", "output_files", "tasks.registry", "tasks.options", "delta.registry"),
    ("models", "delta", "data", "metrics", "rundir", "report"),
    ("tasks",),
    ("training",),
    ("auto", "curve", "serving"),
    ("api",),
    ("cli", "__main__", "ui", ""),
)


def layer_of(module: str) -> int:
    """The layer index (0 = bottom) of a ``deltatune`` module name such as ``deltatune.data.paths``.

    ``"deltatune"`` itself (the package facade) is the top layer.

    Raises:
        KeyError: a module of deltatune that :data:`LAYERS` does not place (add it to the table).
    """
    parts = module.split(".")
    if parts[0] != "deltatune":
        raise KeyError(f"{module} is not a deltatune module")
    rest = ".".join(parts[1:])
    best: tuple[int, int] | None = None
    for index, names in enumerate(LAYERS):
        for name in names:
            if rest == name or (name and rest.startswith(name + ".")):
                length = len(name.split(".")) if name else 0
                if best is None or length > best[0]:
                    best = (length, index)
    if best is None:
        raise KeyError(f"{module}: not placed in deltatune.layers.LAYERS; add it to the layer it belongs to")
    return best[1]
