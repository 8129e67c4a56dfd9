"""The student's run config for ``deltatune distill`` / :func:`deltatune.api.distill` (torch-free).

Without a config of its own, the student repeats the teacher's run (its ``config.yaml``: task,
data, columns, training settings) with ``model.name_or_path`` set to the student, ``distill.teacher``
to the teacher run, and a new run folder, ``<teacher>-distill-<student name>`` next to the
teacher's unless ``output_dir`` says otherwise. With a config, that config is used as it is,
with the student and the teacher set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deltatune.config import RunConfig, apply_overrides, build_config, read_yaml
from deltatune.errors import DeltatuneError


def student_name(student: str) -> str:
    """A run-name-safe short name of a model reference: ``minilm``, ``org/model`` -> ``model``."""
    name = Path(student.rstrip("/\\")).name or "student"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name).lstrip(".") or "student"


def teacher_config(teacher: str | Path) -> dict[str, Any]:
    """The teacher run's ``config.yaml`` as a mapping.

    Raises:
        DeltatuneError: ``teacher`` is not a run folder with a config.yaml and a model/.
    """
    root = Path(teacher)
    if not (root / "config.yaml").is_file() or not (root / "model").is_dir():
        raise DeltatuneError(
            f"--teacher {root} is not a finished deltatune run folder (config.yaml and model/); give the run folder of a trained teacher"
        )
    return read_yaml(root / "config.yaml")


def distill_config(
    teacher: str | Path,
    student: str,
    config: str | Path | dict[str, Any] | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    output_dir: str | None = None,
) -> RunConfig:
    """The validated run config of a student distilled from ``teacher``.

    Args:
        teacher: the teacher's run folder.
        student: the student model (``model.name_or_path``: packaged name, folder, hub id).
        config: the student's own config (YAML path or mapping); ``None``: the teacher's config.yaml
            with a new ``name`` and ``output_dir``.
        overrides: dotted ``key=value`` overrides, applied last.
        output_dir: the student's run folder (wins over the config's).

    Raises:
        DeltatuneError: ``teacher`` is not a run folder; a bad config or override (naming the key).
    """
    data = teacher_config(teacher)
    if config is None:
        short = student_name(student)
        data = {k: v for k, v in data.items() if k not in ("name", "output_dir")}
        data["name"] = f"{data.get('name') or Path(teacher).name}-distill-{short}"[:200]
        data["output_dir"] = str(Path(teacher).parent / f"{Path(teacher).name}-distill-{short}")
        data.setdefault("model", {})
        data["model"] = {k: v for k, v in data["model"].items() if k not in ("revision", "decoder_name_or_path")}
        data["distill"] = {k: v for k, v in (data.get("distill") or {}).items() if k != "unlabeled_file"}
    else:
        data = read_yaml(config) if isinstance(config, (str, Path)) else dict(config)
    fixed: dict[str, Any] = {"model.name_or_path": student, "distill.teacher": str(teacher)}
    if output_dir is not None:
        fixed["output_dir"] = output_dir
    return build_config(apply_overrides(data, fixed), overrides)
